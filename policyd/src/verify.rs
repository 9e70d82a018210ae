//! The verifier: other components (or people) flush chains, delete rules and destroy sets. Every
//! verify period it reads our chains back and compares their rules' tags with what we wrote,
//! checks our jumps are there and in front of the overlay's accept, and that our sets exist;
//! whatever differs is put back (one restore for all the damaged chains) and counted.
//!
//! Reading the rules back is five iptables processes and a dump of every rule we own, once a
//! second by default, on the daemon's loop: CPU taken from the node's traffic and a wait for
//! the next commit. On nf_tables the kernel numbers every committed transaction (its
//! generation), so [`Verifier`] reads back only when that number moved since a pass found
//! everything whole; sets, which live outside nf_tables, are still checked every pass.

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

/// What a verifier pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pass {
    /// nf_tables had committed nothing since the last whole pass: only the sets were checked.
    Unchanged(Repairs),
    /// Everything was read back.
    Checked(Repairs),
}

impl Pass {
    pub fn repairs(&self) -> &Repairs {
        match self {
            Pass::Unchanged(r) | Pass::Checked(r) => r,
        }
    }
}

/// The verifier's memory between passes: the generation at which the kernel was last found
/// whole.
#[derive(Debug, Default)]
pub struct Verifier {
    clean_at: Option<u32>,
}

impl Verifier {
    /// One pass: the sets always; the chains and jumps unless nf_tables' generation is the one
    /// read before the last pass that found them whole. The generation is read *before* the
    /// rules, so a change racing the read moves it and the next pass reads again.
    pub async fn pass<D: Dataplane>(&mut self, dp: &D, committed: &Program) -> Result<Pass> {
        let before = dp.generation().await;
        if before.is_some() && before == self.clean_at {
            return Ok(Pass::Unchanged(Repairs {
                sets: verify_sets(dp, committed).await?,
                ..Repairs::default()
            }));
        }
        self.clean_at = None;
        let repairs = verify(dp, committed).await?;
        if repairs.total() == 0 {
            self.clean_at = before;
        }
        Ok(Pass::Checked(repairs))
    }
}

/// Puts back the committed sets that are gone; their names.
async fn verify_sets<D: Dataplane>(dp: &D, committed: &Program) -> Result<Vec<String>> {
    let present = dp.list_sets(crate::names::SET_PREFIX).await?;
    let missing: Vec<_> = committed
        .sets
        .iter()
        .filter(|(n, _)| !present.contains(n))
        .map(|(n, s)| (n.clone(), s.clone()))
        .collect();
    let names = missing.iter().map(|(n, _)| n.clone()).collect();
    if !missing.is_empty() {
        dp.sync_sets(missing).await?;
    }
    Ok(names)
}

/// Checks the kernel against `committed` and repairs it, reading everything back.
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
    repairs.sets = verify_sets(dp, committed).await?;
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

    fn one_chain_program() -> Program {
        let mut p = Program::default();
        p.chains.insert(
            "TRELLIS-PI-1".into(),
            vec![XRule::new(vec![], Target::Return, "x")],
        );
        p
    }

    #[tokio::test]
    async fn an_unchanged_generation_reads_nothing_back_and_any_commit_makes_it_read() {
        let p = one_chain_program();
        let dp = Fake::default();
        *dp.generation.lock().unwrap() = Some(7);
        Syncer::default().commit(&dp, &p).await.unwrap();
        let mut v = Verifier::default();
        assert!(matches!(v.pass(&dp, &p).await.unwrap(), Pass::Checked(_)));
        let reads = *dp.reads.lock().unwrap();
        for _ in 0..3 {
            let pass = v.pass(&dp, &p).await.unwrap();
            assert_eq!(pass, Pass::Unchanged(Repairs::default()));
        }
        assert_eq!(
            *dp.reads.lock().unwrap(),
            reads,
            "read back with nothing committed"
        );
        // Someone flushes our chain: that is an nf_tables commit, the generation moves.
        dp.chains
            .lock()
            .unwrap()
            .insert("TRELLIS-PI-1".into(), vec![]);
        dp.bump();
        let pass = v.pass(&dp, &p).await.unwrap();
        assert!(matches!(&pass, Pass::Checked(r) if r.chains == ["TRELLIS-PI-1"]));
        // The repair was a commit too: one more whole pass, then quiet again.
        assert!(matches!(v.pass(&dp, &p).await.unwrap(), Pass::Checked(r) if r.total() == 0));
        assert!(matches!(v.pass(&dp, &p).await.unwrap(), Pass::Unchanged(_)));
    }

    #[tokio::test]
    async fn sets_are_checked_even_when_nothing_moved_and_no_generation_means_every_pass_reads() {
        let mut p = one_chain_program();
        p.sets.insert(
            "trellis-p-1".into(),
            SetDef {
                kind: SetKind::HashIp,
                members: [Member::Ip("10.0.0.1".parse().unwrap())].into(),
            },
        );
        let dp = Fake::default();
        *dp.generation.lock().unwrap() = Some(1);
        Syncer::default().commit(&dp, &p).await.unwrap();
        let mut v = Verifier::default();
        v.pass(&dp, &p).await.unwrap();
        dp.sets.lock().unwrap().clear();
        let pass = v.pass(&dp, &p).await.unwrap();
        assert!(matches!(&pass, Pass::Unchanged(r) if r.sets == ["trellis-p-1"]));
        assert!(dp.sets.lock().unwrap().contains_key("trellis-p-1"));

        // Legacy iptables (no generation): the negative control, every pass reads back.
        *dp.generation.lock().unwrap() = None;
        let before = *dp.reads.lock().unwrap();
        for _ in 0..3 {
            assert!(matches!(v.pass(&dp, &p).await.unwrap(), Pass::Checked(_)));
        }
        assert_eq!(*dp.reads.lock().unwrap(), before + 3);
    }
}
