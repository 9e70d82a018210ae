//! Export: RIB changes to the subscribers and to the peers' sessions, and a session's
//! Adj-RIB-Out changes packed into UPDATEs.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use ipnet::IpNet;
use tokio::sync::mpsc::error::TrySendError;
use tracing::{debug, warn};

use super::peer::{PeerMsg, PeerTask, owned};
use super::writer::{Encoded, Export, Flushed};
use super::{Core, PEER_QUEUE};

/// Exports of at most this many changes are encoded and written where the RIB changed; larger
/// ones are encoded by the sessions' tasks (once for all), outside the RIB's lock.
const INLINE_EXPORT: usize = 256;
use crate::codec::{self, CeaseSubcode, Context, Family, Message, Notification, update};
use crate::fsm::{Event, State};
use crate::rib::{self, Changes, OutChange, Path};

impl Core {
    /// Hands RIB changes to the subscribers and the peers' sessions, waiting for none of them.
    /// A subscriber is told which prefixes changed (see
    /// [`Speaker::subscribe`](super::Speaker::subscribe)). A session's UPDATEs are encoded once
    /// for all sessions that get the same bytes and written to its socket at once (a large
    /// export, or one that must wait behind its task's sending, goes through the task); a
    /// session with [`PEER_QUEUE`] exports waiting gets no more and its task is told to reset
    /// it (see [`PeerTask::on_overflow`]).
    pub(super) fn apply(&mut self, changes: Changes) {
        // Timestamps of the propagation path (`RUST_LOG=bgp_timing=debug`; issue 18): a
        // Loc-RIB change here, its UPDATEs sent in `send_out`, its kernel write in the agent.
        debug!(target: "bgp_timing", best = changes.loc_rib.len(), peers = changes.out.len(), "rib changed");
        self.subscribers.retain(|s| !s.is_gone());
        for change in &changes.loc_rib {
            let prefix = match change {
                rib::LocRibChange::Best(b) => b.prefix,
                rib::LocRibChange::Withdrawn(p) => *p,
            };
            for s in &self.subscribers {
                s.changed(prefix);
            }
        }
        // Deferred after a restart: nothing goes out; each session gets its whole Adj-RIB-Out
        // when the deferral ends.
        let out = if self.deferring() {
            Default::default()
        } else {
            changes.out
        };
        // One encoding per group of sessions that get the same bytes, written to each
        // session's socket here and now (see `writer`): no session waits for its task.
        let mut groups: Vec<Arc<Export>> = Vec::new();
        for (address, out) in out {
            let Some(slot) = self.peers.get_mut(&address) else {
                continue;
            };
            let Some(session) = slot.session.as_ref().filter(|_| slot.generation != 0) else {
                continue;
            };
            let export = match groups
                .iter()
                .find(|e| e.same_bytes(&out, &session.cx, session.link_local, session.unnumbered))
            {
                Some(e) => Arc::clone(e),
                None => {
                    let e = Arc::new(Export::new(
                        out,
                        session.cx,
                        session.link_local,
                        session.unnumbered,
                    ));
                    groups.push(Arc::clone(&e));
                    e
                }
            };
            // A large export is encoded by the task, outside the RIB's lock.
            let inline = export.changes.len() <= INLINE_EXPORT;
            let overflowed = match session.writer.try_direct(inline, || export.encoded()) {
                Some((waiting, flushed)) => {
                    if flushed != Flushed::Done {
                        session.writer.wake.notify_one();
                    }
                    waiting > PEER_QUEUE
                }
                None => {
                    let export = PeerMsg::Export {
                        generation: slot.generation,
                        export,
                    };
                    match slot.tx.try_send(export) {
                        Ok(()) => false,
                        Err(e) => {
                            session.writer.unqueue();
                            matches!(e, TrySendError::Full(_))
                        }
                    }
                }
            };
            if overflowed {
                // The peer can no longer be told everything in order: rather than leave it
                // with a gap, the session stops here and starts over.
                slot.generation = 0;
                slot.overflow.notify_one();
            }
        }
        if !groups.is_empty() {
            debug!(target: "bgp_timing", encodings = groups.len(), "updates written");
        }
    }
}

