//! The CNI conformance kit: runs any plugin binary through the specification's contract at every
//! version it claims, inside namespaces of its own (a throwaway "host" and one per pod).
//!
//! For each version: ADD gives a result of that version's shape and the interface it names
//! exists in the pod with the result's MAC and addresses; CHECK passes; DEL removes it and
//! leaves the host as it was (a veth pair it retired rather than deleted — down, in no bridge,
//! unaddressed — must be gone once the pod's netns is deleted); a second DEL succeeds; DEL after the netns is gone succeeds;
//! VERSION lists the version; STATUS answers and GC keeps the attachments the runtime lists while
//! it releases the others' addresses and state (1.1.0). Every bad input is refused with the right
//! error object and changes nothing — links, addresses, routes, iptables, state files.
//!
//! A plugin that breaks a rule for a known reason lists a [`Deviation`]: the rule, the versions,
//! and exactly what the plugin does instead ([`Behaviour`]: exit status, error code, whether the
//! host changed). The kit still checks the rule; a deviation that changes nature fails, and so
//! does one that no longer happens, so the list stays true.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use trellis_cni::Version;
use trellis_cni::result::CniResult;
use trellis_net::Netns;

use crate::snapshot::{self, NsState};
use crate::{Result, Testbed};

/// A rule of the kit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// ADD succeeds and prints a result of the config's version.
    AddResultShape,
    /// The interface the result names exists in the pod with the result's MAC and addresses.
    InterfaceMatchesResult,
    /// CHECK after ADD succeeds (0.4.0 and later).
    Check,
    /// DEL succeeds, and nothing of the attachment is up, addressed or routed: eth0 is gone
    /// from the pod (deleted or renamed away), every other pod link is down and unaddressed,
    /// and the host is as before ADD but for links that are down and in no bridge (a pair
    /// retired rather than deleted), which must be gone once the pod's netns is deleted.
    Del,
    /// A second DEL succeeds.
    DelAgain,
    /// DEL succeeds when the netns is already gone, and releases what ADD took.
    DelWithoutNetns,
    /// VERSION lists every version the plugin claims.
    VersionLists,
    /// STATUS succeeds when the plugin is ready (1.1.0).
    Status,
    /// GC keeps the attachments listed as valid (addresses, state; CHECK passes) and releases
    /// the others' addresses and state; DEL still works afterwards (1.1.0).
    Gc,
    EmptyStdin,
    InvalidJson,
    MissingCommand,
    MissingContainerId,
    MissingIfname,
    MissingNetns,
    UnknownVersion,
    LongIfname,
    IllegalIfname,
    NetnsDoesNotExist,
    IpamNotFound,
}

impl Rule {
    /// The bad inputs, with the CNI error code each must draw.
    pub const BAD_INPUTS: [(Rule, u32); 11] = [
        (Rule::EmptyStdin, 6),
        (Rule::InvalidJson, 6),
        (Rule::MissingCommand, 4),
        (Rule::MissingContainerId, 4),
        (Rule::MissingIfname, 4),
        (Rule::MissingNetns, 4),
        (Rule::UnknownVersion, 1),
        (Rule::LongIfname, 4),
        (Rule::IllegalIfname, 4),
        (Rule::NetnsDoesNotExist, 3),
        (Rule::IpamNotFound, 7),
    ];
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What a plugin did when the kit ran it for a rule: enough to tell one way of breaking the
/// rule from another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Behaviour {
    /// The exit status (-1: killed by a signal).
    pub exit: i32,
    /// The `code` of the error object on stdout; None when stdout holds none.
    pub code: Option<u64>,
    /// Whether the host, the pod or the plugin's state changed; None where the rule does not
    /// compare them.
    pub host_changed: Option<bool>,
}

impl Behaviour {
    /// A refusal: exit 1 with an error object of `code`.
    pub const fn refused(code: u64, host_changed: bool) -> Behaviour {
        Behaviour {
            exit: 1,
            code: Some(code),
            host_changed: Some(host_changed),
        }
    }

    /// Success (exit 0, no error object) where a refusal was due.
    pub const fn succeeded(host_changed: bool) -> Behaviour {
        Behaviour {
            exit: 0,
            code: None,
            host_changed: Some(host_changed),
        }
    }
}

impl fmt::Display for Behaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exit {}", self.exit)?;
        match self.code {
            Some(c) => write!(f, ", code {c}")?,
            None => write!(f, ", no error object")?,
        }
        match self.host_changed {
            Some(true) => write!(f, ", host changed"),
            Some(false) => write!(f, ", host unchanged"),
            None => Ok(()),
        }
    }
}

/// A rule a plugin is known to break: at which versions, how, and why.
#[derive(Debug, Clone)]
pub struct Deviation {
    pub rule: Rule,
    /// Each of these versions breaks the rule (and only these may).
    pub versions: Vec<Version>,
    /// What the plugin does instead, in every case of the rule that fails.
    pub behaviour: Behaviour,
    pub why: &'static str,
}

impl Deviation {
    /// Whether `f` is this deviation happening: same rule, a listed version, and every failing
    /// case behaving exactly as listed.
    fn excuses(&self, f: &Finding) -> bool {
        self.rule == f.rule
            && self.versions.contains(&f.version)
            && !f.seen.is_empty()
            && f.seen.iter().all(|b| *b == self.behaviour)
    }
}

