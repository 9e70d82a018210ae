//! Service addresses the agent announces, as kube-router and MetalLB do in BGP mode: every
//! LoadBalancer Service's `status.loadBalancer.ingress` addresses as /32s (the proxy on each
//! node DNATs them, so every node announces them and the peers spread traffic over the nodes
//! with ECMP), and with `--announce-service-cidr` the cluster IP range. They are the node's
//! own prefixes, so they go to external (eBGP) peers too; unlike the IPAM blocks they get no
//! blackhole route (the proxy's rules answer for them).

use std::collections::BTreeSet;
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use tokio::sync::{Notify, watch};

/// The /32 of every address in a LoadBalancer Service's status.
pub fn load_balancer_prefixes<'a>(
    services: impl IntoIterator<Item = &'a Service>,
) -> BTreeSet<IpNet> {
    services
        .into_iter()
        .filter(|s| {
            s.spec.as_ref().and_then(|sp| sp.type_.as_deref()) == Some("LoadBalancer")
                && s.metadata.deletion_timestamp.is_none()
        })
        .filter_map(|s| s.status.as_ref()?.load_balancer.as_ref()?.ingress.as_ref())
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .map(|ip: std::net::Ipv4Addr| IpNet::V4(Ipv4Net::from(ip)))
        .collect()
}

/// Follows the Services: the set of load-balancer prefixes, sent on every change.
pub fn watch(client: kube::Client) -> watch::Receiver<BTreeSet<IpNet>> {
    let changed = Arc::new(Notify::new());
    let store = trellis_api::cluster::reflect(Api::<Service>::all(client), changed.clone());
    let (tx, rx) = watch::channel(BTreeSet::new());
    tokio::spawn(async move {
        if store.wait_until_ready().await.is_err() {
            return;
        }
        loop {
            let now = load_balancer_prefixes(store.state().iter().map(|s| s.as_ref()));
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
        let got = load_balancer_prefixes([&lb, &pending, &cluster]);
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            vec!["203.0.113.1/32".parse::<IpNet>().unwrap()]
        );
    }
}