/// Adj-RIB-Out changes packed into UPDATEs (prefixes sharing attributes travel together),
/// encoded for a session with context `cx` and IPv6 link-local next hop `link_local`
/// (`unnumbered`: a session to a link-local peer address, see [`v6_next_hop`]).
pub(super) fn encode_changes(
    changes: &[OutChange],
    cx: &Context,
    link_local: Option<(Ipv6Addr, Ipv6Addr)>,
    unnumbered: bool,
) -> Encoded {
    let mut groups: Vec<(&Path, Vec<IpNet>)> = Vec::new();
    let (mut gone_v4, mut gone_v6) = (Vec::new(), Vec::new());
    for change in changes {
        match change {
            OutChange::Announce(prefix, path) => {
                match groups.iter_mut().find(|(p, _)| *p == path) {
                    Some((_, prefixes)) => prefixes.push(*prefix),
                    None => groups.push((path, vec![*prefix])),
                }
            }
            OutChange::Withdraw(IpNet::V4(p)) => gone_v4.push(*p),
            OutChange::Withdraw(IpNet::V6(p)) => gone_v6.push(*p),
        }
    }
    let mut updates = update::withdraw_v4(&gone_v4);
    updates.extend(update::withdraw_v6(&gone_v6));
    for (path, prefixes) in groups {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for p in prefixes {
            match p {
                IpNet::V4(p) => v4.push(p),
                IpNet::V6(p) => v6.push(p),
            }
        }
        if !v4.is_empty() {
            match path.next_hop {
                IpAddr::V4(next_hop) => {
                    let mut attrs = (*path.attrs).clone();
                    attrs.next_hop = Some(next_hop);
                    match update::announce_v4(&attrs, &v4, cx) {
                        Ok(u) => updates.extend(u),
                        Err(e) => warn!(error = %e, "cannot encode IPv4 announcement"),
                    }
                }
                // RFC 8950 (the RIB gives an IPv4 route an IPv6 next hop only on a session
                // that negotiated it): MP_REACH_NLRI, next hop fields as for IPv6 routes.
                IpAddr::V6(v6) => {
                    let (next_hop, link_local) = v6_next_hop(link_local, unnumbered, v6);
                    match update::announce_v4_via_v6(&path.attrs, next_hop, link_local, &v4, cx) {
                        Ok(u) => updates.extend(u),
                        Err(e) => warn!(error = %e, "cannot encode IPv4 announcement"),
                    }
                }
            }
        }
        if !v6.is_empty() {
            let (next_hop, link_local) =
                v6_next_hop(link_local, unnumbered, rib::ipv6_next_hop(path.next_hop));
            match update::announce_v6(&path.attrs, next_hop, link_local, &v6, cx) {
                Ok(u) => updates.extend(u),
                Err(e) => warn!(error = %e, "cannot encode IPv6 announcement"),
            }
        }
    }
    let mut out = Encoded::default();
    for u in updates {
        match codec::encode(&Message::Update(u), cx) {
            Ok(bytes) => {
                out.bytes.extend_from_slice(&bytes);
                out.messages += 1;
                out.updates += 1;
            }
            Err(e) => warn!(error = %e, "cannot encode UPDATE"),
        }
    }
    out
}

/// The link-local next hop that goes with `next_hop` (RFC 2545 §3): ours on the shared link,
/// when `next_hop` is our own global one; none for a next hop that is someone else's. A next
/// hop that is itself link-local (a route reflected from a peer that sent no usable global
/// one; the RIB sends those only to peers on that link) goes as link-local — in the second
/// field, with the global field the same, as FRR sends a link-local-only next hop — never as
/// a 16-byte "global" next hop.
fn link_local_for(ours: Option<(Ipv6Addr, Ipv6Addr)>, next_hop: Ipv6Addr) -> Option<Ipv6Addr> {
    if next_hop.is_unicast_link_local() {
        return Some(next_hop);
    }
    ours.filter(|(global, _)| *global == next_hop)
        .map(|(_, link_local)| link_local)
}

