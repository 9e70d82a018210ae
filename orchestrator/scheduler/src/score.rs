//! Scores: among the nodes that fit, which is best. Each plugin scores every feasible node
//! 0–100 (normalised as upstream normalises it), and the total is the weighted sum with the
//! weights of upstream's default profile.

use k8s_openapi::api::core::v1::Pod;

use crate::cache::{Cache, NodeInfo};
use crate::filter::Prepared;
use crate::matching::{taints, term_matches, tolerations, untolerated};
use crate::topology::{Spread, domain, spreads};

pub const MAX: i64 = 100;

/// Upstream's default-profile weights.
pub const W_TAINT_TOLERATION: i64 = 3;
pub const W_NODE_AFFINITY: i64 = 2;
pub const W_RESOURCES_FIT: i64 = 1;
pub const W_TOPOLOGY_SPREAD: i64 = 2;
pub const W_INTER_POD_AFFINITY: i64 = 2;
pub const W_BALANCED: i64 = 1;

/// NodeResourcesFit, LeastAllocated: the share of CPU and memory left after placing the pod,
/// averaged (weights 1:1), counting the non-zero defaults for requests that are not set.
pub fn least_allocated(p: &Prepared<'_>, node: &NodeInfo) -> i64 {
    let alloc = &node.allocatable.resources;
    let one = |req: i64, cap: i64| {
        if cap == 0 || req > cap {
            0
        } else {
            (cap - req) * MAX / cap
        }
    };
    let cpu = one(node.non_zero_cpu + p.requests.non_zero_cpu, alloc.milli_cpu);
    let mem = one(
        node.non_zero_memory + p.requests.non_zero_memory,
        alloc.memory,
    );
    (cpu + mem) / 2
}

/// NodeResourcesBalancedAllocation: how close the CPU and memory fractions would be after
/// placing the pod — `(1 − std) × 100` of the two fractions.
pub fn balanced_allocation(p: &Prepared<'_>, node: &NodeInfo) -> i64 {
    let alloc = &node.allocatable.resources;
    let frac = |req: i64, cap: i64| {
        if cap == 0 {
            0.0
        } else {
            (req as f64 / cap as f64).min(1.0)
        }
    };
    let cpu = frac(
        node.requested.milli_cpu + p.requests.requested.milli_cpu,
        alloc.milli_cpu,
    );
    let mem = frac(
        node.requested.memory + p.requests.requested.memory,
        alloc.memory,
    );
    let std = (cpu - mem).abs() / 2.0;
    ((1.0 - std) * MAX as f64) as i64
}

/// TaintToleration: how many PreferNoSchedule taints the pod does not tolerate (normalised
/// reversed: fewer is better).
pub fn intolerable_taints(pod: &Pod, node: &NodeInfo) -> i64 {
    let tols: Vec<_> = tolerations(pod)
        .iter()
        .filter(|t| {
            t.effect
                .as_deref()
                .is_none_or(|e| e.is_empty() || e == "PreferNoSchedule")
        })
        .cloned()
        .collect();
    taints(&node.node)
        .iter()
        .filter(|t| t.effect == "PreferNoSchedule")
        .filter(|t| untolerated(std::slice::from_ref(*t), &tols, &["PreferNoSchedule"]).is_some())
        .count() as i64
}

/// NodeAffinity: the weights of the preferred terms the node matches.
pub fn preferred_node_affinity(pod: &Pod, node: &NodeInfo) -> i64 {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|prefs| {
            prefs
                .iter()
                .filter(|w| term_matches(&w.preference, &node.node))
                .map(|w| w.weight as i64)
                .sum()
        })
        .unwrap_or(0)
}

/// InterPodAffinity, preferred terms (both the pod's and existing pods'): the summed weights
/// of the domains the node is in.
pub fn inter_pod_preferred(p: &Prepared<'_>, node: &NodeInfo) -> i64 {
    p.inter_pod
        .preferred
        .iter()
        .filter(|((k, v), _)| domain(node, k) == Some(v))
        .map(|(_, w)| *w)
        .sum()
}

