//! IPAM for every Trellis network mode: pools, blocks carved from them with affinity to one
//! node, and addresses inside a block keyed by a handle — leak-free by construction.
//!
//! - [`model`]: pools, blocks, allocations, handles; CIDR arithmetic.
//! - [`allocator`]: the rules, without I/O (which block, which ordinal, claims, borrowing, pool
//!   validation).
//! - [`backend`]: where state lives: custom resources in a Kubernetes API, or trellis-store's
//!   embedded file standalone; every write a compare-and-swap.
//! - [`engine`]: one node's allocator task, batching requests into rounds of writes.
//! - [`service`], [`daemon`], [`client`]: ipamd's gRPC API on a unix socket, the daemon, and
//!   its client.
//! - [`plugin`]: the `trellis-ipam` CNI IPAM plugin.
//! - [`gc`], [`check`]: leak collection and consistency checks.
//! - [`crds`], [`metrics`].

pub mod allocator;
pub mod backend;
pub mod check;
pub mod client;
pub mod crds;
pub mod daemon;
pub mod engine;
pub mod error;
pub mod gc;
pub mod metrics;
pub mod model;
pub mod plugin;
pub mod service;

/// The generated gRPC types and stubs of `proto/ipam.proto`.
#[allow(clippy::all, clippy::unwrap_used, rust_2018_idioms, missing_docs)]
pub mod proto {
    tonic::include_proto!("trellis.ipam.v1");
}

pub use error::{Error, Result};
