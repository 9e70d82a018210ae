//! Committing a program: sets first (new sets whole, changed sets by member), then ONE
//! `iptables-restore --noflush` that re-declares only the chains that changed and deletes the
//! chains no longer wanted, then the sets nobody references any more.
//!
//! Restart: the first commit re-declares every chain under the same deterministic names in
//! that one restore, so the kernel swaps the old rules for the new ones atomically; sets are
//! replaced by swap. Nothing is flushed first: no open window, no closed window. Leftovers of
//! ours (chains under our prefixes, sets `trellis-p-|n-|q-<hash>`) that the new program does not want
//! are removed; nothing else is touched.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::{Duration, Instant};

use crate::compile::Plan;
use crate::names;
use crate::xt::{Member, Program, SetDef, XRule};

/// What can go wrong talking to the kernel.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DataplaneError(pub String);

pub type Result<T> = std::result::Result<T, DataplaneError>;

/// A chain as read back from the kernel: its rules' text and packet counters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChainRead {
    pub name: String,
    pub rules: Vec<(String, u64)>,
}

/// The kernel operations policyd needs (the real one is [`crate::kernel::Kernel`]; tests use
/// a fake).
pub trait Dataplane: Send + Sync {
    /// One `iptables-restore --noflush` of the filter table: declare (flush and fill) these
    /// chains, then delete those.
    fn restore(
        &self,
        declare: Vec<(String, Vec<String>)>,
        delete: Vec<String>,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Makes these sets exist with exactly these members (created or swapped in whole).
    fn sync_sets(&self, sets: Vec<(String, SetDef)>) -> impl Future<Output = Result<()>> + Send;
    /// Adds and removes single members.
    fn apply_sets(
        &self,
        add: Vec<(String, Member)>,
        del: Vec<(String, Member)>,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Sets whose name starts with `prefix`.
    fn list_sets(&self, prefix: &str) -> impl Future<Output = Result<Vec<String>>> + Send;
    fn destroy_sets(&self, names: Vec<String>) -> impl Future<Output = Result<()>> + Send;
    /// Our chains (filter table) with their rules and counters.
    fn read_chains(&self) -> impl Future<Output = Result<Vec<ChainRead>>> + Send;
    /// The rules of a built-in chain, in order (`-A CHAIN …` text).
    fn builtin_rules(&self, chain: &str) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// Inserts `spec` at position 1 of a built-in chain.
    fn insert_first(&self, chain: &str, spec: &[&str]) -> impl Future<Output = Result<()>> + Send;
    /// Deletes rule number `n` (1-based) of a built-in chain.
    fn delete_at(&self, chain: &str, n: usize) -> impl Future<Output = Result<()>> + Send;
    /// A number that moves whenever anything in the iptables ruleset may have changed, by
    /// anyone (the nf_tables generation); None where there is no such number (legacy iptables)
    /// or it could not be read — then every verifier pass reads everything back.
    fn generation(&self) -> impl Future<Output = Option<u32>> + Send;
}

/// The three jumps from built-in chains into ours.
pub const JUMPS: [(&str, &str); 3] = [
    ("FORWARD", names::FWD),
    ("INPUT", names::IN),
    ("OUTPUT", names::OUT),
];

pub fn jump_spec(target: &str) -> [&str; 6] {
    [
        "-m",
        "comment",
        "--comment",
        names::JUMP_COMMENT,
        "-j",
        target,
    ]
}

/// What one commit did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitStats {
    pub chains_written: usize,
    pub chains_deleted: usize,
    pub sets_synced: usize,
    pub members_added: usize,
    pub members_removed: usize,
    pub sets_destroyed: usize,
    pub jumps_fixed: usize,
    pub timings: Timings,
}

/// Where one commit's time went (the daemon adds its own phases: queueing, compile, publish).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    /// Comparing with what is committed (and, after a restart, reading the kernel's chains).
    pub diff: Duration,
    /// `ipset restore`: new sets and member changes.
    pub ipset: Duration,
    /// The one `iptables-restore --noflush`.
    pub iptables: Duration,
    /// Jumps (first commit), unreferenced sets destroyed, the committed copy kept.
    pub cleanup: Duration,
}

/// Commits programs one after the other, remembering what is committed.
#[derive(Debug, Default)]
pub struct Syncer {
    /// What the kernel holds (None before the first commit of this process).
    pub committed: Option<Program>,
}

