//! Real kubectl against the API server: `kubectl create -f` and `kubectl apply -f` with
//! client-side validation on (no `--validate=false`), which needs the server's OpenAPI documents.
//!
//! - The image's kubectl (`/usr/bin/kubectl`, a dispatcher that runs kubectl 1.33 against our
//!   v1.33 server) reads `/openapi/v3`, finds `fieldValidation` on the PATCH operation of each
//!   kind, and sends `?fieldValidation=Strict`: the server rejects unknown fields.
//! - Debian's kubectl 1.20 reads `/openapi/v2` as protobuf; it finds no definition for the kind
//!   and skips client-side validation, and does not know `fieldValidation`: the server accepts an
//!   unknown field with a warning (its default, `Warn`).
//!
//! Both then apply a changed Deployment with a strategic merge patch computed from the patch
//! metadata compiled into kubectl, and a custom resource with a JSON merge patch.
//!
//! A missing kubectl fails the test (with how to get it); it is never skipped.

mod support;

use std::path::PathBuf;

use support::kubectl::{Kubectl, kubectl_1_20, kubectl_current, tail};

/// A Deployment, a Service and a NetworkPolicy named `name`.
fn app(name: &str, image: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  labels: {{app: {name}}}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
      - name: web
        image: {image}
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: Service
metadata:
  name: {name}
spec:
  selector: {{app: {name}}}
  ports:
  - port: 80
    targetPort: 80
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {name}
spec:
  podSelector:
    matchLabels: {{app: {name}}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector: {{}}
    # The protocol spelled out: the server defaults it to TCP as upstream does, and `ports` is
    # an atomic list, so without it every apply would be a change (upstream's behaviour too).
    ports:
    - port: 80
      protocol: TCP
"#
    )
}

/// A Deployment whose spec has a field Deployments do not have.
const UNKNOWN_FIELD: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: typo
spec:
  replicaz: 2
  selector:
    matchLabels: {app: typo}
  template:
    metadata:
      labels: {app: typo}
    spec:
      containers:
      - name: web
        image: nginx:1.25
"#;

const CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
              color: {type: string}
"#;

fn widget(size: u32) -> String {
    format!(
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\nspec:\n  size: {size}\n  color: red\n"
    )
}

/// What differs between the two kubectl generations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Generation {
    /// kubectl ≥ 1.25: OpenAPI v3, server-side field validation.
    FieldValidation,
    /// kubectl 1.20: OpenAPI v2 (protobuf), client-side validation only.
    V2Only,
}

