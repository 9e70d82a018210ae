//! events.k8s.io/v1 Event, served over the same objects as core/v1 Event (as upstream, which
//! stores one and converts): a request to events.k8s.io is authorized as itself, then served as
//! a core/v1 request with its body converted, and the answer converted back.
//!
//! The fields differ only in name: `regarding` ↔ `involvedObject`, `note` ↔ `message`,
//! `reportingController` ↔ `reportingComponent`, `deprecatedSource` ↔ `source`,
//! `deprecatedFirstTimestamp` ↔ `firstTimestamp`, `deprecatedLastTimestamp` ↔ `lastTimestamp`,
//! `deprecatedCount` ↔ `count`; `series`, `action`, `reason`, `type`, `related`, `eventTime`
//! and `reportingInstance` are the same in both.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::handlers::Reply;

/// (events.k8s.io/v1 name, core/v1 name)
const RENAMES: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

pub const API_VERSION: &str = "events.k8s.io/v1";

fn rename(obj: &mut Value, from_core: bool) {
    let Some(m) = obj.as_object_mut() else {
        return;
    };
    let mut moved = Vec::new();
    for (events, core) in RENAMES {
        let (from, to) = if from_core {
            (core, events)
        } else {
            (events, core)
        };
        if let Some(v) = m.remove(*from) {
            moved.push((to.to_string(), v));
        }
    }
    m.extend(moved);
}

/// An events.k8s.io/v1 Event (or part of one: a merge patch) as core/v1.
pub fn to_core(obj: &mut Value) {
    rename(obj, false);
    if obj.get("apiVersion").is_some() {
        obj["apiVersion"] = json!("v1");
    }
}

/// A core/v1 Event as events.k8s.io/v1.
pub fn from_core(obj: &mut Value) {
    rename(obj, true);
    if obj.is_object() {
        obj["apiVersion"] = json!(API_VERSION);
    }
}

/// A JSON patch's paths, from events.k8s.io/v1 names to core/v1 names.
pub fn json_patch_to_core(patch: &mut Value) {
    for op in patch.as_array_mut().into_iter().flatten() {
        for key in ["path", "from"] {
            let Some(path) = op.get(key).and_then(Value::as_str) else {
                continue;
            };
            let mut segs = path.splitn(3, '/');
            let (_, first, rest) = (segs.next(), segs.next().unwrap_or(""), segs.next());
            if let Some((_, core)) = RENAMES.iter().find(|(e, _)| *e == first) {
                let new = match rest {
                    Some(r) => format!("/{core}/{r}"),
                    None => format!("/{core}"),
                };
                op[key] = json!(new);
            }
        }
    }
}

/// A reply of the core/v1 machinery, as events.k8s.io/v1 would have answered.
pub fn reply_from_core(reply: Reply) -> Reply {
    match reply {
        Reply::Json {
            code,
            mut body,
            warnings,
        } => {
            convert_document(&mut body);
            Reply::Json {
                code,
                body,
                warnings,
            }
        }
        Reply::Stream(mut rx) => {
            let (tx, out) = tokio::sync::mpsc::channel(64);
            tokio::spawn(async move {
                while let Some(frame) = rx.recv().await {
                    let converted = match serde_json::from_slice::<Value>(&frame) {
                        Ok(mut ev) => {
                            convert_document(&mut ev["object"]);
                            let mut line = serde_json::to_vec(&ev).unwrap_or_default();
                            line.push(b'\n');
                            Bytes::from(line)
                        }
                        Err(_) => frame,
                    };
                    if tx.send(converted).await.is_err() {
                        return;
                    }
                }
            });
            Reply::Stream(out)
        }
        other @ (Reply::Raw { .. } | Reply::Bytes { .. }) => other,
    }
}

/// An Event or an EventList; anything else (Status, Table) is left as it is.
fn convert_document(doc: &mut Value) {
    match doc["kind"].as_str() {
        Some("Event") => from_core(doc),
        Some("EventList") => {
            for item in doc["items"].as_array_mut().into_iter().flatten() {
                from_core(item);
                if let Some(m) = item.as_object_mut() {
                    m.remove("apiVersion");
                    m.remove("kind");
                }
            }
            doc["apiVersion"] = json!(API_VERSION);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_change_names_and_nothing_else() {
        let core = json!({"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "e", "namespace": "x"},
            "involvedObject": {"kind": "Pod", "name": "web"}, "message": "pulled", "reason": "Pulled",
            "type": "Normal", "source": {"component": "kubelet"}, "count": 3,
            "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:01:00Z",
            "reportingComponent": "kubelet", "reportingInstance": "n1", "action": "Pull",
            "series": {"count": 2, "lastObservedTime": "2026-01-01T00:01:00.000000Z"}});
        let mut events = core.clone();
        from_core(&mut events);
        assert_eq!(events["apiVersion"], "events.k8s.io/v1");
        assert_eq!(events["regarding"], core["involvedObject"]);
        assert_eq!(events["note"], "pulled");
        assert_eq!(events["reportingController"], "kubelet");
        assert_eq!(events["deprecatedSource"], core["source"]);
        assert_eq!(events["deprecatedCount"], 3);
        assert_eq!(events["deprecatedFirstTimestamp"], core["firstTimestamp"]);
        assert_eq!(events["series"], core["series"]);
        assert!(events.get("message").is_none() && events.get("involvedObject").is_none());
        let mut back = events;
        to_core(&mut back);
        assert_eq!(back, core);
    }

    #[test]
    fn patches_are_converted_too() {
        let mut merge = json!({"note": "again", "series": {"count": 3}});
        to_core(&mut merge);
        assert_eq!(merge, json!({"message": "again", "series": {"count": 3}}));
        let mut ops = json!([{"op": "replace", "path": "/regarding/name", "value": "db"},
                             {"op": "add", "path": "/deprecatedCount", "value": 4},
                             {"op": "replace", "path": "/series/count", "value": 5}]);
        json_patch_to_core(&mut ops);
        assert_eq!(ops[0]["path"], "/involvedObject/name");
        assert_eq!(ops[1]["path"], "/count");
        assert_eq!(ops[2]["path"], "/series/count");
    }
}
