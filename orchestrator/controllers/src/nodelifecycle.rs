//! Node lifecycle: a node whose kubelet stopped renewing its Lease (kube-node-lease) and
//! posting status for the grace period gets Ready=Unknown and the
//! `node.kubernetes.io/unreachable` taints; a node whose kubelet reports Ready=False gets the
//! `not-ready` taints; both go when it is Ready again. Pods on a node with NoExecute taints
//! are evicted (deleted) once their tolerations run out — at once without a toleration,
//! after `tolerationSeconds` with one (the API server adds 300 s by default). Their
//! controllers replace them elsewhere; a bare pod is simply gone.
//!
//! Heartbeats are judged on this controller's clock: a node's probe time is when this
//! controller last saw its Lease's renewTime or its Ready heartbeat change, so clock skew
//! between nodes does not matter (as upstream).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;
use tokio::sync::watch;

use crate::Ctx;
use crate::informer::Informer;
use crate::pods;

pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";

/// Whether `t` tolerates `taint` (upstream's `ToleratesTaint`).
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = t.effect.as_deref().filter(|e| !e.is_empty())
        && e != taint.effect
    {
        return false;
    }
    let key = t.key.as_deref().unwrap_or("");
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => key.is_empty() || key == taint.key,
        _ => {
            key == taint.key
                && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
    }
}

/// When a pod on a node with these NoExecute taints must go: now (no toleration for one of
/// them), at a time (the shortest tolerationSeconds from the taint's timeAdded), or never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    Now,
    At(jiff::Timestamp),
    Never,
}

pub fn eviction(tolerations: &[Toleration], taints: &[Taint], now: jiff::Timestamp) -> Eviction {
    let mut at: Option<jiff::Timestamp> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let matching: Vec<&Toleration> =
            tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if matching.is_empty() {
            return Eviction::Now;
        }
        // Forever if any matching toleration has no limit; else the shortest.
        if matching.iter().any(|t| t.toleration_seconds.is_none()) {
            continue;
        }
        let secs = matching
            .iter()
            .filter_map(|t| t.toleration_seconds)
            .min()
            .unwrap_or(0)
            .max(0);
        let added = taint.time_added.as_ref().map(|t| t.0).unwrap_or(now);
        let when = added + jiff::SignedDuration::from_secs(secs);
        at = Some(at.map_or(when, |a| a.min(when)));
    }
    match at {
        None => Eviction::Never,
        Some(t) if t <= now => Eviction::Now,
        Some(t) => Eviction::At(t),
    }
}

/// The taints this controller wants for a node's Ready status ("True", "False", "Unknown").
pub fn wanted_taints(ready: &str) -> Vec<(&'static str, &'static str)> {
    match ready {
        "Unknown" => vec![(UNREACHABLE, "NoExecute"), (UNREACHABLE, "NoSchedule")],
        "False" => vec![(NOT_READY, "NoExecute"), (NOT_READY, "NoSchedule")],
        _ => vec![],
    }
}

fn ready_condition(n: &Node) -> Option<&NodeCondition> {
    n.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// What was last seen of a node's heartbeats, and when this controller saw it change.
struct Probe {
    lease: Option<jiff::Timestamp>,
    heartbeat: Option<jiff::Timestamp>,
    at: Instant,
}

/// The node lifecycle controller's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub grace: Duration,
    pub period: Duration,
}

