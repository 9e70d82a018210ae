//! networking.k8s.io/v1 NetworkPolicy → the policy vocabulary ([`crate::rules`]).
//!
//! Parsed strictly: a field we do not know, a protocol we do not support, a CIDR that does not
//! parse — anything we cannot enforce exactly — makes that direction *fail closed*: the policy
//! still selects its pods and isolates them, but admits nothing in that direction. The reason
//! is kept for the warning log and the Event.

use serde::Deserialize;
use serde_json::Value;
use trellis_api::LabelSelector;

use crate::rules::{Action, Direction, NsMatch, Peer, Peers, PortSpec, Proto, Rule, SelectorKey};

/// One direction of a policy that has it in its `policyTypes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Side {
    /// Allow rules (a union). Empty: the direction is isolated with nothing allowed.
    pub rules: Vec<Rule>,
    /// Why the direction fails closed (rules then empty).
    pub invalid: Option<String>,
}

/// A NetworkPolicy as policyd enforces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetPol {
    pub namespace: String,
    pub name: String,
    /// Pods of `namespace` it selects.
    pub selector: SelectorKey,
    /// None: the direction is not in its policyTypes.
    pub ingress: Option<Side>,
    pub egress: Option<Side>,
}

impl NetPol {
    pub fn side(&self, d: Direction) -> Option<&Side> {
        match d {
            Direction::Ingress => self.ingress.as_ref(),
            Direction::Egress => self.egress.as_ref(),
        }
    }

