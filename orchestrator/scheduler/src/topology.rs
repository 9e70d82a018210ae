//! Counts over topology domains, computed once per scheduling attempt (upstream's PreFilter and
//! PreScore): which existing pods match the incoming pod's inter-pod (anti-)affinity terms and
//! which existing pods' anti-affinity the incoming pod would violate, per topology value, and how
//! many pods each topology spread constraint counts in each domain.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Pod, PodAffinityTerm, TopologySpreadConstraint};

use crate::cache::{Cache, NodeInfo};
use crate::matching::{node_affinity_matches, selector_matches};

/// Whether `pod` is one the term (written by a pod in `owner_ns`) selects: namespace and labels.
/// An empty namespaceSelector selects every namespace; a non-empty one is not evaluated (the
/// scheduler does not watch namespaces) and adds none.
pub fn term_selects(term: &PodAffinityTerm, owner_ns: &str, pod: &Pod) -> bool {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let all_namespaces = term.namespace_selector.as_ref().is_some_and(|s| {
        s.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && s.match_expressions.as_ref().is_none_or(|e| e.is_empty())
    });
    let ns_ok = if all_namespaces {
        true
    } else {
        match term.namespaces.as_deref() {
            Some(list) if !list.is_empty() => list.iter().any(|n| n == ns),
            _ if term.namespace_selector.is_some() => false,
            _ => ns == owner_ns,
        }
    };
    ns_ok && selector_matches(term.label_selector.as_ref(), pod.metadata.labels.as_ref())
}

fn namespace(pod: &Pod) -> &str {
    pod.metadata.namespace.as_deref().unwrap_or("default")
}

fn terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// The value of `key` on a node, if it has the label.
pub fn domain<'a>(node: &'a NodeInfo, key: &str) -> Option<&'a String> {
    node.labels().and_then(|l| l.get(key))
}

/// A pod's required (anti-)affinity terms.
pub fn required_terms(pod: &Pod) -> (&[PodAffinityTerm], &[PodAffinityTerm]) {
    let a = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
    let aff = a
        .and_then(|a| a.pod_affinity.as_ref())
        .and_then(|p| {
            p.required_during_scheduling_ignored_during_execution
                .as_deref()
        })
        .unwrap_or_default();
    let anti = a
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|p| {
            p.required_during_scheduling_ignored_during_execution
                .as_deref()
        })
        .unwrap_or_default();
    (aff, anti)
}

/// The per-attempt counts of inter-pod affinity.
#[derive(Debug, Default)]
pub struct InterPod {
    /// (topologyKey, value) of domains where an existing pod's required anti-affinity selects
    /// the incoming pod.
    pub existing_anti: HashMap<(String, String), usize>,
    /// Per required affinity term of the incoming pod: matching pods by topology value.
    pub affinity: Vec<HashMap<String, usize>>,
    /// Per required anti-affinity term of the incoming pod: matching pods by topology value.
    pub anti: Vec<HashMap<String, usize>>,
    /// Preferred terms (both ways) as weights on (topologyKey, value).
    pub preferred: HashMap<(String, String), i64>,
    /// Nothing to check: no pod anywhere has terms and the incoming pod has none.
    pub skip: bool,
}

/// The weight upstream gives an existing pod's required affinity term that selects the
/// incoming pod, when scoring (`hardPodAffinityWeight`).
const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

impl InterPod {
    pub fn compute(pod: &Pod, cache: &Cache) -> InterPod {
        let ns = namespace(pod);
        let (aff, anti) = required_terms(pod);
        let spec_aff = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
        let pref_aff = spec_aff
            .and_then(|a| a.pod_affinity.as_ref())
            .and_then(|p| {
                p.preferred_during_scheduling_ignored_during_execution
                    .as_deref()
            })
            .unwrap_or_default();
        let pref_anti = spec_aff
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|p| {
                p.preferred_during_scheduling_ignored_during_execution
                    .as_deref()
            })
            .unwrap_or_default();
        let mine =
            !(aff.is_empty() && anti.is_empty() && pref_aff.is_empty() && pref_anti.is_empty());
        let mut out = InterPod {
            affinity: vec![HashMap::new(); aff.len()],
            anti: vec![HashMap::new(); anti.len()],
            skip: !mine && cache.pods_with_affinity() == 0,
            ..InterPod::default()
        };
        if out.skip {
            return out;
        }
        let mut add_pref = |key: &str, node: &NodeInfo, w: i64| {
            if let Some(v) = domain(node, key) {
                *out.preferred
                    .entry((key.to_string(), v.clone()))
                    .or_default() += w;
            }
        };
        let mut existing_anti = HashMap::new();
        for node in cache.nodes() {
            for e in node.pods.values() {
                if terminating(e) {
                    continue;
                }
                for (i, t) in aff.iter().enumerate() {
                    if term_selects(t, ns, e)
                        && let Some(v) = domain(node, &t.topology_key)
                    {
                        *out.affinity[i].entry(v.clone()).or_default() += 1;
                    }
                }
                for (i, t) in anti.iter().enumerate() {
                    if term_selects(t, ns, e)
                        && let Some(v) = domain(node, &t.topology_key)
                    {
                        *out.anti[i].entry(v.clone()).or_default() += 1;
                    }
                }
                for w in pref_aff {
                    if term_selects(&w.pod_affinity_term, ns, e) {
                        add_pref(&w.pod_affinity_term.topology_key, node, w.weight as i64);
                    }
                }
                for w in pref_anti {
                    if term_selects(&w.pod_affinity_term, ns, e) {
                        add_pref(&w.pod_affinity_term.topology_key, node, -(w.weight as i64));
                    }
                }
                if !crate::cache::has_affinity(e) {
                    continue;
                }
                // The existing pod's own terms, seen from the incoming pod.
                let ens = namespace(e);
                let (e_aff, e_anti) = required_terms(e);
                for t in e_anti {
                    if term_selects(t, ens, pod)
                        && let Some(v) = domain(node, &t.topology_key)
                    {
                        *existing_anti
                            .entry((t.topology_key.clone(), v.clone()))
                            .or_default() += 1;
                    }
                }
                for t in e_aff {
                    if term_selects(t, ens, pod) {
                        add_pref(&t.topology_key, node, HARD_POD_AFFINITY_WEIGHT);
                    }
                }
                let ea = e.spec.as_ref().and_then(|s| s.affinity.as_ref());
                for w in ea
                    .and_then(|a| a.pod_affinity.as_ref())
                    .and_then(|p| {
                        p.preferred_during_scheduling_ignored_during_execution
                            .as_deref()
                    })
                    .unwrap_or_default()
                {
                    if term_selects(&w.pod_affinity_term, ens, pod) {
                        add_pref(&w.pod_affinity_term.topology_key, node, w.weight as i64);
                    }
                }
                for w in ea
                    .and_then(|a| a.pod_anti_affinity.as_ref())
                    .and_then(|p| {
                        p.preferred_during_scheduling_ignored_during_execution
                            .as_deref()
                    })
                    .unwrap_or_default()
                {
                    if term_selects(&w.pod_affinity_term, ens, pod) {
                        add_pref(&w.pod_affinity_term.topology_key, node, -(w.weight as i64));
                    }
                }
            }
        }
        out.existing_anti = existing_anti;
        out
    }
}

