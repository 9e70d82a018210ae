//! Export: RIB changes to the subscribers and to the peers' tasks, and a session's
//! Adj-RIB-Out changes packed into UPDATEs.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;
use tokio::sync::mpsc::error::TrySendError;
use tracing::{debug, warn};

use super::peer::{PeerMsg, PeerTask, owned};
use super::{Core, PEER_QUEUE, SUBSCRIBER_BACKLOG};
use crate::codec::{CeaseSubcode, Family, Message, Notification, update};
use crate::fsm::{Event, State};
use crate::rib::{self, Changes, OutChange, Path};

impl Core {
    /// Hands RIB changes to the subscribers and the peers' tasks, waiting for none of them. A
    /// subscriber whose queue is full is dropped (it learns it from its closed stream, see
    /// [`Speaker::subscribe`](super::Speaker::subscribe)); a session whose queue is full gets
    /// no more exports and its task is told to reset it (see [`PeerTask::on_overflow`]).
    pub(super) fn apply(&mut self, changes: Changes) {
        // Timestamps of the propagation path (`RUST_LOG=bgp_timing=debug`; issue 18): a
        // Loc-RIB change here, its UPDATEs sent in `send_out`, its kernel write in the agent.
        debug!(target: "bgp_timing", best = changes.loc_rib.len(), peers = changes.out.len(), "rib changed");
        for change in changes.loc_rib {
            self.subscribers
                .retain(|s| match s.try_send(change.clone()) {
                    Ok(()) => true,
                    Err(TrySendError::Full(_)) => {
                        warn!(
                            backlog = SUBSCRIBER_BACKLOG,
                            "a route subscriber fell behind: disconnected"
                        );
                        false
                    }
                    Err(TrySendError::Closed(_)) => false,
                });
        }
        // Deferred after a restart: nothing goes out; each session gets its whole Adj-RIB-Out
        // when the deferral ends.
        let out = if self.deferring() {
            Default::default()
        } else {
            changes.out
        };
        for (address, out) in out {
            if let Some(slot) = self.peers.get_mut(&address)
                && slot.generation != 0
            {
                let export = PeerMsg::Export {
                    generation: slot.generation,
                    changes: out,
                };
                if let Err(TrySendError::Full(_)) = slot.tx.try_send(export) {
                    // The peer can no longer be told everything in order: rather than leave it
                    // with a gap, the session stops here and starts over.
                    slot.generation = 0;
                    slot.overflow.notify_one();
                }
            }
        }
    }
}

/// The link-local next hop that goes with `next_hop` (RFC 2545 §3): ours on the shared link,
/// when `next_hop` is our own global one; none for a next hop that is someone else's.
fn link_local_for(ours: Option<(Ipv6Addr, Ipv6Addr)>, next_hop: Ipv6Addr) -> Option<Ipv6Addr> {
    ours.filter(|(global, _)| *global == next_hop)
        .map(|(_, link_local)| link_local)
}

impl PeerTask {
    /// Resets the session whose exports overflowed [`PEER_QUEUE`]: a Cease (out of resources),
    /// then the automatic restart, after which the peer gets the whole Adj-RIB-Out again. The
    /// overflow is recognised by the slot's generation having been cleared while this task's
    /// session is still up; a session that went down and up since is left alone.
    pub(super) async fn on_overflow(&mut self) {
        let address = self.address();
        let overflowed = owned(&self.shared, address, self.slot_id)
            .and_then(|core| core.peers.get(&address).map(|slot| slot.generation))
            .is_some_and(|generation| generation != self.generation);
        if self.generation == 0 || !overflowed || self.fsm.state() != State::Established {
            return;
        }
        warn!(peer = %address, queue = PEER_QUEUE, "the peer fell behind our UPDATEs: resetting the session");
        let cease = Notification::cease(CeaseSubcode::OutOfResources);
        self.step(Event::AutomaticStop(cease)).await;
    }

