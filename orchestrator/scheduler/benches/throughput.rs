//! Scheduler throughput (issue 15): 100 registered Node objects with no kubelets (kwok-style,
//! 32 cpu / 256Gi / 110 pods each) and 5,000 pending pods on the embedded API server; the
//! scheduler (a child process, so its RSS is its own) binds them all. Printed: pods bound per
//! second next to upstream's scheduler_perf CI floor (680–810 pods/s at 5,000 nodes) and the
//! aim (≥ 1,000 pods/s), as ratios; the scheduler's RSS at the end; and, to see where the time
//! goes, the API server's own request counts and mean latencies during the run (bindings are
//! `create pods` then: every pod already exists), plus the API server's binding rate with no
//! scheduler at all (the same POSTs, 16 in flight, from this process).
//!
//!     cargo bench -p trellis-scheduler --bench scheduler-throughput [-- --nodes 100 --pods 5000]

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const CHILD: &str = "TRELLIS_SCHED_BENCH_KUBECONFIG";

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// (verb, resource) → (count, sum of seconds), from the API server's /metrics.
async fn api_metrics(client: &kube::Client) -> BTreeMap<(String, String), (f64, f64)> {
    let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(req).await.unwrap();
    let mut out: BTreeMap<(String, String), (f64, f64)> = BTreeMap::new();
    for line in text.lines() {
        let (which, rest) =
            if let Some(r) = line.strip_prefix("apiserver_request_duration_seconds_count{") {
                (0, r)
            } else if let Some(r) = line.strip_prefix("apiserver_request_duration_seconds_sum{") {
                (1, r)
            } else {
                continue;
            };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let get = |k: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let e = out.entry((get("verb"), get("resource"))).or_default();
        let v: f64 = value.parse().unwrap_or(0.0);
        if which == 0 { e.0 = v } else { e.1 = v }
    }
    out
}

/// User + system CPU seconds a process has used so far.
fn cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = s.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name and state.
    (ticks(11) + ticks(12)) / 100.0
}

fn child() {
    let kubeconfig = std::env::var(CHILD).unwrap();
    let parallelism = std::env::var("TRELLIS_SCHED_BENCH_PARALLELISM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let config = trellis_scheduler::Config {
            kubeconfig: Some(kubeconfig.into()),
            leader_elect: false,
            parallelism,
            ..Default::default()
        };
        trellis_scheduler::run(config, std::future::pending())
            .await
            .unwrap();
    });
}

fn main() {
    if std::env::var_os(CHILD).is_some() {
        return child();
    }
    let nodes = arg("--nodes", 100);
    let parallelism = arg("--parallelism", 16);
    let pods = arg("--pods", 5000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(nodes, pods, parallelism));
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {"containers": [{"name": "c", "image": "pause",
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]},
    }))
    .unwrap()
}

async fn create_pods(client: &kube::Client, ns: &str, prefix: &str, n: usize) {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &pod(&format!("{prefix}-{i}")))
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
}

