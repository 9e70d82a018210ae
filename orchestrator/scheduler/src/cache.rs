//! What the scheduler knows of the cluster: nodes, the pods bound to them, and the pods it has
//! assumed onto a node while their binding is in flight — with each node's requested resources
//! and used host ports kept up to date, so the next pod sees the last one's requests at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};

use crate::resources::{Allocatable, PodRequests, Resources};

/// `namespace/name`, the key pods are known by.
pub fn key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// A host port a pod holds on its node: (host IP, protocol, port). An empty or 0.0.0.0 IP is
/// every address.
pub type HostPort = (String, String, i32);

/// The host ports a pod asks for.
pub fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let hp = p.host_port.filter(|hp| *hp > 0)?;
            let ip = p.host_ip.clone().filter(|ip| !ip.is_empty());
            Some((
                ip.unwrap_or_else(|| "0.0.0.0".into()),
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                hp,
            ))
        })
        .collect()
}

/// Whether the pod carries inter-pod (anti-)affinity terms other pods must be checked against.
pub fn has_affinity(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .is_some_and(|a| a.pod_affinity.is_some() || a.pod_anti_affinity.is_some())
}

/// One node and what is placed on it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub node: Arc<Node>,
    pub allocatable: Allocatable,
    pub requested: Resources,
    pub non_zero_cpu: i64,
    pub non_zero_memory: i64,
    pub pods: BTreeMap<String, Arc<Pod>>,
    pub used_ports: Vec<HostPort>,
}

impl NodeInfo {
    pub fn new(node: Arc<Node>) -> NodeInfo {
        NodeInfo {
            allocatable: Allocatable::of(&node),
            node,
            requested: Resources::default(),
            non_zero_cpu: 0,
            non_zero_memory: 0,
            pods: BTreeMap::new(),
            used_ports: Vec::new(),
        }
    }

    pub fn name(&self) -> &str {
        self.node.metadata.name.as_deref().unwrap_or_default()
    }

    pub fn labels(&self) -> Option<&BTreeMap<String, String>> {
        self.node.metadata.labels.as_ref()
    }

    fn add(&mut self, k: String, pod: Arc<Pod>) {
        let r = PodRequests::of(&pod);
        self.requested.add(&r.requested);
        self.non_zero_cpu += r.non_zero_cpu;
        self.non_zero_memory += r.non_zero_memory;
        self.used_ports.extend(host_ports(&pod));
        self.pods.insert(k, pod);
    }

    fn remove(&mut self, k: &str) {
        if let Some(pod) = self.pods.remove(k) {
            let r = PodRequests::of(&pod);
            self.requested.sub(&r.requested);
            self.non_zero_cpu -= r.non_zero_cpu;
            self.non_zero_memory -= r.non_zero_memory;
            for p in host_ports(&pod) {
                if let Some(i) = self.used_ports.iter().position(|u| *u == p) {
                    self.used_ports.swap_remove(i);
                }
            }
        }
    }
}

/// Where a known pod sits, and whether that is only assumed (binding in flight).
#[derive(Debug, Clone)]
struct Placement {
    node: String,
    assumed: bool,
}

/// Nodes and their pods. Pods on nodes not (yet) known are kept too, and counted when the node
/// appears.
#[derive(Debug, Default)]
pub struct Cache {
    nodes: BTreeMap<String, NodeInfo>,
    pods: HashMap<String, Placement>,
    /// Pods on nodes the cache does not know, by node.
    orphans: HashMap<String, BTreeMap<String, Arc<Pod>>>,
    /// How many placed pods carry inter-pod (anti-)affinity terms: when none do, and the pod
    /// being scheduled has none, the inter-pod checks are skipped.
    with_affinity: usize,
}

impl Cache {
    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.values()
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.get(name)
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub fn pods_with_affinity(&self) -> usize {
        self.with_affinity
    }

