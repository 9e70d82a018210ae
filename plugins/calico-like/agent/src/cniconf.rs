//! The CNI configuration the agent writes for its node: `10-trellis-routed.conflist`, the
//! routed plugin chaining trellis-ipam (the node's /26 blocks) — written only once the node is
//! ready.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use trellis_cni::Version;
use trellis_plugin::policy::PolicyGate;

pub const FILE_NAME: &str = trellis_plugin::conflist::TRELLIS_FILES[2];
pub const NETWORK: &str = "trellis-routed";

/// The configuration list; with `policy`, the plugin waits for policyd at the end of ADD; with
/// `portmap`, the reference portmap plugin is chained after it (hostPorts), as Calico's list;
/// with `dual_stack`, trellis-ipam hands out an IPv4 and an IPv6 address.
pub fn conflist(
    state_dir: &Path,
    mtu: u32,
    ipamd: Option<&Path>,
    policy: Option<&PolicyGate>,
    portmap: bool,
    dual_stack: bool,
) -> Value {
    let socket = ipamd.map_or_else(
        || trellis_ipam::client::DEFAULT_SOCKET.to_string(),
        |p| p.display().to_string(),
    );
    let mut plugin = json!({
        "type": "trellis-routed",
        "stateDir": state_dir,
        "mtu": mtu,
        "ipam": {"type": "trellis-ipam", "socket": socket},
    });
    if dual_stack {
        plugin["ipam"]["families"] = json!(["ipv4", "ipv6"]);
    }
    if let Some(p) = policy {
        plugin["policy"] = p.to_json();
    }
    let mut plugins = vec![plugin];
    if portmap {
        plugins.push(trellis_plugin::conflist::portmap());
    }
    trellis_plugin::conflist::conflist(NETWORK, plugins, Version::V1_1_0)
}

/// Writes it atomically into `dir`; returns the path.
pub fn write(dir: &Path, conflist: &Value) -> std::io::Result<PathBuf> {
    trellis_plugin::conflist::write(dir, FILE_NAME, conflist)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_parses_and_chains_trellis_ipam() {
        let c = conflist(
            Path::new("/run/r"),
            1500,
            Some(Path::new("/run/i.sock")),
            None,
            false,
            false,
        );
        assert!(c["plugins"][0].get("policy").is_none(), "policy off");
        assert!(
            c["plugins"][0]["ipam"].get("families").is_none(),
            "IPv4 only"
        );
        let dual = conflist(Path::new("/run/r"), 1500, None, None, false, true);
        assert_eq!(
            dual["plugins"][0]["ipam"]["families"],
            json!(["ipv4", "ipv6"])
        );
        let gated = conflist(
            Path::new("/run/r"),
            1500,
            None,
            Some(&PolicyGate {
                socket: "/run/p.sock".into(),
                timeout: std::time::Duration::from_millis(2500),
            }),
            true,
            false,
        );
        assert_eq!(
            gated["plugins"][0]["policy"],
            json!({"socket": "/run/p.sock", "timeoutMs": 2500})
        );
        let list = trellis_cni::NetworkConfigList::from_slice(c.to_string().as_bytes()).unwrap();
        assert_eq!(list.version().unwrap(), Version::V1_1_0);
        assert_eq!(
            c["cniVersion"], "1.0.0",
            "containerd 1.6/1.7 refuse a 1.1.0 list"
        );
        assert_eq!(c["plugins"][0]["ipam"]["socket"], "/run/i.sock");
        assert_eq!(c["plugins"][0]["mtu"], 1500);
        assert_eq!(
            c["plugins"].as_array().map(Vec::len),
            Some(1),
            "portmap off"
        );
        assert_eq!(
            gated["plugins"][1],
            json!({"type": "portmap", "snat": true, "capabilities": {"portMappings": true}})
        );
    }
}
