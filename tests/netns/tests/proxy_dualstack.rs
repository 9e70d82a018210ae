//! Dual-stack Services end to end in the routed mode: an API server with two service ranges
//! (`--service-cluster-ip-range 10.96.0.0/12,fd00:96::/112`), two nodes whose BGP agents run
//! `--dual-stack` (every pod a /32 and a /128), the controller-manager's EndpointSlice
//! controller making slices of both families from the pods' `podIPs`, `trellis proxy` on each
//! node and `trellis dns` on one. One body, run once per proxy backend: iptables (IPv4 through
//! iptables, IPv6 through ip6tables) and nftables (`ip` and `ip6` tables). The Pod objects carry the addresses the CNI ADD gave each pod, as a
//! kubelet would report them. The service ranges are routed only inside the nodes'
//! namespaces, which the test made.
//!
//! A PreferDualStack Service with three backends is reached over its IPv6 cluster IP (every
//! backend answers), over its IPv4 one, and by name through the AAAA record; a PreferDualStack
//! Service without endpoints is refused in both families on the first SYN (IPv6 TCP by a
//! reset: connection refused, not a timeout); negative control: with ICMPv6 port unreachable
//! the IPv6 refusal waits for the SYN retransmission (1 s). Negative control: a SingleStack
//! IPv4 Service has no IPv6 cluster IP, no IPv6 EndpointSlice, no AAAA record and no IPv6
//! rule, while its IPv4 path works. externalTrafficPolicy Local over IPv6: the health-check
//! node port answers on the node's IPv6 address (200 with local endpoints, 503 without), and
//! the node port on that address reaches a local backend.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use k8s_openapi::api::core::v1::{Pod as KubePod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use netns_testbed::bed::node_ipv6;
use netns_testbed::bin_path;
use netns_testbed::probe::{NameServer, http_get};
use serde_json::json;
use trellis_net::Netns;

#[path = "support/routed_cluster.rs"]
mod routed_cluster;
use routed_cluster::{Cluster, POOL_V6, Pod};

const RANGES: &str = "10.96.0.0/12,fd00:96::/112";
const PORT: u16 = 8080;
/// Bounds for what a loaded machine may take: sessions, a sync, a controller's write.
const CONVERGE: Duration = Duration::from_secs(30);

/// Connects from `ns` to `to` and reads the backend's name (2 s bounds each step).
fn ask(ns: &Netns, to: SocketAddr) -> std::io::Result<String> {
    ns.run(|| {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .map_err(std::io::Error::other)?
}

/// One DNS query over UDP from `ns` (three tries of 700 ms).
fn query(ns: &Netns, server: SocketAddr, name: &str, t: RecordType) -> Option<Message> {
    let mut m = Message::new(0x2a2b, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    let bytes = m.to_vec().unwrap();
    let answer = ns
        .run(|| {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
            s.set_read_timeout(Some(Duration::from_millis(700))).ok()?;
            let mut buf = [0u8; 4096];
            for _ in 0..3 {
                s.send_to(&bytes, server).ok()?;
                if let Ok(n) = s.recv(&mut buf) {
                    return Some(buf[..n].to_vec());
                }
            }
            None
        })
        .unwrap()?;
    Message::from_vec(&answer).ok()
}

/// The A and AAAA addresses of an answer.
fn addresses(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

/// The client namespace's `TcpExtLockDroppedIcmps`: ICMP errors that reached a TCP socket
/// while its owner held it (they are kept only as a soft error).
fn lock_dropped_icmps(ns: &Netns) -> u64 {
    let text = ns
        .run(|| std::fs::read_to_string("/proc/thread-self/net/netstat"))
        .unwrap()
        .unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    assert_eq!(lines.len(), 2, "{text}");
    let names = lines[0].split_whitespace();
    let values = lines[1].split_whitespace();
    names
        .zip(values)
        .find(|(n, _)| *n == "LockDroppedIcmps")
        .and_then(|(_, v)| v.parse().ok())
        .expect("TcpExt LockDroppedIcmps")
}

/// Polls `f` in a blocking thread every 50 ms until it returns Some, at most `limit`.
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

fn cluster_ips(svc: &Service) -> Vec<IpAddr> {
    svc.spec
        .as_ref()
        .and_then(|s| s.cluster_ips.clone())
        .unwrap_or_default()
        .iter()
        .map(|ip| ip.parse().unwrap())
        .collect()
}

/// The Pod object of a pod the test wired: on its node, labelled, Running and Ready with both
/// addresses, as its kubelet would report them.
async fn pod_object(pods: &Api<KubePod>, name: &str, node: &str, app: &str, p: &Pod) {
    let obj: KubePod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "none",
                 "ports": [{"name": "http", "containerPort": PORT}]}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &obj).await.unwrap();
    let ip6 = p.ip6.expect("a dual-stack pod").to_string();
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "phase": "Running", "podIP": p.ip.to_string(),
            "podIPs": [{"ip": p.ip.to_string()}, {"ip": ip6}],
            "conditions": [{"type": "Ready", "status": "True"}],
        }})),
    )
    .await
    .unwrap();
}

