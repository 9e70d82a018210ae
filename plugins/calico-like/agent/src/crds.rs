//! BGP configuration as custom resources, in the manner of Calico's: `BGPConfiguration` (the
//! object named `default` holds the cluster-wide settings: AS number, node-to-node mesh on or
//! off, route-reflector cluster id, hold time) and `BGPPeer` (a neighbour: address, AS, which
//! node peers with it — one node by name, or every node — its hold time, its max-prefix
//! limit, its filters, its password and its BFD), both
//! cluster-scoped in `bgp.trellis.dev/v1`. `deploy/bgp-crds.yaml` is the same two definitions
//! for `kubectl apply -f` (a test keeps them equal).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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

use crate::mesh::NodeBgp;
use crate::selector::Selector;
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
    /// The neighbour's address (with `asNumber`), or…
    #[serde(rename = "peerIP", default)]
    pub peer_ip: Option<IpAddr>,
    #[serde(default)]
    pub as_number: Option<u32>,
    /// …the nodes whose labels match this selector (Calico's `peerSelector`, e.g.
    /// `route-reflector == 'true'`): each at its BGP address, in the cluster's AS.
    #[serde(default)]
    pub peer_selector: Option<String>,
    /// The node that peers with it; empty: the nodes `nodeSelector` matches, else every node.
    #[serde(default)]
    pub node: Option<String>,
    /// The nodes that peer with it, by their labels (Calico's `nodeSelector`, e.g. `all()`).
    #[serde(default)]
    pub node_selector: Option<String>,
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
    /// The interface a link-local `peerIP` (fe80::/10) is on: an unnumbered session over that
    /// link, RFC 8950's extended next hop offered, as the agent's `--peer [fe80::1%eth1]:ASN`.
    /// Calico's BGPPeer has no such field (its `peerIP` cannot be link-local); the name is
    /// MetalLB's BGPPeer `spec.interface`.
    #[serde(default)]
    pub interface: Option<String>,
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

/// Which nodes run a `BGPPeer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Runs {
    /// `node`: that node.
    Node(String),
    /// `nodeSelector`: the nodes it matches.
    Selected(Selector),
    /// Neither: every node.
    Everywhere,
}

/// Whom a `BGPPeer` peers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `peerIP` and `asNumber`.
    Address(IpAddr, u32),
    /// `peerSelector`: the nodes it matches (not the node itself).
    Nodes(Selector),
}

impl PeerSpec {
    /// Which nodes run it and whom they peer with, or why it cannot be used.
    pub fn read(&self) -> Result<(Runs, Target), String> {
        // A blank selector is an unset one, as in Calico (`nodeSelector: ""`: every node).
        fn blank(s: Option<&str>) -> Option<&str> {
            s.filter(|s| !s.trim().is_empty())
        }
        let runs = match (self.node.as_deref(), blank(self.node_selector.as_deref())) {
            (Some(n), Some(_)) if !n.is_empty() => {
                return Err("give node or nodeSelector, not both".into());
            }
            (Some(n), _) if !n.is_empty() => Runs::Node(n.to_string()),
            (_, Some(s)) => Runs::Selected(Selector::parse(s).map_err(|e| e.to_string())?),
            _ => Runs::Everywhere,
        };
        let interface = blank(self.interface.as_deref());
        if let Some(i) = interface
            && (i.len() > 15 || i.contains(['/', '%']) || i.contains(char::is_whitespace))
        {
            return Err(format!("interface {i:?} is not an interface name"));
        }
        let link_local = matches!(self.peer_ip, Some(IpAddr::V6(a)) if a.is_unicast_link_local());
        let target = match (
            self.peer_ip,
            self.as_number,
            blank(self.peer_selector.as_deref()),
        ) {
            (Some(_), _, Some(_)) => return Err("give peerIP or peerSelector, not both".into()),
            (Some(_), _, None) if link_local && interface.is_none() => {
                return Err("a link-local peerIP needs its interface (spec.interface)".into());
            }
            _ if interface.is_some() && !link_local => {
                return Err(
                    "interface goes with a link-local (fe80::/10) peerIP (an unnumbered peer)"
                        .into(),
                );
            }
            (Some(ip), Some(asn), None) => Target::Address(ip, asn),
            (Some(_), None, None) => return Err("peerIP needs asNumber".into()),
            (None, _, Some(s)) => Target::Nodes(Selector::parse(s).map_err(|e| e.to_string())?),
            (None, _, None) => return Err("give peerIP (with asNumber) or peerSelector".into()),
        };
        Ok((runs, target))
    }

