//! StatefulSet: pods with a stable identity — `<set>-<ordinal>`, hostname = pod name,
//! subdomain = `spec.serviceName` (the headless Service's DNS name) — recreated under the
//! same name when they go. OrderedReady creates ordinal N+1 only once N is Running and Ready
//! and removes the highest ordinal first, one at a time; Parallel does both at once. Each
//! template is recorded as a ControllerRevision; RollingUpdate replaces pods with ordinals
//! ≥ `partition` from the highest down, one at a time, waiting for each to be Ready again;
//! OnDelete only gives the new template to pods made after a deletion. The logic follows
//! upstream's `defaultStatefulSetControl`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use k8s_openapi::jiff;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::controller::{Adopters, OnDelete, Reconciler, Target, owner_handler, pod_owner_handler};
use crate::daemonset::REVISION_HASH;
use crate::deployment::template_hash;
use crate::expectations::Expectations;
use crate::informer::{Informer, Synced};
use crate::manager::Watches;
use crate::owner::{self, Claim};
use crate::pods;
use crate::replicaset::pod_from_template;
use crate::workqueue::WorkQueue;
use crate::{Ctx, SyncError};

/// The label with the pod's own name (a Service can select a single replica by it).
pub const POD_NAME: &str = "statefulset.kubernetes.io/pod-name";
/// The label with the pod's ordinal.
pub const POD_INDEX: &str = "apps.kubernetes.io/pod-index";
/// The label a ControllerRevision carries with its hash.
pub const REVISION_HASH_LABEL: &str = "controller.kubernetes.io/hash";

/// The ordinal of `pod` if it is named `<set>-<ordinal>`.
pub fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    let rest = pod.strip_prefix(set)?.strip_prefix('-')?;
    if rest.is_empty() || (rest.len() > 1 && rest.starts_with('0')) {
        return None;
    }
    rest.parse().ok().filter(|n: &i32| *n >= 0)
}

/// A ControllerRevision's data: the template as a strategic-merge patch that replaces it,
/// as upstream records it.
pub fn revision_data(template: &PodTemplateSpec) -> Value {
    let mut t = serde_json::to_value(template).unwrap_or_default();
    if let Some(o) = t.as_object_mut() {
        o.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": t}})
}

/// The template a revision records.
pub fn revision_template(r: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut t = r.data.as_ref()?.0.get("spec")?.get("template")?.clone();
    if let Some(o) = t.as_object_mut() {
        o.remove("$patch");
    }
    serde_json::from_value(t).ok()
}

/// The name of the revision `pod` was made from.
pub fn pod_revision(p: &Pod) -> Option<String> {
    owner::labels(&p.metadata).get(REVISION_HASH).cloned()
}

/// Upstream's `isHealthy`: Running, Ready (for minReadySeconds) and not being deleted.
fn healthy(p: &Pod, min_ready: Duration, now: jiff::Timestamp) -> bool {
    pods::phase(p) == "Running"
        && pods::is_available(p, min_ready, now)
        && p.metadata.deletion_timestamp.is_none()
}

/// The pod for `ordinal`: the template's, named and labelled for its identity.
pub fn identity_pod(
    set: &StatefulSet,
    template: &PodTemplateSpec,
    ordinal: i32,
    revision: &str,
) -> Pod {
    let set_name = set.metadata.name.clone().unwrap_or_default();
    let ns = set.metadata.namespace.clone().unwrap_or_default();
    let name = format!("{set_name}-{ordinal}");
    let mut pod = pod_from_template(template, &ns, &set_name, owner::controller_ref(set));
    pod.metadata.generate_name = None;
    pod.metadata.name = Some(name.clone());
    let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(POD_NAME.into(), name.clone());
    labels.insert(POD_INDEX.into(), ordinal.to_string());
    labels.insert(REVISION_HASH.into(), revision.into());
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.hostname = Some(name);
    if let Some(svc) = set
        .spec
        .as_ref()
        .and_then(|s| s.service_name.clone())
        .filter(|s| !s.is_empty())
    {
        spec.subdomain = Some(svc);
    }
    pod
}

/// What one sync decided to do about the pods (kept free of I/O so the order rules can be
/// tested alone).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Ordinals to create, and whether each gets the update revision.
    pub create: Vec<(i32, bool)>,
    /// Pod names to delete.
    pub delete: Vec<String>,
}

