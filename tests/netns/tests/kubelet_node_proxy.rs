//! Issue 14, `nodes/{name}/proxy` and the kubelet's serving-certificate rotation.
//!
//! - `kubectl get --raw /api/v1/nodes/n1/proxy/{healthz,pods,stats/summary,metrics}` (and
//!   `nodes/n1:10250/proxy/...`) through the API server to the kubelet's HTTPS port, with the
//!   image's kubectl and kubectl 1.20; a user without `nodes/proxy` and nodes (another, and
//!   the node itself) get 403, a ClusterRole with `get nodes/proxy` lets the user through.
//! - A short-lived serving certificate from the cluster CA is renewed by the kubelet (its renew
//!   command re-issues the files) at its deadline: a TLS handshake sees a new serial and
//!   notAfter while a `kubectl logs -f` keeps streaming, and the API server, which checks the
//!   kubelet's certificate against the CA, still reaches it after the first one expired. The
//!   negative control, rotation off: the first certificate stays (also when its files change)
//!   and, expired, the API server refuses it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/kubelet.rs"]
mod kubelet;
#[path = "support/overlay_cluster.rs"]
mod overlay_cluster;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncBufReadExt;

use kubelet::{Kubelets, create_pod, wait_node_ready, wait_pod};
use netns_testbed::bin_path;
use netns_testbed::cluster::kubectl;

const KUBECTL_1_20: &str = "/opt/trellis/kubectl-1.20/usr/bin/kubectl";

fn kubectl_1_20() -> PathBuf {
    let bin = PathBuf::from(KUBECTL_1_20);
    assert!(
        bin.is_file(),
        "{KUBECTL_1_20} is missing (Debian's kubernetes-client 1.20, unpacked there)"
    );
    bin
}

fn running(p: &serde_json::Value) -> bool {
    p["status"]["phase"] == "Running"
}

/// `kubectl apply` of `yaml` as the admin.
async fn apply(tb: &netns_testbed::Testbed, bin: &Path, kc: &Path, name: &str, yaml: &str) {
    let f = tb.state_dir().join(name);
    std::fs::write(&f, yaml).unwrap();
    let (code, _, err) = kubectl(bin, kc, &["apply", "-f", f.to_str().unwrap()]).await;
    assert_eq!(code, 0, "apply {name}: {err}");
}

