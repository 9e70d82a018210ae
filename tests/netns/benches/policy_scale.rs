//! policyd at scale (issue 13, benchmark), from one run, all in namespaces this bench makes:
//!
//! - Scale: an API server with 1,000 NetworkPolicies and 5,000 pods (Pod objects with labels
//!   and `status.podIPs`; all but the wired ones on nodes that do not exist), 50 of them wired
//!   on the measured node n1 (the node's conflist, its agent, the ADD gate, `trellis policyd`).
//!   Full programming is timed from policyd's start to `/readyz` 200 (and, from its
//!   `trellis_policyd_commit_latency_seconds`, first change → commit), cold: every round
//!   restarts policyd on a node whose chains, jumps and sets were removed. "Pod added" and
//!   "policy changed" are timed per sample two ways: policyd's own event → commit (the
//!   histogram's sum delta for that one commit), and API write → commit visible on /metrics
//!   (polled, so it includes the watch's delivery and a few ms of polling).
//! - New-connection rate: client pods on node n2 open and reset TCP connections to a server pod
//!   on n1 (in a loop, several threads, `--seconds` each), with policyd's rules in place (the
//!   server selected by 10 policies that allow the clients) and with none (policyd stopped, its
//!   chains, jumps and sets removed: conntrack only — a table of the bench's own keeps conntrack
//!   tracking n1's packets in both conditions, with no rule on the forwarded path; without it a
//!   routed node has no rule that needs conntrack and tracks nothing). Rounds alternate the
//!   two, then a third, for reference only: no netfilter at all (that table removed too);
//!   medians and the ratio are printed.
//! - Memory: policyd's VmRSS and VmHWM at that scale.
//!
//! Run it with:
//!
//! ```text
//! cargo build --release -p trellis -p trellis-overlay -p trellis-routed -p trellis-ipam
//! cargo bench -p netns-testbed --bench policy-scale [-- --rounds 3 --seconds 5]
//!     [--quick] [--mode routed|overlay] [--samples 100] [--parallel 4] [--full-compile]
//!     [--restore-per-commit]
//! ```
//!
//! `--full-compile` runs policyd with `--full-compile` (every event compiles and diffs the
//! whole program, as before pod events became change sets), for before/after figures;
//! `--restore-per-commit` likewise runs it with an `iptables-restore` process per commit (as
//! before its restore session).
//!
//! `--quick`: 100 policies, 500 pods, 10 wired, 20 samples (a smoke run). Needs root,
//! iptables, ipset and the release binaries.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};
use netns_testbed::bench::Latency;
use netns_testbed::iperf::median;
use netns_testbed::{require_root, require_tool};
use serde_json::json;
use trellis_net::Netns;

#[path = "../tests/support/overlay_cluster.rs"]
mod overlay_cluster;
#[path = "../tests/support/policy_cluster.rs"]
mod policy_cluster;
#[path = "../tests/support/routed_cluster.rs"]
mod routed_cluster;

use policy_cluster::{Mode, Opts, PolicyCluster};

/// The measured node and the clients' node (indices into the cluster's nodes).
const MEASURED: usize = 0;
const CLIENTS: usize = 1;
const NAMESPACES: usize = 50;
/// The port the policies allow (by number and by the name `http`) and one they do not.
const ALLOWED: u16 = 8080;
const DENIED: u16 = 8081;
const CLIENT_NS: &str = "clients";
const CLIENT_PODS: usize = 2;
/// Every API write's sample is bounded by this.
const SAMPLE_LIMIT: Duration = Duration::from_secs(30);

const COMMIT_LATENCY: &str = "trellis_policyd_commit_latency_seconds";
const GATE_WAIT: &str = "trellis_policyd_gate_wait_seconds";
const COMMIT_PHASE: &str = "trellis_policyd_commit_phase_seconds";
/// policyd's commit phases (`queued` is the wait before its loop took the change in, outside
/// the commit latency; the others add up to nearly all of it).
const PHASES: [&str; 7] = [
    "queued", "compile", "diff", "ipset", "iptables", "cleanup", "publish",
];

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn num(name: &str, default: usize) -> usize {
    match arg(name) {
        Some(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name} wants a number, not {v:?}")),
        None => default,
    }
}

/// The size of one run.
#[derive(Debug, Clone, Copy)]
struct Scale {
    policies: usize,
    pods: usize,
    wired: usize,
    samples: usize,
}

fn np_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("networking.k8s.io", "v1", "NetworkPolicy"),
        "networkpolicies",
    )
}

/// NetworkPolicy `np<i>` in `ns<i % 50>`, as policyd's own scale test has it: the pods of one
/// app, ingress from another app or from the namespaces of one team on 8080 (by number and by
/// name), egress to 10.0.0.0/8 but one /16. Policies i ≡ 0 (mod 100) select app a0 in ns0 —
/// the server — and allow team t0, the clients' namespace.
fn policy(i: usize, port: u16) -> serde_json::Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": format!("np{i}"), "namespace": format!("ns{}", i % NAMESPACES)},
        "spec": {
            "podSelector": {"matchLabels": {"app": format!("a{}", i % 20)}},
            "ingress": [{
                "from": [
                    {"podSelector": {"matchLabels": {"app": format!("a{}", (i + 1) % 20)}}},
                    {"namespaceSelector": {"matchLabels": {"team": format!("t{}", i % 5)}}},
                ],
                "ports": [{"port": port}, {"port": "http"}],
            }],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": [format!("10.{}.0.0/16", i % 200)]}}]}],
        },
    })
}

