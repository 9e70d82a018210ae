//! Filters: which nodes a pod can go to, and, for those it cannot, why — worded as
//! kube-scheduler words it, so `kubectl describe pod` reads the same. The filters run in
//! upstream's order and a node's first failing filter gives its reasons.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::Pod;

use crate::cache::{Cache, HostPort, NodeInfo, host_ports};
use crate::matching::{node_affinity_matches, taints, tolerations, untolerated};
use crate::resources::PodRequests;
use crate::topology::{InterPod, Spread, domain, spreads};

/// Why a node does not fit a pod (upstream's reason strings).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    NodeName,
    Unschedulable,
    UntoleratedTaint { key: String, value: String },
    NodeAffinity,
    NodePorts,
    Insufficient(&'static str),
    TooManyPods,
    SpreadMissingLabel,
    Spread,
    ExistingAntiAffinity,
    Affinity,
    AntiAffinity,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NodeName => f.write_str("node(s) didn't match the requested node name"),
            Reason::Unschedulable => f.write_str("node(s) were unschedulable"),
            Reason::UntoleratedTaint { key, value } => {
                write!(f, "node(s) had untolerated taint {{{key}: {value}}}")
            }
            Reason::NodeAffinity => {
                f.write_str("node(s) didn't match Pod's node affinity/selector")
            }
            Reason::NodePorts => {
                f.write_str("node(s) didn't have free ports for the requested pod ports")
            }
            Reason::Insufficient(r) => write!(f, "Insufficient {r}"),
            Reason::TooManyPods => f.write_str("Too many pods"),
            Reason::SpreadMissingLabel => f.write_str(
                "node(s) didn't match pod topology spread constraints (missing required label)",
            ),
            Reason::Spread => f.write_str("node(s) didn't match pod topology spread constraints"),
            Reason::ExistingAntiAffinity => {
                f.write_str("node(s) didn't satisfy existing pods anti-affinity rules")
            }
            Reason::Affinity => f.write_str("node(s) didn't match pod affinity rules"),
            Reason::AntiAffinity => f.write_str("node(s) didn't match pod anti-affinity rules"),
        }
    }
}

/// What is computed once per attempt, before the nodes are filtered.
pub struct Prepared<'a> {
    pub pod: &'a Pod,
    pub requests: PodRequests,
    pub ports: Vec<HostPort>,
    pub inter_pod: InterPod,
    pub hard_spreads: Vec<Spread>,
}

impl<'a> Prepared<'a> {
    pub fn new(pod: &'a Pod, cache: &Cache) -> Prepared<'a> {
        Prepared {
            pod,
            requests: PodRequests::of(pod),
            ports: host_ports(pod),
            inter_pod: InterPod::compute(pod, cache),
            hard_spreads: spreads(pod, cache, "DoNotSchedule"),
        }
    }
}

/// NodeName: a pod that names a node fits only there.
pub fn node_name(pod: &Pod, node: &NodeInfo) -> Result<(), Vec<Reason>> {
    match pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
        Some(n) if !n.is_empty() && n != node.name() => Err(vec![Reason::NodeName]),
        _ => Ok(()),
    }
}

/// NodeUnschedulable: a cordoned node takes only pods tolerating its unschedulable taint.
pub fn node_unschedulable(pod: &Pod, node: &NodeInfo) -> Result<(), Vec<Reason>> {
    let cordoned = node
        .node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    if !cordoned {
        return Ok(());
    }
    let taint = k8s_openapi::api::core::v1::Taint {
        key: "node.kubernetes.io/unschedulable".into(),
        effect: "NoSchedule".into(),
        ..Default::default()
    };
    match untolerated(
        std::slice::from_ref(&taint),
        tolerations(pod),
        &["NoSchedule"],
    ) {
        Some(_) => Err(vec![Reason::Unschedulable]),
        None => Ok(()),
    }
}

