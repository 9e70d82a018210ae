//! Leader election on a `coordination.k8s.io/v1` Lease, as kube-scheduler and
//! kube-controller-manager do it: every candidate runs, one leads.
//!
//! The rules are client-go's. A candidate takes the Lease when it is free (no holder) or when
//! its record has not *changed* for `lease_duration` on the candidate's own clock — the holder's
//! `renewTime` is never compared with local time, so clock skew between nodes does not matter.
//! Every write is guarded by the Lease's resourceVersion, so two candidates can never both win.
//! The leader renews every `retry_period`; if no renewal succeeds within `renew_deadline`, it
//! stops acting at once. Because `renew_deadline < lease_duration`, it has stopped before any
//! standby may take over.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};

/// How a candidate competes for one Lease. [`LeaderElection::new`] gives upstream's defaults.
#[derive(Debug, Clone)]
pub struct LeaderElection {
    /// Namespace of the Lease (`kube-system`).
    pub namespace: String,
    /// Name of the Lease, the component's name (`kube-scheduler`).
    pub name: String,
    /// This candidate, unique per process (`<host>_<random>`).
    pub identity: String,
    /// How long a record must stay unchanged before a standby may take the Lease (15 s).
    pub lease_duration: Duration,
    /// How long the leader keeps acting without a successful renewal (10 s).
    pub renew_deadline: Duration,
    /// How often candidates try to acquire, and the leader renews (2 s).
    pub retry_period: Duration,
}

/// Why [`LeaderElection::run`] ended without being asked to.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error(
        "leadership of lease {namespace}/{name} lost: not renewed within {deadline:?}; stopped acting"
    )]
    Lost {
        namespace: String,
        name: String,
        deadline: Duration,
    },
    #[error("leader election settings: {0}")]
    Config(String),
}

/// A process-unique candidate name: the host name and a random suffix, as upstream's
/// `<hostname>_<uuid>`.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{host}_{:x}{:08x}", std::process::id(), nanos)
}

impl LeaderElection {
    /// Lease `kube-system/<name>` with upstream's 15 s / 10 s / 2 s.
    pub fn new(name: &str, identity: &str) -> LeaderElection {
        LeaderElection {
            namespace: "kube-system".into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    fn check(&self) -> Result<(), LeaderError> {
        let bad = |why: &str| Err(LeaderError::Config(why.into()));
        if self.identity.is_empty() || self.name.is_empty() || self.namespace.is_empty() {
            return bad("identity, name and namespace must not be empty");
        }
        if self.renew_deadline >= self.lease_duration {
            return bad("the renew deadline must be shorter than the lease duration");
        }
        if self.retry_period.is_zero() || self.retry_period >= self.renew_deadline {
            return bad("the retry period must be non-zero and shorter than the renew deadline");
        }
        if self.lease_duration.as_secs() == 0 {
            return bad("the lease duration must be at least 1 s");
        }
        Ok(())
    }

    /// Waits until this candidate holds the Lease, then runs `lead` while it does.
    ///
    /// Returns `Ok(())` when `shutdown` resolves (or `lead` returns): the Lease is released so a
    /// standby takes over at once. Returns [`LeaderError::Lost`] when renewal failed for
    /// `renew_deadline`; `lead`'s future has been dropped by then. `lead` must own all its work
    /// (no detached tasks), so dropping it stops acting; callers exit on `Lost`, as upstream's
    /// components do.
    pub async fn run<F, Fut>(
        self,
        client: kube::Client,
        shutdown: impl Future<Output = ()>,
        lead: F,
    ) -> Result<(), LeaderError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = ()>,
    {
        self.check()?;
        let api: Api<Lease> = Api::namespaced(client, &self.namespace);
        let mut seen = Observed::default();
        tokio::pin!(shutdown);

        // Candidate: try every retry period until acquired.
        loop {
            let attempt =
                tokio::time::timeout(self.retry_period, self.try_acquire(&api, &mut seen));
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                r = attempt => if let Ok(true) = r {
                    break;
                },
            }
            // Retry on the jittered period, but wake exactly when the holder's record would
            // expire: a standby then takes over a dead leader's lease after the lease duration,
            // not up to one more retry period later.
            let expires = self
                .lease_duration
                .saturating_sub(seen.unchanged_for())
                .max(Duration::from_millis(10));
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = tokio::time::sleep(self.jittered_retry().min(expires)) => {}
            }
        }
        tracing::info!(lease = %format!("{}/{}", self.namespace, self.name),
            identity = %self.identity, "became leader");

        // Leader: `lead` runs beside the renewal loop; whichever ends first ends both.
        let mut renewed = Instant::now();
        let renew = async {
            loop {
                tokio::time::sleep(self.retry_period).await;
                let left = self.renew_deadline.saturating_sub(renewed.elapsed());
                match tokio::time::timeout(left, self.try_acquire(&api, &mut seen)).await {
                    Ok(true) => renewed = Instant::now(),
                    _ if renewed.elapsed() >= self.renew_deadline => {
                        return LeaderError::Lost {
                            namespace: self.namespace.clone(),
                            name: self.name.clone(),
                            deadline: self.renew_deadline,
                        };
                    }
                    _ => tracing::warn!(lease = %self.name, "lease renewal failed; retrying"),
                }
            }
        };
        let outcome = tokio::select! {
            () = &mut shutdown => None,
            () = lead() => None,
            lost = renew => Some(lost),
        };
        match outcome {
            Some(lost) => {
                tracing::error!(lease = %self.name, identity = %self.identity, "{lost}");
                Err(lost)
            }
            None => {
                self.release(&api).await;
                Ok(())
            }
        }
    }

