//! Swagger 2.0 at `/openapi/v2`: the same paths as v3 without definitions (see the module
//! documentation of `openapi`), as JSON or as gnostic's protobuf `openapi_v2.Document`.

use serde_json::{Map, Value, json};

use super::JSON;
use super::paths::{Document, Gvk, Method, Operation, Param, reason};
use super::pb::Pb;
use crate::registry::Registry;

impl Gvk {
    /// The extension's value as gnostic carries it in protobuf (YAML; JSON strings are YAML).
    fn yaml(&self) -> String {
        let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
        format!(
            "group: {}\nkind: {}\nversion: {}\n",
            q(&self.group),
            q(&self.kind),
            q(&self.version)
        )
    }
}

impl Method {
    /// The field of gnostic's `PathItem`.
    fn v2_field(self) -> u32 {
        match self {
            Method::Get => 2,
            Method::Put => 3,
            Method::Post => 4,
            Method::Delete => 5,
            Method::Patch => 8,
        }
    }
}

impl Param {
    fn v2(&self) -> Value {
        let mut p = json!({
            "name": self.name,
            "in": self.location,
            "description": self.description,
            "type": self.ty,
            "uniqueItems": true,
        });
        if self.location == "path" {
            p["required"] = json!(true);
        }
        p
    }
}

impl Operation {
    /// The v2 form. v2 has no definitions (see the module documentation), so bodies and
    /// responses name no schema.
    fn v2(&self) -> Value {
        let mut params: Vec<Value> = self.params.iter().map(Param::v2).collect();
        if let Some((_, name, _)) = &self.body {
            params.push(
                json!({"name": name, "in": "body", "required": true, "schema": {"type": "object"}}),
            );
        }
        let mut op = json!({
            "description": self.description,
            "operationId": self.id,
            "produces": [JSON],
            "schemes": ["https"],
        });
        if let Some((types, _, _)) = &self.body {
            op["consumes"] = json!(types);
        }
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        let mut responses = Map::new();
        for (code, _) in &self.responses {
            responses.insert(code.to_string(), json!({"description": reason(*code)}));
        }
        responses.insert("401".into(), json!({"description": reason(401)}));
        op["responses"] = Value::Object(responses);
        op["x-kubernetes-action"] = json!(self.action);
        op["x-kubernetes-group-version-kind"] = self.gvk.json();
        op
    }
}

impl Document {
    pub(super) fn v2(registry: &Registry) -> Document {
        Document::of(&registry.all())
    }

    pub(super) fn v2_json(&self) -> Value {
        let mut paths = Map::new();
        for p in &self.paths {
            let mut item = Map::new();
            if !p.params.is_empty() {
                item.insert(
                    "parameters".into(),
                    p.params.iter().map(Param::v2).collect(),
                );
            }
            for o in &p.ops {
                item.insert(o.method.key().into(), o.v2());
            }
            paths.insert(p.path.clone(), Value::Object(item));
        }
        json!({
            "swagger": "2.0",
            "info": Document::info(),
            "paths": paths,
            "definitions": {},
        })
    }

