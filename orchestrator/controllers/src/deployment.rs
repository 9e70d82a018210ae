//! Deployment: one ReplicaSet per pod template (named `<deployment>-<pod-template-hash>`),
//! rolled from old to new with maxSurge and maxUnavailable (RollingUpdate) or all at once
//! (Recreate); revisions in the `deployment.kubernetes.io/revision` annotation, at most
//! `revisionHistoryLimit` old ReplicaSets kept; status and the Available and Progressing
//! conditions `kubectl rollout status` reads. `kubectl rollout undo` is client-side: it
//! copies an old ReplicaSet's template back into the Deployment, and the sync below then
//! finds that ReplicaSet again and makes it the new one with the next revision.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::controller::{OnDelete, Reconciler, Target, owner_handler};
use crate::informer::{Change, Handler, Informer, Synced, handler};
use crate::manager::Watches;
use crate::owner::{self, Claim};
use crate::replicaset::PodSet;
use crate::workqueue::WorkQueue;
use crate::{Ctx, SyncError};

pub const HASH_LABEL: &str = "pod-template-hash";
pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// Annotations of the Deployment that are not copied to its ReplicaSets (kubectl's
/// `annotationsToSkip` is the same list, the other way round).
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

// ---------------------------------------------------------------------------------------
// The arithmetic, as upstream's deployment/util.

/// An int, or a percentage of `total` rounded up or down (`GetScaledValueFromIntOrPercent`).
pub fn scaled_value(v: &IntOrString, total: i32, round_up: bool) -> Result<i32, String> {
    match v {
        IntOrString::Int(i) => Ok(*i),
        IntOrString::String(s) => {
            let pct: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("invalid value for IntOrString: {s:?}"))?;
            let x = pct * i64::from(total);
            let v = if round_up {
                (x + 99).div_euclid(100)
            } else {
                x.div_euclid(100)
            };
            Ok(v as i32)
        }
    }
}

/// maxSurge rounded up and maxUnavailable rounded down against `desired`; both zero would
/// deadlock the rollout, so maxUnavailable becomes 1 then (`ResolveFenceposts`).
pub fn fenceposts(
    surge: &IntOrString,
    unavailable: &IntOrString,
    desired: i32,
) -> Result<(i32, i32), String> {
    let s = scaled_value(surge, desired, true)?;
    let u = scaled_value(unavailable, desired, false)?;
    Ok(if s == 0 && u == 0 { (0, 1) } else { (s, u) })
}

/// The new ReplicaSet's size in a rolling update (`NewRSNewReplicas`): grow by what the
/// surge leaves room for, never past `desired`.
pub fn new_rs_replicas(desired: i32, max_surge: i32, all_spec: i32, new_spec: i32) -> i32 {
    let max_total = desired + max_surge;
    if all_spec >= max_total {
        return new_spec;
    }
    let up = (max_total - all_spec).min(desired - new_spec);
    new_spec + up.max(0)
}

/// How many old pods may go now (`reconcileOldReplicaSets`): the total spec above
/// `desired - maxUnavailable`, not counting the new ReplicaSet's unavailable pods.
pub fn old_scale_down_budget(
    desired: i32,
    max_unavailable: i32,
    all_spec: i32,
    new_spec: i32,
    new_available: i32,
) -> i32 {
    let min_available = desired - max_unavailable;
    let new_unavailable = (new_spec - new_available).max(0);
    all_spec - min_available - new_unavailable
}

/// FNV-1a, 32 bits: the hash upstream's `ComputeHash` uses.
fn fnv32a(data: &[u8], h: &mut u32) {
    for b in data {
        *h ^= u32::from(*b);
        *h = h.wrapping_mul(0x0100_0193);
    }
}

/// The `pod-template-hash` of a template: FNV-1a of the template (and the collision count),
/// its decimal digits spelled in upstream's `SafeEncodeString` alphabet (no vowels, no
/// look-alikes).
pub fn template_hash(template: &PodTemplateSpec, collisions: Option<i32>) -> String {
    let mut t = template.clone();
    if let Some(l) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        l.remove(HASH_LABEL);
    }
    let mut h: u32 = 0x811c_9dc5;
    fnv32a(&serde_json::to_vec(&t).unwrap_or_default(), &mut h);
    if let Some(c) = collisions {
        fnv32a(&(c as u32).to_le_bytes(), &mut h);
    }
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char)
        .collect()
}

/// Templates equal but for the hash label (`EqualIgnoreHash`).
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    let strip = |t: &PodTemplateSpec| {
        let mut t = t.clone();
        if let Some(m) = t.metadata.as_mut()
            && let Some(l) = m.labels.as_mut()
        {
            l.remove(HASH_LABEL);
            if l.is_empty() {
                m.labels = None;
            }
        }
        serde_json::to_value(t).unwrap_or_default()
    };
    strip(a) == strip(b)
}

pub fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.replicas()
}

fn available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------

