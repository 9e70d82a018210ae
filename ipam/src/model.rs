//! The IPAM model: pools of addresses, blocks carved from a pool with affinity to one node, and
//! allocations inside a block keyed by a handle.
//!
//! Why blocks: a node allocates from blocks it owns, so two nodes never contend for the same
//! object and one write (a compare-and-swap of one block) serves many allocations; the routed
//! mode also announces one route per block instead of one per pod.
//!
//! An address is an *ordinal* inside its block: `block network + ordinal`. The types here are
//! also the wire form of the custom resources (`IPPool`, `IPAMBlock` in `ipam.trellis.dev/v1`)
//! and of the standalone store's values, so one JSON shape serves both backends.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Largest block: 2^16 addresses. A block is one object rewritten on every change, so it must
/// stay small; /16 of IPv4 or /112 of IPv6 is already far more than a node runs.
pub const MAX_BLOCK_HOST_BITS: u8 = 16;

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    pub fn of_net(net: &IpNet) -> Family {
        Family::of(net.addr())
    }

    /// Bits in an address of this family.
    pub fn bits(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        })
    }
}

/// A pool: a CIDR that blocks of `block_size` are carved from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolSpec {
    pub cidr: IpNet,
    /// The prefix length of each block (/24 for the overlay, /26 for the routed mode).
    pub block_size: u8,
    /// A label selector in the Kubernetes text syntax; empty selects every node.
    #[serde(default)]
    pub node_selector: String,
    /// A disabled pool hands out nothing new; what it handed out stays valid.
    #[serde(default)]
    pub disabled: bool,
    /// Whether a node whose blocks are full and that cannot claim another may take single
    /// addresses from other nodes' blocks. Off by default (strict affinity): a block's addresses
    /// then always live on its node, so one route per block is the whole routing table.
    #[serde(default)]
    pub allow_borrowing: bool,
    /// Ordinals never handed out at the start of each block (the overlay keeps .0 for its VTEP
    /// and .1 for the bridge gateway).
    #[serde(default)]
    pub reserve_head: u32,
    /// Ordinals never handed out at the end of each block (the IPv4 broadcast address).
    #[serde(default)]
    pub reserve_tail: u32,
    /// Report `block network + 1` as the gateway of each address.
    #[serde(default)]
    pub gateway: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    pub spec: PoolSpec,
}

impl Pool {
    pub fn family(&self) -> Family {
        Family::of_net(&self.spec.cidr)
    }

    /// Host bits of one block.
    pub fn block_host_bits(&self) -> u8 {
        self.family().bits().saturating_sub(self.spec.block_size)
    }

    /// Addresses in one block.
    pub fn block_len(&self) -> u64 {
        1u64 << self.block_host_bits().min(63)
    }

    /// The ordinals handed out in each block: `[reserve_head, len - reserve_tail)`.
    pub fn usable(&self) -> std::ops::Range<u64> {
        let len = self.block_len();
        let head = u64::from(self.spec.reserve_head).min(len);
        let tail = u64::from(self.spec.reserve_tail).min(len - head);
        head..len - tail
    }

    /// How many blocks the pool holds (saturating: an IPv6 pool may hold more than 2^64).
    pub fn block_count(&self) -> u128 {
        let bits = self
            .spec
            .block_size
            .saturating_sub(self.spec.cidr.prefix_len());
        if bits >= 127 {
            u128::MAX
        } else {
            1u128 << bits
        }
    }

    /// The `index`th block of the pool.
    pub fn block_at(&self, index: u128) -> Option<IpNet> {
        if index >= self.block_count() {
            return None;
        }
        let base = to_u128(self.spec.cidr.network());
        let shift = u32::from(self.block_host_bits());
        let offset = index.checked_shl(shift)?;
        let addr = from_u128(self.family(), base.checked_add(offset)?)?;
        IpNet::new(addr, self.spec.block_size).ok()
    }

    /// The block CIDR of the pool that contains `ip`, if the pool does.
    pub fn block_containing(&self, ip: IpAddr) -> Option<IpNet> {
        if !self.spec.cidr.contains(&ip) {
            return None;
        }
        IpNet::new(ip, self.spec.block_size).ok().map(|n| n.trunc())
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.spec.cidr.contains(&ip)
    }
}

/// One address of a block in use, and by whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Allocation {
    pub ordinal: u32,
    /// `<network>.<containerID>.<ifname>` for CNI attachments; any other string for addresses
    /// a component holds for itself (a VTEP, a tunnel).
    pub handle: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod: String,
    /// The node the address is used on (differs from the block's node when borrowed).
    #[serde(default)]
    pub node: String,
    /// When it was allocated (RFC 3339).
    #[serde(default)]
    pub time: String,
    /// The CNI attachment: network name, container ID and interface. The leak pass needs them to
    /// find the runtime's cached result; CNI GC needs them to match valid attachments (a handle
    /// alone cannot be split, since network names and container IDs may contain dots).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub network: String,
    #[serde(
        rename = "containerID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub container_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ifname: String,
}

