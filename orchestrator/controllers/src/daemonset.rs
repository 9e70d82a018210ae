//! DaemonSet: one pod per eligible node (nodeSelector and NoSchedule/NoExecute taints the pod
//! does not tolerate decide eligibility). Pods are placed by the scheduler through a required
//! node affinity on `metadata.name`, and get upstream's default tolerations (not-ready and
//! unreachable without a limit, the pressure and unschedulable taints). RollingUpdate
//! replaces old pods at most maxUnavailable at a time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod, PodTemplateSpec, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::controller::{OnDelete, Reconciler, Target, owner_handler, pod_owner_handler};
use crate::deployment::{scaled_value, template_hash};
use crate::expectations::Expectations;
use crate::informer::{Change, Informer, Synced, handler};
use crate::manager::Watches;
use crate::nodelifecycle::tolerates;
use crate::owner::{self, Claim};
use crate::pods;
use crate::replicaset::pod_from_template;
use crate::workqueue::WorkQueue;
use crate::{Ctx, SyncError};

pub const REVISION_HASH: &str = "controller-revision-hash";

/// The tolerations every daemon pod gets (upstream's `AddOrUpdateDaemonPodTolerations`).
pub fn default_tolerations() -> Vec<Toleration> {
    let t = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    vec![
        t("node.kubernetes.io/not-ready", "NoExecute"),
        t("node.kubernetes.io/unreachable", "NoExecute"),
        t("node.kubernetes.io/disk-pressure", "NoSchedule"),
        t("node.kubernetes.io/memory-pressure", "NoSchedule"),
        t("node.kubernetes.io/pid-pressure", "NoSchedule"),
        t("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
}

/// Whether a daemon pod with `template` belongs on `node`.
pub fn eligible(template: &PodTemplateSpec, node: &Node) -> bool {
    let spec = template.spec.clone().unwrap_or_default();
    let labels = owner::labels(&node.metadata);
    if let Some(sel) = &spec.node_selector
        && !sel.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    let mut tolerations = spec.tolerations.unwrap_or_default();
    tolerations.extend(default_tolerations());
    let taints: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|taint| tolerations.iter().any(|t| tolerates(t, taint)))
}

/// The pod template for `node`: required affinity to the node's name, default tolerations,
/// the revision hash label.
pub fn pod_template_for(template: &PodTemplateSpec, node: &str, hash: &str) -> PodTemplateSpec {
    let mut t = template.clone();
    let meta = t.metadata.get_or_insert_with(Default::default);
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(REVISION_HASH.into(), hash.into());
    let spec = t.spec.get_or_insert_with(Default::default);
    let affinity = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]}}});
    spec.affinity = serde_json::from_value(affinity).ok();
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for d in default_tolerations() {
        if !tolerations
            .iter()
            .any(|t| t.key == d.key && t.effect == d.effect)
        {
            tolerations.push(d);
        }
    }
    t
}

/// The node a daemon pod is for: its nodeName, or the affinity's metadata.name.
pub fn node_of(p: &Pod) -> Option<String> {
    if let Some(n) = pods::node_name(p) {
        return Some(n.to_string());
    }
    let terms = &p
        .spec
        .as_ref()?
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms.iter().find_map(|t| {
        t.match_fields
            .iter()
            .flatten()
            .find(|f| f.key == "metadata.name" && f.operator == "In")
            .and_then(|f| f.values.as_ref()?.first().cloned())
    })
}

#[derive(Clone)]
pub struct Controller {
    pub sets: Informer<DaemonSet>,
    pub nodes: Informer<Node>,
    pub pods: Informer<Pod>,
    pub queue: WorkQueue,
    pub expectations: Expectations,
    ctx: Ctx,
}

impl Controller {
    pub fn new(
        ctx: Ctx,
        sets: Informer<DaemonSet>,
        nodes: Informer<Node>,
        pods: Informer<Pod>,
    ) -> Self {
        Controller {
            sets,
            nodes,
            pods,
            queue: WorkQueue::new(),
            expectations: Expectations::new(),
            ctx,
        }
    }
}

