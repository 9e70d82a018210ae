//! Dual-stack Services through the API: a server with two service ranges hands out a
//! cluster IP per family, as the Service's `ipFamilyPolicy` asks; addresses are released on
//! delete and on dropping the secondary family; a single-stack server refuses
//! RequireDualStack with upstream's message; real kubectl (1.33 and 1.20) creates a
//! dual-stack Service from a manifest.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::TestServer;
use support::kubectl::{Kubectl, kubectl_1_20, kubectl_current};

async fn dual_server() -> TestServer {
    TestServer::start_with(|c| {
        c.service_cidrs = "10.96.0.0/12,fd00:96::/112".parse().unwrap();
    })
    .await
}

fn svc(name: &str, spec: serde_json::Value) -> Service {
    let mut spec = spec;
    spec["ports"] = json!([{"port": 80}]);
    spec["selector"] = json!({"app": name});
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

fn ips(s: &Service) -> Vec<IpAddr> {
    s.spec
        .as_ref()
        .and_then(|s| s.cluster_ips.clone())
        .unwrap_or_default()
        .iter()
        .map(|ip| ip.parse().unwrap())
        .collect()
}

fn families(s: &Service) -> Vec<String> {
    s.spec
        .as_ref()
        .and_then(|s| s.ip_families.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_services_get_one_cluster_ip_per_family_and_give_them_back() {
    let s = dual_server().await;
    let api: Api<Service> = Api::namespaced(s.client().await, "default");
    let pp = PostParams::default();

    let single = api.create(&pp, &svc("single", json!({}))).await.unwrap();
    assert_eq!(families(&single), ["IPv4"]);
    assert_eq!(ips(&single).len(), 1);

    let dual = api
        .create(
            &pp,
            &svc("dual", json!({"ipFamilyPolicy": "PreferDualStack"})),
        )
        .await
        .unwrap();
    assert_eq!(families(&dual), ["IPv4", "IPv6"]);
    let d = ips(&dual);
    assert!(d[0].is_ipv4() && d[1].is_ipv6(), "{d:?}");
    assert!(
        "fd00:96::/112"
            .parse::<ipnet::IpNet>()
            .unwrap()
            .contains(&d[1])
    );
    assert_eq!(
        dual.spec.as_ref().unwrap().cluster_ip.as_deref(),
        Some(d[0].to_string().as_str())
    );

    // IPv6 primary, with the address asked for.
    let v6 = api
        .create(
            &pp,
            &svc(
                "v6",
                json!({"ipFamilyPolicy": "RequireDualStack", "clusterIPs": ["fd00:96::99"]}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(families(&v6), ["IPv6", "IPv4"]);
    assert_eq!(ips(&v6)[0], "fd00:96::99".parse::<IpAddr>().unwrap());
    // Someone else's address is refused.
    let e = api
        .create(&pp, &svc("taken", json!({"clusterIP": "fd00:96::99"})))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("already allocated"), "{e}");
    // Outside the IPv6 range.
    let e = api
        .create(&pp, &svc("outside", json!({"clusterIP": "fd00:97::1"})))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not in the valid range"), "{e}");

    // Downgrade to SingleStack releases the IPv6 address: another Service can take it.
    let down = api
        .patch(
            "dual",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ipFamilyPolicy": "SingleStack"}})),
        )
        .await
        .unwrap();
    assert_eq!(families(&down), ["IPv4"]);
    assert_eq!(ips(&down), vec![d[0]]);
    api.create(&pp, &svc("reuse", json!({"clusterIP": d[1].to_string()})))
        .await
        .expect("the released IPv6 address is free again");
    // Upgrade again: a new IPv6 address.
    let up = api
        .patch(
            "dual",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ipFamilyPolicy": "PreferDualStack"}})),
        )
        .await
        .unwrap();
    assert_eq!(families(&up), ["IPv4", "IPv6"]);
    let up_ips = ips(&up);
    assert_eq!(up_ips[0], d[0]);
    assert!(up_ips[1].is_ipv6() && up_ips[1] != d[1]);

    // Delete releases both.
    api.delete("dual", &DeleteParams::default()).await.unwrap();
    api.create(
        &pp,
        &svc(
            "again",
            json!({"ipFamilyPolicy": "RequireDualStack",
                   "clusterIPs": [up_ips[0].to_string(), up_ips[1].to_string()]}),
        ),
    )
    .await
    .expect("both addresses are free after the delete");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_stack_server_refuses_require_dual_stack_with_upstreams_message() {
    let s = TestServer::start().await;
    let api: Api<Service> = Api::namespaced(s.client().await, "default");
    let e = api
        .create(
            &PostParams::default(),
            &svc("r", json!({"ipFamilyPolicy": "RequireDualStack"})),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains(
            "spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services"
        ),
        "{e}"
    );
    let p = api
        .create(
            &PostParams::default(),
            &svc("p", json!({"ipFamilyPolicy": "PreferDualStack"})),
        )
        .await
        .unwrap();
    assert_eq!(families(&p), ["IPv4"]);
    s.stop().await;
}

const MANIFEST: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  ipFamilyPolicy: PreferDualStack
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 8080
"#;

async fn kubectl_creates_a_dual_stack_service(k: Kubectl) {
    let file = k.manifest("svc.yaml", MANIFEST);
    k.ok(&["create", "-f", &file]).await;
    let v = k.get(&["service", "web"]).await;
    assert_eq!(v["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]), "{v}");
    let ips = v["spec"]["clusterIPs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(ips.len(), 2, "{v}");
    // `get` prints the primary cluster IP.
    let out = k.ok(&["get", "service", "web"]).await.stdout;
    assert!(out.contains(ips[0].as_str().unwrap()), "{out}");
    // Applying the same manifest again changes nothing.
    k.ok(&["apply", "-f", &file]).await;
    let again = k.get(&["service", "web"]).await;
    assert_eq!(again["spec"]["clusterIPs"], v["spec"]["clusterIPs"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_33_creates_a_dual_stack_service() {
    let s = dual_server().await;
    let dir = tempfile::tempdir().unwrap();
    kubectl_creates_a_dual_stack_service(Kubectl::new(
        kubectl_current(),
        &s.running.kubeconfig,
        dir.path(),
    ))
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_1_20_creates_a_dual_stack_service() {
    let s = dual_server().await;
    let dir = tempfile::tempdir().unwrap();
    kubectl_creates_a_dual_stack_service(Kubectl::new(
        kubectl_1_20(),
        &s.running.kubeconfig,
        dir.path(),
    ))
    .await;
    s.stop().await;
}

/// A cluster that drops its second range keeps its PreferDualStack Services as they are
/// (upstream neither upgrades nor downgrades them on a range change): a later write to such a
/// Service, one that changes nothing of its addresses, still succeeds and keeps both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_service_stays_writable_when_the_cluster_drops_its_second_range() {
    let s = dual_server().await;
    let api: Api<Service> = Api::namespaced(s.client().await, "default");
    let dual = api
        .create(
            &PostParams::default(),
            &svc("kept", json!({"ipFamilyPolicy": "PreferDualStack"})),
        )
        .await
        .unwrap();
    let before = ips(&dual);
    assert_eq!(before.len(), 2);

    // The same data directory, served again with the IPv4 range only.
    let TestServer { running, dir } = s;
    running.shutdown().await;
    let mut config = trellis_apiserver::Config::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    config.service_cidrs = "10.96.0.0/12".parse().unwrap();
    let running = trellis_apiserver::start(config)
        .await
        .expect("the API server starts again");
    let s = TestServer { running, dir };
    let api: Api<Service> = Api::namespaced(s.client().await, "default");
    let patched = api
        .patch(
            "kept",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tier": "web"}}, "spec": {"ports": [{"port": 8080}]}})),
        )
        .await
        .expect("a write that keeps the addresses is accepted");
    assert_eq!(ips(&patched), before, "both addresses kept");
    assert_eq!(families(&patched), ["IPv4", "IPv6"]);
    s.stop().await;
}
