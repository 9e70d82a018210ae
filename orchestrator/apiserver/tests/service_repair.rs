//! The Service address repair loop against direct store edits: a dropped allocation key is
//! written back with a `ClusterIPNotAllocated` / `PortNotAllocated` Event; two Services with
//! one cluster IP get `ClusterIPAlreadyAllocated` on the later one and nothing changes; an
//! address outside the range gets `ClusterIPOutOfRange` and is kept; a stray key is freed on
//! the third round in a row that sees it, not before (negative control: after one or two
//! rounds it is still there and still blocks the address), and never when a create wrote it
//! meanwhile; with the loop off, a stray key stays.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Service};
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::{Value, json};
use support::TestServer;
use trellis_apiserver::repair::Reason;
use trellis_store::KeyRange;

const IPS: &str = support::SERVICE_IPS;
const PORTS: &str = support::NODE_PORTS;

fn svc(name: &str, spec: Value) -> Service {
    let mut spec = spec;
    spec["ports"] = json!([{"port": 80}]);
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

/// The allocation keys under `prefix`: address → owner.
async fn keys(s: &TestServer, prefix: &str) -> BTreeMap<String, String> {
    s.allocations(prefix).await
}

async fn put(s: &TestServer, key: &str, value: &str) {
    s.running
        .store()
        .put(key.as_bytes(), value.as_bytes())
        .await
        .unwrap();
}

async fn delete(s: &TestServer, key: &str) {
    let gone = s.running.store().delete(KeyRange::key(key)).await.unwrap();
    assert_eq!(gone.len(), 1, "{key} was there to delete");
}

/// Rewrites a stored Service's spec fields behind the API's back.
async fn edit_service(s: &TestServer, name: &str, spec: Value) {
    let key = format!("/registry/core/services/default/{name}");
    let kv = s
        .running
        .store()
        .get(key.as_bytes())
        .await
        .unwrap()
        .expect("the Service is stored");
    let mut obj: Value = serde_json::from_slice(&kv.value).unwrap();
    for (k, v) in spec.as_object().unwrap() {
        obj["spec"][k] = v.clone();
    }
    put(s, &key, &serde_json::to_string(&obj).unwrap()).await;
}

/// (involved object name, reason) → count, of the Events in `default`.
async fn events(s: &TestServer) -> BTreeMap<(String, String), i32> {
    let api: Api<Event> = Api::namespaced(s.client().await, "default");
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| {
            assert_eq!(e.type_.as_deref(), Some("Warning"));
            (
                (
                    e.involved_object.name.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                ),
                e.count.unwrap_or(0),
            )
        })
        .collect()
}

async fn metrics(s: &TestServer) -> String {
    s.client()
        .await
        .request_text(http::Request::get("/metrics").body(Vec::new()).unwrap())
        .await
        .unwrap()
}