impl Reconciler for Controller {
    fn name(&self) -> &'static str {
        "daemonset"
    }

    fn queue(&self) -> &WorkQueue {
        &self.queue
    }

    fn caches(&self) -> Vec<Synced> {
        vec![self.sets.synced(), self.nodes.synced(), self.pods.synced()]
    }

    fn handlers(&self, watches: &mut Watches) {
        let forget = OnDelete::Forget(self.expectations.clone());
        watches.on(owner_handler(&self.queue, &self.sets, forget));
        // Any node change may change eligibility anywhere.
        let (queue, sets) = (self.queue.clone(), self.sets.clone());
        watches.on(handler(move |_: Change<'_, Node>| {
            for s in sets.state() {
                queue.add(owner::key(&s.metadata));
            }
        }));
        watches.on(pod_owner_handler::<DaemonSet>(
            &self.queue,
            &self.expectations,
            None,
        ));
    }

    async fn sync(&self, key: &str) -> Result<Option<Duration>, SyncError> {
        let Some(Target {
            obj: ds,
            ns,
            name,
            uid,
            deleting,
            ..
        }) = Target::get(&self.sets, Some(&self.expectations), key)
        else {
            return Ok(None);
        };
        let Some(spec) = ds.spec.clone() else {
            return Ok(None);
        };
        let sel = owner::selector(Some(&spec.selector));
        let pod_api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &ns);
        let mut mine: Vec<Arc<Pod>> = Vec::new();
        for p in self.pods.state() {
            if p.metadata.namespace.as_deref() != Some(&ns)
                || p.metadata.deletion_timestamp.is_some()
            {
                continue;
            }
            match owner::claim(&uid, &sel, &p.metadata) {
                Claim::Owned => mine.push(p),
                Claim::Adopt if !deleting => {
                    owner::adopt(&pod_api, &p.metadata, owner::controller_ref(&*ds)).await?;
                    mine.push(p);
                }
                Claim::Release => {
                    let _ = owner::release(&pod_api, &p.metadata, &uid).await;
                }
                _ => {}
            }
        }
        let hash = template_hash(
            &spec.template,
            ds.status.as_ref().and_then(|s| s.collision_count),
        );
        let nodes = self.nodes.state();
        let wanted: Vec<String> = nodes
            .iter()
            .filter(|n| eligible(&spec.template, n))
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        let mut by_node: BTreeMap<String, Vec<Arc<Pod>>> = BTreeMap::new();
        for p in &mine {
            if let Some(n) = node_of(p) {
                by_node.entry(n).or_default().push(p.clone());
            }
        }
        let now = jiff::Timestamp::now();
        let min_ready = Duration::from_secs(spec.min_ready_seconds.unwrap_or(0).max(0) as u64);
        let is_new = |p: &Pod| owner::labels(&p.metadata).get(REVISION_HASH) == Some(&hash);
        if self.expectations.satisfied(key) && !deleting {
            let mut create: Vec<String> = Vec::new();
            let mut delete: Vec<Arc<Pod>> = Vec::new();
            for n in &wanted {
                match by_node.get(n) {
                    None => create.push(n.clone()),
                    Some(ps) => {
                        // Failed pods go (and are made again); one pod per node.
                        let (failed, ok): (Vec<_>, Vec<_>) =
                            ps.iter().cloned().partition(|p| pods::phase(p) == "Failed");
                        delete.extend(failed);
                        if ok.is_empty() {
                            create.push(n.clone());
                        }
                        delete.extend(ok.into_iter().skip(1));
                    }
                }
            }
            for (n, ps) in &by_node {
                if !wanted.contains(n) {
                    delete.extend(ps.iter().cloned());
                }
            }
            // Rolling update: old pods go while no more than maxUnavailable nodes lack an
            // available new pod.
            let rolling = spec
                .update_strategy
                .as_ref()
                .and_then(|s| s.type_.as_deref())
                != Some("OnDelete");
            if rolling && create.is_empty() && delete.is_empty() {
                let max_unavailable = spec
                    .update_strategy
                    .as_ref()
                    .and_then(|s| s.rolling_update.as_ref())
                    .and_then(|r| r.max_unavailable.clone())
                    .unwrap_or(IntOrString::Int(1));
                let max = scaled_value(&max_unavailable, wanted.len() as i32, true)
                    .map_err(SyncError::Other)?
                    .max(1);
                let unavailable = wanted
                    .iter()
                    .filter(|n| {
                        !by_node.get(*n).is_some_and(|ps| {
                            ps.iter().any(|p| pods::is_available(p, min_ready, now))
                        })
                    })
                    .count() as i32;
                let mut budget = max - unavailable;
                for n in &wanted {
                    let Some(ps) = by_node.get(n) else { continue };
                    for p in ps.iter().filter(|p| !is_new(p)) {
                        if !pods::is_available(p, min_ready, now) {
                            delete.push(p.clone());
                        } else if budget > 0 {
                            budget -= 1;
                            delete.push(p.clone());
                        }
                    }
                }
            }
            if !create.is_empty() {
                self.expectations.expect_creations(key, create.len());
                let mut failed = None;
                for n in &create {
                    let t = pod_template_for(&spec.template, n, &hash);
                    let pod = pod_from_template(&t, &ns, &name, owner::controller_ref(&*ds));
                    if let Err(e) = pod_api.create(&PostParams::default(), &pod).await {
                        self.expectations.creation_observed(key);
                        failed = Some(e);
                    }
                }
                if let Some(e) = failed {
                    return Err(e.into());
                }
            }
            if !delete.is_empty() {
                let uids: Vec<String> = delete
                    .iter()
                    .map(|p| p.metadata.uid.clone().unwrap_or_default())
                    .collect();
                self.expectations.expect_deletions(key, uids.clone());
                for (p, uid) in delete.iter().zip(uids) {
                    let n = p.metadata.name.clone().unwrap_or_default();
                    if let Err(e) = pod_api.delete(&n, &DeleteParams::default()).await {
                        self.expectations.deletion_observed(key, &uid);
                        if !owner::is_not_found(&e) {
                            return Err(e.into());
                        }
                    }
                }
            }
        }
        // Status.
        let scheduled = |n: &String| {
            by_node
                .get(n)
                .is_some_and(|ps| ps.iter().any(|p| pods::node_name(p).is_some()))
        };
        let current = wanted.iter().filter(|n| scheduled(n)).count() as i32;
        let misscheduled = by_node.keys().filter(|n| !wanted.contains(n)).count() as i32;
        let on_wanted = || wanted.iter().filter_map(|n| by_node.get(n)).flatten();
        let ready = on_wanted().filter(|p| pods::is_ready(p)).count() as i32;
        let available = on_wanted()
            .filter(|p| pods::is_available(p, min_ready, now))
            .count() as i32;
        let updated = on_wanted().filter(|p| is_new(p)).count() as i32;
        let desired = wanted.len() as i32;
        let status = json!({
            "desiredNumberScheduled": desired,
            "currentNumberScheduled": current,
            "numberMisscheduled": misscheduled,
            "numberReady": ready,
            "numberAvailable": available,
            "numberUnavailable": (desired - available).max(0),
            "updatedNumberScheduled": updated,
            "observedGeneration": ds.metadata.generation,
        });
        let cur = serde_json::to_value(&ds.status).unwrap_or_default();
        let differs = status
            .as_object()
            .is_some_and(|m| m.iter().any(|(k, v)| cur.get(k).unwrap_or(&json!(0)) != v));
        if differs {
            let api: Api<DaemonSet> = Api::namespaced(self.ctx.client.clone(), &ns);
            match api
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"status": status})),
                )
                .await
            {
                Ok(_) => {}
                Err(e) if owner::is_not_found(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, labels: serde_json::Value, taints: serde_json::Value) -> Node {
        serde_json::from_value(
            json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}}),
        )
        .unwrap()
    }

    fn template(spec: serde_json::Value) -> PodTemplateSpec {
        serde_json::from_value(json!({"metadata": {"labels": {"app": "d"}}, "spec": spec})).unwrap()
    }

    #[test]
    fn node_selector_and_untolerated_taints_make_a_node_ineligible() {
        let t = template(json!({"containers": [], "nodeSelector": {"role": "edge"}}));
        assert!(eligible(&t, &node("a", json!({"role": "edge"}), json!([]))));
        assert!(!eligible(&t, &node("b", json!({}), json!([]))));
        let plain = template(json!({"containers": []}));
        let tainted = node(
            "c",
            json!({}),
            json!([{"key": "dedicated", "effect": "NoSchedule"}]),
        );
        assert!(!eligible(&plain, &tainted));
        // The default tolerations cover a NotReady or unschedulable node.
        let not_ready = node(
            "d",
            json!({}),
            json!([{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"},
                                                    {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]),
        );
        assert!(eligible(&plain, &not_ready));
        // PreferNoSchedule never excludes.
        assert!(eligible(
            &plain,
            &node(
                "e",
                json!({}),
                json!([{"key": "x", "effect": "PreferNoSchedule"}])
            )
        ));
    }

    #[test]
    fn daemon_pods_are_pinned_by_affinity_and_tolerate_node_problems() {
        let t = pod_template_for(&template(json!({"containers": []})), "n1", "h");
        let pod = Pod {
            metadata: Default::default(),
            spec: t.spec.clone(),
            status: None,
        };
        assert_eq!(node_of(&pod).as_deref(), Some("n1"));
        let tol = t.spec.unwrap().tolerations.unwrap();
        assert!(tol.iter().any(
            |t| t.key.as_deref() == Some("node.kubernetes.io/unreachable")
                && t.toleration_seconds.is_none()
        ));
        assert_eq!(t.metadata.unwrap().labels.unwrap()[REVISION_HASH], "h");
    }
}
