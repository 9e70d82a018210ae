//! What the overlay agent in canal mode (`trellis overlay-agent --mode canal`) tells the plugin
//! on its node: a JSON file written once the node's data path is in place (VTEP, routes to the
//! other nodes' blocks, forwarding). Until it exists the plugin answers ADD with "try again
//! later" (11) and STATUS with "not available" (50).
//!
//! The file is `{"mtu": 1450}`; keys the plugin does not know are ignored, so the agent may
//! write more later without breaking older plugins.

use serde::{Deserialize, Serialize};
use trellis_plugin::ready::ReadyState;
use trellis_plugin::routed::RoutedState;

/// The default place of the state file.
pub const DEFAULT_STATE_DIR: &str = "/run/trellis/canal";

/// The node's canal data path, as the plugin needs it: the pod MTU, the underlay's less the 50
/// bytes of VXLAN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    pub mtu: u32,
}

impl RoutedState for NodeState {
    fn mtu(&self) -> u32 {
        self.mtu
    }
}

impl ReadyState for NodeState {
    const AGENT: &'static str = "overlay agent (canal mode)";
}
