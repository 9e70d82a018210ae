//! `trellis kubelet` on the overlay: nodes register and turn Ready, pods on three nodes get
//! addresses and talk across nodes, containers of one pod talk over 127.0.0.1, a crashing
//! container restarts with back-off, a missing executable gets an Event and no hot loop, a
//! killed kubelet adopts its pods, deleting a pod removes its namespace and directory, and a
//! pod whose CNI ADD blocks holds back no other pod (pods are synced in parallel). Daemons
//! started while the API server is away (kubelet, ipamd, overlay agent) wait for it with
//! back-off, not ready and stoppable, and go on when it comes; with `--api-wait-timeout 0`
//! they give up at once (the negative control).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/kubelet.rs"]
mod kubelet;
#[path = "support/overlay_cluster.rs"]
mod overlay_cluster;
#[path = "support/routed_cluster.rs"]
mod routed_cluster;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams};
use serde_json::json;

use ipnet::Ipv4Net;
use kubelet::{Kubelets, create_pod, wait_node_ready, wait_pod};
use netns_testbed::cluster::{ControlPlane, kubectl};
use netns_testbed::containerd::Containerd;
use netns_testbed::{Node, Testbed};

/// A server pod whose preStop hook leaves `<stop_dir>/<name>` behind.
fn web(name: &str, node: &str, stop_dir: &std::path::Path) -> serde_json::Value {
    let mark = stop_dir.join(name).display().to_string();
    json!({"metadata": {"name": name}, "spec": {"nodeName": node,
        "terminationGracePeriodSeconds": 5,
        "containers": [
            {"name": "srv", "image": "busybox",
             "command": ["/bin/busybox", "nc", "-ll", "-p", "8080", "-e", "/bin/busybox", "hostname"],
             "lifecycle": {"preStop": {"exec": {"command": ["/bin/busybox", "touch", mark]}}}},
            {"name": "side", "image": "busybox",
             "command": ["/bin/busybox", "sh", "-c"],
             "args": ["cat /etc/resolv.conf; echo POD=$MY_POD; until busybox nc -w 2 127.0.0.1 8080 </dev/null | grep .; do sleep 0.2; done; exec busybox sleep 3600"],
             "env": [{"name": "MY_POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}]}})
}

fn running(p: &serde_json::Value) -> bool {
    p["status"]["phase"] == "Running"
        && p["status"]["containerStatuses"]
            .as_array()
            .is_some_and(|cs| cs.iter().all(|c| c["ready"] == true))
        && p["status"]["podIP"].is_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn overlay_kubelet_runs_pods_end_to_end() {
    netns_testbed::require_tool("busybox", "busybox-static");
    let c = overlay_cluster::Cluster::start(3).await;
    let nodes = c
        .workers
        .iter()
        .map(|w| (&w.node, w.dirs.as_path(), Some(w.block)))
        .collect();
    scenario(&c.tb, &c.cp, &c.client, nodes, true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn routed_kubelet_runs_pods_end_to_end() {
    netns_testbed::require_tool("busybox", "busybox-static");
    let c = routed_cluster::Cluster::start(3).await;
    let client = overlay_cluster::kube_client(&c.cp.local_kubeconfig).await;
    let nodes = c
        .workers
        .iter()
        .map(|w| (&w.node, w.dirs.as_path(), None))
        .collect();
    scenario(&c.tb, &c.cp, &client, nodes, false).await;
}

/// The acceptance scenario on any network mode: `nodes` are (node, its directory, its block
/// when the mode gives each node one); `host_local` when addresses are host-local files.
async fn scenario(
    tb: &Testbed,
    cp: &ControlPlane,
    client: &kube::Client,
    nodes: Vec<(&Node, &std::path::Path, Option<Ipv4Net>)>,
    host_local: bool,
) {
    let mut k = Kubelets::new(tb);
    let mut pids = Vec::new();
    for (node, dirs, _) in &nodes {
        pids.push(k.start(tb, cp, node, dirs, "net.d"));
    }
    for (node, _, _) in &nodes {
        wait_node_ready(client, &node.name).await;
    }
    let lease: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), "kube-node-lease");
    assert!(lease.get("n1").await.is_ok(), "n1 holds its Lease");

    // Pods on three nodes get addresses from their node's block and reach each other.
    let mut pods = Vec::new();
    for (i, (node, _, block)) in nodes.iter().enumerate() {
        let name = format!("web-{}", i + 1);
        create_pod(client, web(&name, &node.name, tb.state_dir())).await;
        let p = wait_pod(client, &name, Duration::from_secs(60), "Running", running).await;
        let ip: std::net::Ipv4Addr = p["status"]["podIP"].as_str().unwrap().parse().unwrap();
        if let Some(block) = block {
            assert!(block.contains(&ip), "{ip} in {block}");
        }
        pods.push((p["metadata"]["uid"].as_str().unwrap().to_string(), ip));
    }
    let ns1 = trellis_net::Netns::open(k.netns_path(&pods[0].0)).unwrap();
    for (i, (_, ip)) in pods.iter().enumerate().skip(1) {
        let url = ip.to_string();
        let out = fetch(tb, &ns1, &url).await;
        assert_eq!(
            out.trim(),
            format!("web-{}", i + 1),
            "web-1 reaches web-{} across nodes and sees its hostname",
            i + 1
        );
    }
    // A hostNetwork pod runs in the node's namespace, without CNI: its podIP is the node's.
    let (n3, _, _) = nodes[2];
    create_pod(client, json!({"metadata": {"name": "hostnet"}, "spec": {"nodeName": n3.name, "hostNetwork": true,
        "containers": [{"name": "srv", "image": "busybox",
            "command": ["/bin/busybox", "nc", "-ll", "-p", "8081", "-e", "/bin/busybox", "echo", "from-the-node"]}]}})).await;
    let p = wait_pod(
        client,
        "hostnet",
        Duration::from_secs(60),
        "Running",
        running,
    )
    .await;
    assert_eq!(p["status"]["podIP"], n3.ip.to_string());
    let out = fetch_port(tb, &n3.ns, "127.0.0.1", "8081").await;
    assert_eq!(
        out.trim(),
        "from-the-node",
        "the hostNetwork pod listens in the node's namespace"
    );

    // The second container reached the first over 127.0.0.1; it saw the pod's resolv.conf.
    let log = k.pod_dir(0, &pods[0].0).join("logs/side/0.log");
    netns_testbed::wait_for(
        "the side container's answer",
        Duration::from_secs(20),
        || kubelet::read_log(&log).is_ok_and(|l| l.lines().any(|x| x == "web-1")),
    )
    .await;
    let text = kubelet::read_log(&log).unwrap();
    assert!(
        text.contains("nameserver 10.96.0.10")
            && text.contains("options ndots:5")
            && text.contains("search default.svc.cluster.local"),
        "{text}"
    );
    assert!(text.contains("POD=web-1"), "downward API env: {text}");

    // A crashing container restarts with back-off (2 s, then 4 s in this test's kubelet).
    create_pod(client, json!({"metadata": {"name": "crash"}, "spec": {"nodeName": "n1",
        "containers": [{"name": "c", "image": "busybox", "command": ["/bin/busybox", "sh", "-c", "echo crashing; exit 3"]}]}})).await;
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
    assert_eq!(p["status"]["phase"], "Running");
    let crash_uid = p["metadata"]["uid"].as_str().unwrap().to_string();
    // restartCount counts a run as soon as it is created; its shim records itself a moment
    // later (no pass waits for it).
    let shim_pid = k.pod_dir(0, &crash_uid).join("containers/c/2/shim.pid");
    netns_testbed::wait_for(
        "the second restart's shim to record itself",
        Duration::from_secs(20),
        || shim_pid.exists(),
    )
    .await;
    let started = |n: u32| {
        std::fs::metadata(
            k.pod_dir(0, &crash_uid)
                .join(format!("containers/c/{n}/shim.pid")),
        )
        .unwrap()
        .modified()
        .unwrap()
    };
    let exited = |n: u32| {
        std::fs::metadata(
            k.pod_dir(0, &crash_uid)
                .join(format!("containers/c/{n}/exit")),
        )
        .unwrap()
        .modified()
        .unwrap()
    };
    assert!(
        started(1).duration_since(exited(0)).unwrap() >= Duration::from_secs(2),
        "first restart after ≥ 2 s"
    );
    assert!(
        started(2).duration_since(exited(1)).unwrap() >= Duration::from_secs(4),
        "second restart after ≥ 4 s"
    );

    // A missing executable: an Event and a status that say so, and no hot loop.
    create_pod(
        client,
        json!({"metadata": {"name": "bad"}, "spec": {"nodeName": "n2",
        "containers": [{"name": "c", "image": "busybox", "command": ["/nonexistent/tool"]}]}}),
    )
    .await;
    let p = wait_pod(client, "bad", Duration::from_secs(60), "StartError", |p| {
        p["status"]["containerStatuses"][0]["lastState"]["terminated"]["reason"] == "StartError"
            || p["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == "StartError"
            || p["status"]["containerStatuses"][0]["restartCount"].as_u64() >= Some(1)
    })
    .await;
    let bad_uid = p["metadata"]["uid"].as_str().unwrap().to_string();
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let mut found = false;
    for _ in 0..100 {
        let evs = events.list(&ListParams::default()).await.unwrap();
        found = evs.items.iter().any(|e| {
            e.involved_object.name.as_deref() == Some("bad")
                && e.message
                    .as_deref()
                    .is_some_and(|m| m.contains("/nonexistent/tool"))
        });
        if found {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(found, "an Event names the missing executable");
    tokio::time::sleep(Duration::from_secs(5)).await; // the bound is the point: runs in 5 s
    let runs = std::fs::read_dir(k.pod_dir(1, &bad_uid).join("containers/c"))
        .unwrap()
        .count();
    assert!(
        runs <= 3,
        "{runs} attempts within the back-off: no hot loop"
    );

    // Probes: readiness follows an exec probe both ways; a failing liveness probe restarts its
    // container, while a passing one (the negative control, same pod) never does.
    let flag = tb.state_dir().join("ready-flag");
    let flag_s = flag.display().to_string();
    create_pod(client, json!({"metadata": {"name": "probed"}, "spec": {"nodeName": "n2",
        "containers": [
            {"name": "srv", "image": "busybox",
             "command": ["/bin/busybox", "nc", "-ll", "-p", "8080", "-e", "/bin/busybox", "hostname"],
             "livenessProbe": {"tcpSocket": {"port": 8080}, "initialDelaySeconds": 2, "periodSeconds": 1, "failureThreshold": 2},
             "readinessProbe": {"exec": {"command": ["/bin/busybox", "test", "-e", flag_s]},
                                "periodSeconds": 1, "failureThreshold": 1}},
            {"name": "live", "image": "busybox", "command": ["/bin/busybox", "sleep", "3600"],
             "livenessProbe": {"tcpSocket": {"port": 9090}, "periodSeconds": 1, "failureThreshold": 2}}]}})).await;
    let cs = |p: &serde_json::Value, name: &str| {
        p["status"]["containerStatuses"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == name).cloned())
            .unwrap_or_default()
    };
    let ready_cond = |p: &serde_json::Value| {
        p["status"]["conditions"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|c| c["type"] == "Ready")
                    .map(|c| c["status"] == "True")
            })
            .unwrap_or(false)
    };
    // Not ready while the flag is absent: wait until the probe has failed (its Event), then look.
    let mut failed = false;
    for _ in 0..300 {
        let evs = events.list(&ListParams::default()).await.unwrap();
        failed = evs.items.iter().any(|e| {
            e.involved_object.name.as_deref() == Some("probed")
                && e.message
                    .as_deref()
                    .is_some_and(|m| m.starts_with("Readiness probe failed"))
        });
        if failed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(failed, "the readiness probe ran and failed");
    let p = wait_pod(
        client,
        "probed",
        Duration::from_secs(30),
        "srv running, not ready",
        |p| cs(p, "srv")["state"]["running"].is_object() && cs(p, "srv")["ready"] == false,
    )
    .await;
    assert!(
        !ready_cond(&p),
        "the pod is not Ready while srv's readiness fails"
    );
    std::fs::write(&flag, "").unwrap();
    wait_pod(
        client,
        "probed",
        Duration::from_secs(30),
        "srv ready",
        |p| cs(p, "srv")["ready"] == true,
    )
    .await;
    std::fs::remove_file(&flag).unwrap();
    wait_pod(
        client,
        "probed",
        Duration::from_secs(30),
        "srv not ready again",
        |p| cs(p, "srv")["ready"] == false && !ready_cond(p),
    )
    .await;
    let p = wait_pod(
        client,
        "probed",
        Duration::from_secs(60),
        "live restarted by its liveness probe",
        |p| cs(p, "live")["restartCount"].as_u64() >= Some(1),
    )
    .await;
    assert_eq!(
        cs(&p, "live")["lastState"]["terminated"]["exitCode"],
        137,
        "{:#}",
        cs(&p, "live")
    );
    assert_eq!(
        cs(&p, "srv")["restartCount"],
        0,
        "a passing liveness probe never restarts its container"
    );

    // kill -9 the kubelet on n1 and start it again: its pods are adopted, not duplicated.
    let srv_pid =
        std::fs::read_to_string(k.pod_dir(0, &pods[0].0).join("containers/srv/0/pid")).unwrap();
    // SIGKILL to the kubelet's process group, waiting until every member is gone.
    tb.kill(pids[0]);
    pids[0] = k.start(tb, cp, nodes[0].0, nodes[0].1, "net.d");
    // After the restart the kubelet syncs; a new pod proves it is past adoption.
    create_pod(client, json!({"metadata": {"name": "after"}, "spec": {"nodeName": "n1",
        "containers": [{"name": "c", "image": "busybox", "command": ["/bin/busybox", "sleep", "3600"]}]}})).await;
    wait_pod(client, "after", Duration::from_secs(60), "Running", running).await;
    assert!(
        !k.pod_dir(0, &pods[0].0).join("containers/srv/1").exists(),
        "srv was not started again"
    );
    assert_eq!(
        std::fs::read_to_string(k.pod_dir(0, &pods[0].0).join("containers/srv/0/pid")).unwrap(),
        srv_pid
    );
    // Its cgroup was adopted with it: the same process still in it.
    let srv_cg = k
        .cgroup(&nodes[0].0.name)
        .child(&format!("besteffort/pod{}/srv", pods[0].0));
    assert!(
        srv_cg.pids().contains(&srv_pid.trim().parse().unwrap()),
        "srv is in its cgroup after the restart"
    );
    let out = fetch(tb, &ns1, &pods[1].1.to_string()).await;
    assert_eq!(out.trim(), "web-2", "the adopted pod still has its network");
    drop(ns1);

    // Deleting pods: processes stopped, CNI DEL, namespace and directory gone, object gone.
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    for name in [
        "web-1", "web-2", "web-3", "crash", "bad", "after", "probed", "hostnet",
    ] {
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }
    for name in [
        "web-1", "web-2", "web-3", "crash", "bad", "after", "probed", "hostnet",
    ] {
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
    for (i, (uid, ip)) in pods.iter().enumerate() {
        assert!(
            !k.netns_path(uid).exists(),
            "web-{}'s namespace is gone",
            i + 1
        );
        assert!(
            !k.pod_dir(i, uid).exists(),
            "web-{}'s directory is gone",
            i + 1
        );
        if host_local {
            let held = nodes[i].1.join("ipam");
            let still = walk_contains(&held, &ip.to_string());
            assert!(!still, "web-{}'s address {ip} was released", i + 1);
        }
    }
    // Nothing of any pod is left: no namespace, no pod directory, no process.
    let left: Vec<String> = std::fs::read_dir(tb.run_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&k.prefix))
        .collect();
    assert!(left.is_empty(), "pod namespaces left: {left:?}");
    for (node, _, _) in &nodes {
        let root = k.cgroup(&node.name);
        assert_eq!(
            root.pod_cgroups(),
            Vec::<(String, String)>::new(),
            "pod cgroups left under {root:?}"
        );
    }
    for root in &k.roots {
        let n = std::fs::read_dir(root.join("pods"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(n, 0, "pod directories left in {}", root.display());
    }
}

/// The answer of the server on `ip`:8080 (its hostname) from `ns`, retried for 20 s at most:
/// a Running container may not listen yet.
async fn fetch(tb: &Testbed, ns: &trellis_net::Netns, ip: &str) -> String {
    fetch_port(tb, ns, ip, "8080").await
}

/// As [`fetch`], on `port`.
async fn fetch_port(tb: &Testbed, ns: &trellis_net::Netns, ip: &str, port: &str) -> String {
    let mut last = String::new();
    for _ in 0..100 {
        let out = tb
            .exec(
                ns,
                &["/bin/busybox", "nc", "-w", "2", ip, port],
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
    panic!("{ip}:{port}: {last}");
}

fn walk_contains(dir: &std::path::Path, name: &str) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let p = e.path();
            e.file_name().to_string_lossy() == name || (p.is_dir() && walk_contains(&p, name))
        })
}

/// A CNI failure (the policy gate's code 11 here) gets an Event and a Pending status, is undone
/// with DEL, and is retried only after the back-off (2 s, then 4 s): never a hot loop.
#[tokio::test(flavor = "multi_thread")]
async fn cni_failure_gets_an_event_and_backoff() {
    netns_testbed::require_root();
    let tb = Testbed::new().unwrap();
    let cp = ControlPlane::start(&tb, "cp", 1).await.unwrap();
    let client = overlay_cluster::kube_client(&cp.local_kubeconfig).await;
    let node = tb.add_node("n1", 2).await.unwrap();
    let dirs = tb.state_dir().join("n1");
    let (bin, conf) = (dirs.join("bin"), dirs.join("net.d"));
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&conf).unwrap();
    let calls = dirs.join("calls");
    let plugin = bin.join("fail-add");
    std::fs::write(&plugin, format!(r#"#!/bin/sh
cat >/dev/null
echo "$CNI_COMMAND $(date +%s.%N) $CNI_ARGS" >> {calls}
case "$CNI_COMMAND" in
ADD) echo '{{"cniVersion":"1.1.0","code":11,"msg":"policy not confirmed","details":"policyd did not answer"}}'; exit 1 ;;
VERSION) echo '{{"cniVersion":"1.1.0","supportedVersions":["1.0.0","1.1.0"]}}' ;;
esac
exit 0
"#, calls = calls.display())).unwrap();
    std::fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(
        conf.join("10-fail.conflist"),
        r#"{"cniVersion":"1.1.0","name":"failnet","plugins":[{"type":"fail-add"}]}"#,
    )
    .unwrap();
    let mut k = Kubelets::new(&tb);
    let bin_s = bin.display().to_string();
    k.start_with(&tb, &cp, &node, &dirs, "net.d", &["--cni-bin-dir", &bin_s]);
    wait_node_ready(&client, "n1").await;
    create_pod(
        &client,
        json!({"metadata": {"name": "gated"}, "spec": {"nodeName": "n1",
        "containers": [{"name": "c", "image": "busybox", "command": ["/bin/sleep", "3600"]}]}}),
    )
    .await;
    let adds = || -> Vec<f64> {
        std::fs::read_to_string(&calls)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("ADD "))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
            .collect()
    };
    netns_testbed::wait_for("three ADD attempts", Duration::from_secs(60), || {
        adds().len() >= 3
    })
    .await;
    let log = std::fs::read_to_string(&calls).unwrap();
    let t = adds();
    assert!(
        t[1] - t[0] >= 2.0 && t[2] - t[1] >= 4.0,
        "back-off between attempts (2 s, 4 s): {log}"
    );
    assert!(
        log.contains("K8S_POD_NAMESPACE=default")
            && log.contains("K8S_POD_NAME=gated")
            && log.contains("K8S_POD_UID=")
            && log.contains("K8S_POD_INFRA_CONTAINER_ID="),
        "{log}"
    );
    let dels = log.lines().filter(|l| l.starts_with("DEL ")).count();
    assert!(dels >= 2, "every failed ADD is followed by DEL: {log}");
    let p = wait_pod(
        &client,
        "gated",
        Duration::from_secs(30),
        "the sandbox failure in its status",
        |p| {
            p["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["reason"] == "FailedCreatePodSandBox"))
        },
    )
    .await;
    assert_eq!(p["status"]["phase"], "Pending");
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let evs = events.list(&ListParams::default()).await.unwrap();
    assert!(
        evs.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("FailedCreatePodSandBox")
                && e.message
                    .as_deref()
                    .is_some_and(|m| m.contains("policy not confirmed"))),
        "an Event says why"
    );
    let left: Vec<String> = std::fs::read_dir(tb.run_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&k.prefix))
        .collect();
    // Between attempts no namespace is kept (at most the one of an attempt in flight).
    assert!(
        left.len() <= 1,
        "namespaces of failed sandboxes are removed: {left:?}"
    );
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    api.delete("gated", &DeleteParams::default()).await.unwrap();
    let mut gone = false;
    for _ in 0..300 {
        if api.get_opt("gated").await.unwrap().is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "a pod that never got a sandbox is deleted at once");
}

/// Issue 14: pods are synced in parallel. A pod whose CNI ADD blocks (a test plugin that waits
/// for a file) does not hold back another pod: that one's ADD runs and its container starts
/// while the first ADD still waits.
#[tokio::test(flavor = "multi_thread")]
async fn a_blocked_cni_add_does_not_hold_back_another_pod() {
    blocked_add(false).await;
}

/// The negative control of the test above: with one pod sync at a time
/// (`--max-parallel-pod-syncs 1`) the blocked ADD holds the other pod back, until it is let go.
#[tokio::test(flavor = "multi_thread")]
async fn with_one_sync_at_a_time_a_blocked_cni_add_holds_back_another_pod() {
    blocked_add(true).await;
}

/// A node whose only CNI plugin (`block-add`, a test script) holds the ADD of the pod named
/// `blocked` until [`BlockingCni::release`]; every other ADD answers at once (a result without
/// addresses: the pods need none here). Each call is logged to `calls`.
struct BlockingCni {
    bin: std::path::PathBuf,
    calls: std::path::PathBuf,
    release: std::path::PathBuf,
}

impl BlockingCni {
    fn new(dirs: &std::path::Path, blocked: &str) -> BlockingCni {
        let (bin, conf) = (dirs.join("bin"), dirs.join("net.d"));
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&conf).unwrap();
        let cni = BlockingCni {
            bin,
            calls: dirs.join("calls"),
            release: dirs.join("release"),
        };
        let plugin = cni.bin.join("block-add");
        std::fs::write(
            &plugin,
            format!(
                r#"#!/bin/sh
cat >/dev/null
pod=$(echo "$CNI_ARGS" | tr ';' '\n' | sed -n 's/^K8S_POD_NAME=//p')
echo "$CNI_COMMAND $pod" >> {calls}
case "$CNI_COMMAND" in
ADD)
  if [ "$pod" = {blocked} ]; then
    i=0
    while [ ! -e {release} ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done
  fi
  echo "ADDED $pod" >> {calls}
  echo '{{"cniVersion":"1.1.0"}}' ;;
VERSION) echo '{{"cniVersion":"1.1.0","supportedVersions":["1.0.0","1.1.0"]}}' ;;
esac
exit 0
"#,
                calls = cni.calls.display(),
                release = cni.release.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        std::fs::write(
            conf.join("10-block.conflist"),
            r#"{"cniVersion":"1.1.0","name":"blocknet","plugins":[{"type":"block-add"}]}"#,
        )
        .unwrap();
        cni
    }

    /// The kubelet flags that make it use the plugin.
    fn flags(&self) -> Vec<String> {
        vec!["--cni-bin-dir".into(), self.bin.display().to_string()]
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.calls).unwrap_or_default()
    }

    fn has(&self, line: &str) -> bool {
        self.log().lines().any(|l| l == line)
    }

    /// Lets the blocked ADD go.
    fn release(&self) {
        std::fs::write(&self.release, "").unwrap();
    }
}

/// Lets a blocked ADD go also when the test fails (the plugin gives up after 120 s anyway).
impl Drop for BlockingCni {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.release, "");
    }
}

async fn blocked_add(serial: bool) {
    netns_testbed::require_root();
    netns_testbed::require_tool("busybox", "busybox-static");
    let tb = Testbed::new().unwrap();
    let cp = ControlPlane::start(&tb, "cp", 1).await.unwrap();
    let client = overlay_cluster::kube_client(&cp.local_kubeconfig).await;
    let node = tb.add_node("n1", 2).await.unwrap();
    let dirs = tb.state_dir().join("n1");
    // ADD of the pod named `slow` waits for the release.
    let cni = BlockingCni::new(&dirs, "slow");
    let mut k = Kubelets::new(&tb);
    let flags = cni.flags();
    let mut extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    if serial {
        extra.extend(["--max-parallel-pod-syncs", "1"]);
    }
    k.start_with(&tb, &cp, &node, &dirs, "net.d", &extra);
    wait_node_ready(&client, "n1").await;
    let pod = |name: &str| {
        json!({"metadata": {"name": name}, "spec": {"nodeName": "n1",
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": "busybox",
                "command": ["/bin/busybox", "sleep", "3600"]}]}})
    };
    let log = || cni.log();
    let has = |line: &str| cni.has(line);
    create_pod(&client, pod("slow")).await;
    netns_testbed::wait_for(
        "the slow pod's ADD to start",
        Duration::from_secs(60),
        || has("ADD slow"),
    )
    .await;
    create_pod(&client, pod("fast")).await;
    let is_running = |p: &serde_json::Value| {
        p["status"]["phase"] == "Running" && p["status"]["containerStatuses"][0]["ready"] == true
    };
    if serial {
        // The one sync slot is the blocked pass's: the other pod gets no pass at all. Watched
        // for ten sync periods (an observation window: its end, not its length, is judged).
        let api: Api<Pod> = Api::namespaced(client.clone(), "default");
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let fast = serde_json::to_value(api.get("fast").await.unwrap()).unwrap();
            assert!(
                !has("ADD fast") && !is_running(&fast),
                "a second pass ran beside the blocked one: {}\n{fast:#}",
                log()
            );
        }
        assert!(!has("ADDED slow"), "the slow ADD still waits: {}", log());
    } else {
        wait_pod(
            &client,
            "fast",
            Duration::from_secs(60),
            "Running while the other pod's ADD blocks",
            is_running,
        )
        .await;
        assert!(
            has("ADDED fast") && !has("ADDED slow"),
            "the fast pod's ADD ended while the slow one's still waits: {}",
            log()
        );
    }
    cni.release();
    for name in ["slow", "fast"] {
        wait_pod(
            &client,
            name,
            Duration::from_secs(60),
            "Running once the ADD is let go",
            is_running,
        )
        .await;
    }
}

/// Issue 14: bad hostPort specs are refused where upstream refuses them, and become Events,
/// not errors in a loop. The API server refuses a hostPort out of range, an unknown protocol
/// and a hostPort twice for one protocol and host IP, with upstream's messages (kubectl shows
/// them). A hostIP that is not an address of the node only the kubelet can tell: the pod's
/// sandbox is not made (no CNI ADD), a Warning Event and the pod's status say why (`kubectl
/// describe` shows it), and it is retried with back-off, not hot.
#[tokio::test(flavor = "multi_thread")]
async fn bad_host_ports_are_refused_or_become_events_with_back_off() {
    netns_testbed::require_root();
    netns_testbed::require_tool("busybox", "busybox-static");
    let kubectl_bin = netns_testbed::require_tool("kubectl", "kubectl (the image's own)");
    let tb = Testbed::new().unwrap();
    let cp = ControlPlane::start(&tb, "cp", 1).await.unwrap();
    let client = overlay_cluster::kube_client(&cp.local_kubeconfig).await;
    let node = tb.add_node("n1", 2).await.unwrap();
    let dirs = tb.state_dir().join("n1");
    // No pod's ADD is held: the plugin only records the calls.
    let cni = BlockingCni::new(&dirs, "-");
    let mut k = Kubelets::new(&tb);
    let flags = cni.flags();
    let extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    k.start_with(&tb, &cp, &node, &dirs, "net.d", &extra);
    wait_node_ready(&client, "n1").await;
    let kc = cp.write_local_kubeconfig(&tb).unwrap();
    let pod = |name: &str, ports: serde_json::Value| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": "busybox",
                "command": ["/bin/busybox", "sleep", "3600"], "ports": ports}]}})
    };
    let apply = |body: serde_json::Value| {
        let file = tb.state_dir().join("pod.json");
        std::fs::write(&file, body.to_string()).unwrap();
        let (bin, kc) = (kubectl_bin.clone(), kc.clone());
        async move { kubectl(&bin, &kc, &["create", "-f", file.to_str().unwrap()]).await }
    };
    for (ports, says) in [
        (
            json!([{"containerPort": 80, "hostPort": 70000}]),
            "spec.containers[0].ports[0].hostPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
        ),
        (
            json!([{"containerPort": 80, "hostPort": 8080, "protocol": "ICMP"}]),
            r#"spec.containers[0].ports[0].protocol: Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP""#,
        ),
        (
            json!([{"containerPort": 80, "hostPort": 8080}, {"containerPort": 81, "hostPort": 8080}]),
            r#"spec.containers[0].ports[1].hostPort: Duplicate value: "TCP//8080""#,
        ),
    ] {
        let (code, out, err) = apply(pod("refused", ports)).await;
        assert!(
            code != 0 && err.contains(says),
            "kubectl create: {out}{err}"
        );
    }
    // The same hostPort for UDP too, on an address that is not the node's.
    let (code, out, err) = apply(pod(
        "elsewhere",
        json!([{"containerPort": 80, "hostPort": 8080, "hostIP": "10.250.0.1"},
               {"containerPort": 80, "hostPort": 8080, "protocol": "UDP"}]),
    ))
    .await;
    assert_eq!(code, 0, "kubectl create: {out}{err}");
    let says = "hostIP 10.250.0.1 is not an address of this node";
    let p = wait_pod(
        &client,
        "elsewhere",
        Duration::from_secs(60),
        "its sandbox refused",
        |p| {
            p["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter().any(|c| {
                    c["type"] == "PodReadyToStartContainers"
                        && c["status"] == "False"
                        && c["reason"] == "FailedCreatePodSandBox"
                        && c["message"].as_str().is_some_and(|m| m.contains(says))
                })
            })
        },
    )
    .await;
    assert_eq!(p["status"]["phase"], "Pending");
    let mut described = (0, String::new(), String::new());
    for _ in 0..100 {
        described = kubectl(&kubectl_bin, &kc, &["describe", "pod", "elsewhere"]).await;
        if described.1.contains("FailedCreatePodSandBox") && described.1.contains(says) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        described.1.contains("Warning")
            && described.1.contains("FailedCreatePodSandBox")
            && described.1.contains(says),
        "kubectl describe shows the Event: {described:?}"
    );
    // The bound is the point: with 2 s doubling, at most 4 tries in 8 s (a hot loop makes
    // dozens); no CNI ADD ever ran for it.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let tries = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.involved_object.name.as_deref() == Some("elsewhere")
                && e.reason.as_deref() == Some("FailedCreatePodSandBox")
        })
        .count();
    assert!(
        (1..=5).contains(&tries),
        "{tries} sandbox tries: no hot loop"
    );
    assert!(
        !cni.has("ADD elsewhere"),
        "no ADD for a pod whose hostPorts cannot be: {}",
        cni.log()
    );
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    api.delete("elsewhere", &DeleteParams::default())
        .await
        .unwrap();
    let mut gone = false;
    for _ in 0..300 {
        if api.get_opt("elsewhere").await.unwrap().is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "a pod that never got a sandbox is deleted at once");
}

