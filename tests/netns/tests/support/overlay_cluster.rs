//! A cluster for the overlay's (and the canal mode's) tests and benchmarks: an API server in a
//! control-plane namespace on the underlay, nodes each running `trellis overlay-agent` (with
//! `--mode canal` for [`Plugin::Canal`]), pods wired by running the node's CNI configuration as
//! a runtime does.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node as KubeNode;
use kube::Api;
use kube::api::PostParams;
use netns_testbed::cluster::{ControlPlane, create_pool, start_ipamd, wait_path};
use netns_testbed::probe::{PodAt, pairs_talk_without_nat};
use netns_testbed::{
    Node, REFERENCE_PLUGIN_DIR, Testbed, bin_dir, bin_path, require_root, require_tool,
};
use trellis_cni::NetworkConfigList;
use trellis_cni::invoke::{CniConfig, RuntimeConf};
use trellis_net::{Family, Netns, Route};

pub struct Worker {
    pub node: Node,
    pub dirs: PathBuf,
    pub agent: i32,
    pub block: Ipv4Net,
}

pub struct Pod {
    pub ns: Arc<Netns>,
    pub ip: Ipv4Addr,
    pub on: usize,
}

pub struct Cluster {
    pub tb: Testbed,
    pub cp: ControlPlane,
    pub client: kube::Client,
    pub workers: Vec<Worker>,
    pub plugin: Plugin,
}

/// The plugin the agents write their nodes' CNI configuration for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Plugin {
    /// `trellis-overlay` on the node's bridge.
    Overlay,
    /// `trellis-canal`'s routed veths (`overlay-agent --mode canal`).
    Canal,
}

impl Plugin {
    /// The node's conflist, under its directory.
    pub fn conflist(self) -> &'static str {
        match self {
            Plugin::Overlay => "net.d/10-trellis-overlay.conflist",
            Plugin::Canal => "net.d/10-trellis-canal.conflist",
        }
    }

    fn agent_args(self) -> &'static [&'static str] {
        match self {
            Plugin::Overlay => &[],
            Plugin::Canal => &["--mode", "canal"],
        }
    }
}

pub async fn kube_client(kubeconfig: &str) -> kube::Client {
    let kc = kube::config::Kubeconfig::from_yaml(kubeconfig).unwrap();
    kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap(),
    )
    .unwrap()
}

/// Where the nodes' blocks and their pods' addresses come from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Blocks {
    /// Node.spec.podCIDR (10.244.<i>.0/24) and host-local on it.
    PodCidr,
    /// A pool of /24 blocks in the API, an ipamd per node, the agent claiming through it and the
    /// pods allocated by trellis-ipam.
    Ipamd,
    /// The same with the pool README shows: nothing reserved in its blocks, so the agent must
    /// hold the node's own addresses (VTEP, gateway, broadcast) itself.
    IpamdUnreserved,
    /// An unreserved pool of blocks of this prefix length (small, so that a node's first block
    /// fills up and it takes another).
    IpamdBlockSize(u8),
}

impl Cluster {
    /// A control plane and `n` nodes, Node objects with a podCIDR each, an agent on each.
    pub async fn start(n: usize) -> Cluster {
        Cluster::start_with(n, Blocks::PodCidr).await
    }

    pub async fn start_with(n: usize, blocks: Blocks) -> Cluster {
        Cluster::start_args(n, blocks, &[]).await
    }

    /// As [`Cluster::start_with`], each agent started with `extra` flags too.
    pub async fn start_args(n: usize, blocks: Blocks, extra: &[&str]) -> Cluster {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Cluster::start_full(n, blocks, |_| extra.clone()).await
    }

    /// As [`Cluster::start_with`], each agent with `agent_extra(<its state dirs>)` flags too
    /// (per node: the policy tests' `--policy-socket <dirs>/policyd.sock`).
    pub async fn start_full(
        n: usize,
        blocks: Blocks,
        agent_extra: impl Fn(&std::path::Path) -> Vec<String>,
    ) -> Cluster {
        Cluster::start_plugin(n, blocks, Plugin::Overlay, agent_extra).await
    }

