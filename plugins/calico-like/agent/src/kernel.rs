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

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use ipnet::IpNet;
use trellis_bgp::{BestRoute, LocRibChange, Source};
use trellis_net::{Family, Handle, Route, RouteKind, proto};

/// The metric of learned routes (BIRD's kernel protocol uses 32; any fixed value of ours works).
pub const METRIC: u32 = 20;

fn families() -> [Family; 2] {
    [Family::V4, Family::V6]
}

async fn ours(host: &Handle) -> trellis_net::Result<Vec<Route>> {
    let mut out = Vec::new();
    for f in families() {
        out.extend(
            host.routes(f, Some(Route::TABLE_MAIN))
                .await?
                .into_iter()
                .filter(|r| r.protocol == proto::BGP),
        );
    }
    Ok(out)
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
    for r in ours(host).await? {
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
    let existing = ours(host).await?;
    for r in existing.iter().filter(|r| r.kind == RouteKind::Blackhole) {
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

/// Whether the kernel can forward `prefix` via `hop` as it is: same family, and no
/// IPv4-mapped IPv6 address (what a peer without IPv6 sends for an IPv6 route).
fn installable(prefix: &IpNet, hop: &IpAddr) -> bool {
    match hop {
        IpAddr::V4(_) => prefix.addr().is_ipv4(),
        IpAddr::V6(v6) => prefix.addr().is_ipv6() && v6.to_ipv4_mapped().is_none(),
    }
}

fn is_link_local(hop: &IpAddr) -> bool {
    matches!(hop, IpAddr::V6(v6) if v6.is_unicast_link_local())
}

/// The interfaces of unnumbered peers (by peer address): the link-local next hops they send
/// are on those links. Shared between the sessions (which add and remove peers) and
/// [`Installed`].
pub type PeerLinks = Arc<Mutex<BTreeMap<IpAddr, u32>>>;

/// Records (`Some`) or forgets (`None`) the interface of the unnumbered peer at `peer`.
pub fn set_peer_link(links: &PeerLinks, peer: IpAddr, index: Option<u32>) {
    let mut links = links.lock().unwrap_or_else(|e| e.into_inner());
    match index {
        Some(i) => links.insert(peer, i),
        None => links.remove(&peer),
    };
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
    // ECMP: every next hop of the equally good paths (of the prefix's family) in one route.
    let mut hops = vec![b.next_hop];
    hops.extend(
        b.multipath
            .iter()
            .filter(|h| installable(&b.prefix, h) && !is_link_local(h)),
    );
    Some(
        Route::via_all(b.prefix, &hops)
            .protocol(proto::BGP)
            .priority(METRIC),
    )
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
}

impl Installed {
    /// Nothing installed yet; link-local next hops are reached through interface `link_oif`.
    pub fn new(link_oif: u32) -> Installed {
        Installed {
            link_oif,
            peer_links: PeerLinks::default(),
            failures: 0,
            fenced: 0,
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

    /// Applies one Loc-RIB change. `current` says whether a best route still is: one that is
    /// not (its session ended while changes queued behind it) is skipped, so a session that
    /// has ended installs nothing more; its withdrawal follows in the stream.
    pub async fn apply(
        &mut self,
        host: &Handle,
        change: &LocRibChange,
        current: impl Fn(&BestRoute) -> bool,
    ) {
        if let LocRibChange::Best(b) = change
            && !b.is_local()
            && !current(b)
        {
            self.fenced += 1;
            return;
        }
        let result = match change {
            LocRibChange::Best(b) => match self.learned(b) {
                Some(r) => host.replace_route(&r).await,
                // Our own prefix is best now: a learned route for it must go.
                None => host
                    .delete_route(&Route::to(b.prefix).protocol(proto::BGP).priority(METRIC))
                    .await
                    .map(|_| ()),
            },
            LocRibChange::Withdrawn(p) => host
                .delete_route(&Route::to(*p).protocol(proto::BGP).priority(METRIC))
                .await
                .map(|_| ()),
        };
        if let Err(e) = result {
            self.failures += 1;
            tracing::warn!(error = %e, "programming a learned route");
        }
    }

    /// Every best path installed as it should be (a route already in place as wanted is not
    /// touched: no flap); with `sweep`, learned routes of ours that the RIB does not hold (left
    /// by an earlier run) removed. Returns how many were swept.
    ///
    /// `rib` is a snapshot, and installing it takes a while: a route whose session ends
    /// meanwhile must not be installed after its withdrawal was applied, so each one is checked
    /// with `current` (still the best path) right before it goes in, as [`Installed::apply`]
    /// does.
    pub async fn reconcile(
        &mut self,
        host: &Handle,
        rib: &[BestRoute],
        sweep: bool,
        current: impl Fn(&BestRoute) -> bool,
    ) -> trellis_net::Result<usize> {
        let existing: Vec<Route> = ours(host)
            .await?
            .into_iter()
            .filter(|r| r.kind == RouteKind::Unicast)
            .collect();
        let wanted: Vec<(&BestRoute, Route)> = rib
            .iter()
            .filter_map(|b| self.learned(b).map(|r| (b, r)))
            .collect();
        for (b, w) in &wanted {
            // A link-local next hop is only right on its own interface.
            let present = existing.iter().any(|r| {
                r.dst == w.dst
                    && r.gateways() == w.gateways()
                    && r.priority == w.priority
                    && (w.oif.is_none() || r.oif == w.oif)
            });
            if !present {
                if !current(b) {
                    self.fenced += 1;
                    continue;
                }
                host.replace_route(w).await?;
            }
        }
        let mut swept = 0;
        if sweep {
            for r in &existing {
                if !wanted
                    .iter()
                    .any(|(_, w)| w.dst == r.dst && w.gateways() == r.gateways())
                {
                    tracing::info!(prefix = %r.dst, "removing a stale learned route");
                    host.delete_route(r).await?;
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
    use trellis_bgp::codec::PathAttributes;

    fn best(prefix: &str, next_hop: &str, multipath: &[&str]) -> BestRoute {
        BestRoute {
            prefix: prefix.parse().unwrap(),
            next_hop: next_hop.parse().unwrap(),
            source: Source::Peer("198.18.0.13".parse().unwrap()),
            attrs: PathAttributes::default(),
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
    fn mismatched_or_mapped_next_hops_are_not_installed() {
        assert!(
            learned(
                &best("fd00:10:244::/122", "::ffff:198.18.0.13", &[]),
                7,
                &none()
            )
            .is_none()
        );
        assert!(learned(&best("10.244.1.0/26", "fd00::13", &[]), 7, &none()).is_none());
        assert!(learned(&best("fd00:10:244::/122", "198.18.0.13", &[]), 7, &none()).is_none());
        let mut own = best("10.244.1.0/26", "198.18.0.12", &[]);
        own.source = Source::Local;
        assert!(learned(&own, 7, &none()).is_none());
    }
}
