//! ClusterNetworkPolicy (policy.networking.k8s.io/v1alpha2, cluster-scoped): the admin tiers.
//!
//! The serde types follow the contract exactly (and refuse unknown fields); [`parse`] turns a
//! spec into the policy vocabulary. A direction we cannot enforce fails closed: it becomes one
//! Deny rule for the subject, at the policy's priority, named after the reason.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::netpol::selector;
use crate::rules::{Action, NsMatch, Peer, Peers, PortSpec, Proto, Rule, SelectorKey};

/// The API group, version and plural of the resource.
pub const GROUP: &str = "policy.networking.k8s.io";
pub const VERSION: &str = "v1alpha2";
pub const KIND: &str = "ClusterNetworkPolicy";
pub const PLURAL: &str = "clusternetworkpolicies";

/// The resource for kube's dynamic API.
pub fn api_resource() -> kube::api::ApiResource {
    kube::api::ApiResource {
        group: GROUP.into(),
        version: VERSION.into(),
        api_version: format!("{GROUP}/{VERSION}"),
        kind: KIND.into(),
        plural: PLURAL.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
pub enum CnpTier {
    Admin,
    Baseline,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CnpAction {
    Accept,
    Deny,
    Pass,
}

/// `spec` of a ClusterNetworkPolicy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterNetworkPolicySpec {
    pub tier: CnpTier,
    /// 0..=1000, lower first.
    pub priority: u32,
    pub subject: Subject,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IngressRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressRule>,
}

/// Exactly one of `namespaces` and `pods`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Subject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<PodsSelector>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodsSelector {
    pub namespace_selector: Value,
    pub pod_selector: Value,
}

/// A peer: exactly one of `namespaces` and `pods` (the same shape as a subject).
pub type CnpPeer = Subject;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub action: CnpAction,
    pub from: Vec<CnpPeer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<CnpPort>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EgressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub action: CnpAction,
    pub to: Vec<CnpPeer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<CnpPort>>,
}

/// Exactly one of the three.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CnpPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_number: Option<PortNumber>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_range: Option<PortRange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub named_port: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortNumber {
    pub protocol: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortRange {
    pub protocol: String,
    pub start: u16,
    pub end: u16,
}

/// Whom a ClusterNetworkPolicy applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CnpSubject {
    Namespaces(SelectorKey),
    Pods { ns: SelectorKey, pods: SelectorKey },
}

/// A ClusterNetworkPolicy as policyd enforces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cnp {
    pub name: String,
    pub tier: CnpTier,
    pub priority: u32,
    pub subject: CnpSubject,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
    /// Why a direction fails closed.
    pub problems: Vec<String>,
}

impl Cnp {
    pub fn rules(&self, d: crate::rules::Direction) -> &[Rule] {
        match d {
            crate::rules::Direction::Ingress => &self.ingress,
            crate::rules::Direction::Egress => &self.egress,
        }
    }
}

fn subject_of(s: &Subject, at: &str) -> Result<CnpSubject, String> {
    match (&s.namespaces, &s.pods) {
        (Some(ns), None) => Ok(CnpSubject::Namespaces(selector(
            ns,
            &format!("{at}.namespaces"),
        )?)),
        (None, Some(p)) => Ok(CnpSubject::Pods {
            ns: selector(
                &p.namespace_selector,
                &format!("{at}.pods.namespaceSelector"),
            )?,
            pods: selector(&p.pod_selector, &format!("{at}.pods.podSelector"))?,
        }),
        _ => Err(format!("{at}: exactly one of namespaces and pods")),
    }
}

fn peer_of(s: &CnpPeer, at: &str) -> Result<Peer, String> {
    Ok(match subject_of(s, at)? {
        CnpSubject::Namespaces(ns) => Peer::Pods {
            ns: NsMatch::Selector(ns),
            pods: SelectorKey::everything(),
        },
        CnpSubject::Pods { ns, pods } => Peer::Pods {
            ns: NsMatch::Selector(ns),
            pods,
        },
    })
}

fn ports_of(ports: &Option<Vec<CnpPort>>, at: &str) -> Result<Option<Vec<PortSpec>>, String> {
    let Some(ports) = ports else { return Ok(None) };
    let proto = |s: &str, at: &str| {
        Proto::parse(s).ok_or_else(|| format!("{at}.protocol: unsupported {s:?}"))
    };
    let mut out = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let at = format!("{at}.ports[{i}]");
        match (&p.port_number, &p.port_range, &p.named_port) {
            (Some(n), None, None) if n.port > 0 => out.push(PortSpec::Range {
                proto: proto(&n.protocol, &at)?,
                port: n.port,
                end: n.port,
            }),
            (None, Some(r), None) if r.start > 0 && r.end >= r.start => out.push(PortSpec::Range {
                proto: proto(&r.protocol, &at)?,
                port: r.start,
                end: r.end,
            }),
            // A named port is the container port's own protocol, whichever it is.
            (None, None, Some(name)) if !name.is_empty() => {
                for proto in [Proto::Tcp, Proto::Udp, Proto::Sctp] {
                    out.push(PortSpec::Named {
                        proto,
                        name: name.clone(),
                    });
                }
            }
            _ => {
                return Err(format!(
                    "{at}: exactly one valid portNumber, portRange or namedPort"
                ));
            }
        }
    }
    Ok(Some(out))
}

fn action_of(a: CnpAction) -> Action {
    match a {
        CnpAction::Accept => Action::Accept,
        CnpAction::Deny => Action::Deny,
        CnpAction::Pass => Action::Pass,
    }
}

