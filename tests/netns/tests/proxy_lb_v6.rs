//! IPv6 LoadBalancer Services in the routed mode (issue 16): a dual-stack cluster (service
//! ranges `10.96.0.0/12,fd00:96::/112`, agents `--dual-stack`), the controller-manager with an
//! IPv4 and an IPv6 pool (`--load-balancer-pool 203.0.113.0/28,fd00:203::/120`), `trellis
//! proxy` on both nodes. An IPv6 SingleStack LoadBalancer Service gets an address of the IPv6
//! pool only; the agents announce its /128 over MP-BGP (IPv6 unicast on the IPv4 session,
//! the node's IPv6 address as next hop) to BIRD in its own namespace (AS 65000, peered through
//! a `BGPPeer`); a client whose only link is to the router reaches both backends through the
//! IPv6 address; deleting the Service removes the /128 from the router's kernel (the negative
//! control). A PreferDualStack LoadBalancer Service gets one address of each pool.
//!
//! Every address lives inside namespaces the test made (the pools, the client's links
//! 100.64.0.0/30 and fd00:64::/64); the testbed removes everything when dropped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/routed_cluster.rs"]
mod cluster;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::{Cluster, POOL_V6, Pod};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use netns_testbed::bed::node_ipv6;
use netns_testbed::bird::{Bird, BirdConfig, BirdPeer, PROTO_BIRD};
use netns_testbed::probe::{NameServer, ask_name};
use serde_json::json;
use trellis_net::{Netns, VethSpec};

const PORT: u16 = 8080;
const RANGES: &str = "10.96.0.0/12,fd00:96::/112";
const POOLS: &str = "203.0.113.0/28,fd00:203::/120";
const LIFETIME: Duration = Duration::from_secs(300);
/// Bounds for what a loaded machine may take: sessions, a sync, a controller's write.
const CONVERGE: Duration = Duration::from_secs(30);

/// Two dual-stack routed nodes with `trellis proxy`, the controller-manager running only the
/// `service-lb` controller with both pools.
async fn start() -> (Cluster, kube::Client) {
    let c = Cluster::start_dual_args(2, &["--service-cluster-ip-range", RANGES], |_, _| {
        vec!["--dual-stack".to_string()]
    })
    .await;
    let cidrs = format!("10.244.0.0/16,{POOL_V6}");
    c.start_service_lb(POOLS, &["--cluster-cidr", &cidrs], LIFETIME)
        .await;
    let client = cluster::kube_client(&c.cp.local_kubeconfig).await;
    (c, client)
}

/// A client namespace whose only link is to `router`: 100.64.0.2/30 and fd00:64::2/64, default
/// routes via the router's 100.64.0.1 and fd00:64::1. The router forwards IPv6.
async fn client_behind(c: &Cluster, router: &netns_testbed::Node) -> Arc<Netns> {
    let client = c.tb.add_ns("lb6cl").await.unwrap();
    let h = router.ns.connect().unwrap();
    let link = h
        .add_veth(&VethSpec {
            name: "to-cl",
            peer_name: "eth0",
            peer_ns: Some(&client),
            mtu: None,
            mac: None,
            peer_mac: None,
        })
        .await
        .unwrap();
    trellis_net::sysctl::set(
        &router.ns,
        &[
            ("net/ipv6/conf/all/forwarding", "1"),
            ("net/ipv6/conf/to-cl/accept_dad", "0"),
        ],
    )
    .unwrap();
    h.ensure_address(link.index, "100.64.0.1/30".parse().unwrap())
        .await
        .unwrap();
    h.add_address_nodad(link.index, "fd00:64::1/64".parse().unwrap())
        .await
        .unwrap();
    h.set_up(link.index).await.unwrap();
    trellis_net::sysctl::set(&client, &[("net/ipv6/conf/eth0/accept_dad", "0")]).unwrap();
    let ch = client.connect().unwrap();
    let eth0 = ch.require_link("eth0").await.unwrap();
    ch.ensure_address(eth0.index, "100.64.0.2/30".parse().unwrap())
        .await
        .unwrap();
    ch.add_address_nodad(eth0.index, "fd00:64::2/64".parse().unwrap())
        .await
        .unwrap();
    ch.set_up(eth0.index).await.unwrap();
    for route in [
        &["ip", "route", "add", "default", "via", "100.64.0.1"][..],
        &["ip", "-6", "route", "add", "default", "via", "fd00:64::1"][..],
    ] {
        c.tb.exec_ok(&client, route, Duration::from_secs(10))
            .await
            .unwrap();
    }
    client
}

