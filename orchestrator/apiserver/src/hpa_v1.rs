//! autoscaling/v1 HorizontalPodAutoscaler, served over the same objects as autoscaling/v2 (as
//! upstream, which stores one version and converts): a request to v1 is authorized as itself,
//! then served by the v2 machinery with its body converted, and the answer converted back —
//! the pattern of [`crate::events`].
//!
//! The conversion is upstream's (`pkg/apis/autoscaling/v1/conversion.go`):
//!
//! - `spec.targetCPUUtilizationPercentage` ↔ a v2 `Resource` metric on `cpu` with a
//!   `Utilization` target; a v1 object without it (and without other metrics) gets the
//!   default of 80 %, as upstream applies it during the conversion;
//! - `status.currentCPUUtilizationPercentage` ↔ the `cpu` Resource metric's current
//!   `averageUtilization`;
//! - what v1 cannot say travels in annotations, so a v1 client's read-modify-write keeps it:
//!   the other metrics in `autoscaling.alpha.kubernetes.io/metrics`, every current metric in
//!   `…/current-metrics` (both in v1's metric shape, `targetAverageUtilization` and so on), the
//!   conditions in `…/conditions`, and `spec.behavior` in `…/behavior` (with Go's field names,
//!   `{"ScaleUp":{"StabilizationWindowSeconds":…}}`, as upstream marshals its internal type).
//!   They are never stored: a v2 write drops them ([`drop_round_trip_annotations`]).

use bytes::Bytes;
use serde_json::{Map, Value, json};
use trellis_api::ResourceInfo;

use crate::handlers::Reply;

pub const API_VERSION: &str = "autoscaling/v1";
const V2: &str = "autoscaling/v2";

/// The metrics other than the CPU utilization target (v1 metric shape).
pub const METRICS: &str = "autoscaling.alpha.kubernetes.io/metrics";
/// Every current metric of the status (v1 metric shape).
pub const CURRENT_METRICS: &str = "autoscaling.alpha.kubernetes.io/current-metrics";
/// The status conditions.
pub const CONDITIONS: &str = "autoscaling.alpha.kubernetes.io/conditions";
/// `spec.behavior`, with Go's field names.
pub const BEHAVIOR: &str = "autoscaling.alpha.kubernetes.io/behavior";

const ROUND_TRIP: [&str; 4] = [METRICS, CURRENT_METRICS, CONDITIONS, BEHAVIOR];

/// Whether `info` is the v1 view of HorizontalPodAutoscalers (stored as v2).
pub fn is_v1(info: &ResourceInfo) -> bool {
    !info.custom
        && info.group == "autoscaling"
        && info.version == "v1"
        && info.kind == "HorizontalPodAutoscaler"
}

/// An annotation that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("invalid annotation {annotation}: {error}")]
pub struct ConversionError {
    annotation: &'static str,
    error: serde_json::Error,
}

/// Removes the v1 round-trip annotations (upstream's `DropRoundTripHorizontalPodAutoscalerAnnotations`).
pub fn drop_round_trip_annotations(obj: &mut Value) {
    if let Some(a) = obj
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        for k in ROUND_TRIP {
            a.remove(k);
        }
    }
}

/// Inserts `key: value` unless the value is absent (null).
fn put(obj: &mut Map<String, Value>, key: &str, value: &Value) {
    if !value.is_null() {
        obj.insert(key.into(), value.clone());
    }
}

fn object(pairs: &[(&str, &Value)]) -> Value {
    let mut m = Map::new();
    for (k, v) in pairs {
        put(&mut m, k, v);
    }
    Value::Object(m)
}

