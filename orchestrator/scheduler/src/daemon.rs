//! The scheduler's loop: watches feed the cache and the queue (also on a standby, so a new
//! leader starts with a warm cache); the leader pops a pod, filters and scores the nodes,
//! assumes the pod onto the best one and binds it in the background, so the next pod already
//! sees the last one's requests.
//!
//! Everything that writes (bindings, conditions, events) runs inside [`lead`]'s future: when
//! leadership is lost that future is dropped, which aborts the writes in flight before another
//! scheduler can take the lease.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinSet;
use trellis_daemon::{Health, Metrics};

use crate::bind::{self, BindError, SCHEDULER_NAME};
use crate::cache::{Cache, NodeInfo, key};
use crate::filter::{self, Diagnosis, Prepared};
use crate::queue::Queue;
use crate::score;

/// The cluster as the scheduler sees it, shared by the watches and the loop.
#[derive(Default)]
pub struct State {
    pub cache: Cache,
    pub queue: Queue,
    pods_synced: bool,
    nodes_synced: bool,
}

pub type Shared = Arc<Mutex<State>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether this scheduler is the one to place the pod.
pub fn ours(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.scheduler_name.as_deref())
        .is_none_or(|n| n.is_empty() || n == SCHEDULER_NAME)
}

/// A pod with scheduling gates waits until they are all removed (upstream's SchedulingGates).
fn gated(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.scheduling_gates.as_ref())
        .is_some_and(|g| !g.is_empty())
}

fn finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn bound(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty())
}

impl State {
    /// A pod added or changed.
    pub fn apply_pod(&mut self, pod: Pod) {
        let k = key(&pod);
        if finished(&pod) {
            self.delete_pod(&k);
        } else if bound(&pod) {
            self.queue.remove(&k);
            self.cache.set_bound_pod(pod);
        } else if ours(&pod) && pod.metadata.deletion_timestamp.is_none() && !gated(&pod) {
            // While its binding is in flight the pod is assumed: the watch still shows it
            // unbound, and it must not go back into the queue.
            if !self.cache.is_assumed(&k) {
                self.queue.upsert(pod);
            }
        } else {
            self.queue.remove(&k);
        }
    }

    /// A pod deleted (or finished): its room is free, so waiting pods try again.
    pub fn delete_pod(&mut self, k: &str) {
        self.queue.remove(k);
        if self.cache.contains(k) {
            self.cache.remove_pod(k);
            self.queue.move_all();
        }
    }

    /// A node added or changed in what scheduling looks at.
    pub fn apply_node(&mut self, node: Node) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let relevant = match self.cache.node(&name) {
            None => true,
            Some(old) => {
                let o = &old.node;
                o.metadata.labels != node.metadata.labels
                    || o.spec != node.spec
                    || o.status.as_ref().map(|s| &s.allocatable)
                        != node.status.as_ref().map(|s| &s.allocatable)
            }
        };
        self.cache.set_node(node);
        if relevant {
            self.queue.move_all();
        }
    }

    pub fn ready(&self) -> bool {
        self.pods_synced && self.nodes_synced
    }
}

