//! `trellis-routed` ADD failing at each step it can fail at, table-driven on one node: a real
//! `trellis ipamd` (dual-stack, one small block per family) behind the linked trellis-ipam,
//! the readiness state written. Each case breaks one thing, runs ADD as a runtime does, and
//! checks the CNI error object on stdout (its code) with a non-zero exit, and that nothing is
//! left behind: no new link on the node (no veth, no tombstone), no pod route of ours on the
//! node in either family, no address held by ipamd (both families released), and no
//! interface made in the pod's namespace.
//!
//! | case | breaks | code |
//! | --- | --- | --- |
//! | netns gone | CNI_NETNS names no namespace | 3 |
//! | ifname taken | CNI_IFNAME exists in the pod already (it stays) | 999 |
//! | IPAM refuses | an `ipam` key trellis-ipam does not support (the veth is made meanwhile) | 2 |
//! | policyd down | the policy gate's socket is missing | 11 |
//! | policy gate times out | policyd accepts and never answers | 11 |
//! | host route taken | the node routes the pod's address to another interface already (those routes stay) | 999 |
//! | IPAM exhausted | every IPv4 address of the pool is held (the IPv6 one taken meanwhile goes back) | 100 |
//!
//! A last ADD on the same node then succeeds: the failures left nothing in its way.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use netns_testbed::cluster::StandaloneIpamd;
use netns_testbed::{Testbed, bin_dir, bin_path, require_root};
use serde_json::{Value, json};
use trellis_net::{Family, Handle, Netns, Route, VethSpec};

/// The IPv4 pool: one /30 block, nothing reserved (four pod addresses).
const POOL4: &str = "10.93.0.0/30";
const POOL6: &str = "fd00:93::/125";

/// What a case breaks before its ADD, and undoes after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Breaks {
    NetnsGone,
    IfnameTaken,
    IpamRefuses,
    PolicydDown,
    PolicyTimesOut,
    HostRouteTaken,
    IpamExhausted,
}

struct Case {
    breaks: Breaks,
    code: u64,
    /// A word the error's msg or details must hold.
    says: &'static str,
}

const CASES: &[Case] = &[
    Case {
        breaks: Breaks::NetnsGone,
        code: 3,
        says: "network namespace",
    },
    Case {
        breaks: Breaks::IfnameTaken,
        code: 999,
        says: "already exists",
    },
    Case {
        breaks: Breaks::IpamRefuses,
        code: 2,
        says: "subnet",
    },
    Case {
        breaks: Breaks::PolicydDown,
        code: 11,
        says: "not listening",
    },
    Case {
        breaks: Breaks::PolicyTimesOut,
        code: 11,
        says: "did not confirm",
    },
    Case {
        breaks: Breaks::HostRouteTaken,
        code: 999,
        says: "already routes",
    },
    Case {
        breaks: Breaks::IpamExhausted,
        code: 100,
        says: "no free ipv4",
    },
];

/// The node, its ipamd, and what a clean node looks like.
struct Node {
    tb: Testbed,
    ns: std::sync::Arc<Netns>,
    host: Handle,
    ipamd: StandaloneIpamd,
    conf: Value,
    links: BTreeSet<String>,
}