fn rules_of<'a>(
    rules: impl Iterator<
        Item = (
            Option<&'a String>,
            CnpAction,
            &'a [CnpPeer],
            &'a Option<Vec<CnpPort>>,
        ),
    >,
    at: &str,
) -> Result<Vec<Rule>, String> {
    let mut out = Vec::new();
    for (i, (name, action, peers, ports)) in rules.enumerate() {
        let at = format!("{at}[{i}]");
        if peers.is_empty() {
            return Err(format!("{at}: a rule needs at least one peer"));
        }
        let peers = peers
            .iter()
            .enumerate()
            .map(|(j, p)| peer_of(p, &format!("{at}.peers[{j}]")))
            .collect::<Result<Vec<_>, _>>()?;
        out.push(Rule {
            label: name.cloned().unwrap_or_else(|| i.to_string()),
            action: action_of(action),
            peers: Peers::Any(peers),
            ports: ports_of(ports, &at)?,
        });
    }
    if out.len() > 25 {
        return Err(format!("{at}: more than 25 rules"));
    }
    Ok(out)
}

/// One Deny-everything rule: what a direction we cannot enforce becomes.
fn closed(why: &str) -> Vec<Rule> {
    vec![Rule {
        label: format!("invalid: {why}"),
        action: Action::Deny,
        peers: Peers::All,
        ports: None,
    }]
}

/// Parses a ClusterNetworkPolicy's spec. Err: not even tier, priority and subject can be read
/// (then it is ignored, with a warning and an Event: we cannot tell whom to fail closed for).
pub fn parse(name: &str, spec: &Value) -> Result<Cnp, String> {
    let typed: Result<ClusterNetworkPolicySpec, _> = serde_json::from_value(spec.clone());
    let (tier, priority, subject, ingress, egress, mut problems) = match typed {
        Ok(s) => {
            let subject = subject_of(&s.subject, "spec.subject")?;
            let mut problems = Vec::new();
            let ingress = rules_of(
                s.ingress
                    .iter()
                    .map(|r| (r.name.as_ref(), r.action, r.from.as_slice(), &r.ports)),
                "spec.ingress",
            )
            .unwrap_or_else(|e| {
                problems.push(e.clone());
                closed(&e)
            });
            let egress = rules_of(
                s.egress
                    .iter()
                    .map(|r| (r.name.as_ref(), r.action, r.to.as_slice(), &r.ports)),
                "spec.egress",
            )
            .unwrap_or_else(|e| {
                problems.push(e.clone());
                closed(&e)
            });
            (s.tier, s.priority, subject, ingress, egress, problems)
        }
        Err(e) => {
            // Fail closed for whom we can still tell: tier, priority and subject on their own.
            let why = format!("spec: {e}");
            let tier: CnpTier =
                serde_json::from_value(spec["tier"].clone()).map_err(|_| why.clone())?;
            let priority: u32 =
                serde_json::from_value(spec["priority"].clone()).map_err(|_| why.clone())?;
            let subject: Subject =
                serde_json::from_value(spec["subject"].clone()).map_err(|_| why.clone())?;
            let subject = subject_of(&subject, "spec.subject").map_err(|_| why.clone())?;
            (
                tier,
                priority,
                subject,
                closed(&why),
                closed(&why),
                vec![why],
            )
        }
    };
    if priority > 1000 {
        problems.push(format!("spec.priority: {priority} is above 1000"));
    }
    Ok(Cnp {
        name: name.to_string(),
        tier,
        priority: priority.min(1000),
        subject,
        ingress,
        egress,
        problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn isolate(ns: &str) -> Value {
        json!({
            "tier": "Baseline", "priority": 500,
            "subject": {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": ns}}},
            "ingress": [
                {"action": "Accept", "from": [{"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}]},
                {"action": "Deny", "from": [{"namespaces": {}}]}
            ]
        })
    }

    #[test]
    fn the_isolate_policy_parses() {
        let c = parse("trellis-isolate-x", &isolate("x")).unwrap();
        assert_eq!(c.tier, CnpTier::Baseline);
        assert_eq!(c.priority, 500);
        assert_eq!(c.ingress.len(), 2);
        assert_eq!(c.ingress[1].action, Action::Deny);
        assert!(c.egress.is_empty() && c.problems.is_empty());
        // The serde types round-trip the contract's shape.
        let typed: ClusterNetworkPolicySpec = serde_json::from_value(isolate("x")).unwrap();
        assert_eq!(serde_json::to_value(&typed).unwrap(), isolate("x"));
    }

    #[test]
    fn ports_of_each_kind() {
        let mut spec = isolate("x");
        spec["ingress"][0]["ports"] = json!([
            {"portNumber": {"protocol": "TCP", "port": 80}},
            {"portRange": {"protocol": "UDP", "start": 80, "end": 81}},
            {"namedPort": "serve-80"}
        ]);
        let c = parse("p", &spec).unwrap();
        assert_eq!(c.ingress[0].ports.as_ref().unwrap().len(), 5);
    }

    #[test]
    fn an_unknown_field_fails_closed_for_the_subject() {
        let mut spec = isolate("x");
        spec["ingress"][0]["icmp"] = json!(true);
        let c = parse("p", &spec).unwrap();
        assert_eq!(c.problems.len(), 1);
        assert_eq!(c.ingress.len(), 1);
        assert_eq!(c.ingress[0].action, Action::Deny);
        assert_eq!(c.ingress[0].peers, Peers::All);
        let mut spec = isolate("x");
        spec["ingress"][0]["ports"] = json!([{"portNumber": {"protocol": "ICMP", "port": 1}}]);
        let c = parse("p", &spec).unwrap();
        assert_eq!(c.ingress[0].action, Action::Deny);
        assert!(parse("p", &json!({"tier": "Admin"})).is_err());
    }
}
