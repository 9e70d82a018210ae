//! IPAM errors. Each says what was refused and why; the service turns them into gRPC statuses
//! and the plugin into CNI codes (bad input → 7, datastore away → 11).

use std::net::IpAddr;

use crate::backend::BackendError;
use crate::model::Family;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A pool that cannot be created as given (nothing was written).
    #[error("invalid pool {name:?}: {reason}")]
    InvalidPool { name: String, reason: String },
    #[error("pool {name:?} ({cidr}) overlaps pool {other:?} ({other_cidr})")]
    PoolOverlap {
        name: String,
        cidr: String,
        other: String,
        other_cidr: String,
    },
    /// A malformed request (nothing was allocated).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("requested address {0} is outside every pool")]
    OutsidePools(IpAddr),
    #[error("requested address {addr} is reserved in its block ({why})")]
    Reserved { addr: IpAddr, why: String },
    #[error("requested address {addr} is already allocated to {holder:?}")]
    Taken { addr: IpAddr, holder: String },
    #[error("no enabled {family} pool selects node {node:?}{detail}")]
    NoPool {
        family: Family,
        node: String,
        detail: String,
    },
    #[error("no free {family} address for node {node:?}: {detail}")]
    Exhausted {
        family: Family,
        node: String,
        detail: String,
    },
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("datastore: {0}")]
    Backend(#[from] BackendError),
    #[error("gave up after {0} conflicting writes in a row")]
    TooManyConflicts(usize),
    #[error("ipamd is shutting down")]
    ShuttingDown,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid_pool(name: &str, reason: impl Into<String>) -> Error {
        Error::InvalidPool {
            name: name.to_string(),
            reason: reason.into(),
        }
    }

    /// Whether trying again later may succeed (the datastore was away or busy).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Backend(b) => b.is_transient(),
            Error::TooManyConflicts(_) | Error::ShuttingDown => true,
            _ => false,
        }
    }
}
