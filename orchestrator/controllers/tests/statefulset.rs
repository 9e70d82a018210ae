//! StatefulSet controller against the API server, with fake nodes playing scheduler and
//! kubelet: ordered creation (each pod only after the one before is Ready), stable names and
//! identity across a pod deletion, scale-down from the highest ordinal, a partitioned rolling
//! update that touches only ordinals ≥ partition (highest first), and `kubectl rollout status`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use support::kubectl::{Kubectl, kubectl_current};
use support::*;

fn stateful_set(name: &str, replicas: i32, extra: serde_json::Value) -> StatefulSet {
    let mut spec = json!({
        "replicas": replicas, "serviceName": name,
        "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}},
                     "spec": {"containers": [{"name": "c", "image": "img:1"}]}},
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

/// Every pod event in `ns` in the order the watch delivered them: (pod as seen, deleted?).
struct PodLog {
    events: Arc<Mutex<Vec<(Pod, bool)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl PodLog {
    async fn start(client: kube::Client, ns: &str) -> PodLog {
        let api: Api<Pod> = Api::namespaced(client, ns);
        let events = Arc::new(Mutex::new(Vec::new()));
        let e = events.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut tx = Some(tx);
            let stream = watcher(api, watcher::Config::default());
            futures::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                        e.lock().unwrap().push((p, false))
                    }
                    Ok(watcher::Event::Delete(p)) => e.lock().unwrap().push((p, true)),
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
        PodLog { events, task }
    }

    fn events(&self) -> Vec<(Pod, bool)> {
        self.events.lock().unwrap().clone()
    }

    /// Pod names in the order they first appeared.
    fn created(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut uids = std::collections::HashSet::new();
        for (p, _) in self.events() {
            if uids.insert(p.metadata.uid.clone().unwrap()) {
                out.push(p.metadata.name.clone().unwrap());
            }
        }
        out
    }

    /// Pod names in the order their deletion began (deletionTimestamp or deletion).
    fn deleted(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut uids = std::collections::HashSet::new();
        for (p, gone) in self.events() {
            if (gone || p.metadata.deletion_timestamp.is_some())
                && uids.insert(p.metadata.uid.clone().unwrap())
            {
                out.push(p.metadata.name.clone().unwrap());
            }
        }
        out
    }
}

impl Drop for PodLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn ordinal(name: &str) -> i32 {
    name.rsplit('-').next().unwrap().parse().unwrap()
}

fn image_of(p: &Pod) -> String {
    p.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

async fn live(client: &kube::Client, app: &str) -> BTreeMap<String, Pod> {
    pods(client, "default", &format!("app={app}"))
        .await
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| (p.metadata.name.clone().unwrap(), p))
        .collect()
}

async fn start(s: &TestServer) -> (kube::Client, FakeNodes, Manager) {
    let client = s.client().await;
    let nodes = FakeNodes::start(client.clone(), 2).await;
    let m = Manager::start(client.clone(), |c| {
        c.controllers = ["statefulset".to_string()].into();
    })
    .await;
    (client, nodes, m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateful_set_of_three_is_created_in_order_and_keeps_its_names_across_a_pod_deletion() {
    let s = TestServer::start().await;
    let (client, nodes, m) = start(&s).await;
    // Pods stay unready until the test readies them, one by one.
    nodes
        .ready
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let log = PodLog::start(client.clone(), "default").await;
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &stateful_set("web", 3, json!({})))
        .await
        .unwrap();
    for i in 0..3 {
        let name = format!("web-{i}");
        wait_for(&format!("{name} running"), 30, || async {
            let ps = live(&client, "web").await;
            let running = ps
                .get(&name)
                .and_then(|p| p.status.as_ref()?.phase.clone())
                .is_some_and(|ph| ph == "Running");
            running.then_some(())
        })
        .await;
        // While web-i is not ready, nothing after it exists.
        let names: Vec<String> = live(&client, "web").await.into_keys().collect();
        assert!(
            names.iter().all(|n| ordinal(n) <= i),
            "{names:?} exist while web-{i} is not ready"
        );
        set_ready(&client, "default", &name, true).await;
    }
    assert_eq!(log.created(), ["web-0", "web-1", "web-2"]);
    let st = wait_for("readyReplicas 3", 30, || async {
        let st = api.get("web").await.unwrap().status?;
        (st.ready_replicas == Some(3)).then_some(st)
    })
    .await;
    assert_eq!(st.replicas, 3);
    assert!(st.current_revision.is_some());
    assert_eq!(st.current_revision, st.update_revision);
    let revs: Api<ControllerRevision> = Api::namespaced(client.clone(), "default");
    let revs = revs.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(revs.len(), 1, "one revision for one template");
    assert_eq!(revs[0].metadata.name, st.current_revision);

    // Identity: hostname = name, subdomain = serviceName.
    let ps = live(&client, "web").await;
    for (n, p) in &ps {
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some(n.as_str()));
        assert_eq!(spec.subdomain.as_deref(), Some("web"));
        assert_eq!(
            p.metadata.labels.as_ref().unwrap()["statefulset.kubernetes.io/pod-name"],
            *n
        );
    }

    // Deleting web-1 brings back a new pod under the same name.
    nodes.ready.store(true, std::sync::atomic::Ordering::SeqCst);
    let old_uid = ps["web-1"].metadata.uid.clone();
    Api::<Pod>::namespaced(client.clone(), "default")
        .delete("web-1", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("web-1 back, ready, as a new pod", 30, || async {
        let ps = live(&client, "web").await;
        let p = ps.get("web-1")?;
        (p.metadata.uid != old_uid && is_ready(p) && ps.len() == 3).then_some(())
    })
    .await;
    let names: Vec<String> = live(&client, "web").await.into_keys().collect();
    assert_eq!(names, ["web-0", "web-1", "web-2"]);
    m.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_down_deletes_the_highest_ordinal_first() {
    let s = TestServer::start().await;
    let (client, _nodes, m) = start(&s).await;
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &stateful_set("db", 4, json!({})))
        .await
        .unwrap();
    wait_for("4 ready", 60, || async {
        let ps = live(&client, "db").await;
        (ps.len() == 4 && ps.values().all(is_ready)).then_some(())
    })
    .await;
    let log = PodLog::start(client.clone(), "default").await;
    api.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"replicas": 1}})),
    )
    .await
    .unwrap();
    wait_for("only db-0 left", 60, || async {
        let ps = pods(&client, "default", "app=db").await;
        (ps.len() == 1 && ps[0].metadata.name.as_deref() == Some("db-0")).then_some(())
    })
    .await;
    assert_eq!(log.deleted(), ["db-3", "db-2", "db-1"]);
    // One at a time: no deletion began while a higher ordinal still existed.
    let mut present: BTreeMap<String, bool> = BTreeMap::new();
    for (p, gone) in log.events() {
        let n = p.metadata.name.clone().unwrap();
        if p.metadata.deletion_timestamp.is_some() && !gone {
            for (other, there) in &present {
                assert!(
                    !(*there && ordinal(other) > ordinal(&n)),
                    "{n} began terminating while {other} still existed"
                );
            }
        }
        present.insert(n, !gone);
    }
    let st = wait_for("status replicas 1", 30, || async {
        let st = api.get("db").await.unwrap().status?;
        (st.replicas == 1).then_some(st)
    })
    .await;
    assert_eq!(st.ready_replicas, Some(1));
    m.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_rolling_update_touches_only_ordinals_from_the_partition_up() {
    let s = TestServer::start().await;
    let (client, _nodes, m) = start(&s).await;
    let k = Kubectl::new(kubectl_current(), &s.running.kubeconfig, s.dir.path());
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    api.create(
        &PostParams::default(),
        &stateful_set(
            "kv",
            4,
            json!({"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}}}),
        ),
    )
    .await
    .unwrap();
    let run = k
        .ok(&["rollout", "status", "statefulset/kv", "--timeout=90s"])
        .await;
    assert!(run.stdout.contains("roll out complete"), "{}", run.stdout);
    let before = live(&client, "kv").await;
    assert_eq!(before.len(), 4);
    let log = PodLog::start(client.clone(), "default").await;
    api.patch("kv", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "img:2"}]}}}})))
        .await
        .unwrap();
    let run = k
        .ok(&["rollout", "status", "statefulset/kv", "--timeout=90s"])
        .await;
    assert!(
        run.stdout
            .contains("partitioned roll out complete: 2 new pods"),
        "{}",
        run.stdout
    );
    let after = live(&client, "kv").await;
    for (n, p) in &after {
        let o = ordinal(n);
        if o >= 2 {
            assert_eq!(image_of(p), "img:2", "{n} is at or above the partition");
        } else {
            assert_eq!(image_of(p), "img:1", "{n} is below the partition");
            assert_eq!(
                p.metadata.uid, before[n].metadata.uid,
                "{n} below the partition was not touched"
            );
        }
    }
    assert_eq!(log.deleted(), ["kv-3", "kv-2"], "highest ordinal first");
    let st = api.get("kv").await.unwrap().status.unwrap();
    assert_eq!(st.updated_replicas, Some(2));
    assert_ne!(st.current_revision, st.update_revision);

    // Partition 0 finishes the update, still from the top down.
    api.patch(
        "kv",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"updateStrategy": {"rollingUpdate": {"partition": 0}}}})),
    )
    .await
    .unwrap();
    k.ok(&["rollout", "status", "statefulset/kv", "--timeout=90s"])
        .await;
    wait_for(
        "every pod on img:2, current = update revision",
        60,
        || async {
            let ps = live(&client, "kv").await;
            let st = api.get("kv").await.unwrap().status?;
            (ps.len() == 4
                && ps.values().all(|p| image_of(p) == "img:2" && is_ready(p))
                && st.current_revision == st.update_revision)
                .then_some(())
        },
    )
    .await;
    assert_eq!(log.deleted(), ["kv-3", "kv-2", "kv-1", "kv-0"]);
    m.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_pods_start_together_and_on_delete_waits_for_a_deletion() {
    let s = TestServer::start().await;
    let (client, nodes, m) = start(&s).await;
    nodes
        .ready
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    api.create(
        &PostParams::default(),
        &stateful_set(
            "par",
            3,
            json!({"podManagementPolicy": "Parallel", "updateStrategy": {"type": "OnDelete"}}),
        ),
    )
    .await
    .unwrap();
    wait_for("3 pods, none ready", 30, || async {
        let ps = live(&client, "par").await;
        (ps.len() == 3 && !ps.values().any(is_ready)).then_some(())
    })
    .await;
    for i in 0..3 {
        set_ready(&client, "default", &format!("par-{i}"), true).await;
    }
    nodes.ready.store(true, std::sync::atomic::Ordering::SeqCst);
    api.patch("par", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "img:2"}]}}}})))
        .await
        .unwrap();
    wait_for("the new revision observed", 30, || async {
        let st = api.get("par").await.unwrap().status?;
        (st.update_revision != st.current_revision).then_some(())
    })
    .await;
    assert!(
        live(&client, "par")
            .await
            .values()
            .all(|p| image_of(p) == "img:1"),
        "OnDelete replaces nothing by itself"
    );
    Api::<Pod>::namespaced(client.clone(), "default")
        .delete("par-1", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("par-1 back on img:2", 30, || async {
        let ps = live(&client, "par").await;
        (image_of(ps.get("par-1")?) == "img:2").then_some(())
    })
    .await;
    let ps = live(&client, "par").await;
    assert_eq!(image_of(&ps["par-0"]), "img:1");
    assert_eq!(image_of(&ps["par-2"]), "img:1");
    m.stop().await;
    s.stop().await;
}
