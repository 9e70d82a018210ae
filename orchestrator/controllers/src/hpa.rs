//! HorizontalPodAutoscaler (autoscaling/v2): every resync period, each HPA's target is scaled
//! (through its `scale` subresource: Deployments, ReplicaSets, StatefulSets) to what its
//! Resource metrics (cpu, memory; target `Utilization` of the pods' requests or
//! `AverageValue`) ask for, with upstream's algorithm (`pkg/controller/podautoscaler`):
//!
//! - per metric, `desired = ceil(ratio × ready pods)` where `ratio = usage / target`, unless
//!   the ratio is within the 0.1 tolerance of 1 (then nothing changes);
//! - pods being deleted or Failed are ignored; unready pods count as using 0 on a scale-up and
//!   are left out otherwise; pods without metrics count as using the target (100 % at least) on
//!   a scale-down and 0 on a scale-up; the result never reverses the direction the raw ratio
//!   pointed in (`replica_calculator.go`);
//! - which pods are unready is upstream's `groupPods` ([`sample`]): Pending pods always; for
//!   CPU also a pod with no Ready condition or start time, a pod within the CPU
//!   initialization period (5 min) of its start that is not Ready or whose sample does not
//!   cover a whole metrics window since it became Ready (the start-up burst), and after that
//!   period a pod that is not Ready and never was (its Ready condition last changed within the
//!   initial readiness delay, 30 s, of its start). Memory samples of started pods all count;
//! - the largest proposal of all metrics wins;
//! - stabilization: the highest recommendation of the scale-down window (default 300 s, the
//!   controller-manager's `--horizontal-pod-autoscaler-downscale-stabilization`, or
//!   `spec.behavior.scaleDown.stabilizationWindowSeconds`) and the lowest of the scale-up
//!   window (default 0) bound the result;
//! - scaling policies (`spec.behavior.scaleUp|scaleDown.policies`, `selectPolicy`): each
//!   policy allows `value` pods or percent on top of (below) the count at the start of its
//!   period, which the controller's own rescales within the period tell; `Max` takes the
//!   policy allowing the largest change, `Min` the smallest, `Disabled` none. Without a
//!   behavior, upstream's defaults apply (up: 4 pods or 100 % per 15 s, whichever is more;
//!   down: 100 % per 15 s). The result stays within `[minReplicas, maxReplicas]`, and the
//!   ScalingLimited condition says which limit held it (`ScaleUpLimit`, `ScaleDownLimit`,
//!   `TooManyReplicas`, `TooFewReplicas`).
//!
//! Metrics are read through the API server's `metrics.k8s.io` (PodMetrics of the target's
//! selector), as upstream's controller does. Status carries currentReplicas, desiredReplicas,
//! currentMetrics, lastScaleTime and the AbleToScale, ScalingActive and ScalingLimited
//! conditions; a rescale records a `SuccessfulRescale` Event.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::autoscaling::v2::{HPAScalingRules, HorizontalPodAutoscaler, MetricSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{Value, json};
use trellis_api::{LabelSelector, ParsedQuantity, QuantityError};

use crate::controller::{Reconciler, Target};
use crate::events::{self, EventType, What};
use crate::informer::{Change, Informer, Synced, handler};
use crate::manager::Watches;
use crate::owner;
use crate::workqueue::WorkQueue;
use crate::{Ctx, SyncError};

/// Upstream's tolerance: a usage ratio within 10 % of 1 changes nothing.
pub const TOLERANCE: f64 = 0.1;

/// How the controller runs (the controller-manager's flags).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// How often each HPA is evaluated (`--horizontal-pod-autoscaler-sync-period`, 15 s).
    pub sync_period: Duration,
    /// The default scale-down stabilization window
    /// (`--horizontal-pod-autoscaler-downscale-stabilization`, 300 s).
    pub downscale_stabilization: Duration,
    /// The tolerance (`--horizontal-pod-autoscaler-tolerance`, 0.1).
    pub tolerance: f64,
    /// How long after its start a pod's CPU sample counts only if the pod is Ready and the
    /// sample covers a whole window since it became Ready
    /// (`--horizontal-pod-autoscaler-cpu-initialization-period`, 5 min).
    pub cpu_initialization_period: Duration,
    /// After the initialization period, an unready pod's CPU sample is left out when its Ready
    /// condition last changed within this of its start: it has never been Ready
    /// (`--horizontal-pod-autoscaler-initial-readiness-delay`, 30 s).
    pub initial_readiness_delay: Duration,
}

/// Upstream's default CPU initialization period.
pub const CPU_INITIALIZATION_PERIOD: Duration = Duration::from_secs(300);
/// Upstream's default initial readiness delay.
pub const INITIAL_READINESS_DELAY: Duration = Duration::from_secs(30);

impl Default for Settings {
    fn default() -> Self {
        Settings {
            sync_period: Duration::from_secs(15),
            downscale_stabilization: Duration::from_secs(300),
            tolerance: TOLERANCE,
            cpu_initialization_period: CPU_INITIALIZATION_PERIOD,
            initial_readiness_delay: INITIAL_READINESS_DELAY,
        }
    }
}

/// A Go duration (`300ms`, `1.5s`, `5m0s`, `1h2m3s`: decimal numbers, each with one of the
/// units ns, us, µs, ms, s, m, h; or `0`), as metrics.k8s.io writes a window and upstream's
/// flags take them. None for anything else, or a negative one.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let s = text.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.is_empty() {
        return None;
    }
    let mut nanos: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        let value: f64 = num.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        nanos += value * scale;
        rest = tail;
    }
    (nanos.is_finite() && nanos < u64::MAX as f64).then(|| Duration::from_nanos(nanos as u64))
}

/// One pod as the replica calculation sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PodSample {
    /// Being deleted, or Failed: left out entirely.
    pub ignored: bool,
    /// Unready as [`sample`] groups it: counts as 0 on a scale-up, left out otherwise.
    pub unready: bool,
    /// Its usage (millicores or bytes), if the metrics API had it.
    pub usage: Option<f64>,
    /// The sum of its containers' requests for the resource (0: none set).
    pub request: f64,
}

/// A pod's Ready condition as the grouping reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadyCondition {
    /// Its status is `False` (`Unknown` is not: as upstream, only an explicit False counts).
    pub is_false: bool,
    /// Its lastTransitionTime (None: not given, which upstream reads as the zero time).
    pub since: Option<jiff::Timestamp>,
}

/// What the grouping needs of one pod (its status and requests).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodFacts {
    /// Has a deletionTimestamp.
    pub deleting: bool,
    /// status.phase.
    pub phase: Option<String>,
    /// status.startTime.
    pub started: Option<jiff::Timestamp>,
    /// The Ready condition, if the pod has one.
    pub ready: Option<ReadyCondition>,
    /// The sum of its containers' requests for the resource (0: none set).
    pub request: f64,
}

/// A pod's usage as the metrics API reported it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// Millicores or bytes.
    pub value: f64,
    /// When the sample was taken (None: not given, the zero time to upstream).
    pub timestamp: Option<jiff::Timestamp>,
    /// The window the sample averages over.
    pub window: Duration,
}

/// Go's zero time (0001-01-01T00:00:00Z) in milliseconds since the epoch: what upstream
/// compares with when a time is not set.
const GO_ZERO_MS: i64 = -62_135_596_800_000;

fn ms(t: Option<jiff::Timestamp>) -> i64 {
    t.map_or(GO_ZERO_MS, |t| t.as_millisecond())
}

fn dur_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// One pod for the replica calculation, grouped as upstream's `groupPods` does: ignored
/// (being deleted, or Failed), unready (Pending; and for CPU see the module doc), missing (no
/// sample), or counted with its sample.
pub fn sample(
    pod: &PodFacts,
    usage: Option<&Usage>,
    cpu: bool,
    now: jiff::Timestamp,
    settings: &Settings,
) -> PodSample {
    let mut out = PodSample {
        ignored: false,
        unready: false,
        usage: usage.map(|u| u.value),
        request: pod.request,
    };
    match pod.phase.as_deref() {
        _ if pod.deleting => out.ignored = true,
        Some("Failed") => out.ignored = true,
        Some("Pending") => out.unready = true,
        _ => {}
    }
    let Some(u) = usage.filter(|_| cpu && !out.ignored && !out.unready) else {
        return out;
    };
    out.unready = match (pod.ready, pod.started) {
        (Some(ready), Some(started)) => {
            let start = started.as_millisecond();
            let since = ms(ready.since);
            if start.saturating_add(dur_ms(settings.cpu_initialization_period))
                > now.as_millisecond()
            {
                // Still starting: only a Ready pod whose sample began after it became Ready.
                ready.is_false || ms(u.timestamp) < since.saturating_add(dur_ms(u.window))
            } else {
                // Not Ready and never was: its condition changed only right after its start.
                ready.is_false
                    && start.saturating_add(dur_ms(settings.initial_readiness_delay)) > since
            }
        }
        _ => true,
    };
    out
}

