//! kubectl 1.33's generators go through client-go's typed clientset, which sends built-in objects
//! as protobuf (`application/vnd.kubernetes.protobuf`) and never falls back to JSON. Each command
//! here runs without `--validate=false`, and each object is read back to check that its fields
//! made it through. Commands that send JSON (`run`, `expose`, `delete`) run too, for the workflow.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use base64::Engine;
use serde_json::{Value, json};
use support::TestServer;
use support::kubectl::{Kubectl, kubectl_current, tail};

/// What `-v=8` prints for a request body in protobuf.
const PROTOBUF_REQUEST: &str = "Content-Type: application/vnd.kubernetes.protobuf";

/// Runs a kubectl command that must succeed and must have sent protobuf.
async fn protobuf(k: &Kubectl, args: &[&str]) {
    // In front: whatever follows `--` is the container's command.
    let mut with_log = vec!["-v=8"];
    with_log.extend_from_slice(args);
    let run = k.ok(&with_log).await;
    assert!(
        run.stderr.contains(PROTOBUF_REQUEST),
        "kubectl {args:?} sent no protobuf body, so this test does not test it:\n{}",
        tail(&run.stderr)
    );
}

fn b64(s: &str) -> Value {
    json!(base64::engine::general_purpose::STANDARD.encode(s))
}