/// One slot: the ordinal's pod as the cache shows it.
#[derive(Debug, Clone)]
pub struct Slot {
    pub ordinal: i32,
    pub name: String,
    pub healthy: bool,
    pub terminating: bool,
    pub finished: bool,
    pub revision: Option<String>,
}

/// How the set is to be driven.
#[derive(Debug, Clone)]
pub struct Policy {
    /// OrderedReady (true) or Parallel.
    pub ordered: bool,
    /// RollingUpdate (Some(partition)) or OnDelete (None).
    pub rolling_partition: Option<i32>,
    /// First ordinal (`spec.ordinals.start`) and replicas.
    pub start: i32,
    pub replicas: i32,
}

/// Upstream's update loop: fix and create the wanted ordinals in order, then remove the
/// condemned from the highest, then roll from the highest ordinal ≥ partition.
pub fn plan(policy: &Policy, slots: &[Slot], update_revision: &str) -> Plan {
    let mut out = Plan::default();
    let end = policy.start + policy.replicas.max(0);
    let by_ord: BTreeMap<i32, &Slot> = slots.iter().map(|s| (s.ordinal, s)).collect();
    let uses_update = |ord: i32| match policy.rolling_partition {
        Some(p) => ord - policy.start >= p,
        None => true,
    };
    for ord in policy.start..end {
        match by_ord.get(&ord) {
            None => {
                out.create.push((ord, uses_update(ord)));
                if policy.ordered {
                    return out;
                }
            }
            Some(s) if s.finished && !s.terminating => {
                // A failed or succeeded pod is replaced (deleted now, made again next sync).
                out.delete.push(s.name.clone());
                if policy.ordered {
                    return out;
                }
            }
            Some(s) if policy.ordered && (s.terminating || !s.healthy) => return out,
            Some(_) => {}
        }
    }
    // Condemned: ordinals outside [start, end), highest first.
    let mut condemned: Vec<&Slot> = slots
        .iter()
        .filter(|s| s.ordinal < policy.start || s.ordinal >= end)
        .collect();
    condemned.sort_by_key(|s| std::cmp::Reverse(s.ordinal));
    for s in condemned {
        if s.terminating {
            if policy.ordered {
                return out;
            }
            continue;
        }
        out.delete.push(s.name.clone());
        if policy.ordered {
            return out;
        }
    }
    if !out.create.is_empty() || !out.delete.is_empty() {
        return out;
    }
    // Rolling update: one pod at a time, highest ordinal first, waiting for health.
    if let Some(partition) = policy.rolling_partition {
        for ord in (policy.start + partition.max(0)..end).rev() {
            let Some(s) = by_ord.get(&ord) else {
                return out;
            };
            if s.revision.as_deref() != Some(update_revision) && !s.terminating {
                out.delete.push(s.name.clone());
                return out;
            }
            if !s.healthy {
                return out;
            }
        }
    }
    out
}

#[derive(Clone)]
pub struct Controller {
    pub sets: Informer<StatefulSet>,
    pub pods: Informer<Pod>,
    pub revisions: Informer<ControllerRevision>,
    pub queue: WorkQueue,
    pub expectations: Expectations,
    ctx: Ctx,
}

impl Controller {
    pub fn new(
        ctx: Ctx,
        sets: Informer<StatefulSet>,
        pods: Informer<Pod>,
        revisions: Informer<ControllerRevision>,
    ) -> Self {
        Controller {
            sets,
            pods,
            revisions,
            queue: WorkQueue::new(),
            expectations: Expectations::new(),
            ctx,
        }
    }