async fn run(n_nodes: usize, n_pods: usize, parallelism: usize) {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let server = trellis_apiserver::start(trellis_apiserver::Config::new(
        dir.path().join("server"),
        "127.0.0.1:0".parse().unwrap(),
    ))
    .await
    .unwrap();
    let client = trellis_api::cluster::client(Some(&server.kubeconfig))
        .await
        .unwrap();

    let t = Instant::now();
    let node_api: Api<Node> = Api::all(client.clone());
    for i in 0..n_nodes {
        let name = format!("kwok-{i:03}");
        let n: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "type": "kwok"}},
        }))
        .unwrap();
        node_api.create(&PostParams::default(), &n).await.unwrap();
        let alloc = json!({"cpu": "32", "memory": "256Gi", "pods": "110"});
        let status = json!({"status": {"capacity": alloc, "allocatable": alloc,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
        node_api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .unwrap();
    }
    create_pods(&client, "default", "bench", n_pods).await;
    eprintln!(
        "{n_nodes} nodes and {n_pods} pending pods created in {:?}",
        t.elapsed()
    );

    let before = api_metrics(&client).await;
    // Count bindings as the watch sees them.
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let rv = pod_api
        .list_metadata(&ListParams::default().limit(1))
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut watch = pod_api
        .watch(&kube::api::WatchParams::default().timeout(290), &rv)
        .await
        .unwrap()
        .boxed();

    let started = Instant::now();
    let mut sched = std::process::Command::new(std::env::current_exe().unwrap())
        .env(CHILD, &server.kubeconfig)
        .env("TRELLIS_SCHED_BENCH_PARALLELISM", parallelism.to_string())
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let pid = sched.id();
    let server_cpu0 = cpu_secs(std::process::id());
    let mut bound = 0usize;
    let mut first: Option<Duration> = None;
    let deadline = started + Duration::from_secs(280);
    while bound < n_pods {
        let ev = tokio::time::timeout_at(deadline.into(), watch.next()).await;
        let Ok(Some(ev)) = ev else {
            panic!("only {bound} of {n_pods} bound in 280 s");
        };
        if let Ok(kube::api::WatchEvent::Modified(p)) = ev
            && p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
            && p.metadata.resource_version.is_some()
        {
            // Each binding modifies the pod twice (nodeName, then PodScheduled): count the
            // first, the one that sets nodeName.
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "PodScheduled" && c.status == "True")
                });
            if !ready {
                bound += 1;
                first.get_or_insert(started.elapsed());
            }
        }
    }
    let total = started.elapsed();
    let first = first.unwrap();
    let rss = rss_kib(pid, "VmRSS:");
    let hwm = rss_kib(pid, "VmHWM:");
    let server_rss = rss_kib(std::process::id(), "VmRSS:");
    let sched_cpu = cpu_secs(pid);
    let server_cpu = cpu_secs(std::process::id()) - server_cpu0;
    let after = api_metrics(&client).await;
    // Let the scheduler's background events finish before it is stopped.
    let _ = sched.kill();
    let _ = sched.wait();

    let bind_window = total - first;
    let rate_all = n_pods as f64 / total.as_secs_f64();
    let rate_bind = n_pods as f64 / bind_window.as_secs_f64();
    println!();
    println!(
        "scheduler throughput: {n_nodes} nodes (32 cpu / 256Gi / 110 pods), {n_pods} pods of 100m / 128Mi"
    );
    println!(
        "  from scheduler start (process start + lists + scheduling): {total:?} → {rate_all:.0} pods/s"
    );
    println!(
        "  first binding after {first:?}; first → last binding: {bind_window:?} → {rate_bind:.0} pods/s"
    );
    println!("                              pods/s | upstream floor 680–810 | aim 1000");
    println!(
        "  ours (first → last binding) {rate_bind:>7.0} |        {:.2}× – {:.2}×     | {:.2}×",
        rate_bind / 680.0,
        rate_bind / 810.0,
        rate_bind / 1000.0
    );
    println!(
        "  scheduler RSS at the end: {} MiB (peak {} MiB); this process (API server + watch): {} MiB",
        rss / 1024,
        hwm / 1024,
        server_rss / 1024
    );
    println!(
        "  CPU used during the run: scheduler {sched_cpu:.1} s, this process (API server + watch) {server_cpu:.1} s, over {:.1} s wall ({parallelism} bindings in flight)",
        total.as_secs_f64()
    );
    println!("  API server requests during the run (count, mean latency):");
    for ((verb, res), (count, sum)) in &after {
        let (c0, s0) = before
            .get(&(verb.clone(), res.clone()))
            .copied()
            .unwrap_or_default();
        let (c, s) = (count - c0, sum - s0);
        if c >= 1.0 && verb != "watch" {
            println!(
                "    {verb:>6} {res:<12} {c:>6.0}  {:>7.2} ms",
                1000.0 * s / c
            );
        }
    }

    // The API server alone: the same bindings with no scheduler, 16 in flight; then again with
    // one watch of those pods open (what the scheduler's watch costs the server).
    let n_raw = n_pods.min(2000);
    for (ns, watched) in [("kube-public", false), ("kube-node-lease", true)] {
        create_pods(&client, ns, "raw", n_raw).await;
        let raw_api: Api<Pod> = Api::namespaced(client.clone(), ns);
        let watcher = watched.then(|| {
            let api = raw_api.clone();
            tokio::spawn(async move {
                let s = kube::runtime::watcher(api, Default::default());
                futures::pin_mut!(s);
                while s.next().await.is_some() {}
            })
        });
        let t = Instant::now();
        futures::stream::iter(0..n_raw)
            .map(|i| {
                let api = raw_api.clone();
                async move {
                    let name = format!("raw-{i}");
                    let b = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
                        "target": {"apiVersion": "v1", "kind": "Node", "name": format!("kwok-{:03}", i % n_nodes)}});
                    api.create_subresource::<_, serde_json::Value>("binding", &name, &PostParams::default(), &b).await.unwrap();
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
        let raw = t.elapsed();
        if let Some(w) = watcher {
            w.abort();
        }
        println!(
            "  API server alone, {n_raw} bindings 16 in flight, no scheduler{}: {raw:?} → {:.0} bindings/s",
            if watched {
                ", one watch of the pods open"
            } else {
                ""
            },
            n_raw as f64 / raw.as_secs_f64()
        );
    }
    server.shutdown().await;
}