/// The Deployment controller.
#[derive(Clone)]
pub struct Controller {
    pub deployments: Informer<Deployment>,
    pub sets: Informer<ReplicaSet>,
    /// Pods, for availability: a ReplicaSet's status lags behind its pods.
    pub pods: Informer<Pod>,
    pub queue: WorkQueue,
    ctx: Ctx,
    /// ReplicaSets as this controller last wrote them, until the watch catches up (upstream's
    /// mutation cache): a sync right after a scale must not decide from the old size.
    written: Arc<Mutex<HashMap<String, ReplicaSet>>>,
}

fn rv(o: &ObjectMeta) -> u64 {
    o.resource_version
        .as_deref()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

impl Controller {
    pub fn new(
        ctx: Ctx,
        deployments: Informer<Deployment>,
        sets: Informer<ReplicaSet>,
        pods: Informer<Pod>,
    ) -> Self {
        Controller {
            deployments,
            sets,
            pods,
            queue: WorkQueue::new(),
            ctx,
            written: Arc::default(),
        }
    }

    fn set_handler(&self) -> Handler<ReplicaSet> {
        let c = self.clone();
        handler(move |ch: Change<'_, ReplicaSet>| {
            let (Change::Applied(rs) | Change::Deleted(rs)) = ch else {
                return;
            };
            c.enqueue_for(rs);
        })
    }

    /// Pods matter to Recreate (old pods must be gone before new ones start) and to the surge
    /// (a pod a scale-down asked to go counts until it is terminating).
    fn pod_handler(&self) -> Handler<Pod> {
        let c = self.clone();
        handler(move |ch: Change<'_, Pod>| {
            let p = match ch {
                Change::Deleted(p) => p,
                Change::Applied(p) if p.metadata.deletion_timestamp.is_some() => p,
                _ => return,
            };
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            if let Some(r) = owner::controller_of(&p.metadata).filter(|r| r.kind == "ReplicaSet")
                && let Some(rs) = c.sets.get(&format!("{ns}/{}", r.name))
            {
                c.enqueue_for(&rs);
            }
        })
    }

    fn enqueue_for(&self, rs: &ReplicaSet) {
        let ns = rs.metadata.namespace.clone().unwrap_or_default();
        match owner::controller_of(&rs.metadata) {
            Some(r) if r.kind == "Deployment" => self.queue.add(format!("{ns}/{}", r.name)),
            Some(_) => {}
            None => {
                let labels = owner::labels(&rs.metadata);
                for d in self.deployments.state() {
                    if d.metadata.namespace.as_deref() == Some(&ns)
                        && owner::selector(d.spec.as_ref().map(|s| &s.selector)).matches(&labels)
                    {
                        self.queue.add(owner::key(&d.metadata));
                    }
                }
            }
        }
    }

    /// The cached ReplicaSet, or the one this controller wrote if the cache is older.
    fn fresh(&self, rs: Arc<ReplicaSet>) -> ReplicaSet {
        let uid = rs.metadata.uid.clone().unwrap_or_default();
        let mut w = self.written.lock().unwrap_or_else(|e| e.into_inner());
        match w.get(&uid) {
            Some(mine) if rv(&mine.metadata) > rv(&rs.metadata) => mine.clone(),
            Some(_) => {
                w.remove(&uid);
                (*rs).clone()
            }
            None => (*rs).clone(),
        }
    }

    fn remember(&self, rs: ReplicaSet) {
        let uid = rs.metadata.uid.clone().unwrap_or_default();
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(uid, rs);
    }
}

