//! Policies through a real kubectl (1.33): a malformed NetworkPolicy is refused with upstream's
//! field paths and nothing is stored, a good one is accepted; the ClusterNetworkPolicy definition
//! that policyd ships is accepted and served, its objects are checked against its schema
//! (refused with field paths, unknown fields refused under kubectl's strict validation,
//! defaults filled in), and `kubectl get cnp` prints its printer columns.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::kubectl::{Kubectl, kubectl_current, tail};

const CRD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../policyd/deploy/clusternetworkpolicy.yaml"
);

const BAD_POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad, namespace: x}
spec:
  podSelector:
    matchExpressions: [{key: app, operator: Exists, values: [web]}]
  policyTypes: [Ingress, Sideways]
  ingress:
  - from:
    - ipBlock: {cidr: 10.0.0.0/33}
    - ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}
    - podSelector: {matchExpressions: [{key: role, operator: Equals, values: [a]}]}
    ports:
    - {protocol: ICMP, port: 80}
    - {protocol: TCP, port: 90, endPort: 80}
    - {protocol: TCP, port: 70000}
    - {protocol: UDP, port: dns, endPort: 60}
"#;

const GOOD_POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: good, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: "y"}}
      podSelector: {matchExpressions: [{key: role, operator: In, values: [a, b]}]}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
    ports:
    - {port: 80, endPort: 90}
    - {protocol: UDP, port: dns}
"#;

const GOOD_CNP: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: deny-x-from-y}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: x}}}
  ingress:
  - name: no-y
    action: Deny
    from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: "y"}}}]
    ports: [{portNumber: {port: 80}}, {portRange: {protocol: UDP, start: 1000, end: 2000}}, {namedPort: http}]
"#;

