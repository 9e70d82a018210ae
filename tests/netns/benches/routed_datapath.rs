//! iperf3 TCP throughput pod to pod across two nodes, three ways side by side from one run:
//! the underlay itself (node to node), Calico's /32-routed data path built by hand, and the
//! path `trellis bgp-agent` + `trellis-routed` build (routes learned over BGP). Rounds
//! alternate between the paths so a busy machine hurts them alike; the median round is
//! reported.
//!
//!     cargo bench -p netns-testbed --bench routed-datapath [-- --seconds 5 --rounds 3]
//!
//! Needs root, iperf3 and the workspace's release binaries (`cargo build --release`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use netns_testbed::iperf::{arg, iperf, median};
use netns_testbed::{Testbed, handbuilt, require_root, require_tool};

#[path = "../tests/support/routed_cluster.rs"]
mod routed_cluster;
use routed_cluster::{Cluster, block_of};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    require_root();
    require_tool("iperf3", "iperf3");
    // Ctrl-C drops the run, and with it every namespace and process it made.
    tokio::select! {
        () = run() => {}
        _ = tokio::signal::ctrl_c() => eprintln!("interrupted; cleaned up"),
    }
}

async fn run() {
    let secs = arg("--seconds", 5);
    let rounds = arg("--rounds", 3).max(1);
    let hand_tb = Testbed::new().unwrap();
    let hand = handbuilt::calico_routed(&hand_tb, 20).await.unwrap();
    let ours = Cluster::start(2).await;
    let a = ours.add_pod(0, "a").await;
    let b = ours.add_pod(1, "b").await;
    for (pod, on) in [(&a, 0), (&b, 1)] {
        let via = ours.workers[on].node.ip;
        ours.wait_route(block_of(pod.ip), Some(via), on, Duration::from_secs(30))
            .await;
    }
    let (mut under, mut calico, mut trellis) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        eprintln!("round {round}/{rounds}…");
        let n = &hand.nodes;
        under.push(
            iperf(&hand_tb, &n[1].ns, n[1].ip, &n[0].ns, secs)
                .await
                .unwrap(),
        );
        calico.push(
            iperf(&hand_tb, &hand.pods[1], hand.ips[1], &hand.pods[0], secs)
                .await
                .unwrap(),
        );
        trellis.push(iperf(&ours.tb, &b.ns, b.ip, &a.ns, secs).await.unwrap());
    }
    let (u, c, t) = (median(under), median(calico), median(trellis));
    println!("routed-datapath: iperf3 TCP, one stream, {secs} s, median of {rounds} rounds");
    println!("{:<34} {:>10}", "path", "Gbit/s");
    println!("{:<34} {:>10.2}", "underlay (node to node)", u);
    println!("{:<34} {:>10.2}", "calico /32 path, built by hand", c);
    println!("{:<34} {:>10.2}", "trellis-routed + bgp-agent", t);
    println!("trellis-routed / hand-built: {:.2}x", t / c.max(1e-9));
    println!("hand-built / underlay:       {:.2}x", c / u.max(1e-9));
    println!("trellis-routed / underlay:   {:.2}x", t / u.max(1e-9));
}
