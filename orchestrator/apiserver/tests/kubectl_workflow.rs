//! An operator's day with real kubectl (the image's 1.33 and Debian's 1.20), no
//! `--validate=false`: namespace, apply of a workload with a CRD and a custom object, apply
//! again after an edit, get in every shape (a custom resource's printer columns included), a
//! watch that sees another client's change, scale, label, annotate, a rollout-undo-style JSON
//! patch, delete --wait, namespace deletion.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::TestServer;
use support::kubectl::{Kubectl, kubectl_1_20, kubectl_current, tail};
use tokio::io::{AsyncBufReadExt, BufReader};

fn manifest(image: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {{plural: gadgets, singular: gadget, kind: Gadget, shortNames: [gd]}}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
    additionalPrinterColumns:
    - {{name: Size, type: integer, jsonPath: .spec.size}}
---
apiVersion: example.com/v1
kind: Gadget
metadata: {{name: g1, namespace: shop}}
spec: {{size: 3}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: shop, labels: {{app: web}}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: web
        image: {image}
        ports: [{{containerPort: 80}}]
        env: [{{name: MODE, value: prod}}]
      - name: log
        image: busybox:1.36
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 80}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: web, namespace: shop}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  ingress: [{{from: [{{podSelector: {{}}}}]}}]
"#
    )
}

