//! hostPort through the reference portmap plugin, in the overlay, canal and routed modes: the
//! kubelet passes a pod's hostPorts as the `portMappings` capability, the agent's conflist
//! chains `portmap`, and the pod is reached at its node's address:8080 from another node's
//! namespace and from the node itself (its address and 127.0.0.1). A port declared without hostPort is not mapped (the
//! negative control). A UDP hostPort answers from the other node too. A hostPort bound to a
//! hostIP (the node's address) answers there and not on the node's other address, 127.0.0.1,
//! where the unbound one answers (the negative control). After the pods' deletion the ports
//! are closed and no rule of the pods is left in the node's iptables (only portmap's shared
//! top-level chains, which it never removes).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/kubelet.rs"]
mod kubelet;
#[path = "support/overlay_cluster.rs"]
mod overlay_cluster;
#[path = "support/routed_cluster.rs"]
mod routed_cluster;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::DeleteParams;
use serde_json::json;

use kubelet::{Kubelets, create_pod, wait_node_ready, wait_pod};
use netns_testbed::cluster::ControlPlane;
use netns_testbed::{Node, REFERENCE_PLUGIN_DIR, Testbed, bin_dir};
use overlay_cluster::{Blocks, Plugin};
use trellis_cni::NetworkConfigList;
use trellis_cni::invoke::{CniConfig, RuntimeConf};

#[tokio::test(flavor = "multi_thread")]
async fn overlay_host_port_reaches_the_pod_from_another_node() {
    netns_testbed::require_tool("busybox", "busybox-static");
    let c = overlay_cluster::Cluster::start(2).await;
    let nodes = c
        .workers
        .iter()
        .map(|w| (&w.node, w.dirs.as_path()))
        .collect();
    scenario(&c.tb, &c.cp, &c.client, nodes).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn canal_host_port_reaches_the_pod_from_another_node() {
    netns_testbed::require_tool("busybox", "busybox-static");
    let c =
        overlay_cluster::Cluster::start_plugin(2, Blocks::IpamdUnreserved, Plugin::Canal, |_| {
            Vec::new()
        })
        .await;
    let nodes = c
        .workers
        .iter()
        .map(|w| (&w.node, w.dirs.as_path()))
        .collect();
    scenario(&c.tb, &c.cp, &c.client, nodes).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn routed_host_port_reaches_the_pod_from_another_node() {
    netns_testbed::require_tool("busybox", "busybox-static");
    let c = routed_cluster::Cluster::start(2).await;
    let client = overlay_cluster::kube_client(&c.cp.local_kubeconfig).await;
    let nodes = c
        .workers
        .iter()
        .map(|w| (&w.node, w.dirs.as_path()))
        .collect();
    scenario(&c.tb, &c.cp, &client, nodes).await;
}

/// Why the kubelet keeps a pod's port mappings for DEL: portmap removes its per-pod rules only
/// when DEL carries the mappings. The negative control: DEL without them, from an invoker whose
/// cache lost the ADD (a runtime that forgot them), leaves the pod's `CNI-DN-*` chain and its
/// DNAT behind; DEL without them from the invoker that cached the ADD (which gives DEL the
/// values ADD had) removes them.
#[tokio::test(flavor = "multi_thread")]
async fn portmap_keeps_its_rules_when_del_lacks_the_port_mappings() {
    let c = overlay_cluster::Cluster::start(1).await;
    let w = &c.workers[0];
    let ns = c.tb.add_ns("pm").await.unwrap();
    let list =
        NetworkConfigList::from_slice(&std::fs::read(w.dirs.join(c.plugin.conflist())).unwrap())
            .unwrap();
    assert_eq!(list.plugins.last().unwrap().plugin_type, "portmap");
    let dirs = vec![bin_dir(), std::path::PathBuf::from(REFERENCE_PLUGIN_DIR)];
    let mut caps = serde_json::Map::new();
    caps.insert(
        "portMappings".into(),
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]),
    );
    let rt = RuntimeConf {
        container_id: "pm".into(),
        netns: ns.path().to_path_buf(),
        ifname: "eth0".into(),
        capability_args: caps,
        ..Default::default()
    };
    let cni = CniConfig::new(dirs.clone(), w.dirs.join("pm-cache"));
    w.node.ns.run(|| cni.add(&list, &rt)).unwrap().unwrap();
    let pod_rules = |rules: &BTreeSet<String>| {
        rules
            .iter()
            .filter(|l| l.contains("CNI-DN-"))
            .cloned()
            .collect::<Vec<_>>()
    };
    let added = pod_rules(&iptables(&c.tb, &w.node).await);
    assert!(
        added.iter().any(|l| l.contains("--dport 8080")),
        "{added:#?}"
    );
    let bare = RuntimeConf {
        capability_args: serde_json::Map::new(),
        ..rt.clone()
    };
    let forgetful = CniConfig::new(dirs, w.dirs.join("empty-cache"));
    w.node
        .ns
        .run(|| forgetful.del(&list, &bare))
        .unwrap()
        .unwrap();
    assert_eq!(
        pod_rules(&iptables(&c.tb, &w.node).await),
        added,
        "DEL without the mappings leaves portmap's rules"
    );
    w.node.ns.run(|| cni.del(&list, &bare)).unwrap().unwrap();
    let left = pod_rules(&iptables(&c.tb, &w.node).await);
    assert!(left.is_empty(), "DEL with the cached mappings: {left:#?}");
}

