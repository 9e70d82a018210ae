//! Service cluster IPs and node ports. Each allocation is a key of its own, created in the same
//! transaction as the Service (which fails if the key exists): two API servers, or two creates,
//! can never hand out the same address. Each cluster IP is also an IPAddress object
//! ([`crate::ipaddress`]), written and deleted in the same transactions as its key.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Value, json};
use trellis_api::ResourceInfo;
use trellis_store::{KeyRange, RangeRequest};

use crate::dualstack::{self, Plan, ServiceCidrs};
use crate::meta;
use crate::status::{ApiError, Cause};
use crate::storage::Storage;

/// Where cluster IP allocations live: one key per address, its value the owner `namespace/name`.
pub(crate) const IP_PREFIX: &str = "/registry/ranges/serviceips/";
/// Where node port allocations live, as [`IP_PREFIX`].
pub(crate) const PORT_PREFIX: &str = "/registry/ranges/servicenodeports/";

#[derive(Debug, Clone)]
pub struct Allocator {
    pub service_cidrs: ServiceCidrs,
    pub node_ports: (u16, u16),
}

impl Default for Allocator {
    fn default() -> Self {
        Allocator {
            service_cidrs: ServiceCidrs::single("10.96.0.0/12".parse().expect("a valid default")),
            node_ports: (30000, 32767),
        }
    }
}

fn is_service(info: &ResourceInfo) -> bool {
    !info.custom && info.group.is_empty() && info.kind == "Service"
}

fn is_ipaddress(info: &ResourceInfo) -> bool {
    !info.custom && info.group == crate::ipaddress::GROUP && info.kind == crate::ipaddress::KIND
}

/// The allocation key and the IPAddress object of each of `ips`, owned by the Service
/// `namespace/name`.
fn ip_claims(
    ips: &[IpAddr],
    namespace: &str,
    name: &str,
) -> Result<Vec<(String, Vec<u8>)>, ApiError> {
    let owner = format!("{namespace}/{name}").into_bytes();
    let mut out = Vec::new();
    for ip in ips {
        out.push((format!("{IP_PREFIX}{ip}"), owner.clone()));
        out.push(crate::ipaddress::claim(*ip, namespace, name)?);
    }
    Ok(out)
}

/// The keys releasing `ips` deletes: the allocation keys and the IPAddress objects.
fn ip_releases(ips: &[IpAddr]) -> Vec<String> {
    ips.iter()
        .flat_map(|ip| {
            std::iter::once(format!("{IP_PREFIX}{ip}")).chain(crate::ipaddress::key(*ip).ok())
        })
        .collect()
}

