//! ReplicaSet and ReplicationController: keep `replicas` active pods that match the
//! selector, owned through a controller reference, and report how many are ready and
//! available. One code path serves both kinds ([`PodSet`]); they differ only in how the
//! selector is written.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Resource};
use serde_json::json;
use trellis_api::LabelSelector;

use crate::controller::{Adopters, OnDelete, Reconciler, Target, owner_handler, pod_owner_handler};
use crate::expectations::Expectations;
use crate::informer::{Informer, Synced};
use crate::manager::Watches;
use crate::owner::{self, Claim};
use crate::pods;
use crate::workqueue::WorkQueue;
use crate::{Ctx, SyncError};

/// Most pods one sync creates or deletes (upstream's `burstReplicas`).
pub const BURST: usize = 500;

/// What the controller needs to know of a ReplicaSet or ReplicationController.
pub trait PodSet:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + serde::Serialize
    + Send
    + Sync
    + 'static
{
    /// The controller's upstream name.
    const CONTROLLER: &'static str;
    fn selector(&self) -> LabelSelector;
    fn replicas(&self) -> i32;
    fn min_ready_seconds(&self) -> i32;
    fn template(&self) -> Option<&PodTemplateSpec>;
    /// The status as stored: replicas, fullyLabeled, ready, available, observedGeneration.
    fn status_tuple(&self) -> Option<[i64; 5]>;
}

impl PodSet for ReplicaSet {
    const CONTROLLER: &'static str = "replicaset";
    fn selector(&self) -> LabelSelector {
        owner::selector(self.spec.as_ref().map(|s| &s.selector))
    }
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().and_then(|s| s.template.as_ref())
    }
    fn status_tuple(&self) -> Option<[i64; 5]> {
        self.status.as_ref().map(|s| {
            [
                s.replicas.into(),
                s.fully_labeled_replicas.unwrap_or(0).into(),
                s.ready_replicas.unwrap_or(0).into(),
                s.available_replicas.unwrap_or(0).into(),
                s.observed_generation.unwrap_or(0),
            ]
        })
    }
}

impl PodSet for ReplicationController {
    const CONTROLLER: &'static str = "replicationcontroller";
    fn selector(&self) -> LabelSelector {
        // An RC without selector selects by its template's labels (defaulted upstream).
        let spec = self.spec.as_ref();
        let sel = spec.and_then(|s| s.selector.as_ref()).or_else(|| {
            spec.and_then(|s| s.template.as_ref())
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.labels.as_ref())
        });
        owner::map_selector(sel)
    }
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().and_then(|s| s.template.as_ref())
    }
    fn status_tuple(&self) -> Option<[i64; 5]> {
        self.status.as_ref().map(|s| {
            [
                s.replicas.into(),
                s.fully_labeled_replicas.unwrap_or(0).into(),
                s.ready_replicas.unwrap_or(0).into(),
                s.available_replicas.unwrap_or(0).into(),
                s.observed_generation.unwrap_or(0),
            ]
        })
    }
}

/// The controller of one kind.
pub struct Controller<K: PodSet> {
    pub sets: Informer<K>,
    pub queue: WorkQueue,
    pub expectations: Expectations,
    pods: Informer<Pod>,
    ctx: Ctx,
}

impl<K: PodSet> Clone for Controller<K> {
    fn clone(&self) -> Self {
        Controller {
            sets: self.sets.clone(),
            queue: self.queue.clone(),
            expectations: self.expectations.clone(),
            pods: self.pods.clone(),
            ctx: self.ctx.clone(),
        }
    }
}

impl<K: PodSet> Controller<K> {
    pub fn new(ctx: Ctx, sets: Informer<K>, pods: Informer<Pod>) -> Self {
        Controller {
            sets,
            queue: WorkQueue::new(),
            expectations: Expectations::new(),
            pods,
            ctx,
        }
    }

