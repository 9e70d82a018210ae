//! The verifier: other components (or people) flush chains, delete rules and destroy sets. Every
//! verify period it reads our chains back and compares their rules' tags with what we wrote,
//! checks our jumps are there and in front of the overlay's accept, and that our sets exist;
//! whatever differs is put back (one restore for all the damaged chains) and counted.

use std::collections::BTreeMap;

use crate::sync::{Dataplane, Result, ensure_jumps};
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

/// Checks the kernel against `committed` and repairs it.
pub async fn verify<D: Dataplane>(dp: &D, committed: &Program) -> Result<Repairs> {
    let read: BTreeMap<String, Vec<String>> = dp
        .read_chains()
        .await?
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
    let mut repairs = Repairs::default();
    for (name, rules) in &committed.chains {
        let want: Vec<String> = rules.iter().map(XRule::tag).collect();
        if read.get(name) != Some(&want) {
            repairs.chains.push(name.clone());
        }
    }
    // Sets first: a re-declared chain may reference a set that was destroyed.
    let present = dp.list_sets(crate::names::SET_PREFIX).await?;
    let missing: Vec<_> = committed
        .sets
        .iter()
        .filter(|(n, _)| !present.contains(n))
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
    repairs.jumps = ensure_jumps(dp).await?;
    Ok(repairs)
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
