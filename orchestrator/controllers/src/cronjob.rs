//! CronJob: a Job for each time the schedule fires (in `spec.timeZone`), named
//! `<cronjob>-<scheduled time in minutes since the epoch>` as upstream, so a repeated sync can
//! never start the same run twice. Missed runs older than `startingDeadlineSeconds` are
//! skipped; `concurrencyPolicy` Allow runs alongside, Forbid skips while a Job is active,
//! Replace deletes the active Jobs first; `suspend` stops new runs; finished Jobs beyond
//! `successfulJobsHistoryLimit` / `failedJobsHistoryLimit` are deleted, oldest first. The
//! controller follows upstream's `cronjob_controllerv2`.
//!
//! Time comes from a [`Clock`], so tests can make minutes pass in seconds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::{self, Timestamp};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy};
use serde_json::json;

use crate::controller::{OnDelete, Reconciler, Target, owner_handler};
use crate::cron::{self, Schedule};
use crate::informer::{Change, Handler, Informer, Synced, handler};
use crate::manager::Watches;
use crate::owner;
use crate::workqueue::WorkQueue;
use crate::{Ctx, SyncError};

/// The annotation with the run's scheduled time (RFC 3339, in the schedule's time zone).
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// Missed runs looked at before giving up on counting (upstream warns past 100).
const MAX_MISSED: usize = 100;

/// The controller's notion of now: the wall clock, or one running `speedup` times faster
/// from when it was made (tests shorten minutes to seconds with it).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Timestamp,
    started: Instant,
    speedup: f64,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::real()
    }
}

impl Clock {
    pub fn real() -> Clock {
        Clock::scaled(1.0)
    }

    /// A clock that advances `speedup` seconds for each real second from now.
    pub fn scaled(speedup: f64) -> Clock {
        Clock {
            origin: Timestamp::now(),
            started: Instant::now(),
            speedup: if speedup > 0.0 { speedup } else { 1.0 },
        }
    }

    pub fn now(&self) -> Timestamp {
        let d = self.started.elapsed().as_secs_f64() * self.speedup;
        self.origin
            .checked_add(jiff::SignedDuration::from_secs_f64(d))
            .unwrap_or(self.origin)
    }

    /// How long to really wait for `d` to pass on this clock.
    pub fn real_wait(&self, d: jiff::SignedDuration) -> Duration {
        Duration::from_secs_f64((d.as_secs_f64() / self.speedup).max(0.0))
    }
}

/// The Job name for a run scheduled at `t` (upstream's `getJobName`).
pub fn job_name(cronjob: &str, t: Timestamp) -> String {
    format!("{cronjob}-{}", t.as_second().div_euclid(60))
}

/// The schedule times to consider at `now`: the most recent one not yet run (if any), how
/// many were missed, and the next one after `now`. `earliest` is the last scheduled run (or
/// the CronJob's creation), moved up to `now - startingDeadlineSeconds`.
pub fn schedule_times(
    schedule: &Schedule,
    tz: &jiff::tz::TimeZone,
    earliest: Timestamp,
    now: Timestamp,
) -> (Option<Timestamp>, usize, Option<Timestamp>) {
    let mut recent = None;
    let mut missed = 0;
    let mut t = earliest;
    loop {
        let Some(n) = schedule.next(t, tz) else {
            return (recent, missed, None);
        };
        if n > now {
            return (recent, missed, Some(n));
        }
        recent = Some(n);
        missed += 1;
        t = n;
        if missed > MAX_MISSED {
            // Too many to walk: jump to just before now and find the latest there.
            let back = now
                .checked_sub(jiff::SignedDuration::from_hours(25))
                .unwrap_or(now);
            if back > t {
                t = back;
            }
        }
    }
}

fn finished(j: &Job) -> Option<&'static str> {
    j.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| matches!(c.type_.as_str(), "Complete" | "Failed") && c.status == "True")
        .map(|c| {
            if c.type_ == "Complete" {
                "Complete"
            } else {
                "Failed"
            }
        })
}

