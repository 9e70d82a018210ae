//! Job: run pods until `completions` succeed, `parallelism` at a time; after a failure new
//! pods wait an exponential back-off (10 s, 20 s, 40 s …, at most 6 min); more than
//! `backoffLimit` failures, or running longer than `activeDeadlineSeconds`, fails the Job and
//! stops its pods; a finished Job with `ttlSecondsAfterFinished` is deleted that long after
//! it finished (its pods go with it through the garbage collector).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::{Job, JobCondition};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy};
use serde_json::json;

use crate::controller::{OnDelete, Reconciler, Target, owner_handler, pod_owner_handler};
use crate::expectations::Expectations;
use crate::informer::{Informer, Synced};
use crate::manager::Watches;
use crate::owner;
use crate::pods;
use crate::replicaset::pod_from_template;
use crate::workqueue::WorkQueue;
use crate::{Ctx, SyncError};

/// The delay before new pods after `failures` failures: `base` doubling, at most 6 min.
pub fn backoff(base: Duration, failures: i32) -> Duration {
    if failures <= 0 {
        return Duration::ZERO;
    }
    trellis_api::cluster::wait::doubling(base, Duration::from_secs(360), failures.unsigned_abs())
}

/// How many pods should be running: at most parallelism, and no more than completions left.
pub fn wanted_active(parallelism: i32, completions: Option<i32>, succeeded: i32) -> i32 {
    match completions {
        Some(c) => parallelism.min(c - succeeded).max(0),
        // No completions: any success means the work is done.
        None if succeeded > 0 => 0,
        None => parallelism.max(0),
    }
}

#[derive(Clone)]
pub struct Controller {
    pub jobs: Informer<Job>,
    pub pods: Informer<Pod>,
    pub queue: WorkQueue,
    pub expectations: Expectations,
    ctx: Ctx,
    base_backoff: Duration,
    /// Per job uid: the failures counted so far and when the count last grew.
    failures: Arc<Mutex<HashMap<String, (i32, Instant)>>>,
}

impl Controller {
    pub fn new(ctx: Ctx, jobs: Informer<Job>, pods: Informer<Pod>, base_backoff: Duration) -> Self {
        Controller {
            jobs,
            pods,
            queue: WorkQueue::new(),
            expectations: Expectations::new(),
            ctx,
            base_backoff,
            failures: Arc::default(),
        }
    }
}

