//! The `service-lb` controller against the API server: LoadBalancer Services get addresses
//! from the pool into `status.loadBalancer.ingress`, an exhausted pool is an Event, a release
//! lets a waiting Service in, `spec.loadBalancerIP` is honoured, a restarted controller keeps
//! every address where it was, and a type change gives the address back. The API server
//! gives a LoadBalancer with externalTrafficPolicy Local its health-check node port.

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
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    wait_for(&format!("{name}'s AllocationFailed event"), 30, || async {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| {
                e.involved_object.name.as_deref() == Some(name)
                    && e.reason.as_deref() == Some("AllocationFailed")
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
