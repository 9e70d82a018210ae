//! The flannel-like VXLAN overlay: every pod in one flat network, carried between nodes in
//! VXLAN, no routing protocol.
//!
//! - [`plugin`]: the `trellis-overlay` CNI plugin — bridge, veth, address from IPAM, route.
//! - [`agent`]: `trellis overlay-agent`, one per node — the node's block, the VTEP, the
//!   neighbour/FDB/route entries for every other node, masquerade, the CNI configuration.
//! - [`state`]: what the agent tells the plugin (readiness, block, MTU).

#[cfg(feature = "agent")]
pub mod agent;
pub mod plugin;
pub mod state;
