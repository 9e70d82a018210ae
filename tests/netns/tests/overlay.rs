//! The flannel-like VXLAN overlay end to end: an API server on the underlay, three nodes each
//! running `trellis overlay-agent`, pods wired by running the `trellis-overlay` plugin as a
//! runtime does. Pod-to-pod traffic is never NATed, traffic to the outside is; nodes leaving
//! take their entries with them; entries deleted by hand come back; an agent restart drops no
//! connection; the path MTU is exact.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node as KubeNode;
use kube::Api;
use kube::api::DeleteParams;
use netns_testbed::probe::{echo_peer_server, who_am_i};
use netns_testbed::require_tool;
use netns_testbed::{iperf, wait_for};
use trellis_net::{Family, Route};

#[path = "support/overlay_cluster.rs"]
mod overlay_cluster;
use overlay_cluster::{Blocks, Cluster, start_agent};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_on_three_nodes_talk_without_nat_and_leave_with_masquerade() {
    let c = Cluster::start(3).await;
    let mut pods = Vec::new();
    for (on, name) in [
        (0, "a1"),
        (0, "a2"),
        (1, "b1"),
        (1, "b2"),
        (2, "c1"),
        (2, "c2"),
    ] {
        pods.push(c.add_pod(on, name).await);
    }
    // Every ordered pair: ping, and a TCP exchange in which the server sees the client's own
    // address (no NAT between pods), same node and across nodes.
    c.assert_pairs_talk_without_nat(&pods).await;
    // A pod reaches another node's address.
    let out = c
        .exec(
            &pods[0].ns,
            &[
                "ping",
                "-c",
                "1",
                "-W",
                "2",
                &c.workers[1].node.ip.to_string(),
            ],
        )
        .await;
    assert!(out.success(), "pod → node: {}", out.stdout);

    // An outside host (the internet, here 203.0.113.10 on the underlay) sees the node's address.
    let outside =
        c.tb.add_host("out", "203.0.113.10/24".parse().unwrap())
            .await
            .unwrap();
    outside
        .ns
        .connect()
        .unwrap()
        .replace_route(&Route::dev(
            "198.18.0.0/15".parse().unwrap(),
            outside
                .ns
                .connect()
                .unwrap()
                .require_link("eth0")
                .await
                .unwrap()
                .index,
        ))
        .await
        .unwrap();
    for w in &c.workers {
        let h = w.node.ns.connect().unwrap();
        let eth0 = h.require_link("eth0").await.unwrap();
        h.replace_route(&Route::dev("203.0.113.0/24".parse().unwrap(), eth0.index))
            .await
            .unwrap();
    }
    let server = echo_peer_server(&outside.ns, outside.ip, 8080).unwrap();
    let seen = who_am_i(&pods[2].ns, SocketAddr::new(outside.ip.into(), 8080)).unwrap();
    assert_eq!(
        seen,
        c.workers[1].node.ip.to_string(),
        "the outside sees the node, not the pod"
    );
    drop(server);

    // The overlay's MTU: the largest DF packet fits, one byte more is refused, never dropped silently.
    let mtu = 1500 - 50;
    let fits = (mtu - 28).to_string();
    let too_big = (mtu - 27).to_string();
    let target = pods[4].ip.to_string();
    let out = c
        .exec(
            &pods[0].ns,
            &[
                "ping", "-c", "1", "-W", "2", "-M", "do", "-s", &fits, &target,
            ],
        )
        .await;
    assert!(
        out.success(),
        "{} bytes with DF: {}{}",
        fits,
        out.stdout,
        out.stderr
    );
    let out = c
        .exec(
            &pods[0].ns,
            &[
                "ping", "-c", "1", "-W", "2", "-M", "do", "-s", &too_big, &target,
            ],
        )
        .await;
    assert!(!out.success());
    let said = format!("{}{}", out.stdout, out.stderr).to_lowercase();
    assert!(
        said.contains("message too long") || said.contains("frag needed"),
        "one byte more must be refused loudly: {said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_leaving_and_entries_deleted_by_hand_converge() {
    let c = Cluster::start(3).await;
    let n1 = c.workers[0].node.ns.connect().unwrap();
    let vtep = n1.require_link("trellis.1").await.unwrap();
    let routes_to = |block: Ipv4Net| {
        let n1 = n1.clone();
        async move {
            n1.routes(Family::V4, Some(Route::TABLE_MAIN))
                .await
                .unwrap()
                .into_iter()
                .filter(|r| r.dst == ipnet::IpNet::V4(block))
                .count()
        }
    };
    let b2 = c.workers[1].block;
    let b3 = c.workers[2].block;
    assert_eq!(routes_to(b2).await, 1);
    assert_eq!(routes_to(b3).await, 1);

    // A route and an FDB entry deleted by hand come back.
    let route = n1
        .routes(Family::V4, Some(Route::TABLE_MAIN))
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.dst == ipnet::IpNet::V4(b2))
        .unwrap();
    assert!(n1.delete_route(&route).await.unwrap());
    let fdb = n1.fdb(vtep.index).await.unwrap();
    let entry = fdb
        .iter()
        .find(|e| e.dst == Some(c.workers[1].node.ip.into()))
        .unwrap()
        .clone();
    assert!(
        n1.delete_fdb(vtep.index, entry.mac, entry.dst.unwrap())
            .await
            .unwrap()
    );
    let mut back = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let fdb_back = n1
            .fdb(vtep.index)
            .await
            .unwrap()
            .iter()
            .any(|e| e.mac == entry.mac && e.dst == entry.dst);
        if routes_to(b2).await == 1 && fdb_back {
            back = true;
            break;
        }
    }
    assert!(back, "the route and the FDB entry came back");

    // A node deleted from the API: its entries leave the other nodes within one resync.
    let nodes: Api<KubeNode> = Api::all(c.client.clone());
    nodes.delete("n3", &DeleteParams::default()).await.unwrap();
    let mut gone = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let neigh = n1.neighbours(Some(vtep.index)).await.unwrap();
        let fdb = n1.fdb(vtep.index).await.unwrap();
        if routes_to(b3).await == 0
            && !neigh
                .iter()
                .any(|n| n.ip == std::net::IpAddr::V4(b3.network()))
            && !fdb
                .iter()
                .any(|e| e.dst == Some(c.workers[2].node.ip.into()))
        {
            gone = true;
            break;
        }
    }
    assert!(
        gone,
        "n3's route, neighbour and FDB entry left n1 within a resync (2 s)"
    );
    assert_eq!(routes_to(b2).await, 1, "n2's stayed");

    // The VTEP itself deleted comes back with its entries.
    assert!(n1.delete_link("trellis.1").await.unwrap());
    let mut restored = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if n1.link("trellis.1").await.unwrap().is_some() && routes_to(b2).await == 1 {
            restored = true;
            break;
        }
    }
    assert!(restored, "the VTEP and its routes were made again");
}

