//! Reachability probes for the policy tests: servers in a pod's namespace that answer on TCP,
//! UDP and SCTP ports, a client probe with a short bound, and parallel probing of a whole
//! matrix (every ordered pair of pods × ports × protocols) with bounded concurrency.
//!
//! A probe says "allowed" only when the server answered: a TCP or SCTP connection that completes
//! its handshake *and* delivers the server's greeting, a UDP datagram echoed back. Anything else
//! (time-out, reset, ICMP error) is "denied".
//!
//! A probe must be a new flow to the kernels between: an earlier allowed flow's conntrack entry
//! (UDP: 30 s after its last packet, 120 s once it is a stream) lets a later datagram with the
//! same 5-tuple through as ESTABLISHED, whatever the rules say now. The kernel picks a UDP
//! socket's source port at random from ~28,000, so over thousands of probes a port repeats; every
//! UDP probe's flow is therefore logged ([`udp_flow_history`]) and a port this process used
//! towards the same destination within [`UDP_FLOW_QUARANTINE`] is never given out again. TCP
//! needs no log: the kernel moves the source port on per destination, and a SYN meeting an old
//! entry is a new connection to conntrack.
//!
//! Servers and probes run on the test's tokio runtime (the sockets are created inside the pod's
//! namespace and keep it); servers end when their [`ProbeServers`] is dropped, and at the latest
//! after the lifetime given, so nothing outlives the test.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trellis_net::Netns;

use crate::{Error, Result};

/// A transport protocol a policy can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    /// The name Kubernetes objects use (`TCP`, `UDP`, `SCTP`).
    pub fn as_k8s(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Sctp => "SCTP",
        }
    }

    /// Lower case, as in the upstream conformance's container port names (`serve-80-tcp`).
    pub fn lower(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_k8s())
    }
}

/// What a TCP or SCTP server says to every connection; the client waits for it.
const GREETING: &[u8] = b"ok\n";

/// Whether this kernel gives out SCTP sockets (without loading a module: we only try to open
/// one). The machines these tests were written on have no SCTP, so SCTP is covered by the
/// policy model and the compiled rules only; where it exists the matrix probes it too.
pub fn sctp_available() -> bool {
    sctp_socket().is_ok()
}

fn sctp_socket() -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, socket};
    socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        SockProtocol::Sctp,
    )
    .map_err(std::io::Error::from)
}

/// The protocols the matrix probes on this machine: TCP and UDP always, SCTP where the kernel
/// has it.
pub fn probed_protocols() -> Vec<Proto> {
    let mut p = vec![Proto::Tcp, Proto::Udp];
    if sctp_available() {
        p.push(Proto::Sctp);
    }
    p
}

/// Servers in one namespace, answering on every port × protocol given, on all its addresses.
/// Each serves any number of connections at once (accepting never waits for a client); they
/// stop when this is dropped or their lifetime ends.
pub struct ProbeServers {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Connections accepted and datagrams received so far (counted before each answer).
    pub served: Arc<AtomicU64>,
}

enum Listening {
    Stream(std::net::TcpListener),
    Datagram(std::net::UdpSocket),
}

impl ProbeServers {
    /// Binds every port × protocol in `ns` (0.0.0.0) and serves them on the current runtime
    /// for at most `lifetime`.
    pub fn start(
        ns: &Netns,
        ports: &[u16],
        protos: &[Proto],
        lifetime: Duration,
    ) -> Result<ProbeServers> {
        let wanted: Vec<(u16, Proto)> = ports
            .iter()
            .flat_map(|p| protos.iter().map(move |q| (*p, *q)))
            .collect();
        let bound = ns.run(|| {
            wanted
                .iter()
                .map(|(port, proto)| bind(*port, *proto))
                .collect::<std::io::Result<Vec<_>>>()
        })?;
        let sockets =
            bound.map_err(|e| Error::io(format!("bind the probe servers in {}", ns.name()), e))?;
        let served = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for s in sockets {
            let served = served.clone();
            let task: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = match s {
                Listening::Stream(l) => {
                    let l = tokio::net::TcpListener::from_std(l)
                        .map_err(|e| Error::io("register a probe listener", e))?;
                    Box::pin(serve_stream(l, served))
                }
                Listening::Datagram(u) => {
                    let u = tokio::net::UdpSocket::from_std(u)
                        .map_err(|e| Error::io("register a probe socket", e))?;
                    Box::pin(serve_datagram(u, served))
                }
            };
            tasks.push(tokio::spawn(async move {
                let _ = tokio::time::timeout(lifetime, task).await;
            }));
        }
        Ok(ProbeServers { tasks, served })
    }
}

