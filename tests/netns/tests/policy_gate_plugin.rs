//! The ADD gate, for both the overlay and the routed plugin, on a real node: the agent started
//! with `--policy-socket` writes the `policy` section into its conflist, and the plugin — run
//! directly, as a runtime runs it, so no invoker's DEL-after-failure hides what ADD left —
//! waits for a policyd played by the test with the real gate server.
//!
//! - committed: ADD returns only after the answer; policyd saw the pod's namespace, name,
//!   address and host interface, with the veth already in place;
//! - no answer: ADD fails with 11 after the timeout, the address is back in IPAM and the veth
//!   is gone;
//! - nothing listening (a stale socket file, then none at all): 11 at once, cleaned up the same;
//! - no `policy` section (policy off): ADD succeeds with nothing listening, without waiting.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/overlay_cluster.rs"]
mod overlay_cluster;
#[path = "support/routed_cluster.rs"]
mod routed_cluster;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netns_testbed::cluster::held_addresses;
use netns_testbed::cni_run::PluginRun;
use netns_testbed::{Node, REFERENCE_PLUGIN_DIR, Testbed, bin_dir, bin_path};
use serde_json::Value;
use trellis_net::Netns;
use trellis_policy_gate::{AddRequest, Reply};

/// The gate's bound in these tests: long enough that "at once" and "after the timeout" cannot
/// be confused on a loaded machine.
const GATE_MS: u64 = 6000;

/// One node of either mode, with what the gate checks need.
struct Site<'a> {
    tb: &'a Testbed,
    node: &'a Node,
    /// The node's directories (conflist in `net.d/`, ipamd's socket).
    dirs: PathBuf,
    conflist: &'static str,
    plugin: &'static str,
}

