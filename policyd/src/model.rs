//! The cluster as policyd sees it: namespaces and pods with their labels, addresses and
//! container ports, and the policies of both kinds already parsed. The evaluator and the
//! compiler read only this.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::cnp::{Cnp, CnpSubject, CnpTier};
use crate::netpol::NetPol;
use crate::rules::{NsMatch, Peer, Proto};

/// The label every namespace carries with its own name (immutable, set by the API server).
pub const NS_NAME_LABEL: &str = "kubernetes.io/metadata.name";

pub type Labels = BTreeMap<String, String>;

/// A container port a named port can resolve to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ContainerPort {
    pub name: String,
    pub proto: Proto,
    pub port: u16,
}

/// A pod, as far as policy cares.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// spec.nodeName.
    pub node: Option<String>,
    /// Host-network pods are neither enforced nor selected as peers (their address is the
    /// node's).
    pub host_network: bool,
    /// IPv4 addresses (status.podIPs, or the gate's for a local pod not yet updated).
    pub ips: Vec<Ipv4Addr>,
    pub ports: Vec<ContainerPort>,
    /// The host end of its interface, when known (the gate says; else the naming rule).
    pub iface: Option<String>,
}

impl Pod {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The container port `name`/`proto` resolves to on this pod.
    pub fn named_port(&self, proto: Proto, name: &str) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name == name && p.proto == proto)
            .map(|p| p.port)
    }

    /// Whether policy applies to it and it can be a peer at all.
    pub fn is_policy_pod(&self) -> bool {
        !self.host_network && !self.ips.is_empty()
    }
}

/// Everything policy depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cluster {
    /// Namespace → labels.
    pub namespaces: BTreeMap<String, Labels>,
    /// `ns/name` → pod.
    pub pods: BTreeMap<String, Pod>,
    /// `ns/name` → policy.
    pub netpols: BTreeMap<String, NetPol>,
    /// name → policy.
    pub cnps: BTreeMap<String, Cnp>,
}

impl Cluster {
    /// A namespace's labels; one not (yet) seen still has its name label. Borrowed when the
    /// namespace carries its name label (every real one does): this is on the compiler's hot
    /// path, once per pod and peer.
    pub fn ns_labels(&self, ns: &str) -> std::borrow::Cow<'_, Labels> {
        match self.namespaces.get(ns) {
            Some(l) if l.get(NS_NAME_LABEL).is_some_and(|n| n == ns) => {
                std::borrow::Cow::Borrowed(l)
            }
            other => {
                let mut l = other.cloned().unwrap_or_default();
                l.insert(NS_NAME_LABEL.to_string(), ns.to_string());
                std::borrow::Cow::Owned(l)
            }
        }
    }

    pub fn pod(&self, ns: &str, name: &str) -> Option<&Pod> {
        self.pods.get(&format!("{ns}/{name}"))
    }

    /// The (policy) pod that owns `ip`, if any.
    pub fn pod_by_ip(&self, ip: Ipv4Addr) -> Option<&Pod> {
        self.pods
            .values()
            .find(|p| p.is_policy_pod() && p.ips.contains(&ip))
    }

    /// Whether `pod` is one of the pods a pod peer names.
    pub fn peer_has_pod(&self, ns: &NsMatch, pods: &crate::rules::SelectorKey, pod: &Pod) -> bool {
        if !pod.is_policy_pod() {
            return false;
        }
        let ns_ok = match ns {
            NsMatch::Named(n) => *n == pod.namespace,
            NsMatch::Selector(s) => s.matches(&self.ns_labels(&pod.namespace)),
        };
        ns_ok && pods.matches(&pod.labels)
    }

    /// Whether a peer admits the address `ip`.
    pub fn peer_matches_ip(&self, peer: &Peer, ip: Ipv4Addr) -> bool {
        match peer {
            Peer::Block { cidr, except } => Peer::block_contains(cidr, except, ip),
            Peer::Pods { ns, pods } => self
                .pods
                .values()
                .any(|p| p.ips.contains(&ip) && self.peer_has_pod(ns, pods, p)),
        }
    }

    /// The pods a pod peer names.
    pub fn peer_pods<'a>(
        &'a self,
        ns: &'a NsMatch,
        pods: &'a crate::rules::SelectorKey,
    ) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods
            .values()
            .filter(move |p| self.peer_has_pod(ns, pods, p))
    }

    /// NetworkPolicies that select `pod` (its namespace's, by podSelector), by key.
    pub fn netpols_for<'a>(&'a self, pod: &'a Pod) -> impl Iterator<Item = &'a NetPol> + 'a {
        self.netpols
            .values()
            .filter(move |p| p.namespace == pod.namespace && p.selector.matches(&pod.labels))
    }

    /// ClusterNetworkPolicies of `tier` whose subject is `pod`, in evaluation order (priority,
    /// then name for a stable order among equal priorities).
    pub fn cnps_for(&self, tier: CnpTier, pod: &Pod) -> Vec<&Cnp> {
        let ns_labels = self.ns_labels(&pod.namespace);
        let mut v: Vec<&Cnp> = self
            .cnps
            .values()
            .filter(|c| c.tier == tier)
            .filter(|c| match &c.subject {
                CnpSubject::Namespaces(ns) => ns.matches(&ns_labels),
                CnpSubject::Pods { ns, pods } => {
                    ns.matches(&ns_labels) && pods.matches(&pod.labels)
                }
            })
            .collect();
        v.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
        v
    }

    /// Pods scheduled to `node` that policy applies to.
    pub fn local_pods<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods
            .values()
            .filter(move |p| p.node.as_deref() == Some(node) && p.is_policy_pod())
    }
}
