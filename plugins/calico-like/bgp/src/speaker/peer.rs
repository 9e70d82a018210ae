//! A peer's task: it owns the session's connection and FSM, carries out the FSM's actions,
//! and feeds what the peer sends into the RIB.

use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tracing::{debug, info, warn};

use super::writer::{Encoded, Export, SentCounts, SessionOut, Writer};
use super::{Core, Failure, MaxPrefixes, PeerConfig, PeerStatus, Shared, canonical};
use crate::codec::{
    self, Capability, CeaseSubcode, Context, DecodeError, Decoded, ExtendedNextHop, Family,
    GrFamily, GracefulRestartCap, Message, Notification, Open, Update,
};
use crate::fsm::{Action, Event, Fsm, FsmConfig, State, Timer};
use crate::rib::{OutChange, Path, SessionInfo};

/// Messages to a peer's task.
#[derive(Debug)]
pub(super) enum PeerMsg {
    /// The listener accepted a connection from this peer.
    Incoming(TcpStream),
    /// Adj-RIB-Out changes for the session of this generation, that had to wait behind what
    /// the task sends (see `writer`).
    Export {
        generation: u64,
        export: Arc<Export>,
    },
    /// Our outgoing connection attempt finished.
    Connected {
        attempt: u64,
        result: std::io::Result<TcpStream>,
    },
    /// Our restart's deferral is over: the session of this generation sends its whole
    /// Adj-RIB-Out and End-of-RIB, if it held them.
    Release { generation: u64 },
    /// A colliding connection finished its OPEN exchange.
    Candidate {
        stream: TcpStream,
        open: Open,
        rest: Vec<u8>,
    },
}

