//! The cluster zone, rebuilt from Services and EndpointSlices on every change (the kubernetes
//! DNS specification 1.0.1): `<svc>.<ns>.svc.<zone>` A/AAAA for a cluster IP; for a headless
//! Service the ready endpoints' addresses and `<hostname>.<svc>.<ns>.svc.<zone>`; SRV
//! `_<port>._<proto>.<svc>.<ns>.svc.<zone>` for named ports; PTR for cluster IPs and headless
//! endpoints; ExternalName as a CNAME; pod names `a-b-c-d.<ns>.pod.<zone>` answered from the
//! name itself (CoreDNS' `pods insecure`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One record's data (names are lower-case, without the trailing dot).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rec {
    Ip(IpAddr),
    Cname(String),
    Srv { port: u16, target: String },
    Ptr(String),
}

/// What the zone says about a name and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The name is ours: these records (possibly none: NODATA).
    Answer(Vec<Rec>),
    /// The name is under our zone but does not exist.
    NxDomain,
    /// Not our name: forward it.
    NotOurs,
}

/// The query types the zone answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qtype {
    A,
    Aaaa,
    Srv,
    Ptr,
    Cname,
    Any,
    Other,
}

/// All names of the cluster zone.
#[derive(Debug, Clone, Default)]
pub struct Zone {
    domain: String,
    names: BTreeMap<String, BTreeSet<Rec>>,
    /// Names that exist only because names below them do (`svc.<zone>`, `<ns>.svc.<zone>`).
    ents: BTreeSet<String>,
}

fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::new();
            for b in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
            s.push_str("ip6.arpa");
            s
        }
    }
}

/// `10.244.1.2` → `10-244-1-2` (and `::` → `--` style for IPv6, as CoreDNS does).
fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

impl Zone {
    pub fn domain(&self) -> &str {
        &self.domain
    }

    fn add(&mut self, name: String, rec: Rec) {
        let suffix = format!(".{}", self.domain);
        let mut n = name.as_str();
        while let Some((_, rest)) = n.split_once('.') {
            if rest.ends_with(&suffix) || rest == self.domain {
                self.ents.insert(rest.to_string());
            }
            n = rest;
        }
        self.names.entry(name).or_default().insert(rec);
    }

