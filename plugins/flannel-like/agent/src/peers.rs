//! What the VTEP must hold for every other node, and bringing the kernel to exactly that.
//!
//! Per remote node, as flannel does: a permanent neighbour entry for its VTEP address (its
//! block's network address) with its VTEP MAC, an FDB entry sending that MAC to its node
//! address, then the route `<block> via <vtep addr> dev trellis.1 onlink` — added in that order
//! (a route first would make the kernel ARP for the gateway), removed in the reverse. The VTEP
//! is ours alone, so any entry on it that no node asks for is stale and goes. A node holding more
//! than one block (canal mode, when its first fills up) gets one route per block, all through the
//! VTEP address of its first.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use trellis_net::{Family, Handle, Link, Mac, Route, RouteKind};

/// Another node, as its Node object describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub vtep_mac: Mac,
    pub node_ip: Ipv4Addr,
    /// Its first block: its VTEP's address is this block's network address.
    pub block: Ipv4Net,
    /// The blocks it took after the first, routed the same way.
    pub extra_blocks: Vec<Ipv4Net>,
}

impl Peer {
    /// Its VTEP's address: the network address of its block (no broadcast routes get made).
    pub fn vtep_addr(&self) -> Ipv4Addr {
        self.block.network()
    }

    /// Every block it routes to its pods, the first one first.
    pub fn blocks(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        std::iter::once(self.block).chain(self.extra_blocks.iter().copied())
    }

    fn routes(&self, vtep: u32) -> impl Iterator<Item = Route> + '_ {
        self.blocks().map(move |b| {
            Route::via(IpNet::V4(b), IpAddr::V4(self.vtep_addr()))
                .oif(vtep)
                .onlink()
                .protocol(trellis_net::proto::OVERLAY)
        })
    }
}

/// What a reconcile changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: usize,
    pub removed: usize,
}

/// Brings the VTEP's neighbours, FDB and routes to exactly `peers` (keyed by node name).
pub async fn reconcile(
    h: &Handle,
    vtep: &Link,
    peers: &BTreeMap<String, Peer>,
) -> trellis_net::Result<Changes> {
    let mut changes = Changes::default();
    let neighbours = h.neighbours(Some(vtep.index)).await?;
    let fdb = h.fdb(vtep.index).await?;
    let routes: Vec<Route> = h
        .routes(Family::V4, Some(Route::TABLE_MAIN))
        .await?
        .into_iter()
        .filter(|r| {
            r.oif == Some(vtep.index)
                && r.kind == RouteKind::Unicast
                && r.protocol == trellis_net::proto::OVERLAY
        })
        .collect();

    for peer in peers.values() {
        let vtep_ip = IpAddr::V4(peer.vtep_addr());
        if !neighbours
            .iter()
            .any(|n| n.ip == vtep_ip && n.mac == Some(peer.vtep_mac) && n.permanent)
        {
            h.ensure_neighbour(vtep.index, vtep_ip, peer.vtep_mac)
                .await?;
            changes.added += 1;
        }
        let node_ip = IpAddr::V4(peer.node_ip);
        if !fdb
            .iter()
            .any(|e| e.mac == peer.vtep_mac && e.dst == Some(node_ip))
        {
            h.ensure_fdb(vtep.index, peer.vtep_mac, node_ip).await?;
            changes.added += 1;
        }
        for want in peer.routes(vtep.index) {
            if !routes
                .iter()
                .any(|r| r.dst == want.dst && r.gateway == want.gateway && r.onlink)
            {
                h.replace_route(&want).await?;
                changes.added += 1;
            }
        }
    }

    // Stale entries, in the reverse order: route, FDB, neighbour.
    let blocks: Vec<IpNet> = peers
        .values()
        .flat_map(Peer::blocks)
        .map(IpNet::V4)
        .collect();
    for r in routes.iter().filter(|r| !blocks.contains(&r.dst)) {
        if h.delete_route(r).await? {
            changes.removed += 1;
        }
    }
    for e in &fdb {
        let wanted = peers
            .values()
            .any(|p| p.vtep_mac == e.mac && e.dst == Some(IpAddr::V4(p.node_ip)));
        if !wanted
            && let Some(dst) = e.dst
            && h.delete_fdb(vtep.index, e.mac, dst).await?
        {
            changes.removed += 1;
        }
    }
    for n in &neighbours {
        let wanted = peers
            .values()
            .any(|p| IpAddr::V4(p.vtep_addr()) == n.ip && Some(p.vtep_mac) == n.mac);
        if !wanted && h.delete_neighbour(vtep.index, n.ip).await? {
            changes.removed += 1;
        }
    }
    Ok(changes)
}
