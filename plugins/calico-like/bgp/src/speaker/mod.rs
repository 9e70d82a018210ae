//! The async BGP speaker an agent drives.
//!
//! [`Speaker::start`] listens (optionally) and runs one tokio task per peer; each task owns
//! its TCP connection and its [`Fsm`](crate::fsm::Fsm), decodes with the
//! [`codec`](crate::codec), and feeds the shared [`Rib`]. The agent adds and removes peers,
//! announces and withdraws its own prefixes, and reads Loc-RIB changes from
//! [`Speaker::subscribe`] to program the kernel. Wire input never panics a task: a malformed
//! message draws the NOTIFICATION the codec names (or RFC 7606 treat-as-withdraw) and affects
//! that session only.
//!
//! Announce the node's prefixes before adding peers: each session's first UPDATEs end with
//! End-of-RIB, and a peer that kept our routes stale across a restart (graceful restart)
//! purges whatever that End-of-RIB did not refresh.
//!
//! Every queue is bounded, and none can lose a change silently:
//!
//! - A subscriber's queue holds each changed prefix once, however often it changed, and the
//!   subscriber reads its latest state (see [`Speaker::subscribe`]): it cannot fall behind.
//! - A peer's task that falls [`PEER_QUEUE`] messages behind (its peer reads too slowly) has
//!   its session reset with a Cease (out of resources); the session restarts by itself and the
//!   peer is sent the whole Adj-RIB-Out again.
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
//! // The speaker was shut down.
//! # Ok(())
//! # }
//! ```
//!
//! The code follows the jobs: this module is the API (the [`Speaker`] handle, its settings,
//! status and errors, and the state the tasks share); `listener` accepts connections, `peer` is
//! a peer's task (its FSM, connection and session), `collision` resolves a second connection
//! from the same peer (RFC 4271 §6.8), and `export` hands RIB changes to the subscribers and the
//! peers' tasks and packs them into UPDATEs.

mod collision;
mod deferral;
mod export;
mod listener;
mod md5;
mod peer;
mod subscription;
mod writer;

pub use deferral::DeferralEnd;
pub use md5::{KeyError, MAX_KEY_LEN, Md5Key};
pub use subscription::Subscription;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tracing::info;

use crate::codec::Family;
use crate::fsm::State;
use crate::rib::{self, LocRibChange, PeerInfo, Rib, RibConfig, RoutePolicy};
use deferral::Deferral;
use listener::{accept_loop, bind};
use peer::{PeerMsg, PeerTask};
use writer::{SentCounts, SessionOut};

/// The standard BGP port.
pub const BGP_PORT: u16 = 179;

/// How many messages (batches of UPDATEs to send, above all) may wait for a peer's task before
/// its session is reset.
pub const PEER_QUEUE: usize = 4096;

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
    /// At most this many next hops per learned prefix (ECMP over equally good paths); 1 keeps
    /// the single best path.
    pub max_paths: usize,
    /// Advertise IPv6 unicast (RFC 4760) beside IPv4 unicast. Off, sessions carry IPv4 only:
    /// IPv6 routes are neither sent nor taken.
    pub ipv6_unicast: bool,
    /// This speaker restarted and kept its forwarding state (graceful restart's restarting
    /// side, RFC 4724 §4.1). None: a fresh start (R bit clear, no F bits, no deferral).
    pub recovery: Option<Recovery>,
}

/// A restart that kept the forwarding state: our OPENs carry the R bit and the F bit of each
/// family in `preserved`, and route selection is deferred — our UPDATEs to the peers are held,
/// and [`Speaker::deferring`] says so to the agent, which holds its kernel programming — until
/// every peer has sent End-of-RIB or `deferral` has passed (see [`DeferralEnd`]). Then each
/// session gets the whole Adj-RIB-Out and End-of-RIB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Families whose forwarding state survived the restart (their F bit is set).
    pub preserved: Vec<Family>,
    /// The Selection_Deferral_Timer: the longest the deferral lasts.
    pub deferral: Duration,
}

