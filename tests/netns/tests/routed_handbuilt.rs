//! The hand-built Calico-style routed path (the yardstick of the routed iperf3 benchmark)
//! really carries pod traffic across two nodes: ping both ways, at the full underlay MTU, and
//! not without the route to the other node's block.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::time::Duration;

use netns_testbed::{Testbed, handbuilt, require_root, require_tool};
use trellis_net::Route;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_built_calico_routed_path_carries_pod_traffic() {
    require_root();
    require_tool("ping", "iputils-ping");
    let tb = Testbed::new().unwrap();
    let pair = handbuilt::calico_routed(&tb, 1).await.unwrap();
    let ping = |from: usize, extra: &'static [&'static str]| {
        let tb = &tb;
        let ns = pair.pods[from].clone();
        let to = pair.ips[1 - from].to_string();
        async move {
            let mut argv = vec!["ping", "-c", "1", "-W", "2"];
            argv.extend_from_slice(extra);
            argv.push(&to);
            tb.exec(&ns, &argv, Duration::from_secs(8)).await.unwrap()
        }
    };
    for from in 0..2 {
        let out = ping(from, &[]).await;
        assert!(
            out.success(),
            "pod {from} → other node's pod: {}{}",
            out.stdout,
            out.stderr
        );
    }
    // No encapsulation: a full 1500-byte packet crosses unfragmented (TTL shows two hops).
    let out = ping(0, &["-M", "do", "-s", "1472"]).await;
    assert!(out.success(), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("ttl=62"), "{}", out.stdout);

    // Without the route to the other node's block, nothing gets through: it carried the traffic.
    let h = pair.nodes[0].ns.connect().unwrap();
    let eth0 = h.require_link("eth0").await.unwrap();
    assert!(
        h.delete_route(
            &Route::via(
                "10.251.2.0/26".parse().unwrap(),
                IpAddr::V4(pair.nodes[1].ip)
            )
            .oif(eth0.index)
        )
        .await
        .unwrap()
    );
    let out = ping(0, &[]).await;
    assert!(!out.success(), "the path must depend on the block route");
}
