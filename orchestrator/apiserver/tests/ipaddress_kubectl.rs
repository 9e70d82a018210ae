//! IPAddress objects (`networking.k8s.io/v1`): each cluster IP a Service holds is an IPAddress
//! named by the address (IPv6 canonical), its parentRef the Service, managed by the allocator;
//! deleting the Service deletes them. A user's IPAddress keeps its address from Services
//! (upstream's "provided IP is already allocated"); the repair loop deletes an orphaned
//! managed one and recreates a missing one, and with the loop off the orphan stays. Real
//! kubectl lists them with upstream's columns and creates one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::IPAddress;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::{Value, json};
use support::kubectl::{Kubectl, kubectl_current};
use support::{TestServer, wait_for};

const INTERVAL: Duration = Duration::from_millis(200);
const GRACE: Duration = Duration::from_secs(2);

async fn server(repair: bool) -> TestServer {
    TestServer::start_with(|c| {
        c.service_cidrs = "10.96.0.0/16,fd00:96::/112".parse().unwrap();
        c.service_repair_interval = repair.then_some(INTERVAL);
        c.ipaddress_orphan_grace = GRACE;
    })
    .await
}

fn svc(name: &str, spec: Value) -> Service {
    let mut s = json!({"ports": [{"port": 80}], "selector": {"app": name}});
    if let (Some(s), Some(e)) = (s.as_object_mut(), spec.as_object()) {
        s.extend(e.clone());
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": s})).unwrap()
}

fn ipaddress(ip: &str, managed: bool, parent: Value) -> IPAddress {
    let labels = if managed {
        json!({"ipaddress.kubernetes.io/managed-by": "ipallocator.k8s.io"})
    } else {
        json!({})
    };
    serde_json::from_value(
        json!({"metadata": {"name": ip, "labels": labels}, "spec": {"parentRef": parent}}),
    )
    .unwrap()
}

fn parent(ip: &IPAddress) -> Value {
    serde_json::to_value(&ip.spec.as_ref().unwrap().parent_ref).unwrap()
}

fn cluster_ips(s: &Service) -> Vec<String> {
    s.spec
        .as_ref()
        .and_then(|s| s.cluster_ips.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_own_ipaddresses_and_a_user_s_blocks_its_address() {
    let s = server(false).await;
    let client = s.client().await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let ips: Api<IPAddress> = Api::all(client);
    let pp = PostParams::default();

    // A dual-stack Service: one IPAddress per family, named by the canonical address.
    let web = svcs
        .create(
            &pp,
            &svc(
                "web",
                json!({"ipFamilyPolicy": "RequireDualStack", "clusterIPs": ["10.96.7.7", "fd00:96:0:0::7"]}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(cluster_ips(&web), ["10.96.7.7", "fd00:96::7"]);
    for ip in ["10.96.7.7", "fd00:96::7"] {
        let obj = ips.get(ip).await.unwrap();
        assert_eq!(
            parent(&obj),
            json!({"group": "", "resource": "services", "namespace": "default", "name": "web"}),
            "{ip}"
        );
        assert_eq!(
            obj.metadata.labels.as_ref().unwrap()["ipaddress.kubernetes.io/managed-by"],
            "ipallocator.k8s.io"
        );
    }
    // An allocated address: its IPAddress too.
    let auto = svcs.create(&pp, &svc("auto", json!({}))).await.unwrap();
    let auto_ip = cluster_ips(&auto)[0].clone();
    assert_eq!(
        parent(&ips.get(&auto_ip).await.unwrap())["name"],
        json!("auto")
    );
    // A user may not take an address a Service holds.
    let taken = ips
        .create(
            &pp,
            &ipaddress(
                "10.96.7.7",
                false,
                json!({"resource": "gateways", "group": "gateway.networking.k8s.io", "name": "gw"}),
            ),
        )
        .await
        .unwrap_err();
    assert!(taken.to_string().contains("already exists"), "{taken}");

    // Deleting the Service deletes its IPAddresses in the same write.
    svcs.delete("web", &DeleteParams::default()).await.unwrap();
    for ip in ["10.96.7.7", "fd00:96::7"] {
        assert!(ips.get_opt(ip).await.unwrap().is_none(), "{ip}");
    }

    // A user's IPAddress blocks its address for Services, as upstream's.
    ips.create(
        &pp,
        &ipaddress(
            "10.96.7.50",
            false,
            json!({"resource": "gateways", "group": "gateway.networking.k8s.io", "namespace": "default", "name": "gw"}),
        ),
    )
    .await
    .unwrap();
    let refused = svcs
        .create(&pp, &svc("want", json!({"clusterIP": "10.96.7.50"})))
        .await
        .unwrap_err();
    let kube::Error::Api(refused) = refused else {
        panic!("{refused:?}")
    };
    assert_eq!(refused.code, 422, "{refused:?}");
    assert!(
        refused
            .message
            .contains("failed to allocate IP 10.96.7.50: provided IP is already allocated"),
        "{refused:?}"
    );
    // Negative control: the next address is free.
    svcs.create(&pp, &svc("next", json!({"clusterIP": "10.96.7.51"})))
        .await
        .unwrap();
    // Once the user's object goes, the address is the Service's.
    ips.delete("10.96.7.50", &DeleteParams::default())
        .await
        .unwrap();
    let want = svcs
        .create(&pp, &svc("want", json!({"clusterIP": "10.96.7.50"})))
        .await
        .unwrap();
    assert_eq!(cluster_ips(&want), ["10.96.7.50"]);
    assert_eq!(
        parent(&ips.get("10.96.7.50").await.unwrap())["name"],
        json!("want")
    );

    // Validation: canonical names, parentRef required.
    let bad = ips
        .create(
            &pp,
            &ipaddress(
                "fd00:96:0::9",
                true,
                json!({"resource": "services", "name": "x"}),
            ),
        )
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("canonical form"), "{bad}");
    s.stop().await;
}

/// The orphan a round should delete, and the object a round should recreate.
async fn damage(s: &TestServer) -> String {
    let client = s.client().await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let ips: Api<IPAddress> = Api::all(client);
    let pp = PostParams::default();
    ips.create(
        &pp,
        &ipaddress(
            "10.96.9.9",
            true,
            json!({"group": "", "resource": "services", "namespace": "default", "name": "ghost"}),
        ),
    )
    .await
    .unwrap();
    let kept = svcs.create(&pp, &svc("kept", json!({}))).await.unwrap();
    let ip = cluster_ips(&kept)[0].clone();
    ips.delete(&ip, &DeleteParams::default()).await.unwrap();
    ip
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_deletes_orphans_and_recreates_missing_ipaddresses_and_off_means_off() {
    let on = server(true).await;
    let ips: Api<IPAddress> = Api::all(on.client().await);
    let kept = damage(&on).await;
    let started = tokio::time::Instant::now();
    wait_for("the orphan deleted and kept's IPAddress back", || async {
        ips.get_opt("10.96.9.9").await.unwrap().is_none()
            && ips.get_opt(&kept).await.unwrap().is_some()
    })
    .await;
    let took = started.elapsed();
    // Not before its grace (creationTimestamp has whole seconds: up to 1 s early).
    assert!(took >= GRACE - Duration::from_secs(1), "{took:?}");
    assert_eq!(
        parent(&ips.get(&kept).await.unwrap())["name"],
        json!("kept")
    );
    on.stop().await;

    let off = server(false).await;
    let ips: Api<IPAddress> = Api::all(off.client().await);
    let kept = damage(&off).await;
    tokio::time::sleep(took.max(GRACE + INTERVAL * 10)).await;
    assert!(ips.get_opt("10.96.9.9").await.unwrap().is_some());
    assert!(ips.get_opt(&kept).await.unwrap().is_none());
    // The orphan still keeps its address from Services.
    let svcs: Api<Service> = Api::namespaced(off.client().await, "default");
    let refused = svcs
        .create(
            &PostParams::default(),
            &svc("want", json!({"clusterIP": "10.96.9.9"})),
        )
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("already allocated"),
        "{refused}"
    );
    off.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_lists_and_creates_ipaddresses() {
    let s = server(false).await;
    let dir = tempfile::tempdir().unwrap();
    let k = Kubectl::new(kubectl_current(), &s.running.kubeconfig, dir.path());
    k.ok(&[
        "create",
        "service",
        "clusterip",
        "web",
        "--tcp=80",
        "--clusterip=10.96.3.3",
    ])
    .await;
    let m = k.manifest(
        "ip.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: IPAddress\nmetadata:\n  name: fd00:96::33\nspec:\n  parentRef:\n    group: gateway.networking.k8s.io\n    resource: gateways\n    namespace: default\n    name: gw\n",
    );
    k.ok(&["create", "-f", &m]).await;
    let table = k.ok(&["get", "ipaddresses"]).await.stdout;
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["NAME", "PARENTREF"], "{table}");
    assert!(
        rows.iter()
            .any(|r| r[..] == ["10.96.3.3", "services/default/web"]),
        "{table}"
    );
    assert!(
        rows.iter().any(|r| r[..]
            == [
                "fd00:96::33",
                "gateways.gateway.networking.k8s.io/default/gw"
            ]),
        "{table}"
    );
    let got = k.get(&["ipaddress", "10.96.3.3"]).await;
    assert_eq!(got["apiVersion"], "networking.k8s.io/v1");
    assert_eq!(got["spec"]["parentRef"]["resource"], "services");
    // kubectl's create of a Service on the user's address: upstream's error.
    let refused = k
        .run(&[
            "create",
            "service",
            "clusterip",
            "other",
            "--tcp=80",
            "--clusterip=fd00:96::33",
        ])
        .await;
    assert!(
        !refused.ok && refused.stderr.contains("provided IP is already allocated"),
        "{}",
        refused.stderr
    );
    // Deleting the Service deletes its IPAddress.
    k.ok(&["delete", "service", "web"]).await;
    let after = k.run(&["get", "ipaddress", "10.96.3.3"]).await;
    assert!(
        !after.ok && after.stderr.contains("NotFound"),
        "{}",
        after.stderr
    );
    s.stop().await;
}
