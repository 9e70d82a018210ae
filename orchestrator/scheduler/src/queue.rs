//! The scheduling queue, after upstream's: pods ready to try (`active`, by priority then age),
//! pods waiting out a back-off after a failed attempt (`backoff`, 1 s doubling to 10 s), and
//! pods no node fits (`unschedulable`), which wait for a cluster change — a node added or
//! changed, a pod deleted — that may make room, or at most five minutes.
//!
//! A pod being tried stays known to the queue ("in flight"), so an update or deletion that
//! arrives meanwhile is not lost, and a cluster change during its attempt sends it to back-off
//! rather than to the unschedulable pods (where it could wait for a change that already came).

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

use crate::cache::key;

pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// The longest a pod waits among the unschedulable ones before it is tried again anyway
/// (upstream's `podMaxInUnschedulablePodsDuration`).
pub const MAX_UNSCHEDULABLE: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Active,
    Backoff,
    Unschedulable,
    InFlight,
}

#[derive(Debug)]
struct Entry {
    pod: Pod,
    place: Place,
    /// Failed attempts so far (back-off doubles with each).
    attempts: u32,
    seq: u64,
    since: Instant,
    backoff_until: Instant,
}

/// What `pop` hands out: the pod and the move cycle its attempt started in.
#[derive(Debug)]
pub struct Attempt {
    pub pod: Pod,
    pub cycle: u64,
}

#[derive(Debug, Default)]
pub struct Queue {
    entries: HashMap<String, Entry>,
    active: BTreeMap<(Reverse<i32>, u64), String>,
    backoff: BTreeMap<(Instant, u64), String>,
    next_seq: u64,
    /// Bumped by every cluster change that moves unschedulable pods.
    move_cycle: u64,
    /// When unschedulable pods were last checked for waiting too long (once a second at most:
    /// the check walks every pending pod).
    last_stale_scan: Option<Instant>,
}

fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

impl Queue {
    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn unlink(&mut self, k: &str) {
        let Some(e) = self.entries.get(k) else { return };
        match e.place {
            Place::Active => {
                self.active.remove(&(Reverse(priority(&e.pod)), e.seq));
            }
            Place::Backoff => {
                self.backoff.remove(&(e.backoff_until, e.seq));
            }
            Place::Unschedulable | Place::InFlight => {}
        }
    }

    fn make_active(&mut self, k: &str) {
        let seq = self.seq();
        if let Some(e) = self.entries.get_mut(k) {
            e.place = Place::Active;
            e.seq = seq;
            self.active
                .insert((Reverse(priority(&e.pod)), seq), k.to_string());
        }
    }

    /// Active when its back-off has passed, else back-off.
    fn make_active_or_backoff(&mut self, k: &str, now: Instant) {
        let seq = self.seq();
        let Some(e) = self.entries.get_mut(k) else {
            return;
        };
        if e.backoff_until > now {
            e.place = Place::Backoff;
            e.seq = seq;
            self.backoff.insert((e.backoff_until, seq), k.to_string());
        } else {
            self.make_active(k);
        }
    }

    /// A pending pod seen (added or updated) by the watch.
    pub fn upsert(&mut self, pod: Pod) {
        let k = key(&pod);
        let now = Instant::now();
        match self.entries.get_mut(&k) {
            None => {
                self.entries.insert(
                    k.clone(),
                    Entry {
                        pod,
                        place: Place::Active,
                        attempts: 0,
                        seq: 0,
                        since: now,
                        backoff_until: now,
                    },
                );
                self.make_active(&k);
            }
            Some(e) => {
                // A change of status alone (our own PodScheduled=False among them) cannot make
                // the pod schedulable: keep it where it waits.
                let significant = e.pod.spec != pod.spec
                    || e.pod.metadata.labels != pod.metadata.labels
                    || e.pod.metadata.annotations != pod.metadata.annotations;
                let place = e.place;
                if !significant {
                    e.pod = pod;
                    return;
                }
                self.unlink(&k);
                if let Some(e) = self.entries.get_mut(&k) {
                    e.pod = pod;
                }
                match place {
                    // An update may make it schedulable: try it again (after its back-off).
                    Place::Unschedulable => self.make_active_or_backoff(&k, now),
                    Place::Active => self.make_active(&k),
                    Place::Backoff => self.make_active_or_backoff(&k, now),
                    Place::InFlight => {}
                }
            }
        }
    }

    /// A pod deleted, or bound by someone: the queue forgets it.
    pub fn remove(&mut self, k: &str) {
        self.unlink(k);
        self.entries.remove(k);
    }