async fn scenario(k: &Kubectl, generation: Generation) {
    k.assert_version(match generation {
        Generation::FieldValidation => "33",
        Generation::V2Only => "20",
    })
    .await;
    // create -f, validation on.
    let created = k.manifest("created.yaml", &app("created", "nginx:1.25", 2));
    let run = k.ok(&["create", "-f", &created, "-v=6"]).await;
    for what in [
        "deployment.apps/created created",
        "service/created created",
        "networkpolicy.networking.k8s.io/created created",
    ] {
        assert!(run.stdout.contains(what), "{what}:\n{}", run.stdout);
    }
    assert!(!run.stderr.contains("failed to download openapi"));
    let openapi_line = |path: &str| {
        run.stderr
            .lines()
            .any(|l| l.contains(path) && l.contains("200 OK"))
    };
    match generation {
        Generation::FieldValidation => {
            assert!(
                openapi_line("/openapi/v3/apis/apps/v1?hash="),
                "kubectl fetched no OpenAPI v3 document:\n{}",
                tail(&run.stderr)
            );
            let strict_posts = run
                .stderr
                .lines()
                .filter(|l| l.contains("POST") && l.contains("fieldValidation=Strict"))
                .count();
            assert_eq!(
                strict_posts,
                3,
                "every create asks for strict validation:\n{}",
                tail(&run.stderr)
            );
        }
        Generation::V2Only => {
            assert!(
                openapi_line("/openapi/v2"),
                "kubectl fetched no OpenAPI v2 document:\n{}",
                tail(&run.stderr)
            );
            assert!(!run.stderr.contains("fieldValidation"));
        }
    }
    let d = k.get(&["deployment", "created"]).await;
    assert_eq!(d["spec"]["replicas"], 2);
    k.get(&["service", "created"]).await;
    k.get(&["networkpolicy", "created"]).await;

    // apply -f: creates, then patches with a changed image and replica count.
    let first = k.manifest("applied-1.yaml", &app("applied", "nginx:1.25", 2));
    let run = k.ok(&["apply", "-f", &first]).await;
    assert!(
        run.stdout.contains("deployment.apps/applied created"),
        "{}",
        run.stdout
    );
    let second = k.manifest("applied-2.yaml", &app("applied", "nginx:1.27", 3));
    let run = k.ok(&["apply", "-f", &second, "-v=8"]).await;
    for what in [
        "deployment.apps/applied configured",
        "service/applied unchanged",
        "networkpolicy.networking.k8s.io/applied unchanged",
    ] {
        assert!(run.stdout.contains(what), "{what}:\n{}", run.stdout);
    }
    assert!(
        run.stderr
            .contains("Content-Type: application/strategic-merge-patch+json"),
        "apply sends a strategic merge patch:\n{}",
        tail(&run.stderr)
    );
    // No schema to compute the patch from: kubectl must fall back silently, not warn.
    assert!(
        !run.stderr.contains("error calculating patch"),
        "{}",
        tail(&run.stderr)
    );
    let d = k.get(&["deployment", "applied"]).await;
    assert_eq!(d["spec"]["replicas"], 3);
    let containers = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    assert_eq!(containers.len(), 1, "{containers:?}");
    assert_eq!(containers[0]["image"], "nginx:1.27");
    assert_eq!(containers[0]["ports"][0]["containerPort"], 80);
    let last = d["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
        .as_str()
        .expect("last-applied-configuration");
    assert!(last.contains("nginx:1.27"), "{last}");

    // An unknown field.
    let typo = k.manifest("typo.yaml", UNKNOWN_FIELD);
    match generation {
        Generation::FieldValidation => {
            for verb in ["create", "apply"] {
                let run = k.run(&[verb, "-f", &typo]).await;
                assert!(!run.ok, "{verb} of an unknown field succeeded");
                assert!(
                    run.stderr.contains("strict decoding error")
                        && run.stderr.contains(r#"unknown field "spec.replicaz""#),
                    "{verb}: {}",
                    run.stderr
                );
            }
            let run = k.run(&["get", "deployment", "typo"]).await;
            assert!(!run.ok && run.stderr.contains("NotFound"), "{}", run.stderr);
        }
        Generation::V2Only => {
            // kubectl 1.20 skips client-side validation of a kind the v2 document has no
            // definition for, and sends no fieldValidation: the server's default (Warn)
            // accepts the object and warns about the field. (Upstream also drops the field;
            // whether ours keeps it is the server's business, not asserted here.)
            let run = k.ok(&["create", "-f", &typo]).await;
            assert!(
                run.stdout.contains("deployment.apps/typo created"),
                "{}",
                run.stdout
            );
            assert!(
                run.stderr.contains("Warning: unknown field")
                    && run.stderr.contains("spec.replicaz"),
                "{}",
                run.stderr
            );
            k.get(&["deployment", "typo"]).await;
        }
    }

    // A custom resource: created and applied twice, with a JSON merge patch.
    let crd = k.manifest("crd.yaml", CRD);
    k.ok(&["apply", "-f", &crd]).await;
    let w1 = k.manifest("widget-1.yaml", &widget(1));
    let run = k.ok(&["apply", "-f", &w1]).await;
    assert!(
        run.stdout.contains("widget.example.com/w created"),
        "{}",
        run.stdout
    );
    let w2 = k.manifest("widget-2.yaml", &widget(2));
    let run = k.ok(&["apply", "-f", &w2, "-v=8"]).await;
    assert!(
        run.stdout.contains("widget.example.com/w configured"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr
            .contains("Content-Type: application/merge-patch+json"),
        "{}",
        tail(&run.stderr)
    );
    let w = k.get(&["widget", "w"]).await;
    assert_eq!(w["spec"]["size"], 2);
    assert_eq!(w["spec"]["color"], "red");
}

async fn with_server(bin: PathBuf, generation: Generation) {
    let dir = tempfile::tempdir().expect("tempdir");
    let running = trellis_apiserver::start(trellis_apiserver::Config::new(
        dir.path().join("server"),
        "127.0.0.1:0".parse().expect("an address"),
    ))
    .await
    .expect("start the API server");
    let k = Kubectl::new(bin, &running.kubeconfig, &dir.path().join("client"));
    scenario(&k, generation).await;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_33_creates_and_applies_with_validation() {
    let bin = kubectl_current();
    with_server(bin, Generation::FieldValidation).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_20_creates_and_applies_with_validation() {
    let bin = kubectl_1_20();
    with_server(bin, Generation::V2Only).await;
}