impl Node {
    async fn start() -> Node {
        let tb = Testbed::new().unwrap();
        let ns = tb.add_ns("node").await.unwrap();
        trellis_net::sysctl::set(
            &ns,
            &[
                ("net.ipv4.ip_forward", "1"),
                ("net/ipv6/conf/all/forwarding", "1"),
            ],
        )
        .unwrap();
        let ipamd = StandaloneIpamd::start(&tb, "fail4", &["--cidr", POOL4, "--block-size", "30"])
            .await
            .unwrap();
        ipamd
            .ipam(
                &tb,
                &[
                    "pool",
                    "create",
                    "fail6",
                    "--cidr",
                    POOL6,
                    "--block-size",
                    "125",
                ],
            )
            .await
            .unwrap();
        let state = tb.state_dir().join("routed");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(state.join("ready.json"), r#"{"mtu": 1500}"#).unwrap();
        let conf = json!({
            "cniVersion": "1.1.0",
            "name": "failnet",
            "type": "trellis-routed",
            "stateDir": state,
            "ipam": {"type": "trellis-ipam", "socket": ipamd.socket,
                     "families": ["ipv4", "ipv6"]},
        });
        let host = ns.connect().unwrap();
        let links = names(&host).await;
        Node {
            tb,
            ns,
            host,
            ipamd,
            conf,
            links,
        }
    }

    /// One plugin run on the node: ok, the JSON on stdout, stderr.
    async fn cni(
        &self,
        command: &str,
        cid: &str,
        netns: &Path,
        conf: &Value,
    ) -> (bool, Value, String) {
        let env = [
            ("CNI_PATH", bin_dir().display().to_string()),
            ("CNI_COMMAND", command.to_string()),
            ("CNI_CONTAINERID", cid.to_string()),
            ("CNI_NETNS", netns.display().to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            (
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={cid}"),
            ),
        ];
        let plugin = bin_path("trellis-routed");
        let run = self
            .tb
            .run_plugin(&self.ns, &plugin, &env, conf, Duration::from_secs(30))
            .await
            .unwrap();
        (run.ok, run.out, run.stderr)
    }

    async fn held(&self) -> BTreeSet<IpAddr> {
        (self.ipamd.allocations(&self.tb))().await.unwrap()
    }

    /// Our pod routes on the node, both families.
    async fn pod_routes(&self) -> Vec<Route> {
        let mut out = Vec::new();
        for family in [Family::V4, Family::V6] {
            out.extend(
                self.host
                    .routes(family, None)
                    .await
                    .unwrap()
                    .into_iter()
                    .filter(|r| r.protocol == trellis_net::proto::POD),
            );
        }
        out
    }
}

async fn names(h: &Handle) -> BTreeSet<String> {
    h.links()
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.name)
        .collect()
}

/// A veth pair whose both ends are in `h`'s namespace, up: something to route through, or a
/// name to take. The index of `a`.
async fn veth_here(h: &Handle, a: &str, b: &str) -> u32 {
    let link = h
        .add_veth(&VethSpec {
            name: a,
            peer_name: b,
            peer_ns: None,
            mtu: None,
            mac: None,
            peer_mac: None,
        })
        .await
        .unwrap();
    h.set_up(link.index).await.unwrap();
    link.index
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failed_add_answers_its_code_and_leaves_nothing_behind() {
    require_root();
    let node = Node::start().await;
    assert!(node.held().await.is_empty());
    assert!(node.pod_routes().await.is_empty());

    for (i, case) in CASES.iter().enumerate() {
        let what = format!("{:?}", case.breaks);
        let cid = format!("f{i}");
        let pod = node.tb.add_ns(&format!("p{i}")).await.unwrap();
        let podh = pod.connect().unwrap();
        let mut conf = node.conf.clone();
        let mut netns: PathBuf = pod.path().to_path_buf();
        // What the case set up that must outlive the failed ADD, as it was.
        let mut links_now = node.links.clone();
        let mut held_now = BTreeSet::new();
        let mut fillers: Vec<(String, std::sync::Arc<Netns>)> = Vec::new();
        let mut taken_eth0 = None;
        let mut blocker_routes: Vec<Route> = Vec::new();
        let mut _listener = None;
        match case.breaks {
            Breaks::NetnsGone => netns = node.tb.state_dir().join("no-such-netns"),
            Breaks::IfnameTaken => taken_eth0 = Some(veth_here(&podh, "eth0", "other0").await),
            Breaks::IpamRefuses => conf["ipam"]["subnet"] = json!("10.0.0.0/8"),
            Breaks::PolicydDown => {
                conf["policy"] = json!({
                    "socket": node.tb.state_dir().join("no-policyd.sock"),
                    "timeoutMs": 300,
                });
            }
            Breaks::PolicyTimesOut => {
                // Bound and listening, never accepting: the connection is made, no answer comes.
                let path = node.tb.state_dir().join("mute-policyd.sock");
                _listener = Some(std::os::unix::net::UnixListener::bind(&path).unwrap());
                conf["policy"] = json!({"socket": path, "timeoutMs": 300});
            }
            Breaks::HostRouteTaken => {
                let index = veth_here(&node.host, "trfblk0", "trfblk1").await;
                links_now.extend(["trfblk0".to_string(), "trfblk1".to_string()]);
                let pool: ipnet::Ipv4Net = POOL4.parse().unwrap();
                for a in pool.hosts().chain([pool.network(), pool.broadcast()]) {
                    let r = Route::dev(ipnet::IpNet::from(IpAddr::V4(a)), index);
                    node.host.replace_route(&r).await.unwrap();
                    blocker_routes.push(r);
                }
            }
            Breaks::IpamExhausted => {
                // Four pods hold the four IPv4 addresses (and four of the IPv6 ones).
                for j in 0..4 {
                    let fcid = format!("fill{j}");
                    let fns = node.tb.add_ns(&fcid).await.unwrap();
                    let (ok, out, stderr) = node.cni("ADD", &fcid, fns.path(), &conf).await;
                    assert!(ok, "filler {j}: {out} {stderr}");
                    fillers.push((fcid, fns));
                }
                held_now = node.held().await;
                assert_eq!(held_now.len(), 8, "{held_now:?}");
                links_now = names(&node.host).await;
            }
        }

        let (ok, out, stderr) = node.cni("ADD", &cid, &netns, &conf).await;
        assert!(!ok, "{what}: ADD succeeded: {out}");
        assert_eq!(out["code"], case.code, "{what}: {out} {stderr}");
        eprintln!("{what}: {out}");
        let text = format!("{} {}", out["msg"], out["details"]);
        assert!(text.contains(case.says), "{what}: {out}");

        // Nothing left behind.
        assert_eq!(names(&node.host).await, links_now, "{what}: links");
        let routes = node.pod_routes().await;
        let fillers_routes = 2 * fillers.len();
        assert_eq!(routes.len(), fillers_routes, "{what}: {routes:?}");
        assert_eq!(node.held().await, held_now, "{what}: ipamd");
        let in_pod = podh.links().await.unwrap();
        match taken_eth0 {
            Some(index) => assert!(
                in_pod.iter().any(|l| l.name == "eth0" && l.index == index),
                "{what}: {in_pod:?}"
            ),
            None => assert!(in_pod.iter().all(|l| l.name == "lo"), "{what}: {in_pod:?}"),
        }
        for r in &blocker_routes {
            let main = node
                .host
                .routes(Family::V4, Some(Route::TABLE_MAIN))
                .await
                .unwrap();
            assert!(
                main.iter().any(|m| m.dst == r.dst && m.oif == r.oif),
                "{what}: the node's own route {:?} was touched",
                r.dst
            );
        }

        // Undo the breakage.
        if !blocker_routes.is_empty() {
            node.host.delete_link("trfblk0").await.unwrap();
        }
        for (fcid, fns) in &fillers {
            let (ok, out, stderr) = node.cni("DEL", fcid, fns.path(), &node.conf).await;
            assert!(ok, "DEL {fcid}: {out} {stderr}");
        }
        if !fillers.is_empty() {
            assert!(node.held().await.is_empty());
        }
    }

    // The node is as clean as it was: an ADD now works.
    let pod = node.tb.add_ns("pok").await.unwrap();
    let (ok, out, stderr) = node.cni("ADD", "ok", pod.path(), &node.conf).await;
    assert!(ok, "{out} {stderr}");
    assert_eq!(node.held().await.len(), 2);
    let (ok, out, stderr) = node.cni("DEL", "ok", pod.path(), &node.conf).await;
    assert!(ok, "{out} {stderr}");
    assert!(node.held().await.is_empty());
}
