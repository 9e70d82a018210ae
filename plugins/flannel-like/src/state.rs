//! What the agent tells the plugin on its node: a JSON file written once the node's data path
//! is in place (VTEP, routes, masquerade, CNI config). Until it exists the plugin answers ADD
//! with "try again later" and STATUS with "not available" — never a confusing file error.

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use trellis_plugin::ready::{self, ReadyState};

/// The default place of the state file.
pub const DEFAULT_STATE_DIR: &str = "/run/trellis/overlay";
pub const STATE_FILE: &str = ready::FILE;

/// The node's overlay, as the plugin needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// The node's block (a /24 of the cluster CIDR).
    pub block: Ipv4Net,
    /// The whole pod network.
    pub cluster_cidr: Ipv4Net,
    /// The pod MTU: the underlay's less the 50 bytes of VXLAN.
    pub mtu: u32,
    /// The bridge pods attach to.
    pub bridge: String,
}

impl NodeState {
    /// The gateway pods use: the block's first host, on the bridge.
    pub fn gateway(&self) -> std::net::Ipv4Addr {
        gateway_of(self.block)
    }

    /// The VTEP's address: the block's network address (as flannel's `flannel.1`).
    pub fn vtep_address(&self) -> std::net::Ipv4Addr {
        self.block.network()
    }
}

impl ReadyState for NodeState {
    const AGENT: &'static str = "overlay agent";
}

/// The gateway of a node's block: its first host, held by the bridge.
pub fn gateway_of(block: Ipv4Net) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(u32::from(block.network()).saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_names_the_gateway() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(NodeState::read(dir.path()).unwrap(), None);
        let s = NodeState {
            block: "10.244.3.0/24".parse().unwrap(),
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            mtu: 1450,
            bridge: "trellis0".into(),
        };
        s.write(dir.path()).unwrap();
        assert_eq!(NodeState::read(dir.path()).unwrap(), Some(s.clone()));
        assert_eq!(s.gateway().to_string(), "10.244.3.1");
        assert_eq!(s.vtep_address().to_string(), "10.244.3.0");
        NodeState::remove(dir.path()).unwrap();
        NodeState::remove(dir.path()).unwrap();
        assert_eq!(NodeState::read(dir.path()).unwrap(), None);
    }
}
