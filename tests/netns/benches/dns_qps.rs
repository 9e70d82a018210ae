//! Cluster DNS throughput and latency (issue 16, benchmark): `trellis dns` against the API
//! server with N ClusterIP Services, beside dnsmasq (Debian's dnsmasq-base) serving the same
//! names from a generated hosts file — each server in its own network namespace, both loaded by
//! the same generator from a third: UDP, a fixed number of queries outstanding (each worker
//! sends its next query when the last is answered), for a fixed time. The mix: 90 % A queries
//! for existing Services, 10 % for names in the zone that do not exist (NXDOMAIN from both).
//! Rounds alternate the servers (A B B A …) so that a change in the machine's load hurts both
//! alike; queries/s and p50/p99 over all rounds, and the ratios.
//!
//!     cargo bench -p netns-testbed --bench dns-qps [-- --services 1000 --concurrency 16
//!         --seconds 5 --rounds 2]
//!
//! Needs root and dnsmasq. Uses the `trellis` binary of the bench's own profile (build it
//! first, e.g. `cargo build --release -p trellis --all-features`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::{ListParams, PostParams};
use netns_testbed::bench::Latency;
use netns_testbed::cluster::ControlPlane;
use netns_testbed::iperf::arg;
use netns_testbed::{Testbed, bin_path};
use serde_json::json;
use trellis_net::Netns;

/// A query is given up on (and counted lost) after this long.
const QUERY_TIMEOUT: Duration = Duration::from_secs(1);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    netns_testbed::require_root();
    netns_testbed::require_tool("dnsmasq", "dnsmasq-base");
    tokio::select! {
        () = run() => {}
        _ = tokio::signal::ctrl_c() => eprintln!("interrupted; cleaned up"),
    }
}

async fn kube_client(kubeconfig: &str) -> kube::Client {
    let kc = kube::config::Kubeconfig::from_yaml(kubeconfig).unwrap();
    kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap(),
    )
    .unwrap()
}

/// The encoded queries of the mix, IDs to be filled in.
fn mix(services: usize) -> Vec<Vec<u8>> {
    (0..services)
        .flat_map(|i| {
            let mut names = vec![format!("svc-{i}.default.svc.cluster.local.")];
            if i % 9 == 0 {
                names.push(format!("missing-{i}.default.svc.cluster.local."));
            }
            names
        })
        .map(|n| {
            let mut m = Message::new(0, MessageType::Query, OpCode::Query);
            m.metadata.recursion_desired = true;
            m.add_query(Query::query(Name::from_ascii(&n).unwrap(), RecordType::A));
            m.to_vec().unwrap()
        })
        .collect()
}

/// What one load run measured.
#[derive(Default)]
struct Run {
    answered: usize,
    lost: usize,
    /// Answers by response code (the low four bits).
    rcodes: BTreeMap<u8, usize>,
    samples: Vec<Duration>,
    elapsed: Duration,
}

