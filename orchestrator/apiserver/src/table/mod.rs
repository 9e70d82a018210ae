//! `Table` responses for `kubectl get`.
//!
//! The built-in kinds get the columns and cells of Kubernetes' server-side printers
//! (kubernetes `pkg/printers/internalversion/printers.go`, as of 1.33): same names, types,
//! priorities and cell values, computed from the stored JSON. Custom resources get the
//! `additionalPrinterColumns` of their CustomResourceDefinition, which the
//! [`Registry`](crate::registry::Registry) keeps with the resources it serves (NAME and AGE for a
//! version without columns), and built-in kinds without a printer get the generic NAME and
//! CREATED AT table, as upstream's default table convertor does.
//!
//! Like upstream's table convertor, every cell is always produced (the printers run with `Wide`);
//! `kubectl` hides the columns of priority above 0 unless asked for `-o wide`. Every accessor
//! tolerates missing fields and fields of the wrong type.
//!
//! - `columns`: which printer a built-in kind gets, and its column definitions.
//! - `cells`: the rows of each built-in kind, from the printers in `pods`, `nodes`, `services`,
//!   `events` and `workloads` (and a few one-liners of its own).
//! - `custom`: custom resources' printer columns, read through [`crate::jsonpath`].
//! - `fields`: tolerant accessors, and ages, labels and selectors as kubectl writes them.

mod cells;
mod columns;
mod custom;
mod events;
mod fields;
mod nodes;
mod pods;
mod services;
mod workloads;

use std::borrow::Cow;

use jiff::Timestamp;
use serde_json::{Value, json};
use trellis_api::ResourceInfo;

pub use columns::Kind;
pub use custom::{CustomColumn, crd_columns};
pub use fields::{age, human_duration};

/// A column of a table.
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    pub name: Cow<'static, str>,
    /// The OpenAPI type of the cells: `string`, `integer`, `number`, `boolean`, `date`.
    pub kind: Cow<'static, str>,
    pub format: Cow<'static, str>,
    pub description: Cow<'static, str>,
    /// 0: always shown; anything else: only with `-o wide`.
    pub priority: i32,
}

/// How the rows of one resource are printed: worked out once per table (see
/// [`Registry::printer`](crate::registry::Registry::printer)).
#[derive(Clone, Debug)]
pub enum Printer {
    /// A built-in kind's printer (or the generic one).
    Builtin(Kind),
    /// A custom resource's printer columns (after NAME).
    Custom(Vec<CustomColumn>),
}

impl Printer {
    /// The printer of a built-in kind.
    pub fn builtin(info: &ResourceInfo) -> Printer {
        Printer::Builtin(columns::kind_of(info))
    }

    /// The printer of a custom resource with these printer columns; AGE alone without them (a
    /// version that defines none, or one the registry does not know).
    pub fn custom(columns: Option<Vec<CustomColumn>>) -> Printer {
        Printer::Custom(columns.unwrap_or_else(custom::default_columns))
    }

    /// The columns.
    pub fn columns(&self) -> Vec<Column> {
        match self {
            Printer::Builtin(kind) => columns::builtin(*kind),
            Printer::Custom(cols) => std::iter::once(columns::NAME)
                .chain(cols.iter().map(|c| c.column.clone()))
                .collect(),
        }
    }

    /// The cells of one object's row, one per column of [`Printer::columns`].
    pub fn cells(&self, obj: &Value) -> Vec<Value> {
        self.cells_at(obj, Timestamp::now())
    }

    fn cells_at(&self, obj: &Value, now: Timestamp) -> Vec<Value> {
        match self {
            Printer::Builtin(kind) => cells::builtin(*kind, obj, now),
            Printer::Custom(cols) => std::iter::once(fields::name_cell(obj))
                .chain(cols.iter().map(|c| c.cell(obj, now)))
                .collect(),
        }
    }

    /// Row conditions: upstream marks finished pods `Completed`.
    fn conditions(&self, obj: &Value) -> Option<Value> {
        if !matches!(self, Printer::Builtin(Kind::Pod)) {
            return None;
        }
        let (reason, message) = match fields::text(obj, &["status", "phase"]) {
            "Succeeded" => ("Succeeded", "The pod has completed successfully."),
            "Failed" => ("Failed", "The pod failed."),
            _ => return None,
        };
        Some(json!([{"type": "Completed", "status": "True", "reason": reason, "message": message}]))
    }
}