/// Keeps `state` filled from watches of pods and nodes, and pokes `wake` on every change.
pub fn watch(client: kube::Client, state: Shared, wake: Arc<Notify>) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    let (s, w) = (state.clone(), wake.clone());
    let pods = watcher::watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .backoff(trellis_api::cluster::WatchBackoff::default());
    tasks.spawn(async move {
        futures::pin_mut!(pods);
        let mut seen: HashSet<String> = HashSet::new();
        while let Some(ev) = pods.next().await {
            match ev {
                Ok(Event::Apply(p)) => lock(&s).apply_pod(p),
                Ok(Event::Delete(p)) => lock(&s).delete_pod(&key(&p)),
                Ok(Event::Init) => seen.clear(),
                Ok(Event::InitApply(p)) => {
                    seen.insert(key(&p));
                    lock(&s).apply_pod(p);
                }
                Ok(Event::InitDone) => {
                    let mut st = lock(&s);
                    // Pods that went away while the watch was down.
                    st.queue.retain_keys(&seen);
                    st.cache.retain_pods(&seen);
                    st.pods_synced = true;
                    seen.clear();
                }
                Err(e) => tracing::warn!(error = %e, "pod watch error; retrying"),
            }
            w.notify_one();
        }
    });
    let nodes = watcher::watcher(Api::<Node>::all(client), watcher::Config::default())
        .backoff(trellis_api::cluster::WatchBackoff::default());
    tasks.spawn(async move {
        futures::pin_mut!(nodes);
        let mut seen: HashSet<String> = HashSet::new();
        while let Some(ev) = nodes.next().await {
            match ev {
                Ok(Event::Apply(n)) => lock(&state).apply_node(n),
                Ok(Event::Delete(n)) => lock(&state)
                    .cache
                    .remove_node(n.metadata.name.as_deref().unwrap_or_default()),
                Ok(Event::Init) => seen.clear(),
                Ok(Event::InitApply(n)) => {
                    seen.insert(n.metadata.name.clone().unwrap_or_default());
                    lock(&state).apply_node(n);
                }
                Ok(Event::InitDone) => {
                    let mut st = lock(&state);
                    let gone: Vec<String> = st
                        .cache
                        .nodes()
                        .map(|n| n.name().to_string())
                        .filter(|n| !seen.contains(n))
                        .collect();
                    for n in gone {
                        st.cache.remove_node(&n);
                    }
                    st.nodes_synced = true;
                    seen.clear();
                }
                Err(e) => tracing::warn!(error = %e, "node watch error; retrying"),
            }
            wake.notify_one();
        }
    });
    tasks
}

/// The outcome of filtering and scoring one pod.
pub enum Decision {
    Node(String),
    Unschedulable(Diagnosis),
}

/// A small xorshift for breaking ties among equally scored nodes (upstream picks at random).
struct Ties(u64);

