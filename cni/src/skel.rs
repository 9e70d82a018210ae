//! The plugin skeleton: from `CNI_*` variables and stdin to one call of a [`Plugin`], and from its
//! answer to stdout and an exit status.
//!
//! Everything a runtime can get wrong is caught here, before a plugin runs, so every plugin
//! refuses bad input the same way and changes nothing when it does.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::args::{self, CniArgs};
use crate::config::PluginConf;
use crate::exec::Command;
use crate::result::CniResult;
use crate::version::VersionInfo;
use crate::{Error, Version};

/// A CNI plugin. The skeleton has validated everything in the request before it calls one of
/// these; the plugin returns its result in our model and the skeleton prints it in the
/// configuration's version.
pub trait Plugin {
    /// The versions this plugin speaks.
    fn supported_versions(&self) -> &[Version] {
        &Version::ALL
    }

    /// The `CNI_ARGS` keys this plugin accepts without `IgnoreUnknown`.
    fn known_args(&self) -> &[&str] {
        args::WELL_KNOWN
    }

    fn add(&self, req: &Attachment) -> Result<CniResult, Error>;
    /// Must succeed when what it would remove is already gone, and when the netns is gone.
    fn del(&self, req: &Attachment) -> Result<(), Error>;
    fn check(&self, req: &Attachment) -> Result<(), Error>;
    fn gc(&self, req: &GcRequest) -> Result<(), Error>;
    fn status(&self, req: &NetConf) -> Result<(), Error>;
}

/// The configuration a plugin was given, parsed and as it came (to hand to a delegate).
#[derive(Debug, Clone)]
pub struct NetConf {
    pub version: Version,
    pub config: PluginConf,
    /// The configuration exactly as read from stdin.
    pub raw: Vec<u8>,
    /// CNI_PATH: where delegates are found.
    pub path: Vec<PathBuf>,
}

impl NetConf {
    /// The plugin's own view of the configuration (its private keys). A key of the wrong type
    /// is an invalid configuration (code 7).
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.raw)
            .map_err(|e| Error::invalid_config("invalid network configuration", e.to_string()))
    }
}

/// A container ID: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ContainerId(String);

