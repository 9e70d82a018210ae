//! FRR 8.4 as the BGP peer of `trellis bgp-agent --standalone` (issue 18: operators'
//! top-of-rack routers run FRR — SONiC, Cumulus). FRR (zebra, bgpd, bfdd) runs in one node
//! namespace with its own config, sockets and pid files in a directory of its own
//! (`netns_testbed::frr`), our agent in another; both are killed by process group when the
//! test ends. FRR is a "ToR" in AS 65001 on n1, the agent on n2 in AS 64512 (eBGP, as fabrics
//! run it) unless a test says otherwise (one is iBGP over IPv6).
//!
//! Every wait is on a condition with a deadline (vtysh JSON, the agent's status, the kernel's
//! routes); the testbed removes every namespace and process when dropped. The tests fail (they
//! do not skip) without FRR installed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};
use netns_testbed::bird::{Agent, AgentSpec, Want, kernel_has, wait_kernel_route};
use netns_testbed::frr::{Daemon, Frr, FrrConfig, FrrNeighbor, PROTO_FRR_BGP};
use netns_testbed::{Node, Testbed, require_root, require_tool, unnumbered};
use trellis_net::proto::BGP as PROTO_TRELLIS;
use trellis_net::{Family, Handle, Netns, Route, VethSpec};

const LIFETIME: Duration = Duration::from_secs(180);
const SESSION: Duration = Duration::from_secs(30);
const PROPAGATE: Duration = Duration::from_secs(10);
const FRR_ASN: u32 = 65001;
const OUR_ASN: u32 = 64512;
/// FRR's block (an address of it on FRR's loopback) and ours.
const FRR_BLOCK: &str = "10.46.1.0/26";
const FRR_ADDR: &str = "10.46.1.1";
const OUR_BLOCK: &str = "10.46.2.0/26";

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

/// Puts `addr`/32 on `node`'s loopback.
async fn loopback_address(node: &Node, addr: &str) {
    let h = node.ns.connect().unwrap();
    let lo = h.require_link("lo").await.unwrap();
    h.ensure_address(lo.index, format!("{addr}/32").parse().unwrap())
        .await
        .unwrap();
}

async fn expect_route(node: &Node, prefix: &str, gw: IpAddr, proto: u8, what: &str) {
    wait_kernel_route(&node.ns, net(prefix), Want::Via(gw, proto), PROPAGATE)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
}

/// Each side's block in the other's kernel: ours via our node in FRR's (installed by FRR),
/// FRR's via its node in ours (installed by the agent).
async fn expect_both_blocks(fnode: &Node, me: &Node) {
    expect_route(
        fnode,
        OUR_BLOCK,
        me.ip.into(),
        PROTO_FRR_BGP,
        "our block in FRR's kernel",
    )
    .await;
    expect_route(
        me,
        FRR_BLOCK,
        fnode.ip.into(),
        PROTO_TRELLIS,
        "FRR's block in our kernel",
    )
    .await;
}

