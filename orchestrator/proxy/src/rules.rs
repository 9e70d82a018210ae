//! Service ports → our iptables chains, as kube-proxy's iptables mode lays them out, under our
//! own names: every chain starts with `TRELLIS-SVC`, `TRELLIS-SEP` or `TRELLIS-NODEPORTS`, so
//! the proxy can find (and remove) exactly what it owns and nothing of the overlay's
//! (`TRELLIS-FWD`, `TRELLIS-POSTRTG`) or policyd's (`TRELLIS-POL*`, `TRELLIS-PI-*`,
//! `TRELLIS-PE-*`).
//!
//! nat: `PREROUTING`/`OUTPUT` → `TRELLIS-SVC-SERVICES` → per service port `TRELLIS-SVC-C-*`
//! (statistic-mode spread over endpoints) → `TRELLIS-SEP-*` (DNAT). Node ports go through
//! `TRELLIS-NODEPORTS` → `TRELLIS-SVC-X-*` (external: masquerade or, for
//! externalTrafficPolicy Local, `TRELLIS-SVC-L-*` with local endpoints and the client address
//! kept). A LoadBalancer address (`-d <ingress ip> --dport <port>` in `TRELLIS-SVC-SERVICES`)
//! goes to the same `TRELLIS-SVC-X-*` chain as the node port. What must be masqueraded is marked 0x4000 and masqueraded in `TRELLIS-SVC-POSTRTG`
//! (the overlay agent's masquerade chain returns early for that mark).
//!
//! filter: `INPUT`/`FORWARD`/`OUTPUT` → `TRELLIS-SVC-REJECT`: service ports with no endpoint
//! are refused at once (ICMP port unreachable; IPv6 TCP a reset, see [`reject_rule`]), not
//! black-holed.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::{Endpoint, Protocol, ServicePort};

pub const SERVICES: &str = "TRELLIS-SVC-SERVICES";
pub const NODEPORTS: &str = "TRELLIS-NODEPORTS";
pub const MARK_MASQ: &str = "TRELLIS-SVC-MARK-MASQ";
pub const POSTROUTING: &str = "TRELLIS-SVC-POSTRTG";
pub const REJECT: &str = "TRELLIS-SVC-REJECT";
/// The mark a packet carries when it must be masqueraded (kube-proxy's, which the overlay
/// agent's masquerade chain honours).
pub const MASQ_MARK: &str = "0x4000";

/// The prefixes of every chain the proxy owns.
pub const OWNED_PREFIXES: [&str; 3] = ["TRELLIS-SVC", "TRELLIS-SEP", "TRELLIS-NODEPORTS"];

/// The jumps from built-in chains into ours: (table, built-in chain, rule).
pub fn jumps() -> Vec<(&'static str, &'static str, Vec<&'static str>)> {
    let c = |s: &'static str| -> Vec<&'static str> {
        let mut v = vec![
            "-m",
            "comment",
            "--comment",
            "trellis service portals",
            "-j",
        ];
        v.push(s);
        v
    };
    let rej = || -> Vec<&'static str> {
        vec![
            "-m",
            "conntrack",
            "--ctstate",
            "NEW",
            "-m",
            "comment",
            "--comment",
            "trellis services without endpoints",
            "-j",
            REJECT,
        ]
    };
    vec![
        ("nat", "PREROUTING", c(SERVICES)),
        ("nat", "OUTPUT", c(SERVICES)),
        (
            "nat",
            "POSTROUTING",
            vec![
                "-m",
                "comment",
                "--comment",
                "trellis service masquerade",
                "-j",
                POSTROUTING,
            ],
        ),
        ("filter", "INPUT", rej()),
        ("filter", "FORWARD", rej()),
        ("filter", "OUTPUT", rej()),
    ]
}

