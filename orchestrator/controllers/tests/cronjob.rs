//! CronJob controller against the API server, with the Job controller and fake nodes, on a
//! clock sixty times faster than the wall (a schedule minute passes in a real second): runs
//! fire on schedule under upstream's names, Forbid skips while a run is active, Replace
//! replaces the active run, and the history limits prune finished Jobs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use support::*;
use trellis_controllers::cronjob::Clock;

const SPEEDUP: f64 = 60.0;

fn cronjob(name: &str, spec: serde_json::Value) -> CronJob {
    let mut s = spec;
    s["jobTemplate"] = json!({"metadata": {"labels": {"cron": name}}, "spec": {"backoffLimit": 0,
        "template": {"metadata": {"labels": {"cron": name}},
                     "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}});
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": s})).unwrap()
}

/// The names of every Job ever seen in `ns`.
struct JobLedger {
    names: Arc<Mutex<BTreeSet<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl JobLedger {
    async fn start(client: kube::Client) -> JobLedger {
        let api: Api<Job> = Api::namespaced(client, "default");
        let names = Arc::new(Mutex::new(BTreeSet::new()));
        let n = names.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut tx = Some(tx);
            let stream = watcher(api, watcher::Config::default());
            futures::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(watcher::Event::Apply(j) | watcher::Event::InitApply(j)) => {
                        n.lock().unwrap().insert(j.metadata.name.clone().unwrap());
                    }
                    Ok(watcher::Event::InitDone) => {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    _ => {}
                }
            }
        });
        // Bounded: a watch that never lists fails the test instead of hanging it.
        tokio::time::timeout(std::time::Duration::from_secs(30), rx)
            .await
            .expect("the watch lists within 30 s")
            .expect("the watch task runs");
        JobLedger { names, task }
    }

    fn of(&self, cronjob: &str) -> Vec<String> {
        let prefix = format!("{cronjob}-");
        self.names
            .lock()
            .unwrap()
            .iter()
            .filter(|n| n.starts_with(&prefix))
            .cloned()
            .collect()
    }
}

impl Drop for JobLedger {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn jobs(client: &kube::Client, cronjob: &str) -> Vec<Job> {
    Api::<Job>::namespaced(client.clone(), "default")
        .list(&ListParams::default().labels(&format!("cron={cronjob}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|j| j.metadata.deletion_timestamp.is_none())
        .collect()
}

fn finished(j: &Job, t: &str) -> bool {
    j.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == t && c.status == "True"))
}

async fn start(s: &TestServer) -> (kube::Client, FakeNodes, Manager, Clock) {
    let client = s.client().await;
    let nodes = FakeNodes::start(client.clone(), 2).await;
    let clock = Clock::scaled(SPEEDUP);
    let m = Manager::start(client.clone(), |c| {
        c.controllers = ["cronjob", "job", "garbagecollector"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        c.cronjob_clock = clock;
    })
    .await;
    (client, nodes, m, clock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_job_fires_on_schedule_and_its_history_is_pruned() {
    let s = TestServer::start().await;
    let (client, nodes, m, _clock) = start(&s).await;
    nodes.succeed.lock().unwrap().push("tick-".into());
    nodes.fail.lock().unwrap().push("flop-".into());
    let ledger = JobLedger::start(client.clone()).await;
    let api: Api<CronJob> = Api::namespaced(client.clone(), "default");
    // Every second schedule minute (two real seconds).
    api.create(
        &PostParams::default(),
        &cronjob(
            "tick",
            json!({"schedule": "*/2 * * * *", "successfulJobsHistoryLimit": 2}),
        ),
    )
    .await
    .unwrap();
    api.create(
        &PostParams::default(),
        &cronjob(
            "flop",
            json!({"schedule": "* * * * *", "failedJobsHistoryLimit": 1, "timeZone": "Europe/Paris"}),
        ),
    )
    .await
    .unwrap();
    wait_for("four runs of tick", 60, || async {
        (ledger.of("tick").len() >= 4).then_some(())
    })
    .await;
    for n in ledger.of("tick") {
        let minutes: i64 = n.strip_prefix("tick-").unwrap().parse().unwrap();
        assert_eq!(minutes % 2, 0, "{n} is not on a */2 minute");
    }
    wait_for("only 2 successful tick jobs kept", 30, || async {
        let js = jobs(&client, "tick").await;
        let done = js.iter().filter(|j| finished(j, "Complete")).count();
        (done == 2 && js.len() <= 3).then_some(())
    })
    .await;
    let st = wait_for("lastSuccessfulTime", 30, || async {
        let st = api.get("tick").await.unwrap().status?;
        st.last_successful_time.is_some().then_some(st)
    })
    .await;
    let last = st.last_schedule_time.unwrap().0;
    assert_eq!(last.as_second() % 120, 0, "scheduled on an even minute");

    wait_for("three runs of flop, one failed job kept", 60, || async {
        let js = jobs(&client, "flop").await;
        let failed = js.iter().filter(|j| finished(j, "Failed")).count();
        (ledger.of("flop").len() >= 3 && failed == 1).then_some(())
    })
    .await;
    let j = jobs(&client, "flop").await.into_iter().next().unwrap();
    let at = &j.metadata.annotations.unwrap()["batch.kubernetes.io/cronjob-scheduled-timestamp"];
    assert!(
        at.ends_with("+01:00") || at.ends_with("+02:00"),
        "scheduled timestamp in Paris time: {at}"
    );
    m.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbid_skips_runs_while_one_is_active_and_replace_replaces_it() {
    let s = TestServer::start().await;
    let (client, _nodes, m, clock) = start(&s).await;
    // No succeed/fail prefix: the pods run until deleted.
    let ledger = JobLedger::start(client.clone()).await;
    let api: Api<CronJob> = Api::namespaced(client.clone(), "default");
    api.create(
        &PostParams::default(),
        &cronjob(
            "solo",
            json!({"schedule": "* * * * *", "concurrencyPolicy": "Forbid"}),
        ),
    )
    .await
    .unwrap();
    api.create(
        &PostParams::default(),
        &cronjob(
            "swap",
            json!({"schedule": "* * * * *", "concurrencyPolicy": "Replace"}),
        ),
    )
    .await
    .unwrap();
    wait_for("a first run of solo", 30, || async {
        (!ledger.of("solo").is_empty()).then_some(())
    })
    .await;
    let first = ledger.of("solo")[0].clone();
    let first_minute: i64 = first.strip_prefix("solo-").unwrap().parse().unwrap();
    // Let four more schedule minutes pass (plus a sync's margin) on the fast clock.
    let until = (first_minute + 4) * 60 + 30;
    wait_for("four more schedule minutes", 30, || async {
        (clock.now().as_second() >= until).then_some(())
    })
    .await;
    assert_eq!(
        ledger.of("solo"),
        std::slice::from_ref(&first),
        "Forbid started a second run"
    );
    let st = api.get("solo").await.unwrap().status.unwrap();
    assert_eq!(st.active.unwrap().len(), 1);

    // Replace: each new run replaces the one before.
    wait_for("three runs of swap", 30, || async {
        (ledger.of("swap").len() >= 3).then_some(())
    })
    .await;
    wait_for(
        "one live swap job, the newest, listed as active",
        30,
        || async {
            let js = jobs(&client, "swap").await;
            let st = api.get("swap").await.unwrap().status?;
            let active = st.active?;
            (js.len() == 1
                && active.len() == 1
                && active[0].name == js[0].metadata.name
                && ledger.of("swap").last() == js[0].metadata.name.as_ref())
            .then_some(())
        },
    )
    .await;

    // The run that Forbid held back starts once the active one finishes.
    let pod = pods(&client, "default", &format!("job-name={first}")).await;
    let pod_name = pod[0].metadata.name.clone().unwrap();
    Api::<Pod>::namespaced(client.clone(), "default")
        .patch_status(
            &pod_name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"phase": "Succeeded"}})),
        )
        .await
        .unwrap();
    wait_for("a second run of solo", 30, || async {
        (ledger.of("solo").len() >= 2).then_some(())
    })
    .await;
    m.stop().await;
    s.stop().await;
}
