//! Real sessions over loopback TCP (127.0.0.x, ephemeral ports): two and three speakers over
//! iBGP and eBGP, hold-timer expiry, graceful restart, route reflection and collisions.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::*;
use trellis_bgp::codec::{AsPath, Capability, Family, GrFamily, GracefulRestartCap, Message};
use trellis_bgp::fsm::State;
use trellis_bgp::speaker::PEER_QUEUE;
use trellis_bgp::{DeferralEnd, LocRibChange, Recovery, RecoveryStatus, Source};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ibgp_speakers_exchange_replace_and_withdraw_routes() {
    let a = speaker("127.0.0.1", ASN, |_| {}).await;
    let b = speaker("127.0.0.2", ASN, |_| {}).await;
    let mut b_changes = b.subscribe();
    a.announce(net("10.244.1.0/26"), ip("127.0.0.1"))
        .expect("announce");
    b.announce(net("10.244.2.0/26"), ip("127.0.0.2"))
        .expect("announce");
    b.announce(net("fd00:244:2::/80"), ip("fd00::2"))
        .expect("announce");
    link(&a, &b);
    established(&a, addr(&b)).await;
    established(&b, addr(&a)).await;

    let r = route_where(&b, "10.244.1.0/26", "learned from a", |r| !r.is_local()).await;
    assert_eq!(r.next_hop, ip("127.0.0.1"));
    // The change stream tells each state that was there when it was read (latest wins).
    let mut seen = Vec::new();
    let mut read = |seen: &mut Vec<Option<std::net::IpAddr>>| {
        while let Ok(change) = b_changes.try_recv() {
            if let LocRibChange::Best(r) = &change
                && r.prefix == net("10.244.1.0/26")
            {
                seen.push(Some(r.next_hop));
            }
            if change == LocRibChange::Withdrawn(net("10.244.1.0/26")) {
                seen.push(None);
            }
        }
    };
    read(&mut seen);
    assert_eq!(r.source, Source::Peer(addr(&a)));
    assert_eq!(r.attrs.local_pref, Some(100));
    let r = route_where(&a, "10.244.2.0/26", "learned from b", |_| true).await;
    assert_eq!(r.next_hop, ip("127.0.0.2"));
    let r = route_where(&a, "fd00:244:2::/80", "IPv6 learned from b", |_| true).await;
    assert_eq!(r.next_hop, ip("fd00::2"));

    // Replace: a new next hop for the same prefix.
    a.announce(net("10.244.1.0/26"), ip("127.0.0.11"))
        .expect("announce");
    route_where(&b, "10.244.1.0/26", "replaced", |r| {
        r.next_hop == ip("127.0.0.11")
    })
    .await;
    read(&mut seen);

    // Withdraw.
    a.withdraw(net("10.244.1.0/26")).expect("withdraw");
    no_route(&b, "10.244.1.0/26").await;

    read(&mut seen);
    assert_eq!(
        seen,
        vec![Some(ip("127.0.0.1")), Some(ip("127.0.0.11")), None]
    );

    let status = a.peer(addr(&b)).expect("peer");
    assert_eq!(status.state, State::Established);
    assert_eq!(status.remote_id, Some(Ipv4Addr::new(127, 0, 0, 2)));
    assert_eq!(status.hold_time, 9);
    assert!(status.uptime().is_some());
    assert_eq!(status.prefixes_received, 2);
    assert_eq!(status.prefixes_sent, 0);
    assert!(status.updates_received >= 3, "{status:?}");
    assert!(status.updates_sent >= 3, "{status:?}");
    assert_eq!(status.established_transitions, 1);
}

#[tokio::test]
async fn ebgp_prepends_the_as_and_uses_next_hop_self() {
    let a = speaker("127.0.0.1", 65001, |_| {}).await;
    let b = speaker("127.0.0.2", 4_200_000_002, |_| {}).await;
    a.announce(net("10.1.0.0/24"), ip("127.0.0.99"))
        .expect("announce");
    b.announce(net("10.2.0.0/24"), ip("127.0.0.98"))
        .expect("announce");
    link(&a, &b);

    let r = route_where(&b, "10.1.0.0/24", "learned over eBGP", |_| true).await;
    assert_eq!(r.next_hop, ip("127.0.0.1"));
    assert_eq!(r.attrs.as_path, Some(AsPath::sequence(&[65001])));
    assert_eq!(r.attrs.local_pref, None);
    let r = route_where(&a, "10.2.0.0/24", "learned over eBGP", |_| true).await;
    assert_eq!(r.next_hop, ip("127.0.0.2"));
    assert_eq!(r.attrs.as_path, Some(AsPath::sequence(&[4_200_000_002])));
}

