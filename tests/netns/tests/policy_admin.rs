//! The admin tiers against real connections, both modes: an Admin Deny beats a NetworkPolicy
//! allow, Pass defers to NetworkPolicy, a Baseline deny is overridden by a NetworkPolicy allow;
//! and `trellis policy isolate`, `isolate --strict` and `open` (the real binary) each flip the
//! matrix within 1 s.
//!
//! The flip is timed from the command's exit to the first probing round in which every cell the
//! command changes has its new verdict, probing those cells only (short probe time-out, so a
//! loaded machine's matrix-wide probing does not count against the daemon); the whole matrix is
//! then checked against the model as everywhere else. A round takes up to one probe time-out, so
//! one changed TCP cell is also probed on its own every 50 ms from the command's exit (each
//! probe a task of its own, started on a fixed beat): its flip time — the start of the first
//! probe after the last one that still saw the old verdict — is known to about 50 ms and held
//! to the same 1 s bound. These tests run alone (nextest group `timing`, all test threads) so
//! their bound holds on a two-core machine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/overlay_cluster.rs"]
mod overlay_cluster;
#[path = "support/policy_cluster.rs"]
mod policy_cluster;
#[path = "support/routed_cluster.rs"]
mod routed_cluster;

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netns_testbed::matrix::{self, Cell, Endpoint, Proto};
use netns_testbed::policy_model::{
    Action, Cnp, CnpPort, CnpRule, CnpSel, NetworkPolicy, NpPeer, NpRule, Selector, Tier,
};
use policy_cluster::{Mode, PolicyCluster};

const CONVERGE: Duration = Duration::from_secs(15);
/// The bound for isolate/open to take effect on every node.
const FLIP: Duration = Duration::from_secs(1);
/// Probe time-out while timing a flip: allowed connections here answer within milliseconds.
const FLIP_PROBE: Duration = Duration::from_millis(300);
/// The beat of the single-cell probes that time a flip finely.
const SENTINEL_EVERY: Duration = Duration::from_millis(50);

/// What the sentinel has seen so far: (start offset, answered) of each finished probe, in the
/// order they finished.
type Seen = Arc<Mutex<Vec<(Duration, bool)>>>;

/// Probes `cell` every [`SENTINEL_EVERY`] from `since` until `stop` (10 s at most), each probe
/// a task of its own so a slow one does not shift the beat. Each result goes into `seen` as it
/// comes; the handle returns them all, by start offset, once every probe has finished.
fn sentinel(
    pods: &[Endpoint],
    cell: Cell,
    since: Instant,
    stop: Arc<AtomicBool>,
    seen: Seen,
) -> tokio::task::JoinHandle<Vec<(Duration, bool)>> {
    let from = pods[cell.from].ns.clone();
    let to = SocketAddrV4::new(pods[cell.to].ip, cell.port);
    tokio::spawn(async move {
        let mut started = Vec::new();
        let mut beat = tokio::time::interval(SENTINEL_EVERY);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        while !stop.load(Ordering::Relaxed) && since.elapsed() < Duration::from_secs(10) {
            beat.tick().await;
            let at = since.elapsed();
            let (from, seen) = (from.clone(), seen.clone());
            started.push(tokio::spawn(async move {
                let answered = matrix::probe_once(&from, to, cell.proto, FLIP_PROBE).await;
                if let Ok(v) = answered {
                    seen.lock().unwrap().push((at, v));
                }
                answered
            }));
        }
        for probe in started {
            probe.await.unwrap().unwrap();
        }
        let mut all = seen.lock().unwrap().clone();
        all.sort_by_key(|(at, _)| *at);
        all
    })
}

/// When the sentinel's cell took its `new` verdict: the start of the first probe after the
/// last one that saw the old verdict (None: no probe saw the new verdict after it).
fn flip_time(seen: &[(Duration, bool)], new: bool) -> Option<Duration> {
    let after_last_old = seen
        .iter()
        .rposition(|(_, v)| *v != new)
        .map_or(0, |i| i + 1);
    seen.get(after_last_old).map(|(at, _)| *at)
}