fn render(rules: &[XRule]) -> Vec<String> {
    rules.iter().map(XRule::render).collect()
}

/// Chain order for a restore: the per-pod chains before the dispatch chains that jump to
/// them (iptables-restore needs a chain declared before a rule references it only within the
/// declarations, which all come first; the order keeps the input readable).
fn declare_order(names: &mut [String]) {
    names.sort_by_key(|n| (n.starts_with("TRELLIS-POL-"), n.clone()));
}

impl Syncer {
    /// Brings the kernel to `new`.
    pub async fn commit<D: Dataplane>(&mut self, dp: &D, new: &Program) -> Result<CommitStats> {
        let mut stats = CommitStats::default();
        let mut clock = Instant::now();
        let mut lap = || {
            let now = Instant::now();
            let d = now - clock;
            clock = now;
            d
        };
        // Sets: whole for new ones (and all on the first commit), by member otherwise.
        let mut whole = Vec::new();
        let (mut add, mut del) = (Vec::new(), Vec::new());
        for (name, set) in &new.sets {
            match self.committed.as_ref().and_then(|c| c.sets.get(name)) {
                Some(old) if old.kind == set.kind => {
                    for m in set.members.difference(&old.members) {
                        add.push((name.clone(), *m));
                    }
                    for m in old.members.difference(&set.members) {
                        del.push((name.clone(), *m));
                    }
                }
                _ => whole.push((name.clone(), set.clone())),
            }
        }
        stats.sets_synced = whole.len();
        stats.members_added = add.len();
        stats.members_removed = del.len();
        stats.timings.diff += lap();
        if !whole.is_empty() {
            dp.sync_sets(whole).await?;
        }
        if !add.is_empty() || !del.is_empty() {
            dp.apply_sets(add, del).await?;
        }
        stats.timings.ipset += lap();
        // Chains: the changed ones declared, the unwanted ones deleted, in one restore. After a
        // restart the kernel's chains are compared by their rules' tags: a chain left exactly
        // as this run would write it is not rewritten (its counters survive).
        let kernel: Option<BTreeMap<String, Vec<String>>> = match &self.committed {
            Some(_) => None,
            None => Some(
                dp.read_chains()
                    .await?
                    .into_iter()
                    .filter(|c| names::is_owned_chain(&c.name))
                    .map(|c| {
                        let tags = c
                            .rules
                            .iter()
                            .map(|(spec, _)| crate::xt::tag_of(spec).unwrap_or("").to_string())
                            .collect();
                        (c.name, tags)
                    })
                    .collect(),
            ),
        };
        let mut declare: Vec<String> = new
            .chains
            .iter()
            .filter(|(name, rules)| match (&self.committed, &kernel) {
                (Some(c), _) => c.chains.get(*name).is_none_or(|old| old != *rules),
                (None, Some(k)) => {
                    let want: Vec<String> = rules.iter().map(XRule::tag).collect();
                    k.get(*name) != Some(&want)
                }
                (None, None) => true,
            })
            .map(|(n, _)| n.clone())
            .collect();
        declare_order(&mut declare);
        let existing: BTreeSet<String> = match (&self.committed, &kernel) {
            (Some(c), _) => c.chains.keys().cloned().collect(),
            (None, Some(k)) => k.keys().cloned().collect(),
            (None, None) => BTreeSet::new(),
        };
        let delete: Vec<String> = existing
            .into_iter()
            .filter(|n| !new.chains.contains_key(n))
            .collect();
        stats.chains_written = declare.len();
        stats.chains_deleted = delete.len();
        if !declare.is_empty() || !delete.is_empty() {
            let declare = declare
                .into_iter()
                .map(|n| {
                    let rules = render(&new.chains[&n]);
                    (n, rules)
                })
                .collect();
            stats.timings.diff += lap();
            dp.restore(declare, delete).await?;
            stats.timings.iptables += lap();
        } else {
            stats.timings.diff += lap();
        }
        if self.committed.is_none() {
            stats.jumps_fixed = ensure_jumps(dp).await?;
        }
        // Sets no rule references any more.
        let old_sets: BTreeSet<String> = match &self.committed {
            Some(c) => c.sets.keys().cloned().collect(),
            None => dp
                .list_sets(names::SET_PREFIX)
                .await?
                .into_iter()
                .filter(|n| names::is_owned_set(n))
                .collect(),
        };
        let gone: Vec<String> = old_sets
            .into_iter()
            .filter(|n| !new.sets.contains_key(n))
            .collect();
        stats.sets_destroyed = gone.len();
        if !gone.is_empty() {
            dp.destroy_sets(gone).await?;
        }
        self.committed = Some(new.clone());
        stats.timings.cleanup += lap();
        Ok(stats)
    }
}