/// TaintToleration: every NoSchedule and NoExecute taint must be tolerated (PreferNoSchedule
/// only lowers the score).
pub fn taint_toleration(pod: &Pod, node: &NodeInfo) -> Result<(), Vec<Reason>> {
    match untolerated(
        taints(&node.node),
        tolerations(pod),
        &["NoSchedule", "NoExecute"],
    ) {
        Some(t) => Err(vec![Reason::UntoleratedTaint {
            key: t.key.clone(),
            value: t.value.clone().unwrap_or_default(),
        }]),
        None => Ok(()),
    }
}

/// NodeAffinity: nodeSelector and the required node affinity.
pub fn node_affinity(pod: &Pod, node: &NodeInfo) -> Result<(), Vec<Reason>> {
    if node_affinity_matches(pod, &node.node) {
        Ok(())
    } else {
        Err(vec![Reason::NodeAffinity])
    }
}

/// Whether two host ports collide: same protocol and port, and the same IP or either on every
/// address.
fn ports_conflict(a: &HostPort, b: &HostPort) -> bool {
    let any = |ip: &str| ip == "0.0.0.0" || ip == "::";
    a.1 == b.1 && a.2 == b.2 && (a.0 == b.0 || any(&a.0) || any(&b.0))
}

/// NodePorts: the host ports the pod wants are free on the node.
pub fn node_ports(want: &[HostPort], node: &NodeInfo) -> Result<(), Vec<Reason>> {
    if want
        .iter()
        .any(|w| node.used_ports.iter().any(|u| ports_conflict(w, u)))
    {
        Err(vec![Reason::NodePorts])
    } else {
        Ok(())
    }
}

/// NodeResourcesFit: pod count, then each requested resource against what is left.
pub fn resources_fit(req: &PodRequests, node: &NodeInfo) -> Result<(), Vec<Reason>> {
    let mut reasons = Vec::new();
    let alloc = &node.allocatable;
    if node.pods.len() as i64 + 1 > alloc.pods {
        reasons.push(Reason::TooManyPods);
    }
    let r = &req.requested;
    let used = &node.requested;
    if r.milli_cpu > 0 && r.milli_cpu > alloc.resources.milli_cpu - used.milli_cpu {
        reasons.push(Reason::Insufficient("cpu"));
    }
    if r.memory > 0 && r.memory > alloc.resources.memory - used.memory {
        reasons.push(Reason::Insufficient("memory"));
    }
    if r.ephemeral_storage > 0
        && r.ephemeral_storage > alloc.resources.ephemeral_storage - used.ephemeral_storage
    {
        reasons.push(Reason::Insufficient("ephemeral-storage"));
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons)
    }
}

/// PodTopologySpread, DoNotSchedule constraints: placing the pod here keeps every constraint's
/// skew (this domain's count + 1 − the smallest domain's) within maxSkew.
pub fn topology_spread(spreads: &[Spread], node: &NodeInfo) -> Result<(), Vec<Reason>> {
    for s in spreads {
        let Some(v) = domain(node, &s.constraint.topology_key) else {
            return Err(vec![Reason::SpreadMissingLabel]);
        };
        let here = s.counts.get(v).copied().unwrap_or(0) + usize::from(s.self_match);
        let skew = here as i64 - s.min() as i64;
        if skew > s.constraint.max_skew as i64 {
            return Err(vec![Reason::Spread]);
        }
    }
    Ok(())
}

