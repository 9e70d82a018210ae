//! The garbage collector: objects whose owners are gone are deleted (background
//! propagation), owners deleted with `propagationPolicy: Foreground` (the API server records
//! the `foregroundDeletion` finalizer) go only after their blocking dependents are gone, and
//! owners deleted with `Orphan` (the `orphan` finalizer) first have their dependents' references
//! removed. An owner missing from the caches is looked up live before anything is deleted: a
//! watch that is behind must never cost a dependent its life.
//!
//! Level-triggered: every change wakes one scan of all cached objects (batched), plus a scan
//! every 30 s.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, Patch, PatchParams, PropagationPolicy};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::sync::{Notify, watch};

use crate::Ctx;

pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";

/// The kinds the collector watches: (group, version, kind, plural, namespaced).
pub const KINDS: &[(&str, &str, &str, &str, bool)] = &[
    ("", "v1", "Pod", "pods", true),
    ("", "v1", "Service", "services", true),
    ("", "v1", "ConfigMap", "configmaps", true),
    ("", "v1", "Secret", "secrets", true),
    ("", "v1", "Node", "nodes", false),
    ("apps", "v1", "ReplicaSet", "replicasets", true),
    ("apps", "v1", "Deployment", "deployments", true),
    ("apps", "v1", "DaemonSet", "daemonsets", true),
    ("apps", "v1", "StatefulSet", "statefulsets", true),
    (
        "apps",
        "v1",
        "ControllerRevision",
        "controllerrevisions",
        true,
    ),
    ("batch", "v1", "Job", "jobs", true),
    ("batch", "v1", "CronJob", "cronjobs", true),
    (
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        true,
    ),
    ("coordination.k8s.io", "v1", "Lease", "leases", true),
];

fn resource(i: usize) -> (ApiResource, bool) {
    let (g, v, k, plural, namespaced) = KINDS[i];
    let mut ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(g, v, k), plural);
    ar.plural = plural.into();
    (ar, namespaced)
}

fn kind_index(api_version: &str, kind: &str) -> Option<usize> {
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    KINDS
        .iter()
        .position(|(g, v, k, _, _)| *g == group && *v == version && *k == kind)
}

/// How the collector sees one owner of a dependent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerState {
    /// Exists and is not waiting for its dependents.
    Solid,
    /// Being deleted in the foreground: its dependents go first.
    WaitingForDependents,
    /// Gone (or replaced by another object of the same name).
    Dangling,
}

/// What to do with a dependent, from its owners' states (upstream's `attemptToDeleteItem`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Drop the references to these owners (some solid owner remains).
    RemoveRefs(Vec<String>),
    Delete(Propagation),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    Background,
    Foreground,
    Orphan,
}

/// The decision for one dependent: with a solid owner it stays (losing its references to
/// dangling or waiting owners); without one it is deleted — in the foreground when an owner
/// waits for it and it has dependents of its own, else as its own finalizers ask.
pub fn verdict(
    owners: &[(String, OwnerState)],
    has_dependents: bool,
    finalizers: &[String],
) -> Verdict {
    if owners.is_empty() {
        return Verdict::Keep;
    }
    let solid = owners.iter().any(|(_, s)| *s == OwnerState::Solid);
    let waiting = owners
        .iter()
        .any(|(_, s)| *s == OwnerState::WaitingForDependents);
    if solid {
        let drop: Vec<String> = owners
            .iter()
            .filter(|(_, s)| *s != OwnerState::Solid)
            .map(|(u, _)| u.clone())
            .collect();
        return if drop.is_empty() {
            Verdict::Keep
        } else {
            Verdict::RemoveRefs(drop)
        };
    }
    if waiting && has_dependents {
        return Verdict::Delete(Propagation::Foreground);
    }
    Verdict::Delete(if finalizers.iter().any(|f| f == ORPHAN) {
        Propagation::Orphan
    } else if finalizers.iter().any(|f| f == FOREGROUND) {
        Propagation::Foreground
    } else {
        Propagation::Background
    })
}

struct Obj {
    kind: usize,
    obj: Arc<DynamicObject>,
}