/// What a metric's target is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    /// Percent of the pods' requests.
    Utilization(f64),
    /// Usage per pod (millicores or bytes).
    AverageValue(f64),
}

/// The result of one metric's calculation.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    pub replicas: i32,
    /// Average utilization of the measured pods, in percent of their requests (Utilization).
    pub utilization: Option<i32>,
    /// Average usage per measured pod.
    pub average: f64,
}

/// Why a metric gave no proposal.
#[derive(Debug, Clone, PartialEq)]
pub enum CalcError {
    NoMetrics,
    MissingRequest,
}

impl std::fmt::Display for CalcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CalcError::NoMetrics => {
                write!(
                    f,
                    "did not receive metrics for targeted pods (pods might be unready)"
                )
            }
            CalcError::MissingRequest => write!(f, "missing request for the resource"),
        }
    }
}

/// The usage ratio of `metrics` (pod → usage) against the goal.
fn ratio(metrics: &BTreeMap<usize, f64>, pods: &[PodSample], goal: Goal) -> f64 {
    let usage: f64 = metrics.values().sum();
    match goal {
        Goal::Utilization(target) => {
            let requests: f64 = metrics.keys().map(|i| pods[*i].request).sum();
            if requests <= 0.0 || target <= 0.0 {
                return 0.0;
            }
            (usage * 100.0 / requests) / target
        }
        Goal::AverageValue(target) => {
            if target <= 0.0 || metrics.is_empty() {
                return 0.0;
            }
            usage / (target * metrics.len() as f64)
        }
    }
}

/// Upstream's replica calculation for one Resource metric (`GetResourceReplicas`,
/// `GetRawResourceReplicas`) over the target's pods.
pub fn replicas_for(
    current: i32,
    pods: &[PodSample],
    goal: Goal,
    tolerance: f64,
) -> Result<Proposal, CalcError> {
    let mut metrics: BTreeMap<usize, f64> = BTreeMap::new();
    let (mut unready, mut missing) = (Vec::new(), Vec::new());
    for (i, p) in pods.iter().enumerate() {
        if p.ignored {
            continue;
        }
        if p.unready {
            unready.push(i);
            continue;
        }
        match p.usage {
            None => missing.push(i),
            Some(u) => {
                metrics.insert(i, u);
            }
        }
    }
    if metrics.is_empty() {
        return Err(CalcError::NoMetrics);
    }
    if matches!(goal, Goal::Utilization(_)) && metrics.keys().any(|i| pods[*i].request <= 0.0) {
        return Err(CalcError::MissingRequest);
    }
    let ready = metrics.len();
    let r = ratio(&metrics, pods, goal);
    let usage: f64 = metrics.values().sum();
    let requests: f64 = metrics.keys().map(|i| pods[*i].request).sum();
    let utilization = matches!(goal, Goal::Utilization(_))
        .then(|| (usage * 100.0 / requests.max(f64::MIN_POSITIVE)) as i32);
    let proposal = |replicas: i32| Proposal {
        replicas,
        utilization,
        average: usage / ready as f64,
    };
    let scale_up_with_unready = !unready.is_empty() && r > 1.0;
    if !scale_up_with_unready && missing.is_empty() {
        if (1.0 - r).abs() <= tolerance {
            return Ok(proposal(current));
        }
        return Ok(proposal((r * ready as f64).ceil() as i32));
    }
    if !missing.is_empty() {
        for i in &missing {
            let fallback = if r < 1.0 {
                match goal {
                    Goal::Utilization(t) => pods[*i].request * t.max(100.0) / 100.0,
                    Goal::AverageValue(t) => t,
                }
            } else {
                0.0
            };
            if r != 1.0 {
                metrics.insert(*i, fallback);
            }
        }
    }
    if scale_up_with_unready {
        for i in &unready {
            metrics.insert(*i, 0.0);
        }
    }
    let new = ratio(&metrics, pods, goal);
    if (1.0 - new).abs() <= tolerance || (r < 1.0 && new > 1.0) || (r > 1.0 && new < 1.0) {
        return Ok(proposal(current));
    }
    let replicas = (new * metrics.len() as f64).ceil() as i32;
    if (new < 1.0 && replicas > current) || (new > 1.0 && replicas < current) {
        return Ok(proposal(current));
    }
    Ok(proposal(replicas))
}

/// Past recommendations of one HPA: (when, replicas).
pub type Recommendations = Vec<(Instant, i32)>;

/// Upstream's `stabilizeRecommendationWithBehaviors`: the result is at least the lowest
/// recommendation of the scale-up window and at most the highest of the scale-down window
/// (both including `desired`), starting from `current`; `desired` is recorded and entries older
/// than both windows dropped.
pub fn stabilize(
    recs: &mut Recommendations,
    now: Instant,
    current: i32,
    desired: i32,
    up_window: Duration,
    down_window: Duration,
) -> i32 {
    let (mut up, mut down) = (desired, desired);
    for (at, r) in recs.iter() {
        let age = now.saturating_duration_since(*at);
        if age < up_window {
            up = up.min(*r);
        }
        if age < down_window {
            down = down.max(*r);
        }
    }
    let keep = up_window.max(down_window);
    recs.retain(|(at, _)| now.saturating_duration_since(*at) < keep);
    recs.push((now, desired));
    current.max(up).min(down)
}

/// How fast one direction may change the replica count: `spec.behavior.scaleUp` or
/// `scaleDown`, with upstream's defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    pub select: Select,
    pub policies: Vec<Policy>,
}

/// `selectPolicy`: which policy's limit applies when several are given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    /// The policy allowing the largest change (the default).
    Max,
    /// The policy allowing the smallest change.
    Min,
    /// No change in this direction at all.
    Disabled,
}

/// One `HPAScalingPolicy`: at most `value` pods, or `value` percent of the replicas at the
/// start of the period, per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub kind: PolicyKind,
    pub value: i32,
    pub period: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    Pods,
    Percent,
}

impl Rules {
    /// Upstream's scale-up default: 4 pods or 100 % per 15 s, whichever allows more.
    pub fn default_up() -> Rules {
        Rules {
            select: Select::Max,
            policies: vec![
                Policy {
                    kind: PolicyKind::Pods,
                    value: 4,
                    period: Duration::from_secs(15),
                },
                Policy {
                    kind: PolicyKind::Percent,
                    value: 100,
                    period: Duration::from_secs(15),
                },
            ],
        }
    }

    /// Upstream's scale-down default: 100 % per 15 s.
    pub fn default_down() -> Rules {
        Rules {
            select: Select::Max,
            policies: vec![Policy {
                kind: PolicyKind::Percent,
                value: 100,
                period: Duration::from_secs(15),
            }],
        }
    }

    /// The rules of `spec`, each part that is not given (or not understood) from `default`,
    /// as upstream's defaulting fills them.
    pub fn from_spec(spec: Option<&HPAScalingRules>, default: Rules) -> Rules {
        let Some(spec) = spec else {
            return default;
        };
        let select = match spec.select_policy.as_deref() {
            Some("Min") => Select::Min,
            Some("Disabled") => Select::Disabled,
            Some("Max") => Select::Max,
            _ => default.select,
        };
        let policies: Vec<Policy> = spec
            .policies
            .iter()
            .flatten()
            .filter_map(|p| {
                let kind = match p.type_.as_str() {
                    "Pods" => PolicyKind::Pods,
                    "Percent" => PolicyKind::Percent,
                    _ => return None,
                };
                let secs = u64::try_from(p.period_seconds).ok().filter(|s| *s > 0)?;
                Some(Policy {
                    kind,
                    value: p.value,
                    period: Duration::from_secs(secs),
                })
            })
            .collect();
        Rules {
            select,
            policies: if policies.is_empty() {
                default.policies
            } else {
                policies
            },
        }
    }

    fn longest_period(&self) -> Duration {
        self.policies
            .iter()
            .map(|p| p.period)
            .max()
            .unwrap_or_default()
    }
}

/// A rescale this controller made: when, and how many replicas it added or removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleEvent {
    pub at: Instant,
    pub change: i32,
}

