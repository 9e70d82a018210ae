//! BGP configuration as custom resources, in the manner of Calico's: `BGPConfiguration` (the
//! object named `default` holds the cluster-wide settings: AS number, node-to-node mesh on or
//! off, route-reflector cluster id, hold time) and `BGPPeer` (a neighbour: address, AS, which
//! node peers with it — one node by name, or every node — its hold time, its max-prefix
//! limit, its filters, its password and its BFD), both
//! cluster-scoped in `bgp.trellis.dev/v1`. `deploy/bgp-crds.yaml` is the same two definitions
//! for `kubectl apply -f` (a test keeps them equal).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use futures::StreamExt;
use ipnet::IpNet;
use kube::api::Api;
use kube::core::{ApiResource, DynamicObject};
use kube::runtime::watcher;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use trellis_api::cluster::CrdSpec;
use trellis_bgp::{PrefixRule, Verdict};

use crate::{Md5Key, Neighbour};

pub const GROUP: &str = "bgp.trellis.dev";
pub const VERSION: &str = "v1";
pub const CONFIG_KIND: &str = "BGPConfiguration";
pub const CONFIG_PLURAL: &str = "bgpconfigurations";
pub const PEER_KIND: &str = "BGPPeer";
pub const PEER_PLURAL: &str = "bgppeers";
pub const FILTER_KIND: &str = "BGPFilter";
pub const FILTER_PLURAL: &str = "bgpfilters";
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
    /// At most this many prefixes from the peer (overrides `--max-prefixes`).
    #[serde(default)]
    pub max_prefixes: Option<u32>,
    /// `BGPFilter` names, in order: their rules come before the agent's flags.
    #[serde(default)]
    pub filters: Vec<String>,
    /// TCP MD5 password from a Secret, as Calico's `password.secretKeyRef`.
    #[serde(default)]
    pub password: Option<PasswordSource>,
    /// BFD for this peer (absent: the agent's `--bfd` setting).
    #[serde(default)]
    pub bfd: Option<BfdSpec>,
}

/// `spec.bfd`: `{enabled, minRxMs, minTxMs, multiplier}`. A field left out takes the agent's
/// flag (`--bfd`, `--bfd-interval-ms`, `--bfd-multiplier`); `enabled: false` switches BFD off
/// for this peer even when `--bfd` is on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BfdSpec {
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub min_rx_ms: Option<u32>,
    #[serde(default)]
    pub min_tx_ms: Option<u32>,
    #[serde(default)]
    pub multiplier: Option<u8>,
}

/// `spec.password`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PasswordSource {
    pub secret_key_ref: SecretKeyRef,
}

/// A key of a Secret in the agent's `--secrets-namespace`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

/// The password a Secret holds under `r.key`, or why there is none.
async fn password(
    secrets: &Api<k8s_openapi::api::core::v1::Secret>,
    r: &SecretKeyRef,
) -> Result<Md5Key, String> {
    let secret = secrets
        .get_opt(&r.name)
        .await
        .map_err(|e| format!("reading Secret {}: {e}", r.name))?
        .ok_or_else(|| format!("Secret {} does not exist", r.name))?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(&r.key))
                .map(|s| s.clone().into_bytes())
        })
        .ok_or_else(|| format!("Secret {} has no key {}", r.name, r.key))?;
    Md5Key::new(bytes).map_err(|e| format!("Secret {} key {}: {e}", r.name, r.key))
}

/// `BGPFilter.spec`: import and export rules, each list in order (first match decides).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct FilterSpec {
    #[serde(default)]
    pub import: Vec<FilterRule>,
    #[serde(default)]
    pub export: Vec<FilterRule>,
}

/// One rule: `{action: Accept|Reject, cidr, prefixLength: {min, max}}` — prefixes inside
/// `cidr` with a length in `min..=max` (default: exactly `cidr`; `min` alone: `min` or
/// longer).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FilterRule {
    pub action: FilterAction,
    pub cidr: IpNet,
    #[serde(default)]
    pub prefix_length: Option<LengthRange>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum FilterAction {
    Accept,
    Reject,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct LengthRange {
    #[serde(default)]
    pub min: Option<u8>,
    #[serde(default)]
    pub max: Option<u8>,
}

impl FilterRule {
    pub fn rule(&self) -> Result<PrefixRule, trellis_bgp::filter::RuleError> {
        let verdict = match self.action {
            FilterAction::Accept => Verdict::Accept,
            FilterAction::Reject => Verdict::Reject,
        };
        let range = self.prefix_length.unwrap_or_default();
        PrefixRule::new(verdict, self.cidr, range.min, range.max)
    }
}

/// The rules of the named filters, in order; what could not be used, in words.
pub fn resolve(
    names: &[String],
    filters: &BTreeMap<String, FilterSpec>,
) -> (Vec<PrefixRule>, Vec<PrefixRule>, Vec<String>) {
    let (mut import, mut export, mut problems) = (Vec::new(), Vec::new(), Vec::new());
    for name in names {
        let Some(f) = filters.get(name) else {
            problems.push(format!("BGPFilter {name} does not exist"));
            continue;
        };
        for (rules, out) in [(&f.import, &mut import), (&f.export, &mut export)] {
            for r in rules {
                match r.rule() {
                    Ok(rule) => out.push(rule),
                    Err(e) => problems.push(format!("BGPFilter {name}: rule skipped: {e}")),
                }
            }
        }
    }
    (import, export, problems)
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
            "maxPrefixes": {"type": "integer", "minimum": 1, "maximum": 4294967295u64},
            "filters": {"type": "array", "items": {"type": "string"}},
            "password": {"type": "object", "required": ["secretKeyRef"], "properties": {
                "secretKeyRef": {"type": "object", "required": ["name", "key"], "properties": {
                    "name": {"type": "string"},
                    "key": {"type": "string"},
                }},
            }},
            "bfd": {"type": "object", "properties": {
                "enabled": {"type": "boolean"},
                "minRxMs": {"type": "integer", "minimum": 1, "maximum": 60000},
                "minTxMs": {"type": "integer", "minimum": 1, "maximum": 60000},
                "multiplier": {"type": "integer", "minimum": 1, "maximum": 255},
            }},
        }}),
        columns: json!([
            {"name": "Peer", "type": "string", "jsonPath": ".spec.peerIP"},
            {"name": "AS", "type": "integer", "jsonPath": ".spec.asNumber"},
            {"name": "Node", "type": "string", "jsonPath": ".spec.node"},
        ]),
    }
}

