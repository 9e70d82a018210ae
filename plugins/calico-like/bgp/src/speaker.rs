//! The async BGP speaker an agent drives.
//!
//! [`Speaker::start`] listens (optionally) and runs one tokio task per peer; each task owns
//! its TCP connection and its [`Fsm`], decodes with the [`codec`](crate::codec), and feeds the
//! shared [`Rib`]. The agent adds and removes peers, announces and withdraws its own prefixes,
//! and reads Loc-RIB changes from [`Speaker::subscribe`] to program the kernel. Wire input never
//! panics a task: a malformed message draws the NOTIFICATION the codec names (or RFC 7606
//! treat-as-withdraw) and affects that session only.
//!
//! Announce the node's prefixes before adding peers: each session's first UPDATEs end with
//! End-of-RIB, and a peer that kept our routes stale across a restart (graceful restart)
//! purges whatever that End-of-RIB did not refresh.
//!
//! ```no_run
//! # async fn demo() -> Result<(), trellis_bgp::speaker::SpeakerError> {
//! use trellis_bgp::speaker::{PeerConfig, Speaker, SpeakerConfig};
//! let mut config = SpeakerConfig::new(64512, "10.0.0.1".parse().expect("id"));
//! config.listen = Some("10.0.0.1:179".parse().expect("addr"));
//! let speaker = Speaker::start(config).await?;
//! let mut routes = speaker.subscribe();
//! speaker.add_peer(PeerConfig::new("10.0.0.2".parse().expect("peer"), 64512))?;
//! speaker.announce("10.244.0.0/26".parse().expect("block"), "10.0.0.1".parse().expect("nh"))?;
//! while let Some(change) = routes.recv().await {
//!     println!("{change:?}"); // install or remove the kernel route
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout};
use tracing::{debug, info, warn};

use crate::codec::{
    self, Capability, CeaseSubcode, Context, DecodeError, Decoded, Family, GrFamily,
    GracefulRestartCap, Message, Notification, Open, Update, update,
};
use crate::fsm::{self, Action, Event, Fsm, FsmConfig, State, Timer};
use crate::rib::{
    self, Changes, LocRibChange, OutChange, Path, PeerInfo, Rib, RibConfig, SessionInfo,
};

/// The standard BGP port.
pub const BGP_PORT: u16 = 179;

/// A Loc-RIB change as the agent receives it.
pub type RouteChange = LocRibChange;

/// Settings of the local speaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeakerConfig {
    /// Our AS (4-octet).
    pub asn: u32,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// Where to accept connections (port 0 picks one, see [`Speaker::local_addr`]); `None`
    /// makes every peer active-only.
    pub listen: Option<SocketAddr>,
    /// Proposed hold time in seconds (0 or at least 3).
    pub hold_time: u16,
    /// ConnectRetry base interval (also the first wait after an error).
    pub connect_retry: Duration,
    /// Upper bound of the backed-off ConnectRetry interval.
    pub connect_retry_max: Duration,
    /// Advertise and honour graceful restart (RFC 4724).
    pub graceful_restart: bool,
    /// Seconds our peers should keep our routes while we restart (at most 4095).
    pub restart_time: u16,
    /// Makes this speaker a route reflector with this cluster id (RFC 4456).
    pub cluster_id: Option<Ipv4Addr>,
}

impl SpeakerConfig {
    /// Defaults: no listener, hold time 90 s, ConnectRetry 5 s backing off to 30 s (BIRD's
    /// error wait in Calico), graceful restart on with 120 s, not a route reflector.
    pub fn new(asn: u32, router_id: Ipv4Addr) -> Self {
        Self {
            asn,
            router_id,
            listen: None,
            hold_time: 90,
            connect_retry: Duration::from_secs(5),
            connect_retry_max: Duration::from_secs(30),
            graceful_restart: true,
            restart_time: 120,
            cluster_id: None,
        }
    }
}

/// One configured peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's address: its identity, and where we connect.
    pub address: IpAddr,
    /// The peer's port (179 unless testing).
    pub port: u16,
    /// The AS the peer must announce; ours means iBGP.
    pub remote_asn: u32,
    /// Hold time for this peer, overriding the speaker's.
    pub hold_time: Option<u16>,
    /// Never connect; wait for the peer.
    pub passive: bool,
    /// A route-reflector client (meaningful when the speaker has a cluster id).
    pub rr_client: bool,
    /// Source address for our connections (and so the next hop we give eBGP peers).
    pub local_address: Option<IpAddr>,
}

impl PeerConfig {
    /// An active peer on port 179 with the speaker's hold time.
    pub fn new(address: IpAddr, remote_asn: u32) -> Self {
        Self {
            address,
            port: BGP_PORT,
            remote_asn,
            hold_time: None,
            passive: false,
            rr_client: false,
            local_address: None,
        }
    }
}

/// A peer as `trellis bgp status` and the metrics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer's address.
    pub address: IpAddr,
    /// Its AS.
    pub remote_asn: u32,
    /// The session state.
    pub state: State,
    /// When the session last reached Established (while it is up).
    pub established_at: Option<Instant>,
    /// The peer's BGP identifier, once known.
    pub remote_id: Option<Ipv4Addr>,
    /// The negotiated hold time (seconds) while the session is up.
    pub hold_time: u16,
    /// Routes in its Adj-RIB-In.
    pub prefixes_received: usize,
    /// Routes in its Adj-RIB-Out.
    pub prefixes_sent: usize,
    /// UPDATE messages received.
    pub updates_received: u64,
    /// UPDATE messages sent.
    pub updates_sent: u64,
    /// All messages received.
    pub messages_received: u64,
    /// All messages sent.
    pub messages_sent: u64,
    /// Times the session reached Established.
    pub established_transitions: u64,
    /// The last NOTIFICATION sent or received, or the last malformed-UPDATE handling.
    pub last_error: Option<String>,
}

