//! Watches of Pods, Namespaces, NetworkPolicies and ClusterNetworkPolicies, turned into model
//! changes. A watch (re)listing sends its whole list at once (`Replace`), so the daemon never
//! commits a half-listed cluster.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod as KubePod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::cnp::{self, Cnp};
use crate::model::{ContainerPort, Labels, Pod};
use crate::netpol::{self, NetPol};
use crate::rules::Proto;

/// A change to one kind of object.
#[derive(Debug)]
pub enum Delta<T> {
    Upsert(T),
    Remove(String),
    /// The complete list (after a (re)list).
    Replace(Vec<T>),
}

/// A change to the model.
#[derive(Debug)]
pub enum Change {
    Pod(Delta<Pod>),
    Namespace(Delta<(String, Labels)>),
    NetPol(Delta<NetPol>),
    Cnp(Delta<Cnp>),
    /// A ClusterNetworkPolicy that cannot be read at all (name, why).
    CnpUnreadable(String, String),
}

/// The model's view of a Pod object.
pub fn pod_of(p: &KubePod) -> Pod {
    let spec = p.spec.as_ref();
    let status = p.status.as_ref();
    let mut ips: Vec<Ipv4Addr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .map(|ips| {
            ips.iter()
                .filter_map(|i| i.ip.parse::<IpAddr>().ok())
                .filter_map(|ip| match ip {
                    IpAddr::V4(v4) => Some(v4),
                    IpAddr::V6(_) => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if ips.is_empty()
        && let Some(Ok(IpAddr::V4(v4))) = status
            .and_then(|s| s.pod_ip.as_ref())
            .map(|s| s.parse::<IpAddr>())
    {
        ips.push(v4);
    }
    let ports = spec
        .map(|s| {
            s.containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .filter_map(|port| {
                    let name = port.name.clone()?;
                    let proto = Proto::parse(port.protocol.as_deref().unwrap_or("TCP"))?;
                    let port = u16::try_from(port.container_port).ok()?;
                    Some(ContainerPort { name, proto, port })
                })
                .collect()
        })
        .unwrap_or_default();
    Pod {
        namespace: p.namespace().unwrap_or_default(),
        name: p.name_any(),
        labels: p.labels().clone(),
        node: spec.and_then(|s| s.node_name.clone()),
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        ips,
        ports,
        iface: None,
    }
}

fn key_of<K: Resource>(o: &K) -> String {
    match o.meta().namespace.as_deref() {
        Some(ns) => format!("{ns}/{}", o.meta().name.clone().unwrap_or_default()),
        None => o.meta().name.clone().unwrap_or_default(),
    }
}

/// Runs one watch until the receiver goes away, converting objects with `convert`.
async fn run<K, T>(
    api: Api<K>,
    what: &'static str,
    tx: mpsc::UnboundedSender<Stamped>,
    convert: impl Fn(&K) -> Option<T> + Send,
    wrap: impl Fn(Delta<T>) -> Change + Send,
    absent_is_empty: bool,
) where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    T: Send,
{
    let mut stream = watcher(api, watcher::Config::default()).boxed();
    let mut listing: Option<Vec<T>> = None;
    let mut said_empty = false;
    // Failures in a row other than 404 (the API server away): backed off as every daemon's
    // start is (200 ms doubling to 5 s), not retried four times a second each.
    let mut failures: u32 = 0;
    let backoff = trellis_api::cluster::ApiWait::default();
    while let Some(event) = stream.next().await {
        // Not on `Init`: the watcher yields it before each list request, failing or not.
        if matches!(&event, Ok(e) if !matches!(e, watcher::Event::Init)) {
            failures = 0;
        }
        let change = match event {
            Ok(watcher::Event::Init) => {
                listing = Some(Vec::new());
                continue;
            }
            Ok(watcher::Event::InitApply(o)) => {
                if let (Some(l), Some(t)) = (listing.as_mut(), convert(&o)) {
                    l.push(t);
                }
                continue;
            }
            Ok(watcher::Event::InitDone) => Delta::Replace(listing.take().unwrap_or_default()),
            Ok(watcher::Event::Apply(o)) => match convert(&o) {
                Some(t) => Delta::Upsert(t),
                None => Delta::Remove(key_of(&o)),
            },
            Ok(watcher::Event::Delete(o)) => Delta::Remove(key_of(&o)),
            Err(e) => {
                let text = format!("{e:?}");
                // A cluster without the ClusterNetworkPolicy CRD has none of them.
                if absent_is_empty && !said_empty && text.contains("404") {
                    said_empty = true;
                    tracing::info!(what, "not served by the API: none");
                    if tx
                        .send((Instant::now(), wrap(Delta::Replace(Vec::new()))))
                        .is_err()
                    {
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                } else if text.contains("404") {
                    // A short fixed pause, not an exponential backoff: a ClusterNetworkPolicy
                    // definition installed later (by `trellis policy isolate`) must be picked
                    // up within the second the isolation promises.
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                } else {
                    failures = failures.saturating_add(1);
                    let pause = backoff.delay(failures);
                    tracing::warn!(what, error = %e, retry_in = ?pause, "watch error (retrying)");
                    tokio::time::sleep(pause).await;
                }
                continue;
            }
        };
        if tx.send((Instant::now(), wrap(change))).is_err() {
            return;
        }
    }
}

/// A change and when its watch received it (the daemon reports how long changes queue).
pub type Stamped = (Instant, Change);

/// Starts the four watches; their changes arrive on the returned channel.
pub fn start(client: &Client) -> mpsc::UnboundedReceiver<Stamped> {
    let (tx, rx) = mpsc::unbounded_channel();
    let pods: Api<KubePod> = Api::all(client.clone());
    tokio::spawn(run(
        pods,
        "pods",
        tx.clone(),
        |p| Some(pod_of(p)),
        Change::Pod,
        false,
    ));
    let nss: Api<Namespace> = Api::all(client.clone());
    tokio::spawn(run(
        nss,
        "namespaces",
        tx.clone(),
        |n| Some((n.name_any(), n.labels().clone())),
        Change::Namespace,
        false,
    ));
    let np_res = ApiResource::erase::<NetworkPolicy>(&());
    let nps: Api<DynamicObject> = Api::all_with(client.clone(), &np_res);
    tokio::spawn(run(
        nps,
        "networkpolicies",
        tx.clone(),
        |o: &DynamicObject| {
            let ns = o.namespace().unwrap_or_default();
            Some(netpol::parse(&ns, &o.name_any(), &o.data["spec"]))
        },
        Change::NetPol,
        false,
    ));
    let cnps: Api<DynamicObject> = Api::all_with(client.clone(), &cnp::api_resource());
    let unreadable = tx.clone();
    tokio::spawn(run(
        cnps,
        "clusternetworkpolicies",
        tx,
        move |o: &DynamicObject| match cnp::parse(&o.name_any(), &o.data["spec"]) {
            Ok(c) => Some(c),
            Err(why) => {
                let _ = unreadable.send((Instant::now(), Change::CnpUnreadable(o.name_any(), why)));
                None
            }
        },
        Change::Cnp,
        true,
    ));
    rx
}

/// Applies a change to the maps of the model; returns whether anything changed.
pub fn apply_map<T: PartialEq>(
    map: &mut BTreeMap<String, T>,
    delta: Delta<T>,
    key: impl Fn(&T) -> String,
) -> bool {
    match delta {
        Delta::Upsert(t) => {
            let k = key(&t);
            if map.get(&k) == Some(&t) {
                return false;
            }
            map.insert(k, t);
            true
        }
        Delta::Remove(k) => map.remove(&k).is_some(),
        Delta::Replace(list) => {
            let new: BTreeMap<String, T> = list.into_iter().map(|t| (key(&t), t)).collect();
            if *map == new {
                return false;
            }
            *map = new;
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pod_object_gives_labels_node_ipv4_addresses_and_named_ports() {
        let p: KubePod = serde_json::from_value(json!({
            "metadata": {"name": "a", "namespace": "x", "labels": {"app": "a"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [
                {"name": "http", "containerPort": 80},
                {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                {"containerPort": 9000}]}]},
            "status": {"podIPs": [{"ip": "fd00::1"}, {"ip": "10.244.1.5"}]}
        }))
        .unwrap();
        let m = pod_of(&p);
        assert_eq!(m.key(), "x/a");
        assert_eq!(m.node.as_deref(), Some("n1"));
        assert_eq!(m.ips, vec!["10.244.1.5".parse::<Ipv4Addr>().unwrap()]);
        assert_eq!(m.named_port(Proto::Udp, "dns"), Some(53));
        assert_eq!(m.named_port(Proto::Tcp, "dns"), None);
        assert_eq!(m.ports.len(), 2);
        assert!(!m.host_network);
    }
}
