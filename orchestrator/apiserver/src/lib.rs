//! `trellis apiserver`: a Kubernetes-compatible API server on trellis-store that `kubectl`,
//! client-go and kube-rs use unchanged.
//!
//! - [`server`]: HTTPS with client-certificate authentication, routing, background tasks.
//! - [`handlers`]: one generic REST machinery for every resource (get, list, watch, create,
//!   update, patch, delete, deletecollection) and the subresources (status, scale, binding).
//! - [`kinds`]: what differs per kind — defaults, validation, immutable fields.
//! - [`events`], [`hpa_v1`]: a second version of a kind served over the stored one, converted.
//! - [`kubelet`]: pods/log proxied to the kubelet of the pod's node.
//! - [`resource_metrics`]: `metrics.k8s.io` (NodeMetrics, PodMetrics) from the kubelets' stats.
//! - [`netpol`]: NetworkPolicy validation as upstream's.
//! - [`schema`]: custom resources pruned, defaulted and validated by their CRD's schema.
//! - [`repair`]: the Service address repair loop (allocation keys against what Services hold).
//! - [`storage`]: objects in the store, resourceVersion = the key's revision.
//! - [`discovery`], [`openapi`], [`table`] (with [`jsonpath`]): what kubectl needs to find,
//!   validate and print.
//! - [`auth`], [`rbac`], [`impersonate`], [`token`], [`pki`]: who may do what, and act as
//!   whom; service-account tokens and TokenReview; the cluster CA and certificates.

// ApiError carries a Status (message, causes): every handler returns it, and boxing it would
// only add noise at each `?`.
#![allow(clippy::result_large_err)]

pub mod alloc;
pub mod auth;
pub mod discovery;
pub mod dualstack;
pub mod endpoints;
pub mod events;
pub mod handlers;
pub mod hpa_v1;
pub mod impersonate;
pub mod ipaddress;
pub mod jsonpath;
pub mod kinds;
pub mod kubelet;
pub mod meta;
pub mod metrics;
pub mod namespaces;
pub mod netpol;
pub mod openapi;
pub mod pki;
pub mod protobuf;
pub mod rbac;
pub mod registry;
pub mod repair;
pub mod request;
pub mod resource_metrics;
pub mod schema;
pub mod server;
pub mod servicecidr;
pub mod status;
pub mod storage;
pub mod table;
pub mod token;

pub use server::{Config, Running, StoreSpec, start};