/// Issue 14: a container still being created when its pod's SIGTERM went out gets SIGTERM once
/// its process exists, within the grace period, as upstream's kubelet does. The start of the
/// pod's container `late` is held: its log is a FIFO the test made while the pod's CNI ADD was
/// held, so its shim waits in the log's open (a run without a process). The pod is deleted
/// with a long grace period; once its other container `anchor` got its SIGTERM (the kubelet's
/// SIGTERM pass is over) the FIFO is opened, `late`'s process starts, traps TERM and says so
/// in its log: it ends long before the grace period's SIGKILL.
#[tokio::test(flavor = "multi_thread")]
async fn a_container_that_starts_during_the_grace_period_gets_sigterm() {
    late_start(Late::Sigterm, false).await;
}

/// The negative control of the test above: with `--late-start-sigterm=false` (the behaviour
/// before the fix) the held container never gets SIGTERM: it runs with its trap set until the
/// grace period's SIGKILL ends it.
#[tokio::test(flavor = "multi_thread")]
async fn without_late_start_sigterm_a_container_that_starts_during_the_grace_period_gets_only_sigkill()
 {
    late_start(Late::NoSigterm, false).await;
}

/// The test above on the containerd runtime: there the start is Tasks Create and Start, and
/// it is held the same way — containerd's shim waits in Tasks Create for its logging binary
/// (`trellis container-log`), which waits in its open of the FIFO. Once opened, the task is
/// started; its process (the container's PID 1, with TERM trapped) gets the SIGTERM within
/// the grace period.
#[tokio::test(flavor = "multi_thread")]
async fn containerd_a_container_that_starts_during_the_grace_period_gets_sigterm() {
    late_start(Late::Sigterm, true).await;
}