fn unb64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().expect("a base64 string"))
        .expect("valid base64")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_generators_send_protobuf_and_every_field_arrives() {
    let s = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let k = Kubectl::new(kubectl_current(), &s.running.kubeconfig, dir.path());
    k.assert_version("33").await;

    protobuf(&k, &["create", "namespace", "shop"]).await;
    let v = k.get(&["namespace", "shop"]).await;
    assert_eq!(v["metadata"]["name"], "shop");

    // ConfigMap and Secrets: data as strings and base64.
    protobuf(
        &k,
        &[
            "create",
            "configmap",
            "cfg",
            "-n",
            "shop",
            "--from-literal=greeting=hello world",
            "--from-literal=n=1",
        ],
    )
    .await;
    let v = k.get(&["configmap", "cfg", "-n", "shop"]).await;
    assert_eq!(v["data"], json!({"greeting": "hello world", "n": "1"}));

    protobuf(
        &k,
        &[
            "create",
            "secret",
            "generic",
            "creds",
            "-n",
            "shop",
            "--from-literal=user=admin",
            "--from-literal=pw=p@ss w0rd",
        ],
    )
    .await;
    let v = k.get(&["secret", "creds", "-n", "shop"]).await;
    assert_eq!(v["data"]["user"], b64("admin"));
    assert_eq!(v["data"]["pw"], b64("p@ss w0rd"));

    let pki = s.dir.path().join("pki");
    let (cert, key) = (pki.join("apiserver.crt"), pki.join("apiserver.key"));
    protobuf(
        &k,
        &[
            "create",
            "secret",
            "tls",
            "tls",
            "-n",
            "shop",
            &format!("--cert={}", cert.display()),
            &format!("--key={}", key.display()),
        ],
    )
    .await;
    let v = k.get(&["secret", "tls", "-n", "shop"]).await;
    assert_eq!(v["type"], "kubernetes.io/tls");
    assert_eq!(unb64(&v["data"]["tls.crt"]), std::fs::read(&cert).unwrap());
    assert_eq!(unb64(&v["data"]["tls.key"]), std::fs::read(&key).unwrap());

    protobuf(
        &k,
        &[
            "create",
            "secret",
            "docker-registry",
            "pull",
            "-n",
            "shop",
            "--docker-server=registry.example",
            "--docker-username=robot",
            "--docker-password=s3cret",
        ],
    )
    .await;
    let v = k.get(&["secret", "pull", "-n", "shop"]).await;
    assert_eq!(v["type"], "kubernetes.io/dockerconfigjson");
    let config: Value = serde_json::from_slice(&unb64(&v["data"][".dockerconfigjson"])).unwrap();
    assert_eq!(config["auths"]["registry.example"]["username"], "robot");

    protobuf(&k, &["create", "serviceaccount", "robot", "-n", "shop"]).await;
    let v = k.get(&["serviceaccount", "robot", "-n", "shop"]).await;
    assert_eq!(v["metadata"]["namespace"], "shop");

    // Deployments: image, replicas (a zero too: a pointer field), port.
    protobuf(
        &k,
        &[
            "create",
            "deployment",
            "web",
            "-n",
            "shop",
            "--image=nginx:1.27",
            "--replicas=3",
            "--port=8080",
        ],
    )
    .await;
    let v = k.get(&["deployment", "web", "-n", "shop"]).await;
    assert_eq!(v["spec"]["replicas"], 3);
    assert_eq!(v["spec"]["selector"]["matchLabels"], json!({"app": "web"}));
    let c = &v["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "nginx:1.27");
    assert_eq!(c["ports"][0]["containerPort"], 8080);
    assert_eq!(
        v["spec"]["template"]["metadata"]["labels"],
        json!({"app": "web"})
    );

    protobuf(
        &k,
        &[
            "create",
            "deployment",
            "idle",
            "-n",
            "shop",
            "--image=nginx:1.27",
            "--replicas=0",
        ],
    )
    .await;
    let v = k.get(&["deployment", "idle", "-n", "shop"]).await;
    assert_eq!(
        v["spec"]["replicas"], 0,
        "replicas 0 must not become the default 1"
    );

    // Services of each generator.
    protobuf(
        &k,
        &[
            "create",
            "service",
            "nodeport",
            "np",
            "-n",
            "shop",
            "--tcp=80:8080",
        ],
    )
    .await;
    let v = k.get(&["service", "np", "-n", "shop"]).await;
    assert_eq!(v["spec"]["type"], "NodePort");
    let port = &v["spec"]["ports"][0];
    assert_eq!(
        (port["port"].clone(), port["targetPort"].clone()),
        (json!(80), json!(8080))
    );
    assert_eq!(port["protocol"], "TCP");
    assert_eq!(v["spec"]["selector"], json!({"app": "np"}));

    protobuf(
        &k,
        &[
            "create",
            "service",
            "clusterip",
            "multi",
            "-n",
            "shop",
            "--tcp=5678:8080",
            "--tcp=443",
        ],
    )
    .await;
    let v = k.get(&["service", "multi", "-n", "shop"]).await;
    let ports: Vec<(Value, Value)> = v["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["port"].clone(), p["targetPort"].clone()))
        .collect();
    assert_eq!(
        ports,
        [(json!(5678), json!(8080)), (json!(443), json!(443))]
    );

    protobuf(
        &k,
        &[
            "create",
            "service",
            "clusterip",
            "headless",
            "-n",
            "shop",
            "--clusterip=None",
        ],
    )
    .await;
    let v = k.get(&["service", "headless", "-n", "shop"]).await;
    assert_eq!(v["spec"]["clusterIP"], "None");

    protobuf(
        &k,
        &[
            "create",
            "service",
            "externalname",
            "ext",
            "-n",
            "shop",
            "--external-name=example.com",
        ],
    )
    .await;
    let v = k.get(&["service", "ext", "-n", "shop"]).await;
    assert_eq!(
        (v["spec"]["type"].clone(), v["spec"]["externalName"].clone()),
        (json!("ExternalName"), json!("example.com"))
    );

    // Job, CronJob, and a Job made from the CronJob (owner reference, annotation, pointers).
    protobuf(
        &k,
        &[
            "create",
            "job",
            "once",
            "-n",
            "shop",
            "--image=busybox:1.36",
            "--",
            "echo",
            "hi",
        ],
    )
    .await;
    let v = k.get(&["job", "once", "-n", "shop"]).await;
    let pod = &v["spec"]["template"]["spec"];
    assert_eq!(pod["containers"][0]["command"], json!(["echo", "hi"]));
    assert_eq!(pod["restartPolicy"], "Never");

    protobuf(
        &k,
        &[
            "create",
            "cronjob",
            "tick",
            "-n",
            "shop",
            "--image=busybox:1.36",
            "--schedule=*/5 * * * *",
            "--",
            "date",
        ],
    )
    .await;
    let v = k.get(&["cronjob", "tick", "-n", "shop"]).await;
    assert_eq!(v["spec"]["schedule"], "*/5 * * * *");
    let job = &v["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    assert_eq!(job["containers"][0]["command"], json!(["date"]));
    assert_eq!(job["restartPolicy"], "OnFailure");

    protobuf(
        &k,
        &[
            "create",
            "job",
            "manual",
            "-n",
            "shop",
            "--from=cronjob/tick",
        ],
    )
    .await;
    let v = k.get(&["job", "manual", "-n", "shop"]).await;
    assert_eq!(
        v["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"],
        "manual"
    );
    let owner = &v["metadata"]["ownerReferences"][0];
    assert_eq!(
        (owner["kind"].clone(), owner["name"].clone()),
        (json!("CronJob"), json!("tick"))
    );
    assert_eq!(owner["controller"], true);
    assert_eq!(
        v["spec"]["suspend"], false,
        "suspend: false is a pointer and kept"
    );

    // `kubectl run` and `kubectl expose` send JSON; they are here for the workflow.
    k.ok(&[
        "run",
        "p1",
        "-n",
        "shop",
        "--image=nginx:1.27",
        "--env=A=1",
        "--env=B=two",
        "--port=80",
        "--labels=app=p1,tier=web",
    ])
    .await;
    let v = k.get(&["pod", "p1", "-n", "shop"]).await;
    assert_eq!(v["metadata"]["labels"], json!({"app": "p1", "tier": "web"}));
    let c = &v["spec"]["containers"][0];
    assert_eq!(
        c["env"],
        json!([{"name": "A", "value": "1"}, {"name": "B", "value": "two"}])
    );
    assert_eq!(c["ports"][0]["containerPort"], 80);

    k.ok(&[
        "expose",
        "deployment",
        "web",
        "-n",
        "shop",
        "--port=80",
        "--target-port=8080",
        "--name=web-svc",
    ])
    .await;
    let v = k.get(&["service", "web-svc", "-n", "shop"]).await;
    assert_eq!(v["spec"]["ports"][0]["targetPort"], 8080);
    assert_eq!(v["spec"]["selector"], json!({"app": "web"}));

    // HorizontalPodAutoscaler (autoscaling/v2).
    protobuf(
        &k,
        &[
            "autoscale",
            "deployment",
            "web",
            "-n",
            "shop",
            "--min=2",
            "--max=5",
            "--cpu-percent=70",
        ],
    )
    .await;
    let v = k.get(&["hpa", "web", "-n", "shop"]).await;
    assert_eq!(v["apiVersion"], "autoscaling/v2");
    assert_eq!(v["spec"]["scaleTargetRef"]["name"], "web");
    assert_eq!(v["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(
        (
            v["spec"]["minReplicas"].clone(),
            v["spec"]["maxReplicas"].clone()
        ),
        (json!(2), json!(5))
    );
    let metric = &v["spec"]["metrics"][0];
    assert_eq!(metric["resource"]["name"], "cpu");
    assert_eq!(metric["resource"]["target"]["averageUtilization"], 70);

    // Pods through the typed client: `kubectl debug` copies one, and makes one on a node.
    protobuf(
        &k,
        &[
            "debug",
            "p1",
            "-n",
            "shop",
            "--copy-to=p1-debug",
            "--image=busybox:1.36",
            "--container=dbg",
            "--",
            "sleep",
            "1000",
        ],
    )
    .await;
    let v = k.get(&["pod", "p1-debug", "-n", "shop"]).await;
    let containers = v["spec"]["containers"].as_array().unwrap();
    let names: Vec<&str> = containers
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["p1", "dbg"]);
    assert_eq!(
        containers[0]["env"][1],
        json!({"name": "B", "value": "two"})
    );
    assert_eq!(containers[1]["command"], json!(["sleep", "1000"]));

    let node = k.manifest(
        "node.yaml",
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n  labels: {kubernetes.io/hostname: n1}\n",
    );
    k.ok(&["create", "-f", &node]).await;
    protobuf(
        &k,
        &[
            "debug",
            "node/n1",
            "-n",
            "shop",
            "--image=busybox:1.36",
            "--profile=general",
        ],
    )
    .await;
    let pods = k.get(&["pods", "-n", "shop"]).await;
    let debugger = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| {
            p["metadata"]["name"]
                .as_str()
                .unwrap()
                .starts_with("node-debugger-n1-")
        })
        .expect("the node debugger pod");
    let spec = &debugger["spec"];
    assert_eq!(spec["nodeName"], "n1");
    assert_eq!(
        (spec["hostPID"].clone(), spec["hostNetwork"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(spec["volumes"][0]["hostPath"]["path"], "/");
    assert_eq!(
        spec["containers"][0]["volumeMounts"][0]["mountPath"],
        "/host"
    );
    assert_eq!(spec["tolerations"][0]["operator"], "Exists");

    // Deletes (kubectl sends their DeleteOptions as JSON).
    for what in [
        ["configmap", "cfg"],
        ["deployment", "idle"],
        ["service", "ext"],
        ["cronjob", "tick"],
    ] {
        k.ok(&["delete", what[0], what[1], "-n", "shop"]).await;
        let run = k.run(&["get", what[0], what[1], "-n", "shop"]).await;
        assert!(
            !run.ok && run.stderr.contains("NotFound"),
            "{what:?} is still there: {}",
            run.stdout
        );
    }

    s.stop().await;
}

/// A protobuf body with a field the server does not know is 415, one that is not protobuf is 400,
/// and neither stores anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_protobuf_is_refused_and_nothing_is_stored() {
    let s = TestServer::start().await;
    let client = s.client().await;
    let post = |body: Vec<u8>| {
        let client = client.clone();
        async move {
            let req = http::Request::builder()
                .method("POST")
                .uri("/api/v1/namespaces")
                .header("Content-Type", "application/vnd.kubernetes.protobuf")
                .body(body)
                .unwrap();
            match client.request_text(req).await {
                Ok(text) => panic!("the POST succeeded: {text}"),
                Err(kube::Error::Api(e)) => (e.code, e.reason.clone(), e.message.clone()),
                Err(other) => panic!("POST: {other}"),
            }
        }
    };
    // Namespace{metadata: {name: "stray", 15: "x"}}: ObjectMeta has no field 15 any more.
    let mut body = b"k8s\0\x0a\x0f\x0a\x02v1\x12\x09Namespace".to_vec();
    body.extend(b"\x12\x0c\x0a\x0a\x0a\x05stray\x7a\x01x");
    let (code, reason, message) = post(body.clone()).await;
    assert_eq!(
        (code, reason.as_str()),
        (415, "UnsupportedMediaType"),
        "{message}"
    );
    assert!(
        message.contains("field 15 of meta/v1 ObjectMeta"),
        "{message}"
    );
    assert!(message.contains("JSON"), "{message}");

    let (code, reason, _) = post(body[..body.len() - 3].to_vec()).await;
    assert_eq!(
        (code, reason.as_str()),
        (400, "BadRequest"),
        "a cut-short body"
    );
    let (code, _, _) = post(br#"{"kind":"Namespace"}"#.to_vec()).await;
    assert_eq!(code, 400, "JSON sent as protobuf");

    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(client.clone());
    assert!(
        namespaces.get_opt("stray").await.unwrap().is_none(),
        "nothing is stored"
    );
    s.stop().await;
}
