// The service tests shared by both network modes: `include!`d by proxy.rs (overlay) and
// proxy_routed.rs (routed), each with its own `cluster` module.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use netns_testbed::bin_path;
use netns_testbed::probe::{NameServer, echo_peer_server, http_get, stop_echo, who_am_i};
use serde_json::json;
use trellis_net::Netns;

const PORT: u16 = 8080;

/// A pod's "container": answers every connection with its name, until dropped.
fn name_server(ns: &Netns, name: &str) -> NameServer {
    NameServer::start(ns, PORT, name, Duration::from_secs(600)).unwrap()
}

/// Connects from `ns` to `to` `n` times; each answer (the backend's name) or error.
fn ask(ns: &Netns, to: SocketAddr, n: usize) -> Vec<std::io::Result<String>> {
    ns.run(|| {
        (0..n)
            .map(|_| {
                let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                Ok(out)
            })
            .collect()
    })
    .unwrap()
}

fn ask_one(ns: &Netns, to: SocketAddr) -> std::io::Result<String> {
    ask(ns, to, 1).pop().unwrap()
}

/// The backend the proxies run: `PROXY_BACKEND`'s, or the default (nftables) when it is None,
/// in which case no `--backend` is passed (so the test proves the default too).
fn backend() -> &'static str {
    PROXY_BACKEND.unwrap_or("nftables")
}

fn spawn_proxy(c: &Cluster, w: &cluster::Worker, trellis: &std::path::Path) -> i32 {
    let mut argv = vec![trellis.to_str().unwrap(), "proxy"];
    if let Some(b) = PROXY_BACKEND {
        argv.extend(["--backend", b]);
    }
    argv.extend([
        "--node",
        &w.node.name,
        "--kubeconfig",
        c.cp.kubeconfig.to_str().unwrap(),
        "--listen",
        "127.0.0.1:10256",
    ]);
    c.tb.spawn(&w.node.ns, &argv, Duration::from_secs(600))
        .unwrap()
}

