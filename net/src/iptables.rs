//! iptables through `iptables-restore --noflush`: we write only our own chains (declaring a
//! chain in the input flushes and refills it atomically), and install the jumps into them from
//! built-in chains idempotently (`-C`, then `-I`). Whole tables are never saved and restored —
//! that clobbers other components' rules (kube-router's lesson).
//!
//! The backend (nf_tables or legacy) is the host's: the one whose tables already hold rules,
//! else the one `iptables` points at.

use std::fmt::Write as _;

use crate::error::{Error, Result};
use crate::exec;
use crate::netns::Netns;
pub use crate::restore_session::{Delivery, RestoreSession};

/// Which iptables implementation the host uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nft,
    Legacy,
}

/// IPv4 (`iptables`) or IPv6 (`ip6tables`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFamily {
    V4,
    V6,
}

/// One table's worth of our chains, rendered for `iptables-restore --noflush`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    pub name: String,
    /// Chain name → its rules (without `-A CHAIN`), in order.
    pub chains: Vec<(String, Vec<String>)>,
    /// Chains to remove (`-X`) after the rules are written; nothing may reference them then.
    pub deletes: Vec<String>,
}

impl Table {
    pub fn new(name: &str) -> Table {
        Table {
            name: name.to_string(),
            chains: Vec::new(),
            deletes: Vec::new(),
        }
    }

    /// Declares `chain` with `rules` (replacing whatever it held).
    pub fn chain(mut self, chain: &str, rules: Vec<String>) -> Table {
        self.chains.push((chain.to_string(), rules));
        self
    }

    /// Deletes `chain` (`-X`) after this table's rules are written. The chain is declared
    /// first, which flushes it (and creates it if it is already gone, so a repeated delete is
    /// harmless); the rules written in the same restore must no longer jump to it.
    pub fn delete(mut self, chain: &str) -> Table {
        self.deletes.push(chain.to_string());
        self
    }

    /// The `iptables-restore` input.
    pub fn render(&self) -> String {
        let mut out = format!("*{}\n", self.name);
        for chain in self.chains.iter().map(|(c, _)| c).chain(&self.deletes) {
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        for (chain, rules) in &self.chains {
            for r in rules {
                let _ = writeln!(out, "-A {chain} {r}");
            }
        }
        for chain in &self.deletes {
            let _ = writeln!(out, "-X {chain}");
        }
        out.push_str("COMMIT\n");
        out
    }
}

/// iptables in one network namespace.
#[derive(Debug, Clone)]
pub struct Iptables {
    pub backend: Backend,
    pub family: IpFamily,
    /// Where to run (None: the caller's namespace).
    pub(crate) netns: Option<std::path::PathBuf>,
}

impl Iptables {
    /// `iptables-nft`, `ip6tables-legacy-restore`, …: always the backend's own binary.
    pub(crate) fn tool(&self, suffix: &str) -> String {
        let base = match self.family {
            IpFamily::V4 => "iptables",
            IpFamily::V6 => "ip6tables",
        };
        let backend = match self.backend {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        };
        format!("{base}-{backend}{suffix}")
    }

    async fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
        exec::run(self.netns.as_deref(), program, args, stdin).await
    }

    /// The host's backend in `netns` (None: here): legacy if legacy tables hold rules and nft
    /// ones do not, else nft when `iptables` is the nf_tables variant.
    pub async fn detect(netns: Option<&Netns>, family: IpFamily) -> Result<Iptables> {
        let path = netns.map(|n| n.path().to_path_buf());
        let probe = |backend| Iptables {
            backend,
            family,
            netns: path.clone(),
        };
        let rules = |text: &str| text.lines().filter(|l| l.starts_with("-A")).count();
        let legacy = probe(Backend::Legacy);
        let nft = probe(Backend::Nft);
        let legacy_rules = legacy
            .run(&legacy.tool("-save"), &[], None)
            .await
            .map(|t| rules(&t))
            .unwrap_or(0);
        let nft_rules = nft
            .run(&nft.tool("-save"), &[], None)
            .await
            .map(|t| rules(&t))
            .unwrap_or(0);
        if legacy_rules > 0 && nft_rules == 0 {
            return Ok(legacy);
        }
        if nft_rules > 0 {
            return Ok(nft);
        }
        let default = match family {
            IpFamily::V4 => "iptables",
            IpFamily::V6 => "ip6tables",
        };
        let version = nft
            .run(default, &["--version"], None)
            .await
            .unwrap_or_default();
        Ok(if version.contains("legacy") {
            legacy
        } else {
            nft
        })
    }

    /// Applies our chains atomically; other chains are left alone.
    pub async fn restore(&self, table: &Table) -> Result<()> {
        self.restore_all(std::slice::from_ref(table)).await
    }

