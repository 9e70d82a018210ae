//! The cluster the policy tests share, in either mode: the API server, two nodes each running
//! its agent (with the ADD gate on, `--policy-socket`) and `trellis policyd`, namespaces x, y, z
//! and pods a, b, c in each (spread over the nodes), each serving TCP and UDP (and SCTP where the
//! kernel has it) on ports 80 and 81, with the upstream conformance's named container ports.
//!
//! It keeps the [`World`] of the policy model in step with what it applies, so a test changes the
//! cluster through it and compares the probed matrix with the model's.
//!
//! Test files include it after `overlay_cluster` and `routed_cluster`:
//! ```ignore
//! #[path = "support/overlay_cluster.rs"] mod overlay_cluster;
//! #[path = "support/routed_cluster.rs"] mod routed_cluster;
//! #[path = "support/policy_cluster.rs"] mod policy_cluster;
//! ```

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Api;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use netns_testbed::cluster::ControlPlane;
use netns_testbed::matrix::{self, Cell, Endpoint, Matrix, ProbeServers, Proto};
use netns_testbed::policy_model::{
    Cnp, NS_NAME_LABEL, NetworkPolicy, NsInfo, PodInfo, World, serve_ports,
};
use netns_testbed::{Node, REFERENCE_PLUGIN_DIR, Testbed, bin_dir, bin_path, require_tool};
use serde_json::json;
use trellis_cni::NetworkConfigList;
use trellis_cni::invoke::{CniConfig, RuntimeConf};
use trellis_net::Netns;

use crate::{overlay_cluster, routed_cluster};

/// The data-path mode under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Overlay,
    Routed,
    /// The overlay agent in canal mode: `trellis-canal`'s routed veths over the VXLAN.
    Canal,
}

impl Mode {
    pub fn conflist(self) -> &'static str {
        match self {
            Mode::Overlay => "net.d/10-trellis-overlay.conflist",
            Mode::Routed => "net.d/10-trellis-routed.conflist",
            Mode::Canal => "net.d/10-trellis-canal.conflist",
        }
    }
}

/// How the nodes are set up.
#[derive(Debug, Clone)]
pub struct Opts {
    /// The agents pass `--policy-socket` to their plugins (ADD waits for policyd).
    pub gate: bool,
    /// Extra `trellis policyd` arguments (`--no-pending-deny` for negative controls).
    pub policyd_extra: Vec<String>,
    /// `--verify-period-ms`.
    pub verify_period: Duration,
    /// Create x, y, z and the nine pods.
    pub pods: bool,
    /// Run policyd (off only for the fixture's own baseline check).
    pub policyd: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            gate: true,
            policyd_extra: Vec::new(),
            verify_period: Duration::from_millis(1000),
            pods: true,
            policyd: true,
        }
    }
}

/// The node's policyd addresses (in the node's namespace).
pub const POLICYD_LISTEN: &str = "127.0.0.1:9914";
pub const PORTS: [u16; 2] = [80, 81];
pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];

/// One node: its namespace, state directory, agent and policyd.
pub struct PNode {
    pub node: Node,
    pub dirs: PathBuf,
    pub agent: i32,
    pub policyd: Option<i32>,
    /// Earlier policyd processes of this node, oldest first (their logs are kept).
    pub past_policyd: Vec<i32>,
}

impl PNode {
    pub fn gate_socket(&self) -> PathBuf {
        self.dirs.join("policyd.sock")
    }
    pub fn ready_file(&self) -> PathBuf {
        self.dirs.join("policyd.ready")
    }
}

/// A wired pod: its namespace, address, node and its probe servers.
pub struct WiredPod {
    pub key: String,
    pub ns: Arc<Netns>,
    pub ip: Ipv4Addr,
    pub on: usize,
    pub container_id: String,
    pub servers: Option<ProbeServers>,
}

enum Inner {
    Overlay(overlay_cluster::Cluster),
    Routed(routed_cluster::Cluster),
}