    /// As [`Cluster::start_full`], the agents serving `plugin`.
    pub async fn start_plugin(
        n: usize,
        blocks: Blocks,
        plugin: Plugin,
        agent_extra: impl Fn(&std::path::Path) -> Vec<String>,
    ) -> Cluster {
        require_root();
        for (tool, pkg) in [
            ("ping", "iputils-ping"),
            ("iptables-restore", "iptables"),
            ("host-local", "containernetworking-plugins"),
        ] {
            require_tool(tool, pkg);
        }
        let tb = Testbed::new().unwrap();
        let cp = ControlPlane::start(&tb, "cp", 1).await.unwrap();
        let client = kube_client(&cp.local_kubeconfig).await;
        let nodes: Api<KubeNode> = Api::all(client.clone());
        let args = ["--cidr", "10.244.0.0/16", "--block-size", "24"];
        let reserve = ["--reserve-head", "2", "--reserve-tail", "1", "--gateway"];
        match blocks {
            Blocks::PodCidr => {}
            Blocks::Ipamd => create_pool(&tb, &cp, "overlay", &[&args[..], &reserve[..]].concat())
                .await
                .unwrap(),
            Blocks::IpamdUnreserved => create_pool(&tb, &cp, "overlay", &args).await.unwrap(),
            Blocks::IpamdBlockSize(size) => create_pool(
                &tb,
                &cp,
                "overlay",
                &["--cidr", "10.244.0.0/16", "--block-size", &size.to_string()],
            )
            .await
            .unwrap(),
        }
        let mut workers = Vec::new();
        for i in 0..n {
            let name = format!("n{}", i + 1);
            let node = tb.add_node(&name, (i + 2) as u8).await.unwrap();
            let mut block: Ipv4Net = format!("10.244.{}.0/24", i + 1).parse().unwrap();
            let spec = match blocks {
                Blocks::PodCidr => serde_json::json!({"podCIDR": block.to_string()}),
                _ => serde_json::json!({}),
            };
            let obj: KubeNode = serde_json::from_value(
                serde_json::json!({"metadata": {"name": name}, "spec": spec}),
            )
            .unwrap();
            nodes.create(&PostParams::default(), &obj).await.unwrap();
            let dirs = tb.state_dir().join(&name);
            let extra = agent_extra(&dirs);
            let extra: Vec<&str> = plugin
                .agent_args()
                .iter()
                .copied()
                .chain(extra.iter().map(String::as_str))
                .collect();
            let agent = match blocks {
                Blocks::PodCidr => start_agent_args(&tb, &cp, &node, &dirs, blocks, &extra),
                _ => {
                    let ipamd = start_ipamd(&tb, &cp, &node, &dirs).unwrap();
                    let agent = start_agent_args(&tb, &cp, &node, &dirs, blocks, &extra);
                    wait_path(&tb, &[agent, ipamd], &dirs.join("state/ready.json"))
                        .await
                        .unwrap();
                    // The node's first block, as its agent published it.
                    let published = nodes.get(&name).await.unwrap();
                    block = published.metadata.annotations.unwrap()["trellis.dev/pod-cidr"]
                        .parse()
                        .unwrap();
                    agent
                }
            };
            workers.push(Worker {
                node,
                dirs,
                agent,
                block,
            });
        }
        let c = Cluster {
            tb,
            cp,
            client,
            workers,
            plugin,
        };
        for w in &c.workers {
            c.wait_ready(w).await;
        }
        c.wait_converged().await;
        c
    }