impl ContainerId {
    pub fn new(id: impl Into<String>) -> Result<Self, Error> {
        let id = id.into();
        let mut chars = id.chars();
        let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if ok {
            Ok(ContainerId(id))
        } else {
            Err(Error::invalid_env(
                "invalid characters in CNI_CONTAINERID",
                format!("{id:?}"),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ContainerId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        ContainerId::new(s)
    }
}

impl From<ContainerId> for String {
    fn from(c: ContainerId) -> String {
        c.0
    }
}

/// An interface name the kernel accepts: 1 to 15 bytes, no `/`, `:` or whitespace, not `.` or
/// `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IfName(String);

impl IfName {
    /// IFNAMSIZ less the terminating NUL.
    pub const MAX_LEN: usize = 15;

    pub fn new(name: impl Into<String>) -> Result<Self, Error> {
        let name = name.into();
        let why = if name.is_empty() {
            Some("is empty")
        } else if name.len() > Self::MAX_LEN {
            Some("is longer than 15 bytes")
        } else if name == "." || name == ".." {
            Some("is . or ..")
        } else if name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
        {
            Some("contains / or : or whitespace")
        } else {
            None
        };
        match why {
            None => Ok(IfName(name)),
            Some(why) => Err(Error::invalid_env(
                format!("CNI_IFNAME {why}"),
                format!("{name:?}"),
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for IfName {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        IfName::new(s)
    }
}

impl From<IfName> for String {
    fn from(c: IfName) -> String {
        c.0
    }
}

/// ADD, DEL or CHECK of one attachment (container, interface).
#[derive(Debug, Clone)]
pub struct Attachment {
    pub command: Command,
    pub container_id: ContainerId,
    pub ifname: IfName,
    /// The container's netns. Always present and existing for ADD and CHECK; for DEL, `None`
    /// when the runtime gave none or it is already gone.
    pub netns: Option<PathBuf>,
    pub args: CniArgs,
    /// The previous plugin's result (ADD in a chain) or the chain's final ADD result (DEL and
    /// CHECK, from 0.4.0).
    pub prev_result: Option<CniResult>,
    pub conf: NetConf,
}

impl Attachment {
    /// The netns for ADD and CHECK, where the skeleton guarantees one.
    pub fn netns(&self) -> Result<&Path, Error> {
        self.netns
            .as_deref()
            .ok_or_else(|| Error::invalid_env("CNI_NETNS is required", self.command.as_str()))
    }
}

/// One attachment a runtime still holds, as listed in a GC request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttachmentId {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// GC: release everything of this network that no listed attachment holds.
#[derive(Debug, Clone)]
pub struct GcRequest {
    pub valid_attachments: Vec<AttachmentId>,
    pub conf: NetConf,
}

/// One run of a plugin: its environment and stdin.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    pub env: HashMap<String, String>,
    pub stdin: Vec<u8>,
}

/// What the plugin printed and its exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: Vec<u8>,
    pub exit_code: i32,
}

/// Runs `plugin` as a CNI plugin process: reads the environment and stdin, prints the answer
/// and exits.
pub fn main(plugin: &dyn Plugin) -> ! {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let outcome = match read {
        Ok(_) => run(
            plugin,
            Invocation {
                env: std::env::vars().collect(),
                stdin,
            },
        ),
        Err(e) => fail(Version::LATEST, Error::io("cannot read stdin", e)),
    };
    let mut out = std::io::stdout().lock();
    // Nothing is left to tell anyone if stdout itself is gone.
    let _ = out.write_all(&outcome.stdout).and_then(|_| out.flush());
    std::process::exit(outcome.exit_code)
}

/// Runs `plugin` on one invocation. Separate from [`main`] so tests need no process.
pub fn run(plugin: &dyn Plugin, inv: Invocation) -> Outcome {
    match dispatch(plugin, &inv) {
        Ok(Some(value)) => Outcome {
            stdout: to_line(&value),
            exit_code: 0,
        },
        Ok(None) => Outcome {
            stdout: Vec::new(),
            exit_code: 0,
        },
        Err((version, err)) => fail(version, err),
    }
}

fn fail(version: Version, err: Error) -> Outcome {
    Outcome {
        stdout: to_line(&err.to_json(version)),
        exit_code: 1,
    }
}

fn to_line(v: &Value) -> Vec<u8> {
    let mut s = serde_json::to_vec(v).unwrap_or_default();
    s.push(b'\n');
    s
}

type Failure = (Version, Error);

fn dispatch(plugin: &dyn Plugin, inv: &Invocation) -> Result<Option<Value>, Failure> {
    let latest = |e| (Version::LATEST, e);
    let var = |k: &str| inv.env.get(k).filter(|v| !v.is_empty()).cloned();
    let command = match var("CNI_COMMAND") {
        None => {
            return Err(latest(Error::invalid_env(
                "required env variables [CNI_COMMAND] missing",
                "",
            )));
        }
        Some(c) => Command::parse(&c)
            .ok_or_else(|| latest(Error::invalid_env("unknown CNI_COMMAND", c)))?,
    };
    if command == Command::Version {
        return Ok(Some(version_answer(plugin, &inv.stdin)));
    }

    let required: &[&str] = match command {
        Command::Add | Command::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
        Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME"],
        Command::Gc | Command::Status | Command::Version => &[],
    };
    let missing: Vec<&str> = required
        .iter()
        .copied()
        .filter(|k| var(k).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(latest(Error::invalid_env(
            format!("required env variables [{}] missing", missing.join(",")),
            "",
        )));
    }

    let conf = parse_conf(plugin, inv).map_err(latest)?;
    let version = conf.version;
    let at = |e| (version, e);
    match command {
        Command::Check if !version.has_check() => {
            return Err(at(Error::incompatible_version(
                "config version does not allow CHECK",
                version.as_str(),
            )));
        }
        Command::Gc | Command::Status if !version.has_gc_and_status() => {
            return Err(at(Error::incompatible_version(
                format!("config version does not allow {command}"),
                version.as_str(),
            )));
        }
        _ => {}
    }

    match command {
        Command::Gc => {
            let req = GcRequest {
                valid_attachments: valid_attachments(&conf.raw).map_err(at)?,
                conf,
            };
            plugin.gc(&req).map_err(at)?;
            Ok(None)
        }
        Command::Status => {
            plugin.status(&conf).map_err(at)?;
            Ok(None)
        }
        Command::Add | Command::Del | Command::Check => {
            let req = attachment(plugin, command, inv, conf).map_err(at)?;
            match command {
                Command::Add => {
                    let result = plugin.add(&req).map_err(at)?;
                    let printed = result.to_value(version).map_err(|e| {
                        at(Error::incompatible_version(
                            "cannot express the result in the config's version",
                            e.to_string(),
                        ))
                    })?;
                    Ok(Some(printed))
                }
                Command::Del => plugin.del(&req).map(|_| None).map_err(at),
                _ => plugin.check(&req).map(|_| None).map_err(at),
            }
        }
        Command::Version => Ok(Some(version_answer(plugin, &inv.stdin))),
    }
}

/// VERSION answers in the version the caller asked in, when we speak it.
fn version_answer(plugin: &dyn Plugin, stdin: &[u8]) -> Value {
    #[derive(Deserialize)]
    struct Asked {
        #[serde(rename = "cniVersion")]
        cni_version: Option<String>,
    }
    let asked = serde_json::from_slice::<Asked>(stdin)
        .ok()
        .and_then(|a| a.cni_version?.parse::<Version>().ok())
        .filter(|v| plugin.supported_versions().contains(v));
    let latest = plugin
        .supported_versions()
        .iter()
        .copied()
        .max()
        .unwrap_or(Version::LATEST);
    serde_json::to_value(VersionInfo::new(
        asked.unwrap_or(latest),
        plugin.supported_versions(),
    ))
    .unwrap_or(Value::Null)
}

fn parse_conf(plugin: &dyn Plugin, inv: &Invocation) -> Result<NetConf, Error> {
    if inv.stdin.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::decode(
            "cannot decode network configuration",
            "stdin is empty",
        ));
    }
    let config: PluginConf = serde_json::from_slice(&inv.stdin)
        .map_err(|e| Error::decode("cannot decode network configuration", e))?;
    let version = config.version()?;
    if !plugin.supported_versions().contains(&version) {
        return Err(Error::incompatible_version(
            "incompatible CNI versions",
            format!(
                "config is {:?}, plugin supports {:?}",
                version.as_str(),
                plugin
                    .supported_versions()
                    .iter()
                    .map(|v| v.as_str())
                    .collect::<Vec<_>>()
            ),
        ));
    }
    let path = inv
        .env
        .get("CNI_PATH")
        .map(|p| std::env::split_paths(p).collect())
        .unwrap_or_default();
    Ok(NetConf {
        version,
        config,
        raw: inv.stdin.clone(),
        path,
    })
}

fn attachment(
    plugin: &dyn Plugin,
    command: Command,
    inv: &Invocation,
    conf: NetConf,
) -> Result<Attachment, Error> {
    let var = |k: &str| inv.env.get(k).cloned().unwrap_or_default();
    let container_id = ContainerId::new(var("CNI_CONTAINERID"))?;
    let ifname = IfName::new(var("CNI_IFNAME"))?;
    let args = CniArgs::parse(&var("CNI_ARGS"), plugin.known_args())?;
    let netns = match inv
        .env
        .get("CNI_NETNS")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
    {
        None => None,
        Some(path) => {
            let override_guard = matches!(
                var("CNI_NETNS_OVERRIDE").as_str(),
                "1" | "true" | "TRUE" | "True"
            );
            match (command, check_netns(&path, override_guard)) {
                (_, Ok(())) => Some(path),
                // DEL must succeed when the netns is gone: the plugin cleans up what it can.
                (Command::Del, Err(e)) if e.code == crate::Code::UNKNOWN_CONTAINER => None,
                (_, Err(e)) => return Err(e),
            }
        }
    };
    let prev_result = match &conf.config.prev_result {
        None => None,
        Some(v) => Some(
            CniResult::from_value(v.clone(), Some(conf.version))
                .map_err(|e| Error::decode("cannot decode prevResult", e))?
                .1,
        ),
    };
    Ok(Attachment {
        command,
        container_id,
        ifname,
        netns,
        args,
        prev_result,
        conf,
    })
}

/// CNI_NETNS must be a network namespace, and not the plugin's own: a stale
/// `/proc/<pid>/ns/net` of a dead container resolves to the host's (plugins#714).
fn check_netns(path: &Path, allow_own: bool) -> Result<(), Error> {
    let shown = path.display().to_string();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::unknown_container(
                "network namespace does not exist",
                shown,
            ));
        }
        Err(e) => {
            return Err(Error::io(
                format!("cannot open network namespace {shown}"),
                e,
            ));
        }
    };
    match nix::sys::statfs::statfs(path) {
        Ok(fs) if fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC => {}
        Ok(_) => {
            return Err(Error::invalid_env(
                "CNI_NETNS is not a network namespace",
                shown,
            ));
        }
        Err(e) => {
            return Err(Error::io(
                format!("cannot inspect network namespace {shown}"),
                e,
            ));
        }
    }
    if !allow_own
        && let Ok(own) = std::fs::metadata("/proc/self/ns/net")
        && own.dev() == meta.dev()
        && own.ino() == meta.ino()
    {
        return Err(Error::new(
            crate::Code::INVALID_NETNS,
            "CNI_NETNS is the plugin's own network namespace",
            format!("{shown} (set CNI_NETNS_OVERRIDE=1 if that is meant)"),
        ));
    }
    Ok(())
}

