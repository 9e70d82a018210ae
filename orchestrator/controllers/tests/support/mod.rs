//! What the controller tests share: an in-process API server, the controller-manager on it,
//! and [`FakeNodes`] — a stand-in for the scheduler and the kubelets, small on purpose so the
//! acceptance tests can swap in the real ones.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use trellis_apiserver::{Config, Running};

pub struct TestServer {
    pub running: Running,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(dir.path(), "127.0.0.1:0".parse().unwrap());
        adjust(&mut config);
        let running = trellis_apiserver::start(config)
            .await
            .expect("the API server starts");
        TestServer { running, dir }
    }

    pub async fn client(&self) -> kube::Client {
        let text = std::fs::read_to_string(&self.running.kubeconfig).unwrap();
        let kc = kube::config::Kubeconfig::from_yaml(&text).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    pub async fn stop(self) {
        self.running.shutdown().await;
    }
}

/// The controller-manager running in this process until dropped or stopped.
pub struct Manager {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    pub metrics: Arc<trellis_daemon::Metrics>,
}

impl Manager {
    pub async fn start(
        client: kube::Client,
        adjust: impl FnOnce(&mut trellis_controllers::Config),
    ) -> Manager {
        // RUST_LOG=info shows the controllers' logs in a failing test's output.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
        let mut config = trellis_controllers::Config {
            leader_elect: false,
            workers: 2,
            ..Default::default()
        };
        adjust(&mut config);
        let metrics = Arc::new(trellis_daemon::Metrics::default());
        let health = Arc::new(trellis_daemon::Health::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let m = metrics.clone();
        let task = tokio::spawn(async move {
            trellis_controllers::run_controllers(&config, client, m, health, async move {
                let _ = rx.await;
            })
            .await
            .expect("the controllers run");
        });
        Manager {
            stop: Some(tx),
            task: Some(task),
            metrics,
        }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Plays scheduler and kubelet for tests with no real ones: binds pending pods round-robin
/// to the healthy fake nodes, marks bound pods Running and Ready (or Failed, for pods whose
/// name starts with a prefix in `fail`), finishes graceful deletions at once, and renews
/// each healthy node's Lease. A node marked down gets nothing of that: its lease ages, its
/// pods stay as they are.
pub struct FakeNodes {
    pub nodes: Arc<Mutex<Vec<String>>>,
    client: kube::Client,
    down: Arc<Mutex<BTreeSet<String>>>,
    pub fail: Arc<Mutex<Vec<String>>>,
    /// Pods whose name starts with one of these run to completion (Succeeded).
    pub succeed: Arc<Mutex<Vec<String>>>,
    /// Whether new pods become Ready (off: they stay Running, not ready).
    pub ready: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeNodes {
    pub async fn start(client: kube::Client, n: usize) -> FakeNodes {
        let names: Vec<String> = (0..n).map(|i| format!("fake-{i}")).collect();
        for name in &names {
            Self::register(&client, name).await;
        }
        let nodes = Arc::new(Mutex::new(names));
        let down = Arc::new(Mutex::new(BTreeSet::new()));
        let fail = Arc::new(Mutex::new(Vec::new()));
        let succeed = Arc::new(Mutex::new(Vec::new()));
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let task = tokio::spawn(Self::run(
            client.clone(),
            nodes.clone(),
            down.clone(),
            fail.clone(),
            succeed.clone(),
            ready.clone(),
        ));
        FakeNodes {
            nodes,
            client,
            down,
            fail,
            succeed,
            ready,
            task,
        }
    }

    /// A node joins (registered, Ready, its lease renewed from now on).
    pub async fn add_node(&self, name: &str) {
        Self::register(&self.client, name).await;
        self.nodes.lock().unwrap().push(name.to_string());
    }

    async fn register(client: &kube::Client, name: &str) {
        let node_api: Api<Node> = Api::all(client.clone());
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "kubelet is posting ready status",
                "lastHeartbeatTime": jiff::Timestamp::now().to_string(),
                "lastTransitionTime": jiff::Timestamp::now().to_string()}]},
        }))
        .unwrap();
        node_api
            .create(&PostParams::default(), &node)
            .await
            .unwrap();
        // The status as a kubelet posts it (create drops status).
        let status = json!({"status": node.status});
        node_api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }

    /// The node's "kubelet" stops: no lease renewals, no pod updates there.
    pub fn take_down(&self, node: &str) {
        self.down.lock().unwrap().insert(node.to_string());
    }

    async fn run(
        client: kube::Client,
        all_nodes: Arc<Mutex<Vec<String>>>,
        down: Arc<Mutex<BTreeSet<String>>>,
        fail: Arc<Mutex<Vec<String>>>,
        succeed: Arc<Mutex<Vec<String>>>,
        ready: Arc<std::sync::atomic::AtomicBool>,
    ) {
        let pods: Api<Pod> = Api::all(client.clone());
        let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
        let mut next = 0usize;
        let mut last_lease = std::time::Instant::now() - Duration::from_secs(60);
        let mut ip = 0u32;
        loop {
            let nodes = all_nodes.lock().unwrap().clone();
            let down_now = down.lock().unwrap().clone();
            if last_lease.elapsed() >= Duration::from_secs(1) {
                last_lease = std::time::Instant::now();
                for n in nodes.iter().filter(|n| !down_now.contains(*n)) {
                    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": n, "namespace": "kube-node-lease"},
                        "spec": {"holderIdentity": n, "leaseDurationSeconds": 40,
                                 "renewTime": MicroTime(jiff::Timestamp::now())}});
                    match leases.get_opt(n).await {
                        Ok(Some(_)) => {
                            let patch =
                                json!({"spec": {"renewTime": MicroTime(jiff::Timestamp::now())}});
                            let _ = leases
                                .patch(n, &PatchParams::default(), &Patch::Merge(&patch))
                                .await;
                        }
                        Ok(None) => {
                            let l: Lease = serde_json::from_value(lease).unwrap();
                            let _ = leases.create(&PostParams::default(), &l).await;
                        }
                        Err(_) => {}
                    }
                }
            }
            let healthy: Vec<&String> = nodes.iter().filter(|n| !down_now.contains(*n)).collect();
            let Ok(list) = pods.list(&ListParams::default()).await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            for p in list.items {
                let ns = p.metadata.namespace.clone().unwrap_or_default();
                let name = p.metadata.name.clone().unwrap_or_default();
                let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                let node = p
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .filter(|n| !n.is_empty());
                if node.as_ref().is_some_and(|n| down_now.contains(n)) {
                    continue;
                }
                if p.metadata.deletion_timestamp.is_some() {
                    let _ = api
                        .delete(
                            &name,
                            &DeleteParams {
                                grace_period_seconds: Some(0),
                                ..Default::default()
                            },
                        )
                        .await;
                    continue;
                }
                let Some(node) = node else {
                    // A pod pinned to a node by a required affinity on metadata.name (a
                    // DaemonSet's) goes there; others round-robin.
                    let target = match pinned_node(&p) {
                        Some(n) if healthy.iter().any(|h| **h == n) => n,
                        Some(_) => continue,
                        None if healthy.is_empty() => continue,
                        None => {
                            next += 1;
                            healthy[(next - 1) % healthy.len()].clone()
                        }
                    };
                    let binding = json!({"apiVersion": "v1", "kind": "Binding",
                        "metadata": {"name": name}, "target": {"apiVersion": "v1", "kind": "Node", "name": target}});
                    let _ = api
                        .create_subresource::<serde_json::Value, serde_json::Value>(
                            "binding",
                            &name,
                            &PostParams::default(),
                            &binding,
                        )
                        .await;
                    continue;
                };
                let phase = p
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_default();
                if phase == "Pending" {
                    let fails = fail
                        .lock()
                        .unwrap()
                        .iter()
                        .any(|f| name.starts_with(f.as_str()));
                    ip += 1;
                    let now = jiff::Timestamp::now().to_string();
                    let node_idx = nodes.iter().position(|n| *n == node).unwrap_or(0);
                    let pod_ip = format!("10.244.{}.{}", node_idx, ip % 250 + 2);
                    let succeeds = succeed
                        .lock()
                        .unwrap()
                        .iter()
                        .any(|f| name.starts_with(f.as_str()));
                    let status = if fails {
                        json!({"phase": "Failed", "podIP": pod_ip})
                    } else if succeeds {
                        json!({"phase": "Succeeded", "podIP": pod_ip})
                    } else {
                        let is_ready = ready.load(std::sync::atomic::Ordering::SeqCst);
                        json!({"phase": "Running", "podIP": pod_ip, "podIPs": [{"ip": pod_ip}], "startTime": now,
                               "conditions": [
                                   {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                                   {"type": "Ready", "status": if is_ready {"True"} else {"False"}, "lastTransitionTime": now}]})
                    };
                    let _ = api
                        .patch_status(
                            &name,
                            &PatchParams::default(),
                            &Patch::Merge(&json!({"status": status})),
                        )
                        .await;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn pinned_node(p: &Pod) -> Option<String> {
    let terms = &p
        .spec
        .as_ref()?
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms.iter().find_map(|t| {
        t.match_fields
            .iter()
            .flatten()
            .find(|f| f.key == "metadata.name" && f.operator == "In")
            .and_then(|f| f.values.as_ref()?.first().cloned())
    })
}

impl Drop for FakeNodes {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sets a pod's Ready condition (as a kubelet's readiness probe would).
pub async fn set_ready(client: &kube::Client, ns: &str, name: &str, ready: bool) {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let now = jiff::Timestamp::now().to_string();
    let status = json!({"status": {"conditions": [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
        {"type": "Ready", "status": if ready {"True"} else {"False"}, "lastTransitionTime": now}]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

/// Every pod ever created, by uid, as a watch saw them (to count creations over a test).
pub struct PodLedger {
    pub created: Arc<Mutex<HashSet<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl PodLedger {
    pub async fn start(client: kube::Client, ns: &str) -> PodLedger {
        let api: Api<Pod> = Api::namespaced(client, ns);
        let created = Arc::new(Mutex::new(HashSet::new()));
        let c = created.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut tx = Some(tx);
            let stream = watcher(api, watcher::Config::default());
            futures::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                        c.lock()
                            .unwrap()
                            .insert(p.metadata.uid.clone().unwrap_or_default());
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
        let _ = rx.await;
        PodLedger { created, task }
    }

    pub fn count(&self) -> usize {
        self.created.lock().unwrap().len()
    }

    /// The count once the ledger's watch has caught up with at least `n` pods (bounded at
    /// 10 s): the object the test read may be ahead of the ledger's own watch, so a bare
    /// `count()` right after it could miss the last pod.
    pub async fn count_once_at_least(&self, n: usize) -> usize {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.count() < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.count()
    }
}

impl Drop for PodLedger {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `f` every 100 ms until it returns Some, for at most `secs` seconds.
pub async fn wait_for<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Pods in `ns` matching `selector`.
pub async fn pods(client: &kube::Client, ns: &str, selector: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .items
}

pub fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// kubectl runs, shared with the API server's tests.
#[path = "../../../apiserver/tests/support/kubectl.rs"]
pub mod kubectl;
