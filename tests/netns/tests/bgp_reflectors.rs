//! Route reflection at scale, as Calico deployments run it (issue 18): the node-to-node mesh
//! off (`--no-mesh`), two of our agents route reflectors (their Nodes annotated with one
//! cluster id, `trellis.dev/route-reflector-cluster-id`, and labelled `route-reflector=true`),
//! and one `BGPPeer` — Calico's `nodeSelector: all()`, `peerSelector: route-reflector ==
//! 'true'` — peering every node with both reflectors (and so the reflectors with each other
//! and with every node). Every client's block reaches every other client through the
//! reflectors with the originator's address as next hop; losing a reflector loses no route;
//! without the cluster ids (nodes peered the same way, nobody reflecting) the clients' blocks
//! stay with the "reflectors".

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::time::Duration;

use kube::api::{Api, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use netns_testbed::bin_path;
use netns_testbed::probe::{PodAt, pairs_talk_without_nat};

#[path = "support/routed_cluster.rs"]
mod routed_cluster;
use routed_cluster::{Cluster, Pod, block_of, start_agent_args};

const CLUSTER_ID: &str = "244.0.0.1";

/// Nodes `0..reflectors` labelled as reflectors, with the cluster id when `cluster_id`.
fn reflector_meta(reflectors: usize, cluster_id: bool) -> impl Fn(usize) -> serde_json::Value {
    move |i| {
        if i >= reflectors {
            return serde_json::json!({});
        }
        let mut meta = serde_json::json!({"labels": {"route-reflector": "true"}});
        if cluster_id {
            meta["annotations"] =
                serde_json::json!({"trellis.dev/route-reflector-cluster-id": CLUSTER_ID});
        }
        meta
    }
}

fn no_mesh(_: usize, _: &std::path::Path) -> Vec<String> {
    vec!["--no-mesh".into()]
}

/// Calico's route-reflector `BGPPeer`: every node peers with the nodes labelled
/// `route-reflector=true` (both ways).
async fn peer_with_route_reflectors(c: &Cluster) {
    let client = routed_cluster::kube_client(&c.cp.local_kubeconfig).await;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("bgp.trellis.dev", "v1", "BGPPeer"),
        "bgppeers",
    );
    let peers: Api<DynamicObject> = Api::all_with(client, &ar);
    let obj: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "bgp.trellis.dev/v1", "kind": "BGPPeer",
        "metadata": {"name": "peer-with-route-reflectors"},
        "spec": {"nodeSelector": "all()", "peerSelector": "route-reflector == 'true'"},
    }))
    .unwrap();
    // The agents install the definition: retry until it is served.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match peers.create(&PostParams::default(), &obj).await {
            Ok(_) => return,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "creating the BGPPeer: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `trellis bgp status` of node `on`.
async fn status(c: &Cluster, on: usize) -> String {
    c.tb.exec(
        &c.workers[on].node.ns,
        &[bin_path("trellis").to_str().unwrap(), "bgp", "status"],
        Duration::from_secs(10),
    )
    .await
    .unwrap()
    .stdout
}

/// Node `on`'s row for the peer `peer`: (state, prefixes received, prefixes sent).
async fn row(c: &Cluster, on: usize, peer: usize) -> Option<(String, usize, usize)> {
    let out = status(c, on).await;
    let ip = c.workers[peer].node.ip.to_string();
    let fields: Vec<String> = out
        .lines()
        .find(|l| l.split_whitespace().next() == Some(ip.as_str()))?
        .split_whitespace()
        .map(String::from)
        .collect();
    Some((
        fields.get(2)?.clone(),
        fields.get(4)?.parse().ok()?,
        fields.get(5)?.parse().ok()?,
    ))
}

