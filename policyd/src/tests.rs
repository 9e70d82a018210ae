//! The semantics as a table (like the spec), and the compiler checked against the evaluator on
//! generated clusters: every pair of pods and external addresses, every port, routed and
//! bridged, run through the compiled chains by a small interpreter.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use proptest::prelude::*;
use serde_json::{Value, json};

use crate::compile::{Options, compile};
use crate::eval::{Flow, evaluate};
use crate::model::{Cluster, ContainerPort, Pod};
use crate::rules::{Proto, Tier};
use crate::xt::{Match, Packet, Program, Target};
use crate::{cnp, names, netpol};

/// x, y, z with pods a, b, c each (a and b on n1, c on n2), serving 80/TCP "serve-80", 81/UDP
/// "serve-81", 82/SCTP "serve-82".
fn cluster() -> Cluster {
    let mut c = Cluster::default();
    for (i, ns) in ["x", "y", "z"].iter().enumerate() {
        c.namespaces.insert(
            ns.to_string(),
            BTreeMap::from([
                ("kubernetes.io/metadata.name".into(), ns.to_string()),
                ("ns".into(), ns.to_string()),
            ]),
        );
        for (j, pod) in ["a", "b", "c"].iter().enumerate() {
            let ip = Ipv4Addr::new(10, 244, i as u8 + 1, j as u8 + 1);
            let p = Pod {
                namespace: ns.to_string(),
                name: pod.to_string(),
                labels: BTreeMap::from([("pod".into(), pod.to_string())]),
                node: Some(if j == 2 { "n2" } else { "n1" }.into()),
                host_network: false,
                ips: vec![ip],
                ports: vec![
                    ContainerPort {
                        name: "serve-80".into(),
                        proto: Proto::Tcp,
                        port: 80,
                    },
                    ContainerPort {
                        name: "serve-81".into(),
                        proto: Proto::Udp,
                        port: 81,
                    },
                    ContainerPort {
                        name: "serve-82".into(),
                        proto: Proto::Sctp,
                        port: 82,
                    },
                ],
                iface: Some(format!("tr{ns}{pod}")),
            };
            c.pods.insert(p.key(), p);
        }
    }
    c
}

fn with_np(mut c: Cluster, ns: &str, name: &str, spec: Value) -> Cluster {
    let p = netpol::parse(ns, name, &spec);
    c.netpols.insert(p.key(), p);
    c
}

fn with_cnp(mut c: Cluster, name: &str, spec: Value) -> Cluster {
    let p = cnp::parse(name, &spec).unwrap();
    c.cnps.insert(name.into(), p);
    c
}

fn ip(c: &Cluster, key: &str) -> Ipv4Addr {
    c.pods[key].ips[0]
}

fn allowed(c: &Cluster, from: &str, to: &str, proto: Proto, port: u16) -> bool {
    let flow = Flow {
        src: ip(c, from),
        dst: ip(c, to),
        proto,
        port,
    };
    let v = evaluate(c, flow).allowed;
    assert_eq!(
        v,
        compiled_allows(c, flow),
        "compiler and evaluator disagree on {from} → {to} {proto}/{port}"
    );
    v
}

/// The compiled programs' answer: the source node's FORWARD (egress), the destination node's
/// (ingress), each routed (veth) and bridged (trellis0 ports).
fn compiled_allows(c: &Cluster, flow: Flow) -> bool {
    let mut results = Vec::new();
    for bridged in [false, true] {
        let src = c.pod_by_ip(flow.src);
        let dst = c.pod_by_ip(flow.dst);
        let node_of = |p: Option<&Pod>| p.and_then(|p| p.node.clone());
        let (sn, dn) = (node_of(src), node_of(dst));
        let iface = |p: Option<&Pod>| p.and_then(|p| p.iface.clone());
        let mut ok = true;
        let mut nodes: Vec<String> = [sn.clone(), dn.clone()].into_iter().flatten().collect();
        nodes.dedup();
        for node in nodes {
            let prog = compile(
                c,
                &Options {
                    node: node.clone(),
                    pending_deny: true,
                },
            );
            let from_here = sn.as_deref() == Some(node.as_str());
            let to_here = dn.as_deref() == Some(node.as_str());
            let (in_iface, phys_in) = match (from_here, bridged) {
                (true, false) => (iface(src).unwrap(), None),
                (true, true) => (names::BRIDGE.to_string(), iface(src)),
                (false, false) => ("eth0".to_string(), None),
                (false, true) => (names::VTEP.to_string(), None),
            };
            let out_iface = match (to_here, bridged) {
                (true, false) => iface(dst).unwrap(),
                (true, true) => names::BRIDGE.to_string(),
                (false, false) => "eth0".to_string(),
                (false, true) => names::VTEP.to_string(),
            };
            let p = Packet {
                src: flow.src,
                dst: flow.dst,
                proto: flow.proto,
                port: flow.port,
                in_iface,
                out_iface,
                phys_in,
                established: false,
            };
            if prog.traverse(names::FWD, &p) == Some(false) {
                ok = false;
            }
        }
        results.push(ok);
    }
    assert_eq!(
        results[0], results[1],
        "routed and bridged disagree on {flow:?}"
    );
    results[0]
}