fn running(p: &serde_json::Value) -> bool {
    p["status"]["phase"] == "Running"
        && p["status"]["containerStatuses"]
            .as_array()
            .is_some_and(|cs| cs.iter().all(|c| c["ready"] == true))
        && p["status"]["podIP"].is_string()
}

/// A pod on `node` whose server answers its hostname on `port`, declared as a container port
/// with `host_port` when given.
fn server(name: &str, node: &str, port: u16, host_port: Option<u16>) -> serde_json::Value {
    let mut p = json!({"name": "http", "containerPort": port});
    if let Some(h) = host_port {
        p["hostPort"] = json!(h);
    }
    json!({"metadata": {"name": name}, "spec": {"nodeName": node,
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "srv", "image": "busybox", "ports": [p],
            "command": ["/bin/busybox", "nc", "-ll", "-p", port.to_string(), "-e", "/bin/busybox", "hostname"]}]}})
}

/// A pod on `node` whose UDP server answers each datagram on `port` with its hostname, the
/// port mapped to `host_port`/UDP (perl: busybox has no UDP server).
fn udp_server(name: &str, node: &str, port: u16, host_port: u16) -> serde_json::Value {
    json!({"metadata": {"name": name}, "spec": {"nodeName": node,
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "srv", "image": "busybox",
            "ports": [{"name": "dns", "containerPort": port, "hostPort": host_port, "protocol": "UDP"}],
            "command": ["/usr/bin/perl", "-MIO::Socket::INET", "-MSys::Hostname", "-e",
                "my $s = IO::Socket::INET->new(LocalPort => $ARGV[0], Proto => 'udp') or die $!; \
                 while (defined $s->recv(my $m, 512)) { $s->send(hostname()) }",
                port.to_string()]}]}})
}

