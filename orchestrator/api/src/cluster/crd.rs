//! Custom resource definitions as our daemons ship them: one served and stored version,
//! `spec` described by an OpenAPI schema, printer columns for `kubectl get`. The same objects
//! are shipped as YAML manifests for `kubectl apply -f`; each crate keeps a test that its
//! manifest is what [`CrdSpec::definition`] builds.

use std::time::Duration;

use kube::api::{Api, ListParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{Value, json};

/// The `ApiResource` of a kind, for `Api<DynamicObject>`.
pub fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// One custom resource definition.
#[derive(Debug, Clone, PartialEq)]
pub struct CrdSpec {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    /// `Cluster` or `Namespaced`.
    pub scope: &'static str,
    /// The OpenAPI v3 schema of `spec`.
    pub spec_schema: Value,
    /// `additionalPrinterColumns`.
    pub columns: Value,
}

impl CrdSpec {
    /// `<plural>.<group>`: the definition's object name.
    pub fn name(&self) -> String {
        format!("{}.{}", self.plural, self.group)
    }

    pub fn resource(&self) -> ApiResource {
        resource(self.group, self.version, self.kind, self.plural)
    }

    /// The `CustomResourceDefinition` object.
    pub fn definition(&self) -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": self.name()},
            "spec": {
                "group": self.group,
                "scope": self.scope,
                "names": {
                    "kind": self.kind,
                    "plural": self.plural,
                    "singular": self.singular,
                    "listKind": format!("{}List", self.kind),
                },
                "versions": [{
                    "name": self.version,
                    "served": true,
                    "storage": true,
                    "schema": {"openAPIV3Schema": {
                        "type": "object",
                        "properties": {"spec": self.spec_schema}
                    }},
                    "additionalPrinterColumns": self.columns
                }]
            }
        })
    }
}

/// Why definitions could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error("read CRD {name}: {source}")]
    Read {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("create CRD {name}: {reason}")]
    Create { name: String, reason: String },
    #[error("{name} is not served {waited:?} after its definition was created")]
    NotServed { name: String, waited: Duration },
}

/// Creates the definitions that are missing (one that exists is left as it is) and waits,
/// bounded by `wait`, until the API serves each kind.
pub async fn install(
    client: &kube::Client,
    crds: &[CrdSpec],
    wait: Duration,
) -> Result<(), CrdError> {
    let defs: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &resource(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
        ),
    );
    for crd in crds {
        let name = crd.name();
        let exists = defs
            .get_opt(&name)
            .await
            .map_err(|source| CrdError::Read {
                name: name.clone(),
                source,
            })?
            .is_some();
        if exists {
            continue;
        }
        let obj: DynamicObject =
            serde_json::from_value(crd.definition()).map_err(|e| CrdError::Create {
                name: name.clone(),
                reason: e.to_string(),
            })?;
        match defs.create(&PostParams::default(), &obj).await {
            Ok(_) => tracing::info!(crd = %name, "installed"),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                return Err(CrdError::Create {
                    name,
                    reason: e.to_string(),
                });
            }
        }
    }
    let deadline = tokio::time::Instant::now() + wait;
    for crd in crds {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &crd.resource());
        loop {
            if api.list(&ListParams::default().limit(1)).await.is_ok() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(CrdError::NotServed {
                    name: crd.name(),
                    waited: wait,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_definition_names_its_kind_everywhere_kubectl_looks() {
        let c = CrdSpec {
            group: "example.trellis.dev",
            version: "v1",
            kind: "Widget",
            plural: "widgets",
            singular: "widget",
            scope: "Cluster",
            spec_schema: json!({"type": "object"}),
            columns: json!([{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}]),
        };
        let d = c.definition();
        assert_eq!(d["metadata"]["name"], "widgets.example.trellis.dev");
        assert_eq!(d["spec"]["names"]["listKind"], "WidgetList");
        assert_eq!(d["spec"]["scope"], "Cluster");
        let v = &d["spec"]["versions"][0];
        assert_eq!(
            (v["served"].as_bool(), v["storage"].as_bool()),
            (Some(true), Some(true))
        );
        assert_eq!(v["additionalPrinterColumns"][0]["name"], "Size");
        assert_eq!(c.resource().plural, "widgets");
    }
}
