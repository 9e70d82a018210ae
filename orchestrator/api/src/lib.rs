//! Kubernetes API machinery shared by the control plane (API server, controllers, scheduler,
//! kubelet) and the network side (agents, ipamd, policyd): what resources exist and where they
//! are stored, label and field selectors, object names, resource quantities, the three patch
//! formats, and — feature `client` — a kube-rs client from a kubeconfig, custom resource
//! definitions, and waiting for a daemon's Node; feature `jwt`, the service-account token
//! signer. A leaf library: it depends on no Trellis crate.

#[cfg(feature = "client")]
pub mod cluster;
pub mod fields;
#[cfg(feature = "jwt")]
pub mod jwt;
pub mod names;
pub mod patch;
pub mod quantity;
pub mod resources;
pub mod selector;

pub use fields::{FieldSelector, FieldSelectorError};
pub use names::{NameError, NameRule, generate_name};
pub use patch::{PatchError, PatchType, TypeRef, json_patch, merge_patch, strategic_merge};
pub use quantity::{ParsedQuantity, QuantityError};
pub use resources::{ResourceInfo, Subresource};
pub use selector::{LabelSelector, SelectorError};