impl Drop for ProbeServers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn bind(port: u16, proto: Proto) -> std::io::Result<Listening> {
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    Ok(match proto {
        Proto::Tcp => {
            let l = std::net::TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            Listening::Stream(l)
        }
        Proto::Udp => {
            let u = std::net::UdpSocket::bind(addr)?;
            u.set_nonblocking(true)?;
            Listening::Datagram(u)
        }
        Proto::Sctp => {
            use nix::sys::socket::{Backlog, SockaddrIn, bind, listen};
            let fd = sctp_socket().map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("SCTP socket (this kernel has no SCTP support?): {e}"),
                )
            })?;
            bind(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                &SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)),
            )?;
            listen(&fd, Backlog::new(512).unwrap_or(Backlog::MAXCONN))?;
            // A one-to-one SCTP socket takes accept/read/write like a TCP one.
            Listening::Stream(std::net::TcpListener::from(fd))
        }
    })
}

async fn serve_stream(l: tokio::net::TcpListener, served: Arc<AtomicU64>) {
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            continue;
        };
        // Counted before the answer goes out: a client that has its answer is always counted
        // (counting after the write raced the test that reads the count).
        served.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), s.write_all(GREETING)).await;
        });
    }
}

async fn serve_datagram(u: tokio::net::UdpSocket, served: Arc<AtomicU64>) {
    let mut buf = [0u8; 512];
    loop {
        let Ok((n, peer)) = u.recv_from(&mut buf).await else {
            continue;
        };
        served.fetch_add(1, Ordering::SeqCst);
        let _ = u.send_to(&buf[..n], peer).await;
    }
}

/// One probe: from a source namespace to `to` over `proto`.
#[derive(Debug, Clone)]
pub struct Probe {
    pub from: Arc<Netns>,
    pub to: SocketAddrV4,
    pub proto: Proto,
}

/// How long a UDP flow stays out of use after a probe of it started: longer than conntrack
/// keeps a UDP entry after its last packet (`nf_conntrack_udp_timeout` 30 s,
/// `nf_conntrack_udp_timeout_stream` 120 s), with a margin for the probe's own length.
pub const UDP_FLOW_QUARANTINE: Duration = Duration::from_secs(180);

/// How many source ports a UDP probe tries before it gives up finding an unused flow (the kernel
/// draws them at random from ~28,000; a test uses a few hundred per destination).
const UDP_PORT_TRIES: usize = 64;

/// A UDP probe's flow as conntrack keys it: the source namespace (whose address is the
/// source), the source port the kernel gave the probe, the destination.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UdpFlow {
    pub from: PathBuf,
    pub src_port: u16,
    pub to: SocketAddrV4,
}

/// One probe of a flow: when it started, and whether it was answered (None while it runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowUse {
    pub at: Instant,
    pub answered: Option<bool>,
}

/// Every UDP flow this process probed within the quarantine, with its uses.
static UDP_FLOWS: Mutex<BTreeMap<UdpFlow, Vec<FlowUse>>> = Mutex::new(BTreeMap::new());

/// The log's size at which it is next pruned of flows older than the quarantine.
static PRUNE_AT: AtomicUsize = AtomicUsize::new(4096);

/// Whether a quarantined flow is refused ([`udp_flow_reuse`] switches it off for a control).
static QUARANTINE: AtomicBool = AtomicBool::new(true);

fn flows() -> std::sync::MutexGuard<'static, BTreeMap<UdpFlow, Vec<FlowUse>>> {
    UDP_FLOWS.lock().unwrap_or_else(|p| p.into_inner())
}

