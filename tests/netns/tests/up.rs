//! `trellis up`, `status` and `down` (issue 17), run as a user runs them — the `trellis`
//! binary — but inside a throwaway network namespace of the test's, under a unique cluster name
//! and state directory, so runs can be parallel and the root namespace is never touched. A
//! 3-node overlay cluster reaches Ready; the demo answers by address from the namespace `up`
//! ran in and by Service name from a pod; its NetworkPolicy keeps an unlabelled pod out; `up`
//! over a running cluster is refused; `down` leaves nothing (checked before and after), and a
//! second `up` works. Bad input is refused with the reason and builds nothing.
//!
//! `--control-plane 3`: three members on a 3-member etcd; killing every process of the member
//! whose scheduler and controller-manager lead (its API server and etcd member with them)
//! leaves a cluster that still takes writes through kubectl's address, still schedules and
//! runs a new Deployment (the standbys took over), `default/kubernetes` drops the killed
//! member's API server (it listed all three), and the cluster still goes down clean. Its
//! negative control: with `--control-plane 1`, killing the one member's processes stops the
//! API answering kubectl. etcd has a CA of its own: its client port takes the API server's
//! etcd client certificate and refuses the cluster CA's (the admin's, and one with the API
//! server's very CN).
//!
//! `--runtime containerd`: 2 canal nodes (which covers the overlay mode's agent), and 3 routed
//! nodes with 3 members — the BGP agents as containerd tasks, runc's state under the
//! cluster's directory, pods on every node reaching every other, etcd's peer port taking only
//! TLS with a peer certificate, and the `--control-plane 3` checks above. Both take the image
//! from one image cache beside the binaries (`--image-cache`), so a build of `trellis` builds
//! the image once. The checks both
//! share are functions of their own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{ListParams, PostParams};
use netns_testbed::{Output, Testbed, bin_path, leak, require_root, require_tool};
use serde_json::json;
use trellis_net::Netns;

/// A cluster name and state directory in a throwaway namespace; `down` on drop.
struct Fixture {
    host: Arc<Netns>,
    name: String,
    state: PathBuf,
    // Dropped last: its namespace holds the one `up` runs in.
    tb: Testbed,
}

impl Fixture {
    async fn new() -> Fixture {
        require_root();
        require_tool("ipset", "ipset");
        require_tool("iptables-restore", "iptables");
        require_tool("busybox", "busybox-static");
        let tb = Testbed::new().unwrap();
        let host = tb.add_ns("host").await.unwrap();
        // The cluster's names start with the testbed's prefix plus `u`, so the testbed's own
        // `host` namespace is not taken for a leftover of the cluster.
        let name = format!("{}u", tb.prefix());
        let state = tb.state_dir().join("up");
        Fixture {
            host,
            name,
            state,
            tb,
        }
    }

    /// `trellis <args> --name … --state-dir …` in the throwaway namespace.
    async fn trellis(&self, args: &[&str], limit: Duration) -> Output {
        let trellis = bin_path("trellis");
        let state = self.state.display().to_string();
        let mut argv = vec![trellis.to_str().unwrap()];
        argv.extend_from_slice(args);
        argv.extend_from_slice(&["--name", &self.name, "--state-dir", &state]);
        self.tb.exec(&self.host, &argv, limit).await.unwrap()
    }

    fn cluster_dir(&self) -> PathBuf {
        self.state.join(&self.name)
    }

    /// Everything of the cluster still present: namespaces, links and ipsets named for it,
    /// processes the test started (the testbed's tag), and any link or route in the
    /// throwaway namespace beyond its loopback.
    async fn leftovers(&self) -> Vec<String> {
        let mut left = leak::leftovers(&self.name, self.tb.run_dir());
        left.extend(
            leak::leftovers(self.tb.prefix(), self.tb.run_dir())
                .into_iter()
                .filter(|l| l.starts_with("process")),
        );
        let h = self.host.connect().unwrap();
        for l in h.links().await.unwrap() {
            if l.name != "lo" {
                left.push(format!("link {} in the namespace up ran in", l.name));
            }
        }
        for r in h
            .routes(
                trellis_net::Family::V4,
                Some(trellis_net::Route::TABLE_MAIN),
            )
            .await
            .unwrap()
        {
            left.push(format!("route {} in the namespace up ran in", r.dst));
        }
        if self.cluster_dir().exists() {
            left.push(format!("state {}", self.cluster_dir().display()));
        }
        left
    }

    async fn assert_clean(&self, when: &str) {
        let mut left = self.leftovers().await;
        for _ in 0..100 {
            if left.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            left = self.leftovers().await;
        }
        panic!("{when}: left behind {left:#?}");
    }

    /// The kubeconfig `up` printed (the `kubeconfig:` line of `access.txt`).
    fn kubeconfig(&self) -> PathBuf {
        let access = std::fs::read_to_string(self.cluster_dir().join("access.txt")).unwrap();
        let line = access
            .lines()
            .find_map(|l| l.strip_prefix("kubeconfig: "))
            .unwrap_or_else(|| panic!("access.txt names no kubeconfig:\n{access}"));
        PathBuf::from(line.trim())
    }

    /// An admin client through a relay into the throwaway namespace (the test's own
    /// namespace has no route into the cluster), to the API's address 198.18.0.2.
    async fn client(&self) -> kube::Client {
        let api = SocketAddr::from(([198, 18, 0, 2], 6443));
        let relay = self.tb.forward(&self.host, api).await.unwrap();
        let text = std::fs::read_to_string(self.kubeconfig())
            .unwrap()
            .replace(&format!("https://{api}"), &format!("https://{relay}"));
        let kc = kube::config::Kubeconfig::from_yaml(&text).unwrap();
        kube::Client::try_from(
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .unwrap(),
        )
        .unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Whatever happened, take the cluster down (a no-op when the test already did).
        let trellis = bin_path("trellis");
        if let Ok(mut cmd) = self.host.command(&trellis) {
            let _ = cmd
                .args(["down", "--name", &self.name, "--state-dir"])
                .arg(&self.state)
                .output();
        }
    }
}

