//! Issue 14, logs and stats as kubectl and metrics readers see them: `kubectl logs` (plain,
//! `--tail`, `-f` seeing a new line, `-c`, container defaulting) through the API server's
//! pods/log proxy to the kubelet's HTTPS API, with the image's kubectl and kubectl 1.20; a user
//! without `get pods/log` gets upstream's 403 and, once a Role grants it, the log; a caller
//! without a client certificate gets 401 from the kubelet; `/stats/summary` shows a busy pod's
//! CPU rising.

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
use netns_testbed::cluster::kubectl;
use netns_testbed::kubectl_session::{self, kubectl_1_20, read_until};

fn running(p: &serde_json::Value) -> bool {
    p["status"]["phase"] == "Running"
}

/// Waits ≤60 s for pod `name` to run; the kubelet's log if it does not.
async fn wait_running(
    tb: &netns_testbed::Testbed,
    client: &kube::Client,
    name: &str,
    kubelet_pid: i32,
) -> serde_json::Value {
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client.clone(), "default");
    let mut last = serde_json::Value::Null;
    for _ in 0..600 {
        if let Ok(p) = pods.get(name).await {
            last = serde_json::to_value(&p).unwrap();
            if running(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{name} not Running in 60 s: {:#}; kubelet:\n{}",
        last["status"],
        tb.log_of(kubelet_pid)
    );
}

/// `kubectl logs -f`: the lines so far, then the line that `touch <go>` makes the pod print.
async fn follow(bin: &Path, kc: &Path, go: &Path, want: &str) {
    let mut child = tokio::process::Command::new(bin)
        .arg("--kubeconfig")
        .arg(kc)
        .args(["logs", "-f", "chatty"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let read = async {
        while let Some(l) = lines.next_line().await.unwrap() {
            let done = l == want;
            if l == "line-3" {
                std::fs::write(go, "").unwrap();
            }
            seen.push(l);
            if done {
                return;
            }
        }
    };
    let ok = tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .is_ok();
    let _ = child.kill().await;
    assert!(
        ok,
        "{}: logs -f shows {want} after it is printed; saw {seen:?}",
        bin.display()
    );
    assert_eq!(&seen[..3], ["line-1", "line-2", "line-3"], "{seen:?}");
}

/// jane may get and list pods in default.
const POD_GETTER: &str = r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pod-getter, namespace: default}
rules: [{apiGroups: [""], resources: ["pods"], verbs: ["get", "list"]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: jane-gets-pods, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-getter}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: jane}]
"#;

/// A kubeconfig for user `jane` (no groups) from the cluster CA, through the test's relay.
fn jane_kubeconfig(
    tb: &netns_testbed::Testbed,
    cp: &netns_testbed::cluster::ControlPlane,
) -> PathBuf {
    let jane = tb.state_dir().join("jane.kubeconfig");
    cp.issue_kubeconfig("jane", &[], &cp.relay_server().unwrap(), &jane)
        .unwrap();
    jane
}

/// One overlay node with a kubelet (started with `extra` flags) and Ready, and the admin
/// kubeconfig for the test's own namespace: what every test here starts from.
struct OneNode {
    // Dropped first: the pods' processes and namespaces go before the cluster.
    k: Kubelets,
    kubelet_pid: i32,
    kc: PathBuf,
    c: overlay_cluster::Cluster,
}

async fn one_node(extra: &[&str]) -> OneNode {
    let c = overlay_cluster::Cluster::start(1).await;
    let w = &c.workers[0];
    let mut k = Kubelets::new(&c.tb);
    let kubelet_pid = k.start_with(&c.tb, &c.cp, &w.node, &w.dirs, "net.d", extra);
    wait_node_ready(&c.client, &w.node.name).await;
    let kc = c.cp.write_local_kubeconfig(&c.tb).unwrap();
    OneNode {
        k,
        kubelet_pid,
        kc,
        c,
    }
}

/// `kubectl apply` of `yaml` as the admin.
async fn apply(tb: &netns_testbed::Testbed, bin: &Path, kc: &Path, name: &str, yaml: &str) {
    let f = tb.state_dir().join(name);
    std::fs::write(&f, yaml).unwrap();
    let (code, _, err) = kubectl(bin, kc, &["apply", "-f", f.to_str().unwrap()]).await;
    assert_eq!(code, 0, "apply {name}: {err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_logs_through_the_api_server_with_both_kubectls() {
    netns_testbed::require_tool("busybox", "busybox-static");
    let curl = netns_testbed::require_tool("curl", "curl");
    let kubectl_new = netns_testbed::require_tool("kubectl", "kubectl (the image's own)");
    let kubectl_old = kubectl_1_20();
    let n = one_node(&[]).await;
    let (tb, cp, client) = (&n.c.tb, &n.c.cp, &n.c.client);
    let w = &n.c.workers[0];
    let (kubelet_pid, kc) = (n.kubelet_pid, &n.kc);

    let marks = tb.state_dir().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let script = format!(
        "echo line-1; echo line-2; echo line-3; n=4; while true; do if [ -e {m}/go-$n ]; then echo line-$n; n=$((n+1)); fi; busybox sleep 0.1; done",
        m = marks.display()
    );
    create_pod(
        client,
        json!({"metadata": {"name": "chatty"}, "spec": {"nodeName": "n1",
            "containers": [{"name": "talk", "image": "busybox",
                "command": ["/bin/busybox", "sh", "-c", script]}]}}),
    )
    .await;
    create_pod(
        client,
        json!({"metadata": {"name": "pair"}, "spec": {"nodeName": "n1",
            "containers": [
                {"name": "a", "image": "busybox", "command": ["/bin/busybox", "sh", "-c", "echo from-a; exec busybox sleep 3600"]},
                {"name": "b", "image": "busybox", "command": ["/bin/busybox", "sh", "-c", "echo from-b; exec busybox sleep 3600"]}]}}),
    )
    .await;
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client.clone(), "default");
    for name in ["chatty", "pair"] {
        let mut up = false;
        for _ in 0..600 {
            if let Ok(p) = pods.get(name).await
                && running(&serde_json::to_value(&p).unwrap())
            {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            up,
            "{name} not Running in 60 s; kubelet:\n{}",
            tb.log_of(kubelet_pid)
        );
    }

    for bin in [&kubectl_new, &kubectl_old] {
        let name = bin.display();
        // The first lines are there once the container printed them.
        let mut last = (0, String::new(), String::new());
        for _ in 0..100 {
            last = kubectl(bin, kc, &["logs", "chatty"]).await;
            if last.1.starts_with("line-1\nline-2\nline-3\n") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(last.0, 0, "{name}: logs: {last:?}");
        assert!(
            last.1.starts_with("line-1\nline-2\nline-3\n"),
            "{name}: {last:?}"
        );
        let (code, out, err) = kubectl(bin, kc, &["logs", "chatty", "--tail=1"]).await;
        assert_eq!(
            (code, out.lines().count()),
            (0, 1),
            "{name}: --tail=1: {out}{err}"
        );
        assert!(out.starts_with("line-"), "{name}: {out}");
        let (code, out, err) = kubectl(bin, kc, &["logs", "chatty", "--limit-bytes=8"]).await;
        assert_eq!(
            (code, out.as_str()),
            (0, "line-1\nl"),
            "{name}: --limit-bytes: {err}"
        );
        let (code, out, err) = kubectl(bin, kc, &["logs", "pair", "-c", "b"]).await;
        assert_eq!((code, out.as_str()), (0, "from-b\n"), "{name}: -c b: {err}");
        let (code, out, err) = kubectl(bin, kc, &["logs", "chatty", "--previous"]).await;
        assert_ne!(code, 0, "{name}: no previous run: {out}");
        assert!(
            err.contains(r#"previous terminated container "talk" in pod "chatty" not found"#),
            "{name}: {err}"
        );
    }
    follow(&kubectl_new, kc, &marks.join("go-4"), "line-4").await;
    // kubectl 1.20 sees everything so far and then line-5.
    follow(&kubectl_old, kc, &marks.join("go-5"), "line-5").await;

    // Several containers: the new kubectl picks the first and says so; the API server itself
    // asks for a name, listing them, as upstream's.
    let (code, out, err) = kubectl(&kubectl_new, kc, &["logs", "pair"]).await;
    assert_eq!((code, out.as_str()), (0, "from-a\n"), "{err}");
    let (code, _, err) = kubectl(
        &kubectl_new,
        kc,
        &["get", "--raw", "/api/v1/namespaces/default/pods/pair/log"],
    )
    .await;
    assert_ne!(code, 0);
    assert!(
        err.contains("a container name must be specified for pod pair, choose one of: [a b]"),
        "{err}"
    );
    let (code, _, err) = kubectl(&kubectl_old, kc, &["logs", "pair"]).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("choose one of: [a b]"),
        "1.20 without -c: {err}"
    );

    // Negative control: jane may read pods (kubectl reads the pod first) but not their logs:
    // 403, upstream's words, until a Role lets her.
    let jane = jane_kubeconfig(tb, cp);
    apply(tb, &kubectl_new, kc, "pod-getter.yaml", POD_GETTER).await;
    for bin in [&kubectl_new, &kubectl_old] {
        let (code, out, err) = kubectl(bin, &jane, &["logs", "chatty"]).await;
        assert_ne!(code, 0, "{out}");
        assert!(
            err.contains(r#"pods "chatty" is forbidden: User "jane" cannot get resource "pods/log" in API group "" in the namespace "default""#),
            "{}: {err}",
            bin.display()
        );
    }
    apply(
        tb,
        &kubectl_new,
        kc,
        "log-reader.yaml",
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: log-reader, namespace: default}
rules: [{apiGroups: [""], resources: ["pods/log"], verbs: ["get"]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: jane-reads-logs, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: log-reader}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: jane}]
"#,
    )
    .await;
    let (code, out, err) = kubectl(&kubectl_new, &jane, &["logs", "pair", "-c", "a"]).await;
    assert_eq!(
        (code, out.as_str()),
        (0, "from-a\n"),
        "with the Role: {err}"
    );

    // The kubelet's own door: no client certificate, 401; the admin's, the summary.
    let kubelet_url = format!("https://{}:10250", w.node.ip);
    let out = tb
        .exec(
            &cp.node.ns,
            &[
                curl.to_str().unwrap(),
                "-sk",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("{kubelet_url}/containerLogs/default/chatty/talk"),
            ],
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    assert_eq!(out.stdout.trim(), "401", "{out:?}");
    // jane's certificate is the cluster's, but the API server's SubjectAccessReview says no.
    let kc_text = std::fs::read_to_string(&jane).unwrap();
    let field = |key: &str| {
        let b64 = kc_text
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .unwrap()
            .trim();
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).unwrap()
    };
    let (jane_crt, jane_key) = (
        tb.state_dir().join("jane.crt"),
        tb.state_dir().join("jane.key"),
    );
    std::fs::write(&jane_crt, field("client-certificate-data:")).unwrap();
    std::fs::write(&jane_key, field("client-key-data:")).unwrap();
    let out = tb
        .exec(
            &cp.node.ns,
            &[
                curl.to_str().unwrap(),
                "-sk",
                "-w",
                " %{http_code}",
                "--cert",
                jane_crt.to_str().unwrap(),
                "--key",
                jane_key.to_str().unwrap(),
                &format!("{kubelet_url}/containerLogs/default/chatty/talk"),
            ],
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    assert_eq!(
        out.stdout.trim(),
        "Forbidden (user=jane, verb=get, resource=nodes, subresource=proxy) 403",
        "{out:?}"
    );

    // /stats/summary: a busy pod's CPU time rises between two reads; it uses more than a
    // mostly sleeping one.
    create_pod(
        client,
        json!({"metadata": {"name": "busy"}, "spec": {"nodeName": "n1",
            "containers": [{"name": "spin", "image": "busybox",
                "command": ["/bin/busybox", "sh", "-c", "while :; do :; done"]}]}}),
    )
    .await;
    wait_pod(client, "busy", Duration::from_secs(60), "Running", running).await;
    let pki = cp.dir.join("pki");
    let summary = || async {
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
                    &format!("{kubelet_url}/stats/summary"),
                ],
                Duration::from_secs(20),
            )
            .await
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        let pod = v["pods"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["podRef"]["name"] == "busy").cloned())
            .unwrap_or_else(|| panic!("busy in {v:#}"));
        (v, pod)
    };
    let (first, pod1) = summary().await;
    assert_eq!(first["node"]["nodeName"], "n1");
    assert!(
        first["node"]["cpu"]["usageCoreNanoSeconds"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(first["node"]["memory"]["workingSetBytes"].as_u64().unwrap() > 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, pod2) = summary().await;
    let (t1, t2) = (
        pod1["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap(),
        pod2["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap(),
    );
    assert!(
        t2 > t1 + 20_000_000,
        "busy used >20 ms of CPU in the ≥0.5 s between two reads: {t1} → {t2}"
    );
    let cores = pod2["cpu"]["usageNanoCores"].as_u64().unwrap();
    assert!(
        cores > 50_000_000,
        "a spinning shell uses a good part of a core (>50m even on a loaded machine): {pod2:#}"
    );
    assert!(
        pod2["memory"]["workingSetBytes"].as_u64().unwrap() > 0,
        "{pod2:#}"
    );
    assert_eq!(pod2["containers"][0]["name"], "spin");
    let chatty = &first["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["podRef"]["name"] == "chatty")
        .cloned()
        .unwrap();
    assert!(
        chatty["cpu"]["usageNanoCores"].as_u64().unwrap() < cores,
        "{chatty:#}"
    );
    assert!(tb.running(kubelet_pid), "{}", tb.log_of(kubelet_pid));
}

/// `kubectl exec` runs in the pod's namespaces: it sees the pod's hostname and address, passes
/// stdout, stderr and stdin, and returns the command's exit code, with the image's kubectl
/// (WebSocket v5, and SPDY/3.1 when told not to use WebSockets) and kubectl 1.20 (SPDY/3.1,
/// `v4.channel.k8s.io`). A user without `create pods/exec` gets upstream's 403.
#[tokio::test(flavor = "multi_thread")]
async fn kubectl_exec_runs_in_the_pod_and_returns_its_exit_code() {
    netns_testbed::require_tool("busybox", "busybox-static");
    netns_testbed::require_tool("nsenter", "util-linux");
    let kubectl_new = netns_testbed::require_tool("kubectl", "kubectl (the image's own)");
    let kubectl_old = kubectl_1_20();
    let n = one_node(&[]).await;
    let (tb, cp, client) = (&n.c.tb, &n.c.cp, &n.c.client);
    let (kubelet_pid, kc) = (n.kubelet_pid, &n.kc);
    create_pod(
        client,
        json!({"metadata": {"name": "box"}, "spec": {"nodeName": "n1",
            "containers": [{"name": "c", "image": "busybox",
                "env": [{"name": "GREETING", "value": "hello-from-env"}],
                "command": ["/bin/busybox", "sleep", "3600"]}]}}),
    )
    .await;
    let p = wait_running(tb, client, "box", kubelet_pid).await;
    let ip = p["status"]["podIP"].as_str().unwrap().to_string();

    for bin in [&kubectl_new, &kubectl_old] {
        let name = bin.display();
        let (code, out, err) = kubectl(
            bin,
            kc,
            &[
                "exec",
                "box",
                "--",
                "/bin/busybox",
                "sh",
                "-c",
                "echo out; echo err >&2; hostname; echo $GREETING; busybox ip -4 addr show eth0 | busybox grep -o 'inet [0-9.]*'; exit 3",
            ],
        )
        .await;
        assert_eq!(code, 3, "{name}: the command's exit code: {out}{err}");
        assert_eq!(
            out,
            format!("out\nbox\nhello-from-env\ninet {ip}\n"),
            "{name}: stdout, in the pod's UTS and network namespaces, with its env; stderr: {err}"
        );
        assert!(err.starts_with("err\n"), "{name}: {err}");
        assert!(
            err.contains("command terminated with exit code 3"),
            "{name}: kubectl reports the code: {err}"
        );
        // stdin, to its end.
        let out = kubectl_session::exec_stdin(
            bin,
            kc,
            &[],
            &[
                "box",
                "--",
                "/bin/busybox",
                "sh",
                "-c",
                "busybox wc -l; echo done",
            ],
            b"a\nb\nc\n",
        )
        .await;
        assert!(out.status.success(), "{name}: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["3", "done"],
            "{name}"
        );
    }
    // exec -it: kubectl wants a terminal of its own (script's) and the command gets one in the
    // pod (a pseudo-terminal from the kubelet), over the WebSocket (1.32) and SPDY (1.20).
    netns_testbed::require_tool("script", "bsdutils (util-linux's script)");
    for bin in [&kubectl_new, &kubectl_old] {
        let out = kubectl_session::exec_tty(
            bin,
            kc,
            &[],
            "box -- /bin/busybox sh -c '[ -t 0 ] && [ -t 1 ] && echo both-terminals; tty'",
            None,
        )
        .await;
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && shown.contains("both-terminals") && shown.contains("/dev/pts/"),
            "{}: exec -it: {out:?}",
            bin.display()
        );
    }

    // The image's kubectl over SPDY too, as it falls back when a WebSocket is refused.
    let mut cmd = tokio::process::Command::new(&kubectl_new);
    cmd.env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")
        .arg("--kubeconfig")
        .arg(kc)
        .args([
            "exec",
            "box",
            "--",
            "/bin/busybox",
            "sh",
            "-c",
            "echo spdy; exit 4",
        ])
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("exec over SPDY ends")
        .unwrap();
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).as_ref()
        ),
        (Some(4), "spdy\n"),
        "{out:?}"
    );

    // Negative control: a user who may read pods but not create pods/exec gets upstream's 403,
    // over either protocol.
    let jane = jane_kubeconfig(tb, cp);
    apply(tb, &kubectl_new, kc, "pod-getter.yaml", POD_GETTER).await;
    for bin in [&kubectl_new, &kubectl_old] {
        let (code, _, err) =
            kubectl(bin, &jane, &["exec", "box", "--", "/bin/busybox", "true"]).await;
        assert_ne!(code, 0);
        assert!(
            err.contains(r#"pods "box" is forbidden: User "jane" cannot create resource "pods/exec" in API group "" in the namespace "default""#),
            "{}: {err}",
            bin.display()
        );
    }
    assert!(tb.running(kubelet_pid), "{}", tb.log_of(kubelet_pid));
}

/// A free port on 127.0.0.1 of the test's own namespace (bound and released).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// One HTTP/1.0 GET through `127.0.0.1:port`: the whole answer.
async fn fetch(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let get = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&out).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(20), get)
        .await
        .expect("a fetch through the forward ends")
        .unwrap()
}

/// Starts `kubectl port-forward pod/web LOCAL:80` on 127.0.0.1 and waits for its "Forwarding
/// from" line; the child is killed on drop.
async fn port_forward(bin: &Path, kc: &Path, env: &[(&str, &str)]) -> (tokio::process::Child, u16) {
    let port = free_port();
    let mut child = tokio::process::Command::new(bin)
        .envs(env.iter().copied())
        .arg("--kubeconfig")
        .arg(kc)
        .args(["port-forward", "--address", "127.0.0.1", "pod/web"])
        .arg(format!("{port}:80"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let want = format!("Forwarding from 127.0.0.1:{port} -> 80");
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if l == want {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    if !ready {
        let _ = child.kill().await;
        let out = child.wait_with_output().await.unwrap();
        panic!(
            "{}: port-forward did not start: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Keep reading its output so that it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, port)
}

/// `kubectl port-forward` reaches an HTTP server on the pod's 127.0.0.1:80, twice (two
/// connections, two stream pairs), with the image's kubectl (the SPDY-in-WebSocket tunnel, and
/// plain SPDY/3.1 with the tunnel turned off) and kubectl 1.20 (SPDY/3.1). A user who may get
/// pods but not create pods/portforward gets upstream's 403.
#[tokio::test(flavor = "multi_thread")]
async fn kubectl_port_forward_reaches_the_pods_localhost() {
    netns_testbed::require_tool("busybox", "busybox-static");
    let kubectl_new = netns_testbed::require_tool("kubectl", "kubectl (the image's own)");
    let kubectl_old = kubectl_1_20();
    let n = one_node(&[]).await;
    let (tb, cp, client) = (&n.c.tb, &n.c.cp, &n.c.client);
    let (kubelet_pid, kc) = (n.kubelet_pid, &n.kc);
    let site = tb.state_dir().join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("index.html"), "hello from the pod\n").unwrap();
    // busybox httpd on the pod's 127.0.0.1 only: nothing else could answer there.
    create_pod(
        client,
        json!({"metadata": {"name": "web"}, "spec": {"nodeName": "n1",
            "containers": [{"name": "srv", "image": "busybox",
                "command": ["/bin/busybox", "httpd", "-f", "-p", "127.0.0.1:80", "-h", site.to_str().unwrap()]}]}}),
    )
    .await;
    wait_running(tb, client, "web", kubelet_pid).await;

    type Variant<'a> = (&'a Path, &'a [(&'a str, &'a str)], &'a str);
    let variants: [Variant<'_>; 3] = [
        (&kubectl_new, &[], "the image's kubectl (WebSocket tunnel)"),
        (
            &kubectl_new,
            &[("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")],
            "the image's kubectl (SPDY)",
        ),
        (&kubectl_old, &[], "kubectl 1.20 (SPDY)"),
    ];
    for (bin, env, what) in variants {
        let tunnels = tb.log_of(kubelet_pid).matches("a WebSocket tunnel").count();
        let (mut child, port) = port_forward(bin, kc, env).await;
        for i in 0..2 {
            let mut answer = String::new();
            // The server may take a moment to listen after the pod reads Running.
            for _ in 0..50 {
                answer = fetch(port).await;
                if answer.contains("hello from the pod") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            assert!(
                answer.starts_with("HTTP/1.") && answer.contains("hello from the pod"),
                "{what}: fetch {i}: {answer:?}; kubelet:\n{}",
                tb.log_of(kubelet_pid)
            );
        }
        let _ = child.kill().await;
        // The image's kubectl takes the tunnel unless told not to; the others speak SPDY.
        let tunnelled = tb.log_of(kubelet_pid).matches("a WebSocket tunnel").count() > tunnels;
        assert_eq!(tunnelled, env.is_empty() && *bin == kubectl_new, "{what}");
    }

    // Negative control: jane may get pods (kubectl reads the pod first) but not forward.
    let jane = jane_kubeconfig(tb, cp);
    apply(tb, &kubectl_new, kc, "pod-getter.yaml", POD_GETTER).await;
    for bin in [&kubectl_new, &kubectl_old] {
        let (code, _, err) = kubectl(
            bin,
            &jane,
            &[
                "port-forward",
                "--address",
                "127.0.0.1",
                "pod/web",
                &format!("{}:80", free_port()),
            ],
        )
        .await;
        assert_ne!(code, 0, "{}: {err}", bin.display());
        assert!(
            err.contains(r#"pods "web" is forbidden: User "jane" cannot create resource "pods/portforward" in API group "" in the namespace "default""#),
            "{}: {err}",
            bin.display()
        );
    }
    assert!(tb.running(kubelet_pid), "{}", tb.log_of(kubelet_pid));
}

/// Polls `kubectl logs <args>` (≤30 s) until `done` holds of its stdout; returns it.
async fn logs_until(
    bin: &Path,
    kc: &Path,
    args: &[&str],
    what: &str,
    done: impl Fn(&str) -> bool,
) -> String {
    let mut all = vec!["logs"];
    all.extend_from_slice(args);
    let mut last = (0, String::new(), String::new());
    for _ in 0..150 {
        last = kubectl(bin, kc, &all).await;
        if last.0 == 0 && done(&last.1) {
            return last.1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{}: {what}: kubectl {all:?} gave {last:?}", bin.display());
}

/// The kubelet's time prefix: RFC3339 in UTC with exactly 9 fraction digits.
fn stamp_of(line: &str) -> jiff::Timestamp {
    let (t, _) = line.split_once(' ').unwrap_or_else(|| panic!("{line:?}"));
    assert!(
        t.len() == 30 && t.ends_with('Z') && t.as_bytes()[19] == b'.',
        "fixed 9-digit RFC3339Nano: {line:?}"
    );
    t.parse().unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

/// `run-<n> line-<i> …` lines: the numbers `i`, checked to be run `n`'s.
fn line_numbers(text: &str, run: u32) -> Vec<u32> {
    text.lines()
        .map(|l| {
            let rest = l
                .strip_prefix(&format!("run-{run} line-"))
                .unwrap_or_else(|| panic!("not run {run}'s: {l:?}"));
            rest.split(' ').next().unwrap().parse().unwrap()
        })
        .collect()
}

/// A contiguous run of numbers ending at `last` and not starting at 0 (the oldest rotated
/// away), each once.
fn assert_newest_in_order(numbers: &[u32], last: u32, what: &str) {
    assert_eq!(numbers.last(), Some(&last), "{what}: {numbers:?}");
    assert!(
        numbers[0] > 0,
        "{what}: the oldest were rotated away: {numbers:?}"
    );
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "{what}: in order, none twice or missing: {numbers:?}"
    );
}

/// Issue 14, the rest of `kubectl logs`: `--timestamps` (the kubelet's 9-digit RFC3339 time
/// per line), `--since-time` and `--since`, `--limit-bytes` and `--tail` over logs the
/// kubelet rotates at a small `--container-log-max-size` (2Ki, 3 files): a run's log reads
/// across its rotated files in order (the older rotated file gzipped, the newest plain), and
/// after a restart `--previous` is the first run's, rotated too. With the image's kubectl and
/// kubectl 1.20.
#[tokio::test(flavor = "multi_thread")]
async fn kubectl_logs_timestamps_since_and_rotation_with_both_kubectls() {
    netns_testbed::require_tool("busybox", "busybox-static");
    let kubectl_new = netns_testbed::require_tool("kubectl", "kubectl (the image's own)");
    let kubectl_old = kubectl_1_20();
    let n = one_node(&[
        "--container-log-max-size",
        "2Ki",
        "--container-log-max-files",
        "3",
    ])
    .await;
    let (tb, client) = (&n.c.tb, &n.c.client);
    let (kubelet_pid, kc, k) = (n.kubelet_pid, &n.kc, &n.k);
    let marks = tb.state_dir().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let m = marks.display();
    create_pod(
        client,
        json!({"metadata": {"name": "stamp"}, "spec": {"nodeName": "n1",
            "containers": [{"name": "c", "image": "busybox",
                "command": ["/bin/busybox", "sh", "-c", format!(
                    "echo early; while [ ! -e {m}/late ]; do busybox sleep 0.1; done; echo late; exec busybox sleep 3600")]}]}}),
    )
    .await;
    // 150 lines of about 80 bytes a run: 6 files of 2Ki, of which 3 are kept. The first run
    // exits 1, the second stays.
    let roll = format!(
        r#"n=0; [ -e {m}/runs ] && read n < {m}/runs; n=$((n+1)); echo $n > {m}/runs
i=0; while [ $i -lt 150 ]; do echo "run-$n line-$i padding-padding-padding"; i=$((i+1)); done
[ $n -ge 2 ] && exec busybox sleep 3600; exit 1"#
    );
    let rolled = create_pod(
        client,
        json!({"metadata": {"name": "roll"}, "spec": {"nodeName": "n1",
            "containers": [{"name": "c", "image": "busybox",
                "command": ["/bin/busybox", "sh", "-c", roll]}]}}),
    )
    .await;
    wait_running(tb, client, "stamp", kubelet_pid).await;

    // --timestamps and --since-time: "late" is printed in a later second than "early" (kubectl
    // sends sinceTime with whole seconds), so since-time = late's second gives late alone.
    let text = logs_until(&kubectl_new, kc, &["stamp", "--timestamps"], "early", |t| {
        t.lines().count() == 1
    })
    .await;
    let early = stamp_of(text.lines().next().unwrap());
    assert!(text.ends_with(" early\n"), "{text}");
    for _ in 0..100 {
        if jiff::Timestamp::now().as_second() > early.as_second() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::write(marks.join("late"), "").unwrap();
    let text = logs_until(&kubectl_new, kc, &["stamp", "--timestamps"], "late", |t| {
        t.lines().count() == 2
    })
    .await;
    let late = stamp_of(text.lines().nth(1).unwrap());
    assert!(late.as_second() > early.as_second(), "{text}");
    let since_time = jiff::Timestamp::from_second(late.as_second())
        .unwrap()
        .to_string();
    for bin in [&kubectl_new, &kubectl_old] {
        let name = bin.display();
        let (code, out, err) = kubectl(bin, kc, &["logs", "stamp", "--timestamps"]).await;
        assert_eq!((code, &out), (0, &text), "{name}: --timestamps: {err}");
        let (code, out, err) = kubectl(
            bin,
            kc,
            &["logs", "stamp", &format!("--since-time={since_time}")],
        )
        .await;
        assert_eq!(
            (code, out.as_str()),
            (0, "late\n"),
            "{name}: --since-time={since_time}: {err}"
        );
        let (code, out, err) = kubectl(bin, kc, &["logs", "stamp", "--since=1h"]).await;
        assert_eq!((code, out.as_str()), (0, "early\nlate\n"), "{name}: {err}");
        let (code, out, err) = kubectl(
            bin,
            kc,
            &["logs", "stamp", "--timestamps", "--limit-bytes=35"],
        )
        .await;
        assert_eq!(
            (code, out.as_str()),
            (0, &text[..35]),
            "{name}: --limit-bytes with timestamps: {err}"
        );
    }
    // --since=1s leaves everything out once the last line is over a second old.
    for bin in [&kubectl_new, &kubectl_old] {
        logs_until(
            bin,
            kc,
            &["stamp", "--since=1s"],
            "--since=1s empty",
            str::is_empty,
        )
        .await;
    }
    // The API server's check: both since forms at once are refused.
    let (code, _, err) = kubectl(
        &kubectl_new,
        kc,
        &[
            "get",
            "--raw",
            &format!(
                "/api/v1/namespaces/default/pods/stamp/log?sinceSeconds=5&sinceTime={since_time}"
            ),
        ],
    )
    .await;
    assert_ne!(code, 0);
    assert!(
        err.contains("at most one of `sinceTime` or `sinceSeconds`"),
        "{err}"
    );

    // Rotation: the second run is up once its last line is logged.
    logs_until(
        &kubectl_new,
        kc,
        &["roll"],
        "the second run's last line",
        |t| t.ends_with("run-2 line-149 padding-padding-padding\n"),
    )
    .await;
    let uid = rolled.metadata.uid.as_deref().unwrap();
    let logs_dir = k.pod_dir(0, uid).join("logs/c");
    for run in ["0.log", "1.log"] {
        let current = logs_dir.join(run);
        // The older rotated file is gzipped in the background: wait for it (bounded).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let rotated = loop {
            let rotated = trellis_kubelet::logfile::rotated(&current);
            let gz = |p: &std::path::PathBuf| p.extension().is_some_and(|e| e == "gz");
            let tmp_left = std::fs::read_dir(&logs_dir)
                .unwrap()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".tmp"));
            if rotated.len() == 2 && gz(&rotated[0]) && !gz(&rotated[1]) && !tmp_left {
                break rotated;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{run}: 3 files kept in all, the older rotated one gzipped, the newer plain: {rotated:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (mut on_disk, mut content) = (0, 0);
        for f in rotated.iter().chain([&current]) {
            let mut plain = Vec::new();
            trellis_kubelet::logfile::read_into(f, &mut plain).unwrap();
            assert!(
                plain.len() <= 2048,
                "{}: {} bytes > 2Ki",
                f.display(),
                plain.len()
            );
            if f != &current {
                on_disk += std::fs::metadata(f).unwrap().len();
                content += plain.len() as u64;
            }
        }
        // Negative control: the rotated files take less room than the plain content they hold.
        assert!(
            on_disk < content,
            "{run}: rotated files {on_disk} bytes on disk for {content} bytes of content"
        );
    }
    let in_current = kubelet::read_log(&logs_dir.join("1.log"))
        .unwrap()
        .lines()
        .count();
    for bin in [&kubectl_new, &kubectl_old] {
        let name = format!("{}", bin.display());
        let (code, out, err) = kubectl(bin, kc, &["logs", "roll"]).await;
        assert_eq!(code, 0, "{name}: {err}");
        let numbers = line_numbers(&out, 2);
        assert_newest_in_order(&numbers, 149, &name);
        assert!(
            numbers.len() > in_current,
            "{name}: read across the rotated files, not only the current one ({in_current} lines): {out}"
        );
        let (code, prev, err) = kubectl(bin, kc, &["logs", "roll", "--previous"]).await;
        assert_eq!(code, 0, "{name}: --previous: {err}");
        assert_newest_in_order(&line_numbers(&prev, 1), 149, &format!("{name} --previous"));
        let (code, tail, err) = kubectl(bin, kc, &["logs", "roll", "--tail=5"]).await;
        assert_eq!(code, 0, "{name}: {err}");
        assert_eq!(line_numbers(&tail, 2), [145, 146, 147, 148, 149], "{name}");
        let (code, stamped, err) = kubectl(bin, kc, &["logs", "roll", "--timestamps"]).await;
        assert_eq!(code, 0, "{name}: {err}");
        let times: Vec<jiff::Timestamp> = stamped.lines().map(stamp_of).collect();
        assert_eq!(times.len(), numbers.len(), "{name}");
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "{name}: times in order across files: {stamped}"
        );
        let (code, cut, err) = kubectl(bin, kc, &["logs", "roll", "--limit-bytes=50"]).await;
        assert_eq!((code, cut.as_str()), (0, &out[..50]), "{name}: {err}");
    }
    assert!(tb.running(kubelet_pid), "{}", tb.log_of(kubelet_pid));
}

/// Spawns `kubectl attach` (args after `attach`) with piped stdio; killed on drop.
fn attach(bin: &Path, kc: &Path, env: &[(&str, &str)], args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(bin)
        .envs(env.iter().copied())
        .arg("--kubeconfig")
        .arg(kc)
        .arg("attach")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// `kubectl attach` joins a container's main process (`stdin: true`): what is typed reaches
/// its stdin, its stdout and stderr come back, over the image's kubectl's WebSocket, its SPDY,
/// and kubectl 1.20's SPDY; the stdin stays open from one attach to the next, but with
/// `stdinOnce` the container sees its end when the first attach goes (the negative control
/// of keeping it open). `attach -it` to a `tty: true` shell runs a command on its terminal,
/// and the attach ends with the shell. A user who may get pods but not create pods/attach
/// gets upstream's 403.
#[tokio::test(flavor = "multi_thread")]
async fn kubectl_attach_joins_the_main_process_with_both_kubectls() {
    use tokio::io::AsyncWriteExt;
    netns_testbed::require_tool("busybox", "busybox-static");
    let kubectl_new = netns_testbed::require_tool("kubectl", "kubectl (the image's own)");
    netns_testbed::require_tool("script", "bsdutils (util-linux's script)");
    let kubectl_old = kubectl_1_20();
    let n = one_node(&[]).await;
    let (tb, cp, client) = (&n.c.tb, &n.c.cp, &n.c.client);
    let (kubelet_pid, kc) = (n.kubelet_pid, &n.kc);
    let echo = r#"while read l; do echo "got $l"; echo "err $l" >&2; done; echo stdin-closed; exec busybox sleep 3600"#;
    for (name, once) in [("echo", false), ("once", true)] {
        create_pod(
            client,
            json!({"metadata": {"name": name}, "spec": {"nodeName": "n1",
                "containers": [{"name": "c", "image": "busybox", "stdin": true, "stdinOnce": once,
                    "command": ["/bin/busybox", "sh", "-c", echo]}]}}),
        )
        .await;
    }
    create_pod(
        client,
        json!({"metadata": {"name": "term"}, "spec": {"nodeName": "n1",
            "containers": [{"name": "c", "image": "busybox", "stdin": true, "tty": true,
                "command": ["/bin/busybox", "sh"]}]}}),
    )
    .await;
    for name in ["echo", "once", "term"] {
        wait_running(tb, client, name, kubelet_pid).await;
    }

    type Variant<'a> = (&'a Path, &'a [(&'a str, &'a str)], &'a str);
    let variants: [Variant<'_>; 3] = [
        (&kubectl_new, &[], "the image's kubectl (WebSocket)"),
        (
            &kubectl_new,
            &[("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")],
            "the image's kubectl (SPDY)",
        ),
        (&kubectl_old, &[], "kubectl 1.20 (SPDY)"),
    ];
    for (i, (bin, env, what)) in variants.into_iter().enumerate() {
        let mut child = attach(bin, kc, env, &["-i", "echo"]);
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        // Typed until the container answers: what is typed before the stream is up may
        // arrive once it is.
        let word = format!("word-{i}");
        stdin
            .write_all(format!("{word}\n").as_bytes())
            .await
            .unwrap();
        read_until(&mut stdout, &format!("got {word}\n"), what).await;
        read_until(&mut stderr, &format!("err {word}\n"), what).await;
        drop(stdin);
        let _ = child.kill().await;
    }
    // The stdin outlived all three attaches.
    let (code, out, err) = kubectl(&kubectl_new, kc, &["logs", "echo"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("stdin-closed"), "{out}");

    // stdinOnce: the first attach's end is the container's stdin's.
    let mut child = attach(&kubectl_new, kc, &[], &["-i", "once"]);
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    stdin.write_all(b"only\n").await.unwrap();
    read_until(&mut stdout, "got only\n", "stdinOnce").await;
    drop(stdin);
    read_until(
        &mut stdout,
        "stdin-closed\n",
        "stdinOnce: stdin ends with the attach",
    )
    .await;
    let _ = child.kill().await;

    // attach -it: kubectl wants a terminal (script's); the shell runs on the container's own,
    // and the attach ends when the shell does (it then restarts for the next kubectl).
    for (n, bin) in [&kubectl_new, &kubectl_old].into_iter().enumerate() {
        wait_pod(
            client,
            "term",
            Duration::from_secs(60),
            "the shell runs",
            |p| {
                let s = &p["status"]["containerStatuses"][0];
                s["restartCount"].as_u64() >= Some(n as u64) && s["state"]["running"].is_object()
            },
        )
        .await;
        let what = format!("{}: attach -it", bin.display());
        let mut child = kubectl_session::spawn_on_a_terminal(
            &kubectl_session::kubectl_line(bin, kc, "attach -it term", None),
            &[],
        );
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        stdin
            .write_all(b"[ -t 0 ] && echo on-a-terminal-$((40+2))\n")
            .await
            .unwrap();
        read_until(&mut stdout, "on-a-terminal-42", &what).await;
        stdin.write_all(b"exit\n").await.unwrap();
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .unwrap_or_else(|_| panic!("{what}: the attach ends with the shell"))
            .unwrap();
        assert!(status.success(), "{what}: {status:?}");
    }

    // Negative control: jane may get pods but not create pods/attach.
    let jane = jane_kubeconfig(tb, cp);
    apply(tb, &kubectl_new, kc, "pod-getter.yaml", POD_GETTER).await;
    for bin in [&kubectl_new, &kubectl_old] {
        let (code, _, err) = kubectl(bin, &jane, &["attach", "echo"]).await;
        assert_ne!(code, 0);
        assert!(
            err.contains(r#"pods "echo" is forbidden: User "jane" cannot create resource "pods/attach" in API group "" in the namespace "default""#),
            "{}: {err}",
            bin.display()
        );
    }
    assert!(tb.running(kubelet_pid), "{}", tb.log_of(kubelet_pid));
}

/// A terminal's size reaches the pod's pseudo-terminal (process runtime): `exec -it` on a
/// terminal of a set size runs `stty size` in the pod and sees it (the kubelet's own
/// terminal, sized by the resize message on channel 4 or the SPDY resize stream), and each
/// `attach -it` to a `tty: true` shell resizes the container's terminal (its shim's) to the
/// attaching terminal's size, a different one each time — with both kubectls, over a
/// WebSocket and SPDY. Without resize handling the pod's terminal stays 0×0 and this fails.
#[tokio::test(flavor = "multi_thread")]
async fn terminal_resizes_reach_the_pods_terminal_for_exec_and_attach() {
    netns_testbed::require_tool("busybox", "busybox-static");
    netns_testbed::require_tool("script", "bsdutils (util-linux's script)");
    let kubectl_new = netns_testbed::require_tool("kubectl", "kubectl (the image's own)");
    let kubectl_old = kubectl_1_20();
    let n = one_node(&[]).await;
    let (tb, client) = (&n.c.tb, &n.c.client);
    let (kubelet_pid, kc) = (n.kubelet_pid, &n.kc);
    create_pod(
        client,
        json!({"metadata": {"name": "box"}, "spec": {"nodeName": "n1",
            "containers": [{"name": "c", "image": "busybox",
                "command": ["/bin/busybox", "sleep", "3600"]}]}}),
    )
    .await;
    create_pod(
        client,
        json!({"metadata": {"name": "term"}, "spec": {"nodeName": "n1",
            "containers": [{"name": "c", "image": "busybox", "stdin": true, "tty": true,
                "command": ["/bin/busybox", "sh"]}]}}),
    )
    .await;
    for name in ["box", "term"] {
        wait_running(tb, client, name, kubelet_pid).await;
    }
    for (i, (bin, env)) in kubectl_session::variants(&kubectl_new, &kubectl_old)
        .into_iter()
        .enumerate()
    {
        let size = (71 + i as u16, 23 + i as u16);
        let out = kubectl_session::exec_tty(
            &bin,
            kc,
            &env,
            &format!(
                "box -- /bin/busybox sh -c '{}'",
                kubectl_session::print_size_once(size.0, size.1)
            ),
            Some(size),
        )
        .await;
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && shown.contains(&format!("size={} {}", size.1, size.0)),
            "{} {env:?}: exec -it on a {size:?} terminal: {out:?}",
            bin.display()
        );
        // The container's terminal takes each attaching terminal's size.
        let size = (81 + i as u16, 31 + i as u16);
        let mut child = kubectl_session::attach_tty(&bin, kc, &env, "term", size).await;
        let _ = child.kill().await;
    }
    assert!(tb.running(kubelet_pid), "{}", tb.log_of(kubelet_pid));
}

/// The API server started with `--kubelet-certificate-authority` (the cluster CA, as `trellis
/// up` and the test control plane run it) refuses a kubelet whose serving certificate is its
/// own self-signed one — `kubectl logs` and `kubectl exec` fail and say why — and proxies both
/// to the same kubelet once it serves a certificate the cluster CA issued (`trellis certs
/// serving`), the pod adopted across the restart.
#[tokio::test(flavor = "multi_thread")]
async fn the_api_server_checks_the_kubelets_serving_certificate_against_the_cluster_ca() {
    netns_testbed::require_tool("busybox", "busybox-static");
    let kubectl_new = netns_testbed::require_tool("kubectl", "kubectl (the image's own)");
    let c = overlay_cluster::Cluster::start(1).await;
    let (tb, cp, client) = (&c.tb, &c.cp, &c.client);
    let w = &c.workers[0];
    let mut k = Kubelets::new(tb);
    k.serving_from_ca = false;
    let self_signed = k.start(tb, cp, &w.node, &w.dirs, "net.d");
    wait_node_ready(client, &w.node.name).await;
    let kc = cp.write_local_kubeconfig(tb).unwrap();
    create_pod(
        client,
        json!({"metadata": {"name": "talk"}, "spec": {"nodeName": w.node.name,
            "containers": [{"name": "c", "image": "busybox",
                "command": ["/bin/busybox", "sh", "-c", "echo hello-from-talk; exec busybox sleep 3600"]}]}}),
    )
    .await;
    wait_running(tb, client, "talk", self_signed).await;
    // Self-signed: refused, with Go's x509 words in what kubectl prints.
    let (code, out, err) = kubectl(&kubectl_new, &kc, &["logs", "talk"]).await;
    assert_ne!(code, 0, "logs from a self-signed kubelet: {out}");
    assert!(
        err.contains("x509: certificate signed by unknown authority"),
        "kubectl says why: {err}"
    );
    let (code, out, err) = kubectl(
        &kubectl_new,
        &kc,
        &["exec", "talk", "--", "/bin/busybox", "echo", "exec-ok"],
    )
    .await;
    assert_ne!(code, 0, "exec in a self-signed kubelet's pod: {out}");
    assert!(err.contains("unknown authority"), "kubectl says why: {err}");

    // The same kubelet with a certificate from the cluster CA: logs and exec go through.
    tb.kill(self_signed);
    k.serving_from_ca = true;
    let from_ca = k.start(tb, cp, &w.node, &w.dirs, "net.d");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut last;
    loop {
        last = kubectl(&kubectl_new, &kc, &["logs", "talk"]).await;
        if last.0 == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "logs never came from the CA-certified kubelet: {last:?}\n{}",
            tb.log_of(from_ca)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(last.1, "hello-from-talk\n");
    let (code, out, err) = kubectl(
        &kubectl_new,
        &kc,
        &["exec", "talk", "--", "/bin/busybox", "echo", "exec-ok"],
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "exec-ok\n"), "{err}");
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client.clone(), "default");
    pods.delete("talk", &Default::default()).await.unwrap();
    netns_testbed::wait_for("the pod to go", Duration::from_secs(60), || {
        k.roots
            .iter()
            .all(|r| std::fs::read_dir(r.join("pods")).map_or(true, |d| d.count() == 0))
    })
    .await;
}