    /// The revision for the current template: an equal one already recorded (given the
    /// highest number again if it is not the latest, as a rollback), or a new one.
    async fn update_revision(
        &self,
        set: &StatefulSet,
        mine: &[Arc<ControllerRevision>],
    ) -> Result<ControllerRevision, SyncError> {
        let ns = set.metadata.namespace.clone().unwrap_or_default();
        let name = set.metadata.name.clone().unwrap_or_default();
        let template = set
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let api: Api<ControllerRevision> = Api::namespaced(self.ctx.client.clone(), &ns);
        let latest = mine.iter().map(|r| r.revision).max().unwrap_or(0);
        let want = serde_json::to_value(&template).unwrap_or_default();
        let equal = mine
            .iter()
            .filter(|r| {
                revision_template(r)
                    .map(|t| serde_json::to_value(t).unwrap_or_default() == want)
                    .unwrap_or(false)
            })
            .max_by_key(|r| r.revision);
        if let Some(r) = equal {
            if r.revision == latest {
                return Ok((**r).clone());
            }
            let rn = r.metadata.name.clone().unwrap_or_default();
            let patched = api
                .patch(
                    &rn,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"revision": latest + 1})),
                )
                .await?;
            return Ok(patched);
        }
        let collisions = set.status.as_ref().and_then(|s| s.collision_count);
        let hash = template_hash(&template, collisions);
        let mut labels = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        labels.insert(REVISION_HASH_LABEL.into(), hash.clone());
        let rev = ControllerRevision {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(format!("{name}-{hash}")),
                namespace: Some(ns.clone()),
                labels: Some(labels),
                owner_references: Some(vec![owner::controller_ref(set)]),
                ..Default::default()
            },
            data: Some(RawExtension(revision_data(&template))),
            revision: latest + 1,
        };
        match api.create(&PostParams::default(), &rev).await {
            Ok(r) => Ok(r),
            Err(e) if matches!(&e, kube::Error::Api(s) if s.code == 409) => {
                // Made by an earlier sync the cache has not shown yet: the same name holds
                // the same template unless the hash collided.
                let rn = rev.metadata.name.clone().unwrap_or_default();
                let got = api.get(&rn).await?;
                let same = revision_template(&got)
                    .map(|t| serde_json::to_value(t).unwrap_or_default() == want)
                    .unwrap_or(false);
                if same {
                    Ok(got)
                } else {
                    let sapi: Api<StatefulSet> = Api::namespaced(self.ctx.client.clone(), &ns);
                    let next = collisions.unwrap_or(0) + 1;
                    sapi.patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(&json!({"status": {"collisionCount": next}})),
                    )
                    .await?;
                    Err(SyncError::Other(format!(
                        "revision {rn} collides; collisionCount now {next}"
                    )))
                }
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl Reconciler for Controller {
    fn name(&self) -> &'static str {
        "statefulset"
    }

    fn queue(&self) -> &WorkQueue {
        &self.queue
    }

    fn caches(&self) -> Vec<Synced> {
        vec![
            self.sets.synced(),
            self.pods.synced(),
            self.revisions.synced(),
        ]
    }

    fn handlers(&self, watches: &mut Watches) {
        let forget = OnDelete::Forget(self.expectations.clone());
        watches.on(owner_handler(&self.queue, &self.sets, forget));
        // An orphan may be adopted by a set whose selector matches.
        let adopters = Adopters {
            cache: self.sets.clone(),
            selector: |s: &StatefulSet| owner::selector(s.spec.as_ref().map(|s| &s.selector)),
        };
        watches.on(pod_owner_handler(
            &self.queue,
            &self.expectations,
            Some(adopters),
        ));
    }

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
        let Some(spec) = set.spec.clone() else {
            return Ok(None);
        };
        let sel = owner::selector(Some(&spec.selector));
        let pod_api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &ns);
        let now = jiff::Timestamp::now();
        let min_ready = Duration::from_secs(spec.min_ready_seconds.unwrap_or(0).max(0) as u64);

        // Pods: owned (or adopted) and named as members of this set.
        let mut mine: Vec<Arc<Pod>> = Vec::new();
        for p in self.pods.state() {
            if p.metadata.namespace.as_deref() != Some(&ns) {
                continue;
            }
            let member = ordinal_of(&name, p.metadata.name.as_deref().unwrap_or_default());
            match owner::claim(&uid, &sel, &p.metadata) {
                Claim::Owned if member.is_some() => mine.push(p),
                Claim::Adopt if !deleting && member.is_some() => {
                    owner::adopt(&pod_api, &p.metadata, owner::controller_ref(&*set)).await?;
                    mine.push(p);
                }
                Claim::Release => {
                    let _ = owner::release(&pod_api, &p.metadata, &uid).await;
                }
                _ => {}
            }
        }
        // Revisions.
        let mut revisions: Vec<Arc<ControllerRevision>> = self
            .revisions
            .state()
            .into_iter()
            .filter(|r| {
                r.metadata.namespace.as_deref() == Some(&ns)
                    && owner::controller_of(&r.metadata).is_some_and(|o| o.uid == uid)
            })
            .collect();
        revisions.sort_by_key(|r| r.revision);
        if deleting {
            return Ok(None);
        }
        let update = self.update_revision(&set, &revisions).await?;
        let update_name = update.metadata.name.clone().unwrap_or_default();
        let status = set.status.clone().unwrap_or_default();
        let current = status
            .current_revision
            .as_ref()
            .and_then(|c| {
                revisions
                    .iter()
                    .find(|r| r.metadata.name.as_ref() == Some(c))
                    .map(|r| (**r).clone())
            })
            .unwrap_or_else(|| update.clone());
        let current_name = current.metadata.name.clone().unwrap_or_default();

        let rolling = spec
            .update_strategy
            .as_ref()
            .and_then(|s| s.type_.as_deref())
            != Some("OnDelete");
        let partition = spec
            .update_strategy
            .as_ref()
            .and_then(|s| s.rolling_update.as_ref())
            .and_then(|r| r.partition)
            .unwrap_or(0);
        let policy = Policy {
            ordered: spec.pod_management_policy.as_deref() != Some("Parallel"),
            rolling_partition: rolling.then_some(partition),
            start: spec
                .ordinals
                .as_ref()
                .and_then(|o| o.start)
                .unwrap_or(0)
                .max(0),
            replicas: spec.replicas.unwrap_or(1),
        };
        let slots: Vec<Slot> = mine
            .iter()
            .filter_map(|p| {
                Some(Slot {
                    ordinal: ordinal_of(&name, p.metadata.name.as_deref()?)?,
                    name: p.metadata.name.clone()?,
                    healthy: healthy(p, min_ready, now),
                    terminating: p.metadata.deletion_timestamp.is_some(),
                    finished: matches!(pods::phase(p), "Succeeded" | "Failed"),
                    revision: pod_revision(p),
                })
            })
            .collect();
        let mut again = None;
        if self.expectations.satisfied(key) {
            let plan = plan(&policy, &slots, &update_name);
            if !plan.create.is_empty() {
                self.expectations.expect_creations(key, plan.create.len());
                let update_t = revision_template(&update).unwrap_or(spec.template.clone());
                let current_t = revision_template(&current).unwrap_or(spec.template.clone());
                let mut failed = None;
                for (ord, new) in &plan.create {
                    let (t, rev) = if *new {
                        (&update_t, &update_name)
                    } else {
                        (&current_t, &current_name)
                    };
                    let pod = identity_pod(&set, t, *ord, rev);
                    tracing::info!(set = %key, ordinal = ord, revision = %rev, "creating pod");
                    match pod_api.create(&PostParams::default(), &pod).await {
                        Ok(_) => self.ctx.metrics.inc(
                            "trellis_controller_pods_created_total",
                            "Pods created by a controller, by kind.",
                            &[("kind", "StatefulSet")],
                            1.0,
                        ),
                        Err(e) => {
                            self.expectations.creation_observed(key);
                            if owner::is_conflict(&e) {
                                // The old pod of that name is still there: look again soon.
                                again = Some(Duration::from_millis(200));
                            } else {
                                failed = Some(e);
                            }
                        }
                    }
                }
                if let Some(e) = failed {
                    return Err(e.into());
                }
            }
            if !plan.delete.is_empty() {
                let victims: Vec<&Arc<Pod>> = mine
                    .iter()
                    .filter(|p| {
                        plan.delete
                            .iter()
                            .any(|n| p.metadata.name.as_ref() == Some(n))
                    })
                    .collect();
                let uids: Vec<String> = victims
                    .iter()
                    .map(|p| p.metadata.uid.clone().unwrap_or_default())
                    .collect();
                self.expectations.expect_deletions(key, uids.clone());
                for (p, puid) in victims.iter().zip(uids) {
                    let n = p.metadata.name.clone().unwrap_or_default();
                    tracing::info!(set = %key, pod = %n, "deleting pod");
                    let dp = DeleteParams {
                        preconditions: Some(kube::api::Preconditions {
                            uid: Some(puid.clone()),
                            resource_version: None,
                        }),
                        ..Default::default()
                    };
                    if let Err(e) = pod_api.delete(&n, &dp).await {
                        self.expectations.deletion_observed(key, &puid);
                        if !owner::is_not_found(&e) && !owner::is_conflict(&e) {
                            return Err(e.into());
                        }
                    }
                }
            }
        }

        // Status, from the pods as the cache shows them.
        let created = mine.len() as i32;
        let ready = mine.iter().filter(|p| pods::is_ready(p)).count() as i32;
        let available = mine
            .iter()
            .filter(|p| pods::is_available(p, min_ready, now))
            .count() as i32;
        let live = || {
            mine.iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
        };
        let mut current_replicas = live()
            .filter(|p| pod_revision(p).as_deref() == Some(&current_name))
            .count() as i32;
        let updated = live()
            .filter(|p| pod_revision(p).as_deref() == Some(&update_name))
            .count() as i32;
        let mut current_revision = current_name.clone();
        if updated == created && ready == created {
            // The update is complete: it becomes the current revision.
            current_revision = update_name.clone();
            current_replicas = updated;
        }
        let new_status = json!({
            "observedGeneration": set.metadata.generation,
            "replicas": created,
            "readyReplicas": ready,
            "availableReplicas": available,
            "currentReplicas": current_replicas,
            "updatedReplicas": updated,
            "currentRevision": current_revision,
            "updateRevision": update_name,
            "collisionCount": status.collision_count.unwrap_or(0),
        });
        let cur = serde_json::to_value(&set.status).unwrap_or_default();
        let differs = new_status
            .as_object()
            .is_some_and(|m| m.iter().any(|(k, v)| cur.get(k).unwrap_or(&json!(0)) != v));
        if differs {
            let api: Api<StatefulSet> = Api::namespaced(self.ctx.client.clone(), &ns);
            match api
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"status": new_status})),
                )
                .await
            {
                Ok(_) => {}
                Err(e) if owner::is_not_found(&e) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
        self.truncate_history(
            &set,
            &revisions,
            &mine,
            &[current_revision.as_str(), update_name.as_str()],
        )
        .await?;
        // Pods becoming available after minReadySeconds change nothing in the watch.
        if !min_ready.is_zero()
            && let Some(d) = mine
                .iter()
                .filter_map(|p| pods::until_available(p, min_ready, now))
                .min()
        {
            let d = d + Duration::from_millis(50);
            again = Some(again.map_or(d, |a: Duration| a.min(d)));
        }
        Ok(again)
    }
}

