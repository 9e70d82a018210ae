//! `trellis-ipam`, the CNI IPAM plugin: every call is one RPC to the node's ipamd.
//!
//! Configuration (the `ipam` object of the network configuration):
//!
//! ```json
//! {"type": "trellis-ipam", "socket": "/run/trellis/ipamd.sock",
//!  "families": ["ipv4", "ipv6"], "pool": "optional-pool-name",
//!  "routes": [{"dst": "0.0.0.0/0"}]}
//! ```
//!
//! The handle is `<network name>.<CNI_CONTAINERID>.<CNI_IFNAME>`. Requested addresses come from
//! `runtimeConfig.ips`, else `args.cni.ips`, else `CNI_ARGS` `IP=` (comma-separated).
//!
//! When ipamd cannot be reached, ADD answers code 11 (try again later) at once; DEL retries for
//! about a second and then answers 11 too, so the runtime retries it: a DEL never reports
//! success while the address may still be held. STATUS answers 50 while ipamd is unreachable.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;
use tonic::Code as GrpcCode;
use trellis_cni::result::{CniResult, IpConfig, Route};
use trellis_cni::skel::{Attachment, GcRequest, NetConf, Plugin};
use trellis_cni::{Code, Error};

use crate::client::{self, DEFAULT_SOCKET};
use crate::model::attachment_handle;
use crate::proto;

/// How long a call waits for ipamd to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one RPC may take (a claim of a new block is a few datastore round trips).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// DEL keeps trying to reach ipamd this long before it gives up with code 11.
const DEL_PATIENCE: Duration = Duration::from_secs(1);
/// The plugin's `ipam.type`: its binary's name, and the type under which the Trellis plugins
/// link [`TrellisIpam`] in (`trellis-plugin`'s IPAM) to run it without a process.
pub const TYPE: &str = "trellis-ipam";
/// The plugin-specific code for "no address left".
pub const CODE_EXHAUSTED: u32 = 100;

/// The plugin.
#[derive(Debug, Default)]
pub struct TrellisIpam;

