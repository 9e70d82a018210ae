//! BGP scale (issue 18): a peer (BIRD 2) announces `--prefixes` routes (default 100,000 /32s
//! out of 10.64.0.0/10) to one eBGP receiver; measured are the time until every one of them is
//! in the receiver's kernel and the receiver's memory then.
//!
//! Each round builds a fresh testbed: the sender (BIRD, AS 64600, every prefix a static
//! blackhole route, no kernel protocol of its own) and the receiver (AS 64512) on one underlay.
//! The sender's session is disabled (`birdc disable`) before the receiver starts, so the
//! receiver comes up idle; then the clock starts and `birdc enable` lets the session come up.
//! The receiver's main table is dumped over netlink (our net crate), counting the routes of the
//! receiver's protocol, until it holds all of them (bounded; the mean dump time is printed as
//! the resolution); meanwhile the sender's `show protocols` says when the session was
//! Established. The receiver's VmRSS (from /proc/PID/status) is read when the last route is
//! in and again two seconds later (settled), with VmHWM (its peak). Two receivers, rounds
//! alternating between them (ours, BIRD, ours, …):
//!
//! - `trellis bgp-agent --standalone` with the sender as its one `--peer` (as the other BGP
//!   benches run it against an external peer);
//! - BIRD 2 with a `kernel` protocol exporting every BGP route.
//!
//! Run it with:
//!
//! ```text
//! cargo bench -p netns-testbed --bench bgp-scale [-- --prefixes 100000 --rounds 3]
//!     [--trellis PATH] [--only ours|bird]
//! ```
//!
//! Needs root, bird2 and the `trellis` binary (`cargo build --release --bin trellis`, or pass
//! `--trellis target/debug/trellis`). Unknown arguments are refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use netns_testbed::bird::{Agent, AgentSpec, Bird, BirdConfig, BirdPeer, PROTO_BIRD};
use netns_testbed::{Node, Testbed, bin_path, require_root, require_tool};
use trellis_net::proto::BGP as PROTO_TRELLIS;
use trellis_net::{Family, Handle, Route};

const SENDER_ASN: u32 = 64600;
const RECEIVER_ASN: u32 = 64512;
/// The default hold time: a receiver busy installing routes must not lose its session.
const HOLD: u16 = 90;
/// Lifetime of every process of a round.
const LIFETIME: Duration = Duration::from_secs(1200);
/// Pause between kernel dumps (each dump of a full table takes a while itself).
const POLL: Duration = Duration::from_millis(20);

struct Args {
    prefixes: usize,
    rounds: usize,
    trellis: PathBuf,
    only: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        prefixes: 100_000,
        rounds: 3,
        trellis: bin_path("trellis"),
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        // cargo bench passes --bench to a harness-less bench.
        if flag == "--bench" {
            continue;
        }
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--prefixes" => {
                a.prefixes = value()?.parse().map_err(|e| format!("--prefixes: {e}"))?;
            }
            "--rounds" => a.rounds = value()?.parse().map_err(|e| format!("--rounds: {e}"))?,
            "--trellis" => a.trellis = PathBuf::from(value()?),
            "--only" => {
                let v = value()?;
                if v != "ours" && v != "bird" {
                    return Err(format!("--only: ours or bird, not {v}"));
                }
                a.only = Some(v);
            }
            other => {
                return Err(format!(
                    "unknown argument {other} (known: --prefixes N --rounds R --trellis PATH --only ours|bird)"
                ));
            }
        }
    }
    if a.prefixes == 0 || a.prefixes > 1 << 22 {
        return Err(format!(
            "--prefixes: 1 to {} (/32s of 10.64.0.0/10)",
            1 << 22
        ));
    }
    a.rounds = a.rounds.max(1);
    Ok(a)
}

/// The `i`th announced prefix: a /32 of 10.64.0.0/10.
fn prefix(i: usize) -> Ipv4Net {
    let base = u32::from(Ipv4Addr::new(10, 64, 0, 0));
    Ipv4Net::new(Ipv4Addr::from(base + i as u32), 32).unwrap()
}

/// Median (nearest rank).
fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[(s.len() - 1) / 2]
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Receiver {
    Ours,
    Bird,
}

impl Receiver {
    fn name(self) -> &'static str {
        match self {
            Receiver::Ours => "trellis bgp-agent",
            Receiver::Bird => "BIRD 2",
        }
    }

    fn proto(self) -> u8 {
        match self {
            Receiver::Ours => PROTO_TRELLIS,
            Receiver::Bird => PROTO_BIRD,
        }
    }
}

