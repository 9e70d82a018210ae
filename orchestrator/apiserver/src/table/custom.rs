//! Custom resources: the `additionalPrinterColumns` of their CustomResourceDefinition, each cell
//! the first value its JSONPath finds, as the apiextensions table convertor makes it. The
//! [`Registry`](crate::registry::Registry) keeps the columns of each served version.

use std::borrow::Cow;

use jiff::Timestamp;
use serde_json::{Value, json};

use super::Column;
use super::columns::{CREATED_DOC, column};
use super::fields::{as_int, int, items, non_empty, since, text};
use crate::jsonpath::{self, Step};
use crate::meta;

/// A column of a CustomResourceDefinition's `additionalPrinterColumns`.
#[derive(Clone, Debug)]
pub struct CustomColumn {
    pub(super) column: Column,
    /// The parsed `jsonPath`; `None` if we cannot read it (the cells are then empty).
    path: Option<Vec<Step>>,
}

/// The printer columns of one `version` (an item of `spec.versions`) of a
/// CustomResourceDefinition: its `additionalPrinterColumns`, else the CRD's own (where
/// apiextensions.k8s.io/v1beta1 kept them for all versions), else AGE.
pub fn crd_columns(crd: &Value, version: &Value) -> Vec<CustomColumn> {
    let defined = match items(version, &["additionalPrinterColumns"]) {
        [] => items(crd, &["spec", "additionalPrinterColumns"]),
        cols => cols,
    };
    custom_columns(defined)
}

/// The columns of these `additionalPrinterColumns`, or AGE when there are none (what the API
/// server serves for a version that defines none).
fn custom_columns(defined: &[Value]) -> Vec<CustomColumn> {
    let cols: Vec<CustomColumn> = defined
        .iter()
        .filter_map(|c| {
            let name = non_empty(c, &["name"])?;
            let path = text(c, &["jsonPath"]);
            let description = match non_empty(c, &["description"]) {
                Some(d) => d.to_string(),
                None => format!("Custom resource definition column (in JSONPath format): {path}"),
            };
            Some(CustomColumn {
                column: Column {
                    name: Cow::Owned(name.into()),
                    kind: Cow::Owned(non_empty(c, &["type"]).unwrap_or("string").into()),
                    format: Cow::Owned(text(c, &["format"]).into()),
                    description: Cow::Owned(description),
                    priority: int(c, &["priority"])
                        .and_then(|p| i32::try_from(p).ok())
                        .unwrap_or(0),
                },
                path: jsonpath::parse(path),
            })
        })
        .collect();
    if cols.is_empty() {
        default_columns()
    } else {
        cols
    }
}

/// What a custom resource without printer columns gets after NAME: AGE.
pub(super) fn default_columns() -> Vec<CustomColumn> {
    vec![CustomColumn {
        column: column("Age", "date", 0, CREATED_DOC),
        path: jsonpath::parse(".metadata.creationTimestamp"),
    }]
}

