//! ReplicaSet controller against the API server, with fake nodes playing scheduler and
//! kubelet: scale up and down exactly once per change, ownership, adoption, status.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use support::*;

fn replica_set(name: &str, replicas: i32) -> ReplicaSet {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
    }))
    .unwrap()
}

async fn ready_pods(client: &kube::Client, app: &str) -> usize {
    pods(client, "default", &format!("app={app}"))
        .await
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && is_ready(p))
        .count()
}

async fn live_pods(client: &kube::Client, app: &str) -> Vec<Pod> {
    pods(client, "default", &format!("app={app}"))
        .await
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_set_scales_up_and_down_exactly_once_per_change() {
    let s = TestServer::start().await;
    let client = s.client().await;
    let ledger = PodLedger::start(client.clone(), "default").await;
    let _nodes = FakeNodes::start(client.clone(), 3).await;
    let m = Manager::start(client.clone(), |c| {
        c.controllers = ["replicaset".to_string()].into();
    })
    .await;
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &replica_set("web", 5))
        .await
        .unwrap();
    wait_for("5 ready pods and status", 60, || async {
        let rs = api.get("web").await.unwrap();
        let st = rs.status.unwrap_or_default();
        (ready_pods(&client, "web").await == 5
            && st.ready_replicas == Some(5)
            && st.available_replicas == Some(5)
            && st.observed_generation == rs.metadata.generation)
            .then_some(())
    })
    .await;
    // Every pod has the controller reference, with blockOwnerDeletion.
    let uid = api.get("web").await.unwrap().metadata.uid.unwrap();
    for p in live_pods(&client, "web").await {
        let r = p.metadata.owner_references.unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].kind.as_str(), r[0].name.as_str(), r[0].uid.as_str()),
            ("ReplicaSet", "web", uid.as_str())
        );
        assert_eq!(
            (r[0].controller, r[0].block_owner_deletion),
            (Some(true), Some(true))
        );
    }
    assert_eq!(ledger.count_once_at_least(5).await, 5);

    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"replicas": 8}})),
    )
    .await
    .unwrap();
    wait_for("8 ready pods", 60, || async {
        (ready_pods(&client, "web").await == 8).then_some(())
    })
    .await;
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"replicas": 3}})),
    )
    .await
    .unwrap();
    wait_for("3 pods left", 60, || async {
        let rs = api.get("web").await.unwrap();
        (pods(&client, "default", "app=web").await.len() == 3
            && rs.status.unwrap_or_default().replicas == 3)
            .then_some(())
    })
    .await;
    // Let any duplicate action show up: the status is settled, a second round would be a bug.
    let settle = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    while tokio::time::Instant::now() < settle {
        assert_eq!(
            pods(&client, "default", "app=web").await.len(),
            3,
            "scaled past 3"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(
        ledger.count_once_at_least(8).await,
        8,
        "5 + 3 pods were created, no more"
    );
    m.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_set_adopts_matching_orphans_and_releases_pods_that_stop_matching() {
    let s = TestServer::start().await;
    let client = s.client().await;
    let _nodes = FakeNodes::start(client.clone(), 2).await;
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let orphan: Pod = serde_json::from_value(json!({
        "metadata": {"name": "orphan", "labels": {"app": "db"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }))
    .unwrap();
    pods_api
        .create(&PostParams::default(), &orphan)
        .await
        .unwrap();
    let m = Manager::start(client.clone(), |c| {
        c.controllers = ["replicaset".to_string()].into();
    })
    .await;
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &replica_set("db", 2))
        .await
        .unwrap();
    wait_for("the orphan adopted and one more pod", 60, || async {
        let p = pods_api.get("orphan").await.unwrap();
        let adopted = p
            .metadata
            .owner_references
            .unwrap_or_default()
            .iter()
            .any(|r| r.name == "db" && r.controller == Some(true));
        (adopted && live_pods(&client, "db").await.len() == 2).then_some(())
    })
    .await;
    // Relabel the adopted pod: it is released and replaced.
    pods_api
        .patch(
            "orphan",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"app": "other"}}})),
        )
        .await
        .unwrap();
    wait_for("the relabelled pod released and replaced", 60, || async {
        let p = pods_api.get("orphan").await.unwrap();
        let released = p.metadata.owner_references.unwrap_or_default().is_empty();
        (released && live_pods(&client, "db").await.len() == 2).then_some(())
    })
    .await;
    m.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_removes_not_ready_pods_first() {
    let s = TestServer::start().await;
    let client = s.client().await;
    let _nodes = FakeNodes::start(client.clone(), 2).await;
    let m = Manager::start(client.clone(), |c| {
        c.controllers = ["replicaset".to_string()].into();
    })
    .await;
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &replica_set("api", 4))
        .await
        .unwrap();
    wait_for("4 ready pods", 60, || async {
        (ready_pods(&client, "api").await == 4).then_some(())
    })
    .await;
    let all = live_pods(&client, "api").await;
    let sick: Vec<String> = all[..2]
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    for n in &sick {
        set_ready(&client, "default", n, false).await;
    }
    wait_for("readyReplicas 2", 60, || async {
        (api.get("api")
            .await
            .unwrap()
            .status
            .unwrap_or_default()
            .ready_replicas
            == Some(2))
        .then_some(())
    })
    .await;
    api.patch(
        "api",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"replicas": 2}})),
    )
    .await
    .unwrap();
    let left = wait_for("2 pods left", 60, || async {
        let l = live_pods(&client, "api").await;
        (l.len() == 2).then_some(l)
    })
    .await;
    for p in left {
        assert!(
            !sick.contains(p.metadata.name.as_ref().unwrap()),
            "a not-ready pod survived the scale-down"
        );
    }
    m.stop().await;
    s.stop().await;
}
