//! OpenAPI 3.0: `/openapi/v3` (the index, with a hash of each document so clients can cache) and
//! `/openapi/v3/<group-version>` (one JSON document per group version).

use serde_json::{Map, Value, json};
use trellis_api::ResourceInfo;

use super::JSON;
use super::paths::{Document, GroupVersion, Operation, Param, group_versions, reason};
use crate::registry::Registry;

/// `/openapi/v3`: where each group version's document is, with a hash of it so that clients
/// can cache (client-go `openapi3/root.go`, `openapi/client.go`).
pub fn v3_index(registry: &Registry) -> Value {
    let mut paths = Map::new();
    for gv in group_versions(registry) {
        let key = gv.path();
        let hash = document_hash(&Document::v3_for(registry, &gv).v3_json());
        paths.insert(
            key.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={hash}")}),
        );
    }
    json!({"paths": paths})
}

/// `/openapi/v3/api/v1`, `/openapi/v3/apis/<group>/<version>`; None for a group version the
/// server does not serve.
pub fn v3_document(registry: &Registry, path: &str) -> Option<Value> {
    let gv = match path.split('/').collect::<Vec<_>>().as_slice() {
        ["api", v] => GroupVersion {
            group: String::new(),
            version: v.to_string(),
        },
        ["apis", g, v] => GroupVersion {
            group: g.to_string(),
            version: v.to_string(),
        },
        _ => return None,
    };
    let doc = Document::v3_for(registry, &gv);
    (!doc.paths.is_empty()).then(|| doc.v3_json())
}

/// A stable hash of a document (FNV-1a over its JSON), hex.
fn document_hash(doc: &Value) -> String {
    let bytes = serde_json::to_vec(doc).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016X}")
}

impl Param {
    fn v3(&self) -> Value {
        let mut p = json!({
            "name": self.name,
            "in": self.location,
            "description": self.description,
            "schema": {"type": self.ty, "uniqueItems": true},
        });
        if self.location == "path" {
            p["required"] = json!(true);
        }
        p
    }
}

impl Operation {
    fn v3(&self) -> Value {
        let mut op = json!({
            "description": self.description,
            "operationId": self.id,
        });
        if !self.params.is_empty() {
            op["parameters"] = self.params.iter().map(Param::v3).collect();
        }
        if let Some((types, _, schema)) = &self.body {
            let content: Map<String, Value> = types
                .iter()
                .map(|t| (t.to_string(), json!({"schema": schema_ref(schema)})))
                .collect();
            op["requestBody"] = json!({"content": content, "required": true});
        }
        let mut responses = Map::new();
        for (code, schema) in &self.responses {
            responses.insert(
                code.to_string(),
                json!({
                    "description": reason(*code),
                    "content": {JSON: {"schema": schema_ref(schema)}},
                }),
            );
        }
        responses.insert("401".into(), json!({"description": reason(401)}));
        op["responses"] = Value::Object(responses);
        op["x-kubernetes-action"] = json!(self.action);
        op["x-kubernetes-group-version-kind"] = self.gvk.json();
        op
    }
}

impl Document {
    fn v3_for(registry: &Registry, gv: &GroupVersion) -> Document {
        let resources: Vec<ResourceInfo> = registry
            .all()
            .into_iter()
            .filter(|r| r.group == gv.group && r.version == gv.version)
            .collect();
        Document::of(&resources)
    }

    fn v3_json(&self) -> Value {
        let mut paths = Map::new();
        for p in &self.paths {
            let mut item = Map::new();
            if !p.params.is_empty() {
                item.insert(
                    "parameters".into(),
                    p.params.iter().map(Param::v3).collect(),
                );
            }
            for o in &p.ops {
                item.insert(o.method.key().into(), o.v3());
            }
            paths.insert(p.path.clone(), Value::Object(item));
        }
        json!({
            "openapi": "3.0.0",
            "info": Document::info(),
            "paths": paths,
            "components": {"schemas": self.schemas},
        })
    }
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

#[cfg(test)]
mod tests {
    use super::super::testing::registry_with_crds;
    use super::*;
    use crate::openapi::paths::{Gvk, SCALE};