impl PeerStatus {
    fn new(config: &PeerConfig) -> Self {
        Self {
            address: config.address,
            remote_asn: config.remote_asn,
            state: State::Idle,
            established_at: None,
            remote_id: None,
            hold_time: 0,
            prefixes_received: 0,
            prefixes_sent: 0,
            updates_received: 0,
            updates_sent: 0,
            messages_received: 0,
            messages_sent: 0,
            established_transitions: 0,
            last_error: None,
        }
    }

    /// How long the session has been Established.
    pub fn uptime(&self) -> Option<Duration> {
        self.established_at.map(|t| t.elapsed())
    }
}

/// Why a speaker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    /// The listening socket could not be set up.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A hold time of 1 or 2 seconds (RFC 4271 §4.2).
    #[error("hold time {0} s is neither 0 nor at least 3 s")]
    InvalidHoldTime(u16),
    /// AS 0 (RFC 7607).
    #[error("AS 0 is reserved")]
    InvalidAsn,
    /// Router id 0.0.0.0.
    #[error("router id 0.0.0.0 is not a valid BGP identifier")]
    InvalidRouterId,
    /// The peer is already configured.
    #[error("peer {0} is already configured")]
    DuplicatePeer(IpAddr),
    /// The peer is not configured.
    #[error("peer {0} is not configured")]
    UnknownPeer(IpAddr),
    /// An IPv4 prefix with an IPv6 next hop (RFC 5549 is not supported).
    #[error("IPv4 prefix {prefix} cannot have the IPv6 next hop {next_hop}")]
    NextHopFamily {
        /// The prefix.
        prefix: IpNet,
        /// The next hop.
        next_hop: IpAddr,
    },
}

/// A running speaker. Dropping it ends every session at once without NOTIFICATION, as a
/// crash would (peers with graceful restart keep our routes); [`Speaker::shutdown`] closes
/// them politely.
#[derive(Debug)]
pub struct Speaker {
    shared: Arc<Shared>,
    listener: Option<JoinHandle<()>>,
    local_addr: Option<SocketAddr>,
}

#[derive(Debug)]
struct Shared {
    config: SpeakerConfig,
    core: Mutex<Core>,
}

impl Shared {
    fn core(&self) -> MutexGuard<'_, Core> {
        // A panic elsewhere must not take the RIB down with it.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug)]
struct Core {
    rib: Rib,
    peers: HashMap<IpAddr, Slot>,
    subscribers: Vec<mpsc::UnboundedSender<RouteChange>>,
    next_generation: u64,
    next_slot_id: u64,
}

#[derive(Debug)]
struct Slot {
    /// Tells this peer's task from the task of an earlier peer with the same address that is
    /// still winding down.
    id: u64,
    tx: mpsc::UnboundedSender<PeerMsg>,
    task: Option<JoinHandle<()>>,
    status: PeerStatus,
    /// The Established session's generation, 0 when down: exports of an older session are
    /// dropped by the task.
    generation: u64,
}

impl Core {
    /// Hands RIB changes to the subscribers and the peers' tasks.
    fn apply(&mut self, changes: Changes) {
        for change in changes.loc_rib {
            self.subscribers.retain(|s| s.send(change.clone()).is_ok());
        }
        for (address, out) in changes.out {
            if let Some(slot) = self.peers.get(&address)
                && slot.generation != 0
            {
                let _ = slot.tx.send(PeerMsg::Export {
                    generation: slot.generation,
                    changes: out,
                });
            }
        }
    }
}

impl Speaker {
    /// Starts a speaker (and its listener when configured).
    pub async fn start(config: SpeakerConfig) -> Result<Self, SpeakerError> {
        if matches!(config.hold_time, 1 | 2) {
            return Err(SpeakerError::InvalidHoldTime(config.hold_time));
        }
        if config.asn == 0 {
            return Err(SpeakerError::InvalidAsn);
        }
        if config.router_id.is_unspecified() {
            return Err(SpeakerError::InvalidRouterId);
        }
        let rib = Rib::new(RibConfig {
            local_asn: config.asn,
            router_id: config.router_id,
            cluster_id: config.cluster_id,
        });
        let listen = config.listen;
        let shared = Arc::new(Shared {
            config,
            core: Mutex::new(Core {
                rib,
                peers: HashMap::new(),
                subscribers: Vec::new(),
                next_generation: 1,
                next_slot_id: 1,
            }),
        });
        let (listener, local_addr) = match listen {
            Some(address) => {
                let listener =
                    bind(address).map_err(|source| SpeakerError::Listen { address, source })?;
                let local = listener
                    .local_addr()
                    .map_err(|source| SpeakerError::Listen { address, source })?;
                let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
                (Some(task), Some(local))
            }
            None => (None, None),
        };
        info!(asn = shared.config.asn, router_id = %shared.config.router_id, ?local_addr, "BGP speaker started");
        Ok(Self {
            shared,
            listener,
            local_addr,
        })
    }

    /// The address the listener is bound to (with the port it picked).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The speaker's settings.
    pub fn config(&self) -> &SpeakerConfig {
        &self.shared.config
    }

