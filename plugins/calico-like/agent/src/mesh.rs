//! The iBGP full mesh: every other node of the cluster is a peer. Each agent publishes its
//! BGP address on its Node object (`trellis.dev/bgp-address`); a node that has not (yet) is
//! reached at its InternalIP. The set is sent whole on every change, with every node's labels
//! and route-reflector cluster id (what `BGPPeer`s with selectors need).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::json;
use tokio::sync::mpsc;

use crate::{AgentError, Neighbour};

pub const BGP_ADDRESS: &str = "trellis.dev/bgp-address";

/// A Node annotation that makes the node's agent a route reflector with this cluster id (read
/// when the agent starts), as Calico's `spec.bgp.routeReflectorClusterID` of its Node
/// resource; the other nodes read it too: a reflector treats a peer node as its client unless
/// that node has the same cluster id.
pub const CLUSTER_ID: &str = "trellis.dev/route-reflector-cluster-id";

/// The annotation Calico keeps `routeReflectorClusterID` in on a Kubernetes Node (its
/// Kubernetes datastore); read when ours is not there.
pub const CALICO_CLUSTER_ID: &str = "projectcalico.org/RouteReflectorClusterID";

/// A node's route-reflector cluster id, from its annotation (ours, else Calico's); a value
/// that is no IPv4 address is none.
pub fn cluster_id_of(node: &Node) -> Option<Ipv4Addr> {
    let a = node.metadata.annotations.as_ref()?;
    let value = a.get(CLUSTER_ID).or_else(|| a.get(CALICO_CLUSTER_ID))?;
    match value.trim().parse() {
        Ok(id) => Some(id),
        Err(_) => {
            tracing::warn!(node = ?node.metadata.name, %value, "route-reflector cluster id is no IPv4 address: ignored");
            None
        }
    }
}

/// Where a node's agent listens: its annotation, else its InternalIP.
pub fn address_of(node: &Node) -> Option<IpAddr> {
    if let Some(a) = node
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(BGP_ADDRESS))
        .and_then(|v| v.parse().ok())
    {
        return Some(a);
    }
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "InternalIP")
        .and_then(|a| a.address.parse().ok())
}

/// A node as the BGP configuration sees it: where its agent listens, its labels (what a
/// `BGPPeer`'s selectors match) and its route-reflector cluster id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeBgp {
    pub name: String,
    pub address: IpAddr,
    pub labels: BTreeMap<String, String>,
    pub cluster_id: Option<Ipv4Addr>,
}

impl NodeBgp {
    /// The node's BGP view; None when it has no address yet.
    pub fn of(node: &Node) -> Option<NodeBgp> {
        Some(NodeBgp {
            name: node.metadata.name.clone()?,
            address: address_of(node)?,
            labels: node.metadata.labels.clone().unwrap_or_default(),
            cluster_id: cluster_id_of(node),
        })
    }
}

/// The iBGP full mesh: every node but this one (by name, or by its BGP address `ip`).
pub fn mesh_peers(nodes: &[NodeBgp], me: &str, ip: IpAddr, asn: u32) -> Vec<Neighbour> {
    nodes
        .iter()
        .filter(|n| n.name != me && n.address != ip)
        .map(|n| Neighbour {
            mesh: true,
            ..Neighbour::new(n.address, asn)
        })
        .collect()
}

/// Publishes this node's BGP address (IPv4, or IPv6 for a mesh over IPv6), then streams every
/// node (this one too: its labels decide which `BGPPeer`s apply) on changes.
pub async fn watch(
    client: kube::Client,
    node: String,
    ip: IpAddr,
) -> Result<mpsc::Receiver<Vec<NodeBgp>>, AgentError> {
    let api: Api<Node> = Api::all(client);
    let patch = json!({"metadata": {"annotations": {BGP_ADDRESS: ip.to_string()}}});
    api.patch(&node, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default()).boxed();
        let mut nodes: BTreeMap<String, NodeBgp> = BTreeMap::new();
        let mut pending: BTreeMap<String, NodeBgp> = BTreeMap::new();
        let mut synced = false;
        while let Some(ev) = events.next().await {
            let changed = match ev {
                Ok(watcher::Event::Init) => {
                    pending.clear();
                    false
                }
                Ok(watcher::Event::InitApply(n)) => {
                    if let Some(b) = NodeBgp::of(&n) {
                        pending.insert(b.name.clone(), b);
                    }
                    false
                }
                Ok(watcher::Event::InitDone) => {
                    nodes = std::mem::take(&mut pending);
                    synced = true;
                    true
                }
                Ok(watcher::Event::Apply(n)) => match (n.metadata.name.clone(), NodeBgp::of(&n)) {
                    (Some(name), Some(b)) => nodes.insert(name, b.clone()) != Some(b),
                    (Some(name), None) => nodes.remove(&name).is_some(),
                    _ => false,
                },
                Ok(watcher::Event::Delete(n)) => n
                    .metadata
                    .name
                    .as_ref()
                    .is_some_and(|name| nodes.remove(name).is_some()),
                Err(e) => {
                    tracing::warn!(error = %e, "watching nodes");
                    false
                }
            };
            if changed && synced && tx.send(nodes.values().cloned().collect()).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}
