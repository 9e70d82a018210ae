//! Connection setup rate through a ClusterIP against the pod IP directly (issue 16, benchmark:
//! aim ≥ 0.9× at 10,000 Services).
//!
//! Three namespaces: a client pod, a node that forwards between them and holds the proxy's
//! rules for N Services × 10 endpoints (written by trellis-proxy's own syncer, as the daemon
//! does), and a server pod with ten addresses — the ten endpoints of one of those Services,
//! each answering a connection with one byte. Client threads open connections (connect, read
//! the byte, reset) for `--seconds`, alternately to the Service's ClusterIP and directly to
//! its ten endpoint addresses in turn; the direct connections cross the same node and the same nat hooks (they
//! only miss every lookup). One run prints both medians and their ratio ClusterIP / direct,
//! and the median of each round's own ratio (the two runs of a round are back to back).
//!
//!     cargo bench -p netns-testbed --bench proxy-conn-rate [-- --services 10000 --rounds 3
//!         --seconds 5 --parallel 4] [--proxy-backend nftables|iptables]
//!
//! Needs root, nft (nftables backend, the default) or iptables. Everything lives in the
//! bench's namespaces and goes with them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use netns_testbed::{Testbed, require_root, require_tool};
use trellis_net::iptables::{IpFamily, Iptables};
use trellis_net::{Netns, Route, VethSpec};
use trellis_proxy::model::{Endpoint, PortName, Protocol, ServicePort};
use trellis_proxy::nft;
use trellis_proxy::rules::{self, NodeRules};
use trellis_proxy::sync::Syncer;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn num(name: &str, default: usize) -> usize {
    arg(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The server pod's addresses: the measured Service's ten endpoints.
fn server_ip(e: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 250, 2, 2 + e as u8)
}

const SERVER_PORT: u16 = 8080;

/// N Services × 10 endpoints (as the proxy-sync bench), Service `target`'s endpoints being the
/// server pod's addresses.
fn services(n: usize, target: usize) -> Vec<ServicePort> {
    (0..n)
        .map(|i| ServicePort {
            name: PortName {
                namespace: "bench".into(),
                service: format!("svc-{i}"),
                port: "http".into(),
            },
            protocol: Protocol::Tcp,
            cluster_ip: Ipv4Addr::from(0x0a60_0000u32 + i as u32 + 1).into(),
            port: 80,
            node_port: None,
            load_balancer_ips: Vec::new(),
            health_check_node_port: None,
            external_local: false,
            internal_local: false,
            affinity: None,
            endpoints: (0..10)
                .map(|e| Endpoint {
                    ip: if i == target {
                        server_ip(e).into()
                    } else {
                        Ipv4Addr::from(0x0af4_0000u32 + (i * 10 + e) as u32).into()
                    },
                    port: SERVER_PORT,
                    ready: true,
                    serving: true,
                    terminating: false,
                    local: false,
                })
                .collect(),
        })
        .collect()
}

/// The server: every connection gets one byte, then is closed. Its threads end when dropped.
struct Server {
    stop: Arc<AtomicBool>,
    ns: Arc<Netns>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(ns: &Arc<Netns>, threads: usize) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let addr = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, SERVER_PORT);
        let listener = ns
            .run(|| TcpListener::bind(addr))
            .unwrap()
            .unwrap_or_else(|e| panic!("bind {addr} in the server pod: {e}"));
        let threads = (0..threads)
            .map(|_| {
                let l = listener.try_clone().unwrap();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    for conn in l.incoming() {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        if let Ok(mut s) = conn {
                            let _ = s.write_all(b"k");
                        }
                    }
                })
            })
            .collect();
        Server {
            stop,
            ns: ns.clone(),
            threads,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let to = SocketAddr::new(IpAddr::V4(server_ip(0)), SERVER_PORT);
        for _ in 0..self.threads.len() {
            let _ = self
                .ns
                .run(|| TcpStream::connect_timeout(&to, Duration::from_secs(1)));
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One connection: connect, read the server's byte, reset (SO_LINGER 0: no TIME_WAIT, so the
/// client never runs out of ports). Whether it completed.
fn one_connection(to: &SocketAddr, timeout: Duration) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(to, timeout) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(timeout));
    let mut b = [0u8; 1];
    let ok = s.read_exact(&mut b).is_ok();
    let _ = nix::sys::socket::setsockopt(
        &s,
        nix::sys::socket::sockopt::Linger,
        &nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    );
    ok
}

