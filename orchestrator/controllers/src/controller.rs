//! What every controller is made of, so that a new one is a type, its sync and one
//! [`Manager::register`](crate::manager::Manager::register): the [`Reconciler`] contract (its
//! name, queue, caches, handlers and sync), the handler for the kind it manages
//! ([`owner_handler`]), the handler for the pods it creates ([`pod_owner_handler`]) and the start
//! of a sync ([`Target`]).

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use trellis_api::LabelSelector;

use crate::SyncError;
use crate::expectations::Expectations;
use crate::informer::{Change, Handler, Informer, Kind, Synced, handler};
use crate::manager::Watches;
use crate::owner;
use crate::workqueue::WorkQueue;

/// A controller the manager runs: watch events put keys on its queue (through the handlers it
/// adds), and workers sync one key at a time.
pub trait Reconciler: Clone + Send + Sync + 'static {
    /// Its upstream name: the `controller` label of its metrics and logs.
    fn name(&self) -> &'static str;

    /// The queue its handlers fill and its workers drain.
    fn queue(&self) -> &WorkQueue;

    /// The caches its sync reads. No sync runs before every one of them has held a complete
    /// list: deciding from a cache that is still filling (an empty pod cache) would make a new
    /// leader create every replica again.
    fn caches(&self) -> Vec<Synced>;

    /// Adds the handlers that map watch events to its keys.
    fn handlers(&self, watches: &mut Watches);

    /// One sync of `key`, from the caches: when to look again (`Ok(Some)`), done (`Ok(None)`),
    /// or failed (retried with back-off).
    fn sync(&self, key: &str) -> impl Future<Output = Result<Option<Duration>, SyncError>> + Send;
}

/// What a deletion of a managed object does to its controller.
pub enum OnDelete {
    /// Sync its key once more (the sync cleans up after an object that is gone).
    Sync,
    /// Forget its expectations: nothing it expected is coming any more (its pods go with the
    /// garbage collector).
    Forget(Expectations),
    /// Nothing.
    Ignore,
}

/// The handler for the kind a controller manages: a change queues the object's key, a
/// (re)list queues every cached object (so a missed event still converges), a deletion does
/// what `on_delete` says.
pub fn owner_handler<K: Kind>(
    queue: &WorkQueue,
    cache: &Informer<K>,
    on_delete: OnDelete,
) -> Handler<K> {
    let (queue, cache) = (queue.clone(), cache.clone());
    handler(move |ch: Change<'_, K>| match ch {
        Change::Applied(o) => queue.add(owner::key(o.meta())),
        Change::Deleted(o) => match &on_delete {
            OnDelete::Sync => queue.add(owner::key(o.meta())),
            OnDelete::Forget(e) => e.forget(&owner::key(o.meta())),
            OnDelete::Ignore => {}
        },
        Change::Synced => {
            for o in cache.state() {
                queue.add(owner::key(o.meta()));
            }
        }
    })
}

/// Owners that adopt orphans: their cache and how each selects pods.
pub struct Adopters<K: Kind> {
    pub cache: Informer<K>,
    pub selector: fn(&K) -> LabelSelector,
}

/// The handler for the pods a controller of kind `K` creates. A pod whose controllerRef names a
/// `K` queues that owner, and tells the owner's expectations of a creation (the first time the
/// pod is seen) and of a deletion (deleted, or marked for deletion). With `adopters`, a pod
/// controlled by nobody queues every owner in its namespace that selects it (which may adopt
/// it).
pub fn pod_owner_handler<K: Kind>(
    queue: &WorkQueue,
    expectations: &Expectations,
    adopters: Option<Adopters<K>>,
) -> Handler<Pod> {
    let (queue, expectations) = (queue.clone(), expectations.clone());
    // Pods already seen, so a creation is counted once however often the pod changes (and an
    // orphan adopted later is not counted as one).
    let seen: Mutex<HashSet<String>> = Mutex::default();
    handler(move |ch: Change<'_, Pod>| {
        let (p, deleted) = match ch {
            Change::Applied(p) => (p, false),
            Change::Deleted(p) => (p, true),
            Change::Synced => return,
        };
        let uid = p.metadata.uid.clone().unwrap_or_default();
        let first = {
            let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            if deleted {
                seen.remove(&uid);
                false
            } else {
                seen.insert(uid.clone())
            }
        };
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        match owner::controller_of(&p.metadata) {
            Some(r) if r.kind == K::kind(&()) => {
                let key = format!("{ns}/{}", r.name);
                if first {
                    expectations.creation_observed(&key);
                }
                if deleted || p.metadata.deletion_timestamp.is_some() {
                    expectations.deletion_observed(&key, &uid);
                }
                queue.add(key);
            }
            Some(_) => {}
            None if !deleted => {
                let Some(a) = &adopters else { return };
                let labels = owner::labels(&p.metadata);
                for o in a.cache.state() {
                    if o.meta().namespace.as_deref() == Some(&ns)
                        && (a.selector)(&o).matches(&labels)
                    {
                        queue.add(owner::key(o.meta()));
                    }
                }
            }
            None => {}
        }
    })
}

/// What a sync of a namespaced managed object starts from.
pub struct Target<K> {
    pub obj: Arc<K>,
    pub key: String,
    pub ns: String,
    pub name: String,
    pub uid: String,
    /// Marked for deletion: it adopts nothing and creates nothing any more.
    pub deleting: bool,
}

impl<K: Kind> Target<K> {
    /// The object `key` from its cache, or `None` when there is nothing to sync: it is gone
    /// (then its `expectations`, if it has any, are forgotten: nothing it expected is coming)
    /// or it lacks a namespace or a name.
    pub fn get(
        cache: &Informer<K>,
        expectations: Option<&Expectations>,
        key: &str,
    ) -> Option<Target<K>> {
        let Some(obj) = cache.get(key) else {
            if let Some(e) = expectations {
                e.forget(key);
            }
            return None;
        };
        let meta = obj.meta();
        let (Some(ns), Some(name)) = (meta.namespace.clone(), meta.name.clone()) else {
            return None;
        };
        Some(Target {
            key: key.to_string(),
            ns,
            name,
            uid: meta.uid.clone().unwrap_or_default(),
            deleting: meta.deletion_timestamp.is_some(),
            obj,
        })
    }
}
