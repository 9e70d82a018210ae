//! A pre-created Node without the default labels (kubernetes.io/hostname, os, arch), against an
//! in-process API server: the kubelet's registration gives it those labels, and the
//! scheduler's default topology spreading then spreads a Deployment's replicas over the nodes.
//! The negative control registers without the label reconcile (the Node is only looked up, as
//! before the reconcile existed): the labels stay absent and the spreading sees no hosts, so
//! nothing steers replicas away from a node that already has them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use trellis_kubelet::node;
use trellis_scheduler::cache::Cache;
use trellis_scheduler::daemon::{Decision, decide};
use trellis_scheduler::filter::Prepared;
use trellis_scheduler::{score, topology};

const NODES: [&str; 3] = ["n1", "n2", "n3"];
const DEFAULT_LABELS: [&str; 3] = [
    "kubernetes.io/hostname",
    "kubernetes.io/os",
    "kubernetes.io/arch",
];

struct Server {
    running: trellis_apiserver::Running,
    _dir: tempfile::TempDir,
    client: kube::Client,
}

async fn server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let config = trellis_apiserver::Config::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    let running = trellis_apiserver::start(config).await.unwrap();
    let kubeconfig = std::fs::read_to_string(&running.kubeconfig).unwrap();
    let kc = kube::config::Kubeconfig::from_yaml(&kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    Server {
        running,
        _dir: dir,
        client,
    }
}

/// Nodes made by an administrator before any kubelet ran: a label of their own, none of the
/// default ones.
async fn pre_create(client: &kube::Client) {
    let nodes: Api<Node> = Api::all(client.clone());
    for n in NODES {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": n, "labels": {"rack": "r1"}},
        }))
        .unwrap();
        nodes.create(&PostParams::default(), &node).await.unwrap();
    }
}

/// The Nodes as the API has them, with the room the kubelet's status would report: so much that
/// a few replicas' default requests (100m, 200Mi) do not move the resource scores, and only
/// spreading can tell the nodes apart.
async fn nodes_now(client: &kube::Client) -> Vec<Node> {
    let api: Api<Node> = Api::all(client.clone());
    let mut out = Vec::new();
    for n in NODES {
        let mut node = api.get(n).await.unwrap();
        node.status = Some(
            serde_json::from_value(
                json!({"allocatable": {"cpu": "1000", "memory": "1Ti", "pods": "110"}}),
            )
            .unwrap(),
        );
        out.push(node);
    }
    out
}

fn default_labels_of(node: &Node) -> Vec<(String, String)> {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    DEFAULT_LABELS
        .iter()
        .filter_map(|k| labels.get(*k).map(|v| (k.to_string(), v.clone())))
        .collect()
}

/// Replica `i` of Deployment `web`: owned by its ReplicaSet, no constraints of its own, no
/// requests.
fn replica(i: usize) -> Pod {
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("web-7d9f-{i}"),
            "namespace": "default",
            "uid": format!("uid-{i}"),
            "labels": {"app": "web", "pod-template-hash": "7d9f"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f",
                                 "uid": "rs-uid", "controller": true}],
        },
        "spec": {"containers": [{"name": "web", "image": "web"}]},
    }))
    .unwrap()
}

fn cache_of(nodes: Vec<Node>) -> Cache {
    let mut cache = Cache::default();
    for n in nodes {
        cache.set_node(n);
    }
    cache
}

/// Schedules `n` replicas one after another (each placed before the next is decided, as the
/// scheduler assumes them) and counts them per node.
fn schedule(cache: &mut Cache, n: usize, seed: u64) -> BTreeMap<String, usize> {
    let mut per_node = BTreeMap::new();
    for i in 0..n {
        let pod = replica(i);
        let Decision::Node(node) = decide(&pod, cache, seed.wrapping_add(i as u64)) else {
            panic!("replica {i} found no node");
        };
        cache.assume(&pod, &node);
        *per_node.entry(node).or_insert(0) += 1;
    }
    per_node
}

/// The scores of every node for one more replica, by node.
fn scores(cache: &Cache) -> BTreeMap<String, i64> {
    let pod = replica(99);
    let p = Prepared::new(&pod, cache);
    let feasible: Vec<_> = cache.nodes().collect();
    let names = feasible.iter().map(|n| n.name().to_string());
    names.zip(score::total(&p, cache, &feasible)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_created_node_gets_the_default_labels_and_a_deployment_spreads_over_the_nodes() {
    let s = server().await;
    pre_create(&s.client).await;
    for n in NODES {
        let node = node::create_if_absent(&s.client, n).await.unwrap();
        node::reconcile_labels(&s.client, &node).await.unwrap();
    }
    let nodes = nodes_now(&s.client).await;
    for node in &nodes {
        let name = node.metadata.name.clone().unwrap();
        let labels = default_labels_of(node);
        assert_eq!(labels.len(), 3, "{name}: {labels:?}");
        assert!(labels.contains(&("kubernetes.io/hostname".into(), name.clone())));
        assert!(labels.contains(&("kubernetes.io/os".into(), "linux".into())));
        let own = node.metadata.labels.as_ref().unwrap().get("rack");
        assert_eq!(
            own.map(String::as_str),
            Some("r1"),
            "{name} kept its own label"
        );
    }

    // Whatever the tie-breaking, six replicas land two per node.
    for seed in 0..20 {
        let mut cache = cache_of(nodes.clone());
        let per_node = schedule(&mut cache, 6, seed);
        let even: BTreeMap<String, usize> = NODES.iter().map(|n| (n.to_string(), 2)).collect();
        assert_eq!(per_node, even, "seed {seed}");
    }
    // Spreading is what tells the nodes apart: one with replicas scores below empty ones.
    let mut cache = cache_of(nodes);
    for i in 0..2 {
        cache.assume(&replica(i), "n1");
    }
    let sc = scores(&cache);
    assert!(sc["n1"] < sc["n2"] && sc["n2"] == sc["n3"], "{sc:?}");
    s.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_label_reconcile_a_pre_created_node_stays_unlabelled_and_spreading_sees_no_host()
 {
    let s = server().await;
    pre_create(&s.client).await;
    for n in NODES {
        // Registration without the reconcile: the existing Node is taken as it is.
        node::create_if_absent(&s.client, n).await.unwrap();
    }
    let nodes = nodes_now(&s.client).await;
    for node in &nodes {
        assert_eq!(default_labels_of(node), [], "{:?}", node.metadata.name);
    }

    let mut cache = cache_of(nodes);
    for i in 0..2 {
        cache.assume(&replica(i), "n1");
    }
    // The default spreading still applies to the replica, but no node has a host domain.
    let spreads = topology::spreads(&replica(99), &cache, "ScheduleAnyway");
    assert!(!spreads.is_empty(), "the system default constraint applies");
    assert!(
        spreads.iter().all(|s| s.counts.is_empty()),
        "no domains without kubernetes.io/hostname: {:?}",
        spreads.iter().map(|s| &s.counts).collect::<Vec<_>>()
    );
    // So a node that already has two replicas scores like the empty ones.
    let sc = scores(&cache);
    assert!(sc["n1"] == sc["n2"] && sc["n2"] == sc["n3"], "{sc:?}");
    s.running.shutdown().await;
}