#[tokio::test]
async fn three_speakers_ibgp_split_horizon_and_ebgp_transit() {
    // a —iBGP— b —iBGP— c   and   b —eBGP— e
    let a = speaker("127.0.0.1", ASN, |_| {}).await;
    let b = speaker("127.0.0.2", ASN, |_| {}).await;
    let c = speaker("127.0.0.3", ASN, |_| {}).await;
    let e = speaker("127.0.0.4", 65100, |_| {}).await;
    link(&a, &b);
    link(&c, &b);
    link(&e, &b);
    a.announce(net("10.244.1.0/26"), ip("127.0.0.1"))
        .expect("announce");
    e.announce(net("172.16.0.0/16"), ip("127.0.0.4"))
        .expect("announce");

    // b learns a's route; c does not (iBGP split horizon); e gets it with b's AS and next hop.
    route_where(&b, "10.244.1.0/26", "at b", |_| true).await;
    let at_e = route_where(&e, "10.244.1.0/26", "at e", |_| true).await;
    assert_eq!(at_e.next_hop, ip("127.0.0.2"));
    assert_eq!(at_e.attrs.as_path, Some(AsPath::sequence(&[ASN])));

    // e's route reaches a and c through b, next hop unchanged inside the AS.
    for s in [&a, &c] {
        let r = route_where(s, "172.16.0.0/16", "external route inside the AS", |_| true).await;
        assert_eq!(r.next_hop, ip("127.0.0.4"));
        assert_eq!(r.attrs.as_path, Some(AsPath::sequence(&[65100])));
    }
    assert!(route(&c, "10.244.1.0/26").is_none());

    // A withdrawal at e propagates across both hops.
    e.withdraw(net("172.16.0.0/16")).expect("withdraw");
    no_route(&a, "172.16.0.0/16").await;
    no_route(&c, "172.16.0.0/16").await;
}

#[tokio::test]
async fn a_route_reflector_reflects_between_two_clients() {
    let cluster = Ipv4Addr::new(10, 255, 0, 1);
    let rr = speaker("127.0.0.1", ASN, |c| c.cluster_id = Some(cluster)).await;
    let c1 = speaker("127.0.0.2", ASN, |_| {}).await;
    let c2 = speaker("127.0.0.3", ASN, |_| {}).await;
    for client in [&c1, &c2] {
        let mut p = peer_of(&rr, client, true);
        p.rr_client = true;
        rr.add_peer(p).expect("add client");
        client
            .add_peer(peer_of(client, &rr, false))
            .expect("add rr");
    }
    c1.announce(net("10.244.1.0/26"), ip("127.0.0.2"))
        .expect("announce");
    c2.announce(net("10.244.2.0/26"), ip("127.0.0.3"))
        .expect("announce");

    let r = route_where(&c2, "10.244.1.0/26", "reflected to c2", |_| true).await;
    assert_eq!(r.next_hop, ip("127.0.0.2"));
    assert_eq!(r.source, Source::Peer(addr(&rr)));
    assert_eq!(r.attrs.originator_id, Some(Ipv4Addr::new(127, 0, 0, 2)));
    assert_eq!(r.attrs.cluster_list, vec![cluster]);
    let r = route_where(&c1, "10.244.2.0/26", "reflected to c1", |_| true).await;
    assert_eq!(r.attrs.originator_id, Some(Ipv4Addr::new(127, 0, 0, 3)));

    c1.withdraw(net("10.244.1.0/26")).expect("withdraw");
    no_route(&c2, "10.244.1.0/26").await;
}