    /// Applies several tables in one `iptables-restore --noflush --wait`: each table's block
    /// commits atomically, and one process is started instead of one per table.
    pub async fn restore_all(&self, tables: &[Table]) -> Result<()> {
        if tables.is_empty() {
            return Ok(());
        }
        let input: String = tables.iter().map(Table::render).collect();
        self.run(
            &self.tool("-restore"),
            &["--noflush", "--wait"],
            Some(&input),
        )
        .await
        .map(|_| ())
    }

    /// Our chains in `table` whose names start with `prefix`, in the order `iptables-save`
    /// lists them, with each rule's packet and byte counters (`iptables-save -c`).
    pub async fn read_chains(&self, table: &str, prefix: &str) -> Result<Vec<ChainState>> {
        let text = self
            .run(&self.tool("-save"), &["-c", "-t", table], None)
            .await?;
        parse_save_counters(&text, prefix)
            .map_err(|line| Error::invalid("parse iptables-save -c", table, line))
    }

    /// The rules of `chain` in `table` in order, as `iptables -S` prints them but without the
    /// leading `-A CHAIN ` (so without counters): where our jump sits among others' rules.
    pub async fn list_rules(&self, table: &str, chain: &str) -> Result<Vec<String>> {
        let text = self
            .run(&self.tool(""), &["-w", "-t", table, "-S", chain], None)
            .await?;
        Ok(parse_list_rules(&text, chain))
    }

    /// `iptables-save -t <table>` (for checks and tests).
    pub async fn save(&self, table: &str) -> Result<String> {
        self.run(&self.tool("-save"), &["-t", table], None).await
    }

    /// Makes sure `chain` in `table` has the rule `spec` (e.g. `-j TRELLIS-FWD`): checked with
    /// `-C`, inserted at the top with `-I` only when missing.
    pub async fn ensure_rule(&self, table: &str, chain: &str, spec: &[&str]) -> Result<()> {
        self.ensure_rule_at(table, chain, 1, spec).await
    }

    /// Like [`Iptables::ensure_rule`], but a missing rule is inserted at the 1-based `position`
    /// (or appended, when the chain holds fewer rules than that). A present rule is left where
    /// it is: compare [`Iptables::list_rules`] to check its position.
    pub async fn ensure_rule_at(
        &self,
        table: &str,
        chain: &str,
        position: u32,
        spec: &[&str],
    ) -> Result<()> {
        let tool = self.tool("");
        let mut check = vec!["-w", "-t", table, "-C", chain];
        check.extend_from_slice(spec);
        if self.run(&tool, &check, None).await.is_ok() {
            return Ok(());
        }
        let position = position.max(1);
        let mut insert: Vec<String> = ["-w", "-t", table].iter().map(|s| s.to_string()).collect();
        if position == 1 {
            insert.extend(["-I".into(), chain.into(), "1".into()]);
        } else {
            let len = self.list_rules(table, chain).await?.len();
            if (position as usize) <= len + 1 {
                insert.extend(["-I".into(), chain.into(), position.to_string()]);
            } else {
                insert.extend(["-A".into(), chain.into()]);
            }
        }
        insert.extend(spec.iter().map(|s| s.to_string()));
        let args: Vec<&str> = insert.iter().map(String::as_str).collect();
        self.run(&tool, &args, None).await.map(|_| ())
    }

    /// Removes the rule if present (and then our chain, if asked), for uninstalling.
    pub async fn delete_rule(&self, table: &str, chain: &str, spec: &[&str]) -> Result<bool> {
        let tool = self.tool("");
        let mut del = vec!["-w", "-t", table, "-D", chain];
        del.extend_from_slice(spec);
        Ok(self.run(&tool, &del, None).await.is_ok())
    }
}

/// One of our chains as the kernel holds it, with counters: for the verifier and explain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainState {
    pub name: String,
    pub rules: Vec<RuleState>,
}

/// One rule of a [`ChainState`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleState {
    /// The rule as `iptables-save` prints it, without `-A CHAIN ` (the same text for the same
    /// rule every time, so it compares with what the verifier expects after one round trip).
    pub spec: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Parses `iptables-save -c -t TABLE` output: the chains starting with `prefix` (declared
/// with `:NAME POLICY [p:b]`, rules `[p:b] -A NAME spec`). Err carries the unreadable line.
fn parse_save_counters(text: &str, prefix: &str) -> Result<Vec<ChainState>, String> {
    let mut chains: Vec<ChainState> = Vec::new();
    for line in text.lines() {
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            if name.starts_with(prefix) && !chains.iter().any(|c| c.name == name) {
                chains.push(ChainState {
                    name: name.to_string(),
                    rules: Vec::new(),
                });
            }
            continue;
        }
        let Some(rest) = line.strip_prefix('[') else {
            continue;
        };
        let (counters, rule) = rest.split_once("] ").ok_or_else(|| line.to_string())?;
        let (packets, bytes) = counters.split_once(':').ok_or_else(|| line.to_string())?;
        let rule = rule.strip_prefix("-A ").ok_or_else(|| line.to_string())?;
        let (chain, spec) = rule.split_once(' ').unwrap_or((rule, ""));
        let Some(state) = chains.iter_mut().find(|c| c.name == chain) else {
            continue;
        };
        state.rules.push(RuleState {
            spec: spec.to_string(),
            packets: packets.parse().map_err(|_| line.to_string())?,
            bytes: bytes.parse().map_err(|_| line.to_string())?,
        });
    }
    Ok(chains)
}

