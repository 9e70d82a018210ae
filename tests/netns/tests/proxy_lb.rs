//! LoadBalancer Services in the routed mode (issue 16): the controller-manager hands out an
//! address from `--load-balancer-pool`, the BGP agents announce it to an external peer (BIRD
//! in its own namespace, peered through a `BGPPeer`), a client behind that router reaches
//! the Service through the address, and deleting the Service withdraws the route; with
//! externalTrafficPolicy Local only the node with the endpoint announces it; the agents'
//! `--announce-service-cidr` range reaches the router too. And the
//! health-check node port of an externalTrafficPolicy Local Service: 200 on the node with a
//! local endpoint, 503 on the node without.
//!
//! Every address lives inside namespaces the test made (the pool is 203.0.113.0/28, the
//! client's link 100.64.0.0/30); the testbed removes everything when dropped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/routed_cluster.rs"]
mod cluster;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::{Cluster, Pod};
use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use netns_testbed::bird::{Bird, BirdConfig, BirdPeer, PROTO_BIRD, Want, wait_kernel_route};
use netns_testbed::probe::http_get;
use netns_testbed::probe::{NameServer, ask_name};
use serde_json::json;
use trellis_net::{Netns, VethSpec};

const PORT: u16 = 8080;
const POOL: &str = "203.0.113.0/28";
const LIFETIME: Duration = Duration::from_secs(300);

/// A pod's "container": answers every connection with its name, until dropped.
fn name_server(ns: &Netns, name: &str) -> NameServer {
    NameServer::start(ns, PORT, name, LIFETIME).unwrap()
}

fn ask(ns: &Netns, to: SocketAddr) -> std::io::Result<String> {
    ask_name(ns, to)
}

struct Env {
    c: Cluster,
    services: Api<Service>,
    slices: Api<EndpointSlice>,
    client: kube::Client,
}

/// Two routed nodes, each with `trellis proxy` and its agent announcing the service range
/// too; the controller-manager running only the `service-lb` controller with the pool.
async fn start() -> Env {
    let c = Cluster::start_args(2, false, 1, &["--announce-service-cidr", "10.96.0.0/12"]).await;
    c.start_service_lb(POOL, &[], LIFETIME).await;
    let client = cluster::kube_client(&c.cp.local_kubeconfig).await;
    Env {
        services: Api::namespaced(client.clone(), "default"),
        slices: Api::namespaced(client.clone(), "default"),
        client,
        c,
    }
}

