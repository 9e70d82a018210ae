//! What the proxy needs from Services and EndpointSlices, flattened to one entry per service
//! port: the virtual address, the node port, the policies and the endpoints that serve it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The transport protocols a service port may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    fn parse(s: Option<&str>) -> Option<Protocol> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The name iptables' `-p` takes.
    pub fn iptables(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// An address family: the proxy writes each family's rules apart (iptables and ip6tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    /// An EndpointSlice's `addressType` / a Service's `ipFamilies` entry.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// `namespace/service:port-name` — the identity of a service port, as kube-proxy names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortName {
    pub namespace: String,
    pub service: String,
    /// The port's name (empty for a Service's single unnamed port).
    pub port: String,
}

impl fmt::Display for PortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.service, self.port)
    }
}

/// One backend of a service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// On this node (for the Local traffic policies).
    pub local: bool,
}

/// One port of one Service with its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub name: PortName,
    pub protocol: Protocol,
    /// The Service's cluster IP of this port's family.
    pub cluster_ip: IpAddr,
    pub port: u16,
    pub node_port: Option<u16>,
    /// A LoadBalancer Service's addresses (`status.loadBalancer.ingress[].ip`): served on
    /// `port` like a node port, with the external traffic policy.
    pub load_balancer_ips: Vec<IpAddr>,
    /// A LoadBalancer Service's `spec.healthCheckNodePort` (externalTrafficPolicy Local).
    pub health_check_node_port: Option<u16>,
    /// externalTrafficPolicy: Local.
    pub external_local: bool,
    /// internalTrafficPolicy: Local.
    pub internal_local: bool,
    /// sessionAffinity ClientIP, with its timeout in seconds.
    pub affinity: Option<u32>,
    pub endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// The endpoints traffic may go to: the ready ones, or, when none is ready, the ones still
    /// serving while they terminate. `local_only` keeps those on this node.
    pub fn usable(&self, local_only: bool) -> Vec<&Endpoint> {
        let pick = |f: &dyn Fn(&Endpoint) -> bool| -> Vec<&Endpoint> {
            self.endpoints
                .iter()
                .filter(|e| (!local_only || e.local) && f(e))
                .collect()
        };
        let ready = pick(&|e| e.ready);
        if !ready.is_empty() {
            return ready;
        }
        pick(&|e| e.serving && e.terminating)
    }
}

/// Service ports of `family` with their endpoints, for the node `node`: each Service with a
/// cluster IP of that family (`clusterIPs`), with the endpoints of that family's slices.
/// Services without a cluster IP (headless, ExternalName) are not the proxy's business. A
/// slice port matches a service port by name and protocol; a service port no slice serves
/// has no endpoints (and so is rejected).
pub fn service_ports<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node: &str,
    family: Family,
) -> Vec<ServicePort> {
    // (namespace, service) → slices
    let mut by_service: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
    for s in slices {
        if s.address_type != family.name() {
            continue;
        }
        let (Some(ns), Some(svc)) = (
            s.metadata.namespace.clone(),
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .cloned(),
        ) else {
            continue;
        };
        by_service.entry((ns, svc)).or_default().push(s);
    }
    let mut out = Vec::new();
    for svc in services {
        let (Some(ns), Some(name), Some(spec)) = (
            svc.metadata.namespace.as_deref(),
            svc.metadata.name.as_deref(),
            svc.spec.as_ref(),
        ) else {
            continue;
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let Some(cluster_ip) = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter_map(|ip| ip.parse::<IpAddr>().ok())
            .find(|ip| Family::of(*ip) == family)
        else {
            continue;
        };
        let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
        let load_balancer = spec.type_.as_deref() == Some("LoadBalancer");
        let load_balancer_ips: Vec<IpAddr> = if load_balancer {
            let mut ips: Vec<IpAddr> = svc
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|l| l.ingress.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|i| i.ip.as_deref()?.parse().ok())
                .filter(|ip| Family::of(*ip) == family)
                .collect();
            ips.sort();
            ips.dedup();
            ips
        } else {
            Vec::new()
        };
        let health_check_node_port = spec
            .health_check_node_port
            .filter(|_| load_balancer && external_local)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0);
        let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
        let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .filter(|t| *t > 0)
                .unwrap_or(10800)
        });
        let slices = by_service
            .get(&(ns.to_string(), name.to_string()))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for p in spec.ports.iter().flatten() {
            let Some(protocol) = Protocol::parse(p.protocol.as_deref()) else {
                continue;
            };
            let Ok(port) = u16::try_from(p.port) else {
                continue;
            };
            let port_name = p.name.clone().unwrap_or_default();
            let node_port = match spec.type_.as_deref() {
                Some("NodePort") | Some("LoadBalancer") => p
                    .node_port
                    .and_then(|n| u16::try_from(n).ok())
                    .filter(|n| *n > 0),
                _ => None,
            };
            let mut endpoints = BTreeSet::new();
            for slice in slices {
                let Some(sp) = slice.ports.iter().flatten().find(|sp| {
                    sp.name.clone().unwrap_or_default() == port_name
                        && Protocol::parse(sp.protocol.as_deref()) == Some(protocol)
                }) else {
                    continue;
                };
                let Some(target) = sp
                    .port
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p > 0)
                else {
                    continue;
                };
                for ep in &slice.endpoints {
                    let cond = ep.conditions.as_ref();
                    // Unset means true for ready and serving, false for terminating.
                    let ready = cond.and_then(|c| c.ready).unwrap_or(true);
                    let serving = cond.and_then(|c| c.serving).unwrap_or(ready);
                    let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
                    let local = ep.node_name.as_deref() == Some(node);
                    for a in &ep.addresses {
                        if let Ok(ip) = a.parse::<IpAddr>()
                            && Family::of(ip) == family
                        {
                            endpoints.insert(Endpoint {
                                ip,
                                port: target,
                                ready: ready && !terminating,
                                serving,
                                terminating,
                                local,
                            });
                        }
                    }
                }
            }
            out.push(ServicePort {
                name: PortName {
                    namespace: ns.to_string(),
                    service: name.to_string(),
                    port: port_name,
                },
                protocol,
                cluster_ip,
                port,
                node_port,
                load_balancer_ips: load_balancer_ips.clone(),
                health_check_node_port,
                external_local,
                internal_local,
                affinity,
                endpoints: dedupe(endpoints),
            });
        }
    }
    out.sort_by(|a, b| (&a.name, a.protocol).cmp(&(&b.name, b.protocol)));
    out
}

