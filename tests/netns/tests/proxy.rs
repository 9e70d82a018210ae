//! `trellis proxy` end to end on the overlay: an API server, two nodes each running the
//! overlay agent and the proxy, pods wired by the real CNI configuration. There is no kubelet
//! or EndpointSlice controller here, so the tests write Services and EndpointSlices through
//! the API as those would, and the "containers" are TCP servers the test runs in the pods'
//! namespaces. The service range is routed only inside the nodes' namespaces, which the test
//! made (a node needs a route for a ClusterIP it rejects, as kube-proxy's nodes have their
//! default route).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/overlay_cluster.rs"]
mod cluster;
use cluster::{Cluster, Pod};

/// The proxy backend these tests run.
const PROXY_BACKEND: &str = "iptables";

include!("support/proxy_common.rs");

use netns_testbed::wait_for;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_rules_until_the_new_state_swaps_in_and_touches_only_our_chains() {
    let mut env = start(1).await;
    let n1 = env.node_name(0);
    let node_ns = env.c.workers[0].node.ns.clone();
    // A chain of another component, which must survive.
    env.c
        .exec(
            &node_ns,
            &["iptables", "-w", "-t", "nat", "-N", "TRELLIS-POL-PROBE"],
        )
        .await;
    env.c
        .exec(
            &node_ns,
            &[
                "iptables",
                "-w",
                "-t",
                "nat",
                "-A",
                "TRELLIS-POL-PROBE",
                "-j",
                "RETURN",
            ],
        )
        .await;
    let b1 = env.c.add_pod(0, "b1").await;
    let client = env.c.add_pod(0, "cl").await;
    let _s = name_server(&b1.ns, "b1");
    let keep = env
        .service("keep", json!({"selector": {"app": "k"}, "ports": [{"name": "http", "port": 80, "targetPort": PORT}]}))
        .await;
    env.slice("keep", "http", &[(&b1, &n1)]).await;
    let gone = env
        .service("gone", json!({"selector": {"app": "g"}, "ports": [{"name": "http", "port": 80, "targetPort": PORT}]}))
        .await;
    env.slice("gone", "http", &[(&b1, &n1)]).await;
    let (keep_vip, gone_vip) = (
        SocketAddr::from((cluster_ip(&keep), 80)),
        SocketAddr::from((cluster_ip(&gone), 80)),
    );
    for vip in [keep_vip, gone_vip] {
        let ns = client.ns.clone();
        poll("the service answers", Duration::from_secs(20), move || {
            ask_one(&ns, vip).ok()
        })
        .await;
    }

    // Stop the proxy: its rules stay and keep serving.
    let old = env.proxies[0];
    env.c.tb.signal(old, nix::sys::signal::Signal::SIGTERM);
    wait_for("the proxy stops", Duration::from_secs(10), || {
        !env.c.tb.running(old)
    })
    .await;
    assert_eq!(ask_one(&client.ns, keep_vip).unwrap(), "b1");
    // A change while it is down: only the new proxy can apply it.
    env.services
        .delete("gone", &Default::default())
        .await
        .unwrap();
    assert_eq!(
        ask_one(&client.ns, gone_vip).unwrap(),
        "b1",
        "the old rules serve on"
    );

    let trellis = bin_path("trellis");
    let new = spawn_proxy(&env.c, &env.c.workers[0], &trellis);
    wait_proxy_ready(&env.c, &env.c.workers[0], new).await;
    env.proxies[0] = new;
    assert_eq!(ask_one(&client.ns, keep_vip).unwrap(), "b1");
    assert!(
        ask_one(&client.ns, gone_vip).is_err(),
        "the removed Service's rules are gone"
    );
    let nat = env
        .c
        .exec(&node_ns, &["iptables-save", "-t", "nat"])
        .await
        .stdout;
    assert!(nat.contains("-A TRELLIS-POL-PROBE -j RETURN"), "{nat}");
    assert!(
        nat.contains("-A TRELLIS-POSTRTG"),
        "the overlay's chain is kept:\n{nat}"
    );
    let jumps = nat
        .lines()
        .filter(|l| l.starts_with("-A PREROUTING") && l.contains("TRELLIS-SVC-SERVICES"))
        .count();
    assert_eq!(jumps, 1, "one jump after a restart:\n{nat}");
    assert!(!nat.contains(&format!("{}/32", gone_vip.ip())), "{nat}");
    env.assert_proxies_alive();
}
