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
/// Every block the node routes to its pods, its first block (`BLOCK`) first, comma-separated:
/// in canal mode a node whose first block fills up gets another from ipamd.
pub const BLOCKS: &str = "trellis.dev/pod-cidrs";
pub const BACKEND: &str = "trellis.dev/backend";

/// The overlay a Node publishes, if it publishes one.
pub fn peer_of(node: &Node) -> Option<Peer> {
    let a = node.metadata.annotations.as_ref()?;
    if a.get(BACKEND).map(String::as_str) != Some("vxlan") {
        return None;
    }
    let block: Ipv4Net = a.get(BLOCK)?.parse().ok()?;
    // A block that does not parse is skipped, not the whole node: its first block still routes.
    let mut extra_blocks: Vec<Ipv4Net> = a
        .get(BLOCKS)
        .map(|l| l.split(',').filter_map(|b| b.trim().parse().ok()).collect())
        .unwrap_or_default();
    extra_blocks.retain(|b: &Ipv4Net| *b != block);
    extra_blocks.sort();
    extra_blocks.dedup();
    Some(Peer {
        vtep_mac: a.get(VTEP_MAC)?.parse().ok()?,
        node_ip: a.get(NODE_IP)?.parse().ok()?,
        block,
        extra_blocks,
    })
}

/// Publishes this node's VTEP MAC, address, first block and every block it routes to its pods.
pub async fn publish(
    api: &Api<Node>,
    node: &str,
    mac: Mac,
    ip: Ipv4Addr,
    block: Ipv4Net,
    extra_blocks: &[Ipv4Net],
) -> kube::Result<()> {
    let all: Vec<String> = std::iter::once(block)
        .chain(extra_blocks.iter().copied().filter(|b| *b != block))
        .map(|b| b.to_string())
        .collect();
    let patch = json!({"metadata": {"annotations": {
        VTEP_MAC: mac.to_string(), NODE_IP: ip.to_string(), BLOCK: block.to_string(),
        BLOCKS: all.join(","), BACKEND: "vxlan",
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
            p.extra_blocks.is_empty(),
            "an agent before pod-cidrs: one block"
        );
        let more = node(
            json!({VTEP_MAC: "02:00:00:00:00:01", NODE_IP: "198.18.0.12", BLOCK: "10.244.2.0/24",
                   BLOCKS: "10.244.2.0/24,10.244.9.0/24,bad,10.244.9.0/24", BACKEND: "vxlan"}),
        );
        let p = peer_of(&more).unwrap();
        assert_eq!(
            p.extra_blocks,
            ["10.244.9.0/24".parse::<Ipv4Net>().unwrap()]
        );
        assert_eq!(p.vtep_addr().to_string(), "10.244.2.0", "the first block's");
        assert!(
            peer_of(&node(
                json!({VTEP_MAC: "02:00:00:00:00:01", NODE_IP: "198.18.0.12", BACKEND: "vxlan"})
            ))
            .is_none()
        );
        assert!(peer_of(&node(json!({VTEP_MAC: "bad", NODE_IP: "198.18.0.12", BLOCK: "10.244.2.0/24", BACKEND: "vxlan"}))).is_none());
    }
}