/// A Pod object: labels, the `http` container port, node, and (when known) its address.
fn pod(ns: &str, name: &str, app: &str, node: &str, ip: Option<Ipv4Addr>) -> serde_json::Value {
    let mut obj = json!({
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "c", "image": "bench",
                "ports": [{"name": "http", "containerPort": ALLOWED, "protocol": "TCP"}]}],
        },
    });
    if let Some(ip) = ip {
        obj["status"] = json!({"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]});
    }
    obj
}

/// The address of the `n`th pod that is never wired (10.250.0.0/16: routed nowhere).
fn far_ip(n: usize) -> Ipv4Addr {
    Ipv4Addr::from(0x0afa_0000 + n as u32)
}

/// Creates a Pod; when the API server dropped the status on create, sets it.
async fn create_pod(client: &kube::Client, obj: serde_json::Value) {
    let ns = obj["metadata"]["namespace"].as_str().unwrap().to_string();
    let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns);
    let status = obj.get("status").cloned();
    let p: k8s_openapi::api::core::v1::Pod = serde_json::from_value(obj).unwrap();
    let made = api
        .create(&PostParams::default(), &p)
        .await
        .unwrap_or_else(|e| panic!("create pod {ns}/{:?}: {e}", p.metadata.name));
    let has_ips = made
        .status
        .as_ref()
        .and_then(|s| s.pod_ips.as_ref())
        .is_some_and(|v| !v.is_empty());
    if let Some(status) = status
        && !has_ips
    {
        api.patch_status(
            made.metadata.name.as_deref().unwrap(),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({ "status": status })),
        )
        .await
        .unwrap();
    }
}

async fn put_policy(client: &kube::Client, obj: serde_json::Value) {
    let ns = obj["metadata"]["namespace"].as_str().unwrap().to_string();
    let name = obj["metadata"]["name"].as_str().unwrap().to_string();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &np_resource());
    let mut o: DynamicObject = serde_json::from_value(obj).unwrap();
    match api.get_opt(&name).await.unwrap() {
        None => {
            api.create(&PostParams::default(), &o)
                .await
                .unwrap_or_else(|e| panic!("create {ns}/{name}: {e}"));
        }
        Some(old) => {
            o.metadata.resource_version = old.metadata.resource_version;
            api.replace(&name, &PostParams::default(), &o)
                .await
                .unwrap_or_else(|e| panic!("replace {ns}/{name}: {e}"));
        }
    }
}

/// One unlabelled sample (`name value`) of a metrics text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// A histogram's (count, sum).
fn histogram(text: &str, name: &str) -> (f64, f64) {
    (
        metric(text, &format!("{name}_count")).unwrap_or(0.0),
        metric(text, &format!("{name}_sum")).unwrap_or(0.0),
    )
}

async fn metrics(c: &PolicyCluster, i: usize) -> String {
    match c.policyd_get(i, "/metrics").await {
        Some((200, body)) => body,
        other => panic!("policyd /metrics on node {i}: {other:?}\n{}", c.logs_tail()),
    }
}

/// The sums of policyd's commit phase histograms, in [`PHASES`] order.
fn phase_sums(text: &str) -> [f64; PHASES.len()] {
    PHASES.map(|p| {
        let name = format!("{COMMIT_PHASE}_sum{{phase=\"{p}\"}}");
        text.lines()
            .find_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                (k == name).then(|| v.trim().parse().ok()).flatten()
            })
            .unwrap_or(0.0)
    })
}

/// One event's figures: policyd's own event → commit, and API write → commit seen.
struct Sample {
    policyd: Duration,
    seen: Duration,
    /// Commits the sample took (1 unless something else changed meanwhile).
    commits: f64,
    /// Its commit's time by phase ([`PHASES`]).
    phases: [Duration; PHASES.len()],
}