impl Env {
    async fn service(&self, name: &str, spec: serde_json::Value) -> Service {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"}, "spec": spec,
        }))
        .unwrap();
        self.services
            .create(&PostParams::default(), &svc)
            .await
            .unwrap()
    }

    async fn slice(&self, service: &str, backends: &[(&Pod, &str)]) {
        let endpoints: Vec<_> = backends
            .iter()
            .map(|(p, node)| {
                json!({"addresses": [p.ip.to_string()], "nodeName": node,
                       "conditions": {"ready": true, "serving": true, "terminating": false}})
            })
            .collect();
        let body: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": format!("{service}-1"), "namespace": "default",
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": PORT, "protocol": "TCP"}],
            "endpoints": endpoints,
        }))
        .unwrap();
        self.slices
            .create(&PostParams::default(), &body)
            .await
            .unwrap();
    }

    /// The address the controller wrote into the Service's status.
    async fn wait_address(&self, name: &str) -> Ipv4Addr {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.services.get(name).await.unwrap();
            if let Some(ip) = s
                .status
                .and_then(|s| s.load_balancer)
                .and_then(|l| l.ingress)
                .and_then(|i| i.first().and_then(|i| i.ip.clone()))
            {
                return ip.parse().unwrap();
            }
            assert!(Instant::now() < deadline, "{name} got no address");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A client namespace whose only link is to `router` (100.64.0.2/30, default route via
/// the router's 100.64.0.1).
async fn client_behind(c: &Cluster, router: &netns_testbed::Node) -> Arc<Netns> {
    let client = c.tb.add_ns("lbcl").await.unwrap();
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
    h.ensure_address(link.index, "100.64.0.1/30".parse().unwrap())
        .await
        .unwrap();
    h.set_up(link.index).await.unwrap();
    let ch = client.connect().unwrap();
    let eth0 = ch.require_link("eth0").await.unwrap();
    ch.ensure_address(eth0.index, "100.64.0.2/30".parse().unwrap())
        .await
        .unwrap();
    ch.set_up(eth0.index).await.unwrap();
    c.tb.exec_ok(
        &client,
        &["ip", "route", "add", "default", "via", "100.64.0.1"],
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_peer_learns_the_load_balancer_address_and_reaches_the_service() {
    let env = start().await;
    let c = &env.c;
    // The router: BIRD in AS 65000 peering with both nodes, announcing the client's link.
    let router = c.tb.add_node("rtr", 9).await.unwrap();
    let client_net: Ipv4Net = "100.64.0.0/30".parse().unwrap();
    let mut config = BirdConfig::new(&router, 65000).announce(client_net);
    for w in &c.workers {
        config = config.peer(BirdPeer::new(&w.node.name, w.node.ip, 64512));
    }
    let bird = Bird::start(&c.tb, &router, config, LIFETIME).await.unwrap();
    let peers: Api<DynamicObject> = Api::all_with(
        env.client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("bgp.trellis.dev", "v1", "BGPPeer"),
            "bgppeers",
        ),
    );
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "bgp.trellis.dev/v1", "kind": "BGPPeer",
        "metadata": {"name": "rtr"},
        "spec": {"peerIP": router.ip.to_string(), "asNumber": 65000},
    }))
    .unwrap();
    peers.create(&PostParams::default(), &obj).await.unwrap();
    bird.wait_all_established(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("BIRD's sessions: {e}\n{}", bird.log_tail(40)));
    let client = client_behind(c, &router).await;

    let b1 = c.add_pod(0, "lb-b1").await;
    let b2 = c.add_pod(1, "lb-b2").await;
    let _s1 = name_server(&b1.ns, "b1");
    let _s2 = name_server(&b2.ns, "b2");
    env.service(
        "web",
        json!({"type": "LoadBalancer", "selector": {"app": "web"},
               "ports": [{"name": "http", "port": 80, "targetPort": PORT}]}),
    )
    .await;
    env.slice("web", &[(&b1, "n1"), (&b2, "n2")]).await;
    let lb = env.wait_address("web").await;
    assert!(POOL.parse::<Ipv4Net>().unwrap().contains(&lb), "{lb}");
    let host = Ipv4Net::new(lb, 32).unwrap();

    // The router learns the /32 over eBGP (from both nodes; either is a fine next hop).
    let t = Instant::now();
    wait_kernel_route(
        &router.ns,
        host,
        Want::Proto(PROTO_BIRD),
        Duration::from_secs(20),
    )
    .await
    .unwrap_or_else(|e| panic!("the router never learned {host}: {e}"));
    eprintln!("route to {host} at the router after {:?}", t.elapsed());
    // Every node announces it (the proxy on each DNATs it), and the service range.
    wait_sources(&bird, host, &["n1", "n2"]).await;
    wait_sources(&bird, "10.96.0.0/12".parse().unwrap(), &["n1", "n2"]).await;

    // The client reaches the Service through the address: both backends answer in turn.
    reach(&client, lb, &["b1", "b2"]).await;

    // Deleting the Service withdraws the route.
    env.services
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    let t = Instant::now();
    wait_kernel_route(&router.ns, host, Want::Absent, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("{host} not withdrawn: {e}"));
    eprintln!("{host} withdrawn after {:?}", t.elapsed());

    // externalTrafficPolicy Local: only the node with the endpoint announces the address, and
    // when the endpoint moves, so does the announcement.
    env.service(
        "local",
        json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
               "loadBalancerIP": "203.0.113.5", "selector": {"app": "local"},
               "ports": [{"name": "http", "port": 80, "targetPort": PORT}]}),
    )
    .await;
    env.slice("local", &[(&b2, "n2")]).await;
    let lb = env.wait_address("local").await;
    assert_eq!(
        lb,
        Ipv4Addr::new(203, 0, 113, 5),
        "spec.loadBalancerIP is honoured"
    );
    let host = Ipv4Net::new(lb, 32).unwrap();
    wait_sources(&bird, host, &["n2"]).await;
    reach(&client, lb, &["b2"]).await;
    env.slices
        .delete("local-1", &DeleteParams::default())
        .await
        .unwrap();
    env.slice("local", &[(&b1, "n1")]).await;
    wait_sources(&bird, host, &["n1"]).await;
    reach(&client, lb, &["b1"]).await;
}