/// The proxy's rules of one family as text: ip6tables/iptables-save's nat and filter tables,
/// or the nft tables of that family.
async fn rules_text(c: &Cluster, node: &Netns, backend: &str, v6: bool) -> String {
    let cmd = match (backend, v6) {
        ("nftables", false) => "nft list ruleset ip".to_string(),
        ("nftables", true) => "nft list ruleset ip6".to_string(),
        (_, false) => "iptables-save -t nat; iptables-save -t filter".to_string(),
        (_, true) => "ip6tables-save -t nat; ip6tables-save -t filter".to_string(),
    };
    c.tb.exec_ok(node, &["sh", "-c", &cmd], Duration::from_secs(10))
        .await
        .unwrap()
}

/// Whether the node's rules refuse `ip` (a service address without endpoints).
async fn has_reject(c: &Cluster, node: &Netns, backend: &str, ip: IpAddr) -> bool {
    let out = if backend == "nftables" {
        let family = if ip.is_ipv4() { "ip" } else { "ip6" };
        c.tb.exec_ok(
            node,
            &[
                "nft",
                "list",
                "set",
                family,
                "trellis-proxy",
                "no-endpoint-services",
            ],
            Duration::from_secs(10),
        )
        .await
        .unwrap()
    } else {
        let tool = if ip.is_ipv4() {
            "iptables"
        } else {
            "ip6tables"
        };
        c.tb.exec_ok(
            node,
            &[tool, "-w", "-S", "TRELLIS-SVC-REJECT"],
            Duration::from_secs(10),
        )
        .await
        .unwrap()
    };
    out.contains(&ip.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_service_is_reached_over_ipv6_and_ipv4_and_by_its_aaaa_record_iptables() {
    dual_stack("iptables").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_service_is_reached_over_ipv6_and_ipv4_and_by_its_aaaa_record_nftables() {
    dual_stack("nftables").await;
}

/// The scenarios, with the proxies on `backend`.
async fn dual_stack(backend: &str) {
    let c = Cluster::start_dual_args(2, &["--service-cluster-ip-range", RANGES], |_, _| {
        vec!["--dual-stack".to_string()]
    })
    .await;
    c.wait_established(1, CONVERGE).await;
    let trellis = bin_path("trellis");
    let cidrs = format!("10.244.0.0/16,{POOL_V6}");
    let mut proxies = Vec::new();
    for w in &c.workers {
        for route in [
            &["ip", "route", "add", "10.96.0.0/12", "dev", "eth0"][..],
            &["ip", "-6", "route", "add", "fd00:96::/112", "dev", "eth0"][..],
        ] {
            c.tb.exec_ok(&w.node.ns, route, Duration::from_secs(10))
                .await
                .unwrap();
        }
        proxies.push(
            c.tb.spawn(
                &w.node.ns,
                &[
                    trellis.to_str().unwrap(),
                    "proxy",
                    "--backend",
                    backend,
                    "--node",
                    &w.node.name,
                    "--kubeconfig",
                    c.cp.kubeconfig.to_str().unwrap(),
                    "--cluster-cidr",
                    &cidrs,
                    "--listen",
                    "127.0.0.1:10256",
                ],
                Duration::from_secs(600),
            )
            .unwrap(),
        );
    }
    for (w, pid) in c.workers.iter().zip(&proxies) {
        let deadline = Instant::now() + CONVERGE;
        loop {
            let ns = w.node.ns.clone();
            let answer = tokio::task::spawn_blocking(move || {
                http_get(&ns, SocketAddr::from(([127, 0, 0, 1], 10256)), "/readyz")
            })
            .await
            .unwrap();
            if matches!(answer, Ok((200, _))) {
                break;
            }
            assert!(c.tb.running(*pid), "proxy exited:\n{}", c.tb.log_of(*pid));
            assert!(
                Instant::now() < deadline,
                "proxy never ready:\n{}",
                c.tb.log_of(*pid)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let cm =
        c.cp.start_component(
            &c.tb,
            "controller-manager",
            "system:kube-controller-manager",
            None,
            10257,
            &["--controllers", "endpointslice"],
        )
        .unwrap();
    let dns_pid =
        c.tb.spawn(
            &c.workers[0].node.ns,
            &[
                trellis.to_str().unwrap(),
                "dns",
                "--kubeconfig",
                c.cp.kubeconfig.to_str().unwrap(),
                "--listen",
                "0.0.0.0:53",
                "--metrics-listen",
                "127.0.0.1:9153",
            ],
            Duration::from_secs(600),
        )
        .unwrap();
    let dns = SocketAddr::from((c.workers[0].node.ip, 53));

    let client = routed_cluster::kube_client(&c.cp.local_kubeconfig).await;
    let pods: Api<KubePod> = Api::namespaced(client.clone(), "default");
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let (n1, n2) = (
        c.workers[0].node.name.clone(),
        c.workers[1].node.name.clone(),
    );
    let b1 = c.add_pod(0, "b1").await;
    let b2 = c.add_pod(0, "b2").await;
    let b3 = c.add_pod(1, "b3").await;
    let cl = c.add_pod(1, "cl").await;
    let any6: IpAddr = std::net::Ipv6Addr::UNSPECIFIED.into();
    let life = Duration::from_secs(600);
    let _servers = [
        NameServer::start_at(&b1.ns, any6, PORT, "b1", life).unwrap(),
        NameServer::start_at(&b2.ns, any6, PORT, "b2", life).unwrap(),
        NameServer::start_at(&b3.ns, any6, PORT, "b3", life).unwrap(),
    ];
    for (name, node, p) in [("b1", &n1, &b1), ("b2", &n1, &b2), ("b3", &n2, &b3)] {
        pod_object(&pods, name, node, "web", p).await;
        // The pod network has converged in both families (BGP), before the Services.
        for ip in [IpAddr::V4(p.ip), IpAddr::V6(p.ip6.unwrap())] {
            let (ns, to, want) = (cl.ns.clone(), SocketAddr::new(ip, PORT), name.to_string());
            poll("the pod network reaches the backend", CONVERGE, move || {
                (ask(&ns, to).ok()? == want).then_some(())
            })
            .await;
        }
    }

    let create = |name: &str, spec: serde_json::Value| {
        let svc: Service =
            serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
        let services = services.clone();
        async move { services.create(&PostParams::default(), &svc).await.unwrap() }
    };
    let ports = json!([{"name": "http", "port": 80, "targetPort": "http"}]);
    let web = create(
        "web",
        json!({"ipFamilyPolicy": "PreferDualStack", "selector": {"app": "web"}, "ports": ports}),
    )
    .await;
    let v4only = create(
        "v4only",
        json!({"selector": {"app": "web"}, "ports": ports}),
    )
    .await;
    let empty = create(
        "empty",
        json!({"ipFamilyPolicy": "PreferDualStack", "selector": {"app": "nothing"}, "ports": ports}),
    )
    .await;
    let web_ips = cluster_ips(&web);
    assert!(
        web_ips.len() == 2 && web_ips[0].is_ipv4() && web_ips[1].is_ipv6(),
        "{web_ips:?}"
    );
    let (vip4, vip6) = (
        SocketAddr::new(web_ips[0], 80),
        SocketAddr::new(web_ips[1], 80),
    );

    // The controller wrote one slice per family, with every backend's address of that family.
    let mut want6: Vec<String> = [&b1, &b2, &b3]
        .iter()
        .map(|p| p.ip6.unwrap().to_string())
        .collect();
    want6.sort();
    let deadline = Instant::now() + CONVERGE;
    loop {
        let list = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
            .await
            .unwrap();
        let of = |t: &str| -> Vec<String> {
            let mut v: Vec<String> = list
                .items
                .iter()
                .filter(|s| s.address_type == t)
                .flat_map(|s| s.endpoints.iter().flat_map(|e| e.addresses.clone()))
                .collect();
            v.sort();
            v
        };
        if of("IPv6") == want6 && of("IPv4").len() == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no IPv4 and IPv6 slices of web: {:?}\ncontroller-manager:\n{}",
            list.items,
            c.tb.log_of(cm)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 1. Over the IPv6 cluster IP every backend answers.
    let ns = cl.ns.clone();
    poll("the IPv6 cluster IP answers", CONVERGE, move || {
        ask(&ns, vip6).ok()
    })
    .await;
    let ns = cl.ns.clone();
    let seen: BTreeSet<String> = tokio::task::spawn_blocking(move || {
        (0..60)
            .map(|_| ask(&ns, vip6).expect("every connection over IPv6 answered"))
            .collect()
    })
    .await
    .unwrap();
    assert_eq!(
        seen,
        ["b1", "b2", "b3"].map(String::from).into(),
        "60 connections to {vip6}"
    );

    // 2. The IPv4 path still works.
    let ns = cl.ns.clone();
    poll("the IPv4 cluster IP answers", CONVERGE, move || {
        ask(&ns, vip4).ok()
    })
    .await;

    // 3. By name: AAAA gives the IPv6 cluster IP, A the IPv4 one, and the AAAA address serves.
    let name = "web.default.svc.cluster.local.";
    let ns = cl.ns.clone();
    let aaaa = poll("web's AAAA record", CONVERGE, move || {
        query(&ns, dns, name, RecordType::AAAA).filter(|m| !m.answers.is_empty())
    })
    .await;
    assert_eq!(
        addresses(&aaaa),
        vec![web_ips[1]],
        "dns log:\n{}",
        c.tb.log_of(dns_pid)
    );
    let a = query(&cl.ns, dns, name, RecordType::A).expect("an answer");
    assert_eq!(addresses(&a), vec![web_ips[0]]);
    let by_name = SocketAddr::new(addresses(&aaaa)[0], 80);
    let got = ask(&cl.ns, by_name).expect("the AAAA address serves");
    assert!(["b1", "b2", "b3"].contains(&got.as_str()), "{got}");

    // 4. A Service without endpoints is refused on IPv6 too: with ICMP port unreachable, for
    // IPv6 TCP a reset (connection refused, a black hole would time out), on the first SYN once the client's
    // node holds the reject rule (looked at first, so that no attempt before the sync drains
    // the kernel's per-destination ICMP rate limit).
    let empty_ips = cluster_ips(&empty);
    assert_eq!(empty_ips.len(), 2, "{empty_ips:?}");
    for &ip in &empty_ips {
        let deadline = Instant::now() + CONVERGE;
        while !has_reject(&c, &c.workers[1].node.ns, backend, ip).await {
            assert!(
                Instant::now() < deadline,
                "no reject rule for {ip}:\n{}",
                rules_text(&c, &c.workers[1].node.ns, backend, ip.is_ipv6()).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (ns, to) = (cl.ns.clone(), SocketAddr::new(ip, 80));
        let (took, result) = tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            let r = ask(&ns, to);
            (t.elapsed(), r)
        })
        .await
        .unwrap();
        eprintln!("{to}: {result:?} after {took:?}");
        assert!(
            matches!(&result, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
            "{to}: {result:?}"
        );
        // Refused on the first SYN in both families (IPv6 TCP by a reset, see the negative
        // control below); the retransmission would come 1 s after it.
        assert!(took < Duration::from_secs(1), "{to} refused after {took:?}");
    }

    // Negative control: with ICMPv6 port unreachable instead of the reset (a table of the
    // test's own in the client node, on the forward hook ahead of both backends' filter
    // chains: nft's at priority filter - 10, ip6tables' at filter), the error for the first
    // SYN comes back while the client's connect() still holds its socket and is kept only as
    // a soft error: the refusal waits for the SYN retransmission, 1 s later.
    let vip6 = empty_ips[1];
    assert!(vip6.is_ipv6(), "{empty_ips:?}");
    let node1 = &c.workers[1].node.ns;
    let icmp6_table = format!(
        "table ip6 trellis-test-icmp6 {{\n  chain forward {{\n    type filter hook forward priority filter - 20; policy accept;\n    ip6 daddr {vip6} tcp dport 80 reject with icmpv6 type port-unreachable\n  }}\n}}\n"
    );
    let added =
        c.tb.exec_stdin(
            node1,
            &["nft", "-f", "-"],
            icmp6_table.as_bytes(),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert!(added.success(), "{}", added.stderr);
    let dropped_before = lock_dropped_icmps(&cl.ns);
    let (ns, to) = (cl.ns.clone(), SocketAddr::new(vip6, 80));
    let (took, result) = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let r = ask(&ns, to);
        (t.elapsed(), r)
    })
    .await
    .unwrap();
    eprintln!("{to} with ICMPv6 instead of a reset: {result:?} after {took:?}");
    c.tb.exec_ok(
        node1,
        &["nft", "delete", "table", "ip6", "trellis-test-icmp6"],
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert!(
        matches!(&result, Err(e) if matches!(e.kind(),
            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::TimedOut)),
        "{to}: {result:?}"
    );
    assert!(
        took >= Duration::from_millis(900),
        "{to} refused after {took:?} by ICMPv6: not on the first SYN"
    );
    // The cause: the first error reached the socket while connect() held it.
    let dropped = lock_dropped_icmps(&cl.ns) - dropped_before;
    assert!(
        dropped >= 1,
        "no ICMPv6 error was dropped at the locked socket"
    );

    // Negative control: a SingleStack IPv4 Service has no IPv6 address, slice or AAAA.
    let v4_ips = cluster_ips(&v4only);
    assert!(v4_ips.len() == 1 && v4_ips[0].is_ipv4(), "{v4_ips:?}");
    assert_eq!(
        v4only.spec.as_ref().unwrap().ip_families,
        Some(vec!["IPv4".to_string()])
    );
    let ns = cl.ns.clone();
    let to = SocketAddr::new(v4_ips[0], 80);
    poll(
        "the SingleStack Service answers on IPv4",
        CONVERGE,
        move || ask(&ns, to).ok(),
    )
    .await;
    let name = "v4only.default.svc.cluster.local.";
    let ns = cl.ns.clone();
    poll("v4only's A record", CONVERGE, move || {
        query(&ns, dns, name, RecordType::A).filter(|m| !m.answers.is_empty())
    })
    .await;
    let aaaa = query(&cl.ns, dns, name, RecordType::AAAA).expect("an answer");
    assert!(
        aaaa.answers.is_empty(),
        "a SingleStack IPv4 Service has no AAAA: {:?}",
        aaaa.answers
    );
    let list = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=v4only"))
        .await
        .unwrap();
    assert!(!list.items.is_empty());
    assert!(
        list.items.iter().all(|s| s.address_type == "IPv4"),
        "{:?}",
        list.items
    );
    // ... and no IPv6 rule: the only IPv6 service addresses in the IPv6 rules are the
    // PreferDualStack Services' (while the IPv4 rules do hold v4only's address).
    let node0 = &c.workers[0].node.ns;
    let v4_rules = rules_text(&c, node0, backend, false).await;
    assert!(v4_rules.contains(&v4_ips[0].to_string()), "{v4_rules}");
    let v6_rules = rules_text(&c, node0, backend, true).await;
    let in_rules: BTreeSet<IpAddr> = v6_rules
        .split(|ch: char| !(ch.is_ascii_hexdigit() || ch == ':'))
        .filter(|t| t.starts_with("fd00:96:"))
        .filter_map(|t| t.parse().ok())
        .collect();
    let want: BTreeSet<IpAddr> = [web_ips[1], empty_ips[1]].into();
    assert_eq!(in_rules, want, "{v6_rules}");

    // externalTrafficPolicy Local over IPv6: a LoadBalancer Service's health-check node port
    // answers on each node's IPv6 address — 200 where the Service has local endpoints (web's
    // on both nodes), 503 where it has none (a selector matching nothing) — and its node port
    // on node 0's IPv6 address reaches one of node 0's backends, from another node.
    let lb_spec = |selector: &str| {
        json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
               "ipFamilyPolicy": "PreferDualStack", "selector": {"app": selector},
               "ports": ports})
    };
    let hc_port = |svc: &Service| -> u16 {
        let spec = svc.spec.as_ref().unwrap();
        u16::try_from(
            spec.health_check_node_port
                .expect("a health-check node port"),
        )
        .unwrap()
    };
    let lb_web = create("lb-web", lb_spec("web")).await;
    let lb_none = create("lb-none", lb_spec("nothing")).await;
    let node_port = u16::try_from(
        lb_web.spec.as_ref().unwrap().ports.as_ref().unwrap()[0]
            .node_port
            .expect("a node port"),
    )
    .unwrap();
    for (svc, want) in [(&lb_web, 200u16), (&lb_none, 503)] {
        let port = hc_port(svc);
        for (from, to) in [(1usize, 0usize), (0, 1)] {
            let addr = SocketAddr::new(IpAddr::V6(node_ipv6((to + 2) as u8)), port);
            let ns = c.workers[from].node.ns.clone();
            let got = poll(
                "the health-check node port over IPv6",
                CONVERGE,
                move || {
                    http_get(&ns, addr, "/")
                        .ok()
                        .filter(|(code, _)| *code == want)
                },
            )
            .await;
            assert!(
                got.1.contains("\"serviceProxyHealthy\":true"),
                "{addr}: {got:?}"
            );
        }
    }
    let to = SocketAddr::new(IpAddr::V6(node_ipv6(2)), node_port);
    let ns = c.workers[1].node.ns.clone();
    let got = poll(
        "the node port on an IPv6 node address",
        CONVERGE,
        move || ask(&ns, to).ok(),
    )
    .await;
    assert!(
        ["b1", "b2"].contains(&got.as_str()),
        "{to} reached {got}, not a backend local to node 0 (externalTrafficPolicy Local)"
    );
    for pid in proxies.iter().chain([&cm, &dns_pid]) {
        assert!(c.tb.running(*pid), "exited:\n{}", c.tb.log_of(*pid));
    }
}
