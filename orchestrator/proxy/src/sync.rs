//! Writing the desired chains: one `iptables-restore --noflush` per sync carrying only the
//! chains whose rules changed, and deleting the chains no longer wanted in the same restore
//! (after the chains that jumped to them are rewritten). After a restart the proxy does not
//! know what the kernel holds: the old rules keep serving until the first sync writes the
//! whole new state and removes the leftovers in one atomic step per table.

use std::collections::BTreeSet;

use trellis_net::iptables::{Iptables, Table};

use crate::rules::{Chains, OWNED_PREFIXES, jumps};

/// What one sync wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub chains_written: usize,
    pub chains_deleted: usize,
    pub rules_written: usize,
    /// Rules in the desired state.
    pub rules_total: usize,
}

/// The restore input that turns `prev` (or, when the state is unknown, the `existing` chain
/// names read from the kernel) into `desired`.
pub fn plan(
    prev: Option<&Chains>,
    existing: &[(&'static str, String)],
    desired: &Chains,
) -> (Vec<Table>, SyncStats) {
    let mut nat = Table::new("nat");
    let mut filter = Table::new("filter");
    let mut stats = SyncStats {
        rules_total: desired.values().map(Vec::len).sum(),
        ..Default::default()
    };
    for ((t, chain), rules) in desired {
        if prev.and_then(|p| p.get(&(*t, chain.clone()))) == Some(rules) {
            continue;
        }
        let target = if *t == "nat" { &mut nat } else { &mut filter };
        target.chains.push((chain.clone(), rules.clone()));
        stats.chains_written += 1;
        stats.rules_written += rules.len();
    }
    let gone: BTreeSet<(&'static str, String)> = match prev {
        Some(p) => p
            .keys()
            .filter(|k| !desired.contains_key(*k))
            .cloned()
            .collect(),
        None => existing
            .iter()
            .filter(|k| !desired.contains_key(*k))
            .cloned()
            .collect(),
    };
    for (t, chain) in gone {
        let target = if t == "nat" { &mut nat } else { &mut filter };
        target.deletes.push(chain);
        stats.chains_deleted += 1;
    }
    let tables = [nat, filter]
        .into_iter()
        .filter(|t| !t.chains.is_empty() || !t.deletes.is_empty())
        .collect();
    (tables, stats)
}

/// Errors of a sync.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("iptables: {0}")]
    Iptables(#[from] trellis_net::Error),
}

/// Keeps what was last written, to send only changes.
pub struct Syncer {
    ipt: Iptables,
    applied: Option<Chains>,
}

impl Syncer {
    pub fn new(ipt: Iptables) -> Syncer {
        Syncer { ipt, applied: None }
    }

    /// Forgets what was written: the next sync rewrites every chain (the periodic resync, and
    /// the repair after a failed restore).
    pub fn invalidate(&mut self) {
        self.applied = None;
    }

    /// Our chains the kernel holds now.
    async fn existing(&self) -> Result<Vec<(&'static str, String)>, SyncError> {
        let mut out = Vec::new();
        for t in ["nat", "filter"] {
            for c in self.ipt.read_chains(t, "TRELLIS-").await? {
                if OWNED_PREFIXES.iter().any(|p| c.name.starts_with(p)) {
                    out.push((t, c.name));
                }
            }
        }
        Ok(out)
    }

    /// Brings the kernel to `desired`.
    pub async fn sync(&mut self, desired: Chains) -> Result<SyncStats, SyncError> {
        let full = self.applied.is_none();
        let existing = if full {
            self.existing().await?
        } else {
            Vec::new()
        };
        if full {
            // The jumps go in before the state is written: each -C/-I reads the whole table,
            // cheap while it is still empty on a first start. Chains they target that do not
            // exist yet are created empty first (an existing one is never flushed here, so a
            // restarted proxy's old rules keep serving until the restore below).
            let mut nat = Table::new("nat");
            let mut filter = Table::new("filter");
            for (table, _, rule) in jumps() {
                let Some(target) = rule.last() else { continue };
                let key = (table, target.to_string());
                if existing.contains(&key) {
                    continue;
                }
                let t = if table == "nat" {
                    &mut nat
                } else {
                    &mut filter
                };
                if !t.chains.iter().any(|(c, _)| c == target) {
                    t.chains.push((target.to_string(), Vec::new()));
                }
            }
            let create: Vec<Table> = [nat, filter]
                .into_iter()
                .filter(|t| !t.chains.is_empty())
                .collect();
            self.ipt.restore_all(&create).await?;
            for (table, chain, rule) in jumps() {
                self.ipt.ensure_rule(table, chain, &rule).await?;
            }
        }
        let (tables, stats) = plan(self.applied.as_ref(), &existing, &desired);
        if let Err(e) = self.ipt.restore_all(&tables).await {
            self.applied = None;
            return Err(e.into());
        }
        self.applied = Some(desired);
        Ok(stats)
    }

    /// Removes every rule and chain the proxy owns (`trellis proxy --cleanup`).
    pub async fn cleanup(&mut self) -> Result<(), SyncError> {
        for (table, chain, rule) in jumps() {
            while self.ipt.delete_rule(table, chain, &rule).await? {}
        }
        let existing = self.existing().await?;
        let mut nat = Table::new("nat");
        let mut filter = Table::new("filter");
        for (t, c) in existing {
            if t == "nat" {
                nat = nat.delete(&c);
            } else {
                filter = filter.delete(&c);
            }
        }
        self.ipt.restore_all(&[nat, filter]).await?;
        self.applied = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn chains(list: &[(&'static str, &str, &[&str])]) -> Chains {
        list.iter()
            .map(|(t, c, r)| {
                (
                    (*t, c.to_string()),
                    r.iter().map(|s| s.to_string()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn only_changed_chains_are_written_and_gone_ones_deleted() {
        let prev = chains(&[
            (
                "nat",
                "TRELLIS-SVC-SERVICES",
                &["-j TRELLIS-SVC-C-A", "-j TRELLIS-SVC-C-B"],
            ),
            ("nat", "TRELLIS-SVC-C-A", &["-j TRELLIS-SEP-A"]),
            ("nat", "TRELLIS-SVC-C-B", &["-j TRELLIS-SEP-B"]),
            ("filter", "TRELLIS-SVC-REJECT", &[]),
        ]);
        let next = chains(&[
            ("nat", "TRELLIS-SVC-SERVICES", &["-j TRELLIS-SVC-C-A"]),
            ("nat", "TRELLIS-SVC-C-A", &["-j TRELLIS-SEP-A"]),
            (
                "filter",
                "TRELLIS-SVC-REJECT",
                &["-d 10.96.0.9/32 -j REJECT"],
            ),
        ]);
        let (tables, stats) = plan(Some(&prev), &[], &next);
        assert_eq!(stats.chains_written, 2);
        assert_eq!(stats.chains_deleted, 1);
        let text: String = tables.iter().map(Table::render).collect();
        assert!(text.contains("-A TRELLIS-SVC-SERVICES -j TRELLIS-SVC-C-A\n"));
        assert!(!text.contains("-A TRELLIS-SVC-C-A "));
        assert!(text.contains("-X TRELLIS-SVC-C-B\n"));
        assert!(text.contains("-A TRELLIS-SVC-REJECT -d 10.96.0.9/32 -j REJECT\n"));
        // The delete comes after the rewrite of the chain that jumped to it.
        assert!(
            text.find("-X TRELLIS-SVC-C-B").unwrap()
                > text.find("-A TRELLIS-SVC-SERVICES").unwrap()
        );
    }

    #[test]
    fn nothing_changed_writes_nothing() {
        let prev = chains(&[("nat", "TRELLIS-SVC-SERVICES", &["-j X"])]);
        let (tables, stats) = plan(Some(&prev), &[], &prev.clone());
        assert!(tables.is_empty());
        assert_eq!(stats.chains_written, 0);
    }

    #[test]
    fn after_a_restart_everything_is_written_and_leftovers_removed() {
        let next = chains(&[
            ("nat", "TRELLIS-SVC-SERVICES", &["-j TRELLIS-SVC-C-A"]),
            ("nat", "TRELLIS-SVC-C-A", &[]),
        ]);
        let existing = vec![
            ("nat", "TRELLIS-SVC-SERVICES".to_string()),
            ("nat", "TRELLIS-SVC-C-OLD".to_string()),
        ];
        let (tables, stats) = plan(None, &existing, &next);
        assert_eq!(stats.chains_written, 2);
        assert_eq!(stats.chains_deleted, 1);
        assert_eq!(tables.len(), 1);
        assert_eq!(tables[0].deletes, vec!["TRELLIS-SVC-C-OLD".to_string()]);
    }
}
