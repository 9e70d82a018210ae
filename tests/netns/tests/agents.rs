//! What both network agents do when they start before their Node exists — as they do when
//! deployed as DaemonSets before the kubelet registers the node: they wait, say so once, and go
//! on as soon as the Node appears. Neither exits, neither repeats an error every few seconds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use k8s_openapi::api::core::v1::Node as KubeNode;
use kube::Api;
use kube::api::PostParams;
use netns_testbed::cluster::ControlPlane;
use netns_testbed::{Testbed, require_root};

#[path = "support/overlay_cluster.rs"]
mod overlay_cluster;
#[path = "support/routed_cluster.rs"]
mod routed_cluster;

const WAITING: &str = "waiting for the Node to be registered";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_agents_wait_for_their_node_saying_so_once() {
    require_root();
    let tb = Testbed::new().unwrap();
    let cp = ControlPlane::start(&tb, "cp", 1).await.unwrap();
    let node = tb.add_node("n1", 2).await.unwrap();
    let dirs = tb.state_dir().join("n1");
    let overlay = overlay_cluster::start_agent(&tb, &cp, &node, &dirs.join("overlay"));
    let bgp = routed_cluster::start_agent_opts(&tb, &cp, &node, &dirs.join("routed"), false, 1);
    let agents = [("overlay-agent", overlay), ("bgp-agent", bgp)];
    // Each says once that it waits.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for (name, pid) in agents {
        while !tb.log_of(pid).contains(WAITING) {
            assert!(tb.running(pid), "{name} exited: {}", tb.log_of(pid));
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} did not say it waits: {}",
                tb.log_of(pid)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // An observation window longer than any retry period: they keep waiting, quietly.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for (name, pid) in agents {
        let log = tb.log_of(pid);
        assert!(tb.running(pid), "{name} exited while waiting: {log}");
        assert_eq!(
            log.matches(WAITING).count(),
            1,
            "{name} repeats itself: {log}"
        );
        assert!(
            !log.contains("WARN") && !log.contains("ERROR"),
            "{name} logs errors while waiting: {log}"
        );
    }
    // The Node appears (with the podCIDR the overlay agent takes its block from): both go on.
    let client = overlay_cluster::kube_client(&cp.local_kubeconfig).await;
    let nodes: Api<KubeNode> = Api::all(client);
    let obj: KubeNode = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "n1"},
        "spec": {"podCIDR": "10.244.1.0/24"},
        "status": {"addresses": [{"type": "InternalIP", "address": node.ip.to_string()}]},
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &obj).await.unwrap();
    for (name, pid, ready) in [
        (
            "overlay-agent",
            overlay,
            dirs.join("overlay/state/ready.json"),
        ),
        ("bgp-agent", bgp, dirs.join("routed/state/ready.json")),
    ] {
        while !ready.is_file() {
            assert!(tb.running(pid), "{name} exited: {}", tb.log_of(pid));
            assert!(
                tokio::time::Instant::now() < deadline + Duration::from_secs(20),
                "{name} never became ready after the Node appeared: {}",
                tb.log_of(pid)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(tb.log_of(pid).matches(WAITING).count(), 1);
    }
}