#[tokio::test]
async fn hold_timer_expiry_removes_the_peers_routes() {
    let s = speaker("127.0.0.1", ASN, |c| c.hold_time = 3).await;
    let mut p = trellis_bgp::PeerConfig::new(ip("127.0.0.5"), ASN);
    p.passive = true;
    s.add_peer(p).expect("add raw peer");
    let to = s.local_addr().expect("listens");

    // The raw peer even advertises graceful restart: hold-timer expiry still removes routes.
    let mut raw = RawPeer::connect(ip("127.0.0.5"), to).await;
    let gr = GracefulRestartCap::new(
        false,
        60,
        vec![GrFamily {
            family: Family::IPV4_UNICAST,
            forwarding_preserved: true,
        }],
    );
    let open = trellis_bgp::codec::Open::new(
        ASN,
        3,
        RAW_ID,
        vec![
            Capability::FourOctetAs(ASN),
            Capability::GracefulRestart(gr),
        ],
    );
    raw.send(&Message::Open(open)).await;
    raw.send(&Message::Keepalive).await;
    established(&s, ip("127.0.0.5")).await;
    raw.send_raw(&good_update()).await;
    route_where(&s, RAW_PREFIX, "learned from the raw peer", |_| true).await;

    // Silence: no KEEPALIVE from now on.
    let started = tokio::time::Instant::now();
    let n = bounded("hold timer NOTIFICATION", raw.notification()).await;
    assert_eq!((n.code, n.subcode), (4, 0));
    assert!(started.elapsed() <= Duration::from_secs(4));
    no_route(&s, RAW_PREFIX).await;
    assert_ne!(state(&s, ip("127.0.0.5")), Some(State::Established));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restart_keeps_routes_stale_then_refreshes_them() {
    let a = speaker("127.0.0.1", ASN, |_| {}).await;
    let b = speaker("127.0.0.2", ASN, |_| {}).await;
    let b_listen = b.local_addr().expect("listens");
    // a's change stream, read as it comes (it tells the state at reading time: a withdrawal
    // undone before it was read would not show).
    let withdrawals = withdrawals_of(a.subscribe(), net("10.244.2.0/26"));
    b.announce(net("10.244.2.0/26"), ip("127.0.0.2"))
        .expect("announce");
    b.announce(net("10.244.3.0/26"), ip("127.0.0.2"))
        .expect("announce");
    a.add_peer(peer_of(&a, &b, true)).expect("add peer");
    b.add_peer(peer_of(&b, &a, false)).expect("add peer");
    route_where(&a, "10.244.2.0/26", "learned", |r| !r.stale).await;
    route_where(&a, "10.244.3.0/26", "learned", |r| !r.stale).await;

    // b crashes: no NOTIFICATION, the TCP connection just closes.
    drop(b);
    route_where(&a, "10.244.2.0/26", "kept stale", |r| r.stale).await;
    assert!(route(&a, "10.244.3.0/26").is_some_and(|r| r.stale));

    // b comes back on the same address and port, having kept its forwarding state (R bit,
    // F bit for IPv4), now announcing only one of the two.
    let b = speaker("127.0.0.2", ASN, |c| {
        c.listen = Some(b_listen);
        c.recovery = Some(recovery(Duration::from_secs(30)));
    })
    .await;
    b.announce(net("10.244.2.0/26"), ip("127.0.0.2"))
        .expect("announce");
    b.add_peer(peer_of(&b, &a, false)).expect("add peer");
    route_where(&a, "10.244.2.0/26", "refreshed", |r| !r.stale).await;
    // End-of-RIB purges what b did not send again.
    no_route(&a, "10.244.3.0/26").await;
    // a saw the R bit; b's deferral ended on a's End-of-RIB, long before its timer.
    let seen = a.peer(addr(&b)).expect("peer");
    assert!(seen.peer_restarted, "{seen:?}");
    assert_eq!(seen.peer_restarts, 1);
    assert_eq!(
        b.recovery(),
        Some(RecoveryStatus::Done(DeferralEnd::EndOfRib))
    );
    assert!(!*b.deferring().borrow());

    // The refreshed route was never withdrawn from a's Loc-RIB during the restart.
    drop(a);
    assert_eq!(withdrawals.await.expect("the reader"), 0);
}

/// Reads `changes` until its speaker goes, counting the withdrawals of `prefix` read.
fn withdrawals_of(
    mut changes: trellis_bgp::Subscription,
    prefix: ipnet::IpNet,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok(Some(change)) =
            tokio::time::timeout(Duration::from_secs(60), changes.recv()).await
        {
            n += usize::from(change == LocRibChange::Withdrawn(prefix));
        }
        n
    })
}

/// The restarting side's recovery: IPv4 kept.
fn recovery(deferral: Duration) -> Recovery {
    Recovery {
        preserved: vec![Family::IPV4_UNICAST],
        deferral,
    }
}

/// The negative control of the restarting side: b comes back without recovery (a cold start,
/// F bit clear), so a drops b's stale routes as soon as the new session is up (RFC 4724
/// §4.2) — a withdrawal in a's Loc-RIB that the recovery above never shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_restart_without_forwarding_state_has_the_peer_drop_the_stale_routes() {
    let a = speaker("127.0.0.1", ASN, |_| {}).await;
    let b = speaker("127.0.0.2", ASN, |_| {}).await;
    let b_listen = b.local_addr().expect("listens");
    b.announce(net("10.244.2.0/26"), ip("127.0.0.2"))
        .expect("announce");
    a.add_peer(peer_of(&a, &b, true)).expect("add peer");
    b.add_peer(peer_of(&b, &a, false)).expect("add peer");
    route_where(&a, "10.244.2.0/26", "learned", |r| !r.stale).await;
    drop(b);
    route_where(&a, "10.244.2.0/26", "kept stale", |r| r.stale).await;
    let withdrawals = withdrawals_of(a.subscribe(), net("10.244.2.0/26"));
    let b = speaker("127.0.0.2", ASN, |c| c.listen = Some(b_listen)).await;
    // b announces nothing yet: a's stale copy is gone once the session is up.
    b.add_peer(peer_of(&b, &a, false)).expect("add peer");
    established(&a, addr(&b)).await;
    no_route(&a, "10.244.2.0/26").await;
    assert!(!a.peer(addr(&b)).expect("peer").peer_restarted);
    assert_eq!(b.recovery(), None);
    drop(a);
    assert_eq!(withdrawals.await.expect("the reader"), 1);
}