impl Syncer {
    /// Commits a pod event's change set to the kernel holding `self.committed` (from which
    /// it was planned): new sets whole, member changes in one `ipset restore`, the changed
    /// chains (if any) in one `iptables-restore --noflush`, then the sets no longer needed.
    pub async fn apply<D: Dataplane>(&mut self, dp: &D, plan: &Plan) -> Result<CommitStats> {
        if self.committed.is_none() {
            return Err(DataplaneError(
                "a change set needs a committed program to apply to".into(),
            ));
        }
        let mut stats = CommitStats {
            chains_written: plan.chains.len(),
            chains_deleted: plan.delete.len(),
            sets_synced: plan.new_sets.len(),
            members_added: plan.add.len(),
            members_removed: plan.del.len(),
            sets_destroyed: plan.destroy.len(),
            ..CommitStats::default()
        };
        let mut clock = Instant::now();
        if !plan.new_sets.is_empty() {
            let whole = plan
                .new_sets
                .iter()
                .map(|(n, (def, _))| (n.clone(), def.clone()))
                .collect();
            dp.sync_sets(whole).await?;
        }
        if !plan.add.is_empty() || !plan.del.is_empty() {
            dp.apply_sets(plan.add.clone(), plan.del.clone()).await?;
        }
        stats.timings.ipset = clock.elapsed();
        clock = Instant::now();
        if !plan.chains.is_empty() || !plan.delete.is_empty() {
            let mut names: Vec<String> = plan.chains.keys().cloned().collect();
            declare_order(&mut names);
            let declare = names
                .into_iter()
                .map(|n| {
                    let rules = render(&plan.chains[&n]);
                    (n, rules)
                })
                .collect();
            dp.restore(declare, plan.delete.clone()).await?;
        }
        stats.timings.iptables = clock.elapsed();
        clock = Instant::now();
        if !plan.destroy.is_empty() {
            dp.destroy_sets(plan.destroy.clone()).await?;
        }
        if let Some(c) = self.committed.as_mut() {
            plan.apply_to(c);
        }
        stats.timings.cleanup = clock.elapsed();
        Ok(stats)
    }
}

/// Puts each jump into its built-in chain exactly once, ahead of the overlay agent's
/// `-j TRELLIS-FWD` (a new copy goes in at the top before the old one is removed, so the jump
/// is never missing). Returns how many it had to fix.
pub async fn ensure_jumps<D: Dataplane>(dp: &D) -> Result<usize> {
    let mut fixed = 0;
    for (builtin, ours) in JUMPS {
        let rules = dp.builtin_rules(builtin).await?;
        let jumps_to = |r: &String, chain: &str| {
            r.split_whitespace()
                .collect::<Vec<_>>()
                .windows(2)
                .any(|w| (w[0] == "-j" || w[0] == "-g") && w[1] == chain)
        };
        let mine: Vec<usize> = rules
            .iter()
            .enumerate()
            .filter(|(_, r)| jumps_to(r, ours))
            .map(|(i, _)| i)
            .collect();
        let overlay = rules.iter().position(|r| jumps_to(r, names::OVERLAY_FWD));
        let good = mine.len() == 1 && overlay.is_none_or(|o| mine[0] < o);
        if good {
            continue;
        }
        fixed += 1;
        dp.insert_first(builtin, &jump_spec(ours)).await?;
        // Old copies moved down by one; delete from the bottom so numbers stay right.
        for i in mine.iter().rev() {
            dp.delete_at(builtin, i + 2).await?;
        }
    }
    Ok(fixed)
}

#[cfg(test)]
pub(crate) mod fake {
    //! A dataplane in memory: records what was asked, holds chains and sets.

    use std::sync::Mutex;

    use super::*;

