//! The listening socket: each accepted connection goes to its peer's task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::mpsc::error::TrySendError;
use tracing::{debug, info, warn};

use super::peer::PeerMsg;
use super::{Shared, canonical};

pub(super) fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // A restarting agent must get its port back while old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(128)
}

/// Hands each accepted connection to its peer's task; strangers are closed at once.
pub(super) async fn accept_loop(listener: Arc<TcpListener>, shared: Arc<Shared>) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let address = canonical(remote.ip());
        let core = shared.core();
        // A link-local address means something on its own link only: a configured
        // unnumbered peer's connections must come in on its interface.
        let scope = match remote {
            SocketAddr::V6(v6) if v6.ip().is_unicast_link_local() => Some(v6.scope_id()),
            _ => None,
        };
        match core.peers.get(&address) {
            Some(slot) if slot.scope_id.is_some() && slot.scope_id != scope => {
                info!(%remote, expected_scope = ?slot.scope_id, "connection from a link-local peer address on another interface closed")
            }
            Some(slot) => {
                if let Err(TrySendError::Full(_)) = slot.tx.try_send(PeerMsg::Incoming(stream)) {
                    // Its task is far behind (and its session about to be reset); the peer
                    // connects again.
                    debug!(%remote, "connection closed: the peer's task is busy");
                }
            }
            None => {
                info!(%remote, "connection from an address that is not a configured peer closed")
            }
        }
    }
}
