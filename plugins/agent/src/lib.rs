//! What both node agents share (`trellis-overlay-agent`, `trellis-bgp-agent`). A crate of its
//! own, not part of trellis-plugin, because it speaks Kubernetes (kube-rs) and the CNI plugins
//! link trellis-plugin but never a kube client; not part of trellis-api either, which is a leaf
//! library that depends on no trellis crate, while an agent's errors are also trellis-net's.
//!
//! - [`AgentError`]: why an agent stopped.
//! - [`blocks`]: the node's IPAM blocks, followed live through ipamd (the BGP agent announces
//!   them; the overlay agent routes them over VXLAN).
//! - [`tombstones`]: the sweep of veth pairs CNI DEL retired whose namespace outlived DEL.

pub mod blocks;
pub mod tombstones;

/// Why an agent stopped: one type for both agents, so they fail, log and exit alike.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Client(#[from] trellis_api::cluster::ClientError),
    #[error(transparent)]
    Net(#[from] trellis_net::Error),
    #[error(transparent)]
    Underlay(#[from] trellis_net::underlay::UnderlayError),
    /// The mode's own machinery failed (the BGP speaker, …).
    #[error(transparent)]
    Mode(Box<dyn std::error::Error + Send + Sync>),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A configuration the agent cannot run with, in words for the operator.
    #[error("{0}")]
    Config(String),
    #[error("stopped before the node was ready")]
    Stopped,
}

impl AgentError {
    /// An error of the mode's own machinery.
    pub fn mode(e: impl std::error::Error + Send + Sync + 'static) -> AgentError {
        AgentError::Mode(Box::new(e))
    }
}

/// Waiting for the API server or the Node at start: stopped, or ended by an error waiting would
/// not cure.
impl From<trellis_api::cluster::WaitError<kube::Error>> for AgentError {
    fn from(e: trellis_api::cluster::WaitError<kube::Error>) -> AgentError {
        match e {
            trellis_api::cluster::WaitError::Stopped => AgentError::Stopped,
            other => AgentError::Mode(Box::new(other)),
        }
    }
}

/// For `map_err`: an I/O error with what was being done.
pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
    let what = what.into();
    move |source| AgentError::Io { what, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_error_says_what_was_being_done() {
        let e = io("write /x")(std::io::Error::from(std::io::ErrorKind::NotFound));
        assert!(e.to_string().starts_with("write /x: "), "{e}");
        assert_eq!(
            AgentError::Config("no router id".into()).to_string(),
            "no router id"
        );
    }
}