    /// Adds or replaces a node; its pods stay.
    pub fn set_node(&mut self, node: Node) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let node = Arc::new(node);
        match self.nodes.get_mut(&name) {
            Some(info) => {
                info.allocatable = Allocatable::of(&node);
                info.node = node;
            }
            None => {
                let mut info = NodeInfo::new(node);
                for (k, p) in self.orphans.remove(&name).unwrap_or_default() {
                    info.add(k, p);
                }
                self.nodes.insert(name, info);
            }
        }
    }

    /// Removes a node; its pods wait for it (or for their own deletion).
    pub fn remove_node(&mut self, name: &str) {
        if let Some(info) = self.nodes.remove(name)
            && !info.pods.is_empty()
        {
            self.orphans.insert(name.to_string(), info.pods);
        }
    }

    /// A pod the API says is bound to `spec.nodeName` (added, updated, or the confirmation of
    /// an assumed one).
    pub fn set_bound_pod(&mut self, pod: Pod) {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            return;
        };
        let k = key(&pod);
        self.remove_pod(&k);
        self.place(k, node, Arc::new(pod), false);
    }

    /// Places the pod on `node` before its binding returns, so the next pod sees its requests.
    pub fn assume(&mut self, pod: &Pod, node: &str) {
        let mut pod = pod.clone();
        if let Some(spec) = pod.spec.as_mut() {
            spec.node_name = Some(node.to_string());
        }
        let k = key(&pod);
        self.remove_pod(&k);
        self.place(k, node.to_string(), Arc::new(pod), true);
    }

    /// Drops an assumption whose binding failed (a pod the API confirmed bound stays).
    pub fn forget(&mut self, k: &str) {
        if self.pods.get(k).is_some_and(|p| p.assumed) {
            self.remove_pod(k);
        }
    }

    /// After a relist: drops bound pods the list no longer has (assumed ones stay: their
    /// binding is still in flight).
    pub fn retain_pods(&mut self, keep: &std::collections::HashSet<String>) {
        let gone: Vec<String> = self
            .pods
            .iter()
            .filter(|(k, p)| !p.assumed && !keep.contains(*k))
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            self.remove_pod(&k);
        }
    }

    pub fn is_assumed(&self, k: &str) -> bool {
        self.pods.get(k).is_some_and(|p| p.assumed)
    }

    /// Whether the cache places this pod anywhere (bound or assumed).
    pub fn contains(&self, k: &str) -> bool {
        self.pods.contains_key(k)
    }

    fn place(&mut self, k: String, node: String, pod: Arc<Pod>, assumed: bool) {
        if has_affinity(&pod) {
            self.with_affinity += 1;
        }
        match self.nodes.get_mut(&node) {
            Some(info) => info.add(k.clone(), pod),
            None => {
                self.orphans
                    .entry(node.clone())
                    .or_default()
                    .insert(k.clone(), pod);
            }
        }
        self.pods.insert(k, Placement { node, assumed });
    }

    /// A pod deleted (or finished): its resources are free again.
    pub fn remove_pod(&mut self, k: &str) {
        let Some(p) = self.pods.remove(k) else {
            return;
        };
        let pod = match self.nodes.get_mut(&p.node) {
            Some(info) => {
                let pod = info.pods.get(k).cloned();
                info.remove(k);
                pod
            }
            None => self.orphans.get_mut(&p.node).and_then(|o| o.remove(k)),
        };
        if pod.as_deref().is_some_and(has_affinity) {
            self.with_affinity -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}}
        }))
        .unwrap()
    }

    fn pod(name: &str, cpu: &str, node: Option<&str>) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": node, "containers": [{"name": "c",
                "ports": [{"containerPort": 80, "hostPort": 8080}],
                "resources": {"requests": {"cpu": cpu}}}]}
        }))
        .unwrap()
    }

    #[test]
    fn an_assumed_pod_counts_at_once_and_is_forgotten_when_its_binding_fails() {
        let mut c = Cache::default();
        c.set_node(node("n1"));
        c.assume(&pod("a", "1", None), "n1");
        let n1 = c.node("n1").unwrap();
        assert_eq!(n1.requested.milli_cpu, 1000);
        assert_eq!(n1.used_ports.len(), 1);
        c.forget("default/a");
        let n1 = c.node("n1").unwrap();
        assert_eq!(n1.requested.milli_cpu, 0);
        assert!(n1.used_ports.is_empty() && n1.pods.is_empty());
    }

    #[test]
    fn a_confirmed_pod_is_counted_once_and_not_forgotten() {
        let mut c = Cache::default();
        c.set_node(node("n1"));
        c.assume(&pod("a", "1", None), "n1");
        c.set_bound_pod(pod("a", "1", Some("n1")));
        assert!(!c.is_assumed("default/a"));
        c.forget("default/a");
        assert_eq!(c.node("n1").unwrap().requested.milli_cpu, 1000);
        c.remove_pod("default/a");
        assert_eq!(c.node("n1").unwrap().requested.milli_cpu, 0);
    }

    #[test]
    fn pods_of_a_node_seen_before_the_node_count_when_it_appears() {
        let mut c = Cache::default();
        c.set_bound_pod(pod("a", "2", Some("late")));
        assert!(c.node("late").is_none());
        c.set_node(node("late"));
        assert_eq!(c.node("late").unwrap().requested.milli_cpu, 2000);
        c.remove_node("late");
        c.set_node(node("late"));
        assert_eq!(c.node("late").unwrap().pods.len(), 1);
    }
}
