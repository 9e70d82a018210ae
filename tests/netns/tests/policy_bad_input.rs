//! Bad input: malformed NetworkPolicies are refused by the API server where upstream refuses
//! them (bad CIDR, bad selector, unknown protocol, …); a policy the API accepts but policyd
//! cannot enforce (a ClusterNetworkPolicy port range ending below its start, which the CRD's
//! schema cannot refuse) fails closed, with an Event, while the other policies keep working; an
//! IPv6 peer on this IPv4 data path simply matches no pod; and a chain of ours deleted by hand
//! comes back within one verify period.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/overlay_cluster.rs"]
mod overlay_cluster;
#[path = "support/policy_cluster.rs"]
mod policy_cluster;
#[path = "support/routed_cluster.rs"]
mod routed_cluster;

use std::time::{Duration, Instant};

use netns_testbed::policy_model::{
    Action, Cnp, CnpRule, CnpSel, NetworkPolicy, NpPeer, NpRule, Selector, Tier,
};
use policy_cluster::{Mode, PolicyCluster};
use serde_json::json;

const CONVERGE: Duration = Duration::from_secs(15);

fn np(name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "x"},
        "spec": spec,
    })
}

/// Malformed policies, each with what upstream's validation says about it.
fn malformed() -> Vec<(&'static str, serde_json::Value)> {
    vec![
        (
            "bad-cidr",
            np(
                "bad-cidr",
                json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}),
            ),
        ),
        (
            "not-a-cidr",
            np(
                "not-a-cidr",
                json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "ten.0.0.0/8"}}]}]}),
            ),
        ),
        (
            "except-outside",
            np(
                "except-outside",
                json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24"]}}]}]}),
            ),
        ),
        (
            "bad-label-value",
            np(
                "bad-label-value",
                json!({"podSelector": {"matchLabels": {"pod": "a b"}}}),
            ),
        ),
        (
            "bad-operator",
            np(
                "bad-operator",
                json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "Maybe", "values": ["a"]}]}}),
            ),
        ),
        (
            "exists-with-values",
            np(
                "exists-with-values",
                json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "Exists", "values": ["a"]}]}}),
            ),
        ),
        (
            "bad-protocol",
            np(
                "bad-protocol",
                json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "ICMP", "port": 80}]}]}),
            ),
        ),
        (
            "bad-port",
            np(
                "bad-port",
                json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "TCP", "port": 70000}]}]}),
            ),
        ),
        (
            "endport-below-port",
            np(
                "endport-below-port",
                json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "TCP", "port": 81, "endPort": 80}]}]}),
            ),
        ),
        (
            "bad-policy-type",
            np(
                "bad-policy-type",
                json!({"podSelector": {}, "policyTypes": ["Sideways"]}),
            ),
        ),
    ]
}