/// The negative control of the containerd variant: with `--late-start-sigterm=false` only
/// the grace period's SIGKILL ends the held container.
#[tokio::test(flavor = "multi_thread")]
async fn containerd_without_late_start_sigterm_a_late_container_gets_only_sigkill() {
    late_start(Late::NoSigterm, true).await;
}

/// The race the late SIGTERM's wait is for, on demand: `late` sets its trap only 3 s after its
/// start, so the kubelet's SIGTERM, due as soon as its process exists, would reach a PID 1
/// without a TERM handler — a signal the kernel drops for a PID namespace's init. With
/// `--late-start-term-wait=10s` (longer than the delay; the default 2 s is for a shell's first
/// lines) the kubelet waits until `SigCgt` shows the trap and signals then: `late` says it got TERM and ends long before the grace period. Containerd
/// only: the process runtime's containers share the node's PID namespace, where a SIGTERM
/// before the trap simply ends the shell (the default action) and the kubelet does not wait.
#[tokio::test(flavor = "multi_thread")]
async fn containerd_a_late_container_that_traps_term_late_gets_sigterm_once_trapped() {
    late_start(Late::DelayedTrap, true).await;
}

/// The negative control of the test above: with `--late-start-term-wait=0s` (the behaviour
/// before the wait) the kubelet signals `late`'s PID 1 at once, before its trap; the kernel
/// drops the SIGTERM, and `late` sets its trap and runs until the grace period's SIGKILL
/// without ever saying it got TERM.
#[tokio::test(flavor = "multi_thread")]
async fn containerd_without_the_late_term_wait_a_late_trap_misses_sigterm_until_sigkill() {
    late_start(Late::DelayedTrapNoWait, true).await;
}