/// The `ipam` keys we read.
#[derive(Debug, Clone, PartialEq)]
pub struct IpamConfig {
    pub socket: PathBuf,
    pub families: Vec<proto::Family>,
    pub pool: String,
    pub routes: Vec<Route>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIpam {
    #[serde(rename = "type")]
    _type: String,
    #[serde(default)]
    socket: Option<PathBuf>,
    #[serde(default)]
    families: Option<Vec<String>>,
    #[serde(default)]
    pool: Option<String>,
    #[serde(default)]
    routes: Vec<Route>,
}

impl IpamConfig {
    /// Reads the `ipam` object: an unknown key is code 2 (naming it), a bad value code 7.
    pub fn from_conf(conf: &NetConf) -> Result<IpamConfig, Error> {
        let ipam = conf.config.ipam.as_ref().ok_or_else(|| {
            Error::invalid_config("no ipam section", "trellis-ipam is an IPAM plugin")
        })?;
        let mut obj = ipam.extra.clone();
        obj.insert("type".into(), Value::String(ipam.plugin_type.clone()));
        const KNOWN: [&str; 5] = ["type", "socket", "families", "pool", "routes"];
        if let Some((k, v)) = obj.iter().find(|(k, _)| !KNOWN.contains(&k.as_str())) {
            return Err(Error::unsupported_field(&format!("ipam.{k}"), v));
        }
        let raw: RawIpam = serde_json::from_value(Value::Object(obj))
            .map_err(|e| Error::invalid_config("invalid ipam configuration", e.to_string()))?;
        let families = match raw.families {
            None => vec![proto::Family::Ipv4],
            Some(list) if list.is_empty() => {
                return Err(Error::invalid_config(
                    "invalid ipam configuration",
                    "ipam.families is empty: give [\"ipv4\"], [\"ipv6\"] or both",
                ));
            }
            Some(list) => {
                let mut out = Vec::new();
                for f in list {
                    let fam = match f.to_ascii_lowercase().as_str() {
                        "ipv4" | "v4" | "4" => proto::Family::Ipv4,
                        "ipv6" | "v6" | "6" => proto::Family::Ipv6,
                        _ => {
                            return Err(Error::invalid_config(
                                "invalid ipam configuration",
                                format!("ipam.families: {f:?} is not ipv4 or ipv6"),
                            ));
                        }
                    };
                    if out.contains(&fam) {
                        return Err(Error::invalid_config(
                            "invalid ipam configuration",
                            format!("ipam.families lists {f:?} twice"),
                        ));
                    }
                    out.push(fam);
                }
                out
            }
        };
        Ok(IpamConfig {
            socket: raw.socket.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            families,
            pool: raw.pool.unwrap_or_default(),
            routes: raw.routes,
        })
    }
}

/// The requested addresses of an ADD: `runtimeConfig.ips`, else `args.cni.ips`, else `IP=` in
/// CNI_ARGS (the conventions' order). A malformed one is code 7.
pub fn requested_ips(req: &Attachment) -> Result<Vec<String>, Error> {
    let from_list = |v: &Value, key: &str| -> Result<Vec<String>, Error> {
        let list = v.as_array().ok_or_else(|| {
            Error::invalid_config(
                "invalid requested addresses",
                format!("{key} is not a list"),
            )
        })?;
        list.iter()
            .map(|x| {
                x.as_str().map(str::to_string).ok_or_else(|| {
                    Error::invalid_config(
                        "invalid requested addresses",
                        format!("{key} holds {x}, not a string"),
                    )
                })
            })
            .collect()
    };
    let list = if let Some(v) = req.conf.config.runtime("ips") {
        from_list(v, "runtimeConfig.ips")?
    } else if let Some(v) = req.conf.config.cni_arg("ips") {
        from_list(v, "args.cni.ips")?
    } else if let Some(ip) = req.args.get("IP") {
        ip.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    } else {
        Vec::new()
    };
    for s in &list {
        let ok = s.parse::<IpAddr>().is_ok() || s.parse::<IpNet>().is_ok();
        if !ok {
            return Err(Error::invalid_config(
                "invalid requested address",
                format!("{s:?} is not an IP address"),
            ));
        }
    }
    Ok(list)
}

/// The CNI error of a failed RPC.
pub fn cni_error(what: &str, s: &tonic::Status) -> Error {
    let msg = format!("{what}: {}", s.message());
    match s.code() {
        GrpcCode::InvalidArgument | GrpcCode::AlreadyExists | GrpcCode::NotFound => {
            Error::invalid_config(msg, "")
        }
        GrpcCode::ResourceExhausted => Error::new(
            Code::plugin(CODE_EXHAUSTED).unwrap_or(Code::INTERNAL),
            msg,
            "no address available",
        ),
        GrpcCode::Unavailable | GrpcCode::Aborted | GrpcCode::DeadlineExceeded => {
            Error::try_again_later(msg, "ipamd or its datastore is busy or unavailable")
        }
        _ => Error::internal(msg, format!("{:?}", s.code())),
    }
}

/// The runtime a plugin invocation runs on: one current-thread runtime per call, for this
/// plugin's RPC and for the Trellis plugins that link it in (their netlink calls too).
pub fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("cannot start the plugin's runtime", e))
}

fn handle(req: &Attachment) -> String {
    attachment_handle(
        &req.conf.config.name,
        req.container_id.as_str(),
        req.ifname.as_str(),
    )
}

fn unreachable(e: client::ClientError) -> Error {
    Error::try_again_later("ipamd is unreachable", e.to_string())
}

