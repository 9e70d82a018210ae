//! Failure detection (issue 18): the time from a link cut until the last route learnt over it
//! has left the receiver's kernel — with BFD (300 ms × 3, the default) and without (the hold
//! timer alone; the hold time is 9 s here instead of the default 90 s, so a round ends in
//! seconds: without BFD the figure is the hold time, whatever it is set to).
//!
//! Each round builds two nodes on a fresh testbed underlay: the receiver (n1) and BIRD 2 (n2)
//! announcing `--prefixes` /26s (default 20) over iBGP. Once every prefix is in n1's kernel,
//! n2's `eth0` is set down from inside n2's namespace (netlink; the clock starts just before),
//! and n1's main table is polled every millisecond until none of them is left. Three receivers
//! run the same rounds: `trellis bgp-agent --bfd`, `trellis bgp-agent` without BFD, and, as
//! the reference, BIRD itself with `bfd on` (same intervals).
//!
//!     cargo bench -p netns-testbed --bench bgp-failure-detection [-- --rounds 5 --prefixes 20]
//!         [--trellis PATH]
//!
//! Needs root, bird2 and the `trellis` binary (`cargo build --release -p trellis`, or pass
//! `--trellis target/debug/trellis`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};
use netns_testbed::bird::{Agent, AgentSpec, Bird, BirdConfig, BirdPeer, PROTO_BIRD};
use netns_testbed::{Node, Testbed, bin_path, require_root};
use trellis_net::proto::BGP as PROTO_TRELLIS;
use trellis_net::{Family, Route};

const ASN: u32 = 64512;
const HOLD: u16 = 9;
const BFD_INTERVAL: Duration = Duration::from_millis(300);
const BFD_MULT: u8 = 3;
const LIFETIME: Duration = Duration::from_secs(120);
const SETUP: Duration = Duration::from_secs(30);

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

fn prefix(i: usize) -> Ipv4Net {
    format!("10.246.{}.{}/26", i / 4, (i % 4) * 64)
        .parse()
        .unwrap()
}

/// Nearest-rank percentile of `v` (ms).
fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Receiver {
    OursBfd,
    OursHold,
    BirdBfd,
}

impl Receiver {
    fn label(self) -> &'static str {
        match self {
            Receiver::OursBfd => "trellis bgp-agent --bfd (300 ms x 3)",
            Receiver::OursHold => "trellis bgp-agent, no BFD (hold 9 s)",
            Receiver::BirdBfd => "BIRD 2, bfd on (300 ms x 3)",
        }
    }

    fn proto(self) -> u8 {
        match self {
            Receiver::BirdBfd => PROTO_BIRD,
            _ => PROTO_TRELLIS,
        }
    }

    fn bfd(self) -> bool {
        self != Receiver::OursHold
    }
}

/// How many of `prefixes` n1's kernel routes via `gw` with `proto`.
fn present(routes: &[Route], prefixes: &[Ipv4Net], gw: IpAddr, proto: u8) -> usize {
    prefixes
        .iter()
        .filter(|p| {
            routes
                .iter()
                .any(|r| r.dst == IpNet::V4(**p) && r.protocol == proto && r.gateway == Some(gw))
        })
        .count()
}