fn job_ref(j: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: j.metadata.name.clone(),
        namespace: j.metadata.namespace.clone(),
        uid: j.metadata.uid.clone(),
        resource_version: j.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// The Job for a run at `scheduled`: the template's labels and annotations, the scheduled
/// timestamp, a controller reference.
pub fn job_for(cj: &CronJob, scheduled: Timestamp, tz: &jiff::tz::TimeZone) -> Job {
    let name = cj.metadata.name.clone().unwrap_or_default();
    let template = cj
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .unwrap_or_default();
    let tm = template.metadata.unwrap_or_default();
    let mut annotations = tm.annotations.unwrap_or_default();
    annotations.insert(
        SCHEDULED_TIMESTAMP.into(),
        scheduled
            .to_zoned(tz.clone())
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string(),
    );
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(&name, scheduled)),
            namespace: cj.metadata.namespace.clone(),
            labels: tm.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![owner::controller_ref(cj)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

#[derive(Clone)]
pub struct Controller {
    pub cronjobs: Informer<CronJob>,
    pub jobs: Informer<Job>,
    pub queue: WorkQueue,
    ctx: Ctx,
    clock: Clock,
}

impl Controller {
    pub fn new(ctx: Ctx, cronjobs: Informer<CronJob>, jobs: Informer<Job>, clock: Clock) -> Self {
        Controller {
            cronjobs,
            jobs,
            queue: WorkQueue::new(),
            ctx,
            clock,
        }
    }

    fn job_handler(&self) -> Handler<Job> {
        let c = self.clone();
        handler(move |ch: Change<'_, Job>| {
            let j = match ch {
                Change::Applied(j) | Change::Deleted(j) => j,
                Change::Synced => return,
            };
            if let Some(r) = owner::controller_of(&j.metadata).filter(|r| r.kind == "CronJob") {
                let ns = j.metadata.namespace.clone().unwrap_or_default();
                c.queue.add(format!("{ns}/{}", r.name));
            }
        })
    }
}

impl Reconciler for Controller {
    fn name(&self) -> &'static str {
        "cronjob"
    }

    fn queue(&self) -> &WorkQueue {
        &self.queue
    }

    fn caches(&self) -> Vec<Synced> {
        vec![self.cronjobs.synced(), self.jobs.synced()]
    }

    fn handlers(&self, watches: &mut Watches) {
        watches.on(owner_handler(&self.queue, &self.cronjobs, OnDelete::Ignore));
        watches.on(self.job_handler());
    }

    async fn sync(&self, key: &str) -> Result<Option<Duration>, SyncError> {
        // One being deleted starts nothing.
        let Some(Target {
            obj: cj,
            ns,
            name,
            uid,
            deleting: false,
            ..
        }) = Target::get(&self.cronjobs, None, key)
        else {
            return Ok(None);
        };
        let Some(spec) = cj.spec.clone() else {
            return Ok(None);
        };
        let job_api: Api<Job> = Api::namespaced(self.ctx.client.clone(), &ns);
        let now = self.clock.now();
        let status = cj.status.clone().unwrap_or_default();

        let mine: Vec<Arc<Job>> = self
            .jobs
            .state()
            .into_iter()
            .filter(|j| {
                j.metadata.namespace.as_deref() == Some(&ns)
                    && owner::controller_of(&j.metadata).is_some_and(|r| r.uid == uid)
            })
            .collect();
        // Active: the unfinished Jobs we own, plus those the status lists that the cache
        // has not shown yet (just created).
        let mut active: Vec<ObjectReference> = mine
            .iter()
            .filter(|j| finished(j).is_none() && j.metadata.deletion_timestamp.is_none())
            .map(|j| job_ref(j))
            .collect();
        for r in status.active.iter().flatten() {
            let known = mine.iter().any(|j| j.metadata.uid == r.uid);
            if !known
                && !active.iter().any(|a| a.uid == r.uid)
                && let Some(n) = &r.name
            {
                // Not in the cache: ask whether it still exists.
                match job_api.get_opt(n).await? {
                    Some(j) if j.metadata.uid == r.uid && finished(&j).is_none() => {
                        active.push(job_ref(&j))
                    }
                    _ => {}
                }
            }
        }
        let mut last_successful = status.last_successful_time.as_ref().map(|t| t.0);
        for j in &mine {
            if finished(j) == Some("Complete")
                && let Some(t) = j.status.as_ref().and_then(|s| s.completion_time.as_ref())
                && last_successful.is_none_or(|l| t.0 > l)
            {
                last_successful = Some(t.0);
            }
        }
        let mut last_schedule = status.last_schedule_time.as_ref().map(|t| t.0);

        let mut again = None;
        let parsed = Schedule::parse(&spec.schedule).and_then(|s| {
            let tz = cron::time_zone(spec.time_zone.as_deref(), &s)?;
            Ok((s, tz))
        });
        match parsed {
            Err(e) => {
                tracing::warn!(cronjob = %key, error = %e, "unparseable schedule; not scheduling");
            }
            Ok(_) if spec.suspend == Some(true) => {}
            Ok((schedule, tz)) => {
                let created = cj
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0)
                    .unwrap_or(now);
                let mut earliest = last_schedule.unwrap_or(created);
                if let Some(d) = spec.starting_deadline_seconds {
                    let floor = now
                        .checked_sub(jiff::SignedDuration::from_secs(d))
                        .unwrap_or(now);
                    if floor > earliest {
                        earliest = floor;
                    }
                }
                let (recent, missed, next) = schedule_times(&schedule, &tz, earliest, now);
                if missed > MAX_MISSED {
                    tracing::warn!(cronjob = %key, missed, "too many missed start times; running the latest only");
                }
                if let Some(n) = next {
                    // Wake just after the next run is due.
                    again = Some(
                        self.clock.real_wait(n.duration_since(now)) + Duration::from_millis(20),
                    );
                }
                let too_late = |t: Timestamp| {
                    spec.starting_deadline_seconds.is_some_and(|d| {
                        t.checked_add(jiff::SignedDuration::from_secs(d))
                            .is_ok_and(|end| end < now)
                    })
                };
                // A run whose Job exists was started by an earlier sync whose status write
                // the cache has not shown yet (upstream: "already processed").
                let started = |t: Timestamp| {
                    let jn = job_name(&name, t);
                    mine.iter().any(|j| j.metadata.name.as_deref() == Some(&jn))
                        || active.iter().any(|a| a.name.as_deref() == Some(&jn))
                };
                if let Some(t) = recent.filter(|t| started(*t)) {
                    last_schedule = Some(t);
                } else if let Some(t) = recent.filter(|t| !too_late(*t)) {
                    let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
                    let run = match policy {
                        "Forbid" if !active.is_empty() => {
                            tracing::info!(cronjob = %key, scheduled = %t, "a job is still active (Forbid): skipping this run");
                            false
                        }
                        "Replace" if !active.is_empty() => {
                            for a in &active {
                                let n = a.name.clone().unwrap_or_default();
                                tracing::info!(cronjob = %key, job = %n, "replacing the active job");
                                let dp = DeleteParams {
                                    propagation_policy: Some(PropagationPolicy::Background),
                                    ..Default::default()
                                };
                                match job_api.delete(&n, &dp).await {
                                    Ok(_) => {}
                                    Err(e) if owner::is_not_found(&e) => {}
                                    Err(e) => return Err(e.into()),
                                }
                            }
                            active.clear();
                            true
                        }
                        _ => true,
                    };
                    if run {
                        let job = job_for(&cj, t, &tz);
                        let jn = job.metadata.name.clone().unwrap_or_default();
                        match job_api.create(&PostParams::default(), &job).await {
                            Ok(created) => {
                                tracing::info!(cronjob = %key, job = %jn, scheduled = %t, "created job");
                                active.push(job_ref(&created));
                            }
                            Err(e) if owner::is_conflict(&e) => {
                                // This run was started before (the status write was lost).
                            }
                            Err(e) => return Err(e.into()),
                        }
                        last_schedule = Some(t);
                    }
                }
            }
        }

        // History: delete the oldest finished Jobs beyond the limits.
        self.prune(
            &job_api,
            &mine,
            "Complete",
            spec.successful_jobs_history_limit.unwrap_or(3),
        )
        .await?;
        self.prune(
            &job_api,
            &mine,
            "Failed",
            spec.failed_jobs_history_limit.unwrap_or(1),
        )
        .await?;

        active.sort_by(|a, b| a.name.cmp(&b.name));
        let t = |t: Option<Timestamp>| t.map(|t| json!(t.to_string()));
        let new_status = json!({
            "active": if active.is_empty() { serde_json::Value::Null } else { json!(active) },
            "lastScheduleTime": t(last_schedule),
            "lastSuccessfulTime": t(last_successful),
        });
        let ids = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|r| r["uid"].as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let cur = serde_json::to_value(&status).unwrap_or_default();
        let same_time = |k: &str| {
            let a = cur
                .get(k)
                .and_then(|v| v.as_str())
                .and_then(|s| s.parse::<Timestamp>().ok());
            let b = new_status[k]
                .as_str()
                .and_then(|s| s.parse::<Timestamp>().ok());
            a == b
        };
        let differs = ids(cur.get("active").unwrap_or(&serde_json::Value::Null))
            != ids(&new_status["active"])
            || !same_time("lastScheduleTime")
            || !same_time("lastSuccessfulTime");
        if differs {
            let api: Api<CronJob> = Api::namespaced(self.ctx.client.clone(), &ns);
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
        Ok(again)
    }
}

