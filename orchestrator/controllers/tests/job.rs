//! Job controller against the API server: completions with parallelism, a failing Job
//! stopping at its backoffLimit, and ttlSecondsAfterFinished.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use support::*;

fn job(name: &str, spec: serde_json::Value) -> Job {
    let mut s = spec;
    s["template"] = json!({"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}});
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": s})).unwrap()
}

fn condition(j: &Job, t: &str) -> Option<(String, Option<String>)> {
    j.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == t && c.status == "True")
        .map(|c| (c.type_.clone(), c.reason.clone()))
}

async fn start(s: &TestServer, controllers: &[&str]) -> (kube::Client, FakeNodes, Manager) {
    let client = s.client().await;
    let nodes = FakeNodes::start(client.clone(), 2).await;
    let m = Manager::start(client.clone(), |c| {
        c.controllers = controllers.iter().map(|s| s.to_string()).collect();
        c.job_backoff_base = Duration::from_millis(200);
    })
    .await;
    (client, nodes, m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_five_completions_two_at_a_time_finishes() {
    let s = TestServer::start().await;
    let (client, nodes, m) = start(&s, &["job"]).await;
    nodes.succeed.lock().unwrap().push("work-".into());
    let ledger = PodLedger::start(client.clone(), "default").await;
    let api: Api<Job> = Api::namespaced(client.clone(), "default");
    api.create(
        &PostParams::default(),
        &job("work", json!({"completions": 5, "parallelism": 2})),
    )
    .await
    .unwrap();
    let j = wait_for("the job complete", 60, || async {
        let j = api.get("work").await.unwrap();
        condition(&j, "Complete").map(|_| j)
    })
    .await;
    let st = j.status.unwrap();
    assert_eq!((st.succeeded, st.failed.unwrap_or(0)), (Some(5), 0));
    assert!(st.completion_time.is_some() && st.start_time.is_some());
    assert_eq!(
        ledger.count_once_at_least(5).await,
        5,
        "exactly five pods for five completions"
    );
    m.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_stops_at_its_backoff_limit() {
    let s = TestServer::start().await;
    let (client, nodes, m) = start(&s, &["job"]).await;
    nodes.fail.lock().unwrap().push("crash-".into());
    let ledger = PodLedger::start(client.clone(), "default").await;
    let api: Api<Job> = Api::namespaced(client.clone(), "default");
    api.create(
        &PostParams::default(),
        &job("crash", json!({"backoffLimit": 2})),
    )
    .await
    .unwrap();
    let j = wait_for("the job failed", 60, || async {
        let j = api.get("crash").await.unwrap();
        condition(&j, "Failed").map(|_| j)
    })
    .await;
    assert_eq!(
        condition(&j, "Failed").unwrap().1.as_deref(),
        Some("BackoffLimitExceeded")
    );
    assert_eq!(
        j.status.unwrap().failed,
        Some(3),
        "backoffLimit 2: the third failure fails the job"
    );
    assert_eq!(
        ledger.count_once_at_least(3).await,
        3,
        "no pod after the limit"
    );
    m.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_job_with_a_ttl_is_deleted_with_its_pods() {
    let s = TestServer::start().await;
    let (client, nodes, m) = start(&s, &["job", "garbagecollector"]).await;
    nodes.succeed.lock().unwrap().push("once-".into());
    let api: Api<Job> = Api::namespaced(client.clone(), "default");
    api.create(
        &PostParams::default(),
        &job("once", json!({"ttlSecondsAfterFinished": 1})),
    )
    .await
    .unwrap();
    wait_for("the job gone", 60, || async {
        api.get_opt("once").await.unwrap().is_none().then_some(())
    })
    .await;
    wait_for("its pods gone", 60, || async {
        pods(&client, "default", "job-name=once")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    m.stop().await;
    s.stop().await;
}