const TCP: Proto = Proto::Tcp;
const UDP: Proto = Proto::Udp;
const SCTP: Proto = Proto::Sctp;

#[test]
fn no_policy_allows_everything() {
    let c = cluster();
    assert!(allowed(&c, "x/a", "y/c", TCP, 80));
}

#[test]
fn default_deny_ingress_isolates_only_selected_pods() {
    let c = with_np(cluster(), "x", "deny", json!({"podSelector": {}}));
    assert!(!allowed(&c, "y/a", "x/a", TCP, 80));
    assert!(!allowed(&c, "x/b", "x/a", TCP, 80));
    assert!(allowed(&c, "x/a", "y/a", TCP, 80), "egress is not isolated");
    assert!(allowed(&c, "y/a", "y/b", TCP, 80));
}

#[test]
fn pod_and_namespace_selectors_or_across_peers_and_within_one_peer() {
    let c = with_np(
        cluster(),
        "x",
        "p",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
            {"podSelector": {"matchLabels": {"pod": "b"}}},
            {"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "c"}}}
        ]}]}),
    );
    assert!(allowed(&c, "x/b", "x/a", TCP, 80));
    assert!(
        !allowed(&c, "y/b", "x/a", TCP, 80),
        "podSelector alone is the policy's namespace"
    );
    assert!(allowed(&c, "y/c", "x/a", TCP, 80), "both in one peer: AND");
    assert!(!allowed(&c, "y/a", "x/a", TCP, 80));
    assert!(!allowed(&c, "z/c", "x/a", TCP, 80));
    assert!(allowed(&c, "z/c", "x/b", TCP, 80), "x/b is not selected");
}

#[test]
fn namespace_name_label_and_not_in() {
    let c = with_np(
        cluster(),
        "x",
        "p",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["y"]}]}}]}]}),
    );
    assert!(allowed(&c, "z/a", "x/a", TCP, 80));
    assert!(allowed(&c, "x/b", "x/a", TCP, 80));
    assert!(!allowed(&c, "y/a", "x/a", TCP, 80));
}

#[test]
fn ports_by_number_range_name_and_protocol() {
    let c = with_np(
        cluster(),
        "x",
        "p",
        json!({"podSelector": {}, "ingress": [{"ports": [
            {"port": 80}, {"protocol": "UDP", "port": "serve-81"}, {"protocol": "SCTP", "port": 1000, "endPort": 2000}]}]}),
    );
    assert!(allowed(&c, "y/a", "x/a", TCP, 80));
    assert!(!allowed(&c, "y/a", "x/a", UDP, 80));
    assert!(allowed(&c, "y/a", "x/a", UDP, 81));
    assert!(!allowed(&c, "y/a", "x/a", TCP, 81));
    assert!(allowed(&c, "y/a", "x/a", SCTP, 1500));
    assert!(!allowed(&c, "y/a", "x/a", SCTP, 82));
}

#[test]
fn a_udp_only_rule_still_isolates_and_does_not_admit_tcp() {
    let c = with_np(
        cluster(),
        "x",
        "p",
        json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "UDP", "port": 80}]}]}),
    );
    assert!(!allowed(&c, "y/a", "x/a", TCP, 80));
    assert!(allowed(&c, "y/a", "x/a", UDP, 80));
}

#[test]
fn egress_named_ports_resolve_per_destination_pod() {
    let mut c = with_np(
        cluster(),
        "x",
        "p",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"namespaceSelector": {}}], "ports": [{"port": "serve-80"}]}]}),
    );
    c.pods.get_mut("y/b").unwrap().ports[0].port = 8080;
    assert!(allowed(&c, "x/a", "y/a", TCP, 80));
    assert!(!allowed(&c, "x/a", "y/b", TCP, 80));
    assert!(allowed(&c, "x/a", "y/b", TCP, 8080));
    assert!(!allowed(&c, "x/a", "y/c", TCP, 81));
}

#[test]
fn egress_and_ingress_both_have_to_allow() {
    let c = with_np(
        cluster(),
        "x",
        "deny-egress",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"]}),
    );
    assert!(!allowed(&c, "x/a", "y/a", TCP, 80));
    assert!(allowed(&c, "y/a", "x/a", TCP, 80), "ingress is independent");
}

#[test]
fn allows_are_a_union_across_policies() {
    let c = with_np(cluster(), "x", "deny", json!({"podSelector": {}}));
    let c = with_np(
        c,
        "x",
        "allow-y",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
    );
    assert!(allowed(&c, "y/a", "x/a", TCP, 80));
    assert!(!allowed(&c, "z/a", "x/a", TCP, 80));
}