async fn expect_no_route(node: &Node, prefix: &str, limit: Duration, what: &str) -> Duration {
    wait_kernel_route(&node.ns, net(prefix), Want::Absent, limit)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// `node`'s main-table routes to `prefix` (either family).
async fn routes_to(node: &Node, prefix: &str) -> Vec<Route> {
    node.routes_to(prefix.parse().unwrap()).await.unwrap()
}

/// Whether one ping from `ns` to `to` is answered within 1 s.
async fn ping(tb: &Testbed, ns: &Netns, to: &str) -> bool {
    tb.exec(
        ns,
        &["ping", "-c", "1", "-W", "1", to],
        Duration::from_secs(10),
    )
    .await
    .unwrap()
    .success()
}

/// Waits (bounded) until a ping from `ns` to `to` is answered.
async fn ping_until(tb: &Testbed, ns: &Netns, to: &str, what: &str) {
    let deadline = Instant::now() + PROPAGATE;
    while !ping(tb, ns, to).await {
        assert!(
            Instant::now() < deadline,
            "{what}: ping {to} never answered"
        );
    }
}

/// A path of FRR's that is valid and best, with next hop `gw`.
fn best_via(paths: &[serde_json::Value], gw: IpAddr) -> bool {
    paths.iter().any(|p| {
        p["valid"] == true
            && p["bestpath"]["overall"] == true
            && p["nexthops"]
                .as_array()
                .is_some_and(|n| n.iter().any(|h| h["ip"] == gw.to_string()))
    })
}

fn stale(paths: &[serde_json::Value]) -> bool {
    paths.iter().any(|p| p["stale"] == true)
}

fn frr_config(frr: &Node, neighbor: FrrNeighbor) -> FrrConfig {
    FrrConfig::new(frr, FRR_ASN)
        .network(net(FRR_BLOCK))
        .neighbor(neighbor)
}

fn agent_spec(frr: &Node) -> AgentSpec {
    AgentSpec::new(OUR_ASN)
        .peer(frr.ip, FRR_ASN)
        .announce(net(OUR_BLOCK))
}

/// FRR's view of what we negotiated (`neighborCapabilities` of `show bgp neighbors json`).
async fn capabilities(frr: &Frr<'_>, key: &str) -> serde_json::Value {
    frr.neighbor(key).await.unwrap().unwrap()["neighborCapabilities"].clone()
}

/// eBGP with FRR: the session comes up on both sides with what we offer received by FRR (4-byte
/// AS, route refresh, IPv4 unicast, graceful restart); our block reaches FRR's BGP table (best,
/// via our address) and its kernel (proto bgp), FRR's `network` reaches our kernel, and a ping
/// between the two blocks' addresses gets through. Withdrawals both ways: FRR's `no network`
/// takes its block out of our kernel, our announce file without the block takes ours out of
/// FRR's table and kernel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ebgp_session_with_frr_carries_blocks_both_ways() {
    require_root();
    require_tool("ping", "iputils-ping");
    let tb = Testbed::new().unwrap();
    let n = nodes(&tb, 2).await;
    let (fnode, me) = (&n[0], &n[1]);
    loopback_address(fnode, FRR_ADDR).await;
    loopback_address(me, "10.46.2.1").await;
    let frr = Frr::start(
        &tb,
        fnode,
        frr_config(fnode, FrrNeighbor::new(me.ip, OUR_ASN)),
        LIFETIME,
    )
    .await
    .unwrap();
    let announce = tb.state_dir().join("announce");
    std::fs::write(&announce, format!("{OUR_BLOCK}\n")).unwrap();
    let mut spec = AgentSpec::new(OUR_ASN).peer(fnode.ip, FRR_ASN);
    spec.announce_file = Some(announce);
    let agent = Agent::start(&tb, me, spec, LIFETIME).await.unwrap();
    agent
        .wait_established(fnode.ip, SESSION)
        .await
        .unwrap_or_else(|e| panic!("{e}\nFRR:\n{}", frr.log_tail(Daemon::Bgpd, 40)));
    frr.wait_established(&me.ip.to_string(), SESSION)
        .await
        .unwrap_or_else(|e| panic!("{e}\nagent:\n{}", agent.log()));

    let caps = capabilities(&frr, &me.ip.to_string()).await;
    eprintln!("FRR's view of our capabilities: {caps}");
    // routeRefresh: `advertisedAndReceivedNew` (code 2, not the old Cisco 128).
    for c in ["4byteAs", "routeRefresh"] {
        assert!(
            caps[c]
                .as_str()
                .is_some_and(|s| s.starts_with("advertisedAndReceived")),
            "{c}: {caps}"
        );
    }
    assert_eq!(
        caps["multiprotocolExtensions"]["ipv4Unicast"]["advertisedAndReceived"], true,
        "{caps}"
    );
    assert_eq!(caps["gracefulRestart"], "advertisedAndReceived", "{caps}");

    frr.wait_paths(net(OUR_BLOCK), PROPAGATE, "our block best", |p| {
        best_via(p, me.ip.into())
    })
    .await
    .unwrap();
    expect_both_blocks(fnode, me).await;
    // From our block's address to FRR's: both routes are needed (source 10.46.2.1).
    let out = tb
        .exec(
            &me.ns,
            &["ping", "-c", "1", "-W", "2", "-I", "10.46.2.1", FRR_ADDR],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert!(out.success(), "ping {FRR_ADDR} from 10.46.2.1: {out:?}");

    // FRR withdraws its block.
    frr.configure(&[
        &format!("router bgp {FRR_ASN}"),
        "address-family ipv4 unicast",
        &format!("no network {FRR_BLOCK}"),
    ])
    .await
    .unwrap();
    expect_no_route(me, FRR_BLOCK, PROPAGATE, "FRR's withdrawal").await;
    // We withdraw ours.
    agent.set_announced(&[], true).unwrap();
    frr.wait_paths(net(OUR_BLOCK), PROPAGATE, "our withdrawal", |p| {
        p.is_empty()
    })
    .await
    .unwrap();
    expect_no_route(
        fnode,
        OUR_BLOCK,
        PROPAGATE,
        "our withdrawal in FRR's kernel",
    )
    .await;
    // The session stayed up throughout (no NOTIFICATION either way).
    assert_eq!(frr.state(&me.ip.to_string()).await.unwrap(), "Established");
    let n = frr.neighbor(&me.ip.to_string()).await.unwrap().unwrap();
    assert_eq!(n["connectionsDropped"], 0, "{n}");
}

/// TCP MD5 (RFC 2385) with FRR's `neighbor … password`: the same password establishes and FRR's
/// block arrives; a wrong one never establishes while the agent retries twice and logs why;
/// the right one again establishes (so it was the password).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_md5_password_with_frr_establishes_only_when_both_sides_have_the_same() {
    require_root();
    let tb = Testbed::new().unwrap();
    let n = nodes(&tb, 2).await;
    let (fnode, me) = (&n[0], &n[1]);
    let frr = Frr::start(
        &tb,
        fnode,
        frr_config(
            fnode,
            FrrNeighbor::new(me.ip, OUR_ASN).password("fabric-s3cret"),
        ),
        LIFETIME,
    )
    .await
    .unwrap();
    let right = tb.state_dir().join("md5-right");
    let wrong = tb.state_dir().join("md5-wrong");
    std::fs::write(&right, "fabric-s3cret\n").unwrap();
    std::fs::write(&wrong, "fabric-wrong\n").unwrap();
    let spec = |file: &std::path::Path| {
        let mut s = agent_spec(fnode);
        s.extra = vec!["--peer-password-file".into(), file.display().to_string()];
        s
    };
    let mut agent = Agent::start(&tb, me, spec(&right), LIFETIME).await.unwrap();
    agent
        .wait_established(fnode.ip, SESSION)
        .await
        .unwrap_or_else(|e| panic!("{e}\nFRR:\n{}", frr.log_tail(Daemon::Bgpd, 40)));
    expect_route(
        me,
        FRR_BLOCK,
        fnode.ip.into(),
        PROTO_TRELLIS,
        "FRR's block, signed",
    )
    .await;
    frr.wait_paths(net(OUR_BLOCK), PROPAGATE, "our block, signed", |p| {
        best_via(p, me.ip.into())
    })
    .await
    .unwrap();

    agent.restart(spec(&wrong)).await.unwrap();
    let warning = "no session with TCP MD5 configured";
    let start = Instant::now();
    loop {
        let p = agent.peer_status(fnode.ip).await.unwrap().unwrap();
        assert_ne!(
            p["state"], "Established",
            "a wrong password established: {p}"
        );
        assert_ne!(
            frr.state(&me.ip.to_string()).await.unwrap(),
            "Established",
            "FRR established with a wrong password"
        );
        if agent.log().matches(warning).count() >= 2 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no MD5 warning: {}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    agent.restart(spec(&right)).await.unwrap();
    agent
        .wait_established(fnode.ip, SESSION)
        .await
        .unwrap_or_else(|e| panic!("{e}\nFRR:\n{}", frr.log_tail(Daemon::Bgpd, 40)));
    frr.wait_established(&me.ip.to_string(), SESSION)
        .await
        .unwrap();
    assert!(!agent.log().contains(warning), "{}", agent.log());
}

/// Sets `node`'s `eth0` down from inside its namespace; returns the moment just before.
async fn cut(node: &Node) -> Instant {
    let h = node.ns.connect().unwrap();
    let eth0 = h.require_link("eth0").await.unwrap();
    let at = Instant::now();
    h.set_down(eth0.index).await.unwrap();
    at
}

/// The time from `cut_at` until no route to `prefix` is left in `node`'s kernel (polled every
/// 2 ms); fails after `limit`.
async fn withdrawn_after(node: &Node, prefix: &str, cut_at: Instant, limit: Duration) -> Duration {
    let h = node.ns.connect().unwrap();
    loop {
        let routes = h.routes(Family::V4, Some(Route::TABLE_MAIN)).await.unwrap();
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

/// BFD with FRR's bfdd (`neighbor … bfd profile`, 300 ms × 3 as ours): Up on both sides (our
/// status, FRR's `show bfd peers json`); FRR's link cut → our session down and FRR's block out
/// of our kernel within 1 s, although both sides have graceful restart. Negative control
/// without BFD on either side: the route is still there 1.5 s after the same cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_frrs_bfdd_a_cut_link_withdraws_within_1s() {
    require_root();
    for bfd in [true, false] {
        let tb = Testbed::new().unwrap();
        let n = nodes(&tb, 2).await;
        let (fnode, me) = (&n[0], &n[1]);
        let mut neighbor = FrrNeighbor::new(me.ip, OUR_ASN);
        let mut config = frr_config(fnode, FrrNeighbor::new(me.ip, OUR_ASN)).graceful_restart();
        if bfd {
            neighbor = neighbor.bfd();
            config = config.bfd(Duration::from_millis(300), 3);
        }
        config.neighbors = vec![neighbor];
        let frr = Frr::start(&tb, fnode, config, LIFETIME).await.unwrap();
        let mut spec = agent_spec(fnode);
        if bfd {
            spec.extra.push("--bfd".into());
        }
        let agent = Agent::start(&tb, me, spec, LIFETIME).await.unwrap();
        agent
            .wait_established(fnode.ip, SESSION)
            .await
            .unwrap_or_else(|e| panic!("{e}\nFRR:\n{}", frr.log_tail(Daemon::Bgpd, 40)));
        expect_route(
            me,
            FRR_BLOCK,
            fnode.ip.into(),
            PROTO_TRELLIS,
            "FRR's block in our kernel",
        )
        .await;
        if bfd {
            let deadline = Instant::now() + SESSION;
            loop {
                let p = agent.peer_status(fnode.ip).await.unwrap();
                let ours = p.as_ref().map(|p| p["bfd"].clone()).unwrap_or_default();
                let peers = frr.json(Daemon::Bfdd, "show bfd peers json").await.unwrap();
                let theirs = peers
                    .as_array()
                    .and_then(|a| a.iter().find(|s| s["peer"] == me.ip.to_string()).cloned())
                    .unwrap_or_default();
                if ours["state"] == "Up" && ours["remote_state"] == "Up" && theirs["status"] == "up"
                {
                    eprintln!("BFD up: ours {ours}; FRR's {theirs}");
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "BFD not Up: ours {ours}, FRR's {peers}\nbfdd:\n{}\nagent:\n{}",
                    frr.log_tail(Daemon::Bfdd, 30),
                    agent.log()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let at = cut(fnode).await;
        if bfd {
            let took = withdrawn_after(me, FRR_BLOCK, at, Duration::from_secs(1)).await;
            eprintln!("FRR's block withdrawn {took:?} after the cut (BFD)");
            // The status document is republished every second.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let p = agent.peer_status(fnode.ip).await.unwrap().unwrap();
                if p["state"] != "Established" {
                    assert_eq!(p["bfd"]["state"], "Down", "{p}");
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "session still up after BFD Down: {p}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        } else {
            let deadline = at + Duration::from_millis(1500);
            while Instant::now() < deadline {
                assert!(
                    !routes_to(me, FRR_BLOCK).await.is_empty(),
                    "without BFD the route went before the hold timer"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        drop(agent);
        drop(frr);
    }
}

/// Watches `node`'s kernel route to `prefix` (`want`) until `until` holds (polled every 20 ms,
/// bounded by `limit`); fails if the route is ever missing meanwhile.
async fn route_kept_until<F, Fut>(
    node: &Node,
    prefix: &str,
    want: Want,
    limit: Duration,
    what: &str,
    diag: impl Fn() -> String,
    mut until: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let h: Handle = node.ns.connect().unwrap();
    let deadline = Instant::now() + limit;
    loop {
        let routes = h.routes(Family::V4, Some(Route::TABLE_MAIN)).await.unwrap();
        assert!(
            kernel_has(&routes, net(prefix), want),
            "{what}: the route to {prefix} ({want:?}) went away\n{}",
            diag()
        );
        if until().await {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Graceful restart with FRR. Our restart, FRR the helper (its default mode): the agent is
/// killed (no NOTIFICATION) and started again; FRR marks our block stale and keeps it in its
/// table and its kernel all the while, until the new session's End-of-RIB clears the mark.
/// Negative control: an agent with `--no-graceful-restart` killed — FRR drops our block from
/// its kernel at once. FRR's restart (`bgp graceful-restart preserve-fw-state`: R and F bits):
/// its bgpd is killed and started again; our kernel keeps FRR's block throughout.
///
/// FRR in restarting mode sets the R bit on every OPEN for its restart time (120 s) after
/// bgpd starts, so our restart is tested against FRR in helper mode (see README).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restart_with_frr_keeps_routes_across_either_sides_restart() {
    require_root();
    let tb = Testbed::new().unwrap();
    let n = nodes(&tb, 2).await;
    let (fnode, me) = (&n[0], &n[1]);
    let key = me.ip.to_string();
    let mut frr = Frr::start(
        &tb,
        fnode,
        frr_config(fnode, FrrNeighbor::new(me.ip, OUR_ASN)),
        LIFETIME,
    )
    .await
    .unwrap();
    let mut agent = Agent::start(&tb, me, agent_spec(fnode), LIFETIME)
        .await
        .unwrap();
    frr.wait_established(&key, SESSION)
        .await
        .unwrap_or_else(|e| panic!("{e}\nagent:\n{}", agent.log()));
    frr.wait_paths(net(OUR_BLOCK), PROPAGATE, "our block best", |p| {
        best_via(p, me.ip.into()) && !stale(p)
    })
    .await
    .unwrap();
    expect_both_blocks(fnode, me).await;
    let gr = frr.neighbor(&key).await.unwrap().unwrap()["gracefulRestartInfo"].clone();
    eprintln!("FRR's graceful-restart view of us: {gr}");
    assert_eq!(gr["remoteGrMode"], "Restart", "{gr}");

    // Our restart: FRR keeps our block (stale) in its table and kernel until our End-of-RIB.
    agent.stop();
    frr.wait_paths(net(OUR_BLOCK), PROPAGATE, "our block stale", |p| {
        best_via(p, me.ip.into()) && stale(p)
    })
    .await
    .unwrap();
    let spec = agent.spec.clone();
    agent.restart(spec).await.unwrap();
    route_kept_until(
        fnode,
        OUR_BLOCK,
        Want::Via(me.ip.into(), PROTO_FRR_BGP),
        SESSION,
        "FRR's kernel across our restart",
        || frr.log_tail(Daemon::Bgpd, 40),
        || async {
            let p = frr.paths(net(OUR_BLOCK)).await.unwrap();
            frr.state(&key).await.unwrap() == "Established"
                && best_via(&p, me.ip.into())
                && !stale(&p)
        },
    )
    .await;
    // The restarted agent's OPEN carried the F bit for IPv4 unicast (its forwarding state
    // was kept), as FRR saw it.
    let gr = frr.neighbor(&key).await.unwrap().unwrap()["gracefulRestartInfo"].clone();
    eprintln!("FRR's graceful-restart view of the restarted agent: {gr}");
    assert_eq!(gr["ipv4Unicast"]["fBit"], true, "{gr}");
    // FRR's block stayed in our kernel too (our own restart kept it).
    expect_route(
        me,
        FRR_BLOCK,
        fnode.ip.into(),
        PROTO_TRELLIS,
        "FRR's block after our restart",
    )
    .await;

    // Negative control: without graceful restart FRR removes our block when we go.
    let mut plain = agent.spec.clone();
    plain.graceful_restart = false;
    agent.restart(plain).await.unwrap();
    frr.wait_paths(net(OUR_BLOCK), SESSION, "our block, no GR", |p| {
        frr_gr_free(p) && best_via(p, me.ip.into())
    })
    .await
    .unwrap();
    let gr = frr.neighbor(&key).await.unwrap().unwrap()["gracefulRestartInfo"].clone();
    assert_ne!(gr["remoteGrMode"], "Restart", "{gr}");
    agent.stop();
    expect_no_route(
        fnode,
        OUR_BLOCK,
        Duration::from_secs(3),
        "without graceful restart FRR keeps nothing",
    )
    .await;

    // FRR's restart: bgpd in restarting mode with the F bit; our agent (graceful restart on)
    // keeps FRR's block while bgpd is gone and until it is back.
    let mut spec = agent.spec.clone();
    spec.graceful_restart = true;
    agent.restart(spec).await.unwrap();
    frr.kill(Daemon::Bgpd);
    let mut config = frr.config().clone();
    config.graceful_restart = true;
    frr.set_config(config).unwrap();
    frr.launch(Daemon::Bgpd).await.unwrap();
    frr.wait_established(&key, SESSION).await.unwrap();
    agent.wait_established(fnode.ip, SESSION).await.unwrap();
    expect_route(
        me,
        FRR_BLOCK,
        fnode.ip.into(),
        PROTO_TRELLIS,
        "FRR's block, FRR in restarting mode",
    )
    .await;
    let p = agent.peer_status(fnode.ip).await.unwrap().unwrap();
    eprintln!("our status of FRR in restarting mode: {p}");
    frr.kill(Daemon::Bgpd);
    let deadline = Instant::now() + PROPAGATE;
    loop {
        let p = agent.peer_status(fnode.ip).await.unwrap().unwrap();
        if p["state"] != "Established" {
            break;
        }
        assert!(Instant::now() < deadline, "our session outlived FRR: {p}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    frr.launch(Daemon::Bgpd).await.unwrap();
    route_kept_until(
        me,
        FRR_BLOCK,
        Want::Via(fnode.ip.into(), PROTO_TRELLIS),
        SESSION,
        "our kernel across FRR's restart",
        || format!("{}\nFRR:\n{}", agent.log(), frr.log_tail(Daemon::Bgpd, 60)),
        || async {
            agent
                .peer_status(fnode.ip)
                .await
                .unwrap()
                .is_some_and(|p| p["state"] == "Established" && p["awaiting_end_of_rib"] == false)
                && frr.state(&key).await.unwrap() == "Established"
        },
    )
    .await;
    let p = agent.peer_status(fnode.ip).await.unwrap().unwrap();
    eprintln!("our status of FRR after its restart: {p}");
    assert_eq!(p["peer_restarted"], true, "FRR's R bit seen: {p}");

    // Our restart while FRR sets the R bit (its restart time after bgpd started: FRR's way,
    // not BIRD's): our deferral does not wait for FRR's End-of-RIB (RFC 4724 §4.1), but the
    // earlier run's route to FRR's block stays in our kernel until FRR's routes are in again —
    // never swept (it was, before FRR's UPDATE arrived, until the agent waited for it).
    let spec = agent.spec.clone();
    agent.restart(spec).await.unwrap();
    route_kept_until(
        me,
        FRR_BLOCK,
        Want::Via(fnode.ip.into(), PROTO_TRELLIS),
        SESSION,
        "our kernel across our restart, FRR with the R bit",
        || format!("{}\nFRR:\n{}", agent.log(), frr.log_tail(Daemon::Bgpd, 40)),
        || async {
            agent.log().contains("restart recovery over")
                && agent.peer_status(fnode.ip).await.unwrap().is_some_and(|p| {
                    p["state"] == "Established" && p["awaiting_end_of_rib"] == false
                })
        },
    )
    .await;
    let p = agent.peer_status(fnode.ip).await.unwrap().unwrap();
    assert_eq!(p["peer_restarted"], true, "FRR still sets the R bit: {p}");
    let log = agent.log();
    assert!(
        !log.contains(&format!(
            "removing a stale learned route prefix={FRR_BLOCK}"
        )),
        "FRR's block was swept before FRR sent it again:\n{log}"
    );
}

/// No path of FRR's is stale.
fn frr_gr_free(paths: &[serde_json::Value]) -> bool {
    !stale(paths)
}

/// An IPv4 pod on `node` (`eth0` `addr`/32, a veth to the node's `pod0` holding 169.254.1.1,
/// the pod's default route via it, the node's /32 route to the pod).
async fn add_pod4(tb: &Testbed, node: &Node, addr: &str) -> Arc<Netns> {
    let pod = tb.add_ns("pod").await.unwrap();
    let h = node.ns.connect().unwrap();
    h.add_veth(&VethSpec {
        name: "pod0",
        peer_name: "eth0",
        peer_ns: Some(&pod),
        mtu: None,
        mac: None,
        peer_mac: None,
    })
    .await
    .unwrap();
    let pod0 = h.require_link("pod0").await.unwrap();
    h.set_up(pod0.index).await.unwrap();
    let hp = pod.connect().unwrap();
    let eth0 = hp.require_link("eth0").await.unwrap();
    hp.set_up(eth0.index).await.unwrap();
    let gw = Ipv4Addr::new(169, 254, 1, 1);
    h.add_address(pod0.index, format!("{gw}/32").parse().unwrap())
        .await
        .unwrap();
    hp.add_address(eth0.index, format!("{addr}/32").parse().unwrap())
        .await
        .unwrap();
    hp.replace_route(&Route::dev(format!("{gw}/32").parse().unwrap(), eth0.index))
        .await
        .unwrap();
    hp.replace_route(&Route::via("0.0.0.0/0".parse().unwrap(), IpAddr::V4(gw)).oif(eth0.index))
        .await
        .unwrap();
    h.replace_route(&Route::dev(
        format!("{addr}/32").parse().unwrap(),
        pod0.index,
    ))
    .await
    .unwrap();
    pod
}

/// RFC 8950 unnumbered with FRR: `neighbor ll0 interface remote-as external` (an IPv6
/// link-local session over a link without any IPv4 or global IPv6 address, `capability
/// extended-nexthop`), our agent IPv4-only with `--peer [<FRR's fe80>%ll0]:65001`. FRR's
/// block lands in our kernel `via inet6 <FRR's fe80> dev ll0`, ours in FRR's table with our
/// link-local next hop and in its kernel, and a pod behind us pings the address behind FRR
/// and back (only the two BGP routes lead there). Before the session the ping fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc8950_unnumbered_with_frr_interface_neighbor_carries_ipv4_both_ways() {
    require_root();
    require_tool("ping", "iputils-ping");
    require_tool("ip6tables", "iptables");
    let tb = Testbed::new().unwrap();
    let n = nodes(&tb, 2).await;
    let (fnode, me) = (&n[0], &n[1]);
    let (frr_ll, our_ll) = unnumbered::link(fnode, me, "ll0").await.unwrap();
    let ll0 = me
        .ns
        .connect()
        .unwrap()
        .require_link("ll0")
        .await
        .unwrap()
        .index;
    loopback_address(fnode, FRR_ADDR).await;
    let pod = add_pod4(&tb, me, "10.46.2.2").await;
    assert!(
        !ping(&tb, &pod, FRR_ADDR).await,
        "ping got through before any session"
    );
    let frr = Frr::start(
        &tb,
        fnode,
        frr_config(fnode, FrrNeighbor::interface("ll0", "external")),
        LIFETIME,
    )
    .await
    .unwrap();
    let mut spec = AgentSpec::new(OUR_ASN).announce(net(OUR_BLOCK));
    spec.listen = Some(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 179)));
    spec.extra = vec!["--peer".into(), format!("[{frr_ll}%ll0]:{FRR_ASN}")];
    // Negative control: our router advertisements dropped on the way out, FRR does not know
    // our address and rejects our connections.
    let ra_rule = [
        "OUTPUT",
        "-o",
        "ll0",
        "-p",
        "icmpv6",
        "--icmpv6-type",
        "router-advertisement",
        "-j",
        "DROP",
    ];
    let ip6tables = |op: &'static str| {
        let mut argv = vec!["ip6tables", "-w", op];
        argv.extend_from_slice(&ra_rule);
        argv
    };
    tb.exec_ok(&me.ns, &ip6tables("-A"), Duration::from_secs(10))
        .await
        .unwrap();
    let agent = Agent::start(&tb, me, spec, LIFETIME).await.unwrap();
    let deadline = Instant::now() + SESSION;
    loop {
        let log = frr.log(Daemon::Bgpd);
        assert_ne!(
            frr.state("ll0").await.unwrap(),
            "Established",
            "established without our router advertisements"
        );
        if log.contains("Unable to get neighbor's IP address")
            && log.contains(&format!("{our_ll} connection rejected"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "FRR did not reject us without router advertisements:\n{}",
            frr.log_tail(Daemon::Bgpd, 30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tb.exec_ok(&me.ns, &ip6tables("-D"), Duration::from_secs(10))
        .await
        .unwrap();
    // The next advertisement (every 10 s) tells FRR.
    agent
        .wait_established(frr_ll, SESSION)
        .await
        .unwrap_or_else(|e| panic!("{e}\nFRR:\n{}", frr.log_tail(Daemon::Bgpd, 60)));
    frr.wait_established("ll0", SESSION)
        .await
        .unwrap_or_else(|e| panic!("{e}\nagent:\n{}", agent.log()));
    let caps = capabilities(&frr, "ll0").await;
    eprintln!("FRR's view of our capabilities on ll0: {caps}");

    // FRR's block in our kernel via its link-local address on ll0.
    let deadline = Instant::now() + PROPAGATE;
    loop {
        let found = routes_to(me, FRR_BLOCK).await;
        if found.iter().any(|r| {
            r.gateway == Some(IpAddr::V6(frr_ll))
                && r.oif == Some(ll0)
                && r.protocol == PROTO_TRELLIS
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "FRR's block in our kernel via inet6 {frr_ll} dev ll0: {found:?}\nagent:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Ours in FRR's table, next hop our link-local address, and in its kernel.
    let paths = frr
        .wait_paths(net(OUR_BLOCK), PROPAGATE, "our block via our fe80", |p| {
            best_via(p, our_ll.into())
        })
        .await
        .unwrap();
    eprintln!("FRR's path to our block: {paths:?}");
    let deadline = Instant::now() + PROPAGATE;
    loop {
        let found = routes_to(fnode, OUR_BLOCK).await;
        if found.iter().any(|r| r.protocol == PROTO_FRR_BGP) {
            eprintln!("FRR's kernel route to our block: {found:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "our block in FRR's kernel: {found:?}\nzebra:\n{}",
            frr.log_tail(Daemon::Zebra, 30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ping_until(&tb, &pod, FRR_ADDR, "pod → FRR's loopback over ll0").await;
}

/// FRR's IPv6 block (an address of it on FRR's loopback) and ours.
const FRR_BLOCK6: &str = "fd00:10:245::/122";
const FRR_ADDR6: &str = "fd00:10:245::1";
const OUR_BLOCK6: &str = "fd00:10:244::/122";

/// Waits (bounded) until `node`'s IPv6 routes to `prefix` satisfy `want`; returns them.
async fn wait_routes6(
    node: &Node,
    prefix: &str,
    what: &str,
    want: impl Fn(&[Route]) -> bool,
) -> Vec<Route> {
    let deadline = Instant::now() + PROPAGATE;
    loop {
        let found = routes_to(node, prefix).await;
        if want(&found) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {PROPAGATE:?}; {prefix} on {}: {found:?}",
            node.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// iBGP with FRR over IPv6 (FRR in our AS 64512, as a ToR in a Calico-style single-AS
/// fabric, or a node's own router): one session between the nodes' IPv6 addresses carries
/// IPv6 unicast both ways with global next hops. FRR's block reaches our kernel via FRR's
/// address; ours reaches FRR's table as an internal path with LOCAL_PREF 100 (iBGP carries it)
/// and FRR's kernel; a ping6 into FRR's block follows the learned route. Withdrawals both
/// ways (MP_UNREACH_NLRI) leave the session up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ibgp_session_with_frr_over_ipv6_carries_ipv6_blocks_both_ways() {
    require_root();
    require_tool("ping", "iputils-ping");
    let tb = Testbed::new().unwrap();
    let n = nodes(&tb, 2).await;
    let (fnode, me) = (&n[0], &n[1]);
    let v6 = [
        tb.add_ipv6(fnode, 1).await.unwrap(),
        tb.add_ipv6(me, 2).await.unwrap(),
    ];
    // FRR's address inside its block, usable (no DAD, its local route in) before any ping.
    fnode
        .add_usable_address("lo", format!("{FRR_ADDR6}/128").parse().unwrap())
        .await
        .unwrap();
    let frr = Frr::start(
        &tb,
        fnode,
        FrrConfig::new(fnode, OUR_ASN)
            .network6(FRR_BLOCK6.parse().unwrap())
            .neighbor(FrrNeighbor::new(v6[1], OUR_ASN)),
        LIFETIME,
    )
    .await
    .unwrap();
    let announce = tb.state_dir().join("announce6");
    std::fs::write(&announce, format!("{OUR_BLOCK6}\n")).unwrap();
    let mut spec = AgentSpec::new(OUR_ASN).peer(v6[0], OUR_ASN);
    spec.announce_file = Some(announce.clone());
    spec.extra = vec!["--dual-stack".to_string()];
    let agent = Agent::start(&tb, me, spec, LIFETIME).await.unwrap();
    agent
        .wait_established(v6[0], SESSION)
        .await
        .unwrap_or_else(|e| panic!("{e}\nFRR:\n{}", frr.log_tail(Daemon::Bgpd, 40)));
    let key = v6[1].to_string();
    frr.wait_established(&key, SESSION)
        .await
        .unwrap_or_else(|e| panic!("{e}\nagent:\n{}", agent.log()));
    let caps = capabilities(&frr, &key).await;
    assert_eq!(
        caps["multiprotocolExtensions"]["ipv6Unicast"]["advertisedAndReceived"], true,
        "{caps}"
    );

    let our6: IpNet = OUR_BLOCK6.parse().unwrap();
    frr.wait_paths(our6, PROPAGATE, "our block, internal", |p| {
        p.iter().any(|p| {
            p["valid"] == true
                && p["bestpath"]["overall"] == true
                && p["peer"]["type"] == "internal"
                && p["locPrf"] == 100
        })
    })
    .await
    .unwrap();
    wait_routes6(me, FRR_BLOCK6, "FRR's block in our kernel", |r| {
        r.iter()
            .any(|r| r.gateway == Some(IpAddr::V6(v6[0])) && r.protocol == PROTO_TRELLIS)
    })
    .await;
    // zebra may pick our link-local next hop (sent beside the global one) on the shared link.
    wait_routes6(fnode, OUR_BLOCK6, "our block in FRR's kernel", |r| {
        r.iter().any(|r| r.protocol == PROTO_FRR_BGP)
    })
    .await;
    // Only the learned route leads into FRR's block.
    let out = tb
        .exec(
            &me.ns,
            &["ping", "-6", "-c", "1", "-W", "2", FRR_ADDR6],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert!(out.success(), "ping6 {FRR_ADDR6}: {out:?}");

    // FRR withdraws its block; we withdraw ours.
    frr.configure(&[
        &format!("router bgp {OUR_ASN}"),
        "address-family ipv6 unicast",
        &format!("no network {FRR_BLOCK6}"),
    ])
    .await
    .unwrap();
    wait_routes6(me, FRR_BLOCK6, "FRR's withdrawal", |r| r.is_empty()).await;
    std::fs::write(&announce, "").unwrap();
    agent.signal(nix::sys::signal::Signal::SIGHUP).unwrap();
    frr.wait_paths(our6, PROPAGATE, "our withdrawal", |p| p.is_empty())
        .await
        .unwrap();
    wait_routes6(fnode, OUR_BLOCK6, "our withdrawal in FRR's kernel", |r| {
        r.is_empty()
    })
    .await;
    assert_eq!(frr.state(&key).await.unwrap(), "Established");
    let n = frr.neighbor(&key).await.unwrap().unwrap();
    assert_eq!(n["connectionsDropped"], 0, "{n}");
}
