//! The allocation rules, without I/O: which pools may serve a node, which ordinal of which block
//! an allocation takes, which block a node claims next, when it may borrow, and which pools are
//! valid. The engine feeds it what it knows of the datastore and applies what it decides.
//!
//! Order of preference for a node that needs an address of one family:
//! 1. a free ordinal in a block affine to the node (pools in name order, blocks in address order);
//! 2. a free ordinal in a block with no affinity (its node is gone), which the node adopts;
//! 3. a new block, claimed for the node (the lowest unclaimed block of the pool);
//! 4. only in pools that allow it, a free ordinal in another node's block (borrowing).
//!
//! Strict affinity (no borrowing) is the default: a pool's blocks then each live on one node, so
//! routing needs one route per block.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use trellis_api::selector::LabelSelector;

use crate::error::{Error, Result};
use crate::model::{Block, Family, MAX_BLOCK_HOST_BITS, Pool, block_name};

/// Refuses a pool that could not work, or that would overlap another: nothing is written.
pub fn validate_pool(pool: &Pool, others: &[Pool]) -> Result<()> {
    let name = pool.name.as_str();
    let s = &pool.spec;
    if !valid_name(name) {
        return Err(Error::invalid_pool(
            name,
            "a pool name is lower-case letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters",
        ));
    }
    if s.cidr != s.cidr.trunc() {
        return Err(Error::invalid_pool(
            name,
            format!(
                "cidr {} has host bits set (did you mean {}?)",
                s.cidr,
                s.cidr.trunc()
            ),
        ));
    }
    let bits = pool.family().bits();
    if s.block_size > bits {
        return Err(Error::invalid_pool(
            name,
            format!(
                "block size /{} is not a {} prefix",
                s.block_size,
                pool.family()
            ),
        ));
    }
    if s.block_size < s.cidr.prefix_len() {
        return Err(Error::invalid_pool(
            name,
            format!(
                "block size /{} is larger than the pool {}",
                s.block_size, s.cidr
            ),
        ));
    }
    if pool.block_host_bits() > MAX_BLOCK_HOST_BITS {
        return Err(Error::invalid_pool(
            name,
            format!(
                "block size /{} gives blocks of 2^{} addresses; the largest block is /{}",
                s.block_size,
                pool.block_host_bits(),
                bits - MAX_BLOCK_HOST_BITS
            ),
        ));
    }
    let len = pool.block_len();
    let reserved = u64::from(s.reserve_head) + u64::from(s.reserve_tail);
    if reserved >= len {
        return Err(Error::invalid_pool(
            name,
            format!(
                "pool {} is too small for its blocks: a /{} block has {len} addresses and {reserved} are reserved (reserveHead {} + reserveTail {}), leaving none to allocate",
                s.cidr, s.block_size, s.reserve_head, s.reserve_tail
            ),
        ));
    }
    if s.gateway && s.reserve_head < 2 {
        return Err(Error::invalid_pool(
            name,
            "gateway: true reports block network + 1 as the gateway, so reserveHead must be at least 2 (the network address and the gateway)",
        ));
    }
    if let Err(e) = LabelSelector::parse(&s.node_selector) {
        return Err(Error::invalid_pool(
            name,
            format!("nodeSelector {:?}: {e}", s.node_selector),
        ));
    }
    for other in others.iter().filter(|o| o.name != pool.name) {
        let a = &s.cidr;
        let b = &other.spec.cidr;
        if a.contains(&b.network()) || b.contains(&a.network()) {
            return Err(Error::PoolOverlap {
                name: name.to_string(),
                cidr: a.to_string(),
                other: other.name.clone(),
                other_cidr: b.to_string(),
            });
        }
    }
    Ok(())
}

/// A DNS-1123 subdomain, what Kubernetes accepts as an object name.
pub fn valid_name(name: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !name.is_empty()
        && name.len() <= 253
        && name.starts_with(alnum)
        && name.ends_with(alnum)
        && name.chars().all(|c| alnum(c) || c == '-' || c == '.')
}

/// Whether the pool's node selector selects a node with these labels (an unparsable selector
/// selects nothing; validation refuses it anyway).
pub fn pool_selects(pool: &Pool, labels: &BTreeMap<String, String>) -> bool {
    LabelSelector::parse(&pool.spec.node_selector).is_ok_and(|s| s.matches(labels))
}