/// Loads `server` from `ns` with `concurrency` workers for `seconds`.
async fn load(
    ns: &Netns,
    server: SocketAddr,
    queries: Arc<Vec<Vec<u8>>>,
    concurrency: usize,
    seconds: u64,
) -> Run {
    let sockets: Vec<std::net::UdpSocket> = ns
        .run(|| {
            (0..concurrency)
                .map(|_| {
                    let s = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
                    s.connect(server).unwrap();
                    s.set_nonblocking(true).unwrap();
                    s
                })
                .collect()
        })
        .unwrap();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let workers: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(w, s)| {
            let queries = queries.clone();
            tokio::spawn(async move {
                let s = tokio::net::UdpSocket::from_std(s).unwrap();
                let mut run = Run::default();
                let mut buf = vec![0u8; 4096];
                let mut i = w * 7919;
                let mut id: u16 = 0;
                while Instant::now() < deadline {
                    let mut q = queries[i % queries.len()].clone();
                    i += 1;
                    id = id.wrapping_add(1);
                    q[..2].copy_from_slice(&id.to_be_bytes());
                    let sent = Instant::now();
                    if s.send(&q).await.is_err() {
                        run.lost += 1;
                        continue;
                    }
                    let answer = tokio::time::timeout(QUERY_TIMEOUT, async {
                        loop {
                            let n = s.recv(&mut buf).await?;
                            if n >= 4 && buf[..2] == id.to_be_bytes() {
                                return Ok::<u8, std::io::Error>(buf[3] & 0x0f);
                            }
                        }
                    })
                    .await;
                    match answer {
                        Ok(Ok(rcode)) => {
                            run.samples.push(sent.elapsed());
                            run.answered += 1;
                            *run.rcodes.entry(rcode).or_default() += 1;
                        }
                        _ => run.lost += 1,
                    }
                }
                run
            })
        })
        .collect();
    let mut total = Run::default();
    for w in workers {
        let r = w.await.unwrap();
        total.answered += r.answered;
        total.lost += r.lost;
        for (k, v) in r.rcodes {
            *total.rcodes.entry(k).or_default() += v;
        }
        total.samples.extend(r.samples);
    }
    total.elapsed = started.elapsed();
    total
}

