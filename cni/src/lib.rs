//! The Container Network Interface specification, 0.1.0 to 1.1.0.
//!
//! - [`config`]: network configuration lists and the per-plugin request.
//! - [`result`]: the ADD result in every version, with conversion between them.
//! - [`Error`]: the error object and its codes.
//! - [`skel`]: the plugin side — environment and stdin in, one [`skel::Plugin`] call, stdout out.
//! - [`ipam`]: delegating address management to the plugin named in `ipam.type`.
//! - [`invoke`]: the runtime side — load configurations, run chains, cache results.
//!
//! This crate depends on no other Trellis crate and holds the specification and nothing else:
//! what Trellis's own plugins share beyond it (their agents' readiness file, conflists, host
//! veth naming) is in `trellis-plugin` (plugins/common).

pub mod args;
pub mod config;
pub mod error;
pub mod exec;
pub mod invoke;
pub mod ipam;
pub mod result;
pub mod skel;
pub mod version;

pub use config::{NetworkConfigList, PluginConf};
pub use error::{Code, Error};
pub use exec::Command;
pub use result::CniResult;
pub use version::Version;
