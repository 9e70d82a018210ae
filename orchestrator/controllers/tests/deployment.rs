//! Deployment controller against the API server, with fake nodes playing scheduler and
//! kubelet: rolling updates within maxSurge/maxUnavailable at every sampled moment,
//! Recreate, `kubectl rollout undo|status|pause|resume` with both kubectl versions, and the
//! progress deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::kubectl::{Kubectl, kubectl_1_20, kubectl_current};
use support::*;

fn deployment(name: &str, replicas: i32, strategy: serde_json::Value, image: &str) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "strategy": strategy,
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "c", "image": image}]}}},
    }))
    .unwrap()
}

fn image_of(p: &k8s_openapi::api::core::v1::Pod) -> String {
    p.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

/// Waits until the Deployment's rollout is complete as `kubectl rollout status` judges it.
async fn wait_complete(api: &Api<Deployment>, name: &str, secs: u64) -> Deployment {
    wait_for("the rollout to complete", secs, || async {
        let d = api.get(name).await.unwrap();
        let st = d.status.clone().unwrap_or_default();
        let want = d.spec.as_ref().unwrap().replicas.unwrap_or(1);
        let progressed = st.conditions.iter().flatten().any(|c| {
            c.type_ == "Progressing" && c.reason.as_deref() == Some("NewReplicaSetAvailable")
        });
        (st.observed_generation >= d.metadata.generation
            && st.updated_replicas == Some(want)
            && st.replicas == Some(want)
            && st.available_replicas == Some(want)
            && progressed)
            .then_some(d)
    })
    .await
}

async fn replica_sets(client: &kube::Client, app: &str) -> Vec<ReplicaSet> {
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    api.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
}

/// Samples the pods every 50 ms until stopped; returns what broke the bounds.
struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Samples>,
}

/// What a sampler saw.
struct Samples {
    taken: usize,
    /// Samples with live pods of more than one image: the sampling saw the rollout itself.
    mixed: usize,
    bad: Vec<String>,
}

impl Sampler {
    fn start(
        client: kube::Client,
        app: &str,
        check: impl Fn(&[k8s_openapi::api::core::v1::Pod]) -> Option<String> + Send + 'static,
    ) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let sel = format!("app={app}");
        let task = tokio::spawn(async move {
            let (mut taken, mut mixed, mut bad) = (0, 0, Vec::new());
            while !s.load(Ordering::SeqCst) {
                let live: Vec<_> = pods(&client, "default", &sel)
                    .await
                    .into_iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .collect();
                taken += 1;
                let images: std::collections::BTreeSet<String> =
                    live.iter().map(image_of).collect();
                if images.len() > 1 {
                    mixed += 1;
                }
                if let Some(v) = check(&live) {
                    bad.push(v);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Samples { taken, mixed, bad }
        });
        Sampler { stop, task }
    }

    async fn finish(self) -> Samples {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_keeps_within_max_surge_and_max_unavailable_at_every_sample() {
    let s = TestServer::start().await;
    let client = s.client().await;
    let _nodes = FakeNodes::start(client.clone(), 3).await;
    let m = Manager::start(client.clone(), |c| {
        c.controllers = ["replicaset".to_string(), "deployment".to_string()].into();
    })
    .await;
    let api: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let strategy =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 2, "maxUnavailable": 1}});
    api.create(
        &PostParams::default(),
        &deployment("web", 6, strategy, "nginx:1"),
    )
    .await
    .unwrap();
    let d = wait_complete(&api, "web", 60).await;
    assert_eq!(
        d.metadata
            .annotations
            .as_ref()
            .unwrap()
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("1")
    );
    let first = replica_sets(&client, "web").await;
    assert_eq!(first.len(), 1);
    let hash = first[0].metadata.labels.as_ref().unwrap()["pod-template-hash"].clone();
    assert_eq!(
        first[0].metadata.name.as_deref(),
        Some(format!("web-{hash}").as_str())
    );

