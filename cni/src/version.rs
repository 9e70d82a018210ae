//! CNI specification versions and what each one allows.
//!
//! Deployed configurations still say 0.3.1, runtimes speak 1.0.0 and 1.1.0: a plugin of ours
//! answers every released version and converts its result to the one the configuration names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A released version of the CNI specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V0_1_0,
    V0_2_0,
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

/// The shape a result takes on the wire; several versions share one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResultFormat {
    /// 0.1.0 and 0.2.0: `ip4`, `ip6`, `dns`.
    Legacy,
    /// 0.3.0, 0.3.1 and 0.4.0: `interfaces`, `ips` with `version`, `routes`, `dns`.
    V04,
    /// 1.0.0: as 0.4.0 without `ips[].version`.
    V10,
    /// 1.1.0: adds interface `mtu`/`socketPath`/`pciID` and route `mtu`/`advmss`/`priority`/
    /// `table`/`scope`.
    V11,
}

impl Version {
    /// Every version, oldest first.
    pub const ALL: [Version; 7] = [
        Version::V0_1_0,
        Version::V0_2_0,
        Version::V0_3_0,
        Version::V0_3_1,
        Version::V0_4_0,
        Version::V1_0_0,
        Version::V1_1_0,
    ];

    /// The newest version, the one we speak when nothing else is asked for.
    pub const LATEST: Version = Version::V1_1_0;

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_1_0 => "0.1.0",
            Version::V0_2_0 => "0.2.0",
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    /// CHECK arrived in 0.4.0.
    pub fn has_check(self) -> bool {
        self >= Version::V0_4_0
    }

    /// GC and STATUS arrived in 1.1.0.
    pub fn has_gc_and_status(self) -> bool {
        self >= Version::V1_1_0
    }

    /// DEL carries `prevResult` from 0.4.0 on.
    pub fn has_prev_result_on_del(self) -> bool {
        self >= Version::V0_4_0
    }

    /// Chaining (`prevResult` on ADD) arrived with the rich result of 0.3.0.
    pub fn has_chaining(self) -> bool {
        self >= Version::V0_3_0
    }

    /// Results list `interfaces` (0.3.0 and later); older ones only carry addresses.
    pub fn has_interfaces(self) -> bool {
        self >= Version::V0_3_0
    }

    pub(crate) fn result_format(self) -> ResultFormat {
        match self {
            Version::V0_1_0 | Version::V0_2_0 => ResultFormat::Legacy,
            Version::V0_3_0 | Version::V0_3_1 | Version::V0_4_0 => ResultFormat::V04,
            Version::V1_0_0 => ResultFormat::V10,
            Version::V1_1_0 => ResultFormat::V11,
        }
    }

    /// The highest version in `offered` that we know, as a runtime picks from `cniVersions`.
    pub fn highest_known<'a>(offered: impl IntoIterator<Item = &'a str>) -> Option<Version> {
        offered.into_iter().filter_map(|v| v.parse().ok()).max()
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A version string that names no released specification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown CNI version {0:?}")]
pub struct UnknownVersion(pub String);

impl FromStr for Version {
    type Err = UnknownVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Version::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownVersion(s.to_string()))
    }
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The answer to `CNI_COMMAND=VERSION`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(rename = "supportedVersions")]
    pub supported_versions: Vec<String>,
}

impl VersionInfo {
    pub fn new(answer_in: Version, supported: &[Version]) -> Self {
        VersionInfo {
            cni_version: answer_in.to_string(),
            supported_versions: supported.iter().map(|v| v.to_string()).collect(),
        }
    }

    /// Whether the plugin that gave this answer supports `v`.
    pub fn supports(&self, v: Version) -> bool {
        self.supported_versions.iter().any(|s| s == v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_released_version_and_nothing_else() {
        for v in Version::ALL {
            assert_eq!(v.as_str().parse::<Version>(), Ok(v));
        }
        assert!("1.2.0".parse::<Version>().is_err());
        assert!("".parse::<Version>().is_err());
        assert!("0.3".parse::<Version>().is_err());
    }

    #[test]
    fn versions_order_by_release() {
        assert!(Version::V0_3_1 < Version::V0_4_0);
        assert!(Version::V1_0_0 < Version::V1_1_0);
        assert_eq!(Version::ALL.iter().max(), Some(&Version::LATEST));
    }

    #[test]
    fn runtime_picks_the_highest_known_version() {
        let offered = ["0.3.1", "1.0.0", "9.9.9", "0.4.0"];
        assert_eq!(Version::highest_known(offered), Some(Version::V1_0_0));
        assert_eq!(Version::highest_known(["7.0.0"]), None);
    }

    #[test]
    fn operations_appear_in_the_versions_that_define_them() {
        assert!(!Version::V0_3_1.has_check());
        assert!(Version::V0_4_0.has_check());
        assert!(!Version::V1_0_0.has_gc_and_status());
        assert!(Version::V1_1_0.has_gc_and_status());
    }
}
