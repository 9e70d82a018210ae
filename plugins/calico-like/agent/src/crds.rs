//! BGP configuration as custom resources, in the manner of Calico's: `BGPConfiguration` (the
//! object named `default` holds the cluster-wide settings: AS number, node-to-node mesh on or
//! off, route-reflector cluster id, hold time) and `BGPPeer` (a neighbour: address, AS, which
//! node peers with it — one node by name, or every node — and its hold time), both
//! cluster-scoped in `bgp.trellis.dev/v1`. `deploy/bgp-crds.yaml` is the same two definitions
//! for `kubectl apply -f` (a test keeps them equal).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use futures::StreamExt;
use kube::api::Api;
use kube::core::{ApiResource, DynamicObject};
use kube::runtime::watcher;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use trellis_api::cluster::CrdSpec;

use crate::Neighbour;

pub const GROUP: &str = "bgp.trellis.dev";
pub const VERSION: &str = "v1";
pub const CONFIG_KIND: &str = "BGPConfiguration";
pub const CONFIG_PLURAL: &str = "bgpconfigurations";
pub const PEER_KIND: &str = "BGPPeer";
pub const PEER_PLURAL: &str = "bgppeers";
/// The configuration object that applies to the cluster.
pub const DEFAULT: &str = "default";

/// The manifest file shipped for `kubectl apply -f`.
pub const MANIFEST: &str = include_str!("../../deploy/bgp-crds.yaml");

/// `BGPConfiguration.spec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSettings {
    pub as_number: Option<u32>,
    pub node_to_node_mesh: Option<bool>,
    #[serde(rename = "routeReflectorClusterID")]
    pub route_reflector_cluster_id: Option<Ipv4Addr>,
    pub hold_time: Option<u16>,
}

/// `BGPPeer.spec`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerSpec {
    #[serde(rename = "peerIP")]
    pub peer_ip: IpAddr,
    pub as_number: u32,
    /// The node that peers with it; empty: every node.
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub hold_time: Option<u16>,
}

impl PeerSpec {
    pub fn applies_to(&self, node: &str) -> bool {
        self.node
            .as_deref()
            .is_none_or(|n| n.is_empty() || n == node)
    }
}

fn resource(kind: &str, plural: &str) -> ApiResource {
    trellis_api::cluster::resource(GROUP, VERSION, kind, plural)
}

/// `BGPConfiguration`.
pub fn config_crd() -> CrdSpec {
    CrdSpec {
        group: GROUP,
        version: VERSION,
        kind: CONFIG_KIND,
        plural: CONFIG_PLURAL,
        singular: "bgpconfiguration",
        scope: "Cluster",
        spec_schema: json!({"type": "object", "properties": {
            "asNumber": {"type": "integer", "minimum": 1, "maximum": 4294967295u64},
            "nodeToNodeMesh": {"type": "boolean"},
            "routeReflectorClusterID": {"type": "string"},
            "holdTime": {"type": "integer", "minimum": 0, "maximum": 65535},
        }}),
        columns: json!([
            {"name": "AS", "type": "integer", "jsonPath": ".spec.asNumber"},
            {"name": "Mesh", "type": "boolean", "jsonPath": ".spec.nodeToNodeMesh"},
        ]),
    }
}

/// `BGPPeer`.
pub fn peer_crd() -> CrdSpec {
    CrdSpec {
        group: GROUP,
        version: VERSION,
        kind: PEER_KIND,
        plural: PEER_PLURAL,
        singular: "bgppeer",
        scope: "Cluster",
        spec_schema: json!({"type": "object", "required": ["peerIP", "asNumber"], "properties": {
            "peerIP": {"type": "string"},
            "asNumber": {"type": "integer", "minimum": 1, "maximum": 4294967295u64},
            "node": {"type": "string"},
            "holdTime": {"type": "integer", "minimum": 0, "maximum": 65535},
        }}),
        columns: json!([
            {"name": "Peer", "type": "string", "jsonPath": ".spec.peerIP"},
            {"name": "AS", "type": "integer", "jsonPath": ".spec.asNumber"},
            {"name": "Node", "type": "string", "jsonPath": ".spec.node"},
        ]),
    }
}

/// Creates the definitions that are missing (an agent without the right to do so logs it and
/// goes on: an administrator applies the manifest).
pub async fn install(client: &kube::Client) {
    let crds = [config_crd(), peer_crd()];
    if let Err(e) = trellis_api::cluster::crd::install(client, &crds, Duration::from_secs(5)).await
    {
        tracing::warn!(error = %e, "cannot install the BGP definitions; apply plugins/calico-like/deploy/bgp-crds.yaml");
    }
}

fn spec<T: for<'de> Deserialize<'de>>(o: &DynamicObject) -> Option<T> {
    serde_json::from_value(o.data.get("spec")?.clone()).ok()
}

