//! The verifier: other components (or people) flush chains, delete rules and destroy sets. Every
//! verify period it reads our chains back and compares their rules' tags with what we wrote,
//! checks our jumps are there and in front of the overlay's accept, and that our sets exist;
//! whatever differs is put back (one restore for all the damaged chains) and counted.
//!
//! Reading ([`observe`]: one `iptables-save`, one `ipset list`) is apart from repairing
//! ([`repair`]) so the daemon can read off its loop: a read that takes a while under load must
//! not hold up the next policy change (it did: the loop ran the whole pass inline).

use std::collections::BTreeMap;

use crate::sync::{Dataplane, Result, ensure_jumps, jumps_in_place};
use crate::xt::{Program, XRule, tag_of};

/// What one pass found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Repairs {
    pub chains: Vec<String>,
    pub jumps: usize,
    pub sets: Vec<String>,
}

impl Repairs {
    pub fn total(&self) -> usize {
        self.chains.len() + self.jumps + self.sets.len()
    }
}

/// What the kernel holds of ours, as one pass reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Our chains: their rules' tags, in order.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Our sets that exist.
    pub sets: Vec<String>,
    /// Whether every jump into our chains is in place.
    pub jumps_ok: bool,
}

/// Reads what the kernel holds of ours (nothing is changed).
pub async fn observe<D: Dataplane>(dp: &D) -> Result<Observed> {
    let (read, builtins) = dp.read_with_jumps().await?;
    let chains = read
        .into_iter()
        .map(|c| {
            let tags = c
                .rules
                .iter()
                .map(|(spec, _)| tag_of(spec).unwrap_or("").to_string())
                .collect();
            (c.name, tags)
        })
        .collect();
    Ok(Observed {
        chains,
        sets: dp.list_sets(crate::names::SET_PREFIX).await?,
        jumps_ok: jumps_in_place(&builtins),
    })
}

/// Puts back what `seen` (read while `committed` was what the kernel should hold) lacks.
pub async fn repair<D: Dataplane>(dp: &D, committed: &Program, seen: &Observed) -> Result<Repairs> {
    let mut repairs = Repairs::default();
    for (name, rules) in &committed.chains {
        let want: Vec<String> = rules.iter().map(XRule::tag).collect();
        if seen.chains.get(name) != Some(&want) {
            repairs.chains.push(name.clone());
        }
    }
    // Sets first: a re-declared chain may reference a set that was destroyed.
    let missing: Vec<_> = committed
        .sets
        .iter()
        .filter(|(n, _)| !seen.sets.contains(n))
        .map(|(n, s)| (n.clone(), s.clone()))
        .collect();
    repairs.sets = missing.iter().map(|(n, _)| n.clone()).collect();
    if !missing.is_empty() {
        dp.sync_sets(missing).await?;
    }
    if !repairs.chains.is_empty() {
        let declare = repairs
            .chains
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    committed.chains[n].iter().map(XRule::render).collect(),
                )
            })
            .collect();
        dp.restore(declare, Vec::new()).await?;
    }
    if !seen.jumps_ok {
        // Read again right before fixing: positions are what the fix works with.
        repairs.jumps = ensure_jumps(dp).await?;
    }
    Ok(repairs)
}

/// One whole pass: [`observe`], then [`repair`].
pub async fn verify<D: Dataplane>(dp: &D, committed: &Program) -> Result<Repairs> {
    let seen = observe(dp).await?;
    repair(dp, committed, &seen).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::Syncer;
    use crate::sync::fake::Fake;
    use crate::xt::{Match, Member, SetDef, SetKind, Target};

    #[tokio::test]
    async fn a_flushed_chain_a_lost_jump_and_a_destroyed_set_come_back() {
        let mut p = Program::default();
        p.chains.insert(
            "TRELLIS-PI-1".into(),
            vec![XRule::new(
                vec![Match::SrcSet("trellis-p-1".into())],
                Target::Return,
                "x",
            )],
        );
        p.sets.insert(
            "trellis-p-1".into(),
            SetDef {
                kind: SetKind::HashIp,
                members: [Member::Ip("10.0.0.1".parse().unwrap())].into(),
            },
        );
        let dp = Fake::default();
        Syncer::default().commit(&dp, &p).await.unwrap();
        assert_eq!(verify(&dp, &p).await.unwrap().total(), 0);
        dp.chains
            .lock()
            .unwrap()
            .insert("TRELLIS-PI-1".into(), vec![]);
        dp.builtins
            .lock()
            .unwrap()
            .get_mut("FORWARD")
            .unwrap()
            .clear();
        dp.sets.lock().unwrap().clear();
        let r = verify(&dp, &p).await.unwrap();
        assert_eq!((r.chains.len(), r.jumps, r.sets.len()), (1, 1, 1));
        assert_eq!(verify(&dp, &p).await.unwrap().total(), 0);
    }
}
