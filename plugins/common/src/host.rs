//! The plugin's side of the host: one current-thread runtime per invocation, the container's
//! namespace opened with the right CNI error, and host-networking errors as CNI errors.

use std::path::Path;

use trellis_cni::Error;
use trellis_net::Netns;

/// The runtime a plugin invocation runs its netlink calls (and a linked IPAM's RPC) on: the one
/// the trellis-ipam plugin runs on.
pub use trellis_ipam::plugin::runtime;

/// A host-networking failure as a CNI error (999), naming the operation and object.
pub fn net_err(e: trellis_net::Error) -> Error {
    if e.is_not_found() {
        return Error::internal("a network object is missing", e.to_string());
    }
    Error::internal("host networking failed", e.to_string())
}

/// The container's namespace; code 3 (unknown container) when it cannot be opened.
pub fn open_netns(path: &Path) -> Result<Netns, Error> {
    Netns::open(path)
        .map_err(|e| Error::unknown_container("cannot open the network namespace", e.to_string()))
}