/// The probes of `flow` this process made within the quarantine, oldest first.
pub fn udp_flow_history(flow: &UdpFlow) -> Vec<FlowUse> {
    flows().get(flow).cloned().unwrap_or_default()
}

/// Every flow with its probes this process made within the quarantine (for diagnostics).
pub fn udp_flow_log() -> Vec<(UdpFlow, Vec<FlowUse>)> {
    flows()
        .iter()
        .map(|(f, u)| (f.clone(), u.clone()))
        .collect()
}

/// Lets UDP probes reuse flows (`true`) or not (`false`, the default). Only for a negative
/// control that shows what the quarantine prevents; process-wide.
pub fn udp_flow_reuse(allow: bool) {
    QUARANTINE.store(!allow, Ordering::SeqCst);
}

/// Binds UDP sockets with `bind` until one's source port gives a flow to `to` that this process
/// has not probed within the quarantine; records the flow as in use. The sockets refused stay
/// bound until the choice is made, so the kernel cannot hand their ports out again meanwhile.
fn fresh_udp_flow(
    from: &Path,
    to: SocketAddrV4,
    mut bind: impl FnMut() -> std::io::Result<std::net::UdpSocket>,
) -> std::io::Result<(std::net::UdpSocket, UdpFlow, Instant)> {
    let mut refused = Vec::new();
    for _ in 0..UDP_PORT_TRIES {
        let u = bind()?;
        let flow = UdpFlow {
            from: from.to_path_buf(),
            src_port: u.local_addr()?.port(),
            to,
        };
        let now = Instant::now();
        let mut log = flows();
        let recent = log.get(&flow).is_some_and(|uses| {
            uses.iter()
                .any(|u| now.duration_since(u.at) < UDP_FLOW_QUARANTINE)
        });
        if recent && QUARANTINE.load(Ordering::SeqCst) {
            refused.push(u);
            continue;
        }
        // Forget what no longer matters whenever the log doubled (bounded memory and work over
        // a long test).
        if log.len() > PRUNE_AT.load(Ordering::Relaxed) {
            log.retain(|_, uses| {
                uses.retain(|u| now.duration_since(u.at) < UDP_FLOW_QUARANTINE);
                !uses.is_empty()
            });
            PRUNE_AT.store((2 * log.len()).max(4096), Ordering::Relaxed);
        }
        log.entry(flow.clone()).or_default().push(FlowUse {
            at: now,
            answered: None,
        });
        return Ok((u, flow, now));
    }
    Err(std::io::Error::other(format!(
        "no UDP source port in {from:?} gave a flow to {to} unused for {UDP_FLOW_QUARANTINE:?} \
         in {UDP_PORT_TRIES} tries"
    )))
}

/// Records the outcome of the last use of `flow` that started at `at`.
fn record_udp_outcome(flow: &UdpFlow, at: Instant, answered: bool) {
    if let Some(u) = flows()
        .get_mut(flow)
        .and_then(|uses| uses.iter_mut().rev().find(|u| u.at == at))
    {
        u.answered = Some(answered);
    }
}

/// A client socket made inside the source namespace, not yet connected.
enum ClientSocket {
    Stream(tokio::net::TcpSocket),
    /// With its flow and when the flow was taken (for the flow log).
    Datagram(std::net::UdpSocket, UdpFlow, Instant),
}

fn client_socket(proto: Proto, from: &Path, to: SocketAddrV4) -> std::io::Result<ClientSocket> {
    Ok(match proto {
        Proto::Tcp => ClientSocket::Stream(tokio::net::TcpSocket::new_v4()?),
        Proto::Udp => {
            let (u, flow, at) = fresh_udp_flow(from, to, || {
                std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
            })?;
            u.set_nonblocking(true)?;
            ClientSocket::Datagram(u, flow, at)
        }
        Proto::Sctp => {
            let fd = sctp_socket()?;
            ClientSocket::Stream(tokio::net::TcpSocket::from_std_stream(
                std::net::TcpStream::from(fd),
            ))
        }
    })
}

/// What one probe saw: whether the server answered, and for UDP the source port it used (the
/// flow is in [`udp_flow_history`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub answered: bool,
    pub src_port: Option<u16>,
}

