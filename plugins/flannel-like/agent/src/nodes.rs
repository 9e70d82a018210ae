//! The node's overlay on its Node object (annotations under `trellis.dev/`), and the other
//! nodes' read back from theirs.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use trellis_net::Mac;

use crate::peers::Peer;

pub const VTEP_MAC: &str = "trellis.dev/vtep-mac";
pub const NODE_IP: &str = "trellis.dev/node-ip";
pub const BLOCK: &str = "trellis.dev/pod-cidr";
pub const BACKEND: &str = "trellis.dev/backend";

/// The overlay a Node publishes, if it publishes one.
pub fn peer_of(node: &Node) -> Option<Peer> {
    let a = node.metadata.annotations.as_ref()?;
    if a.get(BACKEND).map(String::as_str) != Some("vxlan") {
        return None;
    }
    Some(Peer {
        vtep_mac: a.get(VTEP_MAC)?.parse().ok()?,
        node_ip: a.get(NODE_IP)?.parse().ok()?,
        block: a.get(BLOCK)?.parse().ok()?,
    })
}

/// Publishes this node's VTEP MAC, address and block.
pub async fn publish(
    api: &Api<Node>,
    node: &str,
    mac: Mac,
    ip: Ipv4Addr,
    block: Ipv4Net,
) -> kube::Result<()> {
    let patch = json!({"metadata": {"annotations": {
        VTEP_MAC: mac.to_string(), NODE_IP: ip.to_string(), BLOCK: block.to_string(), BACKEND: "vxlan",
    }}});
    api.patch(node, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map(|_| ())
}

/// Marks the node's network ready (the `NetworkUnavailable=False` condition).
pub async fn mark_network_ready(api: &Api<Node>, node: &str) -> kube::Result<()> {
    let now =
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    let patch = json!({"status": {"conditions": [{
        "type": "NetworkUnavailable", "status": "False", "reason": "TrellisOverlayUp",
        "message": "the trellis overlay agent made this node's network ready",
        "lastTransitionTime": now, "lastHeartbeatTime": now,
    }]}});
    api.patch_status(node, &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .map(|_| ())
}

/// `spec.podCIDR`, when the cluster allocates node CIDRs.
pub async fn pod_cidr(api: &Api<Node>, node: &str) -> kube::Result<Option<Ipv4Net>> {
    let n = api.get(node).await?;
    Ok(n.spec.and_then(|s| s.pod_cidr).and_then(|c| c.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_come_from_complete_annotations_only() {
        let node = |ann: serde_json::Value| {
            serde_json::from_value::<Node>(json!({"metadata": {"name": "n", "annotations": ann}}))
                .unwrap()
        };
        let full = node(
            json!({VTEP_MAC: "02:00:00:00:00:01", NODE_IP: "198.18.0.12", BLOCK: "10.244.2.0/24", BACKEND: "vxlan"}),
        );
        let p = peer_of(&full).unwrap();
        assert_eq!(p.vtep_addr().to_string(), "10.244.2.0");
        assert!(
            peer_of(&node(
                json!({VTEP_MAC: "02:00:00:00:00:01", NODE_IP: "198.18.0.12", BACKEND: "vxlan"})
            ))
            .is_none()
        );
        assert!(peer_of(&node(json!({VTEP_MAC: "bad", NODE_IP: "198.18.0.12", BLOCK: "10.244.2.0/24", BACKEND: "vxlan"}))).is_none());
    }
}
