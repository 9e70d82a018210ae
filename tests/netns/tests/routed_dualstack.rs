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
