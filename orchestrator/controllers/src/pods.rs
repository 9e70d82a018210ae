//! What controllers read from a pod's status: active, ready, available.

use std::time::Duration;

use k8s_openapi::jiff;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Not finished and not being deleted: it counts towards a controller's replicas.
pub fn is_active(p: &Pod) -> bool {
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    p.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

pub fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// When the pod's Ready condition turned true, if it is true.
pub fn ready_since(p: &Pod) -> Option<Option<&Time>> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .map(|c| c.last_transition_time.as_ref())
}

pub fn is_ready(p: &Pod) -> bool {
    ready_since(p).is_some()
}

/// Ready for at least `min_ready` at `now` (upstream's `IsPodAvailable`).
pub fn is_available(p: &Pod, min_ready: Duration, now: jiff::Timestamp) -> bool {
    match ready_since(p) {
        None => false,
        Some(_) if min_ready.is_zero() => true,
        Some(None) => false,
        Some(Some(t)) => {
            let since = now.duration_since(t.0);
            since.as_secs_f64() >= min_ready.as_secs_f64()
        }
    }
}

/// Time left until a ready pod becomes available (None when it never will without change).
pub fn until_available(p: &Pod, min_ready: Duration, now: jiff::Timestamp) -> Option<Duration> {
    let t = ready_since(p)??;
    let since = now.duration_since(t.0).as_secs_f64();
    let left = min_ready.as_secs_f64() - since;
    (left > 0.0).then(|| Duration::from_secs_f64(left))
}

pub fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).max().unwrap_or(0))
        .unwrap_or(0)
}

pub fn node_name(p: &Pod) -> Option<&str> {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}
