//! Pods run by containerd — Debian's 1.6, with the older libcni that containerd 1.6 and 1.7
//! ship — in both network modes: the configuration list each agent writes is accepted, pods on
//! two nodes talk, and the DEL `ctr run --rm` sends when a container ends frees its address.
//! The negative control writes the list as the agents used to (top-level 1.1.0) and shows
//! containerd refuse it — so these tests fail if an agent ever writes such a list again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use netns_testbed::cluster::ControlPlane;
use netns_testbed::containerd::{CniDirs, Containerd};
use netns_testbed::{REFERENCE_PLUGIN_DIR, Testbed, bin_dir, bin_path};
use trellis_cni::NetworkConfigList;
use trellis_cni::invoke::{CniConfig, RuntimeConf};
use trellis_net::Netns;

#[path = "support/overlay_cluster.rs"]
mod overlay_cluster;
#[path = "support/routed_cluster.rs"]
mod routed_cluster;

/// A pod that answers `pong` to one TCP line on port 8080, over and over.
const SERVER: &str = "while true; do echo pong | nc -l -p 8080; done";

/// What a node offers containerd: its namespace and CNI directories.
struct NodeView<'a> {
    ns: &'a Netns,
    cni: CniDirs,
    conflist: PathBuf,
}

fn node_view<'a>(ns: &'a Netns, dirs: &Path, file: &str) -> NodeView<'a> {
    let conflist = dirs.join("net.d").join(file);
    let list: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&conflist).unwrap()).unwrap();
    assert_eq!(
        list["cniVersion"], "1.0.0",
        "the agent's list must be one containerd 1.6/1.7 accept: {list}"
    );
    let cni = CniDirs::new(
        &dirs.join("containerd"),
        &dirs.join("net.d"),
        &[bin_dir(), PathBuf::from(REFERENCE_PLUGIN_DIR)],
    )
    .unwrap();
    NodeView { ns, cni, conflist }
}