async fn bad_input(mode: Mode) {
    let mut c = PolicyCluster::start(mode).await;
    // A policy that works, to see it keeps working.
    c.apply_np(
        NetworkPolicy::new("y", "from-x", Selector::all()).ingress(vec![NpRule {
            peers: vec![NpPeer::namespaces(Selector::eq("ns", "x"))],
            ports: vec![],
        }]),
    )
    .await;
    c.converge("y accepts only x", CONVERGE).await;

    let mut accepted = Vec::new();
    for (what, obj) in malformed() {
        match c.try_np("x", obj).await {
            Err(kube::Error::Api(s)) if s.code == 422 => {
                eprintln!("[{mode:?}] {what}: refused (422): {}", s.message)
            }
            Err(e) => panic!("{what}: refused, but not as invalid (422): {e}"),
            Ok(()) => accepted.push(what),
        }
    }
    assert!(
        accepted.is_empty(),
        "the API server accepted malformed NetworkPolicies: {accepted:?}"
    );
    c.converge("nothing changed by the refused policies", CONVERGE)
        .await;

    // An IPv6 peer (valid) next to a valid rule: on this IPv4 data path it matches no pod, and
    // the rest of the policy works.
    let v6 = np(
        "v6-peer",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
            {"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]},
            {"from": [{"ipBlock": {"cidr": "fd00::/8"}}]},
        ]}),
    );
    c.try_np("x", v6).await.expect("an IPv6 ipBlock is valid");
    c.world.policies.push(
        NetworkPolicy::new("x", "v6-peer", Selector::eq("pod", "a")).ingress(vec![NpRule {
            peers: vec![NpPeer::namespaces(Selector::eq("ns", "y"))],
            ports: vec![],
        }]),
    );
    c.converge(
        "an IPv6 peer matches no pod; the policy's other rule works",
        CONVERGE,
    )
    .await;

    // Accepted by the API (the CRD's schema cannot say end ≥ start) but not enforceable: a
    // ClusterNetworkPolicy whose ingress has a port range ending below its start. Its direction
    // fails closed — one Deny of everything for its subject, at its priority — with an Event,
    // and everything else keeps working.
    let bad = json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": "bad-range"},
        "spec": {
            "tier": "Admin",
            "priority": 100,
            "subject": {"pods": {"namespaceSelector": {"matchLabels": {"ns": "x"}}, "podSelector": {"matchLabels": {"pod": "b"}}}},
            "ingress": [{"name": "backwards", "action": "Accept", "from": [{"namespaces": {}}],
                         "ports": [{"portRange": {"protocol": "TCP", "start": 90, "end": 80}}]}],
        },
    });
    c.try_cnp(bad)
        .await
        .expect("the schema admits a backwards range");
    c.world.cnps.push(Cnp {
        name: "bad-range".into(),
        tier: Tier::Admin,
        priority: 100,
        subject: CnpSel::Pods {
            namespaces: Selector::eq("ns", "x"),
            pods: Selector::eq("pod", "b"),
        },
        ingress: vec![CnpRule {
            name: "failed closed".into(),
            action: Action::Deny,
            peers: vec![CnpSel::Namespaces(Selector::all())],
            ports: None,
        }],
        egress: vec![],
    });
    c.converge(
        "a ClusterNetworkPolicy with a backwards port range fails closed for x/b",
        CONVERGE,
    )
    .await;
    let events: kube::Api<k8s_openapi::api::core::v1::Event> = kube::Api::all(c.client.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = events.list(&Default::default()).await.unwrap();
        if let Some(e) = list
            .items
            .iter()
            .find(|e| e.involved_object.name.as_deref() == Some("bad-range"))
        {
            eprintln!(
                "[{mode:?}] Event for bad-range: {:?} {:?}",
                e.reason, e.message
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no Event about the failed-closed ClusterNetworkPolicy bad-range within 10 s: {:?}",
            list.items
                .iter()
                .map(|e| (&e.involved_object.name, &e.message))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And policyd keeps serving changes to the other policies.
    c.delete_np("y", "from-x").await;
    c.converge("y's policy deleted while the IPv6 one stays", CONVERGE)
        .await;
    assert_eq!(c.readyz(0).await, Some(200));
    c.finish();
}

/// Deletes chain TRELLIS-POL-FWD by hand on node `i` — its jumps, its rules and the chain —
/// in one `iptables-restore --noflush` transaction: done step by step, the (running) verifier
/// may put the jump back between the steps and the chain cannot be deleted ("busy").
async fn delete_fwd_chain(c: &PolicyCluster, i: usize) {
    let rules = c.iptables(i, &["-S", "FORWARD"]).await.stdout;
    let mut script = String::from("*filter\n");
    for j in rules.lines().filter(|l| policy_cluster::is_fwd_jump(l)) {
        script.push_str(&j.replacen("-A FORWARD", "-D FORWARD", 1));
        script.push('\n');
    }
    script.push_str("-F TRELLIS-POL-FWD\n-X TRELLIS-POL-FWD\nCOMMIT\n");
    let out = c
        .tb()
        .exec_stdin(
            &c.nodes[i].node.ns,
            &["iptables-restore", "--noflush", "-w"],
            script.as_bytes(),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert!(
        out.success(),
        "delete TRELLIS-POL-FWD:\n{script}{}",
        out.stderr
    );
    assert!(!c.iptables(i, &["-S", "TRELLIS-POL-FWD"]).await.success() || c.has_fwd_jump(i).await);
}

async fn deleted_chain(mode: Mode) {
    let mut c = PolicyCluster::start(mode).await;
    c.apply_np(NetworkPolicy::new("x", "deny-all", Selector::all()).ingress(vec![]))
        .await;
    c.converge("deny all into x", CONVERGE).await;
    let period = c.opts.verify_period;
    let margin = Duration::from_millis(1000);
    for node in 0..c.nodes.len() {
        let before = c.iptables(node, &["-S", "TRELLIS-POL-FWD"]).await.stdout;
        delete_fwd_chain(&c, node).await;
        let t = Instant::now();
        loop {
            let now = c.iptables(node, &["-S", "TRELLIS-POL-FWD"]).await;
            if now.success() && now.stdout == before && c.has_fwd_jump(node).await {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "TRELLIS-POL-FWD on node {node} never came back:\n{}",
                c.logs_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = t.elapsed();
        eprintln!(
            "[{mode:?}] node {node}: TRELLIS-POL-FWD (chain, rules and jump) restored {took:?} after it was deleted"
        );
        assert!(
            took <= period + margin,
            "restored after {took:?}: more than one verify period ({period:?}) + {margin:?}"
        );
    }
    c.converge("after the repairs", CONVERGE).await;
    // Still a working daemon: a change is applied.
    c.delete_np("x", "deny-all").await;
    c.converge("policy deleted after the repairs", CONVERGE)
        .await;
    c.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_policies_are_refused_and_unsupported_ones_fail_closed_overlay() {
    bad_input(Mode::Overlay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_policies_are_refused_and_unsupported_ones_fail_closed_routed() {
    bad_input(Mode::Routed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chain_deleted_by_hand_comes_back_within_a_period_overlay() {
    deleted_chain(Mode::Overlay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chain_deleted_by_hand_comes_back_within_a_period_routed() {
    deleted_chain(Mode::Routed).await;
}
