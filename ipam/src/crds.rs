//! The custom resource definitions of the cluster backend: `IPPool` and `IPAMBlock` in
//! `ipam.trellis.dev/v1`, both cluster-scoped. `ipam/deploy/crds.yaml` is the same two objects
//! for `kubectl apply -f` (a test keeps the file and this module equal).

use std::time::Duration;

use kube::api::{Api, ListParams, PostParams};
use kube::core::DynamicObject;
use serde_json::{Value, json};

use crate::backend::kube::resource;
use crate::backend::{BackendError, BackendResult};

pub const GROUP: &str = "ipam.trellis.dev";
pub const VERSION: &str = "v1";
pub const POOL_KIND: &str = "IPPool";
pub const POOL_PLURAL: &str = "ippools";
pub const BLOCK_KIND: &str = "IPAMBlock";
pub const BLOCK_PLURAL: &str = "ipamblocks";

/// The manifest file shipped for `kubectl apply -f`.
pub const MANIFEST: &str = include_str!("../deploy/crds.yaml");

fn string() -> Value {
    json!({"type": "string"})
}

fn integer() -> Value {
    json!({"type": "integer", "minimum": 0})
}

fn boolean() -> Value {
    json!({"type": "boolean"})
}

/// The IPPool definition.
pub fn pool_crd() -> Value {
    crd(
        POOL_KIND,
        POOL_PLURAL,
        "ippool",
        json!({
            "type": "object",
            "required": ["cidr", "blockSize"],
            "properties": {
                "cidr": string(),
                "blockSize": integer(),
                "nodeSelector": string(),
                "disabled": boolean(),
                "allowBorrowing": boolean(),
                "reserveHead": integer(),
                "reserveTail": integer(),
                "gateway": boolean(),
            }
        }),
        json!([
            {"name": "CIDR", "type": "string", "jsonPath": ".spec.cidr"},
            {"name": "Block", "type": "integer", "jsonPath": ".spec.blockSize"},
            {"name": "Selector", "type": "string", "jsonPath": ".spec.nodeSelector"},
            {"name": "Disabled", "type": "boolean", "jsonPath": ".spec.disabled"},
        ]),
    )
}

/// The IPAMBlock definition.
pub fn block_crd() -> Value {
    crd(
        BLOCK_KIND,
        BLOCK_PLURAL,
        "ipamblock",
        json!({
            "type": "object",
            "required": ["cidr", "pool"],
            "properties": {
                "cidr": string(),
                "pool": string(),
                "node": string(),
                "allocations": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["ordinal", "handle"],
                        "properties": {
                            "ordinal": integer(),
                            "handle": string(),
                            "namespace": string(),
                            "pod": string(),
                            "node": string(),
                            "time": string(),
                            "network": string(),
                            "containerID": string(),
                            "ifname": string(),
                        }
                    }
                }
            }
        }),
        json!([
            {"name": "CIDR", "type": "string", "jsonPath": ".spec.cidr"},
            {"name": "Pool", "type": "string", "jsonPath": ".spec.pool"},
            {"name": "Node", "type": "string", "jsonPath": ".spec.node"},
        ]),
    )
}

fn crd(kind: &str, plural: &str, singular: &str, spec: Value, columns: Value) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{GROUP}")},
        "spec": {
            "group": GROUP,
            "scope": "Cluster",
            "names": {"kind": kind, "plural": plural, "singular": singular, "listKind": format!("{kind}List")},
            "versions": [{
                "name": VERSION,
                "served": true,
                "storage": true,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {"spec": spec}
                }},
                "additionalPrinterColumns": columns
            }]
        }
    })
}

/// Creates the two definitions if they are missing and waits (bounded) until the API serves
/// them. A definition that exists is left as it is.
pub async fn install_crds(client: &kube::Client) -> BackendResult<()> {
    let crds: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &resource(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
        ),
    );
    for def in [pool_crd(), block_crd()] {
        let name = def["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let exists = crds
            .get_opt(&name)
            .await
            .map_err(|e| BackendError::Unavailable(format!("read CRD {name}: {e}")))?
            .is_some();
        if exists {
            continue;
        }
        let obj: DynamicObject = serde_json::from_value(def)
            .map_err(|e| BackendError::Refused(format!("CRD {name}: {e}")))?;
        match crds.create(&PostParams::default(), &obj).await {
            Ok(_) => tracing::info!(crd = %name, "installed"),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(BackendError::Refused(format!("create CRD {name}: {e}"))),
        }
    }
    for plural in [POOL_PLURAL, BLOCK_PLURAL] {
        let kind = if plural == POOL_PLURAL {
            POOL_KIND
        } else {
            BLOCK_KIND
        };
        let api: Api<DynamicObject> =
            Api::all_with(client.clone(), &resource(GROUP, VERSION, kind, plural));
        let mut served = false;
        for _ in 0..100 {
            if api.list(&ListParams::default().limit(1)).await.is_ok() {
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !served {
            return Err(BackendError::Unavailable(format!(
                "{plural}.{GROUP} is not served 10 s after its definition was created"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_manifest_is_these_definitions() {
        let docs: Vec<Value> = MANIFEST
            .split("\n---\n")
            .map(|d| d.trim())
            .filter(|d| !d.is_empty() && !d.lines().all(|l| l.starts_with('#')))
            .map(|d| serde_saphyr::from_str(d).expect("each document is YAML"))
            .collect();
        assert_eq!(docs, vec![pool_crd(), block_crd()]);
    }
}