    /// Adds a peer and starts its session.
    pub fn add_peer(&self, peer: PeerConfig) -> Result<(), SpeakerError> {
        let mut peer = peer;
        peer.address = canonical(peer.address);
        if let Some(h @ (1 | 2)) = peer.hold_time {
            return Err(SpeakerError::InvalidHoldTime(h));
        }
        let mut core = self.shared.core();
        if core.peers.contains_key(&peer.address) {
            return Err(SpeakerError::DuplicatePeer(peer.address));
        }
        core.rib.add_peer(PeerInfo {
            address: peer.address,
            asn: peer.remote_asn,
            rr_client: peer.rr_client,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let id = core.next_slot_id;
        core.next_slot_id += 1;
        let task = PeerTask::new(Arc::clone(&self.shared), peer.clone(), id, tx.clone());
        let handle = tokio::spawn(task.run(rx));
        core.peers.insert(
            peer.address,
            Slot {
                id,
                tx,
                task: Some(handle),
                status: PeerStatus::new(&peer),
                generation: 0,
            },
        );
        Ok(())
    }

    /// Removes a peer: its session is closed with a Cease and its routes are withdrawn.
    pub fn remove_peer(&self, address: IpAddr) -> Result<(), SpeakerError> {
        let address = canonical(address);
        let mut core = self.shared.core();
        let slot = core
            .peers
            .remove(&address)
            .ok_or(SpeakerError::UnknownPeer(address))?;
        let _ = slot.tx.send(PeerMsg::Stop);
        let changes = core.rib.remove_peer(address);
        core.apply(changes);
        Ok(())
    }

    /// Originates `prefix` with `next_hop`, replacing an earlier announcement of it. IPv6
    /// prefixes take an IPv6 next hop (an IPv4 one is sent IPv4-mapped); IPv4 prefixes need an
    /// IPv4 next hop.
    pub fn announce(&self, prefix: IpNet, next_hop: IpAddr) -> Result<(), SpeakerError> {
        if let (IpNet::V4(_), IpAddr::V6(_)) = (prefix, next_hop) {
            return Err(SpeakerError::NextHopFamily { prefix, next_hop });
        }
        let mut core = self.shared.core();
        let changes = core.rib.announce_local(prefix.trunc(), next_hop);
        core.apply(changes);
        Ok(())
    }

    /// Stops originating `prefix`.
    pub fn withdraw(&self, prefix: IpNet) -> Result<(), SpeakerError> {
        let mut core = self.shared.core();
        let changes = core.rib.withdraw_local(prefix.trunc());
        core.apply(changes);
        Ok(())
    }

    /// A stream of Loc-RIB changes: first the current best route of every prefix, then each
    /// change as it happens. Every subscriber sees every change, in order.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<RouteChange> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut core = self.shared.core();
        for route in core.rib.loc_rib() {
            let _ = tx.send(LocRibChange::Best(route.clone()));
        }
        core.subscribers.push(tx);
        rx
    }

    /// The Loc-RIB now.
    pub fn routes(&self) -> Vec<rib::BestRoute> {
        self.shared.core().rib.loc_rib().cloned().collect()
    }

    /// Every peer's status, by address.
    pub fn peers(&self) -> Vec<PeerStatus> {
        let core = self.shared.core();
        let mut out: Vec<PeerStatus> = core
            .peers
            .iter()
            .map(|(address, slot)| {
                let mut status = slot.status.clone();
                (status.prefixes_received, status.prefixes_sent) = core.rib.counts(*address);
                status
            })
            .collect();
        out.sort_by_key(|s| s.address);
        out
    }

    /// One peer's status.
    pub fn peer(&self, address: IpAddr) -> Option<PeerStatus> {
        let address = canonical(address);
        self.peers().into_iter().find(|s| s.address == address)
    }

    /// Closes every session with a Cease (peers withdraw our routes) and stops.
    pub async fn shutdown(self) {
        let tasks: Vec<JoinHandle<()>> = {
            let mut core = self.shared.core();
            core.peers
                .values_mut()
                .filter_map(|slot| {
                    let _ = slot.tx.send(PeerMsg::Stop);
                    slot.task.take()
                })
                .collect()
        };
        for task in tasks {
            let _ = timeout(Duration::from_secs(5), task).await;
        }
    }
}

impl Drop for Speaker {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.take() {
            listener.abort();
        }
        let mut core = self.shared.core();
        for slot in core.peers.values_mut() {
            if let Some(task) = slot.task.take() {
                task.abort();
            }
        }
        core.subscribers.clear();
    }
}

fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // A restarting agent must get its port back while old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(128)
}

/// IPv4-mapped IPv6 addresses (from a dual-stack listener) as plain IPv4.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        IpAddr::V4(_) => address,
    }
}

/// Hands each accepted connection to its peer's task; strangers are closed at once.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let address = canonical(remote.ip());
        let core = shared.core();
        match core.peers.get(&address) {
            Some(slot) => {
                let _ = slot.tx.send(PeerMsg::Incoming(stream));
            }
            None => debug!(%remote, "connection from an unconfigured address closed"),
        }
    }
}

/// Messages to a peer's task.
#[derive(Debug)]
enum PeerMsg {
    /// The listener accepted a connection from this peer.
    Incoming(TcpStream),
    /// Adj-RIB-Out changes for the session of this generation.
    Export {
        generation: u64,
        changes: Vec<OutChange>,
    },
    /// Close with a Cease and end the task.
    Stop,
    /// Our outgoing connection attempt finished.
    Connected {
        attempt: u64,
        result: std::io::Result<TcpStream>,
    },
    /// A colliding connection finished its OPEN exchange.
    Candidate {
        stream: TcpStream,
        open: Open,
        rest: Vec<u8>,
    },
}

#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// We initiated it (RFC 4271 §6.8 needs to know).
    outgoing: bool,
    local: SocketAddr,
}

#[derive(Debug, Default, Clone, Copy)]
struct Timers {
    connect_retry: Option<Instant>,
    hold: Option<Instant>,
    keepalive: Option<Instant>,
    idle_hold: Option<Instant>,
    /// Graceful restart: when the peer's stale routes are purged.
    stale: Option<Instant>,
}

