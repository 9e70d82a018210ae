//! Issue 17, the image the deploy/ manifests run: `trellis image build` makes it from the
//! freshly built trellis binary and this machine's tools (twice: the same bytes, the same
//! digest), `trellis image import` loads it into a private containerd 1.6, and a real kubelet
//! (containerd runtime) runs hostNetwork pods from it as the agents' DaemonSets do: `trellis
//! --version`, then, privileged with hostPath volumes, iptables (legacy and nft), ipset, nft and
//! ip in the node's namespace — with the negative controls that the same iptables call without
//! `privileged` is refused (no CAP_NET_ADMIN) and that `ip` finds no file where no hostPath
//! volume is mounted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/kubelet.rs"]
mod kubelet;
#[path = "support/overlay_cluster.rs"]
mod overlay_cluster;

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::DeleteParams;
use serde_json::json;

use kubelet::{Kubelets, create_pod, read_log, wait_node_ready, wait_pod};
use netns_testbed::bin_path;
use netns_testbed::containerd::Containerd;

/// The containerd namespace of the test's kubelet.
const NS: &str = "trellis";
/// The name the image is built and imported under, and pods run.
const IMAGE: &str = "trellis.test/trellis:t1";

/// `trellis image build` of the test's trellis binary into `out`: its output.
async fn build(out: &Path) -> std::process::Output {
    let trellis = bin_path("trellis");
    let o = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new(&trellis)
            .args(["image", "build", "--binary"])
            .arg(&trellis)
            .arg("--out")
            .arg(out)
            .args(["--tag", IMAGE])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("trellis image build within 300 s")
    .unwrap();
    assert!(
        o.status.success(),
        "trellis image build: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Every container of the pod has terminated.
fn all_terminated(p: &serde_json::Value) -> bool {
    p["status"]["containerStatuses"]
        .as_array()
        .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c["state"]["terminated"].is_object()))
}