async fn wait_proxy_ready(c: &Cluster, w: &cluster::Worker, pid: i32) {
    for _ in 0..300 {
        let ns = w.node.ns.clone();
        let answer = tokio::task::spawn_blocking(move || {
            http_get(&ns, SocketAddr::from(([127, 0, 0, 1], 10256)), "/readyz")
        })
        .await
        .unwrap();
        if matches!(answer, Ok((200, _))) {
            return;
        }
        assert!(c.tb.running(pid), "proxy exited:\n{}", c.tb.log_of(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("proxy never ready:\n{}", c.tb.log_of(pid));
}

/// The node's rules are where [`backend`] puts them, and only there: the tests below prove
/// that backend, not the other.
async fn assert_backend(c: &Cluster, w: &cluster::Worker) {
    let limit = Duration::from_secs(10);
    let table =
        c.tb.exec(
            &w.node.ns,
            &["nft", "list", "table", "ip", "trellis-proxy"],
            limit,
        )
        .await
        .unwrap();
    let nat =
        c.tb.exec_ok(&w.node.ns, &["iptables", "-w", "-t", "nat", "-S"], limit)
            .await
            .unwrap();
    let chains = nat.contains("TRELLIS-SVC-SERVICES");
    // No IPv6 Service here: no ip6 tables either (they would slow every nft command).
    let table6 =
        c.tb.exec(
            &w.node.ns,
            &["nft", "list", "table", "ip6", "trellis-proxy"],
            limit,
        )
        .await
        .unwrap();
    assert!(!table6.success(), "no ip6 tables without IPv6 Services:\n{}", table6.stdout);
    match backend() {
        "nftables" => assert!(
            table.success() && !chains,
            "want the nftables table and no iptables chains:\n{}\n{nat}",
            table.stdout
        ),
        _ => assert!(
            !table.success() && chains,
            "want iptables chains and no nftables table:\n{}\n{nat}",
            table.stdout
        ),
    }
}

struct Env {
    c: Cluster,
    client: kube::Client,
    proxies: Vec<i32>,
    services: Api<Service>,
    slices: Api<EndpointSlice>,
}

async fn start(nodes: usize) -> Env {
    let c = Cluster::start(nodes).await;
    let trellis = bin_path("trellis");
    let mut proxies = Vec::new();
    for w in &c.workers {
        // The service range, routed inside the node's own namespace only.
        c.tb.exec(
            &w.node.ns,
            &["ip", "route", "add", "10.96.0.0/12", "dev", "eth0"],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        proxies.push(spawn_proxy(&c, w, &trellis));
    }
    for (w, pid) in c.workers.iter().zip(&proxies) {
        wait_proxy_ready(&c, w, *pid).await;
        assert_backend(&c, w).await;
    }
    let client = cluster::kube_client(&c.cp.local_kubeconfig).await;
    let services = Api::namespaced(client.clone(), "default");
    let slices = Api::namespaced(client.clone(), "default");
    Env {
        c,
        client,
        proxies,
        services,
        slices,
    }
}

impl Env {
    async fn service(&self, name: &str, spec: serde_json::Value) -> Service {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": spec,
        }))
        .unwrap();
        self.services
            .create(&PostParams::default(), &svc)
            .await
            .unwrap()
    }

    fn slice_body(
        &self,
        service: &str,
        port_name: &str,
        backends: &[(&Pod, &str)],
    ) -> EndpointSlice {
        let endpoints: Vec<_> = backends
            .iter()
            .map(|(p, node)| {
                json!({"addresses": [p.ip.to_string()], "nodeName": node,
                       "conditions": {"ready": true, "serving": true, "terminating": false}})
            })
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": format!("{service}-1"), "namespace": "default",
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "ports": [{"name": port_name, "port": PORT, "protocol": "TCP"}],
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    async fn slice(&self, service: &str, port_name: &str, backends: &[(&Pod, &str)]) {
        let body = self.slice_body(service, port_name, backends);
        self.slices
            .create(&PostParams::default(), &body)
            .await
            .unwrap();
    }

    async fn replace_endpoints(&self, service: &str, port_name: &str, backends: &[(&Pod, &str)]) {
        let body = self.slice_body(service, port_name, backends);
        self.slices
            .patch(
                &format!("{service}-1"),
                &PatchParams::default(),
                &Patch::Merge(json!({"endpoints": body.endpoints})),
            )
            .await
            .unwrap();
    }

    fn node_name(&self, i: usize) -> String {
        self.c.workers[i].node.name.clone()
    }

    fn assert_proxies_alive(&self) {
        for pid in &self.proxies {
            assert!(
                self.c.tb.running(*pid),
                "proxy exited:\n{}",
                self.c.tb.log_of(*pid)
            );
        }
    }
}

fn cluster_ip(svc: &Service) -> Ipv4Addr {
    svc.spec
        .as_ref()
        .unwrap()
        .cluster_ip
        .as_ref()
        .unwrap()
        .parse()
        .unwrap()
}

/// Polls `f` in a blocking thread every 50 ms until it returns Some, at most `limit`.
/// A proxy's syncs so far, ok or not (`trellis_proxy_syncs_total`), from its node's /metrics.
fn proxy_syncs(node: &Netns) -> Option<f64> {
    let (code, body) =
        http_get(node, SocketAddr::from(([127, 0, 0, 1], 10256)), "/metrics").ok()?;
    (code == 200).then(|| {
        body.lines()
            .filter(|l| l.starts_with("trellis_proxy_syncs_total{"))
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .sum()
    })
}

async fn poll<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl Fn() -> Option<T> + Send + Sync + 'static,
) -> T {
    let f = Arc::new(f);
    let started = Instant::now();
    loop {
        let g = f.clone();
        if let Some(v) = tokio::task::spawn_blocking(move || g()).await.unwrap() {
            return v;
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `from` reaches every named backend directly (pod IP, no Service): the pod
/// network has converged. In the routed mode a new pod's block reaches the other node over BGP
/// some time after its ADD; the Service checks below measure the proxy, not that delay.
async fn wait_reachable(from: &Arc<Netns>, backends: &[(&Pod, &str)]) {
    for (pod, name) in backends {
        let (ns, to, name) = (
            from.clone(),
            SocketAddr::from((pod.ip, PORT)),
            name.to_string(),
        );
        poll(
            "the pod network reaches the backend",
            Duration::from_secs(20),
            move || (ask_one(&ns, to).ok()? == name).then_some(()),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ip_spreads_moves_rejects_and_hairpins() {
    let env = start(2).await;
    let c = &env.c;
    let (n1, n2) = (env.node_name(0), env.node_name(1));
    let b1 = c.add_pod(0, "b1").await;
    let b2 = c.add_pod(0, "b2").await;
    let b3 = c.add_pod(1, "b3").await;
    let client = c.add_pod(1, "cl").await;
    let _servers = [
        name_server(&b1.ns, "b1"),
        name_server(&b2.ns, "b2"),
        name_server(&b3.ns, "b3"),
    ];
    wait_reachable(&client.ns, &[(&b1, "b1"), (&b2, "b2"), (&b3, "b3")]).await;
    let web = env
        .service(
            "web",
            json!({"selector": {"app": "web"},
                   "ports": [{"name": "http", "port": 80, "targetPort": PORT}]}),
        )
        .await;
    env.slice("web", "http", &[(&b1, &n1), (&b2, &n1), (&b3, &n2)])
        .await;
    let vip = SocketAddr::from((cluster_ip(&web), 80));

    // 1. Each of 3 backends gets its share over 300 connections.
    let ns = client.ns.clone();
    poll("the service answers", Duration::from_secs(20), move || {
        ask_one(&ns, vip).ok()
    })
    .await;
    let ns = client.ns.clone();
    let answers = tokio::task::spawn_blocking(move || ask(&ns, vip, 300))
        .await
        .unwrap();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for a in answers {
        *counts
            .entry(a.expect("every connection answered"))
            .or_default() += 1;
    }
    eprintln!("300 connections through {vip}: {counts:?}");
    assert_eq!(counts.len(), 3, "{counts:?}");
    // A third each, within 15 percentage points (a binomial count's sd is 8.2 here; ±15 %
    // relative would fail by chance in about one run in six).
    for (b, n) in &counts {
        assert!((55..=145).contains(n), "{b} got {n} of 300: {counts:?}");
    }

    // 2. Delete a backend (its server keeps answering: only the rules keep it out): within
    // 1 s of the API's answer no new connection reaches it.
    env.replace_endpoints("web", "http", &[(&b1, &n1), (&b2, &n1)])
        .await;
    let removed_at = Instant::now();
    let ns = client.ns.clone();
    let last_hit = tokio::task::spawn_blocking(move || {
        let mut last_hit = None;
        let mut clean = 0;
        while clean < 100 {
            assert!(
                removed_at.elapsed() < Duration::from_secs(10),
                "b3 still reached after 10 s"
            );
            match ask_one(&ns, vip).as_deref() {
                Ok("b3") => {
                    last_hit = Some(removed_at.elapsed());
                    clean = 0;
                }
                Ok(_) => clean += 1,
                Err(e) => panic!("connection failed while moving: {e}"),
            }
        }
        last_hit
    })
    .await
    .unwrap();
    eprintln!("last connection to the removed backend: {last_hit:?} after the update");
    if let Some(t) = last_hit {
        assert!(
            t < Duration::from_secs(1),
            "b3 was still reached {t:?} after its removal"
        );
    }

    // 3. A Service without endpoints is refused at once, not black-holed.
    let empty = env
        .service(
            "empty",
            json!({"selector": {"app": "nothing"}, "ports": [{"name": "http", "port": 80}]}),
        )
        .await;
    let empty_vip = SocketAddr::from((cluster_ip(&empty), 80));
    let ns = client.ns.clone();
    poll(
        "the empty service is refused",
        Duration::from_secs(20),
        move || match ask_one(&ns, empty_vip) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(()),
            _ => None,
        },
    )
    .await;
    let ns = client.ns.clone();
    let took = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let r = ask_one(&ns, empty_vip);
        (t.elapsed(), r.map_err(|e| e.kind()))
    })
    .await
    .unwrap();
    assert_eq!(took.1, Err(std::io::ErrorKind::ConnectionRefused));
    assert!(
        took.0 < Duration::from_millis(100),
        "refusal took {:?}",
        took.0
    );

    // 4. Bad input: the slice serves a port of another name: the service port has no
    // endpoints, is refused, and the proxy keeps syncing (no error loop).
    let odd = env
        .service(
            "odd",
            json!({"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]}),
        )
        .await;
    env.slice("odd", "metrics", &[(&b1, &n1)]).await;
    let odd_vip = SocketAddr::from((cluster_ip(&odd), 80));
    let ns = client.ns.clone();
    poll(
        "the mismatched port is refused",
        Duration::from_secs(20),
        move || match ask_one(&ns, odd_vip) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(()),
            _ => None,
        },
    )
    .await;

    // 5. Hairpin: a pod reaches itself through its own Service.
    let me = env
        .service(
            "me",
            json!({"selector": {"app": "me"}, "ports": [{"name": "http", "port": 80, "targetPort": PORT}]}),
        )
        .await;
    env.slice("me", "http", &[(&b3, &n2)]).await;
    let me_vip = SocketAddr::from((cluster_ip(&me), 80));
    let ns = b3.ns.clone();
    let answer = poll("b3 reaches itself", Duration::from_secs(20), move || {
        ask_one(&ns, me_vip).ok()
    })
    .await;
    assert_eq!(answer, "b3");

    // 6. Session affinity ClientIP: one client always reaches the same backend (the plain
    // Service above spread the same client over all three).
    let sticky = env
        .service(
            "sticky",
            json!({"selector": {"app": "web"}, "sessionAffinity": "ClientIP",
                   "ports": [{"name": "http", "port": 80, "targetPort": PORT}]}),
        )
        .await;
    env.slice("sticky", "http", &[(&b1, &n1), (&b2, &n1), (&b3, &n2)])
        .await;
    let sticky_vip = SocketAddr::from((cluster_ip(&sticky), 80));
    let ns = client.ns.clone();
    poll(
        "the sticky service answers",
        Duration::from_secs(20),
        move || ask_one(&ns, sticky_vip).ok(),
    )
    .await;
    let ns = client.ns.clone();
    let answers = tokio::task::spawn_blocking(move || ask(&ns, sticky_vip, 30))
        .await
        .unwrap();
    let seen: std::collections::BTreeSet<String> =
        answers.into_iter().map(|a| a.unwrap()).collect();
    assert_eq!(seen.len(), 1, "affinity: {seen:?}");
    // A new affinity timeout is applied by the next sync without an error (nftables refuses
    // to delete a set that rules still name, so redeclaring it in place failed the sync; the
    // no-error check at the end of this test is the control) and clients stay sticky.
    let nodes: Vec<_> = c.workers.iter().map(|w| w.node.ns.clone()).collect();
    let before: Vec<f64> = {
        let nodes = nodes.clone();
        tokio::task::spawn_blocking(move || nodes.iter().map(|n| proxy_syncs(n).unwrap()).collect())
            .await
            .unwrap()
    };
    env.services
        .patch(
            "sticky",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"sessionAffinityConfig":
                {"clientIP": {"timeoutSeconds": 90}}}})),
        )
        .await
        .unwrap();
    poll(
        "every proxy synced the new timeout",
        Duration::from_secs(20),
        move || {
            let now: Vec<f64> = nodes
                .iter()
                .map(|n| proxy_syncs(n))
                .collect::<Option<_>>()?;
            now.iter().zip(&before).all(|(n, b)| n > b).then_some(())
        },
    )
    .await;
    let ns = client.ns.clone();
    let answers = tokio::task::spawn_blocking(move || ask(&ns, sticky_vip, 30))
        .await
        .unwrap();
    let seen: std::collections::BTreeSet<String> =
        answers.into_iter().map(|a| a.unwrap()).collect();
    assert_eq!(seen.len(), 1, "affinity after the new timeout: {seen:?}");

    // 7. internalTrafficPolicy Local: the client on n2 reaches only n2's backend.
    let itp = env
        .service(
            "itp",
            json!({"selector": {"app": "web"}, "internalTrafficPolicy": "Local",
                   "ports": [{"name": "http", "port": 80, "targetPort": PORT}]}),
        )
        .await;
    env.slice("itp", "http", &[(&b1, &n1), (&b2, &n1), (&b3, &n2)])
        .await;
    let itp_vip = SocketAddr::from((cluster_ip(&itp), 80));
    let ns = client.ns.clone();
    poll(
        "the local-only service answers",
        Duration::from_secs(20),
        move || ask_one(&ns, itp_vip).ok(),
    )
    .await;
    let ns = client.ns.clone();
    let answers = tokio::task::spawn_blocking(move || ask(&ns, itp_vip, 30))
        .await
        .unwrap();
    let seen: std::collections::BTreeSet<String> =
        answers.into_iter().map(|a| a.unwrap()).collect();
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec!["b3".to_string()]);

    // The proxies are alive, synced a bounded number of times (no error loop) and report
    // their sync latency.
    env.assert_proxies_alive();
    for w in &c.workers {
        let ns = w.node.ns.clone();
        let (code, body) = tokio::task::spawn_blocking(move || {
            http_get(&ns, SocketAddr::from(([127, 0, 0, 1], 10256)), "/metrics")
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(code, 200);
        assert!(
            body.contains("trellis_proxy_sync_duration_seconds_count"),
            "{body}"
        );
        assert!(!body.contains("result=\"error\""), "{body}");
        let syncs: f64 = body
            .lines()
            .find(|l| l.starts_with("trellis_proxy_syncs_total{result=\"ok\"}"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert!(syncs < 50.0, "{syncs} syncs for a handful of changes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ports_from_other_nodes_and_outside_and_local_policy_keeps_the_client() {
    let env = start(2).await;
    let c = &env.c;
    let (n1, n2) = (env.node_name(0), env.node_name(1));
    let outside = c.tb.add_node("out", 9).await.unwrap();
    let b1 = c.add_pod(0, "b1").await;
    let b2 = c.add_pod(1, "b2").await;
    let _servers = [name_server(&b1.ns, "b1"), name_server(&b2.ns, "b2")];
    for w in &c.workers {
        wait_reachable(&w.node.ns, &[(&b1, "b1"), (&b2, "b2")]).await;
    }
    let np = env
        .service(
            "np",
            json!({"type": "NodePort", "selector": {"app": "np"},
                   "ports": [{"name": "http", "port": 80, "targetPort": PORT}]}),
        )
        .await;
    env.slice("np", "http", &[(&b1, &n1), (&b2, &n2)]).await;
    let node_port = np.spec.as_ref().unwrap().ports.as_ref().unwrap()[0]
        .node_port
        .unwrap() as u16;
    assert!((30000..=32767).contains(&node_port));
    let n1_addr = SocketAddr::from((c.workers[0].node.ip, node_port));

    // From another node's namespace and from an outside client: both backends answer.
    for (who, ns) in [
        ("node n2", c.workers[1].node.ns.clone()),
        ("outside", outside.ns.clone()),
    ] {
        let ns2 = ns.clone();
        poll(
            "the node port answers",
            Duration::from_secs(20),
            move || ask_one(&ns2, n1_addr).ok(),
        )
        .await;
        let answers = tokio::task::spawn_blocking(move || ask(&ns, n1_addr, 60))
            .await
            .unwrap();
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for a in answers {
            *seen
                .entry(a.unwrap_or_else(|e| panic!("{who}: {e}")))
                .or_default() += 1;
        }
        assert_eq!(seen.len(), 2, "{who} reached {seen:?}");
    }

    // externalTrafficPolicy: the echo server in b1 reports the peer address it saw.
    let echo_port = 9000;
    let _echo = echo_peer_server(&b1.ns, Ipv4Addr::UNSPECIFIED, echo_port).unwrap();
    let mk = |name: &str, policy: &str| {
        json!({"type": "NodePort", "externalTrafficPolicy": policy, "selector": {"app": name},
               "ports": [{"name": "echo", "port": 90, "targetPort": echo_port}]})
    };
    let local = env.service("local", mk("local", "Local")).await;
    let cluster = env.service("cluster", mk("cluster", "Cluster")).await;
    for svc in ["local", "cluster"] {
        let body: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": format!("{svc}-1"), "namespace": "default",
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4",
            "ports": [{"name": "echo", "port": echo_port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [b1.ip.to_string()], "nodeName": n1}],
        }))
        .unwrap();
        env.slices
            .create(&PostParams::default(), &body)
            .await
            .unwrap();
    }
    let port_of = |s: &Service| {
        s.spec.as_ref().unwrap().ports.as_ref().unwrap()[0]
            .node_port
            .unwrap() as u16
    };
    let client_ip = outside.ip.to_string();
    let ns = outside.ns.clone();
    let to = SocketAddr::from((c.workers[0].node.ip, port_of(&local)));
    let seen = poll(
        "the Local node port answers",
        Duration::from_secs(20),
        move || who_am_i(&ns, to).ok(),
    )
    .await;
    assert_eq!(
        seen, client_ip,
        "externalTrafficPolicy Local keeps the client's address"
    );
    // Negative control: the same path with policy Cluster is masqueraded.
    let ns = outside.ns.clone();
    let to = SocketAddr::from((c.workers[0].node.ip, port_of(&cluster)));
    let seen = poll(
        "the Cluster node port answers",
        Duration::from_secs(20),
        move || who_am_i(&ns, to).ok(),
    )
    .await;
    assert_ne!(seen, client_ip, "policy Cluster masquerades");
    stop_echo(&b1.ns, SocketAddr::from((b1.ip, echo_port)));
    env.assert_proxies_alive();
}

mod dns {
    use super::*;
    use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record, RecordType};
    use std::net::UdpSocket;

    /// One UDP exchange from `ns`: the raw answer (None: none within three tries of 700 ms).
    /// Resent like a stub resolver does, so one lost datagram costs 700 ms, not the caller's
    /// whole time bound.
    fn exchange(ns: &Netns, server: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
        ns.run(|| {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
            s.set_read_timeout(Some(Duration::from_millis(700))).ok()?;
            let mut buf = [0u8; 4096];
            for _ in 0..3 {
                s.send_to(bytes, server).ok()?;
                if let Ok(n) = s.recv(&mut buf) {
                    return Some(buf[..n].to_vec());
                }
            }
            None
        })
        .unwrap()
    }

    pub fn query(ns: &Netns, server: SocketAddr, name: &str, t: RecordType) -> Option<Message> {
        let mut m = Message::new(0x2a2a, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        let b = exchange(ns, server, &m.to_vec().unwrap())?;
        Message::from_vec(&b).ok()
    }

    /// The addresses of the A records of an answer, sorted.
    pub fn addresses(m: &Message) -> Vec<Ipv4Addr> {
        let mut v: Vec<Ipv4Addr> = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    /// A resolver of the test's own in `ns`: every A query gets 203.0.113.9 (an address that
    /// is only data); runs until 200 queries or 10 min.
    fn tiny_resolver(ns: &Netns, at: SocketAddr) {
        let sock = ns.run(|| UdpSocket::bind(at)).unwrap().unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(600);
            let mut buf = [0u8; 512];
            let mut served = 0;
            while served < 200 && Instant::now() < deadline {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(q) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut m = Message::response(q.metadata.id, OpCode::Query);
                m.add_queries(q.queries.iter().cloned());
                if let Some(first) = q.queries.first() {
                    m.add_answer(Record::from_rdata(
                        first.name().clone(),
                        60,
                        RData::A(A("203.0.113.9".parse().unwrap())),
                    ));
                }
                let _ = sock.send_to(&m.to_vec().unwrap(), peer);
                served += 1;
            }
        });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dns_answers_the_cluster_zone_follows_changes_and_forwards_the_rest() {
        let env = start(2).await;
        let c = &env.c;
        let (n1, n2) = (env.node_name(0), env.node_name(1));
        let up = c.tb.add_node("up", 9).await.unwrap();
        let upstream = SocketAddr::from((up.ip, 53));
        tiny_resolver(&up.ns, upstream);
        // DNS runs on n1 (host network), behind the Service at 10.96.0.10.
        let trellis = bin_path("trellis");
        let pid =
            c.tb.spawn(
                &c.workers[0].node.ns,
                &[
                    trellis.to_str().unwrap(),
                    "dns",
                    "--kubeconfig",
                    c.cp.kubeconfig.to_str().unwrap(),
                    "--listen",
                    "0.0.0.0:53",
                    "--upstream",
                    &upstream.to_string(),
                    "--metrics-listen",
                    "127.0.0.1:9153",
                ],
                Duration::from_secs(600),
            )
            .unwrap();
        let kube_system: Api<Service> = Api::namespaced(env.client.clone(), "kube-system");
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "kube-dns", "namespace": "kube-system"},
            "spec": {"clusterIP": "10.96.0.10", "selector": {"k8s-app": "kube-dns"},
                     "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}
        }))
        .unwrap();
        kube_system
            .create(&PostParams::default(), &svc)
            .await
            .unwrap();
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "kube-dns-1", "namespace": "kube-system",
                         "labels": {"kubernetes.io/service-name": "kube-dns"}},
            "addressType": "IPv4",
            "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}],
            "endpoints": [{"addresses": [c.workers[0].node.ip.to_string()], "nodeName": n1}],
        }))
        .unwrap();
        Api::<EndpointSlice>::namespaced(env.client.clone(), "kube-system")
            .create(&PostParams::default(), &slice)
            .await
            .unwrap();
        let client = c.add_pod(1, "cl").await;
        let p1 = c.add_pod(0, "p1").await;
        let p2 = c.add_pod(1, "p2").await;
        let dns = SocketAddr::from(([10, 96, 0, 10], 53));

        // Records of every kind, each awaited with the 1 s the zone has to follow a change.
        let web = env
            .service(
                "web",
                json!({"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]}),
            )
            .await;
        let ns = client.ns.clone();
        poll(
            "DNS through the Service answers",
            Duration::from_secs(30),
            move || {
                query(
                    &ns,
                    dns,
                    "kubernetes.default.svc.cluster.local.",
                    RecordType::A,
                )
            },
        )
        .await;
        let ip = cluster_ip(&web);
        let ns = client.ns.clone();
        let m = poll("web's A record", Duration::from_secs(1), move || {
            query(&ns, dns, "web.default.svc.cluster.local.", RecordType::A)
                .filter(|m| !m.answers.is_empty())
        })
        .await;
        assert_eq!(addresses(&m), vec![ip]);
        let m = query(
            &client.ns,
            dns,
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
        )
        .unwrap();
        assert!(
            matches!(&m.answers[0].data, RData::SRV(s) if s.port == 80),
            "{m:?}"
        );
        let o = ip.octets();
        let rev = format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0]);
        let m = query(&client.ns, dns, &rev, RecordType::PTR).unwrap();
        assert!(
            matches!(&m.answers[0].data, RData::PTR(p) if p.0.to_ascii() == "web.default.svc.cluster.local."),
            "{m:?}"
        );

        // Headless: ready endpoints and their hostnames; a removed endpoint leaves within 1 s.
        env.service("hl", json!({"clusterIP": "None", "selector": {"app": "hl"}, "ports": [{"name": "http", "port": 80}]}))
            .await;
        let body: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "hl-1", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "hl"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": [p1.ip.to_string()], "hostname": "hl-0", "nodeName": n1},
                {"addresses": [p2.ip.to_string()], "hostname": "hl-1", "nodeName": n2},
            ],
        }))
        .unwrap();
        env.slices
            .create(&PostParams::default(), &body)
            .await
            .unwrap();
        let ns = client.ns.clone();
        let mut both = vec![p1.ip, p2.ip];
        both.sort();
        let want = both.clone();
        poll(
            "the headless Service's endpoints",
            Duration::from_secs(1),
            move || {
                query(&ns, dns, "hl.default.svc.cluster.local.", RecordType::A)
                    .filter(|m| addresses(m) == want)
            },
        )
        .await;
        let m = query(
            &client.ns,
            dns,
            "hl-1.hl.default.svc.cluster.local.",
            RecordType::A,
        )
        .unwrap();
        assert_eq!(addresses(&m), vec![p2.ip]);
        env.slices
            .patch(
                "hl-1",
                &PatchParams::default(),
                &Patch::Merge(json!({"endpoints": [
                    {"addresses": [p1.ip.to_string()], "hostname": "hl-0", "nodeName": n1}]})),
            )
            .await
            .unwrap();
        let ns = client.ns.clone();
        let want = vec![p1.ip];
        poll(
            "the removed endpoint leaves DNS",
            Duration::from_secs(1),
            move || {
                query(&ns, dns, "hl.default.svc.cluster.local.", RecordType::A)
                    .filter(|m| addresses(m) == want)
            },
        )
        .await;

        // ExternalName, pod names, unknown names.
        env.service(
            "ext",
            json!({"type": "ExternalName", "externalName": "db.example.test"}),
        )
        .await;
        let ns = client.ns.clone();
        let m = poll("the ExternalName", Duration::from_secs(1), move || {
            query(&ns, dns, "ext.default.svc.cluster.local.", RecordType::A)
                .filter(|m| !m.answers.is_empty())
        })
        .await;
        assert!(
            matches!(&m.answers[0].data, RData::CNAME(n) if n.0.to_ascii() == "db.example.test."),
            "{m:?}"
        );
        let dashed = p2.ip.to_string().replace('.', "-");
        let m = query(
            &client.ns,
            dns,
            &format!("{dashed}.default.pod.cluster.local."),
            RecordType::A,
        )
        .unwrap();
        assert_eq!(addresses(&m), vec![p2.ip]);
        let m = query(
            &client.ns,
            dns,
            "nothing.default.svc.cluster.local.",
            RecordType::A,
        )
        .unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

        // Other names go to the upstream the test runs.
        let m = query(&client.ns, dns, "www.example.test.", RecordType::A).unwrap();
        assert_eq!(
            addresses(&m),
            vec!["203.0.113.9".parse::<Ipv4Addr>().unwrap()]
        );

        // Malformed input: FORMERR, and the server keeps answering.
        let garbage = [
            0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x3f, b'x',
        ];
        let b = exchange(&client.ns, dns, &garbage).expect("an answer to garbage");
        let m = Message::from_vec(&b).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(m.metadata.id, 0x1234);
        assert!(
            query(
                &client.ns,
                dns,
                "web.default.svc.cluster.local.",
                RecordType::A
            )
            .is_some()
        );
        assert!(c.tb.running(pid), "dns exited:\n{}", c.tb.log_of(pid));
        env.assert_proxies_alive();
    }
}