/// `trellis ipam show ADDRESS` against the cluster: the address's state.
async fn ipam_state(tb: &Testbed, cp: &ControlPlane, address: Ipv4Addr) -> String {
    let out = tb
        .exec_ok(
            &cp.node.ns,
            &[
                bin_path("trellis").to_str().unwrap(),
                "ipam",
                "--kubeconfig",
                cp.kubeconfig.to_str().unwrap(),
                "show",
                &address.to_string(),
            ],
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    out.lines()
        .find_map(|l| l.strip_prefix("state:"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("no state in {out}"))
}

/// Two pods through containerd, one per node; they ping and talk TCP both ways; killing them
/// runs DEL, which frees their addresses. Returns their addresses.
async fn two_pods_talk_and_release(
    tb: &Testbed,
    cp: &ControlPlane,
    ctrd: &Containerd,
    nodes: &[NodeView<'_>; 2],
) -> [Ipv4Addr; 2] {
    let ids = ["pa", "pb"];
    let mut runs = Vec::new();
    for (node, id) in nodes.iter().zip(ids) {
        let run = ctrd.run_cni(tb, node.ns, &node.cni, id, SERVER).unwrap();
        ctrd.wait_running(tb, run, id).await.unwrap();
        runs.push(run);
    }
    let ips = [
        ctrd.address(ids[0]).await.unwrap(),
        ctrd.address(ids[1]).await.unwrap(),
    ];
    for (from, to) in [(0, 1), (1, 0)] {
        let dst = ips[to].to_string();
        let ping = ctrd
            .exec(ids[from], &["/bin/ping", "-c", "1", "-W", "2", &dst])
            .await
            .unwrap();
        assert!(
            ping.success(),
            "{} → {dst}: {}{}",
            ids[from],
            ping.stdout,
            ping.stderr
        );
        let tcp = ctrd
            .exec(
                ids[from],
                &["/bin/sh", "-c", &format!("echo hi | nc -w 3 {dst} 8080")],
            )
            .await
            .unwrap();
        assert_eq!(
            tcp.stdout.trim(),
            "pong",
            "{} → {dst}:8080: {}",
            ids[from],
            tcp.stderr
        );
    }
    for ip in ips {
        assert_eq!(ipam_state(tb, cp, ip).await, "allocated");
    }
    // Killing a container ends its `ctr run --rm`, which runs DEL and deletes it.
    for (id, run) in ids.iter().zip(&runs) {
        ctrd.kill(id).await.unwrap();
        for _ in 0..200 {
            if !tb.running(*run) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            !tb.running(*run),
            "ctr run {id} did not end: {}",
            tb.log_of(*run)
        );
    }
    for ip in ips {
        assert_eq!(ipam_state(tb, cp, ip).await, "free", "DEL released {ip}");
    }
    ips
}

/// The negative control: the same list with the top-level version the agents used to write.
/// containerd's libcni refuses our 1.1.0 result after ADD ran, leaving what ADD made; a DEL
/// (as the kubelet's GC or an operator would send) removes it again.
async fn a_1_1_0_list_is_refused(
    tb: &Testbed,
    cp: &ControlPlane,
    ctrd: &Containerd,
    node: &NodeView<'_>,
    dirs: &Path,
) {
    let mut list: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&node.conflist).unwrap()).unwrap();
    list["cniVersion"] = "1.1.0".into();
    let conf = dirs.join("net.d-1.1.0");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(conf.join("10-old.conflist"), list.to_string()).unwrap();
    let cni = CniDirs {
        conf: conf.clone(),
        ..node.cni.clone()
    };
    let run = ctrd.run_cni(tb, node.ns, &cni, "old", "sleep 30").unwrap();
    for _ in 0..200 {
        if !tb.running(run) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = tb.log_of(run);
    assert!(
        log.contains("unsupported CNI result version"),
        "containerd 1.6 refuses a 1.1.0 result: {log}"
    );
    // Clean up what the refused ADD left, as a DEL does.
    let list = NetworkConfigList::from_slice(&std::fs::read(&node.conflist).unwrap()).unwrap();
    // The agents' lists chain the reference portmap too.
    let cni = CniConfig::new(
        vec![bin_dir(), PathBuf::from(REFERENCE_PLUGIN_DIR)],
        dirs.join("neg-cache"),
    );
    let rt = RuntimeConf {
        container_id: ctrd.cni_container_id("old"),
        ifname: "eth0".into(),
        ..Default::default()
    };
    node.ns.run(|| cni.del(&list, &rt)).unwrap().unwrap();
    let check = tb
        .exec_ok(
            &cp.node.ns,
            &[
                bin_path("trellis").to_str().unwrap(),
                "ipam",
                "--kubeconfig",
                cp.kubeconfig.to_str().unwrap(),
                "check",
            ],
            Duration::from_secs(30),
        )
        .await;
    assert!(check.is_ok(), "{check:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_runs_overlay_pods_across_nodes_and_del_frees_them() {
    // The pool as README shows it: nothing reserved, so the agents hold their nodes' addresses.
    let c = overlay_cluster::Cluster::start_with(2, overlay_cluster::Blocks::IpamdUnreserved).await;
    let nodes = [0, 1].map(|i| {
        let w = &c.workers[i];
        node_view(&w.node.ns, &w.dirs, "10-trellis-overlay.conflist")
    });
    // Declared after the cluster: dropped first, while containerd still runs.
    let ctrd = Containerd::start(&c.tb).await.unwrap();
    let ips = two_pods_talk_and_release(&c.tb, &c.cp, &ctrd, &nodes).await;
    for (w, ip) in c.workers.iter().zip(ips) {
        assert!(w.block.contains(&ip));
        // The first pod of each node gets the first address the node does not hold itself.
        assert_eq!(
            ip,
            Ipv4Addr::from(u32::from(w.block.network()) + 2),
            "the VTEP's and the gateway's addresses are never a pod's"
        );
        for (held, _) in [
            (w.block.network(), "vtep"),
            (w.block.broadcast(), "broadcast"),
        ] {
            assert_eq!(ipam_state(&c.tb, &c.cp, held).await, "allocated");
        }
    }
    let blocks =
        c.tb.exec_ok(
            &c.cp.node.ns,
            &[
                bin_path("trellis").to_str().unwrap(),
                "ipam",
                "--kubeconfig",
                c.cp.kubeconfig.to_str().unwrap(),
                "blocks",
                "--allocations",
            ],
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    for handle in [
        "overlay.n1.vtep",
        "overlay.n1.gateway",
        "overlay.n1.broadcast",
    ] {
        assert!(
            blocks.contains(handle),
            "ipam blocks shows {handle}:\n{blocks}"
        );
    }
    let w = &c.workers[0];
    a_1_1_0_list_is_refused(&c.tb, &c.cp, &ctrd, &nodes[0], &w.dirs).await;
    let (prefix, run_dir) = (c.tb.prefix().to_string(), c.tb.run_dir().to_path_buf());
    drop(nodes);
    drop(ctrd);
    drop(c);
    // No container, shim or namespace survives the test.
    netns_testbed::leak::assert_clean(&prefix, &run_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_runs_routed_pods_across_nodes_and_del_frees_them() {
    let c = routed_cluster::Cluster::start(2).await;
    let nodes = [0, 1].map(|i| {
        let w = &c.workers[i];
        node_view(&w.node.ns, &w.dirs, "10-trellis-routed.conflist")
    });
    let ctrd = Containerd::start(&c.tb).await.unwrap();
    two_pods_talk_and_release(&c.tb, &c.cp, &ctrd, &nodes).await;
    let w = &c.workers[0];
    a_1_1_0_list_is_refused(&c.tb, &c.cp, &ctrd, &nodes[0], &w.dirs).await;
    let (prefix, run_dir) = (c.tb.prefix().to_string(), c.tb.run_dir().to_path_buf());
    drop(nodes);
    drop(ctrd);
    drop(c);
    // No container, shim or namespace survives the test.
    netns_testbed::leak::assert_clean(&prefix, &run_dir);
}
