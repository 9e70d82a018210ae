//! `trellis ipam check`: the inconsistencies of a datastore. None of them can arise from the
//! engine (each write is a compare-and-swap of a whole block); they come from hand edits, other
//! writers, bugs, or nodes that went away.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::model::{Block, Family, Pool, block_name};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// One ordinal recorded twice in a block (an address both free-and-taken twice over).
    OrdinalTwice { block: String, ordinal: u32 },
    /// An allocation whose ordinal lies outside its block.
    OutsideBlock { block: String, ordinal: u32 },
    /// An allocation of an ordinal its pool reserves.
    ReservedAllocated { block: String, ordinal: u32 },
    /// An allocation with no handle: nobody could ever release it.
    NoHandle { block: String, ordinal: u32 },
    /// A handle holding more than one address of one family.
    HandleTwice {
        handle: String,
        family: Family,
        places: Vec<String>,
    },
    /// Two blocks covering common addresses.
    Overlap { a: String, b: String },
    /// A block of a pool that does not exist.
    NoPool { block: String, pool: String },
    /// A block that is not one of its pool's blocks (outside it, or of another size).
    NotInPool {
        block: String,
        cidr: String,
        pool: String,
    },
    /// A block whose object name does not match its CIDR.
    Misnamed { block: String, expected: String },
    /// A block affine to a node that no longer exists.
    NodeGone { block: String, node: String },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::OrdinalTwice { block, ordinal } => {
                write!(f, "block {block}: ordinal {ordinal} is allocated twice")
            }
            Finding::OutsideBlock { block, ordinal } => {
                write!(f, "block {block}: ordinal {ordinal} is outside the block")
            }
            Finding::ReservedAllocated { block, ordinal } => {
                write!(f, "block {block}: reserved ordinal {ordinal} is allocated")
            }
            Finding::NoHandle { block, ordinal } => {
                write!(
                    f,
                    "block {block}: ordinal {ordinal} is allocated to no handle"
                )
            }
            Finding::HandleTwice {
                handle,
                family,
                places,
            } => write!(
                f,
                "handle {handle:?} holds {} {family} addresses: {}",
                places.len(),
                places.join(", ")
            ),
            Finding::Overlap { a, b } => write!(f, "blocks {a} and {b} overlap"),
            Finding::NoPool { block, pool } => {
                write!(f, "block {block}: its pool {pool:?} does not exist")
            }
            Finding::NotInPool { block, cidr, pool } => {
                write!(f, "block {block}: {cidr} is not a block of pool {pool}")
            }
            Finding::Misnamed { block, expected } => {
                write!(f, "block {block}: its name should be {expected}")
            }
            Finding::NodeGone { block, node } => {
                write!(f, "block {block}: claimed by node {node:?}, which is gone")
            }
        }
    }
}