/// Runs every probe, at most `concurrency` at once, each bounded by `timeout`; true where the
/// server answered. Sockets are made with one namespace entry per source namespace, so a full
/// matrix costs a handful of thread switches, not one per probe.
pub async fn probe_all(
    probes: &[Probe],
    timeout: Duration,
    concurrency: usize,
) -> Result<Vec<bool>> {
    Ok(probe_all_traced(probes, timeout, concurrency)
        .await?
        .into_iter()
        .map(|o| o.answered)
        .collect())
}

/// [`probe_all`], with each probe's [`Outcome`].
pub async fn probe_all_traced(
    probes: &[Probe],
    timeout: Duration,
    concurrency: usize,
) -> Result<Vec<Outcome>> {
    // Group by source namespace (by path: the same Netns may be shared by several probes).
    let mut by_ns: BTreeMap<std::path::PathBuf, Vec<usize>> = BTreeMap::new();
    for (i, p) in probes.iter().enumerate() {
        by_ns
            .entry(p.from.path().to_path_buf())
            .or_default()
            .push(i);
    }
    let mut sockets: Vec<Option<ClientSocket>> = (0..probes.len()).map(|_| None).collect();
    for idx in by_ns.values() {
        let ns = &probes[idx[0]].from;
        let made = ns.run(|| {
            idx.iter()
                .map(|i| client_socket(probes[*i].proto, ns.path(), probes[*i].to))
                .collect::<std::io::Result<Vec<_>>>()
        })?;
        let made =
            made.map_err(|e| Error::io(format!("make probe sockets in {}", ns.name()), e))?;
        for (i, s) in idx.iter().zip(made) {
            sockets[*i] = Some(s);
        }
    }
    // Owned jobs (no borrow in the futures), so a caller may run this in a spawned task.
    let jobs: Vec<_> = sockets
        .into_iter()
        .zip(probes.iter().map(|p| p.to))
        .enumerate()
        .map(|(i, (s, to))| async move {
            let flow = match &s {
                Some(ClientSocket::Datagram(_, flow, at)) => Some((flow.clone(), *at)),
                _ => None,
            };
            let ok = match s {
                Some(s) => tokio::time::timeout(timeout, answer(s, to))
                    .await
                    .unwrap_or(false),
                None => false,
            };
            if let Some((flow, at)) = &flow {
                record_udp_outcome(flow, *at, ok);
            }
            let src_port = flow.map(|(f, _)| f.src_port);
            (
                i,
                Outcome {
                    answered: ok,
                    src_port,
                },
            )
        })
        .collect();
    let mut out = vec![
        Outcome {
            answered: false,
            src_port: None
        };
        probes.len()
    ];
    let mut results = futures::stream::iter(jobs).buffer_unordered(concurrency.max(1));
    while let Some((i, o)) = results.next().await {
        out[i] = o;
    }
    Ok(out)
}

/// Whether the server at `to` answers through `s`; unbounded here, the caller bounds it.
async fn answer(s: ClientSocket, to: SocketAddrV4) -> bool {
    match s {
        ClientSocket::Stream(s) => {
            let Ok(mut c) = s.connect(to.into()).await else {
                return false;
            };
            let mut buf = [0u8; 3];
            c.read_exact(&mut buf).await.is_ok() && buf == GREETING
        }
        ClientSocket::Datagram(u, _, _) => {
            let Ok(u) = tokio::net::UdpSocket::from_std(u) else {
                return false;
            };
            if u.connect(to).await.is_err() {
                return false;
            }
            // Resend now and then: a datagram may be lost for reasons that are not policy.
            let mut buf = [0u8; 64];
            loop {
                if u.send(b"ping").await.is_err() {
                    return false;
                }
                match tokio::time::timeout(Duration::from_millis(300), u.recv(&mut buf)).await {
                    Ok(Ok(n)) => return &buf[..n] == b"ping",
                    // An ICMP error (port unreachable, admin prohibited) reaches a connected socket.
                    Ok(Err(_)) => return false,
                    Err(_) => continue,
                }
            }
        }
    }
}