    // 6 desired, surge 2, unavailable 1: never more than 8 pods, never fewer than 5 ready.
    let sampler = Sampler::start(client.clone(), "web", |live| {
        let ready = live.iter().filter(|p| is_ready(p)).count();
        (live.len() > 8 || ready < 5).then(|| format!("{} pods, {ready} ready", live.len()))
    });
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx:2"}]}}}})),
    )
    .await
    .unwrap();
    let d = wait_complete(&api, "web", 90).await;
    let Samples { taken, mixed, bad } = sampler.finish().await;
    assert!(
        bad.is_empty(),
        "bounds broken at {} of {taken} samples: {bad:?}",
        bad.len()
    );
    // Old and new pods live side by side from the first new pod to the last old one: several
    // readiness rounds of the fake nodes (≥ 50 ms each), so 50 ms samples cannot all miss it.
    assert!(mixed >= 1, "no sample during the rollout ({taken} samples)");
    let now = live(&client, "web").await;
    assert_eq!(now.len(), 6);
    assert!(now.iter().all(|p| image_of(p) == "nginx:2"));
    assert_eq!(
        d.metadata
            .annotations
            .as_ref()
            .unwrap()
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("2")
    );
    let sets = replica_sets(&client, "web").await;
    assert_eq!(sets.len(), 2, "the old ReplicaSet stays as history");
    let old = sets
        .iter()
        .find(|r| r.metadata.name == first[0].metadata.name)
        .unwrap();
    assert_eq!(old.spec.as_ref().unwrap().replicas, Some(0));
    m.stop().await;
    s.stop().await;
}

/// The spec of the only ReplicaSet of `app` whose name is (or is not) `name`.
async fn rs_spec(client: &kube::Client, app: &str, name: Option<&str>, same: bool) -> Option<i32> {
    replica_sets(client, app)
        .await
        .into_iter()
        .find(|r| (r.metadata.name.as_deref() == name) == same)
        .and_then(|r| r.spec.and_then(|s| s.replicas))
}

