//! The CNI configuration the agent writes for its node: `10-trellis-routed.conflist`, cniVersion
//! 1.1.0, the routed plugin chaining trellis-ipam (the node's /26 blocks) — written only once
//! the node is ready.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

pub const FILE_NAME: &str = "10-trellis-routed.conflist";
pub const NETWORK: &str = "trellis-routed";

pub fn conflist(state_dir: &Path, mtu: u32, ipamd: Option<&Path>) -> Value {
    let socket = ipamd.map_or_else(
        || trellis_ipam::client::DEFAULT_SOCKET.to_string(),
        |p| p.display().to_string(),
    );
    json!({
        "cniVersion": "1.1.0",
        "cniVersions": ["0.3.1", "0.4.0", "1.0.0", "1.1.0"],
        "name": NETWORK,
        "plugins": [{
            "type": "trellis-routed",
            "stateDir": state_dir,
            "mtu": mtu,
            "ipam": {"type": "trellis-ipam", "socket": socket},
        }],
    })
}

/// Writes it atomically into `dir`; returns the path.
pub fn write(dir: &Path, conflist: &Value) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(FILE_NAME);
    let tmp = dir.join(format!(".{FILE_NAME}.tmp"));
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(conflist).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(tmp, &path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_parses_and_chains_trellis_ipam() {
        let c = conflist(Path::new("/run/r"), 1500, Some(Path::new("/run/i.sock")));
        let list = trellis_cni::NetworkConfigList::from_slice(c.to_string().as_bytes()).unwrap();
        assert_eq!(list.version().unwrap(), trellis_cni::Version::V1_1_0);
        assert_eq!(c["plugins"][0]["ipam"]["socket"], "/run/i.sock");
        assert_eq!(c["plugins"][0]["mtu"], 1500);
    }
}