/// `iptables -S CHAIN` output → the specs of its `-A CHAIN` lines (the `-P`/`-N` lines dropped).
fn parse_list_rules(text: &str, chain: &str) -> Vec<String> {
    let head = format!("-A {chain} ");
    text.lines()
        .filter_map(|l| l.strip_prefix(&head))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_render_as_restore_input() {
        let t = Table::new("nat").chain(
            "TRELLIS-POSTRTG",
            vec!["-s 10.244.0.0/16 -d 10.244.0.0/16 -j RETURN".into()],
        );
        assert_eq!(
            t.render(),
            "*nat\n:TRELLIS-POSTRTG - [0:0]\n-A TRELLIS-POSTRTG -s 10.244.0.0/16 -d 10.244.0.0/16 -j RETURN\nCOMMIT\n"
        );
    }

    #[test]
    fn tool_names_follow_backend_and_family() {
        let t = Iptables {
            backend: Backend::Legacy,
            family: IpFamily::V6,
            netns: None,
        };
        assert_eq!(t.tool("-restore"), "ip6tables-legacy-restore");
        assert_eq!(t.tool(""), "ip6tables-legacy");
        let t = Iptables {
            backend: Backend::Nft,
            family: IpFamily::V4,
            netns: None,
        };
        assert_eq!(t.tool("-save"), "iptables-nft-save");
        assert_eq!(t.tool(""), "iptables-nft");
    }

    #[test]
    fn deleted_chains_are_declared_flushed_and_removed_after_the_rules() {
        let t = Table::new("filter")
            .chain("TRELLIS-A", vec!["-j ACCEPT".into()])
            .delete("TRELLIS-OLD");
        assert_eq!(
            t.render(),
            "*filter\n:TRELLIS-A - [0:0]\n:TRELLIS-OLD - [0:0]\n-A TRELLIS-A -j ACCEPT\n-X TRELLIS-OLD\nCOMMIT\n"
        );
    }

    #[test]
    fn save_with_counters_is_read_back_per_chain() {
        let text = "# Generated by iptables-save v1.8.9 on Fri Dec  4 12:00:00 2026
*filter
:INPUT ACCEPT [10:1000]
:FORWARD ACCEPT [0:0]
:TRELLIS-EMPTY - [0:0]
:TRELLIS-IN - [0:0]
:OTHER - [0:0]
[5:420] -A FORWARD -j TRELLIS-IN
[3:252] -A TRELLIS-IN -s 10.0.0.1/32 -p tcp -m tcp --dport 80 -j ACCEPT
[0:0] -A TRELLIS-IN -j DROP
[7:7] -A OTHER -j ACCEPT
COMMIT
";
        let chains = parse_save_counters(text, "TRELLIS-").unwrap();
        assert_eq!(
            chains,
            vec![
                ChainState {
                    name: "TRELLIS-EMPTY".into(),
                    rules: vec![],
                },
                ChainState {
                    name: "TRELLIS-IN".into(),
                    rules: vec![
                        RuleState {
                            spec: "-s 10.0.0.1/32 -p tcp -m tcp --dport 80 -j ACCEPT".into(),
                            packets: 3,
                            bytes: 252,
                        },
                        RuleState {
                            spec: "-j DROP".into(),
                            packets: 0,
                            bytes: 0,
                        },
                    ],
                },
            ]
        );
        assert!(parse_save_counters("[x:1] -A TRELLIS-IN -j DROP\n", "TRELLIS-").is_ok());
        let bad = ":TRELLIS-IN - [0:0]\n[x:1] -A TRELLIS-IN -j DROP\n";
        assert_eq!(
            parse_save_counters(bad, "TRELLIS-"),
            Err("[x:1] -A TRELLIS-IN -j DROP".to_string())
        );
    }

    #[test]
    fn listed_rules_lose_the_chain_head_and_policy() {
        let text = "-P FORWARD ACCEPT\n-A FORWARD -j TRELLIS-POL\n-A FORWARD -j TRELLIS-FWD\n";
        assert_eq!(
            parse_list_rules(text, "FORWARD"),
            vec!["-j TRELLIS-POL", "-j TRELLIS-FWD"]
        );
        assert!(parse_list_rules("-N TRELLIS-X\n", "TRELLIS-X").is_empty());
    }
}
