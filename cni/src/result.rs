//! The result of ADD in every format from 0.1.0 to 1.1.0, and conversion between them.
//!
//! [`CniResult`] is the 1.1.0 model, a superset of every older one. Reading a result of any
//! version yields it; printing takes the version to print in and drops what that version cannot
//! say, the way libcni converts. [`CniResult::expressible_in`] tells when nothing is dropped.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Version;
use crate::version::ResultFormat;

/// The result of ADD (and the `prevResult` of a chain).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

/// An interface the plugin created or touched. An empty `sandbox` means the host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// 1.1.0
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
    /// 1.1.0
    #[serde(
        rename = "socketPath",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub socket_path: String,
    /// 1.1.0
    #[serde(rename = "pciID", default, skip_serializing_if = "String::is_empty")]
    pub pci_id: String,
}

/// An address given to an interface. `address` keeps the host bits: `10.244.1.5/24`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// Index into `interfaces`; absent in IPAM results.
    pub interface: Option<usize>,
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
}

/// A route. Everything but `dst` and `gw` is 1.1.0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    /// 0 universe, 253 link, 254 host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl Route {
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> Self {
        Route {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }

    fn has_v11_fields(&self) -> bool {
        self.mtu.is_some()
            || self.advmss.is_some()
            || self.priority.is_some()
            || self.table.is_some()
            || self.scope.is_some()
    }

    fn without_v11_fields(&self) -> Route {
        Route::new(self.dst, self.gw)
    }
}

/// DNS settings the plugin suggests to the runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        *self == Dns::default()
    }
}

/// Why a result could not be read or printed.
#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    #[error("result has no cniVersion and none was given")]
    MissingVersion,
    #[error(transparent)]
    UnknownVersion(#[from] crate::version::UnknownVersion),
    #[error("result does not decode as CNI {version}: {source}")]
    Decode {
        version: Version,
        #[source]
        source: serde_json::Error,
    },
    #[error("ips[{ip}].interface is {index} but the result lists {count} interfaces")]
    InterfaceIndex {
        ip: usize,
        index: usize,
        count: usize,
    },
    #[error(
        "cannot convert the result to CNI {0}: it has no IP address, and that version needs one"
    )]
    NoAddress(Version),
}

impl CniResult {
    /// Reads a result of any version. `default` is the version of the configuration it came
    /// with, used when the result names none (as prevResults before 1.0.0 may).
    pub fn from_value(
        value: Value,
        default: Option<Version>,
    ) -> Result<(Version, CniResult), ResultError> {
        let version = match value.get("cniVersion").and_then(Value::as_str) {
            Some(s) if !s.is_empty() => s.parse::<Version>()?,
            _ => default.ok_or(ResultError::MissingVersion)?,
        };
        let decode = |source| ResultError::Decode { version, source };
        let result = match version.result_format() {
            ResultFormat::Legacy => {
                let wire: LegacyWire = serde_json::from_value(value).map_err(decode)?;
                wire.into_result()
            }
            format => {
                let wire: Wire = serde_json::from_value(value).map_err(decode)?;
                wire.into_result(format)
            }
        };
        result.validate()?;
        Ok((version, result))
    }