    async fn manage(
        &self,
        key: &str,
        set: &K,
        ns: &str,
        name: &str,
        mine: &[Arc<Pod>],
        pod_api: &Api<Pod>,
    ) -> Result<(), SyncError> {
        let want = set.replicas().max(0) as usize;
        let have = mine.len();
        if have < want {
            let n = (want - have).min(BURST);
            let Some(template) = set.template() else {
                return Ok(());
            };
            let pod = pod_from_template(template, ns, name, owner::controller_ref(set));
            self.expectations.expect_creations(key, n);
            tracing::info!(kind = %K::kind(&()), set = %key, creating = n, have, want, "scaling up");
            // Slow start, as upstream: 1, 2, 4, … at a time, stopping at the first failure.
            let mut left = n;
            let mut batch = 1usize;
            let mut failed = None;
            while left > 0 {
                let size = batch.min(left);
                let pp = PostParams::default();
                let results =
                    futures::future::join_all((0..size).map(|_| pod_api.create(&pp, &pod))).await;
                let mut errs = 0;
                for r in results {
                    match r {
                        Ok(_) => {
                            self.ctx.metrics.inc(
                                "trellis_controller_pods_created_total",
                                "Pods created by a controller, by kind.",
                                &[("kind", &K::kind(&()))],
                                1.0,
                            );
                        }
                        Err(e) => {
                            errs += 1;
                            self.expectations.creation_observed(key);
                            failed = Some(e);
                        }
                    }
                }
                left -= size;
                if errs > 0 {
                    // Those never started will not be seen either.
                    for _ in 0..left {
                        self.expectations.creation_observed(key);
                    }
                    break;
                }
                batch *= 2;
            }
            if let Some(e) = failed {
                return Err(SyncError::Api(e));
            }
        } else if have > want {
            let n = (have - want).min(BURST);
            let now = jiff::Timestamp::now();
            let victims = pods_to_delete(mine, n, now);
            let uids: Vec<String> = victims
                .iter()
                .map(|p| p.metadata.uid.clone().unwrap_or_default())
                .collect();
            self.expectations.expect_deletions(key, uids.clone());
            tracing::info!(kind = %K::kind(&()), set = %key, deleting = n, have, want, "scaling down");
            let dp = DeleteParams::default();
            let results = futures::future::join_all(
                victims
                    .iter()
                    .map(|p| pod_api.delete(p.metadata.name.as_deref().unwrap_or_default(), &dp)),
            )
            .await;
            let mut failed = None;
            for (r, uid) in results.into_iter().zip(uids) {
                match r {
                    Ok(_) => {}
                    Err(e) => {
                        self.expectations.deletion_observed(key, &uid);
                        if !owner::is_not_found(&e) {
                            failed = Some(e);
                        }
                    }
                }
            }
            if let Some(e) = failed {
                return Err(SyncError::Api(e));
            }
        }
        Ok(())
    }
}

impl<K: PodSet> Reconciler for Controller<K> {
    fn name(&self) -> &'static str {
        K::CONTROLLER
    }

    fn queue(&self) -> &WorkQueue {
        &self.queue
    }

    fn caches(&self) -> Vec<Synced> {
        vec![self.sets.synced(), self.pods.synced()]
    }

    fn handlers(&self, watches: &mut Watches) {
        let forget = OnDelete::Forget(self.expectations.clone());
        watches.on(owner_handler(&self.queue, &self.sets, forget));
        // An orphan: every set that selects it may adopt it.
        let adopters = Adopters {
            cache: self.sets.clone(),
            selector: K::selector,
        };
        watches.on(pod_owner_handler(
            &self.queue,
            &self.expectations,
            Some(adopters),
        ));
    }

    /// One sync of the set `key`; returns when to look again (minReadySeconds).
    async fn sync(&self, key: &str) -> Result<Option<Duration>, SyncError> {
        let Some(Target {
            obj: set,
            ns,
            name,
            uid,
            deleting,
            ..
        }) = Target::get(&self.sets, Some(&self.expectations), key)
        else {
            return Ok(None);
        };
        let sel = set.selector();
        let pod_api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &ns);
        // Claim: our pods, adopt orphans that match, release ours that no longer match.
        let mut mine: Vec<Arc<Pod>> = Vec::new();
        for p in self.pods.state() {
            if p.metadata.namespace.as_deref() != Some(&ns) || !pods::is_active(&p) {
                continue;
            }
            match owner::claim(&uid, &sel, &p.metadata) {
                Claim::Owned => mine.push(p),
                Claim::Adopt if !deleting => {
                    match owner::adopt(&pod_api, &p.metadata, owner::controller_ref(&*set)).await {
                        Ok(()) => mine.push(p),
                        Err(e) if owner::is_not_found(&e) => {}
                        Err(e) => return Err(SyncError::Api(e)),
                    }
                }
                Claim::Release => match owner::release(&pod_api, &p.metadata, &uid).await {
                    Ok(()) => {}
                    Err(e) if owner::is_not_found(&e) => {}
                    Err(e) => return Err(SyncError::Api(e)),
                },
                _ => {}
            }
        }
        let mut result = Ok(());
        if self.expectations.satisfied(key) && !deleting {
            result = self.manage(key, &set, &ns, &name, &mine, &pod_api).await;
        }
        let now = jiff::Timestamp::now();
        let min_ready = Duration::from_secs(set.min_ready_seconds().max(0) as u64);
        let status = status_of(&*set, &mine, min_ready, now);
        if set.status_tuple() != Some(status) {
            let api: Api<K> = Api::namespaced(self.ctx.client.clone(), &ns);
            let patch = json!({"status": {
                "replicas": status[0],
                "fullyLabeledReplicas": status[1],
                "readyReplicas": status[2],
                "availableReplicas": status[3],
                "observedGeneration": status[4],
            }});
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {}
                Err(e) if owner::is_not_found(&e) => return Ok(None),
                Err(e) => return Err(SyncError::Api(e)),
            }
        }
        result?;
        // A ready pod becomes available after minReadySeconds: look again then.
        let next = mine
            .iter()
            .filter_map(|p| pods::until_available(p, min_ready, now))
            .min();
        Ok(next.map(|d| d + Duration::from_millis(50)))
    }
}

