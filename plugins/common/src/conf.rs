//! The configuration keys every Trellis plugin reads beside `ipam`:
//!
//! - `stateDir`: where the node's agent writes the readiness file (each plugin has its default);
//! - `mtu`: overrides the MTU the agent computed (68–65535);
//! - `policy`: the ADD gate (`{"socket": …, "timeoutMs": …}`, see [`crate::policy`]); absent,
//!   ADD does not wait for policyd.
//!
//! Keys a plugin does not know are ignored, as the CNI specification asks of plugins.

use std::path::PathBuf;

use serde::Deserialize;
use trellis_cni::Error;
use trellis_cni::skel::NetConf;

use crate::policy::{PolicyGate, RawPolicy};

/// The common keys, read and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginConf {
    pub state_dir: PathBuf,
    pub mtu: Option<u32>,
    /// None: policy is off on this node, ADD does not wait.
    pub policy: Option<PolicyGate>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    state_dir: Option<PathBuf>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    policy: Option<RawPolicy>,
}

impl PluginConf {
    /// Reads the keys; `default_state_dir` when `stateDir` is absent. A bad value is code 7.
    pub fn read(conf: &NetConf, default_state_dir: &str) -> Result<PluginConf, Error> {
        let raw: Raw = conf.parse()?;
        if let Some(mtu) = raw.mtu
            && !(68..=65535).contains(&mtu)
        {
            return Err(Error::invalid_config(
                "invalid mtu",
                format!("{mtu} is outside 68..65535"),
            ));
        }
        Ok(PluginConf {
            state_dir: raw
                .state_dir
                .unwrap_or_else(|| PathBuf::from(default_state_dir)),
            mtu: raw.mtu,
            policy: raw.policy.map(PolicyGate::from_raw).transpose()?,
        })
    }

    /// The MTU to use: the configured one, else the agent's.
    pub fn mtu_or(&self, agent: u32) -> u32 {
        self.mtu.unwrap_or(agent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_cni::Version;

    fn conf(v: serde_json::Value) -> NetConf {
        NetConf {
            version: Version::V1_0_0,
            config: serde_json::from_value(v.clone()).unwrap(),
            raw: v.to_string().into_bytes(),
            path: Vec::new(),
        }
    }

    #[test]
    fn defaults_apply_and_a_bad_mtu_is_an_invalid_config() {
        let c = PluginConf::read(
            &conf(serde_json::json!({"cniVersion": "1.0.0", "name": "n", "type": "t"})),
            "/run/x",
        )
        .unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/run/x"));
        assert_eq!(c.mtu_or(1450), 1450);
        let c = PluginConf::read(
            &conf(
                serde_json::json!({"cniVersion": "1.0.0", "name": "n", "type": "t",
                "stateDir": "/run/y", "mtu": 9000, "somethingElse": true}),
            ),
            "/run/x",
        )
        .unwrap();
        assert_eq!((c.state_dir, c.mtu), (PathBuf::from("/run/y"), Some(9000)));
        assert_eq!(c.policy, None, "no policy section: ADD does not wait");
        let c = PluginConf::read(
            &conf(
                serde_json::json!({"cniVersion": "1.0.0", "name": "n", "type": "t",
                "policy": {"socket": "/run/p.sock", "timeoutMs": 700}}),
            ),
            "/run/x",
        )
        .unwrap();
        assert_eq!(
            c.policy,
            Some(PolicyGate {
                socket: PathBuf::from("/run/p.sock"),
                timeout: std::time::Duration::from_millis(700)
            })
        );
        for bad in [0, 67, 70000] {
            let e = PluginConf::read(
                &conf(serde_json::json!({"cniVersion": "1.0.0", "name": "n", "type": "t", "mtu": bad})),
                "/run/x",
            )
            .unwrap_err();
            assert_eq!(e.code, trellis_cni::Code::INVALID_NETWORK_CONFIG, "{bad}");
        }
    }
}