    /// Reads a result from bytes (a plugin's stdout).
    pub fn from_slice(
        bytes: &[u8],
        default: Option<Version>,
    ) -> Result<(Version, CniResult), ResultError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|source| ResultError::Decode {
            version: default.unwrap_or(Version::LATEST),
            source,
        })?;
        CniResult::from_value(value, default)
    }

    /// The result as `version` prints it. What that version cannot say is dropped, as libcni
    /// does; 0.1.0 and 0.2.0 cannot print a result without an address at all.
    pub fn to_value(&self, version: Version) -> Result<Value, ResultError> {
        let value = match version.result_format() {
            ResultFormat::Legacy => serde_json::to_value(LegacyWire::from_result(self, version)?),
            format => serde_json::to_value(Wire::from_result(self, version, format)),
        };
        // Our wire types hold only strings, numbers and lists: serialisation cannot fail.
        Ok(value.unwrap_or(Value::Null))
    }

    /// Whether printing in `version` and reading back gives this result unchanged.
    pub fn expressible_in(&self, version: Version) -> bool {
        match version.result_format() {
            ResultFormat::V11 => true,
            ResultFormat::V10 | ResultFormat::V04 => {
                self.interfaces
                    .iter()
                    .all(|i| i.mtu.is_none() && i.socket_path.is_empty() && i.pci_id.is_empty())
                    && self.routes.iter().all(|r| !r.has_v11_fields())
            }
            ResultFormat::Legacy => {
                let v4: Vec<_> = self
                    .ips
                    .iter()
                    .filter(|ip| ip.address.addr().is_ipv4())
                    .collect();
                let v6: Vec<_> = self
                    .ips
                    .iter()
                    .filter(|ip| ip.address.addr().is_ipv6())
                    .collect();
                let v4_first = self
                    .ips
                    .first()
                    .is_none_or(|ip| ip.address.addr().is_ipv4() || v4.is_empty());
                let routes_v4_first = self
                    .routes
                    .windows(2)
                    .all(|w| !(w[0].dst.addr().is_ipv6() && w[1].dst.addr().is_ipv4()));
                let routes_have_an_ip = self.routes.iter().all(|r| {
                    if r.dst.addr().is_ipv4() {
                        !v4.is_empty()
                    } else {
                        !v6.is_empty()
                    }
                });
                self.interfaces.is_empty()
                    && !self.ips.is_empty()
                    && v4.len() <= 1
                    && v6.len() <= 1
                    && v4_first
                    && self.ips.iter().all(|ip| ip.interface.is_none())
                    && routes_v4_first
                    && routes_have_an_ip
                    && self.routes.iter().all(|r| !r.has_v11_fields())
            }
        }
    }

    /// The addresses of one interface, by index.
    pub fn ips_of(&self, interface: usize) -> impl Iterator<Item = &IpConfig> {
        self.ips
            .iter()
            .filter(move |ip| ip.interface == Some(interface))
    }

    /// The index of the interface called `name` inside `sandbox` (empty: on the host).
    pub fn interface_index(&self, name: &str, sandbox: Option<&str>) -> Option<usize> {
        self.interfaces
            .iter()
            .position(|i| i.name == name && sandbox.is_none_or(|s| i.sandbox == s))
    }

    fn validate(&self) -> Result<(), ResultError> {
        for (n, ip) in self.ips.iter().enumerate() {
            if let Some(index) = ip.interface
                && index >= self.interfaces.len()
            {
                return Err(ResultError::InterfaceIndex {
                    ip: n,
                    index,
                    count: self.interfaces.len(),
                });
            }
        }
        Ok(())
    }
}

// ---- 0.3.0 to 1.1.0 on the wire -------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct Wire {
    #[serde(rename = "cniVersion", default)]
    cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ips: Vec<IpWire>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    routes: Vec<Route>,
    #[serde(default)]
    dns: Dns,
}

#[derive(Serialize, Deserialize)]
struct IpWire {
    /// "4" or "6"; 0.3.x and 0.4.0 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interface: Option<usize>,
    address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gateway: Option<IpAddr>,
}

impl Wire {
    fn from_result(r: &CniResult, version: Version, format: ResultFormat) -> Wire {
        let v11 = format == ResultFormat::V11;
        Wire {
            cni_version: version.to_string(),
            interfaces: r
                .interfaces
                .iter()
                .map(|i| {
                    if v11 {
                        i.clone()
                    } else {
                        Interface {
                            mtu: None,
                            socket_path: String::new(),
                            pci_id: String::new(),
                            ..i.clone()
                        }
                    }
                })
                .collect(),
            ips: r
                .ips
                .iter()
                .map(|ip| IpWire {
                    version: (format == ResultFormat::V04).then(|| {
                        if ip.address.addr().is_ipv4() {
                            "4"
                        } else {
                            "6"
                        }
                        .to_string()
                    }),
                    interface: ip.interface,
                    address: ip.address,
                    gateway: ip.gateway,
                })
                .collect(),
            routes: r
                .routes
                .iter()
                .map(|rt| {
                    if v11 {
                        rt.clone()
                    } else {
                        rt.without_v11_fields()
                    }
                })
                .collect(),
            dns: r.dns.clone(),
        }
    }