/// RSS of every process the test started (the testbed's tag), by what it runs: the daemons
/// `up` started, the DaemonSet and Deployment pods' processes, and their shims.
fn rss_table(tag: &str) -> String {
    let mut rows: Vec<(String, u64)> = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let path = e.path();
        let Ok(environ) = std::fs::read(path.join("environ")) else {
            continue;
        };
        let want = format!("TRELLIS_TESTBED={tag}");
        if !environ.split(|b| *b == 0).any(|v| v == want.as_bytes()) {
            continue;
        }
        let cmd = std::fs::read_to_string(path.join("cmdline")).unwrap_or_default();
        let argv: Vec<&str> = cmd.split('\0').filter(|a| !a.is_empty()).collect();
        let what = match argv.as_slice() {
            [exe, sub, ..] if exe.ends_with("/trellis") && *sub == "container-shim" => {
                "trellis container-shim".to_string()
            }
            [exe, sub, ..] if exe.ends_with("/trellis") => {
                let node = argv
                    .iter()
                    .position(|a| *a == "--node")
                    .and_then(|i| argv.get(i + 1).map(|n| n.to_string()))
                    .or_else(|| {
                        argv.iter()
                            .find_map(|a| a.strip_prefix("--node=").map(str::to_string))
                    })
                    .unwrap_or_default();
                format!("trellis {sub} {node}")
            }
            [exe, sub, ..] => format!("{} {sub}", exe.rsplit('/').next().unwrap_or(exe)),
            [exe] => exe.to_string(),
            [] => continue,
        };
        let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        rows.push((what, kb));
    }
    rows.sort();
    let total: u64 = rows.iter().map(|r| r.1).sum();
    let mut out = String::from("RSS of every process of the cluster:\n");
    for (what, kb) in &rows {
        out.push_str(&format!("  {what:<48} {:>8.1} MiB\n", *kb as f64 / 1024.0));
    }
    out.push_str(&format!(
        "  {:<48} {:>8.1} MiB ({} processes)\n",
        "total",
        total as f64 / 1024.0,
        rows.len()
    ));
    out
}

fn show(o: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        o.status, o.stdout, o.stderr
    )
}

/// Runs a pod in `demo` that exits when its command does; returns its exit code.
async fn run_pod(
    client: &kube::Client,
    name: &str,
    labels: serde_json::Value,
    script: &str,
) -> i32 {
    run_pod_from(client, name, labels, "busybox:stable", &["/bin/sh"], script).await
}