/// What `late_start` runs and expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Late {
    /// `late` traps TERM at once; the kubelet as it is: the late SIGTERM ends it.
    Sigterm,
    /// `late` traps TERM at once; `--late-start-sigterm=false`: only the SIGKILL ends it.
    NoSigterm,
    /// `late` traps TERM 3 s after its start; `--late-start-term-wait=10s`: the SIGTERM waits
    /// for the trap and ends it.
    DelayedTrap,
    /// `late` traps TERM 3 s after its start; `--late-start-term-wait=0s`: the SIGTERM comes
    /// before the trap and is dropped, only the SIGKILL ends it.
    DelayedTrapNoWait,
}

impl Late {
    /// Whether `late` is expected to end by its SIGTERM, long before the grace period.
    fn fixed(self) -> bool {
        matches!(self, Late::Sigterm | Late::DelayedTrap)
    }
}

/// The containerd namespace and image of the containerd variants.
const CTRD_NS: &str = "trellis";
const CTRD_IMAGE: &str = "trellis.test/busybox:1";

async fn late_start(mode: Late, containerd: bool) {
    let fixed = mode.fixed();
    let delayed = matches!(mode, Late::DelayedTrap | Late::DelayedTrapNoWait);
    netns_testbed::require_root();
    netns_testbed::require_tool("busybox", "busybox-static");
    let mkfifo = netns_testbed::require_tool("mkfifo", "coreutils");
    let tb = Testbed::new().unwrap();
    let cp = ControlPlane::start(&tb, "cp", 1).await.unwrap();
    let client = overlay_cluster::kube_client(&cp.local_kubeconfig).await;
    let node = tb.add_node("n1", 2).await.unwrap();
    let dirs = tb.state_dir().join("n1");
    let cni = BlockingCni::new(&dirs, "late");
    let marks = dirs.join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let mut k = Kubelets::new(&tb);
    let mut extra = cni.flags();
    match mode {
        Late::NoSigterm => extra.push("--late-start-sigterm=false".into()),
        Late::DelayedTrapNoWait => extra.push("--late-start-term-wait=0s".into()),
        // Well over the trap's delay: a loaded machine's shell start does not decide it.
        Late::DelayedTrap => extra.push("--late-start-term-wait=10s".into()),
        Late::Sigterm => {}
    }
    // Dropped before the testbed and the kubelets: its containers killed and deleted.
    let ctrd = if containerd {
        let ctrd = Containerd::start(&tb).await.unwrap();
        let sock = ctrd.socket().display().to_string();
        let image = ctrd.busybox_image(CTRD_IMAGE).unwrap();
        let trellis = netns_testbed::bin_path("trellis");
        let out = tb
            .exec(
                &node.ns,
                &[
                    trellis.to_str().unwrap(),
                    "image",
                    "import",
                    image.to_str().unwrap(),
                    "--address",
                    &sock,
                    "--namespace",
                    CTRD_NS,
                ],
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        assert!(out.success(), "{out:?}");
        extra.extend([
            "--runtime".into(),
            "containerd".into(),
            "--containerd-address".into(),
            sock,
            "--containerd-namespace".into(),
            CTRD_NS.into(),
        ]);
        Some(ctrd)
    } else {
        None
    };
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let kubelet = k.start_with(&tb, &cp, &node, &dirs, "net.d", &extra);
    wait_node_ready(&client, "n1").await;
    // Long enough that an end by SIGTERM and one by the grace period's SIGKILL are far apart
    // (the SIGKILL waits for the held start: it cannot come before `late` runs).
    let grace = if fixed { 120 } else { 15 };
    let m = |f: &str| marks.join(f).display().to_string();
    // The delayed trap: the kubelet's late SIGTERM, due once the process exists, comes before it.
    let late_script = format!(
        "{}trap 'echo got-TERM; exit 0' TERM; echo trap-set; while :; do busybox sleep 1; done",
        if delayed { "busybox sleep 3; " } else { "" }
    );
    let mut pod = json!({"metadata": {"name": "late"}, "spec": {"nodeName": "n1",
        "terminationGracePeriodSeconds": grace,
        "containers": [
            {"name": "anchor", "image": "busybox", "command": ["/bin/busybox", "sh", "-c",
                format!("trap 'touch {t}; exit 0' TERM; touch {r}; while :; do busybox sleep 1; done",
                    t = m("anchor-term"), r = m("anchor-ready"))]},
            {"name": "late", "image": "busybox", "command": ["/bin/busybox", "sh", "-c",
                late_script]}]}});
    if containerd {
        // The image's busybox; the marks directory at the same path inside `anchor`.
        pod["spec"]["volumes"] = json!([{"name": "marks",
            "hostPath": {"path": marks.display().to_string(), "type": "Directory"}}]);
        for c in pod["spec"]["containers"].as_array_mut().unwrap() {
            c["image"] = json!(CTRD_IMAGE);
        }
        pod["spec"]["containers"][0]["volumeMounts"] =
            json!([{"name": "marks", "mountPath": marks.display().to_string()}]);
    }
    create_pod(&client, pod).await;
    netns_testbed::wait_for("the pod's ADD to start", Duration::from_secs(60), || {
        cni.has("ADD late")
    })
    .await;
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let uid = api.get("late").await.unwrap().metadata.uid.unwrap();
    let dir = k.pod_dir(0, &uid);
    let fifo = dir.join("logs/late/0.log");
    std::fs::create_dir_all(fifo.parent().unwrap()).unwrap();
    let out = std::process::Command::new(&mkfifo)
        .arg(&fifo)
        .output()
        .unwrap();
    assert!(out.status.success(), "mkfifo: {out:?}");
    cni.release();
    let run = dir.join("containers/late/0");
    // The process runtime's shim records itself before it opens the log; containerd's run
    // is recorded before Tasks Create, whose logging binary opens it.
    let recorded = if containerd {
        "containerd.json"
    } else {
        "shim.pid"
    };
    netns_testbed::wait_for(
        "anchor to run and late's start to wait in its log's open",
        Duration::from_secs(90),
        || marks.join("anchor-ready").exists() && run.join(recorded).exists(),
    )
    .await;
    assert!(
        !run.join("pid").exists(),
        "late's process must not exist yet"
    );
    // The kubelet has reported it so: anchor running, late being created.
    wait_pod(
        &client,
        "late",
        Duration::from_secs(60),
        "anchor running, late ContainerCreating",
        |p| {
            let state = |n: &str| {
                p["status"]["containerStatuses"]
                    .as_array()
                    .and_then(|cs| cs.iter().find(|c| c["name"] == n))
                    .map(|c| c["state"].clone())
                    .unwrap_or_default()
            };
            state("anchor")["running"].is_object()
                && state("late")["waiting"]["reason"] == "ContainerCreating"
        },
    )
    .await;
    api.delete("late", &DeleteParams::default()).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !marks.join("anchor-term").exists() {
        let log = tb.log_of(kubelet);
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        assert!(
            std::time::Instant::now() < deadline,
            "anchor never got its SIGTERM (the kubelet's SIGTERM pass); the kubelet's log ends:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !run.join("pid").exists(),
        "late was still being created when the SIGTERM went out"
    );
    let deleted = std::time::Instant::now();
    // The held start goes on: the shim's open of its log returns once the FIFO has a reader,
    // and everything `late` writes comes through it until its process ends.
    let reader = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::open(&fifo)?, &mut text)?;
        Ok::<_, std::io::Error>(text)
    });
    let bound = Duration::from_secs(grace / 2);
    let log = tokio::time::timeout(
        if fixed {
            bound
        } else {
            Duration::from_secs(120)
        },
        reader,
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "late still runs {} s after its pod's deletion: it never got SIGTERM",
            bound.as_secs()
        )
    })
    .unwrap()
    .unwrap();
    let ended = deleted.elapsed();
    if fixed && delayed {
        // The SIGTERM waited for the trap: answered, and by then no longer one to drop.
        assert!(
            log.contains("trap-set") && log.contains("got-TERM"),
            "late ended without its trap's word ({ended:?} after the deletion): {log}"
        );
    } else if fixed {
        // Ended by its SIGTERM, long before the SIGKILL. A SIGTERM that comes before the shell
        // set its trap ends it too (no PID namespace: the default action), with nothing said.
        assert!(
            log.contains("got-TERM") || !log.contains("trap-set"),
            "late ended without its trap's word: {log}"
        );
    } else {
        // Nothing but a signal ends it, and a SIGTERM would have been answered: the SIGKILL,
        // at the end of the grace period.
        assert!(
            log.contains("trap-set") && !log.contains("got-TERM"),
            "late had its trap and never got SIGTERM ({ended:?} after the deletion): {log}"
        );
        assert!(
            ended >= Duration::from_secs(grace - 5),
            "late ended {ended:?} after the deletion, before the grace period's SIGKILL: {log}"
        );
    }
    if delayed {
        // The kubelet did send the late SIGTERM: once `late`'s PID 1 had its trap (the wait),
        // or at once, to a PID 1 the kernel drops it for (the control).
        let klog = tb.log_of(kubelet);
        let sent: Vec<&str> = klog
            .lines()
            .filter(|l| {
                l.contains("SIGTERM to a container that started during the grace period")
                    && l.contains("container=late")
            })
            .collect();
        let want = format!("dropped={}", mode == Late::DelayedTrapNoWait);
        assert!(
            sent.len() == 1 && sent[0].contains(&want),
            "one late SIGTERM to late with {want}; the kubelet logged: {sent:?}"
        );
    }
    netns_testbed::wait_for("the pod to be finished", Duration::from_secs(60), || {
        !dir.exists()
    })
    .await;
    drop(ctrd);
}

