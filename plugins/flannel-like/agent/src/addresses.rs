//! The node's own addresses in its block — the VTEP's (the block's network address), the
//! bridge's gateway (network + 1) and the block's broadcast address — held in ipamd under
//! handles of their own (`overlay.<node>.vtep`, `.gateway`, `.broadcast`), so no pod is ever
//! given one, whatever the pool reserves. They carry no CNI attachment, so the leak pass never
//! collects them; `trellis ipam blocks --allocations` shows them used. In canal mode there is
//! no bridge and a pod has a /32: the node holds only the VTEP's address.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use ipnet::Ipv4Net;
use trellis_ipam::proto::{AllocateRequest, Family, ShowRequest};

/// Each address the node holds in `block`, with its handle: with a bridge (overlay mode) the
/// VTEP's, the gateway's and the broadcast address; without (canal mode) the VTEP's alone.
pub fn owned(node: &str, block: Ipv4Net, bridge: bool) -> Vec<(Ipv4Addr, String)> {
    let handle = |what: &str| format!("overlay.{node}.{what}");
    let mut out = vec![(block.network(), handle("vtep"))];
    if bridge {
        out.push((trellis_overlay::state::gateway_of(block), handle("gateway")));
        out.push((block.broadcast(), handle("broadcast")));
    }
    out
}

/// Makes sure ipamd holds each of them: free ones are allocated to the node's handles; those
/// the pool reserves need nothing. One a pod already holds (given out before the agent held
/// it) is reported, not taken: that pod must be recreated.
pub async fn hold(socket: &Path, node: &str, block: Ipv4Net, bridge: bool) -> Result<(), String> {
    let mut client =
        trellis_ipam::client::connect(socket, Duration::from_secs(2), Duration::from_secs(10))
            .await
            .map_err(|e| e.to_string())?;
    for (address, handle) in owned(node, block, bridge) {
        let shown = client
            .show(ShowRequest {
                address: address.to_string(),
            })
            .await
            .map_err(|s| format!("ipamd show {address}: {}", s.message()))?
            .into_inner();
        match (shown.state.as_str(), shown.allocation) {
            ("reserved", _) => {}
            ("allocated", Some(a)) if a.handle == handle => {}
            ("allocated", Some(a)) => tracing::error!(
                %address, holder = %a.handle, pod = %format!("{}/{}", a.namespace, a.pod),
                "a pod holds an address this node needs (given out before the agent held it): recreate that pod"
            ),
            _ => {
                client
                    .allocate(AllocateRequest {
                        handle: handle.clone(),
                        families: vec![Family::Ipv4 as i32],
                        requested: vec![address.to_string()],
                        ..Default::default()
                    })
                    .await
                    .map_err(|s| {
                        format!("ipamd allocate {address} for {handle}: {}", s.message())
                    })?;
                tracing::info!(%address, %handle, "holding the node's address in ipamd");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_holds_network_gateway_and_broadcast_of_its_block() {
        let got = owned("n1", "10.244.3.0/24".parse().unwrap(), true);
        let got: Vec<(String, &str)> = got
            .iter()
            .map(|(a, h)| (a.to_string(), h.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("10.244.3.0".to_string(), "overlay.n1.vtep"),
                ("10.244.3.1".to_string(), "overlay.n1.gateway"),
                ("10.244.3.255".to_string(), "overlay.n1.broadcast"),
            ]
        );
        let canal = owned("n1", "10.244.3.0/24".parse().unwrap(), false);
        assert_eq!(
            canal,
            [("10.244.3.0".parse().unwrap(), "overlay.n1.vtep".to_string())],
            "canal: no bridge, so only the VTEP's"
        );
    }
}