/// The plugin's calls as async functions: what its binary runs (through [`Plugin`], one
/// runtime per call), and what a Trellis plugin that links it in awaits inside its own runtime —
/// the same code, the same answers and error codes, no process and no JSON in between.
impl TrellisIpam {
    /// ADD: one address per configured family from ipamd.
    pub async fn allocate(&self, req: &Attachment) -> Result<CniResult, Error> {
        let conf = IpamConfig::from_conf(&req.conf)?;
        let requested = requested_ips(req)?;
        let (namespace, pod) = req
            .args
            .pod()
            .map(|(n, p)| (n.to_string(), p.to_string()))
            .unwrap_or_default();
        let request = proto::AllocateRequest {
            handle: handle(req),
            families: conf.families.iter().map(|f| *f as i32).collect(),
            requested,
            pool: conf.pool.clone(),
            network: req.conf.config.name.clone(),
            container_id: req.container_id.as_str().to_string(),
            ifname: req.ifname.as_str().to_string(),
            namespace,
            pod,
        };
        let mut c = client::connect(&conf.socket, CONNECT_TIMEOUT, CALL_TIMEOUT)
            .await
            .map_err(unreachable)?;
        let got = c
            .allocate(request)
            .await
            .map_err(|s| cni_error("allocate", &s))?;
        let mut result = CniResult::default();
        for a in got.into_inner().addresses {
            let address: IpNet = a.address.parse().map_err(|_| {
                Error::internal("ipamd answered an invalid address", a.address.clone())
            })?;
            let gateway = if a.gateway.is_empty() {
                None
            } else {
                Some(a.gateway.parse::<IpAddr>().map_err(|_| {
                    Error::internal("ipamd answered an invalid gateway", a.gateway.clone())
                })?)
            };
            result.ips.push(IpConfig {
                interface: None,
                address,
                gateway,
            });
        }
        result.routes = conf.routes.clone();
        Ok(result)
    }