    fn doc(r: &Registry, gv: &str) -> Value {
        v3_document(r, gv).unwrap_or_else(|| panic!("no document for {gv}"))
    }

    fn gvk(group: &str, version: &str, kind: &str) -> Value {
        Gvk::new(group, version, kind).json()
    }

    /// cli-runtime `supportsQueryParamV3` (query_param_verifier_v3.go): the first PATCH
    /// operation of the kind decides whether `fieldValidation` is a query parameter.
    fn supports_field_validation(doc: &Value, gvk: &Value) -> Result<bool, String> {
        for item in doc["paths"]
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
        {
            let Some(op) = item.get("patch") else {
                continue;
            };
            if op["x-kubernetes-group-version-kind"] != *gvk {
                continue;
            }
            return Ok(op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["name"] == "fieldValidation" && p["in"] == "query"));
        }
        Err(format!("Path not found for GVK ({gvk}) in OpenAPI V3 doc"))
    }

    /// kubectl `gvkSupportsPatchOpenAPIV3` (pkg/cmd/apply/patcher.go).
    fn supports_strategic_merge(doc: &Value, gvk: &Value) -> bool {
        doc["paths"]
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
            .filter_map(|item| item.get("patch"))
            .find(|op| op["x-kubernetes-group-version-kind"] == *gvk)
            .is_some_and(|op| {
                op["requestBody"]["content"]
                    .get("application/strategic-merge-patch+json")
                    .is_some()
            })
    }

    /// The schemas kubectl `buildStrategicMergePatchFromOpenAPIV3` would compute a patch from.
    fn schemas_for(doc: &Value, gvk: &Value) -> Vec<String> {
        doc["components"]["schemas"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, s)| {
                s["x-kubernetes-group-version-kind"]
                    .as_array()
                    .is_some_and(|l| l.contains(gvk))
            })
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("$ref", Value::String(s)) => out.push(s.clone()),
                        _ => refs(x, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }

    #[test]
    fn the_index_names_every_group_version_with_the_hash_of_its_document() {
        let r = Registry::default();
        let index = v3_index(&r);
        let paths = index["paths"].as_object().unwrap();
        for key in [
            "api/v1",
            "apis/apps/v1",
            "apis/batch/v1",
            "apis/networking.k8s.io/v1",
            "apis/apiextensions.k8s.io/v1",
        ] {
            let url = paths[key]["serverRelativeURL"].as_str().unwrap();
            let hash = document_hash(&doc(&r, key));
            assert_eq!(url, format!("/openapi/v3/{key}?hash={hash}"));
        }
        assert_eq!(paths.keys().next().map(String::as_str), Some("api/v1"));
        assert!(!paths.contains_key("apis/example.com/v1"));

        let with_crds = registry_with_crds();
        let after = v3_index(&with_crds);
        assert!(after["paths"]["apis/example.com/v1"]["serverRelativeURL"].is_string());
        // Other documents and their hashes stay the same, so caches stay valid.
        assert_eq!(
            after["paths"]["apis/apps/v1"],
            index["paths"]["apis/apps/v1"]
        );
    }