/// The attachments a GC request keeps: `cni.dev/valid-attachments`, or the name the 1.1.0 text
/// used first, `cni.dev/attachments` (libcni sends both).
fn valid_attachments(raw: &[u8]) -> Result<Vec<AttachmentId>, Error> {
    #[derive(Deserialize)]
    struct Gc {
        #[serde(rename = "cni.dev/valid-attachments")]
        valid: Option<Vec<AttachmentId>>,
        #[serde(rename = "cni.dev/attachments")]
        legacy: Option<Vec<AttachmentId>>,
    }
    let gc: Gc = serde_json::from_slice(raw)
        .map_err(|e| Error::decode("cannot decode GC attachments", e))?;
    Ok(gc.valid.or(gc.legacy).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A plugin that records what it was asked and answers with a fixed result.
    #[derive(Default)]
    struct Recorder {
        calls: RefCell<Vec<String>>,
        gc_kept: RefCell<Vec<AttachmentId>>,
    }

    impl Plugin for Recorder {
        fn add(&self, req: &Attachment) -> Result<CniResult, Error> {
            self.calls.borrow_mut().push(format!(
                "ADD {} {}",
                req.container_id.as_str(),
                req.ifname.as_str()
            ));
            let (_, r) = CniResult::from_value(
                serde_json::json!({"cniVersion":"1.1.0","interfaces":[{"name":"eth0","mtu":1450}],
                    "ips":[{"interface":0,"address":"10.244.1.5/24","gateway":"10.244.1.1"}]}),
                None,
            )
            .unwrap();
            Ok(r)
        }
        fn del(&self, req: &Attachment) -> Result<(), Error> {
            self.calls
                .borrow_mut()
                .push(format!("DEL netns={:?}", req.netns));
            Ok(())
        }
        fn check(&self, req: &Attachment) -> Result<(), Error> {
            self.calls
                .borrow_mut()
                .push(format!("CHECK prev={}", req.prev_result.is_some()));
            Ok(())
        }
        fn gc(&self, req: &GcRequest) -> Result<(), Error> {
            *self.gc_kept.borrow_mut() = req.valid_attachments.clone();
            Ok(())
        }
        fn status(&self, _: &NetConf) -> Result<(), Error> {
            Err(Error::not_available("agent not ready", "no readiness file"))
        }
    }

    fn inv(env: &[(&str, &str)], stdin: &str) -> Invocation {
        Invocation {
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            stdin: stdin.as_bytes().to_vec(),
        }
    }

    fn own_netns() -> String {
        "/proc/self/ns/net".to_string()
    }

    fn code(o: &Outcome) -> u64 {
        assert_ne!(
            o.exit_code,
            0,
            "expected a failure, got {}",
            String::from_utf8_lossy(&o.stdout)
        );
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        v["code"].as_u64().unwrap()
    }

    const CONF: &str = r#"{"cniVersion":"0.3.1","name":"net","type":"recorder"}"#;

    #[test]
    fn add_prints_the_result_in_the_config_version() {
        let p = Recorder::default();
        let ns = own_netns();
        let env = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "ctr1"),
            ("CNI_NETNS", ns.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS_OVERRIDE", "1"),
        ];
        let out = run(&p, inv(&env, CONF));
        assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stdout));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["cniVersion"], "0.3.1");
        assert_eq!(v["ips"][0]["version"], "4");
        assert!(v["interfaces"][0].get("mtu").is_none(), "mtu is 1.1.0 only");
        assert_eq!(p.calls.borrow().as_slice(), ["ADD ctr1 eth0"]);
    }

    #[test]
    fn the_plugins_own_netns_is_refused_without_override() {
        let p = Recorder::default();
        let ns = own_netns();
        let env = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_NETNS", ns.as_str()),
            ("CNI_IFNAME", "eth0"),
        ];
        assert_eq!(code(&run(&p, inv(&env, CONF))), 8);
        assert!(p.calls.borrow().is_empty());
    }

    #[test]
    fn missing_variables_are_named() {
        let p = Recorder::default();
        let out = run(
            &p,
            inv(&[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0")], CONF),
        );
        assert_eq!(code(&out), 4);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            v["msg"],
            "required env variables [CNI_CONTAINERID,CNI_NETNS] missing"
        );
        assert_eq!(code(&run(&p, inv(&[], CONF))), 4);
    }

    #[test]
    fn bad_stdin_is_a_decoding_failure() {
        let p = Recorder::default();
        let env = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
        ];
        assert_eq!(code(&run(&p, inv(&env, ""))), 6);
        assert_eq!(code(&run(&p, inv(&env, "{not json"))), 6);
        assert_eq!(
            code(&run(&p, inv(&env, r#"{"cniVersion":"1.0.0"}"#))),
            6,
            "type is required"
        );
    }

    #[test]
    fn unknown_version_is_incompatible() {
        let p = Recorder::default();
        let env = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
        ];
        assert_eq!(
            code(&run(
                &p,
                inv(&env, r#"{"cniVersion":"3.0.0","name":"n","type":"t"}"#)
            )),
            1
        );
    }

    #[test]
    fn check_needs_0_4_0_and_gc_status_need_1_1_0() {
        let p = Recorder::default();
        let ns = own_netns();
        let env = [
            ("CNI_COMMAND", "CHECK"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_NETNS", ns.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS_OVERRIDE", "1"),
        ];
        assert_eq!(code(&run(&p, inv(&env, CONF))), 1);
        let ok = run(
            &p,
            inv(&env, r#"{"cniVersion":"0.4.0","name":"n","type":"t"}"#),
        );
        assert_eq!(ok.exit_code, 0);
        assert_eq!(
            code(&run(
                &p,
                inv(
                    &[("CNI_COMMAND", "GC")],
                    r#"{"cniVersion":"1.0.0","name":"n","type":"t"}"#
                )
            )),
            1
        );
        assert_eq!(
            code(&run(
                &p,
                inv(
                    &[("CNI_COMMAND", "STATUS")],
                    r#"{"cniVersion":"1.1.0","name":"n","type":"t"}"#
                )
            )),
            50
        );
    }

    #[test]
    fn ifname_and_container_id_are_validated() {
        let p = Recorder::default();
        for bad in [
            "",
            "sixteen-chars-xx",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "tab\t",
        ] {
            assert!(IfName::new(bad).is_err(), "{bad:?}");
        }
        assert!(IfName::new("fifteen-chars-x").is_ok());
        for bad in ["-x", "a/b", "a b", ""] {
            assert!(ContainerId::new(bad).is_err(), "{bad:?}");
        }
        let env = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "way-too-long-name"),
        ];
        assert_eq!(code(&run(&p, inv(&env, CONF))), 4);
        let env = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "$bad"),
            ("CNI_IFNAME", "eth0"),
        ];
        assert_eq!(code(&run(&p, inv(&env, CONF))), 4);
        assert!(p.calls.borrow().is_empty());
    }

    #[test]
    fn add_with_a_missing_netns_is_unknown_container_but_del_proceeds() {
        let p = Recorder::default();
        let mut env = vec![
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_NETNS", "/run/netns/does-not-exist-trellis"),
            ("CNI_IFNAME", "eth0"),
        ];
        assert_eq!(code(&run(&p, inv(&env, CONF))), 3);
        env[0] = ("CNI_COMMAND", "DEL");
        assert_eq!(run(&p, inv(&env, CONF)).exit_code, 0);
        assert_eq!(p.calls.borrow().as_slice(), ["DEL netns=None"]);
    }

    #[test]
    fn a_file_that_is_not_a_netns_is_refused() {
        let p = Recorder::default();
        let env = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_NETNS", "/etc/hostname"),
            ("CNI_IFNAME", "eth0"),
        ];
        assert_eq!(code(&run(&p, inv(&env, CONF))), 4);
    }

    #[test]
    fn cni_args_unknown_keys_are_refused() {
        let p = Recorder::default();
        let env = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "FOO=1"),
        ];
        assert_eq!(code(&run(&p, inv(&env, CONF))), 4);
        let env = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;FOO=1"),
        ];
        assert_eq!(run(&p, inv(&env, CONF)).exit_code, 0);
    }

    #[test]
    fn gc_accepts_both_attachment_keys() {
        for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
            let p = Recorder::default();
            let conf = format!(
                r#"{{"cniVersion":"1.1.0","name":"n","type":"t","{key}":[{{"containerID":"a","ifname":"eth0"}}]}}"#
            );
            let out = run(&p, inv(&[("CNI_COMMAND", "GC")], &conf));
            assert_eq!(out.exit_code, 0);
            assert_eq!(
                p.gc_kept.borrow().as_slice(),
                [AttachmentId {
                    container_id: "a".into(),
                    ifname: "eth0".into()
                }]
            );
        }
    }

    #[test]
    fn version_lists_what_the_plugin_speaks() {
        let p = Recorder::default();
        let out = run(
            &p,
            inv(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.4.0"}"#),
        );
        assert_eq!(out.exit_code, 0);
        let info: VersionInfo = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(info.cni_version, "0.4.0");
        assert_eq!(info.supported_versions.len(), 7);
        let out = run(&p, inv(&[("CNI_COMMAND", "VERSION")], ""));
        let info: VersionInfo = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(info.cni_version, "1.1.0");
    }

    #[test]
    fn prev_result_is_parsed_in_the_config_version() {
        let p = Recorder::default();
        let ns = own_netns();
        let env = [
            ("CNI_COMMAND", "CHECK"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_NETNS", ns.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS_OVERRIDE", "true"),
        ];
        let conf = r#"{"cniVersion":"0.4.0","name":"n","type":"t","prevResult":{"ips":[{"version":"4","address":"10.0.0.2/24"}]}}"#;
        assert_eq!(run(&p, inv(&env, conf)).exit_code, 0);
        assert_eq!(p.calls.borrow().as_slice(), ["CHECK prev=true"]);
        let bad = r#"{"cniVersion":"0.4.0","name":"n","type":"t","prevResult":{"ips":[{"address":"nonsense"}]}}"#;
        assert_eq!(code(&run(&p, inv(&env, bad))), 6);
    }
}