fn deny_from_y(tier: Tier, action: Action, name: &str, priority: u16) -> Cnp {
    Cnp {
        name: name.into(),
        tier,
        priority,
        subject: CnpSel::Namespaces(Selector::ns_name("x")),
        ingress: vec![CnpRule {
            name: format!("{action:?}-from-y"),
            action,
            peers: vec![CnpSel::Namespaces(Selector::ns_name("y"))],
            ports: Some(vec![
                CnpPort::Number(Proto::Tcp, 80),
                CnpPort::Number(Proto::Udp, 81),
            ]),
        }],
        egress: vec![],
    }
}

fn allow_all_into_x() -> NetworkPolicy {
    NetworkPolicy::new("x", "allow-all", Selector::all()).ingress(vec![NpRule {
        peers: vec![NpPeer::namespaces(Selector::all())],
        ports: vec![],
    }])
}

async fn tiers(mode: Mode) {
    let mut c = PolicyCluster::start(mode).await;
    c.apply_np(allow_all_into_x()).await;
    c.converge("NetworkPolicy: x accepts everyone", CONVERGE)
        .await;

    c.apply_cnp(deny_from_y(Tier::Admin, Action::Deny, "admin-deny", 20))
        .await;
    c.converge("an Admin Deny beats the NetworkPolicy allow", CONVERGE)
        .await;

    c.apply_cnp(deny_from_y(Tier::Admin, Action::Pass, "admin-pass", 10))
        .await;
    c.converge(
        "an earlier Admin Pass defers to the NetworkPolicy",
        CONVERGE,
    )
    .await;
    c.delete_np("x", "allow-all").await;
    c.converge("Pass with no NetworkPolicy: default allow", CONVERGE)
        .await;

    c.delete_cnp("admin-pass").await;
    c.delete_cnp("admin-deny").await;
    c.apply_cnp(deny_from_y(
        Tier::Baseline,
        Action::Deny,
        "baseline-deny",
        10,
    ))
    .await;
    c.converge(
        "a Baseline Deny applies where no NetworkPolicy isolates",
        CONVERGE,
    )
    .await;
    c.apply_np(allow_all_into_x()).await;
    c.converge(
        "a NetworkPolicy allow overrides the Baseline Deny",
        CONVERGE,
    )
    .await;
    c.delete_np("x", "allow-all").await;
    c.delete_cnp("baseline-deny").await;
    c.converge("all deleted", CONVERGE).await;
    c.finish();
}