impl Controller {
    /// Deletes the oldest revisions beyond revisionHistoryLimit that no pod uses and that
    /// are neither current nor update.
    async fn truncate_history(
        &self,
        set: &StatefulSet,
        revisions: &[Arc<ControllerRevision>],
        mine: &[Arc<Pod>],
        live: &[&str],
    ) -> Result<(), SyncError> {
        let limit = set
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10)
            .max(0) as usize;
        let used: HashSet<String> = mine.iter().filter_map(|p| pod_revision(p)).collect();
        let old: Vec<&Arc<ControllerRevision>> = revisions
            .iter()
            .filter(|r| {
                let n = r.metadata.name.as_deref().unwrap_or_default();
                !live.contains(&n) && !used.contains(n)
            })
            .collect();
        if old.len() <= limit {
            return Ok(());
        }
        let ns = set.metadata.namespace.clone().unwrap_or_default();
        let api: Api<ControllerRevision> = Api::namespaced(self.ctx.client.clone(), &ns);
        for r in old.iter().take(old.len() - limit) {
            let n = r.metadata.name.clone().unwrap_or_default();
            match api.delete(&n, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(e) if owner::is_not_found(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(ord: i32, healthy: bool, rev: &str) -> Slot {
        Slot {
            ordinal: ord,
            name: format!("web-{ord}"),
            healthy,
            terminating: false,
            finished: false,
            revision: Some(rev.into()),
        }
    }

    fn ordered(replicas: i32, partition: Option<i32>) -> Policy {
        Policy {
            ordered: true,
            rolling_partition: partition,
            start: 0,
            replicas,
        }
    }

    #[test]
    fn ordinals_come_from_names_of_the_form_set_dash_number() {
        assert_eq!(ordinal_of("web", "web-0"), Some(0));
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web", "web-01"), None);
        assert_eq!(ordinal_of("web", "web-x"), None);
        assert_eq!(ordinal_of("web", "webb-1"), None);
        assert_eq!(ordinal_of("web", "web-"), None);
    }

    #[test]
    fn ordered_ready_creates_the_next_ordinal_only_after_the_previous_is_ready() {
        let p = ordered(3, Some(0));
        assert_eq!(plan(&p, &[], "r1").create, vec![(0, true)]);
        let not_ready = [slot(0, false, "r1")];
        assert_eq!(plan(&p, &not_ready, "r1"), Plan::default());
        let ready = [slot(0, true, "r1")];
        assert_eq!(plan(&p, &ready, "r1").create, vec![(1, true)]);
    }

    #[test]
    fn parallel_creates_every_missing_ordinal_at_once() {
        let p = Policy {
            ordered: false,
            ..ordered(3, Some(0))
        };
        assert_eq!(
            plan(&p, &[slot(1, false, "r1")], "r1").create,
            vec![(0, true), (2, true)]
        );
    }

    #[test]
    fn scale_down_removes_the_highest_ordinal_first_one_at_a_time() {
        let p = ordered(1, Some(0));
        let slots: Vec<Slot> = (0..3).map(|o| slot(o, true, "r1")).collect();
        assert_eq!(plan(&p, &slots, "r1").delete, vec!["web-2".to_string()]);
        let mut going = slots.clone();
        going[2].terminating = true;
        assert_eq!(
            plan(&p, &going, "r1"),
            Plan::default(),
            "wait for web-2 to go"
        );
    }

    #[test]
    fn a_rolling_update_goes_from_the_highest_ordinal_down_to_the_partition() {
        let p = ordered(4, Some(2));
        let slots: Vec<Slot> = (0..4).map(|o| slot(o, true, "r1")).collect();
        assert_eq!(plan(&p, &slots, "r2").delete, vec!["web-3".to_string()]);
        let mut s = slots.clone();
        s[3] = slot(3, false, "r2");
        assert_eq!(
            plan(&p, &s, "r2"),
            Plan::default(),
            "web-3 updated but not ready yet"
        );
        s[3] = slot(3, true, "r2");
        assert_eq!(plan(&p, &s, "r2").delete, vec!["web-2".to_string()]);
        s[2] = slot(2, true, "r2");
        assert_eq!(
            plan(&p, &s, "r2"),
            Plan::default(),
            "ordinals below the partition stay"
        );
        // A pod below the partition that is made again gets the current revision.
        let missing: Vec<Slot> = s.iter().filter(|x| x.ordinal != 1).cloned().collect();
        assert_eq!(plan(&p, &missing, "r2").create, vec![(1, false)]);
    }

    #[test]
    fn on_delete_never_deletes_for_an_update_but_recreates_with_the_new_template() {
        let p = ordered(2, None);
        let slots = [slot(0, true, "r1"), slot(1, true, "r1")];
        assert_eq!(plan(&p, &slots, "r2"), Plan::default());
        assert_eq!(plan(&p, &slots[..1], "r2").create, vec![(1, true)]);
    }

    #[test]
    fn a_failed_pod_is_deleted_to_be_made_again() {
        let p = ordered(2, Some(0));
        let mut s = [slot(0, false, "r1"), slot(1, true, "r1")];
        s[0].finished = true;
        assert_eq!(plan(&p, &s, "r1").delete, vec!["web-0".to_string()]);
    }

    #[test]
    fn revisions_record_the_template_as_a_replacing_patch() {
        let t: PodTemplateSpec = serde_json::from_value(
            json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}}),
        )
        .unwrap();
        let data = revision_data(&t);
        assert_eq!(data["spec"]["template"]["$patch"], "replace");
        let r = ControllerRevision {
            data: Some(RawExtension(data)),
            ..Default::default()
        };
        assert_eq!(revision_template(&r), Some(t));
    }

    #[test]
    fn pods_carry_their_stable_identity() {
        let set: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "u"},
            "spec": {"serviceName": "nginx", "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": []}}}}))
        .unwrap();
        let t = set.spec.as_ref().unwrap().template.clone();
        let p = identity_pod(&set, &t, 2, "web-abc");
        assert_eq!(p.metadata.name.as_deref(), Some("web-2"));
        let spec = p.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("web-2"));
        assert_eq!(spec.subdomain.as_deref(), Some("nginx"));
        let l = p.metadata.labels.unwrap();
        assert_eq!(l[POD_NAME], "web-2");
        assert_eq!(l[POD_INDEX], "2");
        assert_eq!(l[REVISION_HASH], "web-abc");
        assert_eq!(l["app"], "web");
    }
}
