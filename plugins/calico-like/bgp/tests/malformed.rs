//! Malformed messages written raw onto a live session: each draws the NOTIFICATION RFC 4271 §6
//! and RFC 7606 call for (or treat-as-withdraw / attribute discard), and a second peer of the
//! same speaker keeps its session and its routes throughout.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::*;
use trellis_bgp::fsm::State;
use trellis_bgp::{Source, Speaker};

const RAW: &str = "127.0.0.5";

/// The speaker under test (127.0.0.1), a well-behaved iBGP peer (127.0.0.2) exchanging routes
/// with it, and a passive slot for the raw peer.
async fn setup() -> (Speaker, Speaker) {
    let s = speaker("127.0.0.1", ASN, |_| {}).await;
    let good = speaker("127.0.0.2", ASN, |_| {}).await;
    s.announce(net("10.244.1.0/26"), ip("127.0.0.1"))
        .expect("announce");
    good.announce(net("10.244.2.0/26"), ip("127.0.0.2"))
        .expect("announce");
    link(&good, &s);
    route_where(&s, "10.244.2.0/26", "good peer's route", |_| true).await;
    route_where(&good, "10.244.1.0/26", "our route at the good peer", |_| {
        true
    })
    .await;
    let mut raw = trellis_bgp::PeerConfig::new(ip(RAW), ASN);
    raw.passive = true;
    s.add_peer(raw).expect("add raw peer");
    (s, good)
}

fn raw_ip() -> IpAddr {
    ip(RAW)
}

async fn raw_session(s: &Speaker) -> RawPeer {
    // A previous raw session must be fully down before the next one starts.
    wait_for("raw peer not established", || {
        state(s, raw_ip()) != Some(State::Established)
    })
    .await;
    let raw = RawPeer::establish(raw_ip(), s.local_addr().expect("listens"), ASN, 90).await;
    established(s, raw_ip()).await;
    raw
}

/// The good peer is untouched: one session since the start, routes both ways.
async fn good_peer_unharmed(s: &Speaker, good: &Speaker) {
    let status = s.peer(ip("127.0.0.2")).expect("good peer");
    assert_eq!(status.state, State::Established);
    assert_eq!(status.established_transitions, 1);
    assert!(route(s, "10.244.2.0/26").is_some());
    assert!(route(good, "10.244.1.0/26").is_some());
}

async fn expect_notification(s: &Speaker, good: &Speaker, raw: &mut RawPeer, code: (u8, u8)) {
    let n = bounded("NOTIFICATION", raw.notification()).await;
    assert_eq!((n.code, n.subcode), code, "{n:?}");
    wait_for("raw session down", || {
        state(s, raw_ip()) != Some(State::Established)
    })
    .await;
    good_peer_unharmed(s, good).await;
}

#[tokio::test]
async fn header_errors_draw_message_header_notifications() {
    let (s, good) = setup().await;

    // Bad marker: Connection Not Synchronized (1/1).
    let mut raw = raw_session(&s).await;
    let mut keepalive = header(19, 4);
    keepalive[5] = 0;
    raw.send_raw(&keepalive).await;
    expect_notification(&s, &good, &mut raw, (1, 1)).await;

    // Bad length: a KEEPALIVE claiming 18 octets (1/2).
    let mut raw = raw_session(&s).await;
    raw.send_raw(&header(18, 4)).await;
    expect_notification(&s, &good, &mut raw, (1, 2)).await;

    // Bad length: over the 4096-octet maximum (1/2).
    let mut raw = raw_session(&s).await;
    raw.send_raw(&header(5000, 2)).await;
    expect_notification(&s, &good, &mut raw, (1, 2)).await;

    // Bad type (1/3).
    let mut raw = raw_session(&s).await;
    raw.send_raw(&header(19, 9)).await;
    expect_notification(&s, &good, &mut raw, (1, 3)).await;
}

#[tokio::test]
async fn a_truncated_open_draws_a_bad_message_length() {
    let (s, good) = setup().await;
    let mut raw = RawPeer::connect(raw_ip(), s.local_addr().expect("listens")).await;
    // An OPEN one octet short of the minimum of 29.
    let mut open = header(28, 1);
    open.extend_from_slice(&[4, 0xfc, 0, 0, 90, 127, 0, 0, 5]);
    raw.send_raw(&open).await;
    expect_notification(&s, &good, &mut raw, (1, 2)).await;
}

#[tokio::test]
async fn an_open_from_the_wrong_as_draws_bad_peer_as() {
    let (s, good) = setup().await;
    let mut raw = RawPeer::connect(raw_ip(), s.local_addr().expect("listens")).await;
    let open = trellis_bgp::codec::Open::new(65000, 90, RAW_ID, vec![]);
    raw.send(&trellis_bgp::codec::Message::Open(open)).await;
    expect_notification(&s, &good, &mut raw, (2, 2)).await;
}

