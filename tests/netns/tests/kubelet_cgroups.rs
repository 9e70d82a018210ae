//! Issue 14: the kubelet's cgroups and gRPC probes, with real kubelets in node namespaces.
//!
//! Cgroups (one network mode: they have no network side): a pod's limits appear in its pod and
//! container cgroups; CPU usage reaches `metrics.k8s.io` from the cgroups, below the CPU limit;
//! a container allocating over its memory limit is OOMKilled (137), with an Event, and restarted
//! with back-off, while the same program under a limit it fits completes (the negative control);
//! a limit the kernel refuses gives CreateContainerError, an Event and back-off, not a hot
//! loop; kill -9 and a restart of the kubelet adopt the running pod's cgroups and remove an
//! orphan one (with its process); deleting the pods removes their cgroups. `--pod-max-pids`
//! (given at that restart) writes `pids.max` of new pods' cgroups, and a shell forking beyond it
//! gets EAGAIN; before it (the negative control) the same shell forks all its children.
//!
//! gRPC probes (overlay and routed): a `grpc.health.v1` server in a pod (tonic-health's, the
//! `grpc-health` binary) whose status follows a file; readiness flips with it, liveness
//! restarts its container, and a container whose server keeps serving is never restarted
//! (the negative control).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/kubelet.rs"]
mod kubelet;
#[path = "support/overlay_cluster.rs"]
mod overlay_cluster;
#[path = "support/routed_cluster.rs"]
mod routed_cluster;

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams};
use serde_json::{Value, json};
use trellis_kubelet::cgroup::Cgroup;

use kubelet::{Kubelets, create_pod, wait_node_ready, wait_pod};
use netns_testbed::cluster::ControlPlane;
use netns_testbed::{Node, Testbed, bin_path};

fn status_of<'a>(p: &'a Value, name: &str) -> &'a Value {
    p["status"]["containerStatuses"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

fn all_ready(p: &Value) -> bool {
    p["status"]["phase"] == "Running"
        && p["status"]["containerStatuses"]
            .as_array()
            .is_some_and(|cs| cs.iter().all(|c| c["ready"] == true))
}

fn ready_condition(p: &Value) -> bool {
    p["status"]["conditions"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["type"] == "Ready"))
        .is_some_and(|c| c["status"] == "True")
}

/// A cgroup file of the controller that has it (v1: `hierarchy`'s directory).
fn read(cg: &Cgroup, hierarchy: &str, file: &str) -> String {
    let dir = match cg {
        Cgroup::V1 {
            cpu, memory, pids, ..
        } => match hierarchy {
            "cpu" => cpu.clone(),
            "memory" => memory.clone(),
            _ => pids.clone().unwrap(),
        },
        Cgroup::V2 { dir, .. } => dir.clone(),
    };
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{}/{file}: {e}", dir.display()))
        .trim()
        .to_string()
}

/// (cpu quota µs or "max", memory limit bytes or "max") of a cgroup, whichever version.
fn limits(cg: &Cgroup) -> (String, String) {
    match cg {
        Cgroup::V1 { .. } => {
            let q = read(cg, "cpu", "cpu.cfs_quota_us");
            let m = read(cg, "memory", "memory.limit_in_bytes");
            let unlimited = m.parse::<u64>().is_ok_and(|m| m > 1 << 62);
            (
                if q == "-1" { "max".into() } else { q },
                if unlimited { "max".into() } else { m },
            )
        }
        Cgroup::V2 { .. } => (
            read(cg, "cpu", "cpu.max")
                .split_whitespace()
                .next()
                .unwrap()
                .to_string(),
            read(cg, "memory", "memory.max"),
        ),
    }
}

fn shares(cg: &Cgroup) -> String {
    match cg {
        Cgroup::V1 { .. } => read(cg, "cpu", "cpu.shares"),
        Cgroup::V2 { .. } => read(cg, "cpu", "cpu.weight"),
    }
}