/// Runs `write` (an API write), then polls node `MEASURED`'s /metrics until a commit after it
/// shows up — with `until`, the first commit after which that gauge differs from before the
/// write (a Pod is created without an address and gets it by a status write: the commit that
/// puts its address into the sets is the second) — bounded.
async fn timed_commit<F: std::future::Future<Output = ()>>(
    c: &PolicyCluster,
    write: F,
    until: Option<&str>,
) -> Sample {
    // Start from a quiet policyd: no commit for 100 ms (a previous event's follow-up commit
    // would otherwise count as this one's).
    let mut text = metrics(c, MEASURED).await;
    let (mut n0, mut s0) = histogram(&text, COMMIT_LATENCY);
    let mut p0 = phase_sums(&text);
    let (quiet, mut since) = (Instant::now(), Instant::now());
    while since.elapsed() < Duration::from_millis(100) {
        assert!(
            quiet.elapsed() < SAMPLE_LIMIT,
            "policyd never quiet for 100 ms\n{}",
            c.logs_tail()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        text = metrics(c, MEASURED).await;
        let (n, s) = histogram(&text, COMMIT_LATENCY);
        if n != n0 {
            (n0, s0, since) = (n, s, Instant::now());
            p0 = phase_sums(&text);
        }
    }
    // The gauge as the quiet policyd left it (the last read, not the first: a commit during
    // the quiet wait may have moved it).
    let gauge0 = until.map(|g| metric(&text, g));
    let n_write = n0;
    let t0 = Instant::now();
    write.await;
    loop {
        let text = metrics(c, MEASURED).await;
        let (n, s) = histogram(&text, COMMIT_LATENCY);
        if n > n0 {
            let seen = t0.elapsed();
            let p1 = phase_sums(&text);
            let done = match (until, gauge0) {
                (Some(g), Some(before)) => metric(&text, g) != before,
                _ => true,
            };
            if done {
                let per = |d: f64| Duration::from_secs_f64((d / (n - n0)).max(0.0));
                // The commit sought; should two land between polls, their mean.
                return Sample {
                    policyd: per(s - s0),
                    seen,
                    commits: n - n0,
                    phases: std::array::from_fn(|i| per(p1[i] - p0[i])),
                };
            }
            // A commit without the write's effect (the pod's create, before its address): the
            // next one is measured from here. policyd records a commit's count and latency
            // after its gauges, so a commit counted here has its gauges in this read too.
            (n0, s0, p0) = (n, s, p1);
        }
        assert!(
            t0.elapsed() < SAMPLE_LIMIT,
            "no commit within {SAMPLE_LIMIT:?} of an API write ({} commits since the write; \
             gauge before: {gauge0:?}, now: {:?})\n{}",
            n - n_write,
            until.map(|g| metric(&text, g)),
            c.logs_tail()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// VmRSS and VmHWM (kB) of a process.
fn memory_kb(pid: i32) -> (u64, u64) {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_eq!(comm.trim(), "trellis", "pid {pid} is not policyd");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU seconds policyd and its reaped children (the iptables and ipset tools it runs) have used.
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/stat: {e}"));
    // Fields after the command name (which may hold spaces): state is field 3, utime 14.
    let rest = &stat[stat.rfind(')').expect("a stat line") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11..15]
        .iter()
        .map(|f| f.parse::<u64>().expect("a tick count"))
        .sum();
    // /proc counts in USER_HZ, 100 on every Linux architecture we build for.
    ticks as f64 / 100.0
}

/// Starts policyd on `i` and times it to /readyz 200 (60 s bound); the commit latency of its
/// first commit from its histogram.
async fn cold_start(c: &mut PolicyCluster, i: usize) -> (Duration, Duration) {
    let t0 = Instant::now();
    let pid = c.spawn_policyd(i);
    loop {
        if c.readyz(i).await == Some(200) {
            break;
        }
        assert!(
            c.tb().running(pid),
            "policyd exited:\n{}",
            c.tb().log_of(pid)
        );
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "policyd not ready within 60 s:\n{}",
            c.tb().log_of(pid)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ready = t0.elapsed();
    let text = metrics(c, i).await;
    let (n, s) = histogram(&text, COMMIT_LATENCY);
    assert!(n >= 1.0, "ready without a commit:\n{text}");
    // The first commit's latency: the sum while it is the only one (another may have followed
    // already; then the mean, which the table marks).
    (ready, Duration::from_secs_f64(s / n))
}

/// Removes everything policyd owns from node `i` (policyd must be stopped): its jumps from the
/// built-in chains, its chains, its sets — and checks that none is left.
async fn strip_policy(c: &PolicyCluster, i: usize) {
    let ns = c.nodes[i].node.ns.clone();
    let tb = c.tb();
    for chain in ["FORWARD", "INPUT", "OUTPUT"] {
        let rules = tb
            .exec_ok(
                &ns,
                &["iptables", "-w", "-S", chain],
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        let ours: Vec<usize> = rules
            .lines()
            .filter(|l| l.starts_with("-A "))
            .enumerate()
            .filter(|(_, l)| {
                l.split_whitespace()
                    .collect::<Vec<_>>()
                    .windows(2)
                    .any(|w| w[0] == "-j" && w[1].starts_with("TRELLIS-POL-"))
            })
            .map(|(n, _)| n + 1)
            .collect();
        for n in ours.iter().rev() {
            tb.exec_ok(
                &ns,
                &["iptables", "-w", "-D", chain, &n.to_string()],
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        }
    }
    let owned = |name: &str| {
        ["TRELLIS-POL-", "TRELLIS-PI-", "TRELLIS-PE-"]
            .iter()
            .any(|p| name.starts_with(p))
    };
    let save = tb
        .exec_ok(
            &ns,
            &["iptables-save", "-t", "filter"],
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let chains: Vec<&str> = save
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| owned(n))
        .collect();
    let mut restore = String::from("*filter\n");
    for ch in &chains {
        restore.push_str(&format!("-F {ch}\n"));
    }
    for ch in &chains {
        restore.push_str(&format!("-X {ch}\n"));
    }
    restore.push_str("COMMIT\n");
    let out = tb
        .exec_stdin(
            &ns,
            &["iptables-restore", "-w", "--noflush"],
            restore.as_bytes(),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert!(out.success(), "remove policyd's chains: {}", out.stderr);
    let sets = tb
        .exec_ok(&ns, &["ipset", "list", "-n"], Duration::from_secs(30))
        .await
        .unwrap();
    let destroy: String = sets
        .lines()
        .filter(|s| {
            ["trellis-p-", "trellis-n-", "trellis-q-"]
                .iter()
                .any(|p| s.starts_with(p))
        })
        .map(|s| format!("destroy {s}\n"))
        .collect();
    if !destroy.is_empty() {
        let out = tb
            .exec_stdin(
                &ns,
                &["ipset", "restore"],
                destroy.as_bytes(),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        assert!(out.success(), "destroy policyd's sets: {}", out.stderr);
    }
    // Nothing of policyd's is left.
    let save = tb
        .exec_ok(&ns, &["iptables-save"], Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        !save.lines().any(|l| l.contains("TRELLIS-POL-")
            || l.contains("TRELLIS-PI-")
            || l.contains("TRELLIS-PE-")),
        "policyd's rules are still there:\n{save}"
    );
    let sets = tb
        .exec_ok(&ns, &["ipset", "list", "-n"], Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        !sets.lines().any(|s| s.starts_with("trellis-p-")
            || s.starts_with("trellis-n-")
            || s.starts_with("trellis-q-")),
        "policyd's sets are still there:\n{sets}"
    );
}

/// The table that keeps conntrack on in a node with no policy: nf_conntrack tracks a
/// namespace's packets only while some rule there needs it, and without policyd's rules a
/// routed node has none, so "no policy" would also be "no conntrack" (the issue's baseline is
/// the node "with no policy and only conntrack"). One rule with a `ct` expression on the OUTPUT
/// hook turns tracking on for the whole namespace, and no forwarded packet ever meets it (its
/// counter stays 0). Kept in both conditions, so the nodes differ only in policyd's rules.
const CT_TABLE: &str = "trellis-bench-ct";

/// Turns node `i`'s conntrack-only table on or off.
async fn conntrack_table(c: &PolicyCluster, i: usize, on: bool) {
    let ns = c.nodes[i].node.ns.clone();
    let script = if on {
        format!(
            "add table ip {CT_TABLE}\n\
             add chain ip {CT_TABLE} out {{ type filter hook output priority 0; }}\n\
             add rule ip {CT_TABLE} out ct state invalid counter\n"
        )
    } else {
        format!("delete table ip {CT_TABLE}\n")
    };
    let out = c
        .tb()
        .exec_stdin(
            &ns,
            &["nft", "-f", "-"],
            script.as_bytes(),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert!(out.success(), "nft {script}: {}", out.stderr);
}

/// Node `i`'s conntrack entries (0 while nothing there needs conntrack).
async fn conntrack_count(c: &PolicyCluster, i: usize) -> u64 {
    let ns = c.nodes[i].node.ns.clone();
    let out = c
        .tb()
        .exec_ok(
            &ns,
            &["cat", "/proc/sys/net/netfilter/nf_conntrack_count"],
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    out.trim()
        .parse()
        .unwrap_or_else(|e| panic!("nf_conntrack_count {out:?}: {e}"))
}

/// A server in the server pod: every connection gets one byte, then is closed. Stops (and
/// its threads end) when dropped.
struct Server {
    stop: Arc<AtomicBool>,
    ns: Arc<Netns>,
    at: Vec<SocketAddrV4>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(ns: &Arc<Netns>, ip: Ipv4Addr, ports: &[u16], per_port: usize) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut at = Vec::new();
        for &port in ports {
            let addr = SocketAddrV4::new(ip, port);
            let listener = ns
                .run(|| TcpListener::bind(addr))
                .unwrap()
                .unwrap_or_else(|e| panic!("bind {addr} in the server pod: {e}"));
            at.push(addr);
            for _ in 0..per_port {
                let l = listener.try_clone().unwrap();
                let stop = stop.clone();
                threads.push(std::thread::spawn(move || {
                    for conn in l.incoming() {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        if let Ok(mut s) = conn {
                            let _ = s.write_all(b"k");
                        }
                    }
                }));
            }
        }
        Server {
            stop,
            ns: ns.clone(),
            at,
            threads,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake every accepting thread (from the pod itself: no policy applies to loopback).
        for addr in &self.at {
            for _ in 0..self.threads.len() {
                let to = SocketAddr::V4(*addr);
                let _ = self
                    .ns
                    .run(|| TcpStream::connect_timeout(&to, Duration::from_secs(1)));
            }
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Closes with a reset (SO_LINGER 0): no TIME_WAIT, so the client never runs out of ports.
fn reset_close(s: TcpStream) {
    let _ = nix::sys::socket::setsockopt(
        &s,
        nix::sys::socket::sockopt::Linger,
        &nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    );
}

/// One connection: connect, read the server's byte, reset. Whether it completed.
fn one_connection(to: &SocketAddr, timeout: Duration) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(to, timeout) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(timeout));
    let mut b = [0u8; 1];
    let ok = s.read_exact(&mut b).is_ok();
    reset_close(s);
    ok
}

/// New connections per second from `clients` (threads spread over them) to `to` for
/// `seconds`, and how many failed.
async fn connection_rate(
    clients: &[Arc<Netns>],
    to: SocketAddr,
    parallel: usize,
    seconds: u64,
) -> (f64, u64) {
    let clients: Vec<Arc<Netns>> = clients.to_vec();
    tokio::task::spawn_blocking(move || {
        let (done, failed) = (AtomicU64::new(0), AtomicU64::new(0));
        let until = Instant::now() + Duration::from_secs(seconds);
        let start = Instant::now();
        std::thread::scope(|s| {
            for k in 0..parallel {
                let ns = clients[k % clients.len()].clone();
                let (done, failed) = (&done, &failed);
                s.spawn(move || {
                    ns.run(|| {
                        while Instant::now() < until {
                            if one_connection(&to, Duration::from_secs(2)) {
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

/// Whether a connection from the first client to `to` completes (1 s).
async fn reaches(clients: &[Arc<Netns>], to: SocketAddr) -> bool {
    let ns = clients[0].clone();
    tokio::task::spawn_blocking(move || {
        ns.run(|| one_connection(&to, Duration::from_secs(1)))
            .unwrap()
    })
    .await
    .unwrap()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn latency_row(what: &str, samples: &[Duration], aim: &str) -> String {
    let l = Latency::of(samples).expect("samples");
    format!(
        "{what:<52} {:>10} {:>10} {:>10}  {:>4}  {aim}",
        ms(l.p50),
        ms(l.p99),
        ms(l.max),
        samples.len()
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    require_root();
    for (tool, pkg) in [
        ("iptables", "iptables"),
        ("iptables-save", "iptables"),
        ("iptables-restore", "iptables"),
        ("ipset", "ipset"),
        ("nft", "nftables"),
    ] {
        require_tool(tool, pkg);
    }
    // Ctrl-C drops the run, and with it every namespace and process it made.
    tokio::select! {
        () = run() => {}
        _ = tokio::signal::ctrl_c() => eprintln!("interrupted; cleaned up"),
    }
}

async fn run() {
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = Scale {
        policies: num("--policies", if quick { 100 } else { 1000 }),
        pods: num("--pods", if quick { 500 } else { 5000 }),
        wired: num("--wired", if quick { 10 } else { 50 }),
        samples: num("--samples", if quick { 20 } else { 100 }),
    };
    let rounds = num("--rounds", 3).max(1);
    let seconds = num("--seconds", 5).max(1) as u64;
    let parallel = num("--parallel", 4).max(1);
    // policyd as it was before pod events became change sets: every event compiles and
    // diffs the whole program (for before/after figures from one build).
    let full_compile = std::env::args().any(|a| a == "--full-compile");
    // policyd as it was before its restore session: an iptables-restore process per commit.
    let per_commit = std::env::args().any(|a| a == "--restore-per-commit");
    let mode = match arg("--mode").as_deref() {
        None | Some("routed") => Mode::Routed,
        Some("overlay") => Mode::Overlay,
        Some(other) => panic!("--mode routed|overlay, not {other:?}"),
    };
    assert!(
        scale.wired >= 1 && scale.wired <= NAMESPACES && scale.pods > scale.wired,
        "--wired 1..={NAMESPACES}, fewer than --pods"
    );
    eprintln!("{mode:?} cluster: API server, 2 nodes, gate on, no policyd yet…");
    let t = Instant::now();
    let mut c = PolicyCluster::start_opts(
        mode,
        Opts {
            pods: false,
            policyd: false,
            policyd_extra: [
                (full_compile, "--full-compile"),
                (per_commit, "--restore-per-commit"),
            ]
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, flag)| flag.to_string())
            .collect(),
            ..Opts::default()
        },
    )
    .await;
    eprintln!("  up in {:.1} s", t.elapsed().as_secs_f64());
    let client = c.client.clone();
    let node_name = |c: &PolicyCluster, i: usize| c.nodes[i].node.name.clone();

    // The API's contents: namespaces (team t<n % 5>), the pods never wired, the policies.
    let t = Instant::now();
    let nsapi: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    for n in (0..NAMESPACES)
        .map(|n| (format!("ns{n}"), format!("t{}", n % 5)))
        .chain([(CLIENT_NS.to_string(), "t0".to_string())])
    {
        let obj =
            serde_json::from_value(json!({"metadata": {"name": n.0, "labels": {"team": n.1}}}))
                .unwrap();
        nsapi.create(&PostParams::default(), &obj).await.unwrap();
    }
    let far = scale.pods - scale.wired;
    futures::stream::iter(0..far)
        .map(|i| {
            let client = client.clone();
            async move {
                let ns = format!("ns{}", i % NAMESPACES);
                let obj = pod(
                    &ns,
                    &format!("p{i}"),
                    &format!("a{}", i % 20),
                    &format!("far{}", i % 99),
                    Some(far_ip(i)),
                );
                create_pod(&client, obj).await;
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
    futures::stream::iter(0..scale.policies)
        .map(|i| {
            let client = client.clone();
            async move { put_policy(&client, policy(i, ALLOWED)).await }
        })
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
    eprintln!(
        "  {} namespaces, {far} pods, {} policies in the API in {:.1} s",
        NAMESPACES + 1,
        scale.policies,
        t.elapsed().as_secs_f64()
    );

    // policyd on the measured node, before its pods: the first full programming.
    let (first_ready, first_commit) = cold_start(&mut c, MEASURED).await;
    eprintln!(
        "  policyd on n1 ready in {} (first commit {})",
        ms(first_ready),
        ms(first_commit)
    );

    // The wired pods, one per namespace (w0 in ns0 is the server): Pod, ADD (which waits at
    // the gate for policyd's commit), status.podIPs.
    let mut local_add = Vec::new();
    let mut gate_wait = Vec::new();
    let mut local_commit = Vec::new();
    let mut wired: Vec<(Arc<Netns>, Ipv4Addr)> = Vec::new();
    let n1 = node_name(&c, MEASURED);
    for j in 0..scale.wired {
        let (ns, name) = (format!("ns{j}"), format!("w{j}"));
        create_pod(&client, pod(&ns, &name, &format!("a{}", j % 20), &n1, None)).await;
        let netns = c.tb().add_ns(&format!("w{j}")).await.unwrap();
        let text = metrics(&c, MEASURED).await;
        let (g0, gs0) = histogram(&text, GATE_WAIT);
        let (c0, cs0) = histogram(&text, COMMIT_LATENCY);
        let (ip, took) = c.cni_add(&ns, &name, MEASURED, &netns, &name).await;
        let ip = ip.unwrap_or_else(|e| panic!("ADD of {ns}/{name}: {e}\n{}", c.logs_tail()));
        let text = metrics(&c, MEASURED).await;
        let (g1, gs1) = histogram(&text, GATE_WAIT);
        let (c1, cs1) = histogram(&text, COMMIT_LATENCY);
        assert_eq!(g1 - g0, 1.0, "one gate request per ADD");
        gate_wait.push(Duration::from_secs_f64(gs1 - gs0));
        if c1 > c0 {
            local_commit.push(Duration::from_secs_f64((cs1 - cs0) / (c1 - c0)));
        }
        local_add.push(took);
        c.set_pod_ip(&ns, &name, ip).await;
        wired.push((netns, ip));
    }
    eprintln!("  {} pods wired on n1", scale.wired);

    // The clients on n2 (policyd there only while they are wired: then stopped and its rules
    // removed, so the clients' node is the same plain node in both conditions).
    c.spawn_policyd(CLIENTS);
    c.wait_policyd_ready(CLIENTS).await;
    let n2 = node_name(&c, CLIENTS);
    let mut clients = Vec::new();
    for k in 0..CLIENT_PODS {
        let name = format!("c{k}");
        create_pod(&client, pod(CLIENT_NS, &name, "client", &n2, None)).await;
        let netns = c.tb().add_ns(&name).await.unwrap();
        let (ip, _) = c.cni_add(CLIENT_NS, &name, CLIENTS, &netns, &name).await;
        let ip = ip.unwrap_or_else(|e| panic!("ADD of client {name}: {e}\n{}", c.logs_tail()));
        c.set_pod_ip(CLIENT_NS, &name, ip).await;
        clients.push(netns);
    }
    c.stop_policyd(CLIENTS, nix::sys::signal::Signal::SIGTERM)
        .await;
    strip_policy(&c, CLIENTS).await;

    // Pod added (not on this node: set members change), then policy changed (np1 selects w1
    // on this node: its chain is rewritten).
    let mut pod_added = Vec::new();
    for s in 0..scale.samples {
        let k = s % NAMESPACES;
        let obj = pod(
            &format!("ns{k}"),
            &format!("new{s}"),
            &format!("a{}", (k + 1) % 20),
            "far-new",
            Some(far_ip(60_000 + s)),
        );
        let client = client.clone();
        pod_added.push(
            timed_commit(
                &c,
                async move { create_pod(&client, obj).await },
                Some("trellis_policyd_ipset_members"),
            )
            .await,
        );
    }
    let mut policy_changed = Vec::new();
    for s in 0..scale.samples {
        let obj = policy(1, 9000 + s as u16);
        let client = client.clone();
        policy_changed
            .push(timed_commit(&c, async move { put_policy(&client, obj).await }, None).await);
    }
    let text = metrics(&c, MEASURED).await;
    let gauges: Vec<(String, f64)> = [
        "trellis_policyd_chains",
        "trellis_policyd_rules",
        "trellis_policyd_ipsets",
        "trellis_policyd_ipset_members",
        "trellis_policyd_local_pods",
        "trellis_policyd_restore_fallbacks_total",
    ]
    .iter()
    .map(|n| (n.to_string(), metric(&text, n).unwrap_or(f64::NAN)))
    .collect();
    let (rss, hwm) = memory_kb(c.policyd_pid(MEASURED));
    // What went wrong meanwhile, if anything (a failed commit is retried 500 ms later).
    let sync_errors: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("trellis_policyd_sync_errors_total"))
        .map(str::to_string)
        .collect();
    let log = c.tb().log_of(c.nodes[MEASURED].policyd.expect("policyd"));
    let warnings: Vec<String> = log
        .lines()
        .filter(|l| l.contains("WARN"))
        .map(str::to_string)
        .collect();

    // New-connection rate, rounds alternating with and without policy; each restart of
    // policyd after a run without is a cold full programming.
    let (server_ns, server_ip) = wired[0].clone();
    let server = Server::start(&server_ns, server_ip, &[ALLOWED, DENIED], 2);
    let allowed = SocketAddr::from((server_ip, ALLOWED));
    let denied = SocketAddr::from((server_ip, DENIED));
    let (mut with, mut without, mut bare) = (Vec::new(), Vec::new(), Vec::new());
    let (mut failures_with, mut failures_without, mut failures_bare) = (0, 0, 0);
    let mut tracked = Vec::new();
    conntrack_table(&c, MEASURED, true).await;
    let (mut full_ready, mut full_commit) = (Vec::new(), Vec::new());
    let mut memory = vec![(rss, hwm)];
    let mut policyd_cpu = Vec::new();
    for r in 1..=rounds {
        // With: policyd's rules in place, proven live (8081 is not allowed).
        assert!(c.has_fwd_jump(MEASURED).await, "no policy jump on n1");
        assert!(
            reaches(&clients, allowed).await,
            "a client cannot reach the server's allowed port under policy\n{}",
            c.logs_tail()
        );
        assert!(
            !reaches(&clients, denied).await,
            "a client reaches port {DENIED}, which no policy allows: the rules are not live"
        );
        let cpu_before = cpu_seconds(c.policyd_pid(MEASURED));
        let round_start = Instant::now();
        let (rate, failed) = connection_rate(&clients, allowed, parallel, seconds).await;
        let cpu = (cpu_seconds(c.policyd_pid(MEASURED)) - cpu_before)
            / round_start.elapsed().as_secs_f64();
        policyd_cpu.push(cpu);
        eprintln!(
            "  round {r}/{rounds}: with policy {rate:.0} conn/s ({failed} failed); policyd CPU {:.1} % of a core",
            cpu * 100.0
        );
        with.push(rate);
        failures_with += failed;
        memory.push(memory_kb(c.policyd_pid(MEASURED)));

        // Without: policyd stopped, everything it owns removed; conntrack still on.
        c.stop_policyd(MEASURED, nix::sys::signal::Signal::SIGTERM)
            .await;
        strip_policy(&c, MEASURED).await;
        assert!(
            reaches(&clients, denied).await,
            "without policy port {DENIED} must be open"
        );
        let ct0 = conntrack_count(&c, MEASURED).await;
        let (rate, failed) = connection_rate(&clients, allowed, parallel, seconds).await;
        let ct1 = conntrack_count(&c, MEASURED).await;
        eprintln!(
            "  round {r}/{rounds}: no policy, conntrack only {rate:.0} conn/s ({failed} failed; conntrack entries {ct0} → {ct1})"
        );
        // The baseline must track: at least the connections made in the last second of the
        // round are still there (a reset connection stays 10 s, CLOSE).
        assert!(
            ct1 as f64 >= rate.min(1000.0) / 2.0,
            "conntrack is not tracking on n1 in the conntrack-only rounds ({ct1} entries)"
        );
        tracked.push(ct1);
        without.push(rate);
        failures_without += failed;

        // Nothing at all: conntrack off too (what these rounds measured before as "no
        // policy"; printed for reference, not the issue's baseline).
        conntrack_table(&c, MEASURED, false).await;
        let (rate, failed) = connection_rate(&clients, allowed, parallel, seconds).await;
        eprintln!("  round {r}/{rounds}: no netfilter {rate:.0} conn/s ({failed} failed)");
        bare.push(rate);
        failures_bare += failed;
        conntrack_table(&c, MEASURED, true).await;

        // Cold full programming at full scale (all pods, all policies, the wired pods).
        let (ready, commit) = cold_start(&mut c, MEASURED).await;
        eprintln!(
            "  round {r}/{rounds}: policyd restarted cold, ready in {} (first commit {})",
            ms(ready),
            ms(commit)
        );
        full_ready.push(ready);
        full_commit.push(commit);
        memory.push(memory_kb(c.policyd_pid(MEASURED)));
    }
    drop(server);
    conntrack_table(&c, MEASURED, false).await;

    // The table.
    let pods_total = far + scale.wired + CLIENT_PODS + scale.samples;
    println!(
        "policy-scale ({mode:?} mode{}): {} NetworkPolicies, {pods_total} pods in the API ({} wired on the measured node), {} build",
        match (full_compile, per_commit) {
            (false, false) => "",
            (true, false) => ", policyd --full-compile",
            (false, true) => ", policyd --restore-per-commit",
            (true, true) => ", policyd --full-compile --restore-per-commit",
        },
        scale.policies,
        scale.wired,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    println!(
        "{:<52} {:>10} {:>10} {:>10}  {:>4}  aim",
        "scale", "p50", "p99", "max", "n"
    );
    println!(
        "{}",
        latency_row(
            "full programming, cold: policyd start → /readyz 200",
            &full_ready,
            "≤ 1 s"
        )
    );
    println!(
        "{}",
        latency_row(
            "  of which first change → committed (its histogram)",
            &full_commit,
            ""
        )
    );
    println!(
        "{}",
        latency_row(
            "  before the wired pods: start → /readyz 200",
            &[first_ready],
            ""
        )
    );
    let pol = |v: &[Sample]| v.iter().map(|s| s.policyd).collect::<Vec<_>>();
    let seen = |v: &[Sample]| v.iter().map(|s| s.seen).collect::<Vec<_>>();
    println!(
        "{}",
        latency_row(
            "pod added (other node), event → members committed",
            &pol(&pod_added),
            "p99 ≤ 20 ms"
        )
    );
    println!(
        "{}",
        latency_row(
            "  API write → commit seen on /metrics",
            &seen(&pod_added),
            ""
        )
    );
    println!(
        "{}",
        latency_row("pod added (this node, wired), gate wait", &gate_wait, "")
    );
    if !local_commit.is_empty() {
        println!(
            "{}",
            latency_row("  event → committed (its commits)", &local_commit, "")
        );
    }
    println!(
        "{}",
        latency_row("  whole CNI ADD (with the gate)", &local_add, "")
    );
    println!(
        "{}",
        latency_row(
            "policy changed (selects a local pod), event → committed",
            &pol(&policy_changed),
            "p99 ≤ 50 ms"
        )
    );
    println!(
        "{}",
        latency_row(
            "  API write → commit seen on /metrics",
            &seen(&policy_changed),
            ""
        )
    );
    let extra: f64 = pod_added
        .iter()
        .chain(&policy_changed)
        .map(|s| s.commits - 1.0)
        .sum();
    if extra > 0.0 {
        println!("  ({extra} extra commits fell between two polls: those samples show the mean)");
    }
    for (what, v) in [
        ("pod added", &pod_added),
        ("policy changed", &policy_changed),
    ] {
        println!("{what}: policyd's commit phases (ms, p50 / p99 / max over the samples)");
        let row: Vec<String> = PHASES
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let l = Latency::of(&v.iter().map(|s| s.phases[i]).collect::<Vec<_>>())
                    .expect("samples");
                format!("{p} {} / {} / {}", ms(l.p50), ms(l.p99), ms(l.max))
            })
            .collect();
        println!("  {}", row.join("; "));
        let mut slow: Vec<&Sample> = v.iter().collect();
        slow.sort_by_key(|s| std::cmp::Reverse(s.policyd));
        for s in slow.iter().take(3) {
            let parts: Vec<String> = PHASES
                .iter()
                .zip(s.phases)
                .map(|(p, d)| format!("{p} {}", ms(d)))
                .collect();
            println!(
                "  slow sample: event → committed {} (API write → seen {}): {}",
                ms(s.policyd),
                ms(s.seen),
                parts.join(", ")
            );
        }
    }
    let (w, wo) = (median(with.clone()), median(without.clone()));
    println!(
        "new connections/s, client pods on n2 → server on n1, {parallel} threads × {seconds} s, median of {rounds}:"
    );
    println!(
        "  with policy {w:.0} ({with:.0?}; {failures_with} failed)  vs  no policy, conntrack only {wo:.0} ({without:.0?}; {failures_without} failed)  ratio {:.2}x  (aim ≥ 0.9x)",
        w / wo.max(1e-9)
    );
    let b = median(bare.clone());
    println!(
        "  for reference, no netfilter at all (conntrack off) {b:.0} ({bare:.0?}; {failures_bare} failed): with policy {:.2}x, conntrack only {:.2}x; conntrack entries on n1 after the conntrack-only rounds {tracked:?}",
        w / b.max(1e-9),
        wo / b.max(1e-9)
    );
    println!(
        "  policyd's CPU during the with-policy rounds (itself and the tools it ran): {:.1} % of a core (median; {:?})",
        median(policyd_cpu.clone()) * 100.0,
        policyd_cpu
            .iter()
            .map(|c| format!("{:.1} %", c * 100.0))
            .collect::<Vec<_>>()
    );
    let (rss_max, hwm_max) = memory
        .iter()
        .fold((0, 0), |(a, b), (r, h)| (a.max(*r), b.max(*h)));
    println!(
        "policyd memory: VmRSS {:.1} MiB after the samples, at most {:.1} MiB; VmHWM at most {:.1} MiB",
        rss as f64 / 1024.0,
        rss_max as f64 / 1024.0,
        hwm_max as f64 / 1024.0
    );
    println!(
        "policyd program: {}",
        gauges
            .iter()
            .map(|(n, v)| format!("{} {v}", n.trim_start_matches("trellis_policyd_")))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "policyd during the samples: sync errors {:?}; {} warnings in its log{}",
        sync_errors,
        warnings.len(),
        warnings
            .iter()
            .take(3)
            .map(|w| format!("\n  {w}"))
            .collect::<String>()
    );
    let (prefix, run_dir) = (c.tb().prefix().to_string(), c.tb().run_dir().to_path_buf());
    drop(wired);
    drop(clients);
    drop(c);
    netns_testbed::leak::assert_clean(&prefix, &run_dir);
}