    /// Upstream's wait.Jitter(retryPeriod, 1.2): up to 20 % more, so candidates spread out.
    fn jittered_retry(&self) -> Duration {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let fraction = f64::from(nanos % 1000) / 1000.0 * 0.2;
        self.retry_period.mul_f64(1.0 + fraction)
    }

    /// One attempt to take or renew the Lease. `true` when this candidate holds it now.
    async fn try_acquire(&self, api: &Api<Lease>, seen: &mut Observed) -> bool {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let current = match api.get_opt(&self.name).await {
            Ok(c) => c,
            Err(e) => {
                // Each failed attempt once, at the retry period (not backed off: a standby's
                // takeover time depends on it, as upstream's leader election's does).
                tracing::warn!(lease = %self.name, error = %e, "reading the lease; retrying");
                return false;
            }
        };
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(self.record(None, now)),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(made) => {
                    seen.note(made.spec.as_ref());
                    true
                }
                Err(e) => {
                    tracing::debug!(lease = %self.name, "create lease: {e}");
                    false
                }
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        seen.note(Some(&spec));
        let holder = spec.holder_identity.as_deref().unwrap_or("");
        if decide(
            holder,
            &self.identity,
            seen.unchanged_for(),
            self.lease_duration,
        ) == Decision::Wait
        {
            return false;
        }
        lease.spec = Some(self.record(Some(&spec), now));
        // replace() sends the resourceVersion we read: a concurrent writer makes this a 409.
        match api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                seen.note(written.spec.as_ref());
                true
            }
            Err(e) => {
                tracing::debug!(lease = %self.name, "update lease: {e}");
                false
            }
        }
    }

    /// The record this candidate writes over `old` (None: a new Lease).
    fn record(&self, old: Option<&LeaseSpec>, now: MicroTime) -> LeaseSpec {
        let ours = old.and_then(|o| o.holder_identity.as_deref()) == Some(self.identity.as_str());
        let transitions = old.and_then(|o| o.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(secs_i32(self.lease_duration)),
            acquire_time: if ours {
                old.and_then(|o| o.acquire_time.clone())
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if ours || old.is_none() {
                transitions
            } else {
                transitions.saturating_add(1)
            }),
            ..Default::default()
        }
    }

    /// On a clean stop: clear the holder so a standby takes over without waiting out the lease.
    async fn release(&self, api: &Api<Lease>) {
        let Ok(Some(mut lease)) = api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
        match api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.name, "released leadership"),
            Err(e) => tracing::warn!(lease = %self.name, "release lease: {e}"),
        }
    }
}

