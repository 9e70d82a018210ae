//! A client of ipamd over its unix socket, for the plugin, the `trellis ipam` commands and the
//! agents.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::proto::ipam_client::IpamClient;

/// Where ipamd listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/trellis/ipamd.sock";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("ipamd is not reachable at {path}: {reason}")]
    Unreachable { path: PathBuf, reason: String },
}

/// Connects to ipamd; fails within `timeout` if nothing answers on the socket. Every call then
/// may take `call_timeout`.
pub async fn connect(
    path: &Path,
    timeout: Duration,
    call_timeout: Duration,
) -> Result<IpamClient<Channel>, ClientError> {
    let unreachable = |reason: String| ClientError::Unreachable {
        path: path.to_path_buf(),
        reason,
    };
    // The URI is required by the HTTP/2 layer and never resolved: the connector dials the socket.
    let endpoint = Endpoint::try_from("http://ipamd.sock")
        .map_err(|e| unreachable(e.to_string()))?
        .connect_timeout(timeout)
        .timeout(call_timeout);
    let socket = path.to_path_buf();
    let channel = tokio::time::timeout(
        timeout,
        endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(&socket).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        })),
    )
    .await
    .map_err(|_| unreachable(format!("no answer within {timeout:?}")))?
    .map_err(|e| {
        let mut reason = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            reason = format!("{reason}: {s}");
            src = s.source();
        }
        unreachable(reason)
    })?;
    Ok(IpamClient::new(channel))
}
