//! Events a controller records about the objects it acts on (`kubectl describe` shows them):
//! one builder for every controller, so they all fill the same fields the way upstream's
//! event recorder does (involved object with uid and resourceVersion, source and reporting
//! component, first/last/event time, count 1).

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff;
use kube::Api;
use kube::api::PostParams;

/// The two event types the API accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// What happened, as an Event says it.
#[derive(Debug, Clone, Copy)]
pub struct What<'a> {
    pub type_: EventType,
    pub reason: &'a str,
    pub message: &'a str,
    /// The action taken or failed (`Allocating`), when the controller names one.
    pub action: Option<&'a str>,
}

/// The Event `component` records about `obj` at `now`; None when `obj` has no name or
/// namespace (there is nowhere to put it).
pub fn event<K>(component: &str, obj: &K, what: What<'_>, now: jiff::Timestamp) -> Option<Event>
where
    K: kube::Resource<DynamicType = ()>,
{
    let meta = obj.meta();
    let (ns, name) = (meta.namespace.as_deref()?, meta.name.as_deref()?);
    Some(Event {
        metadata: kube::api::ObjectMeta {
            name: Some(format!("{name}.{:x}", now.as_nanosecond())),
            namespace: Some(ns.to_string()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some(K::api_version(&()).into_owned()),
            kind: Some(K::kind(&()).into_owned()),
            name: Some(name.to_string()),
            namespace: Some(ns.to_string()),
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
            ..Default::default()
        },
        type_: Some(what.type_.as_str().into()),
        reason: Some(what.reason.into()),
        message: Some(what.message.into()),
        action: what.action.map(str::to_string),
        source: Some(EventSource {
            component: Some(component.into()),
            host: None,
        }),
        reporting_component: Some(component.into()),
        reporting_instance: Some(component.into()),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: Some(MicroTime(now)),
        count: Some(1),
        ..Default::default()
    })
}

/// Records the event now. A failure is logged, not returned: an event is never worth failing
/// (and retrying) the sync that made it.
pub async fn record<K>(client: &kube::Client, component: &str, obj: &K, what: What<'_>)
where
    K: kube::Resource<DynamicType = ()>,
{
    let Some(ev) = event(component, obj, what, jiff::Timestamp::now()) else {
        return;
    };
    let ns = ev.metadata.namespace.clone().unwrap_or_default();
    if let Err(e) = Api::<Event>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &ev)
        .await
    {
        tracing::warn!(error = %e, component, reason = what.reason, "recording an event");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
    use k8s_openapi::api::core::v1::Service;

    #[test]
    fn an_event_names_its_object_by_kind_uid_and_version() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1", "resourceVersion": "7"}
        }))
        .unwrap();
        let now = jiff::Timestamp::from_second(1_700_000_000).unwrap();
        let what = What {
            type_: EventType::Warning,
            reason: "AllocationFailed",
            message: "pool exhausted",
            action: Some("Allocating"),
        };
        let ev = event("service-lb-controller", &svc, what, now).unwrap();
        assert_eq!(ev.metadata.namespace.as_deref(), Some("shop"));
        assert!(ev.metadata.name.unwrap().starts_with("web."));
        let o = &ev.involved_object;
        assert_eq!(
            (o.api_version.as_deref(), o.kind.as_deref()),
            (Some("v1"), Some("Service"))
        );
        assert_eq!(
            (o.uid.as_deref(), o.resource_version.as_deref()),
            (Some("u1"), Some("7"))
        );
        assert_eq!(ev.type_.as_deref(), Some("Warning"));
        assert_eq!(ev.action.as_deref(), Some("Allocating"));
        assert_eq!(
            ev.source.unwrap().component.as_deref(),
            Some("service-lb-controller")
        );
        assert_eq!(
            ev.reporting_instance.as_deref(),
            Some("service-lb-controller")
        );
        assert_eq!(ev.count, Some(1));
        assert_eq!(ev.event_time, Some(MicroTime(now)));

        let hpa: HorizontalPodAutoscaler = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "fast", "namespace": "default"}}),
        )
        .unwrap();
        let what = What {
            type_: EventType::Normal,
            reason: "SuccessfulRescale",
            message: "New size: 3",
            action: None,
        };
        let ev = event("horizontal-pod-autoscaler", &hpa, what, now).unwrap();
        assert_eq!(
            ev.involved_object.api_version.as_deref(),
            Some("autoscaling/v2")
        );
        assert_eq!(ev.action, None);
        assert_eq!(ev.type_.as_deref(), Some("Normal"));

        let nameless = Service::default();
        assert!(event("x", &nameless, what, now).is_none());
    }
}