const BAD_CNP: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: bad}
spec:
  tier: Gold
  priority: 2000
  subject:
    namespaces: {}
    pods: {namespaceSelector: {}, podSelector: {}}
  egress:
  - action: Allow
    to: [{namespaces: {}}]
    ports: [{portNumber: {protocol: ICMP, port: 0}}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_refuses_malformed_policies_and_accepts_good_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let running = trellis_apiserver::start(trellis_apiserver::Config::new(
        dir.path().join("server"),
        "127.0.0.1:0".parse().unwrap(),
    ))
    .await
    .expect("the API server starts");
    let k = Kubectl::new(
        kubectl_current(),
        &running.kubeconfig,
        &dir.path().join("client"),
    );
    k.ok(&["create", "namespace", "x"]).await;

    // NetworkPolicy: every mistake is named at its field, as upstream names it.
    let bad = k.manifest("bad.yaml", BAD_POLICY);
    let run = k.run(&["apply", "-f", &bad]).await;
    assert!(
        !run.ok,
        "a malformed NetworkPolicy was accepted: {}",
        run.stdout
    );
    for line in [
        r#"The NetworkPolicy "bad" is invalid"#,
        "spec.podSelector.matchExpressions[0].values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
        r#"spec.policyTypes[1]: Unsupported value: "Sideways": supported values: "Egress", "Ingress""#,
        r#"spec.ingress[0].from[0].ipBlock.cidr: Invalid value: "10.0.0.0/33": must be a valid CIDR value"#,
        r#"spec.ingress[0].from[1].ipBlock.except[0]: Invalid value: "11.0.0.0/16": must be a strict subset of `cidr`"#,
        r#"spec.ingress[0].from[2].podSelector.matchExpressions[0].operator: Invalid value: "Equals": not a valid selector operator"#,
        r#"spec.ingress[0].ports[0].protocol: Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP""#,
        "spec.ingress[0].ports[1].endPort: Invalid value: 90: must be greater than or equal to `port`",
        "spec.ingress[0].ports[2].port: Invalid value: 70000: must be between 1 and 65535, inclusive",
        "spec.ingress[0].ports[3].endPort: Invalid value: 60: may not be specified when `port` is non-numeric",
    ] {
        assert!(
            run.stderr.contains(line),
            "kubectl does not say {line:?}:\n{}",
            tail(&run.stderr)
        );
    }
    let gone = k.run(&["get", "networkpolicy", "bad", "-n", "x"]).await;
    assert!(!gone.ok, "a refused policy was stored");

    let good = k.manifest("good.yaml", GOOD_POLICY);
    let run = k.ok(&["apply", "-f", &good]).await;
    assert!(
        run.stdout
            .contains("networkpolicy.networking.k8s.io/good created"),
        "{}",
        run.stdout
    );
    let stored = k.get(&["networkpolicy", "good", "-n", "x"]).await;
    assert_eq!(
        stored["spec"]["ingress"][0]["ports"][0]["protocol"], "TCP",
        "a port's protocol defaults to TCP"
    );
    assert_eq!(
        stored["spec"]["policyTypes"],
        serde_json::json!(["Ingress"])
    );

    // The ClusterNetworkPolicy definition policyd ships.
    let run = k.ok(&["apply", "-f", CRD]).await;
    assert!(
        run.stdout.contains(
            "customresourcedefinition.apiextensions.k8s.io/clusternetworkpolicies.policy.networking.k8s.io created"
        ),
        "{}",
        run.stdout
    );
    let cnp = k.manifest("cnp.yaml", GOOD_CNP);
    let run = k.ok(&["apply", "-f", &cnp]).await;
    assert!(
        run.stdout
            .contains("clusternetworkpolicy.policy.networking.k8s.io/deny-x-from-y created"),
        "{}",
        run.stdout
    );
    let stored = k.get(&["cnp", "deny-x-from-y"]).await;
    assert_eq!(
        stored["spec"]["ingress"][0]["ports"][0]["portNumber"],
        serde_json::json!({"protocol": "TCP", "port": 80}),
        "the schema's default protocol is filled in"
    );
    let table = k.ok(&["get", "clusternetworkpolicies"]).await.stdout;
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "TIER", "PRIORITY", "AGE"], "{table}");
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row[..3], ["deny-x-from-y", "Admin", "10"], "{table}");

    let bad_cnp = k.manifest("bad-cnp.yaml", BAD_CNP);
    let run = k.run(&["apply", "-f", &bad_cnp]).await;
    assert!(!run.ok, "a malformed ClusterNetworkPolicy was accepted");
    for line in [
        r#"The ClusterNetworkPolicy "bad" is invalid"#,
        r#"spec.tier: Unsupported value: "Gold": supported values: "Admin", "Baseline""#,
        "spec.priority: Invalid value: 2000: spec.priority in body should be less than or equal to 1000",
        "spec.subject: Invalid value: 2: spec.subject in body should have at most 1 properties",
        r#"spec.egress[0].action: Unsupported value: "Allow": supported values: "Accept", "Deny", "Pass""#,
        r#"spec.egress[0].ports[0].portNumber.protocol: Unsupported value: "ICMP""#,
        "spec.egress[0].ports[0].portNumber.port: Invalid value: 0: spec.egress[0].ports[0].portNumber.port in body should be greater than or equal to 1",
    ] {
        assert!(
            run.stderr.contains(line),
            "kubectl does not say {line:?}:\n{}",
            tail(&run.stderr)
        );
    }
    // More than 25 rules in a direction.
    let rule = "  - {action: Deny, from: [{namespaces: {}}]}\n";
    let many = format!(
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: many}}\nspec:\n  tier: Baseline\n  priority: 1\n  subject: {{namespaces: {{}}}}\n  ingress:\n{}",
        rule.repeat(26)
    );
    let run = k
        .run(&["apply", "-f", &k.manifest("many.yaml", &many)])
        .await;
    assert!(
        !run.ok
            && run
                .stderr
                .contains("spec.ingress: Too many: 26: must have at most 25 items"),
        "{}",
        tail(&run.stderr)
    );
    // An unknown field: kubectl asks for strict validation, so it is refused, not dropped.
    let unknown = GOOD_CNP.replace("priority: 10", "priority: 10\n  bogus: 1");
    let run = k
        .run(&["apply", "-f", &k.manifest("unknown.yaml", &unknown)])
        .await;
    assert!(
        !run.ok && run.stderr.contains(r#"unknown field "spec.bogus""#),
        "{}",
        tail(&run.stderr)
    );
    for name in ["bad", "many"] {
        assert!(!k.run(&["get", "cnp", name]).await.ok, "{name} was stored");
    }
    running.shutdown().await;
}
