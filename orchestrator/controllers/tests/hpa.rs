//! HPA scaling policies against the API server's metrics.k8s.io: a Deployment whose pods each
//! use 200 % of their CPU request (the stats of a stand-in kubelet) under an HPA targeting
//! 50 % wants 4 replicas at once. A scale-up policy of 1 pod per period takes it there one pod
//! at a time (1, 2, 3, 4, the HPA saying ScalingLimited/ScaleUpLimit on the way); the negative
//! control, the same HPA without a behavior (upstream's default rules: 4 pods or 100 % per
//! 15 s), jumps from 1 to 4 in one rescale.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde_json::{Value, json};
use support::{FakeNodes, Manager, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Each pod's CPU use in the stand-in kubelet's stats: twice its 100m request.
const POD_NANO_CORES: u64 = 200_000_000;

/// A kubelet's `/stats/summary` over HTTPS (a self-signed certificate, which the API server
/// does not check without `--kubelet-certificate-authority`, as upstream): every pod bound to
/// `node` uses [`POD_NANO_CORES`]. Stops when dropped.
struct StatsKubelet {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StatsKubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn summary(client: &kube::Client, node: &str) -> Value {
    let pods: Api<Pod> = Api::all(client.clone());
    let list = pods
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let entries: Vec<Value> = list
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .map(|p| {
            json!({"podRef": {"name": p.metadata.name, "namespace": p.metadata.namespace,
                              "uid": p.metadata.uid},
                   "containers": [{"name": "web", "cpu": {"time": now, "usageNanoCores": POD_NANO_CORES},
                                   "memory": {"time": now, "workingSetBytes": 8_388_608}}]})
        })
        .collect();
    json!({"node": {"nodeName": node, "cpu": {"time": now, "usageNanoCores": POD_NANO_CORES},
                    "memory": {"time": now, "workingSetBytes": 8_388_608}},
           "pods": entries})
}

impl StatsKubelet {
    async fn start(client: kube::Client, node: &str) -> StatsKubelet {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let chain = vec![CertificateDer::from(cert.der().to_vec())];
        let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let node = node.to_string();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, client, node) = (acceptor.clone(), client.clone(), node.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    // One request per connection: read its head, answer, close.
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let body = summary(&client, &node).await.to_string();
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(reply.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        StatsKubelet { port, task }
    }
}

fn deployment() -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx",
                    "resources": {"requests": {"cpu": "100m"}}}]}}}}))
    .unwrap()
}

fn hpa(behavior: Option<Value>) -> HorizontalPodAutoscaler {
    let mut spec = json!({
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
        "minReplicas": 1, "maxReplicas": 4,
        "metrics": [{"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": 50}}}]});
    if let Some(b) = behavior {
        spec["behavior"] = b;
    }
    serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": spec})).unwrap()
}

/// What one run saw: every distinct `spec.replicas` of the Deployment in order, and every
/// ScalingLimited reason the HPA's status gave.
struct Seen {
    replicas: Vec<i32>,
    limited: BTreeSet<String>,
}

/// Runs the Deployment under `hpa` until it has 4 replicas (120 s at most).
async fn scale_up_under(hpa_obj: HorizontalPodAutoscaler) -> Seen {
    let s = TestServer::start().await;
    let client = s.client().await;
    let nodes = FakeNodes::start(client.clone(), 1).await;
    let kubelet = StatsKubelet::start(client.clone(), "fake-0").await;
    // The node says where its kubelet listens, as a kubelet posts it.
    let node_api: Api<Node> = Api::all(client.clone());
    node_api
        .patch_status(
            "fake-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet.port}}}})),
        )
        .await
        .unwrap();
    let manager = Manager::start(client.clone(), |c| {
        c.hpa.sync_period = Duration::from_millis(500);
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), "default");
    let mut deployment_events = watcher(deployments.clone(), watcher::Config::default()).boxed();
    let mut hpa_events = watcher(hpas.clone(), watcher::Config::default()).boxed();
    deployments
        .create(&PostParams::default(), &deployment())
        .await
        .unwrap();
    hpas.create(&PostParams::default(), &hpa_obj).await.unwrap();
    let mut seen = Seen {
        replicas: Vec::new(),
        limited: BTreeSet::new(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while seen.replicas.last() != Some(&4) {
        let event = tokio::select! {
            e = deployment_events.next() => e.map(|e| e.map(|e| (Some(e), None))),
            e = hpa_events.next() => e.map(|e| e.map(|e| (None, Some(e)))),
            _ = tokio::time::sleep_until(deadline) => panic!(
                "the Deployment did not reach 4 replicas in 120 s: replicas seen {:?}, ScalingLimited reasons {:?}",
                seen.replicas, seen.limited
            ),
        };
        let Some(Ok((d, h))) = event else { continue };
        let ds = match d {
            Some(watcher::Event::Apply(d) | watcher::Event::InitApply(d)) => vec![d],
            _ => Vec::new(),
        };
        for d in ds {
            let r = d.spec.and_then(|s| s.replicas).unwrap_or(0);
            if seen.replicas.last() != Some(&r) {
                seen.replicas.push(r);
            }
        }
        if let Some(watcher::Event::Apply(h) | watcher::Event::InitApply(h)) = h {
            for c in h.status.and_then(|s| s.conditions).into_iter().flatten() {
                if c.type_ == "ScalingLimited" {
                    seen.limited.insert(c.reason.unwrap_or_default());
                }
            }
        }
    }
    manager.stop().await;
    drop(nodes);
    drop(kubelet);
    s.stop().await;
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_of_one_pod_per_period_scales_up_one_pod_at_a_time() {
    let seen = scale_up_under(hpa(Some(json!({"scaleUp": {
        "policies": [{"type": "Pods", "value": 1, "periodSeconds": 2}]}}))))
    .await;
    assert_eq!(seen.replicas, [1, 2, 3, 4], "{:?}", seen.limited);
    assert!(seen.limited.contains("ScaleUpLimit"), "{:?}", seen.limited);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_behavior_the_default_rules_jump_from_one_to_four() {
    let seen = scale_up_under(hpa(None)).await;
    assert_eq!(seen.replicas, [1, 4], "{:?}", seen.limited);
    assert!(!seen.limited.contains("ScaleUpLimit"), "{:?}", seen.limited);
}