    /// Whether it names this node (by name) or every node — before labels are known.
    pub fn applies_to(&self, node: &str) -> bool {
        match self.read() {
            Ok((Runs::Node(n), _)) => n == node,
            Ok((Runs::Everywhere, _)) => true,
            Ok((Runs::Selected(_), _)) | Err(_) => false,
        }
    }
}

/// A `BGPPeer` as read, its filters and password resolved: `template` is the neighbour with
/// everything but its address (and AS, for a selector's nodes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrdPeer {
    pub name: String,
    pub runs: Runs,
    pub target: Target,
    pub template: Neighbour,
}

/// The neighbours the `BGPPeer`s give node `me` (whose route-reflector cluster id is
/// `cluster_id`), with `nodes` the cluster's nodes (their labels, addresses and cluster ids)
/// and `asn` the cluster's AS. A reflector (cluster id set) treats a peer node as its client
/// unless that node has the same cluster id (Calico's rule): the clients of two reflectors of
/// one cluster are clients of both, and the reflectors are each other's non-client peers.
pub fn neighbours(
    peers: &[CrdPeer],
    nodes: &[NodeBgp],
    me: &str,
    cluster_id: Option<Ipv4Addr>,
    asn: u32,
) -> Vec<Neighbour> {
    let no_labels = BTreeMap::new();
    let my_labels = nodes
        .iter()
        .find(|n| n.name == me)
        .map_or(&no_labels, |n| &n.labels);
    let my_address = nodes.iter().find(|n| n.name == me).map(|n| n.address);
    let client = |node: Option<&NodeBgp>| {
        cluster_id.is_some() && node.is_some_and(|n| n.cluster_id != cluster_id)
    };
    let selected = |runs: &Runs, n: &NodeBgp| match runs {
        Runs::Node(name) => *name == n.name,
        Runs::Selected(s) => s.matches(&n.labels),
        Runs::Everywhere => true,
    };
    let others = || {
        nodes
            .iter()
            .filter(|n| n.name != me && Some(n.address) != my_address)
    };
    let mut out: Vec<Neighbour> = Vec::new();
    for p in peers {
        let runs_here = match &p.runs {
            Runs::Node(n) => n == me,
            Runs::Selected(s) => s.matches(my_labels),
            Runs::Everywhere => true,
        };
        match &p.target {
            Target::Address(ip, peer_asn) if runs_here => {
                let node = nodes.iter().find(|n| n.address == *ip);
                out.push(Neighbour {
                    address: *ip,
                    asn: *peer_asn,
                    rr_client: *peer_asn == asn && client(node),
                    ..p.template.clone()
                });
            }
            Target::Address(..) => {}
            Target::Nodes(s) => {
                // Both ways, as Calico's: the nodes it runs on peer with the selected ones, and
                // so the selected ones with the nodes it runs on.
                let selected_here = s.matches(my_labels);
                for n in others().filter(|n| {
                    (runs_here && s.matches(&n.labels)) || (selected_here && selected(&p.runs, n))
                }) {
                    if out.iter().any(|o| o.address == n.address) {
                        continue;
                    }
                    out.push(Neighbour {
                        address: n.address,
                        asn,
                        // A node of the cluster: never a default route from it.
                        mesh: true,
                        rr_client: client(Some(n)),
                        ..p.template.clone()
                    });
                }
            }
        }
    }
    out
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
        spec_schema: json!({"type": "object", "properties": {
            "peerIP": {"type": "string"},
            "asNumber": {"type": "integer", "minimum": 1, "maximum": 4294967295u64},
            "peerSelector": {"type": "string"},
            "node": {"type": "string"},
            "nodeSelector": {"type": "string"},
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
            "interface": {"type": "string", "maxLength": 15},
        }}),
        columns: json!([
            {"name": "Peer", "type": "string", "jsonPath": ".spec.peerIP"},
            {"name": "Interface", "type": "string", "jsonPath": ".spec.interface", "priority": 1},
            {"name": "AS", "type": "integer", "jsonPath": ".spec.asNumber"},
            {"name": "Node", "type": "string", "jsonPath": ".spec.node"},
            {"name": "Peers", "type": "string", "jsonPath": ".spec.peerSelector"},
            {"name": "Nodes", "type": "string", "jsonPath": ".spec.nodeSelector"},
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
/// `BGPConfiguration/default`, and the `BGPPeer`s.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dynamic {
    pub mesh: Option<bool>,
    /// Every usable `BGPPeer` (which apply to this node depends on its labels: see
    /// [`neighbours`]).
    pub peers: Vec<CrdPeer>,
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
            for (name, p) in &peer_objs {
                let (runs, target) = match p.read() {
                    Ok(r) => r,
                    Err(e) => {
                        problems.push((name.clone(), format!("left out: {e}")));
                        continue;
                    }
                };
                // Another node's neighbour. (Which selector peers are this node's is decided by
                // the labels, the node watcher's: their passwords are read anyway.)
                if let (Runs::Node(n), Target::Address(..)) = (&runs, &target)
                    && *n != node
                {
                    continue;
                }
                let (import, export, trouble) = resolve(&p.filters, &filter_objs);
                problems.extend(trouble.into_iter().map(|t| (name.clone(), t)));
                let password = match &p.password {
                    None => None,
                    Some(source) => match password(&secrets, &source.secret_key_ref).await {
                        Ok(key) => Some(key),
                        Err(e) => {
                            problems
                                .push((name.clone(), format!("peer left out: no password: {e}")));
                            continue;
                        }
                    },
                };
                let (address, asn) = match &target {
                    Target::Address(ip, asn) => (*ip, *asn),
                    Target::Nodes(_) => (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
                };
                peers.push(CrdPeer {
                    name: name.clone(),
                    runs,
                    target,
                    template: Neighbour {
                        hold_time: p.hold_time,
                        max_prefixes: p.max_prefixes,
                        import,
                        export,
                        password,
                        bfd: p.bfd,
                        interface: p.interface.clone().filter(|i| !i.trim().is_empty()),
                        ..Neighbour::new(address, asn)
                    },
                });
            }
            let now = Dynamic {
                mesh: settings.as_ref().and_then(|s| s.node_to_node_mesh),
                peers,
            };
            if last.as_ref() != Some(&now) {
                for (peer, problem) in &problems {
                    tracing::warn!(bgppeer = %peer, "{problem}");
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
        assert_eq!(
            p.peer_ip,
            Some("fd00:198:18::11".parse::<IpAddr>().unwrap())
        );
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

    fn node(name: &str, last: u8, labels: &[(&str, &str)], cluster_id: Option<[u8; 4]>) -> NodeBgp {
        NodeBgp {
            name: name.into(),
            address: IpAddr::V4(Ipv4Addr::new(198, 18, 0, last)),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            cluster_id: cluster_id.map(Ipv4Addr::from),
        }
    }

    fn crd_peer(name: &str, spec: serde_json::Value) -> CrdPeer {
        let p: PeerSpec = serde_json::from_value(spec).unwrap();
        let (runs, target) = p.read().unwrap();
        let (address, asn) = match &target {
            Target::Address(ip, asn) => (*ip, *asn),
            Target::Nodes(_) => (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
        };
        CrdPeer {
            name: name.into(),
            runs,
            target,
            template: Neighbour {
                hold_time: p.hold_time,
                ..Neighbour::new(address, asn)
            },
        }
    }

    /// Calico's route-reflector pattern: two reflectors (one cluster id, labelled), every node
    /// peering with the labelled ones.
    #[test]
    fn calicos_route_reflector_pattern_makes_clients_of_the_other_nodes_only() {
        let cid = Some([244, 0, 0, 1]);
        let rr = [("route-reflector", "true")];
        let nodes = vec![
            node("rr1", 2, &rr, cid),
            node("rr2", 3, &rr, cid),
            node("c1", 4, &[], None),
            node("c2", 5, &[], None),
        ];
        let peers = vec![crd_peer(
            "peer-with-route-reflectors",
            json!({"nodeSelector": "all()", "peerSelector": "route-reflector == 'true'", "holdTime": 6}),
        )];
        let asn = 64512;
        let shown = |me: &str, cluster_id: Option<Ipv4Addr>| {
            let mut v: Vec<(String, bool)> = neighbours(&peers, &nodes, me, cluster_id, asn)
                .into_iter()
                .map(|n| {
                    assert_eq!((n.asn, n.hold_time, n.mesh), (asn, Some(6), true));
                    (n.address.to_string(), n.rr_client)
                })
                .collect();
            v.sort();
            v
        };
        let s = |a: &str, c: bool| (a.to_string(), c);
        // A client peers with both reflectors (being a client is the reflector's business).
        assert_eq!(
            shown("c1", None),
            [s("198.18.0.2", false), s("198.18.0.3", false)]
        );
        // A reflector peers with every node (both ways, as Calico's): the other reflector
        // (same cluster id) is no client, the other nodes are.
        let cid1 = Some(Ipv4Addr::new(244, 0, 0, 1));
        assert_eq!(
            shown("rr1", cid1),
            [
                s("198.18.0.3", false),
                s("198.18.0.4", true),
                s("198.18.0.5", true)
            ]
        );
        // Another cluster id: a client too.
        let mut nodes2 = nodes.clone();
        nodes2[1].cluster_id = Some(Ipv4Addr::new(244, 0, 0, 2));
        let n = neighbours(&peers, &nodes2, "rr1", cid1, asn);
        assert!(n.iter().all(|n| n.rr_client), "{n:?}");
        // Not a reflector: no clients, whatever the peers are.
        assert!(
            neighbours(&peers, &nodes, "c1", None, asn)
                .iter()
                .all(|n| !n.rr_client)
        );
        // A client is not peered with another client: no mesh.
        assert!(neighbours(&peers, &nodes, "c1", None, asn).len() == 2);
    }

    #[test]
    fn bgp_peers_name_a_node_a_selector_or_every_node_and_an_address_or_a_selector() {
        let nodes = vec![
            node("n1", 2, &[("rack", "a")], None),
            node("n2", 3, &[("rack", "b")], None),
        ];
        let peers = vec![
            crd_peer(
                "tor-a",
                json!({"peerIP": "198.18.0.9", "asNumber": 65000, "nodeSelector": "rack == 'a'"}),
            ),
            crd_peer(
                "tor-b",
                json!({"peerIP": "198.18.0.10", "asNumber": 65000, "node": "n2"}),
            ),
        ];
        let of = |me: &str| -> Vec<String> {
            neighbours(&peers, &nodes, me, None, 64512)
                .into_iter()
                .map(|n| n.address.to_string())
                .collect()
        };
        assert_eq!(of("n1"), ["198.18.0.9"]);
        assert_eq!(of("n2"), ["198.18.0.10"]);
        // An unusable spec says why.
        for bad in [
            json!({"peerIP": "198.18.0.9"}),
            json!({"asNumber": 65000}),
            json!({"peerIP": "198.18.0.9", "asNumber": 65000, "peerSelector": "all()"}),
            json!({"peerSelector": "all()", "node": "n1", "nodeSelector": "all()"}),
            json!({"peerSelector": "rack = 'a'"}),
            json!({"peerIP": "fe80::1", "asNumber": 65000}),
            json!({"peerIP": "198.18.0.9", "asNumber": 65000, "interface": "eth1"}),
            json!({"peerSelector": "all()", "interface": "eth1"}),
            json!({"peerIP": "fe80::1", "asNumber": 65000, "interface": "a/b"}),
            json!({"peerIP": "fe80::1", "asNumber": 65000, "interface": "sixteen-chars-xx"}),
        ] {
            let p: PeerSpec = serde_json::from_value(bad.clone()).unwrap();
            assert!(p.read().is_err(), "{bad} read");
        }
        // Blank selectors are unset ones, as in Calico: every node, and no peer selector.
        let p: PeerSpec = serde_json::from_value(
            json!({"peerIP": "198.18.0.9", "asNumber": 65000, "nodeSelector": "", "peerSelector": " "}),
        )
        .unwrap();
        assert!(matches!(
            p.read(),
            Ok((Runs::Everywhere, Target::Address(..)))
        ));
    }

    #[test]
    fn an_interface_makes_a_link_local_peer_ip_an_unnumbered_neighbour() {
        let p: PeerSpec = serde_json::from_value(
            json!({"peerIP": "fe80::2", "asNumber": 65002, "interface": "eth1", "node": "n1"}),
        )
        .unwrap();
        assert_eq!(p.interface.as_deref(), Some("eth1"));
        let (runs, target) = p.read().unwrap();
        assert_eq!(runs, Runs::Node("n1".into()));
        assert_eq!(target, Target::Address("fe80::2".parse().unwrap(), 65002));
        // The agent's neighbour carries the interface (as `--peer [fe80::2%eth1]:65002`).
        let peer = CrdPeer {
            name: "unnumbered".into(),
            runs,
            target,
            template: Neighbour {
                interface: p.interface.clone(),
                ..Neighbour::new("::".parse().unwrap(), 0)
            },
        };
        let n = neighbours(&[peer], &[], "n1", None, 64512);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].address.to_string(), "fe80::2");
        assert_eq!(n[0].asn, 65002);
        assert_eq!(n[0].interface.as_deref(), Some("eth1"));
        assert_eq!(
            n[0],
            "[fe80::2%eth1]:65002".parse::<Neighbour>().unwrap(),
            "the same neighbour as the flag's"
        );
    }
}
