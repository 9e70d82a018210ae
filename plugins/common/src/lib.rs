//! What every Trellis CNI plugin (overlay, routed, canal) shares, so each plugin's crate holds
//! only its own wiring:
//!
//! - [`attach`]: the steps around a plugin's own wiring: ADD's sides and veth pair, CHECK's
//!   prevResult, GC and STATUS.
//! - [`ready`]: the readiness file a node agent writes for its plugin (ADD 11 and STATUS 50
//!   until it exists).
//! - [`conf`]: the configuration keys every plugin reads beside `ipam` (`stateDir`, `mtu`).
//! - [`conflist`]: the configuration list an agent writes for its node, in a version every
//!   runtime in use accepts.
//! - [`veth`]: the one naming rule for a pod's host-side veth, and its ownership label.
//! - [`ipam`]: IPAM through `trellis-ipam` linked in (a typed, in-process call) or any other
//!   IPAM plugin executed from CNI_PATH, with a lease that is released unless kept.
//! - [`host`]: the plugin's async runtime and host-networking errors as CNI errors.
//! - [`policy`]: the ADD gate — wait for policyd to commit the new pod's rules, or undo ADD.
//! - [`routed`]: the routed veth (a /32, the 169.254.1.1 gateway, proxy ARP, a host route) and
//!   the whole plugin of a mode built on it: trellis-routed and trellis-canal.

pub mod attach;
pub mod conf;
pub mod conflist;
pub mod host;
pub mod ipam;
pub mod policy;
pub mod ready;
pub mod routed;
#[doc(hidden)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub mod testing;
pub mod veth;

pub use conf::PluginConf;
