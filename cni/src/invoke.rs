//! The runtime side of CNI, as libcni does it: load network configurations from a directory,
//! run a chain of plugins for an attachment, and keep each ADD's result in a cache so DEL and
//! CHECK can hand it back as `prevResult`.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{NetworkConfigList, PluginConf};
use crate::exec::{self, CniEnv, Command};
use crate::result::CniResult;
use crate::skel::AttachmentId;
use crate::version::VersionInfo;
use crate::{Error, Version};

/// Where plugins live and where results are cached.
#[derive(Debug, Clone)]
pub struct CniConfig {
    pub plugin_dirs: Vec<PathBuf>,
    /// libcni uses `/var/lib/cni`; results go to `<cache_dir>/results/`.
    pub cache_dir: PathBuf,
    /// The longest one plugin run may take; it is killed after that (None: no bound).
    pub timeout: Option<std::time::Duration>,
    /// What each plugin binary answered to VERSION, while the file stays the same.
    versions: VersionCache,
}

/// The versions plugin binaries said they speak, by path; an entry holds while the binary's
/// modification time and size are those it was asked with. None: the plugin gave no usable
/// answer.
type VersionCache = Arc<Mutex<HashMap<PathBuf, (Option<SystemTime>, u64, Option<Vec<Version>>)>>>;

/// One attachment the results cache holds, as [`CniConfig::cached_attachments`] lists them.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedAttachment {
    pub container_id: String,
    pub ifname: String,
    pub network_name: String,
    pub cni_args: Vec<(String, String)>,
    /// The network configuration ADD ran with (None in entries older than this field).
    pub config: Option<Value>,
}

/// What the runtime knows about one attachment.
#[derive(Debug, Clone, Default)]
pub struct RuntimeConf {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    /// CNI_ARGS pairs.
    pub args: Vec<(String, String)>,
    /// Values for the capabilities plugins declare (`portMappings`, `ips`, `mac`, …).
    pub capability_args: Map<String, Value>,
}

#[derive(Serialize, Deserialize)]
struct CacheEntry {
    kind: String,
    #[serde(rename = "containerId")]
    container_id: String,
    #[serde(rename = "ifName")]
    ifname: String,
    #[serde(rename = "networkName")]
    network_name: String,
    #[serde(rename = "cniArgs", default)]
    cni_args: Vec<(String, String)>,
    #[serde(rename = "capabilityArgs", default)]
    capability_args: Map<String, Value>,
    /// The network configuration list ADD ran with, as libcni keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config: Option<Value>,
    result: Value,
}

const CACHE_KIND: &str = "cniCacheV1";

impl CniConfig {
    pub fn new(plugin_dirs: Vec<PathBuf>, cache_dir: impl Into<PathBuf>) -> Self {
        CniConfig {
            plugin_dirs,
            cache_dir: cache_dir.into(),
            timeout: None,
            versions: VersionCache::default(),
        }
    }

