//! The CNI conformance kit: runs any plugin binary through the specification's contract at every
//! version it claims, inside namespaces of its own (a throwaway "host" and one per pod).
//!
//! For each version: ADD gives a result of that version's shape and the interface it names
//! exists in the pod with the result's MAC and addresses; CHECK passes; DEL removes it and
//! leaves the host as it was; a second DEL succeeds; DEL after the netns is gone succeeds;
//! VERSION lists the version; STATUS and GC answer (1.1.0). Every bad input is refused with the
//! right error object and changes nothing — links, addresses, routes, iptables, state files.
//!
//! A plugin that breaks a rule for a known reason lists a [`Deviation`]; the kit still checks
//! the rule, and a deviation that no longer happens fails too, so the list stays true.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
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
    /// DEL succeeds, removes the interface, and leaves the host as before ADD.
    Del,
    /// A second DEL succeeds.
    DelAgain,
    /// DEL succeeds when the netns is already gone, and releases what ADD took.
    DelWithoutNetns,
    /// VERSION lists every version the plugin claims.
    VersionLists,
    /// STATUS succeeds when the plugin is ready (1.1.0).
    Status,
    /// GC succeeds and DEL still works afterwards (1.1.0).
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

/// A rule a plugin is known to break, and why.
#[derive(Debug, Clone)]
pub struct Deviation {
    pub rule: Rule,
    pub why: &'static str,
}

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
    /// Panics unless every finding is a listed deviation and every listed deviation was found.
    pub fn assert_conformant(&self, put: &PluginUnderTest) {
        let allowed: BTreeSet<Rule> = put.deviations.iter().map(|d| d.rule).collect();
        let unexpected: Vec<String> = self
            .findings
            .iter()
            .filter(|f| !allowed.contains(&f.rule))
            .map(|f| format!("[{} {}] {}", f.version, f.rule, f.problem))
            .collect();
        let seen: BTreeSet<Rule> = self.findings.iter().map(|f| f.rule).collect();
        let stale: Vec<String> = put
            .deviations
            .iter()
            .filter(|d| !seen.contains(&d.rule))
            .map(|d| format!("{} ({})", d.rule, d.why))
            .collect();
        assert!(
            unexpected.is_empty() && stale.is_empty(),
            "{}: {} checks; broken rules:\n  {}\nlisted deviations that no longer happen:\n  {}",
            put.label,
            self.checks,
            unexpected.join("\n  "),
            stale.join("\n  ")
        );
        assert!(
            self.checks >= put.versions.len() * 10,
            "{}: only {} checks ran",
            put.label,
            self.checks
        );
    }

    fn record(&mut self, rule: Rule, version: Version, outcome: std::result::Result<(), String>) {
        self.checks += 1;
        if let Err(problem) = outcome {
            self.findings.push(Finding {
                rule,
                version,
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
            if let Err(e) = add.ok().and_then(|_| del.ok()) {
                report.record(
                    Rule::AddResultShape,
                    v,
                    Err(format!("warm-up ADD/DEL failed: {e}")),
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
        );
        if let Ok(result) = &shape {
            report.record(
                Rule::InterfaceMatchesResult,
                v,
                interface_matches(result, &pod, v).await,
            );
        }
        let with_prev = self.with_prev(v, &add.stdout);
        if v.has_check() {
            let check = self
                .invoke(&self.env("CHECK", &cid, &pod), &with_prev)
                .await?;
            report.record(Rule::Check, v, check.ok());
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
        if del_outcome.is_ok() {
            let left = pod.connect()?.link("eth0").await?;
            let mut problems: Vec<String> = left
                .map(|l| format!("eth0 still in the pod: {l:?}"))
                .into_iter()
                .collect();
            problems.extend(before.diff(&self.host_state().await?));
            problems.extend(snapshot::files_diff(
                &files_before,
                &snapshot::files(&self.ctx.state_dir),
                false,
            ));
            if !problems.is_empty() {
                del_outcome = Err(problems.join("; "));
            }
        }
        report.record(Rule::Del, v, del_outcome);
        let again = self
            .invoke(&self.env("DEL", &cid, &pod), &del_stdin)
            .await?;
        report.record(Rule::DelAgain, v, again.ok());
        self.tb.delete_ns(&pod)?;
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
            report.record(Rule::DelWithoutNetns, v, Err(format!("ADD failed: {e}")));
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
        if outcome.is_ok() {
            // The pod's veth died with its namespace; what ADD took on the host must be gone too.
            let mut problems = Vec::new();
            for _ in 0..50 {
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
            if !problems.is_empty() {
                outcome = Err(problems.join("; "));
            }
        }
        report.record(Rule::DelWithoutNetns, v, outcome);
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
        report.record(Rule::VersionLists, v, outcome);
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
        report.record(Rule::Status, v, status.ok());

        let pod = self.pod().await?;
        let cid = "kit-gc";
        let add = self
            .invoke(
                &self.env("ADD", cid, &pod),
                self.config(v).to_string().as_bytes(),
            )
            .await?;
        let mut conf = self.config(v);
        let kept = json!([{"containerID": cid, "ifname": "eth0"}]);
        if let Some(obj) = conf.as_object_mut() {
            obj.insert("cni.dev/valid-attachments".into(), kept.clone());
            obj.insert("cni.dev/attachments".into(), kept);
        }
        let gc_env = [
            ("CNI_COMMAND", "GC".to_string()),
            ("CNI_PATH", self.path_env()),
        ];
        let gc = self.invoke(&gc_env, conf.to_string().as_bytes()).await?;
        let del = self
            .invoke(&self.env("DEL", cid, &pod), &self.with_prev(v, &add.stdout))
            .await?;
        report.record(
            Rule::Gc,
            v,
            add.ok().and_then(|_| gc.ok()).and_then(|_| del.ok()),
        );
        self.tb.delete_ns(&pod)?;
        Ok(())
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
            if let Err(e) = run.error(code) {
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
        );
        self.tb.delete_ns(&pod)?;
        Ok(())
    }
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