#[test]
fn ip_blocks_with_except() {
    let mut c = with_np(
        cluster(),
        "x",
        "p",
        json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.2.0/24"]}}]}]}),
    );
    assert!(allowed(&c, "z/a", "x/a", TCP, 80));
    assert!(!allowed(&c, "y/a", "x/a", TCP, 80), "y is 10.244.2.0/24");
    // A second policy may still allow what an except excluded.
    c = with_np(
        c,
        "x",
        "q",
        json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.244.2.1/32"}}]}]}),
    );
    assert!(allowed(&c, "y/a", "x/a", TCP, 80));
    assert!(!allowed(&c, "y/b", "x/a", TCP, 80));
}

#[test]
fn admin_deny_beats_a_network_policy_allow_and_pass_defers() {
    let allow = json!({"podSelector": {}, "ingress": [{}]});
    let c = with_np(cluster(), "x", "allow-all", allow);
    let strict = json!({"tier": "Admin", "priority": 500,
        "subject": {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "x"}}},
        "ingress": [
            {"action": "Accept", "from": [{"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "x"}}}]},
            {"action": "Deny", "from": [{"namespaces": {}}]}]});
    let c2 = with_cnp(c.clone(), "strict", strict);
    assert!(!allowed(&c2, "y/a", "x/a", TCP, 80));
    assert!(allowed(&c2, "x/b", "x/a", TCP, 80));
    let v = evaluate(
        &c2,
        Flow {
            src: ip(&c2, "y/a"),
            dst: ip(&c2, "x/a"),
            proto: TCP,
            port: 80,
        },
    );
    let d = v.deciding().unwrap();
    assert_eq!(
        (d.tier, d.policy.as_deref(), d.rule.as_deref()),
        (Tier::Admin, Some("strict"), Some("1"))
    );
    // Pass at a higher priority (lower number) defers y's traffic to the NetworkPolicy tier.
    let pass = json!({"tier": "Admin", "priority": 10,
        "subject": {"namespaces": {}},
        "ingress": [{"name": "from-y", "action": "Pass", "from": [{"namespaces": {"matchLabels": {"ns": "y"}}}]}]});
    let c3 = with_cnp(c2, "pass-y", pass);
    assert!(allowed(&c3, "y/a", "x/a", TCP, 80));
    assert!(!allowed(&c3, "z/a", "x/a", TCP, 80));
}

#[test]
fn baseline_deny_is_overridden_by_a_network_policy() {
    let isolate = json!({"tier": "Baseline", "priority": 500,
        "subject": {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "x"}}},
        "ingress": [
            {"action": "Accept", "from": [{"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "x"}}}]},
            {"action": "Deny", "from": [{"namespaces": {}}]}]});
    let c = with_cnp(cluster(), "trellis-isolate-x", isolate);
    assert!(!allowed(&c, "y/a", "x/a", TCP, 80));
    assert!(allowed(&c, "x/b", "x/a", TCP, 80));
    assert!(allowed(&c, "x/a", "y/a", TCP, 80));
    let c = with_np(
        c,
        "x",
        "allow-y-to-a",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
    );
    assert!(allowed(&c, "y/a", "x/a", TCP, 80));
    assert!(!allowed(&c, "y/a", "x/b", TCP, 80));
}

#[test]
fn a_failed_closed_direction_denies_and_others_keep_working() {
    let c = with_np(
        cluster(),
        "x",
        "bad",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"ipBlock": {"cidr": "nonsense"}}]}]}),
    );
    let c = with_np(c, "y", "good", json!({"podSelector": {}}));
    assert!(!allowed(&c, "z/a", "x/a", TCP, 80));
    assert!(allowed(&c, "z/a", "x/b", TCP, 80));
    assert!(!allowed(&c, "z/a", "y/b", TCP, 80));
}

#[test]
fn a_pod_spoofing_another_pods_address_is_dropped() {
    let c = with_np(cluster(), "x", "deny", json!({"podSelector": {}}));
    let c = with_np(
        c,
        "x",
        "from-b",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    );
    let prog = compile(
        &c,
        &Options {
            node: "n1".into(),
            pending_deny: true,
        },
    );
    // y/a (on n1, interface tryа) sends with x/b's address.
    let p = Packet {
        src: ip(&c, "x/b"),
        dst: ip(&c, "x/a"),
        proto: TCP,
        port: 80,
        in_iface: "trya".into(),
        out_iface: "trxa".into(),
        phys_in: None,
        established: false,
    };
    assert_eq!(prog.traverse(names::FWD, &p), Some(false));
    let honest = Packet {
        in_iface: "trxb".into(),
        ..p
    };
    assert_eq!(prog.traverse(names::FWD, &honest), None);
}

