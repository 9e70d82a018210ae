//! The garbage collector against the API server: background, foreground and orphan
//! propagation of a ReplicaSet's deletion to its pods, and a Deployment deleted in the
//! foreground going only after its ReplicaSet and pods.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy};
use serde_json::json;
use support::*;

fn replica_set(name: &str, replicas: i32, hold: bool) -> ReplicaSet {
    // `hold`: the pods carry a finalizer of the test's, so they stay (terminating) until
    // the test lets them go — the foreground case can then be seen waiting.
    let fins = if hold {
        json!(["test.trellis/hold"])
    } else {
        json!(null)
    };
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}, "finalizers": fins},
                              "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
    }))
    .unwrap()
}

async fn start(controllers: &[&str]) -> (TestServer, kube::Client, FakeNodes, Manager) {
    let s = TestServer::start().await;
    let client = s.client().await;
    let nodes = FakeNodes::start(client.clone(), 2).await;
    let m = Manager::start(client.clone(), |c| {
        c.controllers = controllers.iter().map(|s| s.to_string()).collect();
    })
    .await;
    (s, client, nodes, m)
}

async fn running(client: &kube::Client, app: &str, n: usize) -> Vec<Pod> {
    wait_for("pods running", 60, || async {
        let p = pods(client, "default", &format!("app={app}")).await;
        (p.len() == n && p.iter().all(is_ready)).then_some(p)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_deletion_removes_the_pods_after_their_replica_set() {
    let (s, client, _nodes, m) = start(&["replicaset", "garbagecollector"]).await;
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &replica_set("bg", 3, false))
        .await
        .unwrap();
    running(&client, "bg", 3).await;
    api.delete(
        "bg",
        &DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(
        api.get_opt("bg").await.unwrap().is_none(),
        "background: the owner goes at once"
    );
    wait_for("the pods collected", 60, || async {
        pods(&client, "default", "app=bg")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    m.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreground_deletion_keeps_the_owner_until_its_blocking_dependents_are_gone() {
    let (s, client, _nodes, m) = start(&["replicaset", "garbagecollector"]).await;
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &replica_set("fg", 2, true))
        .await
        .unwrap();
    let ps = running(&client, "fg", 2).await;
    api.delete(
        "fg",
        &DeleteParams {
            propagation_policy: Some(PropagationPolicy::Foreground),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // The pods are asked to go (terminating, held by our finalizer); the owner waits.
    wait_for("the pods terminating", 60, || async {
        let p = pods(&client, "default", "app=fg").await;
        (p.len() == 2 && p.iter().all(|p| p.metadata.deletion_timestamp.is_some())).then_some(())
    })
    .await;
    let rs = api.get("fg").await.unwrap();
    assert!(rs.metadata.deletion_timestamp.is_some());
    assert!(
        rs.metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"foregroundDeletion".to_string())
    );
    // Let the pods go: then the owner goes.
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    for p in &ps {
        pods_api
            .patch(
                p.metadata.name.as_deref().unwrap(),
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"finalizers": null}})),
            )
            .await
            .unwrap();
    }
    wait_for("the owner gone after its pods", 60, || async {
        api.get_opt("fg").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(pods(&client, "default", "app=fg").await.is_empty());
    m.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_deletion_leaves_the_pods_without_an_owner() {
    let (s, client, _nodes, m) = start(&["replicaset", "garbagecollector"]).await;
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &replica_set("or", 2, false))
        .await
        .unwrap();
    let before = running(&client, "or", 2).await;
    api.delete(
        "or",
        &DeleteParams {
            propagation_policy: Some(PropagationPolicy::Orphan),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    wait_for("the owner gone", 60, || async {
        api.get_opt("or").await.unwrap().is_none().then_some(())
    })
    .await;
    let after = pods(&client, "default", "app=or").await;
    let names = |v: &[Pod]| {
        let mut n: Vec<String> = v.iter().map(|p| p.metadata.name.clone().unwrap()).collect();
        n.sort();
        n
    };
    assert_eq!(names(&after), names(&before), "the same pods live on");
    for p in &after {
        assert!(p.metadata.deletion_timestamp.is_none());
        assert!(
            p.metadata
                .owner_references
                .clone()
                .unwrap_or_default()
                .is_empty(),
            "still owned: {p:?}"
        );
    }
    m.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_deleted_in_the_foreground_takes_its_replica_set_and_pods_first() {
    let (s, client, _nodes, m) = start(&["replicaset", "deployment", "garbagecollector"]).await;
    let api: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "dep"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "dep"}},
                 "template": {"metadata": {"labels": {"app": "dep"}},
                              "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
    }))
    .unwrap();
    api.create(&PostParams::default(), &d).await.unwrap();
    running(&client, "dep", 2).await;
    api.delete(
        "dep",
        &DeleteParams {
            propagation_policy: Some(PropagationPolicy::Foreground),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    wait_for("the deployment gone", 60, || async {
        api.get_opt("dep").await.unwrap().is_none().then_some(())
    })
    .await;
    let rs: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    assert!(
        rs.list(&Default::default()).await.unwrap().items.is_empty(),
        "its ReplicaSet outlived it"
    );
    assert!(
        pods(&client, "default", "app=dep").await.is_empty(),
        "its pods outlived it"
    );
    m.stop().await;
    s.stop().await;
}
