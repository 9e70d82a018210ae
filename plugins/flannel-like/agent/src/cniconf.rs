//! The CNI configuration the agent writes for its node: `10-trellis-overlay.conflist` (the
//! `trellis-overlay` plugin on the node's bridge) or, in canal mode, `10-trellis-canal.conflist`
//! (the `trellis-canal` plugin's routed veths), with the MTU, chaining the IPAM plugin. Written
//! only once the node is ready, so a runtime that finds it can use it.

use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde_json::{Value, json};
use trellis_cni::Version;
use trellis_plugin::policy::PolicyGate;

pub const FILE_NAME: &str = trellis_plugin::conflist::TRELLIS_FILES[0];
pub const NETWORK: &str = "trellis-overlay";
pub const CANAL_FILE_NAME: &str = trellis_plugin::conflist::TRELLIS_FILES[1];
pub const CANAL_NETWORK: &str = "trellis-canal";

/// Which plugin the agent's node runs: the overlay's own, or canal's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// `trellis-overlay`: pods on the node's bridge, on the block's subnet.
    #[default]
    Overlay,
    /// `trellis-canal`: pods on routed veths (a /32 each), no bridge; the VXLAN between nodes
    /// is the same.
    Canal,
}

impl Mode {
    /// The conflist's file name.
    pub fn file_name(self) -> &'static str {
        match self {
            Mode::Overlay => FILE_NAME,
            Mode::Canal => CANAL_FILE_NAME,
        }
    }

    /// The network's name, and the plugin's type.
    pub fn network(self) -> &'static str {
        match self {
            Mode::Overlay => NETWORK,
            Mode::Canal => CANAL_NETWORK,
        }
    }
}

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

/// The configuration list; with `policy`, the plugin waits for policyd at the end of ADD; with
/// `portmap`, the reference portmap plugin is chained after it (hostPorts).
pub fn conflist(
    mode: Mode,
    state_dir: &Path,
    mtu: u32,
    block: Ipv4Net,
    ipam: &Ipam,
    policy: Option<&PolicyGate>,
    portmap: bool,
) -> Value {
    let first = u32::from(block.network());
    let host = |n: u32| std::net::Ipv4Addr::from(first + n).to_string();
    let (ipam, max) = match ipam {
        Ipam::Trellis { socket, pool } => {
            let mut ipam = json!({"type": "trellis-ipam", "socket": socket});
            if let Some(pool) = pool {
                ipam["pool"] = json!(pool);
            }
            (ipam, Version::V1_1_0)
        }
        Ipam::HostLocal { data_dir } => {
            let last = u32::from(block.broadcast()) - u32::from(block.network());
            // The reference host-local answers up to 1.0.0: the list must not offer 1.1.0.
            (
                json!({
                    "type": "host-local",
                    "ranges": [[{"subnet": block.to_string(), "rangeStart": host(2), "rangeEnd": host(last - 1), "gateway": host(1)}]],
                    "dataDir": data_dir,
                }),
                Version::V1_0_0,
            )
        }
    };
    let mut plugin = json!({
        "type": mode.network(),
        "stateDir": state_dir,
        "mtu": mtu,
        "ipam": ipam,
    });
    if mode == Mode::Overlay {
        plugin["block"] = json!(block.to_string());
    }
    if let Some(p) = policy {
        plugin["policy"] = p.to_json();
    }
    let mut plugins = vec![plugin];
    if portmap {
        plugins.push(trellis_plugin::conflist::portmap());
    }
    trellis_plugin::conflist::conflist(mode.network(), plugins, max)
}

/// Writes it atomically into `dir` under `mode`'s file name; returns the path.
pub fn write(dir: &Path, mode: Mode, conflist: &Value) -> std::io::Result<PathBuf> {
    trellis_plugin::conflist::write(dir, mode.file_name(), conflist)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_local_keeps_the_vtep_gateway_and_broadcast_addresses() {
        let c = conflist(
            Mode::Overlay,
            Path::new("/run/x"),
            1450,
            "10.244.7.0/24".parse().unwrap(),
            &Ipam::HostLocal {
                data_dir: "/var/lib/x".into(),
            },
            None,
            false,
        );
        assert!(
            c["plugins"][0].get("policy").is_none(),
            "policy off: no gate"
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
            Version::V1_0_0,
            "host-local answers up to 1.0.0"
        );
        let t = conflist(
            Mode::Overlay,
            Path::new("/run/x"),
            1450,
            "10.244.7.0/24".parse().unwrap(),
            &Ipam::Trellis {
                socket: "/run/s".into(),
                pool: Some("overlay".into()),
            },
            Some(&PolicyGate {
                socket: "/run/p.sock".into(),
                timeout: std::time::Duration::from_millis(5000),
            }),
            true,
        );
        assert_eq!(
            t["plugins"][0]["policy"],
            serde_json::json!({"socket": "/run/p.sock", "timeoutMs": 5000})
        );
        assert_eq!(t["plugins"][0]["ipam"]["pool"], "overlay");
        assert_eq!(
            t["plugins"][1],
            json!({"type": "portmap", "snat": true, "capabilities": {"portMappings": true}}),
            "hostPorts through the reference portmap, chained last"
        );
        assert_eq!(
            c["plugins"].as_array().map(Vec::len),
            Some(1),
            "portmap off"
        );
        assert_eq!(
            t["cniVersion"], "1.0.0",
            "containerd 1.6/1.7 refuse a 1.1.0 list"
        );
        assert_eq!(
            trellis_cni::NetworkConfigList::from_slice(t.to_string().as_bytes())
                .unwrap()
                .version()
                .unwrap(),
            Version::V1_1_0,
            "runtimes that read cniVersions get 1.1.0"
        );
    }

    #[test]
    fn canal_mode_writes_the_canal_plugin_without_a_bridge_block() {
        let ipam = Ipam::Trellis {
            socket: "/run/s".into(),
            pool: None,
        };
        let dir = Path::new("/run/trellis/canal");
        let gate = PolicyGate::default();
        let c = conflist(
            Mode::Canal,
            dir,
            1450,
            "10.244.7.0/24".parse().unwrap(),
            &ipam,
            Some(&gate),
            true,
        );
        let plugin = &c["plugins"][0];
        assert_eq!(plugin["type"], "trellis-canal");
        assert_eq!(c["name"], "trellis-canal");
        assert_eq!(plugin["stateDir"], "/run/trellis/canal");
        assert!(plugin.get("block").is_none(), "{c}");
        assert!(plugin.get("policy").is_some(), "the ADD gate");
        assert_eq!(Mode::Canal.file_name(), "10-trellis-canal.conflist");
        assert_eq!(c["plugins"][1]["type"], "portmap");
    }
}