/// What one round measured.
#[derive(Default)]
struct Figures {
    /// ms from `birdc enable` until the sender's session was Established.
    established: Vec<f64>,
    /// ms from Established until the last route was in the receiver's kernel.
    install: Vec<f64>,
    /// ms from `birdc enable` until the last route was in.
    total: Vec<f64>,
    /// MiB: VmRSS when the last route was in, two seconds later, VmHWM then.
    rss_done: Vec<f64>,
    rss_settled: Vec<f64>,
    hwm: Vec<f64>,
    /// Mean kernel dump time (ms).
    dump: Vec<f64>,
}

/// VmRSS and VmHWM of `pid` in MiB.
fn memory(pid: i32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

/// Routes of `proto` in the main IPv4 table.
async fn count(h: &Handle, proto: u8) -> usize {
    h.routes(Family::V4, Some(Route::TABLE_MAIN))
        .await
        .unwrap()
        .iter()
        .filter(|r| r.protocol == proto)
        .count()
}

/// The receiver of one round, running.
enum Running<'a> {
    Ours(Agent<'a>),
    Bird(Bird<'a>),
}

impl Running<'_> {
    /// The receiver process itself.
    fn pid(&self) -> i32 {
        match self {
            Running::Ours(a) => a.agent_pid().expect("the agent's pid"),
            Running::Bird(b) => std::fs::read_to_string(b.pid_path())
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .expect("BIRD's pid file"),
        }
    }

    fn log_tail(&self) -> String {
        match self {
            Running::Ours(a) => {
                let log = a.log();
                let lines: Vec<&str> = log.lines().collect();
                lines[lines.len().saturating_sub(30)..].join("\n")
            }
            Running::Bird(b) => b.log_tail(30),
        }
    }
}

async fn start_receiver<'a>(
    tb: &'a Testbed,
    who: Receiver,
    rcv: &Node,
    snd: &Node,
    trellis: &std::path::Path,
) -> Running<'a> {
    match who {
        Receiver::Ours => {
            let mut spec = AgentSpec::new(RECEIVER_ASN).peer(snd.ip, SENDER_ASN);
            spec.hold_time = HOLD;
            Running::Ours(
                Agent::start_with(tb, rcv, spec, LIFETIME, trellis)
                    .await
                    .unwrap(),
            )
        }
        Receiver::Bird => {
            let mut c = BirdConfig::new(rcv, RECEIVER_ASN)
                .hold_time(HOLD)
                .peer(BirdPeer::new("snd", snd.ip, SENDER_ASN));
            c.kernel_export = true;
            Running::Bird(Bird::start(tb, rcv, c, LIFETIME).await.unwrap())
        }
    }
}