/// One entry per address and port (two slices may list the same endpoint while it moves).
fn dedupe(set: BTreeSet<Endpoint>) -> Vec<Endpoint> {
    let mut seen = BTreeSet::new();
    set.into_iter()
        .filter(|e| seen.insert((e.ip, e.port)))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    pub fn service(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    pub fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).unwrap()
    }

    fn web() -> Service {
        service(json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"clusterIP": "10.96.0.20", "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }))
    }

    #[test]
    fn slice_ports_match_by_name_and_conditions_pick_endpoints() {
        let s = slice(json!({
            "metadata": {"namespace": "default", "name": "web-1",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.244.1.2"], "nodeName": "n1"},
                {"addresses": ["10.244.2.2"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.244.3.2"], "conditions": {"ready": false}}
            ]
        }));
        let svc = web();
        let ports = service_ports([&svc], [&s], "n1", Family::V4);
        assert_eq!(ports.len(), 1);
        let p = &ports[0];
        assert_eq!(p.name.to_string(), "default/web:http");
        assert_eq!(p.endpoints.len(), 3);
        let usable: Vec<_> = p.usable(false).iter().map(|e| e.ip).collect();
        assert_eq!(usable, vec!["10.244.1.2".parse::<IpAddr>().unwrap()]);
        assert!(p.usable(true)[0].local);
    }

    #[test]
    fn terminating_endpoints_serve_only_when_none_is_ready() {
        let s = slice(json!({
            "metadata": {"namespace": "default", "name": "web-1",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [
                {"addresses": ["10.244.2.2"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.244.3.2"], "conditions": {"ready": false, "serving": false, "terminating": true}}
            ]
        }));
        let svc = web();
        let ports = service_ports([&svc], [&s], "n1", Family::V4);
        let usable: Vec<_> = ports[0].usable(false).iter().map(|e| e.ip).collect();
        assert_eq!(usable, vec!["10.244.2.2".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn a_port_no_slice_serves_has_no_endpoints() {
        let s = slice(json!({
            "metadata": {"namespace": "default", "name": "web-1",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "metrics", "port": 9090}],
            "endpoints": [{"addresses": ["10.244.1.2"]}]
        }));
        let svc = web();
        let ports = service_ports([&svc], [&s], "n1", Family::V4);
        assert!(ports[0].endpoints.is_empty());
    }

    #[test]
    fn headless_and_external_name_services_are_skipped() {
        let headless = service(json!({
            "metadata": {"namespace": "default", "name": "h"},
            "spec": {"clusterIP": "None", "ports": [{"port": 80}]}
        }));
        let ext = service(json!({
            "metadata": {"namespace": "default", "name": "e"},
            "spec": {"type": "ExternalName", "externalName": "example.org"}
        }));
        assert!(service_ports([&headless, &ext], [], "n1", Family::V4).is_empty());
    }

    #[test]
    fn each_family_gets_its_cluster_ip_and_its_slices_endpoints() {
        let svc = service(json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20", "fd00:96::20"],
                     "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "PreferDualStack",
                     "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }));
        let s4 = slice(json!({
            "metadata": {"namespace": "default", "name": "web-4",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": ["10.244.1.2"]}]
        }));
        let s6 = slice(json!({
            "metadata": {"namespace": "default", "name": "web-6",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv6",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": ["fd00:244::2"]}, {"addresses": ["fd00:244::3"]}]
        }));
        let v4 = service_ports([&svc], [&s4, &s6], "n1", Family::V4);
        assert_eq!(v4[0].cluster_ip, "10.96.0.20".parse::<IpAddr>().unwrap());
        assert_eq!(v4[0].endpoints.len(), 1);
        let v6 = service_ports([&svc], [&s4, &s6], "n1", Family::V6);
        assert_eq!(v6[0].cluster_ip, "fd00:96::20".parse::<IpAddr>().unwrap());
        let ips: Vec<String> = v6[0].endpoints.iter().map(|e| e.ip.to_string()).collect();
        assert_eq!(ips, ["fd00:244::2", "fd00:244::3"]);
        // A single-stack IPv4 Service has no IPv6 service port.
        let single = web();
        assert!(service_ports([&single], [&s6], "n1", Family::V6).is_empty());
    }
}
