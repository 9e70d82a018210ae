//! What the scheduler writes to the API: the binding (`POST pods/<name>/binding`), the
//! `PodScheduled=False` condition of a pod no node fits, and the events `kubectl describe`
//! shows (`Scheduled`, `FailedScheduling`).

use k8s_openapi::api::core::v1::{Event, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

/// The scheduler's name, in events and in `spec.schedulerName`.
pub const SCHEDULER_NAME: &str = "default-scheduler";

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The pod is already bound, or being deleted (409): someone else decided; do not retry.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The pod is gone (404).
    #[error("not found: {0}")]
    NotFound(String),
    #[error("{0}")]
    Other(String),
}

impl From<kube::Error> for BindError {
    fn from(e: kube::Error) -> Self {
        match &e {
            kube::Error::Api(s) if s.code == 409 => BindError::Conflict(s.message.clone()),
            kube::Error::Api(s) if s.code == 404 => BindError::NotFound(s.message.clone()),
            _ => BindError::Other(e.to_string()),
        }
    }
}

fn ns_name(pod: &Pod) -> (&str, &str) {
    (
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default(),
    )
}

/// Binds the pod to the node (a v1 Binding to the pod's `binding` subresource; the API server
/// sets `spec.nodeName` and `PodScheduled=True`, and refuses a second binding with 409).
pub async fn bind(client: &kube::Client, pod: &Pod, node: &str) -> Result<(), BindError> {
    let (ns, name) = ns_name(pod);
    let binding = json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": name, "namespace": ns, "uid": pod.metadata.uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    Api::<Pod>::namespaced(client.clone(), ns)
        .create_subresource::<_, serde_json::Value>(
            "binding",
            name,
            &PostParams::default(),
            &binding,
        )
        .await?;
    Ok(())
}

/// Whether the pod already carries this PodScheduled=False condition (no write needed).
pub fn has_condition(pod: &Pod, message: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
                    && c.message.as_deref() == Some(message)
            })
        })
}

/// Sets `PodScheduled=False`, reason `Unschedulable`, with the per-node message (a strategic
/// merge patch of the status: other conditions stay).
pub async fn mark_unschedulable(
    client: &kube::Client,
    pod: &Pod,
    message: &str,
) -> Result<(), BindError> {
    let (ns, name) = ns_name(pod);
    let now = Time(jiff::Timestamp::now());
    let patch = json!({"status": {"conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": message, "lastProbeTime": null, "lastTransitionTime": now,
    }]}});
    Api::<Pod>::namespaced(client.clone(), ns)
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(patch))
        .await?;
    Ok(())
}

/// An event about the pod, from the scheduler.
pub fn event(pod: &Pod, type_: &str, reason: &str, message: String) -> Event {
    let (ns, name) = ns_name(pod);
    let now = jiff::Timestamp::now();
    Event {
        metadata: kube::api::ObjectMeta {
            name: Some(format!("{name}.{:x}", now.as_nanosecond())),
            namespace: Some(ns.to_string()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name.to_string()),
            namespace: Some(ns.to_string()),
            uid: pod.metadata.uid.clone(),
            resource_version: pod.metadata.resource_version.clone(),
            ..Default::default()
        },
        type_: Some(type_.into()),
        reason: Some(reason.into()),
        message: Some(message),
        action: Some(
            if reason == "Scheduled" {
                "Binding"
            } else {
                "Scheduling"
            }
            .into(),
        ),
        source: Some(k8s_openapi::api::core::v1::EventSource {
            component: Some(SCHEDULER_NAME.into()),
            host: None,
        }),
        reporting_component: Some(SCHEDULER_NAME.into()),
        reporting_instance: Some(SCHEDULER_NAME.into()),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: Some(MicroTime(now)),
        count: Some(1),
        ..Default::default()
    }
}

/// `Successfully assigned <ns>/<pod> to <node>`, as upstream words it.
pub fn scheduled_message(pod: &Pod, node: &str) -> String {
    let (ns, name) = ns_name(pod);
    format!("Successfully assigned {ns}/{name} to {node}")
}

pub async fn record(client: &kube::Client, ev: &Event) -> Result<(), BindError> {
    let ns = ev.metadata.namespace.as_deref().unwrap_or("default");
    Api::<Event>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), ev)
        .await?;
    Ok(())
}
