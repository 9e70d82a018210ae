//! `trellis scheduler`, the real binary against a real API server (in-process, embedded store)
//! with fake Node objects (no kubelets, kwok-style): pods spread over the nodes and stay off
//! tainted ones; a pod no node fits gets `PodScheduled=False` with kube-scheduler's per-node
//! message and is scheduled once a fitting node is added; with two schedulers electing a
//! leader, killing the leader with SIGKILL hands over to the standby within the lease, and no
//! pod is ever bound twice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TRELLIS: &str = env!("CARGO_BIN_EXE_trellis");
/// Generous bounds: a loaded 2-core machine.
const BOUND: Duration = Duration::from_secs(60);

struct Cluster {
    _dir: tempfile::TempDir,
    server: Option<trellis_apiserver::Running>,
    client: kube::Client,
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let server = trellis_apiserver::start(trellis_apiserver::Config::new(
            dir.path().join("server"),
            "127.0.0.1:0".parse().unwrap(),
        ))
        .await
        .expect("the API server starts");
        let client = trellis_api::cluster::client(Some(&server.kubeconfig))
            .await
            .unwrap();
        Cluster {
            _dir: dir,
            server: Some(server),
            client,
        }
    }

    fn kubeconfig(&self) -> &Path {
        &self.server.as_ref().unwrap().kubeconfig
    }

    /// A registered Node with no kubelet: allocatable as given, Ready.
    async fn node(&self, name: &str, cpu: &str, pods: u32, extra: Value) {
        let mut n = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {},
        });
        merge(&mut n, extra);
        let nodes: Api<Node> = Api::all(self.client.clone());
        nodes
            .create(&PostParams::default(), &serde_json::from_value(n).unwrap())
            .await
            .unwrap();
        let alloc = json!({"cpu": cpu, "memory": "64Gi", "pods": pods.to_string()});
        let status = json!({"status": {"capacity": alloc, "allocatable": alloc,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
        nodes
            .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .unwrap();
    }

    async fn pod(&self, name: &str, cpu: &str, extra: Value) {
        let mut p = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": "bench"}},
            "spec": {"containers": [{"name": "c", "image": "pause",
                "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}]},
        });
        merge(&mut p, extra);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), "default");
        pods.create(&PostParams::default(), &serde_json::from_value(p).unwrap())
            .await
            .unwrap();
    }

    async fn pods(&self) -> Vec<Pod> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), "default");
        pods.list(&ListParams::default()).await.unwrap().items
    }

    /// Node of each bound pod, by pod name.
    async fn placements(&self) -> BTreeMap<String, String> {
        self.pods()
            .await
            .into_iter()
            .filter_map(|p| Some((p.metadata.name?, p.spec?.node_name?)))
            .collect()
    }

    async fn wait_bound(&self, n: usize) -> BTreeMap<String, String> {
        let deadline = Instant::now() + BOUND;
        loop {
            let placed = self.placements().await;
            if placed.len() >= n {
                return placed;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} pods bound in {BOUND:?}: {placed:?}",
                placed.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn events(&self, reason: &str) -> Vec<Event> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), "default");
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .collect()
    }
}

fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

/// A `trellis scheduler` process, killed (SIGKILL) on drop.
struct Scheduler {
    child: tokio::process::Child,
    metrics: SocketAddr,
}

/// A free port on a loopback address of this process's own (127.x.y.1, from the pid and a
/// counter): between probing the port and the scheduler binding it, no other test's connection
/// can take it as its source port, as one to 127.0.0.1 could.
fn free_port() -> SocketAddr {
    static NEXT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
    let pid = std::process::id();
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ip = std::net::Ipv4Addr::new(127, 64 + (pid % 128) as u8, n, 1);
    let l = std::net::TcpListener::bind((ip, 0)).unwrap();
    l.local_addr().unwrap()
}

impl Scheduler {
    fn spawn(kubeconfig: &Path, args: &[&str]) -> Scheduler {
        let metrics = free_port();
        let child = tokio::process::Command::new(TRELLIS)
            .arg("scheduler")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--listen")
            .arg(metrics.to_string())
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Scheduler { child, metrics }
    }

    /// A metric's value (the sum of its series), None when unreachable.
    async fn metric(&self, name: &str) -> Option<f64> {
        let text = scrape(self.metrics).await?;
        let mut found = None;
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let base = series.split('{').next().unwrap_or(series);
            if base == name {
                *found.get_or_insert(0.0) += value.parse::<f64>().ok()?;
            }
        }
        found
    }

    fn kill(&mut self) {
        self.child.start_kill().unwrap();
    }
}

async fn scrape(addr: SocketAddr) -> Option<String> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        Some(out)
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .ok()
        .flatten()
}

const CONTROL_PLANE_TAINT: &str = "node-role.kubernetes.io/control-plane";