/// InterPodAffinity, required terms: no existing pod's anti-affinity is violated, each of the
/// pod's affinity terms finds a matching pod in the node's domain (or, when no pod anywhere
/// matches, the pod matches its own terms: the first of a group), and none of its
/// anti-affinity terms does.
pub fn inter_pod_affinity(p: &Prepared<'_>, node: &NodeInfo) -> Result<(), Vec<Reason>> {
    let ip = &p.inter_pod;
    if ip.skip {
        return Ok(());
    }
    if ip
        .existing_anti
        .keys()
        .any(|(k, v)| domain(node, k) == Some(v))
    {
        return Err(vec![Reason::ExistingAntiAffinity]);
    }
    let (aff, anti) = crate::topology::required_terms(p.pod);
    if !aff.is_empty() {
        let ns = p.pod.metadata.namespace.as_deref().unwrap_or("default");
        let none_anywhere = ip.affinity.iter().all(|m| m.is_empty());
        let self_match = aff
            .iter()
            .all(|t| crate::topology::term_selects(t, ns, p.pod));
        let all_here = aff.iter().zip(&ip.affinity).all(|(t, m)| {
            domain(node, &t.topology_key).is_some_and(|v| m.get(v).copied().unwrap_or(0) > 0)
        });
        let first_of_group = none_anywhere
            && self_match
            && aff.iter().all(|t| domain(node, &t.topology_key).is_some());
        if !all_here && !first_of_group {
            return Err(vec![Reason::Affinity]);
        }
    }
    for (t, m) in anti.iter().zip(&ip.anti) {
        if domain(node, &t.topology_key).is_some_and(|v| m.get(v).copied().unwrap_or(0) > 0) {
            return Err(vec![Reason::AntiAffinity]);
        }
    }
    Ok(())
}

/// Every filter in upstream's order; the first that fails gives the node's reasons.
pub fn run(p: &Prepared<'_>, node: &NodeInfo) -> Result<(), Vec<Reason>> {
    node_unschedulable(p.pod, node)?;
    node_name(p.pod, node)?;
    taint_toleration(p.pod, node)?;
    node_affinity(p.pod, node)?;
    node_ports(&p.ports, node)?;
    resources_fit(&p.requests, node)?;
    topology_spread(&p.hard_spreads, node)?;
    inter_pod_affinity(p, node)?;
    Ok(())
}

/// Why no node fits: how many nodes gave each reason.
#[derive(Debug, Default, Clone)]
pub struct Diagnosis {
    pub nodes: usize,
    pub reasons: BTreeMap<String, usize>,
}

impl Diagnosis {
    pub fn add(&mut self, reasons: &[Reason]) {
        for r in reasons {
            *self.reasons.entry(r.to_string()).or_default() += 1;
        }
    }