/// The pools that may serve a new allocation of `family` on a node, in name order.
pub fn eligible_pools<'a>(
    pools: &'a [Pool],
    family: Family,
    labels: &BTreeMap<String, String>,
    only: Option<&str>,
) -> Vec<&'a Pool> {
    let mut v: Vec<&Pool> = pools
        .iter()
        .filter(|p| p.family() == family && !p.spec.disabled)
        .filter(|p| only.is_none_or(|n| p.name == n))
        .filter(|p| pool_selects(p, labels))
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// Where an allocation goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// A free ordinal in a block affine to the node.
    Affine { block: String, ordinal: u32 },
    /// A free ordinal in a block affine to no node; the node takes the block.
    Adopt { block: String, ordinal: u32 },
    /// A new block for the node.
    Claim { pool: String, cidr: IpNet },
    /// A free ordinal in another node's block (the pool allows borrowing).
    Borrow { block: String, ordinal: u32 },
    /// Nothing left in any eligible pool.
    Exhausted,
}

/// Decides where the next allocation of a node goes. `blocks` is what the caller knows: for a
/// claim or a borrow to be right, every block of the eligible pools (the engine first asks with
/// its own blocks only, and lists the datastore when that is not enough). `excluded` are block
/// names that must not be claimed (a claim of them just failed).
pub fn choose(
    node: &str,
    pools: &[&Pool],
    blocks: &BTreeMap<String, Block>,
    excluded: &BTreeSet<String>,
) -> Choice {
    fn in_pool<'a>(
        blocks: &'a BTreeMap<String, Block>,
        p: &'a Pool,
    ) -> impl Iterator<Item = &'a Block> + 'a {
        blocks
            .values()
            .filter(move |b| b.spec.pool == p.name && b.family() == p.family())
    }
    for p in pools {
        for b in in_pool(blocks, p).filter(|b| b.spec.node == node) {
            if let Some(ordinal) = b.first_free(p.usable()) {
                return Choice::Affine {
                    block: b.name.clone(),
                    ordinal,
                };
            }
        }
    }
    for p in pools {
        for b in in_pool(blocks, p).filter(|b| b.spec.node.is_empty()) {
            if let Some(ordinal) = b.first_free(p.usable()) {
                return Choice::Adopt {
                    block: b.name.clone(),
                    ordinal,
                };
            }
        }
    }
    for p in pools {
        if let Some(cidr) = next_block(p, blocks, excluded) {
            return Choice::Claim {
                pool: p.name.clone(),
                cidr,
            };
        }
    }
    for p in pools.iter().filter(|p| p.spec.allow_borrowing) {
        for b in in_pool(blocks, p).filter(|b| b.spec.node != node && !b.spec.node.is_empty()) {
            if let Some(ordinal) = b.first_free(p.usable()) {
                return Choice::Borrow {
                    block: b.name.clone(),
                    ordinal,
                };
            }
        }
    }
    Choice::Exhausted
}

/// The lowest block of the pool that no known block occupies and that is not excluded. Blocks
/// are carved at the pool's block size only, so "occupied" is "a block of that name exists";
/// at most `known + excluded` candidates are taken, so an IPv6 pool of 2^60 blocks costs nothing.
pub fn next_block(
    pool: &Pool,
    blocks: &BTreeMap<String, Block>,
    excluded: &BTreeSet<String>,
) -> Option<IpNet> {
    let used = blocks.len() as u128 + excluded.len() as u128;
    let limit = pool.block_count().min(used.saturating_add(1));
    (0..limit).filter_map(|i| pool.block_at(i)).find(|cidr| {
        let name = block_name(cidr);
        !blocks.contains_key(&name) && !excluded.contains(&name)
    })
}

