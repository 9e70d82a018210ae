//! BFD for the routed mode's BGP sessions (issue 18's acceptance): `trellis bgp-agent
//! --standalone --bfd` with BIRD 2 (`protocol bfd`, `bfd on`) and with another agent, each in a
//! node namespace of one testbed underlay.
//!
//! The link is cut by setting the *peer's* `eth0` down inside the peer's namespace (netlink,
//! so the moment of the cut is known to the millisecond). Our node's own link stays up, so the
//! kernel keeps the learnt routes through it: only BGP can take them away. With BFD (300 ms ×
//! 3, the default) they must be gone within 1 s; without it (the negative control) they stay
//! until the hold timer (6 s here; 90 s by default) ends the session.
//!
//! Every wait is bounded; the testbed removes every namespace and process when dropped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use netns_testbed::bird::{
    Agent, AgentSpec, Bird, BirdConfig, BirdPeer, TEST_HOLD_TIME, Want, kernel_has, kernel_routes,
    wait_kernel_route,
};
use netns_testbed::{Node, Testbed, require_root};
use trellis_net::proto::BGP as PROTO_TRELLIS;

const LIFETIME: Duration = Duration::from_secs(180);
const SESSION: Duration = Duration::from_secs(20);
const PROPAGATE: Duration = Duration::from_secs(10);
/// The bound: link cut to the last route withdrawn.
const WITHIN: Duration = Duration::from_secs(1);
const BFD_INTERVAL: Duration = Duration::from_millis(300);

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

async fn nodes(tb: &Testbed, n: u8) -> Vec<Node> {
    let mut v = Vec::new();
    for i in 1..=n {
        v.push(tb.add_node(&format!("n{i}"), i).await.unwrap());
    }
    v
}

/// Sets `node`'s `eth0` down from inside its namespace; returns the moment just before.
async fn cut(node: &Node) -> Instant {
    let h = node.ns.connect().unwrap();
    let eth0 = h.require_link("eth0").await.unwrap();
    let at = Instant::now();
    h.set_down(eth0.index).await.unwrap();
    at
}

