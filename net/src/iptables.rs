//! iptables through `iptables-restore --noflush`: we write only our own chains (declaring a
//! chain in the input flushes and refills it atomically), and install the jumps into them from
//! built-in chains idempotently (`-C`, then `-I`). Whole tables are never saved and restored —
//! that clobbers other components' rules (kube-router's lesson).
//!
//! The backend (nf_tables or legacy) is the host's: the one whose tables already hold rules,
//! else the one `iptables` points at.

use std::fmt::Write as _;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};
use crate::netns::Netns;

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
}

impl Table {
    pub fn new(name: &str) -> Table {
        Table {
            name: name.to_string(),
            chains: Vec::new(),
        }
    }

    /// Declares `chain` with `rules` (replacing whatever it held).
    pub fn chain(mut self, chain: &str, rules: Vec<String>) -> Table {
        self.chains.push((chain.to_string(), rules));
        self
    }

    /// The `iptables-restore` input.
    pub fn render(&self) -> String {
        let mut out = format!("*{}\n", self.name);
        for (chain, _) in &self.chains {
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        for (chain, rules) in &self.chains {
            for r in rules {
                let _ = writeln!(out, "-A {chain} {r}");
            }
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
    netns: Option<std::path::PathBuf>,
}

impl Iptables {
    /// `iptables-nft`, `ip6tables-legacy-restore`, …: always the backend's own binary.
    fn tool(&self, suffix: &str) -> String {
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

    fn command(&self, program: &str) -> Result<tokio::process::Command> {
        let std_cmd = match &self.netns {
            Some(path) => Netns::open(path)?.command(program)?,
            None => std::process::Command::new(program),
        };
        let mut cmd = tokio::process::Command::from(std_cmd);
        cmd.kill_on_drop(true);
        Ok(cmd)
    }

    async fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let what = format!("{program} {}", args.join(" "));
        let mut cmd = self.command(program)?;
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| Error::os("run", &what, e))?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())
                .await
                .map_err(|e| Error::os("write to", &what, e))?;
        }
        let out =
            tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
                .await
                .map_err(|_| Error::invalid("run", &what, "did not finish within 60 s"))?
                .map_err(|e| Error::os("wait for", &what, e))?;
        if !out.status.success() {
            return Err(Error::invalid(
                "run",
                &what,
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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
        self.run(
            &self.tool("-restore"),
            &["--noflush", "--wait"],
            Some(&table.render()),
        )
        .await
        .map(|_| ())
    }

    /// `iptables-save -t <table>` (for checks and tests).
    pub async fn save(&self, table: &str) -> Result<String> {
        self.run(&self.tool("-save"), &["-t", table], None).await
    }

    /// Makes sure `chain` in `table` has the rule `spec` (e.g. `-j TRELLIS-FWD`): checked with
    /// `-C`, inserted at the top with `-I` only when missing.
    pub async fn ensure_rule(&self, table: &str, chain: &str, spec: &[&str]) -> Result<()> {
        let tool = self.tool("");
        let mut check = vec!["-w", "-t", table, "-C", chain];
        check.extend_from_slice(spec);
        if self.run(&tool, &check, None).await.is_ok() {
            return Ok(());
        }
        let mut insert = vec!["-w", "-t", table, "-I", chain, "1"];
        insert.extend_from_slice(spec);
        self.run(&tool, &insert, None).await.map(|_| ())
    }

    /// Removes the rule if present (and then our chain, if asked), for uninstalling.
    pub async fn delete_rule(&self, table: &str, chain: &str, spec: &[&str]) -> Result<bool> {
        let tool = self.tool("");
        let mut del = vec!["-w", "-t", table, "-D", chain];
        del.extend_from_slice(spec);
        Ok(self.run(&tool, &del, None).await.is_ok())
    }
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
}