/// `BGPFilter`.
pub fn filter_crd() -> CrdSpec {
    let rule = json!({"type": "object", "required": ["action", "cidr"], "properties": {
        "action": {"type": "string", "enum": ["Accept", "Reject"]},
        "cidr": {"type": "string"},
        "prefixLength": {"type": "object", "properties": {
            "min": {"type": "integer", "minimum": 0, "maximum": 128},
            "max": {"type": "integer", "minimum": 0, "maximum": 128},
        }},
    }});
    CrdSpec {
        group: GROUP,
        version: VERSION,
        kind: FILTER_KIND,
        plural: FILTER_PLURAL,
        singular: "bgpfilter",
        scope: "Cluster",
        spec_schema: json!({"type": "object", "properties": {
            "import": {"type": "array", "items": rule.clone()},
            "export": {"type": "array", "items": rule},
        }}),
        columns: json!([]),
    }
}

/// Creates the definitions that are missing (an agent without the right to do so logs it and
/// goes on: an administrator applies the manifest).
pub async fn install(client: &kube::Client) {
    let crds = [config_crd(), peer_crd(), filter_crd()];
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
///
/// Passwords are read from their Secrets whenever the peers change and every 30 s (a changed
/// Secret takes effect then, with a new session). A peer whose password cannot be read is left
/// out (and logged): it must never run unsigned.
pub fn watch(
    client: kube::Client,
    node: String,
    secrets_namespace: String,
) -> mpsc::Receiver<Dynamic> {
    let (tx, rx) = mpsc::channel(16);
    let configs: Api<DynamicObject> =
        Api::all_with(client.clone(), &resource(CONFIG_KIND, CONFIG_PLURAL));
    let peers: Api<DynamicObject> =
        Api::all_with(client.clone(), &resource(PEER_KIND, PEER_PLURAL));
    let filters: Api<DynamicObject> =
        Api::all_with(client.clone(), &resource(FILTER_KIND, FILTER_PLURAL));
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client, &secrets_namespace);
    tokio::spawn(async move {
        let mut config_events = watcher(configs, watcher::Config::default()).boxed();
        let mut peer_events = watcher(peers, watcher::Config::default()).boxed();
        let mut filter_events = watcher(filters, watcher::Config::default()).boxed();
        let mut filter_objs: BTreeMap<String, FilterSpec> = BTreeMap::new();
        let mut filter_init: BTreeMap<String, FilterSpec> = BTreeMap::new();
        let mut settings: Option<ClusterSettings> = None;
        let mut peer_objs: BTreeMap<String, PeerSpec> = BTreeMap::new();
        let mut init: BTreeMap<String, PeerSpec> = BTreeMap::new();
        let mut last: Option<Dynamic> = None;
        let mut reread = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = reread.tick() => {}
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
                Some(ev) = filter_events.next() => match ev {
                    Ok(watcher::Event::Init) => filter_init.clear(),
                    Ok(watcher::Event::InitApply(o)) => {
                        if let Some(n) = o.metadata.name.clone() {
                            filter_init.insert(n, spec(&o).unwrap_or_default());
                        }
                    }
                    Ok(watcher::Event::InitDone) => filter_objs = std::mem::take(&mut filter_init),
                    Ok(watcher::Event::Apply(o)) => {
                        if let Some(n) = o.metadata.name.clone() {
                            let s: Option<FilterSpec> = spec(&o);
                            if s.is_none() {
                                tracing::warn!(filter = %n, "BGPFilter: not a valid spec; its rules are ignored");
                            }
                            filter_objs.insert(n, s.unwrap_or_default());
                        }
                    }
                    Ok(watcher::Event::Delete(o)) => {
                        if let Some(n) = o.metadata.name.as_ref() {
                            filter_objs.remove(n);
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "watching BGPFilter"),
                },
                else => return,
            }
            let mut problems = Vec::new();
            let mut peers = Vec::new();
            for p in peer_objs.values().filter(|p| p.applies_to(&node)) {
                let (import, export, trouble) = resolve(&p.filters, &filter_objs);
                problems.extend(trouble.into_iter().map(|t| (p.peer_ip, t)));
                let password = match &p.password {
                    None => None,
                    Some(source) => match password(&secrets, &source.secret_key_ref).await {
                        Ok(key) => Some(key),
                        Err(e) => {
                            problems.push((p.peer_ip, format!("peer left out: no password: {e}")));
                            continue;
                        }
                    },
                };
                peers.push(Neighbour {
                    address: p.peer_ip,
                    asn: p.as_number,
                    hold_time: p.hold_time,
                    max_prefixes: p.max_prefixes,
                    mesh: false,
                    import,
                    export,
                    password,
                    bfd: p.bfd,
                    interface: None,
                });
            }
            let now = Dynamic {
                mesh: settings.as_ref().and_then(|s| s.node_to_node_mesh),
                peers,
            };
            if last.as_ref() != Some(&now) {
                for (peer, problem) in &problems {
                    tracing::warn!(%peer, "{problem}");
                }
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
            vec![
                config_crd().definition(),
                peer_crd().definition(),
                filter_crd().definition()
            ]
        );
    }

    #[test]
    fn filters_read_like_calicos_and_resolve_in_the_order_a_peer_names_them() {
        let deny_default: FilterSpec = serde_json::from_value(json!({
            "import": [{"action": "Reject", "cidr": "0.0.0.0/0"}],
        }))
        .unwrap();
        let pods: FilterSpec = serde_json::from_value(json!({
            "import": [
                {"action": "Accept", "cidr": "10.244.0.0/16", "prefixLength": {"min": 26, "max": 32}},
                {"action": "Reject", "cidr": "10.0.0.0/8", "prefixLength": {"min": 40}},
            ],
            "export": [{"action": "Reject", "cidr": "10.244.9.0/24", "prefixLength": {"min": 24}}],
        }))
        .unwrap();
        let filters: BTreeMap<String, FilterSpec> =
            [("deny-default".into(), deny_default), ("pods".into(), pods)].into();
        let names: Vec<String> = ["deny-default", "missing", "pods"].map(String::from).into();
        let (import, export, problems) = resolve(&names, &filters);
        let shown = |rules: &[PrefixRule]| rules.iter().map(|r| r.to_string()).collect::<Vec<_>>();
        assert_eq!(
            shown(&import),
            ["reject 0.0.0.0/0", "accept 10.244.0.0/16 ge 26 le 32"]
        );
        assert_eq!(shown(&export), ["reject 10.244.9.0/24 ge 24 le 32"]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0], "BGPFilter missing does not exist");
        assert!(
            problems[1].starts_with("BGPFilter pods: rule skipped: "),
            "{problems:?}"
        );
        // A BGPPeer names its filters.
        let p: PeerSpec = serde_json::from_value(
            json!({"peerIP": "198.18.0.9", "asNumber": 65000, "filters": ["pods"],
                   "password": {"secretKeyRef": {"name": "bgp-secrets", "key": "tor1"}}}),
        )
        .unwrap();
        assert_eq!(p.filters, ["pods"]);
        let r = &p.password.unwrap().secret_key_ref;
        assert_eq!((r.name.as_str(), r.key.as_str()), ("bgp-secrets", "tor1"));
        assert_eq!(p.bfd, None);
        // An IPv6 peer address (a session over IPv6).
        let p: PeerSpec =
            serde_json::from_value(json!({"peerIP": "fd00:198:18::11", "asNumber": 64512}))
                .unwrap();
        assert_eq!(p.peer_ip, "fd00:198:18::11".parse::<IpAddr>().unwrap());
        // And its BFD, field by field.
        let p: PeerSpec = serde_json::from_value(json!({"peerIP": "198.18.0.9", "asNumber": 65000,
            "bfd": {"enabled": true, "minRxMs": 100, "multiplier": 5}}))
        .unwrap();
        assert_eq!(
            p.bfd,
            Some(BfdSpec {
                enabled: Some(true),
                min_rx_ms: Some(100),
                min_tx_ms: None,
                multiplier: Some(5)
            })
        );
    }

    #[test]
    fn peers_apply_to_their_node_or_to_every_node() {
        let p: PeerSpec =
            serde_json::from_value(json!({"peerIP": "198.18.0.9", "asNumber": 65000})).unwrap();
        assert!(p.applies_to("n1") && p.applies_to("n2"));
        let p: PeerSpec = serde_json::from_value(
            json!({"peerIP": "198.18.0.9", "asNumber": 65000, "node": "n2", "holdTime": 9, "maxPrefixes": 100}),
        )
        .unwrap();
        assert!(!p.applies_to("n1") && p.applies_to("n2"));
        assert_eq!(p.hold_time, Some(9));
        assert_eq!(p.max_prefixes, Some(100));
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
