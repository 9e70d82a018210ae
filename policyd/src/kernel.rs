//! The real [`Dataplane`]: trellis-net's iptables (one restore of several chains and deletes,
//! chains and counters read back) and ipsets (sync by swap, incremental apply), in the
//! namespace policyd runs in (the node's). On nf_tables, restores go through one long-lived
//! `iptables-nft-restore` ([`RestoreSession`]): a process per commit made every commit that
//! replaced rules wait for an RCU grace period at the tool's exit. A session that fails is
//! reaped, the restore applied one-shot, counted and logged; the next restore starts a new one.

use std::net::IpAddr;
use std::process::Stdio;
use std::sync::Arc;

use trellis_daemon::Metrics;

use trellis_net::ipset::{self, IpSet, Ipset, SetMember};
use trellis_net::iptables::{Backend, Delivery, IpFamily, Iptables, RestoreSession, Table};

use crate::rules::Proto;
use crate::sync::{ChainRead, Dataplane, DataplaneError, Result};
use crate::xt::{Member, SetDef, SetKind};

/// iptables and ipset of this namespace.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub iptables: Iptables,
    pub ipset: Ipset,
    /// Where restores go (the same iptables); None: a process per restore.
    pub restorer: Option<Arc<RestoreSession>>,
    /// For counting restores the session could not deliver.
    metrics: Option<Arc<Metrics>>,
}

fn err(e: impl std::fmt::Display) -> DataplaneError {
    DataplaneError(e.to_string())
}

impl Kernel {
    /// The host's iptables backend, here; restores through a session when `session` (on
    /// nf_tables), its fallbacks counted in `metrics`.
    pub async fn detect(metrics: Option<Arc<Metrics>>, session: bool) -> Result<Kernel> {
        let iptables = Iptables::detect(None, IpFamily::V4).await.map_err(err)?;
        Ok(Kernel {
            restorer: session.then(|| Arc::new(RestoreSession::new(iptables.clone()))),
            iptables,
            ipset: Ipset::new(None),
            metrics,
        })
    }

    /// `iptables-<backend> -w ARGS` (for the two edits trellis-net has no call for: a second
    /// copy of a rule at the top, and a delete by rule number).
    async fn xtables(&self, args: &[&str]) -> Result<()> {
        let tool = match self.iptables.backend {
            Backend::Nft => "iptables-nft",
            Backend::Legacy => "iptables-legacy",
        };
        let out = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            tokio::process::Command::new(tool)
                .arg("-w")
                .args(args)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .map_err(|_| DataplaneError(format!("{tool} {}: no answer in 30 s", args.join(" "))))?
        .map_err(|e| DataplaneError(format!("{tool}: {e}")))?;
        if !out.status.success() {
            return Err(DataplaneError(format!(
                "{tool} {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }
}

fn kind(k: SetKind) -> ipset::SetKind {
    match k {
        SetKind::HashIp => ipset::SetKind::HashIp,
        SetKind::HashNet => ipset::SetKind::HashNet,
        SetKind::HashIpPort => ipset::SetKind::HashIpPort,
    }
}

fn member(m: Member) -> SetMember {
    match m {
        Member::Ip(ip) => SetMember::Ip(IpAddr::V4(ip)),
        Member::Net { net, nomatch } => SetMember::Net {
            net: ipnet::IpNet::V4(net),
            nomatch,
        },
        Member::IpPort { ip, proto, port } => SetMember::IpPort {
            ip: IpAddr::V4(ip),
            proto: match proto {
                Proto::Tcp => ipset::Proto::Tcp,
                Proto::Udp => ipset::Proto::Udp,
                Proto::Sctp => ipset::Proto::Sctp,
            },
            port,
        },
    }
}

impl Dataplane for Kernel {
    async fn restore(
        &self,
        declare: Vec<(String, Vec<String>)>,
        delete: Vec<String>,
    ) -> Result<()> {
        let mut t = Table::new("filter");
        for (name, rules) in declare {
            t = t.chain(&name, rules);
        }
        for name in delete {
            t = t.delete(&name);
        }
        let Some(restorer) = &self.restorer else {
            return self.iptables.restore_all(&[t]).await.map_err(err);
        };
        match restorer.restore_all(&[t]).await.map_err(err)? {
            Delivery::OneShot {
                session_error: Some(e),
            } => {
                tracing::warn!(error = %e, "iptables-restore session failed; the restore was applied by a process of its own, the next one starts a new session");
                if let Some(m) = &self.metrics {
                    crate::metrics::restore_fallbacks(m, 1);
                }
            }
            Delivery::Session | Delivery::OneShot { .. } => {}
        }
        Ok(())
    }

    async fn sync_sets(&self, sets: Vec<(String, SetDef)>) -> Result<()> {
        let sets: Vec<IpSet> = sets
            .into_iter()
            .map(|(name, s)| IpSet {
                name,
                kind: kind(s.kind),
                family: IpFamily::V4,
                members: s.members.into_iter().map(member).collect(),
            })
            .collect();
        self.ipset.sync(&sets).await.map_err(err)
    }

    async fn apply_sets(
        &self,
        add: Vec<(String, Member)>,
        del: Vec<(String, Member)>,
    ) -> Result<()> {
        let add: Vec<_> = add.into_iter().map(|(n, m)| (n, member(m))).collect();
        let del: Vec<_> = del.into_iter().map(|(n, m)| (n, member(m))).collect();
        self.ipset.apply(&add, &del).await.map_err(err)
    }

    async fn list_sets(&self, prefix: &str) -> Result<Vec<String>> {
        self.ipset.list_names(prefix).await.map_err(err)
    }

    async fn destroy_sets(&self, names: Vec<String>) -> Result<()> {
        self.ipset.destroy(&names).await.map_err(err)
    }

    async fn read_chains(&self) -> Result<Vec<ChainRead>> {
        Ok(self
            .iptables
            .read_chains("filter", "TRELLIS-P")
            .await
            .map_err(err)?
            .into_iter()
            .filter(|c| crate::names::is_owned_chain(&c.name))
            .map(|c| ChainRead {
                name: c.name,
                rules: c.rules.into_iter().map(|r| (r.spec, r.packets)).collect(),
            })
            .collect())
    }

    async fn builtin_rules(&self, chain: &str) -> Result<Vec<String>> {
        self.iptables.list_rules("filter", chain).await.map_err(err)
    }

    async fn insert_first(&self, chain: &str, spec: &[&str]) -> Result<()> {
        let mut args = vec!["-t", "filter", "-I", chain, "1"];
        args.extend_from_slice(spec);
        self.xtables(&args).await
    }

    async fn delete_at(&self, chain: &str, n: usize) -> Result<()> {
        let n = n.to_string();
        self.xtables(&["-t", "filter", "-D", chain, &n]).await
    }

    async fn generation(&self) -> Option<u32> {
        if self.iptables.backend != Backend::Nft {
            return None;
        }
        // One netlink round trip in this thread's namespace (policyd's, the node's); the
        // kernel answers before the send returns.
        match trellis_net::nft::generation() {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::debug!(error = %e, "nf_tables generation unreadable; the verifier reads everything");
                None
            }
        }
    }
}
