//! The pod workers: one task per pod of this node, fed by a watch of the node's pods.
//!
//! A new pod's first pass starts on its watch event, not on the next sync period; passes of
//! different pods run at once, at most `max_parallel` at a time (one pod's CNI ADD, shim start
//! or API calls no longer hold back the others'), while one pod's passes never overlap: its
//! task alone owns its state ([`PodSync`]). Between events a worker looks at its pod again when
//! the pod asks for it (a container being created, a probe due, a back-off over), at the
//! latest after one sync period — the period the single loop used to sync every pod in.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::pods::{Ctx, PodSync, sandbox_id};

/// How long a stopping kubelet waits for passes in flight to end.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// What a pod's worker is to make of its pod.
#[derive(Clone)]
enum Desired {
    /// Adopted after a restart and not seen in the API yet: nothing is done until it is (or
    /// turns out to be gone).
    Unknown,
    /// The pod as the API has it, without its status (the kubelet writes it, never reads it)
    /// and resourceVersion, so the kubelet's own status writes do not wake the worker.
    Pod(Arc<Pod>),
    /// Gone from the API: whatever of it runs here is removed, then the worker ends.
    Gone,
}

struct Worker {
    tx: watch::Sender<Desired>,
    has_sandbox: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

/// The node's pods, each with its worker.
pub struct PodWorkers {
    ctx: Arc<Ctx>,
    workers: HashMap<String, Worker>,
    /// Workers told their pod is gone, still removing it.
    leaving: Vec<JoinHandle<()>>,
    /// Passes running at once.
    limit: Arc<Semaphore>,
    /// Pods of the watch's current (re)list.
    listing: HashSet<String>,
    /// A full list has been seen: adopted pods missing from it were removed.
    listed: bool,
    gc_done: bool,
    /// The burstable tier's CPU shares as last written.
    tier_shares: Option<u64>,
}

impl PodWorkers {
    pub(crate) fn new(ctx: Arc<Ctx>, max_parallel: usize) -> PodWorkers {
        PodWorkers {
            ctx,
            workers: HashMap::new(),
            leaving: Vec::new(),
            limit: Arc::new(Semaphore::new(max_parallel.max(1))),
            listing: HashSet::new(),
            listed: false,
            gc_done: false,
            tier_shares: None,
        }
    }

    /// Adopts the pods an earlier run left (see [`Ctx::adopt`]): each gets its worker, which
    /// waits for its pod to show up in the watch.
    pub async fn adopt(&mut self) {
        for sync in self.ctx.adopt().await {
            let uid = sync.uid().to_string();
            self.spawn(&uid, sync, Desired::Unknown);
        }
        self.report();
    }

    /// One event of the watch of the node's pods.
    pub async fn handle(&mut self, ev: watcher::Event<Pod>) {
        match ev {
            watcher::Event::Apply(p) => self.apply(p),
            watcher::Event::Delete(p) => {
                if let Some(uid) = p.metadata.uid.as_deref() {
                    self.gone(uid);
                }
            }
            watcher::Event::Init => self.listing.clear(),
            watcher::Event::InitApply(p) => {
                if let Some(uid) = p.metadata.uid.clone() {
                    self.listing.insert(uid);
                }
                self.apply(p);
            }
            watcher::Event::InitDone => {
                // Pods that went while the watch was down, and adopted pods the API no longer
                // has.
                let gone: Vec<String> = self
                    .workers
                    .keys()
                    .filter(|u| !self.listing.contains(*u))
                    .cloned()
                    .collect();
                for uid in gone {
                    self.gone(&uid);
                }
                self.listing.clear();
                self.listed = true;
                self.tick().await;
            }
        }
    }

    /// A pod added or changed.
    fn apply(&mut self, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let ours = pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
            == Some(self.ctx.cfg.node_name.as_str());
        if !ours {
            self.gone(&uid);
            return;
        }
        let mut pod = pod;
        pod.status = None;
        pod.metadata.resource_version = None;
        pod.metadata.managed_fields = None;
        if let Some(w) = self.workers.get(&uid) {
            w.tx.send_if_modified(|d| match d {
                Desired::Pod(old) if **old == pod => false,
                _ => {
                    *d = Desired::Pod(Arc::new(pod));
                    true
                }
            });
            return;
        }
        let sync = PodSync::new(self.ctx.clone(), &uid);
        // The tiers' shares count the new pod before its cgroup is made.
        let pod = Arc::new(pod);
        let mut pods = self.pods();
        pods.push(pod.clone());
        self.ctx
            .set_tier_shares(pods.iter().map(|p| &**p), &mut self.tier_shares);
        self.spawn(&uid, sync, Desired::Pod(pod));
    }

