//! autoscaling/v1 HorizontalPodAutoscalers with real kubectl: Debian's 1.20 makes one with
//! `kubectl autoscale` (which speaks v1) and lists it; the image's kubectl reads the same object
//! through autoscaling/v2 with its CPU metric. A v2 object's behavior and other metrics survive
//! a v1 client's replace and patches (upstream's round-trip annotations), and never reach v2
//! readers as annotations.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{Value, json};
use support::TestServer;
use support::kubectl::{Kubectl, kubectl_1_20, kubectl_current};

const BEHAVIOR: &str = "autoscaling.alpha.kubernetes.io/behavior";
const METRICS: &str = "autoscaling.alpha.kubernetes.io/metrics";

/// The image's kubectl and kubectl 1.20 on one test server.
struct Clients {
    old: Kubectl,
    new: Kubectl,
    _server: TestServer,
}

async fn clients() -> Clients {
    let server = TestServer::start().await;
    let old = Kubectl::new(
        kubectl_1_20(),
        &server.running.kubeconfig,
        &server.dir.path().join("kubectl-1.20"),
    );
    let new = Kubectl::new(
        kubectl_current(),
        &server.running.kubeconfig,
        &server.dir.path().join("kubectl"),
    );
    old.assert_version("20").await;
    Clients {
        old,
        new,
        _server: server,
    }
}