/// PodTopologySpread, ScheduleAnyway constraints: matching pods in the node's domains, each
/// constraint weighted by log(domains + 2), plus maxSkew − 1. None when the node lacks a
/// topology key (such nodes score 0).
pub fn spread_raw(soft: &[Spread], node: &NodeInfo) -> Option<i64> {
    let mut s = 0.0;
    for c in soft {
        let v = domain(node, &c.constraint.topology_key)?;
        let weight = ((c.counts.len() + 2) as f64).ln();
        s += c.counts.get(v).copied().unwrap_or(0) as f64 * weight
            + (c.constraint.max_skew as f64 - 1.0);
    }
    Some(s.round() as i64)
}

/// Scales scores to 0–100 by the highest (`reverse`: the highest becomes 0), as upstream's
/// DefaultNormalizeScore.
pub fn normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    if max == 0 {
        if reverse {
            scores.iter_mut().for_each(|s| *s = MAX);
        }
        return;
    }
    for s in scores.iter_mut() {
        *s = MAX * *s / max;
        if reverse {
            *s = MAX - *s;
        }
    }
}

/// InterPodAffinity's normalisation: min–max to 0–100 (all equal: 0).
fn normalize_min_max(scores: &mut [i64]) {
    let max = scores.iter().copied().max().unwrap_or(0);
    let min = scores.iter().copied().min().unwrap_or(0);
    let diff = max - min;
    for s in scores.iter_mut() {
        *s = if diff > 0 { MAX * (*s - min) / diff } else { 0 };
    }
}

/// PodTopologySpread's normalisation: fewer matching pods is better,
/// `100 × (max + min − s) / max`; nodes without the keys get 0.
fn normalize_spread(raw: &[Option<i64>]) -> Vec<i64> {
    let present = raw.iter().flatten();
    let max = present.clone().copied().max().unwrap_or(0);
    let min = present.copied().min().unwrap_or(0);
    raw.iter()
        .map(|s| match s {
            None => 0,
            Some(_) if max == 0 => MAX,
            Some(s) => MAX * (max + min - s) / max,
        })
        .collect()
}