    /// Bounds every plugin run by `timeout`.
    pub fn with_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Every attachment in the results cache (entries that cannot be read are skipped).
    pub fn cached_attachments(&self) -> Vec<CachedAttachment> {
        let Ok(entries) = fs::read_dir(self.cache_dir.join("results")) else {
            return Vec::new();
        };
        let mut out: Vec<CachedAttachment> = entries
            .flatten()
            .filter_map(|e| fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice::<CacheEntry>(&b).ok())
            .map(|c| CachedAttachment {
                container_id: c.container_id,
                ifname: c.ifname,
                network_name: c.network_name,
                cni_args: c.cni_args,
                config: c.config,
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.network_name, &a.container_id).cmp(&(&b.network_name, &b.container_id))
        });
        out
    }

    /// ADD: runs the chain in order, each plugin given the previous result. The final result
    /// is cached. When a plugin fails, the chain is deleted again (the spec requires a DEL after
    /// a failed ADD) before the error is returned.
    pub fn add(&self, list: &NetworkConfigList, rt: &RuntimeConf) -> Result<CniResult, Error> {
        let version = list.version()?;
        let mut prev: Option<CniResult> = None;
        for plugin in &list.plugins {
            let speak = self.version_for(plugin, version);
            let stdin = request(list, plugin, speak, rt, prev.as_ref(), Command::Add)?;
            let outcome = self
                .run(plugin, self.env(Command::Add, rt), &stdin)
                .and_then(|out| {
                    CniResult::from_slice(&out, Some(speak)).map_err(|e| {
                        Error::decode(
                            format!("cannot decode the result of {}", plugin.plugin_type),
                            e,
                        )
                    })
                });
            match outcome {
                Ok((_, result)) => prev = Some(result),
                Err(err) => {
                    if let Err(del_err) = self.del_chain(list, rt, version, None) {
                        eprintln!("cleaning up after failed ADD of {}: {del_err}", list.name);
                    }
                    return Err(err);
                }
            }
        }
        let result = prev.unwrap_or_default();
        self.write_cache(list, rt, version, &result)?;
        Ok(result)
    }

    /// DEL: runs the chain in reverse with the cached result, then forgets it. Works without a
    /// cached result too (after a failed ADD, or a lost cache). A runtime that passes no
    /// capability values (it lost them: a restart, a pod gone from the API) gets those ADD
    /// cached, as libcni's cached runtime config keeps them: portmap removes its rules only
    /// when told the port mappings again.
    pub fn del(&self, list: &NetworkConfigList, rt: &RuntimeConf) -> Result<(), Error> {
        let version = list.version()?;
        let entry = self.cached_entry(list, rt)?;
        let cached = match &entry {
            Some(e) => Some(self.entry_result(list, e.result.clone())?),
            None => None,
        };
        let with_cached_caps;
        let rt = match &entry {
            Some(e) if rt.capability_args.is_empty() && !e.capability_args.is_empty() => {
                with_cached_caps = RuntimeConf {
                    capability_args: e.capability_args.clone(),
                    ..rt.clone()
                };
                &with_cached_caps
            }
            _ => rt,
        };
        self.del_chain(list, rt, version, cached.as_ref())?;
        match fs::remove_file(self.cache_path(list, rt)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("cannot remove cached result", e)),
        }
    }

    fn del_chain(
        &self,
        list: &NetworkConfigList,
        rt: &RuntimeConf,
        version: Version,
        prev: Option<&CniResult>,
    ) -> Result<(), Error> {
        for plugin in list.plugins.iter().rev() {
            let speak = self.version_for(plugin, version);
            let prev = prev.filter(|_| speak.has_prev_result_on_del());
            let stdin = request(list, plugin, speak, rt, prev, Command::Del)?;
            self.run(plugin, self.env(Command::Del, rt), &stdin)?;
        }
        Ok(())
    }

    /// CHECK: runs the chain in order with the cached result.
    pub fn check(&self, list: &NetworkConfigList, rt: &RuntimeConf) -> Result<(), Error> {
        let version = list.version()?;
        if !version.has_check() {
            return Err(Error::incompatible_version(
                "configuration version does not support CHECK",
                version.as_str(),
            ));
        }
        if list.disable_check {
            return Ok(());
        }
        let cached = self.cached_result(list, rt)?.ok_or_else(|| {
            Error::unknown_container(
                "no cached result for this attachment",
                format!("{}/{}", rt.container_id, rt.ifname),
            )
        })?;
        for plugin in &list.plugins {
            let speak = self.version_for(plugin, version);
            if !speak.has_check() {
                continue;
            }
            let stdin = request(list, plugin, speak, rt, Some(&cached), Command::Check)?;
            self.run(plugin, self.env(Command::Check, rt), &stdin)?;
        }
        Ok(())
    }

    /// GC: every plugin is told which attachments are still valid, and releases the rest; a
    /// failing plugin does not stop the others. Cached results of other attachments of this
    /// network are removed too.
    pub fn gc(&self, list: &NetworkConfigList, valid: &[AttachmentId]) -> Result<(), Error> {
        let version = list.version()?;
        if !version.has_gc_and_status() || list.disable_gc {
            return Ok(());
        }
        let mut failures = Vec::new();
        for plugin in &list.plugins {
            // A plugin older than GC has nothing to collect through it.
            if !self.version_for(plugin, version).has_gc_and_status() {
                continue;
            }
            let mut conf = base_request(list, plugin, version);
            let attachments = serde_json::to_value(valid).unwrap_or(Value::Array(Vec::new()));
            conf.extra
                .insert("cni.dev/valid-attachments".into(), attachments.clone());
            conf.extra.insert("cni.dev/attachments".into(), attachments);
            let stdin = serde_json::to_vec(&conf)
                .map_err(|e| Error::internal("cannot encode GC request", e.to_string()))?;
            if let Err(e) = self.run(
                plugin,
                CniEnv::new(Command::Gc, self.plugin_dirs.clone()),
                &stdin,
            ) {
                failures.push(format!("{}: {e}", plugin.plugin_type));
            }
        }
        self.gc_cache(list, valid)?;
        if failures.is_empty() {
            Ok(())
        } else {
            Err(Error::internal(
                format!(
                    "GC failed for {} plugin(s) of {}",
                    failures.len(),
                    list.name
                ),
                failures.join("; "),
            ))
        }
    }

    /// STATUS: the network is ready when every plugin says so.
    pub fn status(&self, list: &NetworkConfigList) -> Result<(), Error> {
        let version = list.version()?;
        if !version.has_gc_and_status() {
            return Ok(());
        }
        for plugin in &list.plugins {
            // A plugin older than STATUS cannot answer it; the others speak for the network.
            if !self.version_for(plugin, version).has_gc_and_status() {
                continue;
            }
            let stdin = serde_json::to_vec(&base_request(list, plugin, version))
                .map_err(|e| Error::internal("cannot encode STATUS request", e.to_string()))?;
            self.run(
                plugin,
                CniEnv::new(Command::Status, self.plugin_dirs.clone()),
                &stdin,
            )?;
        }
        Ok(())
    }

    /// VERSION of one plugin binary.
    pub fn plugin_version(&self, plugin_type: &str) -> Result<VersionInfo, Error> {
        let binary = exec::find_in_path(plugin_type, &self.plugin_dirs)?;
        let out = exec::exec(
            &binary,
            &CniEnv::new(Command::Version, self.plugin_dirs.clone()),
            br#"{"cniVersion":"1.1.0"}"#,
        )?;
        serde_json::from_slice(&out.stdout)
            .map_err(|e| Error::decode(format!("cannot decode VERSION of {plugin_type}"), e))
    }

    /// The result ADD cached for this attachment, if any.
    pub fn cached_result(
        &self,
        list: &NetworkConfigList,
        rt: &RuntimeConf,
    ) -> Result<Option<CniResult>, Error> {
        match self.cached_entry(list, rt)? {
            Some(entry) => self.entry_result(list, entry.result).map(Some),
            None => Ok(None),
        }
    }

    fn cached_entry(
        &self,
        list: &NetworkConfigList,
        rt: &RuntimeConf,
    ) -> Result<Option<CacheEntry>, Error> {
        let path = self.cache_path(list, rt);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::decode(format!("corrupt cache file {}", path.display()), e))
    }

    fn entry_result(&self, list: &NetworkConfigList, result: Value) -> Result<CniResult, Error> {
        let version = list.version()?;
        CniResult::from_value(result, Some(version))
            .map(|(_, r)| r)
            .map_err(|e| Error::decode(format!("corrupt cached result of {}", list.name), e))
    }

    /// The version `plugin` is spoken to in when the list's is `list_version`. The list's, as
    /// libcni does it, except for 1.1.0 with a plugin that does not speak it (Debian's
    /// reference plugins, 1.1.1, stop at 1.0.0; so does every plugin built before CNI 1.1):
    /// that one gets the highest version below it that it names in its VERSION answer (asked
    /// once per binary), its result read in that version and carried on in the list's. Without
    /// a usable answer it gets the list's version, and its own error.
    fn version_for(&self, plugin: &PluginConf, list_version: Version) -> Version {
        if list_version < Version::V1_1_0 {
            return list_version;
        }
        let Ok(binary) = exec::find_in_path(&plugin.plugin_type, &self.plugin_dirs) else {
            return list_version;
        };
        let supported = self.supported_versions(&binary);
        match supported {
            Some(vs) if !vs.contains(&list_version) => vs
                .into_iter()
                .filter(|v| *v < list_version)
                .max()
                .unwrap_or(list_version),
            _ => list_version,
        }
    }

    /// What `binary` answers to VERSION, cached while the file is unchanged.
    fn supported_versions(&self, binary: &Path) -> Option<Vec<Version>> {
        let stamp = fs::metadata(binary)
            .map(|m| (m.modified().ok(), m.len()))
            .unwrap_or((None, 0));
        if let Ok(cache) = self.versions.lock()
            && let Some((mtime, len, vs)) = cache.get(binary)
            && (*mtime, *len) == stamp
        {
            return vs.clone();
        }
        let asked = exec::exec_with_timeout(
            binary,
            &CniEnv::new(Command::Version, self.plugin_dirs.clone()),
            br#"{"cniVersion":"1.1.0"}"#,
            self.timeout,
        )
        .ok()
        .and_then(|out| serde_json::from_slice::<VersionInfo>(&out.stdout).ok())
        .map(|info| {
            info.supported_versions
                .iter()
                .filter_map(|v| v.parse().ok())
                .collect::<Vec<Version>>()
        })
        .filter(|vs| !vs.is_empty());
        if let Ok(mut cache) = self.versions.lock() {
            cache.insert(binary.to_path_buf(), (stamp.0, stamp.1, asked.clone()));
        }
        asked
    }

    fn cache_path(&self, list: &NetworkConfigList, rt: &RuntimeConf) -> PathBuf {
        self.cache_dir
            .join("results")
            .join(format!("{}-{}-{}", list.name, rt.container_id, rt.ifname))
    }

    fn write_cache(
        &self,
        list: &NetworkConfigList,
        rt: &RuntimeConf,
        version: Version,
        result: &CniResult,
    ) -> Result<(), Error> {
        let dir = self.cache_dir.join("results");
        fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
        let entry = CacheEntry {
            kind: CACHE_KIND.into(),
            container_id: rt.container_id.clone(),
            ifname: rt.ifname.clone(),
            network_name: list.name.clone(),
            cni_args: rt.args.clone(),
            capability_args: rt.capability_args.clone(),
            config: serde_json::to_value(list).ok(),
            result: result
                .to_value(version)
                .map_err(|e| Error::internal("cannot cache result", e.to_string()))?,
        };
        let bytes = serde_json::to_vec(&entry)
            .map_err(|e| Error::internal("cannot encode cache entry", e.to_string()))?;
        // Write then rename: a crash leaves the old entry or the new one, never half of one.
        let path = self.cache_path(list, rt);
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, bytes)
            .and_then(|_| fs::rename(&tmp, &path))
            .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
    }

    fn gc_cache(&self, list: &NetworkConfigList, valid: &[AttachmentId]) -> Result<(), Error> {
        let dir = self.cache_dir.join("results");
        let Ok(entries) = fs::read_dir(&dir) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let Ok(bytes) = fs::read(entry.path()) else {
                continue;
            };
            let Ok(cached) = serde_json::from_slice::<CacheEntry>(&bytes) else {
                continue;
            };
            let still_valid = valid
                .iter()
                .any(|a| a.container_id == cached.container_id && a.ifname == cached.ifname);
            if cached.network_name == list.name && !still_valid {
                fs::remove_file(entry.path()).map_err(|e| {
                    Error::io(format!("cannot remove {}", entry.path().display()), e)
                })?;
            }
        }
        Ok(())
    }

    fn env(&self, command: Command, rt: &RuntimeConf) -> CniEnv {
        CniEnv {
            command,
            container_id: Some(rt.container_id.clone()),
            netns: (!rt.netns.as_os_str().is_empty()).then(|| rt.netns.clone()),
            ifname: Some(rt.ifname.clone()),
            args: Some(
                rt.args
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(";"),
            ),
            path: self.plugin_dirs.clone(),
        }
    }

    fn run(&self, plugin: &PluginConf, env: CniEnv, stdin: &[u8]) -> Result<Vec<u8>, Error> {
        let binary = exec::find_in_path(&plugin.plugin_type, &self.plugin_dirs)?;
        let out = exec::exec_with_timeout(&binary, &env, stdin, self.timeout)?;
        // What a plugin says on stderr belongs in the runtime's log (stderr), not lost.
        let said = String::from_utf8_lossy(&out.stderr);
        for line in said.lines().filter(|l| !l.trim().is_empty()) {
            eprintln!(
                "cni plugin {} ({}): {line}",
                plugin.plugin_type, env.command
            );
        }
        Ok(out.stdout)
    }
}

