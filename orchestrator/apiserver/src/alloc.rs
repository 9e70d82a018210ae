//! Service cluster IPs and node ports. Each allocation is a key of its own, created in the same
//! transaction as the Service (which fails if the key exists): two API servers, or two creates,
//! can never hand out the same address.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use serde_json::{Value, json};
use trellis_api::ResourceInfo;
use trellis_store::{KeyRange, RangeRequest};

use crate::meta;
use crate::status::{ApiError, Cause};
use crate::storage::Storage;

const IP_PREFIX: &str = "/registry/ranges/serviceips/";
const PORT_PREFIX: &str = "/registry/ranges/servicenodeports/";

#[derive(Debug, Clone)]
pub struct Allocator {
    pub service_cidr: Ipv4Net,
    pub node_ports: (u16, u16),
}

impl Default for Allocator {
    fn default() -> Self {
        Allocator {
            service_cidr: "10.96.0.0/12".parse().expect("a valid default"),
            node_ports: (30000, 32767),
        }
    }
}

fn is_service(info: &ResourceInfo) -> bool {
    !info.custom && info.group.is_empty() && info.kind == "Service"
}

impl Allocator {
    /// The keys a new object claims; fills in the allocated values.
    pub async fn claims(
        &self,
        info: &ResourceInfo,
        storage: &Storage,
        obj: &mut Value,
    ) -> Result<Vec<(String, Vec<u8>)>, ApiError> {
        if !is_service(info) {
            return Ok(Vec::new());
        }
        let name = meta::name(obj).unwrap_or_default().to_string();
        let owner = format!("{}/{}", meta::namespace(obj).unwrap_or_default(), name).into_bytes();
        let invalid = |field: &str, value: &str, why: &str| {
            ApiError::invalid(
                "",
                "Service",
                &name,
                vec![Cause::invalid(field, value, why)],
            )
        };
        let mut claims = Vec::new();
        let ty = meta::at(obj, &["spec", "type"])
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_string();
        if ty != "ExternalName" {
            let asked = meta::at(obj, &["spec", "clusterIP"])
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if asked != "None" {
                let ip = if asked.is_empty() {
                    self.free_ip(storage).await?
                } else {
                    let ip: Ipv4Addr = asked.parse().map_err(|_| {
                        invalid("spec.clusterIP", &asked, "must be a valid IP address")
                    })?;
                    if !self.service_cidr.contains(&ip)
                        || ip == self.service_cidr.network()
                        || ip == self.service_cidr.broadcast()
                    {
                        return Err(invalid(
                            "spec.clusterIP",
                            &asked,
                            &format!(
                                "provided IP is not in the valid range. The range of valid IPs is {}",
                                self.service_cidr
                            ),
                        ));
                    }
                    if storage
                        .store()
                        .get(format!("{IP_PREFIX}{ip}").as_bytes())
                        .await?
                        .is_some()
                    {
                        return Err(invalid(
                            "spec.clusterIP",
                            &asked,
                            "provided IP is already allocated",
                        ));
                    }
                    ip
                };
                obj["spec"]["clusterIP"] = json!(ip.to_string());
                obj["spec"]["clusterIPs"] = json!([ip.to_string()]);
                obj["spec"]["ipFamilies"] = json!(["IPv4"]);
                meta::default_at(obj, &["spec", "ipFamilyPolicy"], json!("SingleStack"));
                claims.push((format!("{IP_PREFIX}{ip}"), owner.clone()));
            } else {
                obj["spec"]["clusterIPs"] = json!(["None"]);
            }
        }
        if ty == "NodePort" || ty == "LoadBalancer" {
            let mut taken = self.used_ports(storage).await?;
            let ports = meta::at_mut(obj, &["spec", "ports"])
                .and_then(Value::as_array_mut)
                .map(std::mem::take)
                .unwrap_or_default();
            let mut out = Vec::new();
            for mut p in ports {
                let port = match p.get("nodePort").and_then(Value::as_u64) {
                    Some(n) => {
                        let n = u16::try_from(n).map_err(|_| {
                            invalid("spec.ports.nodePort", &n.to_string(), "out of range")
                        })?;
                        if n < self.node_ports.0 || n > self.node_ports.1 {
                            return Err(invalid(
                                "spec.ports.nodePort",
                                &n.to_string(),
                                &format!(
                                    "provided port is not in the valid range. The range of valid ports is {}-{}",
                                    self.node_ports.0, self.node_ports.1
                                ),
                            ));
                        }
                        if taken.contains(&n) {
                            return Err(invalid(
                                "spec.ports.nodePort",
                                &n.to_string(),
                                "provided port is already allocated",
                            ));
                        }
                        n
                    }
                    None => (self.node_ports.0..=self.node_ports.1)
                        .find(|n| !taken.contains(n))
                        .ok_or_else(|| ApiError::internal("no node ports are free"))?,
                };
                taken.push(port);
                p["nodePort"] = json!(port);
                claims.push((format!("{PORT_PREFIX}{port}"), owner.clone()));
                out.push(p);
            }
            obj["spec"]["ports"] = Value::Array(out);
            // A LoadBalancer with externalTrafficPolicy Local gets a health-check node port
            // from the same range, as upstream's defaulting gives it.
            let local = meta::at(obj, &["spec", "externalTrafficPolicy"]).and_then(Value::as_str)
                == Some("Local");
            if ty == "LoadBalancer" && local {
                let port = match meta::at(obj, &["spec", "healthCheckNodePort"])
                    .and_then(Value::as_u64)
                    .filter(|n| *n > 0)
                {
                    Some(n) => {
                        let ok = u16::try_from(n)
                            .ok()
                            .filter(|n| *n >= self.node_ports.0 && *n <= self.node_ports.1);
                        let Some(n16) = ok else {
                            return Err(invalid(
                                "spec.healthCheckNodePort",
                                &n.to_string(),
                                &format!(
                                    "provided port is not in the valid range. The range of valid ports is {}-{}",
                                    self.node_ports.0, self.node_ports.1
                                ),
                            ));
                        };
                        if taken.contains(&n16) {
                            return Err(invalid(
                                "spec.healthCheckNodePort",
                                &n.to_string(),
                                "provided port is already allocated",
                            ));
                        }
                        n16
                    }
                    None => (self.node_ports.0..=self.node_ports.1)
                        .find(|n| !taken.contains(n))
                        .ok_or_else(|| ApiError::internal("no node ports are free"))?,
                };
                obj["spec"]["healthCheckNodePort"] = json!(port);
                claims.push((format!("{PORT_PREFIX}{port}"), owner.clone()));
            }
        }
        Ok(claims)
    }