impl Reconciler for Controller {
    fn name(&self) -> &'static str {
        "deployment"
    }

    fn queue(&self) -> &WorkQueue {
        &self.queue
    }

    fn caches(&self) -> Vec<Synced> {
        // Only from complete caches (a missing ReplicaSet would be created again).
        vec![
            self.deployments.synced(),
            self.sets.synced(),
            self.pods.synced(),
        ]
    }

    fn handlers(&self, watches: &mut Watches) {
        watches.on(owner_handler(
            &self.queue,
            &self.deployments,
            OnDelete::Sync,
        ));
        watches.on(self.set_handler());
        watches.on(self.pod_handler());
    }

    async fn sync(&self, key: &str) -> Result<Option<Duration>, SyncError> {
        let Some(Target {
            obj: d,
            ns,
            uid,
            deleting,
            ..
        }) = Target::get(&self.deployments, None, key)
        else {
            return Ok(None);
        };
        let d = (*d).clone();
        let Some(spec) = d.spec.clone() else {
            return Ok(None);
        };
        let sel = owner::selector(Some(&spec.selector));
        if sel.is_everything() || sel.is_nothing() {
            tracing::warn!(deployment = %key, "a selector that selects everything or nothing; skipped");
            return Ok(None);
        }
        let rs_api: Api<ReplicaSet> = Api::namespaced(self.ctx.client.clone(), &ns);
        // Claim ReplicaSets as the ReplicaSet controller claims pods.
        let mut all: Vec<ReplicaSet> = Vec::new();
        for rs in self.sets.state() {
            if rs.metadata.namespace.as_deref() != Some(&ns) {
                continue;
            }
            match owner::claim(&uid, &sel, &rs.metadata) {
                Claim::Owned => all.push(self.fresh(rs)),
                Claim::Adopt if !deleting => {
                    owner::adopt(&rs_api, &rs.metadata, owner::controller_ref(&d)).await?;
                    all.push((*rs).clone());
                }
                Claim::Release => match owner::release(&rs_api, &rs.metadata, &uid).await {
                    Ok(()) => {}
                    Err(e) if owner::is_not_found(&e) => {}
                    Err(e) => return Err(e.into()),
                },
                _ => {}
            }
        }
        all.sort_by(|a, b| {
            (
                a.metadata.creation_timestamp.as_ref().map(|t| t.0),
                &a.metadata.name,
            )
                .cmp(&(
                    b.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    &b.metadata.name,
                ))
        });
        let template = spec.template.clone();
        if deleting {
            let new = all
                .iter()
                .find(|rs| rs_template_matches(rs, &template))
                .cloned();
            return self.write_status(&d, new.as_ref(), &all, None).await;
        }
        let paused = spec.paused == Some(true);
        let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
        let desired = spec.replicas.unwrap_or(1);
        let (surge, unavailable) = if recreate {
            (0, 0)
        } else {
            let ru = spec
                .strategy
                .as_ref()
                .and_then(|s| s.rolling_update.as_ref());
            let s = ru
                .and_then(|r| r.max_surge.clone())
                .unwrap_or(IntOrString::String("25%".into()));
            let u = ru
                .and_then(|r| r.max_unavailable.clone())
                .unwrap_or(IntOrString::String("25%".into()));
            fenceposts(&s, &u, desired).map_err(SyncError::Other)?
        };

        if paused {
            let new = all
                .iter()
                .find(|rs| rs_template_matches(rs, &template))
                .cloned();
            // Scaling still works while paused: the one active ReplicaSet takes the size.
            let active: Vec<&ReplicaSet> = all.iter().filter(|r| spec_replicas(r) > 0).collect();
            let target = match (&new, active.as_slice()) {
                (Some(n), []) => Some(n.clone()),
                (_, [one]) => Some((*one).clone()),
                _ => None,
            };
            if let Some(t) = target
                && spec_replicas(&t) != desired
            {
                self.scale(&d, &t, desired, surge).await?;
                return Ok(None);
            }
            return self
                .write_status(&d, new.as_ref(), &all, Some((surge, unavailable)))
                .await;
        }

        // The new ReplicaSet and the revision.
        let olds_max_revision = all
            .iter()
            .filter(|rs| !rs_template_matches(rs, &template))
            .map(revision)
            .max()
            .unwrap_or(0);
        let next_revision = olds_max_revision + 1;
        let existing_new = all
            .iter()
            .find(|rs| rs_template_matches(rs, &template))
            .cloned();
        let olds: Vec<ReplicaSet> = all
            .iter()
            .filter(|rs| !rs_template_matches(rs, &template))
            .cloned()
            .collect();
        let mut new = match existing_new {
            Some(rs) => Some(
                self.sync_new_annotations(&d, rs, next_revision, surge)
                    .await?,
            ),
            None => None,
        };
        if recreate {
            if olds.iter().any(|r| spec_replicas(r) > 0) {
                for o in olds.iter().filter(|r| spec_replicas(r) > 0) {
                    self.scale(&d, o, 0, surge).await?;
                }
                return Ok(None);
            }
            // Old pods must be gone (not just asked to go) before new ones start.
            let old_uids: Vec<&str> = olds
                .iter()
                .filter_map(|r| r.metadata.uid.as_deref())
                .collect();
            let old_running = olds
                .iter()
                .any(|r| r.status.as_ref().map(|s| s.replicas).unwrap_or(0) > 0)
                || self.pods_of(&ns, &old_uids);
            if old_running {
                return self
                    .write_status(&d, new.as_ref(), &all, Some((0, 0)))
                    .await;
            }
        }
        if new.is_none() {
            let start = if recreate {
                desired
            } else {
                new_rs_replicas(desired, surge, all.iter().map(|r| self.may_run(r)).sum(), 0)
            };
            let rs = self
                .create_new(&d, &template, next_revision, start, surge)
                .await?;
            all.push(rs.clone());
            new = Some(rs);
            self.set_progressing(
                &d,
                "NewReplicaSetCreated",
                &format!("Created new replica set \"{}\"", name_of(new.as_ref())),
                &all,
            )
            .await?;
            return Ok(None);
        }
        let Some(new) = new else { return Ok(None) };
        let all: Vec<ReplicaSet> = olds
            .iter()
            .cloned()
            .chain(std::iter::once(new.clone()))
            .collect();

        // Scale the new one up (or down to size).
        let new_spec = spec_replicas(&new);
        let target = if new_spec > desired || recreate {
            desired
        } else {
            new_rs_replicas(
                desired,
                surge,
                all.iter().map(|r| self.may_run(r)).sum(),
                new_spec,
            )
        };
        if target != new_spec {
            self.scale(&d, &new, target, surge).await?;
            return Ok(None);
        }
        // Scale the old ones down as far as maxUnavailable allows.
        if !recreate
            && self
                .scale_down_olds(&d, &new, &olds, desired, unavailable, surge)
                .await?
        {
            return Ok(None);
        }
        let complete = complete(&d, &new, &all, desired);
        if complete {
            self.cleanup(&d, &olds).await?;
        }
        self.write_status(&d, Some(&new), &all, Some((surge, unavailable)))
            .await
    }
}