impl Controller {
    async fn prune(
        &self,
        api: &Api<Job>,
        mine: &[Arc<Job>],
        outcome: &str,
        limit: i32,
    ) -> Result<(), SyncError> {
        let mut done: Vec<&Arc<Job>> = mine
            .iter()
            .filter(|j| finished(j) == Some(outcome) && j.metadata.deletion_timestamp.is_none())
            .collect();
        let limit = limit.max(0) as usize;
        if done.len() <= limit {
            return Ok(());
        }
        // Oldest first: by start time, then creation.
        done.sort_by_key(|j| {
            (
                j.status
                    .as_ref()
                    .and_then(|s| s.start_time.as_ref())
                    .map(|t| t.0),
                j.metadata.creation_timestamp.as_ref().map(|t| t.0),
                j.metadata.name.clone(),
            )
        });
        for j in done.iter().take(done.len() - limit) {
            let n = j.metadata.name.clone().unwrap_or_default();
            tracing::info!(job = %n, outcome, "history limit: deleting finished job");
            let dp = DeleteParams {
                propagation_policy: Some(PropagationPolicy::Background),
                ..Default::default()
            };
            match api.delete(&n, &dp).await {
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

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn jobs_are_named_by_their_scheduled_minute() {
        assert_eq!(
            job_name("hello", ts("2024-01-01T00:05:00Z")),
            format!("hello-{}", 1_704_067_500 / 60)
        );
    }

    #[test]
    fn the_most_recent_missed_run_is_the_one_to_start() {
        let s = Schedule::parse("*/5 * * * *").unwrap();
        let tz = jiff::tz::TimeZone::UTC;
        let (recent, missed, next) = schedule_times(
            &s,
            &tz,
            ts("2024-01-01T00:00:00Z"),
            ts("2024-01-01T00:17:00Z"),
        );
        assert_eq!(recent, Some(ts("2024-01-01T00:15:00Z")));
        assert_eq!(missed, 3);
        assert_eq!(next, Some(ts("2024-01-01T00:20:00Z")));
        let (recent, missed, _) = schedule_times(
            &s,
            &tz,
            ts("2024-01-01T00:15:00Z"),
            ts("2024-01-01T00:17:00Z"),
        );
        assert_eq!((recent, missed), (None, 0), "already ran at 00:15");
    }

    #[test]
    fn years_of_missed_runs_still_find_the_latest_quickly() {
        let s = Schedule::parse("* * * * *").unwrap();
        let (recent, missed, _) = schedule_times(
            &s,
            &jiff::tz::TimeZone::UTC,
            ts("2020-01-01T00:00:00Z"),
            ts("2024-01-01T00:00:30Z"),
        );
        assert_eq!(recent, Some(ts("2024-01-01T00:00:00Z")));
        assert!(missed > MAX_MISSED);
    }

    #[test]
    fn a_scaled_clock_runs_faster_and_waits_shorter() {
        let c = Clock::scaled(60.0);
        let a = c.now();
        std::thread::sleep(Duration::from_millis(100));
        let passed = c.now().duration_since(a).as_secs_f64();
        assert!(passed >= 6.0, "100 ms at 60x is at least 6 s, got {passed}");
        assert_eq!(
            c.real_wait(jiff::SignedDuration::from_secs(60)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn a_run_carries_the_template_and_its_scheduled_time() {
        let cj: CronJob = serde_json::from_value(json!({
            "metadata": {"name": "hello", "namespace": "ns", "uid": "u"},
            "spec": {"schedule": "* * * * *", "jobTemplate": {
                "metadata": {"labels": {"app": "hello"}},
                "spec": {"template": {"spec": {"containers": []}}}}}}))
        .unwrap();
        let tz = jiff::tz::TimeZone::get("Europe/Paris").unwrap();
        let j = job_for(&cj, ts("2024-01-01T00:05:00Z"), &tz);
        assert_eq!(j.metadata.labels.unwrap()["app"], "hello");
        assert_eq!(
            j.metadata.annotations.unwrap()[SCHEDULED_TIMESTAMP],
            "2024-01-01T01:05:00+01:00"
        );
        let r = &j.metadata.owner_references.unwrap()[0];
        assert_eq!((r.kind.as_str(), r.controller), ("CronJob", Some(true)));
    }
}