/// A Table of `objects`. `include_object` is the `includeObject` parameter: `Object` puts each
/// whole object in its row, `None` nothing, anything else (the default) its metadata only.
pub fn table(
    printer: &Printer,
    objects: &[Value],
    revision: i64,
    continue_token: Option<String>,
    include_object: Option<&str>,
) -> Value {
    let now = Timestamp::now();
    let cols: Vec<Value> = printer
        .columns()
        .iter()
        .map(|c| json!({"name": c.name, "type": c.kind, "format": c.format, "description": c.description, "priority": c.priority}))
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let object = match include_object {
                Some("Object") => o.clone(),
                Some("None") => Value::Null,
                _ => json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or(json!({}))}),
            };
            let mut row = json!({"cells": printer.cells_at(o, now), "object": object});
            if let Some(conditions) = printer.conditions(o) {
                row["conditions"] = conditions;
            }
            row
        })
        .collect();
    let mut metadata = json!({});
    if revision > 0 {
        metadata["resourceVersion"] = json!(revision.to_string());
    }
    if let Some(c) = continue_token {
        metadata["continue"] = json!(c);
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata, "columnDefinitions": cols, "rows": rows})
}

/// A watch sends the column definitions once; later frames leave them out.
pub fn without_columns(mut t: Value) -> Value {
    if let Some(m) = t.as_object_mut() {
        m.insert("columnDefinitions".into(), Value::Null);
    }
    t
}

/// What the tests of every printer share.
#[cfg(test)]
mod testing {
    pub(super) use super::Printer;
    pub(super) use jiff::Timestamp;
    pub(super) use serde_json::{Value, json};
    use trellis_api::ResourceInfo;
    use trellis_api::resources::builtin_kind;

    /// The fixed "now" of these tests.
    pub(super) fn now() -> Timestamp {
        "2025-06-01T12:00:00Z".parse().unwrap()
    }

    /// A time `secs` before [`now`], as the API writes it.
    pub(super) fn ago(secs: i64) -> String {
        now()
            .checked_sub(jiff::SignedDuration::from_secs(secs))
            .unwrap()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    }

    /// The printer of a built-in kind.
    pub(super) fn builtin(group: &str, kind: &str) -> Printer {
        Printer::builtin(&builtin_kind(group, kind).unwrap())
    }

    pub(super) fn custom_info(group: &str, version: &str, plural: &str) -> ResourceInfo {
        ResourceInfo {
            group: group.into(),
            version: version.into(),
            kind: "Widget".into(),
            plural: plural.into(),
            singular: "widget".into(),
            namespaced: true,
            short_names: Vec::new(),
            categories: Vec::new(),
            subresources: Vec::new(),
            custom: true,
        }
    }

    /// The cells of `obj` as a kind's printer makes them at [`now`].
    pub(super) fn row(group: &str, kind: &str, obj: Value) -> Value {
        Value::Array(builtin(group, kind).cells_at(&obj, now()))
    }

    pub(super) fn pod(obj: Value) -> Value {
        row("", "Pod", obj)
    }

    /// The columns as `(name, type, priority)`.
    pub(super) fn heads(printer: &Printer) -> Vec<(String, String, i32)> {
        printer
            .columns()
            .into_iter()
            .map(|c| (c.name.into_owned(), c.kind.into_owned(), c.priority))
            .collect()
    }

    pub(super) fn owned(cols: &[(&str, &str, i32)]) -> Vec<(String, String, i32)> {
        cols.iter()
            .map(|(n, t, p)| (n.to_string(), t.to_string(), *p))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::columns::NAME_DOC;
    use super::testing::*;
    use super::*;
    use crate::registry::Registry;

    #[test]
    fn tables_carry_columns_rows_and_metadata() {
        let pods = [
            json!({"metadata": {"name": "a", "namespace": "default", "uid": "1", "creationTimestamp": ago(5)},
                   "spec": {"containers": [{"name": "c"}]}, "status": {"phase": "Pending"}}),
            json!({"metadata": {"name": "b"}}),
        ];
        let t = table(&builtin("", "Pod"), &pods, 42, Some("next".into()), None);
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(
            t["metadata"],
            json!({"resourceVersion": "42", "continue": "next"})
        );
        let cols = t["columnDefinitions"].as_array().unwrap();
        assert_eq!(cols.len(), 9);
        assert_eq!(
            cols[0],
            json!({"name": "Name", "type": "string", "format": "name", "description": NAME_DOC, "priority": 0})
        );
        assert_eq!(cols[5]["name"], "IP");
        assert_eq!(cols[5]["priority"], 1);
        let rows = t["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 2);
        for r in rows {
            assert_eq!(r["cells"].as_array().unwrap().len(), 9);
            assert!(r.get("conditions").is_none());
        }
        assert_eq!(rows[0]["cells"][0], "a");
        assert_eq!(rows[1]["cells"][1], "0/0");
        assert_eq!(
            rows[0]["object"],
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                   "metadata": pods[0]["metadata"]})
        );
        let whole = table(&builtin("", "Pod"), &pods, 0, None, Some("Object"));
        assert_eq!(whole["rows"][0]["object"], pods[0]);
        assert_eq!(whole["metadata"], json!({}));
        let none = table(&builtin("", "Pod"), &pods, 0, None, Some("None"));
        assert_eq!(none["rows"][0]["object"], Value::Null);
        assert_eq!(without_columns(whole)["columnDefinitions"], Value::Null);
    }

