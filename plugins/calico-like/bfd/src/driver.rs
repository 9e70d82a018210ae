//! The UDP side of single-hop BFD (RFC 5881) and the task that runs every session.
//!
//! - Control packets go to the peer's port 3784, from a source port in 49152–65535 that stays
//!   the same for the session's life (one socket per session, bound to its local address).
//! - They are sent with TTL (hop limit) 255, and a packet that arrives with any other TTL is
//!   discarded (the GTSM check of RFC 5881 §5): only a neighbour on the link can send 255.
//! - One receiving socket per address family on port 3784 reads every session's packets, with
//!   the TTL of each (IP_RECVTTL / IPV6_RECVHOPLIMIT); a packet is matched to its session by
//!   Your Discriminator, or by its source address while that is still 0 (RFC 5880 §6.3).
//!
//! [`Bfd::start`] spawns the task; sessions are added and removed per peer; every state
//! change is handed to a callback (the agent takes a BGP session down from there, at once).

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::socket::{self, ControlMessageOwned, MsgFlags, SockaddrStorage, sockopt};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tracing::{debug, info, warn};

use crate::packet::{Diagnostic, Packet, State};
use crate::session::{IntervalError, Intervals, Session, Transition};

/// The single-hop control port (RFC 5881 §4).
pub const CONTROL_PORT: u16 = 3784;
/// Source ports are taken from this range (RFC 5881 §4).
pub const SOURCE_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;
/// What single-hop packets carry, and must arrive with (RFC 5881 §5).
pub const TTL: u8 = 255;

/// Where the driver receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BfdConfig {
    /// The IPv4 receiving socket (None: no IPv4 sessions).
    pub listen_v4: Option<SocketAddr>,
    /// The IPv6 receiving socket (None: no IPv6 sessions).
    pub listen_v6: Option<SocketAddr>,
}

impl Default for BfdConfig {
    /// Port 3784 on every address of both families.
    fn default() -> Self {
        BfdConfig {
            listen_v4: Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, CONTROL_PORT))),
            listen_v6: Some(SocketAddr::from((Ipv6Addr::UNSPECIFIED, CONTROL_PORT))),
        }
    }
}

/// One session to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerSpec {
    /// The remote system's address (a BGP peer's).
    pub peer: IpAddr,
    /// Our address on the link (None: the kernel picks by route).
    pub local: Option<IpAddr>,
    /// The remote's control port (3784 unless testing).
    pub peer_port: u16,
    pub intervals: Intervals,
}

impl PeerSpec {
    /// Port 3784 and the default intervals.
    pub fn new(peer: IpAddr) -> PeerSpec {
        PeerSpec {
            peer,
            local: None,
            peer_port: CONTROL_PORT,
            intervals: Intervals::default(),
        }
    }
}

/// A state change of a session, as the callback receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionEvent {
    pub peer: IpAddr,
    pub transition: Transition,
    /// The diagnostic the remote last sent (why it says it went down).
    pub remote_diag: Diagnostic,
}

impl SessionEvent {
    /// The reason in words, for logs and a BGP session's last error.
    pub fn reason(&self) -> String {
        let t = &self.transition;
        if t.remote_state == State::AdminDown {
            return "the peer switched BFD off (AdminDown)".into();
        }
        match t.diag {
            Diagnostic::NeighborSignaledSessionDown => {
                format!("the peer signaled the session down ({})", self.remote_diag)
            }
            d => d.to_string(),
        }
    }
}

/// A session as status pages show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStatus {
    pub peer: IpAddr,
    pub local: Option<SocketAddr>,
    pub state: State,
    pub remote_state: State,
    /// Our last diagnostic (why we last left Up).
    pub diag: Diagnostic,
    pub remote_diag: Diagnostic,
    pub local_discr: u32,
    pub remote_discr: u32,
    pub intervals: Intervals,
    /// The agreed detection time (0 before the remote was heard).
    pub detection_time: Duration,
    /// The agreed transmit interval (before jitter).
    pub tx_interval: Duration,
    pub up_since: Option<Instant>,
    /// Times the session went from Up to Down.
    pub downs: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
}