impl Ties {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Filters every node, scores the feasible ones, and picks the best (ties at random).
pub fn decide(pod: &Pod, cache: &Cache, seed: u64) -> Decision {
    let p = Prepared::new(pod, cache);
    let mut diagnosis = Diagnosis {
        nodes: cache.node_count(),
        ..Default::default()
    };
    let mut feasible: Vec<&NodeInfo> = Vec::new();
    for node in cache.nodes() {
        match filter::run(&p, node) {
            Ok(()) => feasible.push(node),
            Err(reasons) => {
                tracing::debug!(pod = %key(pod), node = node.name(), ?reasons, "filtered out");
                diagnosis.add(&reasons)
            }
        }
    }
    if feasible.is_empty() {
        return Decision::Unschedulable(diagnosis);
    }
    if feasible.len() == 1 {
        return Decision::Node(feasible[0].name().to_string());
    }
    let scores = score::total(&p, cache, &feasible);
    let mut ties = Ties(seed | 1);
    let mut best = 0;
    let mut count = 0u64;
    for (i, s) in scores.iter().enumerate() {
        if *s > scores[best] {
            best = i;
            count = 1;
        } else if *s == scores[best] {
            count += 1;
            if ties.next().is_multiple_of(count) {
                best = i;
            }
        }
    }
    tracing::debug!(
        pod = %key(pod),
        scores = ?feasible.iter().map(|n| n.name()).zip(scores.iter()).collect::<Vec<_>>(),
        chosen = feasible[best].name(),
        "scored"
    );
    Decision::Node(feasible[best].name().to_string())
}

/// What the leader's loop needs.
pub struct Loop {
    pub client: kube::Client,
    pub state: Shared,
    pub wake: Arc<Notify>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// Bindings in flight at most.
    pub parallelism: usize,
}

const M_SCHEDULED: &str = "trellis_scheduler_pods_scheduled_total";
const M_UNSCHEDULABLE: &str = "trellis_scheduler_unschedulable_attempts_total";
const M_BIND_ERRORS: &str = "trellis_scheduler_bind_errors_total";
const M_DURATION: &str = "trellis_scheduler_scheduling_duration_seconds";
pub const M_LEADER: &str = "trellis_scheduler_leader";
const M_PENDING: &str = "trellis_scheduler_pending_pods";

/// Schedules pods until dropped. Run only while leading.
pub async fn lead(l: Loop) {
    l.metrics.set(
        M_LEADER,
        "1 while this scheduler holds the lease and schedules.",
        &[],
        1.0,
    );
    tracing::info!("leading: scheduling pods");
    let mut writes: JoinSet<()> = JoinSet::new();
    let slots = Arc::new(Semaphore::new(l.parallelism.max(1)));
    // Events go out in the background, dropped when too many wait (as upstream's recorder).
    let (events_tx, mut events_rx) = mpsc::channel::<k8s_openapi::api::core::v1::Event>(1024);
    let ev_client = l.client.clone();
    writes.spawn(async move {
        while let Some(ev) = events_rx.recv().await {
            if let Err(e) = bind::record(&ev_client, &ev).await {
                tracing::debug!(error = %e, "event not recorded");
            }
        }
    });
    // Wait for both lists: scheduling on a partial view would overcommit nodes.
    loop {
        if lock(&l.state).ready() {
            break;
        }
        tokio::select! {
            _ = l.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    l.health.set_ready();
    let mut seed = jiff::Timestamp::now().as_nanosecond() as u64;
    let mut last_gauge = Instant::now();
    loop {
        // Reap finished writes (their results are handled inside).
        while writes.try_join_next().is_some() {}
        let (attempt, wakeup) = {
            let mut st = lock(&l.state);
            if last_gauge.elapsed() > Duration::from_secs(1) {
                let (a, b, u) = st.queue.lengths();
                for (q, n) in [("active", a), ("backoff", b), ("unschedulable", u)] {
                    l.metrics.set(
                        M_PENDING,
                        "Pods waiting to be scheduled, by queue.",
                        &[("queue", q)],
                        n as f64,
                    );
                }
                last_gauge = Instant::now();
            }
            (st.queue.pop(), st.queue.next_wakeup())
        };
        let Some(attempt) = attempt else {
            let sleep = wakeup
                .map(|t| t.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(1));
            tokio::select! {
                _ = l.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
            continue;
        };
        let started = Instant::now();
        let pod = attempt.pod;
        let k = key(&pod);
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let decision = {
            let mut st = lock(&l.state);
            let d = decide(&pod, &st.cache, seed);
            if let Decision::Node(n) = &d {
                st.cache.assume(&pod, n);
            }
            d
        };
        match decision {
            Decision::Node(node) => {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (client, state, metrics, events) = (
                    l.client.clone(),
                    l.state.clone(),
                    l.metrics.clone(),
                    events_tx.clone(),
                );
                writes.spawn(async move {
                    let result = bind::bind(&client, &pod, &node).await;
                    drop(permit);
                    let secs = started.elapsed().as_secs_f64();
                    match result {
                        Ok(()) => {
                            lock(&state).queue.done(&k);
                            metrics.inc(
                                M_SCHEDULED,
                                "Pods bound to a node by this scheduler.",
                                &[],
                                1.0,
                            );
                            metrics.observe(
                                M_DURATION,
                                "From the start of a pod's attempt to its binding's answer.",
                                &[("result", "scheduled")],
                                secs,
                            );
                            let msg = bind::scheduled_message(&pod, &node);
                            let _ = events.try_send(bind::event(&pod, "Normal", "Scheduled", msg));
                        }
                        Err(e) => {
                            let reason = match &e {
                                BindError::Conflict(_) => "conflict",
                                BindError::NotFound(_) => "not_found",
                                BindError::Other(_) => "other",
                            };
                            metrics.inc(
                                M_BIND_ERRORS,
                                "Bindings the API refused or that failed, by reason.",
                                &[("reason", reason)],
                                1.0,
                            );
                            metrics.observe(
                                M_DURATION,
                                "From the start of a pod's attempt to its binding's answer.",
                                &[("result", "error")],
                                secs,
                            );
                            let mut st = lock(&state);
                            st.cache.forget(&k);
                            match e {
                                // Bound by someone else, or gone: the watch brings the truth.
                                BindError::Conflict(_) | BindError::NotFound(_) => {
                                    st.queue.remove(&k)
                                }
                                BindError::Other(_) => st.queue.retry(&k),
                            }
                            drop(st);
                            tracing::warn!(pod = %k, %node, error = %e, "binding failed");
                            let msg = format!("Binding rejected: {e}");
                            let _ = events.try_send(bind::event(
                                &pod,
                                "Warning",
                                "FailedScheduling",
                                msg,
                            ));
                        }
                    }
                });
            }
            Decision::Unschedulable(d) => {
                let msg = d.message();
                lock(&l.state).queue.unschedulable(&k, attempt.cycle);
                l.metrics.inc(
                    M_UNSCHEDULABLE,
                    "Attempts that found no node for the pod.",
                    &[],
                    1.0,
                );
                l.metrics.observe(
                    M_DURATION,
                    "From the start of a pod's attempt to its binding's answer.",
                    &[("result", "unschedulable")],
                    started.elapsed().as_secs_f64(),
                );
                tracing::debug!(pod = %k, message = %msg, "unschedulable");
                let _ = events_tx.try_send(bind::event(
                    &pod,
                    "Warning",
                    "FailedScheduling",
                    msg.clone(),
                ));
                if !bind::has_condition(&pod, &msg) {
                    let client = l.client.clone();
                    writes.spawn(async move {
                        if let Err(e) = bind::mark_unschedulable(&client, &pod, &msg).await {
                            tracing::debug!(pod = %k, error = %e, "condition not written");
                        }
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::tests::{node, pod};
    use serde_json::json;

    #[test]
    fn only_our_ungated_unbound_pods_are_queued() {
        let mut s = State::default();
        s.apply_pod(pod("mine", json!({})));
        s.apply_pod(pod(
            "named",
            json!({"spec": {"schedulerName": "default-scheduler"}}),
        ));
        s.apply_pod(pod("theirs", json!({"spec": {"schedulerName": "other"}})));
        s.apply_pod(pod(
            "gated",
            json!({"spec": {"schedulingGates": [{"name": "wait"}]}}),
        ));
        s.apply_pod(pod("done", json!({"status": {"phase": "Succeeded"}})));
        assert!(s.queue.contains("default/mine") && s.queue.contains("default/named"));
        assert!(!s.queue.contains("default/theirs") && !s.queue.contains("default/gated"));
        assert!(!s.queue.contains("default/done"));
        // The gate removed: queued.
        s.apply_pod(pod("gated", json!({})));
        assert!(s.queue.contains("default/gated"));
    }

    #[test]
    fn an_assumed_pod_is_not_requeued_and_its_binding_confirms_it() {
        let mut s = State::default();
        s.apply_node(node("n1", json!({})));
        let p = pod("p", json!({}));
        s.apply_pod(p.clone());
        let a = s.queue.pop().unwrap();
        s.cache.assume(&a.pod, "n1");
        s.apply_pod(p.clone()); // an unrelated update while the binding is in flight
        assert_eq!(s.queue.lengths(), (0, 0, 0));
        assert!(s.queue.contains("default/p"), "still in flight");
        s.apply_pod(pod("p", json!({"spec": {"nodeName": "n1"}})));
        assert!(!s.queue.contains("default/p") && !s.cache.is_assumed("default/p"));
    }

    #[test]
    fn a_deleted_bound_pod_and_a_new_node_wake_unschedulable_pods() {
        let mut s = State::default();
        s.apply_node(node("n1", json!({})));
        s.apply_pod(pod("old", json!({"spec": {"nodeName": "n1"}})));
        s.apply_pod(pod("p", json!({})));
        let a = s.queue.pop().unwrap();
        s.queue.unschedulable("default/p", a.cycle);
        // A node update that changes nothing scheduling reads leaves it waiting.
        s.apply_node(node("n1", json!({})));
        assert_eq!(s.queue.lengths(), (0, 0, 1));
        s.delete_pod("default/old");
        assert_eq!(s.queue.lengths().2, 0);
        let a = s.queue.pop().or_else(|| {
            std::thread::sleep(crate::queue::INITIAL_BACKOFF);
            s.queue.pop()
        });
        let a = a.unwrap();
        s.queue.unschedulable("default/p", a.cycle);
        s.apply_node(node("n2", json!({})));
        assert_eq!(s.queue.lengths().2, 0);
    }

    #[test]
    fn decide_picks_a_feasible_node_or_says_why_none() {
        let mut s = State::default();
        s.apply_node(node(
            "small",
            json!({"status": {"allocatable": {"cpu": "1", "memory": "1Gi", "pods": "110"}}}),
        ));
        s.apply_node(node("big", json!({})));
        let p = pod(
            "p",
            json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "2"}}}]}}),
        );
        for seed in 0..20 {
            assert!(matches!(decide(&p, &s.cache, seed), Decision::Node(n) if n == "big"));
        }
        let huge = pod(
            "h",
            json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "64"}}}]}}),
        );
        let Decision::Unschedulable(d) = decide(&huge, &s.cache, 1) else {
            panic!("fits nowhere")
        };
        assert!(
            d.message()
                .starts_with("0/2 nodes are available: 2 Insufficient cpu."),
            "{}",
            d.message()
        );
    }
}
