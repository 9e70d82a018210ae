//! The `service-lb` controller against the API server: LoadBalancer Services get addresses
//! from the pool into `status.loadBalancer.ingress`, an exhausted pool is an Event, a release
//! lets a waiting Service in, `spec.loadBalancerIP` is honoured, a restarted controller keeps
//! every address where it was, and a type change gives the address back. The API server
//! gives a LoadBalancer with externalTrafficPolicy Local its health-check node port. A
//! requested address of a family the Service lacks is a `LoadBalancerIPInvalid` Event and no
//! address; an exhausted IPv6 pool leaves a RequireDualStack Service nothing (its IPv4
//! address goes to the next) and a PreferDualStack one its IPv4 address.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use k8s_openapi::api::core::v1::{Event, Service};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::*;

fn lb(name: &str, extra: serde_json::Value) -> Service {
    let mut spec = json!({"type": "LoadBalancer", "ports": [{"port": 80, "targetPort": 8080}],
                          "selector": {"app": name}});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

fn address(s: &Service) -> Option<String> {
    s.status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?
        .first()?
        .ip
        .clone()
}

async fn wait_address(api: &Api<Service>, name: &str) -> String {
    wait_for(&format!("{name}'s address"), 30, || async {
        address(&api.get(name).await.unwrap())
    })
    .await
}

/// The Warning Event saying `name` got no address.
async fn wait_event(client: &kube::Client, name: &str) -> Event {
    wait_reason(client, name, "AllocationFailed").await
}

/// The Warning Event about `name` with `reason`.
async fn wait_reason(client: &kube::Client, name: &str, reason: &str) -> Event {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    wait_for(&format!("{name}'s {reason} event"), 30, || async {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| {
                e.involved_object.name.as_deref() == Some(name)
                    && e.reason.as_deref() == Some(reason)
            })
    })
    .await
}

