//! Kubernetes API machinery shared by the control plane (API server, controllers, scheduler,
//! kubelet) and by the network agents: what resources exist and where they are stored, label
//! and field selectors, object names, and the three patch formats.

pub mod fields;
pub mod names;
pub mod patch;
pub mod resources;
pub mod selector;

pub use fields::{FieldSelector, FieldSelectorError};
pub use names::{NameError, NameRule, generate_name};
pub use patch::{PatchError, PatchType, TypeRef, json_patch, merge_patch, strategic_merge};
pub use resources::{ResourceInfo, Subresource};
pub use selector::{LabelSelector, SelectorError};