/// The addresses the controller wrote into the Service's status, once there are `n`.
async fn wait_addresses(services: &Api<Service>, name: &str, n: usize) -> Vec<IpAddr> {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let s = services.get(name).await.unwrap();
        let ips: Vec<IpAddr> = s
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|l| l.ingress)
            .unwrap_or_default()
            .iter()
            .filter_map(|i| i.ip.as_deref()?.parse().ok())
            .collect();
        if ips.len() >= n {
            return ips;
        }
        assert!(Instant::now() < deadline, "{name} got {ips:?}, not {n}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The IPv6 routes of `ns`'s main table to `prefix`: (gateway, protocol).
async fn routes6(ns: &Netns, prefix: Ipv6Net) -> Vec<(Option<IpAddr>, u8)> {
    ns.connect()
        .unwrap()
        .routes(
            trellis_net::Family::V6,
            Some(trellis_net::Route::TABLE_MAIN),
        )
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.dst == IpNet::V6(prefix))
        .map(|r| (r.gateway, r.protocol))
        .collect()
}

/// Connects from `client` to `to` until exactly the backends `names` have answered (bounded).
async fn reach(client: &Arc<Netns>, to: SocketAddr, names: &[&str]) {
    let deadline = Instant::now() + CONVERGE;
    let mut seen = std::collections::BTreeSet::new();
    let mut last = None;
    while seen.len() < names.len() {
        let ns = client.clone();
        match tokio::task::spawn_blocking(move || ask_name(&ns, to))
            .await
            .unwrap()
        {
            Ok(name) => {
                assert!(
                    names.contains(&name.as_str()),
                    "{name} answered through {to}"
                );
                seen.insert(name);
            }
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        assert!(
            Instant::now() < deadline,
            "through {to}: saw {seen:?}, last error {last:?}"
        );
    }
}

async fn slice(slices: &Api<EndpointSlice>, service: &str, v6: bool, backends: &[(&Pod, &str)]) {
    let endpoints: Vec<_> = backends
        .iter()
        .map(|(p, node)| {
            let ip = if v6 {
                p.ip6.expect("a dual-stack pod").to_string()
            } else {
                p.ip.to_string()
            };
            json!({"addresses": [ip], "nodeName": node,
                   "conditions": {"ready": true, "serving": true, "terminating": false}})
        })
        .collect();
    let family = if v6 { "IPv6" } else { "IPv4" };
    let body: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": format!("{service}-{}", family.to_lowercase()), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": family,
        "ports": [{"name": "http", "port": PORT, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))
    .unwrap();
    slices.create(&PostParams::default(), &body).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_peer_learns_the_ipv6_load_balancer_address_and_reaches_the_service() {
    let (c, kube) = start().await;
    let services: Api<Service> = Api::namespaced(kube.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(kube.clone(), "default");
    // The router: BIRD in AS 65000 peering with both nodes over IPv4, IPv6 unicast on the same
    // sessions, announcing the client's links.
    let router = c.tb.add_node("rtr6", 9).await.unwrap();
    let router6: Ipv6Addr = c.tb.add_ipv6(&router, 9).await.unwrap();
    let client_net: Ipv4Net = "100.64.0.0/30".parse().unwrap();
    let client_net6: Ipv6Net = "fd00:64::/64".parse().unwrap();
    let mut config = BirdConfig::new(&router, 65000)
        .announce(client_net)
        .ipv6(router6)
        .announce6(client_net6);
    for w in &c.workers {
        config = config.peer(BirdPeer::new(&w.node.name, w.node.ip, 64512));
    }
    let bird = Bird::start(&c.tb, &router, config, LIFETIME).await.unwrap();
    let peers: Api<DynamicObject> = Api::all_with(
        kube.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("bgp.trellis.dev", "v1", "BGPPeer"),
            "bgppeers",
        ),
    );
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "bgp.trellis.dev/v1", "kind": "BGPPeer",
        "metadata": {"name": "rtr6"},
        "spec": {"peerIP": router.ip.to_string(), "asNumber": 65000},
    }))
    .unwrap();
    peers.create(&PostParams::default(), &obj).await.unwrap();
    bird.wait_all_established(CONVERGE)
        .await
        .unwrap_or_else(|e| panic!("BIRD's sessions: {e}\n{}", bird.log_tail(40)));
    let client = client_behind(&c, &router).await;

    let b1 = c.add_pod(0, "lb6-b1").await;
    let b2 = c.add_pod(1, "lb6-b2").await;
    let any6: IpAddr = Ipv6Addr::UNSPECIFIED.into();
    let _servers = [
        NameServer::start_at(&b1.ns, any6, PORT, "b1", LIFETIME).unwrap(),
        NameServer::start_at(&b2.ns, any6, PORT, "b2", LIFETIME).unwrap(),
    ];
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web6", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv6"],
                 "selector": {"app": "web6"},
                 "ports": [{"name": "http", "port": 80, "targetPort": PORT}]},
    }))
    .unwrap();
    services.create(&PostParams::default(), &svc).await.unwrap();
    slice(&slices, "web6", true, &[(&b1, "n1"), (&b2, "n2")]).await;
    let ips = wait_addresses(&services, "web6", 1).await;
    assert_eq!(ips.len(), 1, "an IPv6 Service gets one address: {ips:?}");
    let IpAddr::V6(lb) = ips[0] else {
        panic!("an IPv6 Service got {ips:?}")
    };
    assert!(
        "fd00:203::/120".parse::<Ipv6Net>().unwrap().contains(&lb),
        "{lb}"
    );
    let host = Ipv6Net::new(lb, 128).unwrap();

    // The router learns the /128 over MP-BGP, from both nodes, next hop a node's IPv6 address.
    let t = Instant::now();
    // The nodes' IPv6 addresses, as the cluster gave them (node i at index i + 2).
    let nodes6: Vec<IpAddr> = (0..c.workers.len())
        .map(|i| IpAddr::V6(node_ipv6((i + 2) as u8)))
        .collect();
    loop {
        let routes = routes6(&router.ns, host).await;
        if routes
            .iter()
            .any(|(gw, proto)| *proto == PROTO_BIRD && gw.is_some_and(|g| nodes6.contains(&g)))
        {
            break;
        }
        assert!(
            t.elapsed() < CONVERGE,
            "the router never learned {host} via a node's IPv6 address: {routes:?}\n{}",
            bird.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("route to {host} at the router after {:?}", t.elapsed());
    let deadline = Instant::now() + CONVERGE;
    loop {
        let mut from: Vec<String> = bird
            .routes()
            .await
            .unwrap()
            .iter()
            .filter(|r| r.prefix == IpNet::V6(host))
            .map(|r| r.source.clone())
            .collect();
        from.sort();
        if from == ["n1", "n2"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{host} at the router from {from:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The client reaches the Service through the IPv6 address: both backends answer.
    reach(&client, SocketAddr::new(IpAddr::V6(lb), 80), &["b1", "b2"]).await;

    // A dual-stack LoadBalancer Service gets one address of each pool, the IPv4 one first
    // (its primary family), and the router learns both host routes.
    let dual: Service = serde_json::from_value(json!({
        "metadata": {"name": "dual", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "ipFamilyPolicy": "PreferDualStack",
                 "selector": {"app": "dual"},
                 "ports": [{"name": "http", "port": 80, "targetPort": PORT}]},
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &dual)
        .await
        .unwrap();
    let ips = wait_addresses(&services, "dual", 2).await;
    assert!(
        ips.len() == 2 && ips[0].is_ipv4() && ips[1].is_ipv6(),
        "{ips:?}"
    );
    let IpAddr::V6(dual6) = ips[1] else {
        unreachable!()
    };
    assert_ne!(dual6, lb);
    slice(&slices, "dual", true, &[(&b1, "n1")]).await;
    reach(&client, SocketAddr::new(ips[1], 80), &["b1"]).await;

    // Negative control: deleting the Service withdraws its /128 from the router's kernel.
    services
        .delete("web6", &DeleteParams::default())
        .await
        .unwrap();
    let t = Instant::now();
    loop {
        let routes = routes6(&router.ns, host).await;
        if routes.is_empty() {
            break;
        }
        assert!(t.elapsed() < CONVERGE, "{host} not withdrawn: {routes:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("{host} withdrawn after {:?}", t.elapsed());
    // The other Service's route stays.
    assert!(
        !routes6(&router.ns, Ipv6Net::new(dual6, 128).unwrap())
            .await
            .is_empty()
    );
}
