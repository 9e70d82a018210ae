//! The `trellis-routed` CNI plugin (the wiring is `trellis_plugin::routed`, which the canal mode
//! shares): each pod on a veth pair of its own, no bridge. The pod end
//! (`CNI_IFNAME`) holds the pod's address as a /32 (/128) and routes everything through a
//! link-local gateway — `169.254.1.1`, which exists nowhere, and for IPv6 `fe80::1`, which the
//! host end holds — whose permanent neighbour entry is the host end's MAC, so the kernel sends
//! every packet to the host. The host end
//! (`tr` + 11 hex digits of a hash of the pod's namespace/name, or of the container id) answers
//! ARP by proxy and forwards; the host routes the pod's /32 to it (protocol `trellis_net::proto::POD`).
//! The BGP agent announces the node's blocks; the kernel does the rest. No encapsulation, so the
//! pod MTU is the underlay's.
//!
//! Configuration (beside `ipam`): `stateDir` (where the agent writes `ready.json`, default
//! `/run/trellis/routed`) and `mtu` (overrides the agent's). Until the agent has made the node
//! ready, ADD answers "try again later" (11) and STATUS "not available" (50). With a `policy`
//! section, ADD waits for policyd to commit the pod's rules (`trellis_plugin::policy`); if it
//! does not, ADD is undone and answers 11.
//!
//! The host end carries the attachment it belongs to in its alias (`trellis-routed
//! <container id>/<ifname>`, see `trellis_plugin::veth`): a late DEL of an earlier sandbox of
//! the same pod, whose host end has the same name, leaves the new sandbox's veth alone.

use trellis_plugin::routed::RoutedVeth;

use crate::state::{DEFAULT_STATE_DIR, NodeState};

/// The plugin's type, and the prefix of the owner label on its host ends.
pub const TYPE: &str = "trellis-routed";

/// The plugin the binary runs: routed veths, the BGP agent's state.
pub const PLUGIN: RoutedVeth<NodeState> = RoutedVeth::new(TYPE, DEFAULT_STATE_DIR);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use std::path::Path;
    use trellis_plugin::ready::ReadyState;

    fn code(command: &str, conf: Value) -> u64 {
        trellis_plugin::testing::error_code(&PLUGIN, command, &conf)
    }

    fn conf(state_dir: &Path) -> Value {
        json!({"cniVersion": "1.1.0", "name": "routed", "type": "trellis-routed",
               "stateDir": state_dir, "ipam": {"type": "no-such-ipam"}})
    }

    #[test]
    fn before_the_agent_is_ready_add_waits_and_status_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        // Refused before IPAM is asked: no address is taken while the node is not ready.
        assert_eq!(code("ADD", conf(dir.path())), 11);
        assert_eq!(code("STATUS", conf(dir.path())), 50);
        std::fs::write(NodeState::path(dir.path()), "not json").unwrap();
        assert_eq!(code("STATUS", conf(dir.path())), 50);
        // Once ready, STATUS asks the IPAM plugin (missing here: an invalid configuration).
        NodeState { mtu: 1500 }.write(dir.path()).unwrap();
        assert_eq!(code("STATUS", conf(dir.path())), 7);
    }

    #[test]
    fn trellis_ipam_runs_in_process() {
        let dir = tempfile::tempdir().unwrap();
        NodeState { mtu: 1500 }.write(dir.path()).unwrap();
        let mut c = conf(dir.path());
        c["ipam"] = json!({"type": "trellis-ipam", "socket": dir.path().join("none.sock")});
        // No trellis-ipam in CNI_PATH (that would be 7): the linked plugin finds ipamd down.
        assert_eq!(code("STATUS", c.clone()), 50);
        // And refuses what its binary refuses.
        c["ipam"]["subnet"] = json!("10.0.0.0/8");
        assert_eq!(code("STATUS", c), 2);
    }

    #[test]
    fn bad_own_keys_are_invalid_configurations() {
        let dir = tempfile::tempdir().unwrap();
        NodeState { mtu: 1500 }.write(dir.path()).unwrap();
        let mut c = conf(dir.path());
        c["mtu"] = json!(20);
        assert_eq!(code("ADD", c.clone()), 7);
        c["mtu"] = json!("big");
        assert_eq!(code("ADD", c), 7);
    }

    #[test]
    fn check_needs_the_add_result() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(code("CHECK", conf(dir.path())), 7);
    }
}
