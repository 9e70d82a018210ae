//! The canal mode against the overlay mode, side by side from one run: two 2-node clusters,
//! one of `trellis overlay-agent` + `trellis-overlay`, one of `trellis overlay-agent --mode
//! canal` + `trellis-canal` (each node with its ipamd, the same pool, no policy gate), then
//!
//! - ADD/DEL latency (p50, p99) of each node's own conflist — the agent's real state and ipamd —
//!   over `--pods` pods each (in two halves, canal overlay overlay canal), the plugins run from
//!   a throwaway host namespace as cni-bench does;
//! - iperf3 TCP throughput pod to pod across the two nodes, rounds alternating between the two
//!   clusters so a busy machine hurts them alike, the median round reported.
//!
//!     cargo bench -p netns-testbed --bench canal-datapath [-- --pods 100 --seconds 5 --rounds 3]
//!
//! Needs root, iperf3 and the workspace's binaries (`cargo build --release`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use netns_testbed::bench::{self, Subject};
use netns_testbed::iperf::{arg, bench_main, iperf, median};
use netns_testbed::{REFERENCE_PLUGIN_DIR, bin_dir};

#[path = "../tests/support/overlay_cluster.rs"]
mod overlay_cluster;
use overlay_cluster::{Blocks, Cluster, Plugin};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    bench_main(run()).await;
}

/// ADD/DEL figures of the conflist the agent wrote on the cluster's first node.
async fn latency(c: &Cluster, label: &str, pods: usize) -> bench::Figures {
    let w = &c.workers[0];
    let subject = Subject {
        label: label.into(),
        config: std::fs::read_to_string(w.dirs.join(c.plugin.conflist())).unwrap(),
        plugin_dirs: vec![bin_dir(), std::path::PathBuf::from(REFERENCE_PLUGIN_DIR)],
        files: Vec::new(),
    };
    eprintln!("measuring {label} over {pods} pods…");
    bench::measure(&subject, pods).await.unwrap()
}

async fn run() {
    let secs = arg("--seconds", 5);
    let rounds = arg("--rounds", 3).max(1);
    let pods = arg("--pods", 100).max(1) as usize;

    let canal =
        Cluster::start_plugin(2, Blocks::IpamdUnreserved, Plugin::Canal, |_| Vec::new()).await;
    let overlay =
        Cluster::start_plugin(2, Blocks::IpamdUnreserved, Plugin::Overlay, |_| Vec::new()).await;

    // ADD/DEL in the order canal, overlay, overlay, canal (half the pods each time): a load
    // that rises or falls during the run weighs on both alike.
    let half = pods.div_ceil(2);
    let c1 = latency(&canal, "trellis-canal", half).await;
    let o1 = latency(&overlay, "trellis-overlay", half).await;
    let o2 = latency(&overlay, "trellis-overlay", half).await;
    let c2 = latency(&canal, "trellis-canal", half).await;
    let figures = [
        bench::Figures::combine(&[c1, c2]).unwrap(),
        bench::Figures::combine(&[o1, o2]).unwrap(),
    ];

    let (ca, cb) = (canal.add_pod(0, "a").await, canal.add_pod(1, "b").await);
    let (oa, ob) = (overlay.add_pod(0, "a").await, overlay.add_pod(1, "b").await);
    let (mut c_gbps, mut o_gbps) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        eprintln!("iperf3 round {round}/{rounds}…");
        c_gbps.push(iperf(&canal.tb, &cb.ns, cb.ip, &ca.ns, secs).await.unwrap());
        o_gbps.push(
            iperf(&overlay.tb, &ob.ns, ob.ip, &oa.ns, secs)
                .await
                .unwrap(),
        );
    }
    let (c, o) = (median(c_gbps), median(o_gbps));

    print!("{}", bench::table(&figures));
    println!("iperf3 TCP pod to pod across nodes, one stream, {secs} s, median of {rounds} rounds");
    println!("{:<18} {:>10}", "mode", "Gbit/s");
    println!("{:<18} {:>10.2}", "trellis-canal", c);
    println!("{:<18} {:>10.2}", "trellis-overlay", o);
    println!("ratio canal/overlay {:>9.2}x", c / o.max(1e-9));
}