/// A restarting speaker holds its UPDATEs while a peer's End-of-RIB is due; a peer that never
/// comes up holds them until the selection deferral timer runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarting_speaker_holds_its_routes_until_the_deferral_timer_when_a_peer_never_comes() {
    let a = speaker("127.0.0.1", ASN, |_| {}).await;
    let deferral = Duration::from_secs(8);
    let b = speaker("127.0.0.2", ASN, |c| c.recovery = Some(recovery(deferral))).await;
    let started = std::time::Instant::now();
    b.announce(net("10.244.2.0/26"), ip("127.0.0.2"))
        .expect("announce");
    a.announce(net("10.244.1.0/26"), ip("127.0.0.1"))
        .expect("announce");
    // A second peer of b's that never answers (nothing listens there).
    let mut ghost = trellis_bgp::PeerConfig::new(ip("127.0.0.9"), ASN);
    ghost.port = 9;
    b.add_peer(ghost).expect("add peer");
    link(&a, &b);
    established(&b, addr(&a)).await;
    // b has a's routes (a never waits for a restarting peer), a has nothing from b yet.
    route_where(
        &b,
        "10.244.1.0/26",
        "learned by the restarting side",
        |_| true,
    )
    .await;
    match b.recovery() {
        Some(RecoveryStatus::Deferring { waiting_for, .. }) => {
            assert_eq!(waiting_for, vec![ip("127.0.0.9")])
        }
        other => panic!("{other:?}"),
    }
    assert!(b.peer(ip("127.0.0.9")).expect("ghost").awaiting_end_of_rib);
    assert!(!b.peer(addr(&a)).expect("a").awaiting_end_of_rib);
    assert!(
        route(&a, "10.244.2.0/26").is_none(),
        "held during the deferral"
    );
    route_where(&a, "10.244.2.0/26", "sent after the timer", |_| true).await;
    assert!(
        started.elapsed() >= deferral - Duration::from_millis(100),
        "sent after {:?}, before the deferral timer",
        started.elapsed()
    );
    assert_eq!(b.recovery(), Some(RecoveryStatus::Done(DeferralEnd::Timer)));
}

#[tokio::test]
async fn stale_routes_are_purged_when_the_restart_time_runs_out() {
    let a = speaker("127.0.0.1", ASN, |_| {}).await;
    let b = speaker("127.0.0.2", ASN, |c| c.restart_time = 2).await;
    b.announce(net("10.244.2.0/26"), ip("127.0.0.2"))
        .expect("announce");
    link(&a, &b);
    route_where(&a, "10.244.2.0/26", "learned", |r| !r.stale).await;
    drop(b);
    route_where(&a, "10.244.2.0/26", "kept stale", |r| r.stale).await;
    let started = tokio::time::Instant::now();
    no_route(&a, "10.244.2.0/26").await;
    assert!(started.elapsed() <= Duration::from_secs(4));
}

#[tokio::test]
async fn without_graceful_restart_a_lost_session_withdraws_at_once() {
    let a = speaker("127.0.0.1", ASN, |c| c.graceful_restart = false).await;
    let b = speaker("127.0.0.2", ASN, |_| {}).await;
    b.announce(net("10.244.2.0/26"), ip("127.0.0.2"))
        .expect("announce");
    link(&a, &b);
    route_where(&a, "10.244.2.0/26", "learned", |_| true).await;
    drop(b);
    no_route(&a, "10.244.2.0/26").await;
}