/// The request a runtime derives for one plugin of a list: `cniVersion` and `name` inserted,
/// `capabilities` removed.
fn base_request(list: &NetworkConfigList, plugin: &PluginConf, version: Version) -> PluginConf {
    PluginConf {
        cni_version: version.to_string(),
        name: list.name.clone(),
        capabilities: None,
        prev_result: None,
        ..plugin.clone()
    }
}

fn request(
    list: &NetworkConfigList,
    plugin: &PluginConf,
    version: Version,
    rt: &RuntimeConf,
    prev: Option<&CniResult>,
    command: Command,
) -> Result<Vec<u8>, Error> {
    let mut conf = base_request(list, plugin, version);
    // runtimeConfig: the capabilities this plugin asked for that the runtime has values for.
    let wanted: BTreeMap<&String, &bool> = plugin
        .capabilities
        .iter()
        .flatten()
        .filter(|(_, on)| **on)
        .collect();
    let mut runtime = conf.runtime_config.take().unwrap_or_default();
    for (key, value) in &rt.capability_args {
        if wanted.contains_key(key) {
            runtime.insert(key.clone(), value.clone());
        }
    }
    conf.runtime_config = (!runtime.is_empty()).then_some(runtime);
    if let Some(prev) = prev
        && (command != Command::Add || version.has_chaining())
    {
        conf.prev_result = Some(prev.to_value(version).map_err(|e| {
            Error::incompatible_version("cannot express prevResult", e.to_string())
        })?);
    }
    serde_json::to_vec(&conf)
        .map_err(|e| Error::internal("cannot encode plugin request", e.to_string()))
}

