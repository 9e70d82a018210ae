//! Leader election around the controllers: of two controller-managers one acts; when it dies
//! without releasing the Lease (its task aborted, as a kill -9), the standby takes over after
//! the lease duration and carries on — and no ReplicaSet is scaled twice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use support::*;

fn candidate(s: &TestServer, id: &str) -> tokio::task::JoinHandle<()> {
    let config = trellis_controllers::Config {
        kubeconfig: Some(s.running.kubeconfig.clone()),
        controllers: ["replicaset".to_string()].into(),
        leader_elect: true,
        identity: Some(id.into()),
        leader_timers: (
            Duration::from_secs(3),
            Duration::from_secs(2),
            Duration::from_millis(500),
        ),
        ..Default::default()
    };
    tokio::spawn(async move {
        let _ = trellis_controllers::run(config, std::future::pending()).await;
    })
}

async fn holder(client: &kube::Client) -> Option<String> {
    let api: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    api.get_opt("kube-controller-manager")
        .await
        .unwrap()?
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_from_a_dead_leader_without_scaling_twice() {
    let s = TestServer::start().await;
    let client = s.client().await;
    let ledger = PodLedger::start(client.clone(), "default").await;
    let _nodes = FakeNodes::start(client.clone(), 2).await;
    let a = candidate(&s, "cm-a");
    let first = wait_for("a leader", 30, || async { holder(&client).await }).await;
    assert_eq!(first, "cm-a");
    let b = candidate(&s, "cm-b");
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
    }))
    .unwrap();
    api.create(&PostParams::default(), &rs).await.unwrap();
    wait_for("4 ready pods", 60, || async {
        let p = pods(&client, "default", "app=web").await;
        (p.len() == 4 && p.iter().all(is_ready)).then_some(())
    })
    .await;
    assert_eq!(
        holder(&client).await.as_deref(),
        Some("cm-a"),
        "the standby acted"
    );

    // The leader dies without releasing the Lease.
    a.abort();
    let _ = a.await;
    let died = Instant::now();
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"replicas": 6}})),
    )
    .await
    .unwrap();
    let took = wait_for("the standby leading", 30, || async {
        (holder(&client).await.as_deref() == Some("cm-b")).then(|| died.elapsed())
    })
    .await;
    assert!(
        took >= Duration::from_secs(2),
        "the standby took over after {took:?}, before the lease expired"
    );
    wait_for("6 ready pods", 60, || async {
        let p = pods(&client, "default", "app=web").await;
        (p.len() == 6 && p.iter().all(is_ready)).then_some(())
    })
    .await;
    assert_eq!(
        ledger.count_once_at_least(6).await,
        6,
        "pods created: 4 by the first leader, 2 by the second, no more"
    );
    b.abort();
    let _ = b.await;
    s.stop().await;
}