/// Packets the driver threw away, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Discards {
    /// TTL (hop limit) other than 255: not from a neighbour on the link.
    pub ttl: u64,
    /// Refused by the codec (§6.8.6).
    pub malformed: u64,
    /// No session for its discriminator or source address.
    pub no_session: u64,
}

/// Why the driver could not do something.
#[derive(Debug, thiserror::Error)]
pub enum BfdError {
    #[error("cannot open the BFD socket on {address}: {source}")]
    Socket {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("no free source port in 49152-65535 on {0}")]
    NoSourcePort(IpAddr),
    #[error("a BFD session with {0} exists already")]
    Duplicate(IpAddr),
    #[error("no BFD session with {0}")]
    Unknown(IpAddr),
    #[error("BFD for {peer}: {source}")]
    Intervals {
        peer: IpAddr,
        #[source]
        source: IntervalError,
    },
    #[error("no {0} receiving socket is configured")]
    Family(&'static str),
    #[error("the BFD task has stopped")]
    Stopped,
}

type Callback = Arc<dyn Fn(&SessionEvent) + Send + Sync>;

enum Command {
    Add(PeerSpec, oneshot::Sender<Result<(), BfdError>>),
    Remove(IpAddr, oneshot::Sender<Result<(), BfdError>>),
    Shutdown(oneshot::Sender<()>),
}

#[derive(Default)]
struct Board {
    sessions: HashMap<IpAddr, SessionStatus>,
    discards: Discards,
}

/// A running BFD driver. Dropping it stops the task without a word to the peers (they see
/// the session time out, as after a crash); [`Bfd::shutdown`] tells them AdminDown first.
pub struct Bfd {
    commands: mpsc::Sender<Command>,
    board: Arc<Mutex<Board>>,
    task: Option<JoinHandle<()>>,
    local_v4: Option<SocketAddr>,
}

impl std::fmt::Debug for Bfd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bfd")
            .field("local_v4", &self.local_v4)
            .finish()
    }
}

fn lock(board: &Mutex<Board>) -> MutexGuard<'_, Board> {
    board.lock().unwrap_or_else(|e| e.into_inner())
}

impl Bfd {
    /// Opens the receiving sockets and starts the task. `on_change` is called on the task for
    /// every state change; it must not block.
    pub async fn start(
        config: BfdConfig,
        on_change: impl Fn(&SessionEvent) + Send + Sync + 'static,
    ) -> Result<Bfd, BfdError> {
        let v4 = config.listen_v4.map(receiver).transpose()?;
        let v6 = match config.listen_v6.map(receiver).transpose() {
            Ok(s) => s,
            Err(e) => {
                // A node without IPv6 still runs its IPv4 sessions.
                warn!(error = %e, "no IPv6 BFD");
                None
            }
        };
        let local_v4 = v4.as_ref().and_then(|s| s.local_addr().ok());
        let board = Arc::new(Mutex::new(Board::default()));
        let (commands, rx) = mpsc::channel(64);
        let driver = Driver {
            v4,
            v6,
            sessions: HashMap::new(),
            by_discr: HashMap::new(),
            board: Arc::clone(&board),
            on_change: Arc::new(on_change),
            next_discr: seed(),
        };
        let task = tokio::spawn(driver.run(rx));
        Ok(Bfd {
            commands,
            board,
            task: Some(task),
            local_v4,
        })
    }

    /// The IPv4 receiving socket's address (with the port picked when it was 0).
    pub fn local_v4(&self) -> Option<SocketAddr> {
        self.local_v4
    }

