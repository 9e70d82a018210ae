//! BGP convergence (issue 7, benchmark (a); issue 18: withdrawal too): N nodes (default 20) in
//! namespaces on one testbed underlay, iBGP full mesh in AS 64512, each announcing its own /26.
//! A round announces a new /26 on one node and measures the time until the route is in every
//! other node's kernel, then withdraws it again and measures the time until it has left every
//! other node's kernel (polling all kernels' main tables, all at once, every millisecond,
//! bounded; the mean sweep time is printed as the resolution). The same topology and the same rounds run twice: with
//! `trellis bgp-agent` on every node, then with BIRD 2 on every node (the new block is a static
//! blackhole route, exported to the kernel too as Calico's BIRD does, added with
//! `birdc configure`; withdrawn by removing the static and `birdc configure` again). Ours and
//! BIRD's median and p90 are printed side by side with the ratio, one table for announcement
//! and one for withdrawal. The four steps of a round alternate between the sides (ours
//! announces, BIRD announces, ours withdraws, BIRD withdraws).
//! The clock starts just before the change is made: for BIRD that includes starting `birdc`
//! (a few ms), for ours only writing a file and sending a signal.
//!
//!     cargo bench -p netns-testbed --bench bgp-convergence [-- --nodes 20 --rounds 20]
//!         [--reflectors N] [--trellis PATH] [--only ours|bird] [--logs DIR]
//!
//! `--reflectors N` (issue 18): no mesh; nodes n1..nN are route reflectors with one cluster id
//! (peered with each other as non-clients), every other node a client of each reflector (and
//! peered with the reflectors only). Ours: the reflectors run with `--cluster-id` and
//! `--rr-client` for each client (standalone, as README's route-reflector section says);
//! BIRD: `rr client` and `rr cluster id` on the reflectors' client sessions. The new block is
//! announced on a client (the clients in turn) and timed until it is in (or has left) every
//! other client's kernel; the reflectors' kernels are not waited for.
//!
//! Our side needs a live announcement interface: the agent is started with
//! `--announce-file PATH` (prefixes one a line, in addition to `--announce`), and a round
//! rewrites that file atomically (with the new block, then without it), then sends the agent SIGHUP when its `--help` mentions SIGHUP
//! (otherwise the agent is assumed to watch the file). An agent without `--announce-file` is
//! reported as not measurable; restarting an agent with one more `--announce` would measure
//! session set-up, not propagation.
//!
//! Needs root, bird2 and the `trellis` binary (`cargo build --release -p trellis`, or pass
//! `--trellis target/debug/trellis`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};
use netns_testbed::bird::{
    Agent, AgentSpec, Bird, BirdConfig, BirdPeer, PROTO_BIRD, kernel_has, offers_flag,
};
use netns_testbed::{Node, Testbed, bin_path, require_root, require_tool};
use trellis_net::proto::BGP as PROTO_TRELLIS;
use trellis_net::{Family, Handle, Route};

const ASN: u32 = 64512;
const LIFETIME: Duration = Duration::from_secs(900);
/// Bound of one round's propagation.
const ROUND_LIMIT: Duration = Duration::from_secs(30);
/// The reflectors' cluster id in `--reflectors` mode.
const CLUSTER_ID: std::net::Ipv4Addr = std::net::Ipv4Addr::new(244, 0, 0, 1);

/// Who peers with whom: the iBGP full mesh, or `reflectors` route reflectors (nodes
/// `0..reflectors`) with every other node a client of each.
#[derive(Clone, Copy)]
struct Topology {
    n: usize,
    reflectors: usize,
}

impl Topology {
    fn is_reflector(&self, i: usize) -> bool {
        i < self.reflectors
    }

    /// Node `i`'s peers (indices).
    fn peers(&self, i: usize) -> Vec<usize> {
        (0..self.n)
            .filter(|j| *j != i)
            .filter(|j| self.reflectors == 0 || self.is_reflector(i) || self.is_reflector(*j))
            .collect()
    }