#[test]
fn pending_pods_are_dropped_until_committed_and_replies_always_pass() {
    let c = cluster();
    let prog = compile(
        &c,
        &Options {
            node: "n1".into(),
            pending_deny: true,
        },
    );
    let new_pod = Packet {
        src: "10.244.9.9".parse().unwrap(),
        dst: ip(&c, "x/a"),
        proto: TCP,
        port: 80,
        in_iface: "trnew".into(),
        out_iface: "trxa".into(),
        phys_in: None,
        established: false,
    };
    assert_eq!(prog.traverse(names::FWD, &new_pod), Some(false));
    let to_new = Packet {
        src: ip(&c, "x/a"),
        dst: "10.244.9.9".parse().unwrap(),
        in_iface: "trxa".into(),
        out_iface: "trnew".into(),
        ..new_pod.clone()
    };
    assert_eq!(prog.traverse(names::FWD, &to_new), Some(false));
    let reply = Packet {
        established: true,
        ..new_pod.clone()
    };
    assert_eq!(prog.traverse(names::FWD, &reply), Some(true));
    let off = compile(
        &c,
        &Options {
            node: "n1".into(),
            pending_deny: false,
        },
    );
    assert_eq!(off.traverse(names::FWD, &new_pod), None);
    // Traffic between other nodes' pods through the VTEP is not ours to judge.
    let transit = Packet {
        dst: "10.244.7.7".parse().unwrap(),
        in_iface: names::VTEP.into(),
        out_iface: "eth0".into(),
        ..new_pod
    };
    assert_eq!(prog.traverse(names::FWD, &transit), None);
}

#[test]
fn the_same_model_compiles_to_the_same_names() {
    let c = with_np(
        cluster(),
        "x",
        "p",
        json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
    );
    let a = compile(
        &c,
        &Options {
            node: "n1".into(),
            pending_deny: true,
        },
    );
    let b = compile(
        &c.clone(),
        &Options {
            node: "n1".into(),
            pending_deny: true,
        },
    );
    assert_eq!(a, b);
    // Pod churn: a new pod in a peer changes set members, not rules.
    let mut c2 = c.clone();
    let mut p = c2.pods["x/c"].clone();
    p.name = "d".into();
    p.node = Some("n2".into());
    p.ips = vec!["10.244.1.40".parse().unwrap()];
    c2.pods.insert(p.key(), p);
    let d = compile(
        &c2,
        &Options {
            node: "n1".into(),
            pending_deny: true,
        },
    );
    assert_eq!(a.chains, d.chains);
    assert_ne!(a.sets, d.sets);
}

// ---- generated cases: the compiler against the evaluator ----

fn peer_strategy() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({"podSelector": {"matchLabels": {"pod": "a"}}})),
        Just(json!({"podSelector": {}})),
        Just(json!({"namespaceSelector": {"matchLabels": {"ns": "y"}}})),
        Just(
            json!({"namespaceSelector": {}, "podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["b", "c"]}]}})
        ),
        Just(json!({"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.3.0/24"]}})),
        Just(json!({"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.244.1.2/32"]}})),
        Just(json!({"ipBlock": {"cidr": "10.244.2.0/24"}})),
    ]
}

fn port_strategy() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({"port": 80})),
        Just(json!({"protocol": "UDP", "port": 81})),
        Just(json!({"port": "serve-80"})),
        Just(json!({"protocol": "UDP", "port": "serve-81"})),
        Just(json!({"protocol": "SCTP"})),
        Just(json!({"port": 79, "endPort": 81})),
    ]
}

fn np_rule(dir: &'static str) -> impl Strategy<Value = Value> {
    (
        proptest::option::of(proptest::collection::vec(peer_strategy(), 0..3)),
        proptest::option::of(proptest::collection::vec(port_strategy(), 0..3)),
    )
        .prop_map(move |(peers, ports)| {
            let mut r = json!({});
            if let Some(p) = peers {
                r[dir] = Value::Array(p);
            }
            if let Some(p) = ports {
                r["ports"] = Value::Array(p);
            }
            r
        })
}

fn np_strategy() -> impl Strategy<Value = (String, Value)> {
    (
        prop_oneof![Just("x"), Just("y"), Just("z")],
        prop_oneof![
            Just(json!({})),
            Just(json!({"matchLabels": {"pod": "a"}})),
            Just(json!({"matchLabels": {"pod": "c"}}))
        ],
        proptest::collection::vec(np_rule("from"), 0..3),
        proptest::collection::vec(np_rule("to"), 0..3),
        prop_oneof![
            Just(None),
            Just(Some(vec!["Ingress"])),
            Just(Some(vec!["Egress"])),
            Just(Some(vec!["Ingress", "Egress"]))
        ],
    )
        .prop_map(|(ns, sel, ingress, egress, types)| {
            let mut spec = json!({"podSelector": sel, "ingress": ingress, "egress": egress});
            if let Some(t) = types {
                spec["policyTypes"] = json!(t);
            }
            (ns.to_string(), spec)
        })
}

fn cnp_peer() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({"namespaces": {}})),
        Just(json!({"namespaces": {"matchLabels": {"ns": "y"}}})),
        Just(
            json!({"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "b"}}}})
        ),
    ]
}