/// What the proxy needs to know about its node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeRules {
    /// The pod network: traffic from outside it to a cluster IP is masqueraded. None: never
    /// (kube-proxy without `--cluster-cidr`).
    pub cluster_cidr: Option<IpNet>,
    /// The node's own addresses node ports answer on. Empty: every local address
    /// (`-m addrtype --dst-type LOCAL`).
    pub node_addresses: Vec<IpAddr>,
}

/// `ip` as a host match: `/32` or `/128`.
fn host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

/// The whole-address mask `-m recent --mask` takes for `ip`'s family.
fn full_mask(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "255.255.255.255",
        IpAddr::V6(_) => "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    }
}

/// A DNAT destination: `a.b.c.d:port` or `[v6]:port`.
fn dnat_to(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// The desired chains: (table, chain) → rules in order.
pub type Chains = BTreeMap<(&'static str, String), Vec<String>>;

/// 13 characters of base32 of a 64-bit FNV-1a hash: unique enough for chain names
/// (collisions need ~2^32 service ports), stable across restarts and versions.
pub fn short_hash(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    (0..13)
        .map(|i| ALPHABET[((h >> (i * 5)) & 31) as usize] as char)
        .collect()
}

pub(crate) fn port_key(sp: &ServicePort) -> String {
    short_hash(&[&sp.name.to_string(), sp.protocol.iptables()])
}

/// `TRELLIS-SVC-C-…`: a service port's endpoints for traffic from inside the cluster.
pub fn cluster_chain(sp: &ServicePort) -> String {
    format!("TRELLIS-SVC-C-{}", port_key(sp))
}

/// `TRELLIS-SVC-X-…`: node-port traffic (before the traffic policy is applied).
pub fn external_chain(sp: &ServicePort) -> String {
    format!("TRELLIS-SVC-X-{}", port_key(sp))
}

/// `TRELLIS-SVC-L-…`: this node's endpoints only (externalTrafficPolicy Local).
pub fn local_chain(sp: &ServicePort) -> String {
    format!("TRELLIS-SVC-L-{}", port_key(sp))
}

/// `TRELLIS-SEP-…`: one endpoint of one service port.
pub fn endpoint_chain(sp: &ServicePort, ep: &Endpoint) -> String {
    format!(
        "TRELLIS-SEP-{}",
        short_hash(&[
            &sp.name.to_string(),
            sp.protocol.iptables(),
            &format!("{}:{}", ep.ip, ep.port)
        ])
    )
}

/// The service port's name as a rule comment; anything but name characters is dropped, so an
/// odd name from the API can never break the restore input.
fn comment(sp: &ServicePort) -> String {
    let name: String = sp
        .name
        .to_string()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '/' | ':' | '_'))
        .take(200)
        .collect();
    format!("-m comment --comment \"{name}\"")
}

/// The statistic-mode spread: rule i of n matches with probability 1/(n-i), the last always,
/// so every endpoint gets 1/n. Affinity first sends a client it has seen back to the same one.
fn spread(sp: &ServicePort, eps: &[&Endpoint], out: &mut Vec<String>) {
    let c = comment(sp);
    if let Some(secs) = sp.affinity {
        for ep in eps {
            let sep = endpoint_chain(sp, ep);
            out.push(format!(
                "{c} -m recent --name {sep} --mask {} --rsource --rcheck --seconds {secs} --reap -j {sep}",
                full_mask(ep.ip)
            ));
        }
    }
    let n = eps.len();
    for (i, ep) in eps.iter().enumerate() {
        let sep = endpoint_chain(sp, ep);
        if i + 1 < n {
            out.push(format!(
                "{c} -m statistic --mode random --probability {:.10} -j {sep}",
                1.0 / (n - i) as f64
            ));
        } else {
            out.push(format!("{c} -j {sep}"));
        }
    }
}

