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
//!
//! Feature `server` (default) is ipamd itself; without it only [`model`], [`check`],
//! [`client`], [`plugin`] and [`proto`] remain — what the CNI plugins link in.

#[cfg(feature = "server")]
pub mod allocator;
#[cfg(feature = "server")]
pub mod backend;
pub mod check;
pub mod client;
#[cfg(feature = "server")]
pub mod crds;
#[cfg(feature = "server")]
pub mod daemon;
#[cfg(feature = "server")]
pub mod engine;
#[cfg(feature = "server")]
pub mod error;
#[cfg(feature = "server")]
pub mod gc;
#[cfg(feature = "server")]
pub mod metrics;
pub mod model;
pub mod plugin;
#[cfg(feature = "server")]
pub mod service;

/// The generated gRPC types and stubs of `proto/ipam.proto`.
#[allow(clippy::all, clippy::unwrap_used, rust_2018_idioms, missing_docs)]
pub mod proto {
    tonic::include_proto!("trellis.ipam.v1");
}

#[cfg(feature = "server")]
pub use error::{Error, Result};