pub struct PolicyCluster {
    pub mode: Mode,
    pub opts: Opts,
    inner: Inner,
    pub client: kube::Client,
    pub nodes: Vec<PNode>,
    pub pods: Vec<WiredPod>,
    pub world: World,
    pub protos: Vec<Proto>,
    cnp_crd: bool,
}

fn np_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("networking.k8s.io", "v1", "NetworkPolicy"),
        "networkpolicies",
    )
}

fn cnp_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(
            "policy.networking.k8s.io",
            "v1alpha2",
            "ClusterNetworkPolicy",
        ),
        "clusternetworkpolicies",
    )
}

/// The ClusterNetworkPolicy CRD as shipped (policyd/deploy).
fn cnp_crd() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../policyd/deploy/clusternetworkpolicy.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("the ClusterNetworkPolicy CRD {}: {e}", path.display()));
    serde_saphyr::from_str(&text).unwrap()
}

impl PolicyCluster {
    /// Two nodes in `mode`, policyd on each, x/y/z × a/b/c wired and serving; returns once
    /// every policyd is ready and the matrix (no policy yet) is all allowed.
    pub async fn start(mode: Mode) -> PolicyCluster {
        PolicyCluster::start_opts(mode, Opts::default()).await
    }

    pub async fn start_opts(mode: Mode, opts: Opts) -> PolicyCluster {
        for (tool, pkg) in [("iptables-save", "iptables"), ("ipset", "ipset")] {
            require_tool(tool, pkg);
        }
        let gate = opts.gate;
        let extra = move |dirs: &Path| -> Vec<String> {
            if gate {
                vec![
                    "--policy-socket".into(),
                    dirs.join("policyd.sock").display().to_string(),
                ]
            } else {
                Vec::new()
            }
        };
        let inner = match mode {
            Mode::Overlay => Inner::Overlay(
                overlay_cluster::Cluster::start_full(2, overlay_cluster::Blocks::PodCidr, extra)
                    .await,
            ),
            Mode::Canal => Inner::Overlay(
                overlay_cluster::Cluster::start_plugin(
                    2,
                    overlay_cluster::Blocks::PodCidr,
                    overlay_cluster::Plugin::Canal,
                    extra,
                )
                .await,
            ),
            Mode::Routed => {
                let c = routed_cluster::Cluster::start_full(2, false, 1, extra).await;
                c.wait_established(1, Duration::from_secs(30)).await;
                Inner::Routed(c)
            }
        };
        let (client, nodes) = match &inner {
            Inner::Overlay(c) => (
                c.client.clone(),
                c.workers
                    .iter()
                    .map(|w| PNode {
                        node: w.node.clone(),
                        dirs: w.dirs.clone(),
                        agent: w.agent,
                        policyd: None,
                        past_policyd: Vec::new(),
                    })
                    .collect(),
            ),
            Inner::Routed(c) => (
                overlay_cluster::kube_client(&c.cp.local_kubeconfig).await,
                c.workers
                    .iter()
                    .map(|w| PNode {
                        node: w.node.clone(),
                        dirs: w.dirs.clone(),
                        agent: w.agent,
                        policyd: None,
                        past_policyd: Vec::new(),
                    })
                    .collect(),
            ),
        };
        let mut c = PolicyCluster {
            mode,
            opts,
            inner,
            client,
            nodes,
            pods: Vec::new(),
            world: World::default(),
            protos: matrix::probed_protocols(),
            cnp_crd: false,
        };
        c.install_cnp_crd().await;
        if c.opts.policyd {
            for i in 0..c.nodes.len() {
                c.start_policyd(i).await;
            }
        }
        if c.opts.pods {
            for ns in NAMESPACES {
                c.create_namespace(ns).await;
            }
            for (i, (ns, pod)) in NAMESPACES
                .iter()
                .flat_map(|n| PODS.iter().map(move |p| (*n, *p)))
                .enumerate()
            {
                c.add_pod(ns, pod, i % 2).await;
            }
            c.converge("no policy: everything allowed", Duration::from_secs(30))
                .await;
        }
        c
    }