    /// The zone `domain` (e.g. `cluster.local`) for these objects.
    pub fn build<'a>(
        domain: &str,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
    ) -> Zone {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let mut zone = Zone {
            domain: domain.clone(),
            ..Default::default()
        };
        let mut by_service: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
        for s in slices {
            let svc = s
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL));
            if let (Some(ns), Some(svc)) = (s.metadata.namespace.clone(), svc) {
                by_service.entry((ns, svc.clone())).or_default().push(s);
            }
        }
        for svc in services {
            let (Some(ns), Some(name), Some(spec)) = (
                svc.metadata.namespace.as_deref(),
                svc.metadata.name.as_deref(),
                svc.spec.as_ref(),
            ) else {
                continue;
            };
            let fqdn = format!("{name}.{ns}.svc.{domain}").to_ascii_lowercase();
            if spec.type_.as_deref() == Some("ExternalName") {
                if let Some(target) = spec.external_name.as_deref() {
                    zone.add(
                        fqdn,
                        Rec::Cname(target.trim_end_matches('.').to_ascii_lowercase()),
                    );
                }
                continue;
            }
            let named_ports: Vec<(String, String, u16)> = spec
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    let pname = p.name.clone().filter(|n| !n.is_empty())?;
                    let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
                    Some((pname, proto, u16::try_from(p.port).ok()?))
                })
                .collect();
            let headless = spec.cluster_ip.as_deref() == Some("None");
            if !headless {
                let ips: Vec<IpAddr> = spec
                    .cluster_ips
                    .iter()
                    .flatten()
                    .chain(spec.cluster_ip.iter())
                    .filter_map(|ip| ip.parse().ok())
                    .collect();
                if ips.is_empty() {
                    continue;
                }
                for ip in &ips {
                    zone.add(fqdn.clone(), Rec::Ip(*ip));
                    zone.add(reverse_name(*ip), Rec::Ptr(fqdn.clone()));
                }
                for (pname, proto, port) in &named_ports {
                    zone.add(
                        format!("_{pname}._{proto}.{fqdn}").to_ascii_lowercase(),
                        Rec::Srv {
                            port: *port,
                            target: fqdn.clone(),
                        },
                    );
                }
                continue;
            }
            // Headless: the ready endpoints themselves.
            let slices = by_service
                .get(&(ns.to_string(), name.to_string()))
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let mut any = false;
            for slice in slices {
                for ep in &slice.endpoints {
                    if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                        continue;
                    }
                    for a in &ep.addresses {
                        let Ok(ip) = a.parse::<IpAddr>() else {
                            continue;
                        };
                        any = true;
                        let host = ep
                            .hostname
                            .clone()
                            .filter(|h| !h.is_empty())
                            .unwrap_or_else(|| dashed(ip));
                        let ep_name = format!("{host}.{fqdn}").to_ascii_lowercase();
                        zone.add(fqdn.clone(), Rec::Ip(ip));
                        zone.add(ep_name.clone(), Rec::Ip(ip));
                        zone.add(reverse_name(ip), Rec::Ptr(ep_name.clone()));
                        for (pname, proto, _) in &named_ports {
                            // The endpoint's port of that name, else the service's.
                            let port = slice
                                .ports
                                .iter()
                                .flatten()
                                .find(|p| p.name.as_deref() == Some(pname.as_str()))
                                .and_then(|p| p.port)
                                .and_then(|p| u16::try_from(p).ok());
                            if let Some(port) = port {
                                zone.add(
                                    format!("_{pname}._{proto}.{fqdn}").to_ascii_lowercase(),
                                    Rec::Srv {
                                        port,
                                        target: ep_name.clone(),
                                    },
                                );
                            }
                        }
                    }
                }
            }
            if !any {
                // A headless Service with no ready endpoint: the name exists, without data.
                zone.ents.insert(fqdn);
            }
        }
        zone
    }

    /// Looks `name` (any case, with or without the trailing dot) up.
    pub fn lookup(&self, name: &str, qtype: Qtype) -> Lookup {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let in_zone = name == self.domain || name.ends_with(&format!(".{}", self.domain));
        if let Some(recs) = self.names.get(&name) {
            let cname: Vec<Rec> = recs
                .iter()
                .filter(|r| matches!(r, Rec::Cname(_)))
                .cloned()
                .collect();
            if !cname.is_empty() {
                return Lookup::Answer(cname);
            }
            let pick = |r: &Rec| {
                matches!(
                    (qtype, r),
                    (Qtype::Any, _)
                        | (Qtype::A, Rec::Ip(IpAddr::V4(_)))
                        | (Qtype::Aaaa, Rec::Ip(IpAddr::V6(_)))
                        | (Qtype::Srv, Rec::Srv { .. })
                        | (Qtype::Ptr, Rec::Ptr(_))
                )
            };
            return Lookup::Answer(recs.iter().filter(|r| pick(r)).cloned().collect());
        }
        if self.ents.contains(&name) || name == self.domain {
            return Lookup::Answer(Vec::new());
        }
        if !in_zone {
            return Lookup::NotOurs;
        }
        // a-b-c-d.<ns>.pod.<zone>
        let pod_suffix = format!(".pod.{}", self.domain);
        if let Some(rest) = name.strip_suffix(&pod_suffix) {
            let labels: Vec<&str> = rest.split('.').collect();
            if labels.len() == 2
                && let Ok(ip) = labels[0].replace('-', ".").parse::<Ipv4Addr>()
            {
                return Lookup::Answer(match qtype {
                    Qtype::A | Qtype::Any => vec![Rec::Ip(IpAddr::V4(ip))],
                    _ => Vec::new(),
                });
            }
        }
        Lookup::NxDomain
    }

    /// How many names hold records. Reverse names of other addresses are not ours: they are
    /// forwarded (CoreDNS' `fallthrough in-addr.arpa ip6.arpa`).
    pub fn names(&self) -> usize {
        self.names.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn zone() -> Zone {
        let svcs: Vec<Service> = [
            json!({"metadata": {"namespace": "default", "name": "web"},
                   "spec": {"clusterIP": "10.96.0.20", "ports": [{"name": "http", "port": 80}]}}),
            json!({"metadata": {"namespace": "db", "name": "pg"},
                   "spec": {"clusterIP": "None", "ports": [{"name": "sql", "port": 5432}]}}),
            json!({"metadata": {"namespace": "default", "name": "ext"},
                   "spec": {"type": "ExternalName", "externalName": "Example.ORG."}}),
            json!({"metadata": {"namespace": "default", "name": "empty"},
                   "spec": {"clusterIP": "None"}}),
        ]
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect();
        let slices: Vec<EndpointSlice> = [json!({
            "metadata": {"namespace": "db", "name": "pg-1", "labels": {"kubernetes.io/service-name": "pg"}},
            "addressType": "IPv4",
            "ports": [{"name": "sql", "port": 5432}],
            "endpoints": [
                {"addresses": ["10.244.1.5"], "hostname": "pg-0"},
                {"addresses": ["10.244.2.5"]},
                {"addresses": ["10.244.3.5"], "hostname": "pg-2", "conditions": {"ready": false}}
            ]
        })]
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect();
        Zone::build("cluster.local", &svcs, &slices)
    }

    fn ip(s: &str) -> Rec {
        Rec::Ip(s.parse().unwrap())
    }

    #[test]
    fn cluster_ip_services_have_a_srv_and_ptr() {
        let z = zone();
        assert_eq!(
            z.lookup("WEB.default.svc.cluster.local.", Qtype::A),
            Lookup::Answer(vec![ip("10.96.0.20")])
        );
        assert_eq!(
            z.lookup("web.default.svc.cluster.local", Qtype::Aaaa),
            Lookup::Answer(vec![])
        );
        assert_eq!(
            z.lookup("_http._tcp.web.default.svc.cluster.local", Qtype::Srv),
            Lookup::Answer(vec![Rec::Srv {
                port: 80,
                target: "web.default.svc.cluster.local".into()
            }])
        );
        assert_eq!(
            z.lookup("20.0.96.10.in-addr.arpa", Qtype::Ptr),
            Lookup::Answer(vec![Rec::Ptr("web.default.svc.cluster.local".into())])
        );
    }

    #[test]
    fn headless_services_answer_ready_endpoints_and_their_hostnames() {
        let z = zone();
        assert_eq!(
            z.lookup("pg.db.svc.cluster.local", Qtype::A),
            Lookup::Answer(vec![ip("10.244.1.5"), ip("10.244.2.5")])
        );
        assert_eq!(
            z.lookup("pg-0.pg.db.svc.cluster.local", Qtype::A),
            Lookup::Answer(vec![ip("10.244.1.5")])
        );
        assert_eq!(
            z.lookup("10-244-2-5.pg.db.svc.cluster.local", Qtype::A),
            Lookup::Answer(vec![ip("10.244.2.5")])
        );
        assert_eq!(
            z.lookup("pg-2.pg.db.svc.cluster.local", Qtype::A),
            Lookup::NxDomain
        );
        let Lookup::Answer(srv) = z.lookup("_sql._tcp.pg.db.svc.cluster.local", Qtype::Srv) else {
            panic!()
        };
        assert_eq!(srv.len(), 2);
        assert_eq!(
            z.lookup("empty.default.svc.cluster.local", Qtype::A),
            Lookup::Answer(vec![])
        );
    }

    #[test]
    fn external_names_pods_unknown_names_and_other_zones() {
        let z = zone();
        assert_eq!(
            z.lookup("ext.default.svc.cluster.local", Qtype::A),
            Lookup::Answer(vec![Rec::Cname("example.org".into())])
        );
        assert_eq!(
            z.lookup("10-244-1-7.default.pod.cluster.local", Qtype::A),
            Lookup::Answer(vec![ip("10.244.1.7")])
        );
        assert_eq!(
            z.lookup("nope.default.svc.cluster.local", Qtype::A),
            Lookup::NxDomain
        );
        assert_eq!(
            z.lookup("svc.cluster.local", Qtype::A),
            Lookup::Answer(vec![])
        );
        assert_eq!(
            z.lookup("default.svc.cluster.local", Qtype::A),
            Lookup::Answer(vec![])
        );
        assert_eq!(z.lookup("example.org", Qtype::A), Lookup::NotOurs);
        assert_eq!(
            z.lookup("9.9.9.9.in-addr.arpa", Qtype::Ptr),
            Lookup::NotOurs
        );
    }

    #[test]
    fn dual_stack_services_answer_a_and_aaaa_and_single_stack_ones_no_aaaa() {
        let svcs: Vec<Service> = [
            json!({"metadata": {"namespace": "default", "name": "dual"},
                   "spec": {"clusterIP": "10.96.0.30", "clusterIPs": ["10.96.0.30", "fd00:96::30"],
                            "ipFamilies": ["IPv4", "IPv6"], "ports": [{"name": "http", "port": 80}]}}),
            json!({"metadata": {"namespace": "default", "name": "v4only"},
                   "spec": {"clusterIP": "10.96.0.31", "clusterIPs": ["10.96.0.31"],
                            "ipFamilies": ["IPv4"], "ports": [{"port": 80}]}}),
            json!({"metadata": {"namespace": "default", "name": "h"},
                   "spec": {"clusterIP": "None", "clusterIPs": ["None"],
                            "ipFamilies": ["IPv4", "IPv6"], "ports": [{"port": 80}]}}),
        ]
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect();
        let slices: Vec<EndpointSlice> = [
            json!({"metadata": {"namespace": "default", "name": "h-4", "labels": {"kubernetes.io/service-name": "h"}},
                   "addressType": "IPv4", "endpoints": [{"addresses": ["10.244.1.7"]}]}),
            json!({"metadata": {"namespace": "default", "name": "h-6", "labels": {"kubernetes.io/service-name": "h"}},
                   "addressType": "IPv6", "endpoints": [{"addresses": ["fd00:244::7"]}]}),
        ]
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect();
        let z = Zone::build("cluster.local", &svcs, &slices);
        assert_eq!(
            z.lookup("dual.default.svc.cluster.local", Qtype::A),
            Lookup::Answer(vec![ip("10.96.0.30")])
        );
        assert_eq!(
            z.lookup("dual.default.svc.cluster.local", Qtype::Aaaa),
            Lookup::Answer(vec![ip("fd00:96::30")])
        );
        assert_eq!(
            z.lookup("v4only.default.svc.cluster.local", Qtype::Aaaa),
            Lookup::Answer(vec![])
        );
        assert_eq!(
            z.lookup("h.default.svc.cluster.local", Qtype::Aaaa),
            Lookup::Answer(vec![ip("fd00:244::7")])
        );
        assert_eq!(
            z.lookup("h.default.svc.cluster.local", Qtype::A),
            Lookup::Answer(vec![ip("10.244.1.7")])
        );
        // PTR for the IPv6 cluster IP.
        let rev = reverse_name("fd00:96::30".parse().unwrap());
        assert!(rev.ends_with("6.9.0.0.0.0.d.f.ip6.arpa"), "{rev}");
        assert_eq!(
            z.lookup(&rev, Qtype::Ptr),
            Lookup::Answer(vec![Rec::Ptr("dual.default.svc.cluster.local".into())])
        );
    }
}
