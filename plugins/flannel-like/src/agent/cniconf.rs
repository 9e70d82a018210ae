//! The CNI configuration the agent writes for its node: `10-trellis-overlay.conflist`, with the
//! MTU and block, chaining the IPAM plugin. Written only once the node is ready, so a runtime
//! that finds it can use it.

use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde_json::{Value, json};

pub const FILE_NAME: &str = "10-trellis-overlay.conflist";
pub const NETWORK: &str = "trellis-overlay";

/// Which IPAM plugin hands out the pods' addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ipam {
    /// `trellis-ipam` through the node's ipamd.
    Trellis {
        socket: PathBuf,
        pool: Option<String>,
    },
    /// The reference `host-local` on the node's block (for Node.spec.podCIDR clusters).
    HostLocal { data_dir: PathBuf },
}

/// The configuration list.
pub fn conflist(state_dir: &Path, mtu: u32, block: Ipv4Net, ipam: &Ipam) -> Value {
    let first = u32::from(block.network());
    let host = |n: u32| std::net::Ipv4Addr::from(first + n).to_string();
    let ipam = match ipam {
        Ipam::Trellis { socket, pool } => {
            let mut ipam = json!({"type": "trellis-ipam", "socket": socket});
            if let Some(pool) = pool {
                ipam["pool"] = json!(pool);
            }
            ipam
        }
        Ipam::HostLocal { data_dir } => {
            let last = u32::from(block.broadcast()) - u32::from(block.network());
            json!({
                "type": "host-local",
                "ranges": [[{"subnet": block.to_string(), "rangeStart": host(2), "rangeEnd": host(last - 1), "gateway": host(1)}]],
                "dataDir": data_dir,
            })
        }
    };
    // The reference host-local answers up to 1.0.0: a list using it must not offer 1.1.0.
    let (version, versions) = match ipam["type"].as_str() {
        Some("host-local") => ("1.0.0", json!(["0.3.1", "0.4.0", "1.0.0"])),
        _ => ("1.1.0", json!(["0.3.1", "0.4.0", "1.0.0", "1.1.0"])),
    };
    json!({
        "cniVersion": version,
        "cniVersions": versions,
        "name": NETWORK,
        "plugins": [{
            "type": "trellis-overlay",
            "stateDir": state_dir,
            "mtu": mtu,
            "block": block.to_string(),
            "ipam": ipam,
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
    fn host_local_keeps_the_vtep_gateway_and_broadcast_addresses() {
        let c = conflist(
            Path::new("/run/x"),
            1450,
            "10.244.7.0/24".parse().unwrap(),
            &Ipam::HostLocal {
                data_dir: "/var/lib/x".into(),
            },
        );
        let range = &c["plugins"][0]["ipam"]["ranges"][0][0];
        assert_eq!(
            (
                range["rangeStart"].as_str(),
                range["rangeEnd"].as_str(),
                range["gateway"].as_str()
            ),
            (Some("10.244.7.2"), Some("10.244.7.254"), Some("10.244.7.1"))
        );
        assert_eq!(c["plugins"][0]["mtu"], 1450);
        let list = trellis_cni::NetworkConfigList::from_slice(c.to_string().as_bytes()).unwrap();
        assert_eq!(
            list.version().unwrap(),
            trellis_cni::Version::V1_0_0,
            "host-local answers up to 1.0.0"
        );
        let t = conflist(
            Path::new("/run/x"),
            1450,
            "10.244.7.0/24".parse().unwrap(),
            &Ipam::Trellis {
                socket: "/run/s".into(),
                pool: Some("overlay".into()),
            },
        );
        assert_eq!(t["plugins"][0]["ipam"]["pool"], "overlay");
        assert_eq!(
            trellis_cni::NetworkConfigList::from_slice(t.to_string().as_bytes())
                .unwrap()
                .version()
                .unwrap(),
            trellis_cni::Version::V1_1_0
        );
    }
}