/// A CPU quantity as metrics.k8s.io writes it (`1234n`, `5m`, `0`), in nanocores.
fn nanocores(q: &str) -> u64 {
    let (num, mult) = if let Some(n) = q.strip_suffix('n') {
        (n, 1)
    } else if let Some(u) = q.strip_suffix('u') {
        (u, 1_000)
    } else if let Some(m) = q.strip_suffix('m') {
        (m, 1_000_000)
    } else {
        (q, 1_000_000_000)
    };
    num.parse::<u64>().unwrap_or(0) * mult
}

/// The CPU (nanocores) of each container of pod `name` in its PodMetrics.
async fn pod_cpu(client: &kube::Client, name: &str) -> Option<Vec<(String, u64)>> {
    let ar = ApiResource {
        group: "metrics.k8s.io".into(),
        version: "v1beta1".into(),
        api_version: "metrics.k8s.io/v1beta1".into(),
        kind: "PodMetrics".into(),
        plural: "pods".into(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let m = api.get(name).await.ok()?;
    Some(
        m.data["containers"]
            .as_array()?
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap_or_default().to_string(),
                    nanocores(c["usage"]["cpu"].as_str().unwrap_or("0")),
                )
            })
            .collect(),
    )
}

async fn events_for(client: &kube::Client, pod: &str) -> Vec<Event> {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(pod))
        .collect()
}