/// The restarting side's state, as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryStatus {
    /// Selection deferred: these peers' End-of-RIB (or session) is still awaited.
    Deferring {
        /// The peers waited for.
        waiting_for: Vec<IpAddr>,
        /// Time left on the deferral timer.
        remaining: Duration,
    },
    /// The deferral is over.
    Done(DeferralEnd),
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
            max_paths: 1,
            ipv6_unicast: true,
            recovery: None,
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
    /// A limit on the prefixes the peer may send (RFC 4486).
    pub max_prefixes: Option<MaxPrefixes>,
    /// Import and export filters.
    pub policy: RoutePolicy,
    /// TCP MD5 signatures (RFC 2385) with this password, on our connections and on the
    /// listener for this peer's. A peer with another password, or none, never gets a session.
    pub password: Option<Md5Key>,
    /// Our IPv6 next hop on the link this peer shares with us: `(global, link-local)`. An
    /// IPv6 route whose next hop is that global address (one we originate) goes to this peer
    /// with both (next hop length 32, RFC 2545 §3); other IPv6 routes keep the global one
    /// alone. None (the peer is not on one of our links): the global next hop only.
    pub link_local_next_hop: Option<(Ipv6Addr, Ipv6Addr)>,
    /// The interface (its index, the IPv6 scope id) a link-local `address` is on: an
    /// unnumbered session (RFC 2545 §3 over a link with no global addresses, as BIRD's
    /// `neighbor fe80::1%eth0`). We connect with this scope, a connection from the address
    /// that arrives on another interface is refused, and IPv6 routes that go with our
    /// `link_local_next_hop` carry the link-local address in both of its fields: the peer has
    /// no route to a global one. None for a global peer address.
    pub scope_id: Option<u32>,
    /// Advertise the Extended Next Hop Encoding capability for IPv4 unicast with IPv6 next
    /// hops (RFC 8950) to a peer with a global address too; an unnumbered peer always gets
    /// it. With the peer's capability as well, IPv4 routes travel in MP_REACH_NLRI with our
    /// IPv6 address on the session as next hop, and the peer's IPv4 routes with IPv6 next
    /// hops are taken; without it, IPv4 routes keep IPv4 next hops (and an unnumbered session
    /// carries none: its link has no IPv4 addresses).
    pub extended_next_hop: bool,
}

/// The most prefixes a peer may have in its Adj-RIB-In, all families together. One more
/// closes the session with a Cease "maximum number of prefixes reached" (6/1, carrying the
/// family and the limit, RFC 4486 §4), its routes are withdrawn, and the session is held down
/// (the peer's connections refused) for `restart` before it starts again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPrefixes {
    /// The limit.
    pub limit: u32,
    /// How long the session stays down after a breach.
    pub restart: Duration,
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
            max_prefixes: None,
            policy: RoutePolicy::default(),
            password: None,
            link_local_next_hop: None,
            scope_id: None,
            extended_next_hop: false,
        }
    }

    /// Whether the session runs over a link-local address (see [`PeerConfig::scope_id`]).
    pub fn is_unnumbered(&self) -> bool {
        matches!(self.address, IpAddr::V6(a) if a.is_unicast_link_local())
    }

    /// Whether our OPEN offers RFC 8950 (IPv4 routes with IPv6 next hops) to this peer: to
    /// an unnumbered one always, to another IPv6 one when configured.
    pub fn offers_extended_next_hop(&self) -> bool {
        self.is_unnumbered() || (self.extended_next_hop && self.address.is_ipv6())
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
    /// UPDATE messages received in this session (0 while no session is up).
    pub updates_received: u64,
    /// UPDATE messages sent in this session.
    pub updates_sent: u64,
    /// All messages received in this session.
    pub messages_received: u64,
    /// All messages sent in this session.
    pub messages_sent: u64,
    /// The same counts over the peer's whole life (every session, this one included).
    pub total: MessageCounts,
    /// Times the session reached Established.
    pub established_transitions: u64,
    /// The last NOTIFICATION sent or received, or the last malformed-UPDATE handling.
    pub last_error: Option<String>,
    /// The peer's OPEN of the current (or last) session carried graceful restart's R bit:
    /// it had restarted.
    pub peer_restarted: bool,
    /// Sessions in which the peer's OPEN carried the R bit.
    pub peer_restarts: u64,
    /// Our restart's deferral still waits for this peer (its session, or its End-of-RIB), or
    /// the peer has the R bit and its End-of-RIB is still due (selection does not wait for
    /// it, but the earlier run's kernel routes are not swept before its routes are in).
    pub awaiting_end_of_rib: bool,
    /// What the current session negotiated (both sides offered it); the default (nothing)
    /// while no session is Established.
    pub negotiated: Negotiated,
}

