//! The semantics, written as plainly as they are specified: for one connection, the verdict and
//! the tier, policy and rule that decided it. `trellis policy explain` answers from this, and
//! the compiler's tests check its output against it.
//!
//! A connection needs its source pod's egress to allow it and its destination pod's ingress to
//! allow it. Each side is decided by: Admin tier (priority, then rule order; Accept and Deny
//! decide, Pass skips to NetworkPolicy) → NetworkPolicy (only if some policy selects the pod
//! for that direction: then the union of their rules, else denied) → Baseline tier (Pass
//! matches nothing) → allowed.

use std::net::Ipv4Addr;

use serde::Serialize;

use crate::cnp::CnpTier;
use crate::model::{Cluster, Pod};
use crate::rules::{Action, Direction, Peers, PortSpec, Proto, Rule, Tier};

/// One side's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub direction: Direction,
    /// `ns/name` of the pod whose policy decided.
    pub pod: String,
    pub allowed: bool,
    pub tier: Tier,
    /// The policy (`ns/name` or a ClusterNetworkPolicy's name); for a NetworkPolicy denial, the
    /// isolating policies joined by `,`.
    pub policy: Option<String>,
    /// The rule (its name or index), or why none.
    pub rule: Option<String>,
}

impl Decision {
    /// How the compiled rules of this decision are described (`tier|policy|rule`).
    pub fn desc(&self) -> String {
        format!(
            "{}|{}|{}",
            self.tier,
            self.policy.as_deref().unwrap_or(""),
            self.rule.as_deref().unwrap_or("")
        )
    }
}

/// The whole connection's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub allowed: bool,
    /// The source pod's egress decision (None: the source is not a pod policy applies to).
    pub egress: Option<Decision>,
    /// The destination pod's ingress decision.
    pub ingress: Option<Decision>,
}

impl Verdict {
    /// The decision that matters: the one that denied, else the destination's, else the source's.
    pub fn deciding(&self) -> Option<&Decision> {
        [&self.egress, &self.ingress]
            .into_iter()
            .flatten()
            .find(|d| !d.allowed)
            .or(self.ingress.as_ref())
            .or(self.egress.as_ref())
    }
}

/// A connection: from `src` to `dst`, destination port and protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: Proto,
    pub port: u16,
}

impl Rule {
    /// Whether this rule matches traffic with `peer` on the other end, to port/proto at the
    /// destination pod `dst_pod` (for named ports).
    pub fn matches(
        &self,
        cluster: &Cluster,
        peer: Ipv4Addr,
        proto: Proto,
        port: u16,
        dst_pod: Option<&Pod>,
    ) -> bool {
        let peer_ok = match &self.peers {
            Peers::All => true,
            Peers::Any(list) => list.iter().any(|p| cluster.peer_matches_ip(p, peer)),
        };
        let port_ok = match &self.ports {
            None => true,
            Some(ports) => ports.iter().any(|p| match p {
                PortSpec::Proto(p) => *p == proto,
                PortSpec::Range {
                    proto: p,
                    port: a,
                    end,
                } => *p == proto && (*a..=*end).contains(&port),
                PortSpec::Named { proto: p, name } => {
                    *p == proto && dst_pod.and_then(|d| d.named_port(*p, name)) == Some(port)
                }
            }),
        };
        peer_ok && port_ok
    }
}

/// How `subject`'s policies treat traffic in direction `d` with `peer` on the other end.
pub fn decide(
    cluster: &Cluster,
    subject: &Pod,
    d: Direction,
    peer: Ipv4Addr,
    proto: Proto,
    port: u16,
) -> Decision {
    let dst_pod = match d {
        Direction::Ingress => Some(subject),
        Direction::Egress => cluster.pod_by_ip(peer),
    };
    let done = |allowed, tier, policy: Option<String>, rule: Option<String>| Decision {
        direction: d,
        pod: subject.key(),
        allowed,
        tier,
        policy,
        rule,
    };
    'admin: for cnp in cluster.cnps_for(CnpTier::Admin, subject) {
        for r in cnp.rules(d) {
            if r.matches(cluster, peer, proto, port, dst_pod) {
                match r.action {
                    Action::Accept | Action::Deny => {
                        return done(
                            r.action == Action::Accept,
                            Tier::Admin,
                            Some(cnp.name.clone()),
                            Some(r.label.clone()),
                        );
                    }
                    Action::Pass => break 'admin,
                }
            }
        }
    }
    let isolating: Vec<_> = cluster
        .netpols_for(subject)
        .filter(|p| p.side(d).is_some())
        .collect();
    if !isolating.is_empty() {
        for p in &isolating {
            for r in p.side(d).map(|s| s.rules.as_slice()).unwrap_or_default() {
                if r.matches(cluster, peer, proto, port, dst_pod) {
                    return done(
                        true,
                        Tier::NetworkPolicy,
                        Some(p.key()),
                        Some(r.label.clone()),
                    );
                }
            }
        }
        let names: Vec<String> = isolating.iter().map(|p| p.key()).collect();
        return done(
            false,
            Tier::NetworkPolicy,
            Some(names.join(",")),
            Some("no rule allows".into()),
        );
    }
    for cnp in cluster.cnps_for(CnpTier::Baseline, subject) {
        for r in cnp.rules(d) {
            if r.matches(cluster, peer, proto, port, dst_pod) {
                match r.action {
                    Action::Accept | Action::Deny => {
                        return done(
                            r.action == Action::Accept,
                            Tier::Baseline,
                            Some(cnp.name.clone()),
                            Some(r.label.clone()),
                        );
                    }
                    Action::Pass => {}
                }
            }
        }
    }
    done(true, Tier::Default, None, Some("allow".into()))
}

/// The verdict on a connection between two addresses (pods or not).
pub fn evaluate(cluster: &Cluster, flow: Flow) -> Verdict {
    let egress = cluster.pod_by_ip(flow.src).map(|p| {
        decide(
            cluster,
            p,
            Direction::Egress,
            flow.dst,
            flow.proto,
            flow.port,
        )
    });
    let ingress = cluster.pod_by_ip(flow.dst).map(|p| {
        decide(
            cluster,
            p,
            Direction::Ingress,
            flow.src,
            flow.proto,
            flow.port,
        )
    });
    let allowed =
        egress.as_ref().is_none_or(|d| d.allowed) && ingress.as_ref().is_none_or(|d| d.allowed);
    Verdict {
        allowed,
        egress,
        ingress,
    }
}