impl Timers {
    fn slot(&mut self, timer: Timer) -> &mut Option<Instant> {
        match timer {
            Timer::ConnectRetry => &mut self.connect_retry,
            Timer::Hold => &mut self.hold,
            Timer::Keepalive => &mut self.keepalive,
            Timer::IdleHold => &mut self.idle_hold,
        }
    }
}

/// The shared state, if the peer at `address` is still the one this task serves; a removed
/// peer's task must not touch the RIB or the status of its successor.
fn owned(shared: &Shared, address: IpAddr, slot_id: u64) -> Option<MutexGuard<'_, Core>> {
    let core = shared.core();
    core.peers
        .get(&address)
        .is_some_and(|slot| slot.id == slot_id)
        .then_some(core)
}

/// RFC 4271 §10: retry intervals are jittered (to 75–100 %) so that two speakers that failed
/// together do not retry in lockstep and collide forever.
fn jitter(interval: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    let fraction = (hasher.finish() % 1000) as f64 / 1000.0;
    interval.mul_f64(0.75 + 0.25 * fraction)
}

/// Far enough away to never fire; used for timers that are not running.
fn never() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// The state of one peer's session, owned by its task.
struct PeerTask {
    shared: Arc<Shared>,
    config: PeerConfig,
    slot_id: u64,
    fsm: Fsm,
    tx: mpsc::UnboundedSender<PeerMsg>,
    conn: Option<Conn>,
    attempt: u64,
    connecting: Option<JoinHandle<()>>,
    candidate: Option<JoinHandle<()>>,
    timers: Timers,
    cx: Context,
    remote_open: Option<Open>,
    /// The session's generation while Established.
    generation: u64,
    families: Vec<Family>,
    /// The peer's graceful restart capability, if both sides have it.
    peer_gr: Option<GracefulRestartCap>,
    /// Our OPEN already went out on the connection being adopted.
    open_sent: bool,
    /// A write failed: the transport is gone.
    broken: bool,
    status: PeerStatus,
    stopping: bool,
}

impl PeerTask {
    fn new(
        shared: Arc<Shared>,
        config: PeerConfig,
        slot_id: u64,
        tx: mpsc::UnboundedSender<PeerMsg>,
    ) -> Self {
        let fsm = Fsm::new(FsmConfig {
            local_asn: shared.config.asn,
            local_id: shared.config.router_id,
            remote_asn: config.remote_asn,
            hold_time: config.hold_time.unwrap_or(shared.config.hold_time),
            passive: config.passive,
            connect_retry: shared.config.connect_retry,
            connect_retry_max: shared.config.connect_retry_max,
        });
        let status = PeerStatus::new(&config);
        Self {
            shared,
            config,
            slot_id,
            fsm,
            tx,
            conn: None,
            attempt: 0,
            connecting: None,
            candidate: None,
            timers: Timers::default(),
            cx: Context::default(),
            remote_open: None,
            generation: 0,
            families: Vec::new(),
            peer_gr: None,
            open_sent: false,
            broken: false,
            status,
            stopping: false,
        }
    }

