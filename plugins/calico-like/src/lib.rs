//! The calico-like BGP-routed layer 3: no encapsulation, every pod a /32 (/128), the kernel
//! routes; the node's blocks are announced over BGP by its agent.
//!
//! - [`plugin`]: the `trellis-routed` CNI plugin — a veth pair with no bridge, the pod's /32,
//!   a link-local gateway answered by the host end (proxy ARP and a permanent neighbour entry),
//!   and a host route per pod.
//! - [`state`]: what the node's agent (crate `trellis-bgp-agent`, `plugins/calico-like/agent`)
//!   tells the plugin: readiness, MTU.

pub mod plugin;
pub mod state;
