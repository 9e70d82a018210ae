//! The gate's unix socket. The wire protocol is trellis-policy-gate's (branch polnet, part 2);
//! until it is merged, the socket is not served and plugins that do not wait are unaffected:
//! a new pod stays pending-deny until its Pod's addresses arrive through the watch.

use std::path::Path;

use crate::gate::Gate;

/// Starts serving the gate at `path` until `stop` resolves.
pub fn start(
    path: &Path,
    gate: Gate,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let _ = (gate, stop);
    tracing::warn!(socket = %path.display(), "the ADD gate protocol is not built in yet: not serving it");
    Ok(())
}