/// One topology spread constraint's counts per domain, over the nodes the pod could go to
/// (those its nodeSelector and required node affinity accept, with the topology key).
#[derive(Debug)]
pub struct Spread {
    pub constraint: TopologySpreadConstraint,
    pub counts: HashMap<String, usize>,
    /// Whether the incoming pod itself matches the constraint's selector.
    pub self_match: bool,
}

impl Spread {
    /// The smallest count over the domains (0 when fewer domains than `minDomains`).
    pub fn min(&self) -> usize {
        let min_domains = self.constraint.min_domains.unwrap_or(1).max(1) as usize;
        if self.counts.len() < min_domains {
            return 0;
        }
        self.counts.values().copied().min().unwrap_or(0)
    }
}

pub fn constraints(pod: &Pod) -> &[TopologySpreadConstraint] {
    pod.spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.as_deref())
        .unwrap_or_default()
}

/// Upstream's system default spreading (PodTopologySpread `defaultingType: System`): a pod with
/// no constraints of its own that a controller owns is spread over hosts (maxSkew 3) and zones
/// (maxSkew 5), ScheduleAnyway, among the pods that carry its labels. Without it, replicas
/// landed where the resource scores tied, two on one node and none on another. The zone
/// constraint counts only when every node has a zone.
pub fn system_defaults(pod: &Pod, cache: &Cache) -> Vec<TopologySpreadConstraint> {
    let owned = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true));
    let Some(labels) = pod.metadata.labels.clone().filter(|l| !l.is_empty()) else {
        return Vec::new();
    };
    if !owned || !constraints(pod).is_empty() {
        return Vec::new();
    }
    let constraint = |key: &str, skew: i32| TopologySpreadConstraint {
        max_skew: skew,
        topology_key: key.into(),
        when_unsatisfiable: "ScheduleAnyway".into(),
        label_selector: Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                match_labels: Some(labels.clone()),
                ..Default::default()
            },
        ),
        ..Default::default()
    };
    let mut out = vec![constraint(HOSTNAME, 3)];
    let mut nodes = cache.nodes().peekable();
    if nodes.peek().is_some() && nodes.all(|n| domain(n, ZONE).is_some()) {
        out.push(constraint(ZONE, 5));
    }
    out
}

const HOSTNAME: &str = "kubernetes.io/hostname";
const ZONE: &str = "topology.kubernetes.io/zone";

/// Counts for each of the pod's spread constraints with the given `whenUnsatisfiable` (with
/// the system defaults when the pod has none of its own).
pub fn spreads(pod: &Pod, cache: &Cache, when: &str) -> Vec<Spread> {
    let ns = namespace(pod);
    let defaults = if when == "ScheduleAnyway" {
        system_defaults(pod, cache)
    } else {
        Vec::new()
    };
    constraints(pod)
        .iter()
        .chain(defaults.iter())
        .filter(|c| c.when_unsatisfiable == when)
        .map(|c| {
            let mut counts: HashMap<String, usize> = HashMap::new();
            for node in cache.nodes() {
                let Some(v) = domain(node, &c.topology_key) else {
                    continue;
                };
                if !node_affinity_matches(pod, &node.node) {
                    continue;
                }
                let n = node
                    .pods
                    .values()
                    .filter(|e| {
                        namespace(e) == ns
                            && !terminating(e)
                            && selector_matches(
                                c.label_selector.as_ref(),
                                e.metadata.labels.as_ref(),
                            )
                    })
                    .count();
                *counts.entry(v.clone()).or_default() += n;
            }
            Spread {
                constraint: c.clone(),
                counts,
                self_match: selector_matches(
                    c.label_selector.as_ref(),
                    pod.metadata.labels.as_ref(),
                ),
            }
        })
        .collect()
}