/// One round with receiver `who`: a fresh testbed, sender and receiver, the session enabled,
/// timed until the receiver's kernel holds every prefix.
async fn round(
    who: Receiver,
    n: usize,
    trellis: &std::path::Path,
    limit: Duration,
    f: &mut Figures,
) {
    let tb = Testbed::new().unwrap();
    let snd = tb.add_node("snd", 1).await.unwrap();
    let rcv = tb.add_node("rcv", 2).await.unwrap();
    let mut c = BirdConfig::new(&snd, SENDER_ASN)
        .hold_time(HOLD)
        .peer(BirdPeer::new("rcv", rcv.ip, RECEIVER_ASN));
    c.kernel_export = false;
    c.statics = (0..n).map(prefix).collect();
    let sender = Bird::start(&tb, &snd, c, LIFETIME).await.unwrap();
    // Idle until the clock starts (the receiver is not up yet, so no session can have come up).
    let out = sender.birdc(&["disable", "rcv"]).await.unwrap();
    assert!(out.contains("disabled"), "birdc disable rcv: {out}");
    let receiver = start_receiver(&tb, who, &rcv, &snd, trellis).await;
    let h = rcv.ns.connect().unwrap();
    assert_eq!(count(&h, who.proto()).await, 0, "routes before the session");

    let t0 = Instant::now();
    let out = sender.birdc(&["enable", "rcv"]).await.unwrap();
    assert!(out.contains("enabled"), "birdc enable rcv: {out}");
    let mut established: Option<Duration> = None;
    let (mut dumps, mut dumping) = (0u32, Duration::ZERO);
    let mut last;
    let done = loop {
        if established.is_none()
            && sender
                .protocol("rcv")
                .await
                .unwrap()
                .is_some_and(|p| p.established())
        {
            established = Some(t0.elapsed());
        }
        let d = Instant::now();
        last = count(&h, who.proto()).await;
        dumps += 1;
        dumping += d.elapsed();
        if last >= n {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < limit,
            "{}: {last} of {n} routes in the kernel after {limit:?} (established: {established:?})\n{}",
            who.name(),
            receiver.log_tail()
        );
        tokio::time::sleep(POLL).await;
    };
    let pid = receiver.pid();
    let (rss_done, _) = memory(pid);
    // Established is seen before the last route at the latest (a route needs the session).
    let est = established.unwrap_or(done);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_settled, hwm) = memory(pid);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let dump = ms(dumping) / f64::from(dumps);
    eprintln!(
        "  {:<18} established {:>7.0} ms, all {last} routes in {:>7.0} ms after it ({:>7.0} ms in all); VmRSS {rss_done:.1} MiB, settled {rss_settled:.1} MiB, VmHWM {hwm:.1} MiB (dump {dump:.0} ms)",
        who.name(),
        ms(est),
        ms(done - est),
        ms(done)
    );
    f.established.push(ms(est));
    f.install.push(ms(done - est));
    f.total.push(ms(done));
    f.rss_done.push(rss_done);
    f.rss_settled.push(rss_settled);
    f.hwm.push(hwm);
    f.dump.push(dump);
    drop(receiver);
    drop(sender);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bgp-scale: {e}");
            std::process::exit(2);
        }
    };
    require_root();
    require_tool("bird", "bird2");
    // Ctrl-C drops the run, and with it every namespace and process it made.
    tokio::select! {
        () = run(args) => {}
        _ = tokio::signal::ctrl_c() => eprintln!("interrupted; cleaned up"),
    }
}

async fn run(a: Args) {
    let n = a.prefixes;
    // A generous bound: minutes for 100,000 routes even on a loaded machine.
    let limit = Duration::from_secs(60 + (n as u64) / 500);
    let mut sides: Vec<Receiver> = Vec::new();
    if a.only.as_deref() != Some("bird") {
        sides.push(Receiver::Ours);
    }
    if a.only.as_deref() != Some("ours") {
        sides.push(Receiver::Bird);
    }
    eprintln!(
        "bgp-scale: {n} /32s from BIRD (AS {SENDER_ASN}) over eBGP; {} rounds; trellis {}",
        a.rounds,
        a.trellis.display()
    );
    let mut figures: Vec<Figures> = sides.iter().map(|_| Figures::default()).collect();
    for r in 0..a.rounds {
        eprintln!("round {}", r + 1);
        // Alternate which side goes first, so a machine whose load drifts hurts both alike.
        let order: Vec<usize> = if r % 2 == 0 {
            (0..sides.len()).collect()
        } else {
            (0..sides.len()).rev().collect()
        };
        for i in order {
            round(sides[i], n, &a.trellis, limit, &mut figures[i]).await;
        }
    }
    println!(
        "bgp-scale: {n} prefixes (/32) from one eBGP peer (BIRD 2), {} rounds, medians",
        a.rounds
    );
    println!(
        "{:<20} {:>14} {:>16} {:>12} {:>12} {:>14} {:>12} {:>9}",
        "receiver",
        "established ms",
        "est.→all ms",
        "total ms",
        "VmRSS MiB",
        "settled MiB",
        "VmHWM MiB",
        "dump ms"
    );
    for (who, f) in sides.iter().zip(&figures) {
        println!(
            "{:<20} {:>14.0} {:>16.0} {:>12.0} {:>12.1} {:>14.1} {:>12.1} {:>9.0}",
            who.name(),
            median(&f.established),
            median(&f.install),
            median(&f.total),
            median(&f.rss_done),
            median(&f.rss_settled),
            median(&f.hwm),
            median(&f.dump)
        );
    }
    if let [o, b] = &figures[..] {
        println!(
            "trellis / BIRD: est.→all {:.2}x, total {:.2}x, VmRSS {:.2}x, settled {:.2}x, VmHWM {:.2}x",
            median(&o.install) / median(&b.install).max(1e-9),
            median(&o.total) / median(&b.total).max(1e-9),
            median(&o.rss_done) / median(&b.rss_done).max(1e-9),
            median(&o.rss_settled) / median(&b.rss_settled).max(1e-9),
            median(&o.hwm) / median(&b.hwm).max(1e-9),
        );
    }
}