impl Site<'_> {
    /// The plugin's configuration as the agent wrote it, with the list's version and name.
    fn conf(&self) -> Value {
        let list: Value = serde_json::from_slice(
            &std::fs::read(self.dirs.join("net.d").join(self.conflist)).unwrap(),
        )
        .unwrap();
        let mut conf = list["plugins"][0].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        conf["name"] = list["name"].clone();
        conf
    }

    /// ADD of pod `default/<pod>` (container id `cid-<pod>`) into a new namespace, run from the
    /// node's namespace with the CNI variables and `conf` on stdin.
    async fn add(&self, pod: &str, conf: &Value) -> (Arc<Netns>, PluginRun) {
        let ns = self.tb.add_ns(&format!("p{pod}")).await.unwrap();
        let path = std::env::join_paths([bin_dir(), PathBuf::from(REFERENCE_PLUGIN_DIR)]).unwrap();
        let env = [
            ("CNI_PATH", path.to_string_lossy().into_owned()),
            ("CNI_COMMAND", "ADD".to_string()),
            ("CNI_CONTAINERID", format!("cid-{pod}")),
            ("CNI_NETNS", ns.path().display().to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            (
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}"),
            ),
        ];
        let run = self
            .tb
            .run_plugin(
                &self.node.ns,
                &bin_path(self.plugin),
                &env,
                conf,
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        (ns, run)
    }

    /// The addresses the node's ipamd holds.
    async fn held(&self) -> std::collections::BTreeSet<IpAddr> {
        let trellis = bin_path("trellis");
        let socket = self.dirs.join("ipamd.sock").display().to_string();
        let out = self
            .tb
            .exec_ok(
                &self.node.ns,
                &[
                    trellis.to_str().unwrap(),
                    "ipam",
                    "--socket",
                    &socket,
                    "blocks",
                    "--allocations",
                ],
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        held_addresses(&out)
    }

    /// Asserts that a failed ADD of `pod` left nothing: no host end, no interface in the pod,
    /// and (when known) its address free again.
    async fn assert_undone(&self, pod: &str, pod_ns: &Netns, address: Option<IpAddr>) {
        let host_end = host_end(pod);
        let h = self.node.ns.connect().unwrap();
        assert!(
            h.link(&host_end).await.unwrap().is_none(),
            "{}: the host end {host_end} of {pod} is still there",
            self.plugin
        );
        assert!(
            pod_ns
                .connect()
                .unwrap()
                .link("eth0")
                .await
                .unwrap()
                .is_none(),
            "{}: eth0 of {pod} is still there",
            self.plugin
        );
        if let Some(a) = address {
            let held = self.held().await;
            assert!(
                !held.contains(&a),
                "{}: {a} of {pod} is still held: {held:?}",
                self.plugin
            );
        }
    }
}

fn host_end(pod: &str) -> String {
    trellis_net::link::host_veth_name(&format!("default/{pod}"))
}

fn result_ip(out: &Value) -> IpAddr {
    let a = out["ips"][0]["address"].as_str().unwrap();
    a.split('/').next().unwrap().parse().unwrap()
}

/// What the test's policyd saw: each request, and whether the pod's host end existed when it
/// came in.
type Seen = Arc<Mutex<Vec<(AddRequest, bool, Instant)>>>;

/// policyd played with the real gate server at `socket`: pod `slow` never gets an answer,
/// every other pod is committed after 500 ms (so ADD returning after the answer proves it
/// waited).
fn fake_policyd(
    socket: &Path,
    node_ns: Arc<Netns>,
) -> (
    Seen,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let listener = trellis_policy_gate::bind(socket).unwrap();
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let seen = seen.clone();
        move |r: AddRequest| {
            let (seen, node_ns) = (seen.clone(), node_ns.clone());
            async move {
                let wired = node_ns
                    .connect()
                    .unwrap()
                    .link(&r.host_interface)
                    .await
                    .unwrap()
                    .is_some();
                let slow = r.pod == "slow";
                if !slow {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                seen.lock().unwrap().push((r, wired, Instant::now()));
                if slow {
                    std::future::pending::<()>().await;
                }
                Reply::Committed
            }
        }
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        trellis_policy_gate::serve(listener, handler, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (seen, stop, server)
}

/// The four cases on one node whose agent was started with the gate on.
async fn the_gate_holds_add_until_policyd_commits(site: &Site<'_>, socket: &Path) {
    let conf = site.conf();
    assert_eq!(
        conf["policy"],
        serde_json::json!({"socket": socket, "timeoutMs": GATE_MS}),
        "the agent writes the gate into its conflist"
    );

    // (a) Committed: ADD returns after the answer; policyd saw the pod, wired already.
    let (seen, stop, server) = fake_policyd(socket, site.node.ns.clone());
    let (_pa, run) = site.add("a", &conf).await;
    let returned = Instant::now();
    assert!(run.ok, "{}: ADD a: {} {}", site.plugin, run.out, run.stderr);
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "{seen:?}");
        let (req, wired, answered) = &seen[0];
        assert_eq!(
            (
                req.namespace.as_str(),
                req.pod.as_str(),
                req.container_id.as_str()
            ),
            ("default", "a", "cid-a")
        );
        assert_eq!(req.addresses, vec![result_ip(&run.out)]);
        assert_eq!(req.host_interface, host_end("a"));
        assert!(*wired, "the veth was in place before policyd was asked");
        assert!(
            returned >= *answered,
            "ADD returned before policyd answered"
        );
    }
    assert!(site.held().await.contains(&result_ip(&run.out)));

    // (b) No answer: 11 after the bound, the address released, the veth gone.
    let (ps, run) = site.add("slow", &conf).await;
    assert!(!run.ok, "{}: {}", site.plugin, run.out);
    assert_eq!(run.out["code"], 11, "{}", run.out);
    assert_eq!(
        run.out["msg"],
        format!("policyd did not confirm the pod's rules within {GATE_MS} ms")
    );
    assert!(
        run.took >= Duration::from_millis(GATE_MS)
            && run.took < Duration::from_millis(GATE_MS) + Duration::from_secs(20),
        "{}: ADD took {:?}",
        site.plugin,
        run.took
    );
    let slow_ip = {
        let seen = seen.lock().unwrap();
        let (req, wired, _) = seen.iter().find(|(r, _, _)| r.pod == "slow").unwrap();
        assert!(*wired);
        req.addresses[0]
    };
    site.assert_undone("slow", &ps, Some(slow_ip)).await;

    // (c) Nothing listening — a socket file left by a dead policyd, then no file at all: 11 at
    // once (well within the bound), cleaned up the same way.
    stop.send(()).unwrap();
    server.await.unwrap();
    assert!(socket.exists(), "the stale socket file stays");
    for (pod, what) in [("refused", "stale socket"), ("absent", "no socket")] {
        if what == "no socket" {
            std::fs::remove_file(socket).unwrap();
        }
        let before = site.held().await;
        let (pn, run) = site.add(pod, &conf).await;
        assert!(!run.ok, "{}: {what}: {}", site.plugin, run.out);
        assert_eq!(run.out["code"], 11, "{what}: {}", run.out);
        assert!(
            run.out["msg"]
                .as_str()
                .unwrap()
                .starts_with("policyd is not listening on"),
            "{what}: {}",
            run.out
        );
        assert!(
            run.took < Duration::from_millis(GATE_MS),
            "{}: {what}: ADD waited {:?}",
            site.plugin,
            run.took
        );
        site.assert_undone(pod, &pn, None).await;
        assert_eq!(site.held().await, before, "{what}: an address stayed held");
    }

    // (d) Policy off (no `policy` section): nothing listens, and ADD neither waits nor fails.
    let mut off = conf.clone();
    off.as_object_mut().unwrap().remove("policy");
    let (_pd, run) = site.add("d", &off).await;
    assert!(run.ok, "{}: ADD d: {} {}", site.plugin, run.out, run.stderr);
    assert!(run.took < Duration::from_millis(GATE_MS), "{:?}", run.took);
}

fn gate_flags(socket: &Path) -> Vec<String> {
    vec![
        "--policy-socket".into(),
        socket.display().to_string(),
        "--policy-timeout-ms".into(),
        GATE_MS.to_string(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_add_waits_for_policyd() {
    bin_path("trellis-overlay");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/policyd.sock");
    let flags = gate_flags(&socket);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let c = overlay_cluster::Cluster::start_args(1, overlay_cluster::Blocks::Ipamd, &flags).await;
    let w = &c.workers[0];
    let site = Site {
        tb: &c.tb,
        node: &w.node,
        dirs: w.dirs.clone(),
        conflist: "10-trellis-overlay.conflist",
        plugin: "trellis-overlay",
    };
    the_gate_holds_add_until_policyd_commits(&site, &socket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_add_waits_for_policyd() {
    bin_path("trellis-routed");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/policyd.sock");
    let flags = gate_flags(&socket);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let c = routed_cluster::Cluster::start_args(1, false, 1, &flags).await;
    let w = &c.workers[0];
    let site = Site {
        tb: &c.tb,
        node: &w.node,
        dirs: w.dirs.clone(),
        conflist: "10-trellis-routed.conflist",
        plugin: "trellis-routed",
    };
    the_gate_holds_add_until_policyd_commits(&site, &socket).await;
}