/// The capabilities of an Established session that both sides offered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// Address families (RFC 4760).
    pub families: Vec<Family>,
    /// IPv4 unicast with IPv6 next hops (RFC 8950's Extended Next Hop Encoding).
    pub extended_next_hop: bool,
    /// Graceful restart (RFC 4724; ours on, and the peer's capability seen).
    pub graceful_restart: bool,
    /// Four-octet AS numbers (RFC 6793).
    pub four_octet_as: bool,
    /// Route refresh (RFC 2918).
    pub route_refresh: bool,
}

impl Negotiated {
    /// Short names, in a fixed order: `ipv4`, `ipv6` (families), `ENH` (RFC 8950), `GR`,
    /// `4B` (four-octet AS), `RR` (route refresh).
    pub fn names(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.families.contains(&Family::IPV4_UNICAST) {
            out.push("ipv4");
        }
        if self.families.contains(&Family::IPV6_UNICAST) {
            out.push("ipv6");
        }
        for (on, name) in [
            (self.extended_next_hop, "ENH"),
            (self.graceful_restart, "GR"),
            (self.four_octet_as, "4B"),
            (self.route_refresh, "RR"),
        ] {
            if on {
                out.push(name);
            }
        }
        out
    }
}

/// Messages counted over a peer's lifetime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageCounts {
    /// UPDATE messages received.
    pub updates_received: u64,
    /// UPDATE messages sent.
    pub updates_sent: u64,
    /// All messages received.
    pub messages_received: u64,
    /// All messages sent.
    pub messages_sent: u64,
}

impl PeerStatus {
    /// Counts one message received (an UPDATE when `update`).
    pub(crate) fn count_received(&mut self, update: bool) {
        self.messages_received += 1;
        self.total.messages_received += 1;
        if update {
            self.updates_received += 1;
            self.total.updates_received += 1;
        }
    }

    /// A new session (or none): the per-session counts start again.
    pub(crate) fn reset_session_counts(&mut self) {
        self.updates_received = 0;
        self.updates_sent = 0;
        self.messages_received = 0;
        self.messages_sent = 0;
    }

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
            total: MessageCounts::default(),
            established_transitions: 0,
            last_error: None,
            peer_restarted: false,
            peer_restarts: 0,
            awaiting_end_of_rib: false,
            negotiated: Negotiated::default(),
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
    /// A link-local peer address without its interface (or a scope on a global one).
    #[error("peer {0}: a link-local address needs its interface (fe80::…%eth1), a global one none")]
    Scope(IpAddr),
    /// The kernel refused the peer's MD5 key on the listening socket.
    #[error("cannot set the TCP MD5 key for {peer} on the listener: {source}")]
    Md5 {
        /// The peer.
        peer: IpAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
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
    /// Ends the restart's deferral when its timer runs out.
    deferral_timer: Option<JoinHandle<()>>,
    /// The listening socket, for the peers' MD5 keys.
    socket: Option<Arc<tokio::net::TcpListener>>,
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
    subscribers: Vec<subscription::Subscriber>,
    next_generation: u64,
    next_slot_id: u64,
    /// The restart's deferral (None after a fresh start).
    deferral: Option<Deferral>,
    /// True while selection is deferred.
    deferring: watch::Sender<bool>,
}

impl Core {
    /// Whether route selection is deferred now (our UPDATEs held).
    pub(super) fn deferring(&self) -> bool {
        self.deferral.as_ref().is_some_and(Deferral::is_deferring)
    }