/// The refusal of a service port without endpoints. IPv6 TCP gets a reset, not ICMPv6: a
/// pod's SYN crosses its veth and comes back refused inside the client's own `connect()`,
/// while the socket is still locked by it, and TCP keeps an ICMP error that arrives then only
/// as a soft error (`TcpExtLockDroppedIcmps`), which an IPv6 client only sees after its SYN
/// retransmission, 1 s later (IPv4's poll reports it at once). A reset waits in the socket's
/// backlog instead and refuses the connection when `connect()` lets go of the socket.
fn reject_rule(sp: &ServicePort, dst: &str, port: u16) -> String {
    let with = match (sp.cluster_ip, sp.protocol) {
        (IpAddr::V4(_), _) => "icmp-port-unreachable",
        (IpAddr::V6(_), Protocol::Tcp) => "tcp-reset",
        (IpAddr::V6(_), Protocol::Udp | Protocol::Sctp) => "icmp6-port-unreachable",
    };
    format!(
        "{} {dst} -p {} --dport {port} -j REJECT --reject-with {with}",
        comment(sp),
        sp.protocol.iptables()
    )
}

/// All our chains for these service ports, all of one family (iptables and ip6tables each get
/// their own set; the node's addresses and cluster CIDR of the other family are left out).
pub fn compile(ports: &[ServicePort], node: &NodeRules) -> Chains {
    let mut chains = Chains::new();
    chains.insert(
        ("nat", MARK_MASQ.into()),
        vec![format!("-j MARK --or-mark {MASQ_MARK}")],
    );
    chains.insert(
        ("nat", POSTROUTING.into()),
        vec![
            format!("-m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"),
            // Cleared so that a packet that is NATed again elsewhere is not masqueraded twice.
            format!("-j MARK --xor-mark {MASQ_MARK}"),
            "-m comment --comment \"trellis service traffic requiring SNAT\" -j MASQUERADE --random-fully".into(),
        ],
    );
    let mut services = Vec::new();
    let mut nodeports = Vec::new();
    let mut reject = Vec::new();
    let node_dsts: Vec<String> = if node.node_addresses.is_empty() {
        vec!["-m addrtype --dst-type LOCAL".into()]
    } else {
        node.node_addresses
            .iter()
            .map(|a| format!("-d {}", host(*a)))
            .collect()
    };

    for sp in ports {
        let proto = sp.protocol.iptables();
        let vip = format!("-d {}", host(sp.cluster_ip));
        let c = comment(sp);
        let internal = sp.usable(sp.internal_local);
        let all = sp.usable(false);
        // Every endpoint any chain may use gets its DNAT chain.
        let mut used: Vec<&Endpoint> = internal.clone();
        for e in all.iter().chain(sp.usable(true).iter()) {
            if !used.iter().any(|u| (u.ip, u.port) == (e.ip, e.port)) {
                used.push(e);
            }
        }
        for ep in &used {
            let sep = endpoint_chain(sp, ep);
            let mut rules = vec![format!("{c} -s {} -j {MARK_MASQ}", host(ep.ip))];
            if sp.affinity.is_some() {
                rules.push(format!(
                    "{c} -p {proto} -m recent --name {sep} --mask {} --rsource --set -j DNAT --to-destination {}",
                    full_mask(ep.ip),
                    dnat_to(ep.ip, ep.port)
                ));
            } else {
                rules.push(format!(
                    "{c} -p {proto} -j DNAT --to-destination {}",
                    dnat_to(ep.ip, ep.port)
                ));
            }
            chains.insert(("nat", sep), rules);
        }

        if internal.is_empty() {
            reject.push(reject_rule(sp, &vip, sp.port));
        } else {
            let chain = cluster_chain(sp);
            let mut rules = Vec::new();
            if let Some(cidr) = node.cluster_cidr {
                rules.push(format!(
                    "{c} ! -s {cidr} {vip} -p {proto} --dport {} -j {MARK_MASQ}",
                    sp.port
                ));
            }
            spread(sp, &internal, &mut rules);
            chains.insert(("nat", chain.clone()), rules);
            services.push(format!(
                "{c} {vip} -p {proto} --dport {} -j {chain}",
                sp.port
            ));
        }

        // Where outside traffic comes in: the node port on the node's addresses, the
        // service port on the load-balancer addresses.
        let mut entries: Vec<(String, u16)> = Vec::new();
        if let Some(np) = sp.node_port {
            entries.extend(node_dsts.iter().map(|d| (d.clone(), np)));
        }
        entries.extend(
            sp.load_balancer_ips
                .iter()
                .map(|ip| (format!("-d {}", host(*ip)), sp.port)),
        );
        if entries.is_empty() {
            continue;
        }
        let external = sp.usable(sp.external_local);
        if external.is_empty() && (!sp.external_local || all.is_empty()) {
            for (d, port) in &entries {
                reject.push(reject_rule(sp, d, *port));
            }
            continue;
        }
        let xchain = external_chain(sp);
        let mut x = Vec::new();
        if sp.external_local {
            // Pods and the node itself reach the service as through its cluster IP.
            if !all.is_empty() {
                let cchain = if sp.internal_local {
                    None
                } else {
                    Some(cluster_chain(sp))
                };
                if let Some(cchain) = cchain {
                    if let Some(cidr) = node.cluster_cidr {
                        x.push(format!("{c} -s {cidr} -j {cchain}"));
                    }
                    x.push(format!("{c} -m addrtype --src-type LOCAL -j {MARK_MASQ}"));
                    x.push(format!("{c} -m addrtype --src-type LOCAL -j {cchain}"));
                }
            }
            let lchain = local_chain(sp);
            let mut l = Vec::new();
            if external.is_empty() {
                // No endpoint here: the packet leaves nat untouched and the filter chain drops
                // it (as kube-proxy does; a load balancer's health check steers clients away).
                for (d, port) in &entries {
                    reject.push(format!(
                        "{c} -m comment --comment \"no local endpoints\" {d} -p {proto} --dport {port} -j DROP"
                    ));
                }
            } else {
                spread(sp, &external, &mut l);
            }
            chains.insert(("nat", lchain.clone()), l);
            x.push(format!("{c} -j {lchain}"));
        } else {
            x.push(format!("{c} -j {MARK_MASQ}"));
            spread(sp, &external, &mut x);
        }
        chains.insert(("nat", xchain.clone()), x);
        if let Some(np) = sp.node_port {
            nodeports.push(format!("{c} -p {proto} --dport {np} -j {xchain}"));
        }
        for ip in &sp.load_balancer_ips {
            services.push(format!(
                "{c} -d {} -p {proto} --dport {} -j {xchain}",
                host(*ip),
                sp.port
            ));
        }
    }
    if !nodeports.is_empty() {
        for d in &node_dsts {
            services.push(format!(
                "-m comment --comment \"trellis service nodeports\" {d} -j {NODEPORTS}"
            ));
        }
    }
    chains.insert(("nat", SERVICES.into()), services);
    chains.insert(("nat", NODEPORTS.into()), nodeports);
    chains.insert(("filter", REJECT.into()), reject);
    chains
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::fixtures::{ep, node, sp};

    #[test]
    fn chain_names_fit_iptables_and_are_ours() {
        let s = sp(vec![ep("10.244.1.2", true, false)]);
        for name in [
            cluster_chain(&s),
            external_chain(&s),
            local_chain(&s),
            endpoint_chain(&s, &s.endpoints[0]),
        ] {
            assert!(name.len() <= 28, "{name}");
            assert!(OWNED_PREFIXES.iter().any(|p| name.starts_with(p)));
        }
    }

    #[test]
    fn three_endpoints_get_a_third_each() {
        let s = sp(vec![
            ep("10.244.1.2", true, false),
            ep("10.244.1.3", true, false),
            ep("10.244.1.4", true, false),
        ]);
        let chains = compile(std::slice::from_ref(&s), &node());
        let c = &chains[&("nat", cluster_chain(&s))];
        assert!(c[0].contains("! -s 10.244.0.0/16"));
        assert!(c[1].contains("--probability 0.3333333333"));
        assert!(c[2].contains("--probability 0.5000000000"));
        assert!(!c[3].contains("statistic"));
        assert!(
            chains[&("nat", SERVICES.into())][0].contains("-d 10.96.0.20/32 -p tcp --dport 80")
        );
        assert!(chains[&("filter", REJECT.into())].is_empty());
    }

    #[test]
    fn no_endpoints_is_rejected_not_dnated() {
        let s = sp(vec![ep("10.244.1.2", false, false)]);
        let chains = compile(std::slice::from_ref(&s), &node());
        assert!(chains[&("nat", SERVICES.into())].is_empty());
        let r = &chains[&("filter", REJECT.into())];
        assert_eq!(r.len(), 1);
        assert!(r[0].contains("-d 10.96.0.20/32 -p tcp --dport 80 -j REJECT"));
    }

    #[test]
    fn hairpin_marks_the_endpoint_talking_to_itself() {
        let s = sp(vec![ep("10.244.1.2", true, false)]);
        let chains = compile(std::slice::from_ref(&s), &node());
        let sep = &chains[&("nat", endpoint_chain(&s, &s.endpoints[0]))];
        assert!(sep[0].contains("-s 10.244.1.2/32 -j TRELLIS-SVC-MARK-MASQ"));
        assert!(sep[1].ends_with("DNAT --to-destination 10.244.1.2:8080"));
    }

    #[test]
    fn external_local_uses_only_local_endpoints_without_masquerade() {
        let mut s = sp(vec![
            ep("10.244.1.2", true, true),
            ep("10.244.2.2", true, false),
        ]);
        s.node_port = Some(30080);
        s.external_local = true;
        let chains = compile(std::slice::from_ref(&s), &node());
        let l = &chains[&("nat", local_chain(&s))];
        assert_eq!(l.len(), 1);
        assert!(l[0].contains(&endpoint_chain(&s, &s.endpoints[0])));
        let x = &chains[&("nat", external_chain(&s))];
        assert!(x.last().unwrap().ends_with(&local_chain(&s)));
        assert!(
            !x.iter()
                .any(|r| r.ends_with(&format!("-j {MARK_MASQ}")) && !r.contains("LOCAL"))
        );
    }

    #[test]
    fn load_balancer_addresses_go_where_the_node_port_goes() {
        let mut s = sp(vec![ep("10.244.1.2", true, false)]);
        s.node_port = Some(30080);
        s.load_balancer_ips = vec!["203.0.113.1".parse().unwrap()];
        let chains = compile(std::slice::from_ref(&s), &node());
        let services = &chains[&("nat", SERVICES.into())];
        assert!(
            services
                .iter()
                .any(|r| r.contains("-d 203.0.113.1/32 -p tcp --dport 80 -j")
                    && r.ends_with(&external_chain(&s)))
        );
        let x = &chains[&("nat", external_chain(&s))];
        assert!(
            x[0].ends_with(&format!("-j {MARK_MASQ}")),
            "cluster policy masquerades"
        );
        // Without endpoints the address is refused, not black-holed.
        s.endpoints.clear();
        let chains = compile(std::slice::from_ref(&s), &node());
        assert!(
            chains[&("filter", REJECT.into())]
                .iter()
                .any(|r| r.contains("-d 203.0.113.1/32 -p tcp --dport 80 -j REJECT"))
        );
    }

    #[test]
    fn a_load_balancer_without_a_node_port_still_gets_its_address_served() {
        let mut s = sp(vec![ep("10.244.1.2", true, true)]);
        s.load_balancer_ips = vec!["203.0.113.1".parse().unwrap()];
        s.external_local = true;
        let chains = compile(std::slice::from_ref(&s), &node());
        assert!(chains[&("nat", NODEPORTS.into())].is_empty());
        assert!(
            chains[&("nat", SERVICES.into())]
                .iter()
                .any(|r| r.contains("-d 203.0.113.1/32"))
        );
        // Local policy, no endpoint on this node: dropped here (the health check steers away).
        s.endpoints[0].local = false;
        let chains = compile(std::slice::from_ref(&s), &node());
        assert!(
            chains[&("filter", REJECT.into())]
                .iter()
                .any(|r| r.contains("-d 203.0.113.1/32 -p tcp --dport 80 -j DROP"))
        );
    }

    #[test]
    fn odd_names_cannot_break_the_restore_input() {
        let mut s = sp(vec![ep("10.244.1.2", true, false)]);
        s.name.port = "a\" -j ACCEPT\n-A x".into();
        let chains = compile(std::slice::from_ref(&s), &node());
        for rules in chains.values() {
            for r in rules {
                assert!(!r.contains('\n'), "{r}");
                assert_eq!(r.matches('"').count() % 2, 0, "{r}");
                assert!(!r.contains("-j ACCEPT"), "{r}");
            }
        }
    }

    #[test]
    fn affinity_checks_recent_before_the_spread() {
        let mut s = sp(vec![
            ep("10.244.1.2", true, false),
            ep("10.244.1.3", true, false),
        ]);
        s.affinity = Some(10800);
        let chains = compile(std::slice::from_ref(&s), &node());
        let c = &chains[&("nat", cluster_chain(&s))];
        assert!(c[1].contains("--rcheck --seconds 10800"));
        assert!(c[2].contains("--rcheck"));
        assert!(c[3].contains("statistic"));
    }

    #[test]
    fn ipv6_rules_use_ipv6_hosts_destinations_and_rejects() {
        let mut s = sp(vec![ep("fd00:244::2", true, false)]);
        s.cluster_ip = "fd00:96::20".parse().unwrap();
        s.affinity = Some(60);
        s.node_port = Some(30080);
        let n = NodeRules {
            cluster_cidr: Some("fd00:244::/64".parse().unwrap()),
            node_addresses: vec!["fd00:198::1".parse().unwrap()],
        };
        let chains = compile(std::slice::from_ref(&s), &n);
        let services = &chains[&("nat", SERVICES.into())];
        assert!(
            services[0].contains("-d fd00:96::20/128 -p tcp --dport 80"),
            "{services:?}"
        );
        assert!(
            services
                .iter()
                .any(|r| r.contains("-d fd00:198::1/128 -j TRELLIS-NODEPORTS"))
        );
        let c = &chains[&("nat", cluster_chain(&s))];
        assert!(c[0].contains("! -s fd00:244::/64"));
        assert!(c[1].contains("--mask ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
        let sep = &chains[&("nat", endpoint_chain(&s, &s.endpoints[0]))];
        assert!(sep[0].contains("-s fd00:244::2/128"));
        assert!(
            sep[1].ends_with("DNAT --to-destination [fd00:244::2]:8080"),
            "{sep:?}"
        );
        s.endpoints.clear();
        let chains = compile(std::slice::from_ref(&s), &n);
        let r = &chains[&("filter", REJECT.into())];
        assert!(
            r[0].contains("-d fd00:96::20/128 -p tcp --dport 80 -j REJECT --reject-with tcp-reset"),
            "{r:?}"
        );
        // UDP (and SCTP) have no reset: ICMPv6 port unreachable.
        s.protocol = Protocol::Udp;
        let chains = compile(std::slice::from_ref(&s), &n);
        let r = &chains[&("filter", REJECT.into())];
        assert!(
            r[0].contains("-p udp --dport 80 -j REJECT --reject-with icmp6-port-unreachable"),
            "{r:?}"
        );
    }
}