/// Where a requested address lives: its pool, its block's CIDR and its ordinal there. Refuses
/// an address outside every pool, in a disabled pool, or on a reserved ordinal.
pub fn locate(ip: IpAddr, pools: &[Pool]) -> Result<(&Pool, IpNet, u32)> {
    let pool = pools
        .iter()
        .find(|p| p.contains(ip))
        .ok_or(Error::OutsidePools(ip))?;
    if pool.spec.disabled {
        return Err(Error::Reserved {
            addr: ip,
            why: format!("pool {} is disabled", pool.name),
        });
    }
    let cidr = pool.block_containing(ip).ok_or(Error::OutsidePools(ip))?;
    let block = Block::new(cidr, &pool.name, "");
    let ordinal = block.ordinal_of(ip).ok_or(Error::OutsidePools(ip))?;
    if !pool.usable().contains(&u64::from(ordinal)) {
        return Err(Error::Reserved {
            addr: ip,
            why: format!(
                "pool {} reserves the first {} and the last {} addresses of each /{} block",
                pool.name, pool.spec.reserve_head, pool.spec.reserve_tail, pool.spec.block_size
            ),
        });
    }
    Ok((pool, cidr, ordinal))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Owner, PoolSpec, now};
    use proptest::prelude::*;

    fn pool(name: &str, cidr: &str, block: u8, borrow: bool) -> Pool {
        Pool {
            name: name.into(),
            spec: PoolSpec {
                cidr: cidr.parse().unwrap(),
                block_size: block,
                node_selector: String::new(),
                disabled: false,
                allow_borrowing: borrow,
                reserve_head: 0,
                reserve_tail: 0,
                gateway: false,
            },
        }
    }

    #[test]
    fn bad_pools_are_refused_with_a_reason() {
        let ok = pool("a", "10.244.0.0/16", 24, false);
        assert!(validate_pool(&ok, &[]).is_ok());
        let cases = [
            (pool("b", "10.244.1.0/16", 24, false), "host bits"),
            (pool("b", "10.0.0.0/24", 16, false), "larger than the pool"),
            (
                pool("b", "10.0.0.0/8", 8, false),
                "the largest block is /16",
            ),
            (pool("b", "10.0.0.0/24", 33, false), "not a ipv4 prefix"),
            (pool("B", "10.0.0.0/24", 26, false), "pool name"),
        ];
        for (p, why) in cases {
            let e = validate_pool(&p, &[]).unwrap_err().to_string();
            assert!(e.contains(why), "{e} should say {why}");
        }
        let mut small = pool("s", "10.9.0.0/31", 31, false);
        small.spec.reserve_head = 1;
        small.spec.reserve_tail = 1;
        let e = validate_pool(&small, &[]).unwrap_err().to_string();
        assert!(e.contains("too small"), "{e}");
        let mut gw = pool("g", "10.9.0.0/24", 26, false);
        gw.spec.gateway = true;
        assert!(validate_pool(&gw, &[]).is_err());
        let mut sel = pool("sel", "10.9.0.0/24", 26, false);
        sel.spec.node_selector = "a in (".into();
        assert!(validate_pool(&sel, &[]).is_err());
    }

    #[test]
    fn overlapping_pools_are_refused() {
        let a = pool("a", "10.244.0.0/16", 24, false);
        let b = pool("b", "10.244.128.0/17", 24, false);
        let e = validate_pool(&b, std::slice::from_ref(&a)).unwrap_err();
        assert!(matches!(e, Error::PoolOverlap { .. }), "{e}");
        let c = pool("c", "10.245.0.0/16", 24, false);
        assert!(validate_pool(&c, &[a.clone(), b]).is_ok());
        // Updating a pool does not overlap with itself.
        assert!(validate_pool(&a, std::slice::from_ref(&a)).is_ok());
    }

    #[test]
    fn selectors_and_families_pick_pools() {
        let mut v4 = pool("v4", "10.1.0.0/16", 24, false);
        v4.spec.node_selector = "zone=a".into();
        let v6 = pool("v6", "fd00::/64", 120, false);
        let mut off = pool("off", "10.2.0.0/16", 24, false);
        off.spec.disabled = true;
        let pools = [v4, v6, off];
        let a = BTreeMap::from([("zone".to_string(), "a".to_string())]);
        let none = BTreeMap::new();
        assert_eq!(eligible_pools(&pools, Family::V4, &a, None).len(), 1);
        assert!(eligible_pools(&pools, Family::V4, &none, None).is_empty());
        assert_eq!(
            eligible_pools(&pools, Family::V6, &none, None)[0].name,
            "v6"
        );
        assert!(eligible_pools(&pools, Family::V6, &none, Some("v4")).is_empty());
    }

    #[test]
    fn requested_addresses_are_located_or_refused() {
        let mut p = pool("p", "10.1.0.0/16", 24, false);
        p.spec.reserve_head = 2;
        p.spec.reserve_tail = 1;
        let pools = [p];
        let (_, cidr, ord) = locate("10.1.3.7".parse().unwrap(), &pools).unwrap();
        assert_eq!((cidr.to_string().as_str(), ord), ("10.1.3.0/24", 7));
        assert!(matches!(
            locate("10.2.0.5".parse().unwrap(), &pools),
            Err(Error::OutsidePools(_))
        ));
        for reserved in ["10.1.3.0", "10.1.3.1", "10.1.3.255"] {
            assert!(matches!(
                locate(reserved.parse().unwrap(), &pools),
                Err(Error::Reserved { .. })
            ));
        }
    }

    /// A datastore of blocks and the allocation loop of the engine, without I/O, for the
    /// property tests: `alloc` applies `choose` exactly as the engine does.
    #[derive(Default)]
    struct Sim {
        pools: Vec<Pool>,
        blocks: BTreeMap<String, Block>,
        next: u64,
    }

    impl Sim {
        fn alloc(&mut self, node: &str) -> Option<(String, IpAddr)> {
            self.next += 1;
            let handle = format!("h{}", self.next);
            let pools: Vec<&Pool> = self.pools.iter().collect();
            let owner = Owner::handle(handle.clone());
            let (name, ordinal) = match choose(node, &pools, &self.blocks, &BTreeSet::new()) {
                Choice::Affine { block, ordinal } | Choice::Borrow { block, ordinal } => {
                    (block, ordinal)
                }
                Choice::Adopt { block, ordinal } => {
                    self.blocks.get_mut(&block)?.spec.node = node.into();
                    (block, ordinal)
                }
                Choice::Claim { pool, cidr } => {
                    let b = Block::new(cidr, &pool, node);
                    let p = self.pools.iter().find(|p| p.name == pool)?;
                    let ordinal = b.first_free(p.usable())?;
                    let name = b.name.clone();
                    self.blocks.insert(name.clone(), b);
                    (name, ordinal)
                }
                Choice::Exhausted => return None,
            };
            let b = self.blocks.get_mut(&name)?;
            assert!(
                b.insert(owner.allocation(ordinal, node, now())),
                "ordinal taken"
            );
            Some((handle, b.addr(ordinal)?))
        }

        fn release(&mut self, handle: &str) -> usize {
            self.blocks
                .values_mut()
                .map(|b| b.remove_handle(handle).len())
                .sum()
        }

        fn all(&self) -> Vec<(IpAddr, String, String)> {
            self.blocks
                .values()
                .flat_map(|b| {
                    b.spec.allocations.iter().map(move |a| {
                        (b.addr(a.ordinal).unwrap(), a.handle.clone(), a.node.clone())
                    })
                })
                .collect()
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc(usize),
        Release(usize),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec(
            prop_oneof![
                3 => (0usize..3).prop_map(Op::Alloc),
                1 => (0usize..1000).prop_map(Op::Release),
            ],
            1..300,
        )
    }

    const NODES: [&str; 3] = ["n0", "n1", "n2"];

    proptest! {
        /// Whatever the order of allocations and releases on three nodes, no address is ever
        /// held twice, and every allocation lies inside a block of its pool.
        #[test]
        fn no_address_is_allocated_twice(ops in ops(), borrow in any::<bool>()) {
            let mut sim = Sim { pools: vec![pool("p", "10.5.0.0/24", 28, borrow)], ..Default::default() };
            let mut live: Vec<String> = Vec::new();
            for op in ops {
                match op {
                    Op::Alloc(n) => {
                        if let Some((h, ip)) = sim.alloc(NODES[n]) {
                            prop_assert!(sim.pools[0].contains(ip));
                            live.push(h);
                        }
                    }
                    Op::Release(i) if !live.is_empty() => {
                        let h = live.swap_remove(i % live.len());
                        prop_assert_eq!(sim.release(&h), 1);
                    }
                    Op::Release(_) => {}
                }
                let all = sim.all();
                let unique: BTreeSet<IpAddr> = all.iter().map(|(ip, _, _)| *ip).collect();
                prop_assert_eq!(unique.len(), all.len(), "an address is held twice");
                prop_assert_eq!(all.len(), live.len());
            }
            // Blocks never overlap.
            let cidrs: Vec<IpNet> = sim.blocks.values().map(|b| b.spec.cidr).collect();
            for (i, a) in cidrs.iter().enumerate() {
                for b in &cidrs[i + 1..] {
                    prop_assert!(!a.contains(&b.network()) && !b.contains(&a.network()));
                }
            }
        }

        /// A full pool gives back exactly what was released, and then is full again.
        #[test]
        fn release_then_reuse(k in 1usize..16) {
            let mut sim = Sim { pools: vec![pool("p", "10.6.0.0/28", 28, false)], ..Default::default() };
            let mut got = Vec::new();
            while let Some(a) = sim.alloc("n0") {
                got.push(a);
            }
            prop_assert_eq!(got.len(), 16);
            let freed: BTreeSet<IpAddr> = got.iter().take(k).map(|(h, ip)| {
                sim.release(h);
                *ip
            }).collect();
            let mut again = BTreeSet::new();
            while let Some((_, ip)) = sim.alloc("n0") {
                again.insert(ip);
            }
            prop_assert_eq!(again, freed);
        }

        /// A node fills its block, then claims the next one; the pool runs out after the last
        /// block, and with strict affinity a node never takes an address from another's block.
        #[test]
        fn blocks_fill_then_claim_and_strict_affinity_holds(first in 1usize..48, borrow in any::<bool>()) {
            // Four /28 blocks of 16.
            let mut sim = Sim { pools: vec![pool("p", "10.7.0.0/26", 28, borrow)], ..Default::default() };
            for _ in 0..first {
                prop_assert!(sim.alloc("n0").is_some());
            }
            let n0_blocks = sim.blocks.values().filter(|b| b.spec.node == "n0").count();
            prop_assert_eq!(n0_blocks, first.div_ceil(16));
            // n1 takes what is left: the remaining whole blocks, then (borrowing only) the free
            // ordinals of n0's last block.
            let mut n1 = 0;
            while sim.alloc("n1").is_some() {
                n1 += 1;
            }
            let whole = (4 - n0_blocks) * 16;
            let spare = n0_blocks * 16 - first;
            prop_assert_eq!(n1, if borrow { whole + spare } else { whole });
            for (ip, _, node) in sim.all() {
                let block = sim.blocks.values().find(|b| b.spec.cidr.contains(&ip)).unwrap();
                if !borrow {
                    prop_assert_eq!(&block.spec.node, &node, "strict affinity broken");
                }
            }
        }
    }

    #[test]
    fn borrowing_comes_only_after_claiming() {
        let p = pool("p", "10.8.0.0/27", 28, true);
        let mut blocks = BTreeMap::new();
        let mut b0 = Block::new("10.8.0.0/28".parse().unwrap(), "p", "n0");
        b0.insert(Owner::handle("x").allocation(0, "n0", now()));
        blocks.insert(b0.name.clone(), b0);
        let pools = [&p];
        // A free block is left: n1 claims it rather than borrow.
        assert!(matches!(
            choose("n1", &pools, &blocks, &BTreeSet::new()),
            Choice::Claim { .. }
        ));
        let b1 = Block::new("10.8.0.16/28".parse().unwrap(), "p", "n2");
        blocks.insert(b1.name.clone(), b1);
        assert_eq!(
            choose("n1", &pools, &blocks, &BTreeSet::new()),
            Choice::Borrow {
                block: "10-8-0-0-28".into(),
                ordinal: 1
            }
        );
        // An orphaned block is adopted before any claim.
        blocks.get_mut("10-8-0-16-28").unwrap().spec.node = String::new();
        assert!(matches!(
            choose("n1", &pools, &blocks, &BTreeSet::new()),
            Choice::Adopt { .. }
        ));
    }
}
