//! Events: first and last seen, the object, the source, the count (core/v1 and
//! events.k8s.io series alike).

use jiff::Timestamp;
use serde_json::{Value, json};

use super::fields::{get, int, name_cell, non_empty, since, text, time};

pub(super) fn event_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    let first_seen = match time(obj, &["firstTimestamp"]) {
        Some(t) => since(Some(t), now),
        None => since(time(obj, &["eventTime"]), now),
    };
    let mut last_seen = match time(obj, &["lastTimestamp"]) {
        Some(t) => since(Some(t), now),
        None => first_seen.clone(),
    };
    let mut count = int(obj, &["count"]).unwrap_or(0);
    if let Some(series) = get(obj, &["series"]).filter(|s| s.is_object()) {
        last_seen = since(time(series, &["lastObservedTime"]), now);
        count = int(series, &["count"]).unwrap_or(0);
    } else if count == 0 {
        // Singleton events of the events.k8s.io API have no count.
        count = 1;
    }
    let kind = text(obj, &["involvedObject", "kind"]).to_lowercase();
    let target = match non_empty(obj, &["involvedObject", "name"]) {
        Some(name) => format!("{kind}/{name}"),
        None => kind,
    };
    let component = non_empty(obj, &["source", "component"])
        .or_else(|| non_empty(obj, &["reportingComponent"]))
        .unwrap_or("");
    let host = non_empty(obj, &["source", "host"])
        .or_else(|| non_empty(obj, &["reportingInstance"]))
        .unwrap_or("");
    let source = if host.is_empty() {
        component.to_string()
    } else {
        format!("{component}, {host}")
    };
    vec![
        json!(last_seen),
        json!(text(obj, &["type"])),
        json!(text(obj, &["reason"])),
        json!(target),
        json!(text(obj, &["involvedObject", "fieldPath"])),
        json!(source),
        json!(text(obj, &["message"]).trim()),
        json!(first_seen),
        json!(count),
        name_cell(obj),
    ]
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn events() {
        assert_eq!(
            heads(&builtin("", "Event"))
                .iter()
                .map(|h| (h.0.as_str(), h.2))
                .collect::<Vec<_>>(),
            [
                ("Last Seen", 0),
                ("Type", 0),
                ("Reason", 0),
                ("Object", 0),
                ("Subobject", 1),
                ("Source", 1),
                ("Message", 0),
                ("First Seen", 1),
                ("Count", 1),
                ("Name", 1)
            ]
        );
        let backoff = json!({
            "metadata": {"name": "web-0.17f2a3b4c5d6e7f8", "namespace": "default", "creationTimestamp": ago(300)},
            "involvedObject": {"kind": "Pod", "namespace": "default", "name": "web-0",
                               "fieldPath": "spec.containers{nginx}"},
            "reason": "BackOff", "message": "Back-off restarting failed container nginx in pod web-0\n",
            "source": {"component": "kubelet", "host": "node-1"},
            "firstTimestamp": ago(300), "lastTimestamp": ago(20), "count": 7, "type": "Warning"
        });
        assert_eq!(
            row("", "Event", backoff),
            json!([
                "20s",
                "Warning",
                "BackOff",
                "pod/web-0",
                "spec.containers{nginx}",
                "kubelet, node-1",
                "Back-off restarting failed container nginx in pod web-0",
                "5m",
                7,
                "web-0.17f2a3b4c5d6e7f8"
            ])
        );
        // Written through events.k8s.io: eventTime instead of first/last timestamps, no count.
        let scheduled = json!({
            "metadata": {"name": "web-0.1"},
            "involvedObject": {"kind": "Pod", "name": "web-0"},
            "reason": "Scheduled", "message": "Successfully assigned default/web-0 to node-1",
            "firstTimestamp": null, "lastTimestamp": null, "eventTime": "2025-06-01T11:59:30.123456Z",
            "reportingComponent": "default-scheduler", "reportingInstance": "default-scheduler-cp-1",
            "type": "Normal", "source": {}
        });
        assert_eq!(
            row("", "Event", scheduled),
            json!([
                "29s",
                "Normal",
                "Scheduled",
                "pod/web-0",
                "",
                "default-scheduler, default-scheduler-cp-1",
                "Successfully assigned default/web-0 to node-1",
                "29s",
                1,
                "web-0.1"
            ])
        );
        let series = json!({"metadata": {"name": "n.2"}, "involvedObject": {"kind": "Node"},
                            "eventTime": ago(3600), "series": {"count": 4, "lastObservedTime": ago(5)},
                            "source": {"component": "kubelet"}});
        let cells = row("", "Event", series);
        assert_eq!(
            (&cells[0], &cells[3], &cells[5], &cells[7], &cells[8]),
            (
                &json!("5s"),
                &json!("node"),
                &json!("kubelet"),
                &json!("60m"),
                &json!(4)
            )
        );
        let bare = row("", "Event", json!({"metadata": {"name": "b"}}));
        assert_eq!(
            (&bare[0], &bare[7], &bare[8]),
            (&json!("<unknown>"), &json!("<unknown>"), &json!(1))
        );
    }
}
