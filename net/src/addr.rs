//! Interface addresses.

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};

use crate::error::{Error, Result, errno_of};
use crate::handle::Handle;

/// An address on an interface, with the host bits kept (`10.244.1.5/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Address {
    pub index: u32,
    pub address: IpNet,
    /// An IPv6 address still under duplicate address detection (or whose DAD failed): the
    /// kernel neither sends from it nor accepts packets for it yet.
    pub tentative: bool,
}

/// The address's flags: `IFA_FLAGS` when the kernel sent it (all 32 bits), else the header's
/// first eight.
fn flags(m: &AddressMessage) -> AddressFlags {
    m.attributes
        .iter()
        .find_map(|a| match a {
            AddressAttribute::Flags(f) => Some(*f),
            _ => None,
        })
        .unwrap_or_else(|| AddressFlags::from_bits_retain(u32::from(m.header.flags.bits())))
}

fn parse(m: &AddressMessage) -> Option<Address> {
    // IFA_LOCAL is the interface's own address on point-to-point links; IFA_ADDRESS otherwise.
    let local = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let addr = local.or_else(|| {
        m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })?;
    let address = IpNet::new(addr, m.header.prefix_len).ok()?;
    let f = flags(m);
    Some(Address {
        index: m.header.index,
        address,
        tentative: f.intersects(AddressFlags::Tentative | AddressFlags::Dadfailed),
    })
}

impl Handle {
    /// Addresses of one link (or of all links).
    pub async fn addresses(&self, index: Option<u32>) -> Result<Vec<Address>> {
        let mut req = self.inner.address().get();
        if let Some(i) = index {
            req = req.set_link_index_filter(i);
        }
        let msgs: Vec<AddressMessage> = req.execute().try_collect().await.map_err(|e| {
            Error::netlink(
                "list addresses",
                format!("of link {index:?} in {}", self.ns),
                e,
            )
        })?;
        Ok(msgs
            .iter()
            .filter_map(parse)
            .filter(|a| index.is_none_or(|i| a.index == i))
            .collect())
    }

    /// Adds `address` to the link unless it is there already.
    pub async fn ensure_address(&self, index: u32, address: IpNet) -> Result<()> {
        self.add_address(index, address).await.map(|_| ())
    }

    /// Adds `address` to the link; false when it was there already. One request whatever the
    /// number of links, where listing addresses costs a dump of every address in the namespace.
    pub async fn add_address(&self, index: u32, address: IpNet) -> Result<bool> {
        self.add_address_flagged(index, address, false).await
    }

    /// Adds an IPv6 `address` with `IFA_F_NODAD` (`ip addr add … nodad`): no duplicate address
    /// detection, so it is never "tentative". For an address whose uniqueness is known by
    /// construction (handed out by an allocator, or a link-local one only its link uses); the
    /// kernel still installs its local route a moment later, from a work queue (see
    /// [`Handle::is_local`]). False when it was there already. An IPv4 address is added as
    /// [`Handle::add_address`] does (IPv4 has no DAD).
    pub async fn add_address_nodad(&self, index: u32, address: IpNet) -> Result<bool> {
        self.add_address_flagged(index, address, address.addr().is_ipv6())
            .await
    }

    async fn add_address_flagged(&self, index: u32, address: IpNet, nodad: bool) -> Result<bool> {
        let mut req = self
            .inner
            .address()
            .add(index, address.addr(), address.prefix_len());
        if nodad {
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match req.execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno_of(&e) == Some(nix::libc::EEXIST) => Ok(false),
            Err(e) => Err(Error::netlink(
                "add address",
                format!("{address} to link {index} in {}", self.ns),
                e,
            )),
        }
    }

