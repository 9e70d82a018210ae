//! ServiceCIDR objects (`networking.k8s.io/v1`): the default `kubernetes` one from
//! `--service-cluster-ip-range`, Ready; an extra one extends the cluster IP space once the
//! default range is full (without it the create fails with upstream's "range is full"); a
//! ServiceCIDR being deleted that still holds a cluster IP is kept by its finalizer (Ready
//! False, Terminating, and no longer handed out) until the Service goes. Real kubectl lists
//! and creates them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Service};
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use serde_json::json;
use support::kubectl::{Kubectl, kubectl_current};
use support::{TestServer, wait_for};

const FINALIZER: &str = "networking.k8s.io/service-cidr-finalizer";

async fn tiny_server() -> TestServer {
    // 8 addresses: the network, the first host (kept for `kubernetes`) and the broadcast
    // address are never handed out, so 5 Services fill it.
    TestServer::start_with(|c| {
        c.service_cidrs = "10.96.0.0/29".parse().unwrap();
        c.service_repair_interval = Some(Duration::from_millis(300));
    })
    .await
}

fn svc(name: &str) -> Service {
    serde_json::from_value(json!({"metadata": {"name": name},
        "spec": {"ports": [{"port": 80}], "selector": {"app": name}}}))
    .unwrap()
}

fn ip(s: &Service) -> IpAddr {
    s.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .unwrap()
        .parse()
        .unwrap()
}

fn ready(c: &ServiceCIDR) -> Option<(String, String)> {
    let cond = c
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some((cond.status.clone(), cond.reason.clone()))
}