    /// gnostic's `openapi_v2.Document` (google/gnostic `openapiv2/OpenAPIv2.proto`).
    pub(super) fn v2_protobuf(&self) -> Vec<u8> {
        let info = crate::discovery::version()["gitVersion"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let mut doc = Pb::default();
        doc.string(1, "2.0");
        doc.message(2, Pb::default().string(1, "Kubernetes").string(2, &info));
        let mut paths = Pb::default();
        for p in &self.paths {
            let mut item = Pb::default();
            for o in &p.ops {
                item.message(o.method.v2_field(), &v2_operation(o));
            }
            for param in &p.params {
                item.message(9, &v2_parameter(param));
            }
            paths.message(2, Pb::default().string(1, &p.path).message(2, &item));
        }
        doc.message(8, &paths);
        doc.message(9, &Pb::default());
        doc.0
    }
}

fn v2_operation(o: &Operation) -> Pb {
    let mut op = Pb::default();
    op.string(3, &o.description);
    op.string(5, &o.id);
    op.string(6, JSON);
    if let Some((types, _, _)) = &o.body {
        for t in types {
            op.string(7, t);
        }
    }
    for p in &o.params {
        op.message(8, &v2_parameter(p));
    }
    if let Some((_, name, _)) = &o.body {
        // ParametersItem.parameter → Parameter.body_parameter
        let schema = Pb::default()
            .message(22, Pb::default().string(1, "object"))
            .clone();
        let body = Pb::default()
            .string(2, name)
            .string(3, "body")
            .boolean(4, true)
            .message(5, &schema)
            .clone();
        op.message(8, Pb::default().message(1, Pb::default().message(1, &body)));
    }
    let mut responses = Pb::default();
    for code in o.responses.iter().map(|(c, _)| *c).chain([401]) {
        let response = Pb::default().string(1, reason(code)).clone();
        responses.message(
            1,
            Pb::default()
                .string(1, &code.to_string())
                .message(2, Pb::default().message(1, &response)),
        );
    }
    op.message(9, &responses);
    op.string(10, "https");
    op.message(
        13,
        &named_any("x-kubernetes-action", &format!("{}\n", o.action)),
    );
    op.message(
        13,
        &named_any("x-kubernetes-group-version-kind", &o.gvk.yaml()),
    );
    op
}

/// A `ParametersItem` holding a non-body parameter (query or path).
fn v2_parameter(p: &Param) -> Pb {
    let mut sub = Pb::default();
    let (which, type_field, unique_field) = if p.location == "path" {
        sub.boolean(1, true);
        (4, 5, 19)
    } else {
        (3, 6, 20)
    };
    sub.string(2, p.location)
        .string(3, &p.description)
        .string(4, p.name)
        .string(type_field, p.ty)
        .boolean(unique_field, true);
    let non_body = Pb::default().message(which, &sub).clone();
    Pb::default()
        .message(1, Pb::default().message(2, &non_body))
        .clone()
}

/// gnostic's `NamedAny` with a YAML value.
fn named_any(name: &str, yaml: &str) -> Pb {
    Pb::default()
        .string(1, name)
        .message(2, Pb::default().string(2, yaml))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::super::testing::registry_with_crds;
    use super::*;

    /// A protobuf field: a varint or a length-delimited payload.
    #[derive(Debug, Clone, PartialEq)]
    enum F {
        V(u64),
        B(Vec<u8>),
    }

    fn decode(mut b: &[u8]) -> Vec<(u32, F)> {
        fn varint(b: &mut &[u8]) -> u64 {
            let (mut v, mut shift) = (0u64, 0);
            loop {
                let byte = b[0];
                *b = &b[1..];
                v |= u64::from(byte & 0x7f) << shift;
                if byte & 0x80 == 0 {
                    return v;
                }
                shift += 7;
            }
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let key = varint(&mut b);
            let field = (key >> 3) as u32;
            match key & 7 {
                0 => out.push((field, F::V(varint(&mut b)))),
                2 => {
                    let n = varint(&mut b) as usize;
                    out.push((field, F::B(b[..n].to_vec())));
                    b = &b[n..];
                }
                w => panic!("wire type {w}"),
            }
        }
        out
    }

    fn get(msg: &[(u32, F)], field: u32) -> Vec<Vec<u8>> {
        msg.iter()
            .filter(|(f, _)| *f == field)
            .filter_map(|(_, v)| match v {
                F::B(b) => Some(b.clone()),
                F::V(_) => None,
            })
            .collect()
    }

    fn text(msg: &[(u32, F)], field: u32) -> String {
        get(msg, field)
            .first()
            .map(|b| String::from_utf8(b.clone()).unwrap())
            .unwrap_or_default()
    }

    #[test]
    fn v2_protobuf_is_a_gnostic_document_with_the_json_paths() {
        let r = registry_with_crds();
        let d = Document::v2(&r);
        let json_doc = d.v2_json();
        assert_eq!(json_doc["swagger"], "2.0");
        assert_eq!(json_doc["definitions"], json!({}));
        let pb = decode(&d.v2_protobuf());
        assert_eq!(text(&pb, 1), "2.0");
        assert_eq!(text(&decode(&get(&pb, 2)[0]), 1), "Kubernetes");
        assert_eq!(get(&pb, 9), [Vec::<u8>::new()]);
        let paths = decode(&get(&pb, 8)[0]);
        let items: Vec<(String, Vec<(u32, F)>)> = get(&paths, 2)
            .iter()
            .map(|b| {
                let named = decode(b);
                (text(&named, 1), decode(&get(&named, 2)[0]))
            })
            .collect();
        let names: Vec<&String> = items.iter().map(|(n, _)| n).collect();
        let json_names: Vec<&String> = json_doc["paths"].as_object().unwrap().keys().collect();
        assert_eq!(names, json_names);

        let (_, item) = items
            .iter()
            .find(|(n, _)| n == "/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
            .unwrap();
        // PathItem: get 2, put 3, delete 5, patch 8; path parameters 9.
        assert_eq!(
            item.iter().map(|(f, _)| *f).collect::<Vec<_>>(),
            [2, 3, 8, 5, 9, 9]
        );
        let patch = decode(&get(item, 8)[0]);
        assert_eq!(text(&patch, 5), "patchAppsV1NamespacedDeployment");
        let consumes: Vec<String> = get(&patch, 7)
            .into_iter()
            .map(|b| String::from_utf8(b).unwrap())
            .collect();
        assert!(consumes.contains(&"application/strategic-merge-patch+json".to_string()));
        // The GVK extension, as cli-runtime's hasGVKExtension reads it (YAML in Any.yaml).
        let ext: Vec<(String, String)> = get(&patch, 13)
            .iter()
            .map(|b| {
                let named = decode(b);
                (text(&named, 1), text(&decode(&get(&named, 2)[0]), 2))
            })
            .collect();
        assert_eq!(
            ext,
            [
                ("x-kubernetes-action".to_string(), "patch\n".to_string()),
                (
                    "x-kubernetes-group-version-kind".to_string(),
                    "group: \"apps\"\nkind: \"Deployment\"\nversion: \"v1\"\n".to_string()
                ),
            ]
        );
        // Query parameters: ParametersItem.parameter → Parameter.non_body_parameter →
        // NonBodyParameter.query_parameter_sub_schema { in 2, name 4 }.
        let query: Vec<String> = get(&patch, 8)
            .iter()
            .filter_map(|b| {
                let param = decode(&get(&decode(b), 1)[0]);
                let non_body = get(&param, 2);
                let q = get(&decode(non_body.first()?), 3);
                let sub = decode(q.first()?);
                assert_eq!(text(&sub, 2), "query");
                Some(text(&sub, 4))
            })
            .collect();
        assert_eq!(
            query,
            ["dryRun", "fieldManager", "fieldValidation", "force"]
        );
        // The body parameter.
        let body = get(&patch, 8)
            .iter()
            .find_map(|b| get(&decode(&get(&decode(b), 1)[0]), 1).first().cloned())
            .map(|b| decode(&b))
            .unwrap();
        assert_eq!(
            (text(&body, 2), text(&body, 3)),
            ("body".to_string(), "body".to_string())
        );
        assert!(body.contains(&(4, F::V(1))));
        // Path parameters: path_parameter_sub_schema { required 1, in 2, name 4 }.
        let path_param = decode(&get(&decode(&get(&decode(&get(item, 9)[0]), 1)[0]), 2)[0]);
        let sub = decode(&get(&path_param, 4)[0]);
        assert!(sub.contains(&(1, F::V(1))));
        assert_eq!(
            (text(&sub, 2), text(&sub, 4)),
            ("path".to_string(), "name".to_string())
        );
    }
}