    #[derive(Debug, Default)]
    pub struct Fake {
        pub chains: Mutex<BTreeMap<String, Vec<String>>>,
        pub builtins: Mutex<BTreeMap<String, Vec<String>>>,
        pub sets: Mutex<BTreeMap<String, SetDef>>,
        pub restores: Mutex<Vec<(Vec<String>, Vec<String>)>>,
        /// Like nf_tables' generation: None (no such number) until a test sets it; then every
        /// change made through the fake moves it, and a test tampering by hand moves it too.
        pub generation: Mutex<Option<u32>>,
        /// How many times the chains were read back.
        pub reads: Mutex<usize>,
    }

    impl Fake {
        /// Moves the generation on, as any nf_tables commit does.
        pub fn bump(&self) {
            if let Some(g) = self
                .generation
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_mut()
            {
                *g = g.wrapping_add(1);
            }
        }
    }

    impl Dataplane for Fake {
        async fn restore(
            &self,
            declare: Vec<(String, Vec<String>)>,
            delete: Vec<String>,
        ) -> Result<()> {
            let mut chains = self.chains.lock().unwrap_or_else(|p| p.into_inner());
            self.restores
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((
                    declare.iter().map(|d| d.0.clone()).collect(),
                    delete.clone(),
                ));
            for (n, r) in declare {
                chains.insert(n, r);
            }
            for n in delete {
                chains.remove(&n);
            }
            self.bump();
            Ok(())
        }
        async fn sync_sets(&self, sets: Vec<(String, SetDef)>) -> Result<()> {
            let mut s = self.sets.lock().unwrap_or_else(|p| p.into_inner());
            for (n, d) in sets {
                s.insert(n, d);
            }
            Ok(())
        }
        async fn apply_sets(
            &self,
            add: Vec<(String, Member)>,
            del: Vec<(String, Member)>,
        ) -> Result<()> {
            let mut s = self.sets.lock().unwrap_or_else(|p| p.into_inner());
            for (n, m) in add {
                s.get_mut(&n)
                    .ok_or_else(|| DataplaneError(n.clone()))?
                    .members
                    .insert(m);
            }
            for (n, m) in del {
                s.get_mut(&n)
                    .ok_or_else(|| DataplaneError(n.clone()))?
                    .members
                    .remove(&m);
            }
            Ok(())
        }
        async fn list_sets(&self, prefix: &str) -> Result<Vec<String>> {
            Ok(self
                .sets
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .filter(|k| k.starts_with(prefix))
                .cloned()
                .collect())
        }
        async fn destroy_sets(&self, names: Vec<String>) -> Result<()> {
            let mut s = self.sets.lock().unwrap_or_else(|p| p.into_inner());
            for n in names {
                s.remove(&n);
            }
            Ok(())
        }
        async fn read_chains(&self) -> Result<Vec<ChainRead>> {
            *self.reads.lock().unwrap_or_else(|p| p.into_inner()) += 1;
            Ok(self
                .chains
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(n, r)| ChainRead {
                    name: n.clone(),
                    rules: r.iter().map(|r| (r.clone(), 0)).collect(),
                })
                .collect())
        }
        async fn builtin_rules(&self, chain: &str) -> Result<Vec<String>> {
            Ok(self
                .builtins
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(chain)
                .cloned()
                .unwrap_or_default())
        }
        async fn insert_first(&self, chain: &str, spec: &[&str]) -> Result<()> {
            self.builtins
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(chain.to_string())
                .or_default()
                .insert(0, format!("-A {chain} {}", spec.join(" ")));
            self.bump();
            Ok(())
        }
        async fn delete_at(&self, chain: &str, n: usize) -> Result<()> {
            let mut b = self.builtins.lock().unwrap_or_else(|p| p.into_inner());
            let rules = b.entry(chain.to_string()).or_default();
            if n == 0 || n > rules.len() {
                return Err(DataplaneError(format!("no rule {n} in {chain}")));
            }
            rules.remove(n - 1);
            self.bump();
            Ok(())
        }
        async fn generation(&self) -> Option<u32> {
            *self.generation.lock().unwrap_or_else(|p| p.into_inner())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::Fake;
    use super::*;
    use crate::xt::{Match, SetKind, Target};

    fn prog(pods: &[&str], members: &[&str]) -> Program {
        let mut p = Program::default();
        let mut ing = Vec::new();
        for pod in pods {
            let chain = names::ingress_chain(pod);
            p.chains.insert(
                chain.clone(),
                vec![XRule::new(vec![], Target::Return, "Default||allow")],
            );
            ing.push(XRule::new(
                vec![Match::Dst("10.0.0.1".parse().unwrap())],
                Target::Goto(chain),
                "d",
            ));
        }
        p.chains.insert(names::INGRESS.into(), ing);
        p.sets.insert(
            names::set('p', "s"),
            SetDef {
                kind: SetKind::HashIp,
                members: members
                    .iter()
                    .map(|m| Member::Ip(m.parse().unwrap()))
                    .collect(),
            },
        );
        p
    }

    #[tokio::test]
    async fn only_changed_chains_are_restored_and_churn_is_set_members() {
        let dp = Fake::default();
        // A chain of ours left by a previous run and one of someone else's.
        dp.chains
            .lock()
            .unwrap()
            .insert("TRELLIS-PI-stale".into(), vec![]);
        dp.chains
            .lock()
            .unwrap()
            .insert("TRELLIS-FWD".into(), vec![]);
        for name in ["trellis-p-00000000000000aa", "trellis-svc-not-ours"] {
            dp.sets.lock().unwrap().insert(
                name.into(),
                SetDef {
                    kind: SetKind::HashIp,
                    members: Default::default(),
                },
            );
        }
        let mut s = Syncer::default();
        let st = s.commit(&dp, &prog(&["x/a"], &["10.0.0.1"])).await.unwrap();
        assert_eq!(
            (st.chains_written, st.chains_deleted, st.sets_destroyed),
            (2, 1, 1)
        );
        assert!(
            dp.sets.lock().unwrap().contains_key("trellis-svc-not-ours"),
            "not ours: left alone"
        );
        assert!(
            dp.chains.lock().unwrap().contains_key("TRELLIS-FWD"),
            "not ours: left alone"
        );
        assert_eq!(st.jumps_fixed, 3);
        // Churn: one more member, no restore at all.
        let st = s
            .commit(&dp, &prog(&["x/a"], &["10.0.0.1", "10.0.0.2"]))
            .await
            .unwrap();
        assert_eq!((st.chains_written, st.members_added), (0, 1));
        assert_eq!(dp.restores.lock().unwrap().len(), 1);
        // A new local pod: its chain and the dispatch chain, in one restore.
        let st = s
            .commit(&dp, &prog(&["x/a", "x/b"], &["10.0.0.1"]))
            .await
            .unwrap();
        assert_eq!((st.chains_written, st.members_removed), (2, 1));
        let st = s.commit(&dp, &prog(&["x/b"], &["10.0.0.1"])).await.unwrap();
        assert_eq!((st.chains_written, st.chains_deleted), (1, 1));
        assert_eq!(dp.restores.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn a_restart_over_the_same_state_rewrites_no_chain() {
        let dp = Fake::default();
        let p = prog(&["x/a", "x/b"], &["10.0.0.1"]);
        Syncer::default().commit(&dp, &p).await.unwrap();
        let st = Syncer::default().commit(&dp, &p).await.unwrap();
        assert_eq!((st.chains_written, st.chains_deleted), (0, 0));
        let mut changed = p.clone();
        changed
            .chains
            .get_mut(&names::ingress_chain("x/a"))
            .unwrap()
            .clear();
        let st = Syncer::default().commit(&dp, &changed).await.unwrap();
        assert_eq!(st.chains_written, 1);
    }

    #[tokio::test]
    async fn our_jump_goes_ahead_of_the_overlay_accept_and_exists_once() {
        let dp = Fake::default();
        dp.builtins.lock().unwrap().insert(
            "FORWARD".into(),
            vec![
                "-A FORWARD -m comment --comment \"trellis overlay forwarding\" -j TRELLIS-FWD"
                    .into(),
                "-A FORWARD -m comment --comment trellis-policyd -j TRELLIS-POL-FWD".into(),
            ],
        );
        assert_eq!(ensure_jumps(&dp).await.unwrap(), 3);
        let fwd = dp.builtins.lock().unwrap()["FORWARD"].clone();
        assert_eq!(fwd.len(), 2, "{fwd:?}");
        assert!(
            fwd[0].ends_with("-j TRELLIS-POL-FWD") && fwd[1].ends_with("-j TRELLIS-FWD"),
            "{fwd:?}"
        );
        assert_eq!(ensure_jumps(&dp).await.unwrap(), 0);
    }
}