/// maxSurge bounds live pods, not only the ReplicaSets' sizes: an old pod that a scale-down
/// asked to go but the ReplicaSet controller has not yet deleted still counts, so the new
/// ReplicaSet waits for it. (A rollout once showed desired + maxSurge + 1 live pods this way.)
/// A failed pod of the old ReplicaSet does not count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_pod_not_yet_deleted_still_counts_against_the_surge() {
    let s = TestServer::start().await;
    let client = s.client().await;
    // The Deployment controller alone: the test plays a slow ReplicaSet controller.
    let m = Manager::start(client.clone(), |c| {
        c.controllers = ["deployment".to_string()].into();
    })
    .await;
    let api: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let strategy =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}});
    api.create(
        &PostParams::default(),
        &deployment("web", 2, strategy, "nginx:1"),
    )
    .await
    .unwrap();
    let old = wait_for("the first ReplicaSet", 30, || async {
        replica_sets(&client, "web").await.into_iter().next()
    })
    .await;
    let old_name = old.metadata.name.clone().unwrap();
    let hash = old.metadata.labels.as_ref().unwrap()["pod-template-hash"].clone();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    // The old ReplicaSet's pods, made as its controller would make them.
    let old_pod = |name: &str| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name,
                         "labels": {"app": "web", "pod-template-hash": hash},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                             "name": old_name, "uid": old.metadata.uid, "controller": true}]},
            "spec": {"containers": [{"name": "c", "image": "nginx:1"}]},
        }))
        .unwrap()
    };
    for i in 0..2 {
        let name = format!("web-old-{i}");
        pods.create(&PostParams::default(), &old_pod(&name))
            .await
            .unwrap();
        set_ready(&client, "default", &name, true).await;
    }
    // And a failed one left for the garbage collector (an evicted pod): it holds no room.
    pods.create(&PostParams::default(), &old_pod("web-old-failed"))
        .await
        .unwrap();
    pods.patch_status(
        "web-old-failed",
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": {"phase": "Failed", "reason": "Evicted"}})),
    )
    .await
    .unwrap();

    // Roll: the new ReplicaSet starts at 1 (the surge) and the old one goes down to 1 (the
    // unavailability), but its second pod is still there.
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx:2"}]}}}})),
    )
    .await
    .unwrap();
    wait_for("the old ReplicaSet scaled down to 1", 30, || async {
        (rs_spec(&client, "web", Some(&old_name), true).await == Some(1)).then_some(())
    })
    .await;
    // Three pods may live (2 + maxSurge 1): two old and one new. Growing the new ReplicaSet now
    // would make four. The controller syncs on its own scale-down within milliseconds; give it
    // two seconds, sampled.
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < until {
        let new = rs_spec(&client, "web", Some(&old_name), false).await;
        assert_eq!(
            new,
            Some(1),
            "the new ReplicaSet grew while the old pod still ran"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The old pod goes: now the new ReplicaSet takes its place.
    pods.delete("web-old-1", &Default::default()).await.unwrap();
    wait_for("the new ReplicaSet grown to 2", 30, || async {
        (rs_spec(&client, "web", Some(&old_name), false).await == Some(2)).then_some(())
    })
    .await;
    m.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_removes_every_old_pod_before_a_new_one_exists() {
    let s = TestServer::start().await;
    let client = s.client().await;
    let _nodes = FakeNodes::start(client.clone(), 2).await;
    let m = Manager::start(client.clone(), |c| {
        c.controllers = ["replicaset".to_string(), "deployment".to_string()].into();
    })
    .await;
    let api: Api<Deployment> = Api::namespaced(client.clone(), "default");
    api.create(
        &PostParams::default(),
        &deployment("db", 3, json!({"type": "Recreate"}), "pg:1"),
    )
    .await
    .unwrap();
    wait_complete(&api, "db", 60).await;
    let sampler = Sampler::start(client.clone(), "db", |live| {
        let old = live.iter().filter(|p| image_of(p) == "pg:1").count();
        let new = live.iter().filter(|p| image_of(p) == "pg:2").count();
        (old > 0 && new > 0).then(|| format!("{old} old and {new} new pods at once"))
    });
    api.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "pg:2"}]}}}})),
    )
    .await
    .unwrap();
    wait_complete(&api, "db", 90).await;
    let Samples { taken, bad, .. } = sampler.finish().await;
    assert!(bad.is_empty(), "{bad:?} ({taken} samples)");
    assert!(
        live(&client, "db")
            .await
            .iter()
            .all(|p| image_of(p) == "pg:2")
    );
    m.stop().await;
    s.stop().await;
}

