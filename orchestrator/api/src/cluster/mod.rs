//! Talking to a Kubernetes cluster's API — ours or a real cluster's — the way every Trellis network
//! daemon does (feature `client`): a kube-rs client from a kubeconfig ([`client`]), custom
//! resource definitions built and installed ([`crd`]), waiting for the daemon's own Node
//! ([`node`]), caches of a kind kept from a watch ([`reflect`]), and leader election on a Lease
//! for components that run on every control-plane node with one active ([`leader`]), and waiting
//! for an API server that is not there yet ([`wait`]).

pub mod client;
pub mod crd;
pub mod leader;
pub mod node;
pub mod reflect;
pub mod wait;

pub use client::{ClientError, client};
pub use crd::{CrdError, CrdSpec, resource};
pub use leader::{LeaderElection, LeaderError};
pub use node::wait_for_node;
pub use reflect::reflect;
pub use wait::{ApiWait, WaitError, WatchBackoff};
