//! Limits on who and what a peer may send, and what a session that has ended leaves behind:
//! the max-prefix limit (RFC 4486) with its hold-down, per-session counters beside lifetime
//! totals, the fence that keeps a late Loc-RIB change of an ended session out of the kernel,
//! and TCP MD5 passwords (RFC 2385) over loopback.

mod common;

use std::time::Duration;

use common::*;
use tokio::time::Instant;
use trellis_bgp::MaxPrefixes;
use trellis_bgp::fsm::State;

const LIMIT: u32 = 3;
const HOLD_DOWN: Duration = Duration::from_secs(3);

fn block(i: u32) -> String {
    format!("10.250.{i}.0/24")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_over_its_max_prefix_limit_is_ceased_held_down_and_let_back_within_it() {
    let a = speaker("127.0.0.31", ASN, |_| {}).await;
    let b = speaker("127.0.0.32", ASN, |_| {}).await;
    for i in 0..LIMIT {
        b.announce(net(&block(i)), ip("127.0.0.32"))
            .expect("announce");
    }
    let mut limited = peer_of(&a, &b, false);
    limited.max_prefixes = Some(MaxPrefixes {
        limit: LIMIT,
        restart: HOLD_DOWN,
    });
    a.add_peer(limited).expect("add peer");
    b.add_peer(peer_of(&b, &a, false)).expect("add peer");
    established(&a, addr(&b)).await;
    // At the limit is allowed.
    for i in 0..LIMIT {
        route_where(&a, &block(i), "a route within the limit", |_| true).await;
    }

    // One more: Cease/1 with the family and the limit (RFC 4486 §4), every route of b gone.
    // The hold-down starts after this instant, so it lasts at least until t0 + HOLD_DOWN.
    let t0 = Instant::now();
    b.announce(net(&block(LIMIT)), ip("127.0.0.32"))
        .expect("announce");
    let cease = "cease / maximum number of prefixes reached (6/1), ipv4-unicast, limit 3";
    wait_for("a ceases the session", || {
        a.peer(addr(&b))
            .and_then(|p| p.last_error)
            .is_some_and(|e| e == format!("sent NOTIFICATION {cease}"))
    })
    .await;
    for i in 0..=LIMIT {
        no_route(&a, &block(i)).await;
    }

    // Held down: b (active, retrying every 200 ms to 1 s) is refused for the whole restart time.
    // Counters of the ended session are gone; the lifetime totals keep them.
    let status = a.peer(addr(&b)).expect("peer");
    assert_eq!(status.updates_received, 0, "{status:?}");
    assert_eq!(status.messages_received, 0, "{status:?}");
    assert!(status.total.updates_received >= 4, "{status:?}");
    assert!(status.total.messages_received > status.total.updates_received);
    // Back within the limit at once: the hold-down holds all the same, then the session comes
    // back and stays.
    b.withdraw(net(&block(LIMIT))).expect("withdraw");
    while t0.elapsed() < HOLD_DOWN.mul_f64(0.8) {
        let state = state(&a, addr(&b));
        assert_ne!(state, Some(State::Established), "up during the hold-down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    established(&a, addr(&b)).await;
    assert!(t0.elapsed() >= HOLD_DOWN, "{:?}", t0.elapsed());
    for i in 0..LIMIT {
        route_where(&a, &block(i), "routes within the limit again", |_| true).await;
    }
    let status = a.peer(addr(&b)).expect("peer");
    assert_eq!(status.established_transitions, 2, "{status:?}");
    assert_eq!(status.prefixes_received, LIMIT as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_best_route_of_an_ended_session_is_no_longer_current() {
    let a = speaker("127.0.0.33", ASN, |_| {}).await;
    let b = speaker("127.0.0.34", ASN, |_| {}).await;
    b.announce(net("10.251.0.0/24"), ip("127.0.0.34"))
        .expect("announce");
    link(&a, &b);
    let learned = route_where(&a, "10.251.0.0/24", "learned", |_| true).await;
    assert!(a.is_current(&learned));
    // The agent reads this change late, after the session ended: it must not install it.
    a.remove_peer(addr(&b)).expect("remove");
    assert!(!a.is_current(&learned));
    // A different best route for the prefix is not this one either.
    a.announce(net("10.251.0.0/24"), ip("127.0.0.33"))
        .expect("announce");
    assert!(!a.is_current(&learned));
    let own = route_where(&a, "10.251.0.0/24", "own", |r| r.is_local()).await;
    assert!(a.is_current(&own));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_signed_sessions_establish_with_the_same_password_only() {
    use trellis_bgp::{Md5Key, PeerConfig};
    let key = |s: &str| Some(Md5Key::new(s).expect("key"));
    let a = speaker("127.0.0.41", ASN, |_| {}).await;
    let b = speaker("127.0.0.42", ASN, |_| {}).await;
    let mut pa = peer_of(&a, &b, false);
    pa.password = key("same");
    let mut pb = peer_of(&b, &a, true);
    pb.password = key("same");
    a.add_peer(pa).expect("add peer");
    b.add_peer(pb).expect("add peer");
    established(&a, addr(&b)).await;
    // An IPv6 peer cannot reach this IPv4 listener: its key goes on our connections only.
    let mut v6 = PeerConfig::new(ip("fd00::99"), ASN);
    v6.password = key("other");
    v6.passive = true;
    a.add_peer(v6)
        .expect("a v6 peer with a password on a v4 listener");
    a.remove_peer(ip("fd00::99")).expect("remove");

    // Different passwords: never Established, held through several connect retries (every
    // 200 ms backing off to 1 s).
    let c = speaker("127.0.0.43", ASN, |_| {}).await;
    let d = speaker("127.0.0.44", ASN, |_| {}).await;
    let mut pc = peer_of(&c, &d, false);
    pc.password = key("one");
    let mut pd = peer_of(&d, &c, false);
    pd.password = key("two");
    c.add_peer(pc).expect("add peer");
    d.add_peer(pd).expect("add peer");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        assert_ne!(state(&c, addr(&d)), Some(State::Established));
        assert_ne!(state(&d, addr(&c)), Some(State::Established));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.peer(addr(&d)).expect("peer").established_transitions, 0);
}