    /// `ns/name`, how logs and explain name it.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Every reason a direction fails closed.
    pub fn problems(&self) -> Vec<String> {
        [&self.ingress, &self.egress]
            .into_iter()
            .flatten()
            .filter_map(|s| s.invalid.clone())
            .collect()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SpecJson {
    #[serde(default)]
    pod_selector: Value,
    #[serde(default)]
    policy_types: Option<Vec<String>>,
    #[serde(default)]
    ingress: Option<Vec<Value>>,
    #[serde(default)]
    egress: Option<Vec<Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IngressJson {
    #[serde(default)]
    from: Option<Vec<PeerJson>>,
    #[serde(default)]
    ports: Option<Vec<PortJson>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EgressJson {
    #[serde(default)]
    to: Option<Vec<PeerJson>>,
    #[serde(default)]
    ports: Option<Vec<PortJson>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PeerJson {
    #[serde(default)]
    pod_selector: Option<Value>,
    #[serde(default)]
    namespace_selector: Option<Value>,
    #[serde(default)]
    ip_block: Option<IpBlockJson>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IpBlockJson {
    cidr: String,
    #[serde(default)]
    except: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct PortJson {
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    port: Option<Value>,
    #[serde(default)]
    end_port: Option<i64>,
}

/// A label selector from its JSON shape (through trellis-api's selector code).
pub(crate) fn selector(v: &Value, what: &str) -> Result<SelectorKey, String> {
    match LabelSelector::from_json(v) {
        Ok(Some(s)) => Ok(SelectorKey::new(s)),
        Ok(None) => Ok(SelectorKey::everything()),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// A CIDR for the IPv4 data path: Ok(None) for an IPv6 one (it never matches IPv4 traffic).
pub(crate) fn cidr(s: &str, what: &str) -> Result<Option<ipnet::Ipv4Net>, String> {
    match s.parse::<ipnet::IpNet>() {
        Ok(ipnet::IpNet::V4(n)) => Ok(Some(n.trunc())),
        Ok(ipnet::IpNet::V6(_)) => Ok(None),
        Err(_) => Err(format!("{what}: invalid CIDR {s:?}")),
    }
}

fn peer(p: PeerJson, namespace: &str, at: &str) -> Result<Option<Peer>, String> {
    match (p.pod_selector, p.namespace_selector, p.ip_block) {
        (None, None, Some(b)) => {
            let Some(net) = cidr(&b.cidr, &format!("{at}.ipBlock.cidr"))? else {
                return Ok(None);
            };
            let mut except = Vec::new();
            for (i, e) in b.except.unwrap_or_default().iter().enumerate() {
                match cidr(e, &format!("{at}.ipBlock.except[{i}]"))? {
                    Some(x) if net.contains(&x) => except.push(x),
                    _ => return Err(format!("{at}.ipBlock.except[{i}]: {e} is not within {net}")),
                }
            }
            except.sort();
            except.dedup();
            Ok(Some(Peer::Block { cidr: net, except }))
        }
        (_, _, Some(_)) => Err(format!("{at}: ipBlock cannot be combined with a selector")),
        (None, None, None) => Err(format!("{at}: a peer needs a selector or an ipBlock")),
        (pods, ns, None) => {
            let pods = match pods {
                Some(v) => selector(&v, &format!("{at}.podSelector"))?,
                None => SelectorKey::everything(),
            };
            let ns = match ns {
                Some(v) => NsMatch::Selector(selector(&v, &format!("{at}.namespaceSelector"))?),
                None => NsMatch::Named(namespace.to_string()),
            };
            Ok(Some(Peer::Pods { ns, pods }))
        }
    }
}

pub(crate) fn port(p: PortJson, at: &str) -> Result<PortSpec, String> {
    let proto = match p.protocol.as_deref() {
        None => Proto::Tcp,
        Some(s) => Proto::parse(s).ok_or_else(|| format!("{at}.protocol: unsupported {s:?}"))?,
    };
    match (p.port, p.end_port) {
        (None | Some(Value::Null), None) => Ok(PortSpec::Proto(proto)),
        (None | Some(Value::Null), Some(_)) => Err(format!("{at}.endPort: needs a numeric port")),
        (Some(Value::Number(n)), end) => {
            let port = n
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{at}.port: {n} is not a port"))?;
            let end = match end {
                None => port,
                Some(e) => u16::try_from(e)
                    .ok()
                    .filter(|e| *e >= port)
                    .ok_or_else(|| format!("{at}.endPort: {e} is not a port ≥ {port}"))?,
            };
            Ok(PortSpec::Range { proto, port, end })
        }
        (Some(Value::String(s)), None) => {
            // The API accepts a numeric string as IntOrString only as a name; a name is
            // an IANA service name (letters, digits, '-', at most 15).
            if s.is_empty()
                || s.len() > 15
                || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            {
                return Err(format!("{at}.port: {s:?} is not a port name"));
            }
            Ok(PortSpec::Named { proto, name: s })
        }
        (Some(Value::String(_)), Some(_)) => {
            Err(format!("{at}.endPort: not allowed with a named port"))
        }
        (Some(other), _) => Err(format!("{at}.port: {other} is neither a number nor a name")),
    }
}

fn ports(ports: Option<Vec<PortJson>>, at: &str) -> Result<Option<Vec<PortSpec>>, String> {
    match ports {
        None => Ok(None),
        Some(list) if list.is_empty() => Ok(None),
        Some(list) => list
            .into_iter()
            .enumerate()
            .map(|(i, p)| port(p, &format!("{at}.ports[{i}]")))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
    }
}

fn peers(list: Option<Vec<PeerJson>>, namespace: &str, at: &str) -> Result<Peers, String> {
    match list {
        None => Ok(Peers::All),
        Some(list) if list.is_empty() => Ok(Peers::All),
        Some(list) => {
            let mut out = Vec::new();
            for (i, p) in list.into_iter().enumerate() {
                if let Some(p) = peer(p, namespace, &format!("{at}[{i}]"))? {
                    out.push(p);
                }
            }
            Ok(Peers::Any(out))
        }
    }
}

fn side(rules: Option<Vec<Value>>, d: Direction, namespace: &str) -> Side {
    let mut out = Vec::new();
    for (i, r) in rules.unwrap_or_default().into_iter().enumerate() {
        let at = format!("spec.{d}[{i}]");
        let parsed = match d {
            Direction::Ingress => serde_json::from_value::<IngressJson>(r)
                .map_err(|e| format!("{at}: {e}"))
                .and_then(|r| {
                    Ok((
                        peers(r.from, namespace, &format!("{at}.from"))?,
                        ports(r.ports, &at)?,
                    ))
                }),
            Direction::Egress => serde_json::from_value::<EgressJson>(r)
                .map_err(|e| format!("{at}: {e}"))
                .and_then(|r| {
                    Ok((
                        peers(r.to, namespace, &format!("{at}.to"))?,
                        ports(r.ports, &at)?,
                    ))
                }),
        };
        match parsed {
            Ok((peers, ports)) => out.push(Rule {
                label: i.to_string(),
                action: Action::Accept,
                peers,
                ports,
            }),
            Err(e) => {
                return Side {
                    rules: Vec::new(),
                    invalid: Some(e),
                };
            }
        }
    }
    Side {
        rules: out,
        invalid: None,
    }
}

/// Parses a NetworkPolicy's `spec`. Never fails: what cannot be enforced fails closed.
pub fn parse(namespace: &str, name: &str, spec: &Value) -> NetPol {
    let closed = |why: String| NetPol {
        namespace: namespace.to_string(),
        name: name.to_string(),
        // A spec we cannot read at all isolates the whole namespace, both ways.
        selector: SelectorKey::everything(),
        ingress: Some(Side {
            rules: Vec::new(),
            invalid: Some(why.clone()),
        }),
        egress: Some(Side {
            rules: Vec::new(),
            invalid: Some(why),
        }),
    };
    let spec: SpecJson = match serde_json::from_value(spec.clone()) {
        Ok(s) => s,
        Err(e) => return closed(format!("spec: {e}")),
    };
    let selected = match selector(&spec.pod_selector, "spec.podSelector") {
        Ok(s) => s,
        Err(e) => return closed(e),
    };
    let (mut ingress, mut egress) = (false, false);
    match &spec.policy_types {
        Some(types) if !types.is_empty() => {
            for t in types {
                match t.as_str() {
                    "Ingress" => ingress = true,
                    "Egress" => egress = true,
                    other => return closed(format!("spec.policyTypes: unknown {other:?}")),
                }
            }
        }
        // The API server's defaulting: Ingress always, Egress when there are egress rules.
        _ => {
            ingress = true;
            egress = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        }
    }
    NetPol {
        namespace: namespace.to_string(),
        name: name.to_string(),
        selector: selected,
        ingress: ingress.then(|| side(spec.ingress, Direction::Ingress, namespace)),
        egress: egress.then(|| side(spec.egress, Direction::Egress, namespace)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn policy_types_default_like_the_api_server() {
        let p = parse("x", "p", &json!({"podSelector": {}}));
        assert!(p.ingress.is_some() && p.egress.is_none());
        let p = parse("x", "p", &json!({"podSelector": {}, "egress": [{}]}));
        assert!(p.ingress.is_some() && p.egress.is_some());
        let p = parse(
            "x",
            "p",
            &json!({"podSelector": {}, "policyTypes": ["Egress"]}),
        );
        assert!(p.ingress.is_none() && p.egress.is_some());
        assert!(p.egress.unwrap().rules.is_empty());
    }

    #[test]
    fn peers_and_ports_parse_to_the_vocabulary() {
        let p = parse(
            "x",
            "p",
            &json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"pod": "b"}}},
                          {"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {}},
                          {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
                          {"ipBlock": {"cidr": "fd00::/8"}}],
                 "ports": [{"port": 80}, {"protocol": "UDP", "port": 81, "endPort": 90}, {"port": "serve-80"}, {"protocol": "SCTP"}]}
            ]}),
        );
        let side = p.ingress.unwrap();
        assert_eq!(side.invalid, None);
        let r = &side.rules[0];
        let Peers::Any(peers) = &r.peers else {
            panic!()
        };
        assert_eq!(peers.len(), 3, "the IPv6 block is dropped: {peers:?}");
        assert!(matches!(&peers[0], Peer::Pods { ns: NsMatch::Named(n), .. } if n == "x"));
        assert!(matches!(
            &peers[1],
            Peer::Pods {
                ns: NsMatch::Selector(_),
                ..
            }
        ));
        assert_eq!(
            r.ports.as_ref().unwrap(),
            &vec![
                PortSpec::Range {
                    proto: Proto::Tcp,
                    port: 80,
                    end: 80
                },
                PortSpec::Range {
                    proto: Proto::Udp,
                    port: 81,
                    end: 90
                },
                PortSpec::Named {
                    proto: Proto::Tcp,
                    name: "serve-80".into()
                },
                PortSpec::Proto(Proto::Sctp),
            ]
        );
    }

    #[test]
    fn what_cannot_be_enforced_fails_closed_per_direction() {
        for bad in [
            json!({"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}),
            json!({"ports": [{"protocol": "ICMP"}]}),
            json!({"ports": [{"port": "http", "endPort": 90}]}),
            json!({"from": [{"podSelector": {"matchExpressions": [{"key": "a", "operator": "Foo"}]}}]}),
            json!({"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/8"]}}]}),
            json!({"unknownField": 1}),
        ] {
            let p = parse(
                "x",
                "p",
                &json!({"podSelector": {}, "ingress": [bad.clone()], "egress": [{}]}),
            );
            let i = p.ingress.unwrap();
            assert!(i.invalid.is_some() && i.rules.is_empty(), "{bad}");
            let e = p.egress.unwrap();
            assert!(e.invalid.is_none() && e.rules.len() == 1, "{bad}");
        }
        let p = parse("x", "p", &json!({"podSelector": {}, "newThing": true}));
        assert!(p.ingress.unwrap().invalid.is_some());
        assert!(p.egress.unwrap().invalid.is_some());
    }
}