/// Runs until `stop` turns true.
pub async fn run(
    ctx: Ctx,
    nodes: Informer<Node>,
    leases: Informer<Lease>,
    pods_cache: Informer<Pod>,
    settings: Settings,
    mut stop: watch::Receiver<bool>,
) {
    nodes.wait_synced().await;
    leases.wait_synced().await;
    pods_cache.wait_synced().await;
    let mut probes: HashMap<String, Probe> = HashMap::new();
    let mut evicted: HashMap<String, Instant> = HashMap::new();
    let node_api: Api<Node> = Api::all(ctx.client.clone());
    loop {
        let now = jiff::Timestamp::now();
        let mut next = settings.period;
        let mut tainted: HashMap<String, Vec<Taint>> = HashMap::new();
        for n in nodes.state() {
            let Some(name) = n.metadata.name.clone() else {
                continue;
            };
            let lease = leases
                .get(&format!("kube-node-lease/{name}"))
                .and_then(|l| l.spec.as_ref()?.renew_time.as_ref().map(|t| t.0));
            let ready = ready_condition(&n);
            let heartbeat = ready.and_then(|c| c.last_heartbeat_time.as_ref().map(|t| t.0));
            let p = probes.entry(name.clone()).or_insert(Probe {
                lease,
                heartbeat,
                at: Instant::now(),
            });
            if p.lease != lease || p.heartbeat != heartbeat {
                *p = Probe {
                    lease,
                    heartbeat,
                    at: Instant::now(),
                };
            }
            // No Ready condition yet (a kubelet that has not posted status): no taint until
            // the grace period says it never will.
            let mut status = ready.map(|c| c.status.clone()).unwrap_or_default();
            if p.at.elapsed() > settings.grace && status != "Unknown" {
                tracing::warn!(node = %name, grace = ?settings.grace, "no heartbeat: marking the node Unknown");
                if let Err(e) = mark_unknown(&node_api, &n, now).await {
                    tracing::warn!(node = %name, error = %e, "marking the node Unknown");
                    continue;
                }
                status = "Unknown".into();
            } else if p.at.elapsed() <= settings.grace {
                next = next
                    .min(settings.grace.saturating_sub(p.at.elapsed()) + Duration::from_millis(50));
            }
            match sync_taints(&node_api, &n, &status, now).await {
                Ok(t) => {
                    tainted.insert(name, t);
                }
                Err(e) => tracing::warn!(node = %name, error = %e, "updating the node's taints"),
            }
        }
        probes.retain(|n, _| nodes.get(n).is_some());
        // Evictions.
        evicted.retain(|_, t| t.elapsed() < Duration::from_secs(30));
        for p in pods_cache.state() {
            let (Some(node), Some(ns), Some(name)) = (
                pods::node_name(&p),
                p.metadata.namespace.as_deref(),
                p.metadata.name.as_deref(),
            ) else {
                continue;
            };
            let Some(taints) = tainted.get(node) else {
                continue;
            };
            if taints.iter().all(|t| t.effect != "NoExecute")
                || p.metadata.deletion_timestamp.is_some()
            {
                continue;
            }
            let uid = p.metadata.uid.clone().unwrap_or_default();
            if evicted.contains_key(&uid) {
                continue;
            }
            let tolerations = p
                .spec
                .as_ref()
                .and_then(|s| s.tolerations.clone())
                .unwrap_or_default();
            match eviction(&tolerations, taints, now) {
                Eviction::Never => {}
                Eviction::At(t) => {
                    let left = t.duration_since(now).as_secs_f64().max(0.0);
                    next = next.min(Duration::from_secs_f64(left) + Duration::from_millis(50));
                }
                Eviction::Now => {
                    tracing::info!(pod = %format!("{ns}/{name}"), %node, "evicting: its node's taints are no longer tolerated");
                    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
                    let dp = DeleteParams {
                        preconditions: Some(kube::api::Preconditions {
                            uid: Some(uid.clone()),
                            resource_version: None,
                        }),
                        ..Default::default()
                    };
                    match api.delete(name, &dp).await {
                        Ok(_) => {
                            evicted.insert(uid, Instant::now());
                            ctx.metrics.inc("trellis_node_lifecycle_evictions_total", "Pods deleted because their node's NoExecute taints ran out of toleration.", &[], 1.0);
                        }
                        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                        Err(e) => tracing::warn!(error = %e, "eviction"),
                    }
                }
            }
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(next.max(Duration::from_millis(100))) => {}
        }
    }
}