/// The rules the reference `bridge` plugin (containernetworking-plugins 1.1.1, Debian's) breaks
/// at `versions`, whatever IPAM it delegates to: the kit's tests of the reference plugins and of
/// our IPAM under bridge share this one list.
pub fn reference_bridge_deviations(versions: &[Version]) -> Vec<Deviation> {
    vec![
        Deviation {
            rule: Rule::MissingCommand,
            versions: versions.to_vec(),
            behaviour: Behaviour::succeeded(false),
            why: "without CNI_COMMAND, skel prints the plugin's about text to stderr and exits 0 instead of answering code 4",
        },
        Deviation {
            rule: Rule::NetnsDoesNotExist,
            versions: versions.to_vec(),
            behaviour: Behaviour::refused(999, false),
            why: "bridge answers a missing netns with code 999 (\"failed to open netns\"), not 3",
        },
        Deviation {
            rule: Rule::IpamNotFound,
            versions: versions.to_vec(),
            behaviour: Behaviour::refused(999, true),
            why: "bridge answers an IPAM type missing from CNI_PATH with code 999, not 7, and leaves the veth pair it made on the host and in the pod",
        },
    ]
}

/// The addresses a plugin's IPAM holds right now, however the plugin keeps them (an ipamd's
/// allocations, host-local's files): how the kit sees what GC released.
pub type Allocations = Box<
    dyn Fn() -> Pin<Box<dyn Future<Output = std::result::Result<BTreeSet<IpAddr>, String>> + Send>>
        + Send
        + Sync,
>;

/// What the kit needs to know about a plugin.
pub struct PluginUnderTest {
    /// For messages.
    pub label: String,
    /// The binary's name in `cni_path` (the config's `type`).
    pub plugin: String,
    pub cni_path: Vec<PathBuf>,
    /// The versions the plugin claims and the kit checks.
    pub versions: Vec<Version>,
    /// The network configuration at a version; `state_dir` is where the plugin may keep files
    /// (they are compared before and after each bad input).
    #[allow(clippy::type_complexity)]
    pub config: Box<dyn Fn(&KitContext, Version) -> Value + Send + Sync>,
    /// What the plugin's IPAM holds; needed for the GC rule (1.1.0), which fails without it.
    pub allocations: Option<Allocations>,
    pub deviations: Vec<Deviation>,
}

/// What the kit gives the config builder.
pub struct KitContext {
    pub state_dir: PathBuf,
}

/// A broken rule.
#[derive(Debug, Clone)]
pub struct Finding {
    pub rule: Rule,
    pub version: Version,
    /// What the plugin did in each failing case (empty where no single run is to blame, e.g. a
    /// result that does not match the pod).
    pub seen: Vec<Behaviour>,
    pub problem: String,
}

/// The outcome of a kit run.
#[derive(Debug, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// How many (rule, version) checks ran.
    pub checks: usize,
}

impl Report {
    /// Whether the plugin conforms: every finding is a listed deviation happening exactly as
    /// listed, every listed deviation happened at each of its versions, and the kit ran. The
    /// error names each rule and version at fault.
    pub fn verdict(&self, put: &PluginUnderTest) -> std::result::Result<(), String> {
        let listed = |f: &Finding| {
            put.deviations
                .iter()
                .filter(|d| d.rule == f.rule && d.versions.contains(&f.version))
                .map(|d| format!("{} ({})", d.behaviour, d.why))
                .collect::<Vec<_>>()
        };
        let unexpected: Vec<String> = self
            .findings
            .iter()
            .filter(|f| !put.deviations.iter().any(|d| d.excuses(f)))
            .map(|f| {
                let seen: Vec<String> = f.seen.iter().map(ToString::to_string).collect();
                let mut line = format!("[{} {}] {}", f.version, f.rule, f.problem);
                if !seen.is_empty() {
                    line.push_str(&format!(" — did: {}", seen.join("; ")));
                }
                let expected = listed(f);
                if !expected.is_empty() {
                    line.push_str(&format!(
                        " — the listed deviation is: {}",
                        expected.join("; ")
                    ));
                }
                line
            })
            .collect();
        let stale: Vec<String> = put
            .deviations
            .iter()
            .flat_map(|d| d.versions.iter().map(move |v| (d, *v)))
            .filter(|(d, v)| {
                !self
                    .findings
                    .iter()
                    .any(|f| f.version == *v && d.excuses(f))
            })
            .map(|(d, v)| {
                let claimed = if put.versions.contains(&v) {
                    ""
                } else {
                    " — a version the kit does not run"
                };
                format!("[{v} {}] {} ({}){claimed}", d.rule, d.behaviour, d.why)
            })
            .collect();
        let mut problems = Vec::new();
        if !unexpected.is_empty() {
            problems.push(format!("broken rules:\n  {}", unexpected.join("\n  ")));
        }
        if !stale.is_empty() {
            problems.push(format!(
                "listed deviations that no longer happen as listed:\n  {}",
                stale.join("\n  ")
            ));
        }
        if self.checks < put.versions.len() * 10 {
            problems.push(format!("only {} checks ran", self.checks));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{}: {} checks; {}",
                put.label,
                self.checks,
                problems.join("\n")
            ))
        }
    }

    /// Panics with [`Report::verdict`]'s message unless the plugin conforms.
    pub fn assert_conformant(&self, put: &PluginUnderTest) {
        if let Err(e) = self.verdict(put) {
            panic!("{e}");
        }
    }

    fn record(
        &mut self,
        rule: Rule,
        version: Version,
        outcome: std::result::Result<(), String>,
        seen: Vec<Behaviour>,
    ) {
        self.checks += 1;
        if let Err(problem) = outcome {
            self.findings.push(Finding {
                rule,
                version,
                seen,
                problem,
            });
        }
    }
}

