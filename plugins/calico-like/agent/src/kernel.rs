//! The kernel side: a blackhole route for every prefix the node announces, and a route for
//! every best path learned from a peer. All carry our BGP route protocol number, and learned
//! routes a metric of their own, so a replace never touches a route someone else made (a
//! connected route of the underlay, a pod's host route).
//!
//! IPv6 routes go like IPv4 ones. A next hop the speaker took from a peer's link-local
//! address (RFC 2545: the peer sent no usable global one) is installed `via fe80::… dev
//! <iface>`: the interface of the unnumbered session it came over (`--peer
//! [fe80::1%eth1]:ASN`), else the underlay, which the other sessions run over; such a route
//! carries that one next hop (no multipath). An IPv4-mapped next hop (a peer without an IPv6 address) is not installable
//! and is left out.
//!
//! An IPv4 route may have an IPv6 next hop (RFC 8950, learned over an unnumbered session that
//! negotiated it): installed `via inet6 fe80::… dev <iface>` (netlink RTA_VIA) in the same way.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use ipnet::IpNet;
use trellis_bgp::{BestRoute, LocRibChange, Source};
use trellis_net::{Family, Handle, Route, RouteKind, RouteOp, RouteWriter, proto};

/// The metric of learned routes (BIRD's kernel protocol uses 32; any fixed value of ours works).
pub const METRIC: u32 = 20;

/// Learned routes fenced (checked still best) together and then written in one system call.
/// The fence holds only for the time one group takes to write, so a session that ends while a
/// burst of its routes is being installed adds at most this many more; per route it costs a
/// system call each, which a full table cannot afford.
const FENCE: usize = 32;

fn families() -> [Family; 2] {
    [Family::V4, Family::V6]
}

/// Our routes in the main tables (of `kind` only, when given), kept as the dump comes in: the
/// learned ones can be a full table.
async fn ours(host: &Handle, kind: Option<RouteKind>) -> trellis_net::Result<Vec<Route>> {
    let mut out = Vec::new();
    for f in families() {
        out.extend(
            host.routes_where(f, Some(Route::TABLE_MAIN), |r| {
                r.protocol == proto::BGP && kind.is_none_or(|k| r.kind == k)
            })
            .await?,
        );
    }
    Ok(out)
}

/// The routes of `sorted` (sorted by destination) to `dst`.
fn to_dst<'a>(sorted: &'a [Route], dst: &IpNet) -> &'a [Route] {
    let start = sorted.partition_point(|r| r.dst < *dst);
    let rest = &sorted[start..];
    &rest[..rest.partition_point(|r| r.dst == *dst)]
}

/// What an earlier run of the agent left in the kernel: its routes (blackholes and learned
/// ones) stay when it stops or crashes, so their presence at start is how the agent knows it
/// restarted with its forwarding state kept (a reboot, which loses the pods too, leaves none).
#[derive(Debug, Default)]
pub struct Kept {
    /// Learned routes (a peer's next hop), to be swept unless the RIB refreshes them.
    pub learned: Vec<Route>,
    /// Blackholes of the node's own blocks.
    pub blackholes: usize,
    /// The families with any of them: their forwarding state was kept (graceful restart's F
    /// bit).
    pub families: BTreeSet<trellis_bgp::codec::Family>,
}

impl Kept {
    /// Nothing kept: a fresh start.
    pub fn is_empty(&self) -> bool {
        self.learned.is_empty() && self.blackholes == 0
    }
}

/// The routes of ours in the kernel now.
pub async fn kept(host: &Handle) -> trellis_net::Result<Kept> {
    let mut out = Kept::default();
    for r in ours(host, None).await? {
        match r.kind {
            RouteKind::Blackhole => out.blackholes += 1,
            RouteKind::Unicast => out.learned.push(r.clone()),
            _ => continue,
        }
        out.families.insert(match r.dst {
            IpNet::V4(_) => trellis_bgp::codec::Family::IPV4_UNICAST,
            IpNet::V6(_) => trellis_bgp::codec::Family::IPV6_UNICAST,
        });
    }
    Ok(out)
}