/// Runs the collector until `stop` turns true.
pub async fn run(ctx: Ctx, mut stop: watch::Receiver<bool>) {
    let changed = Arc::new(Notify::new());
    let mut stores: Vec<Store<DynamicObject>> = Vec::new();
    let mut synced: Vec<watch::Receiver<bool>> = Vec::new();
    let mut watches = AbortOnDrop(Vec::new());
    for i in 0..KINDS.len() {
        let (ar, _) = resource(i);
        let writer = reflector::store::Writer::new(ar.clone());
        stores.push(writer.as_reader());
        let (tx, rx) = watch::channel(false);
        synced.push(rx);
        let api: Api<DynamicObject> = Api::all_with(ctx.client.clone(), &ar);
        let stream = crate::informer::watch_stream(
            writer,
            api,
            trellis_api::cluster::WatchBackoff::default(),
        );
        let changed = changed.clone();
        let mut stop = stop.clone();
        watches.0.push(tokio::spawn(async move {
            futures::pin_mut!(stream);
            loop {
                let ev = tokio::select! {
                    ev = stream.next() => ev,
                    _ = stop.wait_for(|s| *s) => break,
                };
                match ev {
                    Some(Ok(watcher::Event::InitDone)) => {
                        let _ = tx.send(true);
                        changed.notify_one();
                    }
                    Some(Ok(_)) => changed.notify_one(),
                    Some(Err(e)) => tracing::debug!(error = %e, "gc watch error; retrying"),
                    None => break,
                }
            }
        }));
    }
    // Every kind listed once (bounded: a kind the server does not serve must not stop us;
    // owners missing from the caches are looked up live anyway).
    let all = futures::future::join_all(synced.iter().cloned().map(|mut rx| async move {
        let _ = rx.wait_for(|s| *s).await;
    }));
    if tokio::time::timeout(Duration::from_secs(10), all)
        .await
        .is_err()
    {
        let missing: Vec<&str> = synced
            .iter()
            .enumerate()
            .filter(|(_, rx)| !*rx.borrow())
            .map(|(i, _)| KINDS[i].3)
            .collect();
        tracing::warn!(
            ?missing,
            "gc: some kinds could not be listed; collecting without them"
        );
    }
    let mut gc = Collector {
        ctx,
        acted: HashMap::new(),
    };
    loop {
        // An owner's finalizer goes only when every kind's cache is complete: a dependent
        // not listed yet must not look absent.
        let complete = synced.iter().all(|rx| *rx.borrow());
        gc.scan(&stores, complete).await;
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
        // Batch a burst of changes into one scan.
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// Watch tasks that end with the collector (dropped when leadership is lost).
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

struct Collector {
    ctx: Ctx,
    /// What was acted on recently (uid → when): the caches lag behind our own writes.
    acted: HashMap<String, Instant>,
}

impl Collector {
    fn api(&self, kind: usize, ns: Option<&str>) -> Api<DynamicObject> {
        let (ar, namespaced) = resource(kind);
        match (namespaced, ns) {
            (true, Some(ns)) => Api::namespaced_with(self.ctx.client.clone(), ns, &ar),
            _ => Api::all_with(self.ctx.client.clone(), &ar),
        }
    }

    fn recently(&mut self, uid: &str) -> bool {
        self.acted
            .get(uid)
            .is_some_and(|t| t.elapsed() < Duration::from_secs(5))
    }

    fn mark(&mut self, uid: &str) {
        self.acted.insert(uid.to_string(), Instant::now());
    }

    async fn scan(&mut self, stores: &[Store<DynamicObject>], complete: bool) {
        self.acted
            .retain(|_, t| t.elapsed() < Duration::from_secs(60));
        let mut by_uid: HashMap<String, Obj> = HashMap::new();
        for (kind, s) in stores.iter().enumerate() {
            for o in s.state() {
                if let Some(uid) = o.metadata.uid.clone() {
                    by_uid.insert(uid, Obj { kind, obj: o });
                }
            }
        }
        // owner uid → its dependents' uids
        let mut dependents: HashMap<String, Vec<String>> = HashMap::new();
        for (uid, o) in &by_uid {
            for r in o.obj.owner_references() {
                dependents
                    .entry(r.uid.clone())
                    .or_default()
                    .push(uid.clone());
            }
        }
        // Owners being deleted: orphan and foreground finalizers.
        let deleting: Vec<String> = by_uid
            .iter()
            .filter(|(_, o)| o.obj.metadata.deletion_timestamp.is_some())
            .map(|(u, _)| u.clone())
            .collect();
        for uid in deleting {
            let Some(o) = by_uid.get(&uid) else { continue };
            let fins = o.obj.finalizers().to_vec();
            let deps = dependents.get(&uid).cloned().unwrap_or_default();
            if !complete {
                continue;
            }
            if fins.iter().any(|f| f == ORPHAN) && !self.recently(&format!("orphan/{uid}")) {
                self.orphan(&by_uid, o, &deps).await;
                self.mark(&format!("orphan/{uid}"));
            } else if fins.iter().any(|f| f == FOREGROUND) && !fins.iter().any(|f| f == ORPHAN) {
                let blocking = deps.iter().any(|d| {
                    by_uid.get(d).is_some_and(|dep| {
                        dep.obj
                            .owner_references()
                            .iter()
                            .any(|r| r.uid == uid && r.block_owner_deletion == Some(true))
                    })
                });
                if !blocking && !self.recently(&format!("fg/{uid}")) {
                    self.remove_finalizer(o, FOREGROUND).await;
                    self.mark(&format!("fg/{uid}"));
                }
            }
        }
        // Dependents whose owners are gone or waiting.
        let candidates: Vec<String> = by_uid
            .iter()
            .filter(|(_, o)| {
                !o.obj.owner_references().is_empty() && o.obj.metadata.deletion_timestamp.is_none()
            })
            .map(|(u, _)| u.clone())
            .collect();
        for uid in candidates {
            if self.recently(&uid) {
                continue;
            }
            let Some(o) = by_uid.get(&uid) else { continue };
            let ns = o.obj.metadata.namespace.clone();
            let mut owners = Vec::new();
            for r in o.obj.owner_references() {
                owners.push((
                    r.uid.clone(),
                    self.owner_state(&by_uid, r, ns.as_deref()).await,
                ));
            }
            let has_deps = dependents.get(&uid).is_some_and(|d| !d.is_empty());
            match verdict(&owners, has_deps, o.obj.finalizers()) {
                Verdict::Keep => {}
                Verdict::RemoveRefs(gone) => {
                    self.mark(&uid);
                    let refs: Vec<OwnerReference> = o
                        .obj
                        .owner_references()
                        .iter()
                        .filter(|r| !gone.contains(&r.uid))
                        .cloned()
                        .collect();
                    self.set_refs(o, refs).await;
                }
                Verdict::Delete(p) => {
                    self.mark(&uid);
                    self.delete(o, p).await;
                }
            }
        }
    }

    async fn owner_state(
        &self,
        by_uid: &HashMap<String, Obj>,
        r: &OwnerReference,
        ns: Option<&str>,
    ) -> OwnerState {
        let of = |o: &DynamicObject| {
            if o.metadata.deletion_timestamp.is_some()
                && o.finalizers().iter().any(|f| f == FOREGROUND)
            {
                OwnerState::WaitingForDependents
            } else {
                OwnerState::Solid
            }
        };
        if let Some(o) = by_uid.get(&r.uid) {
            return of(&o.obj);
        }
        // Not cached: ask the API server before calling it gone.
        let Some(kind) = kind_index(&r.api_version, &r.kind) else {
            // A kind we do not know: never delete on its account.
            return OwnerState::Solid;
        };
        let (_, namespaced) = resource(kind);
        let api = self.api(kind, if namespaced { ns } else { None });
        match api.get_opt(&r.name).await {
            Ok(Some(o)) if o.metadata.uid.as_deref() == Some(r.uid.as_str()) => of(&o),
            Ok(_) => OwnerState::Dangling,
            Err(e) => {
                tracing::debug!(error = %e, owner = %r.name, "owner lookup failed; keeping the dependent");
                OwnerState::Solid
            }
        }
    }

    async fn orphan(&mut self, by_uid: &HashMap<String, Obj>, owner: &Obj, deps: &[String]) {
        let owner_uid = owner.obj.metadata.uid.clone().unwrap_or_default();
        for d in deps {
            let Some(dep) = by_uid.get(d) else { continue };
            let refs: Vec<OwnerReference> = dep
                .obj
                .owner_references()
                .iter()
                .filter(|r| r.uid != owner_uid)
                .cloned()
                .collect();
            if !self.set_refs(dep, refs).await {
                return;
            }
        }
        self.remove_finalizer(owner, ORPHAN).await;
    }

    async fn set_refs(&self, o: &Obj, refs: Vec<OwnerReference>) -> bool {
        let api = self.api(o.kind, o.obj.metadata.namespace.as_deref());
        let patch = json!({"metadata": {
            "ownerReferences": refs,
            "resourceVersion": o.obj.metadata.resource_version,
        }});
        match api
            .patch(
                &o.obj.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => true,
            Err(kube::Error::Api(s)) if s.code == 404 => true,
            Err(e) => {
                tracing::warn!(error = %e, object = %o.obj.name_any(), "gc: updating owner references");
                false
            }
        }
    }

    async fn remove_finalizer(&self, o: &Obj, finalizer: &str) {
        let api = self.api(o.kind, o.obj.metadata.namespace.as_deref());
        let rest: Vec<&String> = o
            .obj
            .finalizers()
            .iter()
            .filter(|f| *f != finalizer)
            .collect();
        let patch = json!({"metadata": {
            "finalizers": if rest.is_empty() { serde_json::Value::Null } else { json!(rest) },
            "resourceVersion": o.obj.metadata.resource_version,
        }});
        tracing::info!(object = %o.obj.name_any(), finalizer, "gc: dependents done, removing finalizer");
        if let Err(e) = api
            .patch(
                &o.obj.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            tracing::debug!(error = %e, "gc: removing finalizer");
        }
    }

    async fn delete(&self, o: &Obj, p: Propagation) {
        let api = self.api(o.kind, o.obj.metadata.namespace.as_deref());
        let dp = DeleteParams {
            propagation_policy: Some(match p {
                Propagation::Background => PropagationPolicy::Background,
                Propagation::Foreground => PropagationPolicy::Foreground,
                Propagation::Orphan => PropagationPolicy::Orphan,
            }),
            preconditions: Some(kube::api::Preconditions {
                uid: o.obj.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        tracing::info!(kind = KINDS[o.kind].2, object = %o.obj.name_any(), propagation = ?p, "gc: deleting");
        self.ctx.metrics.inc(
            "trellis_gc_deletions_total",
            "Objects the garbage collector deleted.",
            &[("kind", KINDS[o.kind].2)],
            1.0,
        );
        match api.delete(&o.obj.name_any(), &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => tracing::warn!(error = %e, "gc: delete"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OwnerState::*;

    fn o(v: &[(&str, OwnerState)]) -> Vec<(String, OwnerState)> {
        v.iter().map(|(u, s)| (u.to_string(), *s)).collect()
    }

    #[test]
    fn a_dependent_with_a_living_owner_stays_and_forgets_the_gone_ones() {
        assert_eq!(verdict(&o(&[("a", Solid)]), false, &[]), Verdict::Keep);
        assert_eq!(
            verdict(
                &o(&[("a", Solid), ("b", Dangling), ("c", WaitingForDependents)]),
                false,
                &[]
            ),
            Verdict::RemoveRefs(vec!["b".into(), "c".into()])
        );
    }

    #[test]
    fn a_dependent_whose_owners_are_all_gone_is_deleted_in_the_background() {
        assert_eq!(
            verdict(&o(&[("a", Dangling)]), true, &[]),
            Verdict::Delete(Propagation::Background)
        );
    }

    #[test]
    fn an_owner_waiting_in_the_foreground_makes_dependents_with_dependents_go_in_the_foreground() {
        assert_eq!(
            verdict(&o(&[("a", WaitingForDependents)]), true, &[]),
            Verdict::Delete(Propagation::Foreground)
        );
        assert_eq!(
            verdict(&o(&[("a", WaitingForDependents)]), false, &[]),
            Verdict::Delete(Propagation::Background)
        );
    }

    #[test]
    fn the_dependents_own_finalizers_pick_the_propagation_otherwise() {
        assert_eq!(
            verdict(&o(&[("a", Dangling)]), false, &[ORPHAN.to_string()]),
            Verdict::Delete(Propagation::Orphan)
        );
    }

    #[test]
    fn owner_kinds_are_found_by_api_version_and_kind() {
        assert_eq!(
            kind_index("apps/v1", "ReplicaSet").map(|i| KINDS[i].3),
            Some("replicasets")
        );
        assert_eq!(kind_index("v1", "Pod").map(|i| KINDS[i].3), Some("pods"));
        assert_eq!(kind_index("example.com/v1", "Widget"), None);
    }
}