async fn start(client: &kube::Client) -> Manager {
    Manager::start(client.clone(), |c| {
        c.controllers = ["service-lb".to_string()].into();
        c.load_balancer_pool = Some("203.0.113.0/30".parse().unwrap());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balancers_get_pool_addresses_that_survive_a_restart() {
    let s = TestServer::start().await;
    let client = s.client().await;
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    // The pool /30 has two addresses; b asks for the second by name.
    api.create(&pp, &lb("b", json!({"loadBalancerIP": "203.0.113.2"})))
        .await
        .unwrap();
    let m = start(&client).await;
    assert_eq!(wait_address(&api, "b").await, "203.0.113.2");
    api.create(&pp, &lb("a", json!({}))).await.unwrap();
    assert_eq!(wait_address(&api, "a").await, "203.0.113.1");

    // Exhausted: c waits, with a Warning Event saying why.
    api.create(&pp, &lb("c", json!({}))).await.unwrap();
    let ev = wait_event(&client, "c").await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert!(
        ev.message.as_deref().unwrap().contains("no free address"),
        "{ev:?}"
    );
    assert_eq!(address(&api.get("c").await.unwrap()), None);

    // A restarted controller rebuilds the pool from the statuses: nothing moves.
    m.stop().await;
    let m = start(&client).await;
    api.create(&pp, &lb("d", json!({}))).await.unwrap();
    // d is refused only once the new controller has taken a and b's addresses over.
    wait_event(&client, "d").await;
    assert_eq!(wait_address(&api, "a").await, "203.0.113.1");
    assert_eq!(wait_address(&api, "b").await, "203.0.113.2");

    // a becomes a ClusterIP Service: its address is taken out of its status and goes to one
    // of the waiting Services.
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"type": "ClusterIP"}})),
    )
    .await
    .unwrap();
    wait_for("a's address to go", 30, || async {
        address(&api.get("a").await.unwrap())
            .is_none()
            .then_some(())
    })
    .await;
    let (c, d) = wait_for("c or d to get .1", 30, || async {
        let c = address(&api.get("c").await.unwrap());
        let d = address(&api.get("d").await.unwrap());
        (c.is_some() || d.is_some()).then_some((c, d))
    })
    .await;
    assert_eq!(
        c.or(d).as_deref(),
        Some("203.0.113.1"),
        "exactly one got the freed address"
    );

    // Deleting b frees .2 for the other one.
    api.delete("b", &DeleteParams::default()).await.unwrap();
    wait_for("c and d both served", 30, || async {
        let c = address(&api.get("c").await.unwrap());
        let d = address(&api.get("d").await.unwrap());
        (c.is_some() && d.is_some() && c != d).then_some(())
    })
    .await;
    m.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_traffic_policy_gets_a_health_check_node_port() {
    let s = TestServer::start().await;
    let client = s.client().await;
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    let svc = api
        .create(&pp, &lb("web", json!({"externalTrafficPolicy": "Local"})))
        .await
        .unwrap();
    let spec = svc.spec.unwrap();
    let hc = spec
        .health_check_node_port
        .expect("a health-check node port");
    let np = spec.ports.unwrap()[0].node_port.unwrap();
    assert!((30000..=32767).contains(&hc), "{hc}");
    assert_ne!(hc, np);
    // Cluster policy: none.
    let other = api.create(&pp, &lb("other", json!({}))).await.unwrap();
    assert_eq!(other.spec.unwrap().health_check_node_port, None);
    // Taken ports are refused; a deleted Service gives its port back.
    let err = api
        .create(
            &pp,
            &lb(
                "dup",
                json!({"externalTrafficPolicy": "Local", "healthCheckNodePort": hc}),
            ),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already allocated"), "{err}");
    api.delete("web", &DeleteParams::default()).await.unwrap();
    let again = api
        .create(
            &pp,
            &lb(
                "dup",
                json!({"externalTrafficPolicy": "Local", "healthCheckNodePort": hc}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(again.spec.unwrap().health_check_node_port, Some(hc));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_pool_the_node_addresses_serve_as_in_k3s() {
    let s = TestServer::start().await;
    let client = s.client().await;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    for (name, ip) in [("n1", "198.18.0.12"), ("n2", "198.18.0.11")] {
        let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
        }))
        .unwrap();
        nodes.create(&PostParams::default(), &node).await.unwrap();
        nodes
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"status": {"addresses": [{"type": "InternalIP", "address": ip}]}}),
                ),
            )
            .await
            .unwrap();
    }
    let m = Manager::start(client.clone(), |c| {
        c.controllers = ["service-lb".to_string()].into();
        c.load_balancer_node_addresses = true;
    })
    .await;
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &lb("web", json!({})))
        .await
        .unwrap();
    let ips = wait_for("the nodes' addresses", 30, || async {
        let s = api.get("web").await.unwrap();
        let ips: Vec<String> = s
            .status?
            .load_balancer?
            .ingress?
            .into_iter()
            .filter_map(|i| i.ip)
            .collect();
        (!ips.is_empty()).then_some(ips)
    })
    .await;
    assert_eq!(ips, ["198.18.0.11", "198.18.0.12"]);
    m.stop().await;
    s.stop().await;
}

fn addresses(s: &Service) -> Vec<String> {
    s.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.clone())
        .collect()
}

