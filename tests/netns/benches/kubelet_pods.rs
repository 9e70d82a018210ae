//! Pod start-up latency of `trellis kubelet` (process runtime, or `--containerd`: the
//! containerd runtime on a private containerd 1.6 with the busybox OCI image) on one overlay node: N pods
//! created at once, create → Running and create → Ready (a tcpSocket readiness probe) p50/p99,
//! and the kubelet's RSS with N pods. Beside it, the raw cost of the same work done directly
//! by the bench (netns + CNI ADD through the same conflist + fork/exec of the same command, one
//! pod after another), since no other kubelet can run here.
//!
//!     cargo bench -p netns-testbed --bench kubelet-pods [-- --pods 100] [--no-cgroups] [--containerd]
//!
//! `--no-cgroups` runs the kubelet with `--cgroups-per-qos=false` (no pod and container
//! cgroups), to see what the cgroups cost.
//!
//! Needs root and busybox-static.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, ListParams};
use netns_testbed::bench::Latency;
use netns_testbed::iperf::arg;
use serde_json::json;

#[path = "../tests/support/kubelet.rs"]
mod kubelet;
#[path = "../tests/support/overlay_cluster.rs"]
mod overlay_cluster;

/// The image the containerd run imports and its pods run.
const IMAGE: &str = "trellis.test/busybox:1";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    netns_testbed::require_root();
    netns_testbed::require_tool("busybox", "busybox-static");
    tokio::select! {
        () = run() => {}
        _ = tokio::signal::ctrl_c() => eprintln!("interrupted; cleaned up"),
    }
}

fn show(what: &str, l: Option<Latency>) {
    match l {
        Some(l) => println!(
            "{what:<34} p50 {:>7.0} ms   p99 {:>7.0} ms   max {:>7.0} ms",
            l.p50.as_secs_f64() * 1e3,
            l.p99.as_secs_f64() * 1e3,
            l.max.as_secs_f64() * 1e3
        ),
        None => println!("{what:<34} no samples"),
    }
}

/// The time of a kubelet log line (its leading RFC 3339 timestamp).
fn line_time(line: &str) -> Option<jiff::Timestamp> {
    line.split_whitespace().next()?.parse().ok()
}

/// The value of `key=` in a log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// Where a pod's start-up time goes, from the kubelet's own log: create → container started
/// per pod; with `RUST_LOG=info,trellis_kubelet=debug` also create → sandbox ready (netns, CNI
/// ADD), create → the kubelet's status write with Running and with Ready (what the API then
/// shows; the bench's own figures add the time its list of the pods takes), and each step of
/// the containerd runtime's starts (`containerd start`).
fn where_the_time_went(log: &str, created: &HashMap<String, jiff::Timestamp>) {
    let since = |line: &str| -> Option<Duration> {
        let pod = field(line, "pod")?;
        let t = line_time(line)?;
        let c = created.get(pod)?;
        Some(Duration::try_from(t.duration_since(*c)).unwrap_or_default())
    };
    let (mut sandbox, mut started) = (Vec::new(), Vec::new());
    let (mut running, mut ready) = (HashMap::new(), HashMap::new());
    let mut steps: Vec<(String, Vec<Duration>)> = Vec::new();
    for line in log.lines() {
        if line.contains("sandbox ready") {
            sandbox.extend(since(line));
        } else if line.contains("container started") {
            started.extend(since(line));
        } else if line.contains("pod status written")
            && let (Some(pod), Some(d)) = (field(line, "pod"), since(line))
        {
            if field(line, "phase").map(|p| p.trim_matches('"')) == Some("Running") {
                running.entry(pod.to_string()).or_insert(d);
            }
            if field(line, "ready") == Some("true") {
                ready.entry(pod.to_string()).or_insert(d);
            }
        } else if line.contains("containerd start")
            && let Some((_, rest)) = line.split_once("steps=")
        {
            for kv in rest.split_whitespace() {
                let Some((k, v)) = kv.split_once('=') else {
                    continue;
                };
                let Ok(ms) = v.parse::<f64>() else { continue };
                let d = Duration::from_secs_f64(ms.max(0.0) / 1e3);
                match steps.iter_mut().find(|(name, _)| name == k) {
                    Some((_, v)) => v.push(d),
                    None => steps.push((k.to_string(), vec![d])),
                }
            }
        }
    }
    show("  create → sandbox ready", Latency::of(&sandbox));
    show("  create → container started", Latency::of(&started));
    let values = |m: &HashMap<String, Duration>| m.values().copied().collect::<Vec<_>>();
    show("  create → Running written", Latency::of(&values(&running)));
    show("  create → Ready written", Latency::of(&values(&ready)));
    if steps.is_empty() {
        println!("  (containerd steps: run with RUST_LOG=info,trellis_kubelet=debug)");
    }
    for (name, v) in &steps {
        show(&format!("  containerd start: {name}"), Latency::of(v));
    }
}