    /// Starts a session with `spec.peer`.
    pub async fn add(&self, spec: PeerSpec) -> Result<(), BfdError> {
        spec.intervals
            .validate()
            .map_err(|source| BfdError::Intervals {
                peer: spec.peer,
                source,
            })?;
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Add(spec, tx))
            .await
            .map_err(|_| BfdError::Stopped)?;
        rx.await.map_err(|_| BfdError::Stopped)?
    }

    /// Ends the session with `peer`, telling it AdminDown (no failure).
    pub async fn remove(&self, peer: IpAddr) -> Result<(), BfdError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Remove(peer, tx))
            .await
            .map_err(|_| BfdError::Stopped)?;
        rx.await.map_err(|_| BfdError::Stopped)?
    }

    /// Every session's status, by peer address.
    pub fn sessions(&self) -> Vec<SessionStatus> {
        let mut out: Vec<SessionStatus> = lock(&self.board).sessions.values().cloned().collect();
        out.sort_by_key(|s| s.peer);
        out
    }

    /// One session's status.
    pub fn session(&self, peer: IpAddr) -> Option<SessionStatus> {
        lock(&self.board).sessions.get(&peer).cloned()
    }

    /// Packets discarded so far.
    pub fn discards(&self) -> Discards {
        lock(&self.board).discards
    }

    /// Tells every peer AdminDown, then stops.
    pub async fn shutdown(mut self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for Bfd {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A starting discriminator that differs between runs, so a restarted agent's packets are not
/// taken for its previous life's.
fn seed() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    (h.finish() as u32) | 1
}

/// The receiving socket of one family, reporting each packet's TTL.
fn receiver(address: SocketAddr) -> Result<UdpSocket, BfdError> {
    let err = |source| BfdError::Socket { address, source };
    let io = |e: nix::Error| err(std::io::Error::from(e));
    let std = match address {
        SocketAddr::V4(_) => {
            let std = std::net::UdpSocket::bind(address).map_err(err)?;
            socket::setsockopt(&std, sockopt::Ipv4RecvTtl, &true).map_err(io)?;
            std
        }
        SocketAddr::V6(v6) => {
            // IPv6 only, set before bind: a dual-stack [::]:3784 would clash with the IPv4
            // socket on the same port.
            let fd = socket::socket(
                socket::AddressFamily::Inet6,
                socket::SockType::Datagram,
                socket::SockFlag::SOCK_CLOEXEC,
                None,
            )
            .map_err(io)?;
            socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true).map_err(io)?;
            socket::bind(fd.as_raw_fd(), &socket::SockaddrIn6::from(v6)).map_err(io)?;
            socket::setsockopt(&fd, sockopt::Ipv6RecvHopLimit, &true).map_err(io)?;
            std::net::UdpSocket::from(fd)
        }
    };
    std.set_nonblocking(true).map_err(err)?;
    UdpSocket::from_std(std).map_err(err)
}

/// A session's sending socket: its local address, a source port of the range, TTL 255.
fn sender(local: Option<IpAddr>, peer: IpAddr) -> Result<UdpSocket, BfdError> {
    let ip = local.unwrap_or(match peer {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    });
    let span = u32::from(SOURCE_PORTS.end() - SOURCE_PORTS.start()) + 1;
    let start = seed() % span;
    for i in 0..span {
        let port = SOURCE_PORTS.start() + ((start + i) % span) as u16;
        let address = SocketAddr::new(ip, port);
        let std = match std::net::UdpSocket::bind(address) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(source) => return Err(BfdError::Socket { address, source }),
        };
        let err = |source| BfdError::Socket { address, source };
        std.set_nonblocking(true).map_err(err)?;
        if ip.is_ipv4() {
            std.set_ttl(u32::from(TTL)).map_err(err)?;
        } else {
            socket::setsockopt(&std, sockopt::Ipv6Ttl, &i32::from(TTL))
                .map_err(|e| err(std::io::Error::from(e)))?;
        }
        return UdpSocket::from_std(std).map_err(err);
    }
    Err(BfdError::NoSourcePort(ip))
}

/// One datagram with its source and TTL.
struct Received {
    from: IpAddr,
    ttl: Option<i32>,
    len: usize,
}

