//! Network configuration: the list a runtime loads (`.conflist`), the legacy single-plugin file
//! (`.conf`), and the per-plugin object a plugin reads on stdin.
//!
//! Fields we do not know are kept (`extra`) and written back unchanged: a runtime must pass a
//! plugin's own keys through, and a plugin may hand its whole config to a delegate.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::result::Dns;
use crate::{Error, Version};

/// A network configuration list (1.1.0, with every older field).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkConfigList {
    /// The version of the list itself; with `cniVersions` present, a runtime uses the highest
    /// of those it supports instead.
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(rename = "cniVersions", default, skip_serializing_if = "Vec::is_empty")]
    pub cni_versions: Vec<String>,
    pub name: String,
    #[serde(rename = "disableCheck", default, skip_serializing_if = "is_false")]
    pub disable_check: bool,
    #[serde(rename = "disableGC", default, skip_serializing_if = "is_false")]
    pub disable_gc: bool,
    #[serde(
        rename = "loadOnlyInlinedPlugins",
        default,
        skip_serializing_if = "is_false"
    )]
    pub load_only_inlined_plugins: bool,
    pub plugins: Vec<PluginConf>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One plugin's configuration. In a list it has no `cniVersion` or `name`; in the request a
/// plugin reads on stdin, the runtime has filled both in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PluginConf {
    #[serde(
        rename = "cniVersion",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The plugin binary's name in CNI_PATH.
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// Which runtime capabilities this plugin wants (list only; never sent to the plugin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<BTreeMap<String, bool>>,
    #[serde(
        rename = "runtimeConfig",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub runtime_config: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<IpamConf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    #[serde(rename = "ipMasq", default, skip_serializing_if = "Option::is_none")]
    pub ip_masq: Option<bool>,
    #[serde(
        rename = "prevResult",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub prev_result: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The `ipam` section: a plugin type and that plugin's own keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IpamConf {
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl PluginConf {
    /// The configuration's version: an absent `cniVersion` means 0.1.0, as libcni reads it.
    pub fn version(&self) -> Result<Version, Error> {
        if self.cni_version.is_empty() {
            return Ok(Version::V0_1_0);
        }
        self.cni_version.parse().map_err(|_| {
            Error::incompatible_version(
                "incompatible CNI versions",
                format!(
                    "config is {:?}, which is not a known CNI version",
                    self.cni_version
                ),
            )
        })
    }

    /// A value from `runtimeConfig`, if the runtime gave one.
    pub fn runtime(&self, key: &str) -> Option<&Value> {
        self.runtime_config.as_ref()?.get(key)
    }

    /// `args.cni.<key>`, the convention for per-attachment arguments.
    pub fn cni_arg(&self, key: &str) -> Option<&Value> {
        self.args.as_ref()?.get("cni")?.get(key)
    }
}

impl NetworkConfigList {
    /// Parses a `.conflist` file's text.
    pub fn from_slice(bytes: &[u8]) -> Result<NetworkConfigList, Error> {
        let list: NetworkConfigList = serde_json::from_slice(bytes)
            .map_err(|e| Error::decode("cannot decode network configuration list", e))?;
        list.validate()?;
        Ok(list)
    }

    /// Wraps a legacy single-plugin configuration (`.conf`) as a list of one.
    pub fn from_single(bytes: &[u8]) -> Result<NetworkConfigList, Error> {
        let mut plugin: PluginConf = serde_json::from_slice(bytes)
            .map_err(|e| Error::decode("cannot decode network configuration", e))?;
        let list = NetworkConfigList {
            cni_version: std::mem::take(&mut plugin.cni_version),
            cni_versions: Vec::new(),
            name: std::mem::take(&mut plugin.name),
            disable_check: false,
            disable_gc: false,
            load_only_inlined_plugins: false,
            plugins: vec![plugin],
            extra: Map::new(),
        };
        list.validate()?;
        Ok(list)
    }

    /// The version a runtime uses with this list: the highest supported of `cniVersions`, else
    /// `cniVersion`.
    pub fn version(&self) -> Result<Version, Error> {
        if !self.cni_versions.is_empty() {
            return Version::highest_known(self.cni_versions.iter().map(String::as_str))
                .ok_or_else(|| {
                    Error::incompatible_version(
                        "incompatible CNI versions",
                        format!(
                            "list {:?} offers {:?}, none of which we support",
                            self.name, self.cni_versions
                        ),
                    )
                });
        }
        PluginConf {
            cni_version: self.cni_version.clone(),
            ..Default::default()
        }
        .version()
    }