fn cnp_strategy() -> impl Strategy<Value = Value> {
    let rule = |dir: &'static str| {
        (
            prop_oneof![Just("Accept"), Just("Deny"), Just("Pass")],
            proptest::collection::vec(cnp_peer(), 1..3),
            proptest::option::of(prop_oneof![
                Just(json!([{"portNumber": {"protocol": "TCP", "port": 80}}])),
                Just(json!([{"namedPort": "serve-81"}])),
                Just(json!([{"portRange": {"protocol": "SCTP", "start": 80, "end": 90}}])),
            ]),
        )
            .prop_map(move |(action, peers, ports)| {
                let mut r = json!({"action": action});
                r[dir] = Value::Array(peers);
                if let Some(p) = ports {
                    r["ports"] = p;
                }
                r
            })
    };
    (
        prop_oneof![Just("Admin"), Just("Baseline")],
        0u32..3,
        prop_oneof![
            Just(json!({"namespaces": {"matchLabels": {"ns": "x"}}})),
            Just(json!({"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "a"}}}})),
        ],
        proptest::collection::vec(rule("from"), 0..3),
        proptest::collection::vec(rule("to"), 0..3),
    )
        .prop_map(|(tier, priority, subject, ingress, egress)| {
            json!({"tier": tier, "priority": priority, "subject": subject, "ingress": ingress, "egress": egress})
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn compiled_chains_agree_with_the_evaluator(
        nps in proptest::collection::vec(np_strategy(), 0..4),
        cnps in proptest::collection::vec(cnp_strategy(), 0..3),
    ) {
        let mut c = cluster();
        for (i, (ns, spec)) in nps.into_iter().enumerate() {
            c = with_np(c, &ns, &format!("np{i}"), spec);
        }
        for (i, spec) in cnps.into_iter().enumerate() {
            c = with_cnp(c, &format!("cnp{i}"), spec);
        }
        let keys: Vec<String> = c.pods.keys().cloned().collect();
        let outside: Ipv4Addr = "172.16.0.1".parse().unwrap();
        for from in &keys {
            for to in &keys {
                if from == to {
                    continue;
                }
                for (proto, port) in [(TCP, 80), (TCP, 81), (UDP, 81), (SCTP, 82)] {
                    allowed(&c, from, to, proto, port);
                }
            }
            for (src, dst) in [(ip(&c, from), outside), (outside, ip(&c, from))] {
                let flow = Flow { src, dst, proto: TCP, port: 80 };
                prop_assert_eq!(evaluate(&c, flow).allowed, compiled_allows(&c, flow), "{:?}", flow);
            }
        }
    }
}

/// The benchmark's cluster: 5,000 pods in 50 namespaces (50 of them on node n0), 1,000
/// NetworkPolicies with pod, namespace, named-port and ipBlock peers.
fn scale_cluster() -> Cluster {
    let mut c = Cluster::default();
    for n in 0..50 {
        c.namespaces.insert(
            format!("ns{n}"),
            BTreeMap::from([
                ("team".into(), format!("t{}", n % 5)),
                ("kubernetes.io/metadata.name".into(), format!("ns{n}")),
            ]),
        );
    }
    for i in 0..5000u32 {
        let p = Pod {
            namespace: format!("ns{}", i % 50),
            name: format!("p{i}"),
            labels: BTreeMap::from([
                ("app".into(), format!("a{}", i % 20)),
                ("tier".into(), format!("{}", i % 3)),
            ]),
            node: Some(if i < 50 {
                "n0".into()
            } else {
                format!("n{}", 1 + i % 99)
            }),
            host_network: false,
            ips: vec![Ipv4Addr::from(0x0af4_0000 + i)],
            ports: vec![ContainerPort {
                name: "http".into(),
                proto: Proto::Tcp,
                port: 8080,
            }],
            iface: Some(format!("tr{i:011x}")),
        };
        c.pods.insert(p.key(), p);
    }
    for i in 0..1000u32 {
        let spec = json!({"podSelector": {"matchLabels": {"app": format!("a{}", i % 20)}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": format!("a{}", (i + 1) % 20)}}},
                                   {"namespaceSelector": {"matchLabels": {"team": format!("t{}", i % 5)}}}],
                         "ports": [{"port": 8080}, {"port": "http"}]}],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": [format!("10.{}.0.0/16", i % 200)]}}]}]});
        c = with_np(c, &format!("ns{}", i % 50), &format!("np{i}"), spec);
    }
    c
}

/// The benchmark's cluster (`cargo bench -p netns-testbed --bench policy-scale` measures its
/// programming time) compiles to the same program every time — chain and set names are hashes
/// of what they hold, so a restart rewrites nothing — and each node gets its own program.
#[test]
fn the_scale_cluster_compiles_the_same_program_every_time() {
    let c = scale_cluster();
    let on = |node: &str| Options {
        node: node.into(),
        pending_deny: true,
    };
    let first = compile(&c, &on("n0"));
    assert!(
        first.rule_count() > 0 && first.member_count() > 0,
        "{first:?}"
    );
    assert_eq!(compile(&c, &on("n0")), first);
    assert_ne!(compile(&c, &on("n1")), first);
}

// ---- pod events: a change set, not a recompile ----

use crate::compile::{Plan, plan_pods};

fn on(node: &str) -> Options {
    Options {
        node: node.into(),
        pending_deny: true,
    }
}

/// Plans the change from `before` to `after` (pods only), checks that applied to the program
/// of `before` it gives exactly the program of `after`, and returns it.
fn planned(before: &Cluster, after: &Cluster, node: &str) -> Plan {
    let opts = on(node);
    let mut prog = compile(before, &opts);
    let keys: std::collections::BTreeSet<&String> =
        before.pods.keys().chain(after.pods.keys()).collect();
    let changed: BTreeMap<String, Option<Pod>> = keys
        .into_iter()
        .filter(|k| before.pods.get(*k) != after.pods.get(*k))
        .map(|k| (k.clone(), before.pods.get(k).cloned()))
        .collect();
    let plan = plan_pods(&prog, after, &opts, &changed);
    plan.apply_to(&mut prog);
    assert_eq!(
        prog,
        compile(after, &opts),
        "the change set does not lead to the whole program"
    );
    plan
}

/// The (set, member) pairs `pod` brings to the program's sets.
fn memberships(
    prog: &Program,
    c: &Cluster,
    pod: &Pod,
) -> std::collections::BTreeSet<(String, crate::xt::Member)> {
    prog.sources
        .iter()
        .flat_map(|(n, src)| {
            src.members_of(c, pod)
                .into_iter()
                .map(move |m| (n.clone(), m))
        })
        .collect()
}

fn far_pod(ns: &str, name: &str, app: &str, ip: &str) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: BTreeMap::from([("app".into(), app.into())]),
        node: Some("n77".into()),
        host_network: false,
        ips: vec![ip.parse().unwrap()],
        ports: vec![ContainerPort {
            name: "http".into(),
            proto: Proto::Tcp,
            port: 8080,
        }],
        iface: None,
    }
}

#[test]
fn an_unrelated_pods_arrival_touches_no_rule_only_its_set_members() {
    let before = scale_cluster();
    let mut after = before.clone();
    // ns1 is team t1; app a2 is the peer of the policies selecting a1 there.
    let new = far_pod("ns1", "new", "a2", "10.250.0.1");
    after.pods.insert(new.key(), new.clone());
    let plan = planned(&before, &after, "n0");
    assert!(plan.chains.is_empty() && plan.delete.is_empty(), "{plan:?}");
    assert!(plan.new_sets.is_empty() && plan.destroy.is_empty() && plan.del.is_empty());
    let prog = compile(&before, &on("n0"));
    let want = memberships(&prog, &after, &new);
    assert!(
        !want.is_empty(),
        "the new pod is a peer of some local pod's policy"
    );
    let added: std::collections::BTreeSet<_> = plan.add.iter().cloned().collect();
    assert_eq!(added, want);
    assert!(
        plan.add
            .iter()
            .all(|(_, m)| m.addr() == Some("10.250.0.1".parse().unwrap()))
    );
}

#[test]
fn a_relabelled_or_removed_pod_moves_between_sets_and_touches_no_rule() {
    let before = scale_cluster();
    // p100 (ns0, app a0) on a far node becomes app a1 — the peer of np0, which selects the
    // local p0 — and back; then it is deleted.
    let key = "ns0/p100".to_string();
    let mut after = before.clone();
    after
        .pods
        .get_mut(&key)
        .unwrap()
        .labels
        .insert("app".into(), "a1".into());
    let plan = planned(&before, &after, "n0");
    assert!(plan.chains.is_empty() && plan.delete.is_empty() && plan.destroy.is_empty());
    assert!(!plan.add.is_empty() && plan.del.is_empty(), "{plan:?}");
    let back = planned(&after, &before, "n0");
    assert!(back.chains.is_empty() && back.add.is_empty() && !back.del.is_empty());
    let (mut a, mut d) = (plan.add.clone(), back.del.clone());
    a.sort();
    d.sort();
    assert_eq!(a, d);
    let mut gone = before.clone();
    gone.pods.remove(&key);
    let plan = planned(&before, &gone, "n0");
    assert!(plan.chains.is_empty() && plan.add.is_empty() && !plan.del.is_empty());
    let prog = compile(&before, &on("n0"));
    let removed: std::collections::BTreeSet<_> = plan.del.iter().cloned().collect();
    assert_eq!(removed, memberships(&prog, &before, &before.pods[&key]));
}

#[test]
fn a_shared_address_stays_while_another_pod_still_holds_it() {
    let before = scale_cluster();
    // A second pod with p100's address and labels (an address reused before the old Pod is
    // gone): removing one of them must not take the address out of the sets.
    let mut twin = before.pods["ns0/p100"].clone();
    twin.name = "twin".into();
    let mut both = before.clone();
    both.pods.insert(twin.key(), twin);
    let plan = planned(&before, &both, "n0");
    assert!(plan.is_empty(), "{plan:?}");
    let mut one = both.clone();
    one.pods.remove("ns0/p100");
    assert!(planned(&both, &one, "n0").is_empty());
}

#[test]
fn a_local_pods_arrival_writes_only_its_chains_and_the_dispatch() {
    let before = scale_cluster();
    let mut after = before.clone();
    let mut new = far_pod("ns1", "local", "a1", "10.250.0.3");
    new.node = Some("n0".into());
    new.iface = Some("trlocal".into());
    after.pods.insert(new.key(), new.clone());
    let plan = planned(&before, &after, "n0");
    let key = new.key();
    let allowed: Vec<String> = vec![
        names::ingress_chain(&key),
        names::egress_chain(&key),
        names::EGRESS.into(),
        names::INGRESS.into(),
        names::OUT.into(),
    ];
    assert!(
        plan.chains.keys().all(|c| allowed.contains(c)),
        "{:?}",
        plan.chains.keys()
    );
    assert!(plan.chains.contains_key(&names::ingress_chain(&key)));
    // And it leaves: its chains go, the dispatch shrinks.
    let plan = planned(&after, &before, "n0");
    assert!(plan.delete.contains(&names::ingress_chain(&key)));
    assert!(plan.chains.keys().all(|c| allowed.contains(c)));
}

fn pod_event() -> impl Strategy<Value = (usize, u8, u8, u8, bool)> {
    // (which pod of 12 — the 9 of `cluster()` and 3 more, label, node, address, host network)
    (
        0usize..12,
        0u8..4,
        0u8..3,
        0u8..3,
        proptest::bool::weighted(0.1),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any sequence of pod events (arrivals, departures, relabels, moves between nodes, new
    /// addresses, address clashes), planned as change sets one after the other, keeps the
    /// program exactly what a whole compile gives.
    #[test]
    fn pod_event_change_sets_equal_a_whole_compile(
        nps in proptest::collection::vec(np_strategy(), 0..4),
        cnps in proptest::collection::vec(cnp_strategy(), 0..3),
        events in proptest::collection::vec(pod_event(), 1..12),
    ) {
        let mut c = cluster();
        for (i, (ns, spec)) in nps.into_iter().enumerate() {
            c = with_np(c, &ns, &format!("np{i}"), spec);
        }
        for (i, spec) in cnps.into_iter().enumerate() {
            c = with_cnp(c, &format!("cnp{i}"), spec);
        }
        let keys: Vec<String> = c.pods.keys().cloned().chain(["x/d", "y/d", "z/d"].map(String::from)).collect();
        let opts = on("n1");
        let template = c.pods["x/a"].clone();
        let mut prog = compile(&c, &opts);
        for (which, label, node, addr, host) in events {
            let key = &keys[which];
            let before = c.pods.get(key).cloned();
            if label == 3 {
                c.pods.remove(key);
            } else {
                let (ns, name) = key.split_once('/').unwrap();
                let mut p = before.clone().unwrap_or_else(|| {
                    let mut p = template.clone();
                    p.namespace = ns.into();
                    p.name = name.into();
                    p
                });
                p.labels.insert("pod".into(), ["a", "b", "c"][label as usize].into());
                p.node = Some(["n1", "n2", "n3"][node as usize].into());
                p.iface = Some(format!("tr{ns}{name}"));
                // Address 0 is the pod's own; 1 and 2 clash with x/a's and y/c's.
                p.ips = vec![match addr {
                    0 => Ipv4Addr::new(10, 244, 9, which as u8),
                    1 => "10.244.1.1".parse().unwrap(),
                    _ => "10.244.2.3".parse().unwrap(),
                }];
                p.host_network = host;
                c.pods.insert(key.clone(), p);
            }
            let changed = BTreeMap::from([(key.clone(), before)]);
            let plan = plan_pods(&prog, &c, &opts, &changed);
            plan.apply_to(&mut prog);
            prop_assert_eq!(&prog, &compile(&c, &opts));
        }
    }
}

/// Committed through the dataplane, a far pod's arrival is one set-member change: no
/// iptables-restore at all, and the kernel's sets end up as a whole commit would leave them.
#[tokio::test]
async fn a_far_pods_arrival_commits_without_iptables_restore() {
    use crate::sync::{Syncer, fake::Fake};
    let before = scale_cluster();
    let mut after = before.clone();
    let new = far_pod("ns1", "new", "a2", "10.250.0.1");
    after.pods.insert(new.key(), new);
    let opts = on("n0");
    let dp = Fake::default();
    let mut syncer = Syncer::default();
    syncer.commit(&dp, &compile(&before, &opts)).await.unwrap();
    let restores = dp.restores.lock().unwrap().len();
    let changed = BTreeMap::from([("ns1/new".to_string(), None)]);
    let plan = plan_pods(syncer.committed.as_ref().unwrap(), &after, &opts, &changed);
    let stats = syncer.apply(&dp, &plan).await.unwrap();
    assert_eq!(
        dp.restores.lock().unwrap().len(),
        restores,
        "no iptables-restore"
    );
    assert_eq!((stats.chains_written, stats.chains_deleted), (0, 0));
    assert!(stats.members_added > 0);
    let whole = compile(&after, &opts);
    assert_eq!(syncer.committed.as_ref(), Some(&whole));
    assert_eq!(*dp.sets.lock().unwrap(), whole.sets);
}

// ---- policy events: a change set of the local pods' chains, sets not recomputed ----

use crate::compile::plan_policies;

/// The cluster of `cluster()` with these policies (names by position, as the generators give).
fn with_policies(nps: &[(String, Value)], cnps: &[Value]) -> Cluster {
    let mut c = cluster();
    for (i, (ns, spec)) in nps.iter().enumerate() {
        c = with_np(c, ns, &format!("np{i}"), spec.clone());
    }
    for (i, spec) in cnps.iter().enumerate() {
        c = with_cnp(c, &format!("cnp{i}"), spec.clone());
    }
    c
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any sequence of policy changes (NetworkPolicies and ClusterNetworkPolicies added,
    /// changed, removed), planned as change sets one after the other against what is
    /// committed, keeps the program exactly what a whole compile gives.
    #[test]
    fn policy_event_change_sets_equal_a_whole_compile(
        steps in proptest::collection::vec(
            (
                proptest::collection::vec(np_strategy(), 0..4),
                proptest::collection::vec(cnp_strategy(), 0..3),
            ),
            1..5,
        ),
    ) {
        let opts = on("n1");
        let mut prog = compile(&cluster(), &opts);
        for (nps, cnps) in steps {
            let c = with_policies(&nps, &cnps);
            let plan = plan_policies(&prog, &c, &opts);
            plan.apply_to(&mut prog);
            prop_assert_eq!(&prog, &compile(&c, &opts));
        }
    }
}

#[test]
fn a_policy_change_rewrites_only_the_chains_of_the_pods_it_selects() {
    let before = scale_cluster();
    // np0 selects app a0 in ns0; its ports change.
    let spec = json!({"podSelector": {"matchLabels": {"app": "a0"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "a1"}}},
                               {"namespaceSelector": {"matchLabels": {"team": "t0"}}}],
                     "ports": [{"port": 9090}, {"port": "http"}]}],
        "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/16"]}}]}]});
    let after = with_np(before.clone(), "ns0", "np0", spec);
    let opts = on("n0");
    let mut prog = compile(&before, &opts);
    let plan = plan_policies(&prog, &after, &opts);
    let selected: Vec<String> = after
        .local_pods("n0")
        .filter(|p| p.namespace == "ns0" && p.labels.get("app").map(String::as_str) == Some("a0"))
        .map(|p| names::ingress_chain(&p.key()))
        .collect();
    assert!(!selected.is_empty(), "np0 selects a local pod");
    assert_eq!(
        plan.chains.keys().cloned().collect::<Vec<_>>(),
        selected,
        "only the selected pods' ingress chains"
    );
    assert!(plan.delete.is_empty() && plan.new_sets.is_empty() && plan.destroy.is_empty());
    assert!(
        plan.add.is_empty() && plan.del.is_empty(),
        "no set member changes"
    );
    plan.apply_to(&mut prog);
    assert_eq!(prog, compile(&after, &opts));
}

