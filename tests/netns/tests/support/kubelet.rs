//! Kubelets on a cluster's nodes: started, restarted and, on drop, every pod process,
//! namespace and cgroup they made removed (also when the test fails).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node as KubeNode, Pod};
use kube::Api;
use kube::api::PostParams;
use netns_testbed::cluster::ControlPlane;
use netns_testbed::{Node, REFERENCE_PLUGIN_DIR, Testbed, bin_dir, bin_path};

/// What a container wrote to the log file `path` (the kubelet's CRI format: a time, the
/// stream and a tag before each entry), as the container wrote it.
pub fn read_log(path: &std::path::Path) -> std::io::Result<String> {
    let raw = std::fs::read(path)?;
    let mut out = Vec::new();
    for line in raw.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match trellis_kubelet::logfile::parse(line) {
            Some(e) => {
                out.extend_from_slice(e.content);
                if !e.partial {
                    out.push(b'\n');
                }
            }
            None => {
                out.extend_from_slice(line);
                out.push(b'\n');
            }
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The kubelets of a test; their pods are killed and namespaces removed on drop.
pub struct Kubelets {
    pub roots: Vec<PathBuf>,
    pub prefix: String,
    pub run_dir: PathBuf,
    /// Kubelets get a serving certificate from the cluster CA (`trellis certs serving`), which
    /// the test API server checks; false: the kubelet's own self-signed one.
    pub serving_from_ca: bool,
    /// The kubelets' cgroup roots are `<cgroup_base>/<node>`, relative (under this test's own
    /// cgroup in each hierarchy), unique to the test.
    pub cgroup_base: String,
}

impl Kubelets {
    pub fn new(tb: &Testbed) -> Kubelets {
        Kubelets {
            roots: Vec::new(),
            prefix: format!("{}-p", tb.prefix()),
            run_dir: tb.run_dir().to_path_buf(),
            serving_from_ca: true,
            cgroup_base: format!("{}-cg", tb.prefix()),
        }
    }

    /// The cgroup root of the kubelet of node `node`.
    pub fn cgroup(&self, node: &str) -> trellis_kubelet::cgroup::Cgroup {
        trellis_kubelet::cgroup::Cgroup::resolve(&format!("{}/{node}", self.cgroup_base))
            .expect("a cgroup hierarchy")
    }

    /// Starts `trellis kubelet` on `node`, its CNI configuration in `<dirs>/<conf_dir>`.
    pub fn start(
        &mut self,
        tb: &Testbed,
        cp: &ControlPlane,
        node: &Node,
        dirs: &std::path::Path,
        conf_dir: &str,
    ) -> i32 {
        self.start_with(tb, cp, node, dirs, conf_dir, &[])
    }

    /// As [`Kubelets::start`], with `extra` flags.
    pub fn start_with(
        &mut self,
        tb: &Testbed,
        cp: &ControlPlane,
        node: &Node,
        dirs: &std::path::Path,
        conf_dir: &str,
        extra: &[&str],
    ) -> i32 {
        let root = dirs.join("kubelet");
        if !self.roots.contains(&root) {
            self.roots.push(root.clone());
        }
        let trellis = bin_path("trellis");
        // The kubelet's own identity from the cluster CA, never the admin's.
        std::fs::create_dir_all(dirs).unwrap();
        let kubeconfig = dirs.join("kubelet.kubeconfig");
        cp.issue_kubeconfig(
            &format!("system:node:{}", node.name),
            &["system:nodes"],
            &cp.server(),
            &kubeconfig,
        )
        .unwrap();
        let d = |s: &str| dirs.join(s).display().to_string();
        let (root_s, net_d, cache, bins, refs, ip) = (
            root.display().to_string(),
            d(conf_dir),
            d("kcache"),
            bin_dir().display().to_string(),
            REFERENCE_PLUGIN_DIR.to_string(),
            node.ip.to_string(),
        );
        let mut argv = vec![
            trellis.to_str().unwrap(),
            "kubelet",
            "--node",
            &node.name,
            "--node-ip",
            &ip,
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--root-dir",
            &root_s,
            "--netns-dir",
            self.run_dir.to_str().unwrap(),
            "--netns-prefix",
            &self.prefix,
            "--cni-conf-dir",
            &net_d,
            "--cni-bin-dir",
            &bins,
            "--cni-bin-dir",
            &refs,
            "--cni-cache-dir",
            &cache,
            "--sync-ms",
            "300",
            "--backoff-secs",
            "2",
            "--listen",
            "127.0.0.1:10248",
        ];
        let (crt, key) = (
            dirs.join("kubelet-serving.crt"),
            dirs.join("kubelet-serving.key"),
        );
        if self.serving_from_ca && !extra.contains(&"--tls-cert-file") {
            cp.issue_serving(&node.name, node.ip, &crt, &key).unwrap();
            argv.extend_from_slice(&[
                "--tls-cert-file",
                crt.to_str().unwrap(),
                "--tls-private-key-file",
                key.to_str().unwrap(),
            ]);
        }
        let cgroup_root = format!("{}/{}", self.cgroup_base, node.name);
        argv.extend_from_slice(&["--cgroup-root", &cgroup_root]);
        argv.extend_from_slice(extra);
        tb.spawn(&node.ns, &argv, Duration::from_secs(600)).unwrap()
    }

    /// The pod directory of `uid` on the kubelet with root index `i`.
    pub fn pod_dir(&self, i: usize, uid: &str) -> PathBuf {
        self.roots[i].join("pods").join(uid)
    }

    /// The network namespace the kubelet made for pod `uid`.
    pub fn netns_path(&self, uid: &str) -> PathBuf {
        let short: String = uid.chars().filter(|c| *c != '-').take(16).collect();
        self.run_dir.join(format!("{}{short}", self.prefix))
    }
}

impl Drop for Kubelets {
    fn drop(&mut self) {
        for root in &self.roots {
            if let Ok(pods) = std::fs::read_dir(root.join("pods")) {
                for p in pods.flatten() {
                    trellis_kubelet::runtime::kill_all(&p.path());
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(&self.run_dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&self.prefix) {
                    let _ = trellis_net::Netns::delete(&self.run_dir, &name);
                }
            }
        }
        // The kubelets' cgroups: whatever is left in them is killed, then they go (the kernel
        // lets a cgroup go once its killed processes are reaped: 5 s at most).
        if let Ok(base) = trellis_kubelet::cgroup::Cgroup::resolve(&self.cgroup_base) {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                base.kill_all();
                match base.remove() {
                    Ok(()) => break,
                    Err(e) if std::time::Instant::now() > deadline => {
                        eprintln!("cgroups of {} left: {e}", self.cgroup_base);
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }
}

/// Waits until Node `name` reports Ready=True.
pub async fn wait_node_ready(client: &kube::Client, name: &str) {
    let nodes: Api<KubeNode> = Api::all(client.clone());
    for _ in 0..600 {
        if let Ok(n) = nodes.get(name).await {
            let ready = n
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .into_iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if ready {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("node {name} never became Ready within 60 s");
}

/// Creates a pod from JSON (namespace default).
pub async fn create_pod(client: &kube::Client, pod: serde_json::Value) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(pod).unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap()
}

/// Polls pod `name` (bounded by `limit`) until `done` holds of its JSON; returns that JSON.
pub async fn wait_pod(
    client: &kube::Client,
    name: &str,
    limit: Duration,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let deadline = std::time::Instant::now() + limit;
    let mut last = serde_json::Value::Null;
    while std::time::Instant::now() < deadline {
        if let Ok(p) = pods.get(name).await {
            last = serde_json::to_value(&p).unwrap();
            if done(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("pod {name}: {what} not within {limit:?}; last seen:\n{last:#}");
}