    fn validate(&self) -> Result<(), Error> {
        validate_network_name(&self.name)?;
        if self.plugins.is_empty() {
            return Err(Error::invalid_config(
                "network configuration list has no plugins",
                self.name.clone(),
            ));
        }
        for (n, p) in self.plugins.iter().enumerate() {
            if p.plugin_type.is_empty() || p.plugin_type.contains('/') {
                return Err(Error::invalid_config(
                    "plugin type must be a plain file name",
                    format!("plugins[{n}].type = {:?}", p.plugin_type),
                ));
            }
        }
        self.version().map(|_| ())
    }
}

/// A network name: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$` (it becomes part of file names).
pub fn validate_network_name(name: &str) -> Result<(), Error> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_config(
            "invalid network name",
            format!("{name:?} must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SPEC_EXAMPLE: &str = r#"{
      "cniVersion": "1.1.0",
      "cniVersions": ["0.3.1", "0.4.0", "1.0.0", "1.1.0"],
      "name": "dbnet",
      "disableGC": true,
      "plugins": [
        {"type": "bridge", "bridge": "cni0", "keyA": ["some more", "plugin specific", "configuration"],
         "ipam": {"type": "host-local", "subnet": "10.1.0.0/16", "gateway": "10.1.0.1",
                  "routes": [{"dst": "0.0.0.0/0"}]},
         "dns": {"nameservers": ["10.1.0.1"]}},
        {"type": "tuning", "capabilities": {"mac": true}, "sysctl": {"net.core.somaxconn": "500"}},
        {"type": "portmap", "capabilities": {"portMappings": true}}
      ]
    }"#;

    #[test]
    fn reads_the_spec_example_and_keeps_plugin_keys() {
        let list = NetworkConfigList::from_slice(SPEC_EXAMPLE.as_bytes()).unwrap();
        assert_eq!(list.name, "dbnet");
        assert!(list.disable_gc);
        assert_eq!(list.version().unwrap(), Version::V1_1_0);
        assert_eq!(list.plugins[0].extra["bridge"], "cni0");
        assert_eq!(
            list.plugins[0].ipam.as_ref().unwrap().plugin_type,
            "host-local"
        );
        assert_eq!(
            list.plugins[0].ipam.as_ref().unwrap().extra["subnet"],
            "10.1.0.0/16"
        );
        assert!(list.plugins[1].capabilities.as_ref().unwrap()["mac"]);
        let again = serde_json::to_value(&list).unwrap();
        let original: Value = serde_json::from_str(SPEC_EXAMPLE).unwrap();
        assert_eq!(again, original, "unknown fields survive a round trip");
    }

    #[test]
    fn cni_versions_wins_over_cni_version() {
        let list = NetworkConfigList::from_slice(
            br#"{"cniVersion":"0.3.1","cniVersions":["0.3.1","1.0.0","2.0.0"],"name":"n","plugins":[{"type":"x"}]}"#,
        )
        .unwrap();
        assert_eq!(list.version().unwrap(), Version::V1_0_0);
    }

    #[test]
    fn legacy_single_config_becomes_a_list_of_one() {
        let list = NetworkConfigList::from_single(
            br#"{"cniVersion":"0.3.1","name":"mynet","type":"bridge","bridge":"cni0","ipam":{"type":"host-local"}}"#,
        )
        .unwrap();
        assert_eq!(list.plugins.len(), 1);
        assert_eq!(list.cni_version, "0.3.1");
        assert!(list.plugins[0].cni_version.is_empty());
        assert_eq!(list.plugins[0].extra["bridge"], "cni0");
    }

    #[test]
    fn invalid_lists_are_refused_with_the_right_code() {
        let cases: &[(&[u8], u32)] = &[
            (b"{", 6),
            (br#"{"cniVersion":"1.0.0","name":"n"}"#, 6),
            (br#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#, 7),
            (
                br#"{"cniVersion":"1.0.0","name":"-n","plugins":[{"type":"x"}]}"#,
                7,
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../x"}]}"#,
                7,
            ),
            (
                br#"{"cniVersion":"7.0.0","name":"n","plugins":[{"type":"x"}]}"#,
                1,
            ),
        ];
        for (text, code) in cases {
            let err = NetworkConfigList::from_slice(text).unwrap_err();
            assert_eq!(err.code.get(), *code, "{}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn plugin_reads_runtime_config_and_args() {
        let p: PluginConf = serde_json::from_value(json!({
            "cniVersion":"1.0.0","name":"n","type":"x",
            "runtimeConfig":{"ips":["10.0.0.5/24"]},
            "args":{"cni":{"ips":["10.0.0.6/24"]}}
        }))
        .unwrap();
        assert_eq!(p.runtime("ips").unwrap()[0], "10.0.0.5/24");
        assert_eq!(p.cni_arg("ips").unwrap()[0], "10.0.0.6/24");
        assert_eq!(p.version().unwrap(), Version::V1_0_0);
        let no_version = PluginConf {
            plugin_type: "x".into(),
            ..Default::default()
        };
        assert_eq!(no_version.version().unwrap(), Version::V0_1_0);
    }
}
