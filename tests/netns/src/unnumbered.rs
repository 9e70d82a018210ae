//! Unnumbered links for the BGP tests (RFC 8950 sessions with BIRD and FRR): a veth pair
//! between two nodes with link-local IPv6 addresses only.

use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use trellis_net::{Handle, VethSpec};

use crate::{Error, Node, Result};

/// The usable (not tentative) link-local address of `iface` in `h`'s namespace, waited for
/// (at most 5 s, polling every 20 ms).
pub async fn link_local(h: &Handle, iface: &str) -> Result<Ipv6Addr> {
    let link = h.require_link(iface).await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found = h
            .addresses(Some(link.index))
            .await?
            .into_iter()
            .find_map(|a| match a.address.addr() {
                IpAddr::V6(ll) if ll.is_unicast_link_local() && !a.tentative => Some(ll),
                _ => None,
            });
        if let Some(ll) = found {
            return Ok(ll);
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!(
                    "a usable link-local address on {iface} in {}",
                    h.namespace()
                ),
                secs: 5.0,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A veth pair `name` between `a` and `b`, up, with link-local addresses only (no DAD, so they
/// are usable at once). Returns each side's link-local address.
pub async fn link(a: &Node, b: &Node, name: &str) -> Result<(Ipv6Addr, Ipv6Addr)> {
    let ha = a.ns.connect()?;
    let hb = b.ns.connect()?;
    ha.add_veth(&VethSpec {
        name,
        peer_name: name,
        peer_ns: Some(&b.ns),
        mtu: None,
        mac: None,
        peer_mac: None,
    })
    .await?;
    for (node, h) in [(a, &ha), (b, &hb)] {
        trellis_net::sysctl::set(
            &node.ns,
            &[(&format!("net/ipv6/conf/{name}/accept_dad"), "0")],
        )?;
        let link = h.require_link(name).await?;
        h.set_up(link.index).await?;
    }
    Ok((link_local(&ha, name).await?, link_local(&hb, name).await?))
}