/// BFD's verdict (`session_failed`): the session ends at once and its routes are withdrawn,
/// never kept stale, although both sides have graceful restart (the negative control, a
/// session lost with graceful restart keeping its routes stale, is
/// `graceful_restart_keeps_routes_stale_then_refreshes_them`).
#[tokio::test]
async fn a_path_failure_ends_the_session_and_withdraws_without_graceful_restart() {
    let a = speaker("127.0.0.1", ASN, |_| {}).await;
    let b = speaker("127.0.0.2", ASN, |_| {}).await;
    b.announce(net("10.244.2.0/26"), ip("127.0.0.2"))
        .expect("announce");
    link(&a, &b);
    route_where(&a, "10.244.2.0/26", "learned", |r| !r.stale).await;
    let mut changes = a.subscribe();
    while changes.try_recv().is_ok() {}
    assert!(a.session_failed(ip("127.0.0.2"), "control detection time expired"));
    assert!(!a.session_failed(ip("127.0.0.9"), "no such peer"));
    let first = bounded("a Loc-RIB change", changes.recv())
        .await
        .expect("stream");
    assert_eq!(
        first,
        LocRibChange::Withdrawn(net("10.244.2.0/26")),
        "withdrawn, not kept stale"
    );
    let status = a.peer(ip("127.0.0.2")).expect("peer");
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("BFD down: control detection time expired")),
        "{status:?}"
    );
    // The session starts again by itself (BFD's state is the agent's business).
    route_where(&a, "10.244.2.0/26", "learned again", |r| !r.stale).await;
}

/// A peer that crashed (its connection closed, routes kept stale by graceful restart), then
/// BFD's verdict: the stale routes go at once, not at the end of the restart time.
#[tokio::test]
async fn a_path_failure_after_the_connection_purges_graceful_restarts_stale_routes() {
    let a = speaker("127.0.0.1", ASN, |_| {}).await;
    let b = speaker("127.0.0.2", ASN, |_| {}).await;
    b.announce(net("10.244.2.0/26"), ip("127.0.0.2"))
        .expect("announce");
    link(&a, &b);
    route_where(&a, "10.244.2.0/26", "learned", |r| !r.stale).await;
    drop(b);
    route_where(&a, "10.244.2.0/26", "kept stale", |r| r.stale).await;
    assert!(a.session_failed(ip("127.0.0.2"), "control detection time expired"));
    no_route(&a, "10.244.2.0/26").await;
    let status = a.peer(ip("127.0.0.2")).expect("peer");
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("stale routes withdrawn")),
        "{status:?}"
    );
}

#[tokio::test]
async fn a_polite_shutdown_withdraws_routes_even_with_graceful_restart() {
    let a = speaker("127.0.0.1", ASN, |_| {}).await;
    let b = speaker("127.0.0.2", ASN, |_| {}).await;
    b.announce(net("10.244.2.0/26"), ip("127.0.0.2"))
        .expect("announce");
    link(&a, &b);
    route_where(&a, "10.244.2.0/26", "learned", |_| true).await;
    bounded("shutdown", b.shutdown()).await;
    no_route(&a, "10.244.2.0/26").await;
    let status = a.peer(ip("127.0.0.2")).expect("peer");
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("cease")),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colliding_connections_settle_on_one_session() {
    let a = speaker("127.0.0.1", ASN, |_| {}).await;
    let b = speaker("127.0.0.2", ASN, |_| {}).await;
    a.announce(net("10.244.1.0/26"), ip("127.0.0.1"))
        .expect("announce");
    b.announce(net("10.244.2.0/26"), ip("127.0.0.2"))
        .expect("announce");
    // Both sides active: they connect to each other at the same moment.
    a.add_peer(peer_of(&a, &b, false)).expect("add peer");
    b.add_peer(peer_of(&b, &a, false)).expect("add peer");
    route_where(&a, "10.244.2.0/26", "learned", |_| true).await;
    route_where(&b, "10.244.1.0/26", "learned", |_| true).await;
    // The surviving session stays up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(state(&a, addr(&b)), Some(State::Established));
    assert_eq!(state(&b, addr(&a)), Some(State::Established));
    for (s, p) in [(&a, addr(&b)), (&b, addr(&a))] {
        let status = s.peer(p).expect("peer");
        assert_eq!(status.established_transitions, 1, "{status:?}");
    }
}

#[tokio::test]
async fn removing_a_peer_withdraws_its_routes() {
    let a = speaker("127.0.0.1", ASN, |_| {}).await;
    let b = speaker("127.0.0.2", ASN, |_| {}).await;
    b.announce(net("10.244.2.0/26"), ip("127.0.0.2"))
        .expect("announce");
    link(&a, &b);
    route_where(&a, "10.244.2.0/26", "learned", |_| true).await;
    a.remove_peer(addr(&b)).expect("remove");
    no_route(&a, "10.244.2.0/26").await;
    assert!(a.peer(addr(&b)).is_none());
    assert!(a.remove_peer(addr(&b)).is_err());

    // Added again at once: the old session's task winding down does not disturb the new one.
    a.add_peer(peer_of(&a, &b, false)).expect("add again");
    route_where(&a, "10.244.2.0/26", "learned again", |_| true).await;
    established(&a, addr(&b)).await;
    assert!(a.add_peer(peer_of(&a, &b, false)).is_err());
}

