//! Routing information bases (RFC 4271 §3.2): Adj-RIB-In per peer, the Loc-RIB chosen by the
//! decision process (§9.1), and Adj-RIB-Out per peer with the export rules of iBGP split
//! horizon, route reflection (RFC 4456) and next-hop-self toward eBGP peers; plus graceful
//! restart's stale routes (RFC 4724 §4.2).
//!
//! The RIB is plain data: every change returns the Loc-RIB changes and the UPDATE content each
//! peer must be sent, and the caller does the I/O. IPv4 and IPv6 unicast live side by side,
//! keyed by prefix.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::IpNet;

use crate::codec::{AsPath, Family, Origin, PathAttributes};
use crate::filter::{PrefixFilter, Verdict};

/// LOCAL_PREF assumed when a route carries none (RFC 4271 §5.1.5 leaves it to policy; 100 is
/// what every implementation uses).
pub const DEFAULT_LOCAL_PREF: u32 = 100;

/// The family a prefix belongs to.
pub fn family_of(prefix: &IpNet) -> Family {
    match prefix {
        IpNet::V4(_) => Family::IPV4_UNICAST,
        IpNet::V6(_) => Family::IPV6_UNICAST,
    }
}

/// Where a route came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// Announced by the agent on this node.
    Local,
    /// Learned from the peer at this address.
    Peer(IpAddr),
}

/// A route's attributes and next hop. The NEXT_HOP attribute itself is kept out of `attrs`
/// because IPv6 next hops travel in MP_REACH_NLRI.
///
/// The attributes are shared: the routes of one UPDATE (hundreds of prefixes, a full table
/// thousands of UPDATEs) hold one copy between them, and the Loc-RIB's best route the same one
/// as the Adj-RIB-In's path it came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Path {
    /// Path attributes (without NEXT_HOP).
    pub attrs: Arc<PathAttributes>,
    /// The next hop.
    pub next_hop: IpAddr,
    /// Kept from a peer whose session dropped with graceful restart (RFC 4724), awaiting
    /// refresh.
    pub stale: bool,
}

impl Path {
    /// A path with these attributes and next hop, not stale.
    pub fn new(mut attrs: PathAttributes, next_hop: IpAddr) -> Self {
        attrs.next_hop = None;
        Self {
            attrs: Arc::new(attrs),
            next_hop,
            stale: false,
        }
    }

    /// A path with attributes shared with other paths (NEXT_HOP taken out if they carry it).
    pub fn shared(mut attrs: Arc<PathAttributes>, next_hop: IpAddr) -> Self {
        if attrs.next_hop.is_some() {
            Arc::make_mut(&mut attrs).next_hop = None;
        }
        Self {
            attrs,
            next_hop,
            stale: false,
        }
    }
}

/// The best route for a prefix, as the agent installs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BestRoute {
    /// The prefix.
    pub prefix: IpNet,
    /// Where to forward.
    pub next_hop: IpAddr,
    /// Who gave us the route.
    pub source: Source,
    /// Its attributes (AS path, local preference, …), shared with the path it came from.
    pub attrs: Arc<PathAttributes>,
    /// A graceful-restart leftover from a peer that has not come back yet.
    pub stale: bool,
    /// More next hops of equally good paths from other peers (ECMP, up to
    /// [`RibConfig::max_paths`] with `next_hop`), sorted; empty without multipath.
    pub multipath: Vec<IpAddr>,
}

impl BestRoute {
    /// Whether this is one of our own announcements (the agent has a blackhole for it and must
    /// not install a learned route over it).
    pub fn is_local(&self) -> bool {
        self.source == Source::Local
    }
}

/// A change of the Loc-RIB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocRibChange {
    /// A new or different best route.
    Best(BestRoute),
    /// No route is left for the prefix.
    Withdrawn(IpNet),
}

/// What a peer must be told about one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutChange {
    /// Announce (or replace) the route.
    Announce(IpNet, Path),
    /// Withdraw the route.
    Withdraw(IpNet),
}

/// The result of one RIB operation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Loc-RIB changes, in prefix order.
    pub loc_rib: Vec<LocRibChange>,
    /// Per peer, what to send.
    pub out: BTreeMap<IpAddr, Vec<OutChange>>,
}

impl Changes {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.loc_rib.is_empty() && self.out.values().all(Vec::is_empty)
    }
}

/// Settings of the local speaker that routing depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RibConfig {
    /// Our AS.
    pub local_asn: u32,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// Route-reflector cluster id; `Some` makes this speaker a route reflector.
    pub cluster_id: Option<Ipv4Addr>,
    /// At most this many next hops per prefix (ECMP); 1 is the single best path.
    pub max_paths: usize,
}

/// A link that IPv6 link-local next hops are exchanged over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// The link the speaker's own link-local next hop belongs to (the agent's underlay).
    Underlay,
    /// The interface (its index) of a session to a link-local peer address (unnumbered BGP).
    Interface(u32),
}

/// A configured peer as the RIB sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's address (its identity here).
    pub address: IpAddr,
    /// The peer's AS; equal to ours means iBGP.
    pub asn: u32,
    /// A route-reflector client of ours.
    pub rr_client: bool,
    /// The link the session runs over, when a link-local next hop means something on it (RFC
    /// 2545 §3): an IPv6 link-local next hop learned from this peer goes only to peers on
    /// the same link.
    pub link: Option<Link>,
    /// What it may give us and what we give it.
    pub policy: RoutePolicy,
}

/// A peer's import and export policy. The default takes and gives everything BGP's own
/// rules allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePolicy {
    /// Rules for the routes it sends (first match decides; no match: accept). A rejected
    /// route is dropped as if withdrawn.
    pub import: PrefixFilter,
    /// Rules for the routes we send it (first match decides; no match: see `export_learned`).
    pub export: PrefixFilter,
    /// Refuse a default route from it, whatever the rules say (a mesh peer must never become
    /// every node's way out).
    pub refuse_default: bool,
    /// When no export rule decides, send it routes learned from other peers too (transit, a
    /// route reflector's job); off, only our own prefixes go out unless a rule accepts them.
    pub export_learned: bool,
}

impl Default for RoutePolicy {
    fn default() -> Self {
        Self {
            import: PrefixFilter::default(),
            export: PrefixFilter::default(),
            refuse_default: false,
            export_learned: true,
        }
    }
}

impl RoutePolicy {
    /// Whether a route for `prefix` from this peer may enter the RIB.
    pub fn imports(&self, prefix: &IpNet) -> bool {
        if self.refuse_default && crate::filter::is_default_route(prefix) {
            return false;
        }
        self.import.decide(prefix) != Some(Verdict::Reject)
    }

    /// Whether our best route for `prefix` (`local`: one we originate) may go to this peer.
    pub fn exports(&self, prefix: &IpNet, local: bool) -> bool {
        match self.export.decide(prefix) {
            Some(verdict) => verdict == Verdict::Accept,
            None => local || self.export_learned,
        }
    }
}

/// What the RIB needs of an Established session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The peer's BGP identifier.
    pub router_id: Ipv4Addr,
    /// Our end of the TCP connection: the next hop we give eBGP peers.
    pub local_address: IpAddr,
    /// Families both sides negotiated.
    pub families: Vec<Family>,
    /// Both sides sent the Extended Next Hop Encoding capability for IPv4 unicast with IPv6
    /// next hops (RFC 8950): IPv4 routes may go to this peer with an IPv6 next hop (ours, the
    /// session's IPv6 address, toward eBGP).
    pub extended_next_hop: bool,
}

/// Which candidate a Loc-RIB entry's route is: [`Winner::LOCAL`] or a peer's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Winner(u32);

impl Winner {
    /// Our own announcement.
    const LOCAL: Winner = Winner(u32::MAX);
}

#[derive(Debug, Clone)]
struct PeerEntry {
    /// Its id in the Loc-RIB ([`Winner`]): the Loc-RIB refers to the winning path instead of
    /// holding a copy of it.
    id: u32,
    info: PeerInfo,
    session: Option<SessionInfo>,
    /// Last known identifier: reflected stale routes still need it for ORIGINATOR_ID.
    router_id: Option<Ipv4Addr>,
    adj_in: BTreeMap<IpNet, Path>,
    adj_out: BTreeMap<IpNet, Path>,
    /// The attributes last put in the Adj-RIB-Out: the routes exported with the same ones
    /// share this copy (each export builds its attributes anew), as their Adj-RIB-In paths
    /// share theirs.
    last_out: Option<Arc<PathAttributes>>,
}

impl PeerEntry {
    /// `path` with the attributes last put in the Adj-RIB-Out when they are the same.
    fn shared_out(&mut self, mut path: Path) -> Path {
        match &self.last_out {
            Some(last) if **last == *path.attrs => path.attrs = Arc::clone(last),
            _ => self.last_out = Some(Arc::clone(&path.attrs)),
        }
        path
    }
}

