//! The kernel side: a blackhole route for every prefix the node announces, and a route for
//! every best path learned from a peer. All carry our BGP route protocol number, and learned
//! routes a metric of their own, so a replace never touches a route someone else made (a
//! connected route of the underlay, a pod's host route).

use std::collections::BTreeSet;

use ipnet::IpNet;
use trellis_bgp::{BestRoute, LocRibChange};
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

fn learned(b: &BestRoute) -> Option<Route> {
    if b.is_local() {
        return None;
    }
    // A next hop of the other family (IPv4-mapped IPv6, say) cannot be installed as is.
    if b.prefix.addr().is_ipv4() != b.next_hop.is_ipv4() {
        return None;
    }
    // ECMP: every next hop of the equally good paths (of the prefix's family) in one route.
    let mut hops = vec![b.next_hop];
    hops.extend(
        b.multipath
            .iter()
            .filter(|h| h.is_ipv4() == b.next_hop.is_ipv4()),
    );
    Some(
        Route::via_all(b.prefix, &hops)
            .protocol(proto::BGP)
            .priority(METRIC),
    )
}

/// Learned routes in the kernel, kept in step with the Loc-RIB.
#[derive(Debug, Default)]
pub struct Installed {
    failures: u64,
    fenced: u64,
}

impl Installed {
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
            LocRibChange::Best(b) => match learned(b) {
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

    /// Every best path installed as it should be; with `sweep`, learned routes of ours that the
    /// RIB does not hold (left by an earlier run) removed.
    pub async fn reconcile(
        &mut self,
        host: &Handle,
        rib: &[BestRoute],
        sweep: bool,
    ) -> trellis_net::Result<()> {
        let existing: Vec<Route> = ours(host)
            .await?
            .into_iter()
            .filter(|r| r.kind == RouteKind::Unicast)
            .collect();
        let wanted: Vec<Route> = rib.iter().filter_map(learned).collect();
        for w in &wanted {
            let present = existing.iter().any(|r| {
                r.dst == w.dst && r.gateways() == w.gateways() && r.priority == w.priority
            });
            if !present {
                host.replace_route(w).await?;
            }
        }
        if sweep {
            for r in &existing {
                if !wanted
                    .iter()
                    .any(|w| w.dst == r.dst && w.gateways() == r.gateways())
                {
                    tracing::info!(prefix = %r.dst, "removing a stale learned route");
                    host.delete_route(r).await?;
                }
            }
        }
        Ok(())
    }
}