async fn recv(sock: &UdpSocket, buf: &mut [u8]) -> std::io::Result<Received> {
    loop {
        sock.readable().await?;
        let r = sock.try_io(Interest::READABLE, || {
            let mut iov = [IoSliceMut::new(buf)];
            let mut cmsg = nix::cmsg_space!(i32);
            let msg = socket::recvmsg::<SockaddrStorage>(
                sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::empty(),
            )
            .map_err(std::io::Error::from)?;
            let mut ttl = None;
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    match c {
                        ControlMessageOwned::Ipv4Ttl(t) | ControlMessageOwned::Ipv6HopLimit(t) => {
                            ttl = Some(t)
                        }
                        _ => {}
                    }
                }
            }
            let from = msg.address.and_then(|a| {
                a.as_sockaddr_in()
                    .map(|s| IpAddr::V4(s.ip()))
                    .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
            });
            Ok((from, ttl, msg.bytes))
        });
        match r {
            Ok((Some(from), ttl, len)) => return Ok(Received { from, ttl, len }),
            Ok((None, _, _)) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

struct Running {
    spec: PeerSpec,
    session: Session,
    socket: UdpSocket,
    status: SessionStatus,
}

struct Driver {
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
    sessions: HashMap<IpAddr, Running>,
    by_discr: HashMap<u32, IpAddr>,
    board: Arc<Mutex<Board>>,
    on_change: Callback,
    next_discr: u32,
}

/// Far enough away to never fire.
fn never() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

async fn maybe_recv(sock: Option<&UdpSocket>, buf: &mut [u8]) -> std::io::Result<Received> {
    match sock {
        Some(s) => recv(s, buf).await,
        None => std::future::pending().await,
    }
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut buf4 = [0u8; 512];
        let mut buf6 = [0u8; 512];
        loop {
            let deadline = self
                .sessions
                .values()
                .map(|r| r.session.next_deadline())
                .min()
                .unwrap_or_else(never);
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(Command::Add(spec, reply)) => {
                        let _ = reply.send(self.add(spec));
                    }
                    Some(Command::Remove(peer, reply)) => {
                        let _ = reply.send(self.remove(peer));
                    }
                    Some(Command::Shutdown(reply)) => {
                        let peers: Vec<IpAddr> = self.sessions.keys().copied().collect();
                        for peer in peers {
                            let _ = self.remove(peer);
                        }
                        let _ = reply.send(());
                        return;
                    }
                    None => return,
                },
                r = maybe_recv(self.v4.as_ref(), &mut buf4) => match r {
                    Ok(rcv) => self.on_datagram(rcv, &buf4),
                    Err(e) => {
                        warn!(error = %e, "BFD receive (IPv4)");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                r = maybe_recv(self.v6.as_ref(), &mut buf6) => match r {
                    Ok(rcv) => self.on_datagram(rcv, &buf6),
                    Err(e) => {
                        warn!(error = %e, "BFD receive (IPv6)");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                _ = sleep_until(deadline) => self.on_timers(),
            }
        }
    }

    fn add(&mut self, spec: PeerSpec) -> Result<(), BfdError> {
        if self.sessions.contains_key(&spec.peer) {
            return Err(BfdError::Duplicate(spec.peer));
        }
        match spec.peer {
            IpAddr::V4(_) if self.v4.is_none() => return Err(BfdError::Family("IPv4")),
            IpAddr::V6(_) if self.v6.is_none() => return Err(BfdError::Family("IPv6")),
            _ => {}
        }
        let socket = sender(spec.local, spec.peer)?;
        let mut discr = self.next_discr;
        while discr == 0 || self.by_discr.contains_key(&discr) {
            discr = discr.wrapping_add(1);
        }
        self.next_discr = discr.wrapping_add(1);
        let session = Session::new(discr, spec.intervals, Instant::now());
        let status = SessionStatus {
            peer: spec.peer,
            local: socket.local_addr().ok(),
            state: State::Down,
            remote_state: State::Down,
            diag: Diagnostic::None,
            remote_diag: Diagnostic::None,
            local_discr: discr,
            remote_discr: 0,
            intervals: spec.intervals,
            detection_time: Duration::ZERO,
            tx_interval: session.tx_interval(),
            up_since: None,
            downs: 0,
            packets_sent: 0,
            packets_received: 0,
        };
        info!(
            peer = %spec.peer,
            local = ?status.local,
            tx_ms = spec.intervals.desired_min_tx.as_millis() as u64,
            rx_ms = spec.intervals.required_min_rx.as_millis() as u64,
            multiplier = spec.intervals.multiplier,
            "BFD session added"
        );
        self.by_discr.insert(discr, spec.peer);
        lock(&self.board).sessions.insert(spec.peer, status.clone());
        self.sessions.insert(
            spec.peer,
            Running {
                spec,
                session,
                socket,
                status,
            },
        );
        Ok(())
    }

    fn remove(&mut self, peer: IpAddr) -> Result<(), BfdError> {
        let mut running = self.sessions.remove(&peer).ok_or(BfdError::Unknown(peer))?;
        self.by_discr.remove(&running.session.local_discr());
        lock(&self.board).sessions.remove(&peer);
        let now = Instant::now();
        if running.session.admin_down(now).is_some() {
            // A few AdminDown packets, so that one lost packet does not turn the goodbye
            // into a detection timeout at the peer.
            let goodbye = running.session.packet_now();
            for _ in 0..3 {
                send(&running, &goodbye);
            }
        }
        info!(%peer, "BFD session removed (AdminDown sent)");
        Ok(())
    }

    fn on_datagram(&mut self, rcv: Received, buf: &[u8]) {
        let bytes = &buf[..rcv.len.min(buf.len())];
        if rcv.ttl != Some(i32::from(TTL)) {
            debug!(from = %rcv.from, ttl = ?rcv.ttl, "BFD packet discarded: TTL is not 255");
            lock(&self.board).discards.ttl += 1;
            return;
        }
        let packet = match Packet::decode(bytes) {
            Ok(p) => p,
            Err(e) => {
                debug!(from = %rcv.from, error = %e, "BFD packet discarded");
                lock(&self.board).discards.malformed += 1;
                return;
            }
        };
        let peer = if packet.your_discr != 0 {
            self.by_discr
                .get(&packet.your_discr)
                .copied()
                .filter(|p| *p == rcv.from)
        } else {
            Some(rcv.from).filter(|p| self.sessions.contains_key(p))
        };
        let Some(peer) = peer else {
            debug!(from = %rcv.from, your_discr = packet.your_discr, "BFD packet for no session");
            lock(&self.board).discards.no_session += 1;
            return;
        };
        let now = Instant::now();
        let on_change = Arc::clone(&self.on_change);
        let Some(running) = self.sessions.get_mut(&peer) else {
            return;
        };
        running.status.packets_received += 1;
        let transition = running.session.receive(&packet, now);
        running.status.remote_diag = packet.diag;
        if let Some(t) = transition {
            note(running, t, &*on_change);
        }
        transmit_due(running, now);
        publish(&self.board, running);
    }

    fn on_timers(&mut self) {
        let now = Instant::now();
        let on_change = Arc::clone(&self.on_change);
        for running in self.sessions.values_mut() {
            if let Some(t) = running.session.on_timer(now) {
                note(running, t, &*on_change);
            }
            transmit_due(running, now);
            publish(&self.board, running);
        }
    }
}

/// Logs a state change with its reason and hands it to the callback.
fn note(running: &mut Running, t: Transition, on_change: &(dyn Fn(&SessionEvent) + Send + Sync)) {
    let event = SessionEvent {
        peer: running.spec.peer,
        transition: t,
        remote_diag: running.status.remote_diag,
    };
    if t.from == State::Up {
        running.status.downs += 1;
        warn!(
            peer = %event.peer,
            from = %t.from,
            to = %t.to,
            diag = %t.diag,
            remote_diag = %event.remote_diag,
            reason = %event.reason(),
            "BFD session down"
        );
    } else {
        info!(peer = %event.peer, from = %t.from, to = %t.to, "BFD session state");
    }
    on_change(&event);
}

fn transmit_due(running: &mut Running, now: Instant) {
    if let Some(p) = running.session.transmit(now)
        && send(running, &p)
    {
        running.status.packets_sent += 1;
    }
}

fn send(running: &Running, p: &Packet) -> bool {
    let to = SocketAddr::new(running.spec.peer, running.spec.peer_port);
    match running.socket.try_send_to(&p.encode(), to) {
        Ok(_) => true,
        Err(e) => {
            // A link that is down refuses packets: the detection timer says the rest.
            debug!(peer = %running.spec.peer, error = %e, "BFD send failed");
            false
        }
    }
}

fn publish(board: &Mutex<Board>, running: &mut Running) {
    let s = &running.session;
    let st = &mut running.status;
    st.state = s.state();
    st.remote_state = s.remote_state();
    st.diag = s.diag();
    st.local_discr = s.local_discr();
    st.remote_discr = s.remote_discr();
    st.detection_time = s.detection_time();
    st.tx_interval = s.tx_interval();
    st.up_since = s.up_since();
    if let Some(slot) = lock(board).sessions.get_mut(&running.spec.peer) {
        *slot = st.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc::UnboundedReceiver;

    /// A driver receiving on `ip` (a port picked by the kernel), its events on a channel.
    async fn node(ip: [u8; 4]) -> (Bfd, UnboundedReceiver<SessionEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let config = BfdConfig {
            listen_v4: Some(SocketAddr::from((ip, 0))),
            listen_v6: None,
        };
        let bfd = Bfd::start(config, move |e| {
            let _ = tx.send(*e);
        })
        .await
        .expect("start");
        (bfd, rx)
    }

    fn spec(to: &Bfd, from: [u8; 4]) -> PeerSpec {
        let peer = to.local_v4().expect("v4");
        PeerSpec {
            peer: peer.ip(),
            local: Some(IpAddr::from(from)),
            peer_port: peer.port(),
            intervals: Intervals::default(),
        }
    }

    /// The next event that reaches `to`, within a bound far above the protocol's times.
    async fn next_to(rx: &mut UnboundedReceiver<SessionEvent>, to: State) -> SessionEvent {
        let wait = async {
            loop {
                let e = rx.recv().await.expect("driver alive");
                if e.transition.to == to {
                    return e;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .unwrap_or_else(|_| panic!("no transition to {to} within 10 s"))
    }

    async fn up_pair() -> (
        (Bfd, UnboundedReceiver<SessionEvent>),
        (Bfd, UnboundedReceiver<SessionEvent>),
    ) {
        let (a, mut ea) = node([127, 0, 0, 1]).await;
        let (b, mut eb) = node([127, 0, 0, 2]).await;
        a.add(spec(&b, [127, 0, 0, 1])).await.expect("add");
        b.add(spec(&a, [127, 0, 0, 2])).await.expect("add");
        next_to(&mut ea, State::Up).await;
        next_to(&mut eb, State::Up).await;
        ((a, ea), (b, eb))
    }

    #[tokio::test]
    async fn two_drivers_come_up_over_loopback_with_ttl_255_and_agreed_timers() {
        let ((a, _ea), (b, _eb)) = up_pair().await;
        let s = a.session(IpAddr::from([127, 0, 0, 2])).expect("session");
        assert_eq!(s.state, State::Up);
        assert_ne!(s.remote_discr, 0);
        let port = s.local.expect("bound").port();
        assert!(SOURCE_PORTS.contains(&port), "source port {port}");
        // Both sides end their polls and agree on 300 ms × 3.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = a.session(IpAddr::from([127, 0, 0, 2])).expect("session");
            if s.detection_time == Duration::from_millis(900) {
                break;
            }
            assert!(Instant::now() < deadline, "{s:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(a.discards(), Discards::default());
        drop(b);
    }

    #[tokio::test]
    async fn a_silent_peer_is_declared_down_by_detection_time() {
        let ((_a, mut ea), (b, _eb)) = up_pair().await;
        // Gone without a word, as after a crash or a cut link.
        drop(b);
        let e = next_to(&mut ea, State::Down).await;
        assert_eq!(e.transition.diag, Diagnostic::ControlDetectionTimeExpired);
        assert!(e.transition.is_failure());
        assert_eq!(e.reason(), "control detection time expired");
    }

    #[tokio::test]
    async fn a_peer_that_shuts_down_says_admin_down_and_that_is_no_failure() {
        let ((a, mut ea), (b, _eb)) = up_pair().await;
        b.shutdown().await;
        let e = next_to(&mut ea, State::Down).await;
        assert_eq!(e.transition.remote_state, State::AdminDown);
        assert!(!e.transition.is_failure(), "{e:?}");
        assert_eq!(e.remote_diag, Diagnostic::AdministrativelyDown);
        assert_eq!(
            a.session(IpAddr::from([127, 0, 0, 2])).map(|s| s.downs),
            Some(1)
        );
    }

    /// RFC 5881 §5: a packet that did not arrive with TTL 255 may have come from off the
    /// link, and is discarded; so is a malformed one.
    #[tokio::test]
    async fn packets_with_a_lower_ttl_or_malformed_are_discarded() {
        let ((a, _ea), (_b, _eb)) = up_pair().await;
        let to = a.local_v4().expect("v4");
        let forger = std::net::UdpSocket::bind("127.0.0.2:0").expect("bind");
        let s = a.session(IpAddr::from([127, 0, 0, 2])).expect("session");
        let mut p = Session::new(s.remote_discr, Intervals::default(), Instant::now()).packet_now();
        p.your_discr = s.local_discr;
        p.state = State::Down;
        forger.set_ttl(64).expect("ttl");
        forger.send_to(&p.encode(), to).expect("send");
        forger.set_ttl(255).expect("ttl");
        forger.send_to(&[0x20, 0xc0, 3, 24], to).expect("send");
        let deadline = Instant::now() + Duration::from_secs(10);
        while a.discards()
            != (Discards {
                ttl: 1,
                malformed: 1,
                no_session: 0,
            })
        {
            assert!(Instant::now() < deadline, "{:?}", a.discards());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The forged Down with TTL 64 did not touch the session.
        let s = a.session(IpAddr::from([127, 0, 0, 2])).expect("session");
        assert_eq!((s.state, s.downs), (State::Up, 0));
    }

    /// The default configuration's two sockets share port 3784 (IPv6 only on the IPv6 one):
    /// tried on ephemeral ports of loopback.
    #[tokio::test]
    async fn ipv4_and_ipv6_receivers_share_a_port() {
        let v4 = receiver(SocketAddr::from(([127, 0, 0, 1], 0))).expect("v4");
        let port = v4.local_addr().expect("addr").port();
        let v6 = receiver(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)));
        // A kernel without IPv6 has no [::]; any other failure is ours.
        if let Err(BfdError::Socket { source, .. }) = &v6 {
            assert_ne!(source.kind(), std::io::ErrorKind::AddrInUse, "{v6:?}");
        }
    }

    #[tokio::test]
    async fn sessions_are_per_peer_and_removal_is_clean() {
        let (a, _ea) = node([127, 0, 0, 1]).await;
        let (b, _eb) = node([127, 0, 0, 2]).await;
        a.add(spec(&b, [127, 0, 0, 1])).await.expect("add");
        assert!(matches!(
            a.add(spec(&b, [127, 0, 0, 1])).await,
            Err(BfdError::Duplicate(_))
        ));
        let mut bad = spec(&b, [127, 0, 0, 1]);
        bad.peer = IpAddr::from([127, 0, 0, 3]);
        bad.intervals.multiplier = 0;
        assert!(matches!(a.add(bad).await, Err(BfdError::Intervals { .. })));
        a.remove(IpAddr::from([127, 0, 0, 2]))
            .await
            .expect("remove");
        assert!(a.sessions().is_empty());
        assert!(matches!(
            a.remove(IpAddr::from([127, 0, 0, 2])).await,
            Err(BfdError::Unknown(_))
        ));
    }
}