/// Adj-RIBs-In, Loc-RIB and Adj-RIBs-Out of one speaker.
///
/// The Loc-RIB is stored compactly (issue 18: a full table is 100,000 entries): per prefix only
/// which candidate won, its path read from the Adj-RIB-In (or our own announcements) when a
/// [`BestRoute`] is asked for, and the ECMP next hops of the few prefixes that have some in a
/// map of their own.
#[derive(Debug, Clone)]
pub struct Rib {
    config: RibConfig,
    peers: BTreeMap<IpAddr, PeerEntry>,
    /// Peer ids ([`PeerEntry::id`]) to addresses.
    ids: BTreeMap<u32, IpAddr>,
    next_id: u32,
    local: BTreeMap<IpNet, Path>,
    loc: BTreeMap<IpNet, Winner>,
    /// More next hops of the best route (ECMP), for the prefixes that have any.
    multipath: BTreeMap<IpNet, Box<[IpAddr]>>,
}

/// The decision process's result for one prefix, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Decision {
    winner: Winner,
    multipath: Option<Box<[IpAddr]>>,
}

impl Rib {
    /// An empty RIB.
    pub fn new(config: RibConfig) -> Self {
        Self {
            config,
            peers: BTreeMap::new(),
            ids: BTreeMap::new(),
            next_id: 0,
            local: BTreeMap::new(),
            loc: BTreeMap::new(),
            multipath: BTreeMap::new(),
        }
    }

    /// The speaker settings.
    pub fn config(&self) -> &RibConfig {
        &self.config
    }

    /// Adds a peer (no session yet). Re-adding replaces its settings and keeps its routes.
    pub fn add_peer(&mut self, info: PeerInfo) {
        let address = info.address;
        if let Some(p) = self.peers.get_mut(&address) {
            p.info = info;
            return;
        }
        let id = self.next_id;
        // Ids are not reused (a removed peer's id may still be referred to until its prefixes
        // are recomputed); u32::MAX is Winner::LOCAL.
        self.next_id = self.next_id.wrapping_add(1) % u32::MAX;
        self.ids.insert(id, address);
        self.peers.insert(
            address,
            PeerEntry {
                id,
                info,
                session: None,
                router_id: None,
                adj_in: BTreeMap::new(),
                adj_out: BTreeMap::new(),
                last_out: None,
            },
        );
    }

    /// Removes a peer and every route learned from it.
    pub fn remove_peer(&mut self, address: IpAddr) -> Changes {
        let mut changes = Changes::default();
        let Some(peer) = self.peers.remove(&address) else {
            return changes;
        };
        self.ids.remove(&peer.id);
        for prefix in peer.adj_in.keys() {
            self.recompute(*prefix, Winner(peer.id), &mut changes);
        }
        changes
    }

    /// The session with `address` reached Established: returns its whole Adj-RIB-Out, the
    /// initial UPDATE content (End-of-RIB follows it).
    pub fn session_up(&mut self, address: IpAddr, session: SessionInfo) -> Vec<OutChange> {
        let Some(peer) = self.peers.get_mut(&address) else {
            return Vec::new();
        };
        peer.router_id = Some(session.router_id);
        peer.session = Some(session);
        peer.adj_out.clear();
        let mut out = Vec::new();
        let prefixes: Vec<IpNet> = self.loc.keys().copied().collect();
        for prefix in prefixes {
            if let Some(path) = self.export(&prefix, address)
                && let Some(peer) = self.peers.get_mut(&address)
            {
                let path = peer.shared_out(path);
                out.push(OutChange::Announce(prefix, path.clone()));
                peer.adj_out.insert(prefix, path);
            }
        }
        out
    }

    /// The session with `address` went down. With `keep_stale` (graceful restart negotiated
    /// and the transport simply failed) its routes stay, marked stale (RFC 4724 §4.2);
    /// otherwise they are withdrawn.
    pub fn session_down(&mut self, address: IpAddr, keep_stale: bool) -> Changes {
        let mut changes = Changes::default();
        let Some(peer) = self.peers.get_mut(&address) else {
            return changes;
        };
        peer.session = None;
        peer.adj_out.clear();
        let id = Winner(peer.id);
        // The paths that change (those already stale stay as they are).
        let prefixes: Vec<IpNet> = peer
            .adj_in
            .iter()
            .filter(|(_, p)| !keep_stale || !p.stale)
            .map(|(prefix, _)| *prefix)
            .collect();
        if keep_stale {
            peer.adj_in.values_mut().for_each(|p| p.stale = true);
        } else {
            peer.adj_in.clear();
        }
        for prefix in prefixes {
            self.recompute(prefix, id, &mut changes);
        }
        changes
    }

    /// Applies an UPDATE from `address`: `announced` routes replace earlier ones for the same
    /// prefix, `withdrawn` prefixes are removed. Routes that fail the loop checks (our AS in an
    /// eBGP AS_PATH, our identifier as ORIGINATOR_ID, our cluster in CLUSTER_LIST) are treated
    /// as withdrawn.
    pub fn update(
        &mut self,
        address: IpAddr,
        announced: Vec<(IpNet, Path)>,
        withdrawn: Vec<IpNet>,
    ) -> Changes {
        let mut changes = Changes::default();
        let local_asn = self.config.local_asn;
        let router_id = self.config.router_id;
        let cluster_id = self.cluster_id();
        let Some(peer) = self.peers.get_mut(&address) else {
            return changes;
        };
        let ibgp = peer.info.asn == local_asn;
        let id = Winner(peer.id);
        let mut touched = Vec::new();
        // The routes of one UPDATE share their attributes: normalised once for all of them.
        let mut cache: Option<(Arc<PathAttributes>, Arc<PathAttributes>)> = None;
        for prefix in withdrawn {
            if peer.adj_in.remove(&prefix).is_some() {
                touched.push(prefix);
            }
        }
        for (prefix, mut path) in announced {
            path.stale = false;
            path.attrs = match &cache {
                Some((from, to)) if Arc::ptr_eq(from, &path.attrs) => to.clone(),
                _ => {
                    let to = normalised(&path.attrs, ibgp);
                    cache = Some((path.attrs.clone(), to.clone()));
                    to
                }
            };
            let looped = if ibgp {
                path.attrs.originator_id == Some(router_id)
                    || path.attrs.cluster_list.contains(&cluster_id)
            } else {
                path.attrs
                    .as_path
                    .as_ref()
                    .is_some_and(|p| p.contains(local_asn))
            };
            if looped || !peer.info.policy.imports(&prefix) {
                if peer.adj_in.remove(&prefix).is_some() {
                    touched.push(prefix);
                }
                continue;
            }
            if peer.adj_in.get(&prefix) != Some(&path) {
                peer.adj_in.insert(prefix, path);
                touched.push(prefix);
            }
        }
        touched.sort();
        touched.dedup();
        for prefix in touched {
            self.recompute(prefix, id, &mut changes);
        }
        changes
    }

    /// End-of-RIB for `family` from `address`: the stale routes it did not refresh are gone
    /// (RFC 4724 §4.2).
    pub fn end_of_rib(&mut self, address: IpAddr, family: Family) -> Changes {
        self.purge(address, Some(family))
    }

    /// The peer's restart time ran out: all its stale routes are gone.
    pub fn purge_stale(&mut self, address: IpAddr) -> Changes {
        self.purge(address, None)
    }

    /// Whether `address` still has stale routes.
    pub fn has_stale(&self, address: IpAddr) -> bool {
        self.peers
            .get(&address)
            .is_some_and(|p| p.adj_in.values().any(|r| r.stale))
    }

    fn purge(&mut self, address: IpAddr, family: Option<Family>) -> Changes {
        let mut changes = Changes::default();
        let Some(peer) = self.peers.get_mut(&address) else {
            return changes;
        };
        let id = Winner(peer.id);
        let gone: Vec<IpNet> = peer
            .adj_in
            .iter()
            .filter(|(prefix, path)| path.stale && family.is_none_or(|f| family_of(prefix) == f))
            .map(|(prefix, _)| *prefix)
            .collect();
        for prefix in &gone {
            peer.adj_in.remove(prefix);
        }
        for prefix in gone {
            self.recompute(prefix, id, &mut changes);
        }
        changes
    }

