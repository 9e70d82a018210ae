//! The routed mode dual-stack: three nodes with IPv4 and IPv6 underlay addresses, ipamd with an
//! IPv4 and an IPv6 pool, `trellis bgp-agent --dual-stack` in an iBGP full mesh (one session per
//! pair, over IPv4, carrying both families). Every pod has a /32 and a /128; each node's IPv6
//! block reaches the other kernels via that node's IPv6 address, and every pod pair pings and
//! talks TCP without NAT in both families. Deleting a pod leaves the routes its node's other
//! pods need.
//!
//! Negative control: a node whose agent runs without `--dual-stack` offers no IPv6 unicast, so
//! its IPv6 block reaches no other kernel and ping6 to its pod fails, while IPv4 works.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::time::Duration;

use netns_testbed::bed::node_ipv6;
use netns_testbed::probe::{PodAtIp, pairs_talk_without_nat_ip};
use trellis_cni::NetworkConfigList;
use trellis_net::Family;

#[path = "support/routed_cluster.rs"]
mod routed_cluster;
use routed_cluster::{Cluster, block_of, block_of6};

/// How long a block may take to reach every other kernel (the agents announce at the claim;
/// this bounds sessions coming up on a loaded machine).
const CONVERGE: Duration = Duration::from_secs(30);