    /// Waits until every node routes every other node's block through its VTEP: readiness is
    /// per node, and a node can be ready before its peers have published their VTEPs.
    pub async fn wait_converged(&self) {
        for _ in 0..100 {
            let mut missing = Vec::new();
            for w in &self.workers {
                let h = w.node.ns.connect().unwrap();
                let routes = h.routes(Family::V4, Some(Route::TABLE_MAIN)).await.unwrap();
                for other in self.workers.iter().filter(|o| o.block != w.block) {
                    if !routes
                        .iter()
                        .any(|r| r.dst == ipnet::IpNet::V4(other.block))
                    {
                        missing.push(format!("{} → {}", w.node.name, other.block));
                    }
                }
            }
            if missing.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the nodes never learnt each other's blocks within 10 s");
    }

    /// Waits until the agent `w.agent` has made its node ready: its readiness file and CNI
    /// configuration are written and its own `/readyz` answers 200 (so a file left by an
    /// earlier agent is not taken for this one's).
    pub async fn wait_ready(&self, w: &Worker) {
        let readyz = SocketAddr::from(([127, 0, 0, 1], 9910));
        for _ in 0..300 {
            if w.dirs.join("state/ready.json").is_file()
                && w.dirs.join(self.plugin.conflist()).is_file()
            {
                let ns = w.node.ns.clone();
                let answer = tokio::task::spawn_blocking(move || {
                    netns_testbed::probe::http_get(&ns, readyz, "/readyz")
                })
                .await
                .unwrap();
                if matches!(answer, Ok((200, _))) {
                    return;
                }
            }
            assert!(
                self.tb.running(w.agent),
                "the agent on {} exited:\n{}",
                w.node.name,
                self.tb.log_of(w.agent)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{} never became ready:\n{}",
            w.node.name,
            self.tb.log_of(w.agent)
        );
    }

    /// Runs the node's CNI configuration for a new pod, as a runtime would (from the node's
    /// namespace, through the invoker).
    pub async fn add_pod(&self, on: usize, name: &str) -> Pod {
        let w = &self.workers[on];
        let ns = self.tb.add_ns(name).await.unwrap();
        let list = NetworkConfigList::from_slice(
            &std::fs::read(w.dirs.join(self.plugin.conflist())).unwrap(),
        )
        .unwrap();
        let cni = CniConfig::new(
            vec![bin_dir(), PathBuf::from(REFERENCE_PLUGIN_DIR)],
            w.dirs.join("cache"),
        );
        let rt = RuntimeConf {
            container_id: name.into(),
            netns: ns.path().to_path_buf(),
            ifname: "eth0".into(),
            ..Default::default()
        };
        let result = w
            .node
            .ns
            .run(|| cni.add(&list, &rt))
            .unwrap()
            .unwrap_or_else(|e| panic!("ADD of {name}: {e}"));
        let ip = match result.ips[0].address {
            ipnet::IpNet::V4(v4) => v4.addr(),
            other => panic!("{other}"),
        };
        // A canal node whose first block filled up gives addresses of its next one.
        let range = match self.plugin {
            Plugin::Overlay => w.block,
            Plugin::Canal => "10.244.0.0/16".parse().unwrap(),
        };
        assert!(range.contains(&ip), "{ip} is in {}'s {range}", w.node.name,);
        Pod { ns, ip, on }
    }

    /// Every ordered pair of `pods`: a ping, and a TCP exchange in which the server sees the
    /// client's own address (no NAT between pods).
    pub async fn assert_pairs_talk_without_nat(&self, pods: &[Pod]) {
        let at: Vec<PodAt<'_>> = pods.iter().map(|p| (&*p.ns, p.ip, p.on)).collect();
        pairs_talk_without_nat(&self.tb, &at).await.unwrap();
    }

    pub async fn exec(&self, ns: &Netns, argv: &[&str]) -> netns_testbed::Output {
        self.tb
            .exec(ns, argv, Duration::from_secs(10))
            .await
            .unwrap()
    }
}

pub fn start_agent(tb: &Testbed, cp: &ControlPlane, node: &Node, dirs: &std::path::Path) -> i32 {
    start_agent_with(tb, cp, node, dirs, Blocks::PodCidr)
}

pub fn start_agent_with(
    tb: &Testbed,
    cp: &ControlPlane,
    node: &Node,
    dirs: &std::path::Path,
    blocks: Blocks,
) -> i32 {
    start_agent_args(tb, cp, node, dirs, blocks, &[])
}

/// As [`start_agent_with`], with `extra` flags.
pub fn start_agent_args(
    tb: &Testbed,
    cp: &ControlPlane,
    node: &Node,
    dirs: &std::path::Path,
    blocks: Blocks,
    extra: &[&str],
) -> i32 {
    std::fs::create_dir_all(dirs).unwrap();
    let trellis = bin_path("trellis");
    let d = |sub: &str| dirs.join(sub).display().to_string();
    let ipam: [String; 4] = match blocks {
        Blocks::PodCidr => [
            "--ipam".into(),
            "host-local".into(),
            "--host-local-dir".into(),
            d("ipam"),
        ],
        _ => [
            "--ipam".into(),
            "trellis-ipam".into(),
            "--ipam-socket".into(),
            d("ipamd.sock"),
        ],
    };
    let (net_d, state) = (d("net.d"), d("state"));
    let mut argv = vec![
        trellis.to_str().unwrap(),
        "overlay-agent",
        "--node",
        &node.name,
        "--kubeconfig",
        cp.kubeconfig.to_str().unwrap(),
        "--iface",
        "eth0",
        &ipam[0],
        &ipam[1],
        &ipam[2],
        &ipam[3],
        "--cni-conf-dir",
        &net_d,
        "--state-dir",
        &state,
        "--resync",
        "2",
        "--listen",
        "127.0.0.1:9910",
    ];
    argv.extend_from_slice(extra);
    tb.spawn(&node.ns, &argv, Duration::from_secs(600)).unwrap()
}
