//! Garbage collection: the addresses nobody will ever release.
//!
//! Two passes, both planned here without I/O and carried out by the engine with exact releases
//! (an address is freed only if the handle seen still holds it):
//!
//! - **CNI GC** (`CNI_COMMAND=GC` through the plugin): the runtime lists the attachments it still
//!   holds on a network; every allocation of this node on that network that is not listed goes.
//!   The runtime runs GC exclusively of ADD and DEL, so no grace is needed.
//! - **The leak pass** (periodic in ipamd, and `trellis ipam gc`): an allocation of a CNI
//!   attachment is a leak when its pod no longer exists in the API (where there is one), it is
//!   older than the grace period (an ADD in flight has no pod check to pass yet), and its
//!   attachment is not live on the node: the runtime keeps every successful ADD's result in
//!   `<cni-cache-dir>/results/<network>-<containerID>-<ifname>` until DEL, so an allocation
//!   without that file belongs to an ADD that never completed or a DEL that never reached us.
//!   Allocations of nodes that are gone are judged without the file check (nothing runs there).
//!
//! Addresses held by handles that are not CNI attachments (a VTEP, a tunnel) are never touched.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use crate::engine::Exact;
use crate::model::{Allocation, Block};

/// An allocation the GC will free, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub exact: Exact,
    pub address: IpNet,
    pub reason: String,
}

fn candidate(b: &Block, a: &Allocation, reason: String) -> Option<Candidate> {
    Some(Candidate {
        exact: Exact {
            block: b.name.clone(),
            ordinal: a.ordinal,
            handle: a.handle.clone(),
        },
        address: b.net(a.ordinal)?,
        reason,
    })
}

/// CNI GC: this node's allocations on `network` whose attachment is not in `valid`.
pub fn plan_cni(
    blocks: &[Block],
    node: &str,
    network: &str,
    valid: &BTreeSet<(String, String)>,
) -> Vec<Candidate> {
    let mut out = Vec::new();
    for b in blocks {
        for a in &b.spec.allocations {
            let ours = a.node == node && a.network == network && !a.container_id.is_empty();
            if ours && !valid.contains(&(a.container_id.clone(), a.ifname.clone())) {
                out.extend(candidate(
                    b,
                    a,
                    format!(
                        "CNI GC: attachment {}/{} is not among the runtime's valid attachments",
                        a.container_id, a.ifname
                    ),
                ));
            }
        }
    }
    out
}

/// What the leak pass knows about the world.
pub struct LeakView<'a> {
    pub node: &'a str,
    /// Every node (None: the backend has no nodes, as standalone).
    pub nodes: Option<&'a BTreeSet<String>>,
    /// Every pod as (namespace, name) (None: the backend has no pods).
    pub pods: Option<&'a BTreeSet<(String, String)>>,
    pub now: jiff::Timestamp,
    pub grace: Duration,
    /// Whether an attachment of this node is live (its cached ADD result exists).
    pub live: &'a (dyn Fn(&Allocation) -> bool + Send + Sync),
}

/// The leak pass.
pub fn plan_leaks(blocks: &[Block], view: &LeakView<'_>) -> Vec<Candidate> {
    let mut out = Vec::new();
    for b in blocks {
        for a in &b.spec.allocations {
            if a.container_id.is_empty() {
                continue;
            }
            let node_gone = view
                .nodes
                .is_some_and(|n| !a.node.is_empty() && !n.contains(&a.node));
            if a.node != view.node && !node_gone {
                continue;
            }
            if let Some(pods) = view.pods
                && !a.pod.is_empty()
                && pods.contains(&(a.namespace.clone(), a.pod.clone()))
            {
                continue;
            }
            let Ok(at) = a.time.parse::<jiff::Timestamp>() else {
                tracing::warn!(block = %b.name, ordinal = a.ordinal, time = %a.time, "allocation time unreadable; not collecting it");
                continue;
            };
            let age = view.now.duration_since(at);
            let grace =
                jiff::SignedDuration::try_from(view.grace).unwrap_or(jiff::SignedDuration::MAX);
            if age < grace {
                continue;
            }
            if !node_gone && (view.live)(a) {
                continue;
            }
            let why = if node_gone {
                format!("node {} is gone", a.node)
            } else {
                format!(
                    "attachment {}/{} of network {} has no cached ADD result on this node",
                    a.container_id, a.ifname, a.network
                )
            };
            let pod = if a.pod.is_empty() {
                String::new()
            } else if view.pods.is_some() {
                format!("pod {}/{} does not exist, ", a.namespace, a.pod)
            } else {
                String::new()
            };
            out.extend(candidate(
                b,
                a,
                format!("leak: {pod}{why}, allocated {} ago", fmt_age(age)),
            ));
        }
    }
    out
}