fn cpu_metric(percent: i64) -> Value {
    json!({"type": "Resource", "resource": {"name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": percent}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_20_autoscales_and_the_newer_kubectl_reads_it_through_v2() {
    let Clients { old, new, _server } = clients().await;
    let versions = old.ok(&["api-versions"]).await.stdout;
    for v in ["autoscaling/v1", "autoscaling/v2"] {
        assert!(versions.lines().any(|l| l == v), "{v} in:\n{versions}");
    }
    new.ok(&["create", "deployment", "web", "--image=nginx"])
        .await;
    let out = old
        .ok(&[
            "autoscale",
            "deployment",
            "web",
            "--cpu-percent=50",
            "--min=1",
            "--max=4",
        ])
        .await
        .stdout;
    assert!(
        out.contains("horizontalpodautoscaler.autoscaling/web autoscaled"),
        "{out}"
    );
    // `kubectl get hpa` of 1.20: its columns, with the target.
    let table = old.ok(&["get", "hpa"]).await.stdout;
    for col in [
        "NAME",
        "REFERENCE",
        "TARGETS",
        "MINPODS",
        "MAXPODS",
        "REPLICAS",
    ] {
        assert!(table.contains(col), "{col} in:\n{table}");
    }
    let row = table
        .lines()
        .find(|l| l.starts_with("web "))
        .unwrap_or_else(|| panic!("no row for web:\n{table}"));
    assert!(
        row.contains("Deployment/web") && row.contains("50%"),
        "{row}"
    );

    // Through v1, as kubectl 1.20 wrote it.
    let v1 = old.get(&["hpa.v1.autoscaling", "web"]).await;
    assert_eq!(v1["apiVersion"], "autoscaling/v1");
    assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 50);
    assert_eq!(
        (&v1["spec"]["minReplicas"], &v1["spec"]["maxReplicas"]),
        (&json!(1), &json!(4))
    );
    assert_eq!(v1["spec"]["scaleTargetRef"]["kind"], "Deployment");
    // Nothing v1 cannot say, so no round-trip annotation.
    assert!(v1["metadata"]["annotations"].get(METRICS).is_none(), "{v1}");

    // Through v2 with the newer kubectl: the same object, its target a CPU metric.
    let v2 = new.get(&["hpa.v2.autoscaling", "web"]).await;
    assert_eq!(v2["apiVersion"], "autoscaling/v2");
    assert_eq!(v2["metadata"]["uid"], v1["metadata"]["uid"]);
    assert_eq!(v2["spec"]["metrics"], json!([cpu_metric(50)]));
    let table = new.ok(&["get", "hpa", "web"]).await.stdout;
    assert!(table.contains("cpu: <unknown>/50%"), "{table}");
    let described = new.ok(&["describe", "hpa", "web"]).await.stdout;
    assert!(
        described.contains("resource cpu on pods") && described.contains("50%"),
        "{described}"
    );

    // A v1 list and a delete through v1.
    let list: Value = serde_json::from_str(
        &old.ok(&[
            "get",
            "--raw",
            "/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers",
        ])
        .await
        .stdout,
    )
    .unwrap();
    assert_eq!(
        (&list["kind"], &list["apiVersion"]),
        (
            &json!("HorizontalPodAutoscalerList"),
            &json!("autoscaling/v1")
        )
    );
    assert_eq!(
        list["items"][0]["spec"]["targetCPUUtilizationPercentage"],
        50
    );
    old.ok(&["delete", "hpa.v1.autoscaling", "web"]).await;
    let gone = new.run(&["get", "hpa.v2.autoscaling", "web"]).await;
    assert!(
        !gone.ok && gone.stderr.contains("NotFound"),
        "{}",
        gone.stderr
    );
}

const V2_HPA: &str = r#"
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: web, annotations: {team: shop}}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  minReplicas: 1
  maxReplicas: 4
  metrics:
  - type: Resource
    resource: {name: memory, target: {type: AverageValue, averageValue: 100Mi}}
  - type: Resource
    resource: {name: cpu, target: {type: Utilization, averageUtilization: 50}}
  behavior:
    scaleUp:
      selectPolicy: Min
      policies: [{type: Pods, value: 1, periodSeconds: 60}, {type: Percent, value: 50, periodSeconds: 60}]
    scaleDown:
      stabilizationWindowSeconds: 120
      policies: [{type: Pods, value: 2, periodSeconds: 30}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behavior_and_other_metrics_survive_a_v1_clients_replace_and_patches() {
    let Clients { old, new, _server } = clients().await;
    let file = new.manifest("hpa-v2.yaml", V2_HPA);
    new.ok(&["apply", "-f", &file]).await;
    let before = new.get(&["hpa.v2.autoscaling", "web"]).await;
    let behavior = before["spec"]["behavior"].clone();
    // Defaulted where the spec said nothing, as upstream's.
    assert_eq!(behavior["scaleUp"]["stabilizationWindowSeconds"], 0);
    assert_eq!(behavior["scaleDown"]["selectPolicy"], "Max");

    // kubectl 1.20 reads v1: the CPU target as the field, the rest in annotations.
    let mut v1 = old.get(&["hpa.v1.autoscaling", "web"]).await;
    assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 50);
    let annotations = &v1["metadata"]["annotations"];
    assert_eq!(annotations["team"], "shop");
    let go: Value = serde_json::from_str(annotations[BEHAVIOR].as_str().unwrap()).unwrap();
    assert_eq!(go["ScaleUp"]["SelectPolicy"], "Min");
    assert_eq!(go["ScaleDown"]["StabilizationWindowSeconds"], 120);
    assert!(
        annotations[METRICS].as_str().unwrap().contains("memory"),
        "{annotations}"
    );

    // A v1 read-modify-write (kubectl replace of what it read) keeps them.
    v1["spec"]["maxReplicas"] = json!(6);
    v1["spec"]["targetCPUUtilizationPercentage"] = json!(70);
    let edited = old.manifest("hpa-v1.json", &v1.to_string());
    old.ok(&["replace", "-f", &edited]).await;
    let after = new.get(&["hpa.v2.autoscaling", "web"]).await;
    assert_eq!(after["spec"]["maxReplicas"], 6);
    assert_eq!(after["spec"]["behavior"], behavior);
    assert_eq!(
        after["spec"]["metrics"],
        json!([before["spec"]["metrics"][0], cpu_metric(70)])
    );
    // The round-trip annotations are never stored: v2 readers see the user's only (and
    // kubectl's last-applied-configuration, which replace keeps up to date).
    let annotations = after["metadata"]["annotations"].as_object().unwrap();
    assert_eq!(annotations["team"], "shop");
    assert!(
        !annotations
            .keys()
            .any(|k| k.starts_with("autoscaling.alpha.kubernetes.io/")),
        "{annotations:?}"
    );

    // Patches through v1 (merge and strategic) apply to the v1 view and keep the rest.
    old.ok(&[
        "patch",
        "hpa.v1.autoscaling",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"minReplicas":2}}"#,
    ])
    .await;
    old.ok(&[
        "patch",
        "hpa.v1.autoscaling",
        "web",
        "-p",
        r#"{"spec":{"targetCPUUtilizationPercentage":60}}"#,
    ])
    .await;
    let patched = new.get(&["hpa.v2.autoscaling", "web"]).await;
    assert_eq!(patched["spec"]["minReplicas"], 2);
    assert_eq!(patched["spec"]["behavior"], behavior);
    assert_eq!(patched["spec"]["metrics"][1], cpu_metric(60));
    assert_eq!(patched["spec"]["metrics"][0], before["spec"]["metrics"][0]);

    // A scaling rule without a policy is refused, as upstream's validation does.
    let bad = old.manifest(
        "bad.yaml",
        "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: bad}\nspec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}\n  maxReplicas: 2\n  behavior:\n    scaleUp: {policies: []}\n",
    );
    let run = new.run(&["create", "-f", &bad]).await;
    assert!(
        !run.ok && run.stderr.contains("must specify at least one Policy"),
        "{}",
        run.stderr
    );
}
