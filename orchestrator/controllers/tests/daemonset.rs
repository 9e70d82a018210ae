//! DaemonSet controller against the API server: one pod on each node, also on a node added
//! later, none on a node it does not tolerate; a template change rolls out one node at a
//! time (maxUnavailable 1).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use support::*;

fn per_node(ps: &[Pod]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for p in ps
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        let n = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        *m.entry(n).or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_set_runs_one_pod_per_eligible_node_including_a_new_one_and_rolls_one_at_a_time() {
    let s = TestServer::start().await;
    let client = s.client().await;
    let nodes = FakeNodes::start(client.clone(), 3).await;
    // fake-2 carries a taint the daemon does not tolerate.
    Api::<Node>::all(client.clone())
        .patch("fake-2", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}})))
        .await
        .unwrap();
    let m = Manager::start(client.clone(), |c| {
        c.controllers = ["daemonset".to_string()].into();
    })
    .await;
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), "default");
    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
                 "template": {"metadata": {"labels": {"app": "agent"}},
                              "spec": {"containers": [{"name": "c", "image": "agent:1"}]}}},
    }))
    .unwrap();
    api.create(&PostParams::default(), &ds).await.unwrap();
    let want: BTreeMap<String, usize> =
        [("fake-0".to_string(), 1), ("fake-1".to_string(), 1)].into();
    wait_for(
        "one ready pod on fake-0 and fake-1, none on tainted fake-2",
        60,
        || async {
            let ps = pods(&client, "default", "app=agent").await;
            (per_node(&ps) == want && ps.iter().all(is_ready)).then_some(())
        },
    )
    .await;
    nodes.add_node("fake-3").await;
    wait_for("a pod on the new node", 60, || async {
        let ps = pods(&client, "default", "app=agent").await;
        let m = per_node(&ps);
        (m.len() == 3
            && m.values().all(|n| *n == 1)
            && m.contains_key("fake-3")
            && ps.iter().all(is_ready))
        .then_some(())
    })
    .await;
    let st = wait_for("status", 30, || async {
        let st = api.get("agent").await.unwrap().status?;
        (st.number_ready == 3).then_some(st)
    })
    .await;
    assert_eq!(
        (
            st.desired_number_scheduled,
            st.current_number_scheduled,
            st.number_misscheduled
        ),
        (3, 3, 0)
    );

    // Roll: never more than one node without a ready pod.
    let bad = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (client, bad, stop) = (client.clone(), bad.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let ps = pods(&client, "default", "app=agent").await;
                let ready_nodes =
                    per_node(&ps.into_iter().filter(is_ready).collect::<Vec<_>>()).len();
                if ready_nodes < 2 {
                    bad.lock().unwrap().push(ready_nodes);
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        })
    };
    api.patch("agent", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "agent:2"}]}}}})))
        .await
        .unwrap();
    wait_for("every node on agent:2", 90, || async {
        let ps: Vec<Pod> = pods(&client, "default", "app=agent")
            .await
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        let all_new = ps
            .iter()
            .all(|p| p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some("agent:2"));
        (ps.len() == 3 && all_new && ps.iter().all(is_ready)).then_some(())
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    sampler.await.unwrap();
    assert!(
        bad.lock().unwrap().is_empty(),
        "more than one node without a ready pod: {:?}",
        bad.lock().unwrap()
    );
    m.stop().await;
    s.stop().await;
}
