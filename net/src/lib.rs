//! Host networking over netlink, for the plugins, agents, kubelet and testbed.
//!
//! - [`netns`]: create, open, enter and delete network namespaces (safely, from async code).
//! - [`Handle`]: a netlink connection bound to one namespace, with operations on
//!   [links](link), [addresses](addr), [routes](route), [neighbours and FDB](neigh).
//! - [`sysctl`]: per-namespace sysctls.
//! - [`iptables`]: our own chains through `iptables-restore --noflush`, on the host's backend.
//! - [`ipset`]: sets of addresses and ports through `ipset restore`, filled atomically by swap.
//!
//! Operations that set state come in an idempotent `ensure_*`/`replace_*` form; every error
//! names the operation and the object.

pub mod addr;
pub mod error;
mod exec;
pub mod handle;
pub mod ipset;
pub mod iptables;
pub mod link;
pub mod monitor;
pub mod neigh;
pub mod netns;
pub mod nft;
mod nft_session;
mod restore_session;
pub mod route;
pub mod route_batch;
pub mod sysctl;
pub mod underlay;

pub use addr::Address;
pub use error::{Error, Result};
pub use handle::Handle;
pub use link::{Link, Mac, OperState, VethSpec, VxlanSpec};
pub use neigh::{FdbEntry, Neighbour};
pub use netns::Netns;
pub use route::{Family, Route, RouteKind, Scope};
pub use route_batch::{RouteOp, RouteWriter};

/// The route protocol numbers Trellis installs its routes with (`ip route … proto N`), so a
/// daemon can tell its own routes from everyone else's and remove only those.
pub mod proto {
    /// Routes to other nodes' blocks through the VXLAN overlay.
    pub const OVERLAY: u8 = 201;
    /// Routes learned over BGP.
    pub const BGP: u8 = 202;
    /// Host routes to local pods (routed mode).
    pub const POD: u8 = 203;
}