async fn undo_status_pause_resume(kubectl: std::path::PathBuf, minor: Option<&str>) {
    let s = TestServer::start().await;
    let client = s.client().await;
    let _nodes = FakeNodes::start(client.clone(), 3).await;
    let m = Manager::start(client.clone(), |c| {
        c.controllers = ["replicaset".to_string(), "deployment".to_string()].into();
    })
    .await;
    let k = Kubectl::new(kubectl, &s.running.kubeconfig, s.dir.path());
    if let Some(minor) = minor {
        k.assert_version(minor).await;
    }
    let api: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let strategy =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}});
    api.create(
        &PostParams::default(),
        &deployment("app", 3, strategy, "img:1"),
    )
    .await
    .unwrap();
    let run = k
        .ok(&["rollout", "status", "deployment/app", "--timeout=90s"])
        .await;
    assert!(
        run.stdout.contains("successfully rolled out"),
        "{}",
        run.stdout
    );
    k.ok(&["set", "image", "deployment/app", "c=img:2"]).await;
    k.ok(&["rollout", "status", "deployment/app", "--timeout=90s"])
        .await;
    assert!(
        live(&client, "app")
            .await
            .iter()
            .all(|p| image_of(p) == "img:2")
    );
    let history = k.ok(&["rollout", "history", "deployment/app"]).await;
    assert!(
        history.stdout.contains('1') && history.stdout.contains('2'),
        "{}",
        history.stdout
    );

    // Undo: kubectl copies revision 1's template back; it becomes revision 3.
    k.ok(&["rollout", "undo", "deployment/app"]).await;
    k.ok(&["rollout", "status", "deployment/app", "--timeout=90s"])
        .await;
    let d = wait_complete(&api, "app", 60).await;
    assert_eq!(image_of_template(&d), "img:1");
    assert!(
        live(&client, "app")
            .await
            .iter()
            .all(|p| image_of(p) == "img:1")
    );
    let sets = replica_sets(&client, "app").await;
    assert_eq!(sets.len(), 2, "undo reuses the old ReplicaSet");
    let back = sets
        .iter()
        .find(|r| {
            r.spec
                .as_ref()
                .unwrap()
                .template
                .as_ref()
                .map(|t| t.spec.as_ref().unwrap().containers[0].image.clone())
                == Some(Some("img:1".into()))
        })
        .unwrap();
    assert_eq!(
        back.metadata.annotations.as_ref().unwrap()["deployment.kubernetes.io/revision"],
        "3"
    );
    assert_eq!(back.spec.as_ref().unwrap().replicas, Some(3));

    // Pause: a template change makes no new ReplicaSet; resume rolls it out.
    k.ok(&["rollout", "pause", "deployment/app"]).await;
    k.ok(&["set", "image", "deployment/app", "c=img:4"]).await;
    wait_for("the paused condition", 30, || async {
        let d = api.get("app").await.unwrap();
        let st = d.status.unwrap_or_default();
        (st.observed_generation == d.metadata.generation
            && st
                .conditions
                .iter()
                .flatten()
                .any(|c| c.reason.as_deref() == Some("DeploymentPaused")))
        .then_some(())
    })
    .await;
    assert_eq!(
        replica_sets(&client, "app").await.len(),
        2,
        "a paused Deployment rolled out"
    );
    k.ok(&["rollout", "resume", "deployment/app"]).await;
    k.ok(&["rollout", "status", "deployment/app", "--timeout=90s"])
        .await;
    assert!(
        live(&client, "app")
            .await
            .iter()
            .all(|p| image_of(p) == "img:4")
    );
    m.stop().await;
    s.stop().await;
}

/// Pods not being deleted (terminating ones may still run the old template).
async fn live(client: &kube::Client, app: &str) -> Vec<k8s_openapi::api::core::v1::Pod> {
    pods(client, "default", &format!("app={app}"))
        .await
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

fn image_of_template(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_undo_status_pause_and_resume_with_the_current_kubectl() {
    undo_status_pause_resume(kubectl_current(), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_undo_status_pause_and_resume_with_kubectl_1_20() {
    undo_status_pause_resume(kubectl_1_20(), Some("20")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_that_stalls_reports_progress_deadline_exceeded() {
    let s = TestServer::start().await;
    let client = s.client().await;
    let nodes = FakeNodes::start(client.clone(), 2).await;
    nodes.ready.store(false, Ordering::SeqCst);
    let m = Manager::start(client.clone(), |c| {
        c.controllers = ["replicaset".to_string(), "deployment".to_string()].into();
    })
    .await;
    let api: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let mut d = deployment("slow", 2, json!({"type": "RollingUpdate"}), "img:1");
    d.spec.as_mut().unwrap().progress_deadline_seconds = Some(3);
    api.create(&PostParams::default(), &d).await.unwrap();
    let k = Kubectl::new(kubectl_current(), &s.running.kubeconfig, s.dir.path());
    let run = k
        .run(&["rollout", "status", "deployment/slow", "--timeout=60s"])
        .await;
    assert!(
        !run.ok,
        "rollout status succeeded on a stalled rollout: {}",
        run.stdout
    );
    assert!(
        run.stderr.contains("exceeded its progress deadline"),
        "{}",
        run.stderr
    );
    let st = api.get("slow").await.unwrap().status.unwrap();
    let p = st
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Progressing")
        .unwrap();
    assert_eq!(
        (p.status.as_str(), p.reason.as_deref()),
        ("False", Some("ProgressDeadlineExceeded"))
    );
    m.stop().await;
    s.stop().await;
}