/// A v2 MetricSpec in v1's shape (upstream's `Convert_autoscaling_MetricSpec_To_v1_MetricSpec`).
fn metric_spec_to_v1(m: &Value) -> Value {
    let t = &m["type"];
    let mut out = object(&[("type", t)]);
    let (key, source) = match t.as_str().unwrap_or("") {
        "Resource" => {
            let r = &m["resource"];
            let target = &r["target"];
            (
                "resource",
                object(&[
                    ("name", &r["name"]),
                    ("targetAverageUtilization", &target["averageUtilization"]),
                    ("targetAverageValue", &target["averageValue"]),
                ]),
            )
        }
        "ContainerResource" => {
            let r = &m["containerResource"];
            let target = &r["target"];
            (
                "containerResource",
                object(&[
                    ("name", &r["name"]),
                    ("container", &r["container"]),
                    ("targetAverageUtilization", &target["averageUtilization"]),
                    ("targetAverageValue", &target["averageValue"]),
                ]),
            )
        }
        "Pods" => {
            let p = &m["pods"];
            (
                "pods",
                object(&[
                    ("metricName", &p["metric"]["name"]),
                    ("selector", &p["metric"]["selector"]),
                    ("targetAverageValue", &p["target"]["averageValue"]),
                ]),
            )
        }
        "Object" => {
            let o = &m["object"];
            (
                "object",
                object(&[
                    ("target", &o["describedObject"]),
                    ("metricName", &o["metric"]["name"]),
                    ("selector", &o["metric"]["selector"]),
                    ("targetValue", &o["target"]["value"]),
                    ("averageValue", &o["target"]["averageValue"]),
                ]),
            )
        }
        "External" => {
            let e = &m["external"];
            (
                "external",
                object(&[
                    ("metricName", &e["metric"]["name"]),
                    ("metricSelector", &e["metric"]["selector"]),
                    ("targetValue", &e["target"]["value"]),
                    ("targetAverageValue", &e["target"]["averageValue"]),
                ]),
            )
        }
        _ => return out,
    };
    out[key] = source;
    out
}

/// A v1-shaped MetricSpec as v2 (upstream's `Convert_v1_MetricSpec_To_autoscaling_MetricSpec`):
/// a utilization, when given, makes a Utilization target; an Object target without an average
/// is a Value; an External one with a value is a Value.
fn metric_spec_from_v1(m: &Value) -> Value {
    let t = &m["type"];
    let mut out = object(&[("type", t)]);
    let utilization_or_average = |s: &Value| {
        let kind = if s["targetAverageUtilization"].is_null() {
            "AverageValue"
        } else {
            "Utilization"
        };
        object(&[
            ("type", &json!(kind)),
            ("averageUtilization", &s["targetAverageUtilization"]),
            ("averageValue", &s["targetAverageValue"]),
        ])
    };
    let identifier =
        |name: &Value, selector: &Value| object(&[("name", name), ("selector", selector)]);
    let (key, source) = match t.as_str().unwrap_or("") {
        "Resource" => {
            let r = &m["resource"];
            let mut s = object(&[("name", &r["name"])]);
            s["target"] = utilization_or_average(r);
            ("resource", s)
        }
        "ContainerResource" => {
            let r = &m["containerResource"];
            let mut s = object(&[("name", &r["name"]), ("container", &r["container"])]);
            s["target"] = utilization_or_average(r);
            ("containerResource", s)
        }
        "Pods" => {
            let p = &m["pods"];
            let mut s = json!({"metric": identifier(&p["metricName"], &p["selector"])});
            s["target"] = object(&[
                ("type", &json!("AverageValue")),
                ("averageValue", &p["targetAverageValue"]),
            ]);
            ("pods", s)
        }
        "Object" => {
            let o = &m["object"];
            let kind = if o["averageValue"].is_null() {
                "Value"
            } else {
                "AverageValue"
            };
            let mut s = object(&[("describedObject", &o["target"])]);
            s["metric"] = identifier(&o["metricName"], &o["selector"]);
            s["target"] = object(&[
                ("type", &json!(kind)),
                ("value", &o["targetValue"]),
                ("averageValue", &o["averageValue"]),
            ]);
            ("object", s)
        }
        "External" => {
            let e = &m["external"];
            let kind = if e["targetValue"].is_null() {
                "AverageValue"
            } else {
                "Value"
            };
            let mut s = json!({"metric": identifier(&e["metricName"], &e["metricSelector"])});
            s["target"] = object(&[
                ("type", &json!(kind)),
                ("value", &e["targetValue"]),
                ("averageValue", &e["targetAverageValue"]),
            ]);
            ("external", s)
        }
        _ => return out,
    };
    out[key] = source;
    out
}