#[tokio::test]
async fn a_bad_as_path_segment_is_treated_as_withdraw() {
    let (s, good) = setup().await;
    let mut raw = raw_session(&s).await;
    raw.send_raw(&good_update()).await;
    let r = route_where(&s, RAW_PREFIX, "raw peer's route", |_| true).await;
    assert_eq!(r.source, Source::Peer(raw_ip()));

    // Segment type 5 does not exist: RFC 7606 §7.2 says treat-as-withdraw.
    let bad_path = [0x40, 2, 6, 5, 1, 0, 0, 0xfd, 0xe8];
    let attrs = [&ORIGIN[..], &bad_path, &NEXT_HOP, &LOCAL_PREF].concat();
    raw.send_raw(&update_frame(&attrs, &NLRI)).await;
    no_route(&s, RAW_PREFIX).await;
    session_survives(&s, &mut raw).await;
    good_peer_unharmed(&s, &good).await;
}

#[tokio::test]
async fn wrong_attribute_flags_are_treated_as_withdraw() {
    let (s, good) = setup().await;
    let mut raw = raw_session(&s).await;
    raw.send_raw(&good_update()).await;
    route_where(&s, RAW_PREFIX, "raw peer's route", |_| true).await;

    // ORIGIN marked optional: an attribute flags error, treat-as-withdraw (RFC 7606 §7.1).
    let bad_origin = [0xc0, 1, 1, 0];
    let attrs = [&bad_origin[..], &EMPTY_AS_PATH, &NEXT_HOP, &LOCAL_PREF].concat();
    raw.send_raw(&update_frame(&attrs, &NLRI)).await;
    no_route(&s, RAW_PREFIX).await;
    session_survives(&s, &mut raw).await;
    good_peer_unharmed(&s, &good).await;
}

#[tokio::test]
async fn a_duplicate_attribute_is_discarded_and_a_duplicate_mp_reach_resets() {
    let (s, good) = setup().await;

    // ORIGIN twice: all but the first discarded, the route accepted (RFC 7606 §3 g).
    let mut raw = raw_session(&s).await;
    let attrs = [&ORIGIN[..], &ORIGIN, &EMPTY_AS_PATH, &NEXT_HOP, &LOCAL_PREF].concat();
    raw.send_raw(&update_frame(&attrs, &NLRI)).await;
    route_where(&s, RAW_PREFIX, "route despite the duplicate", |_| true).await;
    session_survives(&s, &mut raw).await;
    assert!(
        s.peer(raw_ip())
            .and_then(|p| p.last_error)
            .is_some_and(|e| e.contains("discarded"))
    );

    // MP_REACH_NLRI twice: Malformed Attribute List (3/1).
    let mut mp = vec![0x80, 14, 30, 0, 2, 1, 16];
    mp.extend_from_slice(
        &"fd00::5"
            .parse::<std::net::Ipv6Addr>()
            .expect("v6")
            .octets(),
    );
    mp.push(0);
    mp.extend_from_slice(&[64, 0xfd, 0, 0, 5, 0, 0, 0, 0]);
    assert_eq!(mp.len(), 3 + 30);
    let attrs = [&ORIGIN[..], &EMPTY_AS_PATH, &LOCAL_PREF, &mp, &mp].concat();
    raw.send_raw(&update_frame(&attrs, &[])).await;
    expect_notification(&s, &good, &mut raw, (3, 1)).await;
    // The raw peer's routes went with its session.
    no_route(&s, RAW_PREFIX).await;
}

#[tokio::test]
async fn an_unexpected_open_in_established_is_an_fsm_error() {
    let (s, good) = setup().await;
    let mut raw = raw_session(&s).await;
    let open = trellis_bgp::codec::Open::new(ASN, 90, RAW_ID, vec![]);
    raw.send(&trellis_bgp::codec::Message::Open(open)).await;
    expect_notification(&s, &good, &mut raw, (5, 3)).await;
}

/// The session is still up after a milder error: no NOTIFICATION, and a KEEPALIVE is taken.
async fn session_survives(s: &Speaker, raw: &mut RawPeer) {
    let before = s.peer(raw_ip()).expect("raw peer").established_transitions;
    raw.send(&trellis_bgp::codec::Message::Keepalive).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = s.peer(raw_ip()).expect("raw peer");
    assert_eq!(status.state, State::Established);
    assert_eq!(status.established_transitions, before);
}

#[tokio::test]
async fn an_open_with_hold_time_one_draws_unacceptable_hold_time() {
    let (s, good) = setup().await;
    let mut raw = RawPeer::connect(raw_ip(), s.local_addr().expect("listens")).await;
    let open = trellis_bgp::codec::Open::new(ASN, 1, RAW_ID, vec![]);
    raw.send(&trellis_bgp::codec::Message::Open(open)).await;
    expect_notification(&s, &good, &mut raw, (2, 6)).await;
}

#[tokio::test]
async fn invalid_configuration_is_refused() {
    let s = speaker("127.0.0.1", ASN, |_| {}).await;
    let mut p = trellis_bgp::PeerConfig::new(ip(RAW), ASN);
    p.hold_time = Some(2);
    assert!(s.add_peer(p).is_err());
    let mut config = trellis_bgp::SpeakerConfig::new(ASN, "127.0.0.1".parse().expect("id"));
    config.hold_time = 1;
    assert!(Speaker::start(config).await.is_err());
    // An IPv4 prefix cannot travel with an IPv6 next hop.
    assert!(s.announce(net("10.0.0.0/24"), ip("fd00::1")).is_err());
}