/// A cold start: the learned routes an earlier run left are removed at once (graceful
/// restart's restarting side off). Returns how many.
pub async fn flush_learned(host: &Handle, kept: &Kept) -> trellis_net::Result<usize> {
    for r in &kept.learned {
        host.delete_route(r).await?;
    }
    Ok(kept.learned.len())
}

/// Blackholes exactly for `wanted`: missing ones added, ours for prefixes no longer announced
/// removed.
pub async fn sync_blackholes(host: &Handle, wanted: &BTreeSet<IpNet>) -> trellis_net::Result<()> {
    let existing = ours(host, Some(RouteKind::Blackhole)).await?;
    for r in &existing {
        if !wanted.contains(&r.dst) {
            host.delete_route(r).await?;
        }
    }
    for p in wanted {
        if !existing
            .iter()
            .any(|r| r.kind == RouteKind::Blackhole && r.dst == *p)
        {
            host.replace_route(&Route::blackhole(*p).protocol(proto::BGP))
                .await?;
        }
    }
    Ok(())
}

/// Whether the kernel can forward `prefix` via `hop` as it is: an IPv4 next hop for an IPv4
/// prefix; an IPv6 one for either family (`via inet6` for IPv4, RFC 8950), but no IPv4-mapped
/// IPv6 address (what a peer without IPv6 sends for an IPv6 route).
fn installable(prefix: &IpNet, hop: &IpAddr) -> bool {
    match hop {
        IpAddr::V4(_) => prefix.addr().is_ipv4(),
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_none(),
    }
}

fn is_link_local(hop: &IpAddr) -> bool {
    matches!(hop, IpAddr::V6(v6) if v6.is_unicast_link_local())
}

/// The interfaces of unnumbered peers (by peer address): the link-local next hops they send
/// are on those links. Shared between the sessions (which add and remove peers) and
/// [`Installed`].
pub type PeerLinks = Arc<Mutex<BTreeMap<IpAddr, u32>>>;

/// Records (`Some`) or forgets (`None`) the interface of the unnumbered peer at `peer`;
/// returns the one recorded before.
pub fn set_peer_link(links: &PeerLinks, peer: IpAddr, index: Option<u32>) -> Option<u32> {
    let mut links = links.lock().unwrap_or_else(|e| e.into_inner());
    match index {
        Some(i) => links.insert(peer, i),
        None => links.remove(&peer),
    }
}

/// The kernel route of a learned best route; link-local next hops leave through the
/// interface of the unnumbered peer the route came from, else through `link_oif`.
fn learned(b: &BestRoute, link_oif: u32, peer_links: &BTreeMap<IpAddr, u32>) -> Option<Route> {
    if b.is_local() || !installable(&b.prefix, &b.next_hop) {
        return None;
    }
    if is_link_local(&b.next_hop) {
        let oif = match b.source {
            Source::Peer(peer) => peer_links.get(&peer).copied().unwrap_or(link_oif),
            Source::Local => link_oif,
        };
        return Some(
            Route::via(b.prefix, b.next_hop)
                .oif(oif)
                .protocol(proto::BGP)
                .priority(METRIC),
        );
    }
    // ECMP: every next hop of the equally good paths (of the best one's family) in one route.
    let mut hops = vec![b.next_hop];
    hops.extend(b.multipath.iter().filter(|h| {
        installable(&b.prefix, h) && !is_link_local(h) && h.is_ipv4() == b.next_hop.is_ipv4()
    }));
    Some(
        Route::via_all(b.prefix, &hops)
            .protocol(proto::BGP)
            .priority(METRIC),
    )
}

/// The route that removes a learned route to `prefix` (whatever its next hops).
fn unlearned(prefix: IpNet) -> Route {
    Route::to(prefix).protocol(proto::BGP).priority(METRIC)
}

