//! The control plane with real kubelets on the overlay (issue 15's acceptance): two schedulers
//! and two controller-managers, one of each leading, run beside the API server. A Deployment of
//! 6 spreads over 3 nodes; killing the leaders with SIGKILL hands over within 15 s without a pod
//! made or bound twice; a new image rolls out with surge and unavailability held at every
//! sampled moment; `kubectl rollout undo` brings the old one back. A node whose kubelet dies
//! goes NotReady, its ReplicaSet pods come back on the other nodes, and a bare pod there is not
//! recreated.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/kubelet.rs"]
mod kubelet;
#[path = "support/overlay_cluster.rs"]
mod overlay_cluster;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node as KubeNode, Pod};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use kubelet::{Kubelets, wait_node_ready};
use netns_testbed::Testbed;
use netns_testbed::cluster::ControlPlane;

/// A control-plane component the test runs, by name and identity.
struct Component {
    pid: i32,
    identity: String,
}

/// Starts `trellis <command>` in the control plane's namespace as `user`, leader election on.
fn start_component(
    tb: &Testbed,
    cp: &ControlPlane,
    command: &str,
    user: &str,
    identity: &str,
    port: u16,
    extra: &[&str],
) -> Component {
    let pid = cp
        .start_component(tb, command, user, Some(identity), port, extra)
        .unwrap();
    Component {
        pid,
        identity: identity.to_string(),
    }
}

/// The holder of Lease kube-system/`name`, once it has one.
async fn holder(client: &kube::Client, name: &str) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    leases
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