/// New connections per second from `parallel` threads in `client` to the addresses `to` in
/// turn for `seconds`, and how many failed.
async fn connection_rate(
    client: &Arc<Netns>,
    to: Vec<SocketAddr>,
    parallel: usize,
    seconds: u64,
) -> (f64, u64) {
    let client = client.clone();
    tokio::task::spawn_blocking(move || {
        let (done, failed) = (AtomicU64::new(0), AtomicU64::new(0));
        let until = Instant::now() + Duration::from_secs(seconds);
        let start = Instant::now();
        std::thread::scope(|s| {
            for k in 0..parallel {
                let ns = client.clone();
                let (done, failed, to) = (&done, &failed, &to);
                s.spawn(move || {
                    ns.run(|| {
                        let mut next = k;
                        while Instant::now() < until {
                            next = (next + 1) % to.len();
                            if one_connection(&to[next], Duration::from_secs(2)) {
                                done.fetch_add(1, Ordering::Relaxed);
                            } else {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    })
                    .unwrap()
                });
            }
        });
        let took = start.elapsed().as_secs_f64();
        (
            done.load(Ordering::Relaxed) as f64 / took,
            failed.into_inner(),
        )
    })
    .await
    .unwrap()
}

fn net(s: &str) -> ipnet::IpNet {
    s.parse().unwrap()
}

/// A veth from the node to a pod: the pod's end `eth0` with `pod_ips` (the first is its
/// source), the node's end with `gateway`, the pod's default route via the node.
async fn wire(node: &Netns, pod: &Netns, host_end: &str, gateway: &str, pod_ips: &[Ipv4Addr]) {
    let h = node.connect().unwrap();
    let l = h
        .add_veth(&VethSpec {
            name: host_end,
            peer_name: "eth0",
            peer_ns: Some(pod),
            mtu: None,
            mac: None,
            peer_mac: None,
        })
        .await
        .unwrap();
    h.ensure_address(l.index, net(gateway)).await.unwrap();
    h.set_up(l.index).await.unwrap();
    let p = pod.connect().unwrap();
    let pe = p.require_link("eth0").await.unwrap();
    for ip in pod_ips {
        p.ensure_address(pe.index, net(&format!("{ip}/24")))
            .await
            .unwrap();
    }
    p.set_up(pe.index).await.unwrap();
    let gw: ipnet::Ipv4Net = gateway.parse().unwrap();
    p.replace_route(&Route::via(net("0.0.0.0/0"), IpAddr::V4(gw.addr())))
        .await
        .unwrap();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    require_root();
    require_tool("sysctl", "procps");
    let n = num("--services", 10_000).max(1);
    let rounds = num("--rounds", 3).max(1);
    let seconds = num("--seconds", 5).max(1) as u64;
    let parallel = num("--parallel", 4).max(1);
    let backend = arg("--proxy-backend").unwrap_or_else(|| "nftables".into());
    match backend.as_str() {
        "nftables" => {
            require_tool("nft", "nftables");
        }
        "iptables" => {
            require_tool("iptables-restore", "iptables");
        }
        other => panic!("--proxy-backend nftables|iptables, not {other:?}"),
    }
    let tb = Testbed::new().unwrap();
    let node = tb.add_ns("pcnode").await.unwrap();
    let client = tb.add_ns("pccli").await.unwrap();
    let server = tb.add_ns("pcsrv").await.unwrap();
    tb.exec_ok(
        &node,
        &["sysctl", "-qw", "net.ipv4.ip_forward=1"],
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    wire(
        &node,
        &client,
        "vcli",
        "10.250.1.1/24",
        &[Ipv4Addr::new(10, 250, 1, 2)],
    )
    .await;
    let server_ips: Vec<Ipv4Addr> = (0..10).map(server_ip).collect();
    wire(&node, &server, "vsrv", "10.250.2.1/24", &server_ips).await;

    // The rules, as the proxy writes them on a node whose pods are 10.250.0.0/16.
    let target = n / 2;
    let ports = services(n, target);
    let node_rules = NodeRules {
        cluster_cidr: Some("10.250.0.0/16".parse().unwrap()),
        node_addresses: vec![],
    };
    let t = Instant::now();
    let mut nft_syncer = None;
    let rule_count = if backend == "nftables" {
        let mut s = nft::Syncer::new(trellis_net::nft::Nft::new(Some(&node)));
        s.sync((&ports, &node_rules), (&[], &NodeRules::default()))
            .await
            .unwrap();
        nft_syncer = Some(s);
        nft::compile(trellis_proxy::Family::V4, &ports, &node_rules)
            .chains
            .values()
            .map(Vec::len)
            .sum::<usize>()
    } else {
        let ipt = Iptables::detect(Some(&node), IpFamily::V4).await.unwrap();
        let mut s = Syncer::new(ipt);
        let desired = rules::compile(&ports, &node_rules);
        let count = desired.values().map(Vec::len).sum();
        s.sync(desired).await.unwrap();
        count
    };
    eprintln!(
        "{n} Services × 10 endpoints ({rule_count} rules, {backend}) written in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let _srv = Server::start(&server, 4);
    let vip = SocketAddr::new(ports[target].cluster_ip, 80);
    // Directly: the same ten endpoints in turn, as the ClusterIP spreads over them.
    let direct: Vec<SocketAddr> = server_ips
        .iter()
        .map(|ip| SocketAddr::new(IpAddr::V4(*ip), SERVER_PORT))
        .collect();
    // Both paths work before anything is measured (bounded: 10 s each).
    for to in std::iter::once(vip).chain(direct.iter().copied()) {
        let c = client.clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        let ok = tokio::task::spawn_blocking(move || {
            while Instant::now() < deadline {
                if c.run(|| one_connection(&to, Duration::from_secs(1)))
                    .unwrap()
                {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        })
        .await
        .unwrap();
        assert!(ok, "no connection from the client pod to {to}");
    }

    let (mut via, mut dir) = (Vec::new(), Vec::new());
    let mut failed = 0;
    for r in 0..rounds {
        // Alternate which goes first, so drift in the machine's load hits both alike.
        let order = if r % 2 == 0 {
            [(vec![vip], true), (direct.clone(), false)]
        } else {
            [(direct.clone(), false), (vec![vip], true)]
        };
        for (to, is_vip) in order {
            let (rate, f) = connection_rate(&client, to, parallel, seconds).await;
            failed += f;
            eprintln!(
                "round {}: {} {rate:.0}/s ({f} failed)",
                r + 1,
                if is_vip { "ClusterIP" } else { "pod IP" }
            );
            if is_vip { &mut via } else { &mut dir }.push(rate);
        }
    }
    // Each round's pair taken back to back: their ratio sees the same load, so the median of
    // the rounds' ratios is steadier on a busy machine than the ratio of the medians.
    let paired = median(via.iter().zip(&dir).map(|(v, d)| v / d).collect());
    let (v, d) = (median(via), median(dir));
    println!(
        "{:>8} {:>9} {:>9} | {:>14} {:>14} {:>7} {:>13}",
        "services", "rules", "backend", "ClusterIP /s", "pod IP /s", "ratio", "paired ratio"
    );
    println!(
        "{n:>8} {rule_count:>9} {backend:>9} | {v:>14.0} {d:>14.0} {:>6.2}x {paired:>12.2}x",
        v / d
    );
    println!(
        "new TCP connections/s, client pod → node (proxy rules) → server pod, {parallel} threads × {seconds} s, median of {rounds} rounds each, alternated; {failed} failed{}",
        if backend == "nftables" {
            format!(", {} shard tables", nft::SHARDS)
        } else {
            String::new()
        }
    );
    drop(_srv);
    drop(nft_syncer);
    for ns in [&client, &server, &node] {
        tb.delete_ns(ns).unwrap();
    }
}