fn repairs(text: &str, kind: &str) -> Option<u64> {
    let prefix = format!("apiserver_service_repairs_total{{kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().unwrap())
}

fn cluster_ip(s: &Service) -> Option<String> {
    s.spec.as_ref()?.cluster_ip.clone()
}

/// A server whose loop runs only at start (and by hand): the rounds are the test's.
async fn hand_run_server() -> TestServer {
    TestServer::start_with(|c| c.service_repair_interval = Some(Duration::from_secs(3600))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_store_edits_are_repaired_with_upstreams_events() {
    let s = hand_run_server().await;
    let api: Api<Service> = Api::namespaced(s.client().await, "default");
    let pp = PostParams::default();
    for (name, spec) in [
        ("a", json!({"clusterIP": "10.96.0.50"})),
        (
            "b",
            json!({"clusterIP": "10.96.0.60", "type": "NodePort", "ports": [{"port": 80, "nodePort": 30050}]}),
        ),
        ("c", json!({"clusterIP": "10.96.0.51"})),
        ("d", json!({"clusterIP": "10.96.0.52"})),
    ] {
        let mut svc = svc(name, spec.clone());
        if let Some(ports) = spec.get("ports") {
            svc.spec.as_mut().unwrap().ports = serde_json::from_value(ports.clone()).unwrap();
        }
        api.create(&pp, &svc).await.unwrap();
    }
    assert_eq!(
        keys(&s, PORTS).await,
        BTreeMap::from([("30050".into(), "default/b".into())])
    );

    // Behind the API's back: a's cluster IP key and b's node port key dropped, stray keys of
    // a Service that never was, c given a's address, d an address outside the range.
    delete(&s, &format!("{IPS}10.96.0.50")).await;
    delete(&s, &format!("{PORTS}30050")).await;
    put(&s, &format!("{IPS}10.96.0.77"), "default/ghost").await;
    put(&s, &format!("{PORTS}30077"), "default/ghost").await;
    edit_service(
        &s,
        "c",
        json!({"clusterIP": "10.96.0.50", "clusterIPs": ["10.96.0.50"]}),
    )
    .await;
    edit_service(
        &s,
        "d",
        json!({"clusterIP": "10.200.0.5", "clusterIPs": ["10.200.0.5"]}),
    )
    .await;

    let repair = s.running.service_repair();
    let first = repair.round().await.unwrap();
    let mut claimed = first.claimed.clone();
    claimed.sort();
    assert_eq!(
        claimed,
        [format!("{IPS}10.96.0.50"), format!("{PORTS}30050")],
        "{first:?}"
    );
    let ips = keys(&s, IPS).await;
    assert_eq!(ips["10.96.0.50"], "default/a", "a keeps its address");
    assert_eq!(keys(&s, PORTS).await["30050"], "default/b");
    let mut warned = first.warned.clone();
    warned.sort();
    assert_eq!(
        warned,
        [
            ("default/c".to_string(), Reason::ClusterIPAlreadyAllocated),
            ("default/d".to_string(), Reason::ClusterIPOutOfRange)
        ]
    );
    // Nothing changed on the warned Services.
    assert_eq!(
        cluster_ip(&api.get("c").await.unwrap()).as_deref(),
        Some("10.96.0.50")
    );
    assert_eq!(
        cluster_ip(&api.get("d").await.unwrap()).as_deref(),
        Some("10.200.0.5")
    );
    let ev = events(&s).await;
    let reason = |svc: &str, r: &str| ev.get(&(svc.to_string(), r.to_string())).copied();
    assert_eq!(reason("a", "ClusterIPNotAllocated"), Some(1), "{ev:?}");
    assert_eq!(reason("b", "PortNotAllocated"), Some(1), "{ev:?}");
    assert_eq!(reason("c", "ClusterIPAlreadyAllocated"), Some(1), "{ev:?}");
    assert_eq!(reason("d", "ClusterIPOutOfRange"), Some(1), "{ev:?}");
    assert_eq!(
        reason("a", "ClusterIPAlreadyAllocated"),
        None,
        "only the later one is warned"
    );
    assert_eq!(ev.len(), 4, "{ev:?}");

    // The leak rule, negative control: seen once, then twice, the stray keys stay, and the
    // address stays taken.
    let suspects = |r: &trellis_apiserver::repair::Report| {
        let mut v: Vec<(String, u32)> = r.suspects.clone();
        v.sort();
        v
    };
    // c's and d's old addresses are no longer held either.
    let stray = [
        format!("{IPS}10.96.0.51"),
        format!("{IPS}10.96.0.52"),
        format!("{IPS}10.96.0.77"),
        format!("{PORTS}30077"),
    ];
    assert_eq!(
        suspects(&first),
        stray.iter().map(|k| (k.clone(), 1)).collect::<Vec<_>>()
    );
    let second = repair.round().await.unwrap();
    assert_eq!(
        suspects(&second),
        stray.iter().map(|k| (k.clone(), 2)).collect::<Vec<_>>()
    );
    assert!(second.released.is_empty(), "{second:?}");
    assert!(keys(&s, IPS).await.contains_key("10.96.0.77"));
    assert!(keys(&s, PORTS).await.contains_key("30077"));
    let refused = api
        .create(&pp, &svc("late", json!({"clusterIP": "10.96.0.77"})))
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("already allocated"),
        "{refused}"
    );

    // The third round in a row frees them.
    let third = repair.round().await.unwrap();
    let mut released = third.released.clone();
    released.sort();
    assert_eq!(released, stray, "{third:?}");
    let ips = keys(&s, IPS).await;
    for gone in ["10.96.0.51", "10.96.0.52", "10.96.0.77"] {
        assert!(!ips.contains_key(gone), "{gone}: {ips:?}");
    }
    assert!(!keys(&s, PORTS).await.contains_key("30077"));
    api.create(&pp, &svc("late", json!({"clusterIP": "10.96.0.77"})))
        .await
        .expect("the freed address can be had again");

    // The warnings repeat each round, one Event each with its count.
    let ev = events(&s).await;
    assert_eq!(
        ev.get(&("c".to_string(), "ClusterIPAlreadyAllocated".to_string())),
        Some(&3),
        "{ev:?}"
    );
    let m = metrics(&s).await;
    assert_eq!(repairs(&m, "ClusterIPNotAllocated"), Some(1), "{m}");
    assert_eq!(repairs(&m, "PortNotAllocated"), Some(1), "{m}");
    assert_eq!(repairs(&m, "ClusterIPAlreadyAllocated"), Some(3), "{m}");
    assert_eq!(repairs(&m, "ClusterIPOutOfRange"), Some(3), "{m}");
    assert_eq!(repairs(&m, "ClusterIPLeaked"), Some(3), "{m}");
    assert_eq!(repairs(&m, "PortLeaked"), Some(1), "{m}");
    s.stop().await;
}

/// A release is conditional on the key as the round read it: a key freed and taken again by
/// a create between the round's read and its write is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_never_frees_a_key_a_create_wrote_meanwhile() {
    let s = hand_run_server().await;
    let api: Api<Service> = Api::namespaced(s.client().await, "default");
    let key = format!("{IPS}10.96.0.78");
    put(&s, &key, "default/ghost").await;
    let repair = s.running.service_repair();
    repair.round().await.unwrap();
    repair.round().await.unwrap();
    let plan = repair.plan().await.unwrap();
    assert!(
        plan.iter().any(|f| matches!(
            f,
            trellis_apiserver::repair::Fix::Release { key: k, .. } if *k == key
        )),
        "{plan:?}"
    );
    // Meanwhile: the stray key goes (as if released elsewhere) and a create takes the address.
    delete(&s, &key).await;
    api.create(
        &PostParams::default(),
        &svc("now", json!({"clusterIP": "10.96.0.78"})),
    )
    .await
    .unwrap();
    let report = repair.apply(plan).await.unwrap();
    assert!(report.released.is_empty(), "{report:?}");
    assert_eq!(report.skipped, std::slice::from_ref(&key));
    assert_eq!(keys(&s, IPS).await["10.96.0.78"], "default/now");
    // And it is held now: no longer a suspect.
    let next = repair.round().await.unwrap();
    assert!(
        next.suspects.is_empty() && next.released.is_empty(),
        "{next:?}"
    );
    s.stop().await;
}

/// On its own, at its interval, the loop frees a stray key and writes back a dropped one;
/// with the loop off both stay wrong (the negative control watches as long as the repairing
/// server needed at most, and 15 of its intervals at least).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_repairs_on_its_interval_and_off_means_off() {
    const INTERVAL: Duration = Duration::from_millis(200);
    async fn damage(s: &TestServer) {
        let api: Api<Service> = Api::namespaced(s.client().await, "default");
        api.create(
            &PostParams::default(),
            &svc("kept", json!({"clusterIP": "10.96.0.40"})),
        )
        .await
        .unwrap();
        delete(s, &format!("{IPS}10.96.0.40")).await;
        put(s, &format!("{IPS}10.96.0.79"), "default/ghost").await;
    }
    let on = TestServer::start_with(|c| c.service_repair_interval = Some(INTERVAL)).await;
    damage(&on).await;
    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_secs(30);
    loop {
        let ips = keys(&on, IPS).await;
        if !ips.contains_key("10.96.0.79")
            && ips.get("10.96.0.40").map(String::as_str) == Some("default/kept")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not repaired in 30 s: {ips:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    let ev = events(&on).await;
    assert_eq!(
        ev.get(&("kept".to_string(), "ClusterIPNotAllocated".to_string())),
        Some(&1),
        "{ev:?}"
    );
    on.stop().await;

    let off = TestServer::start_with(|c| c.service_repair_interval = None).await;
    damage(&off).await;
    tokio::time::sleep(took.max(INTERVAL * 15)).await;
    let ips = keys(&off, IPS).await;
    assert_eq!(
        ips.get("10.96.0.79").map(String::as_str),
        Some("default/ghost"),
        "{ips:?}"
    );
    assert!(!ips.contains_key("10.96.0.40"), "{ips:?}");
    let api: Api<Service> = Api::namespaced(off.client().await, "default");
    let refused = api
        .create(
            &PostParams::default(),
            &svc("want", json!({"clusterIP": "10.96.0.79"})),
        )
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("already allocated"),
        "{refused}"
    );
    assert!(events(&off).await.is_empty());
    let m = metrics(&off).await;
    assert!(!m.contains("apiserver_service_repairs_total{"), "{m}");
    off.stop().await;
}
