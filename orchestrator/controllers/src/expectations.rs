//! Expectations, as upstream's `ControllerExpectations`: after a controller creates or deletes
//! pods it records how many creations and which deletions it expects to see in the watch, and
//! it does not act on that controller again until it has seen them all (or they expired).
//! Without this, a sync that runs before the watch delivers the new pods would see too few
//! pods and create them a second time.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an expectation is trusted: a lost watch event must not freeze a controller.
pub const TTL: Duration = Duration::from_secs(5 * 60);

#[derive(Debug)]
struct Record {
    adds: i64,
    deletes: HashSet<String>,
    at: Instant,
}

/// Expectations of every controller of one kind, by controller key (`namespace/name`).
#[derive(Clone, Default)]
pub struct Expectations {
    map: Arc<Mutex<HashMap<String, Record>>>,
}

impl Expectations {
    pub fn new() -> Expectations {
        Expectations::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Record>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the controller may act: everything expected was seen, or expired, or nothing
    /// was ever expected.
    pub fn satisfied(&self, key: &str) -> bool {
        match self.lock().get(key) {
            None => true,
            Some(r) => (r.adds <= 0 && r.deletes.is_empty()) || r.at.elapsed() > TTL,
        }
    }

    /// Before creating `n` pods.
    pub fn expect_creations(&self, key: &str, n: usize) {
        let mut m = self.lock();
        let r = m.entry(key.to_string()).or_insert_with(|| Record {
            adds: 0,
            deletes: HashSet::new(),
            at: Instant::now(),
        });
        r.adds = n as i64;
        r.at = Instant::now();
    }

    /// Before deleting the pods with these uids.
    pub fn expect_deletions(&self, key: &str, uids: impl IntoIterator<Item = String>) {
        let mut m = self.lock();
        let r = m.entry(key.to_string()).or_insert_with(|| Record {
            adds: 0,
            deletes: HashSet::new(),
            at: Instant::now(),
        });
        r.deletes = uids.into_iter().collect();
        r.at = Instant::now();
    }

    /// The watch showed a pod this controller created (or a creation failed and will not
    /// show up).
    pub fn creation_observed(&self, key: &str) {
        if let Some(r) = self.lock().get_mut(key) {
            r.adds -= 1;
        }
    }

    /// The watch showed the pod `uid` going (deleted, or marked for deletion), or its deletion
    /// failed.
    pub fn deletion_observed(&self, key: &str, uid: &str) {
        if let Some(r) = self.lock().get_mut(key) {
            r.deletes.remove(uid);
        }
    }

    /// The controller itself went away.
    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_controller_waits_until_it_has_seen_its_own_creations() {
        let e = Expectations::new();
        assert!(e.satisfied("ns/rs"), "nothing expected yet");
        e.expect_creations("ns/rs", 2);
        assert!(!e.satisfied("ns/rs"));
        e.creation_observed("ns/rs");
        assert!(!e.satisfied("ns/rs"), "one of two seen");
        e.creation_observed("ns/rs");
        assert!(e.satisfied("ns/rs"));
    }

    #[test]
    fn deletions_are_tracked_by_uid_so_an_unrelated_deletion_does_not_count() {
        let e = Expectations::new();
        e.expect_deletions("ns/rs", ["a".to_string(), "b".to_string()]);
        e.deletion_observed("ns/rs", "zzz");
        e.deletion_observed("ns/rs", "a");
        e.deletion_observed("ns/rs", "a");
        assert!(!e.satisfied("ns/rs"));
        e.deletion_observed("ns/rs", "b");
        assert!(e.satisfied("ns/rs"));
    }
}
