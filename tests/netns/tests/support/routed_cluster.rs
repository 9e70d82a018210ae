//! A cluster for the routed mode's tests and benchmarks: an API server in a control-plane
//! namespace on the underlay, nodes each running ipamd and `trellis bgp-agent` (iBGP full mesh),
//! pods wired by running the node's CNI configuration as a runtime does.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node as KubeNode;
use kube::Api;
use kube::api::PostParams;
use netns_testbed::cluster::{ControlPlane, create_pool, start_ipamd, wait_path};
use netns_testbed::{
    Node, REFERENCE_PLUGIN_DIR, Testbed, bin_dir, bin_path, require_root, require_tool,
};
use trellis_cni::NetworkConfigList;
use trellis_cni::invoke::{CniConfig, RuntimeConf};
use trellis_net::{Family, Netns, Route, proto};

/// The hold time the agents propose: short, so a dead agent is noticed quickly.
pub const HOLD: u16 = 6;

pub struct Worker {
    pub node: Node,
    pub dirs: PathBuf,
    pub agent: i32,
}

pub struct Pod {
    pub ns: Arc<Netns>,
    pub ip: Ipv4Addr,
    /// Its IPv6 address (a /128), when the node's network is dual-stack.
    pub ip6: Option<Ipv6Addr>,
    pub on: usize,
}

/// The IPv6 pool of dual-stack clusters ([`Cluster::start_dual`]): /122 blocks, as Calico's.
pub const POOL_V6: &str = "fd00:10:244::/112";