/// One HPA's recent rescales, in each direction (upstream's `scaleUpEvents` and
/// `scaleDownEvents`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScaleEvents {
    pub up: Vec<ScaleEvent>,
    pub down: Vec<ScaleEvent>,
}

impl ScaleEvents {
    /// Records a rescale from `from` to `to`, forgetting what is older than `keep` (the longest
    /// policy period: no policy looks further back).
    pub fn record(&mut self, now: Instant, from: i32, to: i32, keep: Duration) {
        for events in [&mut self.up, &mut self.down] {
            events.retain(|e| now.saturating_duration_since(e.at) < keep);
        }
        match to.cmp(&from) {
            std::cmp::Ordering::Greater => self.up.push(ScaleEvent {
                at: now,
                change: to - from,
            }),
            std::cmp::Ordering::Less => self.down.push(ScaleEvent {
                at: now,
                change: from - to,
            }),
            std::cmp::Ordering::Equal => {}
        }
    }
}

/// Replicas changed within the last `period` (upstream's `getReplicasChangePerPeriod`).
fn change_in_period(events: &[ScaleEvent], period: Duration, now: Instant) -> i32 {
    events
        .iter()
        .filter(|e| now.saturating_duration_since(e.at) < period)
        .map(|e| e.change)
        .sum()
}

/// The replica count at the start of `period`: what the rescales within it changed, undone.
fn period_start(current: i32, events: &ScaleEvents, period: Duration, now: Instant) -> i32 {
    current - change_in_period(&events.up, period, now)
        + change_in_period(&events.down, period, now)
}

/// The most replicas the rules allow now (upstream's `calculateScaleUpLimitWithScalingRules`):
/// each policy allows its pods or percent on top of the count at the start of its period.
pub fn scale_up_limit(current: i32, events: &ScaleEvents, rules: &Rules, now: Instant) -> i32 {
    let proposals = rules.policies.iter().map(|p| {
        let start = period_start(current, events, p.period, now);
        match p.kind {
            PolicyKind::Pods => start.saturating_add(p.value),
            PolicyKind::Percent => {
                // Rounded up, or a small target could never grow.
                (f64::from(start) * (1.0 + f64::from(p.value) / 100.0)).ceil() as i32
            }
        }
    });
    match rules.select {
        Select::Disabled => current,
        Select::Max => proposals.max().unwrap_or(current),
        Select::Min => proposals.min().unwrap_or(current),
    }
}

/// The fewest replicas the rules allow now (upstream's `calculateScaleDownLimitWithBehaviors`).
pub fn scale_down_limit(current: i32, events: &ScaleEvents, rules: &Rules, now: Instant) -> i32 {
    let proposals = rules.policies.iter().map(|p| {
        let start = period_start(current, events, p.period, now);
        match p.kind {
            PolicyKind::Pods => start.saturating_sub(p.value),
            // Rounded down (towards the smaller count), as upstream's int32 conversion does.
            PolicyKind::Percent => (f64::from(start) * (1.0 - f64::from(p.value) / 100.0)) as i32,
        }
    });
    match rules.select {
        Select::Disabled => current,
        // The largest change downwards is the smallest count.
        Select::Max => proposals.min().unwrap_or(current),
        Select::Min => proposals.max().unwrap_or(current),
    }
}

/// Why the result of [`limit_rate`] is what it is: the ScalingLimited condition's reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    DesiredWithinRange,
    TooManyReplicas,
    TooFewReplicas,
    ScaleUpLimit,
    ScaleDownLimit,
}

impl Limited {
    pub fn reason(self) -> &'static str {
        match self {
            Limited::DesiredWithinRange => "DesiredWithinRange",
            Limited::TooManyReplicas => "TooManyReplicas",
            Limited::TooFewReplicas => "TooFewReplicas",
            Limited::ScaleUpLimit => "ScaleUpLimit",
            Limited::ScaleDownLimit => "ScaleDownLimit",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Limited::DesiredWithinRange => "the desired count is within the acceptable range",
            Limited::TooManyReplicas => {
                "the desired replica count is more than the maximum replica count"
            }
            Limited::TooFewReplicas => {
                "the desired replica count is less than the minimum replica count"
            }
            Limited::ScaleUpLimit => {
                "the desired replica count is increasing faster than the maximum scale rate"
            }
            Limited::ScaleDownLimit => {
                "the desired replica count is decreasing faster than the maximum scale rate"
            }
        }
    }
}

/// The limits of one evaluation: the HPA's bounds and its rules in both directions.
#[derive(Debug, Clone, PartialEq)]
pub struct Bounds {
    pub min: i32,
    pub max: i32,
    pub up: Rules,
    pub down: Rules,
}

/// Upstream's `convertDesiredReplicasWithBehaviorRate`: the stabilized recommendation
/// `desired`, held within `[min, max]` and within the rate the scaling policies allow given
/// the rescales of their periods; with the reason that applied.
pub fn limit_rate(
    current: i32,
    desired: i32,
    bounds: &Bounds,
    events: &ScaleEvents,
    now: Instant,
) -> (i32, Limited) {
    if desired > current {
        // Never below the current count: a limit under it waits for old events to age out.
        let limit = scale_up_limit(current, events, &bounds.up, now).max(current);
        let (allowed, why) = if bounds.max > limit {
            (limit, Limited::ScaleUpLimit)
        } else {
            (bounds.max, Limited::TooManyReplicas)
        };
        if desired > allowed {
            return (allowed, why);
        }
    } else if desired < current {
        let limit = scale_down_limit(current, events, &bounds.down, now).min(current);
        let (allowed, why) = if bounds.min < limit {
            (limit, Limited::ScaleDownLimit)
        } else {
            (bounds.min, Limited::TooFewReplicas)
        };
        if desired < allowed {
            return (allowed, why);
        }
    }
    (desired, Limited::DesiredWithinRange)
}

/// CPU in millicores, or anything else in its base unit, from a quantity string.
fn amount(q: &str, cpu: bool) -> Result<f64, QuantityError> {
    let q = ParsedQuantity::parse(q)?;
    Ok(if cpu { q.milli() } else { q.value() })
}

/// What the grouping needs of `p`, with its requests for `resource`.
fn pod_facts(p: &Pod, resource: &str) -> PodFacts {
    let status = p.status.as_ref();
    PodFacts {
        deleting: p.metadata.deletion_timestamp.is_some(),
        phase: status.and_then(|s| s.phase.clone()),
        started: status.and_then(|s| s.start_time.as_ref()).map(|t| t.0),
        ready: status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .map(|c| ReadyCondition {
                is_false: c.status == "False",
                since: c.last_transition_time.as_ref().map(|t| t.0),
            }),
        request: pod_request(p, resource),
    }
}

/// The sum of `p`'s containers' requests for `resource`.
fn pod_request(p: &Pod, resource: &str) -> f64 {
    let milli = resource == "cpu";
    p.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .filter_map(|c| c.resources.as_ref()?.requests.as_ref()?.get(resource))
        .filter_map(|q| amount(&q.0, milli).ok())
        .sum()
}

/// The PodMetrics resource, read through the API server.
fn pod_metrics_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("metrics.k8s.io", "v1beta1", "PodMetrics"),
        "pods",
    )
}

/// One pod's PodMetrics: cpu millicores and memory bytes summed over its containers, with the
/// sample's time and window.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PodUsage {
    cpu: f64,
    memory: f64,
    timestamp: Option<jiff::Timestamp>,
    window: Duration,
}

impl PodUsage {
    fn of(&self, cpu: bool) -> Usage {
        Usage {
            value: if cpu { self.cpu } else { self.memory },
            timestamp: self.timestamp,
            window: self.window,
        }
    }
}

/// Pod name → its usage.
fn usage_by_pod(list: &[DynamicObject]) -> HashMap<String, PodUsage> {
    list.iter()
        .filter_map(|m| {
            let name = m.metadata.name.clone()?;
            let (mut cpu, mut memory) = (0.0, 0.0);
            for c in m.data["containers"].as_array()? {
                cpu += c["usage"]["cpu"]
                    .as_str()
                    .and_then(|q| amount(q, true).ok())?;
                memory += c["usage"]["memory"]
                    .as_str()
                    .and_then(|q| amount(q, false).ok())?;
            }
            let timestamp = m.data["timestamp"]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok());
            let window = m.data["window"]
                .as_str()
                .and_then(parse_go_duration)
                .unwrap_or_default();
            Some((
                name,
                PodUsage {
                    cpu,
                    memory,
                    timestamp,
                    window,
                },
            ))
        })
        .collect()
}

/// The target's scale: (spec replicas, status selector).
#[derive(Debug)]
struct Scale {
    replicas: i32,
    selector: String,
}