impl Reconciler for Controller {
    fn name(&self) -> &'static str {
        "job"
    }

    fn queue(&self) -> &WorkQueue {
        &self.queue
    }

    fn caches(&self) -> Vec<Synced> {
        vec![self.jobs.synced(), self.pods.synced()]
    }

    fn handlers(&self, watches: &mut Watches) {
        let forget = OnDelete::Forget(self.expectations.clone());
        watches.on(owner_handler(&self.queue, &self.jobs, forget));
        watches.on(pod_owner_handler::<Job>(
            &self.queue,
            &self.expectations,
            None,
        ));
    }

    async fn sync(&self, key: &str) -> Result<Option<Duration>, SyncError> {
        let Some(Target {
            obj: job,
            ns,
            name,
            uid,
            ..
        }) = Target::get(&self.jobs, Some(&self.expectations), key)
        else {
            return Ok(None);
        };
        let Some(spec) = job.spec.clone() else {
            return Ok(None);
        };
        let job_api: Api<Job> = Api::namespaced(self.ctx.client.clone(), &ns);
        let pod_api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &ns);
        let now = jiff::Timestamp::now();
        let status = job.status.clone().unwrap_or_default();
        let finished_at = status.conditions.iter().flatten().find_map(|c| {
            (matches!(c.type_.as_str(), "Complete" | "Failed") && c.status == "True")
                .then(|| c.last_transition_time.as_ref().map(|t| t.0).unwrap_or(now))
        });
        let mine: Vec<Arc<Pod>> = self
            .pods
            .state()
            .into_iter()
            .filter(|p| {
                p.metadata.namespace.as_deref() == Some(&ns)
                    && owner::controller_of(&p.metadata).is_some_and(|r| r.uid == uid)
            })
            .collect();
        let active: Vec<&Arc<Pod>> = mine.iter().filter(|p| pods::is_active(p)).collect();
        let succeeded = mine
            .iter()
            .filter(|p| pods::phase(p) == "Succeeded")
            .count() as i32;
        let failed = mine.iter().filter(|p| pods::phase(p) == "Failed").count() as i32;

        if let Some(done) = finished_at {
            // Finished: stop what still runs; delete the Job after its TTL.
            for p in &active {
                let _ = pod_api
                    .delete(
                        p.metadata.name.as_deref().unwrap_or_default(),
                        &DeleteParams::default(),
                    )
                    .await;
            }
            if let Some(ttl) = spec.ttl_seconds_after_finished {
                let at = done + jiff::SignedDuration::from_secs(i64::from(ttl));
                if now >= at {
                    tracing::info!(job = %key, "ttlSecondsAfterFinished: deleting the job");
                    let dp = DeleteParams {
                        propagation_policy: Some(PropagationPolicy::Background),
                        preconditions: Some(kube::api::Preconditions {
                            uid: Some(uid.clone()),
                            resource_version: None,
                        }),
                        ..Default::default()
                    };
                    match job_api.delete(&name, &dp).await {
                        Ok(_) => {}
                        Err(e) if owner::is_not_found(&e) || owner::is_conflict(&e) => {}
                        Err(e) => return Err(e.into()),
                    }
                    return Ok(None);
                }
                return Ok(Some(
                    Duration::from_secs_f64(at.duration_since(now).as_secs_f64().max(0.0))
                        + Duration::from_millis(50),
                ));
            }
            return Ok(None);
        }

        let start = status.start_time.as_ref().map(|t| t.0).unwrap_or(now);
        let backoff_limit = spec.backoff_limit.unwrap_or(6);
        let mut outcome: Option<(&str, &str, &str)> = None;
        if failed > backoff_limit {
            outcome = Some((
                "Failed",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            ));
        } else if let Some(deadline) = spec.active_deadline_seconds
            && now.duration_since(start).as_secs_f64() >= deadline as f64
        {
            outcome = Some((
                "Failed",
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            ));
        } else if let Some(c) = spec.completions
            && succeeded >= c
        {
            outcome = Some(("Complete", "", ""));
        } else if spec.completions.is_none() && succeeded > 0 && active.is_empty() {
            outcome = Some(("Complete", "", ""));
        }

        let mut again = None;
        if outcome.is_none() && self.expectations.satisfied(key) && spec.suspend != Some(true) {
            let parallelism = spec.parallelism.unwrap_or(1);
            let want = wanted_active(parallelism, spec.completions, succeeded);
            let have = active.len() as i32;
            // Back-off after failures, timed from when this controller saw the count grow.
            let wait = {
                let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
                let e = f.entry(uid.clone()).or_insert((0, Instant::now()));
                if failed > e.0 {
                    *e = (failed, Instant::now());
                }
                backoff(self.base_backoff, failed).saturating_sub(e.1.elapsed())
            };
            if have < want && !wait.is_zero() {
                again = Some(wait + Duration::from_millis(20));
            } else if have < want {
                let n = (want - have) as usize;
                if let Some(t) = spec.template.spec.as_ref().map(|_| spec.template.clone()) {
                    let pod = pod_from_template(&t, &ns, &name, owner::controller_ref(&*job));
                    self.expectations.expect_creations(key, n);
                    tracing::info!(job = %key, creating = n, succeeded, failed, "starting pods");
                    for _ in 0..n {
                        if let Err(e) = pod_api.create(&PostParams::default(), &pod).await {
                            self.expectations.creation_observed(key);
                            return Err(e.into());
                        }
                    }
                }
            } else if have > want {
                for p in active.iter().take((have - want) as usize) {
                    let _ = pod_api
                        .delete(
                            p.metadata.name.as_deref().unwrap_or_default(),
                            &DeleteParams::default(),
                        )
                        .await;
                }
            }
            if let Some(deadline) = spec.active_deadline_seconds {
                let left = deadline as f64 - now.duration_since(start).as_secs_f64();
                let d = Duration::from_secs_f64(left.max(0.0)) + Duration::from_millis(50);
                again = Some(again.map_or(d, |a: Duration| a.min(d)));
            }
        }
        if let Some((kind, _, _)) = outcome
            && kind == "Failed"
        {
            for p in &active {
                let _ = pod_api
                    .delete(
                        p.metadata.name.as_deref().unwrap_or_default(),
                        &DeleteParams::default(),
                    )
                    .await;
            }
        }

        // Status.
        let mut conditions: Vec<JobCondition> = status.conditions.clone().unwrap_or_default();
        let mut completion_time = status.completion_time.clone();
        if let Some((kind, reason, message)) = outcome {
            tracing::info!(job = %key, kind, reason, succeeded, failed, "job finished");
            let cond = |t: &str, reason: &str, message: &str| JobCondition {
                type_: t.into(),
                status: "True".into(),
                reason: (!reason.is_empty()).then(|| reason.to_string()),
                message: (!message.is_empty()).then(|| message.to_string()),
                last_probe_time: Some(Time(now)),
                last_transition_time: Some(Time(now)),
            };
            if kind == "Complete" {
                conditions.push(cond(
                    "SuccessCriteriaMet",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                ));
                conditions.push(cond(
                    "Complete",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                ));
                completion_time = Some(Time(now));
            } else {
                conditions.push(cond("FailureTarget", reason, message));
                conditions.push(cond("Failed", reason, message));
            }
            if spec.ttl_seconds_after_finished.is_some() {
                self.queue
                    .add_after(key.to_string(), Duration::from_millis(50));
            }
        }
        let ready = active.iter().filter(|p| pods::is_ready(p)).count() as i32;
        let active_n = if outcome.is_some() {
            0
        } else {
            active.len() as i32
        };
        let new_status = json!({
            "startTime": status.start_time.clone().unwrap_or(Time(start)),
            "active": active_n,
            "ready": ready,
            "succeeded": succeeded,
            "failed": failed,
            "conditions": conditions,
            "completionTime": completion_time,
        });
        let cur = serde_json::to_value(&status).unwrap_or_default();
        let differs = new_status.as_object().is_some_and(|m| {
            m.iter().any(|(k, v)| {
                let c = cur.get(k).cloned().unwrap_or(serde_json::Value::Null);
                let zero = |x: &serde_json::Value| x.is_null() || *x == json!(0) || *x == json!([]);
                !(c == *v || (zero(&c) && zero(v)))
            })
        });
        if differs {
            match job_api
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
        Ok(again)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_from_ten_seconds_up_to_six_minutes() {
        let b = Duration::from_secs(10);
        assert_eq!(backoff(b, 0), Duration::ZERO);
        assert_eq!(backoff(b, 1), Duration::from_secs(10));
        assert_eq!(backoff(b, 3), Duration::from_secs(40));
        assert_eq!(backoff(b, 10), Duration::from_secs(360));
    }

    #[test]
    fn parallelism_is_capped_by_the_completions_left() {
        assert_eq!(wanted_active(2, Some(5), 0), 2);
        assert_eq!(wanted_active(2, Some(5), 4), 1);
        assert_eq!(wanted_active(2, Some(5), 5), 0);
        assert_eq!(wanted_active(3, None, 0), 3);
        assert_eq!(wanted_active(3, None, 1), 0);
    }
}