impl CustomColumn {
    /// The cell, as the apiextensions table convertor makes it: the first value the path finds,
    /// converted to the column's type; null (`<none>`) when there is none or it has another type.
    pub(super) fn cell(&self, obj: &Value, now: Timestamp) -> Value {
        let Some(v) = self
            .path
            .as_deref()
            .and_then(|steps| jsonpath::eval(obj, steps).into_iter().next())
            .filter(|v| !v.is_null())
        else {
            return Value::Null;
        };
        match self.column.kind.as_ref() {
            "string" => match v {
                Value::String(s) => json!(s),
                other => json!(other.to_string()),
            },
            "integer" if v.is_number() => as_int(v).map_or(Value::Null, |i| json!(i)),
            "number" => v.as_f64().map_or(Value::Null, |f| json!(f)),
            "boolean" => v.as_bool().map_or(Value::Null, |b| json!(b)),
            "date" => match v.as_str() {
                Some("" | "null") => json!("<unknown>"),
                Some(s) => match meta::parse_time(s) {
                    Some(t) => json!(since(Some(t), now)),
                    None => json!("<invalid>"),
                },
                None => Value::Null,
            },
            _ => Value::Null,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::registry::Registry;

    #[test]
    fn custom_resources_use_their_printer_columns() {
        let group = "table-test.example.com";
        let ready_path = r#".status.conditions[?(@.type=="Ready")].status"#;
        let registry = Registry::default();
        registry.set_custom(&[json!({
            "metadata": {"name": format!("widgets.{group}")},
            "spec": {"group": group, "names": {"plural": "widgets", "kind": "Widget"}, "scope": "Namespaced",
                     "versions": [
                         {"name": "v1", "served": true, "storage": true, "additionalPrinterColumns": [
                             {"name": "Ready", "type": "string", "jsonPath": ready_path},
                             {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
                             {"name": "Size", "type": "number", "jsonPath": ".spec.size"},
                             {"name": "Paused", "type": "boolean", "jsonPath": ".spec.paused"},
                             {"name": "Image", "type": "string", "jsonPath": ".spec.template['image']",
                              "priority": 1, "description": "The image."},
                             {"name": "Port", "type": "string", "jsonPath": ".spec.ports[*].port"},
                             {"name": "Last", "type": "string", "jsonPath": ".status.history[-1].phase"},
                             {"name": "Template", "type": "string", "jsonPath": ".spec.template"},
                             {"name": "Missing", "type": "string", "jsonPath": ".status.nothing"},
                             {"name": "Recursive", "type": "string", "jsonPath": "..phase"},
                             {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]},
                         {"name": "v0", "served": true, "storage": false}]}
        })]);
        let v1 = registry.printer(&custom_info(group, "v1", "widgets"));
        assert_eq!(
            heads(&v1),
            owned(&[
                ("Name", "string", 0),
                ("Ready", "string", 0),
                ("Replicas", "integer", 0),
                ("Size", "number", 0),
                ("Paused", "boolean", 0),
                ("Image", "string", 1),
                ("Port", "string", 0),
                ("Last", "string", 0),
                ("Template", "string", 0),
                ("Missing", "string", 0),
                ("Recursive", "string", 0),
                ("Age", "date", 0)
            ])
        );
        let cols = v1.columns();
        assert_eq!(
            cols[1].description,
            format!("Custom resource definition column (in JSONPath format): {ready_path}")
        );
        assert_eq!(cols[5].description, "The image.");
        let obj = json!({
            "apiVersion": format!("{group}/v1"), "kind": "Widget",
            "metadata": {"name": "w1", "creationTimestamp": ago(600)},
            "spec": {"replicas": 3, "size": 1.5, "paused": false, "template": {"image": "nginx"},
                     "ports": [{"port": 80}, {"port": 443}]},
            "status": {"conditions": [{"type": "Synced", "status": "True"}, {"type": "Ready", "status": "False"}],
                       "history": [{"phase": "A"}, {"phase": "B"}]}
        });
        assert_eq!(
            Value::Array(v1.cells_at(&obj, now())),
            json!([
                "w1",
                "False",
                3,
                1.5,
                false,
                "nginx",
                "80",
                "B",
                "{\"image\":\"nginx\"}",
                null,
                null,
                "10m"
            ])
        );
        // Values of another type than the column's are left empty.
        let odd = json!({"metadata": {"name": "w2", "creationTimestamp": "soon"},
                         "spec": {"replicas": "three", "size": "big", "paused": "no"}});
        assert_eq!(
            Value::Array(v1.cells_at(&odd, now())),
            json!([
                "w2",
                null,
                null,
                null,
                null,
                null,
                null,
                null,
                null,
                null,
                null,
                "<invalid>"
            ])
        );

        // A version without columns, and a resource we were not told about: NAME and AGE.
        for info in [
            custom_info(group, "v0", "widgets"),
            custom_info("unknown.example.com", "v1", "gadgets"),
        ] {
            let info = registry.printer(&info);
            assert_eq!(
                heads(&info),
                owned(&[("Name", "string", 0), ("Age", "date", 0)])
            );
            assert_eq!(
                Value::Array(info.cells_at(&obj, now())),
                json!(["w1", "10m"])
            );
        }
    }
}