/// One round: ms from the cut until the first and the last prefix left n1's kernel.
async fn round(receiver: Receiver, n_prefixes: usize, trellis: &Path) -> (f64, f64) {
    let tb = Testbed::new().unwrap();
    let n1: Node = tb.add_node("n1", 1).await.unwrap();
    let n2: Node = tb.add_node("n2", 2).await.unwrap();
    let prefixes: Vec<Ipv4Net> = (0..n_prefixes).map(prefix).collect();

    let mut sender = BirdConfig::new(&n2, ASN).hold_time(HOLD);
    for p in &prefixes {
        sender = sender.announce(*p);
    }
    let peer = BirdPeer::new("n1", n1.ip, ASN);
    sender = if receiver.bfd() {
        sender.bfd(BFD_INTERVAL, BFD_MULT).peer(peer.bfd())
    } else {
        sender.peer(peer)
    };
    let _bird2 = Bird::start(&tb, &n2, sender, LIFETIME).await.unwrap();

    let mut _agent = None;
    let mut _bird1 = None;
    match receiver {
        Receiver::OursBfd | Receiver::OursHold => {
            let mut spec = AgentSpec::new(ASN).peer(n2.ip, ASN);
            spec.hold_time = HOLD;
            spec.announce.push("10.244.1.0/26".parse().unwrap());
            if receiver == Receiver::OursBfd {
                spec.extra.push("--bfd".into());
            }
            _agent = Some(
                Agent::start_with(&tb, &n1, spec, LIFETIME, trellis)
                    .await
                    .unwrap(),
            );
        }
        Receiver::BirdBfd => {
            let c = BirdConfig::new(&n1, ASN)
                .hold_time(HOLD)
                .bfd(BFD_INTERVAL, BFD_MULT)
                .peer(BirdPeer::new("n2", n2.ip, ASN).bfd());
            _bird1 = Some(Bird::start(&tb, &n1, c, LIFETIME).await.unwrap());
        }
    }

    let h = n1.ns.connect().unwrap();
    let gw = IpAddr::V4(n2.ip);
    let start = Instant::now();
    loop {
        let routes = h.routes(Family::V4, Some(Route::TABLE_MAIN)).await.unwrap();
        if present(&routes, &prefixes, gw, receiver.proto()) == prefixes.len() {
            break;
        }
        assert!(
            start.elapsed() < SETUP,
            "{}: routes not learnt",
            receiver.label()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // BFD Up at both ends, at the fast rate: until then the detection time is 3 × the 1 s
    // slow rate, and the figure would measure the handshake, not the detection.
    if receiver.bfd() {
        let start = Instant::now();
        loop {
            let up =
                match (&_agent, &_bird1) {
                    (Some(a), _) => a.peer_status(n2.ip).await.unwrap().is_some_and(|p| {
                        p["bfd"]["state"] == "Up" && p["bfd"]["detection_ms"] == 900
                    }),
                    (None, Some(b)) => b
                        .birdc(&["show", "bfd", "sessions"])
                        .await
                        .unwrap()
                        .lines()
                        .any(|l| {
                            let w: Vec<&str> = l.split_whitespace().collect();
                            w.first() == Some(&n2.ip.to_string().as_str()) && w.contains(&"Up")
                        }),
                    (None, None) => true,
                };
            if up {
                break;
            }
            assert!(start.elapsed() < SETUP, "{}: BFD not Up", receiver.label());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Both ends Up and both polls answered (a packet each way at 300 ms).
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    let h2 = n2.ns.connect().unwrap();
    let eth0 = h2.require_link("eth0").await.unwrap();
    let cut = Instant::now();
    h2.set_down(eth0.index).await.unwrap();
    let limit = Duration::from_secs(u64::from(HOLD) * 2 + 10);
    let mut first = None;
    loop {
        let routes = h.routes(Family::V4, Some(Route::TABLE_MAIN)).await.unwrap();
        let left = present(&routes, &prefixes, gw, receiver.proto());
        let ms = cut.elapsed().as_secs_f64() * 1000.0;
        if left < prefixes.len() && first.is_none() {
            first = Some(ms);
        }
        if left == 0 {
            return (first.unwrap_or(ms), ms);
        }
        assert!(
            cut.elapsed() < limit,
            "{}: {left} routes still there {limit:?} after the cut",
            receiver.label()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    require_root();
    let rounds = num("--rounds", 5).max(1);
    let n_prefixes = num("--prefixes", 20).max(1);
    let trellis = arg("--trellis")
        .map(PathBuf::from)
        .unwrap_or_else(|| bin_path("trellis"));
    eprintln!(
        "failure detection: {rounds} rounds, {n_prefixes} prefixes from BIRD over iBGP, link cut by eth0 down at the sender; trellis = {}",
        trellis.display()
    );
    let mut rows = Vec::new();
    for receiver in [Receiver::OursBfd, Receiver::BirdBfd, Receiver::OursHold] {
        let mut last = Vec::new();
        let mut first = Vec::new();
        for r in 0..rounds {
            let (f, l) = round(receiver, n_prefixes, &trellis).await;
            eprintln!(
                "  {:<40} round {r}: first {f:.0} ms, last {l:.0} ms",
                receiver.label()
            );
            first.push(f);
            last.push(l);
        }
        rows.push((receiver, first, last));
    }
    println!();
    println!(
        "{:<40} {:>12} {:>12} {:>12} {:>12}",
        "receiver (link cut -> last route gone)", "median ms", "p90 ms", "min ms", "max ms"
    );
    for (receiver, _first, last) in &rows {
        println!(
            "{:<40} {:>12.0} {:>12.0} {:>12.0} {:>12.0}",
            receiver.label(),
            percentile(last, 50.0),
            percentile(last, 90.0),
            percentile(last, 0.0),
            percentile(last, 100.0)
        );
    }
    let med = |r: Receiver| {
        rows.iter()
            .find(|(x, _, _)| *x == r)
            .map(|(_, _, l)| percentile(l, 50.0))
            .unwrap_or(f64::NAN)
    };
    println!(
        "\nwith BFD / without: {:.3}x; ours with BFD / BIRD with BFD: {:.2}x (medians)",
        med(Receiver::OursBfd) / med(Receiver::OursHold),
        med(Receiver::OursBfd) / med(Receiver::BirdBfd)
    );
}
