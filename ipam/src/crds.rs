//! The custom resource definitions of the cluster backend: `IPPool` and `IPAMBlock` in
//! `ipam.trellis.dev/v1`, both cluster-scoped. `ipam/deploy/crds.yaml` is the same two objects
//! for `kubectl apply -f` (a test keeps the file and this module equal).

use std::time::Duration;

use serde_json::{Value, json};
use trellis_api::cluster::CrdSpec;

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
pub fn pool_crd() -> CrdSpec {
    CrdSpec {
        group: GROUP,
        version: VERSION,
        kind: POOL_KIND,
        plural: POOL_PLURAL,
        singular: "ippool",
        scope: "Cluster",
        spec_schema: json!({
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
        columns: json!([
            {"name": "CIDR", "type": "string", "jsonPath": ".spec.cidr"},
            {"name": "Block", "type": "integer", "jsonPath": ".spec.blockSize"},
            {"name": "Selector", "type": "string", "jsonPath": ".spec.nodeSelector"},
            {"name": "Disabled", "type": "boolean", "jsonPath": ".spec.disabled"},
        ]),
    }
}

/// The IPAMBlock definition.
pub fn block_crd() -> CrdSpec {
    CrdSpec {
        group: GROUP,
        version: VERSION,
        kind: BLOCK_KIND,
        plural: BLOCK_PLURAL,
        singular: "ipamblock",
        scope: "Cluster",
        spec_schema: json!({
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
        columns: json!([
            {"name": "CIDR", "type": "string", "jsonPath": ".spec.cidr"},
            {"name": "Pool", "type": "string", "jsonPath": ".spec.pool"},
            {"name": "Node", "type": "string", "jsonPath": ".spec.node"},
        ]),
    }
}

/// Creates the two definitions if they are missing and waits (bounded) until the API serves
/// them. A definition that exists is left as it is.
pub async fn install_crds(client: &kube::Client) -> BackendResult<()> {
    trellis_api::cluster::crd::install(client, &[pool_crd(), block_crd()], Duration::from_secs(10))
        .await
        .map_err(|e| match e {
            trellis_api::cluster::CrdError::Create { .. } => BackendError::Refused(e.to_string()),
            _ => BackendError::Unavailable(e.to_string()),
        })
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
        assert_eq!(
            docs,
            vec![pool_crd().definition(), block_crd().definition()]
        );
    }
}