    /// ROUTE-REFRESH (RFC 2918): the whole Adj-RIB-Out of the family again.
    pub(super) async fn refresh(&mut self, family: Family) {
        let routes = match owned(&self.shared, self.config.address, self.slot_id) {
            Some(core) => core.rib.adj_out(self.config.address),
            None => return,
        };
        let changes = routes
            .into_iter()
            .filter(|(prefix, _)| rib::family_of(prefix) == family)
            .map(|(prefix, path)| OutChange::Announce(prefix, path))
            .collect();
        self.send_out(changes).await;
    }

    /// Packs Adj-RIB-Out changes into UPDATEs (prefixes sharing attributes travel together)
    /// and sends them.
    pub(super) async fn send_out(&mut self, changes: Vec<OutChange>) {
        let mut groups: Vec<(Path, Vec<IpNet>)> = Vec::new();
        let (mut gone_v4, mut gone_v6) = (Vec::new(), Vec::new());
        for change in changes {
            match change {
                OutChange::Announce(prefix, path) => {
                    match groups.iter_mut().find(|(p, _)| *p == path) {
                        Some((_, prefixes)) => prefixes.push(prefix),
                        None => groups.push((path, vec![prefix])),
                    }
                }
                OutChange::Withdraw(IpNet::V4(p)) => gone_v4.push(p),
                OutChange::Withdraw(IpNet::V6(p)) => gone_v6.push(p),
            }
        }
        let mut updates = update::withdraw_v4(&gone_v4);
        updates.extend(update::withdraw_v6(&gone_v6));
        for (path, prefixes) in groups {
            let (v4, v6): (Vec<IpNet>, Vec<IpNet>) = prefixes
                .into_iter()
                .partition(|p| matches!(p, IpNet::V4(_)));
            let v4: Vec<_> = v4
                .into_iter()
                .filter_map(|p| match p {
                    IpNet::V4(p) => Some(p),
                    IpNet::V6(_) => None,
                })
                .collect();
            let v6: Vec<_> = v6
                .into_iter()
                .filter_map(|p| match p {
                    IpNet::V6(p) => Some(p),
                    IpNet::V4(_) => None,
                })
                .collect();
            if !v4.is_empty()
                && let IpAddr::V4(next_hop) = path.next_hop
            {
                let mut attrs = (*path.attrs).clone();
                attrs.next_hop = Some(next_hop);
                match update::announce_v4(&attrs, &v4, &self.cx) {
                    Ok(u) => updates.extend(u),
                    Err(e) => warn!(error = %e, "cannot encode IPv4 announcement"),
                }
            }
            if !v6.is_empty() {
                let next_hop = rib::ipv6_next_hop(path.next_hop);
                let link_local = link_local_for(self.config.link_local_next_hop, next_hop);
                match update::announce_v6(&path.attrs, next_hop, link_local, &v6, &self.cx) {
                    Ok(u) => updates.extend(u),
                    Err(e) => warn!(error = %e, "cannot encode IPv6 announcement"),
                }
            }
        }
        let n = updates.len();
        for u in updates {
            if !self.send(&Message::Update(u)).await {
                return;
            }
        }
        debug!(target: "bgp_timing", peer = %self.address(), updates = n, "updates sent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_link_local_goes_only_with_our_own_global_next_hop() {
        let global: Ipv6Addr = "fd00:198:18::2".parse().unwrap_or(Ipv6Addr::UNSPECIFIED);
        let ll: Ipv6Addr = "fe80::2".parse().unwrap_or(Ipv6Addr::UNSPECIFIED);
        let other: Ipv6Addr = "fd00:198:18::3".parse().unwrap_or(Ipv6Addr::UNSPECIFIED);
        assert_eq!(link_local_for(Some((global, ll)), global), Some(ll));
        assert_eq!(link_local_for(Some((global, ll)), other), None);
        assert_eq!(link_local_for(None, global), None);
    }
}