/// A v2 MetricStatus in v1's shape.
fn metric_status_to_v1(m: &Value) -> Value {
    let t = &m["type"];
    let mut out = object(&[("type", t)]);
    let (key, source) = match t.as_str().unwrap_or("") {
        "Resource" => {
            let r = &m["resource"];
            (
                "resource",
                object(&[
                    ("name", &r["name"]),
                    (
                        "currentAverageUtilization",
                        &r["current"]["averageUtilization"],
                    ),
                    ("currentAverageValue", &r["current"]["averageValue"]),
                ]),
            )
        }
        "ContainerResource" => {
            let r = &m["containerResource"];
            (
                "containerResource",
                object(&[
                    ("name", &r["name"]),
                    ("container", &r["container"]),
                    (
                        "currentAverageUtilization",
                        &r["current"]["averageUtilization"],
                    ),
                    ("currentAverageValue", &r["current"]["averageValue"]),
                ]),
            )
        }
        "Pods" => {
            let p = &m["pods"];
            (
                "pods",
                object(&[
                    ("metricName", &p["metric"]["name"]),
                    ("selector", &p["metric"]["selector"]),
                    ("currentAverageValue", &p["current"]["averageValue"]),
                ]),
            )
        }
        "Object" => {
            let o = &m["object"];
            (
                "object",
                object(&[
                    ("target", &o["describedObject"]),
                    ("metricName", &o["metric"]["name"]),
                    ("selector", &o["metric"]["selector"]),
                    ("currentValue", &o["current"]["value"]),
                    ("averageValue", &o["current"]["averageValue"]),
                ]),
            )
        }
        "External" => {
            let e = &m["external"];
            (
                "external",
                object(&[
                    ("metricName", &e["metric"]["name"]),
                    ("metricSelector", &e["metric"]["selector"]),
                    ("currentValue", &e["current"]["value"]),
                    ("currentAverageValue", &e["current"]["averageValue"]),
                ]),
            )
        }
        _ => return out,
    };
    out[key] = source;
    out
}

/// A v1-shaped MetricStatus as v2.
fn metric_status_from_v1(m: &Value) -> Value {
    let t = &m["type"];
    let mut out = object(&[("type", t)]);
    let identifier =
        |name: &Value, selector: &Value| object(&[("name", name), ("selector", selector)]);
    let (key, source) = match t.as_str().unwrap_or("") {
        "Resource" => {
            let r = &m["resource"];
            let mut s = object(&[("name", &r["name"])]);
            s["current"] = object(&[
                ("averageUtilization", &r["currentAverageUtilization"]),
                ("averageValue", &r["currentAverageValue"]),
            ]);
            ("resource", s)
        }
        "ContainerResource" => {
            let r = &m["containerResource"];
            let mut s = object(&[("name", &r["name"]), ("container", &r["container"])]);
            s["current"] = object(&[
                ("averageUtilization", &r["currentAverageUtilization"]),
                ("averageValue", &r["currentAverageValue"]),
            ]);
            ("containerResource", s)
        }
        "Pods" => {
            let p = &m["pods"];
            let mut s = json!({"metric": identifier(&p["metricName"], &p["selector"])});
            s["current"] = object(&[("averageValue", &p["currentAverageValue"])]);
            ("pods", s)
        }
        "Object" => {
            let o = &m["object"];
            let mut s = object(&[("describedObject", &o["target"])]);
            s["metric"] = identifier(&o["metricName"], &o["selector"]);
            s["current"] = object(&[
                ("value", &o["currentValue"]),
                ("averageValue", &o["averageValue"]),
            ]);
            ("object", s)
        }
        "External" => {
            let e = &m["external"];
            let mut s = json!({"metric": identifier(&e["metricName"], &e["metricSelector"])});
            s["current"] = object(&[
                ("value", &e["currentValue"]),
                ("averageValue", &e["currentAverageValue"]),
            ]);
            ("external", s)
        }
        _ => return out,
    };
    out[key] = source;
    out
}

/// (Go field name, JSON name) of HorizontalPodAutoscalerBehavior and its parts.
const BEHAVIOR_FIELDS: &[(&str, &str)] = &[
    ("ScaleUp", "scaleUp"),
    ("ScaleDown", "scaleDown"),
    ("StabilizationWindowSeconds", "stabilizationWindowSeconds"),
    ("SelectPolicy", "selectPolicy"),
    ("Policies", "policies"),
    ("Tolerance", "tolerance"),
    ("Type", "type"),
    ("Value", "value"),
    ("PeriodSeconds", "periodSeconds"),
];