/// The cluster settings (`BGPConfiguration/default`), None when there is none (or the kind is
/// not served yet).
pub async fn cluster_settings(client: &kube::Client) -> Option<ClusterSettings> {
    let api: Api<DynamicObject> =
        Api::all_with(client.clone(), &resource(CONFIG_KIND, CONFIG_PLURAL));
    for _ in 0..50 {
        match api.get_opt(DEFAULT).await {
            Ok(Some(o)) => return spec(&o).or(Some(ClusterSettings::default())),
            Ok(None) => return None,
            // Just installed: the kind may take a moment to be served.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    None
}

/// What the custom resources say while the agent runs: the mesh switch of
/// `BGPConfiguration/default`, and the `BGPPeer`s that apply to this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dynamic {
    pub mesh: Option<bool>,
    pub peers: Vec<Neighbour>,
}

/// Streams [`Dynamic`] whenever a `BGPConfiguration` or `BGPPeer` changes.
pub fn watch(client: kube::Client, node: String) -> mpsc::Receiver<Dynamic> {
    let (tx, rx) = mpsc::channel(16);
    let configs: Api<DynamicObject> =
        Api::all_with(client.clone(), &resource(CONFIG_KIND, CONFIG_PLURAL));
    let peers: Api<DynamicObject> = Api::all_with(client, &resource(PEER_KIND, PEER_PLURAL));
    tokio::spawn(async move {
        let mut config_events = watcher(configs, watcher::Config::default()).boxed();
        let mut peer_events = watcher(peers, watcher::Config::default()).boxed();
        let mut settings: Option<ClusterSettings> = None;
        let mut peer_objs: BTreeMap<String, PeerSpec> = BTreeMap::new();
        let mut init: BTreeMap<String, PeerSpec> = BTreeMap::new();
        let mut last: Option<Dynamic> = None;
        loop {
            tokio::select! {
                Some(ev) = config_events.next() => match ev {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o))
                        if o.metadata.name.as_deref() == Some(DEFAULT) => settings = spec(&o),
                    Ok(watcher::Event::Delete(o)) if o.metadata.name.as_deref() == Some(DEFAULT) => {
                        settings = None
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "watching BGPConfiguration"),
                },
                Some(ev) = peer_events.next() => match ev {
                    Ok(watcher::Event::Init) => init.clear(),
                    Ok(watcher::Event::InitApply(o)) => {
                        if let (Some(n), Some(s)) = (o.metadata.name.clone(), spec::<PeerSpec>(&o)) {
                            init.insert(n, s);
                        }
                    }
                    Ok(watcher::Event::InitDone) => peer_objs = std::mem::take(&mut init),
                    Ok(watcher::Event::Apply(o)) => {
                        if let Some(n) = o.metadata.name.clone() {
                            match spec::<PeerSpec>(&o) {
                                Some(s) => peer_objs.insert(n, s),
                                None => peer_objs.remove(&n),
                            };
                        }
                    }
                    Ok(watcher::Event::Delete(o)) => {
                        if let Some(n) = o.metadata.name.as_ref() {
                            peer_objs.remove(n);
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "watching BGPPeer"),
                },
                else => return,
            }
            let now = Dynamic {
                mesh: settings.as_ref().and_then(|s| s.node_to_node_mesh),
                peers: peer_objs
                    .values()
                    .filter(|p| p.applies_to(&node))
                    .map(|p| Neighbour {
                        address: p.peer_ip,
                        asn: p.as_number,
                        hold_time: p.hold_time,
                    })
                    .collect(),
            };
            if last.as_ref() != Some(&now) {
                last = Some(now.clone());
                if tx.send(now).await.is_err() {
                    return;
                }
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_manifest_is_these_definitions() {
        let docs: Vec<serde_json::Value> = MANIFEST
            .split("\n---\n")
            .skip(1)
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(
            docs,
            vec![config_crd().definition(), peer_crd().definition()]
        );
    }

    #[test]
    fn peers_apply_to_their_node_or_to_every_node() {
        let p: PeerSpec =
            serde_json::from_value(json!({"peerIP": "198.18.0.9", "asNumber": 65000})).unwrap();
        assert!(p.applies_to("n1") && p.applies_to("n2"));
        let p: PeerSpec = serde_json::from_value(
            json!({"peerIP": "198.18.0.9", "asNumber": 65000, "node": "n2", "holdTime": 9}),
        )
        .unwrap();
        assert!(!p.applies_to("n1") && p.applies_to("n2"));
        assert_eq!(p.hold_time, Some(9));
        let s: ClusterSettings = serde_json::from_value(
            json!({"asNumber": 64600, "nodeToNodeMesh": false, "routeReflectorClusterID": "1.1.1.1"}),
        )
        .unwrap();
        assert_eq!(s.node_to_node_mesh, Some(false));
        assert_eq!(
            s.route_reflector_cluster_id,
            Some(Ipv4Addr::new(1, 1, 1, 1))
        );
    }
}