/// The `scale` subresource of `name`, after a merge patch of its replicas to `set` if given.
async fn scale_of<K>(
    api: Api<K>,
    name: &str,
    set: Option<i32>,
) -> kube::Result<k8s_openapi::api::autoscaling::v1::Scale>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match set {
        None => api.get_scale(name).await,
        Some(n) => {
            let p = Patch::Merge(json!({"spec": {"replicas": n}}));
            api.patch_scale(name, &PatchParams::default(), &p).await
        }
    }
}

/// Runs the HPAs.
#[derive(Clone)]
pub struct Controller {
    pub hpas: Informer<HorizontalPodAutoscaler>,
    pub pods: Informer<Pod>,
    pub queue: WorkQueue,
    ctx: Ctx,
    settings: Settings,
    recommendations: Arc<Mutex<HashMap<String, Recommendations>>>,
    /// Each HPA's recent rescales, which its scaling policies limit.
    scale_events: Arc<Mutex<HashMap<String, ScaleEvents>>>,
}

/// A condition for the status.
fn condition(type_: &str, status: bool, reason: &str, message: &str, now: &str) -> Value {
    json!({"type": type_, "status": if status { "True" } else { "False" },
           "reason": reason, "message": message, "lastTransitionTime": now})
}

impl Controller {
    pub fn new(
        ctx: Ctx,
        hpas: Informer<HorizontalPodAutoscaler>,
        pods: Informer<Pod>,
        settings: Settings,
    ) -> Controller {
        Controller {
            hpas,
            pods,
            queue: WorkQueue::new(),
            ctx,
            settings,
            recommendations: Arc::default(),
            scale_events: Arc::default(),
        }
    }

    /// Reads the target's scale, or sets its replicas to `set` first: one dispatch on the kinds
    /// the controller scales.
    async fn scale(
        &self,
        ns: &str,
        kind: &str,
        name: &str,
        set: Option<i32>,
    ) -> Result<Scale, String> {
        let c = self.ctx.client.clone();
        let s = match kind {
            "Deployment" => scale_of(Api::<Deployment>::namespaced(c, ns), name, set).await,
            "ReplicaSet" => scale_of(Api::<ReplicaSet>::namespaced(c, ns), name, set).await,
            "StatefulSet" => scale_of(Api::<StatefulSet>::namespaced(c, ns), name, set).await,
            other => return Err(format!("the HPA controller cannot scale a {other}")),
        }
        .map_err(|e| e.to_string())?;
        Ok(Scale {
            replicas: s.spec.and_then(|s| s.replicas).unwrap_or(0),
            selector: s.status.and_then(|s| s.selector).unwrap_or_default(),
        })
    }

    async fn get_scale(&self, ns: &str, kind: &str, name: &str) -> Result<Scale, String> {
        self.scale(ns, kind, name, None).await
    }

    async fn set_scale(&self, ns: &str, kind: &str, name: &str, n: i32) -> Result<(), String> {
        self.scale(ns, kind, name, Some(n)).await.map(|_| ())
    }

    async fn event(
        &self,
        hpa: &HorizontalPodAutoscaler,
        type_: EventType,
        reason: &str,
        msg: &str,
    ) {
        let what = What {
            type_,
            reason,
            message: msg,
            action: None,
        };
        events::record(&self.ctx.client, "horizontal-pod-autoscaler", hpa, what).await;
    }

    /// Merges `status` into the HPA's, with `observedGeneration` (so the handler knows this
    /// write for the controller's own).
    async fn patch_status(
        &self,
        hpa: &HorizontalPodAutoscaler,
        ns: &str,
        name: &str,
        mut status: Value,
    ) -> Result<(), SyncError> {
        if let Some(g) = hpa.metadata.generation {
            status["observedGeneration"] = json!(g);
        }
        let api: Api<HorizontalPodAutoscaler> = Api::namespaced(self.ctx.client.clone(), ns);
        match api
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if owner::is_not_found(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The conditions of `hpa`'s status with `new` applied, keeping a condition's
    /// lastTransitionTime while its status does not change.
    fn conditions(hpa: &HorizontalPodAutoscaler, new: Vec<Value>) -> Value {
        let old = hpa
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        Value::Array(
            new.into_iter()
                .map(|mut c| {
                    if let Some(o) = old.iter().find(|o| c["type"] == o.type_.as_str())
                        && c["status"] == o.status.as_str()
                        && let Some(t) = &o.last_transition_time
                    {
                        c["lastTransitionTime"] = json!(t.0.to_string());
                    }
                    c
                })
                .collect(),
        )
    }

    /// The HPA's replica bounds and scaling policies (`spec.behavior`, upstream's defaults
    /// where it says nothing).
    fn bounds(hpa: &HorizontalPodAutoscaler, min: i32, max: i32) -> Bounds {
        let behavior = hpa.spec.as_ref().and_then(|s| s.behavior.as_ref());
        Bounds {
            min,
            max,
            up: Rules::from_spec(
                behavior.and_then(|b| b.scale_up.as_ref()),
                Rules::default_up(),
            ),
            down: Rules::from_spec(
                behavior.and_then(|b| b.scale_down.as_ref()),
                Rules::default_down(),
            ),
        }
    }

    fn windows(&self, hpa: &HorizontalPodAutoscaler) -> (Duration, Duration) {
        let behavior = hpa.spec.as_ref().and_then(|s| s.behavior.as_ref());
        let secs = |w: Option<i32>, default: Duration| {
            w.map_or(default, |s| {
                Duration::from_secs(u64::try_from(s).unwrap_or(0))
            })
        };
        let up = secs(
            behavior
                .and_then(|b| b.scale_up.as_ref())
                .and_then(|r| r.stabilization_window_seconds),
            Duration::ZERO,
        );
        let down = secs(
            behavior
                .and_then(|b| b.scale_down.as_ref())
                .and_then(|r| r.stabilization_window_seconds),
            self.settings.downscale_stabilization,
        );
        (up, down)
    }
}

/// A metric's proposal and its status entry.
struct Measured {
    replicas: i32,
    status: Value,
    reason: String,
}

/// One Resource metric over the pods: the proposal, or why there is none.
fn measure(
    m: &MetricSpec,
    current: i32,
    pods: &[&Pod],
    usage: &HashMap<String, PodUsage>,
    settings: &Settings,
    now: jiff::Timestamp,
) -> Result<Measured, String> {
    let Some(res) = m.resource.as_ref().filter(|_| m.type_ == "Resource") else {
        return Err(format!(
            "metrics of type {} are not supported (Resource only)",
            m.type_
        ));
    };
    let name = res.name.as_str();
    let cpu = match name {
        "cpu" => true,
        "memory" => false,
        other => return Err(format!("resource {other} is not measured (cpu, memory)")),
    };
    let goal = match (
        res.target.type_.as_str(),
        res.target.average_utilization,
        res.target.average_value.as_ref(),
    ) {
        ("Utilization", Some(u), _) => Goal::Utilization(f64::from(u)),
        ("AverageValue", _, Some(q)) => {
            Goal::AverageValue(amount(&q.0, cpu).map_err(|e| format!("invalid averageValue: {e}"))?)
        }
        (t, _, _) => return Err(format!("invalid target type {t} for resource {name}")),
    };
    let samples: Vec<PodSample> = pods
        .iter()
        .map(|p| {
            let pname = p.metadata.name.as_deref().unwrap_or("");
            let u = usage.get(pname).map(|u| u.of(cpu));
            sample(&pod_facts(p, name), u.as_ref(), cpu, now, settings)
        })
        .collect();
    let p = replicas_for(current, &samples, goal, settings.tolerance)
        .map_err(|e| format!("failed to get {name} utilization: {e}"))?;
    let avg = if cpu {
        format!("{}m", p.average.round() as i64)
    } else {
        format!("{}", p.average.round() as i64)
    };
    let mut cur = json!({"averageValue": avg});
    if let Some(u) = p.utilization {
        cur["averageUtilization"] = json!(u);
    }
    let reason = match goal {
        Goal::Utilization(_) => format!("{name} resource utilization (percentage of request)"),
        Goal::AverageValue(_) => format!("{name} resource"),
    };
    Ok(Measured {
        replicas: p.replicas,
        status: json!({"type": "Resource", "resource": {"name": name, "current": cur}}),
        reason,
    })
}

impl Reconciler for Controller {
    fn name(&self) -> &'static str {
        "horizontalpodautoscaling"
    }

    fn queue(&self) -> &WorkQueue {
        &self.queue
    }

    fn caches(&self) -> Vec<Synced> {
        vec![self.hpas.synced(), self.pods.synced()]
    }

    fn handlers(&self, watches: &mut Watches) {
        // A change of the spec (or a new HPA) is evaluated at once; the controller's own status
        // writes are not (each HPA comes back every sync period anyway), or every status
        // write would start the next evaluation.
        let (queue, cache) = (self.queue.clone(), self.hpas.clone());
        watches.on(handler(
            move |ch: Change<'_, HorizontalPodAutoscaler>| match ch {
                Change::Applied(h) => {
                    let observed = h.status.as_ref().and_then(|s| s.observed_generation);
                    if h.status.is_none() || observed != h.metadata.generation {
                        queue.add(owner::key(&h.metadata));
                    }
                }
                Change::Deleted(h) => queue.add(owner::key(&h.metadata)),
                Change::Synced => {
                    for h in cache.state() {
                        queue.add(owner::key(&h.metadata));
                    }
                }
            },
        ));
    }