/// One answer to a datagram sent to `ip`:`port` from `ns`, or None (none within 2 s).
async fn ask_udp(tb: &Testbed, ns: &trellis_net::Netns, ip: &str, port: &str) -> Option<String> {
    let script = "my $s = IO::Socket::INET->new(PeerAddr => $ARGV[0], PeerPort => $ARGV[1], \
        Proto => 'udp') or die $!; $s->send('who'); my $r = ''; \
        eval { local $SIG{ALRM} = sub { die }; alarm 2; $s->recv($r, 512); alarm 0 }; print $r";
    let out = tb
        .exec(
            ns,
            &[
                "/usr/bin/perl",
                "-MIO::Socket::INET",
                "-e",
                script,
                ip,
                port,
            ],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    (out.success() && !out.stdout.trim().is_empty()).then(|| out.stdout.trim().to_string())
}

/// The node's iptables rules (every table, without counters), one per line.
async fn iptables(tb: &Testbed, node: &Node) -> BTreeSet<String> {
    let out = tb
        .exec(&node.ns, &["iptables-save"], Duration::from_secs(20))
        .await
        .unwrap();
    assert!(out.success(), "iptables-save: {}", out.stderr);
    out.stdout
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.strip_prefix(':') {
            // ":CHAIN POLICY [packets:bytes]": the counters move.
            Some(chain) => format!(":{}", chain.split_whitespace().next().unwrap_or_default()),
            None => l.to_string(),
        })
        .collect()
}