/// Waits (bounded) until the agent's BFD session with `peer` is Up with the agreed detection
/// time (900 ms at the defaults).
async fn agent_bfd_up(agent: &Agent<'_>, peer: Ipv4Addr, detection_ms: u64) -> serde_json::Value {
    let deadline = Instant::now() + SESSION;
    loop {
        let p = agent.peer_status(peer).await.unwrap();
        if let Some(b) = p.as_ref().map(|p| &p["bfd"])
            && b["state"] == "Up"
            && b["remote_state"] == "Up"
            && b["detection_ms"] == detection_ms
        {
            return b.clone();
        }
        assert!(
            Instant::now() < deadline,
            "BFD with {peer} not Up on {}: {p:?}\n{}",
            agent.node.name,
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) until `birdc show bfd sessions` lists `peer` Up; returns the line.
async fn bird_bfd_up(bird: &Bird<'_>, peer: Ipv4Addr) -> String {
    let deadline = Instant::now() + SESSION;
    loop {
        let out = bird.birdc(&["show", "bfd", "sessions"]).await.unwrap();
        if let Some(line) = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&peer.to_string()))
            && line.split_whitespace().any(|w| w == "Up")
        {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "BIRD's BFD with {peer} not Up:\n{out}\n{}",
            bird.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn learnt(node: &Node, prefix: &str, via: &Node) {
    wait_kernel_route(
        &node.ns,
        net(prefix),
        Want::Via(IpAddr::V4(via.ip), PROTO_TRELLIS),
        PROPAGATE,
    )
    .await
    .unwrap_or_else(|e| panic!("{prefix} learnt on {}: {e}", node.name));
}

/// The time from `cut_at` until no route to `prefix` is left in `node`'s kernel, polled every
/// 2 ms (the 1 s bound leaves 100 ms beyond BFD's 900 ms detection time: the poll must not eat
/// it).
async fn withdrawn_after(node: &Node, prefix: &str, cut_at: Instant, limit: Duration) -> Duration {
    let h = node.ns.connect().unwrap();
    loop {
        let routes = h
            .routes(
                trellis_net::Family::V4,
                Some(trellis_net::Route::TABLE_MAIN),
            )
            .await
            .unwrap();
        if kernel_has(&routes, net(prefix), Want::Absent) {
            return cut_at.elapsed();
        }
        assert!(
            cut_at.elapsed() < limit,
            "{prefix} still routed on {} {limit:?} after the cut",
            node.name
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The agent's `/bgp/status` row for `peer` once `check` holds (bounded: the document is
/// republished every second).
async fn status_where(
    agent: &Agent<'_>,
    peer: impl Into<IpAddr> + Copy,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let p = agent.peer_status(peer).await.unwrap().unwrap();
        if check(&p) {
            return p;
        }
        assert!(Instant::now() < deadline, "{what}: {p}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn agent_spec(peer: &Node, block: &str, bfd: bool) -> AgentSpec {
    let mut spec = AgentSpec::new(64512)
        .peer(peer.ip, 64512)
        .announce(net(block));
    if bfd {
        spec.extra.push("--bfd".into());
    }
    spec
}

fn bird_config(bird: &Node, agent: &Node, bfd: bool) -> BirdConfig {
    let peer = BirdPeer::new("n1", agent.ip, 64512);
    let c = BirdConfig::new(bird, 64512)
        .announce(net("10.244.2.0/26"))
        .announce(net("10.244.3.0/26"));
    if bfd {
        c.bfd(BFD_INTERVAL, 3).peer(peer.bfd())
    } else {
        c.peer(peer)
    }
}

/// Acceptance: BIRD with `bfd on` as the peer. BFD comes Up on both sides (ours in
/// `/bgp/status`, BIRD's in `show bfd sessions`); the link is cut; the session is down and
/// BIRD's routes are gone from our kernel within 1 s, although both sides have graceful
/// restart (a BFD Down withdraws at once, it keeps nothing stale).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_bird_a_cut_link_withdraws_the_routes_within_1s() {
    require_root();
    let tb = Testbed::new().unwrap();
    let n = nodes(&tb, 2).await;
    let agent = Agent::start(
        &tb,
        &n[0],
        agent_spec(&n[1], "10.244.1.0/26", true),
        LIFETIME,
    )
    .await
    .unwrap();
    let bird = Bird::start(&tb, &n[1], bird_config(&n[1], &n[0], true), LIFETIME)
        .await
        .unwrap();
    bird.wait_established("n1", SESSION).await.unwrap();
    agent.wait_established(n[1].ip, SESSION).await.unwrap();
    learnt(&n[0], "10.244.2.0/26", &n[1]).await;
    learnt(&n[0], "10.244.3.0/26", &n[1]).await;
    let ours = agent_bfd_up(&agent, n[1].ip, 900).await;
    assert_eq!(
        (ours["min_tx_ms"].as_u64(), ours["multiplier"].as_u64()),
        (Some(300), Some(3))
    );
    let theirs = bird_bfd_up(&bird, n[0].ip).await;
    assert!(theirs.contains("eth0"), "single-hop on the link: {theirs}");

    let cut_at = cut(&n[1]).await;
    let first = withdrawn_after(&n[0], "10.244.2.0/26", cut_at, PROPAGATE).await;
    let last = withdrawn_after(&n[0], "10.244.3.0/26", cut_at, PROPAGATE).await;
    eprintln!("link cut → routes withdrawn: first {first:?}, last {last:?}");
    assert!(
        last <= WITHIN,
        "the last route left {last:?} after the cut (bound {WITHIN:?})\n{}",
        agent.log()
    );
    let p = status_where(&agent, n[1].ip, "BGP down by BFD in /bgp/status", |p| {
        p["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("BFD down: control detection time expired"))
    })
    .await;
    assert_ne!(p["state"], "Established", "{p}");
    assert_eq!(p["bfd"]["state"], "Down", "{p}");
    assert_eq!(p["bfd"]["downs"], 1, "{p}");
    let log = agent.log();
    assert!(log.contains("BFD session down"), "{log}");
}

/// The negative control: the same cut without BFD. The routes are still in our kernel a second
/// later, held by the session until the hold timer (6 s) ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_bfd_a_cut_link_keeps_the_routes_until_the_hold_timer() {
    require_root();
    let tb = Testbed::new().unwrap();
    let n = nodes(&tb, 2).await;
    let agent = Agent::start(
        &tb,
        &n[0],
        agent_spec(&n[1], "10.244.1.0/26", false),
        LIFETIME,
    )
    .await
    .unwrap();
    let bird = Bird::start(&tb, &n[1], bird_config(&n[1], &n[0], false), LIFETIME)
        .await
        .unwrap();
    bird.wait_established("n1", SESSION).await.unwrap();
    agent.wait_established(n[1].ip, SESSION).await.unwrap();
    learnt(&n[0], "10.244.3.0/26", &n[1]).await;
    let p = agent.peer_status(n[1].ip).await.unwrap().unwrap();
    assert!(p["bfd"].is_null(), "no BFD without --bfd: {p}");

    let cut_at = cut(&n[1]).await;
    // Throughout the second after the cut, and a margin, the routes stay.
    while cut_at.elapsed() < WITHIN + Duration::from_millis(500) {
        let routes = kernel_routes(&n[0].ns).await.unwrap();
        assert!(
            kernel_has(
                &routes,
                net("10.244.3.0/26"),
                Want::Via(IpAddr::V4(n[1].ip), PROTO_TRELLIS)
            ),
            "without BFD the route left {:?} after the cut",
            cut_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let p = agent.peer_status(n[1].ip).await.unwrap().unwrap();
    assert_eq!(p["state"], "Established", "{p}");
    // Then the hold timer takes it.
    let hold = Duration::from_secs(u64::from(TEST_HOLD_TIME));
    let last = withdrawn_after(&n[0], "10.244.3.0/26", cut_at, hold + PROPAGATE).await;
    eprintln!("without BFD: link cut → last route withdrawn after {last:?}");
    assert!(
        last >= hold - Duration::from_secs(2),
        "withdrawn after {last:?}, before the hold timer could have expired"
    );
}

/// Two agents with BFD: the same detection between our own speakers, here with the interval
/// set by flag (`--bfd-interval-ms 200 --bfd-multiplier 3`: 600 ms), which the status shows.
/// (The acceptance at the defaults is the BIRD test's: 900 ms leaves 100 ms of the 1 s bound
/// to the machine.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_with_bfd_withdraw_within_1s_of_a_cut() {
    require_root();
    let tb = Testbed::new().unwrap();
    let n = nodes(&tb, 2).await;
    let fast = |mut spec: AgentSpec| {
        spec.extra
            .extend(["--bfd-interval-ms", "200", "--bfd-multiplier", "3"].map(String::from));
        spec
    };
    let a1 = Agent::start(
        &tb,
        &n[0],
        fast(agent_spec(&n[1], "10.244.1.0/26", true)),
        LIFETIME,
    )
    .await
    .unwrap();
    let a2 = Agent::start(
        &tb,
        &n[1],
        fast(agent_spec(&n[0], "10.244.2.0/26", true)),
        LIFETIME,
    )
    .await
    .unwrap();
    a1.wait_established(n[1].ip, SESSION).await.unwrap();
    a2.wait_established(n[0].ip, SESSION).await.unwrap();
    learnt(&n[0], "10.244.2.0/26", &n[1]).await;
    learnt(&n[1], "10.244.1.0/26", &n[0]).await;
    for (a, peer) in [(&a1, n[1].ip), (&a2, n[0].ip)] {
        let b = agent_bfd_up(a, peer, 600).await;
        assert_eq!(
            (b["min_tx_ms"].as_u64(), b["min_rx_ms"].as_u64()),
            (Some(200), Some(200))
        );
    }

    let cut_at = cut(&n[1]).await;
    let last = withdrawn_after(&n[0], "10.244.2.0/26", cut_at, PROPAGATE).await;
    eprintln!("two agents: link cut → route withdrawn after {last:?}");
    assert!(
        last <= WITHIN,
        "the route left {last:?} after the cut (bound {WITHIN:?})\n{}",
        a1.log()
    );
    status_where(&a1, n[1].ip, "BGP down by BFD in /bgp/status", |p| {
        p["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("BFD down"))
    })
    .await;
}

/// RFC 5882 §3.2: an agent that stops (SIGTERM) tells its BFD peers AdminDown, which is no
/// path failure, so the other agent leaves the BGP session to graceful restart and keeps the
/// stopped agent's routes (stale) well past BFD's detection time. The negative control kills
/// the agent (SIGKILL, no AdminDown): the other agent's BFD declares the path down and the
/// routes go at once, graceful restart or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_agent_says_admin_down_and_its_peer_keeps_the_routes_for_graceful_restart() {
    require_root();
    for polite in [true, false] {
        let tb = Testbed::new().unwrap();
        let n = nodes(&tb, 2).await;
        let a1 = Agent::start(
            &tb,
            &n[0],
            agent_spec(&n[1], "10.244.1.0/26", true),
            LIFETIME,
        )
        .await
        .unwrap();
        let a2 = Agent::start(
            &tb,
            &n[1],
            agent_spec(&n[0], "10.244.2.0/26", true),
            LIFETIME,
        )
        .await
        .unwrap();
        a1.wait_established(n[1].ip, SESSION).await.unwrap();
        learnt(&n[0], "10.244.2.0/26", &n[1]).await;
        agent_bfd_up(&a1, n[1].ip, 900).await;
        agent_bfd_up(&a2, n[0].ip, 900).await;

        let stopped = Instant::now();
        if polite {
            a2.signal(nix::sys::signal::Signal::SIGTERM).unwrap();
            while a2.running() {
                assert!(
                    stopped.elapsed() < Duration::from_secs(10),
                    "a2 did not stop on SIGTERM"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(
                a2.log().contains("BFD session removed (AdminDown sent)"),
                "{}",
                a2.log()
            );
            // Three times BFD's detection time: the route stays (stale, for graceful restart).
            while stopped.elapsed() < Duration::from_millis(2700) {
                let routes = kernel_routes(&n[0].ns).await.unwrap();
                assert!(
                    kernel_has(
                        &routes,
                        net("10.244.2.0/26"),
                        Want::Via(IpAddr::V4(n[1].ip), PROTO_TRELLIS)
                    ),
                    "a1 dropped a2's route {:?} after a2's AdminDown\n{}",
                    stopped.elapsed(),
                    a1.log()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let p = status_where(&a1, n[1].ip, "a2's AdminDown in /bgp/status", |p| {
                p["bfd"]["remote_state"] == "AdminDown"
            })
            .await;
            assert_eq!(p["bfd"]["downs"], 1, "{p}");
        } else {
            // The agent process alone, at once (the testbed's stop waits for the group).
            a2.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
            let gone = withdrawn_after(&n[0], "10.244.2.0/26", stopped, PROPAGATE).await;
            eprintln!("SIGKILL: a1 withdrew a2's route after {gone:?}");
            let log = a1.log();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("BFD") || l.contains("session") || l.contains("stale"))
                .collect();
            assert!(
                gone <= WITHIN + Duration::from_millis(500),
                "{gone:?}\n{}",
                lines.join("\n")
            );
            status_where(&a1, n[1].ip, "BFD down in /bgp/status", |p| {
                p["last_error"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("BFD down"))
            })
            .await;
        }
    }
}

/// `node`'s main-table routes (both families) to any of `prefixes`.
async fn routed(node: &Node, prefixes: &[ipnet::IpNet]) -> Vec<trellis_net::Route> {
    let h = node.ns.connect().unwrap();
    let mut out = Vec::new();
    for family in [trellis_net::Family::V4, trellis_net::Family::V6] {
        out.extend(
            h.routes(family, Some(trellis_net::Route::TABLE_MAIN))
                .await
                .unwrap()
                .into_iter()
                .filter(|r| prefixes.contains(&r.dst)),
        );
    }
    out
}

/// BIRD and the agent over IPv6 (`--dual-stack --peer [BIRD's IPv6]:64512`, BIRD's `neighbor`
/// our IPv6 address); the one session carries both families. With `bfd`, BFD runs over IPv6
/// (RFC 5881: UDP 3784 to BIRD's IPv6 address, hop limit 255), Up on both sides; then IPv6 is
/// cut off at BIRD's node (ip6tables drops all of it there, IPv4 still passes) and both of
/// BIRD's blocks leave our kernel within 1 s. Without BFD (the negative control) they are
/// still there 1.5 s after the cut, held by the session until its hold timer (6 s).
async fn bird_over_ipv6_cut(bfd: bool) {
    require_root();
    netns_testbed::require_tool("ip6tables", "iptables");
    let tb = Testbed::new().unwrap();
    let n = nodes(&tb, 2).await;
    let v6 = [
        tb.add_ipv6(&n[0], 1).await.unwrap(),
        tb.add_ipv6(&n[1], 2).await.unwrap(),
    ];
    let mut spec = AgentSpec::new(64512)
        .peer(v6[1], 64512)
        .announce(net("10.244.1.0/26"));
    let announce = tb.state_dir().join("announce6");
    std::fs::write(&announce, "fd00:10:244::/122\n").unwrap();
    spec.announce_file = Some(announce);
    spec.extra.push("--dual-stack".into());
    if bfd {
        spec.extra.push("--bfd".into());
    }
    let agent = Agent::start(&tb, &n[0], spec, LIFETIME).await.unwrap();
    let peer = BirdPeer::new("n1", v6[0], 64512);
    let config = BirdConfig::new(&n[1], 64512)
        .announce(net("10.244.2.0/26"))
        .ipv6(v6[1])
        .announce6("fd00:10:245::/122".parse().unwrap());
    let config = if bfd {
        config.bfd(BFD_INTERVAL, 3).peer(peer.bfd())
    } else {
        config.peer(peer)
    };
    let bird = Bird::start(&tb, &n[1], config, LIFETIME).await.unwrap();
    bird.wait_established("n1", SESSION)
        .await
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log()));
    agent.wait_established(v6[1], SESSION).await.unwrap();
    let theirs: Vec<ipnet::IpNet> = ["10.244.2.0/26", "fd00:10:245::/122"]
        .map(|p| p.parse().unwrap())
        .to_vec();
    let deadline = Instant::now() + PROPAGATE;
    loop {
        let r = routed(&n[0], &theirs).await;
        let via = |gw: IpAddr| {
            r.iter()
                .any(|r| r.gateway == Some(gw) && r.protocol == PROTO_TRELLIS)
        };
        if via(IpAddr::V4(n[1].ip)) && via(IpAddr::V6(v6[1])) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "BIRD's blocks in our kernel: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if bfd {
        let deadline = Instant::now() + SESSION;
        loop {
            let p = agent.peer_status(v6[1]).await.unwrap();
            if let Some(b) = p.as_ref().map(|p| &p["bfd"])
                && b["state"] == "Up"
                && b["detection_ms"] == 900
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "our BFD with {} not Up: {p:?}\n{}",
                v6[1],
                agent.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let deadline = Instant::now() + SESSION;
        loop {
            let out = bird.birdc(&["show", "bfd", "sessions"]).await.unwrap();
            if out.lines().any(|l| {
                l.split_whitespace().next() == Some(&v6[0].to_string())
                    && l.split_whitespace().any(|w| w == "Up")
            }) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "BIRD's BFD with {} not Up:\n{out}",
                v6[0]
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let cut_at = Instant::now();
    for chain in ["INPUT", "OUTPUT"] {
        tb.exec_ok(
            &n[1].ns,
            &["ip6tables", "-w", "-I", chain, "-j", "DROP"],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    }
    if bfd {
        loop {
            let r = routed(&n[0], &theirs).await;
            if r.is_empty() {
                break;
            }
            assert!(
                cut_at.elapsed() < PROPAGATE,
                "still routed {PROPAGATE:?} after the cut: {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let took = cut_at.elapsed();
        eprintln!("BFD over IPv6 with BIRD: IPv6 cut → both blocks withdrawn after {took:?}");
        assert!(
            took <= WITHIN,
            "withdrawn {took:?} after the cut\n{}",
            agent.log()
        );
        let p = status_where(&agent, v6[1], "BGP down by BFD", |p| {
            p["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("BFD down"))
        })
        .await;
        assert_ne!(p["state"], "Established", "{p}");
    } else {
        tokio::time::sleep_until(tokio::time::Instant::from_std(
            cut_at + Duration::from_millis(1500),
        ))
        .await;
        let r = routed(&n[0], &theirs).await;
        assert_eq!(
            r.len(),
            2,
            "without BFD the routes stay until the hold timer: {r:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_bird_over_ipv6_bfd_withdraws_both_families_within_1s_of_a_cut() {
    bird_over_ipv6_cut(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_bird_over_ipv6_without_bfd_the_routes_outlive_a_cut() {
    bird_over_ipv6_cut(false).await;
}