/// Learned routes in the kernel, kept in step with the Loc-RIB.
#[derive(Debug)]
pub struct Installed {
    /// The interface link-local next hops are on (the underlay's)…
    link_oif: u32,
    /// …unless they came from an unnumbered peer: its interface.
    peer_links: PeerLinks,
    failures: u64,
    fenced: u64,
    /// Batches of route changes in one system call each (a full table from a peer is
    /// thousands of routes); `None` when its socket could not be opened: one netlink request
    /// per route through `host` then.
    writer: Option<RouteWriter>,
}

impl Installed {
    /// Nothing installed yet; link-local next hops are reached through interface `link_oif`.
    /// Routes are written in the calling thread's network namespace (the one of the agent's
    /// `host` handle).
    pub fn new(link_oif: u32) -> Installed {
        let writer = match RouteWriter::current() {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "no batch route socket: one request per route");
                None
            }
        };
        Installed {
            link_oif,
            peer_links: PeerLinks::default(),
            failures: 0,
            fenced: 0,
            writer,
        }
    }

    /// Link-local next hops from the peers in `links` leave through their interfaces.
    pub fn with_peer_links(mut self, links: PeerLinks) -> Installed {
        self.peer_links = links;
        self
    }

    fn learned(&self, b: &BestRoute) -> Option<Route> {
        let links = self.peer_links.lock().unwrap_or_else(|e| e.into_inner());
        learned(b, self.link_oif, &links)
    }

    /// Learned routes the kernel refused so far (a metric: the next resync retries them).
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// Best routes not installed because they were no longer best when their turn came.
    pub fn fenced(&self) -> u64 {
        self.fenced
    }

    /// Writes `ops` in order, in batches: per op, done (true), a delete of nothing (false),
    /// or the kernel's refusal.
    async fn write(&mut self, host: &Handle, ops: &[RouteOp]) -> Vec<trellis_net::Result<bool>> {
        if let Some(w) = self.writer.as_mut() {
            return w.apply(ops);
        }
        let mut out = Vec::with_capacity(ops.len());
        for op in ops {
            out.push(match op {
                RouteOp::Replace(r) => host.replace_route(r).await.map(|()| true),
                RouteOp::Delete(r) => host.delete_route(r).await,
            });
        }
        out
    }

    /// Applies one Loc-RIB change. `current` says whether a best route still is: one that is
    /// not (its session ended while changes queued behind it) is skipped, so a session that
    /// has ended installs nothing more; its withdrawal follows in the stream.
    pub async fn apply(
        &mut self,
        host: &Handle,
        change: &LocRibChange,
        current: impl Fn(&BestRoute) -> bool,
    ) {
        self.apply_all(host, std::slice::from_ref(change), current)
            .await;
    }

    /// Applies Loc-RIB changes, in order, as [`Installed::apply`] does one: only the last
    /// change of each prefix counts (the ones before it would be overwritten at once), each
    /// best route is fenced with `current` right before its group of [`FENCE`] goes in, one
    /// system call per group.
    pub async fn apply_all(
        &mut self,
        host: &Handle,
        changes: &[LocRibChange],
        current: impl Fn(&BestRoute) -> bool,
    ) {
        let prefix_of = |c: &LocRibChange| match c {
            LocRibChange::Best(b) => b.prefix,
            LocRibChange::Withdrawn(p) => *p,
        };
        let mut last: HashMap<IpNet, usize> = HashMap::with_capacity(changes.len());
        for (i, c) in changes.iter().enumerate() {
            last.insert(prefix_of(c), i);
        }
        let mut ops = Vec::with_capacity(FENCE.min(last.len()));
        for (i, c) in changes.iter().enumerate() {
            if last.get(&prefix_of(c)) != Some(&i) {
                continue;
            }
            ops.push(match c {
                LocRibChange::Best(b) if !b.is_local() && !current(b) => {
                    self.fenced += 1;
                    continue;
                }
                LocRibChange::Best(b) => match self.learned(b) {
                    Some(r) => RouteOp::Replace(r),
                    // Our own prefix is best now: a learned route for it must go.
                    None => RouteOp::Delete(unlearned(b.prefix)),
                },
                LocRibChange::Withdrawn(p) => RouteOp::Delete(unlearned(*p)),
            });
            if ops.len() == FENCE {
                self.write_counted(host, &ops).await;
                ops.clear();
            }
        }
        self.write_counted(host, &ops).await;
    }

    /// Writes `ops`, counting and logging the kernel's refusals (the next resync retries them).
    async fn write_counted(&mut self, host: &Handle, ops: &[RouteOp]) {
        for result in self.write(host, ops).await {
            if let Err(e) = result {
                self.failures += 1;
                tracing::warn!(error = %e, "programming a learned route");
            }
        }
    }

    /// Every best path installed as it should be (a route already in place as wanted is not
    /// touched: no flap); with `sweep`, learned routes of ours that the RIB does not hold (left
    /// by an earlier run) removed. Returns how many were swept.
    ///
    /// `rib` is a snapshot, and installing it takes a while: a route whose session ends
    /// meanwhile must not be installed after its withdrawal was applied, so each one is checked
    /// with `current` (still the best path) right before its group of [`FENCE`] goes in, as
    /// [`Installed::apply_all`] does.
    pub async fn reconcile(
        &mut self,
        host: &Handle,
        rib: &[BestRoute],
        sweep: bool,
        current: impl Fn(&BestRoute) -> bool,
    ) -> trellis_net::Result<usize> {
        // Looked up by destination in the sorted dump (a full table is 100,000 routes and
        // more): no index of its own, and no kernel route built per best route ahead of time.
        let mut existing = ours(host, Some(RouteKind::Unicast)).await?;
        existing.sort_unstable_by_key(|r| r.dst);
        let mut installs = Vec::with_capacity(FENCE);
        for b in rib {
            let Some(w) = self.learned(b) else {
                continue;
            };
            let in_place = to_dst(&existing, &w.dst).iter().any(|r| {
                r.gateways() == w.gateways()
                    && r.priority == w.priority
                    // A link-local next hop is only right on its own interface.
                    && (w.oif.is_none() || r.oif == w.oif)
            });
            if !in_place {
                if !current(b) {
                    self.fenced += 1;
                    continue;
                }
                installs.push(RouteOp::Replace(w));
                if installs.len() == FENCE {
                    for result in self.write(host, &installs).await {
                        result?;
                    }
                    installs.clear();
                }
            }
        }
        for result in self.write(host, &installs).await {
            result?;
        }
        let mut swept = 0;
        if sweep {
            let mut wanted: Vec<&BestRoute> = rib.iter().collect();
            // By the destination their kernel routes have (host bits cleared).
            wanted.sort_unstable_by_key(|b| b.prefix.trunc());
            let stale: Vec<RouteOp> = existing
                .iter()
                .filter(|r| {
                    let from = wanted.partition_point(|b| b.prefix.trunc() < r.dst);
                    !wanted[from..]
                        .iter()
                        .take_while(|b| b.prefix.trunc() == r.dst)
                        .filter_map(|b| self.learned(b))
                        .any(|w| w.gateways() == r.gateways())
                })
                .map(|r| {
                    tracing::info!(prefix = %r.dst, "removing a stale learned route");
                    RouteOp::Delete(r.clone())
                })
                .collect();
            for result in self.write(host, &stale).await {
                if result? {
                    swept += 1;
                }
            }
        }
        Ok(swept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn best(prefix: &str, next_hop: &str, multipath: &[&str]) -> BestRoute {
        BestRoute {
            prefix: prefix.parse().unwrap(),
            next_hop: next_hop.parse().unwrap(),
            source: Source::Peer("198.18.0.13".parse().unwrap()),
            attrs: Default::default(),
            stale: false,
            multipath: multipath.iter().map(|h| h.parse().unwrap()).collect(),
        }
    }

    fn none() -> BTreeMap<IpAddr, u32> {
        BTreeMap::new()
    }

    #[test]
    fn a_link_local_next_hop_leaves_through_its_unnumbered_peers_interface() {
        let links = BTreeMap::from([("198.18.0.13".parse().unwrap(), 9)]);
        let r = learned(&best("fd00:10:245::/122", "fe80::13", &[]), 7, &links).unwrap();
        assert_eq!(r.gateways(), vec!["fe80::13".parse::<IpAddr>().unwrap()]);
        assert_eq!(r.oif, Some(9), "the session's interface, not the underlay");
        let mut other = best("fd00:10:245::/122", "fe80::13", &[]);
        other.source = Source::Peer("198.18.0.14".parse().unwrap());
        assert_eq!(learned(&other, 7, &links).unwrap().oif, Some(7));
        // A global next hop names no interface, whoever sent it.
        let r = learned(&best("fd00:10:245::/122", "fd00::13", &[]), 7, &links).unwrap();
        assert_eq!(r.oif, None);
    }

    #[test]
    fn ipv6_routes_install_via_global_or_link_local_next_hops() {
        let r = learned(
            &best("fd00:10:244::/122", "fd00:198:18::13", &[]),
            7,
            &none(),
        )
        .unwrap();
        assert_eq!(
            r.gateways(),
            vec!["fd00:198:18::13".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(r.oif, None);
        assert_eq!(r.protocol, proto::BGP);
        let r = learned(
            &best("fd00:10:244::/122", "fe80::13", &["fe80::14"]),
            7,
            &none(),
        )
        .unwrap();
        assert_eq!(r.gateways(), vec!["fe80::13".parse::<IpAddr>().unwrap()]);
        assert_eq!(r.oif, Some(7), "a link-local next hop names its interface");
        let r = learned(
            &best("fd00:10:244::/122", "fd00::13", &["fe80::14", "fd00::15"]),
            7,
            &none(),
        )
        .unwrap();
        assert_eq!(
            r.gateways().len(),
            2,
            "link-local hops stay out of multipath"
        );
    }

    #[test]
    fn an_ipv4_route_with_an_ipv6_next_hop_is_installed_via_inet6() {
        // RFC 8950 over an unnumbered session: `via inet6 fe80::13 dev <its interface>`.
        let links = BTreeMap::from([("198.18.0.13".parse().unwrap(), 9)]);
        let r = learned(&best("10.245.0.0/26", "fe80::13", &[]), 7, &links).unwrap();
        assert_eq!(r.dst, "10.245.0.0/26".parse::<IpNet>().unwrap());
        assert_eq!(r.gateways(), vec!["fe80::13".parse::<IpAddr>().unwrap()]);
        assert_eq!(r.oif, Some(9), "the session's interface");
        assert_eq!((r.protocol, r.priority), (proto::BGP, Some(METRIC)));
        // A global IPv6 next hop names no interface; multipath keeps the best one's family.
        let r = learned(
            &best("10.245.0.0/26", "fd00::13", &["fd00::14", "198.18.0.14"]),
            7,
            &links,
        )
        .unwrap();
        assert_eq!(r.oif, None);
        assert_eq!(
            r.gateways(),
            vec![
                "fd00::13".parse::<IpAddr>().unwrap(),
                "fd00::14".parse::<IpAddr>().unwrap()
            ]
        );
    }

    #[test]
    fn mismatched_or_mapped_next_hops_are_not_installed() {
        assert!(
            learned(
                &best("fd00:10:244::/122", "::ffff:198.18.0.13", &[]),
                7,
                &none()
            )
            .is_none()
        );
        assert!(
            learned(
                &best("10.244.1.0/26", "::ffff:198.18.0.13", &[]),
                7,
                &none()
            )
            .is_none()
        );
        assert!(learned(&best("fd00:10:244::/122", "198.18.0.13", &[]), 7, &none()).is_none());
        let mut own = best("10.244.1.0/26", "198.18.0.12", &[]);
        own.source = Source::Local;
        assert!(learned(&own, 7, &none()).is_none());
    }
}