    /// Originates `prefix` with `next_hop` (replacing an earlier announcement).
    pub fn announce_local(&mut self, prefix: IpNet, next_hop: IpAddr) -> Changes {
        let mut changes = Changes::default();
        let attrs = PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath::default()),
            ..Default::default()
        };
        let path = Path::new(attrs, next_hop);
        if self.local.get(&prefix) != Some(&path) {
            self.local.insert(prefix, path);
            self.recompute(prefix, Winner::LOCAL, &mut changes);
        }
        changes
    }

    /// Stops originating `prefix`.
    pub fn withdraw_local(&mut self, prefix: IpNet) -> Changes {
        let mut changes = Changes::default();
        if self.local.remove(&prefix).is_some() {
            self.recompute(prefix, Winner::LOCAL, &mut changes);
        }
        changes
    }

    /// The Loc-RIB, in prefix order (each best route made from the path it refers to).
    pub fn loc_rib(&self) -> impl Iterator<Item = BestRoute> + '_ {
        self.loc
            .iter()
            .filter_map(|(prefix, winner)| self.best_route(prefix, *winner))
    }

    /// The prefixes the Loc-RIB has a best route for, in order.
    pub fn loc_prefixes(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.loc.keys().copied()
    }

    /// How many prefixes the Loc-RIB has a best route for.
    pub fn loc_rib_len(&self) -> usize {
        self.loc.len()
    }

    /// The best route for `prefix`.
    pub fn best(&self, prefix: &IpNet) -> Option<BestRoute> {
        self.best_route(prefix, *self.loc.get(prefix)?)
    }

    /// The winning path of `prefix` and where it came from.
    fn winning(&self, prefix: &IpNet, winner: Winner) -> Option<(Source, &Path)> {
        if winner == Winner::LOCAL {
            return Some((Source::Local, self.local.get(prefix)?));
        }
        let address = *self.ids.get(&winner.0)?;
        let path = self.peers.get(&address)?.adj_in.get(prefix)?;
        Some((Source::Peer(address), path))
    }

    /// `prefix`'s Loc-RIB entry as a [`BestRoute`].
    fn best_route(&self, prefix: &IpNet, winner: Winner) -> Option<BestRoute> {
        let (source, path) = self.winning(prefix, winner)?;
        Some(BestRoute {
            prefix: *prefix,
            next_hop: path.next_hop,
            source,
            attrs: path.attrs.clone(),
            stale: path.stale,
            multipath: self
                .multipath
                .get(prefix)
                .map(|m| m.to_vec())
                .unwrap_or_default(),
        })
    }

    /// The routes learned from `address` (Adj-RIB-In).
    pub fn adj_in(&self, address: IpAddr) -> Vec<(IpNet, Path)> {
        self.peers
            .get(&address)
            .map(|p| p.adj_in.iter().map(|(k, v)| (*k, v.clone())).collect())
            .unwrap_or_default()
    }

    /// The routes advertised to `address` (Adj-RIB-Out).
    pub fn adj_out(&self, address: IpAddr) -> Vec<(IpNet, Path)> {
        self.peers
            .get(&address)
            .map(|p| p.adj_out.iter().map(|(k, v)| (*k, v.clone())).collect())
            .unwrap_or_default()
    }

    /// Numbers of routes received from and sent to `address`.
    pub fn counts(&self, address: IpAddr) -> (usize, usize) {
        self.peers
            .get(&address)
            .map(|p| (p.adj_in.len(), p.adj_out.len()))
            .unwrap_or_default()
    }

    /// The cluster id used in CLUSTER_LIST: the configured one, else our router id
    /// (RFC 4456 §7).
    fn cluster_id(&self) -> Ipv4Addr {
        self.config.cluster_id.unwrap_or(self.config.router_id)
    }

    /// Runs the decision process for `prefix`, whose path from `touched` (a peer's id, or
    /// [`Winner::LOCAL`]) changed, and brings the Loc-RIB and every Adj-RIB-Out up to date.
    /// The Loc-RIB refers to the winning path rather than holding a copy: the best route
    /// changed when another path won, the ECMP next hops changed, or the winner is the path
    /// that changed.
    fn recompute(&mut self, prefix: IpNet, touched: Winner, changes: &mut Changes) {
        let new = self.decide(&prefix);
        let old_winner = self.loc.get(&prefix).copied();
        match new {
            Some(new) => {
                let changed = old_winner != Some(new.winner)
                    || new.winner == touched
                    || self.multipath.get(&prefix) != new.multipath.as_ref();
                if changed {
                    self.loc.insert(prefix, new.winner);
                    match new.multipath {
                        Some(m) => self.multipath.insert(prefix, m),
                        None => self.multipath.remove(&prefix),
                    };
                    if let Some(best) = self.best_route(&prefix, new.winner) {
                        changes.loc_rib.push(LocRibChange::Best(best));
                    }
                }
            }
            None => {
                if old_winner.is_some() {
                    self.loc.remove(&prefix);
                    self.multipath.remove(&prefix);
                    changes.loc_rib.push(LocRibChange::Withdrawn(prefix));
                }
            }
        }
        let addresses: Vec<IpAddr> = self.peers.keys().copied().collect();
        for address in addresses {
            let wanted = self.export(&prefix, address);
            let Some(peer) = self.peers.get_mut(&address) else {
                continue;
            };
            if peer.session.is_none() {
                continue;
            }
            let wanted = wanted.map(|path| peer.shared_out(path));
            let change = match (wanted, peer.adj_out.get(&prefix)) {
                (Some(path), old) if old != Some(&path) => {
                    peer.adj_out.insert(prefix, path.clone());
                    OutChange::Announce(prefix, path)
                }
                (None, Some(_)) => {
                    peer.adj_out.remove(&prefix);
                    OutChange::Withdraw(prefix)
                }
                _ => continue,
            };
            changes.out.entry(address).or_default().push(change);
        }
    }

    /// The decision process (RFC 4271 §9.1.2 with RFC 4456 §9) over every candidate route
    /// for `prefix`. Our own announcements come first, as a locally configured route does in
    /// every implementation.
    fn decide(&self, prefix: &IpNet) -> Option<Decision> {
        if self.local.contains_key(prefix) {
            return Some(Decision {
                winner: Winner::LOCAL,
                multipath: None,
            });
        }
        let candidates: Vec<Candidate<'_>> = self
            .peers
            .values()
            .filter_map(|peer| {
                let path = peer.adj_in.get(prefix)?;
                let ibgp = peer.info.asn == self.config.local_asn;
                Some(Candidate {
                    id: peer.id,
                    address: peer.info.address,
                    path,
                    ibgp,
                    local_pref: if ibgp {
                        path.attrs.local_pref.unwrap_or(DEFAULT_LOCAL_PREF)
                    } else {
                        DEFAULT_LOCAL_PREF
                    },
                    neighbor_as: path
                        .attrs
                        .as_path
                        .as_ref()
                        .and_then(AsPath::neighbor_as)
                        .unwrap_or(self.config.local_asn),
                    bgp_id: path
                        .attrs
                        .originator_id
                        .or(peer.router_id)
                        .unwrap_or(Ipv4Addr::BROADCAST),
                })
            })
            .collect();
        let good = equally_good(candidates);
        let best = tie_break(good.clone())?;
        // ECMP, as BIRD's `merge paths`: the paths the decision process could not tell apart
        // before its tie-breakers, each adding its next hop (of the best one's family: an IPv4
        // route learned over an unnumbered session has an IPv6 one, RFC 8950).
        let mut multipath: Vec<IpAddr> = good
            .iter()
            .filter(|c| c.address != best.address)
            .map(|c| c.path.next_hop)
            .filter(|nh| *nh != best.path.next_hop && nh.is_ipv4() == best.path.next_hop.is_ipv4())
            .collect();
        multipath.sort();
        multipath.dedup();
        multipath.truncate(self.config.max_paths.saturating_sub(1));
        Some(Decision {
            winner: Winner(best.id),
            multipath: (!multipath.is_empty()).then(|| multipath.into_boxed_slice()),
        })
    }

    /// What `prefix`'s best route looks like when sent to `address`, or `None` when the export
    /// rules say not to send it.
    fn export(&self, prefix: &IpNet, address: IpAddr) -> Option<Path> {
        let (source, best) = self.winning(prefix, *self.loc.get(prefix)?)?;
        let to = self.peers.get(&address)?;
        let session = to.session.as_ref()?;
        if !session.families.contains(&family_of(prefix)) {
            return None;
        }
        let local_asn = self.config.local_asn;
        let to_ibgp = to.info.asn == local_asn;
        let from = match source {
            Source::Local => None,
            Source::Peer(a) if a == address => return None,
            Source::Peer(a) => Some(self.peers.get(&a)?),
        };
        if !to.info.policy.exports(prefix, from.is_none()) {
            return None;
        }
        let from_ibgp = from.is_some_and(|f| f.info.asn == local_asn);
        let mut attrs = (*best.attrs).clone();
        let mut next_hop = best.next_hop;

        if to_ibgp && from_ibgp {
            // iBGP split horizon, relaxed only by route reflection (RFC 4456 §6): a client's
            // route goes to everyone, a non-client's route only to clients.
            let cluster_id = self.config.cluster_id?;
            let from = from?;
            if !from.info.rr_client && !to.info.rr_client {
                return None;
            }
            if attrs.originator_id.is_none() {
                attrs.originator_id = Some(from.router_id?);
            }
            if attrs.originator_id == Some(session.router_id) {
                return None;
            }
            attrs.cluster_list.insert(0, cluster_id);
        }
        if to_ibgp {
            attrs.local_pref = Some(attrs.local_pref.unwrap_or(DEFAULT_LOCAL_PREF));
        } else {
            // Toward eBGP: our AS in front, our address as next hop, and nothing that only
            // means something inside our AS.
            let path = attrs.as_path.take().unwrap_or_default();
            if path.contains(to.info.asn) {
                return None;
            }
            attrs.as_path = Some(path.prepended(local_asn));
            attrs.local_pref = None;
            attrs.originator_id = None;
            attrs.cluster_list.clear();
            if from.is_some() {
                // RFC 4271 §5.1.4: a MED learned from one AS is not passed to another.
                attrs.med = None;
            }
            next_hop = next_hop_self(
                session.local_address,
                prefix,
                best.next_hop,
                session.extended_next_hop,
            );
        }
        // Where RFC 8950 was negotiated over an IPv6 session (an unnumbered one: the peer may
        // have no route to our IPv4 address), our own IPv4 routes go with our address on the
        // session's link, inside the AS too, as our IPv6 ones do.
        if from.is_none()
            && session.extended_next_hop
            && prefix.addr().is_ipv4()
            && session.local_address.is_ipv6()
        {
            next_hop = session.local_address;
        }
        // An IPv4 route with an IPv6 next hop (learned over an unnumbered session) goes only
        // where RFC 8950 was negotiated: any other peer would have no way to reach it.
        if prefix.addr().is_ipv4() && next_hop.is_ipv6() && !session.extended_next_hop {
            return None;
        }
        // A link-local next hop (one learned from a peer with no usable global next hop) only
        // means something on the link it was learned over (RFC 2545 §3). The next hop goes on
        // unchanged inside the AS — a reflector does not change it (RFC 4456 §10) — so such a
        // route goes only to peers on that link (sent as link-local, see the speaker's
        // export); a peer elsewhere would have a next hop it cannot reach, and gets nothing.
        // Our own address on the session (next-hop-self over an unnumbered one) is the peer's
        // link by definition.
        if let IpAddr::V6(v6) = next_hop
            && v6.is_unicast_link_local()
            && next_hop != session.local_address
        {
            // Our own route (none today carries a link-local next hop): any link; a learned
            // one: only the very link it came over, not another unnumbered interface.
            let same_link = match from {
                None => to.info.link.is_some(),
                Some(f) => f.info.link.is_some() && f.info.link == to.info.link,
            };
            if !same_link {
                return None;
            }
        }
        attrs.origin.get_or_insert(Origin::Igp);
        attrs.as_path.get_or_insert_with(AsPath::default);
        Some(Path::new(attrs, next_hop))
    }
}

