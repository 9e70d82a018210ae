//! An independent model of what NetworkPolicy (networking.k8s.io/v1) and ClusterNetworkPolicy
//! (policy.networking.k8s.io/v1alpha2, the Admin and Baseline tiers) allow, written from the
//! upstream API documentation and the contract — deliberately sharing no code with
//! trellis-policyd, whose compiled rules the tests hold against it.
//!
//! The same values produce the objects the tests send to the API ([`NetworkPolicy::to_json`],
//! [`Cnp::to_json`]), so what is modelled is exactly what is applied.
//!
//! Semantics encoded:
//! - a pod is isolated for a direction when a NetworkPolicy of its namespace selects it and has
//!   that direction in its policyTypes (defaulted as the API does: Ingress, plus Egress when the
//!   policy has egress rules); then only what some rule of those policies allows passes (union);
//! - a connection needs the egress of its source and the ingress of its destination;
//! - peers: podSelector alone = that namespace; namespaceSelector alone = all its pods; both =
//!   AND; several peers or rules = OR; ipBlock matches the pod's address (except excluded);
//! - ports: number (+ endPort), name (resolved on the destination pod's container ports, with
//!   the protocol), protocol defaulting to TCP; no ports = all;
//! - tiers, per direction: Admin (by priority, then rule order; Accept/Deny stop, Pass skips to
//!   NetworkPolicy) → NetworkPolicy (when it isolates the pod it decides) → Baseline (Pass = no
//!   match) → allowed.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::{Value, json};

use crate::matrix::Proto;

/// A label selector: matchLabels and matchExpressions; the empty one selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pub labels: BTreeMap<String, String>,
    pub exprs: Vec<Expr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expr {
    pub key: String,
    pub op: Op,
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Selector {
    /// Selects everything (`{}`).
    pub fn all() -> Selector {
        Selector::default()
    }

    /// `{matchLabels: {k: v}}`.
    pub fn eq(k: &str, v: &str) -> Selector {
        Selector::default().and(k, v)
    }

    /// Adds `k: v` to matchLabels.
    pub fn and(mut self, k: &str, v: &str) -> Selector {
        self.labels.insert(k.into(), v.into());
        self
    }

    /// Adds an expression.
    pub fn expr(mut self, key: &str, op: Op, values: &[&str]) -> Selector {
        self.exprs.push(Expr {
            key: key.into(),
            op,
            values: values.iter().map(|v| v.to_string()).collect(),
        });
        self
    }

    /// The namespace named `ns`, by the label the API server gives every namespace.
    pub fn ns_name(ns: &str) -> Selector {
        Selector::eq(NS_NAME_LABEL, ns)
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.exprs.iter().all(|e| {
                let have = labels.get(&e.key);
                match e.op {
                    Op::In => have.is_some_and(|v| e.values.contains(v)),
                    Op::NotIn => have.is_none_or(|v| !e.values.contains(v)),
                    Op::Exists => have.is_some(),
                    Op::DoesNotExist => have.is_none(),
                }
            })
    }

    pub fn to_json(&self) -> Value {
        let mut o = serde_json::Map::new();
        if !self.labels.is_empty() {
            o.insert("matchLabels".into(), json!(self.labels));
        }
        if !self.exprs.is_empty() {
            let exprs: Vec<Value> = self
                .exprs
                .iter()
                .map(|e| {
                    let mut x = json!({"key": e.key, "operator": format!("{:?}", e.op)});
                    if matches!(e.op, Op::In | Op::NotIn) {
                        x["values"] = json!(e.values);
                    }
                    x
                })
                .collect();
            o.insert("matchExpressions".into(), Value::Array(exprs));
        }
        Value::Object(o)
    }
}

/// The label every namespace carries with its own name.
pub const NS_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A named container port of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPort {
    pub name: String,
    pub port: u16,
    pub proto: Proto,
}

#[derive(Debug, Clone)]
pub struct NsInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ip: Ipv4Addr,
    pub ports: Vec<NamedPort>,
}