    /// Every printer survives objects with missing fields and fields of the wrong type, and
    /// always gives one cell per column.
    #[test]
    fn odd_objects_never_break_a_row() {
        let kinds = [
            ("", "Pod"),
            ("", "Node"),
            ("", "Namespace"),
            ("", "Service"),
            ("", "Endpoints"),
            ("", "ConfigMap"),
            ("", "Secret"),
            ("", "ServiceAccount"),
            ("", "Event"),
            ("apps", "Deployment"),
            ("apps", "ReplicaSet"),
            ("apps", "DaemonSet"),
            ("apps", "StatefulSet"),
            ("apps", "ControllerRevision"),
            ("batch", "Job"),
            ("batch", "CronJob"),
            ("autoscaling", "HorizontalPodAutoscaler"),
            ("networking.k8s.io", "NetworkPolicy"),
            ("discovery.k8s.io", "EndpointSlice"),
            ("coordination.k8s.io", "Lease"),
            ("apiextensions.k8s.io", "CustomResourceDefinition"),
        ];
        let odd = [
            Value::Null,
            json!(5),
            json!("pod"),
            json!([]),
            json!({}),
            json!({"metadata": "x", "spec": 5, "status": "y", "subsets": 1, "endpoints": {}, "ports": 2}),
            json!({
                "metadata": {"name": 5, "creationTimestamp": "not a time", "deletionTimestamp": 3,
                             "labels": [1], "ownerReferences": {"a": 1}},
                "spec": {"containers": "x", "initContainers": [5, null, {"name": 3, "restartPolicy": 1}],
                         "replicas": "3", "completions": "x", "parallelism": 5.9, "unschedulable": "yes",
                         "selector": {"matchLabels": [1], "matchExpressions": "x"},
                         "podSelector": 5, "ports": [1, {"port": "x", "nodePort": -1, "protocol": 6}],
                         "type": 5, "clusterIPs": [7], "externalIPs": "x", "readinessGates": [1, {}],
                         "metrics": [{"type": "Resource"}, {"type": "Pods", "pods": 1}, {"type": "Nope"},
                                     {"type": "Object", "object": {"target": {"averageValue": 3}}}],
                         "template": [], "jobTemplate": {"spec": 1}, "scaleTargetRef": "x"},
                "status": {"containerStatuses": [null, 1, {"state": {"waiting": 5, "terminated": {"exitCode": "x"}},
                                                           "lastState": {"terminated": {"finishedAt": 7}},
                                                           "restartCount": 1e300}],
                           "initContainerStatuses": [{}, {"state": {"terminated": {}}}],
                           "conditions": [1, {"type": 1}], "podIPs": [5], "addresses": "x",
                           "nodeInfo": 3, "loadBalancer": {"ingress": [1, {"ip": 2}]},
                           "currentMetrics": 5, "active": {}, "startTime": "yesterday",
                           "phase": 3},
                "subsets": [1, {"addresses": [{"ip": 1}], "ports": [{}]}],
                "endpoints": [{"addresses": "x"}, 5, {"addresses": [1]}],
                "ports": "x", "data": [1, 2], "secrets": "x", "involvedObject": 5, "series": 5,
                "count": "x", "revision": "x", "addressType": 4
            }),
            json!({"metadata": {"name": "big"}, "spec": {"replicas": 1e300},
                   "status": {"containerStatuses": [
                       {"restartCount": 9223372036854775807u64, "lastState": {"terminated": {"finishedAt": ago(1)}}},
                       {"restartCount": 18446744073709551615u64}],
                       "startTime": "9999-12-31T23:59:59Z", "completionTime": "0001-01-01T00:00:00Z"}}),
        ];
        for (group, kind) in kinds {
            let printer = builtin(group, kind);
            let n = printer.columns().len();
            for obj in &odd {
                assert_eq!(printer.cells(obj).len(), n, "{kind} {obj}");
            }
            let t = table(&printer, &odd, 1, None, Some("Object"));
            assert_eq!(t["rows"].as_array().unwrap().len(), odd.len());
        }
        let registry = Registry::default();
        let custom = custom_info("odd.example.com", "v1", "things");
        let printer = registry.printer(&custom);
        for obj in &odd {
            assert_eq!(printer.cells(obj).len(), 2);
        }
        registry.set_custom(&[
            json!(5),
            json!({"spec": {"group": "odd.example.com", "names": {"plural": "things", "kind": "Thing"},
                            "versions": [5, {"name": 1}, {"name": "v1", "served": true, "additionalPrinterColumns": [
                                1, {"name": "NoPath"}, {"name": "P", "jsonPath": "[", "priority": 1e12}]}]}}),
        ]);
        let printer = registry.printer(&custom);
        assert_eq!(printer.columns().len(), 3);
        for obj in &odd {
            assert_eq!(printer.cells(obj).len(), 3);
        }
    }
}