/// Received attributes as the RIB keeps them: without NEXT_HOP (the path's next hop says it),
/// and from an eBGP peer without LOCAL_PREF, ORIGINATOR_ID and CLUSTER_LIST (they mean nothing
/// across ASes). The same `Arc` when nothing is to change.
fn normalised(attrs: &Arc<PathAttributes>, ibgp: bool) -> Arc<PathAttributes> {
    let foreign = !ibgp
        && (attrs.local_pref.is_some()
            || attrs.originator_id.is_some()
            || !attrs.cluster_list.is_empty());
    if attrs.next_hop.is_none() && !foreign {
        return attrs.clone();
    }
    let mut a = (**attrs).clone();
    a.next_hop = None;
    if !ibgp {
        a.local_pref = None;
        a.originator_id = None;
        a.cluster_list.clear();
    }
    Arc::new(a)
}

/// Our session address as next hop for `prefix`, in the prefix's family when we can; an IPv6
/// one for an IPv4 prefix where `extended` (RFC 8950 negotiated) allows it.
fn next_hop_self(local: IpAddr, prefix: &IpNet, route_next_hop: IpAddr, extended: bool) -> IpAddr {
    match (prefix, local, route_next_hop) {
        (IpNet::V4(_), IpAddr::V4(_), _) | (IpNet::V6(_), IpAddr::V6(_), _) => local,
        (IpNet::V4(_), IpAddr::V6(_), _) if extended => local,
        (IpNet::V4(_), IpAddr::V6(_), nh @ IpAddr::V4(_)) => nh,
        (IpNet::V6(_), IpAddr::V4(_), nh @ IpAddr::V6(_)) => nh,
        (IpNet::V6(_), IpAddr::V4(v4), IpAddr::V4(_)) => IpAddr::V6(v4.to_ipv6_mapped()),
        (IpNet::V4(_), IpAddr::V6(_), nh @ IpAddr::V6(_)) => nh,
    }
}

/// The IPv6 form of a next hop (IPv4 next hops of IPv6 routes become IPv4-mapped).
pub fn ipv6_next_hop(next_hop: IpAddr) -> Ipv6Addr {
    match next_hop {
        IpAddr::V6(v6) => v6,
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
    }
}

/// The next hop to use for IPv6 routes received with `global` and, optionally, `link_local`
/// (RFC 2545 §3): the global address, unless it is no usable global address (a link-local
/// address or `::`, as speakers on an unnumbered link send) and a link-local one came with it.
/// A link-local next hop only means something on the link the session runs over: whoever
/// installs it names that interface.
pub fn received_ipv6_next_hop(global: Ipv6Addr, link_local: Option<Ipv6Addr>) -> Ipv6Addr {
    let usable = !global.is_unspecified() && !global.is_unicast_link_local();
    match link_local {
        Some(ll) if !usable && !ll.is_unspecified() => ll,
        _ => global,
    }
}

#[derive(Debug, Clone)]
struct Candidate<'a> {
    id: u32,
    address: IpAddr,
    path: &'a Path,
    ibgp: bool,
    local_pref: u32,
    neighbor_as: u32,
    bgp_id: Ipv4Addr,
}

fn keep_min<K: Ord + Copy>(c: &mut Vec<Candidate<'_>>, key: impl Fn(&Candidate<'_>) -> K) {
    if let Some(min) = c.iter().map(&key).min() {
        c.retain(|x| key(x) == min);
    }
}