/// Container `name`'s exit code and log.
fn result_of(k: &Kubelets, p: &serde_json::Value, name: &str) -> (i64, String) {
    let cs = p["status"]["containerStatuses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap();
    let code = cs["state"]["terminated"]["exitCode"].as_i64().unwrap();
    let uid = p["metadata"]["uid"].as_str().unwrap();
    let log = read_log(&k.pod_dir(0, uid).join(format!("logs/{name}/0.log"))).unwrap_or_default();
    (code, log)
}

/// A hostNetwork pod on `node` whose containers run once each, from the image.
fn pod(
    name: &str,
    node: &str,
    privileged: bool,
    host_dir: &Path,
    lock: &Path,
) -> serde_json::Value {
    let c = |cname: &str, cmd: &[&str]| {
        json!({"name": cname, "image": IMAGE, "command": cmd,
        "securityContext": {"privileged": privileged},
        "volumeMounts": [
            {"name": "host", "mountPath": "/host", "readOnly": true},
            {"name": "xtables-lock", "mountPath": "/run/xtables.lock"},
        ]})
    };
    json!({"metadata": {"name": name}, "spec": {"nodeName": node, "hostNetwork": true,
    "restartPolicy": "Never", "terminationGracePeriodSeconds": 2,
    "containers": [
        c("legacy", &["iptables-legacy", "-w", "-L", "-n"]),
        c("nft-backend", &["iptables-nft", "-L", "-n"]),
        c("ipset", &["ipset", "list", "-n"]),
        c("nft", &["nft", "list", "tables"]),
        // ip reads its commands from the hostPath volume: the bind mount works.
        c("ip", &["ip", "-batch", "/host/ip-commands"]),
    ],
    "volumes": [
        {"name": "host", "hostPath": {"path": host_dir, "type": "Directory"}},
        {"name": "xtables-lock", "hostPath": {"path": lock, "type": "FileOrCreate"}},
    ]}})
}

#[tokio::test(flavor = "multi_thread")]
async fn the_image_builds_reproducibly_and_runs_the_agents_tools_under_the_kubelet() {
    let c = overlay_cluster::Cluster::start(1).await;
    let tb = &c.tb;
    let w = &c.workers[0];

    // Built twice from the same inputs: the same archive, byte for byte, and digest.
    let dir = tb.state_dir().join("image");
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b) = (dir.join("a.tar"), dir.join("b.tar"));
    let out_a = build(&a).await;
    let out_b = build(&b).await;
    let first = |o: &std::process::Output| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let (name, digest) = first(&out_a)
        .split_once(' ')
        .map(|(n, d)| (n.to_string(), d.to_string()))
        .unwrap();
    assert_eq!(name, IMAGE);
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );
    assert_eq!(first(&out_a), first(&out_b), "the same digest twice");
    assert!(
        std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
        "the same archive twice"
    );

    // Imported into containerd under its own name.
    let ctrd = Containerd::start(tb).await.unwrap();
    let sock = ctrd.socket().display().to_string();
    let trellis = bin_path("trellis");
    let out = tb
        .exec(
            &w.node.ns,
            &[
                trellis.to_str().unwrap(),
                "image",
                "import",
                a.to_str().unwrap(),
                "--address",
                &sock,
                "--namespace",
                NS,
            ],
            Duration::from_secs(120),
        )
        .await
        .unwrap();
    assert!(
        out.success() && out.stdout.contains(IMAGE) && out.stdout.contains(&digest),
        "{out:?}"
    );
    let ls = ctrd.ctr(&["-n", NS, "images", "ls"]).await.unwrap();
    assert!(
        ls.stdout.contains(IMAGE) && ls.stdout.contains(&digest),
        "{ls:?}"
    );
    // containerd's own client takes the same archive (another containerd namespace).
    let other = ctrd
        .ctr(&["-n", "ctr-import", "images", "import", a.to_str().unwrap()])
        .await
        .unwrap();
    assert!(other.success(), "ctr images import: {other:?}");
    let ls = ctrd
        .ctr(&["-n", "ctr-import", "images", "ls"])
        .await
        .unwrap();
    assert!(
        ls.stdout.contains(IMAGE) && ls.stdout.contains(&digest),
        "{ls:?}"
    );

    // A kubelet with the containerd runtime runs pods from it.
    let mut k = Kubelets::new(tb);
    let extra = [
        "--runtime",
        "containerd",
        "--containerd-address",
        &sock,
        "--containerd-namespace",
        NS,
    ];
    k.start_with(tb, &c.cp, &w.node, &w.dirs, "net.d", &extra);
    wait_node_ready(&c.client, &w.node.name).await;

    let host_dir = dir.join("host");
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("ip-commands"), "link show lo\n").unwrap();
    create_pod(
        &c.client,
        json!({"metadata": {"name": "version"}, "spec": {"nodeName": w.node.name,
        "hostNetwork": true, "restartPolicy": "Never",
        "containers": [
            {"name": "trellis", "image": IMAGE, "command": ["trellis", "--version"]},
            // Negative control for the hostPath mount below: without it, no such file.
            {"name": "ip", "image": IMAGE, "command": ["ip", "-batch", "/host/ip-commands"]},
        ]}}),
    )
    .await;
    let p = wait_pod(
        &c.client,
        "version",
        Duration::from_secs(90),
        "terminated",
        all_terminated,
    )
    .await;
    let (code, log) = result_of(&k, &p, "trellis");
    assert_eq!(code, 0, "trellis --version: {log}");
    assert!(log.starts_with("trellis "), "{log}");
    let (code, log) = result_of(&k, &p, "ip");
    assert_ne!(code, 0, "no hostPath volume, no file: {log}");

    // The agents' tools, privileged, with hostPath volumes; and without privileged.
    let lock = dir.join("lock/xtables.lock");
    create_pod(
        &c.client,
        pod("tools", &w.node.name, true, &host_dir, &lock),
    )
    .await;
    create_pod(
        &c.client,
        pod("unprivileged", &w.node.name, false, &host_dir, &lock),
    )
    .await;
    let p = wait_pod(
        &c.client,
        "tools",
        Duration::from_secs(120),
        "terminated",
        all_terminated,
    )
    .await;
    for (cname, expect) in [
        ("legacy", "Chain INPUT"),
        ("nft-backend", "Chain INPUT"),
        ("ipset", ""),
        ("nft", ""),
        ("ip", "lo:"),
    ] {
        let (code, log) = result_of(&k, &p, cname);
        assert_eq!(code, 0, "{cname} (privileged): {log}");
        assert!(log.contains(expect), "{cname}: {log}");
    }
    assert!(lock.is_file(), "FileOrCreate made the lock file");
    let p = wait_pod(
        &c.client,
        "unprivileged",
        Duration::from_secs(120),
        "terminated",
        all_terminated,
    )
    .await;
    let (code, log) = result_of(&k, &p, "legacy");
    assert_ne!(code, 0, "without privileged iptables is refused: {log}");
    assert!(
        log.contains("Permission denied") || log.contains("must be root"),
        "{log}"
    );
    let (code, log) = result_of(&k, &p, "ip");
    assert_eq!(code, 0, "the hostPath mount needs no privilege: {log}");

    let api: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    for name in ["version", "tools", "unprivileged"] {
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }
    for name in ["version", "tools", "unprivileged"] {
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