/// Connects from `client` to `lb`:80 until exactly the backends `names` have answered
/// (bounded; the router's kernel route and the proxies' rules may lag the announcement).
async fn reach(client: &Arc<Netns>, lb: Ipv4Addr, names: &[&str]) {
    let to = SocketAddr::new(IpAddr::V4(lb), 80);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = std::collections::BTreeSet::new();
    let mut last = None;
    while seen.len() < names.len() {
        let ns = client.clone();
        match tokio::task::spawn_blocking(move || ask(&ns, to))
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

/// Waits until BIRD's routes to `prefix` come from exactly the peers `from`.
async fn wait_sources(bird: &Bird<'_>, prefix: Ipv4Net, from: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let routes = bird.routes().await.unwrap();
        let mut got: Vec<String> = routes
            .iter()
            .filter(|r| r.prefix == IpNet::V4(prefix))
            .map(|r| r.source.clone())
            .collect();
        got.sort();
        if got == from {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{prefix} at the router from {got:?}, not {from:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_check_node_port_reports_local_endpoints() {
    let env = start().await;
    let c = &env.c;
    let b1 = c.add_pod(0, "hc-b1").await;
    let _s1 = name_server(&b1.ns, "b1");
    let svc = env
        .service(
            "local",
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                   "selector": {"app": "local"},
                   "ports": [{"name": "http", "port": 80, "targetPort": PORT}]}),
        )
        .await;
    let hc = svc.spec.unwrap().health_check_node_port.expect("allocated") as u16;
    env.slice("local", &[(&b1, "n1")]).await;
    // Asked from a third namespace on the underlay, as a load balancer's checker would.
    let checker = c.tb.add_node("chk", 9).await.unwrap();
    let get = |ip: Ipv4Addr| {
        let ns = checker.ns.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                http_get(&ns, SocketAddr::new(IpAddr::V4(ip), hc), "/healthz")
            })
            .await
            .unwrap()
        }
    };
    let expect = |ip: Ipv4Addr, code: u16, count: usize| {
        let get = &get;
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let answer = get(ip).await;
                if let Ok((got, body)) = &answer
                    && *got == code
                {
                    let v: serde_json::Value = serde_json::from_str(body).unwrap();
                    assert_eq!(
                        v,
                        json!({"service": {"namespace": "default", "name": "local"},
                               "localEndpoints": count, "serviceProxyHealthy": true})
                    );
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "{ip}:{hc} never answered {code}: {answer:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let (n1, n2) = (c.workers[0].node.ip, c.workers[1].node.ip);
    expect(n1, 200, 1).await;
    expect(n2, 503, 0).await;
    // The endpoint moves to n2: the answers swap.
    let b2 = c.add_pod(1, "hc-b2").await;
    env.slices
        .delete("local-1", &DeleteParams::default())
        .await
        .unwrap();
    env.slice("local", &[(&b2, "n2")]).await;
    expect(n1, 503, 0).await;
    expect(n2, 200, 1).await;
}
