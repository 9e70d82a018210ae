//! Talking to a Kubernetes cluster's API — ours or a real cluster's — the way every Trellis network
//! daemon does (feature `client`): a kube-rs client from a kubeconfig ([`client`]), custom
//! resource definitions built and installed ([`crd`]), waiting for the daemon's own Node
//! ([`node`]), and caches of a kind kept from a watch ([`reflect`]).

pub mod client;
pub mod crd;
pub mod node;
pub mod reflect;

pub use client::{ClientError, client};
pub use crd::{CrdError, CrdSpec, resource};
pub use node::wait_for_node;
pub use reflect::reflect;
