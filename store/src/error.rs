//! Store errors. `Compacted` is the one a caller must handle: the API server turns it into
//! 410 Gone, and a watcher resumes by listing again.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("empty key")]
    EmptyKey,
    #[error("invalid range: start {start:?} is after end {end:?}")]
    InvalidRange { start: Vec<u8>, end: Vec<u8> },
    #[error("a key is written twice in one transaction")]
    DuplicateKey,
    #[error("revision {requested} has been compacted (the oldest kept is {compacted})")]
    Compacted { requested: i64, compacted: i64 },
    #[error("revision {requested} is in the future (the store is at {current})")]
    FutureRevision { requested: i64, current: i64 },
    #[error("{}: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("etcd: {0}")]
    Etcd(String),
    /// TLS to etcd misconfigured, or its handshake failed (an untrusted certificate, no or a
    /// refused client certificate): retrying would not help.
    #[error("etcd TLS: {0}")]
    Tls(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn is_compacted(&self) -> bool {
        matches!(self, Error::Compacted { .. })
    }
}