fn fmt_age(d: jiff::SignedDuration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{}s", s.max(0))
    }
}

/// Where the runtime keeps the ADD result of an attachment (libcni's layout, and our invoker's).
pub fn cache_file(
    cni_cache_dir: &Path,
    network: &str,
    container_id: &str,
    ifname: &str,
) -> PathBuf {
    cni_cache_dir
        .join("results")
        .join(format!("{network}-{container_id}-{ifname}"))
}

/// The liveness test of the leak pass: the attachment's cached result exists.
pub fn live_in(cni_cache_dir: &Path) -> impl Fn(&Allocation) -> bool + Send + Sync + '_ {
    move |a: &Allocation| cache_file(cni_cache_dir, &a.network, &a.container_id, &a.ifname).exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Owner;

    fn owner(cid: &str, pod: &str) -> Owner {
        Owner {
            handle: format!("net.{cid}.eth0"),
            namespace: "default".into(),
            pod: pod.into(),
            network: "net".into(),
            container_id: cid.into(),
            ifname: "eth0".into(),
        }
    }

    fn block() -> Block {
        let mut b = Block::new("10.1.0.0/24".parse().unwrap(), "p", "n1");
        let old = "2026-01-01T00:00:00Z".to_string();
        let new = "2026-01-01T00:59:00Z".to_string();
        b.insert(owner("live", "a").allocation(2, "n1", old.clone()));
        b.insert(owner("dead", "b").allocation(3, "n1", old.clone()));
        b.insert(owner("young", "c").allocation(4, "n1", new));
        b.insert(owner("haspod", "d").allocation(5, "n1", old.clone()));
        b.insert(owner("elsewhere", "e").allocation(6, "n2", old.clone()));
        b.insert(owner("orphan", "f").allocation(7, "gone", old.clone()));
        b.insert(Owner::handle("vtep").allocation(8, "n1", old));
        b
    }

    #[test]
    fn leaks_need_no_pod_old_age_and_no_live_attachment() {
        let blocks = [block()];
        let nodes = BTreeSet::from(["n1".to_string(), "n2".to_string()]);
        let pods = BTreeSet::from([("default".to_string(), "d".to_string())]);
        let live = |a: &Allocation| a.container_id == "live";
        let view = LeakView {
            node: "n1",
            nodes: Some(&nodes),
            pods: Some(&pods),
            now: "2026-01-01T01:00:00Z".parse().unwrap(),
            grace: Duration::from_secs(300),
            live: &live,
        };
        let freed: Vec<String> = plan_leaks(&blocks, &view)
            .iter()
            .map(|c| c.exact.handle.clone())
            .collect();
        assert_eq!(freed, ["net.dead.eth0", "net.orphan.eth0"]);
    }

    #[test]
    fn cni_gc_frees_unlisted_attachments_of_the_network_only() {
        let blocks = [block()];
        let valid = BTreeSet::from([("live".to_string(), "eth0".to_string())]);
        let freed: Vec<String> = plan_cni(&blocks, "n1", "net", &valid)
            .iter()
            .map(|c| c.exact.handle.clone())
            .collect();
        assert_eq!(
            freed,
            ["net.dead.eth0", "net.young.eth0", "net.haspod.eth0"]
        );
        assert!(plan_cni(&blocks, "n1", "othernet", &BTreeSet::new()).is_empty());
    }

    #[test]
    fn the_cache_file_is_where_libcni_keeps_results() {
        assert_eq!(
            cache_file(Path::new("/var/lib/cni"), "k8s-pod-network", "abc", "eth0"),
            Path::new("/var/lib/cni/results/k8s-pod-network-abc-eth0")
        );
    }
}