    fn into_result(self, format: ResultFormat) -> CniResult {
        let v11 = format == ResultFormat::V11;
        CniResult {
            interfaces: self
                .interfaces
                .into_iter()
                .map(|i| {
                    if v11 {
                        i
                    } else {
                        Interface {
                            mtu: None,
                            socket_path: String::new(),
                            pci_id: String::new(),
                            ..i
                        }
                    }
                })
                .collect(),
            ips: self
                .ips
                .into_iter()
                .map(|ip| IpConfig {
                    interface: ip.interface,
                    address: ip.address,
                    gateway: ip.gateway,
                })
                .collect(),
            routes: self
                .routes
                .into_iter()
                .map(|r| if v11 { r } else { r.without_v11_fields() })
                .collect(),
            dns: self.dns,
        }
    }
}

// ---- 0.1.0 and 0.2.0 on the wire ------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct LegacyWire {
    #[serde(rename = "cniVersion", default)]
    cni_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip4: Option<LegacyIp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip6: Option<LegacyIp>,
    #[serde(default)]
    dns: Dns,
}

#[derive(Serialize, Deserialize)]
struct LegacyIp {
    ip: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    routes: Vec<LegacyRoute>,
}

#[derive(Serialize, Deserialize)]
struct LegacyRoute {
    dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gw: Option<IpAddr>,
}

impl LegacyWire {
    /// As libcni: the first address of each family, routes under the address of their family.
    fn from_result(r: &CniResult, version: Version) -> Result<LegacyWire, ResultError> {
        let first = |v4: bool| {
            r.ips
                .iter()
                .find(|ip| ip.address.addr().is_ipv4() == v4)
                .map(|ip| LegacyIp {
                    ip: ip.address,
                    gateway: ip.gateway,
                    routes: r
                        .routes
                        .iter()
                        .filter(|rt| rt.dst.addr().is_ipv4() == v4)
                        .map(|rt| LegacyRoute {
                            dst: rt.dst,
                            gw: rt.gw,
                        })
                        .collect(),
                })
        };
        let (ip4, ip6) = (first(true), first(false));
        if ip4.is_none() && ip6.is_none() {
            return Err(ResultError::NoAddress(version));
        }
        Ok(LegacyWire {
            cni_version: version.to_string(),
            ip4,
            ip6,
            dns: r.dns.clone(),
        })
    }