/// Each pod once per address, for the probes.
fn both_families(pods: &[routed_cluster::Pod]) -> Vec<PodAtIp<'_>> {
    pods.iter()
        .flat_map(|p| {
            let ip6 = p.ip6.expect("a dual-stack pod has an IPv6 address");
            [
                (&*p.ns, IpAddr::V4(p.ip), p.on),
                (&*p.ns, IpAddr::V6(ip6), p.on),
            ]
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_pods_talk_over_ipv4_and_ipv6_across_three_nodes() {
    let c = Cluster::start_dual(3, |_, _| vec!["--dual-stack".to_string()]).await;
    c.wait_established(2, CONVERGE).await;
    let mut pods = Vec::new();
    for (on, name) in [(0, "a"), (1, "b"), (2, "c")] {
        pods.push(c.add_pod(on, name).await);
    }
    // Each node's blocks reach the other kernels: IPv4 via its IPv4 address, IPv6 via its
    // IPv6 address (the next hop it announces), installed by the agents.
    for (i, p) in pods.iter().enumerate() {
        let ip6 = p.ip6.expect("a dual-stack pod has an IPv6 address");
        let via6 = IpAddr::V6(node_ipv6((i + 2) as u8));
        c.wait_route_ip(block_of6(ip6), Some(via6), i, CONVERGE)
            .await;
        c.wait_route(block_of(p.ip), Some(c.workers[i].node.ip), i, CONVERGE)
            .await;
    }
    // Each node covers its own IPv6 block with a blackhole of the agent's protocol, as IPv4.
    for (i, p) in pods.iter().enumerate() {
        let block = block_of6(p.ip6.unwrap());
        let own = c.workers[i]
            .node
            .ns
            .connect()
            .unwrap()
            .routes(Family::V6, Some(trellis_net::Route::TABLE_MAIN))
            .await
            .unwrap();
        assert!(
            own.iter().any(|r| r.dst == block
                && r.kind == trellis_net::RouteKind::Blackhole
                && r.protocol == trellis_net::proto::BGP),
            "n{}: no blackhole for {block}: {own:?}",
            i + 1
        );
    }
    // Every ordered pair, in both families, sources preserved.
    pairs_talk_without_nat_ip(&c.tb, &both_families(&pods))
        .await
        .unwrap();

    // A second pod on n1 shares n1's blocks; deleting it withdraws nothing the first needs.
    let a2 = c.add_pod(0, "a2").await;
    assert_eq!(block_of6(a2.ip6.unwrap()), block_of6(pods[0].ip6.unwrap()));
    c.del_pod(&a2, "a2").await;
    let n1_v6 = IpAddr::V6(node_ipv6(2));
    c.wait_route_ip(block_of6(pods[0].ip6.unwrap()), Some(n1_v6), 0, CONVERGE)
        .await;
    pairs_talk_without_nat_ip(&c.tb, &both_families(&pods))
        .await
        .unwrap();
    // And the kernel of every other node still routes n1's IPv6 block (nothing was withdrawn
    // in between: the route was never replaced by anything else).
    for i in [1, 2] {
        let learned = c.learned_of(i, Family::V6).await;
        assert!(
            learned
                .iter()
                .any(|(d, g)| *d == block_of6(pods[0].ip6.unwrap()) && *g == Some(n1_v6)),
            "n{}: {learned:?}",
            i + 1
        );
    }
}

/// The negative control: n2's agent runs without `--dual-stack` (its pod gets an IPv6 address
/// anyway, from a dual-stack list, and IPv6 forwarding is on in its namespace), so the one thing
/// missing is the BGP IPv6 unicast family: n1 learns n2's IPv4 block but not its IPv6 one, and
/// ping6 from n1's pod to n2's pod fails while IPv4 works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_dual_stack_on_a_node_its_ipv6_block_reaches_no_peer() {
    let c = Cluster::start_dual(2, |i, _| {
        if i == 0 {
            vec!["--dual-stack".to_string()]
        } else {
            Vec::new()
        }
    })
    .await;
    c.wait_established(1, CONVERGE).await;
    trellis_net::sysctl::set(
        &c.workers[1].node.ns,
        &[("net/ipv6/conf/all/forwarding", "1")],
    )
    .unwrap();
    let a = c.add_pod(0, "a").await;
    // n2's own list is IPv4 only; the dual-stack one of n1 with n2's paths gives its pod IPv6.
    let mut list: serde_json::Value = serde_json::from_slice(&c.conflist(1)).unwrap();
    assert!(
        list["plugins"][0]["ipam"].get("families").is_none(),
        "n2's agent writes an IPv4-only list: {list}"
    );
    list["plugins"][0]["ipam"]["families"] = serde_json::json!(["ipv4", "ipv6"]);
    let list = NetworkConfigList::from_slice(list.to_string().as_bytes()).unwrap();
    let b = c.add_pod_with(1, "b", &list).await;
    let (a6, b6) = (a.ip6.unwrap(), b.ip6.unwrap());

    // IPv4 works both ways.
    c.wait_route(block_of(b.ip), Some(c.workers[1].node.ip), 1, CONVERGE)
        .await;
    c.wait_route(block_of(a.ip), Some(c.workers[0].node.ip), 0, CONVERGE)
        .await;
    let v4: Vec<PodAtIp<'_>> = vec![(&*a.ns, IpAddr::V4(a.ip), 0), (&*b.ns, IpAddr::V4(b.ip), 1)];
    pairs_talk_without_nat_ip(&c.tb, &v4).await.unwrap();

    // IPv6: no route to either block on the other node, and ping6 fails.
    let target = b6.to_string();
    let out =
        c.tb.exec(
            &a.ns,
            &["ping", "-6", "-c", "1", "-W", "2", target.as_str()],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert!(
        !out.success(),
        "ping6 reached n2's pod without IPv6 unicast: {}",
        out.stdout
    );
    let n1 = c.learned_of(0, Family::V6).await;
    assert!(
        !n1.iter().any(|(d, _)| *d == block_of6(b6)),
        "n1 learned n2's IPv6 block: {n1:?}"
    );
    let n2 = c.learned_of(1, Family::V6).await;
    assert!(
        !n2.iter().any(|(d, _)| *d == block_of6(a6)),
        "n2 learned n1's IPv6 block: {n2:?}"
    );
    // `trellis bgp routes` on n1 holds n2's IPv4 block only.
    assert!(c.bgp_route(0, block_of(b.ip)).await.is_some());
    assert!(c.bgp_route(0, block_of6(b6)).await.is_none());
}

/// The peers of node `on`'s agent as its `/bgp/status` lists them.
async fn peers_of(c: &Cluster, on: usize) -> Vec<serde_json::Value> {
    let ns = c.workers[on].node.ns.clone();
    let status = std::net::SocketAddr::from(([127, 0, 0, 1], 9912));
    let (code, body) = tokio::task::spawn_blocking(move || {
        netns_testbed::probe::http_get(&ns, status, "/bgp/status")
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    match v {
        serde_json::Value::Array(a) => a,
        serde_json::Value::Object(mut o) => match o.remove("peers") {
            Some(serde_json::Value::Array(a)) => a,
            other => panic!("/bgp/status: no peer list: {other:?}"),
        },
        other => panic!("/bgp/status: {other}"),
    }
}

/// The time from `cut_at` until node `on`'s kernel routes none of `blocks`, polled every 2 ms.
async fn gone_after(
    c: &Cluster,
    on: usize,
    blocks: &[ipnet::IpNet],
    cut_at: std::time::Instant,
    limit: Duration,
) -> Duration {
    loop {
        let mut left = c.learned_of(on, Family::V4).await;
        left.extend(c.learned_of(on, Family::V6).await);
        if !left.iter().any(|(d, _)| blocks.contains(d)) {
            return cut_at.elapsed();
        }
        assert!(
            cut_at.elapsed() < limit,
            "n{}: {blocks:?} still routed {limit:?} after the cut: {left:?}",
            on + 1
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The mesh over IPv6 (`--mesh-ipv6`): each node publishes its IPv6 address, so every
/// session of the three-node mesh runs between IPv6 addresses and carries both families (IPv4
/// blocks with IPv4 next hops, IPv6 blocks with IPv6 ones); pods talk in both families. BFD
/// (`--bfd`) runs over IPv6 with every peer: when IPv6 is cut off at n3 (ip6tables drops all
/// of it in n3's namespace, IPv4 still passes), n1 and n2 withdraw both of n3's blocks within
/// 1 s — only BFD over IPv6 can see that failure; the hold timer would take 6 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_over_ipv6_carries_both_families_and_bfd_over_ipv6_withdraws_a_cut_node() {
    netns_testbed::require_tool("ip6tables", "iptables");
    let c = Cluster::start_dual(3, |_, _| {
        ["--dual-stack", "--mesh-ipv6", "--bfd"]
            .map(String::from)
            .to_vec()
    })
    .await;
    c.wait_established(2, CONVERGE).await;
    // Every session is to another node's IPv6 address.
    for on in 0..3 {
        let mut addrs: Vec<String> = peers_of(&c, on)
            .await
            .iter()
            .filter_map(|p| p["address"].as_str().map(str::to_string))
            .collect();
        addrs.sort();
        let mut want: Vec<String> = (0..3)
            .filter(|i| *i != on)
            .map(|i| node_ipv6((i + 2) as u8).to_string())
            .collect();
        want.sort();
        assert_eq!(addrs, want, "n{}'s peers", on + 1);
    }
    let mut pods = Vec::new();
    for (on, name) in [(0, "a"), (1, "b"), (2, "c")] {
        pods.push(c.add_pod(on, name).await);
    }
    for (i, p) in pods.iter().enumerate() {
        let via6 = IpAddr::V6(node_ipv6((i + 2) as u8));
        c.wait_route_ip(block_of6(p.ip6.unwrap()), Some(via6), i, CONVERGE)
            .await;
        c.wait_route(block_of(p.ip), Some(c.workers[i].node.ip), i, CONVERGE)
            .await;
    }
    // n2's IPv4 block came to n1 over the IPv6 session.
    let r = c.bgp_route(0, block_of(pods[1].ip)).await.unwrap();
    assert_eq!(r.source, node_ipv6(3).to_string(), "{r:?}");
    assert_eq!(r.next_hop, c.workers[1].node.ip.to_string(), "{r:?}");
    pairs_talk_without_nat_ip(&c.tb, &both_families(&pods))
        .await
        .unwrap();

    // BFD is Up over IPv6 with every peer (300 ms x 3).
    let deadline = tokio::time::Instant::now() + CONVERGE;
    for on in 0..3 {
        loop {
            let peers = peers_of(&c, on).await;
            let up = peers
                .iter()
                .filter(|p| p["bfd"]["state"] == "Up" && p["bfd"]["detection_ms"] == 900)
                .count();
            if up == 2 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "n{}: BFD not Up with both peers: {peers:?}",
                on + 1
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Cut IPv6 off at n3.
    let n3 = &c.workers[2].node.ns;
    let blocks = [block_of(pods[2].ip), block_of6(pods[2].ip6.unwrap())];
    let cut_at = std::time::Instant::now();
    for chain in ["INPUT", "OUTPUT"] {
        c.tb.exec_ok(
            n3,
            &["ip6tables", "-w", "-I", chain, "-j", "DROP"],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    }
    for on in [0, 1] {
        let took = gone_after(&c, on, &blocks, cut_at, Duration::from_secs(10)).await;
        eprintln!(
            "n{}: IPv6 cut at n3 → n3's blocks withdrawn in {took:?}",
            on + 1
        );
        assert!(
            took <= Duration::from_secs(1),
            "n{}: n3's blocks left {took:?} after the cut",
            on + 1
        );
    }
    // n1 and n2 still reach each other in both families.
    pairs_talk_without_nat_ip(&c.tb, &both_families(&pods[..2]))
        .await
        .unwrap();
}

/// n1 announces this IPv6 prefix through the whole restart.
const KEPT6: &str = "fd00:99:1::/64";
/// n1 withdraws this IPv6 prefix while n2's agent is away: n2 must sweep it.
const GONE6: &str = "fd00:99:2::/64";

/// What a restart of n2's agent in a dual-stack pair did to n2's IPv6 kernel routes.
struct DualRestart {
    /// `ip -6 monitor route` in n2's namespace from before the kill to the end.
    monitor: String,
    /// n2's metrics after the restart.
    metrics: String,
    /// n1's pod's IPv6 block (n2 holds its route).
    held6: ipnet::IpNet,
}

impl DualRestart {
    fn deletions(&self, prefix: &str) -> usize {
        self.monitor
            .lines()
            .filter(|l| l.starts_with("Deleted") && l.split_whitespace().nth(1) == Some(prefix))
            .count()
    }
}

fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Two dual-stack nodes with graceful restart. n2's agent is killed; meanwhile n1 withdraws
/// [`GONE6`]; n2's agent starts again (with `--no-restart-recovery` when `recovery` is false)
/// and the test waits until n2's kernel follows n1 again. `ip -6 monitor route` in n2's
/// namespace records every IPv6 route change in between.
async fn dual_stack_restart(recovery: bool) -> DualRestart {
    netns_testbed::require_tool("ip", "iproute2");
    let announce = |dirs: &std::path::Path| dirs.join("announce");
    let c = Cluster::start_dual_gr(2, |_, dirs| {
        vec![
            "--dual-stack".to_string(),
            "--announce-file".to_string(),
            announce(dirs).display().to_string(),
        ]
    })
    .await;
    let (n1, n2) = (&c.workers[0], &c.workers[1]);
    let (v6_1, v6_2) = (IpAddr::V6(node_ipv6(2)), IpAddr::V6(node_ipv6(3)));
    std::fs::write(announce(&n1.dirs), format!("{KEPT6}\n{GONE6}\n")).unwrap();
    c.wait_established(1, CONVERGE).await;
    let a = c.add_pod(0, "a").await;
    let b = c.add_pod(1, "b").await;
    let held6 = block_of6(a.ip6.unwrap());
    let block6 = block_of6(b.ip6.unwrap());
    let (kept6, gone6): (ipnet::IpNet, ipnet::IpNet) =
        (KEPT6.parse().unwrap(), GONE6.parse().unwrap());
    for p in [held6, kept6, gone6] {
        c.wait_route_ip(p, Some(v6_1), 0, CONVERGE).await;
    }
    c.wait_route_ip(block6, Some(v6_2), 1, CONVERGE).await;
    let monitor =
        c.tb.spawn(
            &n2.node.ns,
            &["ip", "-6", "monitor", "route"],
            Duration::from_secs(120),
        )
        .unwrap();
    // The monitor is listening once it reports a change: a throwaway route in n2's namespace.
    let h2 = n2.node.ns.connect().unwrap();
    let probe: ipnet::IpNet = "fd00:99:ff::/64".parse().unwrap();
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        h2.add_route(&trellis_net::Route::blackhole(probe))
            .await
            .unwrap();
        h2.delete_route(&trellis_net::Route::blackhole(probe))
            .await
            .unwrap();
        if c.tb.log_of(monitor).contains("fd00:99:ff::/64") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ip -6 monitor never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.tb.kill(n2.agent);
    // n1 keeps n2's IPv6 block stale while n2's agent is away.
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while !c.bgp_route(0, block6).await.is_some_and(|r| r.stale) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "n1 never kept n2's IPv6 block stale"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::write(announce(&n1.dirs), format!("{KEPT6}\n")).unwrap();
    c.tb.signal(n1.agent, nix::sys::signal::Signal::SIGHUP);
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while c.bgp_route(0, gone6).await.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "n1 never withdrew {GONE6}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let file = announce(&n2.dirs).display().to_string();
    let mut extra = vec!["--dual-stack", "--announce-file", file.as_str()];
    if !recovery {
        extra.push("--no-restart-recovery");
    }
    let again = routed_cluster::start_agent_args(&c.tb, &c.cp, &n2.node, &n2.dirs, true, 1, &extra);
    // Back: n1 has n2's IPv6 block afresh, and n2's kernel follows n1 (GONE6 swept).
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let fresh = c.bgp_route(0, block6).await.is_some_and(|r| !r.stale);
        let learned = c.learned_of(1, Family::V6).await;
        let via_n1 = |p: ipnet::IpNet| learned.contains(&(p, Some(v6_1)));
        if fresh && via_n1(held6) && via_n1(kept6) && learned.iter().all(|(d, _)| *d != gone6) {
            break;
        }
        assert!(c.tb.running(again), "{}", c.tb.log_of(again));
        assert!(
            tokio::time::Instant::now() < deadline,
            "n2 does not follow n1 after the restart: {learned:?}\n{}",
            c.tb.log_of(again)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The monitor has printed what it saw up to here once a second probe route shows.
    let probe2: ipnet::IpNet = "fd00:99:fe::/64".parse().unwrap();
    h2.add_route(&trellis_net::Route::blackhole(probe2))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while !c.tb.log_of(monitor).contains("fd00:99:fe::/64") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "ip -6 monitor stopped reporting"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ns = n2.node.ns.clone();
    let status = std::net::SocketAddr::from(([127, 0, 0, 1], 9912));
    let (_, metrics) = tokio::task::spawn_blocking(move || {
        netns_testbed::probe::http_get(&ns, status, "/metrics")
    })
    .await
    .unwrap()
    .unwrap();
    c.tb.kill(monitor);
    DualRestart {
        monitor: c.tb.log_of(monitor),
        metrics,
        held6,
    }
}

/// The restarting side of graceful restart with both families: n2's agent comes back, keeps
/// the IPv6 kernel routes its predecessor installed (never deleted: `ip -6 monitor route`),
/// defers until n1's End-of-RIB, then sweeps the IPv6 route n1 withdrew meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_agent_restart_keeps_its_ipv6_routes_and_sweeps_the_stale_one() {
    let r = dual_stack_restart(true).await;
    for p in [r.held6.to_string().as_str(), KEPT6] {
        assert_eq!(r.deletions(p), 0, "{p} flapped:\n{}", r.monitor);
    }
    assert_eq!(
        r.deletions(GONE6),
        1,
        "{GONE6} not swept:\n{}\n{}",
        r.monitor,
        r.metrics
    );
    assert_eq!(
        metric(&r.metrics, "bgp_graceful_restart_stale_routes_swept_total"),
        Some(1.0),
        "{}",
        r.metrics
    );
}

/// The negative control: the same restart with `--no-restart-recovery` (a cold start) removes
/// the IPv6 routes its predecessor left and installs them again: they flap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_restart_recovery_a_dual_stack_agent_restart_flaps_its_ipv6_routes() {
    let r = dual_stack_restart(false).await;
    let held = r.held6.to_string();
    assert!(
        r.deletions(&held) >= 1 && r.deletions(KEPT6) >= 1,
        "a cold start must remove and reinstall the IPv6 routes n2 held:\n{}",
        r.monitor
    );
}