#[tokio::test]
async fn initial_updates_end_with_end_of_rib_and_route_refresh_sends_them_again() {
    let s = speaker("127.0.0.1", ASN, |_| {}).await;
    s.announce(net("10.244.1.0/26"), ip("127.0.0.1"))
        .expect("announce");
    let mut p = trellis_bgp::PeerConfig::new(ip("127.0.0.5"), ASN);
    p.passive = true;
    s.add_peer(p).expect("add raw peer");
    let mut raw =
        RawPeer::establish(ip("127.0.0.5"), s.local_addr().expect("listens"), ASN, 90).await;

    // The route, then End-of-RIB for IPv4 (and IPv6, both negotiated).
    let mut announced = Vec::new();
    let mut eor = Vec::new();
    while eor.len() < 2 {
        if let Message::Update(u) = raw.next().await {
            match u.is_end_of_rib() {
                Some(family) => eor.push(family),
                None => {
                    assert!(eor.is_empty(), "routes after End-of-RIB");
                    announced.extend(u.nlri);
                    assert_eq!(u.attributes.next_hop, Some(Ipv4Addr::new(127, 0, 0, 1)));
                    assert_eq!(u.attributes.local_pref, Some(100));
                }
            }
        }
    }
    assert_eq!(announced, vec!["10.244.1.0/26".parse().expect("prefix")]);
    assert_eq!(eor, vec![Family::IPV4_UNICAST, Family::IPV6_UNICAST]);

    raw.send(&Message::RouteRefresh(trellis_bgp::codec::RouteRefresh {
        family: Family::IPV4_UNICAST,
        subtype: 0,
    }))
    .await;
    loop {
        if let Message::Update(u) = raw.next().await
            && !u.nlri.is_empty()
        {
            assert_eq!(u.nlri, vec!["10.244.1.0/26".parse().expect("prefix")]);
            break;
        }
    }
    assert_eq!(state(&s, ip("127.0.0.5")), Some(State::Established));
}

#[tokio::test]
async fn a_graceful_restart_peer_opening_a_new_session_replaces_the_old_one() {
    let s = speaker("127.0.0.1", ASN, |_| {}).await;
    let mut p = trellis_bgp::PeerConfig::new(ip("127.0.0.5"), ASN);
    p.passive = true;
    s.add_peer(p).expect("add raw peer");
    let to = s.local_addr().expect("listens");
    let open = || {
        let gr = GracefulRestartCap::new(
            false,
            60,
            vec![GrFamily {
                family: Family::IPV4_UNICAST,
                forwarding_preserved: true,
            }],
        );
        trellis_bgp::codec::Open::new(
            ASN,
            90,
            RAW_ID,
            vec![
                Capability::FourOctetAs(ASN),
                Capability::GracefulRestart(gr),
            ],
        )
    };
    let mut old = RawPeer::establish_with(ip("127.0.0.5"), to, open()).await;
    established(&s, ip("127.0.0.5")).await;
    old.send_raw(&good_update()).await;
    route_where(&s, RAW_PREFIX, "learned", |r| !r.stale).await;

    // The peer restarted without the old connection being noticed: a new session arrives
    // while the old one is still Established. The routes are kept stale, not withdrawn.
    let mut new = RawPeer::establish_with(ip("127.0.0.5"), to, open()).await;
    route_where(&s, RAW_PREFIX, "kept stale", |r| r.stale).await;
    bounded("old connection closed", old.closed()).await;

    // The new session refreshes the route and ends its initial updates with End-of-RIB.
    new.send_raw(&good_update()).await;
    new.send(&Message::Update(trellis_bgp::codec::Update::end_of_rib(
        Family::IPV4_UNICAST,
    )))
    .await;
    route_where(&s, RAW_PREFIX, "refreshed", |r| !r.stale).await;
    assert_eq!(state(&s, ip("127.0.0.5")), Some(State::Established));
    assert_eq!(
        s.peer(ip("127.0.0.5"))
            .expect("peer")
            .established_transitions,
        2
    );
}

/// The most bytes of UPDATEs the kernel takes toward a peer that does not read: our send
/// buffer at its largest and the peer's receive buffer at its start (`tcp_wmem` and `tcp_rmem`).
fn kernel_buffers() -> usize {
    let field = |file: &str, i: usize, default: usize| {
        std::fs::read_to_string(file)
            .ok()
            .and_then(|s| s.split_whitespace().nth(i)?.parse().ok())
            .unwrap_or(default)
    };
    field("/proc/sys/net/ipv4/tcp_wmem", 2, 4 << 20)
        + field("/proc/sys/net/ipv4/tcp_rmem", 1, 128 << 10)
}