/// One answer from `ip`:`port` in `ns`, or None (refused, no answer within 2 s).
async fn ask(tb: &Testbed, ns: &trellis_net::Netns, ip: &str, port: &str) -> Option<String> {
    let out = tb
        .exec(
            ns,
            &["/bin/busybox", "nc", "-w", "2", ip, port],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    (out.success() && !out.stdout.trim().is_empty()).then(|| out.stdout.trim().to_string())
}

/// The answer from `ip`:`port`, retried for 20 s at most (a Running container may not listen
/// yet).
async fn fetch(tb: &Testbed, ns: &trellis_net::Netns, ip: &str, port: &str) -> String {
    fetch_with(tb, ns, ip, port, false).await
}

/// As [`fetch`], over TCP or UDP.
async fn fetch_with(
    tb: &Testbed,
    ns: &trellis_net::Netns,
    ip: &str,
    port: &str,
    udp: bool,
) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let answer = if udp {
            ask_udp(tb, ns, ip, port).await
        } else {
            ask(tb, ns, ip, port).await
        };
        if let Some(answer) = answer {
            return answer;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{ip}:{port} never answered within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `nodes[0]` runs the pods, `nodes[1]` is the other node they are reached from.
async fn scenario(
    tb: &Testbed,
    cp: &ControlPlane,
    client: &kube::Client,
    nodes: Vec<(&Node, &std::path::Path)>,
) {
    netns_testbed::require_tool("perl", "perl-base");
    let (n1, n2) = (nodes[0].0, nodes[1].0);
    let mut k = Kubelets::new(tb);
    for (node, dirs) in &nodes {
        k.start(tb, cp, node, dirs, "net.d");
    }
    for (node, _) in &nodes {
        wait_node_ready(client, &node.name).await;
    }
    let before = iptables(tb, n1).await;

    // hostPort 8080 → containerPort 80; the control declares port 81 without a hostPort.
    create_pod(client, server("hp", &n1.name, 80, Some(8080))).await;
    create_pod(client, server("plain", &n1.name, 81, None)).await;
    let hp = wait_pod(client, "hp", Duration::from_secs(60), "Running", running).await;
    let plain = wait_pod(client, "plain", Duration::from_secs(60), "Running", running).await;
    let hp_ip = hp["status"]["podIP"].as_str().unwrap().to_string();
    let plain_ip = plain["status"]["podIP"].as_str().unwrap().to_string();
    let n1_ip = n1.ip.to_string();

    // From the other node, at the pod's node address.
    assert_eq!(fetch(tb, &n2.ns, &n1_ip, "8080").await, "hp");
    // From the node itself (portmap's OUTPUT rule), at its own address.
    assert_eq!(fetch(tb, &n1.ns, &n1_ip, "8080").await, "hp");
    // And at 127.0.0.1 (portmap's `snat` masquerades it and routes localnet to the pod).
    assert_eq!(fetch(tb, &n1.ns, "127.0.0.1", "8080").await, "hp");
    // The negative control: the plain pod listens (its own address answers), but a port
    // without hostPort is not mapped to the node.
    assert_eq!(fetch(tb, &n2.ns, &plain_ip, "81").await, "plain");
    assert_eq!(
        ask(tb, &n2.ns, &n1_ip, "81").await,
        None,
        "a container port without hostPort is not reachable at the node"
    );
    // UDP: hostPort 5300/UDP → 53, from the other node.
    create_pod(client, udp_server("udp", &n1.name, 53, 5300)).await;
    // Bound to the node's address: hostPort 8081 → 80 on n1's address only.
    let mut bound = server("bound", &n1.name, 80, Some(8081));
    bound["spec"]["containers"][0]["ports"][0]["hostIP"] = json!(n1_ip);
    create_pod(client, bound).await;
    wait_pod(client, "udp", Duration::from_secs(60), "Running", running).await;
    wait_pod(client, "bound", Duration::from_secs(60), "Running", running).await;
    assert_eq!(fetch_with(tb, &n2.ns, &n1_ip, "5300", true).await, "udp");
    assert_eq!(fetch(tb, &n2.ns, &n1_ip, "8081").await, "bound");
    assert_eq!(fetch(tb, &n1.ns, &n1_ip, "8081").await, "bound");
    // The negative control: the node's other address, where the unbound hostPort answers
    // (above), does not answer for the bound one.
    assert_eq!(
        ask(tb, &n1.ns, "127.0.0.1", "8081").await,
        None,
        "a hostPort bound to the node's address is not mapped on its other addresses"
    );
    let during = iptables(tb, n1).await;
    assert!(
        during
            .iter()
            .any(|l| l.contains("--dport 8080") && l.contains(&format!("{hp_ip}:80"))),
        "portmap's DNAT to the pod:\n{}",
        during.iter().cloned().collect::<Vec<_>>().join("\n")
    );

    // Deleting the pods: CNI DEL with the same port mappings removes the pod's rules.
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    for name in ["hp", "plain", "udp", "bound"] {
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }
    netns_testbed::wait_for("the pods to be gone", Duration::from_secs(60), || {
        k.roots
            .iter()
            .all(|r| std::fs::read_dir(r.join("pods")).map_or(true, |d| d.count() == 0))
    })
    .await;
    assert_eq!(
        ask(tb, &n2.ns, &n1_ip, "8080").await,
        None,
        "the host port is closed once the pod is gone"
    );
    assert_eq!(ask(tb, &n2.ns, &n1_ip, "8081").await, None);
    assert_eq!(ask_udp(tb, &n2.ns, &n1_ip, "5300").await, None);
    let after = iptables(tb, n1).await;
    let added: Vec<&String> = after.difference(&before).collect();
    // portmap's top-level chains and their jumps stay (it never removes them); nothing names
    // the pod, its address or a per-pod chain.
    // A table that had no rule before appears whole: its header, built-in chains and COMMIT.
    let structure = |l: &str| {
        l.starts_with('*')
            || l == "COMMIT"
            || [
                ":PREROUTING",
                ":INPUT",
                ":FORWARD",
                ":OUTPUT",
                ":POSTROUTING",
            ]
            .contains(&l)
    };
    let shared = |l: &str| {
        structure(l)
            || !l.contains("CNI-DN-")
                && (l.starts_with(":CNI-HOSTPORT-")
                    || (l.starts_with("-A ") && l.contains("-j CNI-HOSTPORT-"))
                    || l.starts_with("-A CNI-HOSTPORT-SETMARK ")
                    || l.starts_with("-A CNI-HOSTPORT-MASQ "))
    };
    let left: Vec<&&String> = added.iter().filter(|l| !shared(l)).collect();
    assert!(
        left.is_empty(),
        "rules left after the pod's deletion: {left:#?}"
    );
    assert!(
        !after
            .iter()
            .any(|l| l.contains(&hp_ip) || l.contains("CNI-DN-")),
        "nothing of the pod stays:\n{}",
        after.iter().cloned().collect::<Vec<_>>().join("\n")
    );
}