    /// After a relist: forgets pods the list no longer has.
    pub fn retain_keys(&mut self, keep: &std::collections::HashSet<String>) {
        let gone: Vec<String> = self
            .entries
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            self.remove(&k);
        }
    }

    pub fn contains(&self, k: &str) -> bool {
        self.entries.contains_key(k)
    }

    /// Moves pods whose back-off passed, and unschedulable pods waiting too long, to active.
    fn flush(&mut self, now: Instant) {
        while let Some((&(until, seq), _)) = self.backoff.iter().next() {
            if until > now {
                break;
            }
            if let Some(k) = self.backoff.remove(&(until, seq)) {
                self.make_active(&k);
            }
        }
        if self
            .last_stale_scan
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.last_stale_scan = Some(now);
        let stale: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                e.place == Place::Unschedulable && now.duration_since(e.since) >= MAX_UNSCHEDULABLE
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            self.make_active(&k);
        }
    }

    /// The next pod to try, highest priority first, then oldest.
    pub fn pop(&mut self) -> Option<Attempt> {
        self.flush(Instant::now());
        let (_, k) = self.active.pop_first()?;
        let e = self.entries.get_mut(&k)?;
        e.place = Place::InFlight;
        Some(Attempt {
            pod: e.pod.clone(),
            cycle: self.move_cycle,
        })
    }

    /// When a back-off ends next (the loop sleeps until then when nothing is active).
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.backoff.keys().next().map(|(t, _)| *t)
    }

    /// The attempt bound the pod: done.
    pub fn done(&mut self, k: &str) {
        self.remove(k);
    }

    fn backoff_for(attempts: u32) -> Duration {
        INITIAL_BACKOFF
            .saturating_mul(1 << attempts.saturating_sub(1).min(4))
            .min(MAX_BACKOFF)
    }

    /// No node fits: wait for a cluster change (or back off, when one came during the attempt).
    pub fn unschedulable(&mut self, k: &str, cycle: u64) {
        let now = Instant::now();
        let moved = self.move_cycle > cycle;
        let Some(e) = self.entries.get_mut(k) else {
            return;
        };
        e.attempts += 1;
        e.backoff_until = now + Self::backoff_for(e.attempts);
        e.since = now;
        if moved {
            self.make_active_or_backoff(k, now);
        } else {
            e.place = Place::Unschedulable;
        }
    }

    /// The attempt failed for another reason (a binding error): back off and retry.
    pub fn retry(&mut self, k: &str) {
        let now = Instant::now();
        let Some(e) = self.entries.get_mut(k) else {
            return;
        };
        e.attempts += 1;
        e.backoff_until = now + Self::backoff_for(e.attempts);
        self.make_active_or_backoff(k, now);
    }

    /// A cluster change that may make room: every unschedulable pod is tried again (after its
    /// back-off).
    pub fn move_all(&mut self) {
        self.move_cycle += 1;
        let now = Instant::now();
        let keys: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.place == Place::Unschedulable)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.make_active_or_backoff(&k, now);
        }
    }

    /// (active, backoff, unschedulable) counts, for metrics.
    pub fn lengths(&self) -> (usize, usize, usize) {
        let u = self
            .entries
            .values()
            .filter(|e| e.place == Place::Unschedulable)
            .count();
        (self.active.len(), self.backoff.len(), u)
    }

    pub fn has_active(&self) -> bool {
        !self.active.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, prio: i32) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"},
            "spec": {"priority": prio, "containers": [{"name": "c"}]}}))
        .unwrap()
    }

    fn name(a: &Attempt) -> &str {
        a.pod.metadata.name.as_deref().unwrap()
    }

    #[test]
    fn pods_come_out_by_priority_then_age() {
        let mut q = Queue::default();
        q.upsert(pod("old", 0));
        q.upsert(pod("new", 0));
        q.upsert(pod("urgent", 100));
        let order: Vec<String> = std::iter::from_fn(|| q.pop())
            .map(|a| name(&a).to_string())
            .collect();
        assert_eq!(order, ["urgent", "old", "new"]);
    }

    #[test]
    fn an_unschedulable_pod_waits_for_a_cluster_change_then_its_back_off() {
        let mut q = Queue::default();
        q.upsert(pod("p", 0));
        let a = q.pop().unwrap();
        q.unschedulable("default/p", a.cycle);
        assert!(q.pop().is_none());
        assert_eq!(q.lengths(), (0, 0, 1));
        q.move_all();
        // Still within its 1 s back-off: it waits there, then becomes active.
        assert_eq!(q.lengths(), (0, 1, 0));
        let wake = q.next_wakeup().unwrap();
        assert!(wake <= Instant::now() + INITIAL_BACKOFF);
        q.flush(wake);
        assert_eq!(q.lengths(), (1, 0, 0));
    }

    #[test]
    fn a_change_during_the_attempt_is_not_missed() {
        let mut q = Queue::default();
        q.upsert(pod("p", 0));
        let a = q.pop().unwrap();
        q.move_all(); // a node was added while the pod was being tried
        q.unschedulable("default/p", a.cycle);
        assert_eq!(q.lengths(), (0, 1, 0), "back-off, not unschedulable");
    }

    #[test]
    fn a_pod_deleted_in_flight_is_not_requeued() {
        let mut q = Queue::default();
        q.upsert(pod("p", 0));
        let a = q.pop().unwrap();
        q.remove("default/p");
        q.unschedulable("default/p", a.cycle);
        q.retry("default/p");
        assert_eq!(q.lengths(), (0, 0, 0));
        assert!(!q.contains("default/p"));
    }

    #[test]
    fn a_status_update_leaves_an_unschedulable_pod_waiting_a_spec_update_does_not() {
        let mut q = Queue::default();
        q.upsert(pod("p", 0));
        let a = q.pop().unwrap();
        q.unschedulable("default/p", a.cycle);
        let mut with_status = pod("p", 0);
        with_status.status = Some(Default::default());
        q.upsert(with_status);
        assert_eq!(q.lengths(), (0, 0, 1));
        q.upsert(pod("p", 5));
        assert_eq!(q.lengths(), (0, 1, 0));
    }

    #[test]
    fn back_off_doubles_to_ten_seconds() {
        let b: Vec<u64> = (1..=6).map(|n| Queue::backoff_for(n).as_secs()).collect();
        assert_eq!(b, [1, 2, 4, 8, 10, 10]);
    }
}