/// Every inconsistency of `blocks` against `pools`; `nodes` (when the backend knows nodes) lets
/// it find blocks of nodes that are gone.
pub fn check(pools: &[Pool], blocks: &[Block], nodes: Option<&BTreeSet<String>>) -> Vec<Finding> {
    let mut out = Vec::new();
    let pools: BTreeMap<&str, &Pool> = pools.iter().map(|p| (p.name.as_str(), p)).collect();
    let mut by_handle: BTreeMap<(String, Family), Vec<String>> = BTreeMap::new();
    for b in blocks {
        let expected = block_name(&b.spec.cidr);
        if b.name != expected {
            out.push(Finding::Misnamed {
                block: b.name.clone(),
                expected,
            });
        }
        let pool = pools.get(b.spec.pool.as_str());
        match pool {
            None => out.push(Finding::NoPool {
                block: b.name.clone(),
                pool: b.spec.pool.clone(),
            }),
            Some(p) => {
                let fits = p.spec.cidr.contains(&b.spec.cidr.network())
                    && b.spec.cidr.prefix_len() == p.spec.block_size
                    && b.spec.cidr == b.spec.cidr.trunc();
                if !fits {
                    out.push(Finding::NotInPool {
                        block: b.name.clone(),
                        cidr: b.spec.cidr.to_string(),
                        pool: p.name.clone(),
                    });
                }
            }
        }
        if let Some(nodes) = nodes
            && !b.spec.node.is_empty()
            && !nodes.contains(&b.spec.node)
        {
            out.push(Finding::NodeGone {
                block: b.name.clone(),
                node: b.spec.node.clone(),
            });
        }
        let mut seen = BTreeSet::new();
        for a in &b.spec.allocations {
            if !seen.insert(a.ordinal) {
                out.push(Finding::OrdinalTwice {
                    block: b.name.clone(),
                    ordinal: a.ordinal,
                });
            }
            if u64::from(a.ordinal) >= b.len() {
                out.push(Finding::OutsideBlock {
                    block: b.name.clone(),
                    ordinal: a.ordinal,
                });
            } else if let Some(p) = pool
                && !p.usable().contains(&u64::from(a.ordinal))
            {
                out.push(Finding::ReservedAllocated {
                    block: b.name.clone(),
                    ordinal: a.ordinal,
                });
            }
            if a.handle.is_empty() {
                out.push(Finding::NoHandle {
                    block: b.name.clone(),
                    ordinal: a.ordinal,
                });
            } else {
                let place = b
                    .addr(a.ordinal)
                    .map(|ip| format!("{ip} in {}", b.name))
                    .unwrap_or_else(|| format!("ordinal {} of {}", a.ordinal, b.name));
                by_handle
                    .entry((a.handle.clone(), b.family()))
                    .or_default()
                    .push(place);
            }
        }
    }
    for ((handle, family), places) in by_handle {
        if places.len() > 1 {
            out.push(Finding::HandleTwice {
                handle,
                family,
                places,
            });
        }
    }
    let mut sorted: Vec<&Block> = blocks.iter().collect();
    sorted.sort_by_key(|b| (b.family(), crate::model::to_u128(b.spec.cidr.network())));
    for w in sorted.windows(2) {
        let (a, b) = (w[0], w[1]);
        if a.family() == b.family() && a.spec.cidr.contains(&b.spec.cidr.network()) {
            out.push(Finding::Overlap {
                a: a.name.clone(),
                b: b.name.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Owner, PoolSpec, now};

    fn pool() -> Pool {
        Pool {
            name: "p".into(),
            spec: PoolSpec {
                cidr: "10.1.0.0/16".parse().unwrap(),
                block_size: 24,
                node_selector: String::new(),
                disabled: false,
                allow_borrowing: false,
                reserve_head: 1,
                reserve_tail: 1,
                gateway: false,
            },
        }
    }

    #[test]
    fn a_clean_datastore_has_no_findings() {
        let mut b = Block::new("10.1.0.0/24".parse().unwrap(), "p", "n1");
        b.insert(Owner::handle("a").allocation(1, "n1", now()));
        let mut c = Block::new("fd00::/120".parse().unwrap(), "p6", "n1");
        c.insert(Owner::handle("a").allocation(1, "n1", now()));
        let mut p6 = pool();
        p6.name = "p6".into();
        p6.spec.cidr = "fd00::/64".parse().unwrap();
        p6.spec.block_size = 120;
        let nodes = BTreeSet::from(["n1".to_string()]);
        assert_eq!(check(&[pool(), p6], &[b, c], Some(&nodes)), vec![]);
    }

    #[test]
    fn every_kind_of_damage_is_found() {
        let mut b = Block::new("10.1.0.0/24".parse().unwrap(), "p", "gone");
        let a = |o: u32, h: &str| Owner::handle(h).allocation(o, "gone", now());
        // Hand-made damage: bypass insert's checks.
        b.spec.allocations = vec![a(0, "r"), a(5, "x"), a(5, "y"), a(9, ""), a(300, "z")];
        let mut twice = Block::new("10.1.1.0/24".parse().unwrap(), "p", "n1");
        twice.insert(a(7, "x"));
        let mut overlapping = Block::new("10.1.0.0/25".parse().unwrap(), "p", "n1");
        overlapping.name = "odd".into();
        let orphan = Block::new("10.9.0.0/24".parse().unwrap(), "nopool", "n1");
        let nodes = BTreeSet::from(["n1".to_string()]);
        let found = check(&[pool()], &[b, twice, overlapping, orphan], Some(&nodes));
        let text: Vec<String> = found.iter().map(|f| f.to_string()).collect();
        for want in [
            "reserved ordinal 0",
            "ordinal 5 is allocated twice",
            "ordinal 9 is allocated to no handle",
            "ordinal 300 is outside",
            "holds 2 ipv4 addresses",
            "overlap",
            "does not exist",
            "is not a block of pool p",
            "should be 10-1-0-0-25",
            "which is gone",
        ] {
            assert!(
                text.iter().any(|t| t.contains(want)),
                "{want} not in {text:#?}"
            );
        }
    }
}