/// Waits until node `on` has exactly these peers, all Established.
async fn wait_sessions(c: &Cluster, on: usize, peers: &[usize], limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let out = status(c, on).await;
        let mut ok = out.matches("Established").count() == peers.len();
        for p in peers {
            ok &= matches!(row(c, on, *p).await, Some((s, _, _)) if s == "Established");
        }
        if ok {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} has not Established sessions with exactly {peers:?} within {limit:?}:\n{out}",
            c.workers[on].node.name
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every client's block in every other node's kernel via the client's own address (the
/// originator's: a reflector does not change the next hop).
async fn wait_every_block_via_its_originator(c: &Cluster, pods: &[Pod], limit: Duration) {
    for p in pods {
        let origin = c.workers[p.on].node.ip;
        c.wait_route(block_of(p.ip), Some(origin), p.on, limit)
            .await;
    }
}

/// `ping -c count -i 0.1` from `from` to `to`, in the background.
fn start_ping(c: &Cluster, from: &Pod, to: &Pod, count: u32) -> i32 {
    let count = count.to_string();
    let to = to.ip.to_string();
    c.tb.spawn(
        &from.ns,
        &["ping", "-n", "-c", &count, "-i", "0.1", "-W", "1", &to],
        Duration::from_secs(120),
    )
    .unwrap()
}

/// The ping's (transmitted, received), once it has ended.
async fn ping_loss(c: &Cluster, pid: i32, limit: Duration) -> (u32, u32) {
    let deadline = tokio::time::Instant::now() + limit;
    while c.tb.running(pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "ping still running after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = c.tb.log_of(pid);
    let line = log
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary:\n{log}"));
    let n: Vec<u32> = line
        .split(|ch: char| !ch.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (n[0], n[1])
}

/// The route deletions of `prefix` that `ip monitor route` printed.
fn deletions(monitor: &str, prefix: &str) -> usize {
    monitor
        .lines()
        .filter(|l| l.starts_with("Deleted") && l.split_whitespace().nth(1) == Some(prefix))
        .count()
}

/// 2 reflectors + 6 clients, routed mode, a pod on each client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_reflectors_carry_every_clients_block_with_its_own_next_hop_and_survive_losing_one() {
    let c = Cluster::start_meta(8, false, reflector_meta(2, true), no_mesh).await;
    let clients: Vec<usize> = (2..8).collect();
    let mut pods = Vec::new();
    for &i in &clients {
        pods.push(c.add_pod(i, &format!("p{i}")).await);
    }
    // Negative control: the mesh off and no BGPPeer yet — every agent runs and announces its
    // block locally, but has no session and so no route to any other node's pods.
    for p in &pods {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while c
            .bgp_route(p.on, block_of(p.ip))
            .await
            .is_none_or(|r| r.source != "local")
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} does not announce its block",
                c.workers[p.on].node.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for i in 0..8 {
        assert!(
            !status(&c, i).await.contains("Established"),
            "a session without the mesh or a BGPPeer"
        );
        assert_eq!(
            c.learned(i).await,
            vec![],
            "n{}: routes with no peer",
            i + 1
        );
    }

    peer_with_route_reflectors(&c).await;
    // The clients peer with both reflectors only; the reflectors with each other and with
    // every client.
    for &i in &clients {
        wait_sessions(&c, i, &[0, 1], Duration::from_secs(30)).await;
    }
    wait_sessions(&c, 0, &[1, 2, 3, 4, 5, 6, 7], Duration::from_secs(30)).await;
    wait_sessions(&c, 1, &[0, 2, 3, 4, 5, 6, 7], Duration::from_secs(30)).await;
    wait_every_block_via_its_originator(&c, &pods, Duration::from_secs(20)).await;
    // On each client the other clients' blocks come from a reflector (no client-to-client
    // session exists), their next hop the originator's.
    let reflectors = [
        c.workers[0].node.ip.to_string(),
        c.workers[1].node.ip.to_string(),
    ];
    for p in &pods {
        for q in pods.iter().filter(|q| q.on != p.on) {
            let r = c.bgp_route(p.on, block_of(q.ip)).await.unwrap();
            assert!(reflectors.contains(&r.source), "{r:?}");
            assert_eq!(r.next_hop, c.workers[q.on].node.ip.to_string(), "{r:?}");
        }
    }
    // RFC 4456 CLUSTER_LIST: each reflector sends the other the six client blocks it
    // reflects, and the other drops every one (its own cluster id is in the list).
    for (from, to) in [(0, 1), (1, 0)] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let sent = row(&c, from, to).await.map(|r| r.2);
            let received = row(&c, to, from).await.map(|r| r.1);
            if sent == Some(6) && received == Some(0) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "n{} sent n{} {sent:?}, n{} took {received:?} (want 6 and 0)",
                from + 1,
                to + 1,
                to + 1
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Every ordered pod pair across the clients, sources preserved.
    let at: Vec<PodAt<'_>> = pods.iter().map(|p| (&*p.ns, p.ip, p.on)).collect();
    pairs_talk_without_nat(&c.tb, &at).await.unwrap();

    // Kill reflector n1: every route stays (via n2's copy, the same next hop): no kernel
    // deletion on a client, and a ping across clients loses at most 2 packets of 100.
    let watched = 2;
    let monitor =
        c.tb.spawn(
            &c.workers[watched].node.ns,
            &["ip", "monitor", "route"],
            Duration::from_secs(120),
        )
        .unwrap();
    let (from, to) = (&pods[0], &pods[5]);
    let ping = start_ping(&c, from, to, 100);
    // The stream is going before the reflector dies.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while c.tb.log_of(ping).matches("bytes from").count() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no ping replies:\n{}",
            c.tb.log_of(ping)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.tb.kill(c.workers[0].agent);
    let n2 = c.workers[1].node.ip.to_string();
    for &i in &clients {
        wait_sessions(&c, i, &[1], Duration::from_secs(20)).await;
    }
    for p in &pods {
        for q in pods.iter().filter(|q| q.on != p.on) {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let r = c.bgp_route(p.on, block_of(q.ip)).await;
                if r.as_ref().is_some_and(|r| {
                    r.source == n2 && r.next_hop == c.workers[q.on].node.ip.to_string()
                }) {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "n{}: {} not via n2's reflection: {r:?}",
                    p.on + 1,
                    block_of(q.ip)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let (sent, received) = ping_loss(&c, ping, Duration::from_secs(30)).await;
    c.tb.kill(monitor);
    let log = c.tb.log_of(monitor);
    for q in pods.iter().filter(|q| q.on != watched) {
        let block = block_of(q.ip).to_string();
        assert_eq!(
            deletions(&log, &block),
            0,
            "n{}'s kernel lost {block} with one reflector gone:\n{log}",
            watched + 1
        );
    }
    assert!(
        sent == 100 && received >= 98,
        "pod traffic lost with one reflector gone: {received}/{sent}"
    );
    eprintln!("one reflector killed: {received}/{sent} pings answered, no route deleted");

    // n1 back: every session again, n1 reflects again (each client receives the other five
    // blocks from it too) and routes every block via its originator.
    let n1 = &c.workers[0];
    let _agent = start_agent_args(&c.tb, &c.cp, &n1.node, &n1.dirs, false, 1, &["--no-mesh"]);
    wait_sessions(&c, 0, &[1, 2, 3, 4, 5, 6, 7], Duration::from_secs(30)).await;
    for &i in &clients {
        wait_sessions(&c, i, &[0, 1], Duration::from_secs(30)).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = row(&c, i, 0).await;
            if r.as_ref().is_some_and(|r| r.1 == 5) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "n{} takes {r:?} from the returned reflector (want 5 prefixes)",
                i + 1
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    wait_every_block_via_its_originator(&c, &pods, Duration::from_secs(20)).await;
    pairs_talk_without_nat(&c.tb, &at).await.unwrap();
}

/// The negative control of reflection itself: the same nodes and the same `BGPPeer`, but no
/// cluster id — the two labelled nodes are plain iBGP peers, so (iBGP split horizon) a
/// client's block reaches them and goes no further.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_cluster_id_the_labelled_nodes_reflect_nothing() {
    let c = Cluster::start_meta(4, false, reflector_meta(2, false), no_mesh).await;
    let pods = [c.add_pod(2, "p3").await, c.add_pod(3, "p4").await];
    peer_with_route_reflectors(&c).await;
    for i in [2, 3] {
        wait_sessions(&c, i, &[0, 1], Duration::from_secs(30)).await;
    }
    // Both "reflectors" have both client blocks (the sessions work)...
    for p in &pods {
        for r in [0, 1] {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while !c
                .learned(r)
                .await
                .contains(&(block_of(p.ip), Some(IpAddr::V4(c.workers[p.on].node.ip))))
            {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "n{} lacks {}",
                    r + 1,
                    block_of(p.ip)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // ...and send the clients nothing: no client has the other's block.
    for r in [0, 1] {
        for client in [2, 3] {
            let sent = row(&c, r, client).await.map(|r| r.2);
            assert_eq!(sent, Some(0), "n{} sent n{} routes", r + 1, client + 1);
        }
    }
    for (p, other) in [(&pods[0], 3), (&pods[1], 2)] {
        let learned = c.learned(other).await;
        assert!(
            !learned.iter().any(|(d, _)| *d == block_of(p.ip)),
            "n{} has {} without a reflector: {learned:?}",
            other + 1,
            block_of(p.ip)
        );
    }
}