async fn dual_stack() -> (TestServer, kube::Client, Manager) {
    let s = TestServer::start_with(|c| {
        c.service_cidrs = "10.96.0.0/12,fd00:96::/112".parse().unwrap();
    })
    .await;
    let client = s.client().await;
    // Two addresses per family: 203.0.113.1-2, fd00:203:: and fd00:203::1.
    let m = Manager::start(client.clone(), |c| {
        c.controllers = ["service-lb".to_string()].into();
        c.load_balancer_pool = Some("203.0.113.0/30".parse().unwrap());
        c.load_balancer_pool_v6 = Some("fd00:203::/127".parse().unwrap());
    })
    .await;
    (s, client, m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requested_address_of_another_family_is_an_event_and_no_address() {
    let (s, client, m) = dual_stack().await;
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    // IPv4-only Services asking for an IPv6 address, by loadBalancerIP and by MetalLB's
    // annotation.
    api.create(&pp, &lb("wrong", json!({"loadBalancerIP": "fd00:203::1"})))
        .await
        .unwrap();
    let mut ann = lb("wrong-ann", json!({}));
    ann.metadata.annotations = Some(
        [(
            "metallb.io/loadBalancerIPs".to_string(),
            "fd00:203::1".to_string(),
        )]
        .into(),
    );
    api.create(&pp, &ann).await.unwrap();
    for name in ["wrong", "wrong-ann"] {
        let ev = wait_reason(&client, name, "LoadBalancerIPInvalid").await;
        assert_eq!(ev.type_.as_deref(), Some("Warning"));
        assert!(
            ev.message
                .as_deref()
                .unwrap()
                .contains("fd00:203::1 is IPv6, not of the Service's ipFamilies [IPv4]"),
            "{ev:?}"
        );
        // The Event is written after the decision: no address was handed out for it.
        assert_eq!(
            addresses(&api.get(name).await.unwrap()),
            Vec::<String>::new()
        );
    }
    // Negative control: a dual-stack Service asking for the same address gets it (and an
    // IPv4 one), so nothing above held it.
    api.create(
        &pp,
        &lb(
            "dual",
            json!({"loadBalancerIP": "fd00:203::1", "ipFamilyPolicy": "RequireDualStack",
                   "ipFamilies": ["IPv4", "IPv6"]}),
        ),
    )
    .await
    .unwrap();
    let got = wait_for("dual's addresses", 30, || async {
        let a = addresses(&api.get("dual").await.unwrap());
        (a.len() == 2).then_some(a)
    })
    .await;
    assert_eq!(got, ["203.0.113.1", "fd00:203::1"]);
    // A Service that held an address and then asks for one of the wrong family loses it.
    api.create(&pp, &lb("later", json!({}))).await.unwrap();
    assert_eq!(wait_address(&api, "later").await, "203.0.113.2");
    api.patch(
        "later",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"loadBalancerIP": "fd00:203::"}})),
    )
    .await
    .unwrap();
    wait_for("later's address to go", 30, || async {
        addresses(&api.get("later").await.unwrap())
            .is_empty()
            .then_some(())
    })
    .await;
    wait_reason(&client, "later", "LoadBalancerIPInvalid").await;
    m.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_ipv6_pool_leaves_require_dual_stack_nothing_and_prefer_its_ipv4() {
    let (s, client, m) = dual_stack().await;
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    let v6 = json!({"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv6"]});
    for name in ["v6a", "v6b"] {
        api.create(&pp, &lb(name, v6.clone())).await.unwrap();
        wait_address(&api, name).await;
    }
    // RequireDualStack: all or nothing.
    api.create(
        &pp,
        &lb(
            "req",
            json!({"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv6"]}),
        ),
    )
    .await
    .unwrap();
    let ev = wait_event(&client, "req").await;
    assert!(
        ev.message
            .as_deref()
            .unwrap()
            .contains("fd00:203::/127 has no free address"),
        "{ev:?}"
    );
    assert_eq!(
        addresses(&api.get("req").await.unwrap()),
        Vec::<String>::new()
    );
    // PreferDualStack: keeps its IPv4 address — the first one, which req does not hold
    // (before the fix req held it unseen and this got .2), with an Event about IPv6.
    api.create(
        &pp,
        &lb(
            "pref",
            json!({"ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv4", "IPv6"]}),
        ),
    )
    .await
    .unwrap();
    let got = wait_for("pref's IPv4 address", 30, || async {
        let a = addresses(&api.get("pref").await.unwrap());
        (!a.is_empty()).then_some(a)
    })
    .await;
    assert_eq!(got, ["203.0.113.1"]);
    wait_event(&client, "pref").await;
    assert_eq!(
        addresses(&api.get("req").await.unwrap()),
        Vec::<String>::new()
    );
    // IPv6 addresses come free: both complete, pref's IPv4 address unchanged.
    api.delete("v6a", &DeleteParams::default()).await.unwrap();
    api.delete("v6b", &DeleteParams::default()).await.unwrap();
    let (req, pref) = wait_for("req and pref dual-stack", 30, || async {
        let r = addresses(&api.get("req").await.unwrap());
        let p = addresses(&api.get("pref").await.unwrap());
        (r.len() == 2 && p.len() == 2).then_some((r, p))
    })
    .await;
    assert_eq!(pref[0], "203.0.113.1");
    assert_eq!(req[0], "203.0.113.2");
    assert_ne!(req[1], pref[1]);
    m.stop().await;
    s.stop().await;
}