/// `spec.behavior` as upstream marshals its internal type into the annotation: Go's field
/// names, every field present (null when unset).
fn behavior_to_go(b: &Value) -> Value {
    let rules = |r: &Value| -> Value {
        if r.is_null() {
            return Value::Null;
        }
        let policies = match r["policies"].as_array() {
            Some(ps) => Value::Array(
                ps.iter()
                    .map(|p| {
                        json!({"Type": p["type"], "Value": p["value"],
                               "PeriodSeconds": p["periodSeconds"]})
                    })
                    .collect(),
            ),
            None => Value::Null,
        };
        json!({
            "StabilizationWindowSeconds": r["stabilizationWindowSeconds"],
            "SelectPolicy": r["selectPolicy"],
            "Policies": policies,
            "Tolerance": r["tolerance"],
        })
    };
    json!({"ScaleUp": rules(&b["scaleUp"]), "ScaleDown": rules(&b["scaleDown"])})
}

/// The annotation's behavior as v2 JSON: field names matched without regard to case (as Go's
/// decoder does), nulls left out.
fn behavior_from_go(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| {
                    let name = BEHAVIOR_FIELDS
                        .iter()
                        .find(|(go, json)| go.eq_ignore_ascii_case(k) || json == k)
                        .map_or(k.as_str(), |(_, json)| json);
                    (name.to_string(), behavior_from_go(v))
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(behavior_from_go).collect()),
        other => other.clone(),
    }
}

fn is_cpu_resource(m: &Value) -> bool {
    m["type"] == "Resource" && m["resource"]["name"] == "cpu"
}