/// Other nodes' packets skip the egress dispatch when every local pod's interface is known (two
/// rules per local pod saved on every new connection into the node), and walk it as before when
/// a pod is dispatched by address alone.
#[test]
fn only_pod_interfaces_enter_the_egress_dispatch_when_every_interface_is_known() {
    let c = with_np(
        cluster(),
        "x",
        "deny-egress",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"]}),
    );
    let opts = Options {
        node: "n1".into(),
        pending_deny: true,
    };
    let jump_match = |prog: &Program, chain: &str| {
        prog.chains[chain]
            .iter()
            .find(|r| r.target == Target::Jump(names::EGRESS.into()))
            .map(|r| r.matches.clone())
            .expect("a jump to the egress dispatch")
    };
    let prog = compile(&c, &opts);
    let from_pods = vec![Match::InIface(names::POD_IFACE_WILDCARD.into())];
    assert_eq!(jump_match(&prog, names::FWD), from_pods);
    assert_eq!(jump_match(&prog, names::IN), from_pods);
    // x/a's egress is denied from its own interface, whatever the path.
    let from_xa = Packet {
        src: ip(&c, "x/a"),
        dst: ip(&c, "y/c"),
        proto: TCP,
        port: 80,
        in_iface: "trxa".into(),
        out_iface: "eth0".into(),
        phys_in: None,
        established: false,
    };
    assert_eq!(prog.traverse(names::FWD, &from_xa), Some(false));

    // x/a's interface unknown: dispatched by its address on any interface, so every packet
    // enters the chain (here one from the underlay carrying x/a's address gets x/a's egress).
    let mut c2 = c.clone();
    if let Some(p) = c2.pods.get_mut("x/a") {
        p.iface = None;
    }
    let prog = compile(&c2, &opts);
    assert!(jump_match(&prog, names::FWD).is_empty());
    assert!(jump_match(&prog, names::IN).is_empty());
    let via_underlay = Packet {
        in_iface: "eth0".into(),
        ..from_xa
    };
    assert_eq!(prog.traverse(names::FWD, &via_underlay), Some(false));
}
