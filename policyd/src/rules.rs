//! The policy vocabulary both kinds of policy compile into: peers, ports, directions, actions.
//! NetworkPolicy and ClusterNetworkPolicy are parsed into these once; the evaluator and the
//! compiler only ever see these types.

use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use trellis_api::LabelSelector;

/// Transport protocols a policy port can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    /// The API spelling (`TCP`, `UDP`, `SCTP`); anything else is refused.
    pub fn parse(s: &str) -> Option<Proto> {
        match s {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            "SCTP" => Some(Proto::Sctp),
            _ => None,
        }
    }

    /// The iptables spelling.
    pub fn iptables(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Sctp => "SCTP",
        })
    }
}

/// Ingress (traffic to the subject pod) or egress (traffic from it).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// Which namespaces a pod peer looks in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NsMatch {
    /// The policy's own namespace (a NetworkPolicy peer with only a podSelector).
    Named(String),
    /// Namespaces whose labels match.
    Selector(SelectorKey),
}

/// A label selector with a canonical string form, so equal selectors give equal set names.
#[derive(Debug, Clone)]
pub struct SelectorKey {
    pub selector: LabelSelector,
    /// `LabelSelector`'s display form ("" = everything).
    pub canonical: String,
}

impl SelectorKey {
    pub fn new(selector: LabelSelector) -> SelectorKey {
        let canonical = if selector.is_nothing() {
            "<nothing>".to_string()
        } else {
            selector.to_string()
        };
        SelectorKey {
            selector,
            canonical,
        }
    }

    pub fn everything() -> SelectorKey {
        SelectorKey::new(LabelSelector::everything())
    }

    pub fn matches(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.selector.matches(labels)
    }
}

impl PartialEq for SelectorKey {
    fn eq(&self, other: &Self) -> bool {
        self.canonical == other.canonical
    }
}
impl Eq for SelectorKey {}
impl std::hash::Hash for SelectorKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.canonical.hash(state)
    }
}
impl PartialOrd for SelectorKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for SelectorKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.canonical.cmp(&other.canonical)
    }
}

/// The other end of a connection, as a rule names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    /// Pods (never host-network ones) in the matching namespaces whose labels match.
    Pods { ns: NsMatch, pods: SelectorKey },
    /// Addresses in `cidr` but not in any of `except`.
    Block { cidr: Ipv4Net, except: Vec<Ipv4Net> },
}

impl Peer {
    pub fn block_contains(cidr: &Ipv4Net, except: &[Ipv4Net], ip: Ipv4Addr) -> bool {
        cidr.contains(&ip) && !except.iter().any(|e| e.contains(&ip))
    }
}

/// Which peers a rule admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peers {
    /// Any address (a NetworkPolicy rule without `from`/`to`).
    All,
    /// Any of these (may be empty: then nothing, e.g. only IPv6 blocks on an IPv4 data path).
    Any(Vec<Peer>),
}

/// A port a rule admits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortSpec {
    /// Every port of a protocol.
    Proto(Proto),
    /// `port..=end` of a protocol.
    Range { proto: Proto, port: u16, end: u16 },
    /// The destination pod's container port of this name and protocol.
    Named { proto: Proto, name: String },
}

impl PortSpec {
    pub fn proto(&self) -> Proto {
        match self {
            PortSpec::Proto(p)
            | PortSpec::Range { proto: p, .. }
            | PortSpec::Named { proto: p, .. } => *p,
        }
    }
}

/// What a ClusterNetworkPolicy rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Accept,
    Deny,
    Pass,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Accept => "Accept",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
        })
    }
}

/// The tiers in evaluation order.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Tier {
    Admin,
    NetworkPolicy,
    Baseline,
    /// No policy decided: allowed.
    Default,
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Admin => "Admin",
            Tier::NetworkPolicy => "NetworkPolicy",
            Tier::Baseline => "Baseline",
            Tier::Default => "Default",
        })
    }
}

/// One rule of either policy kind, for one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Who it names in explain output: the rule's `name`, or its index.
    pub label: String,
    pub action: Action,
    pub peers: Peers,
    /// None: every port and protocol.
    pub ports: Option<Vec<PortSpec>>,
}
