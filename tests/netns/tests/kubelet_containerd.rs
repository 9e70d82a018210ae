//! Issue 14, the kubelet's `containerd` runtime, in the overlay and the routed mode: a busybox
//! OCI image built from Debian's busybox-static is loaded with `trellis image import` (bad
//! archives and an unreachable containerd get clear errors), then a real kubelet per node runs
//! pods from it through containerd's own API (a private containerd 1.6, its CRI plugin off) in
//! the namespaces it made and wired through CNI: pods on two nodes talk, `kubectl logs` and
//! `kubectl exec` work, a crashing container restarts with back-off, a missing image gets
//! ErrImagePull/ImagePullBackOff and an Event and no hot loop, a kill -9 of the kubelet adopts
//! the running containers (none started twice, none duplicated), and deleting the pods removes
//! their tasks, containers, snapshots, namespaces and addresses.
//!
//! Cgroups (one network mode: they have no network side): a containerd pod's container runs in
//! its own cgroup under the pod's (the kubelet's `--cgroup-root`, here relative to the test's
//! own cgroups, which differ per hierarchy) with the pod's limits; `/stats/summary` reads its
//! memory and CPU there; over its memory limit the kernel's OOM killer ends it, 137 and
//! OOMKilled, with an Event, restarted with back-off — and under a limit it fits (256Mi) the same
//! program completes (the negative control); deleting the pods removes their cgroups, runc's in the other
//! hierarchies too.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/kubelet.rs"]
mod kubelet;
#[path = "support/overlay_cluster.rs"]
mod overlay_cluster;
#[path = "support/routed_cluster.rs"]
mod routed_cluster;

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams};
use serde_json::json;

use kubelet::{Kubelets, create_pod, wait_node_ready, wait_pod};
use netns_testbed::cluster::{ControlPlane, kubectl};
use netns_testbed::containerd::Containerd;
use netns_testbed::kubectl_session;
use netns_testbed::{Node, Testbed, bin_path};
use trellis_kubelet::cgroup::Cgroup;

/// The containerd namespace of the test's kubelets.
const NS: &str = "trellis";
/// The name the image is imported under and pods run.
const IMAGE: &str = "trellis.test/busybox:1";

fn running(p: &serde_json::Value) -> bool {
    p["status"]["phase"] == "Running"
        && p["status"]["containerStatuses"]
            .as_array()
            .is_some_and(|cs| cs.iter().all(|c| c["ready"] == true))
        && p["status"]["podIP"].is_string()
}

/// A pod from the image that prints its resolv.conf and a greeting, then answers its hostname
/// on port 8080.
fn web(name: &str, node: &str) -> serde_json::Value {
    json!({"metadata": {"name": name}, "spec": {"nodeName": node,
        "terminationGracePeriodSeconds": 2,
        "containers": [{"name": "srv", "image": IMAGE,
            "command": ["/bin/sh", "-c"],
            "args": ["cat /etc/resolv.conf; echo hello-from-$(hostname) $GREETING; exec nc -ll -p 8080 -e /bin/hostname"],
            "env": [{"name": "GREETING", "value": "via-containerd"}]}]}})
}