impl Allocator {
    /// The keys a new object claims; fills in the allocated values.
    pub async fn claims(
        &self,
        info: &ResourceInfo,
        storage: &Storage,
        obj: &mut Value,
    ) -> Result<Vec<(String, Vec<u8>)>, ApiError> {
        if is_ipaddress(info) {
            crate::ipaddress::check_free(storage, obj).await?;
            return Ok(Vec::new());
        }
        if !is_service(info) {
            return Ok(Vec::new());
        }
        let name = meta::name(obj).unwrap_or_default().to_string();
        let namespace = meta::namespace(obj).unwrap_or_default().to_string();
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
        let plan = dualstack::resolve(&self.service_cidrs, None, obj)
            .map_err(|causes| ApiError::invalid("", "Service", &name, causes))?;
        let ips = self.allocate(storage, &plan, &[], &name).await?;
        set_ips(obj, &ips);
        claims.extend(ip_claims(&ips, &namespace, &name)?);
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
        // Leaving ExternalName: its externalName goes too, unless the update changed it
        // (upstream's dropTypeDependentFields).
        let type_of = |v: &Value| {
            meta::at(v, &["spec", "type"])
                .and_then(Value::as_str)
                .unwrap_or("ClusterIP")
                .to_string()
        };
        if type_of(old) == "ExternalName"
            && type_of(new) != "ExternalName"
            && meta::at(old, &["spec", "externalName"]) == meta::at(new, &["spec", "externalName"])
            && let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut)
        {
            spec.remove("externalName");
        }
        // Cluster IPs: the families decide; a secondary added is allocated, one dropped (or
        // all of them, on becoming ExternalName) released.
        let old_ips: Vec<IpAddr> = ips_of(old);
        let plan = dualstack::resolve(&self.service_cidrs, Some(old), new)
            .map_err(|causes| ApiError::invalid("", "Service", &name, causes))?;
        let new_ips = self.allocate(storage, &plan, &old_ips, &name).await?;
        set_ips(new, &new_ips);
        let added: Vec<IpAddr> = new_ips
            .iter()
            .filter(|ip| !old_ips.contains(ip))
            .copied()
            .collect();
        let mut ip_claims =
            self::ip_claims(&added, meta::namespace(new).unwrap_or_default(), &name)?;
        let dropped: Vec<IpAddr> = old_ips
            .iter()
            .filter(|ip| !new_ips.contains(ip))
            .copied()
            .collect();
        let ip_releases = self::ip_releases(&dropped);
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
        ip_claims.extend(
            after
                .iter()
                .filter(|p| !before.contains(p))
                .map(|p| (format!("{PORT_PREFIX}{p}"), owner.clone())),
        );
        let releases = ip_releases
            .into_iter()
            .chain(
                before
                    .iter()
                    .filter(|p| !after.contains(p))
                    .map(|p| format!("{PORT_PREFIX}{p}")),
            )
            .collect();
        Ok((ip_claims, releases))
    }

    /// The keys an object's deletion releases.
    pub fn releases(&self, info: &ResourceInfo, obj: &Value) -> Vec<String> {
        if !is_service(info) {
            return Vec::new();
        }
        let mut keys: Vec<String> = ip_releases(&ips_of(obj));
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

    /// The addresses `plan` asks for: those given (checked against the family's range and
    /// what others hold; `held` are this Service's own already) and free ones for the rest.
    async fn allocate(
        &self,
        storage: &Storage,
        plan: &Plan,
        held: &[IpAddr],
        name: &str,
    ) -> Result<Vec<IpAddr>, ApiError> {
        let Plan::Ips(wanted) = plan else {
            return Ok(Vec::new());
        };
        // The ranges of each family: the flag's (the default ServiceCIDR's) first, then the
        // other Ready ServiceCIDRs' in name order.
        let extra = if wanted
            .iter()
            .any(|(_, asked)| asked.is_none_or(|ip| !held.contains(&ip)))
        {
            crate::servicecidr::ready_ranges(storage).await?
        } else {
            Vec::new()
        };
        let mut out = Vec::new();
        for (i, (family, asked)) in wanted.iter().enumerate() {
            // An address the Service already holds stays, even when its family's range was
            // since removed from the cluster (a PreferDualStack Service is not downgraded by
            // that): only a new address needs the range.
            if let Some(ip) = asked
                && held.contains(ip)
            {
                out.push(*ip);
                continue;
            }
            let Some(range) = self.service_cidrs.get(*family) else {
                return Err(ApiError::internal(format!(
                    "{} is not configured on this cluster",
                    family.name()
                )));
            };
            let ranges: Vec<IpNet> = std::iter::once(range)
                .chain(
                    extra
                        .iter()
                        .copied()
                        .filter(|n| *n != range && dualstack::Family::of(n.addr()) == *family),
                )
                .collect();
            let ip = match asked {
                Some(ip) => {
                    let field = format!("spec.clusterIPs[{i}]");
                    let invalid = |why: String| {
                        ApiError::invalid(
                            "",
                            "Service",
                            name,
                            vec![Cause::invalid(&field, ip.to_string(), why)],
                        )
                    };
                    if !ranges.iter().any(|r| r.contains(ip) && assignable(*r, *ip)) {
                        let valid = ranges
                            .iter()
                            .map(IpNet::to_string)
                            .collect::<Vec<_>>()
                            .join(",");
                        return Err(invalid(format!(
                            "failed to allocate IP {ip}: provided IP is not in the valid range. The range of valid IPs is {valid}"
                        )));
                    }
                    // Held by a Service, or kept by an IPAddress object (a user's).
                    if storage
                        .store()
                        .get(format!("{IP_PREFIX}{ip}").as_bytes())
                        .await?
                        .is_some()
                        || crate::ipaddress::exists(storage, *ip).await?
                    {
                        return Err(invalid(format!(
                            "failed to allocate IP {ip}: provided IP is already allocated"
                        )));
                    }
                    *ip
                }
                None => self.free_ip(storage, &ranges).await?,
            };
            out.push(ip);
        }
        Ok(out)
    }

    /// A free address of the first of `ranges` that has one: the network address and, in
    /// IPv4, the broadcast address are never handed out; in the default range (the first) the
    /// first host (the `kubernetes` Service's, 10.96.0.1) and the cluster DNS address (the
    /// 10th) only when asked for by name. When all are full: upstream's `failed to allocate a serviceIP: range is full`.
    async fn free_ip(&self, storage: &Storage, ranges: &[IpNet]) -> Result<IpAddr, ApiError> {
        let mut used: HashSet<IpAddr> = allocated_keys(storage, IP_PREFIX)
            .await?
            .into_iter()
            .collect();
        // Addresses a user's IPAddress keeps (the allocator's own are in `used` already).
        used.extend(crate::ipaddress::addresses(storage).await?);
        for (n, range) in ranges.iter().enumerate() {
            let range = *range;
            // The first host and the 10th are kept in the default range only (the
            // `kubernetes` Service's and cluster DNS'); other ServiceCIDRs lose only their
            // network (and IPv4 broadcast) address.
            // An extra range that overlaps the default one keeps the default one's reserved
            // addresses too.
            let default = ranges.first().copied().unwrap_or(range);
            let skip = |ip: IpAddr| {
                if n == 0 || default.contains(&ip) {
                    reserved(default, ip) || !assignable(range, ip)
                } else {
                    !assignable(range, ip)
                }
            };
            let size = range_size(range);
            let in_range = used.iter().filter(|ip| range.contains(*ip)).count();
            // Start at a spot that depends on the time, so concurrent creates rarely pick the same.
            let offset = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| u128::from(d.subsec_nanos()))
                .unwrap_or(0)
                % size.max(1);
            // At most used + 4 reserved addresses are taken: looking at that many + 1 finds a
            // free one if there is any, without walking a huge IPv6 range.
            let tries = size.min(in_range as u128 + 16);
            for i in 0..tries {
                let ip = dualstack::nth(range, offset.wrapping_add(i) % size.max(1));
                if !skip(ip) && !used.contains(&ip) {
                    return Ok(ip);
                }
            }
        }
        Err(ApiError::internal(
            "Internal error occurred: failed to allocate a serviceIP: range is full",
        ))
    }

    async fn used_ports(&self, storage: &Storage) -> Result<Vec<u16>, ApiError> {
        allocated_keys(storage, PORT_PREFIX).await
    }
}