async fn mark_unknown(api: &Api<Node>, n: &Node, now: jiff::Timestamp) -> Result<(), kube::Error> {
    let name = n.metadata.name.clone().unwrap_or_default();
    let mut conds = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    if !conds.iter().any(|c| c.type_ == "Ready") {
        conds.push(NodeCondition {
            type_: "Ready".into(),
            status: "Unknown".into(),
            reason: Some("NodeStatusNeverUpdated".into()),
            message: Some("Kubelet never posted node status.".into()),
            last_transition_time: Some(Time(now)),
            last_heartbeat_time: None,
        });
    }
    for c in conds.iter_mut() {
        if matches!(
            c.type_.as_str(),
            "Ready" | "MemoryPressure" | "DiskPressure" | "PIDPressure"
        ) && c.status != "Unknown"
        {
            c.status = "Unknown".into();
            c.reason = Some("NodeStatusUnknown".into());
            c.message = Some("Kubelet stopped posting node status.".into());
            c.last_transition_time = Some(Time(now));
        }
    }
    let patch = json!({"status": {"conditions": conds}});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Makes the node's not-ready/unreachable taints match `ready`; returns the node's taints.
async fn sync_taints(
    api: &Api<Node>,
    n: &Node,
    ready: &str,
    now: jiff::Timestamp,
) -> Result<Vec<Taint>, kube::Error> {
    let cur = n
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let want = wanted_taints(ready);
    let mut next: Vec<Taint> = cur
        .iter()
        .filter(|t| {
            let ours = t.key == UNREACHABLE || t.key == NOT_READY;
            !ours || want.iter().any(|(k, e)| *k == t.key && *e == t.effect)
        })
        .cloned()
        .collect();
    for (k, e) in &want {
        if !next.iter().any(|t| t.key == *k && t.effect == *e) {
            next.push(Taint {
                key: (*k).into(),
                effect: (*e).into(),
                value: None,
                time_added: (*e == "NoExecute").then_some(Time(now)),
            });
        }
    }
    if next == cur {
        return Ok(cur);
    }
    let name = n.metadata.name.clone().unwrap_or_default();
    tracing::info!(node = %name, ready, taints = ?next.iter().map(|t| format!("{}:{}", t.key, t.effect)).collect::<Vec<_>>(), "node taints");
    let patch = json!({"metadata": {"resourceVersion": n.metadata.resource_version}, "spec": {"taints": next}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, added: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: "NoExecute".into(),
            value: None,
            time_added: Some(Time(added.parse().unwrap())),
        }
    }

    fn tol(key: Option<&str>, op: &str, secs: Option<i64>) -> Toleration {
        Toleration {
            key: key.map(String::from),
            operator: Some(op.into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: secs,
            value: None,
        }
    }

    const T0: &str = "2026-01-01T00:00:00Z";

    #[test]
    fn a_pod_without_a_toleration_is_evicted_at_once() {
        let now: jiff::Timestamp = T0.parse().unwrap();
        assert_eq!(eviction(&[], &[taint(UNREACHABLE, T0)], now), Eviction::Now);
    }

    #[test]
    fn a_toleration_with_seconds_delays_eviction_from_the_taints_time() {
        let now: jiff::Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let t = [tol(Some(UNREACHABLE), "Exists", Some(300))];
        assert_eq!(
            eviction(&t, &[taint(UNREACHABLE, T0)], now),
            Eviction::At("2026-01-01T00:05:00Z".parse().unwrap())
        );
        let later: jiff::Timestamp = "2026-01-01T00:05:00Z".parse().unwrap();
        assert_eq!(
            eviction(&t, &[taint(UNREACHABLE, T0)], later),
            Eviction::Now
        );
    }

    #[test]
    fn a_toleration_without_seconds_or_an_exists_all_keeps_the_pod_forever() {
        let now: jiff::Timestamp = T0.parse().unwrap();
        assert_eq!(
            eviction(
                &[tol(Some(UNREACHABLE), "Exists", None)],
                &[taint(UNREACHABLE, T0)],
                now
            ),
            Eviction::Never
        );
        assert_eq!(
            eviction(&[tol(None, "Exists", None)], &[taint(NOT_READY, T0)], now),
            Eviction::Never
        );
    }

    #[test]
    fn tolerating_one_taint_does_not_tolerate_another() {
        let now: jiff::Timestamp = T0.parse().unwrap();
        let t = [tol(Some(NOT_READY), "Exists", None)];
        assert_eq!(eviction(&t, &[taint(UNREACHABLE, T0)], now), Eviction::Now);
    }

    #[test]
    fn the_taints_follow_the_ready_condition() {
        assert_eq!(wanted_taints("Unknown")[0], (UNREACHABLE, "NoExecute"));
        assert_eq!(wanted_taints("False")[0], (NOT_READY, "NoExecute"));
        assert!(wanted_taints("True").is_empty());
    }
}