/// A stored (v2) HorizontalPodAutoscaler as autoscaling/v1.
pub fn from_v2(v2: &Value) -> Value {
    let mut metadata = v2["metadata"].clone();
    let mut annotations: Map<String, Value> = metadata["annotations"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    for k in ROUND_TRIP {
        annotations.remove(k);
    }
    let spec = &v2["spec"];
    let metrics = spec["metrics"].as_array().cloned().unwrap_or_default();
    let mut out_spec = object(&[
        ("scaleTargetRef", &spec["scaleTargetRef"]),
        ("minReplicas", &spec["minReplicas"]),
        ("maxReplicas", &spec["maxReplicas"]),
    ]);
    // The first CPU metric decides, as upstream's loop that breaks at it.
    if let Some(u) = metrics
        .iter()
        .find(|m| is_cpu_resource(m))
        .map(|m| &m["resource"]["target"]["averageUtilization"])
        .filter(|u| !u.is_null())
    {
        out_spec["targetCPUUtilizationPercentage"] = u.clone();
    }
    let others: Vec<Value> = metrics
        .iter()
        .filter(|m| {
            // Every metric but a CPU utilization target, which is the v1 field.
            !is_cpu_resource(m) || m["resource"]["target"]["averageUtilization"].is_null()
        })
        .map(metric_spec_to_v1)
        .collect();
    if !others.is_empty() {
        annotations.insert(METRICS.into(), json!(Value::Array(others).to_string()));
    }
    if spec["behavior"].is_object() {
        annotations.insert(
            BEHAVIOR.into(),
            json!(behavior_to_go(&spec["behavior"]).to_string()),
        );
    }
    let status = &v2["status"];
    let mut out_status = object(&[
        ("observedGeneration", &status["observedGeneration"]),
        ("lastScaleTime", &status["lastScaleTime"]),
    ]);
    out_status["currentReplicas"] = status["currentReplicas"].as_i64().unwrap_or(0).into();
    out_status["desiredReplicas"] = status["desiredReplicas"].as_i64().unwrap_or(0).into();
    let current = status["currentMetrics"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    // Upstream takes the last CPU entry that has a utilization.
    if let Some(u) = current
        .iter()
        .filter(|m| is_cpu_resource(m))
        .filter_map(|m| m["resource"]["current"]["averageUtilization"].as_i64())
        .next_back()
    {
        out_status["currentCPUUtilizationPercentage"] = json!(u);
    }
    if !current.is_empty() {
        let v1: Vec<Value> = current.iter().map(metric_status_to_v1).collect();
        annotations.insert(CURRENT_METRICS.into(), json!(Value::Array(v1).to_string()));
    }
    if let Some(conds) = status["conditions"].as_array().filter(|c| !c.is_empty()) {
        annotations.insert(
            CONDITIONS.into(),
            json!(Value::Array(conds.clone()).to_string()),
        );
    }
    if let Some(m) = metadata.as_object_mut() {
        if annotations.is_empty() {
            m.remove("annotations");
        } else {
            m.insert("annotations".into(), Value::Object(annotations));
        }
    }
    json!({
        "apiVersion": API_VERSION,
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata,
        "spec": out_spec,
        "status": out_status,
    })
}

/// An annotation's JSON, if the object has it.
fn annotation(
    annotations: &Map<String, Value>,
    key: &'static str,
) -> Result<Option<Value>, ConversionError> {
    let Some(text) = annotations.get(key).and_then(Value::as_str) else {
        return Ok(None);
    };
    serde_json::from_str(text)
        .map(Some)
        .map_err(|error| ConversionError {
            annotation: key,
            error,
        })
}

/// An autoscaling/v1 HorizontalPodAutoscaler (a whole object, as a client sends it) as v2.
pub fn to_v2(v1: &Value) -> Result<Value, ConversionError> {
    let mut metadata = v1["metadata"].clone();
    let annotations: Map<String, Value> = metadata["annotations"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let mut kept = annotations.clone();
    for k in ROUND_TRIP {
        kept.remove(k);
    }
    if let Some(m) = metadata.as_object_mut() {
        if kept.is_empty() {
            m.remove("annotations");
        } else {
            m.insert("annotations".into(), Value::Object(kept));
        }
    }
    let spec = &v1["spec"];
    let mut metrics: Vec<Value> = match annotation(&annotations, METRICS)? {
        Some(Value::Array(ms)) => ms.iter().map(metric_spec_from_v1).collect(),
        _ => Vec::new(),
    };
    if let Some(target) = spec["targetCPUUtilizationPercentage"].as_i64() {
        metrics.push(json!({"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": target}}}));
    }
    if metrics.is_empty() {
        // autoscaling/v1's implicit default, made explicit as upstream's conversion does.
        metrics.push(json!({"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": 80}}}));
    }
    let mut out_spec = object(&[
        ("scaleTargetRef", &spec["scaleTargetRef"]),
        ("minReplicas", &spec["minReplicas"]),
        ("maxReplicas", &spec["maxReplicas"]),
    ]);
    out_spec["metrics"] = Value::Array(metrics);
    if let Some(b) = annotation(&annotations, BEHAVIOR)?.filter(Value::is_object) {
        out_spec["behavior"] = behavior_from_go(&b);
    }
    let mut out = json!({
        "apiVersion": V2,
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata,
        "spec": out_spec,
    });
    if let Some(status) = v1.get("status").filter(|s| s.is_object()) {
        let mut out_status = object(&[
            ("observedGeneration", &status["observedGeneration"]),
            ("lastScaleTime", &status["lastScaleTime"]),
            ("currentReplicas", &status["currentReplicas"]),
            ("desiredReplicas", &status["desiredReplicas"]),
        ]);
        // The annotation has more than the CPU percentage: it wins.
        match annotation(&annotations, CURRENT_METRICS)? {
            Some(Value::Array(ms)) => {
                out_status["currentMetrics"] =
                    Value::Array(ms.iter().map(metric_status_from_v1).collect());
            }
            _ => {
                if let Some(u) = status["currentCPUUtilizationPercentage"].as_i64() {
                    out_status["currentMetrics"] = json!([{"type": "Resource", "resource":
                        {"name": "cpu", "current": {"averageUtilization": u}}}]);
                }
            }
        }
        if let Some(conds @ Value::Array(_)) = annotation(&annotations, CONDITIONS)? {
            out_status["conditions"] = conds;
        }
        out["status"] = out_status;
    }
    Ok(out)
}

/// A v2 document (HorizontalPodAutoscaler, its list, a Table of them) as v1; anything else
/// (Status) is left as it is.
fn convert_document(doc: &mut Value) {
    match doc["kind"].as_str() {
        Some("HorizontalPodAutoscaler") => *doc = from_v2(doc),
        Some("HorizontalPodAutoscalerList") => {
            for item in doc["items"].as_array_mut().into_iter().flatten() {
                let typed = item.get("kind").is_some();
                *item = from_v2(item);
                if !typed && let Some(m) = item.as_object_mut() {
                    m.remove("apiVersion");
                    m.remove("kind");
                }
            }
            doc["apiVersion"] = json!(API_VERSION);
        }
        Some("Table") => {
            for row in doc["rows"].as_array_mut().into_iter().flatten() {
                if row["object"]["kind"] == "HorizontalPodAutoscaler" {
                    row["object"] = from_v2(&row["object"]);
                }
            }
        }
        _ => {}
    }
}