/// A configuration file and what loading it gave.
pub type LoadedFile = (PathBuf, Result<NetworkConfigList, Error>);

/// Loads every network configuration in `dir` (`.conflist`, `.conf`, `.json`), sorted by file
/// name as runtimes order them. A file that does not parse is reported with its name.
/// The default network of a configuration directory, as libcni's users (ocicni, the CRI
/// plugin) choose it: the first file by name that loads and has at least one plugin.
pub fn default_network(dir: &Path) -> Result<NetworkConfigList, Error> {
    let mut why = Vec::new();
    for (path, loaded) in load_dir(dir)? {
        match loaded {
            Ok(list) if !list.plugins.is_empty() => return Ok(list),
            Ok(_) => why.push(format!("{}: no plugins", path.display())),
            Err(e) => why.push(format!("{}: {e}", path.display())),
        }
    }
    Err(Error::invalid_config(
        format!("no valid network configuration in {}", dir.display()),
        why.join("; "),
    ))
}

pub fn load_dir(dir: &Path) -> Result<Vec<LoadedFile>, Error> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| Error::io(format!("cannot read {}", dir.display()), e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conflist" | "conf" | "json")
                )
        })
        .collect();
    files.sort();
    Ok(files
        .into_iter()
        .map(|p| (p.clone(), load_file(&p)))
        .collect())
}