    /// kube-scheduler's FitError message: the reasons as "<count> <reason>" sorted, then what
    /// preemption found. This scheduler does not preempt, which upstream words as preemption
    /// not being helpful on every node.
    pub fn message(&self) -> String {
        let mut parts: Vec<String> = self
            .reasons
            .iter()
            .map(|(r, n)| format!("{n} {r}"))
            .collect();
        parts.sort();
        let n = self.nodes;
        if n == 0 {
            return "no nodes available to schedule pods".into();
        }
        let mut msg = format!("0/{n} nodes are available");
        if !parts.is_empty() {
            msg.push_str(": ");
            msg.push_str(&parts.join(", "));
        }
        msg.push('.');
        msg.push_str(&format!(
            " preemption: 0/{n} nodes are available: {n} Preemption is not helpful for scheduling."
        ));
        msg
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cache::Cache;
    use k8s_openapi::api::core::v1::Node;
    use serde_json::{Value, json};

    pub(crate) fn node(name: &str, extra: Value) -> Node {
        let mut n = json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {},
            "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}}
        });
        merge(&mut n, extra);
        serde_json::from_value(n).unwrap()
    }

    pub(crate) fn pod(name: &str, extra: Value) -> Pod {
        let mut p = json!({
            "metadata": {"name": name, "namespace": "default", "labels": {}},
            "spec": {"containers": [{"name": "c"}]}
        });
        merge(&mut p, extra);
        serde_json::from_value(p).unwrap()
    }

    fn merge(a: &mut Value, b: Value) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    /// The pod filtered against each node of a cache: Ok or the reasons, in node order.
    fn check(cache: &Cache, pod: &Pod) -> Vec<Result<(), Vec<String>>> {
        let p = Prepared::new(pod, cache);
        cache
            .nodes()
            .map(|n| run(&p, n).map_err(|rs| rs.iter().map(|r| r.to_string()).collect()))
            .collect()
    }

    fn cache(nodes: Vec<Node>, pods: Vec<Pod>) -> Cache {
        let mut c = Cache::default();
        for n in nodes {
            c.set_node(n);
        }
        for p in pods {
            c.set_bound_pod(p);
        }
        c
    }

    fn on(node: &str, p: Pod) -> Pod {
        let mut p = p;
        p.spec.as_mut().unwrap().node_name = Some(node.into());
        p
    }

    #[test]
    fn node_name_pins_a_pod_to_its_node() {
        let c = cache(vec![node("a", json!({})), node("b", json!({}))], vec![]);
        let r = check(&c, &pod("p", json!({"spec": {"nodeName": "b"}})));
        assert_eq!(
            r[0],
            Err(vec!["node(s) didn't match the requested node name".into()])
        );
        assert_eq!(r[1], Ok(()));
    }

    #[test]
    fn a_cordoned_node_takes_only_pods_tolerating_unschedulable() {
        let c = cache(
            vec![node("a", json!({"spec": {"unschedulable": true}}))],
            vec![],
        );
        assert_eq!(
            check(&c, &pod("p", json!({})))[0],
            Err(vec!["node(s) were unschedulable".into()])
        );
        let tolerant = pod(
            "p",
            json!({"spec": {"tolerations": [
            {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}]}}),
        );
        assert_eq!(check(&c, &tolerant)[0], Ok(()));
    }

    #[test]
    fn no_schedule_and_no_execute_taints_must_be_tolerated_prefer_no_schedule_need_not() {
        let c = cache(
            vec![
                node(
                    "cp",
                    json!({"spec": {"taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]}}),
                ),
                node(
                    "gone",
                    json!({"spec": {"taints": [{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]}}),
                ),
                node(
                    "soft",
                    json!({"spec": {"taints": [{"key": "spot", "value": "yes", "effect": "PreferNoSchedule"}]}}),
                ),
            ],
            vec![],
        );
        let r = check(&c, &pod("p", json!({})));
        assert_eq!(
            r[0],
            Err(vec![
                "node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }".into()
            ])
        );
        assert_eq!(
            r[1],
            Err(vec![
                "node(s) had untolerated taint {node.kubernetes.io/unreachable: }".into()
            ])
        );
        assert_eq!(r[2], Ok(()));
        let tolerant = pod(
            "p",
            json!({"spec": {"tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]}}),
        );
        assert_eq!(check(&c, &tolerant)[0], Ok(()));
    }

    #[test]
    fn node_selector_and_required_node_affinity_select_nodes() {
        let c = cache(
            vec![
                node(
                    "a",
                    json!({"metadata": {"labels": {"disk": "ssd", "gen": "5"}}}),
                ),
                node(
                    "b",
                    json!({"metadata": {"labels": {"disk": "hdd", "gen": "3"}}}),
                ),
                node("c", json!({"metadata": {"labels": {"gen": "7"}}})),
            ],
            vec![],
        );
        let ok = |r: &Vec<Result<(), Vec<String>>>| r.iter().map(Result::is_ok).collect::<Vec<_>>();
        assert_eq!(
            ok(&check(
                &c,
                &pod("p", json!({"spec": {"nodeSelector": {"disk": "ssd"}}}))
            )),
            [true, false, false]
        );
        let aff = |exprs: Value| {
            pod(
                "p",
                json!({"spec": {"affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [exprs]}}}}}),
            )
        };
        assert_eq!(
            ok(&check(
                &c,
                &aff(
                    json!({"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd", "hdd"]}]})
                )
            )),
            [true, true, false]
        );
        assert_eq!(
            ok(&check(
                &c,
                &aff(
                    json!({"matchExpressions": [{"key": "disk", "operator": "NotIn", "values": ["ssd"]}]})
                )
            )),
            [false, true, true]
        );
        assert_eq!(
            ok(&check(
                &c,
                &aff(json!({"matchExpressions": [{"key": "disk", "operator": "Exists"}]}))
            )),
            [true, true, false]
        );
        assert_eq!(
            ok(&check(
                &c,
                &aff(json!({"matchExpressions": [{"key": "disk", "operator": "DoesNotExist"}]}))
            )),
            [false, false, true]
        );
        assert_eq!(
            ok(&check(
                &c,
                &aff(
                    json!({"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["4"]}]})
                )
            )),
            [true, false, true]
        );
        assert_eq!(
            ok(&check(
                &c,
                &aff(
                    json!({"matchExpressions": [{"key": "gen", "operator": "Lt", "values": ["4"]}]})
                )
            )),
            [false, true, false]
        );
        assert_eq!(
            ok(&check(
                &c,
                &aff(
                    json!({"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["c"]}]})
                )
            )),
            [false, false, true]
        );
        let r = check(&c, &aff(json!({})));
        assert_eq!(
            r[0],
            Err(vec![
                "node(s) didn't match Pod's node affinity/selector".into()
            ]),
            "an empty term matches nothing"
        );
    }

    #[test]
    fn host_ports_in_use_keep_a_pod_off_the_node() {
        let web = |n: &str| {
            pod(
                n,
                json!({"spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}}),
            )
        };
        let c = cache(
            vec![node("a", json!({})), node("b", json!({}))],
            vec![on("a", web("old"))],
        );
        let r = check(&c, &web("new"));
        assert_eq!(
            r[0],
            Err(vec![
                "node(s) didn't have free ports for the requested pod ports".into()
            ])
        );
        assert_eq!(r[1], Ok(()));
        let udp = pod(
            "u",
            json!({"spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 8080, "protocol": "UDP"}]}]}}),
        );
        assert_eq!(
            check(&c, &udp)[0],
            Ok(()),
            "another protocol does not collide"
        );
    }

    #[test]
    fn requests_must_fit_in_what_is_left_of_allocatable() {
        let req = |n: &str, cpu: &str, mem: &str| {
            pod(
                n,
                json!({"spec": {"containers": [{"name": "c",
            "resources": {"requests": {"cpu": cpu, "memory": mem}}}]}}),
            )
        };
        let c = cache(
            vec![node(
                "a",
                json!({"status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "2", "ephemeral-storage": "10Gi"}}}),
            )],
            vec![on("a", req("x", "3", "7Gi"))],
        );
        assert_eq!(check(&c, &req("p", "1", "1Gi"))[0], Ok(()));
        assert_eq!(
            check(&c, &req("p", "1500m", "2Gi"))[0],
            Err(vec![
                "Insufficient cpu".into(),
                "Insufficient memory".into()
            ])
        );
        let disk = pod(
            "d",
            json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"ephemeral-storage": "11Gi"}}}]}}),
        );
        assert_eq!(
            check(&c, &disk)[0],
            Err(vec!["Insufficient ephemeral-storage".into()])
        );
        let c = cache(
            vec![node(
                "a",
                json!({"status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "1"}}}),
            )],
            vec![on("a", pod("x", json!({})))],
        );
        assert_eq!(
            check(&c, &pod("p", json!({})))[0],
            Err(vec!["Too many pods".into()])
        );
    }

    fn zoned(name: &str, zone: &str) -> Node {
        node(name, json!({"metadata": {"labels": {"zone": zone}}}))
    }

    #[test]
    fn do_not_schedule_spread_keeps_the_skew_within_max_skew() {
        let web = |n: &str| {
            pod(
                n,
                json!({"metadata": {"labels": {"app": "web"}}, "spec": {"topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}]}}),
            )
        };
        let c = cache(
            vec![
                zoned("a1", "a"),
                zoned("b1", "b"),
                node("nolabel", json!({})),
            ],
            vec![on("a1", web("w1"))],
        );
        let r = check(&c, &web("w2"));
        assert_eq!(
            r[0],
            Err(vec![
                "node(s) didn't match pod topology spread constraints".into()
            ])
        );
        assert_eq!(r[1], Ok(()));
        assert_eq!(
            r[2],
            Err(vec![
                "node(s) didn't match pod topology spread constraints (missing required label)"
                    .into()
            ])
        );
    }

    #[test]
    fn required_anti_affinity_keeps_matching_pods_apart_both_ways() {
        let anti = |n: &str| {
            pod(
                n,
                json!({"metadata": {"labels": {"app": "db"}}, "spec": {"affinity": {"podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "zone", "labelSelector": {"matchLabels": {"app": "db"}}}]}}}}),
            )
        };
        let c = cache(
            vec![zoned("a1", "a"), zoned("a2", "a"), zoned("b1", "b")],
            vec![on("a1", anti("db0"))],
        );
        let r = check(&c, &anti("db1"));
        // The existing pod's anti-affinity is checked first, and rules out its whole zone.
        assert_eq!(
            r[0],
            Err(vec![
                "node(s) didn't satisfy existing pods anti-affinity rules".into()
            ])
        );
        assert_eq!(
            r[1],
            Err(vec![
                "node(s) didn't satisfy existing pods anti-affinity rules".into()
            ])
        );
        assert_eq!(r[2], Ok(()));
        // The incoming pod's own anti-affinity against a plain pod.
        let plain = pod("db0", json!({"metadata": {"labels": {"app": "db"}}}));
        let c = cache(
            vec![zoned("a1", "a"), zoned("b1", "b")],
            vec![on("a1", plain)],
        );
        let r = check(&c, &anti("db1"));
        assert_eq!(
            r[0],
            Err(vec!["node(s) didn't match pod anti-affinity rules".into()])
        );
        assert_eq!(r[1], Ok(()));
    }

    #[test]
    fn required_affinity_follows_matching_pods_and_lets_the_first_of_a_group_start() {
        let follower = |n: &str| {
            pod(
                n,
                json!({"metadata": {"labels": {"app": "cache"}}, "spec": {"affinity": {"podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "zone", "labelSelector": {"matchLabels": {"app": "cache"}}}]}}}}),
            )
        };
        let c = cache(vec![zoned("a1", "a"), zoned("b1", "b")], vec![]);
        assert!(
            check(&c, &follower("c0")).iter().all(Result::is_ok),
            "no match anywhere, the pod matches itself"
        );
        let c = cache(
            vec![zoned("a1", "a"), zoned("b1", "b")],
            vec![on("b1", follower("c0"))],
        );
        let r = check(&c, &follower("c1"));
        assert_eq!(
            r[0],
            Err(vec!["node(s) didn't match pod affinity rules".into()])
        );
        assert_eq!(r[1], Ok(()));
    }

    #[test]
    fn the_message_counts_reasons_per_node_as_kube_scheduler_does() {
        let c = cache(
            vec![
                node(
                    "cp",
                    json!({"spec": {"taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]}}),
                ),
                node("w1", json!({})),
                node("w2", json!({})),
            ],
            vec![],
        );
        let big = pod(
            "p",
            json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "5"}}}]}}),
        );
        let p = Prepared::new(&big, &c);
        let mut d = Diagnosis {
            nodes: c.node_count(),
            ..Default::default()
        };
        for n in c.nodes() {
            if let Err(r) = run(&p, n) {
                d.add(&r);
            }
        }
        assert_eq!(
            d.message(),
            "0/3 nodes are available: 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, \
             2 Insufficient cpu. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
        );
        assert_eq!(
            Diagnosis::default().message(),
            "no nodes available to schedule pods"
        );
    }
}