    async fn sync(&self, key: &str) -> Result<Option<Duration>, SyncError> {
        let again = Some(self.settings.sync_period);
        let Some(Target {
            obj: hpa,
            ns,
            name,
            deleting: false,
            ..
        }) = Target::get(&self.hpas, None, key)
        else {
            if let Ok(mut r) = self.recommendations.lock() {
                r.remove(key);
            }
            if let Ok(mut e) = self.scale_events.lock() {
                e.remove(key);
            }
            return Ok(None);
        };
        let Some(spec) = hpa.spec.clone() else {
            return Ok(None);
        };
        let now = jiff::Timestamp::now().to_string();
        let target = &spec.scale_target_ref;
        let scale = match self.get_scale(&ns, &target.kind, &target.name).await {
            Ok(s) => s,
            Err(e) => {
                let msg =
                    format!("the HPA controller was unable to get the target's current scale: {e}");
                let conds = Controller::conditions(
                    &hpa,
                    vec![condition(
                        "AbleToScale",
                        false,
                        "FailedGetScale",
                        &msg,
                        &now,
                    )],
                );
                self.patch_status(&hpa, &ns, &name, json!({"conditions": conds}))
                    .await?;
                return Ok(again);
            }
        };
        let current = scale.replicas;
        let min = spec.min_replicas.unwrap_or(1);
        let max = spec.max_replicas;
        if current == 0 && min != 0 {
            let conds = Controller::conditions(
                &hpa,
                vec![
                    condition(
                        "AbleToScale",
                        true,
                        "SucceededGetScale",
                        "the HPA controller was able to get the target's current scale",
                        &now,
                    ),
                    condition(
                        "ScalingActive",
                        false,
                        "ScalingDisabled",
                        "scaling is disabled since the replica count of the target is zero",
                        &now,
                    ),
                ],
            );
            self.patch_status(
                &hpa,
                &ns,
                &name,
                json!({"currentReplicas": 0, "desiredReplicas": 0, "conditions": conds}),
            )
            .await?;
            return Ok(again);
        }
        let selector =
            LabelSelector::parse(&scale.selector).unwrap_or_else(|_| LabelSelector::nothing());
        let pods_arc = self.pods.state();
        let pods: Vec<&Pod> = pods_arc
            .iter()
            .map(Arc::as_ref)
            .filter(|p| {
                p.metadata.namespace.as_deref() == Some(ns.as_str())
                    && selector.matches(&owner::labels(&p.metadata))
            })
            .collect();
        let metrics_api: Api<DynamicObject> =
            Api::namespaced_with(self.ctx.client.clone(), &ns, &pod_metrics_resource());
        let usage = match metrics_api
            .list(&ListParams::default().labels(&scale.selector))
            .await
        {
            Ok(l) => usage_by_pod(&l.items),
            Err(e) => {
                tracing::debug!(hpa = key, error = %e, "reading pod metrics");
                HashMap::new()
            }
        };
        let metric_specs = spec.metrics.clone().unwrap_or_else(|| {
            // autoscaling/v1's default: 80 % CPU.
            serde_json::from_value(json!([{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 80}}}]))
            .unwrap_or_default()
        });
        let mut best: Option<Measured> = None;
        let mut statuses = Vec::new();
        let mut errors = Vec::new();
        for m in &metric_specs {
            match measure(
                m,
                current,
                &pods,
                &usage,
                &self.settings,
                jiff::Timestamp::now(),
            ) {
                Ok(x) => {
                    statuses.push(x.status.clone());
                    if best.as_ref().is_none_or(|b| x.replicas > b.replicas) {
                        best = Some(x);
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        let able = condition(
            "AbleToScale",
            true,
            "SucceededGetScale",
            "the HPA controller was able to get the target's current scale",
            &now,
        );
        let Some(best) = best else {
            let msg = errors.join("; ");
            let conds = Controller::conditions(
                &hpa,
                vec![
                    able,
                    condition(
                        "ScalingActive",
                        false,
                        "FailedGetResourceMetric",
                        &format!("the HPA was unable to compute the replica count: {msg}"),
                        &now,
                    ),
                ],
            );
            self.patch_status(
                &hpa,
                &ns,
                &name,
                json!({"currentReplicas": current, "desiredReplicas": current, "conditions": conds}),
            )
            .await?;
            self.event(&hpa, EventType::Warning, "FailedGetResourceMetric", &msg)
                .await;
            return Ok(again);
        };
        let (up, down) = self.windows(&hpa);
        let stabilized = {
            let mut all = self
                .recommendations
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let recs = all.entry(key.to_string()).or_default();
            stabilize(recs, Instant::now(), current, best.replicas, up, down)
        };
        let bounds = Controller::bounds(&hpa, min, max);
        let now_instant = Instant::now();
        let (limited_to, why) = {
            let all = self.scale_events.lock().unwrap_or_else(|e| e.into_inner());
            let events = all.get(key).cloned().unwrap_or_default();
            limit_rate(current, stabilized, &bounds, &events, now_instant)
        };
        // A current count outside [min, max] is brought back within them.
        let desired = limited_to.clamp(min.min(max), max);
        let limited = condition(
            "ScalingLimited",
            limited_to != stabilized,
            why.reason(),
            why.message(),
            &now,
        );
        let able = if stabilized != best.replicas && desired == current {
            if best.replicas > stabilized {
                condition(
                    "AbleToScale",
                    true,
                    "ScaleUpStabilized",
                    "recent recommendations were lower than current one, applying the lowest recent recommendation",
                    &now,
                )
            } else {
                condition(
                    "AbleToScale",
                    true,
                    "ScaleDownStabilized",
                    "recent recommendations were higher than current one, applying the highest recent recommendation",
                    &now,
                )
            }
        } else {
            able
        };
        let active = condition(
            "ScalingActive",
            true,
            "ValidMetricFound",
            &format!(
                "the HPA was able to successfully calculate a replica count from {}",
                best.reason
            ),
            &now,
        );
        let mut status = json!({
            "currentReplicas": current,
            "desiredReplicas": desired,
            "currentMetrics": statuses,
        });
        let mut able = able;
        if desired != current {
            let direction = if desired > current { "above" } else { "below" };
            let why = format!("{} {direction} target", best.reason);
            match self
                .set_scale(&ns, &target.kind, &target.name, desired)
                .await
            {
                Ok(()) => {
                    tracing::info!(hpa = key, from = current, to = desired, "rescaled");
                    let keep = bounds.up.longest_period().max(bounds.down.longest_period());
                    self.scale_events
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(key.to_string())
                        .or_default()
                        .record(now_instant, current, desired, keep);
                    self.event(
                        &hpa,
                        EventType::Normal,
                        "SuccessfulRescale",
                        &format!("New size: {desired}; reason: {why}"),
                    )
                    .await;
                    status["lastScaleTime"] = json!(now);
                    able = condition(
                        "AbleToScale",
                        true,
                        "SucceededRescale",
                        &format!(
                            "the HPA controller was able to update the target scale to {desired}"
                        ),
                        &now,
                    );
                }
                Err(e) => {
                    self.event(
                        &hpa,
                        EventType::Warning,
                        "FailedRescale",
                        &format!("New size: {desired}; reason: {why}; error: {e}"),
                    )
                    .await;
                    able = condition(
                        "AbleToScale",
                        false,
                        "FailedUpdateScale",
                        &format!("the HPA controller was unable to update the target scale: {e}"),
                        &now,
                    );
                    status["desiredReplicas"] = json!(current);
                }
            }
        }
        status["conditions"] = Controller::conditions(&hpa, vec![able, active, limited]);
        self.patch_status(&hpa, &ns, &name, status).await?;
        Ok(again)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ready(usage: f64, request: f64) -> PodSample {
        PodSample {
            ignored: false,
            unready: false,
            usage: Some(usage),
            request,
        }
    }

    fn calc(current: i32, pods: &[PodSample], goal: Goal) -> i32 {
        replicas_for(current, pods, goal, TOLERANCE)
            .unwrap()
            .replicas
    }

    // Cases from upstream's replica_calculator_test.go.
    #[test]
    fn utilization_scales_by_the_ratio_of_usage_to_target() {
        // testReplicaCalcScaleUp: 3 pods at 300, 500, 700 of 1000m requests, target 30 %.
        let pods = [
            ready(300.0, 1000.0),
            ready(500.0, 1000.0),
            ready(700.0, 1000.0),
        ];
        let p = replicas_for(3, &pods, Goal::Utilization(30.0), TOLERANCE).unwrap();
        assert_eq!((p.replicas, p.utilization), (5, Some(50)));
        // testReplicaCalcScaleDown: 5 pods, 100..300 of 1000m, target 50 % → 3.
        let pods: Vec<_> = [100.0, 300.0, 500.0, 250.0, 250.0]
            .iter()
            .map(|u| ready(*u, 1000.0))
            .collect();
        assert_eq!(calc(5, &pods, Goal::Utilization(50.0)), 3);
    }

    #[test]
    fn a_ratio_within_the_tolerance_changes_nothing() {
        // testReplicaCalcTolerance: 1010, 1030, 1020 of 1000 (+ overhead), target 100 %.
        let pods = [
            ready(1010.0, 1000.0),
            ready(1030.0, 1000.0),
            ready(1020.0, 1000.0),
        ];
        assert_eq!(calc(3, &pods, Goal::Utilization(100.0)), 3);
        // Just outside: 115 % → ceil(1.15 × 3) = 4.
        let pods = [ready(1150.0, 1000.0); 3];
        assert_eq!(calc(3, &pods, Goal::Utilization(100.0)), 4);
    }

    #[test]
    fn unready_pods_count_as_idle_on_a_scale_up() {
        // testReplicaCalcScaleUpUnreadyLessScale: usage 300, 500, 700 with the first unready,
        // target 30 % → 4 (ratio (0+500+700)/3000 / 0.3 = 1.33 × 3).
        let mut pods = [
            ready(300.0, 1000.0),
            ready(500.0, 1000.0),
            ready(700.0, 1000.0),
        ];
        pods[0].unready = true;
        assert_eq!(calc(3, &pods, Goal::Utilization(30.0)), 4);
        // testReplicaCalcScaleUpUnreadyNoScale: 400, 500, 700 with the first and last
        // unready: ratio with them at 0 is within tolerance-ish → stays at 3.
        let mut pods = [
            ready(400.0, 1000.0),
            ready(500.0, 1000.0),
            ready(700.0, 1000.0),
        ];
        pods[0].unready = true;
        pods[2].unready = true;
        assert_eq!(calc(3, &pods, Goal::Utilization(30.0)), 3);
    }

    #[test]
    fn missing_metrics_count_as_target_on_a_scale_down_and_zero_on_a_scale_up() {
        // testReplicaCalcMissingMetricsNoChangeGt: 4 pods, one without metrics, 1900, 600,
        // 500 of 1000 (+missing), target 100 %: raw ratio 1.0 → no change.
        let mut pods = [
            ready(1900.0, 1000.0),
            ready(600.0, 1000.0),
            ready(500.0, 1000.0),
            ready(0.0, 1000.0),
        ];
        pods[3].usage = None;
        assert_eq!(calc(4, &pods, Goal::Utilization(100.0)), 4);
        // testReplicaCalcMissingMetricsScaleUp: 2000 and 500 of 1000, one missing, target
        // 100 %: ratio 1.25 → missing as 0 → (2500)/3000 = 0.83 reverses direction → no change.
        let mut pods = [
            ready(2000.0, 1000.0),
            ready(500.0, 1000.0),
            ready(0.0, 1000.0),
        ];
        pods[2].usage = None;
        assert_eq!(calc(3, &pods, Goal::Utilization(100.0)), 3);
        // A scale-down with one pod missing: 100 each of 1000, target 50 %: ratio 0.2; the
        // missing pod counts as 100 % of its request → 1300/4000/0.5 = 0.65 → ceil(2.6) = 3.
        let mut pods = [
            ready(100.0, 1000.0),
            ready(100.0, 1000.0),
            ready(100.0, 1000.0),
            ready(0.0, 1000.0),
        ];
        pods[3].usage = None;
        assert_eq!(calc(4, &pods, Goal::Utilization(50.0)), 3);
    }

    #[test]
    fn deleted_and_failed_pods_are_ignored_and_no_metrics_is_an_error() {
        let mut pods = [ready(500.0, 100.0), ready(5000.0, 100.0)];
        pods[1].ignored = true;
        // Only the first counts: 500 % of a 50 % target → 10 × 1.
        assert_eq!(calc(2, &pods, Goal::Utilization(50.0)), 10);
        let mut none = [ready(1.0, 100.0)];
        none[0].usage = None;
        assert_eq!(
            replicas_for(1, &none, Goal::Utilization(50.0), TOLERANCE),
            Err(CalcError::NoMetrics)
        );
        let no_request = [ready(1.0, 0.0)];
        assert_eq!(
            replicas_for(1, &no_request, Goal::Utilization(50.0), TOLERANCE),
            Err(CalcError::MissingRequest)
        );
    }

    #[test]
    fn average_value_divides_total_usage_by_the_per_pod_target() {
        // testReplicaCalcScaleUpCMAverageValue-like: 3 pods using 4000m in all, 500m each
        // wanted → 8.
        let pods = [ready(1000.0, 0.0), ready(1500.0, 0.0), ready(1500.0, 0.0)];
        let p = replicas_for(3, &pods, Goal::AverageValue(500.0), TOLERANCE).unwrap();
        assert_eq!((p.replicas, p.utilization), (8, None));
        assert_eq!(calc(3, &pods, Goal::AverageValue(4000.0 / 3.0)), 3);
    }

    /// A fixed "now" and times before it, for the grouping.
    const NOW_S: i64 = 1_800_000_000;

    fn ago(secs: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(NOW_S - secs).unwrap()
    }

    fn now() -> jiff::Timestamp {
        ago(0)
    }

    /// A Running pod started `started` s ago, Ready (or not) since `since` s ago.
    fn running(started: i64, ready: bool, since: i64) -> PodFacts {
        PodFacts {
            phase: Some("Running".into()),
            started: Some(ago(started)),
            ready: Some(ReadyCondition {
                is_false: !ready,
                since: Some(ago(since)),
            }),
            request: 1000.0,
            ..PodFacts::default()
        }
    }

    /// A sample taken `taken` s ago over a `window` s window.
    fn usage(value: f64, taken: i64, window: u64) -> Usage {
        Usage {
            value,
            timestamp: Some(ago(taken)),
            window: Duration::from_secs(window),
        }
    }

    /// (ignored, unready, missing) of one pod's grouping for CPU.
    fn group(pod: &PodFacts, u: Option<Usage>, cpu: bool) -> (bool, bool, bool) {
        let s = sample(pod, u.as_ref(), cpu, now(), &Settings::default());
        (
            s.ignored,
            s.unready,
            !s.ignored && !s.unready && s.usage.is_none(),
        )
    }

    // Cases after upstream's TestGroupPods, with upstream's default 5 min initialization
    // period and 30 s readiness delay.
    #[test]
    fn grouping_follows_upstreams_readiness_rules_for_cpu() {
        let fresh = Some(usage(1.0, 0, 30));
        // Within the initialization period: Ready for 30 s and a 30 s window that began then.
        assert_eq!(
            group(&running(60, true, 30), fresh, true),
            (false, false, false)
        );
        // The same with a 60 s window: the sample reaches back before Ready (start-up burst).
        assert_eq!(
            group(&running(60, true, 30), Some(usage(1.0, 0, 60)), true),
            (false, true, false)
        );
        // Not Ready within the period.
        assert_eq!(
            group(&running(200, false, 190), fresh, true),
            (false, true, false)
        );
        // After the period, Ready: counted, however old the sample.
        assert_eq!(
            group(&running(400, true, 400), Some(usage(1.0, 120, 60)), true),
            (false, false, false)
        );
        // After the period, not Ready but it was (its condition changed 60 s after its start):
        // counted.
        assert_eq!(
            group(&running(600, false, 540), fresh, true),
            (false, false, false)
        );
        // After the period, never Ready (changed 10 s after its start, within the 30 s delay).
        assert_eq!(
            group(&running(600, false, 590), fresh, true),
            (false, true, false)
        );
        // No Ready condition, or no start time: unready.
        let mut no_cond = running(600, true, 600);
        no_cond.ready = None;
        assert_eq!(group(&no_cond, fresh, true), (false, true, false));
        let mut no_start = running(600, true, 600);
        no_start.started = None;
        assert_eq!(group(&no_start, fresh, true), (false, true, false));
        // No sample: missing, whatever its readiness.
        assert_eq!(
            group(&running(600, false, 590), None, true),
            (false, false, true)
        );
        // Pending: unready with or without a sample; deleted or Failed: ignored.
        let pending = PodFacts {
            phase: Some("Pending".into()),
            request: 1000.0,
            ..PodFacts::default()
        };
        assert_eq!(group(&pending, None, true), (false, true, false));
        assert_eq!(group(&pending, fresh, false), (false, true, false));
        let mut deleting = running(600, true, 600);
        deleting.deleting = true;
        assert_eq!(group(&deleting, fresh, true), (true, false, false));
        let mut failed = running(600, true, 600);
        failed.phase = Some("Failed".into());
        assert_eq!(group(&failed, fresh, true), (true, false, false));
    }

    #[test]
    fn memory_samples_count_whatever_the_readiness() {
        // Never Ready, or without a condition at all: a memory sample still counts.
        let fresh = Some(usage(1.0, 0, 30));
        assert_eq!(
            group(&running(600, false, 590), fresh, false),
            (false, false, false)
        );
        let bare = PodFacts {
            phase: Some("Succeeded".into()),
            ..PodFacts::default()
        };
        assert_eq!(group(&bare, fresh, false), (false, false, false));
    }

    #[test]
    fn the_periods_come_from_the_settings() {
        // A 1 min initialization period: a pod started 2 min ago, Ready for 10 s, with a
        // sample reaching back before Ready, is past it and counts.
        let settings = Settings {
            cpu_initialization_period: Duration::from_secs(60),
            ..Settings::default()
        };
        let pod = running(120, true, 10);
        let u = usage(1.0, 0, 60);
        assert!(sample(&pod, Some(&u), true, now(), &Settings::default()).unready);
        assert!(!sample(&pod, Some(&u), true, now(), &settings).unready);
        // A 5 s readiness delay: a pod whose condition changed 10 s after its start was Ready
        // once, so its sample counts.
        let settings = Settings {
            initial_readiness_delay: Duration::from_secs(5),
            ..Settings::default()
        };
        let pod = running(600, false, 590);
        let u = usage(1.0, 0, 30);
        assert!(sample(&pod, Some(&u), true, now(), &Settings::default()).unready);
        assert!(!sample(&pod, Some(&u), true, now(), &settings).unready);
    }

    /// The replica count for `pods` (facts and samples) against a CPU utilization target.
    fn cpu_calc(current: i32, pods: &[(PodFacts, Option<Usage>)], target: f64) -> i32 {
        let samples: Vec<PodSample> = pods
            .iter()
            .map(|(p, u)| sample(p, u.as_ref(), true, now(), &Settings::default()))
            .collect();
        calc(current, &samples, Goal::Utilization(target))
    }

    // After upstream's TestReplicaCalcScaleUpHotCpuLessScale / ...HotCpuNoScale /
    // ...MissingMetricsHotCpuScaleUp / ...MissingMetricsUnreadyScaleDown /
    // ...DuringRollingUpdateWithMaxSurge: a "hot" pod started seconds ago, Ready moments
    // ago, whose sample reaches back before it was Ready; "cool" ones started minutes ago.
    #[test]
    fn starting_pods_cpu_counts_as_zero_on_a_scale_up() {
        let hot = || running(10, true, 5);
        let cool = || running(600, true, 600);
        let u = |v: f64| Some(usage(v, 0, 10));
        // 300 (hot), 500, 700 of 1000m at a 30 % target: the hot pod as 0 → 4, not 5.
        let pods = [(hot(), u(300.0)), (cool(), u(500.0)), (cool(), u(700.0))];
        assert_eq!(cpu_calc(3, &pods, 30.0), 4);
        let all_cool = [(cool(), u(300.0)), (cool(), u(500.0)), (cool(), u(700.0))];
        assert_eq!(cpu_calc(3, &all_cool, 30.0), 5);
        // 400 (hot), 500, 700 (hot): 500 alone asks to grow, but with the hot pods at 0 the
        // ratio falls below 1: no change.
        let pods = [(hot(), u(400.0)), (cool(), u(500.0)), (hot(), u(700.0))];
        assert_eq!(cpu_calc(3, &pods, 30.0), 3);
        // A hot unready pod, one at 2000, one without a sample, target 50 %: both count as 0
        // on the scale-up → (2000)/3000/0.5 = 1.33 → 4.
        let pods = [
            (running(10, false, 5), u(100.0)),
            (cool(), u(2000.0)),
            (cool(), None),
        ];
        assert_eq!(cpu_calc(3, &pods, 50.0), 4);
    }

    #[test]
    fn unready_pods_are_left_out_and_missing_ones_count_fully_on_a_scale_down() {
        let cool = || running(600, true, 600);
        let u = |v: f64| Some(usage(v, 0, 10));
        // One never-Ready pod, two at 100, one without a sample, target 50 %: the unready one
        // is left out, the missing one counts as 100 % → 1200/3000/0.5 = 0.8 → 3.
        let pods = [
            (running(600, false, 595), u(100.0)),
            (cool(), u(100.0)),
            (cool(), u(100.0)),
            (cool(), None),
        ];
        assert_eq!(cpu_calc(4, &pods, 50.0), 3);
        // During a rolling update with a surge pod not yet reporting: 2 wanted, 3 running, two
        // at 100 of 1000m, target 50 %: the surge pod counts as 100 % → 0.8 × 3 = 3 would grow
        // a scale-down, so it stays at 2.
        let pods = [(cool(), u(100.0)), (cool(), u(100.0)), (cool(), None)];
        assert_eq!(cpu_calc(2, &pods, 50.0), 2);
    }

    #[test]
    fn go_durations_parse_as_upstream_writes_them() {
        for (text, want) in [
            ("10s", Duration::from_secs(10)),
            ("5m0s", Duration::from_secs(300)),
            ("1m30s", Duration::from_secs(90)),
            ("1h2m3s", Duration::from_secs(3723)),
            ("1.5s", Duration::from_millis(1500)),
            ("300ms", Duration::from_millis(300)),
            ("10.042s", Duration::from_millis(10_042)),
            ("0", Duration::ZERO),
        ] {
            assert_eq!(parse_go_duration(text), Some(want), "{text}");
        }
        for bad in ["", "s", "10", "5 m", "-1s", "1d", "1.2.3s"] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn stabilization_keeps_the_highest_recent_recommendation_before_scaling_down() {
        let t0 = Instant::now();
        let mut recs = Recommendations::new();
        let (up, down) = (Duration::ZERO, Duration::from_secs(300));
        assert_eq!(stabilize(&mut recs, t0, 1, 3, up, down), 3);
        // The load is gone: the recommendation is 1, but 3 was recommended 15 s ago.
        let t1 = t0 + Duration::from_secs(15);
        assert_eq!(stabilize(&mut recs, t1, 3, 1, up, down), 3);
        // After the window, the highest recent one is 1.
        let t2 = t0 + Duration::from_secs(316);
        assert_eq!(stabilize(&mut recs, t2, 3, 1, up, down), 1);
        // A scale-up is not delayed without an up window.
        assert_eq!(stabilize(&mut recs, t2, 1, 4, up, down), 4);
        // With one, the lowest recent recommendation holds it back.
        let mut recs = vec![(t2, 1)];
        assert_eq!(
            stabilize(
                &mut recs,
                t2 + Duration::from_secs(5),
                1,
                4,
                Duration::from_secs(60),
                down
            ),
            1
        );
        // Entries older than both windows are dropped.
        let mut recs = vec![(t0, 9)];
        stabilize(&mut recs, t0 + Duration::from_secs(400), 1, 1, up, down);
        assert_eq!(recs.len(), 1);
    }

    fn pods(value: i32, secs: u64) -> Policy {
        Policy {
            kind: PolicyKind::Pods,
            value,
            period: Duration::from_secs(secs),
        }
    }

    fn percent(value: i32, secs: u64) -> Policy {
        Policy {
            kind: PolicyKind::Percent,
            value,
            period: Duration::from_secs(secs),
        }
    }

    fn rules(select: Select, policies: &[Policy]) -> Rules {
        Rules {
            select,
            policies: policies.to_vec(),
        }
    }

    fn bounds(min: i32, max: i32, up: Rules, down: Rules) -> Bounds {
        Bounds { min, max, up, down }
    }

    // Cases in the manner of upstream's TestConvertDesiredReplicasWithBehaviorRate and
    // TestScalingWithRules (horizontal_test.go).
    #[test]
    fn the_default_rules_allow_four_pods_or_doubling_per_period() {
        let now = Instant::now();
        let none = ScaleEvents::default();
        let up = Rules::default_up();
        // 1 replica: max(1 + 4, 2 × 1) = 5; 10 replicas: max(14, 20) = 20.
        assert_eq!(scale_up_limit(1, &none, &up, now), 5);
        assert_eq!(scale_up_limit(10, &none, &up, now), 20);
        // Scaling down: 100 % per 15 s, so down to minReplicas at once.
        let b = bounds(1, 10, Rules::default_up(), Rules::default_down());
        assert_eq!(
            limit_rate(8, 1, &b, &none, now),
            (1, Limited::DesiredWithinRange)
        );
        assert_eq!(
            limit_rate(8, 0, &b, &none, now),
            (1, Limited::TooFewReplicas)
        );
        // 1 → 4 within maxReplicas 4 is not limited: the negative control of the rate tests.
        let b = bounds(1, 4, Rules::default_up(), Rules::default_down());
        assert_eq!(
            limit_rate(1, 4, &b, &none, now),
            (4, Limited::DesiredWithinRange)
        );
        assert_eq!(
            limit_rate(1, 9, &b, &none, now),
            (4, Limited::TooManyReplicas)
        );
    }

    #[test]
    fn a_pods_policy_limits_each_period_from_the_count_at_its_start() {
        let t0 = Instant::now();
        let b = bounds(
            1,
            10,
            rules(Select::Max, &[pods(3, 60)]),
            Rules::default_down(),
        );
        // "scaleUpPoliciesPods 3 per 60 s": from 5 wanting 10 → 8, ScaleUpLimit.
        let mut events = ScaleEvents::default();
        assert_eq!(
            limit_rate(5, 10, &b, &events, t0),
            (8, Limited::ScaleUpLimit)
        );
        events.record(t0, 5, 8, Duration::from_secs(60));
        // 30 s later the period still started at 5: no more than 8.
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(
            limit_rate(8, 10, &b, &events, t1),
            (8, Limited::ScaleUpLimit)
        );
        // Once the event is older than the period, 3 more.
        let t2 = t0 + Duration::from_secs(61);
        assert_eq!(
            limit_rate(8, 10, &b, &events, t2),
            (10, Limited::DesiredWithinRange)
        );
        // One pod per period, from 1 towards 4: 2, then nothing until the period is over.
        let one = bounds(
            1,
            4,
            rules(Select::Max, &[pods(1, 15)]),
            Rules::default_down(),
        );
        let mut events = ScaleEvents::default();
        assert_eq!(
            limit_rate(1, 4, &one, &events, t0),
            (2, Limited::ScaleUpLimit)
        );
        events.record(t0, 1, 2, Duration::from_secs(15));
        assert_eq!(
            limit_rate(2, 4, &one, &events, t0 + Duration::from_secs(14)),
            (2, Limited::ScaleUpLimit)
        );
        assert_eq!(
            limit_rate(2, 4, &one, &events, t0 + Duration::from_secs(15)),
            (3, Limited::ScaleUpLimit)
        );
    }

    #[test]
    fn percent_policies_round_up_when_growing_and_down_when_shrinking() {
        let now = Instant::now();
        let none = ScaleEvents::default();
        // "scaleUpPoliciesPercent 25": 10 → ceil(12.5) = 13.
        let b = bounds(
            1,
            100,
            rules(Select::Max, &[percent(25, 60)]),
            rules(Select::Max, &[percent(50, 60)]),
        );
        assert_eq!(
            limit_rate(10, 20, &b, &none, now),
            (13, Limited::ScaleUpLimit)
        );
        // 1 replica at 25 %: ceil(1.25) = 2, so a small target still grows.
        assert_eq!(
            limit_rate(1, 20, &b, &none, now),
            (2, Limited::ScaleUpLimit)
        );
        // 5 at 50 % down: floor(2.5) = 2.
        assert_eq!(
            limit_rate(5, 1, &b, &none, now),
            (2, Limited::ScaleDownLimit)
        );
    }

    #[test]
    fn select_policy_picks_the_largest_or_smallest_change_or_none() {
        let now = Instant::now();
        let none = ScaleEvents::default();
        let both = [pods(4, 60), percent(100, 60)];
        // 10 replicas: Pods allows 14, Percent 20.
        assert_eq!(
            scale_up_limit(10, &none, &rules(Select::Max, &both), now),
            20
        );
        assert_eq!(
            scale_up_limit(10, &none, &rules(Select::Min, &both), now),
            14
        );
        assert_eq!(
            scale_up_limit(10, &none, &rules(Select::Disabled, &both), now),
            10
        );
        // Down from 10: Pods 4 allows 6, Percent 50 allows 5.
        let down = [pods(4, 60), percent(50, 60)];
        assert_eq!(
            scale_down_limit(10, &none, &rules(Select::Max, &down), now),
            5
        );
        assert_eq!(
            scale_down_limit(10, &none, &rules(Select::Min, &down), now),
            6
        );
        // Disabled holds the count, with the rate as the reason.
        let b = bounds(
            1,
            20,
            rules(Select::Disabled, &both),
            rules(Select::Disabled, &down),
        );
        assert_eq!(
            limit_rate(10, 15, &b, &none, now),
            (10, Limited::ScaleUpLimit)
        );
        assert_eq!(
            limit_rate(10, 2, &b, &none, now),
            (10, Limited::ScaleDownLimit)
        );
    }

    #[test]
    fn scale_downs_in_the_period_count_against_scale_downs_and_for_scale_ups() {
        let t0 = Instant::now();
        let keep = Duration::from_secs(60);
        let mut events = ScaleEvents::default();
        // Down 10 → 8 with Pods 2 per 60 s: no further down in the period.
        events.record(t0, 10, 8, keep);
        let b = bounds(
            1,
            20,
            rules(Select::Max, &[pods(2, 60)]),
            rules(Select::Max, &[pods(2, 60)]),
        );
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(
            limit_rate(8, 3, &b, &events, t1),
            (8, Limited::ScaleDownLimit)
        );
        // A scale-up in the same period starts from 10: up to 12.
        assert_eq!(
            limit_rate(8, 15, &b, &events, t1),
            (12, Limited::ScaleUpLimit)
        );
        // Recording forgets events older than the longest period.
        events.record(t0 + Duration::from_secs(61), 8, 9, keep);
        assert!(events.down.is_empty());
        assert_eq!(events.up.len(), 1);
    }

    #[test]
    fn rules_take_upstreams_defaults_for_what_the_spec_leaves_out() {
        assert_eq!(
            Rules::from_spec(None, Rules::default_up()),
            Rules::default_up()
        );
        let only_select = HPAScalingRules {
            select_policy: Some("Min".into()),
            ..Default::default()
        };
        let r = Rules::from_spec(Some(&only_select), Rules::default_up());
        assert_eq!(r.select, Select::Min);
        assert_eq!(r.policies, Rules::default_up().policies);
        let one = HPAScalingRules {
            policies: Some(vec![k8s_openapi::api::autoscaling::v2::HPAScalingPolicy {
                type_: "Pods".into(),
                value: 1,
                period_seconds: 30,
            }]),
            ..Default::default()
        };
        let r = Rules::from_spec(Some(&one), Rules::default_down());
        assert_eq!((r.select, r.policies), (Select::Max, vec![pods(1, 30)]));
    }

    #[test]
    fn cpu_counts_in_millicores_and_the_rest_in_base_units() {
        // The parsing itself is trellis-api's (and tested there).
        assert_eq!(amount("250m", true), Ok(250.0));
        assert_eq!(amount("1", true), Ok(1000.0));
        assert_eq!(amount("12345678n", true).map(f64::round), Ok(12.0));
        assert_eq!(amount("4Ki", false), Ok(4096.0));
        assert_eq!(amount("1Mi", false), Ok(1_048_576.0));
        assert_eq!(amount("1Pi", false), Ok(1024f64.powi(5)));
        assert!(amount("x", false).is_err());
    }
}
