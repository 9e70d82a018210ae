//! No gap on restart, both modes: 20 restarts of policyd (alternating SIGTERM and kill -9,
//! alternating nodes) under continuous probing of forbidden and allowed pairs; no forbidden
//! connection may succeed, and the allowed ones keep working.
//!
//! A wrong probe fails the test with what tells a rule gap from a probe's fault: its UDP flow
//! and that flow's earlier probes (a 5-tuple answered before the policy was in place is passed
//! by conntrack as ESTABLISHED; the probes never reuse one — see `matrix`), the restarts around
//! it, both kernels' rules, sets and conntrack entries of that flow read right after, and the
//! last policyd runs' logs. Negative control: the same restart with policyd's FORWARD chain
//! flushed before the start (a policyd that flushed and refilled), held until a forbidden probe
//! got through: the probing sees such a gap and the test reports it.
//!
//! And the verifier, with a deterministic negative control: policyd is SIGSTOPped (so nothing
//! can repair), its FORWARD jump deleted by hand, and a forbidden pair probed until it gets
//! through (it must: the probe is able to see a gap); then SIGCONT, and the verifier must put
//! the jump back within one verify period (+ margin), after which the pair is blocked again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/overlay_cluster.rs"]
mod overlay_cluster;
#[path = "support/policy_cluster.rs"]
mod policy_cluster;
#[path = "support/routed_cluster.rs"]
mod routed_cluster;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use netns_testbed::matrix::{self, Cell};
use netns_testbed::policy_model::{NetworkPolicy, NpPeer, NpRule, Selector};
use nix::sys::signal::Signal;
use policy_cluster::{Mode, PolicyCluster};

const CONVERGE: Duration = Duration::from_secs(15);
const RESTARTS: usize = 20;
/// Probe time-out of the allowed cells (they answer within milliseconds).
const PROBE: Duration = Duration::from_millis(1000);
/// Probe time-out of the forbidden cells: each dropped probe costs all of it.
const FORBIDDEN_PROBE: Duration = Duration::from_millis(300);
/// Bound on the wait, after each restart, for both probing loops to finish two more rounds.
const ROUND_WAIT: Duration = Duration::from_secs(10);

/// x accepts only namespace y: z → x is forbidden (on both nodes), y → x allowed.
async fn setup(mode: Mode) -> PolicyCluster {
    let mut c = PolicyCluster::start(mode).await;
    c.apply_np(
        NetworkPolicy::new("x", "from-y", Selector::all()).ingress(vec![NpRule {
            peers: vec![NpPeer::namespaces(Selector::eq("ns", "y"))],
            ports: vec![],
        }]),
    )
    .await;
    c.converge("x accepts only y", CONVERGE).await;
    c
}

/// The cells from pods of `from_ns` to pods of `to_ns` (every port and probed protocol).
fn cells(c: &PolicyCluster, from_ns: &str, to_ns: &str) -> Vec<Cell> {
    let m = c.expected();
    m.cells
        .keys()
        .filter(|cell| {
            c.pods[cell.from].key.starts_with(&format!("{from_ns}/"))
                && c.pods[cell.to].key.starts_with(&format!("{to_ns}/"))
        })
        .copied()
        .collect()
}

/// A probe that did not see what the model expects: when (since the probing began), which
/// cell, and the UDP source port it used.
#[derive(Debug, Clone, Copy)]
struct Wrong {
    at: Duration,
    cell: Cell,
    src_port: Option<u16>,
}

/// One restart: which node, how, when policyd was signalled and when it was ready again (since
/// the probing began).
struct Restart {
    node: usize,
    signal: Signal,
    stopped: Duration,
    ready: Duration,
}

/// What happens to the rules while policyd is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gap {
    /// Nothing: the rules stay (the promise under test).
    None,
    /// The negative control: `TRELLIS-POL-FWD` is flushed before the start, as a policyd that
    /// flushed its rules on start-up would leave it until its first commit, and left so until
    /// a forbidden probe got through (or the round bound passed).
    Flush,
}