    fn into_result(self) -> CniResult {
        let mut r = CniResult {
            dns: self.dns,
            ..CniResult::default()
        };
        for ip in [self.ip4, self.ip6].into_iter().flatten() {
            r.ips.push(IpConfig {
                interface: None,
                address: ip.ip,
                gateway: ip.gateway,
            });
            r.routes
                .extend(ip.routes.into_iter().map(|rt| Route::new(rt.dst, rt.gw)));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bridge_result() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "cni0".into(),
                    mac: "5e:59:f5:d5:bd:c4".into(),
                    ..Default::default()
                },
                Interface {
                    name: "veth060687d9".into(),
                    mac: "8a:51:b1:60:38:89".into(),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: "fa:0b:67:65:74:c8".into(),
                    sandbox: "/var/run/netns/pod0".into(),
                    ..Default::default()
                },
            ],
            ips: vec![IpConfig {
                interface: Some(2),
                address: "10.22.0.2/16".parse().unwrap(),
                gateway: Some("10.22.0.1".parse().unwrap()),
            }],
            routes: vec![Route::new("0.0.0.0/0".parse().unwrap(), None)],
            dns: Dns::default(),
        }
    }

    #[test]
    fn reads_the_reference_bridge_result() {
        let text = json!({"cniVersion":"1.0.0",
            "interfaces":[{"name":"cni0","mac":"5e:59:f5:d5:bd:c4"},{"name":"veth060687d9","mac":"8a:51:b1:60:38:89"},
                          {"name":"eth0","mac":"fa:0b:67:65:74:c8","sandbox":"/var/run/netns/pod0"}],
            "ips":[{"interface":2,"address":"10.22.0.2/16","gateway":"10.22.0.1"}],
            "routes":[{"dst":"0.0.0.0/0"}],"dns":{}});
        let (v, r) = CniResult::from_value(text.clone(), None).unwrap();
        assert_eq!(v, Version::V1_0_0);
        assert_eq!(r, bridge_result());
        assert_eq!(r.to_value(Version::V1_0_0).unwrap(), text);
    }

    #[test]
    fn versions_0_3_and_0_4_name_the_ip_family() {
        let v = bridge_result().to_value(Version::V0_4_0).unwrap();
        assert_eq!(v["ips"][0]["version"], "4");
        let v = bridge_result().to_value(Version::V1_0_0).unwrap();
        assert!(v["ips"][0].get("version").is_none());
    }

    #[test]
    fn legacy_versions_use_ip4_and_ip6() {
        let mut r = bridge_result();
        r.ips.push(IpConfig {
            interface: Some(2),
            address: "fd00::2/64".parse().unwrap(),
            gateway: None,
        });
        r.routes.push(Route::new(
            "::/0".parse().unwrap(),
            Some("fd00::1".parse().unwrap()),
        ));
        let v = r.to_value(Version::V0_2_0).unwrap();
        assert_eq!(
            v,
            json!({"cniVersion":"0.2.0",
                "ip4":{"ip":"10.22.0.2/16","gateway":"10.22.0.1","routes":[{"dst":"0.0.0.0/0"}]},
                "ip6":{"ip":"fd00::2/64","routes":[{"dst":"::/0","gw":"fd00::1"}]},
                "dns":{}})
        );
        let (_, back) = CniResult::from_value(v, None).unwrap();
        assert_eq!(back.ips.len(), 2);
        assert!(back.interfaces.is_empty());
    }

    #[test]
    fn legacy_versions_cannot_print_a_result_without_addresses() {
        let r = CniResult {
            interfaces: bridge_result().interfaces,
            ..Default::default()
        };
        assert!(matches!(
            r.to_value(Version::V0_2_0),
            Err(ResultError::NoAddress(_))
        ));
        assert!(r.to_value(Version::V0_3_1).is_ok());
    }

    #[test]
    fn version_1_1_fields_are_dropped_in_older_versions() {
        let mut r = bridge_result();
        r.interfaces[2].mtu = Some(1450);
        r.routes[0].scope = Some(253);
        assert!(r.expressible_in(Version::V1_1_0));
        assert!(!r.expressible_in(Version::V1_0_0));
        let v = r.to_value(Version::V1_0_0).unwrap();
        assert!(v["interfaces"][2].get("mtu").is_none());
        assert!(v["routes"][0].get("scope").is_none());
        let v = r.to_value(Version::V1_1_0).unwrap();
        assert_eq!(v["interfaces"][2]["mtu"], 1450);
        assert_eq!(v["routes"][0]["scope"], 253);
    }

    #[test]
    fn prev_result_without_version_takes_the_config_version() {
        let text = json!({"ips":[{"version":"4","address":"10.1.0.5/24"}]});
        assert!(matches!(
            CniResult::from_value(text.clone(), None),
            Err(ResultError::MissingVersion)
        ));
        let (v, r) = CniResult::from_value(text, Some(Version::V0_3_1)).unwrap();
        assert_eq!(v, Version::V0_3_1);
        assert_eq!(r.ips[0].address.to_string(), "10.1.0.5/24");
    }

    #[test]
    fn bad_results_are_refused() {
        assert!(CniResult::from_value(json!({"cniVersion":"8.0.0"}), None).is_err());
        assert!(
            CniResult::from_value(
                json!({"cniVersion":"1.0.0","ips":[{"address":"10.0.0.300/24"}]}),
                None
            )
            .is_err()
        );
        assert!(
            CniResult::from_value(
                json!({"cniVersion":"1.0.0","ips":[{"address":"10.0.0.3"}]}),
                None
            )
            .is_err()
        );
        let bad_index =
            json!({"cniVersion":"1.0.0","ips":[{"interface":0,"address":"10.0.0.3/24"}]});
        assert!(matches!(
            CniResult::from_value(bad_index, None),
            Err(ResultError::InterfaceIndex { .. })
        ));
    }
}