fn secs_i32(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

/// The last record a candidate saw, and when (on its own clock) it last changed.
#[derive(Debug, Default)]
struct Observed {
    record: Option<LeaseSpec>,
    changed_at: Option<Instant>,
}

impl Observed {
    fn note(&mut self, spec: Option<&LeaseSpec>) {
        if self.record.as_ref() != spec || self.changed_at.is_none() {
            self.record = spec.cloned();
            self.changed_at = Some(Instant::now());
        }
    }

    fn unchanged_for(&self) -> Duration {
        self.changed_at.map_or(Duration::ZERO, |t| t.elapsed())
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// Write our record: renew our own lease or take a free or expired one.
    Take,
    /// Someone else holds a live lease.
    Wait,
}

/// client-go's rule: take the Lease if it is ours, free, or its record has not changed for a
/// whole lease duration as seen by us.
fn decide(holder: &str, me: &str, unchanged_for: Duration, lease_duration: Duration) -> Decision {
    if holder.is_empty() || holder == me || unchanged_for >= lease_duration {
        Decision::Take
    } else {
        Decision::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(15);

    #[test]
    fn a_live_lease_held_by_another_is_left_alone() {
        assert_eq!(
            decide("b", "a", Duration::from_secs(14), LEASE),
            Decision::Wait
        );
    }

    #[test]
    fn a_record_unchanged_for_a_whole_lease_duration_may_be_taken() {
        assert_eq!(
            decide("b", "a", Duration::from_secs(15), LEASE),
            Decision::Take
        );
    }

    #[test]
    fn our_own_or_a_released_lease_is_always_taken() {
        assert_eq!(decide("a", "a", Duration::ZERO, LEASE), Decision::Take);
        assert_eq!(decide("", "a", Duration::ZERO, LEASE), Decision::Take);
    }

    #[test]
    fn a_changing_record_restarts_the_wait() {
        let mut seen = Observed::default();
        let mut spec = LeaseSpec {
            holder_identity: Some("b".into()),
            ..Default::default()
        };
        seen.note(Some(&spec));
        let first = seen.changed_at;
        seen.note(Some(&spec));
        assert_eq!(
            seen.changed_at, first,
            "the same record does not restart the wait"
        );
        spec.lease_transitions = Some(1);
        std::thread::sleep(Duration::from_millis(2));
        seen.note(Some(&spec));
        assert!(seen.changed_at > first, "a renewal restarts the wait");
    }

    #[test]
    fn taking_over_counts_a_transition_and_renewing_does_not() {
        let le = LeaderElection::new("kube-scheduler", "a");
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let theirs = LeaseSpec {
            holder_identity: Some("b".into()),
            lease_transitions: Some(3),
            ..Default::default()
        };
        let taken = le.record(Some(&theirs), now.clone());
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.holder_identity.as_deref(), Some("a"));
        assert_eq!(taken.lease_duration_seconds, Some(15));
        let renewed = le.record(Some(&taken), now.clone());
        assert_eq!(renewed.lease_transitions, Some(4));
        assert_eq!(renewed.acquire_time, taken.acquire_time);
        assert_eq!(le.record(None, now).lease_transitions, Some(0));
    }

    #[test]
    fn settings_that_could_let_two_lead_are_refused() {
        let mut le = LeaderElection::new("x", "a");
        assert!(le.check().is_ok());
        le.renew_deadline = le.lease_duration;
        assert!(le.check().is_err());
        let mut le = LeaderElection::new("x", "a");
        le.retry_period = le.renew_deadline;
        assert!(le.check().is_err());
        assert!(LeaderElection::new("x", "").check().is_err());
    }

    #[test]
    fn identities_differ_between_candidates() {
        let a = default_identity();
        std::thread::sleep(Duration::from_millis(1));
        assert_ne!(a, default_identity());
    }
}