/// Asks until `name` gets an answer with records (bounded).
async fn wait_answering(ns: &Netns, server: SocketAddr, name: &str, what: &str) {
    let mut m = Message::new(7, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    let q = m.to_vec().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = ns
            .run(|| {
                let s = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
                s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
                s.send_to(&q, server).ok()?;
                let mut buf = [0u8; 1500];
                let n = s.recv(&mut buf).ok()?;
                Message::from_vec(&buf[..n]).ok()
            })
            .unwrap();
        if got.is_some_and(|m| !m.answers.is_empty()) {
            return;
        }
        assert!(Instant::now() < deadline, "{what} never answered {name}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn run() {
    let services = arg("--services", 1000) as usize;
    let concurrency = arg("--concurrency", 16) as usize;
    let seconds = u64::from(arg("--seconds", 5));
    let rounds = arg("--rounds", 2) as usize;

    let tb = Testbed::new().unwrap();
    let cp = ControlPlane::start(&tb, "cp", 1).await.unwrap();
    let client = kube_client(&cp.local_kubeconfig).await;
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    let t = Instant::now();
    futures::stream::iter(0..services)
        .map(|i| {
            let api = api.clone();
            async move {
                let svc: Service = serde_json::from_value(json!({
                    "metadata": {"name": format!("svc-{i}"), "namespace": "default"},
                    "spec": {"ports": [{"name": "http", "port": 80}]}
                }))
                .unwrap();
                api.create(&PostParams::default(), &svc).await.unwrap();
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    eprintln!("{services} Services created in {:?}", t.elapsed());
    let mut hosts = String::new();
    for s in api.list(&ListParams::default()).await.unwrap() {
        let (Some(name), Some(ip)) = (
            s.metadata.name.as_deref(),
            s.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()),
        ) else {
            continue;
        };
        hosts.push_str(&format!("{ip} {name}.default.svc.cluster.local\n"));
    }
    let hosts_path = tb.state_dir().join("dns-bench.hosts");
    std::fs::write(&hosts_path, &hosts).unwrap();

    let ours = tb.add_node("dns", 2).await.unwrap();
    let reference = tb.add_node("ref", 3).await.unwrap();
    let gen_node = tb.add_node("lg", 4).await.unwrap();
    let ours_at = SocketAddr::from((ours.ip, 53));
    let ref_at = SocketAddr::from((reference.ip, 53));
    let trellis = bin_path("trellis");
    let ours_pid = tb
        .spawn(
            &ours.ns,
            &[
                trellis.to_str().unwrap(),
                "dns",
                "--kubeconfig",
                cp.kubeconfig.to_str().unwrap(),
                "--listen",
                &ours_at.to_string(),
                "--upstream",
                "127.0.0.1:9",
                "--metrics-listen",
                "127.0.0.1:9153",
            ],
            Duration::from_secs(3600),
        )
        .unwrap();
    let log = tb.state_dir().join("dnsmasq.log");
    let ref_pid = tb
        .spawn(
            &reference.ns,
            &[
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                &format!("--addn-hosts={}", hosts_path.display()),
                "--local=/cluster.local/",
                &format!("--listen-address={}", reference.ip),
                "--bind-interfaces",
                "--port=53",
                "--pid-file=",
                "--user=root",
                &format!("--log-facility={}", log.display()),
            ],
            Duration::from_secs(3600),
        )
        .unwrap();
    let last = format!("svc-{}.default.svc.cluster.local.", services - 1);
    wait_answering(&gen_node.ns, ours_at, &last, "trellis dns").await;
    wait_answering(&gen_node.ns, ref_at, &last, "dnsmasq").await;

    let queries = Arc::new(mix(services));
    // Warm both up (page faults, caches, the generator's own sockets).
    load(&gen_node.ns, ours_at, queries.clone(), concurrency, 1).await;
    load(&gen_node.ns, ref_at, queries.clone(), concurrency, 1).await;
    let mut runs: BTreeMap<&str, Vec<Run>> = BTreeMap::new();
    for r in 0..rounds {
        let order = if r % 2 == 0 {
            [("trellis dns", ours_at), ("dnsmasq", ref_at)]
        } else {
            [("dnsmasq", ref_at), ("trellis dns", ours_at)]
        };
        for (label, at) in order {
            let run = load(&gen_node.ns, at, queries.clone(), concurrency, seconds).await;
            eprintln!(
                "round {r} {label}: {:.0} q/s, {} lost",
                run.answered as f64 / run.elapsed.as_secs_f64(),
                run.lost
            );
            runs.entry(label).or_default().push(run);
        }
    }
    assert!(
        tb.running(ours_pid),
        "trellis dns exited:\n{}",
        tb.log_of(ours_pid)
    );
    assert!(
        tb.running(ref_pid),
        "dnsmasq exited:\n{}",
        tb.log_of(ref_pid)
    );

    println!(
        "dns-qps: {services} Services ({} names in the mix, 90 % A / 10 % NXDOMAIN), UDP, \
         {concurrency} queries outstanding, {rounds} × {seconds} s each",
        queries.len()
    );
    println!(
        "{:<12} {:>10} {:>9} {:>9} {:>9} {:>7}  rcodes",
        "server", "queries/s", "p50 ms", "p99 ms", "max ms", "lost"
    );
    let mut figures = BTreeMap::new();
    for (label, rs) in &runs {
        let answered: usize = rs.iter().map(|r| r.answered).sum();
        let lost: usize = rs.iter().map(|r| r.lost).sum();
        let secs: f64 = rs.iter().map(|r| r.elapsed.as_secs_f64()).sum();
        let samples: Vec<Duration> = rs.iter().flat_map(|r| r.samples.clone()).collect();
        let mut rcodes: BTreeMap<u8, usize> = BTreeMap::new();
        for r in rs {
            for (k, v) in &r.rcodes {
                *rcodes.entry(*k).or_default() += v;
            }
        }
        let l = Latency::of(&samples).expect("some answers");
        let qps = answered as f64 / secs;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{label:<12} {qps:>10.0} {:>9.3} {:>9.3} {:>9.1} {lost:>7}  {rcodes:?}",
            ms(l.p50),
            ms(l.p99),
            ms(l.max)
        );
        figures.insert(*label, (qps, l));
    }
    if let (Some((q_ours, l_ours)), Some((q_ref, l_ref))) =
        (figures.get("trellis dns"), figures.get("dnsmasq"))
    {
        println!(
            "ratio trellis/dnsmasq: queries/s {:.2}×, p50 {:.2}×, p99 {:.2}×",
            q_ours / q_ref,
            l_ours.p50.as_secs_f64() / l_ref.p50.as_secs_f64(),
            l_ours.p99.as_secs_f64() / l_ref.p99.as_secs_f64()
        );
    }
}