pub struct Cluster {
    pub tb: Testbed,
    pub cp: ControlPlane,
    pub workers: Vec<Worker>,
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

/// The agent without graceful restart: a peer that goes away loses its routes at once.
pub fn start_agent(tb: &Testbed, cp: &ControlPlane, node: &Node, dirs: &Path) -> i32 {
    start_agent_with(tb, cp, node, dirs, false)
}

pub fn start_agent_with(
    tb: &Testbed,
    cp: &ControlPlane,
    node: &Node,
    dirs: &Path,
    graceful_restart: bool,
) -> i32 {
    start_agent_opts(tb, cp, node, dirs, graceful_restart, 1)
}

/// The agent with `--resync` seconds between full reconciles.
pub fn start_agent_opts(
    tb: &Testbed,
    cp: &ControlPlane,
    node: &Node,
    dirs: &Path,
    graceful_restart: bool,
    resync: u64,
) -> i32 {
    start_agent_args(tb, cp, node, dirs, graceful_restart, resync, &[])
}

/// As [`start_agent_opts`], with `extra` flags.
pub fn start_agent_args(
    tb: &Testbed,
    cp: &ControlPlane,
    node: &Node,
    dirs: &Path,
    graceful_restart: bool,
    resync: u64,
    extra: &[&str],
) -> i32 {
    let d = |sub: &str| dirs.join(sub).display().to_string();
    let hold = HOLD.to_string();
    let resync = resync.to_string();
    let trellis = bin_path("trellis");
    let (ipamd, state, net_d) = (d("ipamd.sock"), d("state"), d("net.d"));
    let mut argv = vec![
        trellis.to_str().unwrap(),
        "bgp-agent",
        "--node",
        &node.name,
        "--kubeconfig",
        cp.kubeconfig.to_str().unwrap(),
        "--iface",
        "eth0",
        "--ipamd-socket",
        &ipamd,
        "--state-dir",
        &state,
        "--cni-conf-dir",
        &net_d,
        "--hold-time",
        &hold,
        if graceful_restart {
            "--listen=0.0.0.0:179"
        } else {
            "--no-graceful-restart"
        },
        "--resync",
        &resync,
        "--status-listen",
        "127.0.0.1:9912",
    ];
    argv.extend_from_slice(extra);
    tb.spawn(&node.ns, &argv, Duration::from_secs(600)).unwrap()
}

impl Cluster {
    /// The controller-manager running only the `service-lb` controller with `pools`, and
    /// `trellis proxy` on every worker (with `proxy_args` besides its node, kubeconfig and
    /// health listener), for `lifetime`; returns once every proxy answers `/readyz`.
    pub async fn start_service_lb(&self, pools: &str, proxy_args: &[&str], lifetime: Duration) {
        let trellis = bin_path("trellis");
        let kubeconfig = self.cp.kubeconfig.to_str().unwrap();
        let cm = self
            .tb
            .spawn(
                &self.cp.node.ns,
                &[
                    trellis.to_str().unwrap(),
                    "controller-manager",
                    "--kubeconfig",
                    kubeconfig,
                    "--controllers",
                    "service-lb",
                    "--load-balancer-pool",
                    pools,
                    "--leader-elect=false",
                ],
                lifetime,
            )
            .unwrap();
        let mut proxies = Vec::new();
        for w in &self.workers {
            let mut argv = vec![
                trellis.to_str().unwrap(),
                "proxy",
                "--node",
                &w.node.name,
                "--kubeconfig",
                kubeconfig,
                "--listen",
                "127.0.0.1:10256",
            ];
            argv.extend_from_slice(proxy_args);
            proxies.push(self.tb.spawn(&w.node.ns, &argv, lifetime).unwrap());
        }
        for (w, pid) in self.workers.iter().zip(&proxies) {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let ns = w.node.ns.clone();
                let answer = tokio::task::spawn_blocking(move || {
                    netns_testbed::probe::http_get(
                        &ns,
                        SocketAddr::from(([127, 0, 0, 1], 10256)),
                        "/readyz",
                    )
                })
                .await
                .unwrap();
                if matches!(answer, Ok((200, _))) {
                    break;
                }
                assert!(
                    self.tb.running(*pid),
                    "proxy exited:\n{}",
                    self.tb.log_of(*pid)
                );
                assert!(
                    self.tb.running(cm),
                    "controller-manager exited:\n{}",
                    self.tb.log_of(cm)
                );
                assert!(
                    std::time::Instant::now() < deadline,
                    "proxy never ready:\n{}",
                    self.tb.log_of(*pid)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    pub async fn start(n: usize) -> Cluster {
        Cluster::start_with(n, false).await
    }

    pub async fn start_with(n: usize, graceful_restart: bool) -> Cluster {
        Cluster::start_opts(n, graceful_restart, 1).await
    }

    /// `n` nodes whose agents reconcile every `resync` seconds.
    pub async fn start_opts(n: usize, graceful_restart: bool, resync: u64) -> Cluster {
        Cluster::start_args(n, graceful_restart, resync, &[]).await
    }

    /// As [`Cluster::start_opts`], each agent started with `extra` flags too.
    pub async fn start_args(
        n: usize,
        graceful_restart: bool,
        resync: u64,
        extra: &[&str],
    ) -> Cluster {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Cluster::start_full(n, graceful_restart, resync, |_| extra.clone()).await
    }

    /// As [`Cluster::start_opts`], each agent with `agent_extra(<its state dirs>)` flags too
    /// (per node: the policy tests' `--policy-socket <dirs>/policyd.sock`).
    pub async fn start_full(
        n: usize,
        graceful_restart: bool,
        resync: u64,
        agent_extra: impl Fn(&Path) -> Vec<String>,
    ) -> Cluster {
        Cluster::start_setup(n, graceful_restart, resync, false, &[], |_, dirs| {
            agent_extra(dirs)
        })
        .await
    }

    /// A dual-stack cluster: an IPv6 pool ([`POOL_V6`]) beside the IPv4 one, every node with
    /// an IPv6 underlay address too ([`Testbed::add_ipv6`]), each agent started with
    /// `agent_extra(<node index>, <its state dirs>)` flags (`--dual-stack` where wanted).
    pub async fn start_dual(
        n: usize,
        agent_extra: impl Fn(usize, &Path) -> Vec<String>,
    ) -> Cluster {
        Cluster::start_setup(n, false, 1, true, &[], agent_extra).await
    }

    /// As [`Cluster::start_dual`], with graceful restart on every agent.
    pub async fn start_dual_gr(
        n: usize,
        agent_extra: impl Fn(usize, &Path) -> Vec<String>,
    ) -> Cluster {
        Cluster::start_setup(n, true, 1, true, &[], agent_extra).await
    }

    /// As [`Cluster::start_dual`], the API server with `apiserver_extra` flags too (a
    /// dual-stack `--service-cluster-ip-range`).
    pub async fn start_dual_args(
        n: usize,
        apiserver_extra: &[&str],
        agent_extra: impl Fn(usize, &Path) -> Vec<String>,
    ) -> Cluster {
        Cluster::start_setup(n, false, 1, true, apiserver_extra, agent_extra).await
    }

    /// `n` IPv4 nodes, node `i`'s Node object with `node_meta(i)`'s `labels` and
    /// `annotations` (before its agent starts), its agent with `agent_extra(i, <its state
    /// dirs>)` flags too.
    pub async fn start_meta(
        n: usize,
        graceful_restart: bool,
        node_meta: impl Fn(usize) -> serde_json::Value,
        agent_extra: impl Fn(usize, &Path) -> Vec<String>,
    ) -> Cluster {
        Cluster::start_setup_meta(n, graceful_restart, 1, false, &[], node_meta, agent_extra).await
    }

    async fn start_setup(
        n: usize,
        graceful_restart: bool,
        resync: u64,
        dual_stack: bool,
        apiserver_extra: &[&str],
        agent_extra: impl Fn(usize, &Path) -> Vec<String>,
    ) -> Cluster {
        let no_meta = |_| serde_json::json!({});
        Cluster::start_setup_meta(
            n,
            graceful_restart,
            resync,
            dual_stack,
            apiserver_extra,
            no_meta,
            agent_extra,
        )
        .await
    }

    async fn start_setup_meta(
        n: usize,
        graceful_restart: bool,
        resync: u64,
        dual_stack: bool,
        apiserver_extra: &[&str],
        node_meta: impl Fn(usize) -> serde_json::Value,
        agent_extra: impl Fn(usize, &Path) -> Vec<String>,
    ) -> Cluster {
        require_root();
        require_tool("ping", "iputils-ping");
        let tb = Testbed::new().unwrap();
        let cp = ControlPlane::start_args(&tb, "cp", 1, apiserver_extra)
            .await
            .unwrap();
        let client = kube_client(&cp.local_kubeconfig).await;
        let pool = ["--cidr", "10.244.0.0/16", "--block-size", "26"];
        create_pool(&tb, &cp, "routed", &pool).await.unwrap();
        if dual_stack {
            let pool6 = ["--cidr", POOL_V6, "--block-size", "122"];
            create_pool(&tb, &cp, "routed6", &pool6).await.unwrap();
        }
        let nodes: Api<KubeNode> = Api::all(client);
        let mut workers = Vec::new();
        for i in 0..n {
            let name = format!("n{}", i + 1);
            let node = tb.add_node(&name, (i + 2) as u8).await.unwrap();
            if dual_stack {
                tb.add_ipv6(&node, (i + 2) as u8).await.unwrap();
            }
            let mut meta = node_meta(i);
            meta["name"] = serde_json::json!(name);
            let obj: KubeNode = serde_json::from_value(serde_json::json!({
                "metadata": meta,
                "status": {"addresses": [{"type": "InternalIP", "address": node.ip.to_string()}]},
            }))
            .unwrap();
            nodes.create(&PostParams::default(), &obj).await.unwrap();
            let dirs = tb.state_dir().join(&name);
            std::fs::create_dir_all(&dirs).unwrap();
            let ipamd = start_ipamd(&tb, &cp, &node, &dirs).unwrap();
            wait_path(&tb, &[ipamd], &dirs.join("ipamd.sock"))
                .await
                .unwrap();
            let extra = agent_extra(i, &dirs);
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            let agent = start_agent_args(&tb, &cp, &node, &dirs, graceful_restart, resync, &extra);
            workers.push(Worker { node, dirs, agent });
        }
        for w in &workers {
            wait_path(
                &tb,
                &[w.agent],
                &w.dirs.join("net.d/10-trellis-routed.conflist"),
            )
            .await
            .unwrap();
        }
        Cluster { tb, cp, workers }
    }

    pub async fn add_pod(&self, on: usize, name: &str) -> Pod {
        let list = NetworkConfigList::from_slice(&self.conflist(on)).unwrap();
        self.add_pod_with(on, name, &list).await
    }

    /// Node `on`'s CNI configuration list, as its agent wrote it.
    pub fn conflist(&self, on: usize) -> Vec<u8> {
        std::fs::read(
            self.workers[on]
                .dirs
                .join("net.d/10-trellis-routed.conflist"),
        )
        .unwrap()
    }

    fn cni(&self, on: usize, name: &str, ns: &Netns) -> (CniConfig, RuntimeConf) {
        let w = &self.workers[on];
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
        (cni, rt)
    }

    /// As [`Cluster::add_pod`], with this configuration list.
    pub async fn add_pod_with(&self, on: usize, name: &str, list: &NetworkConfigList) -> Pod {
        let w = &self.workers[on];
        let ns = self.tb.add_ns(name).await.unwrap();
        let (cni, rt) = self.cni(on, name, &ns);
        let list = list.clone();
        let result = w
            .node
            .ns
            .run(|| cni.add(&list, &rt))
            .unwrap()
            .unwrap_or_else(|e| panic!("ADD of {name}: {e}"));
        let ip = match result.ips[0].address {
            IpNet::V4(v4) => {
                assert_eq!(v4.prefix_len(), 32, "a routed pod has a /32");
                v4.addr()
            }
            other => panic!("{other}"),
        };
        let ip6 = result.ips.iter().find_map(|i| match i.address {
            IpNet::V6(v6) => {
                assert_eq!(v6.prefix_len(), 128, "a routed pod has a /128");
                Some(v6.addr())
            }
            IpNet::V4(_) => None,
        });
        Pod { ns, ip, ip6, on }
    }

    /// CNI DEL of `pod` (added as `name` on its node with its agent's list).
    pub async fn del_pod(&self, pod: &Pod, name: &str) {
        let list = NetworkConfigList::from_slice(&self.conflist(pod.on)).unwrap();
        let (cni, rt) = self.cni(pod.on, name, &pod.ns);
        self.workers[pod.on]
            .node
            .ns
            .run(|| cni.del(&list, &rt))
            .unwrap()
            .unwrap_or_else(|e| panic!("DEL of {name}: {e}"));
    }

    /// The /26 blocks each node's kernel routes to another node over BGP.
    pub async fn learned(&self, on: usize) -> Vec<(IpNet, Option<IpAddr>)> {
        self.learned_of(on, Family::V4).await
    }

    /// The blocks of `family` node `on`'s kernel routes to another node over BGP.
    pub async fn learned_of(&self, on: usize, family: Family) -> Vec<(IpNet, Option<IpAddr>)> {
        let h = self.workers[on].node.ns.connect().unwrap();
        h.routes(family, Some(Route::TABLE_MAIN))
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.protocol == proto::BGP && r.gateway.is_some())
            .map(|r| (r.dst, r.gateway))
            .collect()
    }

    /// The agent's best route for `prefix` on node `on`, as its status endpoint shows it (what
    /// `trellis bgp routes` prints); None when it has none, or does not answer.
    pub async fn bgp_route(&self, on: usize, prefix: IpNet) -> Option<BgpRoute> {
        let ns = self.workers[on].node.ns.clone();
        let status = SocketAddr::from(([127, 0, 0, 1], 9912));
        let (code, body) = tokio::task::spawn_blocking(move || {
            netns_testbed::probe::http_get(&ns, status, "/bgp/routes")
        })
        .await
        .unwrap()
        .ok()?;
        if code != 200 {
            return None;
        }
        let routes: Vec<BgpRoute> = serde_json::from_str(&body).ok()?;
        routes.into_iter().find(|r| r.prefix == prefix.to_string())
    }

    /// Waits until every node routes `block` via `via` (Some) or not at all (None).
    pub async fn wait_route(
        &self,
        block: IpNet,
        via: Option<Ipv4Addr>,
        except: usize,
        limit: Duration,
    ) {
        self.wait_route_ip(block, via.map(IpAddr::V4), except, limit)
            .await
    }

    /// As [`Cluster::wait_route`], for a block and next hop of either family.
    pub async fn wait_route_ip(
        &self,
        block: IpNet,
        via: Option<IpAddr>,
        except: usize,
        limit: Duration,
    ) {
        let family = Family::of(&block.addr());
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let mut wrong = Vec::new();
            for i in (0..self.workers.len()).filter(|i| *i != except) {
                let have = self
                    .learned_of(i, family)
                    .await
                    .into_iter()
                    .find(|(d, _)| *d == block)
                    .and_then(|(_, g)| g);
                if have != via {
                    wrong.push(format!("{}: {have:?}", self.workers[i].node.name));
                }
            }
            if wrong.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{block} via {via:?} not reached within {limit:?}: {wrong:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Cluster {
    /// Waits until `trellis bgp status` on every node shows `peers` Established sessions.
    pub async fn wait_established(&self, peers: usize, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        for w in &self.workers {
            loop {
                let out = self
                    .tb
                    .exec(
                        &w.node.ns,
                        &[bin_path("trellis").to_str().unwrap(), "bgp", "status"],
                        Duration::from_secs(10),
                    )
                    .await
                    .unwrap();
                if out.stdout.matches("Established").count() == peers {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{} has not {peers} Established sessions within {limit:?}: {}",
                    w.node.name,
                    out.stdout
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One best route of an agent's `/bgp/routes`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct BgpRoute {
    pub prefix: String,
    pub next_hop: String,
    /// `local` or the peer's address.
    pub source: String,
    /// Kept from a peer that went away with graceful restart, until it is back.
    pub stale: bool,
}

pub fn block_of(ip: Ipv4Addr) -> IpNet {
    IpNet::V4(ipnet::Ipv4Net::new(ip, 26).unwrap().trunc())
}

/// The /122 IPv6 block of [`POOL_V6`] holding `ip`.
pub fn block_of6(ip: Ipv6Addr) -> IpNet {
    IpNet::V6(ipnet::Ipv6Net::new(ip, 122).unwrap().trunc())
}