/// One probe, bounded by `timeout`: true when the server answered.
pub async fn probe_once(
    from: &Arc<Netns>,
    to: SocketAddrV4,
    proto: Proto,
    timeout: Duration,
) -> Result<bool> {
    let p = Probe {
        from: from.clone(),
        to,
        proto,
    };
    Ok(probe_all(&[p], timeout, 1).await?[0])
}

/// A pod as the matrix sees it: a name (`x/a`), its namespace and address.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub name: String,
    pub ns: Arc<Netns>,
    pub ip: Ipv4Addr,
}

/// One cell of a reachability matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cell {
    pub from: usize,
    pub to: usize,
    pub port: u16,
    pub proto: Proto,
}

/// Allowed (true) or denied for each cell of a set of pods × ports × protocols.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matrix {
    pub names: Vec<String>,
    pub ports: Vec<u16>,
    pub protos: Vec<Proto>,
    pub cells: BTreeMap<Cell, bool>,
}

impl Matrix {
    /// Every cell of `names` × `ports` × `protos` (a pod to itself included), decided by `f`.
    pub fn build(
        names: Vec<String>,
        ports: &[u16],
        protos: &[Proto],
        mut f: impl FnMut(Cell) -> bool,
    ) -> Matrix {
        let mut cells = BTreeMap::new();
        for c in all_cells(names.len(), ports, protos) {
            cells.insert(c, f(c));
        }
        Matrix {
            names,
            ports: ports.to_vec(),
            protos: protos.to_vec(),
            cells,
        }
    }

    /// Cells that differ from `observed` (which must cover the same cells).
    pub fn mismatches(&self, observed: &Matrix) -> Vec<Cell> {
        self.cells
            .iter()
            .filter(|(c, v)| observed.cells.get(c) != Some(v))
            .map(|(c, _)| *c)
            .collect()
    }

    /// A readable truth table of `self` (expected) against `observed`, one grid per port and
    /// protocol, rows the source, columns the destination: `.` allowed as expected, `X` denied
    /// as expected, `+` allowed but expected denied (a leak), `-` denied but expected allowed.
    pub fn truth_table(&self, observed: &Matrix) -> String {
        let w = self.names.iter().map(String::len).max().unwrap_or(1).max(4);
        let mut s = String::new();
        for proto in &self.protos {
            for port in &self.ports {
                let _ = writeln!(
                    s,
                    "{port}/{proto}  (rows from, columns to; . ok-allowed X ok-denied + LEAK - BLOCKED)"
                );
                let _ = write!(s, "{:w$} ", "");
                for n in &self.names {
                    let _ = write!(s, " {n:>w$}");
                }
                s.push('\n');
                for (i, from) in self.names.iter().enumerate() {
                    let _ = write!(s, "{from:>w$} ");
                    for j in 0..self.names.len() {
                        let c = Cell {
                            from: i,
                            to: j,
                            port: *port,
                            proto: *proto,
                        };
                        let sym = match (self.cells.get(&c), observed.cells.get(&c)) {
                            (Some(true), Some(true)) => ".",
                            (Some(false), Some(false)) => "X",
                            (Some(false), Some(true)) => "+",
                            (Some(true), Some(false)) => "-",
                            _ => "?",
                        };
                        let _ = write!(s, " {sym:>w$}");
                    }
                    s.push('\n');
                }
            }
        }
        s
    }
}

/// Every cell of `n` pods × ports × protocols.
pub fn all_cells(n: usize, ports: &[u16], protos: &[Proto]) -> Vec<Cell> {
    let mut v = Vec::new();
    for from in 0..n {
        for to in 0..n {
            for port in ports {
                for proto in protos {
                    v.push(Cell {
                        from,
                        to,
                        port: *port,
                        proto: *proto,
                    });
                }
            }
        }
    }
    v
}

/// Probes `cells` among `pods` at once (bounded concurrency); what answered.
pub async fn probe_cells(
    pods: &[Endpoint],
    cells: &[Cell],
    timeout: Duration,
) -> Result<BTreeMap<Cell, bool>> {
    Ok(probe_cells_traced(pods, cells, timeout)
        .await?
        .into_iter()
        .map(|(c, o)| (c, o.answered))
        .collect())
}