    /// DEL: frees the attachment's addresses; retries ipamd for [`DEL_PATIENCE`], then 11.
    pub async fn release(&self, req: &Attachment) -> Result<(), Error> {
        let conf = IpamConfig::from_conf(&req.conf)?;
        let handle = handle(req);
        let deadline = tokio::time::Instant::now() + DEL_PATIENCE;
        let mut c = loop {
            match client::connect(&conf.socket, CONNECT_TIMEOUT, CALL_TIMEOUT).await {
                Ok(c) => break c,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(Error::try_again_later(
                        "ipamd is unreachable; the address is still held, retry DEL",
                        e.to_string(),
                    ));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        c.release(proto::ReleaseRequest { handle })
            .await
            .map(|_| ())
            .map_err(|s| cni_error("release", &s))
    }

    /// CHECK: the attachment still holds prevResult's addresses.
    pub async fn verify(&self, req: &Attachment) -> Result<(), Error> {
        let conf = IpamConfig::from_conf(&req.conf)?;
        let handle = handle(req);
        let mut c = client::connect(&conf.socket, CONNECT_TIMEOUT, CALL_TIMEOUT)
            .await
            .map_err(unreachable)?;
        let held = c
            .check(proto::CheckRequest {
                handle: handle.clone(),
            })
            .await
            .map_err(|s| cni_error("check", &s))?;
        let held: BTreeSet<IpAddr> = held
            .into_inner()
            .addresses
            .iter()
            .filter_map(|a| a.address.parse::<IpNet>().ok().map(|n| n.addr()))
            .collect();
        if held.is_empty() {
            return Err(Error::internal(
                "CHECK: the attachment holds no address",
                format!("handle {handle}"),
            ));
        }
        if let Some(prev) = &req.prev_result {
            let missing: Vec<String> = prev
                .ips
                .iter()
                .map(|ip| ip.address.addr())
                .filter(|ip| !held.contains(ip))
                .map(|ip| ip.to_string())
                .collect();
            if !missing.is_empty() {
                return Err(Error::internal(
                    "CHECK: addresses of prevResult are not held by this attachment",
                    format!("handle {handle} lacks {}", missing.join(", ")),
                ));
            }
        }
        Ok(())
    }

    /// GC: ipamd frees this network's allocations on the node that no listed attachment holds.
    pub async fn collect(&self, req: &GcRequest) -> Result<(), Error> {
        let conf = IpamConfig::from_conf(&req.conf)?;
        let valid = req
            .valid_attachments
            .iter()
            .map(|a| proto::Attachment {
                container_id: a.container_id.clone(),
                ifname: a.ifname.clone(),
            })
            .collect();
        let network = req.conf.config.name.clone();
        let mut c = client::connect(&conf.socket, CONNECT_TIMEOUT, CALL_TIMEOUT)
            .await
            .map_err(unreachable)?;
        c.gc(proto::GcRequest {
            mode: Some(proto::gc_request::Mode::Cni(proto::CniGc {
                network,
                valid,
            })),
        })
        .await
        .map(|_| ())
        .map_err(|s| cni_error("gc", &s))
    }

    /// STATUS: 50 while ipamd cannot serve.
    pub async fn ready(&self, conf: &NetConf) -> Result<(), Error> {
        let ipam = IpamConfig::from_conf(conf)?;
        let mut c = client::connect(&ipam.socket, CONNECT_TIMEOUT, CALL_TIMEOUT)
            .await
            .map_err(|e| Error::not_available("ipamd is unreachable", e.to_string()))?;
        c.status(proto::StatusRequest {})
            .await
            .map(|_| ())
            .map_err(|s| Error::not_available("ipamd is not ready", s.message().to_string()))
    }
}

impl Plugin for TrellisIpam {
    fn add(&self, req: &Attachment) -> Result<CniResult, Error> {
        runtime()?.block_on(self.allocate(req))
    }

    fn del(&self, req: &Attachment) -> Result<(), Error> {
        runtime()?.block_on(self.release(req))
    }

    fn check(&self, req: &Attachment) -> Result<(), Error> {
        runtime()?.block_on(self.verify(req))
    }

    fn gc(&self, req: &GcRequest) -> Result<(), Error> {
        runtime()?.block_on(self.collect(req))
    }

    fn status(&self, conf: &NetConf) -> Result<(), Error> {
        runtime()?.block_on(self.ready(conf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use trellis_cni::skel::{Invocation, run};

    fn invoke(command: &str, conf: Value, extra: &[(&str, &str)]) -> (i32, Value) {
        let mut env: HashMap<String, String> = [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/nonexistent"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in extra {
            env.insert(k.to_string(), v.to_string());
        }
        let out = run(
            &TrellisIpam,
            Invocation {
                env,
                stdin: conf.to_string().into_bytes(),
            },
        );
        let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.exit_code, v)
    }

    fn conf(ipam: Value) -> Value {
        serde_json::json!({"cniVersion": "1.1.0", "name": "net", "type": "bridge", "ipam": ipam})
    }

    #[test]
    fn unknown_keys_are_code_2_and_bad_values_code_7() {
        let (code, v) = invoke(
            "DEL",
            conf(serde_json::json!({"type": "trellis-ipam", "subnet": "10.0.0.0/8"})),
            &[],
        );
        assert_eq!((code, v["code"].as_u64()), (1, Some(2)), "{v}");
        assert!(v["details"].as_str().unwrap().contains("ipam.subnet"));
        for bad in [
            serde_json::json!({"type": "trellis-ipam", "families": []}),
            serde_json::json!({"type": "trellis-ipam", "families": ["ipx"]}),
            serde_json::json!({"type": "trellis-ipam", "families": ["ipv4", "ipv4"]}),
            serde_json::json!({"type": "trellis-ipam", "routes": [{"dst": "nope"}]}),
            serde_json::json!({"type": "trellis-ipam", "socket": 7}),
        ] {
            let (code, v) = invoke("DEL", conf(bad.clone()), &[]);
            assert_eq!((code, v["code"].as_u64()), (1, Some(7)), "{bad}: {v}");
        }
    }

    #[test]
    fn ipamd_down_means_try_again_for_del_and_not_available_for_status() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("none.sock");
        let ipam = serde_json::json!({"type": "trellis-ipam", "socket": sock});
        let started = std::time::Instant::now();
        let (code, v) = invoke("DEL", conf(ipam.clone()), &[]);
        assert_eq!((code, v["code"].as_u64()), (1, Some(11)), "{v}");
        assert!(started.elapsed() >= DEL_PATIENCE, "DEL retried for a while");
        let (code, v) = invoke("STATUS", conf(ipam.clone()), &[]);
        assert_eq!((code, v["code"].as_u64()), (1, Some(50)), "{v}");
        let (code, v) = invoke("GC", conf(ipam), &[]);
        assert_eq!((code, v["code"].as_u64()), (1, Some(11)), "{v}");
    }
}
