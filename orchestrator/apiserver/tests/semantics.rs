//! API semantics clients rely on: status vs spec writes, finalizers and two-phase deletion,
//! propagation policies, deletecollection, streaming lists, health and metrics endpoints.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::watcher;
use serde_json::json;
use support::TestServer;

fn deployment(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}}}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_spec_are_written_through_their_own_endpoints() {
    let s = TestServer::start().await;
    let api: Api<Deployment> = Api::namespaced(s.client().await, "default");
    let created = api
        .create(&PostParams::default(), &deployment("d"))
        .await
        .unwrap();
    assert!(created.status.is_none(), "status is not set by create");
    // A PUT of the object ignores its status.
    let mut with_status = created.clone();
    with_status.status = Some(serde_json::from_value(json!({"replicas": 7})).unwrap());
    with_status.spec.as_mut().unwrap().replicas = Some(2);
    let put = api
        .replace("d", &PostParams::default(), &with_status)
        .await
        .unwrap();
    assert_eq!(put.spec.as_ref().unwrap().replicas, Some(2));
    assert!(put.status.is_none(), "status ignored on the object");
    // A PUT to /status ignores the spec.
    let mut status_put = put.clone();
    status_put.status =
        Some(serde_json::from_value(json!({"replicas": 7, "observedGeneration": 2})).unwrap());
    status_put.spec.as_mut().unwrap().replicas = Some(9);
    let st = api
        .replace_status("d", &PostParams::default(), &status_put)
        .await
        .unwrap();
    assert_eq!(st.status.as_ref().unwrap().replicas, Some(7));
    assert_eq!(
        st.spec.as_ref().unwrap().replicas,
        Some(2),
        "spec ignored on /status"
    );
    assert_eq!(
        st.metadata.generation, put.metadata.generation,
        "a status write does not move the generation"
    );
    let patched = api
        .patch_status(
            "d",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"readyReplicas": 1}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.status.unwrap().ready_replicas, Some(1));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizers_hold_deletion_until_removed() {
    let s = TestServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(s.client().await, "default");
    let cm: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "held", "finalizers": ["example.com/keep"]}}),
    )
    .unwrap();
    api.create(&PostParams::default(), &cm).await.unwrap();
    api.delete("held", &DeleteParams::default()).await.unwrap();
    let marked = api.get("held").await.unwrap();
    assert!(
        marked.metadata.deletion_timestamp.is_some(),
        "marked, not gone"
    );
    // Finalizers may be removed, not added, once deletion started; the last one's removal ends it.
    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    match api.get("held").await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 404),
        other => panic!("still there: {other:?}"),
    }
    s.stop().await;
}