    /// Ends the deferral if every peer is done or its timer ran out: each Established session
    /// is told to send its whole Adj-RIB-Out and End-of-RIB, and the agent may program the
    /// kernel.
    pub(super) fn poll_deferral(&mut self) {
        let Some(end) = self.deferral.as_mut().and_then(|d| d.poll(Instant::now())) else {
            return;
        };
        info!(reason = %end, "graceful restart: route selection no longer deferred; sending our routes");
        for slot in self.peers.values_mut() {
            if slot.generation != 0 {
                let release = PeerMsg::Release {
                    generation: slot.generation,
                };
                if slot.tx.try_send(release).is_err() {
                    // A queue that full is reset anyway: the next session is not held.
                    slot.generation = 0;
                    slot.overflow.notify_one();
                }
            }
        }
        self.deferring.send_replace(false);
    }
}

#[derive(Debug)]
struct Slot {
    /// Tells this peer's task from the task of an earlier peer with the same address that is
    /// still winding down.
    id: u64,
    tx: mpsc::Sender<PeerMsg>,
    /// Ends the task (closing the session with a Cease); sent once.
    stop: Option<oneshot::Sender<()>>,
    /// Wakes the task when an export could not be queued (see [`PEER_QUEUE`]).
    overflow: Arc<Notify>,
    /// Takes the session down at once (see [`Speaker::session_failed`]).
    failed: Arc<Failure>,
    task: Option<JoinHandle<()>>,
    status: PeerStatus,
    /// The Established session's generation, 0 when down or when its exports overflowed:
    /// exports of an older session are dropped by the task.
    generation: u64,
    /// A link-local peer's interface: its connections must arrive there.
    scope_id: Option<u32>,
    /// The Established session's send side, which the export writes to.
    session: Option<SessionOut>,
    /// Messages sent (written by the export as well as by the task).
    sent: Arc<SentCounts>,
}

/// Reports path failures to the speaker's sessions (see [`Speaker::session_failed`]); cheap to
/// clone, and usable from any task or thread.
#[derive(Debug, Clone)]
pub struct FailureHandle {
    shared: Arc<Shared>,
}

impl FailureHandle {
    /// See [`Speaker::session_failed`].
    pub fn session_failed(&self, address: IpAddr, reason: impl Into<String>) -> bool {
        let address = canonical(address);
        let core = self.shared.core();
        let Some(slot) = core.peers.get(&address) else {
            return false;
        };
        *slot.failed.reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.into());
        slot.failed.notify.notify_one();
        true
    }
}

/// A failure reported from outside the session (BFD), waiting for the peer's task.
#[derive(Debug, Default)]
pub(crate) struct Failure {
    pub(crate) reason: Mutex<Option<String>>,
    pub(crate) notify: Notify,
}