    #[test]
    fn every_kind_declares_field_validation_on_its_patch_operations() {
        let r = registry_with_crds();
        for info in r.all() {
            let d = doc(
                &r,
                &GroupVersion {
                    group: info.group.clone(),
                    version: info.version.clone(),
                }
                .path(),
            );
            let g = gvk(&info.group, &info.version, &info.kind);
            assert_eq!(supports_field_validation(&d, &g), Ok(true), "{}", info.kind);
        }
        // Every PATCH operation (any of them may be the one kubectl meets first), and every
        // POST and PUT, declare it; every operation names its kind and action.
        for gv in group_versions(&r) {
            let d = doc(&r, &gv.path());
            for (path, item) in d["paths"].as_object().unwrap() {
                for (method, op) in item.as_object().unwrap() {
                    if method == "parameters" {
                        continue;
                    }
                    assert!(
                        op["x-kubernetes-group-version-kind"]["kind"].is_string(),
                        "{path} {method}"
                    );
                    assert!(op["x-kubernetes-action"].is_string(), "{path} {method}");
                    if matches!(method.as_str(), "patch" | "put" | "post") {
                        assert_eq!(
                            supports_field_validation(
                                &json!({"paths": {path: {"patch": op}}}),
                                &op["x-kubernetes-group-version-kind"]
                            ),
                            Ok(true),
                            "{path} {method}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn deployments_have_collection_item_status_and_scale_paths() {
        let d = doc(&Registry::default(), "apis/apps/v1");
        let paths = d["paths"].as_object().unwrap();
        let methods = |p: &str| -> Vec<String> {
            paths[p]
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| *k != "parameters")
                .cloned()
                .collect()
        };
        let base = "/apis/apps/v1/namespaces/{namespace}/deployments";
        assert_eq!(methods(base), ["get", "post", "delete"]);
        assert_eq!(
            methods(&format!("{base}/{{name}}")),
            ["get", "put", "patch", "delete"]
        );
        assert_eq!(
            methods(&format!("{base}/{{name}}/status")),
            ["get", "put", "patch"]
        );
        assert_eq!(
            methods(&format!("{base}/{{name}}/scale")),
            ["get", "put", "patch"]
        );
        assert_eq!(methods("/apis/apps/v1/deployments"), ["get"]);

        let item = &paths[&format!("{base}/{{name}}")];
        let names: Vec<&str> = item["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["name", "namespace"]);
        let patch = &item["patch"];
        assert_eq!(patch["x-kubernetes-action"], "patch");
        assert_eq!(
            patch["x-kubernetes-group-version-kind"],
            gvk("apps", "v1", "Deployment")
        );
        assert_eq!(patch["operationId"], "patchAppsV1NamespacedDeployment");
        let types: Vec<&String> = patch["requestBody"]["content"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        assert_eq!(
            types,
            [
                "application/apply-patch+yaml",
                "application/json-patch+json",
                "application/merge-patch+json",
                "application/strategic-merge-patch+json"
            ]
        );
        assert_eq!(item["get"]["x-kubernetes-action"], "get");
        assert_eq!(paths[base]["get"]["x-kubernetes-action"], "list");
        assert_eq!(paths[base]["post"]["x-kubernetes-action"], "post");
        assert_eq!(
            paths[base]["delete"]["x-kubernetes-action"],
            "deletecollection"
        );
        assert_eq!(item["delete"]["x-kubernetes-action"], "delete");
        assert_eq!(
            paths[&format!("{base}/{{name}}/scale")]["patch"]["x-kubernetes-group-version-kind"],
            gvk("autoscaling", "v1", "Scale")
        );
        assert_eq!(
            paths[&format!("{base}/{{name}}/status")]["patch"]["x-kubernetes-group-version-kind"],
            gvk("apps", "v1", "Deployment")
        );
        assert_eq!(
            paths["/apis/apps/v1/deployments"]["get"]["operationId"],
            "listAppsV1DeploymentForAllNamespaces"
        );
        // Only this group version's resources.
        assert!(paths.keys().all(|p| p.starts_with("/apis/apps/v1/")));
        assert_eq!(d["openapi"], "3.0.0");
    }

    #[test]
    fn core_has_cluster_scoped_namespaces_and_pod_binding() {
        let d = doc(&Registry::default(), "api/v1");
        let paths = d["paths"].as_object().unwrap();
        assert!(paths["/api/v1/namespaces"]["post"].is_object());
        let ns = &paths["/api/v1/namespaces/{name}"];
        assert_eq!(ns["parameters"].as_array().unwrap().len(), 1);
        assert_eq!(
            ns["patch"]["x-kubernetes-group-version-kind"],
            gvk("", "v1", "Namespace")
        );
        assert_eq!(ns["patch"]["operationId"], "patchCoreV1Namespace");
        assert!(paths["/api/v1/namespaces/{name}/status"]["put"].is_object());
        assert!(paths["/api/v1/nodes/{name}"]["patch"].is_object());
        let bind = &paths["/api/v1/namespaces/{namespace}/pods/{name}/binding"]["post"];
        assert_eq!(
            bind["x-kubernetes-group-version-kind"],
            gvk("", "v1", "Binding")
        );
        assert!(paths.contains_key("/api/v1/pods"));
        assert!(!paths.contains_key("/api/v1/nodes/{name}/scale"));
        assert!(
            !paths
                .keys()
                .any(|p| p.contains("namespaces/{namespace}/namespaces"))
        );
    }

    #[test]
    fn built_in_kinds_leave_patch_metadata_to_kubectl_and_refs_resolve() {
        let r = registry_with_crds();
        for gv in group_versions(&r) {
            let d = doc(&r, &gv.path());
            let mut all = Vec::new();
            refs(&d, &mut all);
            assert!(!all.is_empty());
            for rf in all {
                let name = rf.strip_prefix("#/components/schemas/").unwrap();
                assert!(
                    d["components"]["schemas"][name].is_object(),
                    "{rf} in {}",
                    gv.path()
                );
            }
        }
        let apps = doc(&r, "apis/apps/v1");
        let deploy = gvk("apps", "v1", "Deployment");
        // kubectl asks for a strategic merge patch, finds no schema to compute it from, and
        // computes it from the patch metadata compiled into it.
        assert!(supports_strategic_merge(&apps, &deploy));
        assert!(schemas_for(&apps, &deploy).is_empty());
        assert_eq!(
            apps["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"]["type"],
            "object"
        );
        assert!(apps["components"]["schemas"]["io.k8s.api.apps.v1.DeploymentList"].is_object());
        assert!(apps["components"]["schemas"][SCALE].is_object());
        let net = doc(&r, "apis/networking.k8s.io/v1");
        assert!(net["components"]["schemas"]["io.k8s.api.networking.v1.NetworkPolicy"].is_object());
        let crd = doc(&r, "apis/apiextensions.k8s.io/v1");
        assert!(crd["components"]["schemas"]["io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition"].is_object());
    }

    #[test]
    fn custom_resources_take_no_strategic_merge_patch_and_any_fields() {
        let r = registry_with_crds();
        let d = doc(&r, "apis/example.com/v1");
        let widget = gvk("example.com", "v1", "Widget");
        assert!(!supports_strategic_merge(&d, &widget));
        assert_eq!(schemas_for(&d, &widget), ["com.example.v1.Widget"]);
        let s = &d["components"]["schemas"]["com.example.v1.Widget"];
        assert_eq!(s["x-kubernetes-preserve-unknown-fields"], true);
        assert_eq!(
            schemas_for(&d, &gvk("example.com", "v1", "WidgetList")),
            ["com.example.v1.WidgetList"]
        );
        let paths = d["paths"].as_object().unwrap();
        assert!(
            paths["/apis/example.com/v1/namespaces/{namespace}/widgets/{name}/scale"]["patch"]
                .is_object()
        );
        assert!(
            paths["/apis/example.com/v1/namespaces/{namespace}/widgets/{name}/status"]["patch"]
                .is_object()
        );
        assert!(paths["/apis/example.com/v1/gadgets/{name}"]["patch"].is_object());
        assert!(!paths.contains_key("/apis/example.com/v1/gadgets/{name}/status"));
        assert_eq!(
            paths["/apis/example.com/v1/gadgets/{name}"]["patch"]["operationId"],
            "patchExampleComV1Gadget"
        );
    }
}