    /// The pods the workers have, as the API gave them.
    fn pods(&self) -> Vec<Arc<Pod>> {
        self.workers
            .values()
            .filter_map(|w| match &*w.tx.borrow() {
                Desired::Pod(p) => Some(p.clone()),
                _ => None,
            })
            .collect()
    }

    fn spawn(&mut self, uid: &str, sync: PodSync, first: Desired) {
        let (tx, rx) = watch::channel(first);
        let has_sandbox = Arc::new(AtomicBool::new(sync.has_sandbox()));
        let task = tokio::spawn(work(sync, rx, self.limit.clone(), has_sandbox.clone()));
        self.workers.insert(
            uid.to_string(),
            Worker {
                tx,
                has_sandbox,
                task,
            },
        );
    }

    /// Pod `uid` is gone from the API: its worker removes what is left of it and ends.
    fn gone(&mut self, uid: &str) {
        let Some(w) = self.workers.remove(uid) else {
            return;
        };
        let _ = w.tx.send(Desired::Gone);
        self.leaving.push(w.task);
        let pods = self.pods();
        self.ctx
            .set_tier_shares(pods.iter().map(|p| &**p), &mut self.tier_shares);
    }

    /// Periodic upkeep: CNI GC once every pod is known and no removal is in flight, the
    /// running-pods gauge.
    pub async fn tick(&mut self) {
        self.leaving.retain(|t| !t.is_finished());
        for (uid, w) in &self.workers {
            if w.task.is_finished() {
                tracing::error!(uid = %uid, "a pod worker ended unexpectedly");
            }
        }
        if self.listed && !self.gc_done && self.leaving.is_empty() {
            // Every pod the API has keeps its attachment, with a sandbox yet or not: a pass
            // may be in the middle of its ADD.
            let valid = self.workers.keys().map(|u| sandbox_id(u)).collect();
            match self.ctx.net.gc(valid).await {
                Ok(()) => self.gc_done = true,
                Err(e) => tracing::debug!(error = %e, "CNI GC"),
            }
        }
        self.report();
    }

    fn report(&self) {
        let running = self
            .workers
            .values()
            .filter(|w| w.has_sandbox.load(Ordering::Relaxed))
            .count();
        self.ctx.metrics.set(
            "kubelet_running_pods",
            "Pods with a sandbox on this node",
            &[],
            running as f64,
        );
    }

    /// Lets the passes in flight end (bounded), then stops every worker. Pods keep running.
    pub async fn shutdown(self) {
        let mut tasks = self.leaving;
        for (_, w) in self.workers {
            drop(w.tx);
            tasks.push(w.task);
        }
        let all = futures::future::join_all(tasks);
        if tokio::time::timeout(SHUTDOWN_WAIT, all).await.is_err() {
            tracing::warn!("pod passes still running at shutdown were left");
        }
    }
}

/// A pod's worker: a pass whenever its pod changes or the pass before asked to be followed.
async fn work(
    mut sync: PodSync,
    mut rx: watch::Receiver<Desired>,
    limit: Arc<Semaphore>,
    has_sandbox: Arc<AtomicBool>,
) {
    loop {
        let desired = rx.borrow_and_update().clone();
        let next = match desired {
            Desired::Unknown => None,
            Desired::Gone => {
                // Until its teardown succeeds: a failed one (CNI DEL, a container that will
                // not stop) keeps the sandbox and is tried again after a back-off.
                loop {
                    let retry = {
                        let Ok(_permit) = limit.acquire().await else {
                            return;
                        };
                        sync.remove().await
                    };
                    let Some(delay) = retry else {
                        has_sandbox.store(false, Ordering::Relaxed);
                        return;
                    };
                    tokio::time::sleep(delay).await;
                }
            }
            Desired::Pod(pod) => {
                let Ok(permit) = limit.acquire().await else {
                    return;
                };
                let next = sync.sync(&pod).await;
                drop(permit);
                has_sandbox.store(sync.has_sandbox(), Ordering::Relaxed);
                Some(Instant::now() + next)
            }
        };
        let wait = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        // A container start the runtime finishes in the background ends: at once.
        let wake = sync.wake();
        let woken = async {
            match wake {
                Some(w) => w.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = woken => {}
            changed = rx.changed() => {
                // The kubelet is stopping: the pod keeps running as it is.
                if changed.is_err() {
                    return;
                }
            }
            () = wait => {}
        }
    }
}