/// How many addresses `range` has (saturating for a /0 IPv6 range).
fn range_size(range: IpNet) -> u128 {
    1u128
        .checked_shl(u32::from(range.max_prefix_len() - range.prefix_len()))
        .unwrap_or(u128::MAX)
}

/// Where `ip` lies in `range` (None: another family).
fn offset(range: IpNet, ip: IpAddr) -> Option<u128> {
    match (range.network(), ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => Some(u128::from(u32::from(a).wrapping_sub(u32::from(n)))),
        (IpAddr::V6(n), IpAddr::V6(a)) => Some(u128::from(a).wrapping_sub(u128::from(n))),
        _ => None,
    }
}

/// Whether `ip` of `range` may be a cluster IP at all: not the network address, not the
/// IPv4 broadcast address.
pub(crate) fn assignable(range: IpNet, ip: IpAddr) -> bool {
    offset(range, ip).is_some_and(|o| o != 0 && !(ip.is_ipv4() && o + 1 == range_size(range)))
}

/// Addresses of a range never picked by the allocator: those not assignable, the first host
/// (the `kubernetes` Service's) and the 10th (cluster DNS): those two only by name.
fn reserved(range: IpNet, ip: IpAddr) -> bool {
    !assignable(range, ip) || matches!(offset(range, ip), Some(1 | 10))
}

/// The cluster IPs a Service object holds (`clusterIPs`, or `clusterIP` alone).
fn ips_of(obj: &Value) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for s in dualstack::cluster_ips(obj) {
        if let Ok(ip) = s.parse::<IpAddr>()
            && !out.contains(&ip)
        {
            out.push(ip);
        }
    }
    out
}

/// Writes the allocated addresses into `clusterIP`/`clusterIPs` (headless and ExternalName
/// Services have none: `resolve` set their fields).
fn set_ips(obj: &mut Value, ips: &[IpAddr]) {
    if let Some(first) = ips.first() {
        obj["spec"]["clusterIP"] = json!(first.to_string());
        obj["spec"]["clusterIPs"] = json!(ips.iter().map(IpAddr::to_string).collect::<Vec<_>>());
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

/// The values allocated under `prefix` (a key's suffix parsed; keys that do not parse are
/// skipped: the repair loop reports them).
pub(crate) async fn allocated_keys<T: std::str::FromStr>(
    storage: &Storage,
    prefix: &str,
) -> Result<Vec<T>, ApiError> {
    let used = storage
        .store()
        .range(RangeRequest {
            keys_only: true,
            ..RangeRequest::new(KeyRange::prefix(prefix))
        })
        .await?;
    Ok(used
        .kvs
        .iter()
        .filter_map(|kv| {
            std::str::from_utf8(kv.key.get(prefix.len()..)?)
                .ok()?
                .parse()
                .ok()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_host_and_the_dns_address_are_kept_for_asking_and_the_edges_never_assigned() {
        let v4: IpNet = "10.96.0.0/12".parse().unwrap();
        let v6: IpNet = "fd00:96::/112".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for (range, first, tenth, network) in [
            (v4, "10.96.0.1", "10.96.0.10", "10.96.0.0"),
            (v6, "fd00:96::1", "fd00:96::a", "fd00:96::"),
        ] {
            assert!(assignable(range, ip(first)) && reserved(range, ip(first)));
            assert!(assignable(range, ip(tenth)) && reserved(range, ip(tenth)));
            assert!(!assignable(range, ip(network)));
        }
        assert!(!assignable(v4, ip("10.111.255.255")));
        // IPv6 has no broadcast address.
        assert!(assignable(v6, ip("fd00:96::ffff")) && !reserved(v6, ip("fd00:96::ffff")));
        assert!(!assignable(v4, ip("fd00:96::5")));
        assert_eq!(range_size(v6), 65536);
        assert_eq!(range_size("::/0".parse().unwrap()), u128::MAX);
    }
}