/// A pod deleted with a grace period stays, marked, while its kubelet writes its status (a
/// status write used to complete the deletion at once: the kubelet then saw the pod gone and
/// killed it without grace); the kubelet's delete with grace 0 ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_write_during_a_pods_grace_period_keeps_it() {
    use k8s_openapi::api::core::v1::Pod;
    let s = TestServer::start().await;
    let api: Api<Pod> = Api::namespaced(s.client().await, "default");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {
        "nodeName": "n1", "terminationGracePeriodSeconds": 30,
        "containers": [{"name": "c", "image": "i:1"}]}}))
    .unwrap();
    api.create(&PostParams::default(), &pod).await.unwrap();
    api.delete("p", &DeleteParams::default()).await.unwrap();
    api.patch_status(
        "p",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running"}})),
    )
    .await
    .unwrap();
    let p = api.get("p").await.unwrap();
    assert!(p.metadata.deletion_timestamp.is_some(), "marked, not gone");
    assert_eq!(p.metadata.deletion_grace_period_seconds, Some(30));
    api.delete(
        "p",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    match api.get("p").await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 404),
        other => panic!("still there: {other:?}"),
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn propagation_policies_are_recorded_for_the_garbage_collector() {
    let s = TestServer::start().await;
    let api: Api<Deployment> = Api::namespaced(s.client().await, "default");
    api.create(&PostParams::default(), &deployment("fg"))
        .await
        .unwrap();
    api.create(&PostParams::default(), &deployment("orphan"))
        .await
        .unwrap();
    api.create(&PostParams::default(), &deployment("bg"))
        .await
        .unwrap();
    api.delete(
        "fg",
        &DeleteParams {
            propagation_policy: Some(PropagationPolicy::Foreground),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    api.delete("orphan", &DeleteParams::orphan()).await.unwrap();
    api.delete("bg", &DeleteParams::background()).await.unwrap();
    let fg = api.get("fg").await.unwrap();
    assert_eq!(
        fg.metadata.finalizers,
        Some(vec!["foregroundDeletion".to_string()])
    );
    assert!(fg.metadata.deletion_timestamp.is_some());
    assert_eq!(
        api.get("orphan").await.unwrap().metadata.finalizers,
        Some(vec!["orphan".to_string()])
    );
    assert!(
        api.get("bg").await.is_err(),
        "background deletion removes the owner at once"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletecollection_deletes_what_the_selector_matches() {
    let s = TestServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(s.client().await, "default");
    for (name, tier) in [("a", "x"), ("b", "x"), ("c", "y")] {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": {"tier": tier}}}))
                .unwrap();
        api.create(&PostParams::default(), &cm).await.unwrap();
    }
    api.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("tier=x"),
    )
    .await
    .unwrap();
    let left: Vec<String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    assert_eq!(left, ["c"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_lists_end_their_initial_events_with_a_bookmark() {
    let s = TestServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(s.client().await, "default");
    for i in 0..3 {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": format!("s{i}")}})).unwrap();
        api.create(&PostParams::default(), &cm).await.unwrap();
    }
    // kube-rs's StreamingList: a watch with sendInitialEvents=true that must see the
    // k8s.io/initial-events-end bookmark before it reports InitDone.
    let mut events = watcher(api.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut initial = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("InitDone arrives")
            .unwrap()
            .unwrap()
        {
            watcher::Event::InitApply(c) => initial.push(c.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    initial.sort();
    assert_eq!(initial, ["s0", "s1", "s2"]);
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "later"}})).unwrap();
    api.create(&PostParams::default(), &cm).await.unwrap();
    loop {
        if let watcher::Event::Apply(c) =
            tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap()
        {
            assert_eq!(c.metadata.name.as_deref(), Some("later"));
            break;
        }
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics() {
    let s =
        TestServer::start_with(|c| c.insecure_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let plain = s.running.insecure_addr.unwrap();
    let get = |path: &str| {
        let path = path.to_string();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut conn = tokio::net::TcpStream::connect(plain).await.unwrap();
            conn.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut out = String::new();
            conn.read_to_string(&mut out).await.unwrap();
            out
        }
    };
    for path in ["/healthz", "/livez", "/readyz"] {
        let resp = get(path).await;
        assert!(
            resp.starts_with("HTTP/1.1 200") && resp.ends_with("ok"),
            "{path}: {resp}"
        );
    }
    let client = s.client().await;
    Api::<ConfigMap>::namespaced(client, "default")
        .list(&ListParams::default())
        .await
        .unwrap();
    let metrics = get("/metrics").await;
    assert!(
        metrics.contains(
            "apiserver_request_total{verb=\"list\",resource=\"configmaps\",code=\"200\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("apiserver_request_duration_seconds_bucket"),
        "{metrics}"
    );
    s.stop().await;
    // The plain listener is refused anywhere but loopback.
    let dir = tempfile::tempdir().unwrap();
    let mut config = trellis_apiserver::Config::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    config.insecure_listen = Some("0.0.0.0:0".parse().unwrap());
    assert!(trellis_apiserver::start(config).await.is_err());
}

/// A Service's node ports follow its type on update, as upstream's: ClusterIP → NodePort
/// allocates them, → LoadBalancer with externalTrafficPolicy Local keeps them and adds a
/// health-check node port, back to ClusterIP releases both (another Service can then take
/// them), and a port held by another Service is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ports_are_allocated_and_released_when_a_service_changes_type() {
    use k8s_openapi::api::core::v1::Service;
    let s = TestServer::start().await;
    let api: Api<Service> = Api::namespaced(s.client().await, "default");
    let svc = |name: &str, spec: serde_json::Value| -> Service {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
    };
    let node_port =
        |s: &Service| -> Option<i32> { s.spec.as_ref()?.ports.as_ref()?.first()?.node_port };
    let health = |s: &Service| s.spec.as_ref().and_then(|s| s.health_check_node_port);
    let patch = |spec: serde_json::Value| Patch::Merge(json!({"spec": spec}));
    let pp = PatchParams::default();
    api.create(
        &PostParams::default(),
        &svc("a", json!({"ports": [{"port": 80}]})),
    )
    .await
    .unwrap();

    let a = api
        .patch("a", &pp, &patch(json!({"type": "NodePort"})))
        .await
        .unwrap();
    let np = node_port(&a).expect("a node port on becoming NodePort");
    assert!((30000..=32767).contains(&np), "{np}");
    // Another Service cannot take it.
    let taken = api
        .create(
            &PostParams::default(),
            &svc(
                "b",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": np}]}),
            ),
        )
        .await;
    assert!(
        matches!(&taken, Err(kube::Error::Api(e)) if e.code == 422),
        "{taken:?}"
    );

    let a = api
        .patch(
            "a",
            &pp,
            &patch(json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local"})),
        )
        .await
        .unwrap();
    assert_eq!(node_port(&a), Some(np), "the node port is kept");
    let hc = health(&a).expect("a health-check node port");
    assert_ne!(hc, np);
    // Cluster policy: the health-check port goes (and is free again).
    let a = api
        .patch(
            "a",
            &pp,
            &patch(json!({"externalTrafficPolicy": "Cluster"})),
        )
        .await
        .unwrap();
    assert_eq!(health(&a), None);
    api.create(
        &PostParams::default(),
        &svc(
            "c",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": hc}]}),
        ),
    )
    .await
    .expect("the released health-check port is free");

    let a = api
        .patch("a", &pp, &patch(json!({"type": "ClusterIP"})))
        .await
        .unwrap();
    assert_eq!(node_port(&a), None, "ClusterIP has no node ports");
    let b = api
        .create(
            &PostParams::default(),
            &svc(
                "b",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": np}]}),
            ),
        )
        .await
        .expect("the released node port is free");
    assert_eq!(node_port(&b), Some(np));
    // Asking for a port another Service holds on update is refused too.
    let refused = api
        .patch(
            "a",
            &pp,
            &patch(json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": np}]})),
        )
        .await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(e)) if e.code == 422),
        "{refused:?}"
    );
}