async fn restarts(mode: Mode, gap: Gap) {
    let mut c = setup(mode).await;
    let expected = c.expected();
    let forbidden = cells(&c, "z", "x");
    let allowed = cells(&c, "y", "x");
    assert!(
        forbidden.iter().all(|cell| !expected.cells[cell])
            && allowed.iter().all(|cell| expected.cells[cell])
    );
    let pods = c.endpoints();
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    // Leaks as they happen, so the kernel's state can be read while it still holds them.
    let (leak_tx, mut leak_rx) = tokio::sync::mpsc::unbounded_channel::<Wrong>();
    // Two probing loops: the forbidden cells with a short time-out (a leak answers within
    // milliseconds; a dropped SYN only costs the time-out), so they are probed several times a
    // second; the allowed cells with a generous one, so a slow machine is not taken for a closed
    // window.
    // Each loop counts its finished rounds, so that every restart can wait until both loops
    // have probed the window after it (restarts take ~75 ms, a forbidden round ≥ 300 ms).
    let prober = |cells: Vec<Cell>, timeout: Duration, done: Arc<AtomicU64>| {
        let (stop, pods, expected, leak_tx) = (
            stop.clone(),
            pods.clone(),
            expected.clone(),
            leak_tx.clone(),
        );
        tokio::spawn(async move {
            let (mut rounds, mut wrong) = (0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let at = t0.elapsed();
                let got = matrix::probe_cells_traced(&pods, &cells, timeout)
                    .await
                    .unwrap();
                rounds += 1;
                done.store(rounds, Ordering::Relaxed);
                // Continuous, not a busy loop that starves the daemon being restarted.
                tokio::time::sleep(Duration::from_millis(20)).await;
                for (cell, o) in got {
                    if expected.cells[&cell] != o.answered {
                        let w = Wrong {
                            at,
                            cell,
                            src_port: o.src_port,
                        };
                        if o.answered {
                            let _ = leak_tx.send(w);
                        }
                        wrong.push(w);
                    }
                }
            }
            (rounds, wrong)
        })
    };
    let (f_done, a_done) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let forbidden_prober = prober(forbidden.clone(), FORBIDDEN_PROBE, f_done.clone());
    let allowed_prober = prober(allowed.clone(), PROBE, a_done.clone());
    let mut timeline: Vec<Restart> = Vec::new();
    let mut snapshots: Vec<String> = Vec::new();
    let mut leaked = 0usize;
    for k in 0..RESTARTS {
        let node = k % 2;
        let signal = if (k / 2) % 2 == 0 {
            Signal::SIGTERM
        } else {
            Signal::SIGKILL
        };
        let r = Instant::now();
        let (f0, a0) = (
            f_done.load(Ordering::Relaxed),
            a_done.load(Ordering::Relaxed),
        );
        let stopped = t0.elapsed();
        c.stop_policyd(node, signal).await;
        if gap == Gap::Flush {
            let out = c.iptables(node, &["-F", "TRELLIS-POL-FWD"]).await;
            assert!(out.success(), "flush TRELLIS-POL-FWD: {}", out.stderr);
            // Held open until a forbidden probe got through (bounded), so the control does not
            // depend on how fast the new policyd refills.
            let deadline = Instant::now() + ROUND_WAIT;
            while leaked == 0 && Instant::now() < deadline {
                match tokio::time::timeout(Duration::from_millis(50), leak_rx.recv()).await {
                    Ok(Some(_)) => leaked += 1,
                    Ok(None) => break,
                    Err(_) => {}
                }
            }
        }
        c.start_policyd(node).await;
        let ready = r.elapsed();
        timeline.push(Restart {
            node,
            signal,
            stopped,
            ready: t0.elapsed(),
        });
        // Two more finished rounds: the second began after the stop, so it probed the gap.
        let deadline = Instant::now() + ROUND_WAIT;
        while f_done.load(Ordering::Relaxed) < f0 + 2 || a_done.load(Ordering::Relaxed) < a0 + 2 {
            assert!(
                Instant::now() < deadline,
                "the probing loops did not finish two rounds within {ROUND_WAIT:?} of restart {}",
                k + 1
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A leak: read both kernels now, while the state that let it through is still there
        // (conntrack entries, counters), for the failure message.
        while let Ok(w) = leak_rx.try_recv() {
            leaked += 1;
            if gap == Gap::None && snapshots.len() < 2 {
                let (src, dst) = (c.pods[w.cell.from].ip, c.pods[w.cell.to].ip);
                let mut flow = vec![format!("src={src} dst={dst} ")];
                if let Some(port) = w.src_port {
                    flow.push(format!("sport={port} dport={} ", w.cell.port));
                }
                let mut snap = format!(
                    "##### kernels {:?} after the probing began, just after the leak at {:?} ({})\n",
                    t0.elapsed(),
                    w.at,
                    describe(&c, &pods, &w)
                );
                for i in 0..c.nodes.len() {
                    snap.push_str(&c.snapshot(i, &flow).await);
                }
                snapshots.push(snap);
            }
        }
        eprintln!(
            "[{mode:?}] restart {}/{RESTARTS} of policyd on node {node} ({signal}, {gap:?}): ready again after {ready:?}",
            k + 1,
        );
        if gap == Gap::Flush && leaked > 0 {
            break;
        }
    }
    let done = timeline.len();
    stop.store(true, Ordering::Relaxed);
    let (f_rounds, leaks) = forbidden_prober.await.unwrap();
    let (a_rounds, blocked) = allowed_prober.await.unwrap();
    eprintln!(
        "[{mode:?}] {done} restarts ({gap:?}) in {:?}; {f_rounds} rounds over {} forbidden cells: {} succeeded; {a_rounds} rounds over {} allowed cells: {} failed",
        t0.elapsed(),
        forbidden.len(),
        leaks.len(),
        allowed.len(),
        blocked.len()
    );
    assert!(
        f_rounds >= 2 * done as u64 && a_rounds >= 2 * done as u64,
        "probing ran through the restarts ({f_rounds}, {a_rounds} rounds)"
    );
    if gap == Gap::Flush {
        assert!(
            !leaks.is_empty(),
            "with TRELLIS-POL-FWD flushed before the start, no forbidden probe got through within {ROUND_WAIT:?}: the test cannot see a restart gap"
        );
        eprintln!(
            "[{mode:?}] control: a flush before the start let {} forbidden probes through, first {}",
            leaks.len(),
            describe(&c, &pods, &leaks[0])
        );
        c.converge("after the flushed restarts", CONVERGE).await;
        c.finish();
        return;
    }
    // Everything a reader needs to tell a rule gap from a probe's fault: each wrong probe with
    // its flow's earlier probes, the restarts around it, the kernels' state, every node's
    // policyd runs.
    let report = |wrong: &[Wrong]| {
        let mut s = String::new();
        for w in wrong {
            s.push_str(&format!("{}\n", describe(&c, &pods, w)));
            for r in timeline
                .iter()
                .filter(|r| r.stopped <= w.at + FORBIDDEN_PROBE + PROBE && w.at <= r.ready + PROBE)
            {
                s.push_str(&format!(
                    "    near restart of node {} ({}): stopped at {:?}, ready at {:?}\n",
                    r.node, r.signal, r.stopped, r.ready
                ));
            }
        }
        for snap in &snapshots {
            s.push_str(snap);
        }
        for i in 0..c.nodes.len() {
            s.push_str(&c.logs_of_runs(i, 4, 12));
        }
        s
    };
    assert!(
        leaks.is_empty(),
        "forbidden connections succeeded during restarts:\n{}",
        report(&leaks)
    );
    assert!(
        blocked.is_empty(),
        "allowed connections failed during restarts (a closed window):\n{}",
        report(&blocked)
    );
    c.converge("after the restarts", CONVERGE).await;
    c.finish();
}

/// A wrong probe in words: when, the cell, its UDP flow and that flow's earlier probes by this
/// process (an earlier answered one leaves a conntrack entry that passes the same 5-tuple).
fn describe(c: &PolicyCluster, pods: &[matrix::Endpoint], w: &Wrong) -> String {
    let cell = w.cell;
    let mut s = format!(
        "{:?}: {} → {} {}/{}",
        w.at, c.pods[cell.from].key, c.pods[cell.to].key, cell.port, cell.proto
    );
    if let Some(port) = w.src_port {
        let flow = matrix::UdpFlow {
            from: pods[cell.from].ns.path().to_path_buf(),
            src_port: port,
            to: std::net::SocketAddrV4::new(pods[cell.to].ip, cell.port),
        };
        let uses: Vec<String> = matrix::udp_flow_history(&flow)
            .iter()
            .map(|u| format!("{:?} ago: answered {:?}", u.at.elapsed(), u.answered))
            .collect();
        s.push_str(&format!(
            " from source port {port}; this flow's probes by this process: [{}]",
            uses.join(", ")
        ));
    }
    s
}

/// Deletes every `FORWARD → TRELLIS-POL-FWD` jump on node `i` by its exact spec.
async fn delete_fwd_jump(c: &PolicyCluster, i: usize) {
    let rules = c.iptables(i, &["-S", "FORWARD"]).await;
    let jumps: Vec<String> = rules
        .stdout
        .lines()
        .filter(|l| policy_cluster::is_fwd_jump(l))
        .map(String::from)
        .collect();
    assert!(
        !jumps.is_empty(),
        "no FORWARD jump to TRELLIS-POL-FWD on node {i}:\n{}",
        rules.stdout
    );
    for j in jumps {
        let spec: Vec<&str> = j
            .trim_start_matches("-A FORWARD")
            .split_whitespace()
            .collect();
        let mut args = vec!["-D", "FORWARD"];
        args.extend(spec);
        let out = c.iptables(i, &args).await;
        assert!(out.success(), "iptables {args:?}: {}", out.stderr);
    }
    assert!(!c.has_fwd_jump(i).await);
}

async fn verifier(mode: Mode) {
    let c = setup(mode).await;
    // A forbidden pair whose destination is on node 0 (that node's FORWARD decides), with the
    // source on the other node.
    let dst = c.pod("x/a");
    let node = c.pods[dst].on;
    let src = (0..c.pods.len())
        .find(|i| c.pods[*i].key.starts_with("z/") && c.pods[*i].on != node)
        .unwrap();
    let cell = Cell {
        from: src,
        to: dst,
        port: 80,
        proto: netns_testbed::matrix::Proto::Tcp,
    };
    let pods = c.endpoints();
    let probe = |pods: Vec<matrix::Endpoint>| async move {
        matrix::probe_cells(&pods, &[cell], PROBE).await.unwrap()[&cell]
    };
    assert!(
        !probe(pods.clone()).await,
        "z → x/a is forbidden to begin with"
    );

    // Negative control: hold the broken state (policyd stopped, jump gone) until the forbidden
    // connection gets through.
    c.signal_policyd(node, Signal::SIGSTOP);
    delete_fwd_jump(&c, node).await;
    let t = Instant::now();
    let mut through = false;
    while t.elapsed() < Duration::from_secs(10) {
        if probe(pods.clone()).await {
            through = true;
            break;
        }
    }
    let seen = t.elapsed();
    assert!(
        through,
        "with the jump deleted (and policyd stopped), the forbidden pair never got through in 10 s: the probe cannot see a gap"
    );
    eprintln!(
        "[{mode:?}] control: jump deleted, policyd stopped → forbidden {} → {} got through after {seen:?}",
        c.pods[src].key, c.pods[dst].key
    );

    // The verifier repairs it within one period (+ margin).
    let period = c.opts.verify_period;
    let margin = Duration::from_millis(1000);
    c.signal_policyd(node, Signal::SIGCONT);
    let t = Instant::now();
    while !c.has_fwd_jump(node).await {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the verifier never restored the jump:\n{}",
            c.logs_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let restored = t.elapsed();
    eprintln!(
        "[{mode:?}] the verifier restored the FORWARD jump {restored:?} after SIGCONT (period {period:?})"
    );
    assert!(
        restored <= period + margin,
        "the jump came back after {restored:?}, more than one verify period ({period:?}) + {margin:?}"
    );
    // Only one jump, ahead of the overlay's accept.
    let rules = c.iptables(node, &["-S", "FORWARD"]).await.stdout;
    let jumps: Vec<usize> = rules
        .lines()
        .enumerate()
        .filter(|(_, l)| policy_cluster::is_fwd_jump(l))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(jumps.len(), 1, "exactly one jump:\n{rules}");
    if let Some(fwd) = rules.lines().position(|l| l.contains("-j TRELLIS-FWD")) {
        assert!(
            jumps[0] < fwd,
            "the policy jump sits ahead of the overlay's accept:\n{rules}"
        );
    }
    assert!(
        !probe(pods.clone()).await,
        "the forbidden pair is blocked again"
    );
    c.converge("after the repair", CONVERGE).await;
    c.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_restarts_open_no_gap_overlay() {
    restarts(Mode::Overlay, Gap::None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_restarts_open_no_gap_routed() {
    restarts(Mode::Routed, Gap::None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarts_that_flush_the_rules_are_caught_overlay() {
    restarts(Mode::Overlay, Gap::Flush).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verifier_restores_a_deleted_jump_within_a_period_overlay() {
    verifier(Mode::Overlay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verifier_restores_a_deleted_jump_within_a_period_routed() {
    verifier(Mode::Routed).await;
}
