//! Talking to a Kubernetes cluster's API — ours or a real cluster's — the way every Trellis network
//! daemon does (feature `client`): a kube-rs client from a kubeconfig ([`client`]), custom
//! resource definitions built and installed ([`crd`]), and waiting for the daemon's own Node
//! ([`node`]).

pub mod client;
pub mod crd;
pub mod node;

pub use client::{ClientError, client};
pub use crd::{CrdError, CrdSpec, resource};
pub use node::wait_for_node;