/// A pod for `template`, named `<owner>-<random>` by the API server.
pub fn pod_from_template(
    template: &PodTemplateSpec,
    ns: &str,
    owner_name: &str,
    controller: OwnerReference,
) -> Pod {
    let tm = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{owner_name}-")),
            namespace: Some(ns.to_string()),
            labels: tm.labels,
            annotations: tm.annotations,
            finalizers: tm.finalizers,
            owner_references: Some(vec![controller]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// replicas, fullyLabeledReplicas, readyReplicas, availableReplicas, observedGeneration.
pub fn status_of<K: PodSet>(
    set: &K,
    mine: &[Arc<Pod>],
    min_ready: Duration,
    now: jiff::Timestamp,
) -> [i64; 5] {
    let template_labels: BTreeMap<String, String> = set
        .template()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let fully = mine
        .iter()
        .filter(|p| {
            let l = owner::labels(&p.metadata);
            template_labels.iter().all(|(k, v)| l.get(k) == Some(v))
        })
        .count();
    let ready = mine.iter().filter(|p| pods::is_ready(p)).count();
    let available = mine
        .iter()
        .filter(|p| pods::is_available(p, min_ready, now))
        .count();
    [
        mine.len() as i64,
        fully as i64,
        ready as i64,
        available as i64,
        set.meta().generation.unwrap_or(0),
    ]
}

fn phase_rank(p: &Pod) -> u8 {
    match pods::phase(p) {
        "Pending" => 0,
        "Running" => 2,
        _ => 1,
    }
}

/// The `n` pods to delete first, in upstream's order (`ActivePodsWithRanks`): unscheduled
/// before scheduled, Pending before Unknown before Running, not ready before ready, pods
/// doubled up on a node before lone ones, ready for less time before longer, more restarts
/// before fewer, newer before older.
pub fn pods_to_delete(mine: &[Arc<Pod>], n: usize, now: jiff::Timestamp) -> Vec<Arc<Pod>> {
    let mut on_node: BTreeMap<&str, usize> = BTreeMap::new();
    for p in mine {
        if let Some(node) = pods::node_name(p) {
            *on_node.entry(node).or_default() += 1;
        }
    }
    let rank = |p: &Pod| pods::node_name(p).map(|n| on_node[n]).unwrap_or(0);
    let mut v: Vec<Arc<Pod>> = mine.to_vec();
    v.sort_by(|a, b| {
        use std::cmp::Ordering;
        let unscheduled = |p: &Pod| pods::node_name(p).is_none();
        unscheduled(b)
            .cmp(&unscheduled(a))
            .then(phase_rank(a).cmp(&phase_rank(b)))
            .then(pods::is_ready(a).cmp(&pods::is_ready(b)))
            .then(rank(b).cmp(&rank(a)))
            .then_with(|| {
                // Both ready: the one ready for less time (later transition) goes first.
                let since = |p: &Pod| {
                    pods::ready_since(p)
                        .flatten()
                        .map(|t| now.duration_since(t.0).as_secs_f64())
                };
                match (since(a), since(b)) {
                    (Some(x), Some(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
                    _ => Ordering::Equal,
                }
            })
            .then(pods::restarts(b).cmp(&pods::restarts(a)))
            .then_with(|| {
                let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
                created(b).cmp(&created(a))
            })
    });
    v.truncate(n);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, node: Option<&str>, phase: &str, ready: bool, created: &str) -> Arc<Pod> {
        let mut v = json!({
            "metadata": {"name": name, "creationTimestamp": created},
            "spec": {"containers": []},
            "status": {"phase": phase},
        });
        if let Some(n) = node {
            v["spec"]["nodeName"] = json!(n);
        }
        if ready {
            v["status"]["conditions"] =
                json!([{"type": "Ready", "status": "True", "lastTransitionTime": created}]);
        }
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn names(v: &[Arc<Pod>]) -> Vec<&str> {
        v.iter()
            .map(|p| p.metadata.name.as_deref().unwrap())
            .collect()
    }

    const OLD: &str = "2026-01-01T00:00:00Z";
    const NEW: &str = "2026-01-02T00:00:00Z";

    #[test]
    fn scale_down_removes_unscheduled_then_pending_then_not_ready_pods_first() {
        let now = jiff::Timestamp::now();
        let all = vec![
            pod("running-ready", Some("n1"), "Running", true, OLD),
            pod("running-not-ready", Some("n2"), "Running", false, OLD),
            pod("pending", Some("n3"), "Pending", false, OLD),
            pod("unscheduled", None, "Pending", false, OLD),
        ];
        assert_eq!(
            names(&pods_to_delete(&all, 4, now)),
            [
                "unscheduled",
                "pending",
                "running-not-ready",
                "running-ready"
            ]
        );
    }

    #[test]
    fn among_ready_pods_doubled_up_then_newer_ones_go_first() {
        let now = jiff::Timestamp::now();
        let all = vec![
            pod("alone-old", Some("n1"), "Running", true, OLD),
            pod("alone-new", Some("n2"), "Running", true, NEW),
            pod("pair-a", Some("n3"), "Running", true, OLD),
            pod("pair-b", Some("n3"), "Running", true, OLD),
        ];
        let order = pods_to_delete(&all, 4, now);
        let order = names(&order);
        assert!(
            order[..2].contains(&"pair-a") && order[..2].contains(&"pair-b"),
            "{order:?}"
        );
        assert_eq!(&order[2..], ["alone-new", "alone-old"]);
    }

    #[test]
    fn available_means_ready_for_min_ready_seconds() {
        let now: jiff::Timestamp = "2026-01-01T00:00:10Z".parse().unwrap();
        let p = pod("p", Some("n"), "Running", true, OLD);
        assert!(pods::is_available(&p, Duration::from_secs(10), now));
        assert!(!pods::is_available(&p, Duration::from_secs(11), now));
        assert!(pods::is_available(&p, Duration::ZERO, now));
        let q = pod("q", Some("n"), "Running", false, OLD);
        assert!(!pods::is_available(&q, Duration::ZERO, now));
    }

    #[test]
    fn status_counts_ready_available_and_labelled_pods() {
        let rs: ReplicaSet = serde_json::from_value(json!({
            "metadata": {"name": "rs", "generation": 3},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"a": "b"}},
                     "template": {"metadata": {"labels": {"a": "b", "t": "1"}}}},
        }))
        .unwrap();
        let mut p1 = (*pod("p1", Some("n"), "Running", true, OLD)).clone();
        p1.metadata.labels = Some([("a".into(), "b".into()), ("t".into(), "1".into())].into());
        let p2 = pod("p2", Some("n"), "Running", false, OLD);
        let s = status_of(
            &rs,
            &[Arc::new(p1), p2],
            Duration::ZERO,
            jiff::Timestamp::now(),
        );
        assert_eq!(s, [2, 1, 1, 1, 3]);
    }
}
