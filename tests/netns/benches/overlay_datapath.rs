//! iperf3 TCP throughput pod to pod across two nodes, three ways side by side from one run:
//! the underlay itself (node to node), flannel's VXLAN data path built by hand, and the path
//! `trellis overlay-agent` + `trellis-overlay` build. Rounds alternate between the paths so a
//! busy machine hurts them alike; the median round is reported.
//!
//!     cargo bench -p netns-testbed --bench overlay-datapath [-- --seconds 5 --rounds 3]
//!
//! Needs root, iperf3 and the workspace's release binaries (`cargo build --release`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use netns_testbed::iperf::{arg, iperf, median};
use netns_testbed::{Testbed, handbuilt, require_root, require_tool};

#[path = "../tests/support/overlay_cluster.rs"]
mod overlay_cluster;
use overlay_cluster::Cluster;

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
    let hand = handbuilt::flannel_vxlan(&hand_tb, 20).await.unwrap();
    // The same path again with flanneld's iptables rules, as a flannel node really runs.
    let masq_tb = Testbed::new().unwrap();
    let masq = handbuilt::flannel_vxlan(&masq_tb, 30).await.unwrap();
    handbuilt::flannel_iptables(&masq).await.unwrap();
    let ours = Cluster::start(2).await;
    let a = ours.add_pod(0, "a").await;
    let b = ours.add_pod(1, "b").await;

    let hold = arg("--hold", 0);
    if hold > 0 {
        // For poking at the paths by hand (ip netns exec …) before measuring.
        eprintln!(
            "holding {hold} s: hand-built {} → {} ({}), trellis {} → {} ({})",
            hand.pods[0].path().display(),
            hand.pods[1].path().display(),
            hand.ips[1],
            a.ns.path().display(),
            b.ns.path().display(),
            b.ip
        );
        tokio::time::sleep(Duration::from_secs(u64::from(hold))).await;
    }
    let (mut under, mut flannel, mut trellis) = (Vec::new(), Vec::new(), Vec::new());
    let mut flannel_masq = Vec::new();
    for round in 1..=rounds {
        eprintln!("round {round}/{rounds}…");
        under.push(
            iperf(
                &hand_tb,
                &hand.nodes[1].ns,
                hand.nodes[1].ip,
                &hand.nodes[0].ns,
                secs,
            )
            .await
            .unwrap(),
        );
        flannel.push(
            iperf(&hand_tb, &hand.pods[1], hand.ips[1], &hand.pods[0], secs)
                .await
                .unwrap(),
        );
        flannel_masq.push(
            iperf(&masq_tb, &masq.pods[1], masq.ips[1], &masq.pods[0], secs)
                .await
                .unwrap(),
        );
        trellis.push(iperf(&ours.tb, &b.ns, b.ip, &a.ns, secs).await.unwrap());
    }
    let (u, f, t) = (median(under), median(flannel), median(trellis));
    let fm = median(flannel_masq);
    println!("overlay-datapath: iperf3 TCP, one stream, {secs} s, median of {rounds} rounds");
    println!("{:<34} {:>10}", "path", "Gbit/s");
    println!("{:<34} {:>10.2}", "underlay (node to node)", u);
    println!("{:<34} {:>10.2}", "flannel vxlan path, built by hand", f);
    println!("{:<34} {:>10.2}", "  + flanneld's iptables rules", fm);
    println!("{:<34} {:>10.2}", "trellis-overlay", t);
    println!("trellis-overlay / hand-built: {:.2}x", t / f.max(1e-9));
    println!(
        "trellis-overlay / hand-built + flannel iptables: {:.2}x",
        t / fm.max(1e-9)
    );
    println!("hand-built / underlay:        {:.2}x", f / u.max(1e-9));
    println!("trellis-overlay / underlay:   {:.2}x", t / u.max(1e-9));
}
