//! A Service changing type, driven by real kubectl (1.33 and 1.20), on a dual-stack server:
//! after every change the allocation keys the Service owns are exactly the addresses the
//! object holds — ClusterIP → NodePort allocates node ports, NodePort → ClusterIP releases
//! them, → ExternalName releases the cluster IPs (both families) and node ports,
//! ExternalName → LoadBalancer / ClusterIP allocates again (and drops `externalName`), and
//! delete releases everything.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;

use serde_json::Value;
use support::TestServer;
use support::kubectl::{Kubectl, kubectl_1_20, kubectl_current};

const IPS: &str = support::SERVICE_IPS;
const PORTS: &str = support::NODE_PORTS;

const MANIFEST: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  ipFamilyPolicy: PreferDualStack
  selector: {app: web}
  ports:
  - name: http
    port: 80
  - name: dns
    port: 53
    protocol: UDP
"#;

/// (cluster IPs, node ports) the keys say `default/web` owns.
async fn owned(s: &TestServer) -> (BTreeSet<String>, BTreeSet<String>) {
    let web = |m: std::collections::BTreeMap<String, String>| {
        m.into_iter()
            .filter(|(_, owner)| owner == "default/web")
            .map(|(k, _)| k)
            .collect()
    };
    (
        web(s.allocations(IPS).await),
        web(s.allocations(PORTS).await),
    )
}

/// (cluster IPs, node ports) the object holds.
fn held(v: &Value) -> (BTreeSet<String>, BTreeSet<String>) {
    let spec = &v["spec"];
    let ips = spec["clusterIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|s| *s != "None")
        .map(String::from)
        .collect();
    let ports = spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["nodePort"].as_u64())
        .chain(spec["healthCheckNodePort"].as_u64())
        .map(|n| n.to_string())
        .collect();
    (ips, ports)
}

/// Patches the type (and whatever else), then checks the keys against the object; returns it.
async fn change(s: &TestServer, k: &Kubectl, patch: &str) -> Value {
    k.ok(&["patch", "service", "web", "-p", patch]).await;
    let v = k.get(&["service", "web"]).await;
    assert_eq!(owned(s).await, held(&v), "after {patch}: {v}");
    v
}

async fn service_types_follow_with(k: Kubectl, s: &TestServer) {
    let file = k.manifest("svc.yaml", MANIFEST);
    k.ok(&["create", "-f", &file]).await;
    let v = k.get(&["service", "web"]).await;
    let (ips, ports) = held(&v);
    assert_eq!(ips.len(), 2, "both families: {v}");
    assert!(ports.is_empty(), "{v}");
    assert_eq!(owned(s).await, (ips.clone(), ports));

    // ClusterIP → NodePort: a node port per port, the cluster IPs kept.
    let v = change(s, &k, r#"{"spec":{"type":"NodePort"}}"#).await;
    let (now_ips, np) = held(&v);
    assert_eq!(now_ips, ips);
    assert_eq!(np.len(), 2, "{v}");
    // NodePort → ClusterIP: the node ports go.
    let v = change(s, &k, r#"{"spec":{"type":"ClusterIP"}}"#).await;
    assert!(held(&v).1.is_empty(), "{v}");
    // ClusterIP → LoadBalancer with Local traffic: node ports and a health-check port.
    let v = change(
        s,
        &k,
        r#"{"spec":{"type":"LoadBalancer","externalTrafficPolicy":"Local"}}"#,
    )
    .await;
    assert_eq!(held(&v).1.len(), 3, "{v}");
    // LoadBalancer → ExternalName: every address goes, both families.
    let v = change(
        s,
        &k,
        r#"{"spec":{"type":"ExternalName","externalName":"web.example.com","externalTrafficPolicy":null}}"#,
    )
    .await;
    assert_eq!(held(&v), (BTreeSet::new(), BTreeSet::new()), "{v}");
    assert!(v["spec"].get("clusterIP").is_none(), "{v}");
    // ExternalName → NodePort: a cluster IP (single-stack now: the policy went with
    // ExternalName) and node ports, in the update's transaction; externalName dropped.
    let v = change(s, &k, r#"{"spec":{"type":"NodePort"}}"#).await;
    let (ips2, np2) = held(&v);
    assert_eq!((ips2.len(), np2.len()), (1, 2), "{v}");
    assert!(v["spec"].get("externalName").is_none(), "{v}");
    // → ExternalName → ClusterIP: a cluster IP, no node ports.
    change(
        s,
        &k,
        r#"{"spec":{"type":"ExternalName","externalName":"web.example.com"}}"#,
    )
    .await;
    let v = change(s, &k, r#"{"spec":{"type":"ClusterIP"}}"#).await;
    let (ips3, np3) = held(&v);
    assert_eq!((ips3.len(), np3.len()), (1, 0), "{v}");

    k.ok(&["delete", "service", "web"]).await;
    assert_eq!(owned(s).await, (BTreeSet::new(), BTreeSet::new()));
}

async fn dual_server() -> TestServer {
    TestServer::start_with(|c| {
        c.service_cidrs = "10.96.0.0/12,fd00:96::/112".parse().unwrap();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_33_service_type_changes_allocate_and_release() {
    let s = dual_server().await;
    let dir = tempfile::tempdir().unwrap();
    let k = Kubectl::new(kubectl_current(), &s.running.kubeconfig, dir.path());
    service_types_follow_with(k, &s).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_20_service_type_changes_allocate_and_release() {
    let s = dual_server().await;
    let dir = tempfile::tempdir().unwrap();
    let k = Kubectl::new(kubectl_1_20(), &s.running.kubeconfig, dir.path());
    service_types_follow_with(k, &s).await;
    s.stop().await;
}