/// `kubectl apply -f` until every object is in: a custom object can only be mapped once its CRD
/// is served, which the first run creates (as with any Kubernetes API server).
async fn apply_until_done(k: &Kubectl, file: &str) -> String {
    let mut last = String::new();
    for _ in 0..5 {
        let run = k.run(&["apply", "-f", file]).await;
        if run.ok {
            return run.stdout;
        }
        last = format!("{}\n{}", run.stdout, tail(&run.stderr));
        assert!(
            run.stderr.contains("ensure CRDs are installed first")
                || run.stderr.contains("no matches for kind"),
            "{last}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("apply never completed:\n{last}");
}

async fn workflow(k: Kubectl, s: &TestServer, minor: &str) {
    k.assert_version(minor).await;
    k.ok(&["create", "namespace", "shop"]).await;
    let v1 = k.manifest("v1.yaml", &manifest("nginx:1.25", 2));
    apply_until_done(&k, &v1).await;
    let d = k.get(&["deployment", "web", "-n", "shop"]).await;
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(
        k.get(&["gadget", "g1", "-n", "shop"]).await["spec"]["size"],
        3
    );

    // Edit image and replicas, apply again: a strategic merge patch that keeps the other container.
    let v2 = k.manifest("v2.yaml", &manifest("nginx:1.27", 3));
    let out = k.ok(&["apply", "-f", &v2]).await.stdout;
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    assert!(out.contains("service/web unchanged"), "{out}");
    let d = k.get(&["deployment", "web", "-n", "shop"]).await;
    assert_eq!(d["spec"]["replicas"], 3);
    let containers = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(
        (containers.len(), containers[0]["image"].as_str()),
        (2, Some("nginx:1.27"))
    );
    assert_eq!(d["metadata"]["generation"], 2);

    // get in every shape.
    let wide = k
        .ok(&["get", "deployments", "-n", "shop", "-o", "wide"])
        .await
        .stdout;
    for col in [
        "READY",
        "UP-TO-DATE",
        "AVAILABLE",
        "CONTAINERS",
        "IMAGES",
        "SELECTOR",
        "nginx:1.27,busybox:1.36",
    ] {
        assert!(wide.contains(col), "{col} in:\n{wide}");
    }
    let svc = k.ok(&["get", "svc", "-n", "shop"]).await.stdout;
    assert!(
        svc.contains("CLUSTER-IP") && svc.contains("80/TCP") && svc.contains("10."),
        "{svc}"
    );
    let pol = k.ok(&["get", "netpol", "-n", "shop"]).await.stdout;
    assert!(
        pol.contains("POD-SELECTOR") && pol.contains("app=web"),
        "{pol}"
    );
    // A custom resource prints the columns its CRD defines.
    let gadgets = k.ok(&["get", "gadgets", "-n", "shop"]).await.stdout;
    let mut lines = gadgets
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>());
    assert_eq!(lines.next(), Some(vec!["NAME", "SIZE"]), "{gadgets}");
    assert_eq!(lines.next(), Some(vec!["g1", "3"]), "{gadgets}");
    let yaml = k
        .ok(&["get", "deploy", "web", "-n", "shop", "-o", "yaml"])
        .await
        .stdout;
    assert!(
        yaml.contains("kind: Deployment") && yaml.contains("resourceVersion:"),
        "{yaml}"
    );
    let labelled = k.ok(&["get", "deploy", "-A", "-l", "app=web"]).await.stdout;
    assert!(
        labelled.contains("NAMESPACE") && labelled.contains("shop") && labelled.contains("web"),
        "{labelled}"
    );
    let none = k.ok(&["get", "deploy", "-A", "-l", "app=nothing"]).await;
    assert!(!none.stdout.contains("web"), "{}", none.stdout);
    let all_ns = k.ok(&["get", "namespaces"]).await.stdout;
    assert!(
        all_ns.contains("shop") && all_ns.contains("Active"),
        "{all_ns}"
    );

    // get -w sees a change made by another client: the change is made once the watch is open
    // at the server, and the test waits for the event itself (bounded), not for a while.
    let open_before = s.open_watches().await;
    let mut watch = tokio::process::Command::new(&k.bin);
    watch
        .args(["--kubeconfig"])
        .arg(&k.kubeconfig)
        .arg("--cache-dir")
        .arg(k.home.join("cache"))
        .args([
            "get",
            "deploy",
            "web",
            "-n",
            "shop",
            "-w",
            "--output-watch-events",
            "--request-timeout=30s",
        ])
        .env("HOME", &k.home)
        .env("CLOUDSDK_CONFIG", k.home.join("gcloud"))
        .env_remove("KUBECONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut watcher = watch.spawn().unwrap();
    let mut lines = BufReader::new(watcher.stdout.take().unwrap()).lines();
    s.wait_open_watches(open_before + 1).await;
    let other = s.client().await;
    let api: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::namespaced(other, "shop");
    api.patch(
        "web",
        &Default::default(),
        &kube::api::Patch::Merge(serde_json::json!({"metadata": {"labels": {"seen": "yes"}}})),
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut seen = String::new();
    loop {
        match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Ok(Ok(Some(line))) => {
                seen.push_str(&line);
                seen.push('\n');
                if line.contains("MODIFIED") {
                    break;
                }
            }
            Ok(Ok(None)) => panic!("the watch ended before the change arrived:\n{seen}"),
            Ok(Err(e)) => panic!("reading the watch: {e}\n{seen}"),
            Err(_) => panic!("no MODIFIED event within 20 s of the change:\n{seen}"),
        }
    }
    let _ = watcher.start_kill();
    let _ = watcher.wait().await;
    assert!(
        seen.contains("ADDED") && seen.contains("MODIFIED"),
        "the watch saw the other client's change:\n{seen}"
    );

    // scale, label, annotate.
    k.ok(&["scale", "deployment", "web", "-n", "shop", "--replicas=5"])
        .await;
    k.ok(&["label", "deployment", "web", "-n", "shop", "tier=frontend"])
        .await;
    k.ok(&[
        "annotate",
        "deployment",
        "web",
        "-n",
        "shop",
        "owner=team-a",
    ])
    .await;
    let d = k.get(&["deployment", "web", "-n", "shop"]).await;
    assert_eq!(d["spec"]["replicas"], 5);
    assert_eq!(d["metadata"]["labels"]["tier"], "frontend");
    assert_eq!(d["metadata"]["annotations"]["owner"], "team-a");

    // What `kubectl rollout undo` sends: a JSON patch replacing the template and annotations.
    let undo = r#"[{"op":"replace","path":"/spec/template","value":{"metadata":{"labels":{"app":"web"}},"spec":{"containers":[{"name":"web","image":"nginx:1.25"}]}}},{"op":"replace","path":"/metadata/annotations","value":{"deployment.kubernetes.io/revision":"3"}}]"#;
    k.ok(&[
        "patch",
        "deployment",
        "web",
        "-n",
        "shop",
        "--type=json",
        "-p",
        undo,
    ])
    .await;
    let d = k.get(&["deployment", "web", "-n", "shop"]).await;
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.25"
    );
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "3"
    );

    // delete --wait, then the whole namespace.
    k.ok(&[
        "delete",
        "deployment",
        "web",
        "-n",
        "shop",
        "--wait",
        "--timeout=30s",
    ])
    .await;
    let gone = k.run(&["get", "deployment", "web", "-n", "shop"]).await;
    assert!(
        !gone.ok && gone.stderr.contains("NotFound"),
        "{}",
        gone.stderr
    );
    k.ok(&["delete", "namespace", "shop", "--wait", "--timeout=60s"])
        .await;
    let left = k
        .run(&["get", "svc,netpol,gadgets", "-n", "shop", "-o", "name"])
        .await;
    assert!(
        left.stdout.trim().is_empty(),
        "the namespace's content went with it: {}",
        left.stdout
    );
    assert!(
        !k.ok(&["get", "namespaces", "-o", "name"])
            .await
            .stdout
            .contains("namespace/shop")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_33_workflow() {
    let s = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    workflow(
        Kubectl::new(kubectl_current(), &s.running.kubeconfig, dir.path()),
        &s,
        "33",
    )
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_20_workflow() {
    let s = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    workflow(
        Kubectl::new(kubectl_1_20(), &s.running.kubeconfig, dir.path()),
        &s,
        "20",
    )
    .await;
    s.stop().await;
}