/// The agent on the client's node stops (SIGTERM) two intervals into a 12 s stream between pods
/// on two nodes, and a new one starts two intervals later. The new agent is ready while the
/// stream runs (its readiness file, deleted first, is back and its `/readyz` answers), and
/// every interval at both ends carries at least half of the stream's median: stopping the agent
/// leaves the data path in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_drops_no_connection() {
    require_tool("iperf3", "iperf3");
    let mut c = Cluster::start(2).await;
    let a = c.add_pod(0, "a").await;
    let b = c.add_pod(1, "b").await;
    let server = iperf::start_server(&c.tb, &b.ns, b.ip).await.unwrap();
    let client = iperf::start_client(&c.tb, &a.ns, b.ip, 12, "200M").unwrap();
    let arrived = || iperf::server_intervals(&c.tb.log_of(server)).len();
    wait_for(
        "two intervals at the server",
        Duration::from_secs(15),
        || arrived() >= 2,
    )
    .await;
    // Stop the agent on the client's node, and start a new one while the stream runs.
    let old = c.workers[0].agent;
    c.tb.signal(old, nix::sys::signal::Signal::SIGTERM);
    wait_for(
        "the agent to stop on SIGTERM",
        Duration::from_secs(10),
        || !c.tb.running(old),
    )
    .await;
    // The readiness file goes, so that only the new agent can make it again.
    let ready_file = c.workers[0].dirs.join("state/ready.json");
    match std::fs::remove_file(&ready_file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        other => other.unwrap(),
    }
    // Away for two intervals: the data path must carry the stream without any agent, not only
    // across a restart quicker than TCP would notice.
    let stopped_at = arrived();
    wait_for(
        "two intervals without an agent",
        Duration::from_secs(15),
        || arrived() >= stopped_at + 2,
    )
    .await;
    let w = &c.workers[0];
    let agent = start_agent(&c.tb, &c.cp, &w.node, &w.dirs);
    c.workers[0].agent = agent;
    c.wait_ready(&c.workers[0]).await;
    let at = arrived();
    assert!(
        c.tb.running(client) && at <= 10,
        "the new agent was ready after {at} of the stream's 12 intervals: not while it ran"
    );
    eprintln!("the new agent was ready after {at} of 12 intervals");
    wait_for("iperf3 to finish", Duration::from_secs(30), || {
        !c.tb.running(client)
    })
    .await;
    wait_for(
        "the iperf3 server to finish",
        Duration::from_secs(10),
        || !c.tb.running(server),
    )
    .await;
    let (sent, received) = (c.tb.log_of(client), c.tb.log_of(server));
    if let Err(e) = iperf::judge_stream(&sent, &received, 0.5) {
        panic!("{e}\nclient:\n{sent}\nserver:\n{received}");
    }
}