async fn run() {
    let n = arg("--pods", 100) as usize;
    println!(
        "load average at the start: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let c = overlay_cluster::Cluster::start(1).await;
    let w = &c.workers[0];

    // Baseline: the raw work, done directly, one pod after another from one start instant.
    let t0 = Instant::now();
    let mut raw = Vec::new();
    for i in 0..n {
        let pod = c.add_pod(0, &format!("raw{i}")).await;
        c.tb.spawn(
            &pod.ns,
            &["/bin/busybox", "sleep", "600"],
            Duration::from_secs(600),
        )
        .unwrap();
        raw.push(t0.elapsed());
    }

    let containerd = std::env::args().any(|a| a == "--containerd");
    // Dropped before the cluster (declared after it): its containers go while it runs.
    let ctrd = if containerd {
        Some(
            netns_testbed::containerd::Containerd::start(&c.tb)
                .await
                .unwrap(),
        )
    } else {
        None
    };
    let mut extra: Vec<String> = Vec::new();
    if let Some(ctrd) = &ctrd {
        let image = ctrd.busybox_image(IMAGE).unwrap();
        let sock = ctrd.socket().display().to_string();
        let trellis = netns_testbed::bin_path("trellis");
        c.tb.exec_ok(
            &w.node.ns,
            &[
                trellis.to_str().unwrap(),
                "image",
                "import",
                image.to_str().unwrap(),
                "--address",
                &sock,
            ],
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        extra = ["--runtime", "containerd", "--containerd-address", &sock]
            .map(String::from)
            .to_vec();
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut k = kubelet::Kubelets::new(&c.tb);
    let cgroups = !std::env::args().any(|a| a == "--no-cgroups");
    println!(
        "kubelet cgroups: {}",
        if cgroups {
            "on"
        } else {
            "off (--cgroups-per-qos=false)"
        }
    );
    let mut extra = extra;
    if !cgroups {
        extra.push("--cgroups-per-qos=false");
    }
    let pid = k.start_with(&c.tb, &c.cp, &w.node, &w.dirs, "net.d", &extra);
    kubelet::wait_node_ready(&c.client, &w.node.name).await;
    let api: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let t0 = Instant::now();
    let mut created = HashMap::new();
    let mut created_wall = HashMap::new();
    for i in 0..n {
        let name = format!("p{i}");
        kubelet::create_pod(&c.client, json!({"metadata": {"name": name}, "spec": {"nodeName": w.node.name,
            "containers": [{"name": "c", "image": if containerd { IMAGE } else { "busybox" },
                "command": ["/bin/busybox", "nc", "-ll", "-p", "8080", "-e", "/bin/busybox", "hostname"],
                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}})).await;
        created_wall.insert(format!("default/{name}"), jiff::Timestamp::now());
        created.insert(name, t0.elapsed());
    }
    let (mut running, mut ready) = (HashMap::new(), HashMap::new());
    let deadline = Instant::now() + Duration::from_secs(600);
    while ready.len() < n && Instant::now() < deadline {
        for p in api.list(&ListParams::default()).await.unwrap().items {
            let name = p.metadata.name.clone().unwrap_or_default();
            let st = p.status.unwrap_or_default();
            if st.phase.as_deref() == Some("Running") {
                running.entry(name.clone()).or_insert(t0.elapsed());
            }
            let is_ready = st
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if is_ready {
                ready.entry(name).or_insert(t0.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The spawned pid is the `timeout` wrapper; the kubelet is its child.
    let kubelet_pid = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()
        .and_then(|s| s.split_whitespace().next().map(String::from))
        .unwrap_or_else(|| pid.to_string());
    // VmRSS and what it is made of: anonymous memory (heap, stacks), file pages (the
    // binary's text), and the kubelet's threads.
    let status = std::fs::read_to_string(format!("/proc/{kubelet_pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    let rss = field("VmRSS:").to_string();
    // PSS: file pages shared with the other trellis processes (the same binary) count
    // for their share.
    let rollup =
        std::fs::read_to_string(format!("/proc/{kubelet_pid}/smaps_rollup")).unwrap_or_default();
    let pss: u64 = rollup
        .lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    let breakdown = format!(
        "anon {} MiB, file {} MiB, PSS {} MiB, {} threads",
        field("RssAnon:") / 1024,
        field("RssFile:") / 1024,
        pss / 1024,
        field("Threads:")
    );
    let lat = |m: &HashMap<String, Duration>| -> Vec<Duration> {
        m.iter()
            .map(|(k, t)| t.saturating_sub(created[k]))
            .collect()
    };
    println!(
        "load average at the end: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "{n} pods on one node ({} runtime, overlay)",
        if containerd { "containerd" } else { "process" }
    );
    show("raw netns+ADD+exec (baseline)", Latency::of(&raw));
    show("kubelet create → Running", Latency::of(&lat(&running)));
    show("kubelet create → Ready", Latency::of(&lat(&ready)));
    println!(
        "kubelet RSS with {} pods: {} MiB ({breakdown})",
        running.len(),
        rss.parse::<u64>().unwrap_or(0) / 1024
    );
    if ready.len() < n {
        println!("only {} of {n} pods became Ready within 600 s", ready.len());
    }
    where_the_time_went(&c.tb.log_of(pid), &created_wall);
    // Delete them through the kubelet so it tears down their networks.
    for i in 0..n {
        let _ = api
            .delete(&format!("p{i}"), &DeleteParams::default().grace_period(1))
            .await;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline
        && !api
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