    /// Tears the cluster down (processes, namespaces — with every chain, rule and set inside
    /// them) and fails the test if anything with its prefix is left.
    pub fn finish(self) {
        let (prefix, run_dir) = (
            self.tb().prefix().to_string(),
            self.tb().run_dir().to_path_buf(),
        );
        drop(self);
        netns_testbed::leak::assert_clean(&prefix, &run_dir);
    }

    pub fn tb(&self) -> &Testbed {
        match &self.inner {
            Inner::Overlay(c) => &c.tb,
            Inner::Routed(c) => &c.tb,
        }
    }

    pub fn cp(&self) -> &ControlPlane {
        match &self.inner {
            Inner::Overlay(c) => &c.cp,
            Inner::Routed(c) => &c.cp,
        }
    }

    async fn install_cnp_crd(&mut self) {
        let crds: Api<DynamicObject> = Api::all_with(
            self.client.clone(),
            &ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
                "customresourcedefinitions",
            ),
        );
        let obj: DynamicObject = serde_json::from_value(cnp_crd()).unwrap();
        crds.create(&PostParams::default(), &obj).await.unwrap();
        // Served once established: list until it answers.
        let cnps: Api<DynamicObject> = Api::all_with(self.client.clone(), &cnp_resource());
        let deadline = Instant::now() + Duration::from_secs(10);
        while cnps.list(&Default::default()).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "the ClusterNetworkPolicy CRD is not served within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.cnp_crd = true;
    }

    /// Starts `trellis policyd` on node `i` (stale ready file removed first) and waits until it
    /// is ready.
    pub async fn start_policyd(&mut self, i: usize) -> i32 {
        let pid = self.spawn_policyd(i);
        self.wait_policyd_ready(i).await;
        pid
    }

    /// Starts policyd on node `i` without waiting.
    pub fn spawn_policyd(&mut self, i: usize) -> i32 {
        let n = &self.nodes[i];
        let _ = std::fs::remove_file(n.ready_file());
        let trellis = bin_path("trellis");
        let period = self.opts.verify_period.as_millis().to_string();
        let kubeconfig = self.cp().kubeconfig.display().to_string();
        let gate = n.gate_socket().display().to_string();
        let ready = n.ready_file().display().to_string();
        let mut argv: Vec<&str> = vec![
            trellis.to_str().unwrap(),
            "policyd",
            "--node",
            &n.node.name,
            "--kubeconfig",
            &kubeconfig,
            "--gate-socket",
            &gate,
            "--listen",
            POLICYD_LISTEN,
            "--verify-period-ms",
            &period,
            "--ready-file",
            &ready,
        ];
        argv.extend(self.opts.policyd_extra.iter().map(String::as_str));
        let pid = self
            .tb()
            .spawn(&n.node.ns, &argv, Duration::from_secs(900))
            .unwrap();
        self.nodes[i].policyd = Some(pid);
        pid
    }

    /// Waits (30 s at most) until node `i`'s policyd has written its ready file and answers
    /// /readyz with 200 — a condition, not a sleep.
    pub async fn wait_policyd_ready(&self, i: usize) {
        let n = &self.nodes[i];
        let pid = n.policyd.expect("policyd started");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if n.ready_file().is_file() && self.readyz(i).await == Some(200) {
                return;
            }
            assert!(
                self.tb().running(pid),
                "policyd on {} exited:\n{}",
                n.node.name,
                self.tb().log_of(pid)
            );
            assert!(
                Instant::now() < deadline,
                "policyd on {} not ready within 30 s:\n{}",
                n.node.name,
                self.tb().log_of(pid)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// policyd's /readyz status on node `i`, None when it does not answer.
    pub async fn readyz(&self, i: usize) -> Option<u16> {
        let ns = self.nodes[i].node.ns.clone();
        let addr: SocketAddr = POLICYD_LISTEN.parse().unwrap();
        tokio::task::spawn_blocking(move || netns_testbed::probe::http_get(&ns, addr, "/readyz"))
            .await
            .unwrap()
            .ok()
            .map(|(c, _)| c)
    }

    /// GET `path` from node `i`'s policyd.
    pub async fn policyd_get(&self, i: usize, path: &str) -> Option<(u16, String)> {
        let ns = self.nodes[i].node.ns.clone();
        let addr: SocketAddr = POLICYD_LISTEN.parse().unwrap();
        let path = path.to_string();
        tokio::task::spawn_blocking(move || netns_testbed::probe::http_get(&ns, addr, &path))
            .await
            .unwrap()
            .ok()
    }

    /// Stops node `i`'s policyd with `signal` and waits until it has exited.
    pub async fn stop_policyd(&mut self, i: usize, signal: nix::sys::signal::Signal) {
        let pid = self.nodes[i].policyd.take().expect("policyd running");
        // The process group is `timeout` + policyd: signal policyd itself, then reap the group.
        let child = policyd_child(pid).unwrap_or(pid);
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), signal);
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::path::Path::new(&format!("/proc/{child}")).exists() && !is_zombie(child) {
            assert!(
                Instant::now() < deadline,
                "policyd did not exit within 15 s of {signal}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.tb().kill(pid);
        self.nodes[i].past_policyd.push(pid);
    }

    /// The pid of policyd itself on node `i` (its process group leader is `timeout`).
    pub fn policyd_pid(&self, i: usize) -> i32 {
        let pid = self.nodes[i].policyd.expect("policyd running");
        policyd_child(pid).unwrap_or(pid)
    }

    /// Sends `signal` to policyd itself on node `i` (SIGSTOP/SIGCONT for the controls).
    pub fn signal_policyd(&self, i: usize, signal: nix::sys::signal::Signal) {
        let pid = self.policyd_pid(i);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).unwrap();
    }

    /// Creates namespace `name` labelled `ns=<name>`; the API server adds
    /// kubernetes.io/metadata.name itself (as upstream's does) — checked here, since
    /// `trellis policy isolate` selects by it.
    pub async fn create_namespace(&mut self, name: &str) {
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        let obj =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": {"ns": name}}}))
                .unwrap();
        let made = api.create(&PostParams::default(), &obj).await.unwrap();
        let labels: BTreeMap<String, String> = made.metadata.labels.unwrap_or_default();
        assert_eq!(
            labels.get(NS_NAME_LABEL).map(String::as_str),
            Some(name),
            "the API server labels namespace {name} with {NS_NAME_LABEL}: {labels:?}"
        );
        self.world.namespaces.push(NsInfo {
            name: name.into(),
            labels,
        });
    }

    /// The Pod object `ns/name` on node `on`, labelled `pod=<name>`, with the named ports.
    pub async fn create_pod_object(&self, ns: &str, name: &str, on: usize) {
        let ports: Vec<serde_json::Value> = serve_ports(
            &PORTS,
            &[Proto::Tcp, Proto::Udp, Proto::Sctp],
        )
        .iter()
        .map(|p| json!({"name": p.name, "containerPort": p.port, "protocol": p.proto.as_k8s()}))
        .collect();
        let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(self.client.clone(), ns);
        let obj = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "labels": {"pod": name}},
            "spec": {
                "nodeName": self.nodes[on].node.name,
                "containers": [{"name": "serve", "image": "probe", "ports": ports}],
            },
        }))
        .unwrap();
        api.create(&PostParams::default(), &obj).await.unwrap();
    }

    /// Runs the node's CNI configuration for pod `ns/name` (K8S_POD_* args as a kubelet
    /// passes them) in a fresh namespace; the result or the plugin's error, and how long ADD
    /// took. An error reads `code N: …` (the CNI error code first).
    pub async fn cni_add(
        &self,
        ns: &str,
        name: &str,
        on: usize,
        netns: &Arc<Netns>,
        container_id: &str,
    ) -> (Result<Ipv4Addr, String>, Duration) {
        let n = &self.nodes[on];
        let list = NetworkConfigList::from_slice(
            &std::fs::read(n.dirs.join(self.mode.conflist())).unwrap(),
        )
        .unwrap();
        let cni = CniConfig::new(
            vec![bin_dir(), PathBuf::from(REFERENCE_PLUGIN_DIR)],
            n.dirs.join("cache"),
        );
        let rt = runtime_conf(ns, name, netns, container_id);
        let node_ns = n.node.ns.clone();
        let start = Instant::now();
        let result = tokio::task::spawn_blocking(move || node_ns.run(|| cni.add(&list, &rt)))
            .await
            .unwrap()
            .unwrap();
        let took = start.elapsed();
        (
            result
                .map_err(|e| format!("code {}: {e}", e.code.get()))
                .and_then(|r| match r.ips.first().map(|i| i.address) {
                    Some(ipnet::IpNet::V4(v4)) => Ok(v4.addr()),
                    other => Err(format!("no IPv4 address in the result: {other:?}")),
                }),
            took,
        )
    }

    /// DEL for a pod wired by [`PolicyCluster::cni_add`].
    pub async fn cni_del(
        &self,
        ns: &str,
        name: &str,
        on: usize,
        netns: &Arc<Netns>,
        container_id: &str,
    ) {
        let n = &self.nodes[on];
        let list = NetworkConfigList::from_slice(
            &std::fs::read(n.dirs.join(self.mode.conflist())).unwrap(),
        )
        .unwrap();
        let cni = CniConfig::new(
            vec![bin_dir(), PathBuf::from(REFERENCE_PLUGIN_DIR)],
            n.dirs.join("cache"),
        );
        let rt = runtime_conf(ns, name, netns, container_id);
        let node_ns = n.node.ns.clone();
        tokio::task::spawn_blocking(move || node_ns.run(|| cni.del(&list, &rt)))
            .await
            .unwrap()
            .unwrap()
            .unwrap_or_else(|e| panic!("DEL {container_id}: {e}"));
    }

    /// Sets the Pod's status.podIP(s) (what a kubelet would report after ADD).
    pub async fn set_pod_ip(&self, ns: &str, name: &str, ip: Ipv4Addr) {
        let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(self.client.clone(), ns);
        api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]}})),
        )
        .await
        .unwrap();
    }

    /// A pod as the conformance has it: Pod object, ADD, status.podIPs, probe servers.
    pub async fn add_pod(&mut self, ns: &str, name: &str, on: usize) -> usize {
        self.create_pod_object(ns, name, on).await;
        let short = format!("p-{ns}-{name}");
        let netns = self.tb().add_ns(&short).await.unwrap();
        let cid = format!("{ns}-{name}");
        let (ip, _) = self.cni_add(ns, name, on, &netns, &cid).await;
        let ip = ip.unwrap_or_else(|e| {
            panic!(
                "ADD of {ns}/{name}: {e}\npolicyd log:\n{}",
                self.nodes[on]
                    .policyd
                    .map(|p| self.tb().log_of(p))
                    .unwrap_or_default()
            )
        });
        self.set_pod_ip(ns, name, ip).await;
        let servers =
            ProbeServers::start(&netns, &PORTS, &self.protos, Duration::from_secs(900)).unwrap();
        self.pods.push(WiredPod {
            key: format!("{ns}/{name}"),
            ns: netns,
            ip,
            on,
            container_id: cid,
            servers: Some(servers),
        });
        self.world.pods.push(PodInfo {
            namespace: ns.into(),
            name: name.into(),
            labels: [("pod".to_string(), name.to_string())].into(),
            ip,
            ports: serve_ports(&PORTS, &[Proto::Tcp, Proto::Udp, Proto::Sctp]),
        });
        self.pods.len() - 1
    }

    /// The index of pod `ns/name`.
    pub fn pod(&self, key: &str) -> usize {
        self.pods
            .iter()
            .position(|p| p.key == key)
            .unwrap_or_else(|| panic!("no pod {key}"))
    }

    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.pods
            .iter()
            .map(|p| Endpoint {
                name: p.key.clone(),
                ns: p.ns.clone(),
                ip: p.ip,
            })
            .collect()
    }

    /// What the model expects for every cell. A pod talking to its own address never leaves
    /// its namespace (loopback), so no policy applies to it: allowed, as upstream's
    /// conformance has it (AllowLoopback).
    pub fn expected(&self) -> Matrix {
        let names = self.pods.iter().map(|p| p.key.clone()).collect();
        let w = &self.world;
        Matrix::build(names, &PORTS, &self.protos, |c: Cell| {
            c.from == c.to || w.allowed(&w.pods[c.from], &w.pods[c.to], c.port, c.proto)
        })
    }

    /// Probes the whole matrix until it matches the model or `limit` passes; fails the test
    /// with the truth table otherwise. Returns how long convergence took.
    pub async fn converge(&self, step: &str, limit: Duration) -> Duration {
        let expected = self.expected();
        let (seen, took, ok) = matrix::await_matrix(&self.endpoints(), &expected, limit)
            .await
            .unwrap();
        assert!(
            ok,
            "[{:?}] step {step:?}: the matrix does not match the model after {took:?}:\n{}\n{}",
            self.mode,
            expected.truth_table(&seen),
            self.logs_tail()
        );
        eprintln!(
            "[{:?}] {step}: matrix matches the model ({} cells) after {took:?}",
            self.mode,
            expected.cells.len()
        );
        took
    }

    /// The last lines of each policyd's log (for failure messages).
    pub fn logs_tail(&self) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            if let Some(p) = n.policyd {
                let log = self.tb().log_of(p);
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(25)..].join("\n");
                s.push_str(&format!(
                    "--- policyd on {} (last 25 lines):\n{tail}\n",
                    n.node.name
                ));
            }
        }
        s
    }

    /// The last `lines` lines of the logs of node `i`'s last `runs` policyd processes, oldest
    /// first (for failure messages about restarts).
    pub fn logs_of_runs(&self, i: usize, runs: usize, lines: usize) -> String {
        let n = &self.nodes[i];
        let pids: Vec<i32> = n.past_policyd.iter().copied().chain(n.policyd).collect();
        let mut s = String::new();
        for (k, pid) in pids
            .iter()
            .enumerate()
            .skip(pids.len().saturating_sub(runs))
        {
            let log = self.tb().log_of(*pid);
            let all: Vec<&str> = log.lines().collect();
            let tail = all[all.len().saturating_sub(lines)..].join("\n");
            s.push_str(&format!(
                "--- policyd run {} of {} on {} (pid {pid}, last {lines} lines):\n{tail}\n",
                k + 1,
                pids.len(),
                n.node.name
            ));
        }
        s
    }

    /// What node `i`'s kernel holds for policy right now: the filter table's FORWARD and our
    /// chains with counters, our sets, and the conntrack entries whose line holds every one of
    /// `flow` (e.g. `src=A dst=B sport=P dport=Q`; with its state and time-out: an entry that
    /// saw replies passes its packets as ESTABLISHED whatever the rules say), 40 at most.
    pub async fn snapshot(&self, i: usize, flow: &[String]) -> String {
        let ns = &self.nodes[i].node.ns;
        let limit = Duration::from_secs(10);
        let run = |argv: &'static [&'static str]| async move {
            match self.tb().exec(ns, argv, limit).await {
                Ok(o) => o.stdout + &o.stderr,
                Err(e) => format!("{argv:?}: {e}"),
            }
        };
        let rules: String = run(&["iptables-save", "-c", "-t", "filter"])
            .await
            .lines()
            .filter(|l| {
                l.starts_with('*')
                    || l.contains("FORWARD")
                    || l.contains("TRELLIS-P")
                    || l.starts_with("COMMIT")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let sets: String = run(&["ipset", "save"])
            .await
            .lines()
            .filter(|l| l.contains("trellis-"))
            .map(|l| format!("{l}\n"))
            .collect();
        let conntrack: String = run(&["cat", "/proc/net/nf_conntrack"])
            .await
            .lines()
            .filter(|l| flow.iter().all(|f| l.contains(f.as_str())))
            .take(40)
            .map(|l| format!("{l}\n"))
            .collect();
        format!(
            "=== node {} ({}): filter table (ours and FORWARD, with counters)\n{rules}=== ipsets\n{sets}=== conntrack entries with {flow:?}\n{conntrack}",
            i, self.nodes[i].node.name
        )
    }

    /// Creates or replaces a NetworkPolicy, and records it in the model.
    pub async fn apply_np(&mut self, np: NetworkPolicy) {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &np.namespace, &np_resource());
        put(&api, &np.name, np.to_json())
            .await
            .unwrap_or_else(|e| panic!("apply {}/{}: {e}", np.namespace, np.name));
        self.world
            .policies
            .retain(|p| !(p.namespace == np.namespace && p.name == np.name));
        self.world.policies.push(np);
    }

    /// Sends a NetworkPolicy without recording it (for bad input); the API's answer.
    pub async fn try_np(&self, ns: &str, obj: serde_json::Value) -> Result<(), kube::Error> {
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), ns, &np_resource());
        let obj: DynamicObject = serde_json::from_value(obj).unwrap();
        api.create(&PostParams::default(), &obj).await.map(|_| ())
    }

    /// The policyTypes the API server stored for NetworkPolicy `ns/name` (after its defaulting).
    pub async fn stored_policy_types(&self, ns: &str, name: &str) -> Vec<String> {
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), ns, &np_resource());
        let obj = api.get(name).await.unwrap();
        serde_json::from_value(obj.data["spec"]["policyTypes"].clone()).unwrap_or_default()
    }

    pub async fn delete_np(&mut self, ns: &str, name: &str) {
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), ns, &np_resource());
        api.delete(name, &DeleteParams::default()).await.unwrap();
        self.world
            .policies
            .retain(|p| !(p.namespace == ns && p.name == name));
    }

    pub async fn apply_cnp(&mut self, cnp: Cnp) {
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &cnp_resource());
        put(&api, &cnp.name, cnp.to_json())
            .await
            .unwrap_or_else(|e| panic!("apply CNP {}: {e}", cnp.name));
        self.world.cnps.retain(|c| c.name != cnp.name);
        self.world.cnps.push(cnp);
    }

    /// Sends a ClusterNetworkPolicy without recording it (for bad input); the API's answer.
    pub async fn try_cnp(&self, obj: serde_json::Value) -> Result<(), kube::Error> {
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &cnp_resource());
        let obj: DynamicObject = serde_json::from_value(obj).unwrap();
        api.create(&PostParams::default(), &obj).await.map(|_| ())
    }

    pub async fn delete_cnp(&mut self, name: &str) {
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &cnp_resource());
        api.delete(name, &DeleteParams::default()).await.unwrap();
        self.world.cnps.retain(|c| c.name != name);
    }

    /// The ClusterNetworkPolicies in the API (names).
    pub async fn cnp_names(&self) -> Vec<String> {
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &cnp_resource());
        api.list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|o| o.metadata.name)
            .collect()
    }

    /// Replaces the labels of pod `ns/name` (in the API and the model).
    pub async fn relabel_pod(&mut self, key: &str, labels: &[(&str, &str)]) {
        let (ns, name) = key.split_once('/').unwrap();
        let i = self.pod(key);
        let mut patch = serde_json::Map::new();
        for k in self.world.pods[i].labels.keys() {
            patch.insert(k.clone(), serde_json::Value::Null);
        }
        for (k, v) in labels {
            patch.insert(k.to_string(), json!(v));
        }
        let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(self.client.clone(), ns);
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": patch}})),
        )
        .await
        .unwrap();
        self.world.pods[i].labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    /// Replaces the labels of namespace `name` (kubernetes.io/metadata.name is kept).
    pub async fn relabel_ns(&mut self, name: &str, labels: &[(&str, &str)]) {
        let i = self
            .world
            .namespaces
            .iter()
            .position(|n| n.name == name)
            .unwrap();
        let mut new: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        new.insert(NS_NAME_LABEL.into(), name.into());
        let mut patch = serde_json::Map::new();
        for k in self.world.namespaces[i].labels.keys() {
            patch.insert(k.clone(), serde_json::Value::Null);
        }
        for (k, v) in &new {
            patch.insert(k.clone(), json!(v));
        }
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": patch}})),
        )
        .await
        .unwrap();
        self.world.namespaces[i].labels = new;
    }

    /// `iptables <args>` in node `i`'s namespace.
    pub async fn iptables(&self, i: usize, args: &[&str]) -> netns_testbed::Output {
        let mut argv = vec!["iptables", "-w"];
        argv.extend_from_slice(args);
        self.tb()
            .exec(&self.nodes[i].node.ns, &argv, Duration::from_secs(10))
            .await
            .unwrap()
    }

    /// Whether FORWARD in node `i` jumps to TRELLIS-POL-FWD (whatever else the rule matches,
    /// a comment say).
    pub async fn has_fwd_jump(&self, i: usize) -> bool {
        let out = self.iptables(i, &["-S", "FORWARD"]).await;
        out.success() && out.stdout.lines().any(is_fwd_jump)
    }

    /// Runs `trellis <args>` (admin kubeconfig) from the control plane's namespace.
    pub async fn trellis(&self, args: &[&str]) -> netns_testbed::Output {
        let trellis = bin_path("trellis");
        let mut argv = vec![trellis.to_str().unwrap()];
        argv.extend_from_slice(args);
        self.tb()
            .exec(&self.cp().node.ns, &argv, Duration::from_secs(30))
            .await
            .unwrap()
    }
}

