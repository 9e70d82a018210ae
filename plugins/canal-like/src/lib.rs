//! The canal-like combined mode: every pod on a routed veth of its own, as in the calico-like
//! mode (a /32, the link-local gateway `169.254.1.1` answered by proxy ARP, a host route; no
//! bridge), while the traffic between nodes goes through the flannel-like overlay's VXLAN
//! (`trellis overlay-agent --mode canal`: VTEP, a route per remote block, neighbour and FDB
//! entries) and policyd enforces policy on every pod before its first packet (the ADD gate).
//!
//! - [`PLUGIN`]: the `trellis-canal` CNI plugin — `trellis_plugin::routed`'s plugin under its
//!   own type, state directory and agent.
//! - [`state`]: what the overlay agent in canal mode tells the plugin: readiness, MTU.
//!
//! Configuration (beside `ipam`): `stateDir` (default `/run/trellis/canal`), `mtu` (overrides
//! the agent's, which is the underlay's less VXLAN's 50 bytes) and `policy` (the ADD gate).

pub mod state;

use trellis_plugin::routed::RoutedVeth;

use state::{DEFAULT_STATE_DIR, NodeState};

/// The plugin's type, and the prefix of the owner label on its host ends.
pub const TYPE: &str = "trellis-canal";

/// The plugin the binary runs: routed veths, the overlay agent's canal state.
pub const PLUGIN: RoutedVeth<NodeState> = RoutedVeth::new(TYPE, DEFAULT_STATE_DIR);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use trellis_plugin::ready::ReadyState;
    use trellis_plugin::testing::error_code;

    #[test]
    fn the_plugin_waits_for_the_overlay_agent_in_canal_mode_then_checks_its_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = json!({"cniVersion": "1.1.0", "name": "canal", "type": TYPE,
            "stateDir": dir.path(),
            "ipam": {"type": "trellis-ipam", "socket": dir.path().join("none.sock")}});
        assert_eq!(
            error_code(&PLUGIN, "ADD", &c),
            11,
            "no agent yet: try again later"
        );
        assert_eq!(error_code(&PLUGIN, "STATUS", &c), 50);
        // What the agent writes; keys the plugin does not know are ignored.
        std::fs::write(
            NodeState::path(dir.path()),
            r#"{"mtu": 1450, "blocks": ["10.244.3.0/24"]}"#,
        )
        .unwrap();
        assert_eq!(
            NodeState::read(dir.path()).unwrap(),
            Some(NodeState { mtu: 1450 })
        );
        // Ready: STATUS is the linked trellis-ipam's (ipamd is down here).
        assert_eq!(error_code(&PLUGIN, "STATUS", &c), 50);
        c["mtu"] = json!(20);
        assert_eq!(error_code(&PLUGIN, "ADD", &c), 7, "an MTU below 68");
        assert_eq!(
            error_code(&PLUGIN, "CHECK", &c),
            7,
            "CHECK needs the ADD result"
        );
    }
}