impl PodInfo {
    /// `ns/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

/// A NetworkPolicy peer.
#[derive(Debug, Clone)]
pub enum NpPeer {
    /// `podSelector` and/or `namespaceSelector` (at least one is set in a valid peer).
    Pods {
        namespaces: Option<Selector>,
        pods: Option<Selector>,
    },
    IpBlock {
        cidr: Ipv4Net,
        except: Vec<Ipv4Net>,
    },
}

impl NpPeer {
    pub fn pods(sel: Selector) -> NpPeer {
        NpPeer::Pods {
            namespaces: None,
            pods: Some(sel),
        }
    }
    pub fn namespaces(sel: Selector) -> NpPeer {
        NpPeer::Pods {
            namespaces: Some(sel),
            pods: None,
        }
    }
    pub fn both(namespaces: Selector, pods: Selector) -> NpPeer {
        NpPeer::Pods {
            namespaces: Some(namespaces),
            pods: Some(pods),
        }
    }
}

#[derive(Debug, Clone)]
pub enum PortRef {
    Number(u16),
    Named(String),
}

/// A NetworkPolicy port: protocol (TCP when absent), port (all when absent), endPort.
#[derive(Debug, Clone)]
pub struct NpPort {
    pub proto: Option<Proto>,
    pub port: Option<PortRef>,
    pub end_port: Option<u16>,
}

impl NpPort {
    pub fn number(proto: Proto, port: u16) -> NpPort {
        NpPort {
            proto: Some(proto),
            port: Some(PortRef::Number(port)),
            end_port: None,
        }
    }
    /// A container port name; the protocol must be given too (it defaults to TCP, and a name
    /// matches only a container port of the same protocol).
    pub fn named(proto: Proto, name: &str) -> NpPort {
        NpPort {
            proto: Some(proto),
            port: Some(PortRef::Named(name.into())),
            end_port: None,
        }
    }
    pub fn range(proto: Proto, start: u16, end: u16) -> NpPort {
        NpPort {
            proto: Some(proto),
            port: Some(PortRef::Number(start)),
            end_port: Some(end),
        }
    }
}

/// A rule: peers (none = everyone) and ports (none = all).
#[derive(Debug, Clone, Default)]
pub struct NpRule {
    pub peers: Vec<NpPeer>,
    pub ports: Vec<NpPort>,
}

#[derive(Debug, Clone)]
pub struct NetworkPolicy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: Selector,
    /// None: the field is absent.
    pub ingress: Option<Vec<NpRule>>,
    pub egress: Option<Vec<NpRule>>,
    /// None: absent, defaulted by the API.
    pub policy_types: Option<Vec<Direction>>,
}

impl NetworkPolicy {
    pub fn new(namespace: &str, name: &str, pod_selector: Selector) -> NetworkPolicy {
        NetworkPolicy {
            namespace: namespace.into(),
            name: name.into(),
            pod_selector,
            ingress: None,
            egress: None,
            policy_types: None,
        }
    }

    pub fn ingress(mut self, rules: Vec<NpRule>) -> Self {
        self.ingress = Some(rules);
        self
    }

    pub fn egress(mut self, rules: Vec<NpRule>) -> Self {
        self.egress = Some(rules);
        self
    }

    pub fn types(mut self, t: &[Direction]) -> Self {
        self.policy_types = Some(t.to_vec());
        self
    }

    /// policyTypes as upstream defaults them (SetDefaults_NetworkPolicy): when absent or
    /// empty, Ingress, and Egress too when there is at least one egress rule.
    pub fn effective_types(&self) -> Vec<Direction> {
        match &self.policy_types {
            Some(t) if !t.is_empty() => t.clone(),
            _ => {
                let mut t = vec![Direction::Ingress];
                if self.egress.as_ref().is_some_and(|e| !e.is_empty()) {
                    t.push(Direction::Egress);
                }
                t
            }
        }
    }

