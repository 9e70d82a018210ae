//! The iBGP full mesh: every other node of the cluster is a peer. Each agent publishes its
//! BGP address on its Node object (`trellis.dev/bgp-address`); a node that has not (yet) is
//! reached at its InternalIP. The set is sent whole on every change.

use std::collections::BTreeMap;
use std::net::IpAddr;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::json;
use tokio::sync::mpsc;

use crate::{AgentError, Neighbour};

pub const BGP_ADDRESS: &str = "trellis.dev/bgp-address";

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

/// Publishes this node's BGP address (IPv4, or IPv6 for a mesh over IPv6), then streams the mesh (every other node) on changes.
pub async fn watch(
    client: kube::Client,
    node: String,
    ip: IpAddr,
    asn: u32,
) -> Result<mpsc::Receiver<Vec<Neighbour>>, AgentError> {
    let api: Api<Node> = Api::all(client);
    let patch = json!({"metadata": {"annotations": {BGP_ADDRESS: ip.to_string()}}});
    api.patch(&node, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default()).boxed();
        let mut nodes: BTreeMap<String, IpAddr> = BTreeMap::new();
        let mut pending: BTreeMap<String, IpAddr> = BTreeMap::new();
        let mut synced = false;
        while let Some(ev) = events.next().await {
            let changed = match ev {
                Ok(watcher::Event::Init) => {
                    pending.clear();
                    false
                }
                Ok(watcher::Event::InitApply(n)) => {
                    if let (Some(name), Some(a)) = (n.metadata.name.clone(), address_of(&n)) {
                        pending.insert(name, a);
                    }
                    false
                }
                Ok(watcher::Event::InitDone) => {
                    nodes = std::mem::take(&mut pending);
                    synced = true;
                    true
                }
                Ok(watcher::Event::Apply(n)) => match (n.metadata.name.clone(), address_of(&n)) {
                    (Some(name), Some(a)) => nodes.insert(name, a) != Some(a),
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
            if changed && synced {
                let mesh: Vec<Neighbour> = nodes
                    .iter()
                    .filter(|(name, a)| **name != node && **a != ip)
                    .map(|(_, a)| Neighbour {
                        address: *a,
                        asn,
                        hold_time: None,
                        max_prefixes: None,
                        mesh: true,
                        import: Vec::new(),
                        export: Vec::new(),
                        password: None,
                        bfd: None,
                        interface: None,
                    })
                    .collect();
                if tx.send(mesh).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(rx)
}