/// A peer that falls [`PEER_QUEUE`] exports behind (beyond what the kernel's socket buffers
/// hold) is not left with a gap: its session is reset with a Cease (out of resources), comes
/// back by itself, and the peer then has the whole table.
#[tokio::test]
async fn a_peer_that_falls_behind_is_reset_and_then_gets_the_whole_table() {
    let a = speaker("127.0.0.21", ASN, |_| {}).await;
    let b = speaker("127.0.0.22", ASN, |_| {}).await;
    link(&a, &b);
    established(&a, addr(&b)).await;
    established(&b, addr(&a)).await;
    // On this single-threaded runtime no task runs during the loop: b reads nothing, a writes
    // each export to the socket until the kernel's buffers are full (an UPDATE of one /24 is
    // 48 bytes; counted as 40 to be sure), then the exports wait, and one finds PEER_QUEUE
    // waiting.
    let n = kernel_buffers() / 40 + PEER_QUEUE + 1;
    for i in 0..n {
        let i = u32::try_from(i).expect("small");
        let prefix = ipnet::Ipv4Net::new(Ipv4Addr::from(0x0a00_0000_u32.wrapping_add(i << 8)), 24)
            .expect("prefix");
        a.announce(prefix.into(), addr(&a)).expect("announce");
    }
    let cease = "cease / out of resources (6/8)";
    wait_for("a resets the session", || {
        a.peer(addr(&b))
            .and_then(|p| p.last_error)
            .is_some_and(|e| e == format!("sent NOTIFICATION {cease}"))
    })
    .await;
    wait_for("b has the whole table again", || b.routes().len() == n).await;
    established(&a, addr(&b)).await;
    let status = a.peer(addr(&b)).expect("peer");
    assert!(status.established_transitions >= 2, "{status:?}");
    // b ends its old session on the Cease, or, still reading its backlog of UPDATEs when a
    // connects again, on a's new connection (a graceful restart, RFC 4724 §4.2).
    let status = b.peer(addr(&a)).expect("peer");
    assert!(status.established_transitions >= 2, "{status:?}");
    assert!(
        status
            .last_error
            .as_ref()
            .is_none_or(|e| *e == format!("received NOTIFICATION {cease}")),
        "{status:?}"
    );
}

/// A speaker with IPv6 unicast off advertises IPv4 only: the session carries IPv4 routes both
/// ways and no IPv6 route either way, although both sides originate some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_routes_travel_only_when_both_sides_negotiated_ipv6_unicast() {
    let a = speaker("127.0.0.1", ASN, |c| c.ipv6_unicast = false).await;
    let b = speaker("127.0.0.2", ASN, |_| {}).await;
    a.announce(net("10.244.1.0/26"), ip("127.0.0.1"))
        .expect("announce");
    a.announce(net("fd00:244:1::/122"), ip("fd00::1"))
        .expect("announce");
    b.announce(net("10.244.2.0/26"), ip("127.0.0.2"))
        .expect("announce");
    b.announce(net("fd00:244:2::/122"), ip("fd00::2"))
        .expect("announce");
    link(&a, &b);
    established(&a, addr(&b)).await;
    established(&b, addr(&a)).await;
    route_where(&a, "10.244.2.0/26", "IPv4 from b", |_| true).await;
    route_where(&b, "10.244.1.0/26", "IPv4 from a", |_| true).await;
    // Each side's Adj-RIB-Out toward the other holds its IPv4 block only (decided when the
    // session came up), so no IPv6 route can be on its way.
    assert_eq!(b.peer(addr(&a)).expect("peer").prefixes_sent, 1);
    assert_eq!(a.peer(addr(&b)).expect("peer").prefixes_sent, 1);
    assert!(route(&a, "fd00:244:2::/122").is_none());
    assert!(route(&b, "fd00:244:1::/122").is_none());
}