/// Loads one configuration file. A `.conflist` may take further plugins from a directory named
/// after the network next to it, unless `loadOnlyInlinedPlugins` is set.
pub fn load_file(path: &Path) -> Result<NetworkConfigList, Error> {
    let bytes =
        fs::read(path).map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    let is_list = path.extension().and_then(|e| e.to_str()) == Some("conflist");
    let mut list = if is_list {
        NetworkConfigList::from_slice(&bytes)
    } else {
        NetworkConfigList::from_single(&bytes)
    }
    .map_err(|e| Error {
        details: format!("{}: {}", path.display(), e.details),
        ..e
    })?;
    if is_list
        && !list.load_only_inlined_plugins
        && let Some(parent) = path.parent()
    {
        let extra_dir = parent.join(&list.name);
        if let Ok(entries) = fs::read_dir(&extra_dir) {
            let mut extra: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("conf"))
                .collect();
            extra.sort();
            for p in extra {
                let bytes = fs::read(&p)
                    .map_err(|e| Error::io(format!("cannot read {}", p.display()), e))?;
                let plugin: PluginConf = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::decode(format!("cannot decode {}", p.display()), e))?;
                list.plugins.push(plugin);
            }
        }
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A scripted plugin: appends "<name> <COMMAND>" and its stdin to a log, answers ADD with a
    /// result that adds one interface named after itself to prevResult's.
    fn plugin(dir: &Path, name: &str, fail_add: bool) {
        let fail = if fail_add {
            "if [ $CNI_COMMAND = ADD ]; then echo '{\"code\":11,\"msg\":\"busy\"}'; exit 1; fi\n"
        } else {
            ""
        };
        let script = format!(
            "#!/bin/sh\nin=$(cat)\necho \"{name} $CNI_COMMAND $in\" >> {log}\n{fail}\
             if [ $CNI_COMMAND = ADD ]; then echo '{{\"cniVersion\":\"1.0.0\",\"interfaces\":[{{\"name\":\"{name}\"}}],\"ips\":[{{\"address\":\"10.0.0.2/24\"}}]}}'; fi\n",
            log = dir.join("log").display()
        );
        let p = dir.join(name);
        std::fs::write(&p, script).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// As [`plugin`], answering VERSION with `versions` (before 1.1.0: no GC, no STATUS).
    fn plugin_speaking(dir: &Path, name: &str, versions: &[&str]) {
        let answer = serde_json::json!({"cniVersion": "1.0.0", "supportedVersions": versions});
        let result = serde_json::json!({"cniVersion": "1.0.0", "interfaces": [{"name": name}],
            "ips": [{"address": "10.0.0.2/24"}]});
        let script = format!(
            "#!/bin/sh\nin=$(cat)\necho \"{name} $CNI_COMMAND $in\" >> {log}\n\
             if [ $CNI_COMMAND = VERSION ]; then echo '{answer}'; fi\n\
             if [ $CNI_COMMAND = ADD ]; then echo '{result}'; fi\n",
            log = dir.join("log").display()
        );
        let p = dir.join(name);
        std::fs::write(&p, script).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// The plugin runs logged, VERSION questions left out.
    fn log(dir: &Path) -> Vec<String> {
        all_log(dir)
            .into_iter()
            .filter(|l| l.split(' ').nth(1) != Some("VERSION"))
            .collect()
    }

    fn all_log(dir: &Path) -> Vec<String> {
        std::fs::read_to_string(dir.join("log"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    fn request_of(line: &str) -> Value {
        let json = line.splitn(3, ' ').nth(2).unwrap();
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_plugin_older_than_1_1_0_is_spoken_to_in_its_highest_and_left_out_of_status_and_gc() {
        let dir = tempfile::tempdir().unwrap();
        plugin_speaking(dir.path(), "new", &["0.4.0", "1.0.0", "1.1.0"]);
        plugin_speaking(dir.path(), "old", &["0.3.1", "0.4.0", "1.0.0"]);
        let cni = CniConfig::new(vec![dir.path().to_path_buf()], dir.path().join("cache"));
        let l = list(r#"[{"type":"new"},{"type":"old","capabilities":{"portMappings":true}}]"#);
        let result = cni.add(&l, &rt()).unwrap();
        assert_eq!(result.interfaces[0].name, "old");
        cni.status(&l).unwrap();
        cni.gc(&l, &[]).unwrap();
        let other = RuntimeConf {
            container_id: "second".into(),
            ..rt()
        };
        cni.add(&l, &other).unwrap();
        let lines = log(dir.path());
        let of = |who: &str, cmd: &str| -> Vec<Value> {
            lines
                .iter()
                .filter(|l| l.starts_with(&format!("{who} {cmd} ")))
                .map(|l| request_of(l))
                .collect()
        };
        assert_eq!(of("new", "ADD")[0]["cniVersion"], "1.1.0");
        let old_add = &of("old", "ADD")[0];
        assert_eq!(old_add["cniVersion"], "1.0.0", "its highest below 1.1.0");
        assert_eq!(
            old_add["prevResult"]["cniVersion"], "1.0.0",
            "prevResult in the plugin's version"
        );
        assert_eq!(
            old_add["runtimeConfig"]["portMappings"][0]["hostPort"], 8080,
            "{old_add}"
        );
        assert_eq!(of("new", "STATUS").len(), 1);
        assert!(
            of("old", "STATUS").is_empty(),
            "no STATUS to a 1.0.0 plugin"
        );
        assert_eq!(of("new", "GC").len(), 1);
        assert!(of("old", "GC").is_empty(), "no GC to a 1.0.0 plugin");
        let asked = all_log(dir.path())
            .iter()
            .filter(|l| l.starts_with("old VERSION"))
            .count();
        assert_eq!(asked, 1, "VERSION asked once per binary");
        // The negative control: a plugin that does not answer VERSION gets the list's version.
        plugin(dir.path(), "quiet", false);
        let q = list(r#"[{"type":"quiet"}]"#);
        cni.add(&q, &rt()).unwrap();
        let quiet = log(dir.path())
            .into_iter()
            .find(|l| l.starts_with("quiet ADD "))
            .unwrap();
        assert_eq!(request_of(&quiet)["cniVersion"], "1.1.0");
    }

    #[test]
    fn del_without_capability_values_uses_those_add_cached() {
        let dir = tempfile::tempdir().unwrap();
        plugin(dir.path(), "pm", false);
        let cni = CniConfig::new(vec![dir.path().to_path_buf()], dir.path().join("cache"));
        let l = list(r#"[{"type":"pm","capabilities":{"portMappings":true}}]"#);
        cni.add(&l, &rt()).unwrap();
        let bare = RuntimeConf {
            capability_args: Map::new(),
            ..rt()
        };
        cni.del(&l, &bare).unwrap();
        let del = log(dir.path())
            .into_iter()
            .find(|l| l.starts_with("pm DEL "))
            .unwrap();
        assert_eq!(
            request_of(&del)["runtimeConfig"]["portMappings"],
            serde_json::json!([{"hostPort": 8080, "containerPort": 80}])
        );
        // Without a cached entry there is nothing to fall back on: DEL still runs, bare.
        cni.del(&l, &bare).unwrap();
        let last = log(dir.path()).pop().unwrap();
        assert!(request_of(&last).get("runtimeConfig").is_none(), "{last}");
    }

    fn list(plugins: &str) -> NetworkConfigList {
        NetworkConfigList::from_slice(format!(r#"{{"cniVersion":"1.0.0","cniVersions":["1.0.0","1.1.0"],"name":"net","plugins":{plugins}}}"#).as_bytes()).unwrap()
    }

    fn rt() -> RuntimeConf {
        let mut caps = Map::new();
        caps.insert(
            "portMappings".into(),
            serde_json::json!([{"hostPort": 8080, "containerPort": 80}]),
        );
        caps.insert("mac".into(), serde_json::json!("c2:11:22:33:44:55"));
        RuntimeConf {
            container_id: "ctr".into(),
            netns: "/run/netns/x".into(),
            ifname: "eth0".into(),
            args: vec![("IgnoreUnknown".into(), "1".into())],
            capability_args: caps,
        }
    }

    #[test]
    fn add_chains_prev_result_and_caches_the_final_result() {
        let dir = tempfile::tempdir().unwrap();
        plugin(dir.path(), "first", false);
        plugin(dir.path(), "second", false);
        let cni = CniConfig::new(vec![dir.path().to_path_buf()], dir.path().join("cache"));
        let l = list(r#"[{"type":"first","capabilities":{"mac":true}},{"type":"second"}]"#);
        let result = cni.add(&l, &rt()).unwrap();
        assert_eq!(result.interfaces[0].name, "second");
        let lines = log(dir.path());
        assert!(lines[0].starts_with("first ADD "));
        let first_in: Value =
            serde_json::from_str(lines[0].trim_start_matches("first ADD ")).unwrap();
        assert_eq!(
            first_in["cniVersion"], "1.1.0",
            "the highest of cniVersions"
        );
        assert_eq!(first_in["name"], "net");
        assert_eq!(
            first_in["runtimeConfig"],
            serde_json::json!({"mac":"c2:11:22:33:44:55"}),
            "only the capabilities asked for"
        );
        assert!(first_in.get("capabilities").is_none());
        assert!(first_in.get("prevResult").is_none());
        let second_in: Value =
            serde_json::from_str(lines[1].trim_start_matches("second ADD ")).unwrap();
        assert_eq!(second_in["prevResult"]["interfaces"][0]["name"], "first");
        assert_eq!(cni.cached_result(&l, &rt()).unwrap(), Some(result));
    }

    #[test]
    fn cached_attachments_list_what_add_cached_with_its_config() {
        let dir = tempfile::tempdir().unwrap();
        plugin(dir.path(), "first", false);
        let cni = CniConfig::new(vec![dir.path().to_path_buf()], dir.path().join("cache"))
            .with_timeout(std::time::Duration::from_secs(30));
        let l = list(r#"[{"type":"first"}]"#);
        cni.add(&l, &rt()).unwrap();
        let listed = cni.cached_attachments();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (listed[0].container_id.as_str(), listed[0].ifname.as_str()),
            ("ctr", "eth0")
        );
        assert_eq!(listed[0].network_name, "net");
        assert_eq!(
            listed[0].config.as_ref().map(|c| c["name"].clone()),
            Some(Value::from("net"))
        );
        cni.del(&l, &rt()).unwrap();
        assert!(cni.cached_attachments().is_empty());
    }

    #[test]
    fn the_default_network_is_the_first_valid_file_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("00-broken.conflist"), "{not json").unwrap();
        std::fs::write(
            dir.path().join("20-b.conflist"),
            r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"x"}]}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("10-a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"x"}]}"#,
        )
        .unwrap();
        assert_eq!(default_network(dir.path()).unwrap().name, "a");
        let empty = tempfile::tempdir().unwrap();
        assert!(default_network(empty.path()).is_err());
    }

    #[test]
    fn del_runs_in_reverse_with_the_cached_result_and_forgets_it() {
        let dir = tempfile::tempdir().unwrap();
        plugin(dir.path(), "first", false);
        plugin(dir.path(), "second", false);
        let cni = CniConfig::new(vec![dir.path().to_path_buf()], dir.path().join("cache"));
        let l = list(r#"[{"type":"first"},{"type":"second"}]"#);
        cni.add(&l, &rt()).unwrap();
        cni.check(&l, &rt()).unwrap();
        cni.del(&l, &rt()).unwrap();
        let lines = log(dir.path());
        let order: Vec<&str> = lines
            .iter()
            .map(|l| l.split(' ').take(2).last().unwrap())
            .collect();
        assert_eq!(order, ["ADD", "ADD", "CHECK", "CHECK", "DEL", "DEL"]);
        assert!(lines[4].starts_with("second DEL") && lines[5].starts_with("first DEL"));
        assert!(lines[4].contains("\"prevResult\""));
        assert_eq!(cni.cached_result(&l, &rt()).unwrap(), None);
        cni.del(&l, &rt()).unwrap();
    }

    #[test]
    fn a_failed_add_is_deleted_again() {
        let dir = tempfile::tempdir().unwrap();
        plugin(dir.path(), "first", false);
        plugin(dir.path(), "broken", true);
        let cni = CniConfig::new(vec![dir.path().to_path_buf()], dir.path().join("cache"));
        let l = list(r#"[{"type":"first"},{"type":"broken"}]"#);
        let err = cni.add(&l, &rt()).unwrap_err();
        assert_eq!(err.code.get(), 11);
        let order: Vec<String> = log(dir.path())
            .iter()
            .map(|l| l.split(' ').take(2).collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(
            order,
            ["first ADD", "broken ADD", "broken DEL", "first DEL"]
        );
        assert_eq!(cni.cached_result(&l, &rt()).unwrap(), None);
    }

    #[test]
    fn gc_sends_both_attachment_keys_and_prunes_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        plugin(dir.path(), "first", false);
        let cni = CniConfig::new(vec![dir.path().to_path_buf()], dir.path().join("cache"));
        let l = list(r#"[{"type":"first"}]"#);
        cni.add(&l, &rt()).unwrap();
        let other = RuntimeConf {
            container_id: "keep".into(),
            ..rt()
        };
        cni.add(&l, &other).unwrap();
        let valid = [AttachmentId {
            container_id: "keep".into(),
            ifname: "eth0".into(),
        }];
        cni.gc(&l, &valid).unwrap();
        let gc_line = log(dir.path())
            .into_iter()
            .find(|l| l.starts_with("first GC"))
            .unwrap();
        let gc_in: Value = serde_json::from_str(gc_line.trim_start_matches("first GC ")).unwrap();
        assert_eq!(
            gc_in["cni.dev/valid-attachments"],
            serde_json::json!([{"containerID":"keep","ifname":"eth0"}])
        );
        assert_eq!(
            gc_in["cni.dev/attachments"],
            gc_in["cni.dev/valid-attachments"]
        );
        assert_eq!(cni.cached_result(&l, &rt()).unwrap(), None);
        assert!(cni.cached_result(&l, &other).unwrap().is_some());
    }

    #[test]
    fn check_is_refused_before_0_4_0() {
        let dir = tempfile::tempdir().unwrap();
        let cni = CniConfig::new(vec![dir.path().to_path_buf()], dir.path().join("cache"));
        let l = NetworkConfigList::from_slice(
            br#"{"cniVersion":"0.3.1","name":"net","plugins":[{"type":"x"}]}"#,
        )
        .unwrap();
        assert_eq!(cni.check(&l, &rt()).unwrap_err().code.get(), 1);
    }

    #[test]
    fn load_dir_reads_lists_and_single_configs_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("20-b.conf"),
            r#"{"cniVersion":"0.3.1","name":"b","type":"bridge"}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("10-a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"ptp"}]}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("30-c.conflist"), "{broken").unwrap();
        std::fs::write(dir.path().join("README"), "not a config").unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::write(
            dir.path().join("a").join("50-extra.conf"),
            r#"{"type":"portmap"}"#,
        )
        .unwrap();
        let loaded = load_dir(dir.path()).unwrap();
        let names: Vec<String> = loaded
            .iter()
            .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["10-a.conflist", "20-b.conf", "30-c.conflist"]);
        let a = loaded[0].1.as_ref().unwrap();
        assert_eq!(
            a.plugins
                .iter()
                .map(|p| p.plugin_type.as_str())
                .collect::<Vec<_>>(),
            ["ptp", "portmap"]
        );
        assert_eq!(loaded[1].1.as_ref().unwrap().name, "b");
        let err = loaded[2].1.as_ref().unwrap_err();
        assert_eq!(err.code.get(), 6);
        assert!(err.details.contains("30-c.conflist"));
    }
}