/// The weighted total of every plugin's normalised score, per feasible node.
pub fn total(p: &Prepared<'_>, cache: &Cache, feasible: &[&NodeInfo]) -> Vec<i64> {
    let n = feasible.len();
    let mut total = vec![0i64; n];
    let mut add = |scores: Vec<i64>, w: i64| {
        for (t, s) in total.iter_mut().zip(scores) {
            *t += s * w;
        }
    };
    add(
        feasible
            .iter()
            .map(|node| least_allocated(p, node))
            .collect(),
        W_RESOURCES_FIT,
    );
    add(
        feasible
            .iter()
            .map(|node| balanced_allocation(p, node))
            .collect(),
        W_BALANCED,
    );

    let mut taint: Vec<i64> = feasible
        .iter()
        .map(|node| intolerable_taints(p.pod, node))
        .collect();
    normalize(&mut taint, true);
    add(taint, W_TAINT_TOLERATION);

    let mut aff: Vec<i64> = feasible
        .iter()
        .map(|node| preferred_node_affinity(p.pod, node))
        .collect();
    normalize(&mut aff, false);
    add(aff, W_NODE_AFFINITY);

    if !p.inter_pod.skip && !p.inter_pod.preferred.is_empty() {
        let mut ip: Vec<i64> = feasible
            .iter()
            .map(|node| inter_pod_preferred(p, node))
            .collect();
        normalize_min_max(&mut ip);
        add(ip, W_INTER_POD_AFFINITY);
    }

    let soft = spreads(p.pod, cache, "ScheduleAnyway");
    let spread = if soft.is_empty() {
        vec![MAX; n]
    } else {
        normalize_spread(
            &feasible
                .iter()
                .map(|node| spread_raw(&soft, node))
                .collect::<Vec<_>>(),
        )
    };
    add(spread, W_TOPOLOGY_SPREAD);
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Cache;
    use crate::filter::tests::{node, pod};
    use serde_json::json;

    fn cache(nodes: Vec<k8s_openapi::api::core::v1::Node>, pods: Vec<Pod>) -> Cache {
        let mut c = Cache::default();
        nodes.into_iter().for_each(|n| c.set_node(n));
        pods.into_iter().for_each(|p| c.set_bound_pod(p));
        c
    }

    fn on(node: &str, mut p: Pod) -> Pod {
        p.spec.as_mut().unwrap().node_name = Some(node.into());
        p
    }

    fn req(name: &str, cpu: &str, mem: &str) -> Pod {
        pod(
            name,
            json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": mem}}}]}}),
        )
    }

    /// Totals by node name.
    fn totals(c: &Cache, p: &Pod) -> Vec<(String, i64)> {
        let prep = Prepared::new(p, c);
        let feasible: Vec<&NodeInfo> = c.nodes().collect();
        let t = total(&prep, c, &feasible);
        feasible
            .iter()
            .map(|n| n.name().to_string())
            .zip(t)
            .collect()
    }

    #[test]
    fn least_allocated_prefers_the_emptier_node() {
        // 4 cpu / 8Gi nodes; a holds 2 cpu / 4Gi.
        let c = cache(
            vec![node("a", json!({})), node("b", json!({}))],
            vec![on("a", req("x", "2", "4Gi"))],
        );
        let p = req("p", "1", "2Gi");
        let prep = Prepared::new(&p, &c);
        let a = c.node("a").unwrap();
        let b = c.node("b").unwrap();
        // a: cpu (4-3)/4 = 25, memory (8-6)/8 = 25; b: 75 and 75.
        assert_eq!(least_allocated(&prep, a), 25);
        assert_eq!(least_allocated(&prep, b), 75);
        // A pod without requests counts 100m and 200Mi.
        let empty = pod("e", json!({}));
        let prep = Prepared::new(&empty, &c);
        assert_eq!(
            least_allocated(&prep, b),
            ((4000 - 100) * 100 / 4000 + (8192 - 200) * 100 / 8192) / 2
        );
    }

    #[test]
    fn balanced_allocation_prefers_equal_cpu_and_memory_shares() {
        let c = cache(
            vec![node("a", json!({})), node("b", json!({}))],
            vec![on("a", req("x", "2", "0"))],
        );
        let p = req("p", "1", "2Gi");
        let prep = Prepared::new(&p, &c);
        // a: cpu 3/4, memory 2/8 → std 0.25 → 75; b: 1/4 and 2/8 → 100.
        assert_eq!(balanced_allocation(&prep, c.node("a").unwrap()), 75);
        assert_eq!(balanced_allocation(&prep, c.node("b").unwrap()), 100);
    }

    #[test]
    fn prefer_no_schedule_taints_lower_the_score_unless_tolerated() {
        let c = cache(
            vec![
                node("clean", json!({})),
                node(
                    "spot",
                    json!({"spec": {"taints": [{"key": "spot", "effect": "PreferNoSchedule"}]}}),
                ),
            ],
            vec![],
        );
        let t = totals(&c, &pod("p", json!({})));
        assert_eq!(t[0].1 - t[1].1, W_TAINT_TOLERATION * MAX, "{t:?}");
        let tolerant = pod(
            "p",
            json!({"spec": {"tolerations": [{"key": "spot", "operator": "Exists"}]}}),
        );
        let t = totals(&c, &tolerant);
        assert_eq!(t[0].1, t[1].1, "{t:?}");
    }

    #[test]
    fn preferred_inter_pod_affinity_and_anti_affinity_pull_and_push() {
        let zoned = |n: &str, z: &str| node(n, json!({"metadata": {"labels": {"zone": z}}}));
        let c = cache(
            vec![zoned("a1", "a"), zoned("b1", "b")],
            vec![on(
                "a1",
                pod("db", json!({"metadata": {"labels": {"app": "db"}}})),
            )],
        );
        let near = pod(
            "p",
            json!({"spec": {"affinity": {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 50, "podAffinityTerm": {"topologyKey": "zone", "labelSelector": {"matchLabels": {"app": "db"}}}}]}}}}),
        );
        let t = totals(&c, &near);
        assert!(t[0].1 > t[1].1, "affinity pulls to zone a: {t:?}");
        let far = pod(
            "p",
            json!({"spec": {"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 50, "podAffinityTerm": {"topologyKey": "zone", "labelSelector": {"matchLabels": {"app": "db"}}}}]}}}}),
        );
        let t = totals(&c, &far);
        assert!(t[0].1 < t[1].1, "anti-affinity pushes to zone b: {t:?}");
    }

    #[test]
    fn schedule_anyway_spread_prefers_the_domain_with_fewer_matching_pods() {
        let web = |n: &str| {
            pod(
                n,
                json!({"metadata": {"labels": {"app": "web"}}, "spec": {"topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": {"app": "web"}}}]}}),
            )
        };
        let c = cache(
            vec![node("a", json!({})), node("b", json!({}))],
            vec![on("a", web("w1")), on("a", web("w2"))],
        );
        let w3 = web("w3");
        let prep = Prepared::new(&w3, &c);
        let soft = spreads(prep.pod, &c, "ScheduleAnyway");
        let raw: Vec<_> = c.nodes().map(|n| spread_raw(&soft, n)).collect();
        // a: 2 pods × ln(4) ≈ 2.77 → 3; b: 0.
        assert_eq!(raw, [Some(3), Some(0)]);
        assert_eq!(normalize_spread(&raw), [0, 100]);
        assert_eq!(
            normalize_spread(&[Some(0), None]),
            [100, 0],
            "a node without the key scores 0"
        );
    }

    #[test]
    fn replicas_of_a_controller_spread_over_hosts_without_constraints_of_their_own() {
        let replica = |n: &str| {
            pod(
                n,
                json!({"metadata": {"labels": {"app": "web"}, "ownerReferences": [
                    {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "u1", "controller": true}]}}),
            )
        };
        let host = |n: &str| {
            node(
                n,
                json!({"metadata": {"labels": {"kubernetes.io/hostname": n}}}),
            )
        };
        let c = cache(
            vec![host("a"), host("b")],
            vec![on("a", replica("w1")), on("a", replica("w2"))],
        );
        let w3 = replica("w3");
        let soft = spreads(&w3, &c, "ScheduleAnyway");
        assert_eq!(soft.len(), 1, "hosts only: no node has a zone");
        assert_eq!(soft[0].constraint.max_skew, 3);
        let raw: Vec<_> = c.nodes().map(|n| spread_raw(&soft, n)).collect();
        let scores = normalize_spread(&raw);
        assert!(
            scores[0] < scores[1],
            "b, with none of its replicas, wins: {scores:?}"
        );
        let bare = pod("bare", json!({"metadata": {"labels": {"app": "web"}}}));
        assert!(
            spreads(&bare, &c, "ScheduleAnyway").is_empty(),
            "a pod no controller owns gets no default"
        );
    }

    #[test]
    fn preferred_node_affinity_scores_by_weight() {
        let c = cache(
            vec![
                node("a", json!({"metadata": {"labels": {"disk": "ssd"}}})),
                node("b", json!({})),
            ],
            vec![],
        );
        let p = pod(
            "p",
            json!({"spec": {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 10, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}}]}}}}),
        );
        let t = totals(&c, &p);
        assert_eq!(t[0].1 - t[1].1, W_NODE_AFFINITY * MAX, "{t:?}");
    }

    #[test]
    fn normalisation_scales_to_the_highest() {
        let mut s = vec![0, 5, 10];
        normalize(&mut s, false);
        assert_eq!(s, [0, 50, 100]);
        let mut s = vec![0, 1, 2];
        normalize(&mut s, true);
        assert_eq!(s, [100, 50, 0]);
        let mut s = vec![0, 0];
        normalize(&mut s, true);
        assert_eq!(s, [100, 100]);
    }
}
