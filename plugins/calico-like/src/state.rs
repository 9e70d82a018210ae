//! What the BGP agent tells the plugin on its node: a JSON file written once the node's data
//! path is in place (forwarding on, blackhole routes for its blocks, sessions up). Until it
//! exists the plugin answers ADD with "try again later" (11) and STATUS with "not available"
//! (50) — never a confusing file error.
//!
//! The file is `{"mtu": 1500}`; keys the plugin does not know are ignored, so the agent may
//! write more (its blocks, its router id) without breaking older plugins.

use serde::{Deserialize, Serialize};
use trellis_plugin::ready::{self, ReadyState};
use trellis_plugin::routed::RoutedState;

/// The default place of the state file.
pub const DEFAULT_STATE_DIR: &str = "/run/trellis/routed";
pub const STATE_FILE: &str = ready::FILE;

/// The node's routed data path, as the plugin needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// The pod MTU: the underlay's own, whole (no encapsulation).
    pub mtu: u32,
}

impl ReadyState for NodeState {
    const AGENT: &'static str = "routed agent";
}

impl RoutedState for NodeState {
    fn mtu(&self) -> u32 {
        self.mtu
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_removal_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(NodeState::read(dir.path()).unwrap(), None);
        let s = NodeState { mtu: 1500 };
        s.write(dir.path()).unwrap();
        assert_eq!(NodeState::read(dir.path()).unwrap(), Some(s));
        NodeState::remove(dir.path()).unwrap();
        NodeState::remove(dir.path()).unwrap();
        assert_eq!(NodeState::read(dir.path()).unwrap(), None);
    }

    #[test]
    fn unknown_keys_are_ignored_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            NodeState::path(dir.path()),
            r#"{"mtu": 9000, "blocks": ["10.244.3.0/26"], "routerId": "198.18.0.11"}"#,
        )
        .unwrap();
        assert_eq!(
            NodeState::read(dir.path()).unwrap(),
            Some(NodeState { mtu: 9000 })
        );
        std::fs::write(NodeState::path(dir.path()), "{").unwrap();
        assert!(NodeState::read(dir.path()).is_err());
    }
}