/// Runs pod `name` on n1, whose shell forks 12 sleeping children, saying `forked <n>` after
/// each and `all forked` at the end (a fork that fails ends the shell), and returns what it
/// printed once it has ended.
async fn forker(client: &kube::Client, name: &str) -> String {
    create_pod(
        client,
        json!({"metadata": {"name": name}, "spec": {"nodeName": "n1",
        "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "c", "image": "busybox", "command": ["/bin/busybox", "sh", "-c",
            "i=0; while [ $i -lt 12 ]; do /bin/busybox sleep 60 & i=$((i+1)); echo forked $i; done; echo all forked"]}]}}),
    )
    .await;
    let p = wait_pod(client, name, Duration::from_secs(60), "terminated", |p| {
        status_of(p, "c")["state"]["terminated"].is_object()
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.logs(name, &Default::default())
        .await
        .unwrap_or_else(|e| panic!("logs of {name}: {e}; {p:#}"))
}

/// The last `forked <n>` of a [`forker`]'s output.
fn forked(log: &str) -> u32 {
    log.lines()
        .filter_map(|l| l.strip_prefix("forked "))
        .filter_map(|n| n.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .modified()
        .unwrap()
}

async fn delete_and_wait(client: &kube::Client, names: &[&str]) {
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    for n in names {
        api.delete(n, &DeleteParams::default()).await.unwrap();
    }
    for n in names {
        let deadline = Instant::now() + Duration::from_secs(60);
        while api.get_opt(n).await.unwrap().is_some() {
            assert!(
                Instant::now() < deadline,
                "{n} was never finished by its kubelet"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cgroups_limit_account_oom_kill_adopt_and_go_with_their_pods() {
    netns_testbed::require_tool("busybox", "busybox-static");
    let c = overlay_cluster::Cluster::start(1).await;
    let (tb, client) = (&c.tb, &c.client);
    let w = &c.workers[0];
    let mut k = Kubelets::new(tb);
    let mut kubelet = k.start(tb, &c.cp, &w.node, &w.dirs, "net.d");
    wait_node_ready(client, &w.node.name).await;
    let root = k.cgroup(&w.node.name);

    // Limits: a Guaranteed pod; its pod cgroup has the sums, each container its own.
    create_pod(client, json!({"metadata": {"name": "limited"}, "spec": {"nodeName": "n1",
        "terminationGracePeriodSeconds": 1,
        "containers": [
            {"name": "burn", "image": "busybox", "command": ["/bin/busybox", "sh", "-c", "while :; do :; done"],
             "resources": {"limits": {"cpu": "200m", "memory": "64Mi"}}},
            {"name": "idle", "image": "busybox", "command": ["/bin/busybox", "sleep", "3600"],
             "resources": {"limits": {"cpu": "100m", "memory": "16Mi"}}}]}}))
    .await;
    let p = wait_pod(
        client,
        "limited",
        Duration::from_secs(60),
        "Running",
        all_ready,
    )
    .await;
    assert_eq!(p["status"]["qosClass"], "Guaranteed");
    let uid = p["metadata"]["uid"].as_str().unwrap().to_string();
    let pod_cg = root.child(&format!("pod{uid}"));
    assert!(pod_cg.exists(), "{pod_cg:?}");
    assert_eq!(
        limits(&pod_cg),
        ("30000".to_string(), (80u64 << 20).to_string())
    );
    let burn = pod_cg.child("burn");
    assert_eq!(
        limits(&burn),
        ("20000".to_string(), (64u64 << 20).to_string())
    );
    if matches!(burn, Cgroup::V1 { .. }) {
        assert_eq!(shares(&burn), "204");
        assert_eq!(shares(&pod_cg), "307");
    }
    let burn_pid: i32 = std::fs::read_to_string(k.pod_dir(0, &uid).join("containers/burn/0/pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        burn.pids().contains(&burn_pid),
        "the container's process is in its cgroup"
    );
    // The OOM killer's order: Guaranteed −997 (where the kernel lets the kubelet lower a
    // score: this sandbox reads a negative one back as 0), BestEffort 1000 (below).
    let adj = |pid: &str| {
        std::fs::read_to_string(format!("/proc/{}/oom_score_adj", pid.trim()))
            .unwrap()
            .trim()
            .parse::<i32>()
            .unwrap()
    };
    assert!(adj(&burn_pid.to_string()) <= 0);
    // Usage from the cgroups reaches metrics.k8s.io: the burning container uses CPU, more
    // than the idle one, and no more than its 200m limit lets it (with slack for the window).
    let deadline = Instant::now() + Duration::from_secs(60);
    let usage = loop {
        let u = pod_cpu(client, "limited").await.unwrap_or_default();
        let get = |n: &str| u.iter().find(|(c, _)| c == n).map(|(_, v)| *v);
        if let (Some(b), Some(i)) = (get("burn"), get("idle"))
            && b > 0
            && b > i
        {
            break (b, i);
        }
        assert!(
            Instant::now() < deadline,
            "no CPU usage for burn within 60 s: {u:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        usage.0 <= 450_000_000,
        "burn is held to its quota: {} nanocores",
        usage.0
    );

    // OOM: over its 16Mi limit the container is killed by the kernel, 137 and OOMKilled, and
    // restarted after its back-off (2 s, then 4 s in this test's kubelet).
    create_pod(
        client,
        json!({"metadata": {"name": "hog"}, "spec": {"nodeName": "n1",
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "c", "image": "busybox",
            "command": ["/bin/busybox", "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
            "resources": {"limits": {"memory": "16Mi"}}}]}}),
    )
    .await;
    let p = wait_pod(
        client,
        "hog",
        Duration::from_secs(60),
        "two OOM restarts",
        |p| status_of(p, "c")["restartCount"].as_u64() >= Some(2),
    )
    .await;
    let cs = status_of(&p, "c");
    assert_eq!(
        cs["lastState"]["terminated"]["reason"], "OOMKilled",
        "{cs:#}"
    );
    assert_eq!(cs["lastState"]["terminated"]["exitCode"], 137, "{cs:#}");
    assert_eq!(p["status"]["qosClass"], "Burstable");
    let hog_uid = p["metadata"]["uid"].as_str().unwrap().to_string();
    let run = |n: u32, f: &str| k.pod_dir(0, &hog_uid).join(format!("containers/c/{n}/{f}"));
    // restartCount counts a run as soon as it is created; its shim records itself a moment
    // later (no pass waits for it).
    netns_testbed::wait_for(
        "the second restart's shim to record itself",
        Duration::from_secs(20),
        || run(2, "shim.pid").exists(),
    )
    .await;
    assert!(
        mtime(&run(1, "shim.pid"))
            .duration_since(mtime(&run(0, "exit")))
            .unwrap()
            >= Duration::from_secs(2),
        "first restart after ≥ 2 s"
    );
    assert!(
        mtime(&run(2, "shim.pid"))
            .duration_since(mtime(&run(1, "exit")))
            .unwrap()
            >= Duration::from_secs(4),
        "second restart after ≥ 4 s"
    );
    // An Event per OOM kill says so, with the limit.
    let oom_events: Vec<Event> = events_for(client, "hog")
        .await
        .into_iter()
        .filter(|e| {
            e.type_.as_deref() == Some("Warning")
                && e.message
                    .as_deref()
                    .is_some_and(|m| m.contains("OOMKilled") && m.contains("16Mi"))
        })
        .collect();
    assert!(
        oom_events.len() >= 2,
        "an OOMKilled Event per kill: {:?}",
        events_for(client, "hog").await
    );
    assert!(run(0, "oom").exists() && run(1, "oom").exists());
    // The negative control: the same program under a limit it fits (256Mi) completes, not
    // OOMKilled.
    create_pod(
        client,
        json!({"metadata": {"name": "roomy"}, "spec": {"nodeName": "n1",
        "restartPolicy": "Never",
        "containers": [{"name": "c", "image": "busybox",
            "command": ["/bin/busybox", "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
            "resources": {"limits": {"memory": "256Mi"}}}]}}),
    )
    .await;
    let p = wait_pod(client, "roomy", Duration::from_secs(60), "Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    })
    .await;
    let cs = status_of(&p, "c");
    assert_eq!(cs["state"]["terminated"]["exitCode"], 0, "{cs:#}");
    assert_eq!(cs["state"]["terminated"]["reason"], "Completed", "{cs:#}");
    let roomy_uid = p["metadata"]["uid"].as_str().unwrap().to_string();
    assert!(!k.pod_dir(0, &roomy_uid).join("containers/c/0/oom").exists());
    let hog_cg = root.child(&format!("burstable/pod{hog_uid}"));
    assert_eq!(limits(&hog_cg.child("c")).1, (16u64 << 20).to_string());
    // The QoS tiers: besteffort the minimum shares, burstable its pods' CPU requests (none).
    let v1 = matches!(root, Cgroup::V1 { .. });
    if v1 {
        assert_eq!(shares(&root.child("besteffort")), "2");
        assert_eq!(shares(&root.child("burstable")), "2");
    }

    // A limit the kernel refuses (a CFS quota of 200 million cores): CreateContainerError
    // with the kernel's reason, an Event per attempt, attempts only after the back-off. The
    // other container of the pod runs.
    let created = Instant::now();
    create_pod(
        client,
        json!({"metadata": {"name": "toobig"}, "spec": {"nodeName": "n1",
        "terminationGracePeriodSeconds": 1,
        "containers": [
            {"name": "c", "image": "busybox", "command": ["/bin/busybox", "sleep", "3600"],
             "resources": {"limits": {"cpu": "200M"}}},
            {"name": "side", "image": "busybox", "command": ["/bin/busybox", "sleep", "3600"]}]}}),
    )
    .await;
    let p = wait_pod(
        client,
        "toobig",
        Duration::from_secs(60),
        "CreateContainerError",
        |p| {
            status_of(p, "c")["state"]["waiting"]["reason"] == "CreateContainerError"
                && status_of(p, "side")["state"]["running"].is_object()
        },
    )
    .await;
    if v1 {
        // toobig's request (its limit, 200M cores) is the burstable tier's, at the maximum.
        assert_eq!(shares(&root.child("burstable")), "262144");
    }
    let msg = status_of(&p, "c")["state"]["waiting"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        (msg.contains("cpu.cfs_quota_us") || msg.contains("cpu.max"))
            && msg.contains("Invalid argument"),
        "the kernel's reason: {msg}"
    );
    // The bound is the point: 10 s after the pod was made, at most the attempts at 0, 2 and
    // 6 s (+1 for scheduling slack) — a retry every sync (300 ms) would be over 30.
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(created.elapsed())).await;
    let failed: Vec<Event> = events_for(client, "toobig")
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Failed"))
        .collect();
    assert!(!failed.is_empty(), "an Event says why");
    assert!(
        failed.iter().all(|e| e
            .message
            .as_deref()
            .is_some_and(|m| m.contains("Invalid argument"))),
        "{failed:?}"
    );
    assert!(
        failed.len() <= 4,
        "{} attempts within 10 s: no hot loop",
        failed.len()
    );
    assert!(
        !k.pod_dir(0, p["metadata"]["uid"].as_str().unwrap())
            .join("containers/c")
            .exists(),
        "a container never created has no run"
    );

    // The negative control of --pod-max-pids: this kubelet has none, so a shell forks all
    // of its 12 children.
    let forks = forker(client, "forks").await;
    assert!(forks.contains("all forked"), "{forks}");
    assert_eq!(forked(&forks), 12, "{forks}");

    // kill -9 the kubelet; meanwhile a pod cgroup nobody owns appears (with a process in it);
    // the restarted kubelet adopts the running pods' cgroups and removes the orphan.
    tb.kill(kubelet);
    let orphan = root.child("besteffort/pod00000000-0000-0000-0000-00000000cafe");
    orphan.create().unwrap();
    let mut sleeper = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"for f in "$@"; do echo $$ > "$f"; done; exec /bin/busybox sleep 3600"#)
        .arg("sh")
        .args(orphan.procs_files())
        .spawn()
        .unwrap();
    let sleeper_pid = i32::try_from(sleeper.id()).unwrap();
    netns_testbed::wait_for(
        "the orphan's process in it",
        Duration::from_secs(10),
        || orphan.pids().contains(&sleeper_pid),
    )
    .await;
    // Restarted with --pod-max-pids: new pods' cgroups hold that many processes at most.
    kubelet = k.start_with(
        tb,
        &c.cp,
        &w.node,
        &w.dirs,
        "net.d",
        &["--pod-max-pids", "8"],
    );
    let waited = tokio::task::spawn_blocking(move || sleeper.wait());
    netns_testbed::wait_for("the orphan cgroup to go", Duration::from_secs(30), || {
        !orphan.exists()
    })
    .await;
    let st = tokio::time::timeout(Duration::from_secs(10), waited)
        .await
        .expect("the orphan's process was killed")
        .unwrap()
        .unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(9),
        "killed by the kubelet"
    );
    // Adopted, not restarted: the same process in the same cgroup, its limits kept.
    create_pod(client, json!({"metadata": {"name": "after"}, "spec": {"nodeName": "n1",
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "c", "image": "busybox", "command": ["/bin/busybox", "sleep", "3600"]}]}}))
    .await;
    let p = wait_pod(
        client,
        "after",
        Duration::from_secs(60),
        "Running",
        all_ready,
    )
    .await;
    assert_eq!(p["status"]["qosClass"], "BestEffort");
    let after_uid = p["metadata"]["uid"].as_str().unwrap().to_string();
    assert!(root.child(&format!("besteffort/pod{after_uid}")).exists());
    let after_pid =
        std::fs::read_to_string(k.pod_dir(0, &after_uid).join("containers/c/0/pid")).unwrap();
    assert_eq!(adj(&after_pid), 1000, "BestEffort is killed first");
    let shim =
        std::fs::read_to_string(k.pod_dir(0, &after_uid).join("containers/c/0/shim.pid")).unwrap();
    assert_eq!(adj(&shim), adj("self"), "the shim's own score is restored");
    assert!(!k.pod_dir(0, &uid).join("containers/burn/1").exists());
    assert!(
        burn.pids().contains(&burn_pid),
        "burn still runs in its cgroup"
    );
    assert_eq!(limits(&burn).0, "20000");

    // --pod-max-pids 8: pids.max of the pod's cgroup and its container's; the shell's
    // fork beyond it fails with EAGAIN and it ends there.
    let uid_of = |p: &Value| p["metadata"]["uid"].as_str().unwrap().to_string();
    let limited_log = forker(client, "forks-limited").await;
    let limited_uid = uid_of(
        &wait_pod(
            client,
            "forks-limited",
            Duration::from_secs(10),
            "seen",
            |_| true,
        )
        .await,
    );
    let forks_cg = root.child(&format!("besteffort/pod{limited_uid}"));
    assert_eq!(read(&forks_cg, "pids", "pids.max"), "8");
    assert_eq!(read(&forks_cg.child("c"), "pids", "pids.max"), "8");
    assert!(
        limited_log.contains("Resource temporarily unavailable"),
        "EAGAIN: {limited_log}"
    );
    assert!(!limited_log.contains("all forked"), "{limited_log}");
    let n = forked(&limited_log);
    assert!(
        (1..8).contains(&n),
        "{n} children under a limit of 8: {limited_log}"
    );
    assert_eq!(
        read(
            &root.child(&format!("besteffort/pod{after_uid}")),
            "pids",
            "pids.max"
        ),
        "8"
    );

    // Deleting the pods removes their cgroups; nothing is left under the kubelet's root.
    delete_and_wait(
        client,
        &[
            "limited",
            "hog",
            "toobig",
            "after",
            "forks",
            "forks-limited",
            "roomy",
        ],
    )
    .await;
    for cg in [&pod_cg, &hog_cg] {
        for d in cg.dirs() {
            assert!(!d.exists(), "{} is gone", d.display());
        }
    }
    assert_eq!(root.pod_cgroups(), Vec::<(String, String)>::new());
    assert!(tb.running(kubelet), "{}", tb.log_of(kubelet));
}

/// The negative control of the memory limit: without cgroups (`--cgroups-per-qos=false`) the
/// same allocation over its 16Mi limit succeeds, and the kubelet makes no cgroup at all.
#[tokio::test(flavor = "multi_thread")]
async fn without_cgroups_the_memory_limit_is_not_enforced() {
    netns_testbed::require_tool("busybox", "busybox-static");
    let c = overlay_cluster::Cluster::start(1).await;
    let w = &c.workers[0];
    let mut k = Kubelets::new(&c.tb);
    k.start_with(
        &c.tb,
        &c.cp,
        &w.node,
        &w.dirs,
        "net.d",
        &["--cgroups-per-qos=false"],
    );
    wait_node_ready(&c.client, &w.node.name).await;
    create_pod(
        &c.client,
        json!({"metadata": {"name": "hog"}, "spec": {"nodeName": "n1",
        "restartPolicy": "Never",
        "containers": [{"name": "c", "image": "busybox",
            "command": ["/bin/busybox", "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
            "resources": {"limits": {"memory": "16Mi"}}}]}}),
    )
    .await;
    let p = wait_pod(
        &c.client,
        "hog",
        Duration::from_secs(60),
        "Succeeded",
        |p| p["status"]["phase"] == "Succeeded" || p["status"]["phase"] == "Failed",
    )
    .await;
    assert_eq!(
        status_of(&p, "c")["state"]["terminated"]["reason"],
        "Completed",
        "{p:#}"
    );
    assert!(!k.cgroup(&w.node.name).exists(), "no cgroup was made");
    delete_and_wait(&c.client, &["hog"]).await;
}

/// The gRPC probe scenario on one node of any network mode.
async fn grpc_probes(
    tb: &Testbed,
    cp: &ControlPlane,
    client: &kube::Client,
    node: &Node,
    dirs: &Path,
) {
    let mut k = Kubelets::new(tb);
    let kubelet = k.start(tb, cp, node, dirs, "net.d");
    wait_node_ready(client, &node.name).await;
    let health = bin_path("grpc-health").display().to_string();
    let ready_file = tb.state_dir().join("grpc-ready");
    let live_file = tb.state_dir().join("grpc-live");
    let (rf, lf) = (
        ready_file.display().to_string(),
        live_file.display().to_string(),
    );
    let probe = |port: u16, service: Option<&str>, threshold: u32| {
        let mut g = json!({"port": port});
        if let Some(s) = service {
            g["service"] = json!(s);
        }
        json!({"grpc": g, "periodSeconds": 1, "timeoutSeconds": 5, "failureThreshold": threshold})
    };
    create_pod(client, json!({"metadata": {"name": "grpc"}, "spec": {"nodeName": node.name,
        "terminationGracePeriodSeconds": 1,
        "containers": [
            {"name": "srv", "image": "grpc-health",
             "command": [health, "--listen", "0.0.0.0:9000", "--status-file", rf],
             "readinessProbe": probe(9000, None, 1)},
            {"name": "live", "image": "grpc-health",
             "command": [health, "--listen", "0.0.0.0:9001", "--status-file", lf, "--service", "app"],
             "livenessProbe": probe(9001, Some("app"), 2)},
            // Its startup probe holds the liveness probe back until it serves (as users do
            // for servers that take a while to listen): with a threshold of 1 and no delay, a
            // liveness probe before the listener is bound restarts it (seen once under CI load).
            {"name": "steady", "image": "grpc-health",
             "command": [health, "--listen", "0.0.0.0:9002"],
             "startupProbe": probe(9002, None, 30),
             "livenessProbe": probe(9002, None, 1),
             "readinessProbe": probe(9002, None, 1)}]}}))
    .await;
    wait_pod(
        client,
        "grpc",
        Duration::from_secs(60),
        "Running and Ready",
        |p| all_ready(p) && ready_condition(p),
    )
    .await;

    // Readiness follows the health status both ways.
    std::fs::write(&ready_file, "NOT_SERVING").unwrap();
    wait_pod(
        client,
        "grpc",
        Duration::from_secs(30),
        "srv not ready",
        |p| status_of(p, "srv")["ready"] == false && !ready_condition(p),
    )
    .await;
    let evs = events_for(client, "grpc").await;
    assert!(
        evs.iter().any(|e| e.message.as_deref()
            == Some("Readiness probe failed: service unhealthy (responded with \"NOT_SERVING\")")),
        "upstream's wording: {:?}",
        evs.iter().map(|e| e.message.clone()).collect::<Vec<_>>()
    );
    std::fs::write(&ready_file, "SERVING").unwrap();
    wait_pod(
        client,
        "grpc",
        Duration::from_secs(30),
        "srv ready again",
        |p| status_of(p, "srv")["ready"] == true && ready_condition(p),
    )
    .await;

    // A failing liveness probe restarts its container (SIGKILL: 137).
    std::fs::write(&live_file, "NOT_SERVING").unwrap();
    let p = wait_pod(
        client,
        "grpc",
        Duration::from_secs(60),
        "live restarted by its liveness probe",
        |p| status_of(p, "live")["restartCount"].as_u64() >= Some(1),
    )
    .await;
    assert_eq!(
        status_of(&p, "live")["lastState"]["terminated"]["exitCode"],
        137,
        "{:#}",
        status_of(&p, "live")
    );
    let evs = events_for(client, "grpc").await;
    assert!(
        evs.iter().any(|e| e.reason.as_deref() == Some("Killing")
            && e.message.as_deref()
                == Some("Container live failed liveness probe, will be restarted")),
        "{evs:?}"
    );
    // The negative control: a server that keeps serving is probed as often and never restarted.
    assert_eq!(status_of(&p, "steady")["restartCount"], 0);
    assert_eq!(status_of(&p, "srv")["restartCount"], 0);
    assert!(status_of(&p, "steady")["ready"] == true);
    delete_and_wait(client, &["grpc"]).await;
    assert!(tb.running(kubelet), "{}", tb.log_of(kubelet));
}

#[tokio::test(flavor = "multi_thread")]
async fn overlay_grpc_probes_drive_readiness_and_liveness() {
    let c = overlay_cluster::Cluster::start(1).await;
    let w = &c.workers[0];
    grpc_probes(&c.tb, &c.cp, &c.client, &w.node, &w.dirs).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn routed_grpc_probes_drive_readiness_and_liveness() {
    let c = routed_cluster::Cluster::start(1).await;
    let client = overlay_cluster::kube_client(&c.cp.local_kubeconfig).await;
    let w = &c.workers[0];
    grpc_probes(&c.tb, &c.cp, &client, &w.node, &w.dirs).await;
}