/// RFC 4271 §9.1.2.2 as a sequence of eliminations, so that the MED rule (which only compares
/// routes from the same neighbouring AS) stays well defined: steps a) to e) here — what is
/// left is equally good for forwarding (ECMP) —, the tie-breakers in [`tie_break`].
fn equally_good(mut c: Vec<Candidate<'_>>) -> Vec<Candidate<'_>> {
    // a) highest LOCAL_PREF.
    keep_min(&mut c, |x| std::cmp::Reverse(x.local_pref));
    // b) shortest AS_PATH.
    keep_min(&mut c, |x| {
        x.path.attrs.as_path.as_ref().map_or(0, AsPath::length)
    });
    // c) lowest ORIGIN.
    keep_min(&mut c, |x| {
        x.path.attrs.origin.unwrap_or(Origin::Incomplete)
    });
    // d) lowest MED among routes from the same neighbouring AS (missing MED = 0).
    let med = |x: &Candidate<'_>| x.path.attrs.med.unwrap_or(0);
    let beaten: Vec<bool> = c
        .iter()
        .map(|x| {
            c.iter()
                .any(|y| y.neighbor_as == x.neighbor_as && med(y) < med(x))
        })
        .collect();
    let mut i = 0;
    c.retain(|_| {
        let keep = !beaten.get(i).copied().unwrap_or(false);
        i += 1;
        keep
    });
    // e) eBGP over iBGP.
    keep_min(&mut c, |x| x.ibgp);
    c
}

/// Steps f) and g), and RFC 4456's CLUSTER_LIST length: one of the equally good.
fn tie_break(mut c: Vec<Candidate<'_>>) -> Option<Candidate<'_>> {
    // f) lowest BGP identifier (ORIGINATOR_ID for reflected routes, RFC 4456 §9).
    keep_min(&mut c, |x| u32::from(x.bgp_id));
    // RFC 4456 §9: shortest CLUSTER_LIST.
    keep_min(&mut c, |x| x.path.attrs.cluster_list.len());
    // g) lowest peer address.
    keep_min(&mut c, |x| x.address);
    c.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ASN: u32 = 64512;

    fn v4(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("prefix")
    }

    fn rib(cluster_id: Option<Ipv4Addr>) -> Rib {
        Rib::new(RibConfig {
            local_asn: ASN,
            router_id: Ipv4Addr::new(10, 0, 0, 1),
            cluster_id,
            max_paths: 1,
        })
    }

    /// Adds and brings up a peer whose router id is its address.
    fn peer(rib: &mut Rib, address: &str, asn: u32, rr_client: bool) -> IpAddr {
        let address = v4(address);
        rib.add_peer(PeerInfo {
            address,
            asn,
            rr_client,
            link: None,
            policy: RoutePolicy::default(),
        });
        let IpAddr::V4(id) = address else {
            panic!("v4 only")
        };
        rib.session_up(
            address,
            SessionInfo {
                router_id: id,
                local_address: v4("10.0.0.1"),
                families: vec![Family::IPV4_UNICAST, Family::IPV6_UNICAST],
                extended_next_hop: false,
            },
        );
        address
    }

    fn path(as_path: &[u32], next_hop: &str) -> Path {
        Path::new(
            PathAttributes {
                origin: Some(Origin::Igp),
                as_path: Some(AsPath::sequence(as_path)),
                ..Default::default()
            },
            v4(next_hop),
        )
    }

    fn with(mut p: Path, f: impl FnOnce(&mut PathAttributes)) -> Path {
        f(Arc::make_mut(&mut p.attrs));
        p
    }

    fn best_from(rib: &Rib, prefix: &str) -> Option<Source> {
        rib.best(&net(prefix)).map(|b| b.source)
    }

    fn sent(changes: &Changes, to: IpAddr) -> Vec<OutChange> {
        changes.out.get(&to).cloned().unwrap_or_default()
    }

    /// Adds and brings up a peer with `policy`.
    fn peer_with(rib: &mut Rib, address: &str, asn: u32, policy: RoutePolicy) -> IpAddr {
        let a = v4(address);
        rib.add_peer(PeerInfo {
            address: a,
            asn,
            rr_client: false,
            link: None,
            policy,
        });
        let IpAddr::V4(id) = a else { panic!("v4 only") };
        rib.session_up(
            a,
            SessionInfo {
                router_id: id,
                local_address: v4("10.0.0.1"),
                families: vec![Family::IPV4_UNICAST, Family::IPV6_UNICAST],
                extended_next_hop: false,
            },
        );
        a
    }

    fn rules(rules: &[&str]) -> PrefixFilter {
        PrefixFilter::new(rules.iter().map(|r| r.parse().expect("rule")).collect())
    }

    #[test]
    fn import_rules_and_the_default_route_guard_keep_routes_out() {
        let mut rib = rib(None);
        let mesh = peer_with(
            &mut rib,
            "10.0.0.2",
            ASN,
            RoutePolicy {
                refuse_default: true,
                // Even a rule accepting it does not let a mesh peer's default route in.
                import: rules(&["accept 0.0.0.0/0", "reject 10.99.0.0/16 ge 16 le 32"]),
                ..RoutePolicy::default()
            },
        );
        let c = rib.update(
            mesh,
            vec![
                (net("0.0.0.0/0"), path(&[], "10.0.0.2")),
                (net("10.99.1.0/24"), path(&[], "10.0.0.2")),
                (net("10.244.1.0/26"), path(&[], "10.0.0.2")),
            ],
            vec![],
        );
        assert_eq!(c.loc_rib.len(), 1, "{c:?}");
        assert_eq!(best_from(&rib, "10.244.1.0/26"), Some(Source::Peer(mesh)));
        assert_eq!(best_from(&rib, "0.0.0.0/0"), None);
        assert_eq!(best_from(&rib, "10.99.1.0/24"), None);
        assert_eq!(rib.counts(mesh).0, 1, "rejected routes are not held either");
        // A peer without the guard may give a default route.
        let tor = peer(&mut rib, "10.0.0.3", 65000, false);
        rib.update(
            tor,
            vec![(net("0.0.0.0/0"), path(&[65000], "10.0.0.3"))],
            vec![],
        );
        assert_eq!(best_from(&rib, "0.0.0.0/0"), Some(Source::Peer(tor)));
    }

    #[test]
    fn export_sends_only_our_own_prefixes_unless_a_rule_says_otherwise() {
        let mut rib = rib(None);
        rib.announce_local(net("10.244.0.0/26"), v4("10.0.0.1"));
        rib.announce_local(net("10.244.0.64/26"), v4("10.0.0.1"));
        let tor = peer(&mut rib, "10.0.0.3", 65000, false);
        rib.update(
            tor,
            vec![
                (net("0.0.0.0/0"), path(&[65000], "10.0.0.3")),
                (net("172.16.0.0/24"), path(&[65000], "10.0.0.3")),
            ],
            vec![],
        );
        let other = peer_with(
            &mut rib,
            "10.0.0.4",
            65001,
            RoutePolicy {
                export_learned: false,
                export: rules(&["reject 10.244.0.64/26", "accept 172.16.0.0/16 le 24"]),
                ..RoutePolicy::default()
            },
        );
        let out: Vec<IpNet> = rib.adj_out(other).into_iter().map(|(p, _)| p).collect();
        // Ours except the rejected one, and the learned route a rule accepts; never the
        // learned default route.
        assert_eq!(out, vec![net("10.244.0.0/26"), net("172.16.0.0/24")]);
    }

    #[test]
    fn equally_good_paths_share_the_route_and_a_withdrawal_takes_only_its_next_hop() {
        let mut rib = rib(None);
        rib.config.max_paths = 8;
        let a = peer(&mut rib, "10.0.0.2", 65001, false);
        let b = peer(&mut rib, "10.0.0.3", 65002, false);
        let c = peer(&mut rib, "10.0.0.4", 65003, false);
        rib.update(
            a,
            vec![(net("10.50.0.0/24"), path(&[65001], "10.0.0.2"))],
            vec![],
        );
        let changes = rib.update(
            b,
            vec![(net("10.50.0.0/24"), path(&[65002], "10.0.0.3"))],
            vec![],
        );
        let best = rib.best(&net("10.50.0.0/24")).expect("best").clone();
        assert_eq!(best.next_hop, v4("10.0.0.2"));
        assert_eq!(best.multipath, vec![v4("10.0.0.3")]);
        assert_eq!(
            changes.loc_rib,
            vec![LocRibChange::Best(best)],
            "a new path is a change"
        );
        // A longer AS path is not equally good.
        rib.update(
            c,
            vec![(net("10.50.0.0/24"), path(&[65003, 65009], "10.0.0.4"))],
            vec![],
        );
        assert_eq!(
            rib.best(&net("10.50.0.0/24")).expect("best").multipath,
            vec![v4("10.0.0.3")]
        );
        // The best path's withdrawal leaves the other, alone.
        rib.update(a, vec![], vec![net("10.50.0.0/24")]);
        let best = rib.best(&net("10.50.0.0/24")).expect("best");
        assert_eq!(
            (best.next_hop, best.multipath.clone()),
            (v4("10.0.0.3"), vec![])
        );
        // One path at most: no multipath.
        rib.config.max_paths = 1;
        rib.update(
            a,
            vec![(net("10.50.0.0/24"), path(&[65001], "10.0.0.2"))],
            vec![],
        );
        assert!(
            rib.best(&net("10.50.0.0/24"))
                .expect("best")
                .multipath
                .is_empty()
        );
    }

    #[test]
    fn a_learned_route_enters_the_loc_rib_and_its_withdrawal_leaves_it() {
        let mut rib = rib(None);
        let a = peer(&mut rib, "10.0.0.2", ASN, false);
        let c = rib.update(
            a,
            vec![(net("10.244.1.0/26"), path(&[], "10.0.0.2"))],
            vec![],
        );
        assert!(matches!(&c.loc_rib[..], [LocRibChange::Best(b)] if b.next_hop == v4("10.0.0.2")));
        let c = rib.update(a, vec![], vec![net("10.244.1.0/26")]);
        assert_eq!(
            c.loc_rib,
            vec![LocRibChange::Withdrawn(net("10.244.1.0/26"))]
        );
    }

    #[test]
    fn a_route_announced_again_with_the_same_attributes_changes_nothing() {
        let mut rib = rib(None);
        let a = peer(&mut rib, "10.0.0.2", ASN, false);
        rib.update(
            a,
            vec![(net("10.244.1.0/26"), path(&[], "10.0.0.2"))],
            vec![],
        );
        let c = rib.update(
            a,
            vec![(net("10.244.1.0/26"), path(&[], "10.0.0.2"))],
            vec![],
        );
        assert!(c.is_empty());
    }

    #[test]
    fn highest_local_pref_wins_first() {
        let mut rib = rib(None);
        let a = peer(&mut rib, "10.0.0.2", ASN, false);
        let b = peer(&mut rib, "10.0.0.3", ASN, false);
        let p = net("10.1.0.0/24");
        rib.update(
            a,
            vec![(p, with(path(&[], "10.0.0.2"), |x| x.local_pref = Some(100)))],
            vec![],
        );
        rib.update(
            b,
            vec![(
                p,
                with(path(&[1, 2, 3], "10.0.0.3"), |x| x.local_pref = Some(200)),
            )],
            vec![],
        );
        assert_eq!(best_from(&rib, "10.1.0.0/24"), Some(Source::Peer(b)));
    }

    #[test]
    fn then_shortest_as_path() {
        let mut rib = rib(None);
        let a = peer(&mut rib, "10.0.0.2", 65001, false);
        let b = peer(&mut rib, "10.0.0.3", 65002, false);
        let p = net("10.1.0.0/24");
        rib.update(a, vec![(p, path(&[65001, 65100], "10.0.0.2"))], vec![]);
        rib.update(b, vec![(p, path(&[65002], "10.0.0.3"))], vec![]);
        assert_eq!(best_from(&rib, "10.1.0.0/24"), Some(Source::Peer(b)));
    }

    #[test]
    fn then_lowest_origin() {
        let mut rib = rib(None);
        let a = peer(&mut rib, "10.0.0.2", 65001, false);
        let b = peer(&mut rib, "10.0.0.3", 65002, false);
        let p = net("10.1.0.0/24");
        rib.update(
            a,
            vec![(
                p,
                with(path(&[65001], "10.0.0.2"), |x| {
                    x.origin = Some(Origin::Incomplete)
                }),
            )],
            vec![],
        );
        rib.update(
            b,
            vec![(
                p,
                with(path(&[65002], "10.0.0.3"), |x| x.origin = Some(Origin::Egp)),
            )],
            vec![],
        );
        assert_eq!(best_from(&rib, "10.1.0.0/24"), Some(Source::Peer(b)));
    }

    #[test]
    fn med_is_compared_only_between_routes_from_the_same_neighbour_as() {
        let mut rib = rib(None);
        let a = peer(&mut rib, "10.0.0.2", 65001, false);
        let b = peer(&mut rib, "10.0.0.3", 65001, false);
        let p = net("10.1.0.0/24");
        rib.update(
            a,
            vec![(p, with(path(&[65001], "10.0.0.2"), |x| x.med = Some(50)))],
            vec![],
        );
        rib.update(
            b,
            vec![(p, with(path(&[65001], "10.0.0.3"), |x| x.med = Some(10)))],
            vec![],
        );
        assert_eq!(best_from(&rib, "10.1.0.0/24"), Some(Source::Peer(b)));

        // Different neighbour ASes: MED is ignored and the lower router id (10.0.0.2) wins.
        let mut rib = rib_fresh();
        let a = peer(&mut rib, "10.0.0.2", 65001, false);
        let b = peer(&mut rib, "10.0.0.3", 65002, false);
        rib.update(
            a,
            vec![(p, with(path(&[65001], "10.0.0.2"), |x| x.med = Some(50)))],
            vec![],
        );
        rib.update(
            b,
            vec![(p, with(path(&[65002], "10.0.0.3"), |x| x.med = Some(10)))],
            vec![],
        );
        assert_eq!(best_from(&rib, "10.1.0.0/24"), Some(Source::Peer(a)));
    }

    fn rib_fresh() -> Rib {
        rib(None)
    }

    #[test]
    fn ebgp_beats_ibgp_when_everything_before_is_equal() {
        let mut rib = rib(None);
        let i = peer(&mut rib, "10.0.0.2", ASN, false);
        let e = peer(&mut rib, "10.0.0.3", 65001, false);
        let p = net("10.1.0.0/24");
        rib.update(i, vec![(p, path(&[65001], "10.0.0.2"))], vec![]);
        rib.update(e, vec![(p, path(&[65001], "10.0.0.3"))], vec![]);
        assert_eq!(best_from(&rib, "10.1.0.0/24"), Some(Source::Peer(e)));
    }

    #[test]
    fn then_lowest_originator_or_router_id_then_shortest_cluster_list_then_lowest_address() {
        let mut rib = rib(None);
        let a = peer(&mut rib, "10.0.0.2", ASN, false);
        let b = peer(&mut rib, "10.0.0.3", ASN, false);
        let p = net("10.1.0.0/24");
        // b's route carries a lower ORIGINATOR_ID than a's router id.
        rib.update(a, vec![(p, path(&[], "10.0.0.2"))], vec![]);
        rib.update(
            b,
            vec![(
                p,
                with(path(&[], "10.0.0.3"), |x| {
                    x.originator_id = Some(Ipv4Addr::new(10, 0, 0, 0))
                }),
            )],
            vec![],
        );
        assert_eq!(best_from(&rib, "10.1.0.0/24"), Some(Source::Peer(b)));

        // Same originator: the shorter CLUSTER_LIST wins.
        let orig = Ipv4Addr::new(10, 9, 9, 9);
        rib.update(
            a,
            vec![(
                p,
                with(path(&[], "10.0.0.2"), |x| {
                    x.originator_id = Some(orig);
                    x.cluster_list = vec![Ipv4Addr::new(1, 1, 1, 1), Ipv4Addr::new(2, 2, 2, 2)];
                }),
            )],
            vec![],
        );
        rib.update(
            b,
            vec![(
                p,
                with(path(&[], "10.0.0.3"), |x| {
                    x.originator_id = Some(orig);
                    x.cluster_list = vec![Ipv4Addr::new(1, 1, 1, 1)];
                }),
            )],
            vec![],
        );
        assert_eq!(best_from(&rib, "10.1.0.0/24"), Some(Source::Peer(b)));

        // Everything equal: the lowest peer address.
        rib.update(
            b,
            vec![(
                p,
                with(path(&[], "10.0.0.3"), |x| {
                    x.originator_id = Some(orig);
                    x.cluster_list = vec![Ipv4Addr::new(1, 1, 1, 1), Ipv4Addr::new(2, 2, 2, 2)];
                }),
            )],
            vec![],
        );
        assert_eq!(best_from(&rib, "10.1.0.0/24"), Some(Source::Peer(a)));
    }

    #[test]
    fn our_own_announcement_beats_learned_routes_and_goes_to_every_peer() {
        let mut rib = rib(None);
        let i = peer(&mut rib, "10.0.0.2", ASN, false);
        let e = peer(&mut rib, "10.0.0.3", 65001, false);
        let p = net("10.244.0.0/26");
        rib.update(i, vec![(p, path(&[], "10.0.0.2"))], vec![]);
        let c = rib.announce_local(p, v4("10.0.0.1"));
        assert!(rib.best(&p).is_some_and(|b| b.is_local()));
        // To the iBGP peer: next hop as announced, LOCAL_PREF 100, empty AS_PATH.
        let [OutChange::Announce(_, to_i)] = &sent(&c, i)[..] else {
            panic!("{c:?}")
        };
        assert_eq!(to_i.next_hop, v4("10.0.0.1"));
        assert_eq!(to_i.attrs.local_pref, Some(DEFAULT_LOCAL_PREF));
        assert_eq!(to_i.attrs.as_path, Some(AsPath::default()));
        // To the eBGP peer: our AS prepended, no LOCAL_PREF.
        let [(_, to_e)] = &rib.adj_out(e)[..] else {
            panic!("{c:?}")
        };
        assert_eq!(to_e.attrs.as_path, Some(AsPath::sequence(&[ASN])));
        assert_eq!(to_e.attrs.local_pref, None);
        // Withdrawing falls back to the learned route, which is not sent back to its source.
        let c = rib.withdraw_local(p);
        assert_eq!(best_from(&rib, "10.244.0.0/26"), Some(Source::Peer(i)));
        assert_eq!(sent(&c, i), vec![OutChange::Withdraw(p)]);
    }

    #[test]
    fn ibgp_routes_are_not_sent_to_other_ibgp_peers_without_route_reflection() {
        let mut rib = rib(None);
        let a = peer(&mut rib, "10.0.0.2", ASN, false);
        let b = peer(&mut rib, "10.0.0.3", ASN, false);
        let e = peer(&mut rib, "10.0.0.4", 65001, false);
        let c = rib.update(a, vec![(net("10.1.0.0/24"), path(&[], "10.0.0.2"))], vec![]);
        assert!(sent(&c, b).is_empty());
        let [OutChange::Announce(_, to_e)] = &sent(&c, e)[..] else {
            panic!("{c:?}")
        };
        // Next hop self toward eBGP, MED of our own AS is kept only for local routes.
        assert_eq!(to_e.next_hop, v4("10.0.0.1"));
        assert_eq!(to_e.attrs.as_path, Some(AsPath::sequence(&[ASN])));
    }

    #[test]
    fn ebgp_routes_go_to_ibgp_peers_with_their_next_hop_and_without_med_to_other_ases() {
        let mut rib = rib(None);
        let i = peer(&mut rib, "10.0.0.2", ASN, false);
        let e = peer(&mut rib, "10.0.0.3", 65001, false);
        let e2 = peer(&mut rib, "10.0.0.4", 65002, false);
        let r = with(path(&[65001], "10.0.0.3"), |x| x.med = Some(7));
        let c = rib.update(e, vec![(net("10.1.0.0/24"), r)], vec![]);
        let [OutChange::Announce(_, to_i)] = &sent(&c, i)[..] else {
            panic!("{c:?}")
        };
        assert_eq!(to_i.next_hop, v4("10.0.0.3"));
        assert_eq!(to_i.attrs.med, Some(7));
        let [OutChange::Announce(_, to_e2)] = &sent(&c, e2)[..] else {
            panic!("{c:?}")
        };
        assert_eq!(to_e2.attrs.med, None);
        assert_eq!(to_e2.attrs.as_path, Some(AsPath::sequence(&[ASN, 65001])));
    }

    #[test]
    fn a_path_with_our_as_from_an_ebgp_peer_is_a_loop_and_ignored() {
        let mut rib = rib(None);
        let e = peer(&mut rib, "10.0.0.3", 65001, false);
        let c = rib.update(
            e,
            vec![(net("10.1.0.0/24"), path(&[65001, ASN], "10.0.0.3"))],
            vec![],
        );
        assert!(c.is_empty());
        assert!(rib.best(&net("10.1.0.0/24")).is_none());
    }

    #[test]
    fn a_route_reflector_reflects_client_routes_to_everyone_with_originator_and_cluster_list() {
        let cluster = Ipv4Addr::new(1, 1, 1, 1);
        let mut rib = rib(Some(cluster));
        let c1 = peer(&mut rib, "10.0.0.2", ASN, true);
        let c2 = peer(&mut rib, "10.0.0.3", ASN, true);
        let n = peer(&mut rib, "10.0.0.4", ASN, false);
        let ch = rib.update(
            c1,
            vec![(net("10.1.0.0/24"), path(&[], "10.0.0.2"))],
            vec![],
        );
        for to in [c2, n] {
            let [OutChange::Announce(_, p)] = &sent(&ch, to)[..] else {
                panic!("{ch:?}")
            };
            assert_eq!(p.attrs.originator_id, Some(Ipv4Addr::new(10, 0, 0, 2)));
            assert_eq!(p.attrs.cluster_list, vec![cluster]);
            assert_eq!(p.next_hop, v4("10.0.0.2"));
        }
        assert!(sent(&ch, c1).is_empty());
    }

    #[test]
    fn a_route_reflector_reflects_non_client_routes_to_clients_only() {
        let cluster = Ipv4Addr::new(1, 1, 1, 1);
        let mut rib = rib(Some(cluster));
        let c1 = peer(&mut rib, "10.0.0.2", ASN, true);
        let n1 = peer(&mut rib, "10.0.0.3", ASN, false);
        let n2 = peer(&mut rib, "10.0.0.4", ASN, false);
        let ch = rib.update(
            n1,
            vec![(net("10.1.0.0/24"), path(&[], "10.0.0.3"))],
            vec![],
        );
        assert_eq!(sent(&ch, c1).len(), 1);
        assert!(sent(&ch, n2).is_empty());
    }

    #[test]
    fn reflected_routes_carrying_our_identifier_or_cluster_are_loops() {
        let cluster = Ipv4Addr::new(1, 1, 1, 1);
        let mut rib = rib(Some(cluster));
        let c1 = peer(&mut rib, "10.0.0.2", ASN, true);
        let ours = with(path(&[], "10.0.0.9"), |x| {
            x.originator_id = Some(Ipv4Addr::new(10, 0, 0, 1))
        });
        assert!(
            rib.update(c1, vec![(net("10.1.0.0/24"), ours)], vec![])
                .is_empty()
        );
        let looped = with(path(&[], "10.0.0.9"), |x| x.cluster_list = vec![cluster]);
        assert!(
            rib.update(c1, vec![(net("10.2.0.0/24"), looped)], vec![])
                .is_empty()
        );
    }

    #[test]
    fn a_reflected_route_is_not_sent_back_to_its_originator() {
        let cluster = Ipv4Addr::new(1, 1, 1, 1);
        let mut rib = rib(Some(cluster));
        let c1 = peer(&mut rib, "10.0.0.2", ASN, true);
        let c2 = peer(&mut rib, "10.0.0.3", ASN, true);
        // c2 reflects something c1 (10.0.0.2) originated: it must not go back to c1.
        let r = with(path(&[], "10.0.0.2"), |x| {
            x.originator_id = Some(Ipv4Addr::new(10, 0, 0, 2))
        });
        let ch = rib.update(c2, vec![(net("10.1.0.0/24"), r)], vec![]);
        assert!(sent(&ch, c1).is_empty());
    }

    #[test]
    fn graceful_restart_keeps_routes_stale_until_end_of_rib() {
        let mut rib = rib(None);
        let a = peer(&mut rib, "10.0.0.2", ASN, false);
        let (p1, p2) = (net("10.1.0.0/24"), net("10.2.0.0/24"));
        let v6 = net("fd00::/64");
        rib.update(
            a,
            vec![
                (p1, path(&[], "10.0.0.2")),
                (p2, path(&[], "10.0.0.2")),
                (v6, path(&[], "10.0.0.2")),
            ],
            vec![],
        );
        let c = rib.session_down(a, true);
        assert_eq!(c.loc_rib.len(), 3);
        assert!(rib.best(&p1).is_some_and(|b| b.stale));
        // The peer comes back and refreshes p1 only.
        peer(&mut rib, "10.0.0.2", ASN, false);
        rib.update(a, vec![(p1, path(&[], "10.0.0.2"))], vec![]);
        assert!(rib.best(&p1).is_some_and(|b| !b.stale));
        let c = rib.end_of_rib(a, Family::IPV4_UNICAST);
        assert_eq!(c.loc_rib, vec![LocRibChange::Withdrawn(p2)]);
        assert!(rib.has_stale(a));
        rib.purge_stale(a);
        assert!(!rib.has_stale(a));
        assert!(rib.best(&v6).is_none());
    }

    #[test]
    fn without_graceful_restart_a_session_loss_withdraws_the_routes() {
        let mut rib = rib(None);
        let a = peer(&mut rib, "10.0.0.2", ASN, false);
        let e = peer(&mut rib, "10.0.0.3", 65001, false);
        rib.update(a, vec![(net("10.1.0.0/24"), path(&[], "10.0.0.2"))], vec![]);
        let c = rib.session_down(a, false);
        assert_eq!(c.loc_rib, vec![LocRibChange::Withdrawn(net("10.1.0.0/24"))]);
        assert_eq!(sent(&c, e), vec![OutChange::Withdraw(net("10.1.0.0/24"))]);
    }

    #[test]
    fn session_up_sends_the_whole_loc_rib_of_negotiated_families() {
        let mut rib = rib(None);
        rib.announce_local(net("10.244.0.0/26"), v4("10.0.0.1"));
        rib.announce_local(net("fd00:244::/80"), "fd00::1".parse().expect("v6"));
        let a = v4("10.0.0.2");
        rib.add_peer(PeerInfo {
            address: a,
            asn: ASN,
            rr_client: false,
            link: None,
            policy: RoutePolicy::default(),
        });
        let out = rib.session_up(
            a,
            SessionInfo {
                router_id: Ipv4Addr::new(10, 0, 0, 2),
                local_address: v4("10.0.0.1"),
                families: vec![Family::IPV4_UNICAST],
                extended_next_hop: false,
            },
        );
        assert_eq!(out.len(), 1);
        assert_eq!(rib.counts(a), (0, 1));
    }

    /// Adds and brings up an iBGP peer on our link or not (router id: its last octet).
    fn peer6(rib: &mut Rib, address: &str, rr_client: bool, link: Option<Link>) -> IpAddr {
        let a: IpAddr = address.parse().expect("v6");
        rib.add_peer(PeerInfo {
            address: a,
            asn: ASN,
            rr_client,
            link,
            policy: RoutePolicy::default(),
        });
        let IpAddr::V6(v6) = a else { panic!("v6 only") };
        rib.session_up(
            a,
            SessionInfo {
                router_id: Ipv4Addr::new(10, 0, 0, v6.octets()[15]),
                local_address: "fd00::1".parse().expect("v6"),
                families: vec![Family::IPV6_UNICAST],
                extended_next_hop: false,
            },
        );
        a
    }

    #[test]
    fn a_reflector_passes_a_link_local_next_hop_only_to_clients_on_that_link() {
        let mut rib = rib(Some(Ipv4Addr::new(1, 1, 1, 1)));
        let from = peer6(&mut rib, "fd00::2", true, Some(Link::Underlay));
        let same_link = peer6(&mut rib, "fd00::3", true, Some(Link::Underlay));
        let elsewhere = peer6(&mut rib, "fd00::4", true, None);
        // Unnumbered peers on two other interfaces: a link-local next hop is neither's.
        let eth1 = peer6(&mut rib, "fd00::5", true, Some(Link::Interface(5)));
        let eth2 = peer6(&mut rib, "fd00::6", true, Some(Link::Interface(6)));
        let prefix = net("fd00:244::/122");
        let igp_path = |next_hop: IpAddr| {
            Path::new(
                PathAttributes {
                    origin: Some(Origin::Igp),
                    as_path: Some(AsPath::default()),
                    ..Default::default()
                },
                next_hop,
            )
        };
        // A client with no usable global next hop: its link-local one.
        let ll: IpAddr = "fe80::2".parse().expect("v6");
        let p = igp_path(ll);
        let ch = rib.update(from, vec![(prefix, p)], vec![]);
        // Reflected unchanged (RFC 4456) to the client on the link the route came over...
        let [OutChange::Announce(_, out)] = &sent(&ch, same_link)[..] else {
            panic!("{ch:?}")
        };
        assert_eq!(out.next_hop, ll);
        // ...and not at all to the ones elsewhere, where fe80::2 means nothing: off any link,
        // or on another link of ours (an unnumbered session's interface).
        for to in [elsewhere, eth1, eth2] {
            assert!(sent(&ch, to).is_empty(), "{ch:?}");
            assert!(rib.adj_out(to).is_empty());
        }
        // A global next hop goes to both, alone (no link-local part is kept in the RIB).
        let global: IpAddr = "fd00::2".parse().expect("v6");
        let p = igp_path(global);
        let ch = rib.update(from, vec![(prefix, p)], vec![]);
        for to in [same_link, elsewhere] {
            let [OutChange::Announce(_, out)] = &sent(&ch, to)[..] else {
                panic!("{ch:?}")
            };
            assert_eq!(out.next_hop, global);
        }
        // Back to link-local only: withdrawn from the peer elsewhere.
        let p = igp_path(ll);
        let ch = rib.update(from, vec![(prefix, p)], vec![]);
        assert_eq!(sent(&ch, elsewhere), vec![OutChange::Withdraw(prefix)]);
        // A link-local next hop from an unnumbered peer (fe80::tor on interface 5) reaches no
        // one on the underlay nor on interface 6.
        let other = net("fd00:245::/122");
        let tor: IpAddr = "fe80::99".parse().expect("v6");
        let p = igp_path(tor);
        let ch = rib.update(eth1, vec![(other, p)], vec![]);
        for to in [from, same_link, elsewhere, eth2] {
            assert!(sent(&ch, to).is_empty(), "{ch:?}");
        }
    }

    /// An unnumbered peer on interface `index`: the session from our `fe80::1`, both
    /// families, RFC 8950 negotiated or not.
    fn unnumbered(rib: &mut Rib, address: &str, asn: u32, index: u32, extended: bool) -> IpAddr {
        let a: IpAddr = address.parse().expect("v6");
        rib.add_peer(PeerInfo {
            address: a,
            asn,
            rr_client: false,
            link: Some(Link::Interface(index)),
            policy: RoutePolicy::default(),
        });
        rib.session_up(
            a,
            SessionInfo {
                router_id: Ipv4Addr::new(10, 9, 0, index as u8),
                local_address: "fe80::1".parse().expect("v6"),
                families: vec![Family::IPV4_UNICAST, Family::IPV6_UNICAST],
                extended_next_hop: extended,
            },
        );
        a
    }

    #[test]
    fn ipv4_routes_take_ipv6_next_hops_only_where_rfc_8950_was_negotiated() {
        let ours: IpAddr = "fe80::1".parse().expect("v6");
        let mut rib = rib(None);
        let tor = unnumbered(&mut rib, "fe80::a", 65001, 5, true);
        let tor_ibgp = unnumbered(&mut rib, "fe80::b", ASN, 6, true);
        let old_tor = unnumbered(&mut rib, "fe80::c", 65003, 7, false);
        let other_tor = unnumbered(&mut rib, "fe80::d", 65004, 8, true);
        let v4_ebgp = peer(&mut rib, "10.0.0.2", 65002, false);
        let v4_ibgp = peer(&mut rib, "10.0.0.3", ASN, false);

        // Our own block: our link-local address toward the RFC 8950 peers, eBGP and iBGP; the
        // IPv4 node address toward the one without it (as before).
        let block = net("10.244.0.0/26");
        let ch = rib.announce_local(block, v4("10.0.0.1"));
        for (to, want) in [
            (tor, ours),
            (tor_ibgp, ours),
            (old_tor, v4("10.0.0.1")),
            (v4_ebgp, v4("10.0.0.1")),
        ] {
            let [OutChange::Announce(_, out)] = &sent(&ch, to)[..] else {
                panic!("to {to}: {ch:?}")
            };
            assert_eq!(out.next_hop, want, "to {to}");
        }

        // An IPv4 route from the ToR with its link-local next hop: best, via fe80::a.
        let theirs = net("10.245.0.0/26");
        let ll: IpAddr = "fe80::a".parse().expect("v6");
        let ch = rib.update(tor, vec![(theirs, path(&[65001], "10.0.0.99"))], vec![]);
        assert!(!ch.loc_rib.is_empty());
        let p = Path::new(
            PathAttributes {
                origin: Some(Origin::Igp),
                as_path: Some(AsPath::sequence(&[65001])),
                ..Default::default()
            },
            ll,
        );
        let ch = rib.update(tor, vec![(theirs, p)], vec![]);
        let best = rib.best(&theirs).expect("best");
        assert_eq!(best.next_hop, ll);
        // eBGP: our own address instead, of the family each session can carry (what they
        // had already: nothing new to send).
        for (to, want) in [(v4_ebgp, v4("10.0.0.1")), (other_tor, ours)] {
            let out = rib.adj_out(to);
            let Some((_, path)) = out.iter().find(|(p, _)| *p == theirs) else {
                panic!("to {to}: {out:?}")
            };
            assert_eq!(path.next_hop, want, "to {to}");
            assert!(sent(&ch, to).is_empty(), "to {to}: {ch:?}");
        }
        // iBGP keeps the next hop, and a peer without RFC 8950 cannot be given an IPv6 next
        // hop for an IPv4 route at all (nor can another link's peer use fe80::a): the route,
        // which went out with 10.0.0.99 before, is withdrawn from them.
        for to in [v4_ibgp, tor_ibgp, old_tor] {
            assert_eq!(sent(&ch, to), vec![OutChange::Withdraw(theirs)], "to {to}");
            assert!(!rib.adj_out(to).iter().any(|(p, _)| *p == theirs));
        }
    }

    #[test]
    fn a_received_ipv6_next_hop_falls_back_to_the_link_local_one_only_when_needed() {
        let v6 = |s: &str| s.parse::<Ipv6Addr>().expect("address");
        let ll = Some(v6("fe80::5"));
        assert_eq!(received_ipv6_next_hop(v6("fd00::5"), ll), v6("fd00::5"));
        assert_eq!(received_ipv6_next_hop(v6("fd00::5"), None), v6("fd00::5"));
        assert_eq!(received_ipv6_next_hop(v6("::"), ll), v6("fe80::5"));
        assert_eq!(received_ipv6_next_hop(v6("fe80::9"), ll), v6("fe80::5"));
        assert_eq!(received_ipv6_next_hop(v6("fe80::9"), None), v6("fe80::9"));
        assert_eq!(received_ipv6_next_hop(v6("::"), Some(v6("::"))), v6("::"));
    }

    #[test]
    fn ipv6_routes_toward_ebgp_over_an_ipv4_session_keep_an_ipv6_next_hop() {
        let nh: IpAddr = "fd00::1".parse().expect("v6");
        let prefix = net("fd00:244::/80");
        assert_eq!(next_hop_self(v4("10.0.0.1"), &prefix, nh, false), nh);
        assert_eq!(
            next_hop_self(v4("10.0.0.1"), &prefix, v4("10.0.0.1"), false),
            IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped())
        );
    }

    #[test]
    fn the_loc_rib_follows_the_winning_path_it_refers_to() {
        let mut rib = rib(None);
        let a = peer(&mut rib, "10.0.0.2", ASN, false);
        let b = peer(&mut rib, "10.0.0.3", ASN, false);
        let p = net("10.1.0.0/24");
        rib.update(a, vec![(p, path(&[], "10.0.0.2"))], vec![]);
        rib.update(b, vec![(p, path(&[65001], "10.0.0.3"))], vec![]);
        // The winner's path changes (same peer, new next hop): a new best route.
        let c = rib.update(a, vec![(p, path(&[], "10.0.0.9"))], vec![]);
        let [LocRibChange::Best(best)] = &c.loc_rib[..] else {
            panic!("{c:?}")
        };
        assert_eq!(best.next_hop, v4("10.0.0.9"));
        assert_eq!(rib.best(&p).as_ref(), Some(best));
        // The loser's changes are none of the Loc-RIB's business.
        let c = rib.update(b, vec![(p, path(&[65002], "10.0.0.3"))], vec![]);
        assert!(c.loc_rib.is_empty(), "{c:?}");
        // Graceful restart: stale once, not again.
        let c = rib.session_down(a, true);
        assert!(matches!(&c.loc_rib[..], [LocRibChange::Best(b)] if b.stale));
        assert!(rib.session_down(a, true).loc_rib.is_empty());
        // The winner's peer goes: the other path wins.
        let c = rib.remove_peer(a);
        let [LocRibChange::Best(best)] = &c.loc_rib[..] else {
            panic!("{c:?}")
        };
        assert_eq!(best.source, Source::Peer(b));
        assert_eq!(rib.loc_rib().collect::<Vec<_>>(), vec![best.clone()]);
    }

    #[test]
    fn removing_a_peer_withdraws_its_routes() {
        let mut rib = rib(None);
        let a = peer(&mut rib, "10.0.0.2", ASN, false);
        rib.update(a, vec![(net("10.1.0.0/24"), path(&[], "10.0.0.2"))], vec![]);
        let c = rib.remove_peer(a);
        assert_eq!(c.loc_rib, vec![LocRibChange::Withdrawn(net("10.1.0.0/24"))]);
    }
}