/// One plugin run.
#[derive(Debug)]
struct Run {
    exit: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(&self) -> std::result::Result<(), String> {
        if self.exit == 0 {
            Ok(())
        } else {
            Err(format!(
                "exit {}: {} {}",
                self.exit,
                self.stdout.trim(),
                self.stderr.trim()
            ))
        }
    }

    /// What the run did, with whether the host changed as the rule saw it.
    fn behaviour(&self, host_changed: Option<bool>) -> Behaviour {
        Behaviour {
            exit: self.exit,
            code: serde_json::from_str::<Value>(self.stdout.trim())
                .ok()
                .and_then(|v| v.get("code").and_then(Value::as_u64)),
            host_changed,
        }
    }

    /// A non-zero exit with an error object of `code` on stdout.
    fn error(&self, code: u32) -> std::result::Result<(), String> {
        if self.exit == 0 {
            return Err(format!(
                "succeeded (expected error code {code}): {}",
                self.stdout.trim()
            ));
        }
        let v: Value = serde_json::from_str(self.stdout.trim()).map_err(|_| {
            format!(
                "stdout is not an error object: {:?} (stderr {:?})",
                self.stdout.trim(),
                self.stderr.trim()
            )
        })?;
        let got = v.get("code").and_then(Value::as_u64);
        if got != Some(u64::from(code)) {
            return Err(format!(
                "error code {got:?}, expected {code}: {}",
                self.stdout.trim()
            ));
        }
        if v.get("msg")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(format!("error object has no msg: {}", self.stdout.trim()));
        }
        Ok(())
    }
}

/// The CNI_* variables of one plugin run.
type Env = Vec<(&'static str, String)>;

struct Kit<'a> {
    put: &'a PluginUnderTest,
    tb: Testbed,
    host: Arc<Netns>,
    ctx: KitContext,
    binary: PathBuf,
    pods: usize,
}

/// Runs the whole kit against a plugin.
pub async fn run(put: &PluginUnderTest) -> Result<Report> {
    let tb = Testbed::new()?;
    let host = tb.add_ns("host").await?;
    let state_dir = tb.state_dir().join("plugin-state");
    std::fs::create_dir_all(&state_dir)
        .map_err(|e| crate::Error::io("create plugin state dir", e))?;
    let binary = put
        .cni_path
        .iter()
        .map(|d| d.join(&put.plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            crate::Error::Other(format!(
                "plugin {} not found in {:?}",
                put.plugin, put.cni_path
            ))
        })?;
    let mut kit = Kit {
        put,
        tb,
        host,
        ctx: KitContext { state_dir },
        binary,
        pods: 0,
    };
    let mut report = Report::default();
    for &v in &put.versions {
        kit.lifecycle(v, &mut report).await?;
        kit.del_without_netns(v, &mut report).await?;
        kit.version(v, &mut report).await?;
        if v.has_gc_and_status() {
            kit.status_and_gc(v, &mut report).await?;
        }
        for (rule, code) in Rule::BAD_INPUTS {
            kit.bad_input(rule, code, v, &mut report).await?;
        }
    }
    Ok(report)
}