impl Slot {
    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
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
            max_paths: config.max_paths.max(1),
        });
        let listen = config.listen;
        let deferral = config
            .recovery
            .as_ref()
            .filter(|_| config.graceful_restart)
            .map(|r| Deferral::new(Instant::now() + r.deferral));
        let (deferring, _) = watch::channel(deferral.is_some());
        let deadline = deferral.as_ref().map(Deferral::deadline);
        let shared = Arc::new(Shared {
            config,
            core: Mutex::new(Core {
                rib,
                peers: HashMap::new(),
                subscribers: Vec::new(),
                next_generation: 1,
                next_slot_id: 1,
                deferral,
                deferring,
            }),
        });
        let deferral_timer = deadline.map(|deadline| {
            let weak = Arc::downgrade(&shared);
            tokio::spawn(async move {
                tokio::time::sleep_until(deadline).await;
                if let Some(shared) = weak.upgrade() {
                    shared.core().poll_deferral();
                }
            })
        });
        let (listener, socket, local_addr) = match listen {
            Some(address) => {
                let listener = Arc::new(
                    bind(address).map_err(|source| SpeakerError::Listen { address, source })?,
                );
                let local = listener
                    .local_addr()
                    .map_err(|source| SpeakerError::Listen { address, source })?;
                let task = tokio::spawn(accept_loop(Arc::clone(&listener), Arc::clone(&shared)));
                (Some(task), Some(listener), Some(local))
            }
            None => (None, None, None),
        };
        info!(asn = shared.config.asn, router_id = %shared.config.router_id, ?local_addr, "BGP speaker started");
        Ok(Self {
            shared,
            listener,
            deferral_timer,
            socket,
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
        if peer.is_unnumbered() != peer.scope_id.is_some() {
            return Err(SpeakerError::Scope(peer.address));
        }
        let mut core = self.shared.core();
        if core.peers.contains_key(&peer.address) {
            return Err(SpeakerError::DuplicatePeer(peer.address));
        }
        let v6_listener = self.local_addr.is_some_and(|a| a.is_ipv6());
        // An IPv6 peer cannot reach an IPv4 listener: only our own connections carry its key.
        let reachable = v6_listener || peer.address.is_ipv4();
        if let (Some(socket), Some(key), true) = (&self.socket, &peer.password, reachable) {
            let v6 = v6_listener;
            md5::set_key(socket.as_ref(), v6, peer.address, Some(key)).map_err(|source| {
                SpeakerError::Md5 {
                    peer: peer.address,
                    source,
                }
            })?;
            info!(peer = %peer.address, "TCP MD5 signatures on for this peer");
        }
        if let Some(d) = core.deferral.as_mut().filter(|d| d.is_deferring()) {
            d.add_peer(peer.address);
        }
        core.rib.add_peer(PeerInfo {
            address: peer.address,
            asn: peer.remote_asn,
            rr_client: peer.rr_client,
            // Reached at a link-local address over its interface, or on the link our
            // link-local next hop belongs to: a link-local next hop means something between
            // peers of the same link only.
            link: match (peer.scope_id, peer.link_local_next_hop) {
                (Some(index), _) => Some(rib::Link::Interface(index)),
                (None, Some(_)) => Some(rib::Link::Underlay),
                (None, None) => None,
            },
            policy: peer.policy.clone(),
        });
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        let (stop, stopped) = oneshot::channel();
        let overflow = Arc::new(Notify::new());
        let failed = Arc::new(Failure::default());
        let sent = Arc::new(SentCounts::default());
        let id = core.next_slot_id;
        core.next_slot_id += 1;
        let task = PeerTask::new(
            Arc::clone(&self.shared),
            peer.clone(),
            id,
            tx.clone(),
            Arc::clone(&overflow),
            Arc::clone(&failed),
            Arc::clone(&sent),
        );
        let handle = tokio::spawn(task.run(rx, stopped));
        core.peers.insert(
            peer.address,
            Slot {
                id,
                tx,
                stop: Some(stop),
                overflow,
                failed,
                task: Some(handle),
                status: PeerStatus::new(&peer),
                generation: 0,
                scope_id: peer.scope_id,
                session: None,
                sent,
            },
        );
        Ok(())
    }

    /// The path to `address` failed (BFD said so): an Established session ends at once with a
    /// Cease, and its routes are withdrawn without graceful restart's stale period — the peer
    /// is unreachable, so its routes cannot be used (RFC 5882 §3.2 and §4.3.2; BIRD does the
    /// same unless told `bfd graceful`). The session then starts again as after any error.
    /// A session already lost whose routes graceful restart keeps stale (the connection broke
    /// first) has them withdrawn now. Returns whether the peer is configured.
    pub fn session_failed(&self, address: IpAddr, reason: impl Into<String>) -> bool {
        self.failures().session_failed(address, reason)
    }

    /// A handle that reports path failures from another task (BFD's), without the speaker.
    pub fn failures(&self) -> FailureHandle {
        FailureHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Removes a peer: its session is closed with a Cease and its routes are withdrawn.
    pub fn remove_peer(&self, address: IpAddr) -> Result<(), SpeakerError> {
        let address = canonical(address);
        let mut core = self.shared.core();
        let mut slot = core
            .peers
            .remove(&address)
            .ok_or(SpeakerError::UnknownPeer(address))?;
        slot.stop();
        let v6 = self.local_addr.is_some_and(|a| a.is_ipv6());
        if let Some(socket) = self.socket.as_ref().filter(|_| v6 || address.is_ipv4())
            && let Err(e) = md5::set_key(socket.as_ref(), v6, address, None)
        {
            tracing::warn!(peer = %address, error = %e, "cannot remove the peer's TCP MD5 key");
        }
        let changes = core.rib.remove_peer(address);
        core.apply(changes);
        if let Some(d) = core.deferral.as_mut() {
            d.remove_peer(address);
        }
        core.poll_deferral();
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

    /// A stream of Loc-RIB changes: first the current best route of every prefix (in prefix
    /// order), then each prefix whose best route changed, in the order it first changed.
    ///
    /// A slow subscriber is never waited for, nor does it fall behind: what waits for it is
    /// each changed prefix once, however often it changed, and it reads the prefix's state
    /// when it reads it (a [`LocRibChange::Best`] with the best route now, or
    /// [`LocRibChange::Withdrawn`] when there is none; a prefix that came and went before it
    /// was read may be read as withdrawn without ever having been seen). Intermediate states
    /// are skipped; the final state of every prefix is always seen. The stream ends (`None`)
    /// only when the speaker shuts down.
    pub fn subscribe(&self) -> Subscription {
        let mut core = self.shared.core();
        let (subscription, subscriber) = Subscription::new(&self.shared, core.rib.loc_prefixes());
        core.subscribers.push(subscriber);
        subscription
    }

    /// The Loc-RIB now.
    pub fn routes(&self) -> Vec<rib::BestRoute> {
        self.shared.core().rib.loc_rib().collect()
    }

    /// How many best routes the Loc-RIB holds (without copying them, as [`Speaker::routes`]
    /// does).
    pub fn route_count(&self) -> usize {
        self.shared.core().rib.loc_rib_len()
    }

    /// Whether `route` is still the best route of its prefix. The agent programs the kernel
    /// one change at a time, behind the RIB: a route announced by a session that has ended
    /// since (its withdrawal queued behind) must not be installed meanwhile, so each install is
    /// fenced by this check.
    pub fn is_current(&self, route: &rib::BestRoute) -> bool {
        let core = self.shared.core();
        core.rib.best(&route.prefix).is_some_and(|best| {
            best.source == route.source
                && best.next_hop == route.next_hop
                && best.stale == route.stale
                && best.multipath == route.multipath
        })
    }

    /// True while route selection is deferred after a restart (see [`Recovery`]): the agent
    /// leaves the kernel as the last run left it until this turns false, then programs the
    /// Loc-RIB and sweeps what it no longer holds. Always false after a fresh start.
    pub fn deferring(&self) -> watch::Receiver<bool> {
        self.shared.core().deferring.subscribe()
    }

    /// The restarting side's state; None after a fresh start.
    pub fn recovery(&self) -> Option<RecoveryStatus> {
        let core = self.shared.core();
        let d = core.deferral.as_ref()?;
        Some(match d.ended() {
            Some(end) => RecoveryStatus::Done(end),
            None => RecoveryStatus::Deferring {
                waiting_for: d.waiting_for(),
                remaining: d.deadline().saturating_duration_since(Instant::now()),
            },
        })
    }

    /// Every peer's status, by address.
    pub fn peers(&self) -> Vec<PeerStatus> {
        let core = self.shared.core();
        let mut out: Vec<PeerStatus> = core
            .peers
            .iter()
            .map(|(address, slot)| {
                let mut status = slot.status.clone();
                slot.sent.fill(&mut status);
                (status.prefixes_received, status.prefixes_sent) = core.rib.counts(*address);
                status.awaiting_end_of_rib = core.deferral.as_ref().is_some_and(|d| {
                    d.is_waiting_for(*address) || d.is_settling_for(*address, Instant::now())
                });
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
                    slot.stop();
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
        for task in [self.listener.take(), self.deferral_timer.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
        let mut core = self.shared.core();
        for slot in core.peers.values_mut() {
            if let Some(task) = slot.task.take() {
                task.abort();
            }
            // The connection goes with the task, not with the last handle of the state.
            slot.session = None;
        }
        core.subscribers.clear();
    }
}

/// IPv4-mapped IPv6 addresses (from a dual-stack listener) as plain IPv4.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        IpAddr::V4(_) => address,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiated_capabilities_have_short_names_in_a_fixed_order() {
        assert!(Negotiated::default().names().is_empty());
        let all = Negotiated {
            families: vec![Family::IPV6_UNICAST, Family::IPV4_UNICAST],
            extended_next_hop: true,
            graceful_restart: true,
            four_octet_as: true,
            route_refresh: true,
        };
        assert_eq!(all.names(), ["ipv4", "ipv6", "ENH", "GR", "4B", "RR"]);
        let v4 = Negotiated {
            families: vec![Family::IPV4_UNICAST],
            four_octet_as: true,
            ..Negotiated::default()
        };
        assert_eq!(v4.names(), ["ipv4", "4B"]);
    }

    fn prefix(i: usize) -> IpNet {
        let i = u32::try_from(i).expect("small");
        let net = ipnet::Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 | (i << 8)), 24).expect("prefix");
        IpNet::V4(net)
    }

    /// Everything queued for a subscriber now, and whether its stream has ended.
    fn drain(rx: &mut Subscription) -> (Vec<RouteChange>, bool) {
        let mut out = Vec::new();
        loop {
            match rx.try_recv() {
                Ok(change) => out.push(change),
                Err(mpsc::error::TryRecvError::Empty) => return (out, false),
                Err(mpsc::error::TryRecvError::Disconnected) => return (out, true),
            }
        }
    }

    fn prefixes(changes: &[RouteChange]) -> Vec<IpNet> {
        changes
            .iter()
            .map(|c| match c {
                LocRibChange::Best(b) => b.prefix,
                LocRibChange::Withdrawn(p) => *p,
            })
            .collect()
    }

    /// A link-local peer address needs its interface, and only a link-local one takes one.
    #[tokio::test]
    async fn a_link_local_peer_needs_its_scope_and_a_global_one_none() {
        let speaker = Speaker::start(SpeakerConfig::new(64512, Ipv4Addr::new(10, 255, 0, 1)))
            .await
            .expect("starts");
        let ll: IpAddr = "fe80::5".parse().expect("address");
        let global: IpAddr = "fd00::5".parse().expect("address");
        let err = speaker.add_peer(PeerConfig::new(ll, 64512));
        assert!(
            matches!(err, Err(SpeakerError::Scope(a)) if a == ll),
            "{err:?}"
        );
        let mut scoped = PeerConfig::new(global, 64512);
        scoped.scope_id = Some(3);
        assert!(matches!(
            speaker.add_peer(scoped),
            Err(SpeakerError::Scope(_))
        ));
        let mut unnumbered = PeerConfig::new(ll, 64512);
        unnumbered.scope_id = Some(3);
        assert!(unnumbered.is_unnumbered());
        speaker.add_peer(unnumbered).expect("an unnumbered peer");
        assert_eq!(speaker.peers().len(), 1);
    }

    /// A slow subscriber never falls behind: however many changes come before it reads, it
    /// reads every changed prefix once, in the order each first changed, with its final state
    /// — withdrawals included — and its stream goes on. A later subscriber starts with the
    /// whole Loc-RIB; a fast one sees each change as it comes.
    #[tokio::test]
    async fn a_slow_subscriber_sees_the_final_state_of_every_prefix() {
        let id = Ipv4Addr::new(10, 255, 0, 1);
        let speaker = Speaker::start(SpeakerConfig::new(64512, id))
            .await
            .expect("starts");
        let next_hop = IpAddr::V4(id);
        let other = IpAddr::V4(Ipv4Addr::new(10, 255, 0, 2));
        let mut slow = speaker.subscribe();
        // Far more changes than the 4,096 that used to cost a subscriber its stream.
        let n = 10_000;
        for i in 0..n {
            speaker.announce(prefix(i), next_hop).expect("announce");
        }
        let mut fast = speaker.subscribe();
        let (snapshot, ended) = drain(&mut fast);
        assert_eq!(prefixes(&snapshot), (0..n).map(prefix).collect::<Vec<_>>());
        assert!(!ended);
        // Every prefix changes again (a new next hop), every third is withdrawn, every ninth
        // withdrawn and announced again.
        for i in 0..n {
            speaker.announce(prefix(i), other).expect("announce");
            if i % 3 == 0 {
                speaker.withdraw(prefix(i)).expect("withdraw");
            }
            if i % 9 == 0 {
                speaker.announce(prefix(i), next_hop).expect("announce");
            }
        }
        // The fast one, had it read as the changes came, would have seen each; what it reads
        // now is the latest state of each, once.
        let (got, ended) = drain(&mut fast);
        assert!(!ended);
        assert_eq!(prefixes(&got), (0..n).map(prefix).collect::<Vec<_>>());

        let (got, ended) = drain(&mut slow);
        assert!(!ended, "the stream goes on");
        assert_eq!(slow.len(), 0);
        assert_eq!(prefixes(&got), (0..n).map(prefix).collect::<Vec<_>>());
        for (i, change) in got.iter().enumerate() {
            match change {
                LocRibChange::Best(b) if i % 9 == 0 => assert_eq!(b.next_hop, next_hop),
                LocRibChange::Withdrawn(_) if i % 3 == 0 && i % 9 != 0 => {}
                LocRibChange::Best(b) if i % 3 != 0 => assert_eq!(b.next_hop, other),
                c => panic!("prefix {i}: {c:?}"),
            }
        }
        // What it read is the Loc-RIB.
        let best: Vec<_> = got
            .iter()
            .filter_map(|c| match c {
                LocRibChange::Best(b) => Some(b.clone()),
                LocRibChange::Withdrawn(_) => None,
            })
            .collect();
        assert_eq!(best, speaker.routes());
        // And it is live.
        speaker.withdraw(prefix(1)).expect("withdraw");
        assert_eq!(slow.recv().await, Some(LocRibChange::Withdrawn(prefix(1))));
        // A prefix that came and went before it was read reads as withdrawn.
        let extra = prefix(n + 1);
        speaker.announce(extra, next_hop).expect("announce");
        speaker.withdraw(extra).expect("withdraw");
        assert_eq!(drain(&mut slow).0, [LocRibChange::Withdrawn(extra)]);
        // The stream ends when the speaker shuts down.
        drop(speaker);
        let ended = tokio::time::timeout(Duration::from_secs(5), slow.recv())
            .await
            .expect("the stream ends");
        assert_eq!(ended, None);
    }
}