    /// Removes `address` from the link; false when it was not there.
    pub async fn delete_address(&self, index: u32, address: IpNet) -> Result<bool> {
        let msgs: Vec<AddressMessage> = self
            .inner
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| {
                Error::netlink(
                    "list addresses",
                    format!("of link {index} in {}", self.ns),
                    e,
                )
            })?;
        let Some(msg) = msgs
            .into_iter()
            .find(|m| parse(m).is_some_and(|a| a.index == index && a.address == address))
        else {
            return Ok(false);
        };
        match self.inner.address().del(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e)
                if matches!(
                    errno_of(&e),
                    Some(nix::libc::EADDRNOTAVAIL | nix::libc::ENODEV)
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(Error::netlink(
                "delete address",
                format!("{address} from link {index} in {}", self.ns),
                e,
            )),
        }
    }

    /// Removes every address of the link (the kernel's IPv6 link-local one too); the number
    /// removed. One dump, then one request per address.
    pub async fn flush_addresses(&self, index: u32) -> Result<usize> {
        let msgs: Vec<AddressMessage> = self
            .inner
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| {
                Error::netlink(
                    "list addresses",
                    format!("of link {index} in {}", self.ns),
                    e,
                )
            })?;
        let mut removed = 0;
        for msg in msgs.into_iter().filter(|m| m.header.index == index) {
            match self.inner.address().del(msg).execute().await {
                Ok(()) => removed += 1,
                Err(e)
                    if matches!(
                        errno_of(&e),
                        Some(nix::libc::EADDRNOTAVAIL | nix::libc::ENODEV)
                    ) => {}
                Err(e) => {
                    return Err(Error::netlink(
                        "delete address",
                        format!("from link {index} in {}", self.ns),
                        e,
                    ));
                }
            }
        }
        Ok(removed)
    }

    /// Leaves exactly `wanted` among the link's addresses of the families `wanted` uses (and the
    /// IPv6 link-local address, which the kernel owns): a stale address is removed, not kept
    /// beside the right one.
    pub async fn set_addresses(&self, index: u32, wanted: &[IpNet]) -> Result<()> {
        let has_v4 = wanted.iter().any(|a| a.addr().is_ipv4());
        let has_v6 = wanted.iter().any(|a| a.addr().is_ipv6());
        for existing in self.addresses(Some(index)).await? {
            let a = existing.address;
            let family_managed = if a.addr().is_ipv4() { has_v4 } else { has_v6 };
            let link_local =
                matches!(a.addr(), IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
            if family_managed && !link_local && !wanted.contains(&a) {
                self.delete_address(index, a).await?;
            }
        }
        for a in wanted {
            self.ensure_address(index, *a).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::AddressFamily;
    use netlink_packet_route::address::AddressHeaderFlags;

    fn message(flags_attr: Option<AddressFlags>, header: AddressHeaderFlags) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet6;
        m.header.prefix_len = 128;
        m.header.index = 7;
        m.header.flags = header;
        m.attributes
            .push(AddressAttribute::Address("fd00::5".parse().unwrap()));
        if let Some(f) = flags_attr {
            m.attributes.push(AddressAttribute::Flags(f));
        }
        m
    }

    #[test]
    fn tentative_and_dad_failed_addresses_are_tentative_whichever_field_says_so() {
        let a = parse(&message(
            Some(AddressFlags::Tentative),
            AddressHeaderFlags::empty(),
        ))
        .unwrap();
        assert!(a.tentative);
        assert_eq!(a.address.to_string(), "fd00::5/128");
        let a = parse(&message(
            Some(AddressFlags::Dadfailed),
            AddressHeaderFlags::empty(),
        ))
        .unwrap();
        assert!(a.tentative);
        // Without IFA_FLAGS the header's byte is read.
        let a = parse(&message(None, AddressHeaderFlags::Tentative)).unwrap();
        assert!(a.tentative);
        // NODAD, permanent: usable.
        let a = parse(&message(
            Some(AddressFlags::Nodad | AddressFlags::Permanent),
            AddressHeaderFlags::Tentative,
        ))
        .unwrap();
        assert!(!a.tentative, "IFA_FLAGS wins over the header");
    }
}
