//! Which interface carries a node's traffic (the overlay's VXLAN, the routed mode's BGP and
//! pods): the default route's, one named (or owning an address), or the one the kernel would use
//! to reach a given address — flannel's `--iface` and `--iface-can-reach`, which multi-NIC hosts
//! need (flannel users' "wrong interface" reports).

use std::net::{IpAddr, Ipv4Addr};

use crate::{Family, Handle, Link};
use ipnet::IpNet;

/// How to choose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// The interface of the default route.
    DefaultRoute,
    /// An interface by name, or the interface holding this address.
    Iface(String),
    /// The interface the most specific route to this address leaves through.
    CanReach(IpAddr),
}

/// The chosen underlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    pub link: Link,
    pub ip: Ipv4Addr,
}

impl Underlay {
    /// The MTU the overlay can carry: the underlay's less VXLAN's 50 bytes (inner Ethernet 14,
    /// VXLAN 8, UDP 8, outer IPv4 20).
    pub fn overlay_mtu(&self) -> u32 {
        self.link.mtu.saturating_sub(50)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UnderlayError {
    #[error(transparent)]
    Net(#[from] crate::Error),
    #[error("no interface matches {0}")]
    NoMatch(String),
    #[error("interface {0} has no IPv4 address")]
    NoAddress(String),
}

/// Picks the underlay in the namespace `h` talks to.
pub async fn pick(h: &Handle, choice: &Choice) -> Result<Underlay, UnderlayError> {
    let routes = h.routes(Family::V4, Some(crate::Route::TABLE_MAIN)).await?;
    let index = match choice {
        Choice::DefaultRoute => routes
            .iter()
            .filter(|r| r.dst.prefix_len() == 0)
            .min_by_key(|r| r.priority.unwrap_or(0))
            .and_then(|r| r.oif)
            .ok_or_else(|| {
                UnderlayError::NoMatch("the default route (this node has none: use --iface)".into())
            })?,
        Choice::Iface(name_or_ip) => match name_or_ip.parse::<IpAddr>() {
            Ok(ip) => h
                .addresses(None)
                .await?
                .into_iter()
                .find(|a| a.address.addr() == ip)
                .map(|a| a.index)
                .ok_or_else(|| UnderlayError::NoMatch(format!("address {ip}")))?,
            Err(_) => {
                h.link(name_or_ip)
                    .await?
                    .ok_or_else(|| UnderlayError::NoMatch(format!("interface {name_or_ip}")))?
                    .index
            }
        },
        Choice::CanReach(target) => routes
            .iter()
            .filter(|r| r.dst.contains(target) && r.oif.is_some())
            .max_by_key(|r| r.dst.prefix_len())
            .and_then(|r| r.oif)
            .ok_or_else(|| UnderlayError::NoMatch(format!("a route to {target}")))?,
    };
    let link = h
        .link_by_index(index)
        .await?
        .ok_or_else(|| UnderlayError::NoMatch(format!("interface index {index}")))?;
    let ip = h
        .addresses(Some(index))
        .await?
        .into_iter()
        .find_map(|a| match a.address {
            IpNet::V4(v4) => Some(v4.addr()),
            IpNet::V6(_) => None,
        })
        .ok_or_else(|| UnderlayError::NoAddress(link.name.clone()))?;
    Ok(Underlay { link, ip })
}