/// A pod printing line-1..3, then line-N once `<marks>/go-N` exists.
fn chatty(marks: &Path) -> serde_json::Value {
    let script = format!(
        "echo line-1; echo line-2; echo line-3; n=4; while true; do if [ -e {m}/go-$n ]; then echo line-$n; n=$((n+1)); fi; busybox sleep 0.1; done",
        m = marks.display()
    );
    json!({"metadata": {"name": "chatty"}, "spec": {"nodeName": "n1",
        "containers": [{"name": "talk", "image": "busybox",
            "command": ["/bin/busybox", "sh", "-c", script]}]}})
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_proxy_reaches_the_kubelet_with_both_kubectls_and_only_with_the_right() {
    netns_testbed::require_tool("busybox", "busybox-static");
    let kubectl_new = netns_testbed::require_tool("kubectl", "kubectl (the image's own)");
    let kubectl_old = kubectl_1_20();
    let c = overlay_cluster::Cluster::start(1).await;
    let w = &c.workers[0];
    let mut k = Kubelets::new(&c.tb);
    let kubelet_pid = k.start(&c.tb, &c.cp, &w.node, &w.dirs, "net.d");
    wait_node_ready(&c.client, &w.node.name).await;
    let (tb, cp, client) = (&c.tb, &c.cp, &c.client);
    let kc = cp.write_local_kubeconfig(tb).unwrap();
    let marks = tb.state_dir().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    create_pod(client, chatty(&marks)).await;
    wait_pod(
        client,
        "chatty",
        Duration::from_secs(60),
        "Running",
        running,
    )
    .await;

    for bin in [&kubectl_new, &kubectl_old] {
        let name = bin.display();
        let raw = |path: &'static str| {
            let kc = kc.clone();
            async move { kubectl(bin, &kc, &["get", "--raw", path]).await }
        };
        let (code, out, err) = raw("/api/v1/nodes/n1/proxy/healthz").await;
        assert_eq!((code, out.as_str()), (0, "ok"), "{name}: {err}");
        // With the kubelet's port named, as metrics-server and Prometheus address it.
        let (code, out, err) = raw("/api/v1/nodes/n1:10250/proxy/healthz").await;
        assert_eq!((code, out.as_str()), (0, "ok"), "{name}: {err}");
        let (code, out, err) = raw("/api/v1/nodes/n1/proxy/pods").await;
        assert_eq!(code, 0, "{name}: {err}");
        let pods: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(pods["kind"], "PodList", "{name}: {out}");
        let names: Vec<&str> = pods["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["metadata"]["name"].as_str())
            .collect();
        assert!(names.contains(&"chatty"), "{name}: {names:?}");
        let (code, out, err) = raw("/api/v1/nodes/n1/proxy/stats/summary").await;
        assert_eq!(code, 0, "{name}: {err}");
        let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(summary["node"]["nodeName"], "n1", "{name}: {out}");
        assert!(
            summary["pods"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["podRef"]["name"] == "chatty"),
            "{name}: {out}"
        );
        let (code, out, err) = raw("/api/v1/nodes/n1/proxy/metrics").await;
        assert_eq!(code, 0, "{name}: {err}");
        assert!(
            out.contains("# TYPE kubelet_running_pods gauge"),
            "{name}: {out}"
        );
        // The kubelet's own 404 comes back as it is.
        let (code, _, err) = raw("/api/v1/nodes/n1/proxy/nope").await;
        assert_ne!(code, 0);
        assert!(
            err.contains("NotFound") || err.contains("404"),
            "{name}: {err}"
        );
        // A node that is not there.
        let (code, _, err) = raw("/api/v1/nodes/n7/proxy/healthz").await;
        assert_ne!(code, 0);
        assert!(err.contains(r#"nodes "n7" not found"#), "{name}: {err}");
    }

    // Not for everyone: jane (her own certificate, no role) and another node get 403.
    let jane = tb.state_dir().join("jane.kubeconfig");
    cp.issue_kubeconfig("jane", &[], &cp.relay_server().unwrap(), &jane)
        .unwrap();
    let n9 = tb.state_dir().join("n9.kubeconfig");
    cp.issue_kubeconfig(
        "system:node:n9",
        &["system:nodes"],
        &cp.relay_server().unwrap(),
        &n9,
    )
    .unwrap();
    let n1 = tb.state_dir().join("n1.kubeconfig");
    cp.issue_kubeconfig(
        "system:node:n1",
        &["system:nodes"],
        &cp.relay_server().unwrap(),
        &n1,
    )
    .unwrap();
    for bin in [&kubectl_new, &kubectl_old] {
        for (who, user) in [
            (&jane, "jane"),
            (&n9, "system:node:n9"),
            (&n1, "system:node:n1"),
        ] {
            let (code, out, err) =
                kubectl(bin, who, &["get", "--raw", "/api/v1/nodes/n1/proxy/pods"]).await;
            assert_ne!(code, 0, "{out}");
            let want = format!(
                r#"nodes "n1" is forbidden: User "{user}" cannot get resource "nodes/proxy" in API group "" at the cluster scope"#
            );
            assert!(err.contains(&want), "{}: {err}", bin.display());
            assert!(!out.contains("chatty"), "{out}");
        }
        // Reading the Node itself stays allowed to the node (the negative control of the
        // 403 above being about nodes/proxy only).
        let (code, _, err) = kubectl(bin, &n9, &["get", "--raw", "/api/v1/nodes/n1"]).await;
        assert_eq!(code, 0, "{err}");
    }
    apply(
        tb,
        &kubectl_new,
        &kc,
        "node-proxy.yaml",
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: node-proxy-reader}
rules: [{apiGroups: [""], resources: ["nodes/proxy"], verbs: ["get"]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: jane-node-proxy}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: node-proxy-reader}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: jane}]
"#,
    )
    .await;
    for bin in [&kubectl_new, &kubectl_old] {
        let (code, out, err) =
            kubectl(bin, &jane, &["get", "--raw", "/api/v1/nodes/n1/proxy/pods"]).await;
        assert_eq!(code, 0, "{}: with the role: {err}", bin.display());
        assert!(out.contains("chatty"), "{out}");
    }
    assert!(tb.running(kubelet_pid), "{}", tb.log_of(kubelet_pid));
    drop(k);
}