/// RFC 2545: a peer on the same link that sends no usable global next hop (`::`) but a
/// link-local one gets its routes installed via the link-local address; with a global next hop
/// the global one is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_route_with_only_a_link_local_next_hop_uses_it() {
    let s = speaker("127.0.0.1", ASN, |_| {}).await;
    let mut raw = trellis_bgp::PeerConfig::new(ip("127.0.0.5"), ASN);
    raw.passive = true;
    s.add_peer(raw).expect("add raw peer");
    let mut raw =
        RawPeer::establish(ip("127.0.0.5"), s.local_addr().expect("listens"), ASN, 90).await;
    established(&s, ip("127.0.0.5")).await;
    let attrs = trellis_bgp::codec::PathAttributes {
        origin: Some(trellis_bgp::codec::Origin::Igp),
        as_path: Some(AsPath::default()),
        local_pref: Some(100),
        ..Default::default()
    };
    let cx = trellis_bgp::codec::Context::default();
    let p = |s: &str| s.parse::<ipnet::Ipv6Net>().expect("prefix");
    let ll: std::net::Ipv6Addr = "fe80::5".parse().expect("address");
    for u in trellis_bgp::codec::update::announce_v6(
        &attrs,
        std::net::Ipv6Addr::UNSPECIFIED,
        Some(ll),
        &[p("fd00:244:5::/122")],
        &cx,
    )
    .expect("encode")
    {
        raw.send(&Message::Update(u)).await;
    }
    for u in trellis_bgp::codec::update::announce_v6(
        &attrs,
        "fd00::5".parse().expect("address"),
        Some(ll),
        &[p("fd00:244:6::/122")],
        &cx,
    )
    .expect("encode")
    {
        raw.send(&Message::Update(u)).await;
    }
    let r = route_where(&s, "fd00:244:5::/122", "link-local only", |_| true).await;
    assert_eq!(r.next_hop, ip("fe80::5"));
    let r = route_where(&s, "fd00:244:6::/122", "global and link-local", |_| true).await;
    assert_eq!(r.next_hop, ip("fd00::5"));
}

/// A speaker listening on `listen` (port 0: an ephemeral one) with router id `id`.
async fn speaker_on(listen: &str, id: Ipv4Addr) -> trellis_bgp::Speaker {
    let mut config = trellis_bgp::SpeakerConfig::new(ASN, id);
    config.listen = Some(std::net::SocketAddr::new(ip(listen), 0));
    config.hold_time = 9;
    config.connect_retry = Duration::from_millis(200);
    config.connect_retry_max = Duration::from_secs(1);
    trellis_bgp::Speaker::start(config)
        .await
        .expect("speaker starts")
}

/// A session between IPv6 addresses (both speakers on `::1`, each its own port): IPv6
/// unicast travels with its global next hop, and IPv4 unicast beside it with its IPv4 one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_over_ipv6_carries_both_families_with_their_next_hops() {
    let a = speaker_on("::1", Ipv4Addr::new(10, 255, 0, 1)).await;
    let b = speaker_on("::1", Ipv4Addr::new(10, 255, 0, 2)).await;
    a.announce(net("fd00:244:1::/122"), ip("fd00:198:18::11"))
        .expect("announce");
    a.announce(net("10.244.1.0/26"), ip("198.18.0.11"))
        .expect("announce");
    link(&a, &b);
    established(&a, ip("::1")).await;
    established(&b, ip("::1")).await;
    let r = route_where(&b, "fd00:244:1::/122", "IPv6 over IPv6", |_| true).await;
    assert_eq!(r.next_hop, ip("fd00:198:18::11"));
    let r = route_where(&b, "10.244.1.0/26", "IPv4 over IPv6", |_| true).await;
    assert_eq!(r.next_hop, ip("198.18.0.11"));
}

/// An IPv6 listener (what `--listen [::]:179` makes) takes an IPv4 peer's connection too: the
/// kernel hands it over as an IPv4-mapped address, which is the configured IPv4 peer. (Bound to
/// `::ffff:127.0.0.1` rather than `[::]`, so the test listens on loopback only.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_listener_accepts_an_ipv4_peer() {
    let a = speaker_on("::ffff:127.0.0.1", Ipv4Addr::new(10, 255, 0, 1)).await;
    let b = speaker("127.0.0.2", ASN, |_| {}).await;
    let port = a.local_addr().expect("listens").port();
    // a waits; b connects to a's port on 127.0.0.1.
    let mut to_a = trellis_bgp::PeerConfig::new(ip("127.0.0.1"), ASN);
    to_a.port = port;
    to_a.local_address = Some(ip("127.0.0.2"));
    b.add_peer(to_a).expect("add peer");
    let mut to_b = trellis_bgp::PeerConfig::new(ip("127.0.0.2"), ASN);
    to_b.passive = true;
    a.add_peer(to_b).expect("add peer");
    established(&a, ip("127.0.0.2")).await;
    established(&b, ip("127.0.0.1")).await;
    b.announce(net("10.244.2.0/26"), ip("127.0.0.2"))
        .expect("announce");
    let r = route_where(&a, "10.244.2.0/26", "through the IPv6 listener", |_| true).await;
    assert_eq!(r.next_hop, ip("127.0.0.2"));
}