/// The CNI runtime configuration of pod `ns/name`, as a kubelet passes it.
fn runtime_conf(ns: &str, name: &str, netns: &Netns, container_id: &str) -> RuntimeConf {
    RuntimeConf {
        container_id: container_id.into(),
        netns: netns.path().to_path_buf(),
        ifname: "eth0".into(),
        args: vec![
            ("IgnoreUnknown".into(), "1".into()),
            ("K8S_POD_NAMESPACE".into(), ns.into()),
            ("K8S_POD_NAME".into(), name.into()),
            ("K8S_POD_INFRA_CONTAINER_ID".into(), container_id.into()),
        ],
        ..Default::default()
    }
}

/// Creates `obj`, or replaces the existing object of that name (with its resourceVersion).
async fn put(
    api: &Api<DynamicObject>,
    name: &str,
    obj: serde_json::Value,
) -> Result<(), kube::Error> {
    let mut obj: DynamicObject = serde_json::from_value(obj).unwrap();
    match api.get_opt(name).await? {
        None => api.create(&PostParams::default(), &obj).await.map(|_| ()),
        Some(old) => {
            obj.metadata.resource_version = old.metadata.resource_version;
            api.replace(name, &PostParams::default(), &obj)
                .await
                .map(|_| ())
        }
    }
}

/// The child of a `timeout` process group leader (the daemon itself).
fn policyd_child(leader: i32) -> Option<i32> {
    let children =
        std::fs::read_to_string(format!("/proc/{leader}/task/{leader}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Whether an `iptables -S` line jumps to TRELLIS-POL-FWD.
pub fn is_fwd_jump(line: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    words.windows(2).any(|w| w == ["-j", "TRELLIS-POL-FWD"])
}
