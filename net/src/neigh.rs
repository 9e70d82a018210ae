//! Permanent neighbour (ARP/NDP) entries and the bridge forwarding database of VXLAN devices.

use std::net::IpAddr;

use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};

use crate::error::{Error, Result, errno_of};
use crate::handle::Handle;
use crate::link::Mac;

/// A neighbour entry: `ip neigh … lladdr … nud …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub index: u32,
    pub ip: IpAddr,
    pub mac: Option<Mac>,
    pub permanent: bool,
}

/// A forwarding entry of a VXLAN device: frames for `mac` go to the VTEP at `dst`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEntry {
    pub index: u32,
    pub mac: Mac,
    pub dst: Option<IpAddr>,
    pub permanent: bool,
}

fn neighbour_ip(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        NeighbourAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        // AF_BRIDGE entries carry their VTEP destination as raw bytes.
        NeighbourAddress::Other(b) => match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    }
}

fn lladdr(m: &NeighbourMessage) -> Option<Mac> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) => Mac::from_bytes(b),
        _ => None,
    })
}

fn dst(m: &NeighbourMessage) -> Option<IpAddr> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(d) => neighbour_ip(d),
        _ => None,
    })
}

impl Handle {
    async fn neighbour_messages(
        &self,
        family: Option<AddressFamily>,
    ) -> Result<Vec<NeighbourMessage>> {
        let mut req = self.inner.neighbours().get();
        if let Some(f) = family {
            req = req.set_address_family(f);
        }
        req.execute()
            .try_collect()
            .await
            .map_err(|e| Error::netlink("list neighbours", &self.ns, e))
    }

    /// Neighbour entries of one link (or all), IPv4 and IPv6.
    pub async fn neighbours(&self, index: Option<u32>) -> Result<Vec<Neighbour>> {
        let msgs = self.neighbour_messages(None).await?;
        Ok(msgs
            .iter()
            .filter(|m| matches!(m.header.family, AddressFamily::Inet | AddressFamily::Inet6))
            .filter(|m| index.is_none_or(|i| m.header.ifindex == i))
            .filter_map(|m| {
                Some(Neighbour {
                    index: m.header.ifindex,
                    ip: dst(m)?,
                    mac: lladdr(m),
                    permanent: m.header.state == NeighbourState::Permanent,
                })
            })
            .collect())
    }

    /// `ip neigh replace <ip> lladdr <mac> dev <index> nud permanent`.
    pub async fn ensure_neighbour(&self, index: u32, ip: IpAddr, mac: Mac) -> Result<()> {
        self.inner
            .neighbours()
            .add(index, ip)
            .link_layer_address(&mac.0)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| {
                Error::netlink(
                    "replace neighbour",
                    format!("{ip} lladdr {mac} dev {index} in {}", self.ns),
                    e,
                )
            })
    }

    /// Deletes the neighbour entry for `ip` on the link; false when there was none.
    pub async fn delete_neighbour(&self, index: u32, ip: IpAddr) -> Result<bool> {
        let msgs = self.neighbour_messages(None).await?;
        let Some(msg) = msgs
            .into_iter()
            .find(|m| m.header.ifindex == index && dst(m) == Some(ip))
        else {
            return Ok(false);
        };
        match self.inner.neighbours().del(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if matches!(errno_of(&e), Some(nix::libc::ENOENT | nix::libc::ENODEV)) => {
                Ok(false)
            }
            Err(e) => Err(Error::netlink(
                "delete neighbour",
                format!("{ip} dev {index} in {}", self.ns),
                e,
            )),
        }
    }

    /// The forwarding entries of a VXLAN device.
    pub async fn fdb(&self, index: u32) -> Result<Vec<FdbEntry>> {
        let msgs = self.neighbour_messages(Some(AddressFamily::Bridge)).await?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.ifindex == index)
            .filter_map(|m| {
                Some(FdbEntry {
                    index,
                    mac: lladdr(m)?,
                    dst: dst(m),
                    permanent: m.header.state == NeighbourState::Permanent,
                })
            })
            .collect())
    }

    /// `bridge fdb replace <mac> dev <index> dst <ip> self permanent`. NTF_SELF is set
    /// explicitly: without it the kernel offers the entry to a bridge, not to the VXLAN driver.
    pub async fn ensure_fdb(&self, index: u32, mac: Mac, dst_ip: IpAddr) -> Result<()> {
        self.inner
            .neighbours()
            .add_bridge(index, &mac.0)
            .destination(dst_ip)
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| {
                Error::netlink(
                    "replace fdb entry",
                    format!("{mac} dst {dst_ip} dev {index} in {}", self.ns),
                    e,
                )
            })
    }

    /// Deletes the forwarding entry for `mac` (towards `dst_ip`); false when there was none.
    pub async fn delete_fdb(&self, index: u32, mac: Mac, dst_ip: IpAddr) -> Result<bool> {
        let msgs = self.neighbour_messages(Some(AddressFamily::Bridge)).await?;
        let Some(msg) = msgs.into_iter().find(|m| {
            m.header.ifindex == index && lladdr(m) == Some(mac) && dst(m) == Some(dst_ip)
        }) else {
            return Ok(false);
        };
        match self.inner.neighbours().del(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if matches!(errno_of(&e), Some(nix::libc::ENOENT | nix::libc::ENODEV)) => {
                Ok(false)
            }
            Err(e) => Err(Error::netlink(
                "delete fdb entry",
                format!("{mac} dst {dst_ip} dev {index} in {}", self.ns),
                e,
            )),
        }
    }
}