/// Issue 15: a pod's ServiceAccount token, projected by the kubelet, works from inside the pod
/// for exactly what its Role allows (get/list pods in its namespace): listing succeeds, deleting
/// a pod and listing in another namespace are refused with 403 and upstream's message. A pod
/// with `automountServiceAccountToken: false` has no token. Its `ca.crt` is the namespace's
/// `kube-root-ca.crt`.
#[tokio::test(flavor = "multi_thread")]
async fn service_account_token_in_a_pod_does_what_its_role_allows() {
    netns_testbed::require_tool("busybox", "busybox-static");
    netns_testbed::require_tool("curl", "curl");
    let c = overlay_cluster::Cluster::start(1).await;
    let (tb, client) = (&c.tb, &c.client);
    let w = &c.workers[0];
    let mut k = Kubelets::new(tb);
    let kubelet = k.start(tb, &c.cp, &w.node, &w.dirs, "net.d");
    wait_node_ready(client, &w.node.name).await;
    async fn create<K>(client: &kube::Client, body: serde_json::Value)
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + serde::Serialize,
        K::DynamicType: Default,
    {
        let api: Api<K> = Api::namespaced(client.clone(), "default");
        let obj: K = serde_json::from_value(body).unwrap();
        api.create(&Default::default(), &obj).await.unwrap();
    }
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    create::<ServiceAccount>(client, json!({"metadata": {"name": "reader"}})).await;
    create::<Role>(
        client,
        json!({"metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]}),
    )
    .await;
    create::<RoleBinding>(
        client,
        json!({"metadata": {"name": "reader-reads"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": "default"}]}),
    )
    .await;

    // The CA pods get is their namespace's kube-root-ca.crt (upstream's projected
    // kube-api-access volume sources it there), not the kubelet's own: here a bundle the
    // kubelet's kubeconfig does not hold (the cluster CA after a comment), which still
    // verifies the API server.
    use k8s_openapi::api::core::v1::ConfigMap;
    let ca = std::fs::read_to_string(c.cp.dir.join("pki/ca.crt")).unwrap();
    let published = format!("# kube-root-ca.crt of this test\n{ca}");
    create::<ConfigMap>(
        client,
        json!({"metadata": {"name": "kube-root-ca.crt"}, "data": {"ca.crt": published}}),
    )
    .await;

    // The pod without a token (the account allows it; the pod says no).
    let quiet = create_pod(
        client,
        json!({"metadata": {"name": "no-token"}, "spec": {"nodeName": "n1",
            "serviceAccountName": "reader", "automountServiceAccountToken": false,
            "containers": [{"name": "c", "image": "busybox", "command": ["/bin/busybox", "sh", "-c",
            "if [ -e /var/run/secrets/kubernetes.io/serviceaccount/token ]; then echo has-token; else echo no-token; fi; echo done; exec busybox sleep 3600"]}]}}),
    )
    .await;
    let script = r#"SA=/var/run/secrets/kubernetes.io/serviceaccount
T=$(cat $SA/token)
API=https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT
call() { curl -sS --max-time 10 --cacert $SA/ca.crt -H "Authorization: Bearer $T" "$@"; }
echo "namespace=$(cat $SA/namespace)"
echo "list=$(call -o /dev/null -w '%{http_code}' $API/api/v1/namespaces/default/pods)"
echo "names=$(call $API/api/v1/namespaces/default/pods | grep -o '"name":"no-token"' | head -1)"
echo "other=$(call -o /dev/null -w '%{http_code}' $API/api/v1/namespaces/kube-system/pods)"
echo "delete=$(call -o /dev/null -w '%{http_code}' -X DELETE $API/api/v1/namespaces/default/pods/no-token)"
echo "message=$(call -X DELETE $API/api/v1/namespaces/default/pods/no-token | tr -d '\n')"
echo "anonymous=$(curl -sS --max-time 10 --cacert $SA/ca.crt -o /dev/null -w '%{http_code}' $API/api/v1/namespaces/default/pods)"
if touch $SA/token 2>/dev/null; then echo writable; fi
echo done
exec busybox sleep 3600"#;
    let reader = create_pod(
        client,
        json!({"metadata": {"name": "reader"}, "spec": {"nodeName": "n1",
            "serviceAccountName": "reader",
            "containers": [{"name": "c", "image": "busybox",
                "command": ["/bin/busybox", "sh", "-c", script]}]}}),
    )
    .await;
    let log = |p: &Pod| {
        k.pod_dir(0, p.metadata.uid.as_deref().unwrap())
            .join("logs/c/0.log")
    };
    let (reader_log, quiet_log) = (log(&reader), log(&quiet));
    let finished =
        |l: &std::path::Path| kubelet::read_log(l).is_ok_and(|t| t.lines().any(|l| l == "done"));
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !(finished(&reader_log) && finished(&quiet_log)) {
        if std::time::Instant::now() > deadline {
            let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
            let statuses: Vec<String> = pods
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .iter()
                .map(|p| serde_json::to_string(&p.status).unwrap())
                .collect();
            panic!(
                "the pods' scripts did not finish within 90 s\nreader: {:?}\nno-token: {:?}\nstatuses: {statuses:#?}\nkubelet:\n{}",
                kubelet::read_log(&reader_log),
                kubelet::read_log(&quiet_log),
                tb.log_of(kubelet)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = kubelet::read_log(&reader_log).unwrap();
    let line = |key: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key} in:\n{out}"))
            .to_string()
    };
    assert_eq!(line("namespace"), "default", "{out}");
    assert_eq!(line("list"), "200", "its Role lets it list pods:\n{out}");
    assert_eq!(line("names"), r#""name":"no-token""#, "{out}");
    assert_eq!(line("other"), "403", "not in another namespace:\n{out}");
    assert_eq!(line("delete"), "403", "nor delete:\n{out}");
    let message = line("message");
    assert!(
        message.contains(r#""reason":"Forbidden""#)
            && message.contains(r#""code":403"#)
            && message.contains(r#""message":"pods \"no-token\" is forbidden: User \"system:serviceaccount:default:reader\" cannot delete resource \"pods\" in API group \"\" in the namespace \"default\"""#),
        "upstream's Status and message:\n{out}"
    );
    assert_eq!(line("anonymous"), "401", "{out}");
    assert!(!out.contains("writable"), "the token is read-only:\n{out}");
    let quiet_out = kubelet::read_log(&quiet_log).unwrap();
    assert!(quiet_out.starts_with("no-token"), "{quiet_out}");
    assert!(
        !k.pod_dir(0, quiet.metadata.uid.as_deref().unwrap())
            .join("serviceaccount")
            .exists()
    );
    let projected_ca = std::fs::read_to_string(
        k.pod_dir(0, reader.metadata.uid.as_deref().unwrap())
            .join("serviceaccount/ca.crt"),
    )
    .unwrap();
    assert_eq!(projected_ca, published, "ca.crt from kube-root-ca.crt");
    // The token is bound to its pod, and the account defaulted where none was named.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let token = std::fs::read_to_string(
        k.pod_dir(0, reader.metadata.uid.as_deref().unwrap())
            .join("serviceaccount/token"),
    )
    .unwrap();
    let claims = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, claims).unwrap(),
    )
    .unwrap();
    assert_eq!(claims["kubernetes.io"]["pod"]["name"], "reader");
    assert_eq!(claims["kubernetes.io"]["serviceaccount"]["name"], "reader");
    let ttl = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert_eq!(ttl, 3607, "upstream's projected lifetime");
    let plain = create_pod(
        client,
        json!({"metadata": {"name": "plain"}, "spec": {"nodeName": "n1",
            "containers": [{"name": "c", "image": "busybox", "command": ["/bin/busybox", "sleep", "3600"]}]}}),
    )
    .await;
    assert_eq!(
        plain.spec.unwrap().service_account_name.as_deref(),
        Some("default")
    );
    for name in ["reader", "no-token", "plain"] {
        pods.delete(name, &DeleteParams::default()).await.unwrap();
    }
    netns_testbed::wait_for("the pods to go", Duration::from_secs(60), || {
        k.roots
            .iter()
            .all(|r| std::fs::read_dir(r.join("pods")).map_or(true, |d| d.count() == 0))
    })
    .await;
}

/// Lines of a daemon's log that report a failed attempt to reach the API server.
fn api_retries(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("the API server is not answering; retrying"))
        .count()
}

/// `/readyz`-style answer of a daemon's health listener inside `ns`.
async fn health_of(
    ns: &std::sync::Arc<trellis_net::Netns>,
    port: u16,
    path: &'static str,
) -> (u16, String) {
    let ns = ns.clone();
    tokio::task::spawn_blocking(move || {
        netns_testbed::probe::http_get(
            &ns,
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            path,
        )
    })
    .await
    .unwrap()
    .unwrap_or((0, String::new()))
}

/// `trellis ipamd` for `node` against `cp` with `extra` flags, its socket `<dirs>/ipamd.sock`.
fn spawn_ipamd(
    tb: &Testbed,
    cp: &ControlPlane,
    node: &Node,
    dirs: &std::path::Path,
    extra: &[&str],
) -> i32 {
    std::fs::create_dir_all(dirs).unwrap();
    let trellis = netns_testbed::bin_path("trellis");
    let (sock, cache) = (dirs.join("ipamd.sock"), dirs.join("cache"));
    let mut argv = vec![
        trellis.to_str().unwrap(),
        "ipamd",
        "--node",
        &node.name,
        "--kubeconfig",
        cp.kubeconfig.to_str().unwrap(),
        "--socket",
        sock.to_str().unwrap(),
        "--cni-cache-dir",
        cache.to_str().unwrap(),
        "--gc-interval",
        "0s",
    ];
    argv.extend_from_slice(extra);
    tb.spawn(&node.ns, &argv, Duration::from_secs(600)).unwrap()
}

/// Waits (bounded) until background process `pid` has exited; its log.
async fn wait_exited(tb: &Testbed, pid: i32, what: &str) -> String {
    netns_testbed::wait_for(what, Duration::from_secs(30), || !tb.running(pid)).await;
    tb.log_of(pid)
}

/// A node whose API server is not there yet when its daemons start (it boots first, or the
/// control plane is being restarted): the kubelet, ipamd and the overlay agent keep retrying
/// with back-off, alive and not ready, and stoppable by SIGTERM meanwhile; once the API
/// server is back the Node registers and turns Ready and a pod gets its address from ipamd.
/// Negative control: with `--api-wait-timeout 0` the kubelet and ipamd give up at the first
/// refused connection (what both did before, and how `up --control-plane 3` lost a node).
#[tokio::test(flavor = "multi_thread")]
async fn daemons_wait_for_an_api_server_that_is_not_there_yet() {
    netns_testbed::require_root();
    netns_testbed::require_tool("busybox", "busybox-static");
    netns_testbed::require_tool("iptables-restore", "iptables");
    let tb = Testbed::new().unwrap();
    let mut cp = ControlPlane::start(&tb, "cp", 1).await.unwrap();
    let client = overlay_cluster::kube_client(&cp.local_kubeconfig).await;
    // The pool (and the IPAM CRDs) exist from an earlier life of the cluster.
    netns_testbed::cluster::create_pool(
        &tb,
        &cp,
        "overlay",
        &[
            "--cidr",
            "10.244.0.0/16",
            "--block-size",
            "24",
            "--reserve-head",
            "2",
            "--reserve-tail",
            "1",
            "--gateway",
        ],
    )
    .await
    .unwrap();
    let n1 = tb.add_node("n1", 2).await.unwrap();
    let n2 = tb.add_node("n2", 3).await.unwrap();
    let (d1, d2) = (tb.state_dir().join("n1"), tb.state_dir().join("n2"));
    cp.stop(&tb).await.unwrap();

    // n1: ipamd, the overlay agent and the kubelet start with nothing listening at the API
    // server's address.
    let ipamd = spawn_ipamd(&tb, &cp, &n1, &d1, &["--metrics-listen", "127.0.0.1:9612"]);
    let agent =
        overlay_cluster::start_agent_args(&tb, &cp, &n1, &d1, overlay_cluster::Blocks::Ipamd, &[]);
    let mut k = Kubelets::new(&tb);
    let kubelet = k.start(&tb, &cp, &n1, &d1, "net.d");
    let daemons = [
        ("ipamd", ipamd),
        ("overlay agent", agent),
        ("kubelet", kubelet),
    ];
    // The scheduler (a watch-based daemon, waiting to lead): its watches and leader election
    // retry too.
    let scheduler = cp
        .start_component(&tb, "scheduler", "system:kube-scheduler", None, 10259, &[])
        .unwrap();
    netns_testbed::wait_for(
        "three failed attempts of each daemon",
        Duration::from_secs(60),
        || {
            daemons.iter().all(|(what, pid)| {
                let log = tb.log_of(*pid);
                assert!(
                    tb.running(*pid),
                    "the {what} ended while the API server was away:\n{log}"
                );
                api_retries(&log) >= 3
            })
        },
    )
    .await;
    netns_testbed::wait_for("the scheduler's retries", Duration::from_secs(60), || {
        let log = tb.log_of(scheduler);
        assert!(tb.running(scheduler), "the scheduler ended:\n{log}");
        log.lines().filter(|l| l.contains("retrying")).count() >= 3
    })
    .await;
    assert_eq!(health_of(&cp.node.ns, 10259, "/readyz").await.0, 503);
    // Alive, not ready, and saying why.
    let (code, body) = health_of(&n1.ns, 10248, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("waiting for the API server"), "{body}");
    assert_eq!(health_of(&n1.ns, 10248, "/healthz").await.0, 200);
    let (code, body) = health_of(&n1.ns, 9612, "/healthz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("waiting for the datastore"), "{body}");
    assert_eq!(health_of(&n1.ns, 9612, "/livez").await.0, 200);
    assert_eq!(health_of(&n1.ns, 9910, "/readyz").await.0, 503);
    assert!(
        !d1.join("ipamd.sock").exists(),
        "no socket before the blocks are loaded"
    );

    // n2: SIGTERM ends a waiting kubelet and a waiting ipamd cleanly.
    let waiting_ipamd = spawn_ipamd(&tb, &cp, &n2, &d2, &[]);
    let waiting_kubelet = k.start(&tb, &cp, &n2, &d2, "net.d");
    netns_testbed::wait_for("n2's daemons to retry", Duration::from_secs(60), || {
        [waiting_ipamd, waiting_kubelet]
            .iter()
            .all(|p| api_retries(&tb.log_of(*p)) >= 2)
    })
    .await;
    for pid in [waiting_ipamd, waiting_kubelet] {
        tb.signal(pid, nix::sys::signal::Signal::SIGTERM);
    }
    let log = wait_exited(&tb, waiting_ipamd, "ipamd to stop on SIGTERM").await;
    assert!(
        log.contains("stopped before the datastore answered"),
        "{log}"
    );
    let log = wait_exited(&tb, waiting_kubelet, "the kubelet to stop on SIGTERM").await;
    assert!(
        log.contains("stopping before the Node was registered"),
        "{log}"
    );

    // The negative control: no waiting (--api-wait-timeout 0), and both end at once.
    let quitter_ipamd = spawn_ipamd(&tb, &cp, &n2, &d2, &["--api-wait-timeout", "0"]);
    let quitter_kubelet = k.start_with(&tb, &cp, &n2, &d2, "net.d", &["--api-wait-timeout", "0"]);
    for (what, pid) in [("ipamd", quitter_ipamd), ("kubelet", quitter_kubelet)] {
        let log = wait_exited(&tb, pid, &format!("the {what} without waiting to give up")).await;
        assert!(log.contains("did not answer within"), "{what}:\n{log}");
    }

    // The API server comes (back): the Node registers and turns Ready, the agent claims its
    // block through ipamd, and a pod gets an address from it.
    cp.restart(&tb).await.unwrap();
    wait_node_ready(&client, "n1").await;
    for (what, pid) in daemons {
        let log = tb.log_of(pid);
        assert!(tb.running(pid), "the {what} ended:\n{log}");
    }
    assert!(
        tb.log_of(kubelet)
            .contains("the API server answered; going on"),
        "{}",
        tb.log_of(kubelet)
    );
    let (code, body) = health_of(&n1.ns, 9612, "/healthz").await;
    assert_eq!(code, 200, "{body}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while health_of(&cp.node.ns, 10259, "/readyz").await.0 != 200 {
        assert!(
            std::time::Instant::now() < deadline && tb.running(scheduler),
            "the scheduler never became ready:\n{}",
            tb.log_of(scheduler)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    create_pod(
        &client,
        json!({"metadata": {"name": "late"}, "spec": {"nodeName": "n1",
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": "busybox", "command": ["/bin/busybox", "sleep", "3600"]}]}}),
    )
    .await;
    let p = wait_pod(
        &client,
        "late",
        Duration::from_secs(60),
        "Running with an address",
        running,
    )
    .await;
    let ip: std::net::Ipv4Addr = p["status"]["podIP"].as_str().unwrap().parse().unwrap();
    let pool: Ipv4Net = "10.244.0.0/16".parse().unwrap();
    assert!(pool.contains(&ip), "{ip} comes from the pool");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.delete("late", &DeleteParams::default()).await.unwrap();
    netns_testbed::wait_for("the pod to go", Duration::from_secs(60), || {
        std::fs::read_dir(k.roots[0].join("pods")).map_or(true, |d| d.count() == 0)
    })
    .await;
}