fn tainted() -> Value {
    json!({"spec": {"taints": [{"key": CONTROL_PLANE_TAINT, "effect": "NoSchedule"}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_spread_over_the_nodes_and_stay_off_tainted_ones() {
    let c = Cluster::start().await;
    c.node("cp", "8", 110, tainted()).await;
    c.node("w1", "8", 110, json!({})).await;
    c.node("w2", "8", 110, json!({})).await;
    let _s = Scheduler::spawn(c.kubeconfig(), &["--leader-elect=false"]);
    for i in 0..6 {
        c.pod(&format!("web-{i}"), "500m", json!({})).await;
    }
    // A pod tolerating the taint and selecting the control-plane node goes there.
    c.pod(
        "admin",
        "100m",
        json!({"spec": {"nodeSelector": {"kubernetes.io/hostname": "cp"},
            "tolerations": [{"key": CONTROL_PLANE_TAINT, "operator": "Exists", "effect": "NoSchedule"}]}}),
    )
    .await;
    // A pod for another scheduler is left alone.
    c.pod(
        "other",
        "100m",
        json!({"spec": {"schedulerName": "someone-else"}}),
    )
    .await;

    let placed = c.wait_bound(7).await;
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for (pod, node) in &placed {
        if pod.starts_with("web-") {
            *per_node.entry(node).or_default() += 1;
        }
    }
    assert_eq!(
        per_node.get("cp"),
        None,
        "no untolerating pod on the tainted node: {placed:?}"
    );
    assert_eq!(
        (per_node.get("w1"), per_node.get("w2")),
        (Some(&3), Some(&3)),
        "least allocated spreads evenly: {placed:?}"
    );
    assert_eq!(placed.get("admin").map(String::as_str), Some("cp"));
    assert!(
        !placed.contains_key("other"),
        "another scheduler's pod stays unbound"
    );
    // PodScheduled=True on each (the API server writes it right after nodeName: wait for it),
    // and a Scheduled event worded as upstream's.
    let deadline = Instant::now() + BOUND;
    loop {
        let scheduled = c
            .pods()
            .await
            .iter()
            .filter(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_some()))
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c.type_ == "PodScheduled" && c.status == "True")
                    })
            })
            .count();
        if scheduled == 7 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{scheduled} of 7 pods have PodScheduled=True"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + BOUND;
    loop {
        let ev = c.events("Scheduled").await;
        if ev.len() >= 7 {
            let admin = ev
                .iter()
                .find(|e| e.involved_object.name.as_deref() == Some("admin"))
                .unwrap();
            assert_eq!(
                admin.message.as_deref(),
                Some("Successfully assigned default/admin to cp")
            );
            assert_eq!(
                admin.source.as_ref().unwrap().component.as_deref(),
                Some("default-scheduler")
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} Scheduled events",
            ev.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unschedulable_pod_says_why_per_node_and_is_scheduled_when_a_node_fits() {
    let c = Cluster::start().await;
    c.node("cp", "8", 110, tainted()).await;
    c.node("w1", "1", 110, json!({})).await;
    c.node("w2", "1", 110, json!({})).await;
    let s = Scheduler::spawn(c.kubeconfig(), &["--leader-elect=false"]);
    c.pod("big", "2", json!({})).await;

    let want = "0/3 nodes are available: 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, \
                2 Insufficient cpu. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.";
    let deadline = Instant::now() + BOUND;
    loop {
        let pod = c
            .pods()
            .await
            .into_iter()
            .find(|p| p.metadata.name.as_deref() == Some("big"))
            .unwrap();
        assert!(
            pod.spec.as_ref().unwrap().node_name.is_none(),
            "no node fits yet"
        );
        let cond = pod
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "PodScheduled");
        if let Some(cond) = cond {
            assert_eq!(
                (cond.status.as_str(), cond.reason.as_deref()),
                ("False", Some("Unschedulable"))
            );
            assert_eq!(cond.message.as_deref(), Some(want));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no PodScheduled condition in {BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let failed = c.events("FailedScheduling").await;
    assert!(
        failed
            .iter()
            .any(|e| e.message.as_deref() == Some(want) && e.type_.as_deref() == Some("Warning")),
        "{failed:?}"
    );
    assert!(
        s.metric("trellis_scheduler_unschedulable_attempts_total")
            .await
            .unwrap_or(0.0)
            >= 1.0
    );

    // Nothing changes in the cluster: the pod stays pending (held until the scheduler had a
    // chance to retry on its own back-off, which it must not, without a change).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        c.placements().await.is_empty(),
        "bound without a fitting node"
    );

    // A node that fits: the pod is tried again on the node event and lands there.
    let added = Instant::now();
    c.node("big-node", "4", 110, json!({})).await;
    let placed = c.wait_bound(1).await;
    assert_eq!(placed.get("big").map(String::as_str), Some("big-node"));
    assert!(
        added.elapsed() < Duration::from_secs(15),
        "retried on the node event, took {:?}",
        added.elapsed()
    );
}

/// The leader's identity in the Lease, if any.
async fn holder(c: &Cluster) -> Option<String> {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(c.client.clone(), "kube-system");
    leases
        .get_opt("kube-scheduler")
        .await
        .ok()
        .flatten()?
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_hands_over_to_the_standby_and_no_pod_is_bound_twice() {
    let mut c = Cluster::start().await;
    for i in 0..4 {
        c.node(&format!("n{i}"), "64", 500, json!({})).await;
    }
    let mut scheds = [
        Scheduler::spawn(c.kubeconfig(), &["--leader-elect-identity", "sched-a"]),
        Scheduler::spawn(c.kubeconfig(), &["--leader-elect-identity", "sched-b"]),
    ];
    // Every nodeName change any pod goes through, from a watch that starts now.
    let transitions = tokio::spawn({
        let client = c.client.clone();
        async move {
            use futures::StreamExt;
            let mut seen: HashMap<String, Vec<String>> = HashMap::new();
            let stream = kube::runtime::watcher(
                Api::<Pod>::namespaced(client, "default"),
                Default::default(),
            );
            futures::pin_mut!(stream);
            let end = tokio::time::sleep(Duration::from_secs(150));
            tokio::pin!(end);
            loop {
                tokio::select! {
                    _ = &mut end => break,
                    ev = stream.next() => match ev {
                        Some(Ok(kube::runtime::watcher::Event::Apply(p) | kube::runtime::watcher::Event::InitApply(p))) => {
                            if let (Some(n), Some(node)) = (p.metadata.name.clone(), p.spec.and_then(|s| s.node_name)) {
                                let v = seen.entry(n).or_default();
                                if v.last() != Some(&node) { v.push(node); }
                                if seen.len() >= 200 && seen.values().all(|v| !v.is_empty()) { break; }
                            }
                        }
                        Some(_) => {}
                        None => break,
                    }
                }
            }
            seen
        }
    });

    let deadline = Instant::now() + BOUND;
    let leader = loop {
        if let Some(h) = holder(&c).await {
            break if h == "sched-a" { 0 } else { 1 };
        }
        assert!(Instant::now() < deadline, "no leader in {BOUND:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let standby = 1 - leader;
    for i in 0..100 {
        c.pod(&format!("p-{i}"), "100m", json!({})).await;
    }
    c.wait_bound(100).await;
    // Negative control: while the leader holds the lease the standby binds nothing.
    assert_eq!(
        scheds[leader].metric("trellis_scheduler_leader").await,
        Some(1.0)
    );
    assert_eq!(
        scheds[standby].metric("trellis_scheduler_leader").await,
        Some(0.0)
    );
    assert_eq!(
        scheds[standby]
            .metric("trellis_scheduler_pods_scheduled_total")
            .await
            .unwrap_or(0.0),
        0.0
    );
    // The counter moves just after the bind's answer, so it may trail the bindings briefly.
    let deadline = Instant::now() + Duration::from_secs(5);
    let before_kill = loop {
        let n = scheds[leader]
            .metric("trellis_scheduler_pods_scheduled_total")
            .await
            .unwrap_or(0.0);
        if n >= 100.0 || Instant::now() >= deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(before_kill, 100.0);

    // Kill the leader with pods pending, then keep creating.
    for i in 100..150 {
        c.pod(&format!("p-{i}"), "100m", json!({})).await;
    }
    let killed = Instant::now();
    scheds[leader].kill();
    for i in 150..200 {
        c.pod(&format!("p-{i}"), "100m", json!({})).await;
    }
    let takeover = loop {
        if scheds[standby].metric("trellis_scheduler_leader").await == Some(1.0) {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(45),
            "the standby did not take over in 45 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("standby took over {takeover:?} after the kill");
    assert!(
        takeover <= Duration::from_secs(15 + 10),
        "takeover took {takeover:?} (lease 15 s + margin)"
    );
    c.wait_bound(200).await;

    // Pods 150..200 came after the kill: the standby bound them. Its counter moves just after
    // each bind's answer, so it may trail `wait_bound` briefly (as before the kill).
    let deadline = Instant::now() + Duration::from_secs(5);
    let after = loop {
        let n = scheds[standby]
            .metric("trellis_scheduler_pods_scheduled_total")
            .await
            .unwrap_or(0.0);
        if n >= 50.0 || Instant::now() >= deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let conflicts = scheds[standby]
        .metric("trellis_scheduler_bind_errors_total")
        .await
        .unwrap_or(0.0);
    assert_eq!(
        conflicts, 0.0,
        "the standby tried to bind a pod the leader had bound"
    );
    assert!(
        after >= 50.0 && after + before_kill <= 200.0,
        "standby bound {after}, leader {before_kill}"
    );
    let seen = transitions.await.unwrap();
    assert_eq!(seen.len(), 200);
    let twice: Vec<_> = seen.iter().filter(|(_, v)| v.len() != 1).collect();
    assert!(twice.is_empty(), "pods whose node changed: {twice:?}");
    // At most one Scheduled event per pod (the killed leader may not have sent its last ones).
    let mut per_pod: HashMap<String, usize> = HashMap::new();
    for e in c.events("Scheduled").await {
        *per_pod
            .entry(e.involved_object.name.unwrap_or_default())
            .or_default() += 1;
    }
    assert!(per_pod.values().all(|n| *n == 1), "{per_pod:?}");
    drop(scheds);
    c.server.take().unwrap().shutdown().await;
}
