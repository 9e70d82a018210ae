//! Where pools and blocks live. Two backends, one contract:
//!
//! - [`kube::KubeBackend`]: custom resources `IPPool` and `IPAMBlock` (`ipam.trellis.dev/v1`,
//!   cluster-scoped) in a Kubernetes API — ours or a real one. CAS = update with
//!   resourceVersion; 409 is a conflict.
//! - [`local::LocalBackend`]: trellis-store's embedded SQLite file, for one host without a
//!   cluster (`--local`). CAS = a transaction comparing the key's mod revision.
//!
//! Every write is a compare-and-swap against the version read: creating fails if the object
//! exists, updating and deleting fail if it changed. That, and nothing else, is what keeps two
//! nodes (or two requests) from handing out one address.

pub mod kube;
pub mod local;

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{Block, BlockSpec, Pool, PoolSpec};

/// An object and the version it was read at (resourceVersion, or the key's mod revision).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    pub value: T,
    pub version: String,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0} changed since it was read")]
    Conflict(String),
    #[error("{0} does not exist")]
    NotFound(String),
    #[error("datastore unavailable: {0}")]
    Unavailable(String),
    #[error("datastore refused the request: {0}")]
    Refused(String),
    #[error("stored object {name} is malformed: {reason}")]
    Malformed { name: String, reason: String },
}

impl BackendError {
    pub fn is_transient(&self) -> bool {
        matches!(self, BackendError::Unavailable(_))
    }
}

pub type BackendResult<T> = std::result::Result<T, BackendError>;

/// Storage of pools and blocks, with compare-and-swap writes.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// For logs and `Status`: "kubernetes" or "local:<path>".
    fn describe(&self) -> String;

    async fn list_pools(&self) -> BackendResult<Vec<Versioned<Pool>>>;
    async fn create_pool(&self, pool: &Pool) -> BackendResult<Versioned<Pool>>;
    async fn delete_pool(&self, name: &str) -> BackendResult<bool>;

    async fn list_blocks(&self) -> BackendResult<Vec<Versioned<Block>>>;
    async fn get_block(&self, name: &str) -> BackendResult<Option<Versioned<Block>>>;
    /// Fails with `AlreadyExists` if a block of that name exists: that is how a claim is made.
    async fn create_block(&self, block: &Block) -> BackendResult<Versioned<Block>>;
    /// Fails with `Conflict` if the block changed since `version`.
    async fn update_block(&self, block: &Block, version: &str) -> BackendResult<Versioned<Block>>;
    /// Fails with `Conflict` if the block changed since `version`; false if it was gone.
    async fn delete_block(&self, name: &str, version: &str) -> BackendResult<bool>;

    /// The labels of a node for pools' node selectors: None when the node does not exist. The
    /// local backend has one node and no labels.
    async fn node_labels(&self, node: &str) -> BackendResult<Option<BTreeMap<String, String>>>;
    /// Every node's name; None when the backend has no notion of nodes (local).
    async fn nodes(&self) -> BackendResult<Option<BTreeSet<String>>>;
    /// Every pod as (namespace, name); None when the backend has no notion of pods (local).
    async fn pods(&self) -> BackendResult<Option<BTreeSet<(String, String)>>>;
}

/// The stored form of a pool or block: `{"spec": ...}` (the custom resources' shape).
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct Stored<T> {
    pub spec: T,
}

pub(crate) fn pool_from(name: &str, spec: serde_json::Value) -> BackendResult<Pool> {
    let spec: PoolSpec = serde_json::from_value(spec).map_err(|e| BackendError::Malformed {
        name: format!("pool {name}"),
        reason: e.to_string(),
    })?;
    Ok(Pool {
        name: name.to_string(),
        spec,
    })
}

pub(crate) fn block_from(name: &str, spec: serde_json::Value) -> BackendResult<Block> {
    let mut spec: BlockSpec =
        serde_json::from_value(spec).map_err(|e| BackendError::Malformed {
            name: format!("block {name}"),
            reason: e.to_string(),
        })?;
    // Written sorted; kept sorted here even if someone edited the object by hand.
    spec.allocations.sort_by_key(|a| a.ordinal);
    Ok(Block {
        name: name.to_string(),
        spec,
    })
}