    pub fn to_json(&self) -> Value {
        let port = |p: &NpPort| {
            let mut o = json!({});
            if let Some(proto) = p.proto {
                o["protocol"] = json!(proto.as_k8s());
            }
            match &p.port {
                Some(PortRef::Number(n)) => o["port"] = json!(n),
                Some(PortRef::Named(n)) => o["port"] = json!(n),
                None => {}
            }
            if let Some(e) = p.end_port {
                o["endPort"] = json!(e);
            }
            o
        };
        let peer = |p: &NpPeer| match p {
            NpPeer::Pods { namespaces, pods } => {
                let mut o = json!({});
                if let Some(n) = namespaces {
                    o["namespaceSelector"] = n.to_json();
                }
                if let Some(s) = pods {
                    o["podSelector"] = s.to_json();
                }
                o
            }
            NpPeer::IpBlock { cidr, except } => {
                let mut b = json!({"cidr": cidr.to_string()});
                if !except.is_empty() {
                    b["except"] = json!(except.iter().map(|e| e.to_string()).collect::<Vec<_>>());
                }
                json!({ "ipBlock": b })
            }
        };
        let rules = |rules: &[NpRule], key: &str| -> Value {
            Value::Array(
                rules
                    .iter()
                    .map(|r| {
                        let mut o = json!({});
                        if !r.peers.is_empty() {
                            o[key] = Value::Array(r.peers.iter().map(peer).collect());
                        }
                        if !r.ports.is_empty() {
                            o["ports"] = Value::Array(r.ports.iter().map(port).collect());
                        }
                        o
                    })
                    .collect(),
            )
        };
        let mut spec = json!({"podSelector": self.pod_selector.to_json()});
        if let Some(i) = &self.ingress {
            spec["ingress"] = rules(i, "from");
        }
        if let Some(e) = &self.egress {
            spec["egress"] = rules(e, "to");
        }
        if let Some(t) = &self.policy_types {
            spec["policyTypes"] = json!(t.iter().map(|d| format!("{d:?}")).collect::<Vec<_>>());
        }
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": spec,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Admin,
    Baseline,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Accept,
    Deny,
    Pass,
}

/// A ClusterNetworkPolicy subject or peer.
#[derive(Debug, Clone)]
pub enum CnpSel {
    Namespaces(Selector),
    Pods {
        namespaces: Selector,
        pods: Selector,
    },
}

impl CnpSel {
    fn matches(&self, ns: &NsInfo, pod: &PodInfo) -> bool {
        match self {
            CnpSel::Namespaces(n) => n.matches(&ns.labels),
            CnpSel::Pods { namespaces, pods } => {
                namespaces.matches(&ns.labels) && pods.matches(&pod.labels)
            }
        }
    }

    fn to_json(&self) -> Value {
        match self {
            CnpSel::Namespaces(n) => json!({"namespaces": n.to_json()}),
            CnpSel::Pods { namespaces, pods } => json!({"pods": {
                "namespaceSelector": namespaces.to_json(),
                "podSelector": pods.to_json(),
            }}),
        }
    }
}

#[derive(Debug, Clone)]
pub enum CnpPort {
    Number(Proto, u16),
    Range(Proto, u16, u16),
    Named(String),
}

#[derive(Debug, Clone)]
pub struct CnpRule {
    pub name: String,
    pub action: Action,
    pub peers: Vec<CnpSel>,
    /// None: all ports.
    pub ports: Option<Vec<CnpPort>>,
}

#[derive(Debug, Clone)]
pub struct Cnp {
    pub name: String,
    pub tier: Tier,
    pub priority: u16,
    pub subject: CnpSel,
    pub ingress: Vec<CnpRule>,
    pub egress: Vec<CnpRule>,
}

impl Cnp {
    /// What `trellis policy isolate NS [--strict]` writes (the contract).
    pub fn isolate(ns: &str, strict: bool) -> Cnp {
        let me = Selector::ns_name(ns);
        Cnp {
            name: if strict {
                format!("trellis-isolate-strict-{ns}")
            } else {
                format!("trellis-isolate-{ns}")
            },
            tier: if strict { Tier::Admin } else { Tier::Baseline },
            priority: 500,
            subject: CnpSel::Namespaces(me.clone()),
            ingress: vec![
                CnpRule {
                    name: "same-namespace".into(),
                    action: Action::Accept,
                    peers: vec![CnpSel::Namespaces(me)],
                    ports: None,
                },
                CnpRule {
                    name: "others".into(),
                    action: Action::Deny,
                    peers: vec![CnpSel::Namespaces(Selector::all())],
                    ports: None,
                },
            ],
            egress: vec![],
        }
    }