/// A watch event's object as v1: a bookmark carries only its resourceVersion.
fn convert_event(ev: &mut Value) {
    if ev["type"] == "BOOKMARK" {
        if ev["object"].is_object() {
            ev["object"]["apiVersion"] = json!(API_VERSION);
        }
    } else {
        convert_document(&mut ev["object"]);
    }
}

/// A reply of the v2 machinery, as autoscaling/v1 would have answered.
pub fn reply_from_v2(reply: Reply) -> Reply {
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
                            convert_event(&mut ev);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn v2_full() -> Value {
        json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "default", "resourceVersion": "7",
                         "annotations": {"team": "a"}},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 1, "maxReplicas": 4,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "memory",
                        "target": {"type": "AverageValue", "averageValue": "100Mi"}}},
                    {"type": "Pods", "pods": {"metric": {"name": "qps"},
                        "target": {"type": "AverageValue", "averageValue": "10"}}},
                    {"type": "Object", "object": {
                        "describedObject": {"apiVersion": "v1", "kind": "Service", "name": "web"},
                        "metric": {"name": "hits"}, "target": {"type": "Value", "value": "5"}}},
                    {"type": "External", "external": {"metric": {"name": "queue",
                        "selector": {"matchLabels": {"q": "jobs"}}},
                        "target": {"type": "AverageValue", "averageValue": "30"}}},
                    {"type": "Resource", "resource": {"name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 50}}}
                ],
                "behavior": {
                    "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max",
                        "policies": [{"type": "Pods", "value": 1, "periodSeconds": 30}]},
                    "scaleDown": {"selectPolicy": "Disabled",
                        "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]}
                }
            },
            "status": {
                "observedGeneration": 2, "lastScaleTime": "2026-01-01T00:00:00Z",
                "currentReplicas": 2, "desiredReplicas": 3,
                "currentMetrics": [
                    {"type": "Resource", "resource": {"name": "cpu",
                        "current": {"averageUtilization": 75, "averageValue": "75m"}}},
                    {"type": "Resource", "resource": {"name": "memory",
                        "current": {"averageValue": "50Mi"}}}
                ],
                "conditions": [{"type": "AbleToScale", "status": "True",
                    "lastTransitionTime": "2026-01-01T00:00:00Z", "reason": "SucceededRescale",
                    "message": "ok"}]
            }
        })
    }

    #[test]
    fn cpu_utilization_is_the_v1_target_and_the_rest_goes_to_annotations() {
        let v1 = from_v2(&v2_full());
        assert_eq!(v1["apiVersion"], "autoscaling/v1");
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 50);
        assert_eq!(v1["spec"]["maxReplicas"], 4);
        assert_eq!(v1["status"]["currentCPUUtilizationPercentage"], 75);
        assert_eq!(v1["status"]["desiredReplicas"], 3);
        assert!(v1["spec"].get("metrics").is_none());
        let a = &v1["metadata"]["annotations"];
        assert_eq!(a["team"], "a");
        // The other metrics in v1's (v2beta1's) shape.
        let others: Value = serde_json::from_str(a[METRICS].as_str().unwrap()).unwrap();
        assert_eq!(others.as_array().unwrap().len(), 4);
        assert_eq!(
            others[0],
            json!({"type": "Resource", "resource": {"name": "memory", "targetAverageValue": "100Mi"}})
        );
        assert_eq!(
            others[2]["object"],
            json!({"target": {"apiVersion": "v1", "kind": "Service", "name": "web"},
                   "metricName": "hits", "targetValue": "5"})
        );
        // The behavior with Go's field names, as upstream writes it.
        let b: Value = serde_json::from_str(a[BEHAVIOR].as_str().unwrap()).unwrap();
        assert_eq!(b["ScaleUp"]["Policies"][0]["PeriodSeconds"], 30);
        assert_eq!(b["ScaleDown"]["SelectPolicy"], "Disabled");
        assert!(b["ScaleDown"]["StabilizationWindowSeconds"].is_null());
        let current: Value = serde_json::from_str(a[CURRENT_METRICS].as_str().unwrap()).unwrap();
        assert_eq!(current[0]["resource"]["currentAverageUtilization"], 75);
        assert!(a[CONDITIONS].as_str().unwrap().contains("SucceededRescale"));
    }

    #[test]
    fn v2_to_v1_and_back_keeps_everything_but_the_order_of_metrics() {
        let original = v2_full();
        let back = to_v2(&from_v2(&original)).unwrap();
        // Upstream appends the CPU target after the annotation's metrics: the order is the
        // only change (the CPU one is last in the original already).
        assert_eq!(back, original);
        // And a CPU metric first comes back last.
        let mut cpu_first = original.clone();
        cpu_first["spec"]["metrics"]
            .as_array_mut()
            .unwrap()
            .rotate_right(1);
        let back = to_v2(&from_v2(&cpu_first)).unwrap();
        assert_eq!(back["spec"]["metrics"], original["spec"]["metrics"]);
    }

    #[test]
    fn a_v1_object_becomes_v2_with_the_default_target_when_it_has_none() {
        let v1 = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                     "minReplicas": 1, "maxReplicas": 4, "targetCPUUtilizationPercentage": 50}});
        let v2 = to_v2(&v1).unwrap();
        assert_eq!(v2["apiVersion"], "autoscaling/v2");
        assert_eq!(
            v2["spec"]["metrics"],
            json!([{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 50}}}])
        );
        assert!(v2.get("status").is_none() && v2["metadata"].get("annotations").is_none());
        let mut none = v1.clone();
        none["spec"]
            .as_object_mut()
            .unwrap()
            .remove("targetCPUUtilizationPercentage");
        let v2 = to_v2(&none).unwrap();
        assert_eq!(
            v2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            80
        );
        // Its v1 view has the 80 % and a status of zeros, as upstream's.
        let back = from_v2(&v2);
        assert_eq!(back["spec"]["targetCPUUtilizationPercentage"], 80);
        assert_eq!(
            back["status"],
            json!({"currentReplicas": 0, "desiredReplicas": 0})
        );
    }

    #[test]
    fn behavior_annotations_decode_with_go_or_json_names_and_bad_ones_are_errors() {
        let mut v1 = json!({"metadata": {"name": "web", "annotations": {
            BEHAVIOR: r#"{"ScaleUp":{"StabilizationWindowSeconds":null,"SelectPolicy":"Min","Policies":[{"Type":"Pods","Value":1,"PeriodSeconds":60}]},"scaleDown":null}"#}},
            "spec": {"maxReplicas": 3}});
        let v2 = to_v2(&v1).unwrap();
        assert_eq!(
            v2["spec"]["behavior"],
            json!({"scaleUp": {"selectPolicy": "Min",
                "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]}})
        );
        // The annotation is consumed, not stored.
        assert!(v2["metadata"].get("annotations").is_none());
        v1["metadata"]["annotations"][BEHAVIOR] = json!("{not json");
        let e = to_v2(&v1).unwrap_err().to_string();
        assert!(e.contains(BEHAVIOR), "{e}");
    }

    #[test]
    fn v1_status_without_annotations_keeps_the_cpu_percentage() {
        let v1 = json!({"metadata": {"name": "web"}, "spec": {"maxReplicas": 3,
            "targetCPUUtilizationPercentage": 60},
            "status": {"currentReplicas": 1, "desiredReplicas": 2,
                       "currentCPUUtilizationPercentage": 90}});
        let v2 = to_v2(&v1).unwrap();
        assert_eq!(
            v2["status"]["currentMetrics"],
            json!([{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 90}}}])
        );
        assert_eq!(
            from_v2(&v2)["status"]["currentCPUUtilizationPercentage"],
            90
        );
    }

    #[test]
    fn lists_tables_and_watch_events_are_converted() {
        let mut list = json!({"kind": "HorizontalPodAutoscalerList", "apiVersion": "autoscaling/v2",
            "metadata": {"resourceVersion": "9"}, "items": [v2_full()]});
        convert_document(&mut list);
        assert_eq!(list["apiVersion"], "autoscaling/v1");
        assert_eq!(
            list["items"][0]["spec"]["targetCPUUtilizationPercentage"],
            50
        );
        let mut bookmark = json!({"type": "BOOKMARK", "object": {"kind": "HorizontalPodAutoscaler",
            "apiVersion": "autoscaling/v2", "metadata": {"resourceVersion": "12"}}});
        convert_event(&mut bookmark);
        assert_eq!(
            bookmark["object"],
            json!({"kind": "HorizontalPodAutoscaler", "apiVersion": "autoscaling/v1",
                   "metadata": {"resourceVersion": "12"}})
        );
        let mut status = json!({"kind": "Status", "apiVersion": "v1", "code": 404});
        convert_document(&mut status);
        assert_eq!(status["apiVersion"], "v1");
    }
}