impl Kit<'_> {
    fn config(&self, v: Version) -> Value {
        (self.put.config)(&self.ctx, v)
    }

    fn path_env(&self) -> String {
        std::env::join_paths(&self.put.cni_path)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    async fn pod(&mut self) -> Result<Arc<Netns>> {
        self.pods += 1;
        self.tb.add_ns(&format!("p{}", self.pods)).await
    }

    fn env(&self, command: &str, cid: &str, pod: &Netns) -> Env {
        vec![
            ("CNI_COMMAND", command.to_string()),
            ("CNI_CONTAINERID", cid.to_string()),
            ("CNI_NETNS", pod.path().display().to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_PATH", self.path_env()),
        ]
    }

    async fn invoke(&self, env: &[(&str, String)], stdin: &[u8]) -> Result<Run> {
        use tokio::io::AsyncWriteExt;
        let mut cmd = self.host.command(&self.binary)?;
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env(crate::process::TAG_VAR, self.tb.prefix());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| crate::Error::io(format!("run {}", self.binary.display()), e))?;
        if let Some(mut pipe) = child.stdin.take() {
            // A plugin may exit before reading stdin (e.g. on a bad environment).
            let _ = pipe.write_all(stdin).await;
        }
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .map_err(|_| crate::Error::Timeout {
                what: format!("{} {:?}", self.put.plugin, env.first()),
                secs: 60.0,
            })?
            .map_err(|e| crate::Error::io("wait for plugin", e))?;
        Ok(Run {
            exit: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    fn with_prev(&self, v: Version, add_out: &str) -> Vec<u8> {
        let mut conf = self.config(v);
        if let (Some(obj), Ok(prev)) =
            (conf.as_object_mut(), serde_json::from_str::<Value>(add_out))
        {
            obj.insert("prevResult".into(), prev);
        }
        conf.to_string().into_bytes()
    }

    async fn host_state(&self) -> Result<NsState> {
        NsState::capture(&self.host, self.tb.prefix()).await
    }

    /// ADD, CHECK, DEL, DEL again; the first pass also warms up what a plugin creates once per
    /// host (a bridge), so "the host as before ADD" compares like with like.
    async fn lifecycle(&mut self, v: Version, report: &mut Report) -> Result<()> {
        if self.pods == 0 {
            let warm = self.pod().await?;
            let pre = self.host_state().await?;
            let conf = self.config(v).to_string();
            let add = self
                .invoke(&self.env("ADD", "kit-warmup", &warm), conf.as_bytes())
                .await?;
            let del = self
                .invoke(
                    &self.env("DEL", "kit-warmup", &warm),
                    self.with_prev(v, &add.stdout).as_slice(),
                )
                .await?;
            self.tb.delete_ns(&warm)?;
            drop(warm);
            // A pair DEL retired goes with the namespace, asynchronously: wait for it, so that
            // "the host before ADD" below does not hold it.
            let deadline = tokio::time::Instant::now() + RECLAIM_BOUND;
            while !pre.retired_links(&self.host_state().await?).is_empty()
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if let Err(e) = add.ok().and_then(|_| del.ok()) {
                let failed = if add.exit == 0 { &del } else { &add };
                report.record(
                    Rule::AddResultShape,
                    v,
                    Err(format!("warm-up ADD/DEL failed: {e}")),
                    vec![failed.behaviour(None)],
                );
                return Ok(());
            }
        }
        let pod = self.pod().await?;
        let cid = format!("kit-life-{}", v.as_str().replace('.', ""));
        let before = self.host_state().await?;
        let files_before = snapshot::files(&self.ctx.state_dir);
        let conf = self.config(v).to_string();
        let add = self
            .invoke(&self.env("ADD", &cid, &pod), conf.as_bytes())
            .await?;
        let shape = add.ok().and_then(|_| result_shape(&add.stdout, v));
        report.record(
            Rule::AddResultShape,
            v,
            shape.as_ref().map(|_| ()).map_err(Clone::clone),
            vec![add.behaviour(None)],
        );
        if let Ok(result) = &shape {
            report.record(
                Rule::InterfaceMatchesResult,
                v,
                interface_matches(result, &pod, v).await,
                Vec::new(),
            );
        }
        let with_prev = self.with_prev(v, &add.stdout);
        if v.has_check() {
            let check = self
                .invoke(&self.env("CHECK", &cid, &pod), &with_prev)
                .await?;
            report.record(Rule::Check, v, check.ok(), vec![check.behaviour(None)]);
        }
        let del_stdin = if v.has_prev_result_on_del() {
            with_prev.clone()
        } else {
            conf.clone().into_bytes()
        };
        let del = self
            .invoke(&self.env("DEL", &cid, &pod), &del_stdin)
            .await?;
        let mut del_outcome = del.ok();
        let mut del_changed = None;
        // Links DEL retired (down, in no bridge) instead of deleting: they must go with the
        // pod's namespace.
        let mut retired = Vec::new();
        if del_outcome.is_ok() {
            let mut problems = pod_after_del(&pod).await?;
            let after = self.host_state().await?;
            retired = before.retired_links(&after);
            problems.extend(before.diff_except(&after, &retired));
            problems.extend(snapshot::files_diff(
                &files_before,
                &snapshot::files(&self.ctx.state_dir),
                false,
            ));
            del_changed = Some(!problems.is_empty());
            if !problems.is_empty() {
                del_outcome = Err(problems.join("; "));
            }
        }
        let again = self
            .invoke(&self.env("DEL", &cid, &pod), &del_stdin)
            .await?;
        report.record(Rule::DelAgain, v, again.ok(), vec![again.behaviour(None)]);
        self.tb.delete_ns(&pod)?;
        // Our own handle would keep the namespace (and the retired pair) alive.
        drop(pod);
        if del_outcome.is_ok() && !retired.is_empty() {
            // The runtime's teardown of the namespace frees a retired pair, asynchronously.
            let deadline = tokio::time::Instant::now() + RECLAIM_BOUND;
            let left = loop {
                let left = before.diff(&self.host_state().await?);
                if left.is_empty() || tokio::time::Instant::now() >= deadline {
                    break left;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            if !left.is_empty() {
                del_changed = Some(true);
                del_outcome = Err(format!(
                    "left by DEL after the netns was deleted ({} s): {}",
                    RECLAIM_BOUND.as_secs(),
                    left.join("; ")
                ));
            }
        }
        report.record(Rule::Del, v, del_outcome, vec![del.behaviour(del_changed)]);
        Ok(())
    }

    async fn del_without_netns(&mut self, v: Version, report: &mut Report) -> Result<()> {
        let pod = self.pod().await?;
        let cid = format!("kit-gone-{}", v.as_str().replace('.', ""));
        let before = self.host_state().await?;
        let files_before = snapshot::files(&self.ctx.state_dir);
        let conf = self.config(v).to_string();
        let add = self
            .invoke(&self.env("ADD", &cid, &pod), conf.as_bytes())
            .await?;
        if let Err(e) = add.ok() {
            report.record(
                Rule::DelWithoutNetns,
                v,
                Err(format!("ADD failed: {e}")),
                vec![add.behaviour(None)],
            );
            return Ok(());
        }
        let env = self.env("DEL", &cid, &pod);
        self.tb.delete_ns(&pod)?;
        // Our own handle would keep the namespace (and the pod's veth) alive.
        drop(pod);
        let stdin = if v.has_prev_result_on_del() {
            self.with_prev(v, &add.stdout)
        } else {
            conf.into_bytes()
        };
        let del = self.invoke(&env, &stdin).await?;
        let mut outcome = del.ok();
        let mut changed = None;
        if outcome.is_ok() {
            // The pod's veth died with its namespace; what ADD took on the host must be gone too.
            let mut problems = Vec::new();
            let deadline = tokio::time::Instant::now() + RECLAIM_BOUND;
            while tokio::time::Instant::now() < deadline {
                problems = before.diff(&self.host_state().await?);
                problems.extend(snapshot::files_diff(
                    &files_before,
                    &snapshot::files(&self.ctx.state_dir),
                    false,
                ));
                if problems.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            changed = Some(!problems.is_empty());
            if !problems.is_empty() {
                outcome = Err(problems.join("; "));
            }
        }
        report.record(
            Rule::DelWithoutNetns,
            v,
            outcome,
            vec![del.behaviour(changed)],
        );
        Ok(())
    }

    async fn version(&mut self, v: Version, report: &mut Report) -> Result<()> {
        let env = [("CNI_COMMAND", "VERSION".to_string())];
        let run = self
            .invoke(
                &env,
                json!({"cniVersion": v.as_str()}).to_string().as_bytes(),
            )
            .await?;
        let outcome = run.ok().and_then(|_| {
            let info: trellis_cni::version::VersionInfo =
                serde_json::from_str(run.stdout.trim())
                    .map_err(|e| format!("VERSION output {:?}: {e}", run.stdout.trim()))?;
            let missing: Vec<&str> = self
                .put
                .versions
                .iter()
                .filter(|x| !info.supports(**x))
                .map(|x| x.as_str())
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "supportedVersions {:?} lacks {missing:?}",
                    info.supported_versions
                ))
            }
        });
        report.record(Rule::VersionLists, v, outcome, vec![run.behaviour(None)]);
        Ok(())
    }

    async fn status_and_gc(&mut self, v: Version, report: &mut Report) -> Result<()> {
        let path_env = [
            ("CNI_COMMAND", "STATUS".to_string()),
            ("CNI_PATH", self.path_env()),
        ];
        let status = self
            .invoke(&path_env, self.config(v).to_string().as_bytes())
            .await?;
        report.record(Rule::Status, v, status.ok(), vec![status.behaviour(None)]);
        let (outcome, seen) = self.gc(v).await?;
        report.record(Rule::Gc, v, outcome, seen);
        Ok(())
    }

    /// GC as a runtime runs it: two attachments, `kit-gc-keep` listed in
    /// `cni.dev/valid-attachments` (and the older `cni.dev/attachments`), `kit-gc-gone` not
    /// (its container, and so its netns, gone). Afterwards the listed one still holds its
    /// addresses and state (CHECK passes) and the other holds none, as the plugin's
    /// allocations and state files show; DEL of both still succeeds and leaves the host as
    /// it was.
    async fn gc(
        &mut self,
        v: Version,
    ) -> Result<(std::result::Result<(), String>, Vec<Behaviour>)> {
        let put = self.put;
        let Some(allocations) = put.allocations.as_ref() else {
            return Ok((
                Err("the kit cannot see the plugin's allocations (PluginUnderTest::allocations), so it cannot tell what GC released".into()),
                Vec::new(),
            ));
        };
        let (keep, gone) = ("kit-gc-keep", "kit-gc-gone");
        let host_before = self.host_state().await?;
        let files_before = snapshot::files(&self.ctx.state_dir);
        let keep_pod = self.pod().await?;
        let gone_pod = self.pod().await?;
        let conf = self.config(v).to_string();
        let mut problems = Vec::new();
        let mut seen = Vec::new();
        let held = || async { allocations().await.map_err(crate::Error::Other) };
        // (container id, ADD's stdout, the addresses ADD gave it)
        let mut added: Vec<(&str, String, BTreeSet<IpAddr>)> = Vec::new();
        for (cid, pod) in [(keep, &keep_pod), (gone, &gone_pod)] {
            let add = self
                .invoke(&self.env("ADD", cid, pod), conf.as_bytes())
                .await?;
            match add.ok().and_then(|_| result_shape(&add.stdout, v)) {
                Ok(r) => added.push((
                    cid,
                    add.stdout.clone(),
                    r.ips.iter().map(|ip| ip.address.addr()).collect(),
                )),
                Err(e) => {
                    problems.push(format!("ADD of {cid}: {e}"));
                    seen.push(add.behaviour(None));
                }
            }
        }
        let addresses = |cid: &str| {
            added
                .iter()
                .find(|a| a.0 == cid)
                .map(|a| a.2.clone())
                .unwrap_or_default()
        };
        let (keep_ips, gone_ips) = (addresses(keep), addresses(gone));
        if problems.is_empty() {
            let held = held().await?;
            if !keep_ips.is_subset(&held) || !gone_ips.is_subset(&held) || gone_ips.is_empty() {
                problems.push(format!(
                    "the allocations ({held:?}) do not show what ADD gave {keep} ({keep_ips:?}) and {gone} ({gone_ips:?}): GC cannot be judged"
                ));
            }
        }
        // The runtime lost the second container: its netns is gone, then GC runs.
        let gone_env = self.env("DEL", gone, &gone_pod);
        self.tb.delete_ns(&gone_pod)?;
        drop(gone_pod);
        if problems.is_empty() {
            let files_mid = snapshot::files(&self.ctx.state_dir);
            let mut gc_conf = self.config(v);
            let valid = json!([{"containerID": keep, "ifname": "eth0"}]);
            if let Some(obj) = gc_conf.as_object_mut() {
                obj.insert("cni.dev/valid-attachments".into(), valid.clone());
                obj.insert("cni.dev/attachments".into(), valid);
            }
            let gc_env = [
                ("CNI_COMMAND", "GC".to_string()),
                ("CNI_PATH", self.path_env()),
            ];
            let gc = self.invoke(&gc_env, gc_conf.to_string().as_bytes()).await?;
            if let Err(e) = gc.ok() {
                problems.push(format!("GC: {e}"));
                seen.push(gc.behaviour(None));
            } else {
                let held = held().await?;
                let lost: Vec<&IpAddr> = keep_ips.difference(&held).collect();
                let kept: Vec<&IpAddr> = gone_ips.intersection(&held).collect();
                if !lost.is_empty() {
                    problems.push(format!(
                        "GC released {lost:?} of {keep}, a valid attachment"
                    ));
                }
                if !kept.is_empty() {
                    problems.push(format!(
                        "GC kept {kept:?} of {gone}, an attachment the runtime no longer has"
                    ));
                }
                let files_after = snapshot::files(&self.ctx.state_dir);
                for (path, contents) in &files_mid {
                    let names = |cid: &str| mentions(path, contents, cid);
                    if names(keep) && !files_after.contains_key(path) {
                        problems.push(format!("GC removed {} of {keep}", path.display()));
                    }
                }
                for (path, contents) in &files_after {
                    if mentions(path, contents, gone) {
                        problems.push(format!("GC left {} of {gone}", path.display()));
                    }
                }
                if v.has_check()
                    && let Some((_, stdout, _)) = added.iter().find(|a| a.0 == keep)
                {
                    let check = self
                        .invoke(
                            &self.env("CHECK", keep, &keep_pod),
                            &self.with_prev(v, stdout),
                        )
                        .await?;
                    if let Err(e) = check.ok() {
                        problems.push(format!("CHECK of {keep} after GC: {e}"));
                        seen.push(check.behaviour(None));
                    }
                }
            }
        }
        // DEL of both still works (a runtime may send it late), and then nothing is left.
        for (cid, stdout, _) in &added {
            let env = if *cid == gone {
                gone_env.clone()
            } else {
                self.env("DEL", cid, &keep_pod)
            };
            let del = self.invoke(&env, &self.with_prev(v, stdout)).await?;
            if let Err(e) = del.ok() {
                problems.push(format!("DEL of {cid} after GC: {e}"));
                seen.push(del.behaviour(None));
            }
        }
        self.tb.delete_ns(&keep_pod)?;
        drop(keep_pod);
        if problems.is_empty() {
            let held = held().await?;
            let left: Vec<&IpAddr> = keep_ips.intersection(&held).collect();
            if !left.is_empty() {
                problems.push(format!("DEL of {keep} after GC kept {left:?}"));
            }
            let mut left = Vec::new();
            // The pods' veths die with their namespaces, asynchronously.
            let deadline = tokio::time::Instant::now() + RECLAIM_BOUND;
            while tokio::time::Instant::now() < deadline {
                left = host_before.diff(&self.host_state().await?);
                left.extend(snapshot::files_diff(
                    &files_before,
                    &snapshot::files(&self.ctx.state_dir),
                    false,
                ));
                if left.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if !left.is_empty() {
                problems.push(format!("left after GC and DEL: {}", left.join("; ")));
            }
        }
        Ok((
            if problems.is_empty() {
                Ok(())
            } else {
                Err(problems.join("; "))
            },
            seen,
        ))
    }

    async fn bad_input(
        &mut self,
        rule: Rule,
        code: u32,
        v: Version,
        report: &mut Report,
    ) -> Result<()> {
        let pod = self.pod().await?;
        let cid = "kit-bad";
        let good = self.config(v);
        let mut cases: Vec<(Env, Vec<u8>)> = Vec::new();
        let env = self.env("ADD", cid, &pod);
        let without = |key: &str| {
            env.iter()
                .filter(|(k, _)| *k != key)
                .cloned()
                .collect::<Vec<_>>()
        };
        let with = |key: &'static str, value: String| {
            let mut e = without(key);
            e.push((key, value));
            e
        };
        match rule {
            Rule::EmptyStdin => cases.push((env.clone(), Vec::new())),
            Rule::InvalidJson => {
                cases.push((env.clone(), br#"{"cniVersion": "1.0.0", "name": "#.to_vec()))
            }
            Rule::MissingCommand => {
                cases.push((without("CNI_COMMAND"), good.to_string().into_bytes()))
            }
            Rule::MissingContainerId => {
                cases.push((without("CNI_CONTAINERID"), good.to_string().into_bytes()))
            }
            Rule::MissingIfname => {
                cases.push((without("CNI_IFNAME"), good.to_string().into_bytes()))
            }
            Rule::MissingNetns => cases.push((without("CNI_NETNS"), good.to_string().into_bytes())),
            Rule::UnknownVersion => {
                let mut c = good.clone();
                c["cniVersion"] = json!("99.0.0");
                cases.push((env.clone(), c.to_string().into_bytes()));
            }
            Rule::LongIfname => cases.push((
                with("CNI_IFNAME", "eth0123456789012".into()),
                good.to_string().into_bytes(),
            )),
            Rule::IllegalIfname => {
                for name in ["a/b", "a:b", "a b", ".", ".."] {
                    cases.push((
                        with("CNI_IFNAME", name.into()),
                        good.to_string().into_bytes(),
                    ));
                }
            }
            Rule::NetnsDoesNotExist => {
                let gone = self.tb.run_dir().join(self.tb.ns_name("never-made"));
                cases.push((
                    with("CNI_NETNS", gone.display().to_string()),
                    good.to_string().into_bytes(),
                ));
            }
            Rule::IpamNotFound => {
                let mut c = good.clone();
                if c.get("ipam").is_none() {
                    report.record(
                        rule,
                        v,
                        Err("the config has no ipam section to break".into()),
                        Vec::new(),
                    );
                    self.tb.delete_ns(&pod)?;
                    return Ok(());
                }
                c["ipam"]["type"] = json!("kit-no-such-ipam");
                cases.push((env.clone(), c.to_string().into_bytes()));
            }
            _ => return Err(crate::Error::Other(format!("{rule} is not a bad input"))),
        }
        let mut problems = Vec::new();
        let mut seen = Vec::new();
        for (env, stdin) in cases {
            let host_before = self.host_state().await?;
            let pod_before = NsState::capture(&pod, self.tb.prefix()).await?;
            let files_before = snapshot::files(&self.ctx.state_dir);
            let run = self.invoke(&env, &stdin).await?;
            let label = env
                .iter()
                .find(|(k, _)| *k == "CNI_IFNAME")
                .map(|(_, v)| format!(" (ifname {v:?})"))
                .unwrap_or_default();
            let refused = run.error(code);
            if let Err(e) = &refused {
                problems.push(format!("{e}{label}"));
            }
            let mut changed = host_before.diff(&self.host_state().await?);
            changed.extend(
                pod_before
                    .diff(&NsState::capture(&pod, self.tb.prefix()).await?)
                    .into_iter()
                    .map(|d| format!("pod {d}")),
            );
            changed.extend(snapshot::files_diff(
                &files_before,
                &snapshot::files(&self.ctx.state_dir),
                true,
            ));
            if refused.is_err() || !changed.is_empty() {
                seen.push(run.behaviour(Some(!changed.is_empty())));
            }
            if !changed.is_empty() {
                problems.push(format!("changed the host{label}: {}", changed.join("; ")));
                // Undo it so the next case starts clean: a DEL is what a runtime would send.
                let del_env = self.env("DEL", cid, &pod);
                let _ = self.invoke(&del_env, good.to_string().as_bytes()).await?;
            }
        }
        report.record(
            rule,
            v,
            if problems.is_empty() {
                Ok(())
            } else {
                Err(problems.join(" | "))
            },
            seen,
        );
        self.tb.delete_ns(&pod)?;
        Ok(())
    }
}

/// How long the kernel may take to free a retired veth pair once its namespace is deleted (it
/// does so asynchronously, in one work queue for every namespace of the machine: well under a
/// second on an idle machine, longer while other tests delete many namespaces).
const RECLAIM_BOUND: Duration = Duration::from_secs(30);

/// What DEL left in the pod: eth0 must be gone (deleted, or renamed away so a later ADD can use
/// the name); any other link but `lo` must be down and hold no address.
async fn pod_after_del(pod: &Netns) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let h = pod.connect()?;
    if let Some(l) = h.link("eth0").await? {
        problems.push(format!("eth0 still in the pod: {l:?}"));
    }
    for l in h.links().await? {
        if l.name != "lo" && l.admin_up {
            problems.push(format!("pod link still up after DEL: {l:?}"));
        }
    }
    let lo = h.link("lo").await?.map(|l| l.index);
    for a in h.addresses(None).await? {
        let link_local =
            matches!(a.address.addr(), IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
        if Some(a.index) != lo && !link_local {
            problems.push(format!(
                "pod address still held after DEL: {} dev {}",
                a.address, a.index
            ));
        }
    }
    Ok(problems)
}

/// Whether a state file belongs to container `cid`: its name or its contents name it.
fn mentions(path: &std::path::Path, contents: &[u8], cid: &str) -> bool {
    path.to_string_lossy().contains(cid) || contents.windows(cid.len()).any(|w| w == cid.as_bytes())
}

/// Checks the printed result has `v`'s shape, and reads it.
fn result_shape(stdout: &str, v: Version) -> std::result::Result<CniResult, String> {
    let value: Value = serde_json::from_str(stdout.trim())
        .map_err(|e| format!("result is not JSON ({e}): {stdout:?}"))?;
    if value.get("cniVersion").and_then(Value::as_str) != Some(v.as_str()) {
        return Err(format!(
            "result cniVersion is {:?}, config asked for {v}",
            value.get("cniVersion")
        ));
    }
    if v.has_interfaces() {
        let ips = value
            .get("ips")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if ips.is_empty() {
            return Err(format!("result has no ips: {value}"));
        }
        for ip in &ips {
            let has_version = ip.get("version").is_some();
            let wants_version = v < Version::V1_0_0;
            if has_version != wants_version {
                return Err(format!(
                    "ips[].version is {} in a {v} result: {ip}",
                    if has_version { "present" } else { "missing" }
                ));
            }
        }
        if value
            .get("interfaces")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        {
            return Err(format!("result lists no interfaces: {value}"));
        }
        if v < Version::V1_1_0 {
            let v11_iface = ["mtu", "socketPath", "pciID"];
            let v11_route = ["mtu", "advmss", "priority", "table", "scope"];
            let bad_iface = value["interfaces"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|i| v11_iface.iter().any(|k| i.get(k).is_some()));
            let bad_route = value
                .get("routes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|r| v11_route.iter().any(|k| r.get(k).is_some()));
            if bad_iface || bad_route {
                return Err(format!("1.1.0 fields in a {v} result: {value}"));
            }
        }
    } else if value.get("ip4").is_none() && value.get("ip6").is_none() {
        return Err(format!("a {v} result needs ip4 or ip6: {value}"));
    }
    CniResult::from_value(value, None)
        .map(|(_, r)| r)
        .map_err(|e| e.to_string())
}

/// The interface the result names for the pod exists with the result's MAC and addresses.
async fn interface_matches(
    result: &CniResult,
    pod: &Netns,
    v: Version,
) -> std::result::Result<(), String> {
    let h = pod.connect().map_err(|e| e.to_string())?;
    let link = h
        .link("eth0")
        .await
        .map_err(|e| e.to_string())?
        .ok_or("eth0 is not in the pod")?;
    // Results before 0.3.0 have no interface list: only their addresses can be checked.
    let index = if result.interfaces.is_empty() && v < Version::V0_3_0 {
        None
    } else {
        let index = result
            .interface_index("eth0", Some(&pod.path().display().to_string()))
            .ok_or_else(|| {
                format!(
                    "the result lists no eth0 with sandbox {}: {:?}",
                    pod.path().display(),
                    result.interfaces
                )
            })?;
        let want_mac = &result.interfaces[index].mac;
        if link.mac.map(|m| m.to_string()) != Some(want_mac.to_lowercase()) {
            return Err(format!(
                "eth0 has MAC {:?}, the result says {want_mac}",
                link.mac
            ));
        }
        Some(index)
    };
    let have: Vec<ipnet::IpNet> = h
        .addresses(Some(link.index))
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|a| a.address)
        .collect();
    for ip in result
        .ips
        .iter()
        .filter(|ip| index.is_none() || ip.interface.is_none_or(|i| Some(i) == index))
    {
        if !have.contains(&ip.address) {
            return Err(format!("eth0 lacks {} (has {have:?})", ip.address));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(deviations: Vec<Deviation>) -> PluginUnderTest {
        PluginUnderTest {
            label: "p".into(),
            plugin: "p".into(),
            cni_path: Vec::new(),
            versions: vec![Version::V0_4_0, Version::V1_0_0],
            config: Box::new(|_, _| json!({})),
            allocations: None,
            deviations,
        }
    }

    fn report(findings: Vec<Finding>) -> Report {
        Report {
            findings,
            checks: 40,
        }
    }

    fn finding(version: Version, seen: Behaviour) -> Finding {
        Finding {
            rule: Rule::IpamNotFound,
            version,
            seen: vec![seen],
            problem: "error code Some(999), expected 7".into(),
        }
    }

    fn listed(versions: Vec<Version>, behaviour: Behaviour) -> Deviation {
        Deviation {
            rule: Rule::IpamNotFound,
            versions,
            behaviour,
            why: "known",
        }
    }

    const BOTH: [Version; 2] = [Version::V0_4_0, Version::V1_0_0];

    #[test]
    fn a_deviation_happening_as_listed_is_excused() {
        let p = put(vec![listed(BOTH.to_vec(), Behaviour::refused(999, true))]);
        let r = report(
            BOTH.iter()
                .map(|v| finding(*v, Behaviour::refused(999, true)))
                .collect(),
        );
        assert_eq!(r.verdict(&p), Ok(()));
    }

    #[test]
    fn a_deviation_that_changes_nature_fails() {
        let p = put(vec![listed(BOTH.to_vec(), Behaviour::refused(999, true))]);
        for other in [
            Behaviour::refused(998, true),
            Behaviour::refused(999, false),
            Behaviour::succeeded(true),
        ] {
            let r = report(vec![
                finding(Version::V0_4_0, Behaviour::refused(999, true)),
                finding(Version::V1_0_0, other),
            ]);
            let e = r.verdict(&p).unwrap_err();
            assert!(e.contains("broken rules:\n  [1.0.0 IpamNotFound]"), "{e}");
            assert!(e.contains(&format!("did: {other}")), "{e}");
            assert!(
                e.contains("no longer happen as listed:\n  [1.0.0 IpamNotFound]"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_deviation_at_an_unlisted_version_fails() {
        let p = put(vec![listed(
            vec![Version::V0_4_0],
            Behaviour::refused(999, true),
        )]);
        let r = report(
            BOTH.iter()
                .map(|v| finding(*v, Behaviour::refused(999, true)))
                .collect(),
        );
        let e = r.verdict(&p).unwrap_err();
        assert!(e.contains("[1.0.0 IpamNotFound]"), "{e}");
        assert!(!e.contains("[0.4.0 IpamNotFound]"), "{e}");
    }

    #[test]
    fn a_listed_deviation_that_stops_happening_fails() {
        let p = put(vec![listed(BOTH.to_vec(), Behaviour::refused(999, true))]);
        let r = report(vec![finding(
            Version::V0_4_0,
            Behaviour::refused(999, true),
        )]);
        let e = r.verdict(&p).unwrap_err();
        assert!(
            e.contains("no longer happen as listed:\n  [1.0.0 IpamNotFound]"),
            "{e}"
        );
        assert!(!e.contains("broken rules"), "{e}");
    }

    #[test]
    fn a_finding_without_a_run_is_never_excused() {
        let p = put(vec![Deviation {
            rule: Rule::InterfaceMatchesResult,
            versions: BOTH.to_vec(),
            behaviour: Behaviour::succeeded(false),
            why: "known",
        }]);
        let r = report(vec![Finding {
            rule: Rule::InterfaceMatchesResult,
            version: Version::V1_0_0,
            seen: Vec::new(),
            problem: "eth0 lacks 10.0.0.2/24".into(),
        }]);
        assert!(r.verdict(&p).is_err());
    }

    #[test]
    fn too_few_checks_fail() {
        let p = put(Vec::new());
        let r = Report {
            findings: Vec::new(),
            checks: 3,
        };
        assert!(r.verdict(&p).unwrap_err().contains("only 3 checks ran"));
    }
}