/// [`probe_cells`], with each probe's [`Outcome`].
pub async fn probe_cells_traced(
    pods: &[Endpoint],
    cells: &[Cell],
    timeout: Duration,
) -> Result<BTreeMap<Cell, Outcome>> {
    let probes: Vec<Probe> = cells
        .iter()
        .map(|c| Probe {
            from: pods[c.from].ns.clone(),
            to: SocketAddrV4::new(pods[c.to].ip, c.port),
            proto: c.proto,
        })
        .collect();
    let got = probe_all_traced(&probes, timeout, MATRIX_CONCURRENCY).await?;
    Ok(cells.iter().copied().zip(got).collect())
}

/// How many probes run at once: enough for a 9 × 9 × 2 × 2 matrix to take about one probe
/// time-out, few enough for a two-core machine.
pub const MATRIX_CONCURRENCY: usize = 128;

/// The time-out of one probe in a matrix: an allowed connection in a testbed answers within
/// milliseconds; generous for a loaded machine, short enough to probe often.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// Probes the full matrix of `pods` × `ports` × `protos`.
pub async fn probe_matrix(pods: &[Endpoint], ports: &[u16], protos: &[Proto]) -> Result<Matrix> {
    let cells = all_cells(pods.len(), ports, protos);
    let got = probe_cells(pods, &cells, PROBE_TIMEOUT).await?;
    Ok(Matrix {
        names: pods.iter().map(|p| p.name.clone()).collect(),
        ports: ports.to_vec(),
        protos: protos.to_vec(),
        cells: got,
    })
}

/// Probes the matrix until it equals `expected` or `limit` has passed; the last observation
/// and how long it took. Convergence is a condition, not a sleep.
pub async fn await_matrix(
    pods: &[Endpoint],
    expected: &Matrix,
    limit: Duration,
) -> Result<(Matrix, Duration, bool)> {
    let start = Instant::now();
    loop {
        let seen = probe_matrix(pods, &expected.ports, &expected.protos).await?;
        let ok = expected.mismatches(&seen).is_empty();
        if ok || start.elapsed() >= limit {
            return Ok((seen, start.elapsed(), ok));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_udp_flow_probed_within_the_quarantine_is_not_given_out_again() {
        // Sockets on loopback ports the kernel picks; the "namespace" is a name of this test
        // only, so no other test's flows mix in.
        let from = Path::new("/test/a-udp-flow-probed-within-the-quarantine");
        let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9);
        let first = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        drop(first);
        // The kernel offers the same port twice, then another: the second offer is refused.
        let mut offers = 0;
        let mut bind = || {
            offers += 1;
            if offers <= 2 {
                std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, port))
            } else {
                std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            }
        };
        let (u1, f1, at) = fresh_udp_flow(from, to, &mut bind).unwrap();
        assert_eq!(f1.src_port, port);
        record_udp_outcome(&f1, at, true);
        drop(u1);
        let (_u2, f2, _) = fresh_udp_flow(from, to, &mut bind).unwrap();
        assert_ne!(f2.src_port, port, "the port of a recent flow is refused");
        assert_eq!(offers, 3);
        let h = udp_flow_history(&f1);
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].answered, Some(true));
        // The same port towards another destination is another flow: fine.
        let other = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 10);
        let (_u3, f3, _) = fresh_udp_flow(from, other, || {
            std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, port))
        })
        .unwrap();
        assert_eq!(f3.src_port, port);
    }

    #[test]
    fn the_truth_table_marks_leaks_and_blocks() {
        let names = vec!["x/a".to_string(), "x/b".to_string()];
        let exp = Matrix::build(names.clone(), &[80], &[Proto::Tcp], |c| c.from == c.to);
        let obs = Matrix::build(names, &[80], &[Proto::Tcp], |c| c.from == 0);
        assert_eq!(exp.mismatches(&obs).len(), 2);
        let t = exp.truth_table(&obs);
        assert!(t.contains("80/TCP"), "{t}");
        let rows: Vec<&str> = t.lines().skip(2).collect();
        assert!(rows[0].ends_with(".    +"), "{t}");
        assert!(rows[1].ends_with("X    -"), "{t}");
    }
}