impl Controller {
    /// Whether any pod of these ReplicaSets still runs, terminating ones included: their
    /// status.replicas is written a moment after their pods change.
    fn pods_of(&self, ns: &str, rs_uids: &[&str]) -> bool {
        self.pods.state().iter().any(|p| {
            p.metadata.namespace.as_deref() == Some(ns)
                && owner::controller_of(&p.metadata)
                    .is_some_and(|r| rs_uids.contains(&r.uid.as_str()))
                && !matches!(crate::pods::phase(p), "Succeeded" | "Failed")
        })
    }

    /// The pods `rs` may have running: its spec, or more while the ReplicaSet controller has
    /// yet to delete what a scale-down asked for. The surge counts these, not the specs alone:
    /// a new pod started in that gap made maxSurge + 1 pods live at once. Active pods only, as
    /// the ReplicaSet controller counts them: a failed pod left for the garbage collector (an
    /// evicted one, say) holds no room.
    fn may_run(&self, rs: &ReplicaSet) -> i32 {
        let uid = rs.metadata.uid.as_deref().unwrap_or_default();
        let live = self
            .pods
            .state()
            .iter()
            .filter(|p| {
                crate::pods::is_active(p)
                    && owner::controller_of(&p.metadata).is_some_and(|r| r.uid == uid)
            })
            .count();
        spec_replicas(rs).max(i32::try_from(live).unwrap_or(i32::MAX))
    }

    async fn scale_down_olds(
        &self,
        d: &Deployment,
        new: &ReplicaSet,
        olds: &[ReplicaSet],
        desired: i32,
        max_unavailable: i32,
        surge: i32,
    ) -> Result<bool, SyncError> {
        let old_spec: i32 = olds.iter().map(spec_replicas).sum();
        if old_spec == 0 {
            return Ok(false);
        }
        let all_spec = old_spec + spec_replicas(new);
        let mut budget = old_scale_down_budget(
            desired,
            max_unavailable,
            all_spec,
            spec_replicas(new),
            self.available_now(new),
        );
        if budget <= 0 {
            return Ok(false);
        }
        let mut changed = false;
        // Unhealthy old pods first: they count against availability anyway.
        let mut sizes: Vec<i32> = olds.iter().map(spec_replicas).collect();
        for (i, o) in olds.iter().enumerate() {
            if budget <= 0 {
                break;
            }
            let unhealthy = sizes[i] - self.available_now(o);
            if sizes[i] == 0 || unhealthy <= 0 {
                continue;
            }
            let n = unhealthy.min(budget);
            sizes[i] -= n;
            budget -= n;
        }
        // Then healthy ones, keeping desired - maxUnavailable available. (Upstream bounds this
        // step by the available count alone; the spec budget bounds it too here, so a stale
        // status can never take availability below the floor.)
        let min_available = desired - max_unavailable;
        let available_now: i32 = olds
            .iter()
            .enumerate()
            .map(|(i, o)| self.available_now(o).min(sizes[i]))
            .sum::<i32>()
            + self.available_now(new);
        let mut more = (available_now - min_available).min(budget);
        for (i, _) in olds.iter().enumerate() {
            if more <= 0 {
                break;
            }
            let n = sizes[i].min(more);
            sizes[i] -= n;
            more -= n;
        }
        tracing::debug!(
            new_spec = spec_replicas(new),
            new_available = self.available_now(new),
            old_spec,
            available_now,
            min_available,
            ?sizes,
            "old replica sets: scale-down decision"
        );
        for (i, o) in olds.iter().enumerate() {
            if sizes[i] != spec_replicas(o) {
                self.scale(d, o, sizes[i], surge).await?;
                changed = true;
            }
        }
        Ok(changed)
    }

