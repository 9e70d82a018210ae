//! Service addresses the agent announces, as kube-router and MetalLB do in BGP mode: every
//! LoadBalancer Service's `status.loadBalancer.ingress` addresses as /32s (IPv6 ones as
//! /128s, sent to the peers that negotiated IPv6 unicast: `--dual-stack`) (the proxy on each
//! node DNATs them, so every node announces them and the peers spread traffic over the nodes
//! with ECMP; with externalTrafficPolicy Local only the nodes with a local endpoint do), and
//! with `--announce-service-cidr` the cluster IP range. They are the node's
//! own prefixes, so they go to external (eBGP) peers too; unlike the IPAM blocks they get no
//! blackhole route (the proxy's rules answer for them).

use std::collections::BTreeSet;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use tokio::sync::{Notify, watch};

/// The /32 (IPv6: /128) of every address in a LoadBalancer Service's status. A Service with
/// externalTrafficPolicy Local is announced only by the nodes that have a ready endpoint of it
/// (`node`), as kube-router does: the others would drop its traffic.
pub fn load_balancer_prefixes<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node: &str,
) -> BTreeSet<IpNet> {
    // (namespace, service) of the Services with a ready endpoint here.
    let local: BTreeSet<(String, String)> = slices
        .into_iter()
        .filter(|s| {
            s.endpoints.iter().any(|e| {
                e.node_name.as_deref() == Some(node)
                    && e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
            })
        })
        .filter_map(|s| {
            Some((
                s.metadata.namespace.clone()?,
                s.metadata
                    .labels
                    .as_ref()?
                    .get("kubernetes.io/service-name")?
                    .clone(),
            ))
        })
        .collect();
    services
        .into_iter()
        .filter(|s| {
            let Some(spec) = s.spec.as_ref() else {
                return false;
            };
            spec.type_.as_deref() == Some("LoadBalancer")
                && s.metadata.deletion_timestamp.is_none()
                && (spec.external_traffic_policy.as_deref() != Some("Local")
                    || local.contains(&(
                        s.metadata.namespace.clone().unwrap_or_default(),
                        s.metadata.name.clone().unwrap_or_default(),
                    )))
        })
        .filter_map(|s| s.status.as_ref()?.load_balancer.as_ref()?.ingress.as_ref())
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .map(|ip: std::net::IpAddr| IpNet::from(ip))
        .collect()
}

/// Follows the Services and EndpointSlices: the set of load-balancer prefixes node `node`
/// announces, sent on every change.
pub fn watch(client: kube::Client, node: String) -> watch::Receiver<BTreeSet<IpNet>> {
    let changed = Arc::new(Notify::new());
    let store = trellis_api::cluster::reflect(Api::<Service>::all(client.clone()), changed.clone());
    let slices = trellis_api::cluster::reflect(Api::<EndpointSlice>::all(client), changed.clone());
    let (tx, rx) = watch::channel(BTreeSet::new());
    tokio::spawn(async move {
        if store.wait_until_ready().await.is_err() || slices.wait_until_ready().await.is_err() {
            return;
        }
        loop {
            let now = load_balancer_prefixes(
                store.state().iter().map(|s| s.as_ref()),
                slices.state().iter().map(|s| s.as_ref()),
                &node,
            );
            tx.send_if_modified(|old| {
                let differ = *old != now;
                *old = now;
                differ
            });
            if tx.is_closed() {
                return;
            }
            changed.notified().await;
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_load_balancer_statuses_become_host_routes() {
        let svc = |v: serde_json::Value| -> Service { serde_json::from_value(v).unwrap() };
        let lb = svc(serde_json::json!({
            "metadata": {"name": "a", "namespace": "default"},
            "spec": {"type": "LoadBalancer"},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.1"}, {"hostname": "lb.example"}]}}
        }));
        let pending = svc(serde_json::json!({
            "metadata": {"name": "b", "namespace": "default"},
            "spec": {"type": "LoadBalancer"}
        }));
        let cluster = svc(serde_json::json!({
            "metadata": {"name": "c", "namespace": "default"},
            "spec": {"type": "ClusterIP"},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]}}
        }));
        let dual = svc(serde_json::json!({
            "metadata": {"name": "d", "namespace": "default"},
            "spec": {"type": "LoadBalancer"},
            "status": {"loadBalancer": {"ingress": [{"ip": "fd00:203::1"}, {"ip": "203.0.113.2"}]}}
        }));
        let got = load_balancer_prefixes([&lb, &pending, &cluster, &dual], [], "n1");
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            ["203.0.113.1/32", "203.0.113.2/32", "fd00:203::1/128"]
                .map(|p| p.parse::<IpNet>().unwrap())
                .to_vec()
        );
    }

    #[test]
    fn a_local_policy_address_comes_only_from_nodes_with_a_ready_endpoint() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local"},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.2"}]}}
        }))
        .unwrap();
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.244.1.2"], "nodeName": "n1"},
                {"addresses": ["10.244.2.2"], "nodeName": "n2", "conditions": {"ready": false}}
            ]
        }))
        .unwrap();
        assert_eq!(load_balancer_prefixes([&svc], [&slice], "n1").len(), 1);
        assert!(load_balancer_prefixes([&svc], [&slice], "n2").is_empty());
        assert!(load_balancer_prefixes([&svc], [&slice], "n3").is_empty());
    }
}
