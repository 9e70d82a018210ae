//! The canal-like combined mode end to end: an API server on the underlay, three nodes each
//! running ipamd and `trellis overlay-agent --mode canal`, pods wired by running the node's
//! `10-trellis-canal.conflist` as a runtime does. Each pod is on a routed veth (a /32, the
//! 169.254.1.1 gateway, proxy ARP, a host route; no bridge on the node), nodes reach each other's
//! pods through the VXLAN overlay, and no pod-to-pod packet is NATed. A node whose first block
//! fills up takes another from ipamd, publishes it, and the other nodes route it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::api::core::v1::Node as KubeNode;
use kube::Api;
use trellis_net::{Family, Route};

#[path = "support/overlay_cluster.rs"]
mod overlay_cluster;
use overlay_cluster::{Blocks, Cluster, Plugin, Pod};

/// The pod's side: its address as a /32 and its default route through 169.254.1.1.
async fn assert_routed_veth(pod: &Pod) {
    let h = pod.ns.connect().unwrap();
    let eth0 = h.require_link("eth0").await.unwrap();
    let held = h.addresses(Some(eth0.index)).await.unwrap();
    let v4: Vec<IpNet> = held
        .iter()
        .map(|a| a.address)
        .filter(|a| a.addr().is_ipv4())
        .collect();
    assert_eq!(
        v4,
        [IpNet::from(std::net::IpAddr::V4(pod.ip))],
        "the pod holds its address as a /32"
    );
    let routes = h.routes(Family::V4, Some(Route::TABLE_MAIN)).await.unwrap();
    let gateway = std::net::IpAddr::V4(Ipv4Addr::new(169, 254, 1, 1));
    assert!(
        routes
            .iter()
            .any(|r| r.dst.prefix_len() == 0 && r.gateway == Some(gateway)),
        "default route via 169.254.1.1: {routes:?}"
    );
}

/// The node's side: no bridge, a host route to each of its pods through a proxy-ARP veth.
async fn assert_node_routes_its_pods(c: &Cluster, on: usize, pods: &[&Pod]) {
    let w = &c.workers[on];
    let h = w.node.ns.connect().unwrap();
    assert!(
        h.link("trellis0").await.unwrap().is_none(),
        "canal mode makes no bridge"
    );
    let routes = h.routes(Family::V4, Some(Route::TABLE_MAIN)).await.unwrap();
    for p in pods {
        let route = routes
            .iter()
            .find(|r| r.dst == IpNet::from(std::net::IpAddr::V4(p.ip)))
            .unwrap_or_else(|| panic!("{} routes no /32 to {}", w.node.name, p.ip));
        let veth = h.link_by_index(route.oif.unwrap()).await.unwrap().unwrap();
        assert!(veth.name.starts_with("tr"), "{}", veth.name);
        // /proc/sys shows the reading thread's namespace: read it inside the node.
        let name = veth.name.clone();
        let inside = w
            .node
            .ns
            .run(move || {
                std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{name}/proxy_arp"))
            })
            .unwrap()
            .unwrap();
        assert_eq!(inside.trim(), "1", "proxy ARP on {}", veth.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_on_three_nodes_talk_over_routed_veths_without_nat() {
    let c = Cluster::start_plugin(3, Blocks::IpamdUnreserved, Plugin::Canal, |_| Vec::new()).await;
    // Two pods on each node.
    let mut pods = Vec::new();
    for i in 0..6 {
        pods.push(c.add_pod(i / 2, &format!("p{i}")).await);
    }
    for p in &pods {
        assert_routed_veth(p).await;
        assert!(
            c.workers[p.on].block.contains(&p.ip),
            "{} from its node's block",
            p.ip
        );
    }
    for on in 0..3 {
        let here: Vec<&Pod> = pods.iter().filter(|p| p.on == on).collect();
        assert_node_routes_its_pods(&c, on, &here).await;
    }
    // Same node through the host, other nodes through the VXLAN; every ordered pair, sources
    // preserved.
    c.assert_pairs_talk_without_nat(&pods).await;
    // The VXLAN MTU reaches the pods: the largest DF packet fits across nodes.
    let size = (1500 - 50 - 28).to_string();
    let target = pods[4].ip.to_string();
    let df = [
        "ping",
        "-c1",
        "-W2",
        "-Mdo",
        "-s",
        size.as_str(),
        target.as_str(),
    ];
    let out = c.exec(&pods[0].ns, &df).await;
    assert!(
        out.success(),
        "{size} bytes with DF: {}{}",
        out.stdout,
        out.stderr
    );
}

/// The blocks `node` publishes, first block first.
async fn published_blocks(c: &Cluster, node: &str) -> Vec<Ipv4Net> {
    let nodes: Api<KubeNode> = Api::all(c.client.clone());
    let n = nodes.get(node).await.unwrap();
    n.metadata
        .annotations
        .unwrap_or_default()
        .get("trellis.dev/pod-cidrs")
        .map(|l| l.split(',').map(|b| b.parse().unwrap()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_first_block_fills_up_routes_the_next() {
    // /29 blocks: the node holds the first block's network address (its VTEP's), so seven pods
    // fill it and the eighth comes from a second block.
    let c =
        Cluster::start_plugin(2, Blocks::IpamdBlockSize(29), Plugin::Canal, |_| Vec::new()).await;
    let first = c.workers[0].block;
    assert_eq!(first.prefix_len(), 29);
    let mut on_n1 = Vec::new();
    for i in 0..8 {
        on_n1.push(c.add_pod(0, &format!("a{i}")).await);
    }
    let in_first = on_n1.iter().filter(|p| first.contains(&p.ip)).count();
    assert_eq!(in_first, 7, "seven pods fill the first block");
    let late = on_n1.last().unwrap();
    let second = Ipv4Net::new(late.ip, 29).unwrap().trunc();
    assert_ne!(second, first);

    // n1 publishes both blocks; n2 routes both through n1's VTEP.
    let mut published = Vec::new();
    for _ in 0..100 {
        published = published_blocks(&c, &c.workers[0].node.name).await;
        if published.contains(&second) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(published, [first, second], "first block first");
    let n2 = c.workers[1].node.ns.connect().unwrap();
    let vtep = n2.require_link("trellis.1").await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let routes = n2
            .routes(Family::V4, Some(Route::TABLE_MAIN))
            .await
            .unwrap();
        let via_vtep = |b: Ipv4Net| {
            routes.iter().any(|r| {
                r.dst == IpNet::V4(b)
                    && r.oif == Some(vtep.index)
                    && r.gateway == Some(std::net::IpAddr::V4(first.network()))
            })
        };
        if via_vtep(first) && via_vtep(second) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "n2 never routed {second} through n1's VTEP: {routes:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The pod of the second block talks to a pod on n2 and back, sources preserved, and so does
    // a pod of the first block.
    let b = c.add_pod(1, "b1").await;
    let a0 = &on_n1[0];
    let pods = [
        Pod {
            ns: late.ns.clone(),
            ip: late.ip,
            on: 0,
        },
        Pod {
            ns: a0.ns.clone(),
            ip: a0.ip,
            on: 0,
        },
        b,
    ];
    c.assert_pairs_talk_without_nat(&pods).await;
}