    fn address(&self) -> IpAddr {
        self.config.address
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<PeerMsg>) {
        self.step(Event::ManualStart).await;
        self.publish();
        while !self.stopping {
            let t = self.timers;
            let conn = &mut self.conn;
            let read = async move {
                match conn {
                    Some(c) => {
                        c.buf.reserve(4096);
                        c.stream.read_buf(&mut c.buf).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => self.on_message(msg).await,
                    None => break,
                },
                read = read => match read {
                    Ok(0) | Err(_) => {
                        debug!(peer = %self.address(), "connection closed by peer");
                        self.step(Event::TcpConnectionFails).await;
                    }
                    Ok(_) => self.drain_frames().await,
                },
                _ = sleep_until(t.connect_retry.unwrap_or_else(never)), if t.connect_retry.is_some() => {
                    self.timers.connect_retry = None;
                    self.step(Event::ConnectRetryTimerExpires).await;
                }
                _ = sleep_until(t.hold.unwrap_or_else(never)), if t.hold.is_some() => {
                    self.timers.hold = None;
                    warn!(peer = %self.address(), "hold timer expired");
                    self.step(Event::HoldTimerExpires).await;
                }
                _ = sleep_until(t.keepalive.unwrap_or_else(never)), if t.keepalive.is_some() => {
                    self.timers.keepalive = None;
                    self.step(Event::KeepaliveTimerExpires).await;
                }
                _ = sleep_until(t.idle_hold.unwrap_or_else(never)), if t.idle_hold.is_some() => {
                    self.timers.idle_hold = None;
                    self.step(Event::AutomaticStart).await;
                }
                _ = sleep_until(t.stale.unwrap_or_else(never)), if t.stale.is_some() => {
                    self.timers.stale = None;
                    info!(peer = %self.address(), "restart time over: stale routes purged");
                    if let Some(mut core) = owned(&self.shared, self.config.address, self.slot_id) {
                        let changes = core.rib.purge_stale(self.config.address);
                        core.apply(changes);
                    }
                }
            }
            if self.broken {
                self.broken = false;
                if self.conn.is_some() {
                    self.step(Event::TcpConnectionFails).await;
                }
            }
            self.publish();
        }
        self.drop_connection().await;
        if let Some(c) = self.candidate.take() {
            c.abort();
        }
    }

    /// Copies the task's view of the session into the shared status.
    fn publish(&mut self) {
        self.status.state = self.fsm.state();
        let address = self.address();
        let status = self.status.clone();
        if let Some(mut core) = owned(&self.shared, address, self.slot_id)
            && let Some(slot) = core.peers.get_mut(&address)
        {
            slot.status = status;
        }
    }

    async fn on_message(&mut self, msg: PeerMsg) {
        match msg {
            PeerMsg::Incoming(stream) => self.on_incoming(stream).await,
            PeerMsg::Export {
                generation,
                changes,
            } => {
                if generation == self.generation && self.fsm.state() == State::Established {
                    self.send_out(changes).await;
                }
            }
            PeerMsg::Stop => {
                self.step(Event::ManualStop).await;
                self.stopping = true;
            }
            PeerMsg::Connected { attempt, result } => {
                if attempt != self.attempt || self.fsm.state() != State::Connect {
                    return;
                }
                self.connecting = None;
                match result.and_then(|s| s.local_addr().map(|l| (s, l))) {
                    Ok((stream, local)) => {
                        let _ = stream.set_nodelay(true);
                        self.adopt(stream, local, true, Vec::new());
                        self.step(Event::TcpCrAcked).await;
                    }
                    Err(e) => {
                        debug!(peer = %self.address(), error = %e, "connect failed");
                        self.step(Event::TcpConnectionFails).await;
                    }
                }
            }
            PeerMsg::Candidate { stream, open, rest } => {
                self.candidate = None;
                self.on_candidate(stream, open, rest).await;
            }
        }
    }

    fn adopt(&mut self, stream: TcpStream, local: SocketAddr, outgoing: bool, buf: Vec<u8>) {
        self.conn = Some(Conn {
            stream,
            buf,
            outgoing,
            local,
        });
        self.cx = Context::default();
        self.remote_open = None;
    }

    /// A connection from the peer (RFC 4271 §8.2.2 event 17, and §6.8 when one exists).
    async fn on_incoming(&mut self, stream: TcpStream) {
        let Ok(local) = stream.local_addr() else {
            return;
        };
        let _ = stream.set_nodelay(true);
        match self.fsm.state() {
            // Idle refuses connections unless an automatic restart is pending, in which case
            // the peer's connection is the restart (RFC 4271 §8.1.1 passive automatic start).
            State::Idle if self.timers.idle_hold.is_none() => {}
            State::Idle => {
                self.timers.idle_hold = None;
                self.step(Event::AutomaticStartPassive).await;
                self.accept(stream, local).await;
            }
            State::Connect | State::Active => self.accept(stream, local).await,
            // A second connection: its OPEN decides (collision, or a restarted peer).
            State::OpenSent | State::OpenConfirm | State::Established => {
                if self.candidate.is_none() {
                    self.spawn_candidate(stream);
                }
            }
        }
    }

    async fn accept(&mut self, stream: TcpStream, local: SocketAddr) {
        self.cancel_connect();
        self.adopt(stream, local, false, Vec::new());
        self.step(Event::TcpConnectionConfirmed).await;
    }

    /// Runs the OPEN exchange on a colliding connection in a helper task, so that the
    /// collision can be resolved by BGP identifier (RFC 4271 §6.8).
    fn spawn_candidate(&mut self, stream: TcpStream) {
        let Ok(open) = codec::encode(&Message::Open(self.our_open()), &Context::default()) else {
            return;
        };
        let tx = self.tx.clone();
        let peer = self.address();
        self.candidate = Some(tokio::spawn(async move {
            let exchange = async move {
                let mut stream = stream;
                stream.write_all(&open).await.ok()?;
                let mut buf = Vec::new();
                loop {
                    if let Ok(Some(len)) = codec::frame_length(&buf)
                        && buf.len() >= len
                    {
                        let frame: Vec<u8> = buf.drain(..len).collect();
                        return match codec::decode(&frame, &Context::default()) {
                            Ok(Decoded::Message(Message::Open(open))) => Some((stream, open, buf)),
                            _ => None,
                        };
                    }
                    if codec::frame_length(&buf).is_err() {
                        return None;
                    }
                    if stream.read_buf(&mut buf).await.ok()? == 0 {
                        return None;
                    }
                }
            };
            match timeout(fsm::LARGE_HOLD_TIME, exchange).await {
                Ok(Some((stream, open, rest))) => {
                    let _ = tx.send(PeerMsg::Candidate { stream, open, rest });
                }
                _ => debug!(%peer, "colliding connection gave no OPEN"),
            }
        }));
    }

    /// RFC 4271 §6.8: keep the connection initiated by the speaker with the higher BGP
    /// identifier. A candidate that finds the other connection already gone is simply used.
    async fn on_candidate(&mut self, stream: TcpStream, open: Open, rest: Vec<u8>) {
        let current_outgoing = self.conn.as_ref().is_some_and(|c| c.outgoing);
        let keep_local = fsm::keep_locally_initiated(
            self.shared.config.router_id,
            self.shared.config.asn,
            open.bgp_id,
            open.asn(),
        );
        match self.fsm.state() {
            // Our connection wins the collision; in Established too, where the peer is racing
            // us at start-up rather than restarting (it will drop its own connection).
            State::OpenSent | State::OpenConfirm | State::Established
                if current_outgoing && keep_local =>
            {
                debug!(peer = %self.address(), "collision: keeping our connection");
                tokio::spawn(reject(stream, CeaseSubcode::ConnectionCollisionResolution));
                return;
            }
            // RFC 4724 §4.2: a peer that can restart gracefully and opens a new session has
            // restarted; the old session is gone and its routes are kept stale.
            State::Established if self.peer_gr.is_some() => {
                info!(peer = %self.address(), "peer reconnected: graceful restart");
                self.step(Event::TcpConnectionFails).await;
            }
            // RFC 4271 §6.8: otherwise an Established session wins.
            State::Established => {
                tokio::spawn(reject(stream, CeaseSubcode::ConnectionCollisionResolution));
                return;
            }
            State::OpenSent | State::OpenConfirm => {
                debug!(peer = %self.address(), "collision: keeping the peer's connection");
                self.step(Event::OpenCollisionDump).await;
            }
            State::Idle | State::Connect | State::Active => {}
        }
        let Ok(local) = stream.local_addr() else {
            return;
        };
        if self.fsm.state() == State::Idle {
            self.timers.idle_hold = None;
            self.step(Event::AutomaticStartPassive).await;
        }
        self.cancel_connect();
        self.adopt(stream, local, false, rest);
        self.open_sent = true;
        self.step(Event::TcpConnectionConfirmed).await;
        self.open_sent = false;
        self.receive_open(open).await;
        self.drain_frames().await;
    }

    fn cancel_connect(&mut self) {
        self.attempt += 1;
        if let Some(c) = self.connecting.take() {
            c.abort();
        }
    }

    /// Decodes every whole message in the buffer.
    async fn drain_frames(&mut self) {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return;
            };
            let len = match codec::frame_length(&conn.buf) {
                Err(e) => {
                    self.note_error(format!("received bad header: {e}"));
                    self.step(Event::BgpHeaderErr(e.notification())).await;
                    return;
                }
                Ok(Some(len)) if conn.buf.len() >= len => len,
                Ok(_) => return,
            };
            let frame: Vec<u8> = conn.buf.drain(..len).collect();
            self.status.messages_received += 1;
            self.on_frame(&frame).await;
        }
    }

    async fn on_frame(&mut self, frame: &[u8]) {
        let decoded = match codec::decode(frame, &self.cx) {
            Ok(decoded) => decoded,
            Err(e) => {
                self.note_error(format!("received malformed message: {e}"));
                let n = e.notification();
                let event = match e {
                    DecodeError::Header(_) => Event::BgpHeaderErr(n),
                    DecodeError::Open(_) => Event::BgpOpenMsgErr(n),
                    DecodeError::Update(_) | DecodeError::RouteRefreshLength(_) => {
                        Event::UpdateMsgErr(n)
                    }
                };
                self.step(event).await;
                return;
            }
        };
        match decoded {
            Decoded::Message(Message::Open(open)) => self.receive_open(open).await,
            Decoded::Message(Message::Notification(n)) => {
                self.note_error(format!("received NOTIFICATION {n}"));
                let event = if n.is_version_error() {
                    Event::NotifMsgVerErr(n)
                } else {
                    Event::NotifMsg(n)
                };
                self.step(event).await;
            }
            Decoded::Message(Message::Keepalive) => {
                self.step(Event::KeepAliveMsg).await;
            }
            Decoded::Message(Message::Update(update)) => {
                if self.step(Event::UpdateMsg).await {
                    self.receive_update(update).await;
                }
            }
            Decoded::Message(Message::RouteRefresh(rr)) => {
                if self.step(Event::UpdateMsg).await {
                    self.refresh(rr.family).await;
                }
            }
            Decoded::AttributeDiscard { update, errors } => {
                self.note_error(format!("UPDATE attributes discarded: {errors:?}"));
                if self.step(Event::UpdateMsg).await {
                    self.receive_update(update).await;
                }
            }
            Decoded::TreatAsWithdraw { withdrawn, errors } => {
                warn!(peer = %self.address(), ?errors, "malformed UPDATE treated as withdraw");
                self.note_error(format!("UPDATE treated as withdraw: {errors:?}"));
                if self.step(Event::UpdateMsg).await {
                    self.status.updates_received += 1;
                    let address = self.address();
                    if let Some(mut core) = owned(&self.shared, address, self.slot_id) {
                        let changes = core.rib.update(address, Vec::new(), withdrawn);
                        core.apply(changes);
                    }
                }
            }
        }
    }

    async fn receive_open(&mut self, open: Open) {
        self.cx = Context {
            four_octet_as: open.four_octet_as().is_some(),
        };
        self.status.remote_id = Some(open.bgp_id);
        self.remote_open = Some(open.clone());
        self.step(Event::BgpOpen(open)).await;
    }

    fn note_error(&mut self, error: String) {
        debug!(peer = %self.address(), %error);
        self.status.last_error = Some(error);
    }

    /// Feeds one event to the FSM and carries out its actions. Returns whether an UPDATE is
    /// to be processed.
    async fn step(&mut self, event: Event) -> bool {
        let actions = self.fsm.handle(event);
        let mut process = false;
        for action in actions {
            match action {
                Action::InitiateConnection => self.connect(),
                Action::DropConnection => self.drop_connection().await,
                Action::SendOpen => {
                    if !self.open_sent {
                        let open = self.our_open();
                        self.send(&Message::Open(open)).await;
                    }
                }
                Action::SendKeepalive => {
                    self.send(&Message::Keepalive).await;
                }
                Action::SendNotification(n) => {
                    self.note_error(format!("sent NOTIFICATION {n}"));
                    self.send(&Message::Notification(n)).await;
                }
                Action::StartTimer(timer, after) => {
                    let after = match timer {
                        Timer::ConnectRetry | Timer::IdleHold => jitter(after),
                        Timer::Hold | Timer::Keepalive => after,
                    };
                    *self.timers.slot(timer) = Some(Instant::now() + after);
                }
                Action::StopTimer(timer) => *self.timers.slot(timer) = None,
                Action::Established => self.established().await,
                Action::ProcessUpdate => process = true,
                Action::SessionDown { graceful } => self.session_down(graceful),
            }
        }
        self.status.state = self.fsm.state();
        process
    }

    fn connect(&mut self) {
        self.cancel_connect();
        let attempt = self.attempt;
        let tx = self.tx.clone();
        let target = SocketAddr::new(self.config.address, self.config.port);
        let local = self.config.local_address;
        self.connecting = Some(tokio::spawn(async move {
            let result = async {
                let socket = match target {
                    SocketAddr::V4(_) => TcpSocket::new_v4()?,
                    SocketAddr::V6(_) => TcpSocket::new_v6()?,
                };
                if let Some(local) = local {
                    socket.bind(SocketAddr::new(local, 0))?;
                }
                socket.connect(target).await
            }
            .await;
            let _ = tx.send(PeerMsg::Connected { attempt, result });
        }));
    }

    async fn drop_connection(&mut self) {
        self.cancel_connect();
        if let Some(mut conn) = self.conn.take() {
            let _ = timeout(Duration::from_secs(1), conn.stream.shutdown()).await;
        }
        self.remote_open = None;
    }

    fn our_open(&self) -> Open {
        let config = &self.shared.config;
        let mut capabilities = vec![
            Capability::Multiprotocol(Family::IPV4_UNICAST),
            Capability::Multiprotocol(Family::IPV6_UNICAST),
            Capability::RouteRefresh,
            Capability::FourOctetAs(config.asn),
        ];
        if config.graceful_restart {
            // The agent keeps kernel routes across its own restart: forwarding is preserved.
            let families = [Family::IPV4_UNICAST, Family::IPV6_UNICAST]
                .into_iter()
                .map(|family| GrFamily {
                    family,
                    forwarding_preserved: true,
                })
                .collect();
            capabilities.push(Capability::GracefulRestart(GracefulRestartCap::new(
                false,
                config.restart_time,
                families,
            )));
        }
        Open::new(
            config.asn,
            self.config.hold_time.unwrap_or(config.hold_time),
            config.router_id,
            capabilities,
        )
    }

    /// Encodes and writes one message; a failure marks the transport broken.
    async fn send(&mut self, message: &Message) -> bool {
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        let bytes = match codec::encode(message, &self.cx) {
            Ok(bytes) => bytes,
            Err(e) => {
                warn!(peer = %self.config.address, error = %e, "cannot encode message");
                return false;
            }
        };
        let limit = Duration::from_secs(u64::from(self.fsm.negotiated_hold_time().max(10)));
        match timeout(limit, conn.stream.write_all(&bytes)).await {
            Ok(Ok(())) => {
                self.status.messages_sent += 1;
                if matches!(message, Message::Update(_)) {
                    self.status.updates_sent += 1;
                }
                true
            }
            _ => {
                self.broken = true;
                false
            }
        }
    }

    /// The session is up: send the Adj-RIB-Out, then End-of-RIB for each family.
    async fn established(&mut self) {
        let Some(open) = self.remote_open.clone() else {
            return;
        };
        let Some(local) = self.conn.as_ref().map(|c| canonical(c.local.ip())) else {
            return;
        };
        self.families = open
            .families()
            .into_iter()
            .filter(|f| f.is_supported())
            .collect();
        self.peer_gr = if self.shared.config.graceful_restart {
            open.graceful_restart().cloned()
        } else {
            None
        };
        let address = self.address();
        let now = Instant::now();
        self.status.established_at = Some(now);
        self.status.established_transitions += 1;
        self.status.hold_time = self.fsm.negotiated_hold_time();
        let (initial, stale) = {
            let Some(mut core) = owned(&self.shared, address, self.slot_id) else {
                return;
            };
            let generation = core.next_generation;
            core.next_generation += 1;
            self.generation = generation;
            if let Some(slot) = core.peers.get_mut(&address) {
                slot.generation = generation;
            }
            let initial = core.rib.session_up(
                address,
                SessionInfo {
                    router_id: open.bgp_id,
                    local_address: local,
                    families: self.families.clone(),
                },
            );
            // RFC 4724 §4.2: stale routes of families whose forwarding state the peer did not
            // keep go now; the others wait for End-of-RIB.
            for family in [Family::IPV4_UNICAST, Family::IPV6_UNICAST] {
                let kept = self
                    .peer_gr
                    .as_ref()
                    .and_then(|gr| gr.family(family))
                    .is_some_and(|f| f.forwarding_preserved);
                if !kept {
                    let changes = core.rib.end_of_rib(address, family);
                    core.apply(changes);
                }
            }
            (initial, core.rib.has_stale(address))
        };
        if stale {
            let wait = self.peer_gr.as_ref().map_or(0, |g| g.restart_time());
            self.timers.stale = Some(now + Duration::from_secs(u64::from(wait.max(1))));
        }
        info!(peer = %address, families = ?self.families, "session established");
        self.send_out(initial).await;
        for family in self.families.clone() {
            self.send(&Message::Update(Update::end_of_rib(family)))
                .await;
        }
    }

    fn session_down(&mut self, graceful: bool) {
        let address = self.address();
        let keep = graceful && self.peer_gr.is_some();
        info!(peer = %address, graceful_restart = keep, "session down");
        self.generation = 0;
        self.status.established_at = None;
        self.status.hold_time = 0;
        let Some(mut core) = owned(&self.shared, address, self.slot_id) else {
            return;
        };
        if let Some(slot) = core.peers.get_mut(&address) {
            slot.generation = 0;
        }
        let changes = core.rib.session_down(address, keep);
        core.apply(changes);
        if keep {
            // Only the families the peer preserves are kept (RFC 4724 §4.2).
            for family in [Family::IPV4_UNICAST, Family::IPV6_UNICAST] {
                if self
                    .peer_gr
                    .as_ref()
                    .and_then(|gr| gr.family(family))
                    .is_none()
                {
                    let changes = core.rib.end_of_rib(address, family);
                    core.apply(changes);
                }
            }
            let wait = self.peer_gr.as_ref().map_or(0, |g| g.restart_time());
            self.timers.stale = Some(Instant::now() + Duration::from_secs(u64::from(wait)));
        }
    }

    async fn receive_update(&mut self, update: Update) {
        self.status.updates_received += 1;
        let address = self.address();
        if let Some(family) = update.is_end_of_rib() {
            debug!(peer = %address, %family, "End-of-RIB");
            let Some(mut core) = owned(&self.shared, address, self.slot_id) else {
                return;
            };
            let changes = core.rib.end_of_rib(address, family);
            core.apply(changes);
            if !core.rib.has_stale(address) {
                self.timers.stale = None;
            }
            return;
        }
        let mut withdrawn: Vec<IpNet> = update.withdrawn.iter().copied().map(IpNet::V4).collect();
        if let Some(unreach) = &update.mp_unreach {
            withdrawn.extend(unreach.prefixes());
        }
        let mut announced = Vec::new();
        if let Some(next_hop) = update.attributes.next_hop {
            for prefix in &update.nlri {
                announced.push((
                    IpNet::V4(*prefix),
                    Path::new(update.attributes.clone(), IpAddr::V4(next_hop)),
                ));
            }
        }
        match &update.mp_reach {
            Some(codec::MpReach::Ipv4 { next_hop, nlri }) => {
                for prefix in nlri {
                    announced.push((
                        IpNet::V4(*prefix),
                        Path::new(update.attributes.clone(), IpAddr::V4(*next_hop)),
                    ));
                }
            }
            Some(codec::MpReach::Ipv6 { next_hop, nlri, .. }) => {
                for prefix in nlri {
                    announced.push((
                        IpNet::V6(*prefix),
                        Path::new(update.attributes.clone(), IpAddr::V6(*next_hop)),
                    ));
                }
            }
            None => {}
        }
        let Some(mut core) = owned(&self.shared, address, self.slot_id) else {
            return;
        };
        let changes = core.rib.update(address, announced, withdrawn);
        core.apply(changes);
    }

    /// ROUTE-REFRESH (RFC 2918): the whole Adj-RIB-Out of the family again.
    async fn refresh(&mut self, family: Family) {
        let routes = match owned(&self.shared, self.config.address, self.slot_id) {
            Some(core) => core.rib.adj_out(self.config.address),
            None => return,
        };
        let changes = routes
            .into_iter()
            .filter(|(prefix, _)| rib::family_of(prefix) == family)
            .map(|(prefix, path)| OutChange::Announce(prefix, path))
            .collect();
        self.send_out(changes).await;
    }

    /// Packs Adj-RIB-Out changes into UPDATEs (prefixes sharing attributes travel together)
    /// and sends them.
    async fn send_out(&mut self, changes: Vec<OutChange>) {
        let mut groups: Vec<(Path, Vec<IpNet>)> = Vec::new();
        let (mut gone_v4, mut gone_v6) = (Vec::new(), Vec::new());
        for change in changes {
            match change {
                OutChange::Announce(prefix, path) => {
                    match groups.iter_mut().find(|(p, _)| *p == path) {
                        Some((_, prefixes)) => prefixes.push(prefix),
                        None => groups.push((path, vec![prefix])),
                    }
                }
                OutChange::Withdraw(IpNet::V4(p)) => gone_v4.push(p),
                OutChange::Withdraw(IpNet::V6(p)) => gone_v6.push(p),
            }
        }
        let mut updates = update::withdraw_v4(&gone_v4);
        updates.extend(update::withdraw_v6(&gone_v6));
        for (path, prefixes) in groups {
            let (v4, v6): (Vec<IpNet>, Vec<IpNet>) = prefixes
                .into_iter()
                .partition(|p| matches!(p, IpNet::V4(_)));
            let v4: Vec<_> = v4
                .into_iter()
                .filter_map(|p| match p {
                    IpNet::V4(p) => Some(p),
                    IpNet::V6(_) => None,
                })
                .collect();
            let v6: Vec<_> = v6
                .into_iter()
                .filter_map(|p| match p {
                    IpNet::V6(p) => Some(p),
                    IpNet::V4(_) => None,
                })
                .collect();
            if !v4.is_empty()
                && let IpAddr::V4(next_hop) = path.next_hop
            {
                let mut attrs = path.attrs.clone();
                attrs.next_hop = Some(next_hop);
                match update::announce_v4(&attrs, &v4, &self.cx) {
                    Ok(u) => updates.extend(u),
                    Err(e) => warn!(error = %e, "cannot encode IPv4 announcement"),
                }
            }
            if !v6.is_empty() {
                let next_hop = rib::ipv6_next_hop(path.next_hop);
                match update::announce_v6(&path.attrs, next_hop, None, &v6, &self.cx) {
                    Ok(u) => updates.extend(u),
                    Err(e) => warn!(error = %e, "cannot encode IPv6 announcement"),
                }
            }
        }
        for u in updates {
            if !self.send(&Message::Update(u)).await {
                return;
            }
        }
    }
}

impl Drop for PeerTask {
    /// Helper tasks must not outlive the session they work for (an aborted speaker included).
    fn drop(&mut self) {
        for task in [self.connecting.take(), self.candidate.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
    }
}

/// Closes a connection we will not use, telling the peer why.
async fn reject(mut stream: TcpStream, subcode: CeaseSubcode) {
    let message = Message::Notification(Notification::cease(subcode));
    if let Ok(bytes) = codec::encode(&message, &Context::default()) {
        let _ = timeout(Duration::from_secs(1), stream.write_all(&bytes)).await;
    }
    let _ = timeout(Duration::from_secs(1), stream.shutdown()).await;
}