    pub fn to_json(&self) -> Value {
        let port = |p: &CnpPort| match p {
            CnpPort::Number(proto, n) => {
                json!({"portNumber": {"protocol": proto.as_k8s(), "port": n}})
            }
            CnpPort::Range(proto, s, e) => {
                json!({"portRange": {"protocol": proto.as_k8s(), "start": s, "end": e}})
            }
            CnpPort::Named(n) => json!({"namedPort": n}),
        };
        let rules = |rules: &[CnpRule], key: &str| -> Value {
            Value::Array(
                rules
                    .iter()
                    .map(|r| {
                        let mut o = json!({"name": r.name, "action": format!("{:?}", r.action)});
                        o[key] = Value::Array(r.peers.iter().map(CnpSel::to_json).collect());
                        if let Some(p) = &r.ports {
                            o["ports"] = Value::Array(p.iter().map(port).collect());
                        }
                        o
                    })
                    .collect(),
            )
        };
        let mut spec = json!({
            "tier": format!("{:?}", self.tier),
            "priority": self.priority,
            "subject": self.subject.to_json(),
        });
        if !self.ingress.is_empty() {
            spec["ingress"] = rules(&self.ingress, "from");
        }
        if !self.egress.is_empty() {
            spec["egress"] = rules(&self.egress, "to");
        }
        json!({
            "apiVersion": "policy.networking.k8s.io/v1alpha2",
            "kind": "ClusterNetworkPolicy",
            "metadata": {"name": self.name},
            "spec": spec,
        })
    }
}

/// Everything the verdicts depend on.
#[derive(Debug, Clone, Default)]
pub struct World {
    pub namespaces: Vec<NsInfo>,
    pub pods: Vec<PodInfo>,
    pub policies: Vec<NetworkPolicy>,
    pub cnps: Vec<Cnp>,
}

impl World {
    fn ns(&self, name: &str) -> NsInfo {
        self.namespaces
            .iter()
            .find(|n| n.name == name)
            .cloned()
            .unwrap_or_else(|| NsInfo {
                name: name.into(),
                labels: BTreeMap::new(),
            })
    }

    /// Whether a new connection from `from` to `to` on `port`/`proto` is allowed.
    pub fn allowed(&self, from: &PodInfo, to: &PodInfo, port: u16, proto: Proto) -> bool {
        self.direction(Direction::Egress, from, to, to, port, proto)
            && self.direction(Direction::Ingress, to, from, to, port, proto)
    }

    /// The verdict for `subject` (the source for egress, the destination for ingress) talking
    /// to `peer`; `dst` is the destination pod, whose container ports resolve names.
    fn direction(
        &self,
        dir: Direction,
        subject: &PodInfo,
        peer: &PodInfo,
        dst: &PodInfo,
        port: u16,
        proto: Proto,
    ) -> bool {
        match self.tier_verdict(Tier::Admin, dir, subject, peer, dst, port, proto) {
            Some(Action::Accept) => return true,
            Some(Action::Deny) => return false,
            Some(Action::Pass) | None => {}
        }
        if let Some(v) = self.np_verdict(dir, subject, peer, dst, port, proto) {
            return v;
        }
        !matches!(
            self.tier_verdict(Tier::Baseline, dir, subject, peer, dst, port, proto),
            Some(Action::Deny)
        )
    }

    /// The first matching rule's action in a tier (Pass in Baseline counts as no match).
    #[allow(clippy::too_many_arguments)]
    fn tier_verdict(
        &self,
        tier: Tier,
        dir: Direction,
        subject: &PodInfo,
        peer: &PodInfo,
        dst: &PodInfo,
        port: u16,
        proto: Proto,
    ) -> Option<Action> {
        let subject_ns = self.ns(&subject.namespace);
        let peer_ns = self.ns(&peer.namespace);
        let mut policies: Vec<&Cnp> = self
            .cnps
            .iter()
            .filter(|c| c.tier == tier && c.subject.matches(&subject_ns, subject))
            .collect();
        policies.sort_by(|a, b| a.priority.cmp(&b.priority).then(a.name.cmp(&b.name)));
        for c in policies {
            let rules = match dir {
                Direction::Ingress => &c.ingress,
                Direction::Egress => &c.egress,
            };
            for r in rules {
                let peer_ok = r.peers.iter().any(|p| p.matches(&peer_ns, peer));
                let port_ok = r.ports.as_ref().is_none_or(|ps| {
                    ps.iter().any(|p| match p {
                        CnpPort::Number(pr, n) => *pr == proto && *n == port,
                        CnpPort::Range(pr, s, e) => *pr == proto && (*s..=*e).contains(&port),
                        CnpPort::Named(name) => named(dst, name, port, proto),
                    })
                });
                if peer_ok && port_ok {
                    if tier == Tier::Baseline && r.action == Action::Pass {
                        continue;
                    }
                    return Some(r.action);
                }
            }
        }
        None
    }