/// A restarted proxy: its rules keep serving while it is down, the new one swaps its state in
/// (a Service deleted meanwhile loses its rules), and nothing of another component's is
/// touched. Run on the overlay by each backend's test file.
#[allow(dead_code)]
async fn restart_keeps_rules() {
    let mut env = start(1).await;
    let n1 = env.node_name(0);
    let node_ns = env.c.workers[0].node.ns.clone();
    // A chain of another component, which must survive.
    env.c
        .tb
        .exec(
            &node_ns,
            &["iptables", "-w", "-t", "nat", "-N", "TRELLIS-POL-PROBE"],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    env.c
        .tb
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
            Duration::from_secs(10),
        )
        .await
        .unwrap();
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
    netns_testbed::wait_for("the proxy stops", Duration::from_secs(10), || {
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
        .tb
        .exec(
            &node_ns,
            &["iptables-save", "-t", "nat"],
            Duration::from_secs(10),
        )
        .await
        .unwrap()
        .stdout;
    assert!(nat.contains("-A TRELLIS-POL-PROBE -j RETURN"), "{nat}");
    assert!(
        nat.contains("-A TRELLIS-POSTRTG"),
        "the overlay's chain is kept:\n{nat}"
    );
    let gone_ip = gone_vip.ip().to_string();
    if backend() == "nftables" {
        // The main table and the shards that hold the service chains and maps.
        let table = env
            .c
            .tb
            .exec(
                &node_ns,
                &[
                    "sh",
                    "-c",
                    "for t in $(nft list tables | awk '$3 ~ /^trellis-proxy/ {print $3}'); do nft list table ip $t; done",
                ],
                Duration::from_secs(10),
            )
            .await
            .unwrap()
            .stdout;
        assert!(
            table.contains("table ip trellis-proxy-svc-00 {"),
            "the shard tables are there:\n{table}"
        );
        assert!(!table.contains(&gone_ip), "{table}");
        assert!(table.contains(&keep_vip.ip().to_string()), "{table}");
        assert!(
            !nat.contains("TRELLIS-SVC"),
            "no iptables rules of ours:\n{nat}"
        );
    } else {
        let jumps = nat
            .lines()
            .filter(|l| l.starts_with("-A PREROUTING") && l.contains("TRELLIS-SVC-SERVICES"))
            .count();
        assert_eq!(jumps, 1, "one jump after a restart:\n{nat}");
        assert!(!nat.contains(&format!("{gone_ip}/32")), "{nat}");
    }
    env.assert_proxies_alive();

    // `trellis proxy --cleanup` (the proxy stopped first) removes every table, chain and jump
    // of the proxy's, of both backends, and nothing else.
    env.c.tb.signal(new, nix::sys::signal::Signal::SIGTERM);
    netns_testbed::wait_for("the proxy stops", Duration::from_secs(10), || {
        !env.c.tb.running(new)
    })
    .await;
    let limit = Duration::from_secs(30);
    env.c
        .tb
        .exec_ok(&node_ns, &[trellis.to_str().unwrap(), "proxy", "--cleanup"], limit)
        .await
        .unwrap();
    let tables = env
        .c
        .tb
        .exec_ok(&node_ns, &["nft", "list", "tables"], limit)
        .await
        .unwrap();
    assert!(
        !tables.contains("trellis-proxy"),
        "--cleanup left tables:\n{tables}"
    );
    let nat = env
        .c
        .tb
        .exec_ok(&node_ns, &["iptables-save", "-t", "nat"], limit)
        .await
        .unwrap();
    assert!(!nat.contains("TRELLIS-SVC"), "--cleanup left chains:\n{nat}");
    assert!(nat.contains("-A TRELLIS-POL-PROBE -j RETURN"), "{nat}");
    assert!(
        nat.contains("-A TRELLIS-POSTRTG"),
        "the overlay's chain is kept:\n{nat}"
    );
}