#[tokio::test(flavor = "multi_thread")]
async fn overlay_containerd_runtime_runs_the_busybox_image() {
    netns_testbed::require_tool("busybox", "busybox-static");
    let c = overlay_cluster::Cluster::start(2).await;
    let nodes = c
        .workers
        .iter()
        .map(|w| (&w.node, w.dirs.as_path()))
        .collect();
    scenario(&c.tb, &c.cp, &c.client, nodes, true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn routed_containerd_runtime_runs_the_busybox_image() {
    netns_testbed::require_tool("busybox", "busybox-static");
    let c = routed_cluster::Cluster::start(2).await;
    let client = overlay_cluster::kube_client(&c.cp.local_kubeconfig).await;
    let nodes = c
        .workers
        .iter()
        .map(|w| (&w.node, w.dirs.as_path()))
        .collect();
    scenario(&c.tb, &c.cp, &client, nodes, false).await;
}

/// `ctr -n trellis <args>`: its stdout.
async fn ctr(ctrd: &Containerd, args: &[&str]) -> String {
    let mut all = vec!["-n", NS];
    all.extend_from_slice(args);
    let out = ctrd.ctr(&all).await.unwrap();
    assert!(out.success(), "ctr {args:?}: {}", out.stderr);
    out.stdout
}

/// The server on `ip`:8080's answer from `ns`, retried for 20 s at most.
async fn fetch(tb: &Testbed, ns: &trellis_net::Netns, ip: &str) -> String {
    let mut last = String::new();
    for _ in 0..100 {
        let out = tb
            .exec(
                ns,
                &["/bin/busybox", "nc", "-w", "2", ip, "8080"],
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        if out.success() && !out.stdout.trim().is_empty() {
            return out.stdout;
        }
        last = out.stderr;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{ip}:8080: {last}");
}

/// `trellis image import` on `node` (a tool: it only talks to the socket).
async fn import(tb: &Testbed, node: &Node, args: &[&str]) -> netns_testbed::Output {
    let trellis = bin_path("trellis");
    let mut argv = vec![trellis.to_str().unwrap(), "image", "import"];
    argv.extend_from_slice(args);
    tb.exec(&node.ns, &argv, Duration::from_secs(60))
        .await
        .unwrap()
}

fn walk_contains(dir: &Path, name: &str) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let p = e.path();
            e.file_name().to_string_lossy() == name || (p.is_dir() && walk_contains(&p, name))
        })
}

async fn events_of(client: &kube::Client, pod: &str) -> Vec<Event> {
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

/// The kubelet flags that put a node's pods on the test's containerd.
fn containerd_flags(sock: &str) -> [&str; 6] {
    [
        "--runtime",
        "containerd",
        "--containerd-address",
        sock,
        "--containerd-namespace",
        NS,
    ]
}

/// The single-node containerd tests' set-up: containerd with the busybox image imported, and a
/// Ready kubelet on the cluster's one worker running its pods there. Bind the containerd before
/// anything the test drops later: it must go (its containers killed and deleted) before the
/// testbed.
async fn containerd_worker(c: &overlay_cluster::Cluster) -> (Containerd, Kubelets) {
    let (tb, w) = (&c.tb, &c.workers[0]);
    let ctrd = Containerd::start(tb).await.unwrap();
    let sock = ctrd.socket().display().to_string();
    let image = ctrd.busybox_image(IMAGE).unwrap();
    let out = import(
        tb,
        &w.node,
        &[
            image.to_str().unwrap(),
            "--address",
            &sock,
            "--namespace",
            NS,
        ],
    )
    .await;
    assert!(out.success(), "{out:?}");
    let mut k = Kubelets::new(tb);
    k.start_with(
        tb,
        &c.cp,
        &w.node,
        &w.dirs,
        "net.d",
        &containerd_flags(&sock),
    );
    wait_node_ready(&c.client, &w.node.name).await;
    (ctrd, k)
}

async fn scenario(
    tb: &Testbed,
    cp: &ControlPlane,
    client: &kube::Client,
    nodes: Vec<(&Node, &Path)>,
    host_local: bool,
) {
    let kubectl_bin = netns_testbed::require_tool("kubectl", "kubectl (the image's own)");
    // Dropped before the testbed: containers killed and deleted while containerd runs.
    let ctrd = Containerd::start(tb).await.unwrap();
    let sock = ctrd.socket().display().to_string();
    let (n1, n2) = (nodes[0].0, nodes[1].0);

    // Bad input to `trellis image import`: clear errors, nothing imported.
    let junk = tb.state_dir().join("junk.tar");
    std::fs::write(&junk, vec![b'x'; 4096]).unwrap();
    let out = import(tb, n1, &[junk.to_str().unwrap(), "--address", &sock]).await;
    assert!(
        !out.success() && out.stderr.contains("not a tar archive"),
        "{out:?}"
    );
    let image = ctrd.busybox_image(IMAGE).unwrap();
    let out = import(
        tb,
        n1,
        &[
            image.to_str().unwrap(),
            "--address",
            "/nonexistent/containerd.sock",
        ],
    )
    .await;
    assert!(
        !out.success() && out.stderr.contains("is not reachable"),
        "{out:?}"
    );
    // The image, twice (the second is a no-op that still succeeds).
    for _ in 0..2 {
        let out = import(
            tb,
            n1,
            &[
                image.to_str().unwrap(),
                "--address",
                &sock,
                "--namespace",
                NS,
            ],
        )
        .await;
        assert!(out.success() && out.stdout.contains(IMAGE), "{out:?}");
    }
    assert!(ctr(&ctrd, &["images", "ls", "-q"]).await.contains(IMAGE));

    let mut k = Kubelets::new(tb);
    let extra = containerd_flags(&sock);
    let mut pids = Vec::new();
    for (node, dirs) in &nodes {
        pids.push(k.start_with(tb, cp, node, dirs, "net.d", &extra));
    }
    for (node, _) in &nodes {
        wait_node_ready(client, &node.name).await;
    }

    // Pods from the image on two nodes get addresses and talk across nodes.
    let mut pods = Vec::new();
    for (i, (node, _)) in nodes.iter().enumerate() {
        let name = format!("web-{}", i + 1);
        create_pod(client, web(&name, &node.name)).await;
        let p = wait_pod(client, &name, Duration::from_secs(90), "Running", running).await;
        let cs = &p["status"]["containerStatuses"][0];
        assert!(
            cs["containerID"]
                .as_str()
                .is_some_and(|id| id.starts_with("containerd://")),
            "{cs:#}"
        );
        let ip: std::net::Ipv4Addr = p["status"]["podIP"].as_str().unwrap().parse().unwrap();
        pods.push((p["metadata"]["uid"].as_str().unwrap().to_string(), ip));
    }
    let ns1 = trellis_net::Netns::open(k.netns_path(&pods[0].0)).unwrap();
    let out = fetch(tb, &ns1, &pods[1].1.to_string()).await;
    assert_eq!(out.trim(), "web-2", "web-1 reaches web-2 across nodes");
    // They run as containerd tasks, from the image.
    let tasks = ctr(&ctrd, &["tasks", "ls"]).await;
    let running_tasks = tasks.lines().filter(|l| l.contains("RUNNING")).count();
    assert_eq!(running_tasks, 2, "{tasks}");

    // The output is in the pod's log, as `kubectl logs` shows it; exec runs in the container.
    let kc = cp.write_local_kubeconfig(tb).unwrap();
    let mut last = (0, String::new(), String::new());
    for _ in 0..100 {
        last = kubectl(&kubectl_bin, &kc, &["logs", "web-1"]).await;
        if last.1.contains("hello-from-web-1 via-containerd") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        last.1.contains("hello-from-web-1 via-containerd")
            && last.1.contains("nameserver 10.96.0.10")
            && last.1.contains("options ndots:5"),
        "kubectl logs web-1: {last:?}"
    );
    let (code, out, err) = kubectl(
        &kubectl_bin,
        &kc,
        &[
            "exec",
            "web-1",
            "--",
            "/bin/sh",
            "-c",
            "hostname; ls /bin/busybox",
        ],
    )
    .await;
    assert_eq!(code, 0, "kubectl exec: {out} {err}");
    assert!(
        out.contains("web-1") && out.contains("/bin/busybox"),
        "{out}"
    );

    // A crashing container restarts with back-off (2 s, then 4 s), exit code kept.
    create_pod(client, json!({"metadata": {"name": "crash"}, "spec": {"nodeName": n1.name,
        "containers": [{"name": "c", "image": IMAGE, "command": ["/bin/sh", "-c", "echo crashing; exit 3"]}]}})).await;
    let p = wait_pod(
        client,
        "crash",
        Duration::from_secs(60),
        "two restarts",
        |p| p["status"]["containerStatuses"][0]["restartCount"].as_u64() >= Some(2),
    )
    .await;
    let cs = &p["status"]["containerStatuses"][0];
    assert_eq!(cs["lastState"]["terminated"]["exitCode"], 3, "{cs:#}");
    let crash_uid = p["metadata"]["uid"].as_str().unwrap().to_string();
    let mtime = |n: u32, f: &str| {
        std::fs::metadata(
            k.pod_dir(0, &crash_uid)
                .join(format!("containers/c/{n}/{f}")),
        )
        .unwrap()
        .modified()
        .unwrap()
    };
    assert!(
        mtime(1, "containerd.json")
            .duration_since(mtime(0, "exit"))
            .unwrap()
            >= Duration::from_secs(2),
        "first restart after ≥ 2 s"
    );

    // A missing image: ErrImagePull/ImagePullBackOff, an Event that says so, no hot loop.
    create_pod(
        client,
        json!({"metadata": {"name": "noimage"}, "spec": {"nodeName": n2.name,
        "containers": [{"name": "c", "image": "trellis.test/absent:1", "imagePullPolicy": "Never"}]}}),
    )
    .await;
    let p = wait_pod(
        client,
        "noimage",
        Duration::from_secs(60),
        "ErrImagePull",
        |p| {
            let r = &p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"];
            r == "ErrImagePull" || r == "ImagePullBackOff"
        },
    )
    .await;
    assert_eq!(p["status"]["phase"], "Pending");
    let mut found = false;
    for _ in 0..100 {
        found = events_of(client, "noimage").await.iter().any(|e| {
            e.message
                .as_deref()
                .is_some_and(|m| m.contains("trellis.test/absent:1") && m.contains("not present"))
        });
        if found {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(found, "an Event names the missing image");
    wait_pod(
        client,
        "noimage",
        Duration::from_secs(30),
        "ImagePullBackOff",
        |p| p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ImagePullBackOff",
    )
    .await;
    // The bound is the point: with 2 s doubling, at most 3 tries in 6 s (a hot loop makes
    // dozens).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let tries = events_of(client, "noimage")
        .await
        .iter()
        .filter(|e| e.reason.as_deref() == Some("Failed"))
        .count();
    assert!(
        (1..=4).contains(&tries),
        "{tries} pull attempts: no hot loop"
    );

    // kill -9 the kubelet on n1 and start it again: its containers are adopted, not started
    // again, not duplicated.
    let pid_file = k.pod_dir(0, &pods[0].0).join("containers/srv/0/pid");
    let srv_pid = std::fs::read_to_string(&pid_file).unwrap();
    let before = ctr(&ctrd, &["containers", "ls", "-q"]).await;
    tb.kill(pids[0]);
    pids[0] = k.start_with(tb, cp, n1, nodes[0].1, "net.d", &extra);
    create_pod(
        client,
        json!({"metadata": {"name": "after"}, "spec": {"nodeName": n1.name,
        "containers": [{"name": "c", "image": IMAGE, "command": ["/bin/sleep", "3600"]}]}}),
    )
    .await;
    wait_pod(client, "after", Duration::from_secs(60), "Running", running).await;
    assert!(
        !k.pod_dir(0, &pods[0].0).join("containers/srv/1").exists(),
        "srv was not started again"
    );
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), srv_pid);
    let after = ctr(&ctrd, &["containers", "ls", "-q"]).await;
    for id in before.lines().filter(|l| l.contains("-srv-")) {
        assert_eq!(
            after.lines().filter(|l| *l == id).count(),
            1,
            "{id} once: {after}"
        );
    }
    let out = fetch(tb, &ns1, &pods[1].1.to_string()).await;
    assert_eq!(out.trim(), "web-2", "the adopted pod still has its network");
    drop(ns1);

    // Deleting the pods: tasks, containers and snapshots gone; namespaces, directories and
    // addresses released.
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let names = ["web-1", "web-2", "crash", "noimage", "after"];
    for name in names {
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }
    for name in names {
        let mut gone = false;
        for _ in 0..400 {
            if api.get_opt(name).await.unwrap().is_none() {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(gone, "{name} was never finished by its kubelet");
    }
    let mut left = String::new();
    for _ in 0..300 {
        left = format!(
            "{}{}",
            ctr(&ctrd, &["containers", "ls", "-q"]).await,
            ctr(&ctrd, &["snapshots", "ls"])
                .await
                .lines()
                .filter(|l| l.contains("trellis-"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        if left.trim().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        left.trim().is_empty(),
        "containers or snapshots left: {left}"
    );
    let tasks = ctr(&ctrd, &["tasks", "ls", "-q"]).await;
    assert!(tasks.trim().is_empty(), "tasks left: {tasks}");
    for (i, (uid, ip)) in pods.iter().enumerate() {
        assert!(!k.netns_path(uid).exists(), "web-{}'s namespace", i + 1);
        assert!(!k.pod_dir(i, uid).exists(), "web-{}'s directory", i + 1);
        if host_local {
            let held = nodes[i].1.join("ipam");
            assert!(
                !walk_contains(&held, &ip.to_string()),
                "web-{}'s address {ip} was released",
                i + 1
            );
        }
    }
    // The image stays (the kubelet never removes images).
    assert!(ctr(&ctrd, &["images", "ls", "-q"]).await.contains(IMAGE));
    drop(k);
    drop(ctrd);
}

fn status_of<'a>(p: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    p["status"]["containerStatuses"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or(&serde_json::Value::Null)
}

/// A cgroup file: v1 from the hierarchy's directory (`cpu` or `memory`), v2 from the one.
fn cg_file(cg: &Cgroup, hierarchy: &str, file: &str) -> String {
    let dir = match cg {
        Cgroup::V1 { cpu, memory, .. } if hierarchy == "cpu" => cpu.clone(),
        Cgroup::V1 { memory, .. } => memory.clone(),
        Cgroup::V2 { dir, .. } => dir.clone(),
    };
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{}/{file}: {e}", dir.display()))
        .trim()
        .to_string()
}

/// The mount points of the host's cgroup hierarchies, v1 and v2.
fn hierarchies() -> Vec<std::path::PathBuf> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mi.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            ["cgroup", "cgroup2"]
                .contains(&post.split_whitespace().next()?)
                .then(|| pre.split_whitespace().nth(4).map(std::path::PathBuf::from))?
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn containerd_pods_get_cgroups_limits_oom_kills_and_stats() {
    netns_testbed::require_tool("busybox", "busybox-static");
    let curl = netns_testbed::require_tool("curl", "curl");
    let c = overlay_cluster::Cluster::start(1).await;
    let (tb, cp, client) = (&c.tb, &c.cp, &c.client);
    let w = &c.workers[0];
    // Dropped before the testbed: containers killed and deleted while containerd runs.
    let (ctrd, k) = containerd_worker(&c).await;
    let root = k.cgroup(&w.node.name);

    // A Guaranteed pod: its container's process is in <pod cgroup>/app in every hierarchy,
    // with the pod's limits (250m: 25 ms per 100 ms, 256 shares; 64Mi).
    create_pod(client, json!({"metadata": {"name": "limited"}, "spec": {"nodeName": w.node.name,
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "app", "image": IMAGE,
            "command": ["/bin/sh", "-c",
                "x=$(/bin/busybox head -c 8000000 /dev/zero | /bin/busybox tr '\\000' x); echo held ${#x}; sleep 3600; echo ${#x}"],
            "resources": {"limits": {"cpu": "250m", "memory": "64Mi"}}}]}}))
    .await;
    let p = wait_pod(
        client,
        "limited",
        Duration::from_secs(90),
        "Running",
        running,
    )
    .await;
    assert_eq!(p["status"]["qosClass"], "Guaranteed");
    let uid = p["metadata"]["uid"].as_str().unwrap().to_string();
    let pod_cg = root.child(&format!("pod{uid}"));
    let app = pod_cg.child("app");
    let pid: i32 = std::fs::read_to_string(k.pod_dir(0, &uid).join("containers/app/0/pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    for procs in app.procs_files() {
        let listed = std::fs::read_to_string(&procs).unwrap();
        assert!(
            listed.lines().any(|l| l.trim() == pid.to_string()),
            "the container's process {pid} is in {}: {listed:?}",
            procs.display()
        );
    }
    match &app {
        Cgroup::V1 { .. } => {
            assert_eq!(
                cg_file(&app, "memory", "memory.limit_in_bytes"),
                (64u64 << 20).to_string()
            );
            assert_eq!(cg_file(&app, "cpu", "cpu.cfs_quota_us"), "25000");
            assert_eq!(cg_file(&app, "cpu", "cpu.shares"), "256");
        }
        Cgroup::V2 { .. } => {
            assert_eq!(
                cg_file(&app, "memory", "memory.max"),
                (64u64 << 20).to_string()
            );
            assert_eq!(cg_file(&app, "cpu", "cpu.max"), "25000 100000");
        }
    }

    // /stats/summary reads the pod's and the container's cgroups: the 8 MB the shell holds.
    let kc = cp.write_local_kubeconfig(tb).unwrap();
    let kubectl_bin = netns_testbed::require_tool("kubectl", "kubectl (the image's own)");
    let mut logs = (0, String::new(), String::new());
    for _ in 0..150 {
        logs = kubectl(&kubectl_bin, &kc, &["logs", "limited"]).await;
        if logs.1.contains("held 8000000") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        logs.1.contains("held 8000000"),
        "kubectl logs limited: {logs:?}"
    );
    let pki = cp.dir.join("pki");
    let url = format!("https://{}:10250/stats/summary", w.node.ip);
    let out = tb
        .exec_ok(
            &cp.node.ns,
            &[
                curl.to_str().unwrap(),
                "-sSk",
                "--max-time",
                "10",
                "--cert",
                pki.join("admin.crt").to_str().unwrap(),
                "--key",
                pki.join("admin.key").to_str().unwrap(),
                &url,
            ],
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let pod = v["pods"]
        .as_array()
        .and_then(|ps| {
            ps.iter()
                .find(|p| p["podRef"]["name"] == "limited")
                .cloned()
        })
        .unwrap_or_else(|| panic!("limited in {v:#}"));
    let ctr = &pod["containers"][0];
    assert_eq!(ctr["name"], "app", "{pod:#}");
    for (what, m) in [("pod", &pod["memory"]), ("container", &ctr["memory"])] {
        assert!(
            m["workingSetBytes"].as_u64().unwrap_or(0) >= 8_000_000,
            "the {what}'s working set holds the shell's 8 MB: {pod:#}"
        );
    }
    assert!(
        ctr["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap_or(0) > 0,
        "{pod:#}"
    );

    // Over its 16Mi limit the kernel kills the container: 137, OOMKilled, restarted after
    // its back-off (2 s in this test's kubelet).
    create_pod(
        client,
        json!({"metadata": {"name": "hog"}, "spec": {"nodeName": w.node.name,
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "c", "image": IMAGE,
            "command": ["/bin/busybox", "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
            "resources": {"limits": {"memory": "16Mi"}}}]}}),
    )
    .await;
    let p = wait_pod(
        client,
        "hog",
        Duration::from_secs(90),
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
    let hog_uid = p["metadata"]["uid"].as_str().unwrap().to_string();
    let run = |n: u32, f: &str| k.pod_dir(0, &hog_uid).join(format!("containers/c/{n}/{f}"));
    let mtime = |p: std::path::PathBuf| std::fs::metadata(&p).unwrap().modified().unwrap();
    assert!(
        mtime(run(1, "containerd.json"))
            .duration_since(mtime(run(0, "exit")))
            .unwrap()
            >= Duration::from_secs(2),
        "first restart after ≥ 2 s"
    );
    assert!(run(0, "oom").exists() && run(1, "oom").exists());
    // An Event per OOM kill says so, with the limit.
    let oom_events = events_of(client, "hog")
        .await
        .into_iter()
        .filter(|e| {
            e.type_.as_deref() == Some("Warning")
                && e.message
                    .as_deref()
                    .is_some_and(|m| m.contains("OOMKilled") && m.contains("16Mi"))
        })
        .count();
    assert!(
        oom_events >= 2,
        "an OOMKilled Event per kill: {:?}",
        events_of(client, "hog").await
    );

    // The negative control: the same program under a limit it fits (256Mi) completes.
    create_pod(
        client,
        json!({"metadata": {"name": "free"}, "spec": {"nodeName": w.node.name,
        "restartPolicy": "Never",
        "containers": [{"name": "c", "image": IMAGE,
            "command": ["/bin/busybox", "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
            "resources": {"limits": {"memory": "256Mi"}}}]}}),
    )
    .await;
    let p = wait_pod(client, "free", Duration::from_secs(90), "Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    })
    .await;
    let cs = status_of(&p, "c");
    assert_eq!(cs["state"]["terminated"]["exitCode"], 0, "{cs:#}");
    assert_eq!(cs["state"]["terminated"]["reason"], "Completed", "{cs:#}");
    let free_uid = p["metadata"]["uid"].as_str().unwrap().to_string();
    assert!(!k.pod_dir(0, &free_uid).join("containers/c/0/oom").exists());

    // Deleting the pods removes their cgroups, and the directories runc made for their
    // containers in the other hierarchies.
    let rel = pod_cg.oci_path().unwrap();
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let names = ["limited", "hog", "free"];
    for name in names {
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }
    for name in names {
        let mut gone = false;
        for _ in 0..400 {
            if api.get_opt(name).await.unwrap().is_none() {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(gone, "{name} was never finished by its kubelet");
    }
    assert!(!pod_cg.exists(), "{pod_cg:?}");
    for h in hierarchies() {
        let d = h.join(rel.trim_start_matches('/'));
        assert!(!d.exists(), "{} left", d.display());
    }
    drop(k);
    drop(ctrd);
}

/// The pids listed in a cgroup's `cgroup.procs` files.
fn cgroup_pids(cg: &Cgroup) -> std::collections::BTreeSet<i32> {
    cg.procs_files()
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// A `/proc/<pid>/cgroup` text as `<hierarchy>:<controllers>:<last three path components>`
/// per line (`besteffort/pod<uid>/<container>`): the path's start depends on who reads it (a
/// hierarchy may show the reader's own cgroup namespace prefix).
fn cgroup_tails(text: &str) -> String {
    text.lines()
        .map(|l| {
            let (head, path) = l.rsplit_once(':').unwrap_or((l, ""));
            let parts: Vec<&str> = path.rsplit('/').take(3).collect();
            let tail: Vec<&str> = parts.into_iter().rev().collect();
            format!("{head}:{}\n", tail.join("/"))
        })
        .collect()
}

/// A process's cgroups (`/proc/<pid>/cgroup`, see [`cgroup_tails`]) and PID namespace, as
/// the host sees them.
fn cgroup_and_pidns(pid: i32) -> (String, String) {
    (
        cgroup_tails(&std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap()),
        std::fs::read_link(format!("/proc/{pid}/ns/pid"))
            .unwrap()
            .display()
            .to_string(),
    )
}

/// Issue 14: `kubectl exec` into a containerd container is an exec process of its task
/// (containerd's Tasks Exec with the container's process spec), as with CRI: it runs in the
/// container's cgroup and PID namespace, with its env and working directory; stdout, stderr,
/// the exit code, stdin and a terminal work over the WebSocket and SPDY; a client that goes
/// takes its command with it, and nothing of an exec is left. The negative control is the
/// process runtime's path (`nsenter -t <pid> -n -m -u -w`, what exec did before for both):
/// its process is in neither the container's cgroup nor its PID namespace.
#[tokio::test(flavor = "multi_thread")]
async fn containerd_exec_runs_in_the_containers_cgroup_and_pid_namespace() {
    netns_testbed::require_tool("busybox", "busybox-static");
    let kubectl_bin = netns_testbed::require_tool("kubectl", "kubectl (the image's own)");
    netns_testbed::require_tool("script", "bsdutils (util-linux's script)");
    let nsenter = netns_testbed::require_tool("nsenter", "util-linux");
    let c = overlay_cluster::Cluster::start(1).await;
    let (tb, cp, client) = (&c.tb, &c.cp, &c.client);
    let w = &c.workers[0];
    // Dropped before the testbed: containers killed and deleted while containerd runs.
    let (ctrd, k) = containerd_worker(&c).await;
    let root = k.cgroup(&w.node.name);

    create_pod(
        client,
        json!({"metadata": {"name": "box"}, "spec": {"nodeName": w.node.name,
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "box", "image": IMAGE, "workingDir": "/tmp",
            "command": ["/bin/busybox", "sleep", "3600"],
            "env": [{"name": "GREETING", "value": "hello-from-env"}]}]}}),
    )
    .await;
    let p = wait_pod(client, "box", Duration::from_secs(90), "Running", running).await;
    let uid = p["metadata"]["uid"].as_str().unwrap().to_string();
    let pod_dir = k.pod_dir(0, &uid);
    let main: i32 = std::fs::read_to_string(pod_dir.join("containers/box/0/pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (main_cg, main_pidns) = cgroup_and_pidns(main);
    // BestEffort: under the kubelet's besteffort tier, as sandbox.json records.
    let sandbox: serde_json::Value =
        serde_json::from_slice(&std::fs::read(pod_dir.join("sandbox.json")).unwrap()).unwrap();
    let container_cg = root
        .child(sandbox["cgroup"].as_str().expect("a pod cgroup"))
        .child("box");
    assert_eq!(
        cgroup_pids(&container_cg),
        [main].into(),
        "only the main process in the container's cgroup"
    );
    let kc = cp.write_local_kubeconfig(tb).unwrap();

    // Non-interactive: stdout, stderr and the exit code, with the container's env and cwd;
    // in its cgroup and PID namespace (read inside, compared with the main process's).
    let (code, out, err) = kubectl(
        &kubectl_bin,
        &kc,
        &[
            "exec",
            "box",
            "--",
            "/bin/sh",
            "-c",
            "echo out; echo err >&2; echo $GREETING; pwd; exit 3",
        ],
    )
    .await;
    assert_eq!(code, 3, "the command's exit code: {out}{err}");
    assert_eq!(out, "out\nhello-from-env\n/tmp\n", "stderr: {err}");
    assert!(err.starts_with("err\n"), "{err}");
    let (code, out, err) = kubectl(
        &kubectl_bin,
        &kc,
        &[
            "exec",
            "box",
            "--",
            "/bin/sh",
            "-c",
            "cat /proc/self/cgroup; echo ---; readlink /proc/self/ns/pid",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let (inside_cg, inside_pidns) = out.split_once("---\n").unwrap();
    assert!(main_cg.contains(&format!("pod{uid}/box\n")), "{main_cg}");
    assert_eq!(
        cgroup_tails(inside_cg),
        main_cg,
        "the exec is in the container's cgroups"
    );
    assert_eq!(inside_pidns.trim(), main_pidns, "and in its PID namespace");

    // A command that runs meanwhile is in the container's cgroup, seen from the host; the
    // client going (kubectl killed) takes it with it.
    let mut held = tokio::process::Command::new(&kubectl_bin)
        .arg("--kubeconfig")
        .arg(&kc)
        .args(["exec", "box", "--", "/bin/busybox", "sleep", "1000"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut seen = Default::default();
    for _ in 0..300 {
        seen = cgroup_pids(&container_cg);
        if seen.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        seen.len(),
        2,
        "the exec's sleep joins the main process: {seen:?}"
    );
    let sleeper = *seen.iter().find(|p| **p != main).unwrap();
    assert_eq!(
        cgroup_and_pidns(sleeper),
        (main_cg.clone(), main_pidns.clone())
    );
    held.kill().await.unwrap();
    let _ = held.wait().await;
    let exec_dir = pod_dir.join("exec");
    let mut left = (seen, 1);
    for _ in 0..300 {
        left = (
            cgroup_pids(&container_cg),
            std::fs::read_dir(&exec_dir).map_or(0, |d| d.count()),
        );
        if left == ([main].into(), 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        left,
        ([main].into(), 0),
        "the exec killed and deleted once its client went, its FIFOs removed"
    );

    // The negative control, the process runtime's path: nsenter into the main process's
    // network, mount and UTS namespaces leaves the command in neither its cgroup nor its
    // PID namespace.
    let mut old = tokio::process::Command::new(&nsenter)
        .args(["-t", &main.to_string(), "-n", "-m", "-u", "-w", "--"])
        .args(["/bin/busybox", "sleep", "30"])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let old_pid = old.id().unwrap() as i32;
    let mut theirs = (String::new(), String::new());
    for _ in 0..100 {
        // nsenter execs the command once it entered the namespaces.
        if std::fs::read_link(format!("/proc/{old_pid}/exe"))
            .is_ok_and(|e| e.to_string_lossy().contains("busybox"))
        {
            theirs = cgroup_and_pidns(old_pid);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    old.kill().await.unwrap();
    assert!(!theirs.0.is_empty(), "nsenter's command never ran");
    assert_ne!(
        theirs.0, main_cg,
        "nsenter's command is outside the container's cgroups"
    );
    assert_ne!(theirs.1, main_pidns, "and outside its PID namespace");

    // stdin, to its end (CloseIO).
    let out = kubectl_session::exec_stdin(
        &kubectl_bin,
        &kc,
        &[],
        &["box", "--", "/bin/sh", "-c", "busybox wc -l; echo done"],
        b"a\nb\nc\n",
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["3", "done"]
    );

    // A terminal (exec -it under script, which gives kubectl one), with TERM set.
    let out = kubectl_session::exec_tty(
        &kubectl_bin,
        &kc,
        &[],
        "box -- /bin/sh -c '[ -t 0 ] && [ -t 1 ] && echo both-terminals; tty; echo term=$TERM'",
        None,
    )
    .await;
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && shown.contains("both-terminals")
            && shown.contains("/dev/pts/")
            && shown.contains("term=xterm"),
        "exec -it: {out:?}"
    );

    // Over SPDY too (kubectl's fallback when a WebSocket is refused).
    let mut cmd = tokio::process::Command::new(&kubectl_bin);
    cmd.env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")
        .arg("--kubeconfig")
        .arg(&kc)
        .args([
            "exec",
            "box",
            "--",
            "/bin/sh",
            "-c",
            "echo spdy; readlink /proc/self/ns/pid; exit 4",
        ])
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("exec over SPDY ends")
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("spdy\n{main_pidns}\n")
    );
    // Nothing of the execs is left: FIFO directories and exec processes.
    let mut n = 1;
    for _ in 0..100 {
        n = std::fs::read_dir(&exec_dir).map_or(0, |d| d.count());
        if n == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(n, 0, "exec FIFO directories left in {}", exec_dir.display());
    assert_eq!(cgroup_pids(&container_cg), [main].into());

    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    api.delete("box", &DeleteParams::default()).await.unwrap();
    let mut gone = false;
    for _ in 0..400 {
        if api.get_opt("box").await.unwrap().is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "box was never finished by its kubelet");
    drop(k);
    drop(ctrd);
}

/// `kubectl attach -it` to a containerd pod with `stdin: true, tty: true`, as to a process
/// runtime pod: what is typed reaches the shell, which runs on a terminal (runc's console),
/// its output comes back and is logged, and the container's terminal takes each attaching
/// terminal's size (ResizePty), with the image's kubectl over a WebSocket and SPDY and with
/// kubectl 1.20; the stdin stays open from one attach to the next (the shell never restarts),
/// `exit` ends the attach with success (and the shell, which restarts), and with `stdinOnce`
/// the stdin stays open too, as containerd's CRI plugin keeps it with a tty. `exec -it` on a
/// terminal of a set size runs `stty size` in the container and sees it.
#[tokio::test(flavor = "multi_thread")]
async fn containerd_attach_it_reaches_the_shell_on_a_resized_terminal() {
    use tokio::io::AsyncWriteExt;
    netns_testbed::require_tool("busybox", "busybox-static");
    netns_testbed::require_tool("script", "bsdutils (util-linux's script)");
    let kubectl_new = netns_testbed::require_tool("kubectl", "kubectl (the image's own)");
    let kubectl_old = kubectl_session::kubectl_1_20();
    let c = overlay_cluster::Cluster::start(1).await;
    let (tb, cp, client) = (&c.tb, &c.cp, &c.client);
    let w = &c.workers[0];
    // Dropped before the testbed: containers killed and deleted while containerd runs.
    let (ctrd, k) = containerd_worker(&c).await;
    let kc = cp.write_local_kubeconfig(tb).unwrap();
    let shell = |name: &str, once: bool| {
        json!({"metadata": {"name": name}, "spec": {"nodeName": w.node.name,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "sh", "image": IMAGE, "stdin": true, "stdinOnce": once,
                "tty": true, "command": ["/bin/sh"]}]}})
    };
    create_pod(client, shell("term", false)).await;
    create_pod(client, shell("once", true)).await;
    create_pod(
        client,
        json!({"metadata": {"name": "box"}, "spec": {"nodeName": w.node.name,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "box", "image": IMAGE,
                "command": ["/bin/busybox", "sleep", "3600"]}]}}),
    )
    .await;
    for name in ["term", "once", "box"] {
        wait_pod(client, name, Duration::from_secs(90), "Running", running).await;
    }
    let restarts =
        |p: &serde_json::Value| p["status"]["containerStatuses"][0]["restartCount"].as_u64();

    for (i, (bin, env)) in kubectl_session::variants(&kubectl_new, &kubectl_old)
        .into_iter()
        .enumerate()
    {
        let what = format!("{} {env:?}", bin.display());
        let size = (71 + i as u16, 23 + i as u16);
        let out = kubectl_session::exec_tty(
            &bin,
            &kc,
            &env,
            &format!(
                "box -- /bin/sh -c '{}'",
                kubectl_session::print_size_once(size.0, size.1)
            ),
            Some(size),
        )
        .await;
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && shown.contains(&format!("size={} {}", size.1, size.0)),
            "{what}: exec -it on a {size:?} terminal: {out:?}"
        );
        // Typed text reaches the shell on its terminal, sized as the attaching one; killing
        // kubectl detaches.
        let size = (81 + i as u16, 31 + i as u16);
        let mut child = kubectl_session::attach_tty(&bin, &kc, &env, "term", size).await;
        let _ = child.kill().await;
    }
    // The shell's terminal output is its log (stdout), and its stdin outlived the attaches.
    let (code, out, err) = kubectl(&kubectl_new, &kc, &["logs", "term"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("on-a-terminal-42"), "{out}");
    let p = wait_pod(client, "term", Duration::from_secs(5), "Running", running).await;
    assert_eq!(
        restarts(&p),
        Some(0),
        "the shell never ended: {:#}",
        p["status"]
    );

    // exit ends the shell and the attach, with success.
    let mut child = kubectl_session::attach_tty(&kubectl_new, &kc, &[], "term", (90, 30)).await;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"exit\n").await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the attach ends with the shell")
        .unwrap();
    assert!(status.success(), "{status:?}");
    wait_pod(client, "term", Duration::from_secs(60), "restarted", |p| {
        restarts(p) >= Some(1)
    })
    .await;

    // stdinOnce with a tty (`kubectl run -it` makes such pods): as containerd's CRI plugin,
    // the stdin stays open when an attach goes (it closes for stdinOnce only without a tty),
    // so a second attach reaches the same shell.
    for size in [(90, 30), (100, 35)] {
        let mut child = kubectl_session::attach_tty(&kubectl_new, &kc, &[], "once", size).await;
        let _ = child.kill().await;
    }
    let p = wait_pod(client, "once", Duration::from_secs(5), "Running", running).await;
    assert_eq!(restarts(&p), Some(0), "{:#}", p["status"]);

    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    for name in ["term", "once", "box"] {
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }
    for name in ["term", "once", "box"] {
        let mut gone = false;
        for _ in 0..400 {
            if api.get_opt(name).await.unwrap().is_none() {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(gone, "{name} was never finished by its kubelet");
    }
    drop(k);
    drop(ctrd);
}