/// The default deployment: ipamd on every node, the agent holding the block ipamd gave its node
/// (block affinity in the API), the pods' addresses from that same block through trellis-ipam.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_held_through_ipamd_carry_pods_across_nodes() {
    let c = Cluster::start_with(2, Blocks::Ipamd).await;
    assert_ne!(
        c.workers[0].block, c.workers[1].block,
        "two nodes were given one block"
    );
    let a = c.add_pod(0, "a").await;
    let b = c.add_pod(1, "b").await;
    for (from, to) in [(&a, &b), (&b, &a)] {
        let out = c
            .exec(
                &from.ns,
                &["ping", "-c", "1", "-W", "2", &to.ip.to_string()],
            )
            .await;
        assert!(
            out.success(),
            "{} cannot ping {}: {}",
            from.ip,
            to.ip,
            out.stdout
        );
    }
    // The VTEP and the pods share the pool without a conflict the checker can find.
    let out =
        c.tb.exec(
            &c.cp.node.ns,
            &[
                netns_testbed::bin_path("trellis").to_str().unwrap(),
                "ipam",
                "--kubeconfig",
                c.cp.kubeconfig.to_str().unwrap(),
                "check",
            ],
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert!(out.success(), "ipam check: {}{}", out.stdout, out.stderr);
    // The agent restarts onto the block it already holds.
    let w = &c.workers[0];
    let state = |w: &overlay_cluster::Worker| -> String {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(w.dirs.join("state/ready.json")).unwrap())
                .unwrap();
        v["block"].as_str().unwrap().to_string()
    };
    let before = state(w);
    c.tb.kill(w.agent);
    std::fs::remove_file(w.dirs.join("state/ready.json")).unwrap();
    let again = overlay_cluster::start_agent_with(&c.tb, &c.cp, &w.node, &w.dirs, Blocks::Ipamd);
    for _ in 0..300 {
        if w.dirs.join("state/ready.json").is_file() {
            break;
        }
        assert!(c.tb.running(again), "{}", c.tb.log_of(again));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        state(w),
        before,
        "a restarted agent changed its node's block"
    );
}