    /// The nodes a round's new block is announced on, in turn (the clients with reflectors).
    fn origins(&self) -> Vec<usize> {
        (self.reflectors..self.n).collect()
    }

    /// The kernels a round waits for: every other node (every other client with reflectors).
    fn targets(&self, origin: usize) -> Vec<usize> {
        (self.reflectors..self.n).filter(|i| *i != origin).collect()
    }

    fn describe(&self) -> String {
        if self.reflectors == 0 {
            format!("{} nodes, iBGP full mesh AS {ASN}", self.n)
        } else {
            format!(
                "{} nodes, {} route reflectors (cluster id {CLUSTER_ID}) + {} clients, AS {ASN}",
                self.n,
                self.reflectors,
                self.n - self.reflectors
            )
        }
    }
}

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

fn block(i: usize) -> Ipv4Net {
    format!("10.244.{i}.0/26").parse().unwrap()
}

/// The block announced in round `r` (outside every node's own block).
fn new_block(r: usize) -> Ipv4Net {
    format!("10.245.{}.{}/26", r / 4, (r % 4) * 64)
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

/// What one side measured for one kind of change: per round, ms until the first and until the
/// last other kernel had the route (announcement) or had lost it (withdrawal).
#[derive(Default)]
struct Series {
    first: Vec<f64>,
    all: Vec<f64>,
    /// Mean polling sweep per round (ms).
    sweep: Vec<f64>,
}

async fn make_nodes(tb: &Testbed, n: usize) -> Vec<Node> {
    let mut nodes = Vec::new();
    for i in 1..=n {
        nodes.push(tb.add_node(&format!("n{i}"), i as u8).await.unwrap());
    }
    nodes
}

/// Waits (bounded) until every node's kernel routes every other node's block (`proto`).
async fn wait_mesh(handles: &[Handle], n: usize, proto: u8, limit: Duration) {
    let start = Instant::now();
    loop {
        let mut missing = 0;
        for (i, h) in handles.iter().enumerate() {
            let routes = h.routes(Family::V4, Some(Route::TABLE_MAIN)).await.unwrap();
            missing += (1..=n)
                .filter(|j| *j != i + 1)
                .filter(|j| {
                    !kernel_has(&routes, block(*j), netns_testbed::bird::Want::Proto(proto))
                })
                .count();
        }
        if missing == 0 {
            eprintln!(
                "  every node has every block after {:.1} s",
                start.elapsed().as_secs_f64()
            );
            return;
        }
        assert!(
            start.elapsed() < limit,
            "the mesh did not converge within {limit:?}: {missing} routes missing"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Both kinds of change a round makes.
#[derive(Default)]
struct Figures {
    announce: Series,
    withdraw: Series,
}

/// Polls the kernels of `targets` (all of them at once, then again after 1 ms) until each
/// routes `prefix` (`proto`) — or, with `present` false, until none does; returns ms since `t0`
/// until the first and until the last got there, and the mean time of one polling sweep (the
/// resolution of the figures).
async fn propagation(
    handles: &[Handle],
    targets: Vec<usize>,
    prefix: Ipv4Net,
    proto: u8,
    present: bool,
    t0: Instant,
) -> (f64, f64, f64) {
    let dst = IpNet::V4(prefix);
    let mut pending = targets;
    let mut first = None;
    let (mut sweeps, mut swept) = (0u32, Duration::ZERO);
    loop {
        let sweep = Instant::now();
        let found = futures::future::join_all(pending.iter().map(|&i| async move {
            let routes = handles[i]
                .routes(Family::V4, Some(Route::TABLE_MAIN))
                .await
                .unwrap();
            routes.iter().any(|r| r.dst == dst && r.protocol == proto) == present
        }))
        .await;
        sweeps += 1;
        swept += sweep.elapsed();
        if found.iter().any(|f| *f) && first.is_none() {
            first = Some(t0.elapsed());
        }
        pending = pending
            .into_iter()
            .zip(found)
            .filter(|(_, f)| !f)
            .map(|(i, _)| i)
            .collect();
        if pending.is_empty() {
            let all = t0.elapsed();
            return (
                first.unwrap_or(all).as_secs_f64() * 1e3,
                all.as_secs_f64() * 1e3,
                swept.as_secs_f64() * 1e3 / f64::from(sweeps),
            );
        }
        assert!(
            t0.elapsed() < ROUND_LIMIT,
            "{prefix} was not {} nodes {pending:?} within {ROUND_LIMIT:?}",
            if present { "in" } else { "withdrawn from" }
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// One side of the comparison, set up and converged: its speakers and a netlink handle per
/// node.
struct Side<'a> {
    name: &'static str,
    proto: u8,
    handles: Vec<Handle>,
    topology: Topology,
    speakers: Speakers<'a>,
    figures: Figures,
}

enum Speakers<'a> {
    Bird(Vec<Bird<'a>>),
    /// The agents, what each announces through its file, whether to send SIGHUP.
    Ours(Vec<Agent<'a>>, Vec<Vec<Ipv4Net>>, bool),
}

impl Side<'_> {
    /// Round `r`: a new block on node `r % n`, timed until it is in every other kernel.
    async fn round(&mut self, r: usize) {
        let origins = self.topology.origins();
        let k = origins[r % origins.len()];
        let prefix = new_block(r);
        let t0;
        match &mut self.speakers {
            Speakers::Bird(birds) => {
                let mut c = birds[k].config().clone();
                c.statics.push(prefix);
                t0 = Instant::now();
                birds[k].reconfigure(c).await.unwrap();
            }
            Speakers::Ours(agents, announced, sighup) => {
                announced[k].push(prefix);
                t0 = Instant::now();
                agents[k].set_announced(&announced[k], *sighup).unwrap();
            }
        }
        let targets = self.topology.targets(k);
        let (first, all, sweep) =
            propagation(&self.handles, targets, prefix, self.proto, true, t0).await;
        eprintln!(
            "  {:<5} round {r}: {prefix} from n{}: first {first:.1} ms, all {all:.1} ms (poll sweep {sweep:.2} ms)",
            self.name,
            k + 1
        );
        self.figures.announce.push(first, all, sweep);
    }

    /// Round `r`'s block withdrawn again, timed until it has left every other kernel.
    async fn withdraw(&mut self, r: usize) {
        let origins = self.topology.origins();
        let k = origins[r % origins.len()];
        let prefix = new_block(r);
        let t0;
        match &mut self.speakers {
            Speakers::Bird(birds) => {
                let mut c = birds[k].config().clone();
                c.statics.retain(|p| *p != prefix);
                t0 = Instant::now();
                birds[k].reconfigure(c).await.unwrap();
            }
            Speakers::Ours(agents, announced, sighup) => {
                announced[k].retain(|p| *p != prefix);
                t0 = Instant::now();
                agents[k].set_announced(&announced[k], *sighup).unwrap();
            }
        }
        let targets = self.topology.targets(k);
        let (first, all, sweep) =
            propagation(&self.handles, targets, prefix, self.proto, false, t0).await;
        eprintln!(
            "  {:<5} round {r}: {prefix} withdrawn from n{}: first {first:.1} ms, all {all:.1} ms (poll sweep {sweep:.2} ms)",
            self.name,
            k + 1
        );
        self.figures.withdraw.push(first, all, sweep);
    }
}

impl Series {
    fn push(&mut self, first: f64, all: f64, sweep: f64) {
        self.first.push(first);
        self.all.push(all);
        self.sweep.push(sweep);
    }
}

async fn bird_side(tb: &Testbed, t: Topology) -> Side<'_> {
    require_tool("bird", "bird2");
    let n = t.n;
    let nodes = make_nodes(tb, n).await;
    let mut birds = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut c = BirdConfig::new(node, ASN).announce(block(i + 1));
        // The default hold time, as a real mesh runs; the node's own blocks blackholed in its
        // kernel, as Calico's BIRD and our agent do.
        c.hold_time = 90;
        c.kernel_export_static = true;
        if t.is_reflector(i) {
            c = c.route_reflector(CLUSTER_ID);
        }
        for j in t.peers(i) {
            let mut p = BirdPeer::new(&format!("n{}", j + 1), nodes[j].ip, ASN);
            if t.is_reflector(i) {
                p = if t.is_reflector(j) {
                    // Another reflector: a non-client, and what it reflects keeps its next hop.
                    BirdPeer {
                        next_hop_self: false,
                        ..p
                    }
                } else {
                    p.rr_client()
                };
            }
            c = c.peer(p);
        }
        birds.push(Bird::start(tb, node, c, LIFETIME).await.unwrap());
    }
    for b in &birds {
        b.wait_all_established(Duration::from_secs(90))
            .await
            .unwrap();
    }
    let handles: Vec<Handle> = nodes.iter().map(|n| n.ns.connect().unwrap()).collect();
    wait_mesh(&handles, n, PROTO_BIRD, Duration::from_secs(60)).await;
    Side {
        name: "bird",
        proto: PROTO_BIRD,
        handles,
        topology: t,
        speakers: Speakers::Bird(birds),
        figures: Figures::default(),
    }
}

async fn our_side<'a>(tb: &'a Testbed, t: Topology, trellis: &Path) -> Result<Side<'a>, String> {
    let n = t.n;
    let help = std::process::Command::new(trellis)
        .args(["bgp-agent", "--help"])
        .output()
        .map_err(|e| format!("{}: {e}", trellis.display()))?;
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    if !offers_flag(&help, "--announce-file") {
        return Err(format!(
            "`{} bgp-agent` has no --announce-file (no live announcement interface)",
            trellis.display()
        ));
    }
    let sighup = help.contains("SIGHUP");
    let nodes = make_nodes(tb, n).await;
    let mut agents = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let file = tb.state_dir().join(format!("announce-n{}", i + 1));
        std::fs::write(&file, "").unwrap();
        let mut spec = AgentSpec::new(ASN).announce(block(i + 1));
        spec.hold_time = 90;
        spec.announce_file = Some(file);
        if t.is_reflector(i) {
            spec.extra = vec!["--cluster-id".into(), CLUSTER_ID.to_string()];
        }
        for j in t.peers(i) {
            spec = spec.peer(nodes[j].ip, ASN);
            if t.is_reflector(i) && !t.is_reflector(j) {
                spec.extra
                    .extend(["--rr-client".to_string(), nodes[j].ip.to_string()]);
            }
        }
        agents.push(
            Agent::start_with(tb, node, spec, LIFETIME, trellis)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    for (i, a) in agents.iter().enumerate() {
        for j in t.peers(i) {
            a.wait_established(nodes[j].ip, Duration::from_secs(90))
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    let handles: Vec<Handle> = nodes.iter().map(|n| n.ns.connect().unwrap()).collect();
    wait_mesh(&handles, n, PROTO_TRELLIS, Duration::from_secs(60)).await;
    Ok(Side {
        name: "ours",
        proto: PROTO_TRELLIS,
        handles,
        topology: t,
        speakers: Speakers::Ours(agents, vec![Vec::new(); n], sighup),
        figures: Figures::default(),
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    require_root();
    // Ctrl-C drops the run, and with it every namespace and process it made.
    tokio::select! {
        () = run() => {}
        _ = tokio::signal::ctrl_c() => eprintln!("interrupted; cleaned up"),
    }
}

async fn run() {
    let n = num("--nodes", 20).clamp(2, 200);
    let rounds = num("--rounds", 20).max(1);
    // At least two clients: one announces, another one's kernel is waited for.
    let reflectors = num("--reflectors", 0).min(n.saturating_sub(2));
    let topology = Topology { n, reflectors };
    let only = arg("--only");
    let trellis = arg("--trellis")
        .map(PathBuf::from)
        .unwrap_or_else(|| bin_path("trellis"));

    // Both meshes stay up side by side (idle between rounds), and the rounds alternate between
    // them, so a machine busy with something else hurts both alike.
    let (tb_ours, tb_bird) = (Testbed::new().unwrap(), Testbed::new().unwrap());
    let mut ours = None;
    if only.as_deref() != Some("bird") {
        eprintln!(
            "trellis bgp-agent ({}), {}…",
            trellis.display(),
            topology.describe()
        );
        ours = Some(our_side(&tb_ours, topology, &trellis).await);
    }
    let mut bird = None;
    if only.as_deref() != Some("ours") {
        eprintln!("BIRD, {}…", topology.describe());
        bird = Some(bird_side(&tb_bird, topology).await);
    }
    for r in 0..rounds {
        if let Some(Ok(side)) = ours.as_mut() {
            side.round(r).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if let Some(side) = bird.as_mut() {
            side.round(r).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if let Some(Ok(side)) = ours.as_mut() {
            side.withdraw(r).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if let Some(side) = bird.as_mut() {
            side.withdraw(r).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // `--logs DIR`: every agent's log kept (with `RUST_LOG=info,bgp_timing=debug`, the
    // timestamps of each step of the propagation path).
    if let (Some(dir), Some(Ok(side))) = (arg("--logs"), ours.as_ref())
        && let Speakers::Ours(agents, _, _) = &side.speakers
    {
        std::fs::create_dir_all(&dir).unwrap();
        for (i, a) in agents.iter().enumerate() {
            std::fs::write(Path::new(&dir).join(format!("n{}.log", i + 1)), a.log()).unwrap();
        }
    }
    let (node, other) = if reflectors == 0 {
        ("node", "every other node's kernel")
    } else {
        ("client", "every other client's kernel")
    };
    for (what, pick) in [
        (
            format!("a new /26 on one {node} until it is in {other}"),
            announced as fn(&Figures) -> &Series,
        ),
        (
            format!("the /26 withdrawn again until it has left {other}"),
            withdrawn,
        ),
    ] {
        report(&topology, rounds, &what, pick, &ours, &bird);
    }
}

fn announced(f: &Figures) -> &Series {
    &f.announce
}

fn withdrawn(f: &Figures) -> &Series {
    &f.withdraw
}

/// One table: both sides' figures for one kind of change, and the ratios.
fn report(
    topology: &Topology,
    rounds: usize,
    what: &str,
    pick: fn(&Figures) -> &Series,
    ours: &Option<Result<Side<'_>, String>>,
    bird: &Option<Side<'_>>,
) {
    println!(
        "bgp-convergence: {}, {rounds} rounds: {what}",
        topology.describe()
    );
    println!(
        "{:<20} {:>12} {:>12} {:>18} {:>14}",
        "speaker", "median ms", "p90 ms", "first kernel ms", "poll sweep ms"
    );
    let row = |name: &str, f: &Series| {
        println!(
            "{:<20} {:>12.1} {:>12.1} {:>18.1} {:>14.2}",
            name,
            percentile(&f.all, 50.0),
            percentile(&f.all, 90.0),
            percentile(&f.first, 50.0),
            percentile(&f.sweep, 50.0)
        );
    };
    match ours {
        Some(Ok(side)) => row("trellis bgp-agent", pick(&side.figures)),
        Some(Err(e)) => println!("{:<20} not measured: {e}", "trellis bgp-agent"),
        None => {}
    }
    if let Some(side) = bird {
        row("BIRD 2", pick(&side.figures));
    }
    if let (Some(Ok(o)), Some(b)) = (ours, bird) {
        let (o, b) = (pick(&o.figures), pick(&b.figures));
        println!(
            "trellis / BIRD: median {:.2}x, p90 {:.2}x (goal ≤ 0.9)",
            percentile(&o.all, 50.0) / percentile(&b.all, 50.0).max(1e-9),
            percentile(&o.all, 90.0) / percentile(&b.all, 90.0).max(1e-9)
        );
    }
}