/// Who asks for an address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owner {
    pub handle: String,
    pub namespace: String,
    pub pod: String,
    pub network: String,
    pub container_id: String,
    pub ifname: String,
}

impl Owner {
    /// An owner known only by its handle (not a CNI attachment: never garbage collected).
    pub fn handle(handle: impl Into<String>) -> Owner {
        Owner {
            handle: handle.into(),
            ..Default::default()
        }
    }

    pub fn allocation(&self, ordinal: u32, node: &str, time: String) -> Allocation {
        Allocation {
            ordinal,
            handle: self.handle.clone(),
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
            node: node.to_string(),
            time,
            network: self.network.clone(),
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }
}

/// The handle of a CNI attachment.
pub fn attachment_handle(network: &str, container_id: &str, ifname: &str) -> String {
    format!("{network}.{container_id}.{ifname}")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockSpec {
    pub cidr: IpNet,
    pub pool: String,
    /// The node the block is affine to; empty: none (its node is gone, or it was released with
    /// addresses still in use).
    #[serde(default)]
    pub node: String,
    /// Sorted by ordinal.
    #[serde(default)]
    pub allocations: Vec<Allocation>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub name: String,
    pub spec: BlockSpec,
}

impl Block {
    /// A new, empty block of `pool` affine to `node`.
    pub fn new(cidr: IpNet, pool: &str, node: &str) -> Block {
        Block {
            name: block_name(&cidr),
            spec: BlockSpec {
                cidr,
                pool: pool.to_string(),
                node: node.to_string(),
                allocations: Vec::new(),
            },
        }
    }

    pub fn family(&self) -> Family {
        Family::of_net(&self.spec.cidr)
    }

    /// Addresses in the block.
    pub fn len(&self) -> u64 {
        let bits = self
            .family()
            .bits()
            .saturating_sub(self.spec.cidr.prefix_len());
        1u64 << bits.min(63)
    }

    pub fn is_empty(&self) -> bool {
        self.spec.allocations.is_empty()
    }

    /// The address of an ordinal.
    pub fn addr(&self, ordinal: u32) -> Option<IpAddr> {
        if u64::from(ordinal) >= self.len() {
            return None;
        }
        let base = to_u128(self.spec.cidr.network());
        from_u128(self.family(), base.checked_add(u128::from(ordinal))?)
    }

    /// The address of an ordinal with the block's prefix length (`10.244.1.5/24`).
    pub fn net(&self, ordinal: u32) -> Option<IpNet> {
        IpNet::new(self.addr(ordinal)?, self.spec.cidr.prefix_len()).ok()
    }

    /// The ordinal of an address inside the block.
    pub fn ordinal_of(&self, ip: IpAddr) -> Option<u32> {
        if !self.spec.cidr.contains(&ip) {
            return None;
        }
        let off = to_u128(ip).checked_sub(to_u128(self.spec.cidr.network()))?;
        u32::try_from(off).ok()
    }

    pub fn allocation(&self, ordinal: u32) -> Option<&Allocation> {
        self.spec
            .allocations
            .binary_search_by_key(&ordinal, |a| a.ordinal)
            .ok()
            .map(|i| &self.spec.allocations[i])
    }

    /// Records an allocation; false if the ordinal is taken.
    pub fn insert(&mut self, a: Allocation) -> bool {
        match self
            .spec
            .allocations
            .binary_search_by_key(&a.ordinal, |x| x.ordinal)
        {
            Ok(_) => false,
            Err(i) => {
                self.spec.allocations.insert(i, a);
                true
            }
        }
    }

    /// Removes and returns every allocation of `handle`.
    pub fn remove_handle(&mut self, handle: &str) -> Vec<Allocation> {
        let (gone, kept) = std::mem::take(&mut self.spec.allocations)
            .into_iter()
            .partition(|a| a.handle == handle);
        self.spec.allocations = kept;
        gone
    }

    /// Removes the allocation of `ordinal` if `handle` still holds it.
    pub fn remove_exact(&mut self, ordinal: u32, handle: &str) -> Option<Allocation> {
        let i = self
            .spec
            .allocations
            .binary_search_by_key(&ordinal, |a| a.ordinal)
            .ok()?;
        if self.spec.allocations[i].handle != handle {
            return None;
        }
        Some(self.spec.allocations.remove(i))
    }

    pub fn holds_handle(&self, handle: &str) -> bool {
        self.spec.allocations.iter().any(|a| a.handle == handle)
    }

    /// The lowest free ordinal of `usable`.
    pub fn first_free(&self, usable: std::ops::Range<u64>) -> Option<u32> {
        let mut want = usable.start;
        for a in &self.spec.allocations {
            let o = u64::from(a.ordinal);
            if o < want {
                continue;
            }
            if o > want {
                break;
            }
            want += 1;
        }
        if want < usable.end {
            u32::try_from(want).ok()
        } else {
            None
        }
    }

    /// Allocations of usable ordinals still free.
    pub fn free_count(&self, usable: std::ops::Range<u64>) -> u64 {
        let used = self
            .spec
            .allocations
            .iter()
            .filter(|a| usable.contains(&u64::from(a.ordinal)))
            .count() as u64;
        (usable.end - usable.start).saturating_sub(used)
    }
}

/// The object name of a block, from its CIDR: `10.244.1.0/24` → `10-244-1-0-24`,
/// `fd00::100/120` → `fd00-0-0-0-0-0-0-100-120` (IPv6 spelt out in full so the name is a valid
/// Kubernetes name and never starts with a dash).
pub fn block_name(cidr: &IpNet) -> String {
    match cidr.network() {
        IpAddr::V4(a) => {
            let o = a.octets();
            format!("{}-{}-{}-{}-{}", o[0], o[1], o[2], o[3], cidr.prefix_len())
        }
        IpAddr::V6(a) => {
            let s: Vec<String> = a.segments().iter().map(|g| format!("{g:x}")).collect();
            format!("{}-{}", s.join("-"), cidr.prefix_len())
        }
    }
}

pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

pub fn from_u128(family: Family, v: u128) -> Option<IpAddr> {
    match family {
        Family::V4 => u32::try_from(v).ok().map(|x| IpAddr::V4(Ipv4Addr::from(x))),
        Family::V6 => Some(IpAddr::V6(Ipv6Addr::from(v))),
    }
}

/// Now, as allocations record it.
pub fn now() -> String {
    jiff::Timestamp::now().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(cidr: &str, block: u8) -> Pool {
        Pool {
            name: "p".into(),
            spec: PoolSpec {
                cidr: cidr.parse().unwrap(),
                block_size: block,
                node_selector: String::new(),
                disabled: false,
                allow_borrowing: false,
                reserve_head: 2,
                reserve_tail: 1,
                gateway: true,
            },
        }
    }

    #[test]
    fn blocks_are_carved_in_order() {
        let p = pool("10.244.0.0/16", 24);
        assert_eq!(p.block_count(), 256);
        assert_eq!(p.block_at(0).unwrap().to_string(), "10.244.0.0/24");
        assert_eq!(p.block_at(255).unwrap().to_string(), "10.244.255.0/24");
        assert_eq!(p.block_at(256), None);
        assert_eq!(
            p.block_containing("10.244.7.9".parse().unwrap())
                .unwrap()
                .to_string(),
            "10.244.7.0/24"
        );
        assert_eq!(p.usable(), 2..255);
    }

    #[test]
    fn block_names_are_kubernetes_names() {
        assert_eq!(
            block_name(&"10.244.1.0/24".parse().unwrap()),
            "10-244-1-0-24"
        );
        assert_eq!(
            block_name(&"fd00::100/120".parse().unwrap()),
            "fd00-0-0-0-0-0-0-100-120"
        );
    }

    #[test]
    fn ordinals_map_to_addresses_and_back() {
        let b = Block::new("fd00::100/120".parse().unwrap(), "p", "n");
        let ip = b.addr(5).unwrap();
        assert_eq!(ip.to_string(), "fd00::105");
        assert_eq!(b.ordinal_of(ip), Some(5));
        assert_eq!(b.net(5).unwrap().to_string(), "fd00::105/120");
        assert_eq!(b.addr(256), None);
        assert_eq!(b.ordinal_of("fd00::1".parse().unwrap()), None);
    }

    #[test]
    fn first_free_skips_reserved_and_used() {
        let mut b = Block::new("10.0.0.0/29".parse().unwrap(), "p", "n");
        assert_eq!(b.first_free(2..7), Some(2));
        for o in [2, 3, 5] {
            assert!(b.insert(Owner::handle(format!("h{o}")).allocation(o, "n", now())));
        }
        assert!(!b.insert(Owner::handle("dup").allocation(3, "n", now())));
        assert_eq!(b.first_free(2..7), Some(4));
        assert_eq!(b.free_count(2..7), 2);
        b.insert(Owner::handle("h4").allocation(4, "n", now()));
        b.insert(Owner::handle("h6").allocation(6, "n", now()));
        assert_eq!(b.first_free(2..7), None);
        assert_eq!(b.remove_handle("h4").len(), 1);
        assert_eq!(b.first_free(2..7), Some(4));
        assert!(b.remove_exact(5, "other").is_none());
        assert!(b.remove_exact(5, "h5").is_some());
    }
}