#[derive(Debug)]
pub(super) struct Conn {
    pub(super) read: OwnedReadHalf,
    /// The send side, shared with the RIB's export while the session is Established.
    pub(super) writer: Arc<Writer>,
    pub(super) buf: Vec<u8>,
    /// We initiated it (RFC 4271 §6.8 needs to know).
    pub(super) outgoing: bool,
    pub(super) local: SocketAddr,
}

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Timers {
    pub(super) connect_retry: Option<Instant>,
    pub(super) hold: Option<Instant>,
    pub(super) keepalive: Option<Instant>,
    pub(super) idle_hold: Option<Instant>,
    /// Graceful restart: when the peer's stale routes are purged.
    pub(super) stale: Option<Instant>,
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
pub(super) fn owned(
    shared: &Shared,
    address: IpAddr,
    slot_id: u64,
) -> Option<MutexGuard<'_, Core>> {
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
pub(super) struct PeerTask {
    pub(super) shared: Arc<Shared>,
    pub(super) config: PeerConfig,
    pub(super) slot_id: u64,
    pub(super) fsm: Fsm,
    pub(super) tx: mpsc::Sender<PeerMsg>,
    /// Notified when an export could not be queued (see [`PEER_QUEUE`](super::PEER_QUEUE)).
    pub(super) overflow: Arc<Notify>,
    /// Set with its reason when BFD reports the path down.
    pub(super) failed: Arc<Failure>,
    pub(super) conn: Option<Conn>,
    pub(super) attempt: u64,
    pub(super) connecting: Option<JoinHandle<()>>,
    pub(super) candidate: Option<JoinHandle<()>>,
    pub(super) timers: Timers,
    pub(super) cx: Context,
    pub(super) remote_open: Option<Open>,
    /// The session's generation while Established.
    pub(super) generation: u64,
    pub(super) families: Vec<Family>,
    /// The peer's graceful restart capability, if both sides have it.
    pub(super) peer_gr: Option<GracefulRestartCap>,
    /// Both sides offered RFC 8950 for IPv4 unicast: IPv4 routes with IPv6 next hops travel.
    pub(super) extended_next_hop: bool,
    /// Our OPEN already went out on the connection being adopted.
    pub(super) open_sent: bool,
    /// A write failed: the transport is gone.
    pub(super) broken: bool,
    pub(super) status: PeerStatus,
    /// Messages sent, counted by whoever writes them (see `writer`).
    pub(super) sent: Arc<SentCounts>,
    pub(super) stopping: bool,
    /// Set after a max-prefix breach: until then the peer's connections are refused.
    pub(super) held_down: Option<Instant>,
    /// Why the session is ending: the NOTIFICATION sent or received since it was Established.
    pub(super) cause: Option<String>,
    /// The session came up while our restart deferred selection: its Adj-RIB-Out and
    /// End-of-RIB wait for [`PeerMsg::Release`].
    pub(super) held: bool,
}

impl PeerTask {
    pub(super) fn new(
        shared: Arc<Shared>,
        config: PeerConfig,
        slot_id: u64,
        tx: mpsc::Sender<PeerMsg>,
        overflow: Arc<Notify>,
        failed: Arc<Failure>,
        sent: Arc<SentCounts>,
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
            overflow,
            failed,
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
            extended_next_hop: false,
            open_sent: false,
            broken: false,
            status,
            sent,
            stopping: false,
            cause: None,
            held_down: None,
            held: false,
        }
    }

    pub(super) fn address(&self) -> IpAddr {
        self.config.address
    }

    /// Runs the session until `stopped` fires (or the speaker goes away).
    pub(super) async fn run(
        mut self,
        mut rx: mpsc::Receiver<PeerMsg>,
        mut stopped: oneshot::Receiver<()>,
    ) {
        let overflow = Arc::clone(&self.overflow);
        let failed = Arc::clone(&self.failed);
        self.step(Event::ManualStart).await;
        self.publish();
        while !self.stopping {
            let t = self.timers;
            let writer = self.conn.as_ref().map(|c| Arc::clone(&c.writer));
            let conn = &mut self.conn;
            let read = async move {
                match conn {
                    Some(c) => {
                        c.buf.reserve(4096);
                        c.read.read_buf(&mut c.buf).await
                    }
                    None => std::future::pending().await,
                }
            };
            // Bytes the export could not write at once, or a write that failed.
            let unwritten = async move {
                match writer {
                    Some(w) => w.wake.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // Removed, or the speaker shuts down: close with a Cease.
                _ = &mut stopped => {
                    self.step(Event::ManualStop).await;
                    self.stopping = true;
                }
                msg = rx.recv() => match msg {
                    Some(msg) => self.on_message(msg).await,
                    None => break,
                },
                _ = overflow.notified() => self.on_overflow().await,
                () = unwritten => {
                    self.flush().await;
                }
                _ = failed.notify.notified() => {
                    let reason = failed.reason.lock().unwrap_or_else(|e| e.into_inner()).take();
                    if let Some(reason) = reason {
                        self.path_failed(reason).await;
                    }
                }
                read = read => match read {
                    Ok(0) | Err(_) => {
                        debug!(peer = %self.address(), "connection closed by peer");
                        self.step(Event::TcpConnectionFails).await;
                    }
                    Ok(_) => self.drain_frames().await,
                },
                _ = sleep_until(t.connect_retry.unwrap_or_else(never)), if t.connect_retry.is_some() => {
                    self.timers.connect_retry = None;
                    if self.config.password.is_some() && self.fsm.state() == State::Connect {
                        // The kernels drop segments with a wrong or missing signature without
                        // a word: a connection that never completes is all there is to see.
                        warn!(
                            peer = %self.address(),
                            "no session with TCP MD5 configured: the connection did not complete; \
                             the peer may have another password or none (its segments and ours are \
                             dropped silently)"
                        );
                    }
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
                    if self.held_down.take().is_some() {
                        info!(peer = %self.address(), "max-prefix hold-down over: the session starts again");
                    }
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
        self.sent.fill(&mut self.status);
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
            PeerMsg::Export { generation, export } => {
                if generation == self.generation
                    && self.fsm.state() == State::Established
                    && let Some(conn) = self.conn.as_ref()
                {
                    // In line behind what went before it; it holds the export back no more.
                    conn.writer.push_released(export.encoded());
                    self.flush().await;
                }
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
            PeerMsg::Release { generation } => {
                if generation == self.generation
                    && self.held
                    && self.fsm.state() == State::Established
                {
                    self.held = false;
                    self.send_all().await;
                    self.release_writer();
                }
            }
            PeerMsg::Candidate { stream, open, rest } => {
                self.candidate = None;
                self.on_candidate(stream, open, rest).await;
            }
        }
    }

    pub(super) fn adopt(
        &mut self,
        stream: TcpStream,
        local: SocketAddr,
        outgoing: bool,
        buf: Vec<u8>,
    ) {
        if let Some(old) = self.conn.take() {
            self.detach_writer(&old.writer);
        }
        let (read, write) = stream.into_split();
        self.conn = Some(Conn {
            read,
            writer: Arc::new(Writer::new(write, Arc::clone(&self.sent))),
            buf,
            outgoing,
            local,
        });
        self.cx = Context::default();
        self.remote_open = None;
        self.status.reset_session_counts();
        self.sent.new_session();
    }

    /// The export no longer writes to this connection's writer (its session is over).
    pub(super) fn detach_writer(&self, writer: &Arc<Writer>) {
        let address = self.address();
        if let Some(mut core) = owned(&self.shared, address, self.slot_id)
            && let Some(slot) = core.peers.get_mut(&address)
            && slot
                .session
                .as_ref()
                .is_some_and(|s| Arc::ptr_eq(&s.writer, writer))
        {
            slot.session = None;
        }
    }

    /// The snapshot of the Adj-RIB-Out the task sent is queued: exports may be written
    /// directly again (once those that waited behind it are).
    pub(super) fn release_writer(&self) {
        if let Some(conn) = self.conn.as_ref() {
            conn.writer.release();
        }
    }

    pub(super) fn cancel_connect(&mut self) {
        self.attempt += 1;
        if let Some(c) = self.connecting.take() {
            c.abort();
        }
    }

    /// Decodes every whole message in the buffer.
    pub(super) async fn drain_frames(&mut self) {
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
            // Byte 18 is the message type; 2 is UPDATE.
            self.status.count_received(frame.get(18) == Some(&2));
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
                warn!(
                    peer = %self.address(),
                    code = n.code_name(),
                    subcode = n.subcode_name(),
                    notification = %n,
                    "received NOTIFICATION: the peer closes the session"
                );
                self.note_error(format!("received NOTIFICATION {n}"));
                self.cause = Some(format!("received NOTIFICATION {n}"));
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
                let errors = codec::describe_errors(&errors);
                warn!(peer = %self.address(), %errors, "malformed UPDATE attributes discarded, the routes kept");
                self.note_error(format!("UPDATE attributes discarded: {errors}"));
                if self.step(Event::UpdateMsg).await {
                    self.receive_update(update).await;
                }
            }
            Decoded::TreatAsWithdraw { withdrawn, errors } => {
                let errors = codec::describe_errors(&errors);
                warn!(
                    peer = %self.address(),
                    prefixes = withdrawn.len(),
                    %errors,
                    "malformed UPDATE treated as withdraw: its prefixes are withdrawn, the session stays up"
                );
                self.note_error(format!("UPDATE treated as withdraw: {errors}"));
                if self.step(Event::UpdateMsg).await {
                    let address = self.address();
                    if let Some(mut core) = owned(&self.shared, address, self.slot_id) {
                        let changes = core.rib.update(address, Vec::new(), withdrawn);
                        core.apply(changes);
                    }
                }
            }
        }
    }

    pub(super) async fn receive_open(&mut self, open: Open) {
        self.cx = Context {
            four_octet_as: open.four_octet_as().is_some(),
        };
        self.status.remote_id = Some(open.bgp_id);
        self.remote_open = Some(open.clone());
        self.step(Event::BgpOpen(open)).await;
    }

    pub(super) fn note_error(&mut self, error: String) {
        debug!(peer = %self.address(), %error);
        self.status.last_error = Some(error);
    }

    /// Feeds one event to the FSM and carries out its actions. Returns whether an UPDATE is
    /// to be processed.
    pub(super) async fn step(&mut self, event: Event) -> bool {
        let actions = self.fsm.handle(event);
        // The NOTIFICATION we send is why the session ends (a cause already given, a BFD
        // down, is the better reason); the session goes down before it is sent.
        if self.cause.is_none()
            && let Some(n) = actions.iter().find_map(|a| match a {
                Action::SendNotification(n) => Some(n),
                _ => None,
            })
        {
            self.cause = Some(format!("sent NOTIFICATION {n}"));
        }
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
                    let what = if n.code == codec::notification::code::OPEN_MESSAGE {
                        "refused the peer's OPEN: sending NOTIFICATION"
                    } else {
                        "sending NOTIFICATION: closing the session"
                    };
                    warn!(
                        peer = %self.address(),
                        code = n.code_name(),
                        subcode = n.subcode_name(),
                        notification = %n,
                        "{what}"
                    );
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
        let target = match (self.config.address, self.config.scope_id) {
            // An unnumbered peer: the link-local address on its interface.
            (IpAddr::V6(a), Some(scope)) => {
                SocketAddr::V6(SocketAddrV6::new(a, self.config.port, 0, scope))
            }
            (address, _) => SocketAddr::new(address, self.config.port),
        };
        let local = self.config.local_address;
        let password = self.config.password.clone();
        self.connecting = Some(tokio::spawn(async move {
            let result = async {
                let socket = match target {
                    SocketAddr::V4(_) => TcpSocket::new_v4()?,
                    SocketAddr::V6(_) => TcpSocket::new_v6()?,
                };
                if let Some(key) = &password {
                    super::md5::set_key(&socket, target.is_ipv6(), target.ip(), Some(key))?;
                }
                if let Some(local) = local {
                    socket.bind(SocketAddr::new(local, 0))?;
                }
                socket.connect(target).await
            }
            .await;
            let _ = tx.send(PeerMsg::Connected { attempt, result }).await;
        }));
    }

    async fn drop_connection(&mut self) {
        self.cancel_connect();
        if let Some(conn) = self.conn.take() {
            self.detach_writer(&conn.writer);
            tokio::spawn(linger(conn));
        }
        self.remote_open = None;
    }

    pub(super) fn our_open(&self) -> Open {
        let config = &self.shared.config;
        let ours = our_families(config);
        let mut capabilities: Vec<Capability> = ours
            .iter()
            .copied()
            .map(Capability::Multiprotocol)
            .collect();
        capabilities.extend([
            Capability::RouteRefresh,
            Capability::FourOctetAs(config.asn),
        ]);
        if self.config.offers_extended_next_hop() {
            capabilities.push(Capability::ExtendedNextHop(vec![
                ExtendedNextHop::IPV4_UNICAST_VIA_IPV6,
            ]));
        }
        if config.graceful_restart {
            // R and F bits: set after a restart that kept the forwarding state of the family
            // (RFC 4724 §3; clear on a fresh start, when nothing was kept). The R bit stays on
            // every OPEN until the deferral is over, so a session that resets meanwhile still
            // tells the peer not to wait for our End-of-RIB.
            let restarting = config.recovery.is_some()
                && owned(&self.shared, self.config.address, self.slot_id)
                    .is_some_and(|core| core.deferring());
            let families = ours
                .into_iter()
                .map(|family| GrFamily {
                    family,
                    forwarding_preserved: config
                        .recovery
                        .as_ref()
                        .is_some_and(|r| r.preserved.contains(&family)),
                })
                .collect();
            capabilities.push(Capability::GracefulRestart(GracefulRestartCap::new(
                restarting,
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
    pub(super) async fn send(&mut self, message: &Message) -> bool {
        if self.conn.is_none() {
            return false;
        }
        match Encoded::message(message, &self.cx) {
            Ok(encoded) => self.send_encoded(Arc::new(encoded)).await,
            Err(e) => {
                warn!(peer = %self.config.address, error = %e, "cannot encode message");
                false
            }
        }
    }

    /// Queues encoded messages behind whatever waits and writes it all, waiting for the
    /// socket up to the hold time; a failure marks the transport broken.
    pub(super) async fn send_encoded(&mut self, encoded: Arc<Encoded>) -> bool {
        let Some(conn) = self.conn.as_ref() else {
            return false;
        };
        conn.writer.push(encoded);
        self.flush().await
    }

    /// Writes what waits for the socket, up to the hold time; a failure marks the transport
    /// broken.
    pub(super) async fn flush(&mut self) -> bool {
        let Some(writer) = self.conn.as_ref().map(|c| Arc::clone(&c.writer)) else {
            return false;
        };
        let limit = Duration::from_secs(u64::from(self.fsm.negotiated_hold_time().max(10)));
        let written = writer.flush(limit).await;
        if !written {
            self.broken = true;
        }
        written
    }

    /// The session is up: send the Adj-RIB-Out, then End-of-RIB for each family.
    async fn established(&mut self) {
        let Some(open) = self.remote_open.clone() else {
            return;
        };
        let Some(local) = self.conn.as_ref().map(|c| canonical(c.local.ip())) else {
            return;
        };
        // Negotiated: what both sides advertised (RFC 4760 §8).
        let ours = our_families(&self.shared.config);
        self.families = open
            .families()
            .into_iter()
            .filter(|f| f.is_supported() && ours.contains(f))
            .collect();
        // RFC 8950 §3: IPv4 routes may carry IPv6 next hops once both sides said so.
        self.extended_next_hop = self.config.offers_extended_next_hop()
            && self.families.contains(&Family::IPV4_UNICAST)
            && open.extended_next_hop(ExtendedNextHop::IPV4_UNICAST_VIA_IPV6);
        if self.config.is_unnumbered()
            && !self.extended_next_hop
            && self.families.contains(&Family::IPV4_UNICAST)
        {
            // The link has no IPv4 addresses: an IPv4 next hop either way would name nothing
            // the peer (or we) can reach on it. IPv4 unicast stays unused on this session.
            info!(
                peer = %self.address(),
                "the unnumbered peer did not offer the Extended Next Hop capability (RFC 8950): no IPv4 routes on this session"
            );
            self.families.retain(|f| *f != Family::IPV4_UNICAST);
        }
        self.peer_gr = if self.shared.config.graceful_restart {
            open.graceful_restart().cloned()
        } else {
            None
        };
        self.status.negotiated = super::Negotiated {
            families: self.families.clone(),
            extended_next_hop: self.extended_next_hop,
            graceful_restart: self.peer_gr.is_some(),
            four_octet_as: self.cx.four_octet_as,
            route_refresh: open.route_refresh(),
        };
        self.status.peer_restarted = open.graceful_restart().is_some_and(|g| g.restart_state);
        if self.status.peer_restarted {
            self.status.peer_restarts += 1;
            info!(peer = %self.address(), "the peer restarted (R bit): our routes go to it at once, without waiting for its End-of-RIB");
        }
        let address = self.address();
        let now = Instant::now();
        self.status.established_at = Some(now);
        self.cause = None;
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
                // The export writes to this session from now on, but not before the task has
                // queued the session's first UPDATEs (see `release_writer`).
                slot.session = self.conn.as_ref().map(|c| {
                    c.writer.hold();
                    SessionOut {
                        writer: Arc::clone(&c.writer),
                        cx: self.cx,
                        link_local: self.config.link_local_next_hop,
                        unnumbered: self.config.is_unnumbered(),
                    }
                });
            }
            let initial = core.rib.session_up(
                address,
                SessionInfo {
                    router_id: open.bgp_id,
                    local_address: local,
                    families: self.families.clone(),
                    extended_next_hop: self.extended_next_hop,
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
            // Our own restart: this peer's End-of-RIB is awaited (or not, RFC 4724 §4.1), and
            // while selection is deferred our routes wait.
            if let Some(d) = core.deferral.as_mut().filter(|d| d.is_deferring()) {
                d.established(address, &self.families, self.peer_gr.as_ref());
            }
            core.poll_deferral();
            self.held = core.deferring();
            (initial, core.rib.has_stale(address))
        };
        if stale {
            let wait = self.peer_gr.as_ref().map_or(0, |g| g.restart_time());
            self.timers.stale = Some(now + Duration::from_secs(u64::from(wait.max(1))));
        }
        info!(peer = %address, families = ?self.families, extended_next_hop = self.extended_next_hop, held = self.held, "session established");
        if self.held {
            return;
        }
        self.send_out(initial).await;
        self.send_end_of_rib().await;
        self.release_writer();
    }

    /// End-of-RIB for every family of the session.
    async fn send_end_of_rib(&mut self) {
        for family in self.families.clone() {
            self.send(&Message::Update(Update::end_of_rib(family)))
                .await;
        }
    }

    /// The whole Adj-RIB-Out, then End-of-RIB (the deferral after our restart is over).
    async fn send_all(&mut self) {
        let routes = match owned(&self.shared, self.config.address, self.slot_id) {
            Some(core) => core.rib.adj_out(self.config.address),
            None => return,
        };
        let changes = routes
            .into_iter()
            .map(|(prefix, path)| OutChange::Announce(prefix, path))
            .collect();
        self.send_out(changes).await;
        self.send_end_of_rib().await;
    }

    fn session_down(&mut self, graceful: bool) {
        let address = self.address();
        let keep = graceful && self.peer_gr.is_some();
        let reason = self
            .cause
            .take()
            .unwrap_or_else(|| "the connection closed".into());
        warn!(peer = %address, graceful_restart = keep, %reason, "session down");
        self.generation = 0;
        self.held = false;
        self.extended_next_hop = false;
        self.status.reset_session_counts();
        self.sent.new_session();
        self.status.established_at = None;
        self.status.hold_time = 0;
        self.status.negotiated = super::Negotiated::default();
        let Some(mut core) = owned(&self.shared, address, self.slot_id) else {
            return;
        };
        if let Some(slot) = core.peers.get_mut(&address) {
            slot.generation = 0;
            slot.session = None;
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
            if let Some(d) = core.deferral.as_mut() {
                d.end_of_rib(address, family);
            }
            core.poll_deferral();
            return;
        }
        let mut withdrawn: Vec<IpNet> = update.withdrawn.iter().copied().map(IpNet::V4).collect();
        if let Some(unreach) = &update.mp_unreach {
            withdrawn.extend(unreach.prefixes());
        }
        let mut announced = Vec::new();
        // One copy of the attributes (NEXT_HOP is each path's own) for every route of the
        // UPDATE.
        let attrs = std::sync::Arc::new(codec::PathAttributes {
            next_hop: None,
            ..update.attributes.clone()
        });
        if let Some(next_hop) = update.attributes.next_hop {
            for prefix in &update.nlri {
                announced.push((
                    IpNet::V4(*prefix),
                    Path::shared(attrs.clone(), IpAddr::V4(next_hop)),
                ));
            }
        }
        match &update.mp_reach {
            Some(codec::MpReach::Ipv4 { next_hop, nlri }) => {
                for prefix in nlri {
                    announced.push((
                        IpNet::V4(*prefix),
                        Path::shared(attrs.clone(), IpAddr::V4(*next_hop)),
                    ));
                }
            }
            Some(codec::MpReach::Ipv4ViaIpv6 {
                next_hop,
                link_local,
                nlri,
            }) => {
                if self.extended_next_hop {
                    // A link-local next hop is tied to the session's interface, as for IPv6.
                    let next_hop = crate::rib::received_ipv6_next_hop(*next_hop, *link_local);
                    for prefix in nlri {
                        announced.push((
                            IpNet::V4(*prefix),
                            Path::shared(attrs.clone(), IpAddr::V6(next_hop)),
                        ));
                    }
                } else {
                    // IPv6 next hops for IPv4 routes were not agreed (RFC 8950 §3): nothing
                    // here is installable, and an earlier route for the prefixes is gone.
                    warn!(
                        peer = %address,
                        prefixes = nlri.len(),
                        "IPv4 routes with an IPv6 next hop, but the Extended Next Hop capability was not negotiated: treated as withdrawn"
                    );
                    self.note_error(
                        "IPv4 routes with IPv6 next hops without RFC 8950 negotiated: treated as withdrawn"
                            .into(),
                    );
                    withdrawn.extend(nlri.iter().copied().map(IpNet::V4));
                }
            }
            Some(codec::MpReach::Ipv6 {
                next_hop,
                link_local,
                nlri,
            }) => {
                let next_hop = crate::rib::received_ipv6_next_hop(*next_hop, *link_local);
                for prefix in nlri {
                    announced.push((
                        IpNet::V6(*prefix),
                        Path::shared(attrs.clone(), IpAddr::V6(next_hop)),
                    ));
                }
            }
            None => {}
        }
        // A family the session did not negotiate (we did not advertise it) is not taken.
        announced.retain(|(prefix, _)| self.families.contains(&crate::rib::family_of(prefix)));
        let family = announced
            .first()
            .map_or(Family::IPV4_UNICAST, |(p, _)| crate::rib::family_of(p));
        let received = {
            let Some(mut core) = owned(&self.shared, address, self.slot_id) else {
                return;
            };
            let changes = core.rib.update(address, announced, withdrawn);
            core.apply(changes);
            core.rib.counts(address).0
        };
        if let Some(max) = self.config.max_prefixes
            && received > max.limit as usize
        {
            self.max_prefixes_reached(max, family, received).await;
        }
    }

    /// The path to the peer failed (BFD): end an Established session now, with a Cease, and
    /// no graceful restart for its routes (the FSM's automatic stop is never graceful).
    async fn path_failed(&mut self, reason: String) {
        if self.fsm.state() != State::Established {
            // The connection went first (a crashed peer): graceful restart may be holding its
            // routes stale. The path is gone too, so nothing will forward them: purge now
            // instead of at the end of the restart time (RFC 5882 §4.3.2; BIRD does the same).
            let address = self.address();
            let purged = owned(&self.shared, address, self.slot_id).is_some_and(|mut core| {
                if !core.rib.has_stale(address) {
                    return false;
                }
                let changes = core.rib.purge_stale(address);
                core.apply(changes);
                true
            });
            if purged {
                self.timers.stale = None;
                warn!(peer = %address, %reason, "BFD down during graceful restart: the peer's stale routes are withdrawn");
                self.note_error(format!("BFD down: {reason} (stale routes withdrawn)"));
            } else {
                debug!(peer = %address, %reason, "path down while no session is up");
            }
            return;
        }
        warn!(peer = %self.address(), %reason, "BFD down: closing the session and withdrawing its routes");
        let what = format!("BFD down: {reason}");
        self.cause = Some(what.clone());
        // Cease without subcode, as BIRD sends on a BFD down; over a dead path it is lost
        // anyway, and the peer's own BFD takes its side down.
        let n = Notification::new(codec::notification::code::CEASE, 0, Vec::new());
        self.step(Event::AutomaticStop(n)).await;
        self.note_error(what);
    }

    /// RFC 4486: too many prefixes. Cease/1 with the family and the limit, the routes gone
    /// with the session, and no new session (ours or the peer's) until `max.restart` is over.
    async fn max_prefixes_reached(&mut self, max: MaxPrefixes, family: Family, received: usize) {
        warn!(
            peer = %self.address(),
            limit = max.limit,
            received,
            %family,
            hold_down_seconds = max.restart.as_secs(),
            "the peer sent more prefixes than its limit: closing the session"
        );
        let mut data = Vec::with_capacity(7);
        data.extend_from_slice(&family.afi.to_be_bytes());
        data.push(family.safi);
        data.extend_from_slice(&max.limit.to_be_bytes());
        let n = Notification::new(
            codec::notification::code::CEASE,
            CeaseSubcode::MaximumPrefixesReached as u8,
            data,
        );
        self.step(Event::AutomaticStop(n)).await;
        let until = Instant::now() + max.restart;
        self.timers.idle_hold = Some(until);
        self.held_down = Some(until);
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

/// Closes a connection without losing what we sent last (a NOTIFICATION): the send side is
/// shut down (FIN after the data), and what the peer still sends is read and thrown away until
/// it closes too, for at most [`LINGER`]. Closing a socket with unread data would send a RST,
/// and a RST makes the peer's kernel drop whatever it has not read yet.
async fn linger(conn: Conn) {
    let Conn {
        mut read, writer, ..
    } = conn;
    // The last handle of the send side (the export's was detached): dropping it is the FIN.
    drop(writer);
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(1..) = read.read(&mut sink).await {}
    })
    .await;
}

/// How long a closed connection keeps reading for the peer's close (see [`linger`]).
const LINGER: Duration = Duration::from_secs(2);

/// The families we advertise: IPv4 unicast, and IPv6 unicast unless switched off.
fn our_families(config: &super::SpeakerConfig) -> Vec<Family> {
    let mut out = vec![Family::IPV4_UNICAST];
    if config.ipv6_unicast {
        out.push(Family::IPV6_UNICAST);
    }
    out
}
