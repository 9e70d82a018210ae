//! The flannel-like VXLAN overlay: every pod in one flat network, carried between nodes in
//! VXLAN, no routing protocol.
//!
//! - [`plugin`]: the `trellis-overlay` CNI plugin — bridge, veth, address from IPAM, route.
//! - [`state`]: what the node's agent (crate `trellis-overlay-agent`, `plugins/flannel-like/agent`)
//!   tells the plugin: readiness, block, MTU.

pub mod plugin;
pub mod state;