/// The serial and notAfter of the certificate the kubelet at `addr` serves now (a handshake
/// from the control plane's namespace).
async fn served(tb: &netns_testbed::Testbed, ns: &trellis_net::Netns, addr: &str) -> String {
    let script = format!(
        "openssl s_client -connect {addr} </dev/null 2>/dev/null | openssl x509 -noout -serial -enddate"
    );
    tb.exec_ok(ns, &["sh", "-c", &script], Duration::from_secs(20))
        .await
        .unwrap()
        .trim()
        .to_string()
}

/// The serial and notAfter of the certificate in `file`, as [`served`] prints them.
fn on_disk(file: &Path) -> String {
    let o = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-enddate", "-in"])
        .arg(file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The notAfter of a certificate, unix seconds, from [`served`]'s text.
fn not_after(text: &str) -> i64 {
    let date = text
        .lines()
        .find_map(|l| l.strip_prefix("notAfter="))
        .unwrap_or_else(|| panic!("no notAfter in {text:?}"));
    let o = std::process::Command::new("date")
        .args(["-u", "+%s", "-d", date])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
}

/// Reads lines into `seen` until `want` (≤30 s); whether it came.
async fn until(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    seen: &mut Vec<String>,
    want: &str,
) -> bool {
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            let done = l == want;
            seen.push(l);
            if done {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false)
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// Starts one node whose kubelet serves a `lifetime`-second certificate from the CA with a
/// renew command re-issuing it, rotation on or off; the chatty pod running.
async fn rotating_node(
    rotate: bool,
    lifetime: u64,
) -> (
    overlay_cluster::Cluster,
    Kubelets,
    i32,
    PathBuf,
    PathBuf,
    String,
) {
    let c = overlay_cluster::Cluster::start(1).await;
    let w = &c.workers[0];
    std::fs::create_dir_all(&w.dirs).unwrap();
    let (crt, key) = (w.dirs.join("rot.crt"), w.dirs.join("rot.key"));
    let issue = format!(
        "{} certs serving --data-dir {} --node n1 --ip {} --cert-out {} --key-out {} --lifetime-seconds {lifetime}",
        bin_path("trellis").display(),
        c.cp.dir.display(),
        w.node.ip,
        crt.display(),
        key.display()
    );
    let o = std::process::Command::new("sh")
        .args(["-c", &issue])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let mut k = Kubelets::new(&c.tb);
    let rotate_flag = format!("--rotate-server-certificates={rotate}");
    let pid = k.start_with(
        &c.tb,
        &c.cp,
        &w.node,
        &w.dirs,
        "net.d",
        &[
            "--tls-cert-file",
            crt.to_str().unwrap(),
            "--tls-private-key-file",
            key.to_str().unwrap(),
            "--serving-cert-renew-command",
            &issue,
            "--serving-cert-check-ms",
            "200",
            &rotate_flag,
        ],
    );
    wait_node_ready(&c.client, &w.node.name).await;
    let marks = c.tb.state_dir().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    create_pod(&c.client, chatty(&marks)).await;
    wait_pod(
        &c.client,
        "chatty",
        Duration::from_secs(60),
        "Running",
        running,
    )
    .await;
    let kc = c.cp.write_local_kubeconfig(&c.tb).unwrap();
    (c, k, pid, kc, crt, issue)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_serving_certificate_is_renewed_while_a_followed_log_streams() {
    netns_testbed::require_tool("busybox", "busybox-static");
    netns_testbed::require_tool("openssl", "openssl");
    let kubectl_new = netns_testbed::require_tool("kubectl", "kubectl (the image's own)");
    let (c, k, pid, kc, crt, _) = rotating_node(true, 8).await;
    let (tb, cp) = (&c.tb, &c.cp);
    let addr = format!("{}:10250", c.workers[0].node.ip);
    let first = on_disk(&crt);
    let first_expiry = not_after(&first);
    let marks = tb.state_dir().join("marks");

    // kubectl logs -f, the stream open through the API server to the kubelet.
    let mut child = tokio::process::Command::new(&kubectl_new)
        .arg("--kubeconfig")
        .arg(&kc)
        .args(["logs", "-f", "chatty"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    assert!(
        until(&mut lines, &mut seen, "line-3").await,
        "logs -f started"
    );

    // A handshake now, and one after the deadline: another certificate, later notAfter.
    let before = served(tb, &cp.node.ns, &addr).await;
    let mut after = before.clone();
    for _ in 0..150 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = served(tb, &cp.node.ns, &addr).await;
        if after != before {
            break;
        }
    }
    assert_ne!(
        after,
        before,
        "renewed within 30 s (8 s certificates); kubelet:\n{}",
        tb.log_of(pid)
    );
    assert!(not_after(&after) > not_after(&before), "{before} → {after}");
    assert!(
        tb.log_of(pid)
            .contains("kubelet serving certificate rotated"),
        "{}",
        tb.log_of(pid)
    );

    // The followed log still streams: a line printed now arrives on the same connection.
    std::fs::write(marks.join("go-4"), "").unwrap();
    assert!(
        until(&mut lines, &mut seen, "line-4").await,
        "logs -f after the rotation: {seen:?}"
    );
    assert_eq!(&seen[..4], ["line-1", "line-2", "line-3", "line-4"]);

    // Past the first certificate's expiry the API server (which checks the kubelet's
    // certificate against the cluster CA) still reaches the kubelet.
    while now() <= first_expiry + 1 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, out, err) = kubectl(&kubectl_new, &kc, &["logs", "chatty", "--tail=1"]).await;
    assert_eq!((code, out.as_str()), (0, "line-4\n"), "{err}");
    let (code, out, err) = kubectl(
        &kubectl_new,
        &kc,
        &["get", "--raw", "/api/v1/nodes/n1/proxy/healthz"],
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "ok"), "{err}");
    let _ = child.kill().await;
    assert!(tb.running(pid), "{}", tb.log_of(pid));
    drop(k);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_rotation_the_first_certificate_stays_and_expires() {
    netns_testbed::require_tool("busybox", "busybox-static");
    netns_testbed::require_tool("openssl", "openssl");
    let kubectl_new = netns_testbed::require_tool("kubectl", "kubectl (the image's own)");
    let (c, k, pid, kc, crt, issue) = rotating_node(false, 6).await;
    let (tb, cp) = (&c.tb, &c.cp);
    let addr = format!("{}:10250", c.workers[0].node.ip);
    let first = on_disk(&crt);
    let expiry = not_after(&first);
    // Files re-issued on disk: not picked up either.
    let o = std::process::Command::new("sh")
        .args(["-c", &issue])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    assert_ne!(on_disk(&crt), first);
    while now() <= expiry + 1 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(served(tb, &cp.node.ns, &addr).await, first);
    // Expired, the API server refuses it: kubectl logs says why.
    let (code, _, err) = kubectl(&kubectl_new, &kc, &["logs", "chatty"]).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("certificate has expired or is not yet valid"),
        "{err}"
    );
    assert!(
        !tb.log_of(pid)
            .contains("kubelet serving certificate rotated"),
        "{}",
        tb.log_of(pid)
    );
    drop(k);
}