/// Runs `trellis policy <args>`, changes the model by `change`, then times until every cell
/// whose verdict changed has its new one (probing only those); asserts ≤ 1 s and that the whole
/// matrix then matches. Returns the time.
async fn timed_flip(
    c: &mut PolicyCluster,
    args: &[&str],
    change: impl FnOnce(&mut PolicyCluster),
) -> Duration {
    let before = c.expected();
    change(c);
    let after = c.expected();
    let cells: Vec<Cell> = after.mismatches(&before);
    assert!(
        !cells.is_empty(),
        "`trellis policy {args:?}` must change something in this setup"
    );
    let kubeconfig = c.cp().kubeconfig.display().to_string();
    let mut argv = vec!["policy", "--kubeconfig", &kubeconfig];
    argv.extend_from_slice(args);
    let started = Instant::now();
    let out = c.trellis(&argv).await;
    let ran = started.elapsed();
    assert!(
        out.success(),
        "trellis {argv:?}: {}{}",
        out.stdout,
        out.stderr
    );
    let exited = Instant::now();
    let pods = c.endpoints();
    let watched = *cells
        .iter()
        .find(|cell| cell.proto == Proto::Tcp)
        .expect("a TCP cell among the changed ones");
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Seen::default();
    let fine = sentinel(&pods, watched, exited, stop.clone(), seen.clone());
    let mut rounds = 0;
    let took = loop {
        let round = exited.elapsed();
        let got = matrix::probe_cells(&pods, &cells, FLIP_PROBE)
            .await
            .unwrap();
        rounds += 1;
        if cells.iter().all(|cell| got[cell] == after.cells[cell]) {
            break round;
        }
        assert!(
            exited.elapsed() < Duration::from_secs(10),
            "`trellis {argv:?}`: {} of {} changed cells still have their old verdict after 10 s\n{}",
            cells
                .iter()
                .filter(|cell| got[*cell] != after.cells[*cell])
                .count(),
            cells.len(),
            c.logs_tail()
        );
    };
    // The sentinel goes on until two of its probes started after that round have answered
    // with the new verdict (bounded), then its own reading.
    let new = after.cells[&watched];
    let settled = exited.elapsed();
    let enough = Instant::now() + Duration::from_secs(5);
    loop {
        let confirming = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, v)| *at >= settled && *v == new)
            .count();
        if confirming >= 2 {
            break;
        }
        assert!(
            Instant::now() < enough,
            "`trellis {argv:?}`: the sentinel on {watched:?} did not see {new} twice within 5 s of the round that did: {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(SENTINEL_EVERY / 5).await;
    }
    stop.store(true, Ordering::Relaxed);
    let seen = fine.await.unwrap();
    let fine_took = flip_time(&seen, new).unwrap_or_else(|| {
        panic!("`trellis {argv:?}`: the watched cell {watched:?} never settled on {new}: {seen:?}")
    });
    eprintln!(
        "[{:?}] `trellis policy {}` (ran {ran:?}): {} cells flipped {took:?} after it exited ({rounds} probing rounds); one cell, probed every {SENTINEL_EVERY:?}: {fine_took:?}",
        c.mode,
        args.join(" "),
        cells.len()
    );
    c.converge(
        &format!("after `trellis policy {}`", args.join(" ")),
        CONVERGE,
    )
    .await;
    assert!(
        took <= FLIP,
        "`trellis policy {}` took {took:?} (> {FLIP:?}) to take effect",
        args.join(" ")
    );
    assert!(
        fine_took <= FLIP,
        "`trellis policy {}`: cell {watched:?} took {fine_took:?} (> {FLIP:?}) to flip: {seen:?}",
        args.join(" ")
    );
    took.max(fine_took)
}

async fn isolate_and_open(mode: Mode) {
    let mut c = PolicyCluster::start(mode).await;
    let t1 = timed_flip(&mut c, &["isolate", "x"], |c| {
        c.world.cnps.push(Cnp::isolate("x", false))
    })
    .await;
    assert_eq!(c.cnp_names().await, ["trellis-isolate-x"]);

    // A NetworkPolicy opens plain isolation to y (not timed: not an admin command).
    c.apply_np(
        NetworkPolicy::new("x", "from-y", Selector::all()).ingress(vec![NpRule {
            peers: vec![NpPeer::namespaces(Selector::eq("ns", "y"))],
            ports: vec![],
        }]),
    )
    .await;
    c.converge("plain isolation opened to y by a NetworkPolicy", CONVERGE)
        .await;

    let t2 = timed_flip(&mut c, &["isolate", "x", "--strict"], |c| {
        c.world.cnps.retain(|p| p.name != "trellis-isolate-x");
        c.world.cnps.push(Cnp::isolate("x", true));
    })
    .await;
    assert_eq!(c.cnp_names().await, ["trellis-isolate-strict-x"]);

    let t3 = timed_flip(&mut c, &["open", "x"], |c| c.world.cnps.clear()).await;
    assert!(c.cnp_names().await.is_empty());
    eprintln!(
        "[{mode:?}] flips: isolate {t1:?}, isolate --strict {t2:?}, open {t3:?} (bound {FLIP:?})"
    );
    c.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_tiers_overlay() {
    tiers(Mode::Overlay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_tiers_routed() {
    tiers(Mode::Routed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn isolate_strict_and_open_flip_within_1s_overlay() {
    isolate_and_open(Mode::Overlay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn isolate_strict_and_open_flip_within_1s_routed() {
    isolate_and_open(Mode::Routed).await;
}