fn cidr(name: &str, cidrs: &[&str]) -> ServiceCIDR {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"cidrs": cidrs}})).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extra_service_cidr_extends_a_full_range_and_is_held_while_it_has_addresses() {
    let s = tiny_server().await;
    let client = s.client().await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let cidrs: Api<ServiceCIDR> = Api::all(client);
    let pp = PostParams::default();

    // The default one, from the flag, Ready, with the finalizer.
    let def = cidrs.get("kubernetes").await.unwrap();
    assert_eq!(
        def.spec.as_ref().unwrap().cidrs,
        Some(vec!["10.96.0.0/29".to_string()])
    );
    assert_eq!(ready(&def), Some(("True".into(), String::new())));
    assert_eq!(def.metadata.finalizers, Some(vec![FINALIZER.to_string()]));

    // Fill the default range.
    let default_range: ipnet::IpNet = "10.96.0.0/29".parse().unwrap();
    let mut made = 0;
    let full = loop {
        assert!(made <= 8, "10.96.0.0/29 took more than 8 Services");
        match svcs.create(&pp, &svc(&format!("fill-{made}"))).await {
            Ok(c) => {
                assert!(default_range.contains(&ip(&c)), "{}", ip(&c));
                made += 1;
            }
            Err(e) => break e,
        }
    };
    assert_eq!(made, 5, "the /29 holds 5 Service addresses");
    // Negative control: without another ServiceCIDR, upstream's error.
    let kube::Error::Api(full) = full else {
        panic!("{full:?}")
    };
    assert_eq!(full.code, 500, "{full:?}");
    assert!(
        full.message
            .contains("failed to allocate a serviceIP: range is full"),
        "{full:?}"
    );

    // A second ServiceCIDR of the same family in one object is refused; one extra range is
    // accepted, Ready, with the finalizer.
    let bad = cidrs
        .create(&pp, &cidr("bad", &["10.100.0.0/29", "10.101.0.0/29"]))
        .await
        .unwrap_err();
    assert!(
        matches!(bad, kube::Error::Api(ref e) if e.code == 422),
        "{bad:?}"
    );
    let extra = cidrs
        .create(&pp, &cidr("extra", &["10.100.0.0/29"]))
        .await
        .unwrap();
    assert_eq!(ready(&extra), Some(("True".into(), String::new())));
    assert_eq!(extra.metadata.finalizers, Some(vec![FINALIZER.to_string()]));
    // spec.cidrs is immutable.
    let mut changed = extra.clone();
    changed.spec.as_mut().unwrap().cidrs = Some(vec!["10.102.0.0/29".into()]);
    let imm = cidrs.replace("extra", &pp, &changed).await.unwrap_err();
    assert!(
        matches!(imm, kube::Error::Api(ref e) if e.code == 422 && e.message.contains("immutable")),
        "{imm:?}"
    );

    let more = svcs.create(&pp, &svc("more")).await.unwrap();
    let extra_range: ipnet::IpNet = "10.100.0.0/29".parse().unwrap();
    assert!(extra_range.contains(&ip(&more)), "{}", ip(&more));
    // An address asked for in the extra range is accepted too.
    // (`more` got a random one of .1 to .6; the first host is not kept outside the default.)
    let want = if ip(&more).to_string() == "10.100.0.6" {
        "10.100.0.5"
    } else {
        "10.100.0.6"
    };
    let mut asked = svc("asked");
    asked.spec.as_mut().unwrap().cluster_ip = Some(want.into());
    let asked = svcs.create(&pp, &asked).await.unwrap();
    assert_eq!(ip(&asked).to_string(), want);
    svcs.delete("asked", &DeleteParams::default())
        .await
        .unwrap();
    // The repair loop calls the extra range's addresses in range: after several rounds,
    // `more` still holds its key and has no Warning.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let keys = s.allocations(support::SERVICE_IPS).await;
    assert_eq!(
        keys.get(&ip(&more).to_string()).map(String::as_str),
        Some("default/more"),
        "{keys:?}"
    );
    // (A repair loop that judged the address by the flag range alone would keep the key too,
    // but warn about it with `ClusterIPOutOfRange` every round.)
    let warned: Vec<String> = Api::<Event>::namespaced(s.client().await, "default")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some("more"))
        .filter_map(|e| e.reason)
        .collect();
    assert!(warned.is_empty(), "Events for `more`: {warned:?}");

    // Deleting it while `more` holds an address: kept by the finalizer, no longer Ready, and
    // no longer handed out.
    cidrs
        .delete("extra", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("the deleted ServiceCIDR says Terminating", || async {
        let c = cidrs.get("extra").await.unwrap();
        ready(&c) == Some(("False".into(), "Terminating".into()))
    })
    .await;
    let c = cidrs.get("extra").await.unwrap();
    assert!(c.metadata.deletion_timestamp.is_some());
    let refused = svcs.create(&pp, &svc("refused")).await.unwrap_err();
    assert!(
        matches!(refused, kube::Error::Api(ref e) if e.message.contains("range is full")),
        "{refused:?}"
    );
    // Still there a few finalizer rounds later.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(cidrs.get_opt("extra").await.unwrap().is_some());

    // The Service goes: so does the ServiceCIDR.
    svcs.delete("more", &DeleteParams::default()).await.unwrap();
    wait_for(
        "the ServiceCIDR is gone once its last address is",
        || async { cidrs.get_opt("extra").await.unwrap().is_none() },
    )
    .await;
    // The default one is never released while the flag range holds Services.
    assert!(cidrs.get_opt("kubernetes").await.unwrap().is_some());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_lists_and_creates_service_cidrs() {
    let s = tiny_server().await;
    let dir = tempfile::tempdir().unwrap();
    let k = Kubectl::new(kubectl_current(), &s.running.kubeconfig, dir.path());
    let m = k.manifest(
        "extra.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata:\n  name: extra\nspec:\n  cidrs: [\"10.100.0.0/29\", \"fd00:100::/120\"]\n",
    );
    k.ok(&["create", "-f", &m]).await;
    let table = k.ok(&["get", "servicecidrs"]).await.stdout;
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["NAME", "CIDRS", "AGE"], "{table}");
    assert!(
        rows.iter()
            .any(|r| r[..2] == ["extra", "10.100.0.0/29,fd00:100::/120"]),
        "{table}"
    );
    assert!(
        rows.iter()
            .any(|r| r[..2] == ["kubernetes", "10.96.0.0/29"]),
        "{table}"
    );
    let got = k.get(&["servicecidr", "extra"]).await;
    assert_eq!(got["apiVersion"], "networking.k8s.io/v1");
    assert_eq!(got["status"]["conditions"][0]["type"], "Ready");
    assert_eq!(got["status"]["conditions"][0]["status"], "True");
    // With no addresses in it, a delete completes (the finalizer goes within two rounds).
    k.ok(&["delete", "servicecidr", "extra", "--timeout=20s"])
        .await;
    let after = k.run(&["get", "servicecidr", "extra"]).await;
    assert!(
        !after.ok && after.stderr.contains("NotFound"),
        "{}",
        after.stderr
    );
    s.stop().await;
}