/// The `(global, link-local)` fields of an IPv6 next hop sent to a peer. Ours (`next_hop` our
/// global address, or our link-local one: an eBGP next-hop-self over a link-local session)
/// goes with our link-local address; over an unnumbered session both fields carry it — the
/// peer shares no global prefix with us — as BIRD and FRR send on such links. Someone else's
/// next hop goes alone.
fn v6_next_hop(
    ours: Option<(Ipv6Addr, Ipv6Addr)>,
    unnumbered: bool,
    next_hop: Ipv6Addr,
) -> (Ipv6Addr, Option<Ipv6Addr>) {
    match ours {
        Some((global, ll)) if unnumbered && (next_hop == global || next_hop == ll) => {
            (ll, Some(ll))
        }
        _ => (next_hop, link_local_for(ours, next_hop)),
    }
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
            Some(core) => {
                // Changes after this snapshot must not overtake it (see `writer`).
                if let Some(conn) = self.conn.as_ref() {
                    conn.writer.hold();
                }
                core.rib.adj_out(self.config.address)
            }
            None => return,
        };
        let changes = routes
            .into_iter()
            .filter(|(prefix, _)| rib::family_of(prefix) == family)
            .map(|(prefix, path)| OutChange::Announce(prefix, path))
            .collect();
        self.send_out(changes).await;
        self.release_writer();
    }

    /// Packs Adj-RIB-Out changes into UPDATEs and sends them (waiting for the socket, behind
    /// whatever is queued).
    pub(super) async fn send_out(&mut self, changes: Vec<OutChange>) {
        let encoded = encode_changes(
            &changes,
            &self.cx,
            self.config.link_local_next_hop,
            self.config.is_unnumbered(),
        );
        let n = encoded.updates;
        if self.send_encoded(Arc::new(encoded)).await {
            debug!(target: "bgp_timing", peer = %self.address(), updates = n, "updates sent");
        }
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
        // A reflected link-local next hop stays link-local (32 bytes), not a "global" one.
        let theirs: Ipv6Addr = "fe80::7".parse().unwrap_or(Ipv6Addr::UNSPECIFIED);
        assert_eq!(link_local_for(Some((global, ll)), theirs), Some(theirs));
        assert_eq!(link_local_for(None, theirs), Some(theirs));
    }

    #[test]
    fn an_ipv4_route_with_an_ipv6_next_hop_goes_in_mp_reach_nlri() {
        use crate::codec::{Decoded, MpReach, PathAttributes};
        let v6 = |s: &str| s.parse::<Ipv6Addr>().unwrap_or(Ipv6Addr::UNSPECIFIED);
        let (global, ll) = (v6("fd00:99::12"), v6("fe80::2"));
        let block: IpNet = "10.244.0.0/26".parse().expect("net");
        let cx = Context {
            four_octet_as: true,
        };
        let decoded = |encoded: Encoded| {
            let Ok(Decoded::Message(Message::Update(u))) = codec::decode(&encoded.bytes, &cx)
            else {
                panic!("one UPDATE: {encoded:?}")
            };
            u
        };
        let attrs = PathAttributes {
            origin: Some(codec::Origin::Igp),
            as_path: Some(codec::AsPath::sequence(&[64512])),
            ..Default::default()
        };
        let path = Path::new(attrs.clone(), IpAddr::V6(ll));
        let changes = [OutChange::Announce(block, path)];
        // Unnumbered: our link-local address in both fields; no NEXT_HOP, no IPv4 NLRI field.
        let u = decoded(encode_changes(&changes, &cx, Some((global, ll)), true));
        let IpNet::V4(v4) = block else { panic!("v4") };
        assert_eq!(
            u.mp_reach,
            Some(MpReach::Ipv4ViaIpv6 {
                next_hop: ll,
                link_local: Some(ll),
                nlri: vec![v4],
            })
        );
        assert!(u.nlri.is_empty() && u.attributes.next_hop.is_none());
        // Without a global address of ours (an IPv4-only node): the same.
        let u = decoded(encode_changes(&changes, &cx, None, true));
        assert!(matches!(
            u.mp_reach,
            Some(MpReach::Ipv4ViaIpv6 { next_hop, link_local: Some(l), .. }) if next_hop == ll && l == ll
        ));
        // A numbered IPv6 session (RFC 8950 configured): global and link-local.
        let path = Path::new(attrs, IpAddr::V6(global));
        let changes = [OutChange::Announce(block, path)];
        let u = decoded(encode_changes(&changes, &cx, Some((global, ll)), false));
        assert!(matches!(
            u.mp_reach,
            Some(MpReach::Ipv4ViaIpv6 { next_hop, link_local: Some(l), .. }) if next_hop == global && l == ll
        ));
    }

    #[test]
    fn over_an_unnumbered_session_our_next_hop_is_our_link_local_in_both_fields() {
        let v6 = |s: &str| s.parse::<Ipv6Addr>().unwrap_or(Ipv6Addr::UNSPECIFIED);
        let (global, ll, other) = (v6("fd00:198:18::2"), v6("fe80::2"), v6("fd00:198:18::3"));
        let ours = Some((global, ll));
        assert_eq!(v6_next_hop(ours, true, global), (ll, Some(ll)));
        // eBGP next-hop-self over a link-local session: our session address is the link-local.
        assert_eq!(v6_next_hop(ours, true, ll), (ll, Some(ll)));
        assert_eq!(v6_next_hop(ours, true, other), (other, None));
        // A numbered session on a shared link: global and link-local.
        assert_eq!(v6_next_hop(ours, false, global), (global, Some(ll)));
        assert_eq!(v6_next_hop(ours, false, other), (other, None));
        assert_eq!(v6_next_hop(None, true, global), (global, None));
    }
}