    /// None when no NetworkPolicy isolates `subject` in `dir`; else whether one allows it.
    fn np_verdict(
        &self,
        dir: Direction,
        subject: &PodInfo,
        peer: &PodInfo,
        dst: &PodInfo,
        port: u16,
        proto: Proto,
    ) -> Option<bool> {
        let peer_ns = self.ns(&peer.namespace);
        let selecting: Vec<&NetworkPolicy> = self
            .policies
            .iter()
            .filter(|p| {
                p.namespace == subject.namespace
                    && p.pod_selector.matches(&subject.labels)
                    && p.effective_types().contains(&dir)
            })
            .collect();
        if selecting.is_empty() {
            return None;
        }
        Some(selecting.iter().any(|p| {
            let rules = match dir {
                Direction::Ingress => p.ingress.as_deref().unwrap_or_default(),
                Direction::Egress => p.egress.as_deref().unwrap_or_default(),
            };
            rules.iter().any(|r| {
                let peer_ok = r.peers.is_empty()
                    || r.peers.iter().any(|q| match q {
                        NpPeer::Pods { namespaces, pods } => {
                            let ns_ok = match namespaces {
                                None => peer.namespace == p.namespace,
                                Some(s) => s.matches(&peer_ns.labels),
                            };
                            ns_ok && pods.as_ref().is_none_or(|s| s.matches(&peer.labels))
                        }
                        NpPeer::IpBlock { cidr, except } => {
                            cidr.contains(&peer.ip) && !except.iter().any(|e| e.contains(&peer.ip))
                        }
                    });
                let port_ok = r.ports.is_empty()
                    || r.ports.iter().any(|q| {
                        q.proto.unwrap_or(Proto::Tcp) == proto
                            && match &q.port {
                                None => true,
                                Some(PortRef::Number(n)) => match q.end_port {
                                    Some(e) => (*n..=e).contains(&port),
                                    None => *n == port,
                                },
                                Some(PortRef::Named(name)) => named(dst, name, port, proto),
                            }
                    });
                peer_ok && port_ok
            })
        }))
    }
}

/// Whether `pod` declares a container port `name` that is `port`/`proto`.
fn named(pod: &PodInfo, name: &str, port: u16, proto: Proto) -> bool {
    pod.ports
        .iter()
        .any(|p| p.name == name && p.port == port && p.proto == proto)
}

/// The upstream conformance's container ports: `serve-<port>-<proto>` for each.
pub fn serve_ports(ports: &[u16], protos: &[Proto]) -> Vec<NamedPort> {
    ports
        .iter()
        .flat_map(|p| {
            protos.iter().map(move |q| NamedPort {
                name: format!("serve-{p}-{}", q.lower()),
                port: *p,
                proto: *q,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// x, y with pods a, b each; x/a at 10.0.0.1, x/b .2, y/a .3, y/b .4.
    fn world() -> World {
        let ns = |n: &str| NsInfo {
            name: n.into(),
            labels: labels(&[(NS_NAME_LABEL, n), ("ns", n)]),
        };
        let mut pods = Vec::new();
        for (i, (n, p)) in [("x", "a"), ("x", "b"), ("y", "a"), ("y", "b")]
            .iter()
            .enumerate()
        {
            pods.push(PodInfo {
                namespace: n.to_string(),
                name: p.to_string(),
                labels: labels(&[("pod", p)]),
                ip: Ipv4Addr::new(10, 0, 0, i as u8 + 1),
                ports: serve_ports(&[80, 81], &[Proto::Tcp, Proto::Udp, Proto::Sctp]),
            });
        }
        World {
            namespaces: vec![ns("x"), ns("y")],
            pods,
            ..Default::default()
        }
    }

    fn ok(w: &World, from: usize, to: usize, port: u16, proto: Proto) -> bool {
        w.allowed(&w.pods[from], &w.pods[to], port, proto)
    }

    #[test]
    fn no_policy_allows_everything() {
        let w = world();
        assert!(ok(&w, 0, 3, 80, Proto::Tcp) && ok(&w, 3, 0, 81, Proto::Sctp));
    }

    #[test]
    fn deny_all_ingress_isolates_only_the_selected_direction() {
        let mut w = world();
        w.policies
            .push(NetworkPolicy::new("x", "deny", Selector::all()).ingress(vec![]));
        assert!(!ok(&w, 2, 0, 80, Proto::Tcp), "y/a → x/a denied");
        assert!(!ok(&w, 1, 0, 80, Proto::Udp), "x/b → x/a denied too");
        assert!(ok(&w, 0, 2, 80, Proto::Tcp), "egress of x is not isolated");
    }

    #[test]
    fn pod_and_namespace_selector_in_one_peer_is_and_in_two_peers_or() {
        let mut w = world();
        let and = NpRule {
            peers: vec![NpPeer::both(
                Selector::eq("ns", "y"),
                Selector::eq("pod", "b"),
            )],
            ports: vec![],
        };
        w.policies
            .push(NetworkPolicy::new("x", "and", Selector::eq("pod", "a")).ingress(vec![and]));
        assert!(ok(&w, 3, 0, 80, Proto::Tcp), "y/b allowed");
        assert!(!ok(&w, 2, 0, 80, Proto::Tcp), "y/a not");
        assert!(!ok(&w, 1, 0, 80, Proto::Tcp), "x/b not");
        w.policies[0].ingress = Some(vec![NpRule {
            peers: vec![
                NpPeer::namespaces(Selector::eq("ns", "y")),
                NpPeer::pods(Selector::eq("pod", "b")),
            ],
            ports: vec![],
        }]);
        assert!(ok(&w, 2, 0, 80, Proto::Tcp), "y/a by the namespace peer");
        assert!(
            ok(&w, 1, 0, 80, Proto::Tcp),
            "x/b by the pod peer (same namespace)"
        );
        assert!(ok(&w, 1, 1, 80, Proto::Tcp), "x/b is not selected");
    }

    #[test]
    fn ports_by_number_range_name_and_protocol() {
        let mut w = world();
        let rule = |ports| NpRule {
            peers: vec![],
            ports,
        };
        w.policies.push(
            NetworkPolicy::new("x", "p", Selector::all())
                .ingress(vec![rule(vec![NpPort::named(Proto::Udp, "serve-81-udp")])]),
        );
        assert!(ok(&w, 2, 0, 81, Proto::Udp));
        assert!(!ok(&w, 2, 0, 81, Proto::Tcp));
        assert!(!ok(&w, 2, 0, 80, Proto::Udp));
        let mut tcp_named = NpPort::named(Proto::Udp, "serve-81-udp");
        tcp_named.proto = None;
        w.policies[0].ingress = Some(vec![rule(vec![tcp_named])]);
        assert!(
            !ok(&w, 2, 0, 81, Proto::Udp),
            "the name with TCP (default) matches no UDP port"
        );
        assert!(
            !ok(&w, 2, 0, 81, Proto::Tcp),
            "nor a TCP port of another name"
        );
        w.policies[0].ingress = Some(vec![rule(vec![NpPort::range(Proto::Sctp, 79, 80)])]);
        assert!(ok(&w, 2, 0, 80, Proto::Sctp));
        assert!(!ok(&w, 2, 0, 81, Proto::Sctp));
        assert!(!ok(&w, 2, 0, 80, Proto::Tcp));
        w.policies[0].ingress = Some(vec![rule(vec![NpPort {
            proto: None,
            port: Some(PortRef::Number(81)),
            end_port: None,
        }])]);
        assert!(ok(&w, 2, 0, 81, Proto::Tcp), "protocol defaults to TCP");
        assert!(!ok(&w, 2, 0, 81, Proto::Udp));
    }

    #[test]
    fn ip_block_except_and_egress_defaulting() {
        let mut w = world();
        let block = NpPeer::IpBlock {
            cidr: "10.0.0.0/30".parse().unwrap(),
            except: vec!["10.0.0.2/32".parse().unwrap()],
        };
        w.policies.push(
            NetworkPolicy::new("y", "e", Selector::eq("pod", "a")).egress(vec![NpRule {
                peers: vec![block],
                ports: vec![],
            }]),
        );
        assert_eq!(
            w.policies[0].effective_types(),
            [Direction::Ingress, Direction::Egress]
        );
        assert!(ok(&w, 2, 0, 80, Proto::Tcp), "10.0.0.1 in the block");
        assert!(!ok(&w, 2, 1, 80, Proto::Tcp), "10.0.0.2 excepted");
        assert!(!ok(&w, 2, 3, 80, Proto::Tcp), "10.0.0.4 outside");
        assert!(
            !ok(&w, 0, 2, 80, Proto::Tcp),
            "ingress of y/a is isolated and allows nothing"
        );
        // An empty egress list does not make a policy an egress policy.
        let empty = NetworkPolicy::new("y", "f", Selector::all()).egress(vec![]);
        assert_eq!(empty.effective_types(), [Direction::Ingress]);
    }

    #[test]
    fn tiers_admin_then_network_policy_then_baseline() {
        let mut w = world();
        let allow_all =
            NetworkPolicy::new("x", "allow", Selector::all()).ingress(vec![NpRule::default()]);
        w.policies.push(allow_all);
        let deny_from_y = |tier, action| Cnp {
            name: format!("{tier:?}-{action:?}"),
            tier,
            priority: 10,
            subject: CnpSel::Namespaces(Selector::ns_name("x")),
            ingress: vec![CnpRule {
                name: "r".into(),
                action,
                peers: vec![CnpSel::Namespaces(Selector::ns_name("y"))],
                ports: Some(vec![CnpPort::Number(Proto::Tcp, 80)]),
            }],
            egress: vec![],
        };
        w.cnps = vec![deny_from_y(Tier::Admin, Action::Deny)];
        assert!(
            !ok(&w, 2, 0, 80, Proto::Tcp),
            "Admin Deny beats the NetworkPolicy allow"
        );
        assert!(ok(&w, 2, 0, 81, Proto::Tcp), "other ports untouched");
        w.cnps = vec![
            deny_from_y(Tier::Admin, Action::Pass),
            Cnp {
                priority: 20,
                ..deny_from_y(Tier::Admin, Action::Deny)
            },
        ];
        w.cnps[1].name = "later-deny".into();
        assert!(
            ok(&w, 2, 0, 80, Proto::Tcp),
            "Pass skips the later Admin deny"
        );
        w.cnps = vec![deny_from_y(Tier::Baseline, Action::Deny)];
        assert!(
            ok(&w, 2, 0, 80, Proto::Tcp),
            "the NetworkPolicy overrides Baseline"
        );
        w.policies.clear();
        assert!(
            !ok(&w, 2, 0, 80, Proto::Tcp),
            "Baseline applies without NetworkPolicy"
        );
        assert!(ok(&w, 1, 0, 80, Proto::Tcp));
    }

    #[test]
    fn isolation_plain_and_strict() {
        let mut w = world();
        w.cnps = vec![Cnp::isolate("x", false)];
        assert!(!ok(&w, 2, 0, 80, Proto::Tcp));
        assert!(ok(&w, 1, 0, 80, Proto::Tcp));
        assert!(ok(&w, 0, 2, 80, Proto::Tcp), "only ingress of x");
        w.policies.push(
            NetworkPolicy::new("x", "open", Selector::all()).ingress(vec![NpRule::default()]),
        );
        assert!(
            ok(&w, 2, 0, 80, Proto::Tcp),
            "a NetworkPolicy opens plain isolation"
        );
        w.cnps = vec![Cnp::isolate("x", true)];
        assert!(!ok(&w, 2, 0, 80, Proto::Tcp), "but not strict isolation");
        assert!(ok(&w, 1, 0, 80, Proto::Tcp));
    }
}