    /// What an update of a Service claims and releases. Node ports (and the health-check node
    /// port) follow the new object, as upstream's update does: a Service that becomes NodePort
    /// or LoadBalancer gets node ports, keeping those its ports already had (matched by port
    /// and protocol) and allocating the rest; one that becomes ClusterIP loses them; the
    /// health-check node port exists only for LoadBalancer with externalTrafficPolicy Local.
    /// Returns the new keys to claim and the old keys to release, in the update's transaction.
    pub async fn update_claims(
        &self,
        info: &ResourceInfo,
        storage: &Storage,
        old: &Value,
        new: &mut Value,
    ) -> Result<(Vec<(String, Vec<u8>)>, Vec<String>), ApiError> {
        if !is_service(info) {
            return Ok((Vec::new(), Vec::new()));
        }
        let name = meta::name(new).unwrap_or_default().to_string();
        let owner = format!("{}/{}", meta::namespace(new).unwrap_or_default(), name).into_bytes();
        let invalid = |field: &str, value: &str, why: &str| {
            ApiError::invalid(
                "",
                "Service",
                &name,
                vec![Cause::invalid(field, value, why)],
            )
        };
        let before = node_ports_of(old);
        let ty = meta::at(new, &["spec", "type"])
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_string();
        let needs_ports = ty == "NodePort" || ty == "LoadBalancer";
        let needs_health = ty == "LoadBalancer"
            && meta::at(new, &["spec", "externalTrafficPolicy"]).and_then(Value::as_str)
                == Some("Local");
        // Ports this Service holds may be asked for again; others' may not.
        let mut taken: Vec<u16> = if needs_ports || needs_health {
            self.used_ports(storage)
                .await?
                .into_iter()
                .filter(|p| !before.contains(p))
                .collect()
        } else {
            Vec::new()
        };
        let check = |field: &str, n: u64, taken: &[u16]| -> Result<u16, ApiError> {
            let n16 = u16::try_from(n)
                .ok()
                .filter(|n| *n >= self.node_ports.0 && *n <= self.node_ports.1)
                .ok_or_else(|| {
                    invalid(
                        field,
                        &n.to_string(),
                        &format!(
                            "provided port is not in the valid range. The range of valid ports is {}-{}",
                            self.node_ports.0, self.node_ports.1
                        ),
                    )
                })?;
            if taken.contains(&n16) {
                return Err(invalid(
                    field,
                    &n.to_string(),
                    "provided port is already allocated",
                ));
            }
            Ok(n16)
        };
        let old_ports: Vec<Value> = meta::at(old, &["spec", "ports"])
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let port_key = |p: &Value| {
            (
                p.get("port").and_then(Value::as_u64),
                p.get("protocol")
                    .and_then(Value::as_str)
                    .unwrap_or("TCP")
                    .to_string(),
            )
        };
        let mut ports = meta::at_mut(new, &["spec", "ports"])
            .and_then(Value::as_array_mut)
            .map(std::mem::take)
            .unwrap_or_default();
        // Which ports want one allocated, after those asked for and those kept are taken.
        let mut missing = Vec::new();
        for (i, p) in ports.iter_mut().enumerate() {
            let asked = p.get("nodePort").and_then(Value::as_u64).filter(|n| *n > 0);
            if !needs_ports {
                if let Some(m) = p.as_object_mut() {
                    m.remove("nodePort");
                }
                continue;
            }
            let kept = asked.or_else(|| {
                old_ports
                    .iter()
                    .find(|o| port_key(o) == port_key(p))
                    .and_then(|o| o.get("nodePort").and_then(Value::as_u64))
                    .filter(|n| *n > 0)
            });
            match kept {
                Some(n) => {
                    let n = check("spec.ports.nodePort", n, &taken)?;
                    taken.push(n);
                    p["nodePort"] = json!(n);
                }
                None => missing.push(i),
            }
        }
        for i in missing {
            let n = (self.node_ports.0..=self.node_ports.1)
                .find(|n| !taken.contains(n))
                .ok_or_else(|| ApiError::internal("no node ports are free"))?;
            taken.push(n);
            if let Some(p) = ports.get_mut(i) {
                p["nodePort"] = json!(n);
            }
        }
        if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
            if !ports.is_empty() || spec.contains_key("ports") {
                spec.insert("ports".into(), Value::Array(ports));
            }
            if needs_health {
                let asked = spec
                    .get("healthCheckNodePort")
                    .and_then(Value::as_u64)
                    .filter(|n| *n > 0)
                    .or_else(|| {
                        meta::at(old, &["spec", "healthCheckNodePort"])
                            .and_then(Value::as_u64)
                            .filter(|n| *n > 0)
                    });
                let n = match asked {
                    Some(n) => check("spec.healthCheckNodePort", n, &taken)?,
                    None => (self.node_ports.0..=self.node_ports.1)
                        .find(|n| !taken.contains(n))
                        .ok_or_else(|| ApiError::internal("no node ports are free"))?,
                };
                spec.insert("healthCheckNodePort".into(), json!(n));
            } else {
                spec.remove("healthCheckNodePort");
            }
        }
        let after = node_ports_of(new);
        let claims = after
            .iter()
            .filter(|p| !before.contains(p))
            .map(|p| (format!("{PORT_PREFIX}{p}"), owner.clone()))
            .collect();
        let releases = before
            .iter()
            .filter(|p| !after.contains(p))
            .map(|p| format!("{PORT_PREFIX}{p}"))
            .collect();
        Ok((claims, releases))
    }

    /// The keys an object's deletion releases.
    pub fn releases(&self, info: &ResourceInfo, obj: &Value) -> Vec<String> {
        if !is_service(info) {
            return Vec::new();
        }
        let mut keys = Vec::new();
        if let Some(ip) = meta::at(obj, &["spec", "clusterIP"])
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<IpAddr>().ok())
        {
            keys.push(format!("{IP_PREFIX}{ip}"));
        }
        if let Some(n) = meta::at(obj, &["spec", "healthCheckNodePort"]).and_then(Value::as_u64)
            && n > 0
        {
            keys.push(format!("{PORT_PREFIX}{n}"));
        }
        for p in meta::at(obj, &["spec", "ports"])
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(n) = p.get("nodePort").and_then(Value::as_u64) {
                keys.push(format!("{PORT_PREFIX}{n}"));
            }
        }
        keys
    }

    /// A free address: the network and broadcast addresses and the first host (reserved for
    /// the `kubernetes` Service, 10.96.0.1) are never handed out here; the cluster DNS address
    /// (10.96.0.10) only when asked for by name.
    async fn free_ip(&self, storage: &Storage) -> Result<Ipv4Addr, ApiError> {
        let used = storage
            .store()
            .range(RangeRequest {
                keys_only: true,
                ..RangeRequest::new(KeyRange::prefix(IP_PREFIX))
            })
            .await?;
        let used: std::collections::HashSet<Ipv4Addr> = used
            .kvs
            .iter()
            .filter_map(|kv| {
                std::str::from_utf8(&kv.key[IP_PREFIX.len()..])
                    .ok()?
                    .parse()
                    .ok()
            })
            .collect();
        let base = u32::from(self.service_cidr.network());
        let size = 1u64 << (32 - self.service_cidr.prefix_len());
        // Start at a spot that depends on the time, so concurrent creates rarely pick the same.
        let offset = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0)
            % size.max(1);
        for i in 0..size {
            let n = (offset + i) % size;
            if n < 2 || n == 10 || n + 1 == size {
                continue;
            }
            let ip = Ipv4Addr::from(base + n as u32);
            if !used.contains(&ip) {
                return Ok(ip);
            }
        }
        Err(ApiError::internal(format!(
            "the service range {} is full",
            self.service_cidr
        )))
    }

    async fn used_ports(&self, storage: &Storage) -> Result<Vec<u16>, ApiError> {
        let used = storage
            .store()
            .range(RangeRequest {
                keys_only: true,
                ..RangeRequest::new(KeyRange::prefix(PORT_PREFIX))
            })
            .await?;
        Ok(used
            .kvs
            .iter()
            .filter_map(|kv| {
                std::str::from_utf8(&kv.key[PORT_PREFIX.len()..])
                    .ok()?
                    .parse()
                    .ok()
            })
            .collect())
    }
}

/// The node ports a Service object holds: its ports' and its health-check node port.
fn node_ports_of(obj: &Value) -> Vec<u16> {
    let mut out: Vec<u16> = meta::at(obj, &["spec", "ports"])
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("nodePort").and_then(Value::as_u64))
        .chain(meta::at(obj, &["spec", "healthCheckNodePort"]).and_then(Value::as_u64))
        .filter_map(|n| u16::try_from(n).ok())
        .filter(|n| *n > 0)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}
