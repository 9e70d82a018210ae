//! The readiness file a node agent writes for its CNI plugin: a small JSON document in the
//! agent's state directory, written atomically once the node's data path is in place. Until it
//! exists the plugin answers ADD with "try again later" (11) and STATUS with "not available"
//! (50) — never the confusing file error flannel users meet ("subnet.env: no such file").

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use trellis_cni::Error;

/// The file's name in the state directory.
pub const FILE: &str = "ready.json";

pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// The state; None when the agent has not written it (yet).
pub fn read<T: DeserializeOwned>(dir: &Path) -> std::io::Result<Option<T>> {
    match std::fs::read(path(dir)) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(std::io::Error::other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes the state atomically: a reader sees the old file or the new one.
pub fn write<T: Serialize>(dir: &Path, state: &T) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{FILE}.tmp"));
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(tmp, path(dir))
}

/// Withdraws readiness; nothing to withdraw is no error.
pub fn remove(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path(dir)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The state, or the CNI error a plugin answers without it: 11 while `agent` has not made the
/// node ready, 5 when the file cannot be read.
pub fn require<T: DeserializeOwned>(dir: &Path, agent: &str) -> Result<T, Error> {
    match read(dir) {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(Error::try_again_later(
            format!("the {agent} has not made this node ready yet"),
            format!("no {} yet", path(dir).display()),
        )),
        Err(e) => Err(Error::io(format!("cannot read {}", path(dir).display()), e)),
    }
}

/// A node agent's readiness state: what the agent writes and its plugin reads, as the functions
/// above, with the agent's name (for the plugin's errors) fixed by the type.
pub trait ReadyState: Serialize + DeserializeOwned {
    /// The agent that writes it, as the plugin's errors name it ("overlay agent").
    const AGENT: &'static str;

    fn path(dir: &Path) -> PathBuf {
        path(dir)
    }

    /// The state; None when the agent has not written it (yet).
    fn read(dir: &Path) -> std::io::Result<Option<Self>> {
        read(dir)
    }

    /// The state, or the CNI error the plugin answers without it (11 until the agent is
    /// ready).
    fn require(dir: &Path) -> Result<Self, Error> {
        require(dir, Self::AGENT)
    }

    /// STATUS: `Ok` once the agent has made the node ready, else 50.
    fn status(dir: &Path) -> Result<(), Error> {
        status(dir, Self::AGENT)
    }

    /// Writes the state atomically (a reader sees the old file or the new one).
    fn write(&self, dir: &Path) -> std::io::Result<()> {
        write(dir, self)
    }

    /// Withdraws readiness (the agent found its data path broken, or is stopping).
    fn remove(dir: &Path) -> std::io::Result<()> {
        remove(dir)
    }
}

/// STATUS: `Ok` once `agent` has made the node ready, else the "not available" (50) error that
/// says why.
pub fn status(dir: &Path, agent: &str) -> Result<(), Error> {
    match read::<serde_json::Value>(dir) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(Error::not_available(
            format!("the {agent} has not made this node ready yet"),
            path(dir).display().to_string(),
        )),
        Err(e) => Err(Error::not_available(
            format!("cannot read the {agent}'s state"),
            e.to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Deserialize, Serialize)]
    struct State {
        mtu: u32,
    }

    #[test]
    fn absent_means_try_again_later_and_written_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read::<State>(dir.path()).unwrap(), None);
        let e = require::<State>(dir.path(), "test agent").unwrap_err();
        assert_eq!(e.code, trellis_cni::Code::TRY_AGAIN_LATER);
        write(dir.path(), &State { mtu: 1450 }).unwrap();
        assert_eq!(
            require::<State>(dir.path(), "x").unwrap(),
            State { mtu: 1450 }
        );
        assert!(status(dir.path(), "x").is_ok());
        remove(dir.path()).unwrap();
        remove(dir.path()).unwrap();
        assert_eq!(read::<State>(dir.path()).unwrap(), None);
        let e = status(dir.path(), "test agent").unwrap_err();
        assert_eq!(e.code, trellis_cni::Code::NOT_AVAILABLE);
        assert!(e.msg.contains("test agent"), "{e}");
    }

    #[test]
    fn a_damaged_file_is_an_io_error_not_a_retry() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path(dir.path()), b"{").unwrap();
        let e = require::<State>(dir.path(), "x").unwrap_err();
        assert_eq!(e.code, trellis_cni::Code::IO_FAILURE);
    }
}
