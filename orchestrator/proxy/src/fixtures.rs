//! Service ports for the backends' unit tests: one web Service port with the endpoints given.

#![allow(clippy::unwrap_used)]

use crate::model::{Endpoint, PortName, Protocol, ServicePort};
use crate::rules::NodeRules;

/// An endpoint on port 8080 at `ip`.
pub fn ep(ip: &str, ready: bool, local: bool) -> Endpoint {
    Endpoint {
        ip: ip.parse().unwrap(),
        port: 8080,
        ready,
        serving: ready,
        terminating: false,
        local,
    }
}

/// `default/web:http`, 10.96.0.20:80/TCP, nothing but a ClusterIP.
pub fn sp(eps: Vec<Endpoint>) -> ServicePort {
    ServicePort {
        name: PortName {
            namespace: "default".into(),
            service: "web".into(),
            port: "http".into(),
        },
        protocol: Protocol::Tcp,
        cluster_ip: "10.96.0.20".parse().unwrap(),
        port: 80,
        node_port: None,
        load_balancer_ips: vec![],
        health_check_node_port: None,
        external_local: false,
        internal_local: false,
        affinity: None,
        endpoints: eps,
    }
}

/// A node on 10.244.0.0/16 whose node ports answer on every local address.
pub fn node() -> NodeRules {
    NodeRules {
        cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
        node_addresses: vec![],
    }
}