async fn wait_holder(
    client: &kube::Client,
    name: &str,
    not: Option<&str>,
    limit: Duration,
) -> (String, Duration) {
    let start = Instant::now();
    loop {
        if let Some(h) = holder(client, name).await
            && Some(h.as_str()) != not
        {
            return (h, start.elapsed());
        }
        assert!(
            start.elapsed() < limit,
            "lease {name}: no new holder (other than {not:?}) within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn is_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// One line per pod: name, template hash, node, phase, ready, terminating.
fn describe(pods: &[Pod]) -> String {
    pods.iter()
        .map(|p| {
            format!(
                "\n  {} {} on {:?} {:?} ready={} deleting={}",
                p.metadata.name.as_deref().unwrap_or(""),
                image(p),
                p.spec.as_ref().and_then(|s| s.node_name.clone()),
                p.status.as_ref().and_then(|s| s.phase.clone()),
                is_ready(p),
                p.metadata.deletion_timestamp.is_some()
            )
        })
        .collect()
}

fn image(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

async fn app_pods(client: &kube::Client, app: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

/// Waits until `app` has exactly `n` live pods, all Ready, all with `img`.
async fn wait_rolled(
    client: &kube::Client,
    app: &str,
    n: usize,
    img: &str,
    limit: Duration,
) -> Vec<Pod> {
    let start = Instant::now();
    loop {
        let pods = app_pods(client, app).await;
        let live: Vec<Pod> = pods
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        if live.len() == n && live.iter().all(|p| is_ready(p) && image(p) == img) {
            return live;
        }
        assert!(
            start.elapsed() < limit,
            "{app}: {} live pods, {} ready with {img}, after {limit:?}",
            live.len(),
            live.iter()
                .filter(|p| is_ready(p) && image(p) == img)
                .count()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn web_deployment(replicas: i32, img: &str) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 2,
                    "containers": [{"name": "srv", "image": img,
                        "resources": {"requests": {"cpu": "10m", "memory": "8Mi"}},
                        "command": ["/bin/busybox", "sleep", "3600"]}]}}}}))
    .unwrap()
}

/// The nodes' Ready condition status.
async fn node_ready(client: &kube::Client, name: &str) -> String {
    let nodes: Api<KubeNode> = Api::all(client.clone());
    nodes
        .get(name)
        .await
        .ok()
        .and_then(|n| n.status)
        .and_then(|s| s.conditions)
        .and_then(|cs| cs.into_iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status)
        .unwrap_or_default()
}

/// Every pod of `app` ever seen (by uid), and every Scheduled event per pod, from watches.
struct Witness {
    pods: std::sync::Arc<std::sync::Mutex<BTreeSet<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Witness {
    fn start(client: &kube::Client, app: &str) -> Witness {
        use futures::StreamExt;
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(BTreeSet::new()));
        let into = seen.clone();
        let cfg = kube::runtime::watcher::Config::default().labels(&format!("app={app}"));
        let task = tokio::spawn(async move {
            let mut stream = kube::runtime::watcher(pods, cfg).boxed();
            while let Some(ev) = stream.next().await {
                let Ok(ev) = ev else { continue };
                let objs: Vec<Pod> = match ev {
                    kube::runtime::watcher::Event::Apply(p)
                    | kube::runtime::watcher::Event::InitApply(p) => vec![p],
                    _ => vec![],
                };
                for p in objs {
                    if let Some(uid) = p.metadata.uid {
                        into.lock().unwrap().insert(uid);
                    }
                }
            }
        });
        Witness { pods: seen, task }
    }

    fn count(&self) -> usize {
        self.pods.lock().unwrap().len()
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The most replicas the ReplicaSets of `app` asked for together, from a watch: every write
/// is seen, however short the state it makes lasts (a surge pod exists only until the next
/// sync scales the old set down, which a poll can miss).
struct SurgeWatch {
    most: std::sync::Arc<std::sync::atomic::AtomicI32>,
    task: tokio::task::JoinHandle<()>,
}

impl SurgeWatch {
    fn start(client: &kube::Client, app: &str) -> SurgeWatch {
        use futures::StreamExt;
        use k8s_openapi::api::apps::v1::ReplicaSet;
        let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
        let most = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(0));
        let into = most.clone();
        let cfg = kube::runtime::watcher::Config::default().labels(&format!("app={app}"));
        let task = tokio::spawn(async move {
            let mut wanted: BTreeMap<String, i32> = BTreeMap::new();
            let mut stream = kube::runtime::watcher(sets, cfg).boxed();
            while let Some(ev) = stream.next().await {
                let Ok(ev) = ev else { continue };
                match ev {
                    kube::runtime::watcher::Event::Apply(rs)
                    | kube::runtime::watcher::Event::InitApply(rs) => {
                        let n = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
                        wanted.insert(rs.metadata.name.unwrap_or_default(), n);
                    }
                    kube::runtime::watcher::Event::Delete(rs) => {
                        wanted.remove(&rs.metadata.name.unwrap_or_default());
                    }
                    _ => continue,
                }
                into.fetch_max(wanted.values().sum(), std::sync::atomic::Ordering::SeqCst);
            }
        });
        SurgeWatch { most, task }
    }

    fn most(&self) -> i32 {
        self.most.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for SurgeWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Each pod has at most one `Scheduled` event: no pod was bound twice.
async fn assert_bound_once(client: &kube::Client) {
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), "default");
    let mut per_pod: BTreeMap<String, usize> = BTreeMap::new();
    for e in events.list(&ListParams::default()).await.unwrap().items {
        if e.reason.as_deref() == Some("Scheduled") {
            *per_pod
                .entry(e.involved_object.uid.unwrap_or_default())
                .or_default() += 1;
        }
    }
    assert!(!per_pod.is_empty(), "no Scheduled events at all");
    let twice: Vec<_> = per_pod.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "pods scheduled more than once: {twice:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_spreads_survives_its_leaders_kill_rolls_out_and_undoes() {
    netns_testbed::require_tool("busybox", "busybox-static");
    let kubectl = netns_testbed::require_tool("kubectl", "kubectl (the image's own)");
    let c = overlay_cluster::Cluster::start(3).await;
    let (tb, cp, client) = (&c.tb, &c.cp, &c.client);
    let mut k = Kubelets::new(tb);
    for w in &c.workers {
        k.start(tb, cp, &w.node, &w.dirs, "net.d");
    }
    for w in &c.workers {
        wait_node_ready(client, &w.node.name).await;
    }
    // Two of each, as on two control-plane nodes; one of each leads.
    let sched = [
        start_component(
            tb,
            cp,
            "scheduler",
            "system:kube-scheduler",
            "sched-a",
            10259,
            &[],
        ),
        start_component(
            tb,
            cp,
            "scheduler",
            "system:kube-scheduler",
            "sched-b",
            10269,
            &[],
        ),
    ];
    let managers = [
        start_component(
            tb,
            cp,
            "controller-manager",
            "system:kube-controller-manager",
            "cm-a",
            10257,
            &[],
        ),
        start_component(
            tb,
            cp,
            "controller-manager",
            "system:kube-controller-manager",
            "cm-b",
            10267,
            &[],
        ),
    ];
    let witness = Witness::start(client, "web");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    deployments
        .create(&PostParams::default(), &web_deployment(6, "busybox:1"))
        .await
        .unwrap();
    let pods = wait_rolled(client, "web", 6, "busybox:1", Duration::from_secs(120)).await;
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for p in &pods {
        *per_node
            .entry(p.spec.as_ref().unwrap().node_name.clone().unwrap())
            .or_default() += 1;
    }
    assert_eq!(
        per_node,
        BTreeMap::from([("n1".into(), 2), ("n2".into(), 2), ("n3".into(), 2)]),
        "six replicas spread evenly over three nodes"
    );
    assert_eq!(witness.count(), 6, "exactly six pods were made");

    // SIGKILL both leaders at once: the standbys lead within the lease duration plus one retry.
    let (sched_leader, _) =
        wait_holder(client, "kube-scheduler", None, Duration::from_secs(30)).await;
    let (cm_leader, _) = wait_holder(
        client,
        "kube-controller-manager",
        None,
        Duration::from_secs(30),
    )
    .await;
    for comp in sched.iter().chain(managers.iter()) {
        if comp.identity == sched_leader || comp.identity == cm_leader {
            tb.signal(comp.pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
    let killed = Instant::now();
    let (new_sched, _) = wait_holder(
        client,
        "kube-scheduler",
        Some(&sched_leader),
        Duration::from_secs(30),
    )
    .await;
    let (new_cm, _) = wait_holder(
        client,
        "kube-controller-manager",
        Some(&cm_leader),
        Duration::from_secs(30),
    )
    .await;
    let took = killed.elapsed();
    // Upstream's 15 s lease, 2 s retry (+20 % jitter): a standby sees the dead leader's last
    // renewal up to 2.4 s after it was written and takes over 15 s after it saw it; the kill
    // came after that renewal. Both components' failovers are measured together.
    assert!(took <= Duration::from_secs(20), "failover took {took:?}");
    assert_ne!(new_sched, sched_leader);
    assert_ne!(new_cm, cm_leader);

    // The standbys work: scale up to 7, then roll a new image with surge 1 / unavailable 1,
    // sampled all along.
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 7}})),
        )
        .await
        .unwrap();
    wait_rolled(client, "web", 7, "busybox:1", Duration::from_secs(120)).await;
    assert_eq!(
        witness.count(),
        7,
        "the new leader made exactly one more pod"
    );
    let surge = SurgeWatch::start(client, "web");
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            // Strategic: containers merge by name (a merge patch would replace the list).
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
                {"name": "srv", "image": "busybox:2"}]}}}})),
        )
        .await
        .unwrap();
    let (mut most_live, mut least_ready) = (0, usize::MAX);
    let mut history: BTreeMap<String, String> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let pods = app_pods(client, "web").await;
        let live: Vec<&Pod> = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        let ready = live.iter().filter(|p| is_ready(p)).count();
        for p in &pods {
            let h = history
                .entry(p.metadata.name.clone().unwrap_or_default())
                .or_default();
            let c = if is_ready(p) { 'R' } else { '.' };
            if !h.ends_with(c) {
                h.push(c);
            }
        }
        most_live = most_live.max(live.len());
        least_ready = least_ready.min(ready);
        assert!(
            live.len() <= 7 + 1,
            "maxSurge 1 broken: {} pods",
            live.len()
        );
        if ready + 1 < 7 {
            for p in &pods {
                let name = p.metadata.name.clone().unwrap_or_default();
                if image(p) == "busybox:2" && !is_ready(p) {
                    eprintln!(
                        "--- {name} status: {}",
                        serde_json::to_string(&p.status).unwrap()
                    );
                    let node = p
                        .spec
                        .as_ref()
                        .and_then(|s| s.node_name.clone())
                        .unwrap_or_default();
                    let i: usize = node.trim_start_matches('n').parse::<usize>().unwrap_or(1) - 1;
                    let dir = k.pod_dir(i, p.metadata.uid.as_deref().unwrap_or_default());
                    for f in [
                        "logs/srv/0.log",
                        "containers/srv/0/exit",
                        "containers/srv/0/start-error",
                    ] {
                        eprintln!("    {f}: {:?}", std::fs::read_to_string(dir.join(f)));
                    }
                    if let Ok(rd) = std::fs::read_dir(dir.join("containers/srv/0")) {
                        for e in rd.flatten() {
                            eprintln!(
                                "    file {:?}: {:?}",
                                e.file_name(),
                                std::fs::read_to_string(e.path())
                            );
                        }
                    }
                }
            }
            for m in &managers {
                let log = tb.log_of(m.pid);
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                eprintln!(
                    "--- {} log (last 60 lines, newest first):\n{}",
                    m.identity,
                    tail.join("\n")
                );
            }
        }
        assert!(
            ready + 1 >= 7,
            "maxUnavailable 1 broken: {ready} ready: {}\nreadiness seen: {history:?}",
            describe(&pods)
        );
        if live.len() == 7 && live.iter().all(|p| is_ready(p) && image(p) == "busybox:2") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rollout did not finish in 180 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(most_live <= 8, "maxSurge 1 broken: {most_live} pods");
    assert_eq!(
        surge.most(),
        8,
        "the rollout used its surge (the ReplicaSets' replicas together)"
    );
    assert_eq!(witness.count(), 14, "seven new pods, no more");

    // kubectl rollout undo: back to busybox:1.
    let kc = cp.write_local_kubeconfig(tb).unwrap();
    let out = std::process::Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(&kc)
        .args(["rollout", "undo", "deployment/web"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rollout undo: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    wait_rolled(client, "web", 7, "busybox:1", Duration::from_secs(180)).await;
    assert_eq!(witness.count(), 21);
    assert_bound_once(client).await;
    eprintln!("least ready during the rollout: {least_ready}; failover {took:?}");
}

/// Tolerate an unreachable or not-ready node for 3 s only (upstream's default is 300 s).
fn short_tolerations() -> serde_json::Value {
    json!([
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 3},
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 3}
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_nodes_replicaset_pods_come_back_elsewhere_and_its_bare_pod_does_not() {
    netns_testbed::require_tool("busybox", "busybox-static");
    let c = overlay_cluster::Cluster::start(3).await;
    let (tb, cp, client) = (&c.tb, &c.cp, &c.client);
    let mut k = Kubelets::new(tb);
    let mut kubelet_pids = Vec::new();
    for w in &c.workers {
        kubelet_pids.push(k.start(tb, cp, &w.node, &w.dirs, "net.d"));
    }
    for w in &c.workers {
        wait_node_ready(client, &w.node.name).await;
    }
    // The kubelet renews its Lease every 10 s: a 15 s grace period never flaps.
    let sched = start_component(
        tb,
        cp,
        "scheduler",
        "system:kube-scheduler",
        "sched",
        10259,
        &[],
    );
    start_component(
        tb,
        cp,
        "controller-manager",
        "system:kube-controller-manager",
        "cm",
        10257,
        &[
            "--node-monitor-grace-period",
            "15",
            "--node-monitor-period-ms",
            "500",
        ],
    );
    let mut d = web_deployment(3, "busybox:1");
    let spec = d.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
    spec.tolerations = Some(serde_json::from_value(short_tolerations()).unwrap());
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    deployments
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
    let pods = wait_rolled(client, "web", 3, "busybox:1", Duration::from_secs(120)).await;
    let on_n3: Vec<String> = pods
        .iter()
        .filter(|p| p.spec.as_ref().unwrap().node_name.as_deref() == Some("n3"))
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        on_n3.len(),
        1,
        "one replica per node: {:?}\nscheduler log:\n{}",
        pods.iter()
            .map(|p| (
                p.metadata.name.clone(),
                p.spec.as_ref().and_then(|s| s.node_name.clone())
            ))
            .collect::<Vec<_>>(),
        tb.log_of(sched.pid)
    );
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let bare: Pod = serde_json::from_value(json!({"metadata": {"name": "bare", "labels": {"app": "bare"}},
        "spec": {"nodeName": "n3", "terminationGracePeriodSeconds": 2, "tolerations": short_tolerations(),
            "containers": [{"name": "c", "image": "busybox", "command": ["/bin/busybox", "sleep", "3600"]}]}}))
    .unwrap();
    pod_api.create(&PostParams::default(), &bare).await.unwrap();
    kubelet::wait_pod(client, "bare", Duration::from_secs(60), "Running", |p| {
        p["status"]["phase"] == "Running"
    })
    .await;

    // n3's kubelet dies (its pods' processes live on, as on a partitioned node).
    tb.signal(kubelet_pids[2], nix::sys::signal::Signal::SIGKILL);
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(60);
    while node_ready(client, "n3").await == "True" {
        assert!(
            Instant::now() < deadline,
            "n3 still Ready 60 s after its kubelet died"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let not_ready_after = killed.elapsed();
    // The last renewal was at most 10 s before the kill; the grace period is 15 s.
    assert!(
        not_ready_after <= Duration::from_secs(15 + 10),
        "NotReady only after {not_ready_after:?}"
    );
    // Its ReplicaSet pod is evicted after the 3 s toleration and replaced on n1 or n2.
    let start = Instant::now();
    loop {
        let live: Vec<Pod> = app_pods(client, "web")
            .await
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        let ready_elsewhere = live
            .iter()
            .filter(|p| is_ready(p) && p.spec.as_ref().unwrap().node_name.as_deref() != Some("n3"))
            .count();
        if ready_elsewhere == 3 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "{ready_elsewhere} of 3 replicas ready off n3 after 90 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let evicted = pod_api.get_opt(&on_n3[0]).await.unwrap();
    assert!(
        evicted.is_none_or(|p| p.metadata.deletion_timestamp.is_some()),
        "the replica on n3 was evicted"
    );
    // The bare pod was evicted too, and nothing made a new one.
    let bare_now = pod_api.get_opt("bare").await.unwrap();
    assert!(
        bare_now
            .as_ref()
            .is_none_or(|p| p.metadata.deletion_timestamp.is_some()),
        "the bare pod on n3 was evicted"
    );
    assert_eq!(
        app_pods(client, "bare").await.len(),
        bare_now.iter().count()
    );
    let nodes: Api<KubeNode> = Api::all(client.clone());
    let taints = nodes
        .get("n3")
        .await
        .unwrap()
        .spec
        .unwrap()
        .taints
        .unwrap_or_default();
    assert!(
        taints
            .iter()
            .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute"),
        "{taints:?}"
    );
}
