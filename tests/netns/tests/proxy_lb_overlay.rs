//! LoadBalancer Services in the overlay mode, k3s ServiceLB's way (issue 16): the
//! controller-manager with `--load-balancer-node-addresses` writes every node's InternalIP into
//! the Service's `status.loadBalancer.ingress`, and the proxies serve the Service's port on
//! those addresses; an outside host reaches the backends through either node. Nothing is
//! announced. Every address is inside namespaces the test made.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/overlay_cluster.rs"]
mod cluster;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use cluster::Cluster;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use netns_testbed::bin_path;
use netns_testbed::probe::http_get;
use netns_testbed::probe::{NameServer, ask_name};
use serde_json::json;
use trellis_net::Netns;

const PORT: u16 = 8080;
const LIFETIME: Duration = Duration::from_secs(300);

/// A pod's "container": answers every connection with its name, until dropped.
fn name_server(ns: &Netns, name: &str) -> NameServer {
    NameServer::start(ns, PORT, name, LIFETIME).unwrap()
}

fn ask(ns: &Netns, to: SocketAddr) -> std::io::Result<String> {
    ask_name(ns, to)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_addresses_serve_a_load_balancer_service() {
    let c = Cluster::start(2).await;
    let trellis = bin_path("trellis");
    let nodes: Api<Node> = Api::all(c.client.clone());
    for w in &c.workers {
        nodes
            .patch_status(
                &w.node.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"addresses": [
                    {"type": "InternalIP", "address": w.node.ip.to_string()}]}})),
            )
            .await
            .unwrap();
    }
    let cm =
        c.tb.spawn(
            &c.cp.node.ns,
            &[
                trellis.to_str().unwrap(),
                "controller-manager",
                "--kubeconfig",
                c.cp.kubeconfig.to_str().unwrap(),
                "--controllers",
                "service-lb",
                "--load-balancer-node-addresses",
                "--leader-elect=false",
            ],
            LIFETIME,
        )
        .unwrap();
    let mut proxies = Vec::new();
    for w in &c.workers {
        proxies.push(
            c.tb.spawn(
                &w.node.ns,
                &[
                    trellis.to_str().unwrap(),
                    "proxy",
                    "--node",
                    &w.node.name,
                    "--kubeconfig",
                    c.cp.kubeconfig.to_str().unwrap(),
                    "--listen",
                    "127.0.0.1:10256",
                ],
                LIFETIME,
            )
            .unwrap(),
        );
    }
    for (w, pid) in c.workers.iter().zip(&proxies) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ns = w.node.ns.clone();
            let answer = tokio::task::spawn_blocking(move || {
                http_get(&ns, SocketAddr::from(([127, 0, 0, 1], 10256)), "/readyz")
            })
            .await
            .unwrap();
            if matches!(answer, Ok((200, _))) {
                break;
            }
            assert!(c.tb.running(*pid), "proxy exited:\n{}", c.tb.log_of(*pid));
            assert!(Instant::now() < deadline, "proxy never ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let b1 = c.add_pod(0, "lbo-b1").await;
    let b2 = c.add_pod(1, "lbo-b2").await;
    let _s1 = name_server(&b1.ns, "b1");
    let _s2 = name_server(&b2.ns, "b2");
    let services: Api<Service> = Api::namespaced(c.client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": PORT}]},
    }))
    .unwrap();
    services.create(&PostParams::default(), &svc).await.unwrap();
    let slices: Api<EndpointSlice> = Api::namespaced(c.client.clone(), "default");
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "web-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": PORT, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [b1.ip.to_string()], "nodeName": "n1", "conditions": {"ready": true}},
            {"addresses": [b2.ip.to_string()], "nodeName": "n2", "conditions": {"ready": true}},
        ],
    }))
    .unwrap();
    slices.create(&PostParams::default(), &slice).await.unwrap();

    let mut want: Vec<Ipv4Addr> = c.workers.iter().map(|w| w.node.ip).collect();
    want.sort();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = services.get("web").await.unwrap();
        let got: Vec<Ipv4Addr> = s
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|l| l.ingress)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|i| i.ip?.parse().ok())
            .collect();
        if got == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ingress {got:?}, not the nodes' {want:?}:\n{}",
            c.tb.log_of(cm)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // An outside host reaches both backends through each node's address, port 80.
    let outside = c.tb.add_node("out", 9).await.unwrap();
    for ip in want {
        let to = SocketAddr::new(IpAddr::V4(ip), 80);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = std::collections::BTreeSet::new();
        let mut last = None;
        while seen.len() < 2 {
            let ns = outside.ns.clone();
            match tokio::task::spawn_blocking(move || ask(&ns, to))
                .await
                .unwrap()
            {
                Ok(name) => {
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
}