    /// The pods of `rs` available now as the pod cache shows them, never more than its spec.
    /// Its status is written by the ReplicaSet controller a moment after its pods change; a
    /// rollout deciding from that stale count deleted ready pods while the new ones were still
    /// starting, taking availability below desired − maxUnavailable.
    fn available_now(&self, rs: &ReplicaSet) -> i32 {
        let uid = rs.metadata.uid.as_deref().unwrap_or_default();
        let min_ready = rs
            .spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
            .max(0);
        let min_ready = Duration::from_secs(u64::try_from(min_ready).unwrap_or(0));
        let now = jiff::Timestamp::now();
        let n = self
            .pods
            .state()
            .iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && owner::controller_of(&p.metadata).is_some_and(|r| r.uid == uid)
                    && crate::pods::is_available(p, min_ready, now)
            })
            .count();
        i32::try_from(n).unwrap_or(i32::MAX).min(spec_replicas(rs))
    }

    async fn scale(
        &self,
        d: &Deployment,
        rs: &ReplicaSet,
        to: i32,
        surge: i32,
    ) -> Result<(), SyncError> {
        let (Some(ns), Some(name)) = (
            rs.metadata.namespace.as_deref(),
            rs.metadata.name.as_deref(),
        ) else {
            return Ok(());
        };
        let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        tracing::info!(replicaset = %name, from = spec_replicas(rs), to, "scaling");
        let api: Api<ReplicaSet> = Api::namespaced(self.ctx.client.clone(), ns);
        let patch = json!({
            "metadata": {"annotations": {
                DESIRED_REPLICAS: desired.to_string(),
                MAX_REPLICAS: (desired + surge).to_string(),
            }},
            "spec": {"replicas": to},
        });
        let rs = api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        self.remember(rs);
        Ok(())
    }

    /// Keeps the new ReplicaSet's revision (a rollback makes an old one new again, with the
    /// next revision), its copied annotations and minReadySeconds up to date.
    async fn sync_new_annotations(
        &self,
        d: &Deployment,
        rs: ReplicaSet,
        next_revision: i64,
        surge: i32,
    ) -> Result<ReplicaSet, SyncError> {
        let mut ann = rs.metadata.annotations.clone().unwrap_or_default();
        let before = ann.clone();
        for (k, v) in d.metadata.annotations.iter().flatten() {
            if !NOT_COPIED.contains(&k.as_str()) {
                ann.insert(k.clone(), v.clone());
            }
        }
        if revision(&rs) < next_revision {
            ann.insert(REVISION.into(), next_revision.to_string());
        }
        let min_ready = d.spec.as_ref().and_then(|s| s.min_ready_seconds);
        let rs_min_ready = rs.spec.as_ref().and_then(|s| s.min_ready_seconds);
        let rs = if ann != before || min_ready.unwrap_or(0) != rs_min_ready.unwrap_or(0) {
            let (Some(ns), Some(name)) = (
                rs.metadata.namespace.as_deref(),
                rs.metadata.name.as_deref(),
            ) else {
                return Ok(rs);
            };
            let api: Api<ReplicaSet> = Api::namespaced(self.ctx.client.clone(), ns);
            let patch = json!({"metadata": {"annotations": ann}, "spec": {"minReadySeconds": min_ready.unwrap_or(0)}});
            let rs = api
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            self.remember(rs.clone());
            rs
        } else {
            rs
        };
        self.sync_deployment_revision(d, revision(&rs)).await?;
        let _ = surge;
        Ok(rs)
    }

    async fn sync_deployment_revision(&self, d: &Deployment, rev: i64) -> Result<(), SyncError> {
        let current = d
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REVISION));
        if current.map(String::as_str) == Some(rev.to_string().as_str()) {
            return Ok(());
        }
        let (Some(ns), Some(name)) = (d.metadata.namespace.as_deref(), d.metadata.name.as_deref())
        else {
            return Ok(());
        };
        let api: Api<Deployment> = Api::namespaced(self.ctx.client.clone(), ns);
        let patch = json!({"metadata": {"annotations": {REVISION: rev.to_string()}}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    async fn create_new(
        &self,
        d: &Deployment,
        template: &PodTemplateSpec,
        rev: i64,
        replicas: i32,
        surge: i32,
    ) -> Result<ReplicaSet, SyncError> {
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        let dname = d.metadata.name.clone().unwrap_or_default();
        let collisions = d.status.as_ref().and_then(|s| s.collision_count);
        let hash = template_hash(template, collisions);
        let mut t = template.clone();
        let tm = t.metadata.get_or_insert_with(Default::default);
        tm.labels
            .get_or_insert_with(BTreeMap::new)
            .insert(HASH_LABEL.into(), hash.clone());
        let labels = tm.labels.clone();
        let mut selector: LabelSelector = d
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(HASH_LABEL.into(), hash.clone());
        let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let mut ann: BTreeMap<String, String> = d
            .metadata
            .annotations
            .iter()
            .flatten()
            .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        ann.insert(REVISION.into(), rev.to_string());
        ann.insert(DESIRED_REPLICAS.into(), desired.to_string());
        ann.insert(MAX_REPLICAS.into(), (desired + surge).to_string());
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(format!("{dname}-{hash}")),
                namespace: Some(ns.clone()),
                labels,
                annotations: Some(ann),
                owner_references: Some(vec![owner::controller_ref(d)]),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::apps::v1::ReplicaSetSpec {
                replicas: Some(replicas),
                min_ready_seconds: d.spec.as_ref().and_then(|s| s.min_ready_seconds),
                selector,
                template: Some(t),
            }),
            status: None,
        };
        let api: Api<ReplicaSet> = Api::namespaced(self.ctx.client.clone(), &ns);
        match api.create(&PostParams::default(), &rs).await {
            Ok(created) => {
                tracing::info!(deployment = %dname, replicaset = %created.metadata.name.as_deref().unwrap_or_default(), revision = rev, "new replica set");
                self.remember(created.clone());
                self.sync_deployment_revision(d, rev).await?;
                Ok(created)
            }
            Err(e) if matches!(&e, kube::Error::Api(s) if s.code == 409) => {
                // Same name: ours with an equal template is fine; anything else is a hash
                // collision, and the next try hashes with a higher collision count.
                let name = rs.metadata.name.clone().unwrap_or_default();
                let existing = api.get(&name).await?;
                let ours = owner::controller_of(&existing.metadata)
                    .is_some_and(|r| Some(&r.uid) == d.metadata.uid.as_ref());
                if ours
                    && existing
                        .spec
                        .as_ref()
                        .and_then(|s| s.template.as_ref())
                        .is_some_and(|et| equal_ignore_hash(et, template))
                {
                    return Ok(existing);
                }
                let dapi: Api<Deployment> = Api::namespaced(self.ctx.client.clone(), &ns);
                let patch = json!({"status": {"collisionCount": collisions.unwrap_or(0) + 1}});
                dapi.patch_status(&dname, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                Err(SyncError::Other(format!(
                    "replica set name {name} collides; retrying with a new hash"
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes the oldest fully scaled-down ReplicaSets beyond revisionHistoryLimit.
    async fn cleanup(&self, d: &Deployment, olds: &[ReplicaSet]) -> Result<(), SyncError> {
        let limit = d
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10)
            .max(0) as usize;
        let mut idle: Vec<&ReplicaSet> = olds
            .iter()
            .filter(|r| {
                spec_replicas(r) == 0
                    && r.status.as_ref().map(|s| s.replicas).unwrap_or(0) == 0
                    && r.status
                        .as_ref()
                        .and_then(|s| s.observed_generation)
                        .unwrap_or(0)
                        >= r.metadata.generation.unwrap_or(0)
                    && r.metadata.deletion_timestamp.is_none()
            })
            .collect();
        if idle.len() <= limit {
            return Ok(());
        }
        idle.sort_by_key(|r| revision(r));
        let n = idle.len() - limit;
        for r in idle.into_iter().take(n) {
            let (Some(ns), Some(name)) =
                (r.metadata.namespace.as_deref(), r.metadata.name.as_deref())
            else {
                continue;
            };
            tracing::info!(replicaset = %name, "history limit: deleting");
            let api: Api<ReplicaSet> = Api::namespaced(self.ctx.client.clone(), ns);
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(e) if owner::is_not_found(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    async fn set_progressing(
        &self,
        d: &Deployment,
        reason: &str,
        message: &str,
        all: &[ReplicaSet],
    ) -> Result<(), SyncError> {
        let _ = all;
        let mut status = d.status.clone().unwrap_or_default();
        let now = Time(jiff::Timestamp::now());
        let conds = status.conditions.get_or_insert_with(Vec::new);
        conds.retain(|c| c.type_ != "Progressing");
        conds.push(DeploymentCondition {
            type_: "Progressing".into(),
            status: "True".into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_transition_time: Some(now.clone()),
            last_update_time: Some(now),
        });
        self.patch_status(d, &status).await
    }

    async fn patch_status(
        &self,
        d: &Deployment,
        status: &k8s_openapi::api::apps::v1::DeploymentStatus,
    ) -> Result<(), SyncError> {
        let (Some(ns), Some(name)) = (d.metadata.namespace.as_deref(), d.metadata.name.as_deref())
        else {
            return Ok(());
        };
        let api: Api<Deployment> = Api::namespaced(self.ctx.client.clone(), ns);
        let patch = json!({"status": status});
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if owner::is_not_found(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Status and conditions (`syncRolloutStatus`); returns when to check the progress
    /// deadline again.
    async fn write_status(
        &self,
        d: &Deployment,
        new: Option<&ReplicaSet>,
        all: &[ReplicaSet],
        fence: Option<(i32, i32)>,
    ) -> Result<Option<Duration>, SyncError> {
        let (status, again) = compute_status(d, new, all, fence, jiff::Timestamp::now());
        let old = d.status.clone().unwrap_or_default();
        if serde_json::to_value(&old).ok() != serde_json::to_value(&status).ok() {
            self.patch_status(d, &status).await?;
        }
        Ok(again)
    }
}

fn name_of(rs: Option<&ReplicaSet>) -> String {
    rs.and_then(|r| r.metadata.name.clone()).unwrap_or_default()
}

fn rs_template_matches(rs: &ReplicaSet, t: &PodTemplateSpec) -> bool {
    rs.spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .is_some_and(|rt| equal_ignore_hash(rt, t))
}

fn complete(d: &Deployment, new: &ReplicaSet, all: &[ReplicaSet], desired: i32) -> bool {
    let st = |r: &ReplicaSet| r.status.clone().unwrap_or_default();
    let updated = st(new).replicas;
    let replicas: i32 = all.iter().map(|r| st(r).replicas).sum();
    let avail: i32 = all.iter().map(available).sum();
    let _ = d;
    updated == desired && replicas == desired && avail == desired
}

/// The status a Deployment should have, from its ReplicaSets; and when to look again to see
/// whether the progress deadline passed.
pub fn compute_status(
    d: &Deployment,
    new: Option<&ReplicaSet>,
    all: &[ReplicaSet],
    fence: Option<(i32, i32)>,
    now: jiff::Timestamp,
) -> (
    k8s_openapi::api::apps::v1::DeploymentStatus,
    Option<Duration>,
) {
    let spec = d.spec.clone().unwrap_or_default();
    let desired = spec.replicas.unwrap_or(1);
    let st = |r: &ReplicaSet| r.status.clone().unwrap_or_default();
    let old = d.status.clone().unwrap_or_default();
    let mut s = k8s_openapi::api::apps::v1::DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(all.iter().map(|r| st(r).replicas).sum()),
        updated_replicas: Some(new.map(|n| st(n).replicas).unwrap_or(0)),
        ready_replicas: Some(all.iter().map(|r| st(r).ready_replicas.unwrap_or(0)).sum()),
        available_replicas: Some(all.iter().map(available).sum()),
        unavailable_replicas: None,
        collision_count: old.collision_count,
        conditions: old.conditions.clone(),
        terminating_replicas: old.terminating_replicas,
    };
    let avail = s.available_replicas.unwrap_or(0);
    s.unavailable_replicas = Some((desired - avail).max(0));
    let max_unavailable = fence.map(|f| f.1).unwrap_or(0);
    let stamp = Time(now);
    let conds = s.conditions.get_or_insert_with(Vec::new);
    let set = |conds: &mut Vec<DeploymentCondition>,
               type_: &str,
               status: &str,
               reason: &str,
               message: String,
               keep_if_same: bool| {
        if let Some(c) = conds.iter().find(|c| c.type_ == type_)
            && c.status == status
            && c.reason.as_deref() == Some(reason)
            && keep_if_same
        {
            return;
        }
        let transition = conds
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| stamp.clone());
        conds.retain(|c| c.type_ != type_);
        conds.push(DeploymentCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message),
            last_transition_time: Some(transition),
            last_update_time: Some(stamp.clone()),
        });
    };
    if fence.is_some() || d.metadata.deletion_timestamp.is_some() {
        if avail >= desired - max_unavailable {
            set(
                conds,
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
                true,
            );
        } else {
            set(
                conds,
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
                true,
            );
        }
    }
    let mut again = None;
    let new_name = name_of(new);
    if spec.paused == Some(true) {
        set(
            conds,
            "Progressing",
            "Unknown",
            "DeploymentPaused",
            "Deployment is paused".into(),
            true,
        );
    } else if let (Some(deadline), Some(_)) = (spec.progress_deadline_seconds, fence) {
        let was_paused = conds
            .iter()
            .any(|c| c.type_ == "Progressing" && c.reason.as_deref() == Some("DeploymentPaused"));
        let updated = s.updated_replicas.unwrap_or(0);
        let replicas = s.replicas.unwrap_or(0);
        let is_complete = new.is_some()
            && updated == desired
            && replicas == desired
            && avail == desired
            && s.observed_generation >= d.metadata.generation;
        let old_olds = old.replicas.unwrap_or(0) - old.updated_replicas.unwrap_or(0);
        let new_olds = replicas - updated;
        let progressed = updated > old.updated_replicas.unwrap_or(0)
            || new_olds < old_olds
            || s.ready_replicas.unwrap_or(0) > old.ready_replicas.unwrap_or(0)
            || avail > old.available_replicas.unwrap_or(0);
        if was_paused {
            set(
                conds,
                "Progressing",
                "Unknown",
                "DeploymentResumed",
                "Deployment is resumed".into(),
                true,
            );
        }
        if is_complete {
            set(
                conds,
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{new_name}\" has successfully progressed."),
                true,
            );
        } else if progressed || was_paused {
            set(
                conds,
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{new_name}\" is progressing."),
                false,
            );
        } else if let Some(c) = conds.iter().find(|c| c.type_ == "Progressing").cloned() {
            let last = c.last_update_time.as_ref().map(|t| t.0).unwrap_or(now);
            let until = last + jiff::SignedDuration::from_secs(i64::from(deadline));
            if c.reason.as_deref() != Some("ProgressDeadlineExceeded") {
                if now >= until {
                    set(
                        conds,
                        "Progressing",
                        "False",
                        "ProgressDeadlineExceeded",
                        format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                        true,
                    );
                } else {
                    let left = until.duration_since(now).as_secs_f64().max(0.0);
                    again = Some(Duration::from_secs_f64(left) + Duration::from_millis(100));
                }
            }
        } else {
            set(
                conds,
                "Progressing",
                "True",
                "FoundNewReplicaSet",
                format!("Found new replica set \"{new_name}\""),
                true,
            );
        }
    }
    conds.sort_by(|a, b| {
        let order = |t: &str| if t == "Available" { 0 } else { 1 };
        order(&a.type_).cmp(&order(&b.type_))
    });
    // Keep lastUpdateTime of unchanged conditions; compare without it.
    (s, again)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pct(s: &str) -> IntOrString {
        IntOrString::String(s.into())
    }

    #[test]
    fn surge_rounds_up_and_unavailable_rounds_down() {
        // 25% of 10 = 2.5: surge 3, unavailable 2.
        assert_eq!(fenceposts(&pct("25%"), &pct("25%"), 10), Ok((3, 2)));
        // 25% of 1 = 0.25: surge 1, unavailable 0.
        assert_eq!(fenceposts(&pct("25%"), &pct("25%"), 1), Ok((1, 0)));
        assert_eq!(
            fenceposts(&IntOrString::Int(2), &IntOrString::Int(1), 6),
            Ok((2, 1))
        );
    }

    #[test]
    fn zero_surge_and_zero_unavailable_becomes_one_unavailable() {
        assert_eq!(fenceposts(&IntOrString::Int(0), &pct("0%"), 5), Ok((0, 1)));
        // 10% of 3 rounds to 0 on both sides, then the same rule.
        assert_eq!(fenceposts(&pct("0%"), &pct("10%"), 3), Ok((0, 1)));
    }

    #[test]
    fn a_bad_percentage_is_an_error() {
        assert!(scaled_value(&pct("abc"), 10, true).is_err());
    }

    #[test]
    fn the_new_replica_set_grows_by_what_the_surge_leaves_room_for() {
        // 6 desired, surge 2, all old (6): new may start with 2.
        assert_eq!(new_rs_replicas(6, 2, 6, 0), 2);
        // Already at 6 + 2 in total: no growth.
        assert_eq!(new_rs_replicas(6, 2, 8, 2), 2);
        // Never beyond desired.
        assert_eq!(new_rs_replicas(6, 2, 6, 5), 6);
    }

    #[test]
    fn old_pods_go_only_down_to_desired_minus_max_unavailable() {
        // 6 desired, 1 unavailable allowed; 6 old + 2 new (not yet available) = 8.
        // min available 5, 2 new unavailable: 8 - 5 - 2 = 1 old pod may go.
        assert_eq!(old_scale_down_budget(6, 1, 8, 2, 0), 1);
        // Once the new ones are available, 3 may go.
        assert_eq!(old_scale_down_budget(6, 1, 8, 2, 2), 3);
        // With no unavailability allowed and no surge left: none.
        assert_eq!(old_scale_down_budget(6, 0, 6, 0, 0), 0);
    }

    #[test]
    fn the_hash_ignores_the_hash_label_and_uses_the_safe_alphabet() {
        let t: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]}
        }))
        .unwrap();
        let mut t2 = t.clone();
        t2.metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert(HASH_LABEL.into(), "x".into());
        assert_eq!(template_hash(&t, None), template_hash(&t2, None));
        assert!(equal_ignore_hash(&t, &t2));
        assert_ne!(template_hash(&t, None), template_hash(&t, Some(1)));
        let h = template_hash(&t, None);
        assert!(
            h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)),
            "{h}"
        );
    }

    fn rs(name: &str, spec: i32, replicas: i32, avail: i32) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {"name": name, "generation": 1},
            "spec": {"replicas": spec, "selector": {}},
            "status": {"replicas": replicas, "readyReplicas": avail, "availableReplicas": avail, "observedGeneration": 1},
        }))
        .unwrap()
    }

    #[test]
    fn a_finished_rollout_says_new_replica_set_available() {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web", "generation": 2},
            "spec": {"replicas": 3, "selector": {}, "template": {}, "progressDeadlineSeconds": 600},
        }))
        .unwrap();
        let new = rs("web-new", 3, 3, 3);
        let (s, _) = compute_status(
            &d,
            Some(&new),
            std::slice::from_ref(&new),
            Some((1, 0)),
            jiff::Timestamp::now(),
        );
        assert_eq!(s.observed_generation, Some(2));
        assert_eq!(s.updated_replicas, Some(3));
        let p = s
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Progressing")
            .unwrap();
        assert_eq!(p.reason.as_deref(), Some("NewReplicaSetAvailable"));
        assert_eq!(
            p.message.as_deref(),
            Some("ReplicaSet \"web-new\" has successfully progressed.")
        );
        let a = s
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Available")
            .unwrap();
        assert_eq!(a.status, "True");
    }

    #[test]
    fn no_progress_past_the_deadline_is_progress_deadline_exceeded() {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web", "generation": 2},
            "spec": {"replicas": 3, "selector": {}, "template": {}, "progressDeadlineSeconds": 10},
            "status": {"replicas": 3, "updatedReplicas": 1, "readyReplicas": 2, "availableReplicas": 2,
                       "conditions": [{"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
                                       "lastUpdateTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
        }))
        .unwrap();
        let new = rs("web-new", 1, 1, 0);
        let old = rs("web-old", 2, 2, 2);
        let now: jiff::Timestamp = "2026-01-01T00:00:05Z".parse().unwrap();
        let (_, again) = compute_status(
            &d,
            Some(&new),
            &[old.clone(), new.clone()],
            Some((1, 1)),
            now,
        );
        assert!(
            again.is_some(),
            "still within the deadline: look again later"
        );
        let now: jiff::Timestamp = "2026-01-01T00:00:11Z".parse().unwrap();
        let (s, _) = compute_status(&d, Some(&new), &[old, new.clone()], Some((1, 1)), now);
        let p = s
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Progressing")
            .unwrap();
        assert_eq!(
            (p.status.as_str(), p.reason.as_deref()),
            ("False", Some("ProgressDeadlineExceeded"))
        );
    }
}