/// [`run_pod`] from `image`, with `shell` (its argv before `-c script`).
async fn run_pod_from(
    client: &kube::Client,
    name: &str,
    labels: serde_json::Value,
    image: &str,
    shell: &[&str],
    script: &str,
) -> i32 {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "demo");
    let mut command: Vec<&str> = shell.to_vec();
    command.extend(["-c", script]);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                 // The images are local (imported or built by `up`): never pulled.
                 "containers": [{"name": "c", "image": image, "imagePullPolicy": "IfNotPresent",
                                 "command": command}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = pods.get(name).await.unwrap();
        let code = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.first())
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.terminated.as_ref())
            .map(|t| t.exit_code);
        if let Some(code) = code {
            return code;
        }
        assert!(
            Instant::now() < deadline,
            "pod {name} did not finish within 60 s: {:?}",
            p.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_overlay_nodes_come_up_serve_the_demo_keep_strangers_out_and_go_down_clean() {
    scenario("overlay", "trellis-overlay-agent-").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_routed_nodes_come_up_serve_the_demo_keep_strangers_out_and_go_down_clean() {
    scenario("routed", "trellis-bgp-agent-").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_canal_nodes_come_up_serve_the_demo_keep_strangers_out_and_go_down_clean() {
    scenario("canal", "trellis-overlay-agent-").await;
}

async fn scenario(mode: &str, agent: &str) {
    let curl = require_tool("curl", "curl");
    let kubectl = require_tool("kubectl", "kubectl (the image's own)");
    let f = Fixture::new().await;
    f.assert_clean("before up").await;

    let t = Instant::now();
    let out = f
        .trellis(
            &["up", "--nodes", "3", "--mode", mode],
            Duration::from_secs(240),
        )
        .await;
    let took = t.elapsed();
    assert!(out.success(), "up failed:\n{}", show(&out));
    println!("{}\ntrellis up (3 nodes, {mode}) took {took:?}", out.stdout);
    assert!(out.stdout.contains("3 nodes Ready"), "{}", out.stdout);
    // kubectl from the namespace up ran in, with the kubeconfig it printed.
    let kc = f.kubeconfig();
    assert_eq!(kc, f.cluster_dir().join("cp/apiserver/admin.kubeconfig"));
    let got =
        f.tb.exec(
            &f.host,
            &[
                kubectl.to_str().unwrap(),
                "--kubeconfig",
                kc.to_str().unwrap(),
                "get",
                "nodes,pods",
                "-A",
            ],
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert!(got.success(), "kubectl: {}", show(&got));
    for want in [
        "n1",
        "n2",
        "n3",
        agent,
        "trellis-policyd-",
        "trellis-dns-",
        "web-",
    ] {
        assert!(
            got.stdout.contains(want),
            "kubectl get nodes,pods -A lacks {want}:\n{}",
            got.stdout
        );
    }
    println!("{}", got.stdout);

    // The demo by address from the namespace up ran in: every web pod.
    let client = f.client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "demo");
    let web = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    assert_eq!(web.items.len(), 2);
    // kubectl exec and logs reach a pod's kubelet through the API server, which checks the
    // kubelet's serving certificate against the cluster CA (up issues it from there).
    let web0 = web.items[0].metadata.name.clone().unwrap();
    for (args, want) in [
        (
            vec![
                "exec",
                web0.as_str(),
                "--",
                "/bin/busybox",
                "echo",
                "exec-ok",
            ],
            Some("exec-ok"),
        ),
        (vec!["logs", web0.as_str()], None),
    ] {
        let mut argv = vec![
            kubectl.to_str().unwrap(),
            "--kubeconfig",
            kc.to_str().unwrap(),
            "-n",
            "demo",
        ];
        argv.extend_from_slice(&args);
        let got =
            f.tb.exec(&f.host, &argv, Duration::from_secs(30))
                .await
                .unwrap();
        assert!(got.success(), "kubectl {args:?}: {}", show(&got));
        if let Some(want) = want {
            assert_eq!(got.stdout.trim(), want, "{}", show(&got));
        }
    }
    for p in &web.items {
        let ip = p.status.as_ref().unwrap().pod_ip.clone().unwrap();
        let url = format!("http://{ip}/");
        let got =
            f.tb.exec(
                &f.host,
                &[curl.to_str().unwrap(), "-sf", "-m", "5", &url],
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert!(
            got.success() && got.stdout.contains("Hello"),
            "{url}: {}",
            show(&got)
        );
    }

    // By Service name from a pod: a client gets in; a stranger resolves the same name but
    // the NetworkPolicy keeps it out (exit 7 = resolved, not let in).
    let curl_s = curl.display().to_string();
    let client_code = run_pod(
        &client,
        "client",
        json!({"role": "client"}),
        &format!("{curl_s} -sf -m 5 http://web/ | grep -q Hello"),
    )
    .await;
    assert_eq!(client_code, 0, "a role=client pod reaches http://web/");
    let stranger_code = run_pod(
        &client,
        "stranger",
        json!({"role": "other"}),
        &format!("getent hosts web.demo.svc.cluster.local || exit 3; {curl_s} -sf -m 3 http://web/ && exit 0; exit 7"),
    )
    .await;
    assert_eq!(
        stranger_code, 7,
        "a pod without role=client resolves web but is kept out"
    );

    println!("{}", rss_table(f.tb.prefix()));

    // up over a running cluster is refused, and the cluster keeps running.
    let again = f.trellis(&["up"], Duration::from_secs(30)).await;
    assert!(!again.success(), "{}", show(&again));
    assert!(again.stderr.contains("already up"), "{}", show(&again));
    let st = f.trellis(&["status"], Duration::from_secs(30)).await;
    assert!(
        st.success() && st.stdout.contains("healthy"),
        "{}",
        show(&st)
    );

    let t = Instant::now();
    let down = f.trellis(&["down"], Duration::from_secs(60)).await;
    assert!(down.success(), "{}", show(&down));
    println!("{}trellis down took {:?}", down.stdout, t.elapsed());
    f.assert_clean("after down").await;

    // A second up after down works the same, and goes down as clean.
    let out = f
        .trellis(
            &["up", "--nodes", "3", "--mode", mode],
            Duration::from_secs(240),
        )
        .await;
    assert!(out.success(), "second up failed:\n{}", show(&out));
    let down = f.trellis(&["down"], Duration::from_secs(60)).await;
    assert!(down.success(), "{}", show(&down));
    f.assert_clean("after the second down").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_the_reason_and_builds_nothing() {
    let f = Fixture::new().await;
    for (args, reason) in [
        (&["up", "--mode", "mesh"][..], "invalid value 'mesh'"),
        (&["up", "--nodes", "0"][..], "1 to 64"),
        (&["up", "--nodes", "100"][..], "1 to 64"),
        (&["up", "--control-plane", "2"][..], "majority"),
        (&["up", "--control-plane", "0"][..], "1 member"),
        (&["up", "--runtime", "docker"][..], "invalid value 'docker'"),
    ] {
        let out = f.trellis(args, Duration::from_secs(30)).await;
        assert!(!out.success(), "{args:?} was accepted:\n{}", show(&out));
        assert!(
            out.stderr.contains(reason),
            "{args:?}: the error does not say {reason:?}:\n{}",
            show(&out)
        );
        f.assert_clean(&format!("after {args:?}")).await;
    }
    let status = f.trellis(&["status"], Duration::from_secs(30)).await;
    assert!(
        !status.success() && status.stderr.contains("no cluster"),
        "{}",
        show(&status)
    );
    let down = f.trellis(&["down"], Duration::from_secs(30)).await;
    assert!(
        down.success() && down.stdout.contains("no cluster"),
        "{}",
        show(&down)
    );
}

/// A process's start time in clock ticks since boot (None when it is gone or a zombie).
fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// SIGKILLs the process groups `up` recorded (in its state file) on the namespace `on` —
/// only `what` when given — each checked against its recorded start time; returns what was
/// killed, and its PID.
fn kill_on(state_file: &Path, on: &str, what: Option<&str>) -> Vec<(String, i32)> {
    let st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state_file).unwrap()).unwrap();
    let mut killed = Vec::new();
    for p in st["processes"].as_array().unwrap() {
        let name = p["what"].as_str().unwrap();
        if p["on"] != on || what.is_some_and(|w| w != name) {
            continue;
        }
        let pid = i32::try_from(p["pid"].as_i64().unwrap()).unwrap();
        assert_eq!(
            start_ticks(pid),
            p["start_ticks"].as_u64(),
            "{name} on {on} (pid {pid}) is not running as up started it"
        );
        nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        killed.push((name.to_string(), pid));
    }
    killed
}

/// The holders of the scheduler's and the controller-manager's Leases.
async fn leaders(client: &kube::Client) -> (Option<String>, Option<String>) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let holder = async |name: &str| {
        leases
            .get_opt(name)
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
    };
    (
        holder("kube-scheduler").await,
        holder("kube-controller-manager").await,
    )
}

async fn kubectl(f: &Fixture, kubectl: &Path, kc: &Path, args: &[&str]) -> Output {
    let mut argv = vec![
        kubectl.to_str().unwrap(),
        "--kubeconfig",
        kc.to_str().unwrap(),
    ];
    argv.extend_from_slice(args);
    f.tb.exec(&f.host, &argv, Duration::from_secs(30))
        .await
        .unwrap()
}

fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The members' underlay addresses (the `kubernetes` endpoints).
const MEMBER_IPS: [(&str, &str); 3] = [
    ("cp1", "198.18.0.11"),
    ("cp2", "198.18.0.12"),
    ("cp3", "198.18.0.13"),
];

/// Waits (up to `limit`) until `default/kubernetes` — its Endpoints and its EndpointSlice, as
/// kubectl shows them — lists exactly the API servers at `want`, port 6443; returns them.
async fn wait_kubernetes_endpoints(
    f: &Fixture,
    kubectl_bin: &Path,
    want: &[&str],
    limit: Duration,
) -> Vec<String> {
    let kc = f.kubeconfig();
    let k = async |args: &[&str]| kubectl(f, kubectl_bin, &kc, args).await;
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    let deadline = Instant::now() + limit;
    loop {
        let ep = k(&[
            "get",
            "endpoints",
            "kubernetes",
            "-o",
            "jsonpath={.subsets[*].addresses[*].ip} {.subsets[*].ports[*].port}",
        ])
        .await;
        let slice = k(&[
            "get",
            "endpointslice",
            "kubernetes",
            "-o",
            "jsonpath={.endpoints[*].addresses[*]} {.ports[*].port}",
        ])
        .await;
        let ips = |o: &Output| {
            let mut words: Vec<String> = o.stdout.split_whitespace().map(String::from).collect();
            let port = words.pop();
            words.sort();
            (words, port)
        };
        let (e, s) = (ips(&ep), ips(&slice));
        let port = Some("6443".to_string());
        if ep.success() && slice.success() && e == (want.clone(), port.clone()) && s == e {
            return want;
        }
        assert!(
            Instant::now() < deadline,
            "default/kubernetes does not list {want:?} within {limit:?}: Endpoints {}, EndpointSlice {}",
            show(&ep),
            show(&slice)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Issue 17's `--control-plane 3` acceptance, on a cluster up with 3 members and `nodes`
/// nodes: `default/kubernetes` lists the three API servers; SIGKILL every process of the
/// leading member (the scheduler's too, should it lead elsewhere), then kubectl, with the same
/// kubeconfig and address, still writes and reads; a new Deployment (`workload`: its image and
/// command) gets its 2 pods scheduled and running (the standbys took the Leases); every node
/// stays Ready; and the killed member's address leaves `default/kubernetes`.
async fn the_cluster_keeps_serving_when_the_leading_member_is_killed(
    f: &Fixture,
    kubectl_bin: &Path,
    nodes: usize,
    workload: (&str, &[&str]),
) {
    let kc = f.kubeconfig();
    let k = async |args: &[&str]| kubectl(f, kubectl_bin, &kc, args).await;
    // Who leads: the Leases name the member (`<cluster>-cpN`).
    let client = f.client().await;
    let (sched, cm) = leaders(&client).await;
    let member = |holder: &Option<String>| {
        holder
            .as_deref()
            .and_then(|h| h.strip_prefix(&format!("{}-", f.name)))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("a Lease holder that is no member: {holder:?}"))
    };
    let leader = member(&cm);
    assert!(["cp1", "cp2", "cp3"].contains(&leader.as_str()), "{leader}");
    println!("leaders before: scheduler {sched:?}, controller-manager {cm:?}");

    // default/kubernetes lists every member's API server (their leases are live).
    let all_members: Vec<&str> = MEMBER_IPS.iter().map(|(_, ip)| *ip).collect();
    let listed =
        wait_kubernetes_endpoints(f, kubectl_bin, &all_members, Duration::from_secs(30)).await;
    println!("default/kubernetes before the loss: {listed:?}");

    // An acknowledged write before the loss, which must outlive it.
    let w = k(&[
        "create",
        "configmap",
        "ha-before",
        "--from-literal=k=before",
    ])
    .await;
    assert!(w.success(), "{}", show(&w));

    // Every process of the leading member: etcd member, API server, scheduler,
    // controller-manager.
    let state_file = f.cluster_dir().join("state.json");
    let mut killed = kill_on(&state_file, &leader, None);
    let whats: Vec<&str> = killed.iter().map(|(w, _)| w.as_str()).collect();
    for want in ["etcd", "apiserver", "scheduler", "controller-manager"] {
        assert!(whats.contains(&want), "{leader} ran no {want}: {killed:?}");
    }
    // `up` makes one member lead both; should the scheduler lead elsewhere by now, stop it
    // too, so that its failover is shown all the same.
    let sched_member = member(&sched);
    if sched_member != leader {
        killed.extend(kill_on(&state_file, &sched_member, Some("scheduler")));
    }
    let killed_at = Instant::now();
    println!("killed on {leader}: {killed:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while killed.iter().any(|(_, pid)| start_ticks(*pid).is_some()) {
        assert!(Instant::now() < deadline, "still running: {killed:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // kubectl, with the same kubeconfig and address, writes and reads.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let w = k(&["create", "configmap", "ha-after", "--from-literal=k=after"]).await;
        if w.success() || w.stderr.contains("AlreadyExists") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no write through kubectl within 60 s of the loss: {}",
            show(&w)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let first_write = killed_at.elapsed();
    for (name, want) in [("ha-before", "before"), ("ha-after", "after")] {
        let r = k(&["get", "configmap", name, "-o", "jsonpath={.data.k}"]).await;
        assert!(r.success() && r.stdout == want, "{name}: {}", show(&r));
    }

    // A new Deployment's pods are scheduled and run: a standby scheduler and
    // controller-manager took over.
    // (kubectl's Deployment, with the local image never pulled: a `:latest` image is pulled
    // on every start by default.)
    let image = format!("--image={}", workload.0);
    let mut create = vec![
        "create",
        "deployment",
        "ha-web",
        &image,
        "--replicas=2",
        "--dry-run=client",
        "-o",
        "json",
        "--",
    ];
    create.extend_from_slice(workload.1);
    let dry = k(&create).await;
    assert!(dry.success(), "{}", show(&dry));
    let mut deployment: serde_json::Value = serde_json::from_str(&dry.stdout).unwrap();
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] =
        json!("IfNotPresent");
    let file = f.state.join("ha-web.json");
    std::fs::write(&file, deployment.to_string()).unwrap();
    let d = k(&["create", "-f", file.to_str().unwrap()]).await;
    assert!(d.success(), "{}", show(&d));
    let created_at = Instant::now();
    let client = f.client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let running = match pods.list(&ListParams::default().labels("app=ha-web")).await {
            Ok(l) => l
                .items
                .iter()
                .filter(|p| {
                    p.spec.as_ref().is_some_and(|s| s.node_name.is_some())
                        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                })
                .count(),
            Err(_) => 0,
        };
        if running == 2 {
            break;
        }
        if Instant::now() > deadline {
            let all = k(&["get", "pods,leases", "-A", "-o", "wide"]).await;
            panic!(
                "{running} of 2 ha-web pods running within 120 s of their Deployment:\n{}",
                all.stdout
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let running_after = created_at.elapsed();
    let (sched, cm) = leaders(&client).await;
    println!("leaders after: scheduler {sched:?}, controller-manager {cm:?}");
    for (what, holder) in [("scheduler", &sched), ("controller-manager", &cm)] {
        let m = member(holder);
        assert!(
            m != leader && m != sched_member,
            "the {what} Lease is still {holder:?}"
        );
    }
    // The kubelets kept renewing through their nodes' proxies: both nodes stay Ready.
    let node_api: Api<Node> = Api::all(client.clone());
    let ready = node_api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|n| node_ready(n))
        .count();
    assert_eq!(ready, nodes, "every node Ready after the loss");
    println!(
        "after the loss of {leader}: first write through kubectl {first_write:.2?} after the kill; ha-web's 2 pods running {running_after:.2?} after its creation ({:.2?} after the kill)",
        killed_at.elapsed()
    );

    // The killed member's address leaves default/kubernetes once its lease runs out (15 s)
    // and a survivor reconciles (every 10 s): the bound is 60 s for a loaded machine.
    let survivors: Vec<&str> = MEMBER_IPS
        .iter()
        .filter(|(m, _)| *m != leader)
        .map(|(_, ip)| *ip)
        .collect();
    wait_kubernetes_endpoints(f, kubectl_bin, &survivors, Duration::from_secs(60)).await;
    println!(
        "default/kubernetes dropped {leader} {:.2?} after the kill: {survivors:?}",
        killed_at.elapsed()
    );
}

/// Issue 17's `--control-plane 3` acceptance: kill the leading member's processes, and the
/// cluster keeps serving. etcd's client port (where the member's API server dials) speaks
/// only TLS with a client certificate: the API server's gets `/health`; plain HTTP and TLS
/// without a certificate get nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_control_plane_members_keep_serving_when_the_leading_one_is_killed() {
    let kubectl_bin = require_tool("kubectl", "kubectl (the image's own)");
    let busybox = require_tool("busybox", "busybox-static");
    let curl = require_tool("curl", "curl");
    require_tool("etcd", "etcd-server");
    let f = Fixture::new().await;
    f.assert_clean("before up").await;

    let t = Instant::now();
    let out = f
        .trellis(
            &["up", "--nodes", "2", "--control-plane", "3"],
            Duration::from_secs(300),
        )
        .await;
    let took = t.elapsed();
    assert!(out.success(), "up failed:\n{}", show(&out));
    println!(
        "{}\ntrellis up (2 nodes, --control-plane 3) took {took:?}",
        out.stdout
    );
    assert!(out.stdout.contains("2 nodes Ready"), "{}", out.stdout);
    let kc = f.kubeconfig();
    assert_eq!(kc, f.cluster_dir().join("admin.kubeconfig"));
    let k = async |args: &[&str]| kubectl(&f, &kubectl_bin, &kc, args).await;
    let got = k(&["get", "nodes,pods", "-A"]).await;
    assert!(got.success(), "kubectl: {}", show(&got));
    for want in ["n1", "n2", "trellis-dns-", "web-"] {
        assert!(got.stdout.contains(want), "no {want}:\n{}", got.stdout);
    }

    // etcd's client port, from cp1's namespace: the API server's client certificate (the
    // positive control) gets /health; plain HTTP and TLS without a certificate do not.
    let pki = f.cluster_dir().join("cp1/etcd-pki");
    let file = |name: &str| pki.join(name).display().to_string();
    let (ca, crt, key) = (
        file("ca.crt"),
        file("apiserver-etcd-client.crt"),
        file("apiserver-etcd-client.key"),
    );
    let health = "https://127.0.0.1:2379/health";
    let got = etcd_get(
        &f,
        "cp1",
        &curl,
        health,
        &["--cacert", &ca, "--cert", &crt, "--key", &key],
    )
    .await;
    assert!(
        got.success() && got.stdout.replace(' ', "").contains("\"health\":\"true\""),
        "the API server's etcd client certificate gets /health: {}",
        show(&got)
    );
    let plain = etcd_get(&f, "cp1", &curl, "http://127.0.0.1:2379/health", &[]).await;
    assert!(
        plain.status.code() != Some(7) && !plain.stdout.contains("health"),
        "plain HTTP to the client port: {}",
        show(&plain)
    );
    let no_cert = etcd_get(&f, "cp1", &curl, health, &["--cacert", &ca]).await;
    assert!(
        !no_cert.success() && !no_cert.stdout.contains("health"),
        "TLS without a client certificate: {}",
        show(&no_cert)
    );
    // etcd has a CA of its own: client certificates of the cluster CA — the admin's
    // (system:masters, the kubeconfig's), and one with the API server's very CN — are refused.
    // Before the etcd CA (etcd trusting the cluster CA), this same probe with the admin's
    // certificate got {"health":"true"}: etcd 3.4 cannot restrict clients by CN. The positive
    // control above is the same probe with the etcd CA's certificate.
    let admin_pki = f.cluster_dir().join("cp1/apiserver/pki");
    let same_cn = cluster_ca_client(&f, "kube-apiserver-etcd-client");
    for (what, crt, key) in [
        (
            "the admin's",
            admin_pki.join("admin.crt"),
            admin_pki.join("admin.key"),
        ),
        ("the API server's CN", same_cn.0, same_cn.1),
    ] {
        let (crt, key) = (crt.display().to_string(), key.display().to_string());
        let got = etcd_get(
            &f,
            "cp1",
            &curl,
            health,
            &["--cacert", &ca, "--cert", &crt, "--key", &key],
        )
        .await;
        assert!(
            !got.success() && !got.stdout.contains("health"),
            "a cluster-CA certificate ({what}) at etcd's client port: {}",
            show(&got)
        );
    }
    // The etcd CA is the cluster's own, apart from the cluster CA.
    let etcd_ca = std::fs::read_to_string(&ca).unwrap();
    assert_eq!(
        etcd_ca,
        std::fs::read_to_string(f.cluster_dir().join("etcd-ca/ca.crt")).unwrap()
    );
    assert_ne!(
        etcd_ca,
        std::fs::read_to_string(admin_pki.join("ca.crt")).unwrap()
    );

    println!("{}", rss_table(f.tb.prefix()));

    the_cluster_keeps_serving_when_the_leading_member_is_killed(
        &f,
        &kubectl_bin,
        2,
        (
            "busybox:stable",
            &[busybox.to_str().unwrap(), "sleep", "3600"],
        ),
    )
    .await;

    let t = Instant::now();
    let down = f.trellis(&["down"], Duration::from_secs(60)).await;
    assert!(down.success(), "{}", show(&down));
    println!("{}trellis down took {:?}", down.stdout, t.elapsed());
    f.assert_clean("after down").await;
}

/// The negative control of the test above: with a single member, SIGKILLing its processes
/// (API server, scheduler, controller-manager) stops the cluster serving — kubectl's reads and
/// writes fail (a bounded wait for the first refusal) — so the 3-member cluster's survival is
/// the other members' doing, not something the kill leaves running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_control_plane_member_killed_stops_the_cluster_serving() {
    let kubectl_bin = require_tool("kubectl", "kubectl (the image's own)");
    let f = Fixture::new().await;
    f.assert_clean("before up").await;
    let out = f
        .trellis(
            &["up", "--nodes", "1", "--control-plane", "1"],
            Duration::from_secs(300),
        )
        .await;
    assert!(out.success(), "up failed:\n{}", show(&out));
    assert!(out.stdout.contains("1 nodes Ready"), "{}", out.stdout);
    let kc = f.kubeconfig();
    let k = async |args: &[&str]| kubectl(&f, &kubectl_bin, &kc, args).await;
    let w = k(&[
        "create",
        "configmap",
        "solo-before",
        "--from-literal=k=before",
    ])
    .await;
    assert!(w.success(), "a write before the loss: {}", show(&w));

    // Every process `up` started on the one member.
    let state_file = f.cluster_dir().join("state.json");
    let killed = kill_on(&state_file, "cp", None);
    let whats: Vec<&str> = killed.iter().map(|(w, _)| w.as_str()).collect();
    for want in ["apiserver", "scheduler", "controller-manager"] {
        assert!(
            whats.contains(&want),
            "the member ran no {want}: {killed:?}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while killed.iter().any(|(_, pid)| start_ticks(*pid).is_some()) {
        assert!(Instant::now() < deadline, "still running: {killed:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The API stops answering: kubectl's read, with the same kubeconfig and address, fails.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = k(&["get", "--raw", "/healthz", "--request-timeout=5s"]).await;
        if !r.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the API still answers 30 s after its only member was killed: {}",
            show(&r)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let w = k(&[
        "create",
        "configmap",
        "solo-after",
        "--from-literal=k=after",
        "--request-timeout=5s",
    ])
    .await;
    assert!(
        !w.success(),
        "a write succeeded with the only member dead: {}",
        show(&w)
    );

    let down = f.trellis(&["down"], Duration::from_secs(60)).await;
    assert!(down.success(), "{}", show(&down));
    f.assert_clean("after down").await;
}

/// The bench (not run by CI): `up` to Ready + demo answering and `down`, for
/// `TRELLIS_UP_BENCH_NODES` nodes (default 10) and `up`'s further arguments in
/// `TRELLIS_UP_BENCH_ARGS` (split at spaces, e.g. `--mode routed --control-plane 3`), with
/// the RSS of every process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: cargo nextest run -p netns-testbed --test up --run-ignored only --no-capture"]
async fn bench_up_and_down() {
    let nodes = std::env::var("TRELLIS_UP_BENCH_NODES").unwrap_or_else(|_| "10".into());
    let extra = std::env::var("TRELLIS_UP_BENCH_ARGS").unwrap_or_default();
    let mut args = vec!["up", "--nodes", &nodes];
    args.extend(extra.split_whitespace());
    let f = Fixture::new().await;
    let t = Instant::now();
    let out = f.trellis(&args, Duration::from_secs(600)).await;
    let up = t.elapsed();
    assert!(out.success(), "up failed:\n{}", show(&out));
    println!("{}", out.stdout);
    println!("{}", rss_table(f.tb.prefix()));
    let t = Instant::now();
    let down = f.trellis(&["down"], Duration::from_secs(120)).await;
    assert!(down.success(), "{}", show(&down));
    println!(
        "{nodes} nodes {extra}: up (to Ready and the demo answering) {up:.2?}, down {:.2?}",
        t.elapsed()
    );
    f.assert_clean("after down").await;
}

/// What the cluster's containerd could leave on the machine: processes whose command line
/// names the cluster's directory (containerd, its shims, the containers: the agents' flags
/// and the demo's pages are under it), mounts under it, runc's state directory of the
/// cluster's containerd namespace, and that namespace's cgroups.
fn containerd_leftovers(f: &Fixture) -> Vec<String> {
    let dir = f.cluster_dir().display().to_string();
    let mut left = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&dir) {
            left.push(format!("process {pid}: {cmd}"));
        }
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for l in mountinfo.lines().filter(|l| l.contains(&dir)) {
        left.push(format!("mount {l}"));
    }
    let runc = Path::new("/run/containerd/runc").join(&f.name);
    if runc.exists() {
        left.push(format!("runc state {}", runc.display()));
    }
    for m in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let cg = m.path().join(&f.name);
        if cg.exists() {
            left.push(format!("cgroup {}", cg.display()));
        }
    }
    left
}

/// Every container of every pod of the cluster has a `containerd://` ID and a RUNNING task in
/// the cluster's containerd (`ctr tasks ls` on its socket), a pod starts with each of
/// `wants`, and there are at least `min_containers`; returns the containers' IDs.
async fn assert_every_pod_runs_as_a_containerd_task(
    f: &Fixture,
    client: &kube::Client,
    ctr: &Path,
    wants: &[&str],
    min_containers: usize,
) -> Vec<String> {
    // Every pod of the cluster runs as a containerd task: its containers' IDs say so, and
    // the cluster's containerd lists a running task for each.
    let all: Api<Pod> = Api::all(client.clone());
    let pods = all.list(&ListParams::default()).await.unwrap().items;
    let mut ids = Vec::new();
    for p in &pods {
        let name = p.metadata.name.clone().unwrap();
        for c in p
            .status
            .as_ref()
            .unwrap()
            .container_statuses
            .iter()
            .flatten()
        {
            let id = c.container_id.clone().unwrap_or_default();
            assert!(
                id.starts_with("containerd://"),
                "{name}/{}: containerID {id:?}",
                c.name
            );
            ids.push(id.trim_start_matches("containerd://").to_string());
        }
    }
    for want in wants {
        assert!(
            pods.iter()
                .any(|p| p.metadata.name.as_deref().unwrap().starts_with(want)),
            "no pod {want}"
        );
    }
    assert!(ids.len() >= min_containers, "{ids:?}");
    let sock = f.cluster_dir().join("containerd/containerd.sock");
    let tasks =
        f.tb.exec(
            &f.host,
            &[
                ctr.to_str().unwrap(),
                "-a",
                sock.to_str().unwrap(),
                "-n",
                &f.name,
                "tasks",
                "ls",
            ],
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert!(tasks.success(), "ctr tasks ls: {}", show(&tasks));
    for id in &ids {
        assert!(
            tasks
                .stdout
                .lines()
                .any(|l| l.starts_with(id.as_str()) && l.contains("RUNNING")),
            "task {id} is not running:\n{}",
            tasks.stdout
        );
    }

    ids
}

/// The demo, on a cluster whose pods run the image: by address from the namespace `up` ran in
/// (every web pod), `kubectl exec` into a web container, and by Service name from pods of the
/// image — a `role=client` pod gets in, an unlabelled one resolves the name but is kept out.
async fn assert_the_demo_serves_from_the_image(
    f: &Fixture,
    client: &kube::Client,
    kubectl: &Path,
    curl: &Path,
) {
    // Networked: the demo by address from the namespace up ran in, every web pod.
    let web = Api::<Pod>::namespaced(client.clone(), "demo")
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    assert_eq!(web.items.len(), 2);
    for p in &web.items {
        let ip = p.status.as_ref().unwrap().pod_ip.clone().unwrap();
        let url = format!("http://{ip}/");
        let got =
            f.tb.exec(
                &f.host,
                &[curl.to_str().unwrap(), "-sf", "-m", "5", &url],
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert!(
            got.success() && got.stdout.contains("Hello"),
            "{url}: {}",
            show(&got)
        );
    }
    // kubectl exec reaches a container of the image through the API server and kubelet.
    let kc = f.kubeconfig();
    let web0 = web.items[0].metadata.name.clone().unwrap();
    let got =
        f.tb.exec(
            &f.host,
            &[
                kubectl.to_str().unwrap(),
                "--kubeconfig",
                kc.to_str().unwrap(),
                "-n",
                "demo",
                "exec",
                &web0,
                "--",
                "busybox",
                "echo",
                "exec-ok",
            ],
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert!(
        got.success() && got.stdout.trim() == "exec-ok",
        "kubectl exec: {}",
        show(&got)
    );

    // By Service name from pods of the image: a client gets in, a stranger resolves the name
    // but is kept out by the NetworkPolicy (exit 7). (busybox-static's wget crashes in a
    // static glibc's name service, so the name is resolved by nslookup and the page
    // fetched with nc.)
    let shell = ["busybox", "sh"];
    let resolve = "ip=$(busybox nslookup web.demo.svc.cluster.local | busybox awk '/^Address: /{print $2}' | busybox tail -n 1); [ -n \"$ip\" ] || exit 3";
    let get = |secs: u32| {
        format!(
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w {secs} $ip 80 | busybox grep -q Hello"
        )
    };
    let client_code = run_pod_from(
        client,
        "client",
        json!({"role": "client"}),
        "trellis:latest",
        &shell,
        &format!("{resolve}; {}", get(5)),
    )
    .await;
    assert_eq!(
        client_code, 0,
        "a role=client pod reaches web.demo.svc.cluster.local"
    );
    let stranger_code = run_pod_from(
        client,
        "stranger",
        json!({"role": "other"}),
        "trellis:latest",
        &shell,
        &format!("{resolve}; {} && exit 0; exit 7", get(3)),
    )
    .await;
    assert_eq!(
        stranger_code, 7,
        "a pod without role=client resolves web but is kept out"
    );
}

/// `--runtime containerd`: the agents, policyd, DNS and the demo run as containerd tasks from
/// the image `up` builds from the trellis binary; pods get networked (the demo answers from
/// the namespace up ran in, a client reaches it by Service name, the policy keeps a stranger
/// out); `down` leaves no process, mount, namespace, cgroup or runc state of containerd's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_canal_nodes_on_containerd_run_the_agents_from_the_image_and_go_down_clean() {
    let curl = require_tool("curl", "curl");
    let ctr = require_tool("ctr", "containerd");
    let kubectl = require_tool("kubectl", "kubectl (the image's own)");
    require_tool("containerd", "containerd");
    require_tool("runc", "runc");
    let f = Fixture::new().await;
    f.assert_clean("before up").await;
    assert_eq!(containerd_leftovers(&f), Vec::<String>::new(), "before up");

    let t = Instant::now();
    let out = f
        .trellis(
            &[
                "up",
                "--nodes",
                "2",
                "--mode",
                "canal",
                "--runtime",
                "containerd",
                "--image-cache",
                &image_cache(),
            ],
            Duration::from_secs(280),
        )
        .await;
    let took = t.elapsed();
    assert!(out.success(), "up failed:\n{}", show(&out));
    println!(
        "{}\ntrellis up (2 nodes, canal, containerd) took {took:?}",
        out.stdout
    );
    assert_image_from_the_cache(&out.stdout);
    for want in [
        "2 nodes Ready",
        "runtime containerd",
        "image trellis:latest",
    ] {
        assert!(
            out.stdout.contains(want),
            "up's output lacks {want:?}:\n{}",
            out.stdout
        );
    }

    let client = f.client().await;
    // 2 agents, 2 policyd, DNS, 2 web.
    assert_every_pod_runs_as_a_containerd_task(
        &f,
        &client,
        &ctr,
        &[
            "trellis-overlay-agent-",
            "trellis-policyd-",
            "trellis-dns-",
            "web-",
        ],
        7,
    )
    .await;
    assert_the_demo_serves_from_the_image(&f, &client, &kubectl, &curl).await;
    println!("{}", rss_table(f.tb.prefix()));

    // The leak check sees containerd while it runs (it is not vacuous).
    let running = containerd_leftovers(&f);
    assert!(
        running.iter().any(|l| l.starts_with("process"))
            && running.iter().any(|l| l.starts_with("mount")),
        "{running:#?}"
    );

    let t = Instant::now();
    let down = f.trellis(&["down"], Duration::from_secs(90)).await;
    assert!(down.success(), "{}", show(&down));
    println!("{}trellis down took {:?}", down.stdout, t.elapsed());
    f.assert_clean("after down").await;
    let mut left = containerd_leftovers(&f);
    for _ in 0..100 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        left = containerd_leftovers(&f);
    }
    assert!(left.is_empty(), "after down: {left:#?}");
}

/// A client certificate and key for `user` from the cluster CA (cp1's copy), written beside
/// the cluster's directory by `trellis certs kubeconfig` and taken out of its kubeconfig.
fn cluster_ca_client(f: &Fixture, user: &str) -> (PathBuf, PathBuf) {
    use base64::Engine as _;
    let dir = f.state.join("certs");
    std::fs::create_dir_all(&dir).unwrap();
    let kc = dir.join(format!("{user}.kubeconfig"));
    let out = std::process::Command::new(bin_path("trellis"))
        .args(["certs", "kubeconfig", "--data-dir"])
        .arg(f.cluster_dir().join("cp1/apiserver"))
        .args([
            "--user",
            user,
            "--server",
            "https://127.0.0.1:6443",
            "--out",
        ])
        .arg(&kc)
        .output()
        .unwrap();
    assert!(out.status.success(), "trellis certs kubeconfig: {out:?}");
    let text = std::fs::read_to_string(&kc).unwrap();
    let field = |name: &str| {
        let b64 = text
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {text}"));
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .unwrap()
    };
    let (crt, key) = (
        dir.join(format!("{user}.crt")),
        dir.join(format!("{user}.key")),
    );
    std::fs::write(&crt, field("client-certificate-data:")).unwrap();
    std::fs::write(&key, field("client-key-data:")).unwrap();
    (crt, key)
}

/// The image cache every containerd test's `up` shares, beside the binaries: the image is
/// built once per build of `trellis` (the cache's flock makes parallel `up`s build once).
fn image_cache() -> String {
    bin_path("trellis")
        .parent()
        .unwrap()
        .join("up-image-cache")
        .display()
        .to_string()
}

/// The line of `up`'s output that says where the image came from: "cached build" (a hit) or
/// "built in" — and the archive it names is in the shared cache.
fn assert_image_from_the_cache(stdout: &str) {
    let line = stdout
        .lines()
        .find(|l| l.contains("image trellis:latest"))
        .unwrap_or_else(|| panic!("no image line:\n{stdout}"));
    assert!(
        (line.contains("cached build") || line.contains("built in"))
            && line.contains(&image_cache()),
        "{line}"
    );
    println!("image: {line}");
}

/// `url`'s `/members` (an etcd member's peer port) from member `from`'s namespace (etcd takes
/// a peer certificate only from an address it names), with `curl` and `args` (its TLS
/// options).
async fn etcd_peer_members(
    f: &Fixture,
    from: &str,
    curl: &Path,
    url: &str,
    args: &[&str],
) -> Output {
    etcd_get(f, from, curl, &format!("{url}/members"), args).await
}

/// `GET url` (an etcd member's peer or client port) from member `from`'s namespace, with
/// `curl` and `args` (its TLS options), HTTP/1.1 (etcd's peer server ends an HTTP/2 stream
/// uncleanly, which curl reports as a partial transfer).
async fn etcd_get(f: &Fixture, from: &str, curl: &Path, url: &str, args: &[&str]) -> Output {
    let ns = Netns::open(f.tb.run_dir().join(format!("{}-{from}", f.name))).unwrap();
    let mut argv = vec![curl.to_str().unwrap(), "-sS", "-m", "5", "--http1.1"];
    argv.extend_from_slice(args);
    argv.push(url);
    f.tb.exec(&ns, &argv, Duration::from_secs(15))
        .await
        .unwrap()
}

/// `--runtime containerd` in the routed mode with 3 nodes and 3 members: the BGP agents,
/// policyd, DNS and the demo run as containerd tasks, with runc's state under the cluster's
/// directory (not /run/containerd/runc); pods on every node reach pods on every other; the
/// demo serves (the containerd checks above); the etcd members' peer port speaks only TLS
/// with a peer certificate (plain HTTP, TLS without a certificate and another certificate of
/// the cluster CA get no member list; the positive control, a member's own peer certificate,
/// gets it from the same URL); `default/kubernetes` lists the members, and the cluster keeps
/// serving when the leading member is killed (the `--control-plane 3` checks above, the
/// Deployment from the image); `down` leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_routed_nodes_on_containerd_with_three_members_serve_survive_a_member_and_go_down_clean()
 {
    let curl = require_tool("curl", "curl");
    let ctr = require_tool("ctr", "containerd");
    let kubectl_bin = require_tool("kubectl", "kubectl (the image's own)");
    require_tool("containerd", "containerd");
    require_tool("runc", "runc");
    require_tool("etcd", "etcd-server");
    let f = Fixture::new().await;
    f.assert_clean("before up").await;
    assert_eq!(containerd_leftovers(&f), Vec::<String>::new(), "before up");

    let t = Instant::now();
    let out = f
        .trellis(
            &[
                "up",
                "--nodes",
                "3",
                "--mode",
                "routed",
                "--control-plane",
                "3",
                "--runtime",
                "containerd",
                "--image-cache",
                &image_cache(),
            ],
            Duration::from_secs(400),
        )
        .await;
    let took = t.elapsed();
    assert!(out.success(), "up failed:\n{}", show(&out));
    println!(
        "{}\ntrellis up (3 nodes, routed, --control-plane 3, containerd) took {took:?}",
        out.stdout
    );
    assert_image_from_the_cache(&out.stdout);
    for want in [
        "3 nodes Ready",
        "runtime containerd",
        "image trellis:latest",
    ] {
        assert!(
            out.stdout.contains(want),
            "up's output lacks {want:?}:\n{}",
            out.stdout
        );
    }

    let client = f.client().await;
    // 3 BGP agents, 3 policyd, DNS, 2 web.
    let ids = assert_every_pod_runs_as_a_containerd_task(
        &f,
        &client,
        &ctr,
        &[
            "trellis-bgp-agent-",
            "trellis-policyd-",
            "trellis-dns-",
            "web-",
        ],
        9,
    )
    .await;
    // runc's state of every container is under the cluster's directory, none machine-wide.
    let runc = f.cluster_dir().join("containerd/runc").join(&f.name);
    for id in &ids {
        assert!(
            runc.join(id).join("state.json").is_file(),
            "no runc state for {id} in {}",
            runc.display()
        );
    }
    let machine_wide = Path::new("/run/containerd/runc").join(&f.name);
    assert!(!machine_wide.exists(), "{} exists", machine_wide.display());

    // Pods on every node reach pods on every other node (all 6 ordered pairs), across the
    // BGP-routed blocks: a server pod pinned to each node, and from each, a request to the
    // others' addresses (any HTTP answer proves the path).
    let default: Api<Pod> = Api::namespaced(client.clone(), "default");
    for n in ["n1", "n2", "n3"] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("reach-{n}"), "labels": {"app": "reach"}},
            "spec": {"nodeName": n, "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "httpd", "image": "trellis:latest", "imagePullPolicy": "IfNotPresent",
                                     "command": ["busybox", "httpd", "-f", "-p", "8080", "-h", "/"]}]}}))
        .unwrap();
        default.create(&PostParams::default(), &pod).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    let ips: Vec<(String, String)> = loop {
        let list = default
            .list(&ListParams::default().labels("app=reach"))
            .await
            .unwrap();
        let running: Vec<(String, String)> = list
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .filter_map(|p| Some((p.metadata.name.clone()?, p.status.as_ref()?.pod_ip.clone()?)))
            .collect();
        if running.len() == 3 {
            break running;
        }
        assert!(
            Instant::now() < deadline,
            "{} of 3 reach pods running within 90 s",
            running.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let kc = f.kubeconfig();
    for (from, _) in &ips {
        let others: Vec<&str> = ips
            .iter()
            .filter(|(n, _)| n != from)
            .map(|(_, ip)| ip.as_str())
            .collect();
        let script = format!(
            "for ip in {}; do ok=; for i in 1 2 3 4 5 6 7 8 9 10; do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 3 $ip 8080 | busybox grep -q '^HTTP/1' && ok=1 && break; busybox sleep 1; done; [ -n \"$ok\" ] || {{ echo \"no answer from $ip\"; exit 1; }}; done; echo reached",
            others.join(" ")
        );
        let got = kubectl(
            &f,
            &kubectl_bin,
            &kc,
            &["exec", from, "--", "busybox", "sh", "-c", &script],
        )
        .await;
        assert!(
            got.success() && got.stdout.trim() == "reached",
            "{from} → {others:?}: {}",
            show(&got)
        );
    }
    println!("pods on n1, n2, n3 reach each other: {ips:?}");

    assert_the_demo_serves_from_the_image(&f, &client, &kubectl_bin, &curl).await;

    // etcd's peers speak TLS only, with a peer certificate of the cluster's: cp2's peer port,
    // from cp1's namespace.
    let peer = "https://198.18.0.12:2380";
    let pki = f.cluster_dir().join("cp1/etcd-pki");
    let ca = pki.join("ca.crt").display().to_string();
    let own = (
        pki.join("peer.crt").display().to_string(),
        pki.join("peer.key").display().to_string(),
    );
    // Positive control: a member's own certificate gets the member list (with https URLs).
    let got = etcd_peer_members(
        &f,
        "cp1",
        &curl,
        peer,
        &["--cacert", &ca, "--cert", &own.0, "--key", &own.1],
    )
    .await;
    assert!(
        got.success()
            && MEMBER_IPS
                .iter()
                .all(|(_, ip)| got.stdout.contains(&format!("https://{ip}:2380"))),
        "a peer certificate gets the members: {}",
        show(&got)
    );
    // Plain HTTP to the same port: it listens (curl connects: not exit 7) but gives nothing.
    let plain = etcd_peer_members(&f, "cp1", &curl, "http://198.18.0.12:2380", &[]).await;
    assert!(
        plain.status.code() != Some(7) && !plain.stdout.contains("peerURLs"),
        "plain HTTP to a peer port: {}",
        show(&plain)
    );
    // TLS without a client certificate, with a certificate of the cluster CA (the admin's:
    // not etcd's CA), and with the etcd CA's API server client certificate (not the peers'
    // common name) are refused.
    let admin = f.cluster_dir().join("cp1/apiserver/pki");
    let (admin_crt, admin_key) = (
        admin.join("admin.crt").display().to_string(),
        admin.join("admin.key").display().to_string(),
    );
    let (client_crt, client_key) = (
        pki.join("apiserver-etcd-client.crt").display().to_string(),
        pki.join("apiserver-etcd-client.key").display().to_string(),
    );
    for args in [
        vec!["--cacert", ca.as_str()],
        vec![
            "--cacert",
            ca.as_str(),
            "--cert",
            admin_crt.as_str(),
            "--key",
            admin_key.as_str(),
        ],
        vec![
            "--cacert",
            ca.as_str(),
            "--cert",
            client_crt.as_str(),
            "--key",
            client_key.as_str(),
        ],
    ] {
        let got = etcd_peer_members(&f, "cp1", &curl, peer, &args).await;
        assert!(
            !got.success() && !got.stdout.contains("peerURLs"),
            "curl {args:?} {peer}/members: {}",
            show(&got)
        );
    }

    the_cluster_keeps_serving_when_the_leading_member_is_killed(
        &f,
        &kubectl_bin,
        3,
        ("trellis:latest", &["busybox", "sleep", "3600"]),
    )
    .await;
    println!("{}", rss_table(f.tb.prefix()));

    let t = Instant::now();
    let down = f.trellis(&["down"], Duration::from_secs(120)).await;
    assert!(down.success(), "{}", show(&down));
    println!("{}trellis down took {:?}", down.stdout, t.elapsed());
    f.assert_clean("after down").await;
    let mut left = containerd_leftovers(&f);
    for _ in 0..100 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        left = containerd_leftovers(&f);
    }
    assert!(left.is_empty(), "after down: {left:#?}");
}
