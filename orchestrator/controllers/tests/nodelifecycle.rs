//! Node lifecycle with shortened timers: a node whose "kubelet" stops renewing its Lease
//! turns Unknown after the grace period and is tainted unreachable; its pods are evicted
//! after their (default, shortened) toleration; the ReplicaSet's pod is replaced on a
//! healthy node, the bare pod is not.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use support::*;

const GRACE: Duration = Duration::from_secs(4);
const TOLERATION: i64 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_nodes_replica_set_pods_are_recreated_elsewhere_and_its_bare_pod_is_not() {
    let s =
        TestServer::start_with(|c| c.default_toleration_seconds = (TOLERATION, TOLERATION)).await;
    let client = s.client().await;
    let nodes = FakeNodes::start(client.clone(), 3).await;
    let m = Manager::start(client.clone(), |c| {
        c.controllers = ["replicaset".to_string(), "nodelifecycle".to_string()].into();
        c.node_monitor_grace_period = GRACE;
        c.node_monitor_period = Duration::from_millis(500);
    })
    .await;
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let bare: Pod = serde_json::from_value(json!({
        "metadata": {"name": "bare", "labels": {"app": "bare"}},
        "spec": {"nodeName": "fake-0", "containers": [{"name": "c", "image": "busybox"}]},
    }))
    .unwrap();
    pods_api
        .create(&PostParams::default(), &bare)
        .await
        .unwrap();
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
    }))
    .unwrap();
    Api::<ReplicaSet>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &rs)
        .await
        .unwrap();
    // Round-robin binding puts one of the three on each node.
    let before = wait_for("3 ready pods, one on fake-0", 60, || async {
        let p = pods(&client, "default", "app=web").await;
        let on0 = p.iter().filter(|p| node_of(p) == "fake-0").count();
        (p.len() == 3
            && p.iter().all(is_ready)
            && on0 == 1
            && is_ready(&pods_api.get("bare").await.unwrap()))
        .then_some(p)
    })
    .await;
    // The API server gave the pods the default tolerations, with the shortened limit.
    let t = before[0]
        .spec
        .as_ref()
        .unwrap()
        .tolerations
        .clone()
        .unwrap();
    assert!(
        t.iter().any(
            |t| t.key.as_deref() == Some("node.kubernetes.io/unreachable")
                && t.toleration_seconds == Some(TOLERATION)
        ),
        "{t:?}"
    );
    let victim = before
        .iter()
        .find(|p| node_of(p) == "fake-0")
        .unwrap()
        .metadata
        .name
        .clone()
        .unwrap();

    nodes.take_down("fake-0");
    let down_at = Instant::now();
    let node_api: Api<Node> = Api::all(client.clone());
    wait_for("fake-0 Unknown and tainted unreachable", 60, || async {
        let n = node_api.get("fake-0").await.unwrap();
        let ready = n
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "Ready")?
            .clone();
        let tainted = n
            .spec
            .as_ref()?
            .taints
            .as_ref()?
            .iter()
            .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute");
        (ready.status == "Unknown"
            && ready.reason.as_deref() == Some("NodeStatusUnknown")
            && tainted)
            .then_some(())
    })
    .await;
    let took = down_at.elapsed();
    let seen_unknown = jiff::Timestamp::now();
    // Not before the grace period after the last renewal: measured from the Lease's renewTime
    // (stamped by the same clock), not from take_down, whose distance from the last renewal
    // depends on how the fake kubelet's loop was scheduled.
    let lease = Api::<Lease>::namespaced(client.clone(), "kube-node-lease")
        .get("fake-0")
        .await
        .unwrap();
    let renewed = lease.spec.unwrap().renew_time.unwrap().0;
    let after_renewal = seen_unknown.duration_since(renewed);
    assert!(
        after_renewal.unsigned_abs() + Duration::from_millis(50) >= GRACE
            && after_renewal.is_positive(),
        "Unknown {after_renewal:?} after the last renewal, before the {GRACE:?} grace period"
    );
    for h in ["fake-1", "fake-2"] {
        let n = node_api.get(h).await.unwrap();
        assert!(
            n.spec.and_then(|s| s.taints).unwrap_or_default().is_empty(),
            "healthy {h} was tainted"
        );
    }
    // Evicted after the toleration; replaced on a healthy node.
    wait_for("the pod on fake-0 replaced", 60, || async {
        let p = pods(&client, "default", "app=web").await;
        let live: Vec<&Pod> = p
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        let victim_gone = p.iter().all(|p| {
            p.metadata.name.as_deref() != Some(victim.as_str())
                || p.metadata.deletion_timestamp.is_some()
        });
        (victim_gone
            && live.len() == 3
            && live.iter().all(|p| is_ready(p) && node_of(p) != "fake-0"))
        .then_some(())
    })
    .await;
    let evicted_after = down_at.elapsed();
    assert!(
        evicted_after >= took,
        "evicted before the node was even Unknown"
    );
    // The bare pod was evicted too, and nothing brings it back.
    let b = pods_api.get("bare").await.unwrap();
    assert!(
        b.metadata.deletion_timestamp.is_some(),
        "the bare pod was not evicted"
    );
    let bares = pods(&client, "default", "app=bare").await;
    assert_eq!(bares.len(), 1, "a bare pod was recreated: {bares:?}");
    m.stop().await;
    s.stop().await;
}

fn node_of(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}
