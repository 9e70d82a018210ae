//! The BGP finite state machine (RFC 4271 §8) as a pure transition function.
//!
//! [`Fsm::handle`] takes one [`Event`] and returns the [`Action`]s the session must carry out
//! (send a message, start or stop a timer, open or drop the TCP connection). It does no I/O and
//! reads no clock, so every transition can be tested on its own, the way RFC 4271 §8.2.2 lists
//! them.
//!
//! Deviations from the letter of §8.2.2, chosen for a speaker that must reconnect by itself:
//! - Going to Idle after an error starts the IdleHold timer (the optional
//!   DampPeerOscillations behaviour of §8.1.1); its expiry is the AutomaticStart event.
//! - The ConnectRetry and IdleHold intervals back off: the base interval doubles with every
//!   consecutive failure (the ConnectRetryCounter), up to a maximum. Reaching Established
//!   resets the counter.
//! - A TCP failure in Connect goes to Active (and waits for ConnectRetry) rather than Idle.
//! - A passive peer never initiates a connection: ConnectRetry does not run in Active.
//! - DelayOpen and the optional collision-detection events in Established are not modelled;
//!   connection collisions are resolved by the session owner with [`keep_locally_initiated`]
//!   and the [`Event::OpenCollisionDump`] event.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::codec::{CeaseSubcode, FsmSubcode, Notification, Open, OpenSubcode};

/// The hold time used while waiting for the peer's OPEN (RFC 4271 §8.2.2 suggests 4 minutes).
pub const LARGE_HOLD_TIME: Duration = Duration::from_secs(240);

/// The six session states (RFC 4271 §8.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Refuses connections; waits for a start event.
    Idle,
    /// Waiting for an outgoing TCP connection to complete.
    Connect,
    /// Waiting for the peer to connect to us.
    Active,
    /// OPEN sent, waiting for the peer's OPEN.
    OpenSent,
    /// OPENs exchanged, waiting for the peer's KEEPALIVE.
    OpenConfirm,
    /// The session is up: UPDATEs flow.
    Established,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Idle => "Idle",
            Self::Connect => "Connect",
            Self::Active => "Active",
            Self::OpenSent => "OpenSent",
            Self::OpenConfirm => "OpenConfirm",
            Self::Established => "Established",
        })
    }
}

/// The session timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// Time between outgoing connection attempts.
    ConnectRetry,
    /// Time without a KEEPALIVE or UPDATE before the peer is declared dead.
    Hold,
    /// Time between our KEEPALIVEs.
    Keepalive,
    /// Time in Idle before an automatic restart after an error.
    IdleHold,
}

/// FSM events (RFC 4271 §8.1), with the messages that carry data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Event 1: the operator starts the session.
    ManualStart,
    /// Event 2: the operator stops the session.
    ManualStop,
    /// Event 3: the session restarts by itself (here: the IdleHold timer ran out).
    AutomaticStart,
    /// Event 5: an automatic restart that waits for the peer's connection (used when the
    /// peer's connection is already there to be adopted).
    AutomaticStartPassive,
    /// Event 8: the speaker stops the session by itself (here: it could no longer queue what
    /// the peer must be sent); carries the NOTIFICATION (a Cease) to send. The session restarts
    /// automatically, as after an error.
    AutomaticStop(Notification),
    /// Event 9.
    ConnectRetryTimerExpires,
    /// Event 10.
    HoldTimerExpires,
    /// Event 11.
    KeepaliveTimerExpires,
    /// Event 13 (IdleHoldTimer_Expires); the owner normally feeds [`Event::AutomaticStart`].
    IdleHoldTimerExpires,
    /// Event 16/17: our outgoing connection completed.
    TcpCrAcked,
    /// Event 17: the peer's connection to us was accepted.
    TcpConnectionConfirmed,
    /// Event 18: the connection failed or closed.
    TcpConnectionFails,
    /// Event 19: a well-formed OPEN.
    BgpOpen(Open),
    /// Event 21: a message header error; carries the NOTIFICATION to send.
    BgpHeaderErr(Notification),
    /// Event 22: an OPEN message error; carries the NOTIFICATION to send.
    BgpOpenMsgErr(Notification),
    /// Event 23: this connection lost a collision (RFC 4271 §6.8).
    OpenCollisionDump,
    /// Event 24: a NOTIFICATION reporting a version error.
    NotifMsgVerErr(Notification),
    /// Event 25: any other NOTIFICATION.
    NotifMsg(Notification),
    /// Event 26.
    KeepAliveMsg,
    /// Event 27 (and ROUTE-REFRESH, which RFC 4271 predates and which counts like an UPDATE).
    UpdateMsg,
    /// Event 28: an UPDATE that calls for a session reset; carries the NOTIFICATION to send.
    UpdateMsgErr(Notification),
}

/// What the session must do after an event, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a TCP connection to the peer.
    InitiateConnection,
    /// Close the TCP connection (and any attempt in progress).
    DropConnection,
    /// Send our OPEN.
    SendOpen,
    /// Send a KEEPALIVE.
    SendKeepalive,
    /// Send this NOTIFICATION (then the connection is dropped).
    SendNotification(Notification),
    /// Start (or restart) a timer.
    StartTimer(Timer, Duration),
    /// Stop a timer.
    StopTimer(Timer),
    /// The session reached Established: send the Adj-RIB-Out.
    Established,
    /// The UPDATE (or ROUTE-REFRESH) just received is to be processed.
    ProcessUpdate,
    /// The session left Established. `graceful` is true when the transport failed without a
    /// NOTIFICATION either way: the case where RFC 4724 keeps the peer's routes.
    SessionDown {
        /// Transport loss without NOTIFICATION.
        graceful: bool,
    },
}

/// What the FSM needs to know about the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsmConfig {
    /// Our AS number.
    pub local_asn: u32,
    /// Our BGP identifier.
    pub local_id: Ipv4Addr,
    /// The AS the peer must announce.
    pub remote_asn: u32,
    /// Our proposed hold time in seconds (0 or at least 3).
    pub hold_time: u16,
    /// Never initiate a connection; wait for the peer.
    pub passive: bool,
    /// ConnectRetry base interval.
    pub connect_retry: Duration,
    /// Upper bound of the backed-off interval.
    pub connect_retry_max: Duration,
}

/// The state machine of one peer.
#[derive(Debug, Clone)]
pub struct Fsm {
    config: FsmConfig,
    state: State,
    connect_retry_counter: u32,
    hold_time: u16,
}

impl Fsm {
    /// A machine in Idle.
    pub fn new(config: FsmConfig) -> Self {
        Self {
            config,
            state: State::Idle,
            connect_retry_counter: 0,
            hold_time: 0,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Consecutive failures since the last start or Established.
    pub fn connect_retry_counter(&self) -> u32 {
        self.connect_retry_counter
    }

    /// The negotiated hold time in seconds (0: no hold timer, no keepalives); meaningful from
    /// OpenConfirm on.
    pub fn negotiated_hold_time(&self) -> u16 {
        self.hold_time
    }

    /// The keepalive interval: a third of the hold time (RFC 4271 §10), `None` when the hold
    /// time is 0.
    pub fn keepalive_interval(&self) -> Option<Duration> {
        keepalive_for(self.hold_time)
    }

    /// The ConnectRetry / IdleHold interval after `connect_retry_counter` failures.
    pub fn backoff(&self) -> Duration {
        let factor = 1u32 << self.connect_retry_counter.min(10);
        self.config
            .connect_retry
            .saturating_mul(factor)
            .min(self.config.connect_retry_max.max(self.config.connect_retry))
    }

    /// Applies one event; returns what to do.
    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        use Action::*;
        use Event::*;
        match (self.state, event) {
            // §8.2.2 Idle: start events leave it, everything else is ignored.
            (State::Idle, ManualStart) => {
                self.connect_retry_counter = 0;
                self.start()
            }
            (State::Idle, AutomaticStart | IdleHoldTimerExpires) => self.start(),
            (State::Idle, AutomaticStartPassive) => {
                self.state = State::Active;
                vec![StopTimer(Timer::IdleHold)]
            }
            (State::Idle, ManualStop) => {
                self.connect_retry_counter = 0;
                vec![StopTimer(Timer::IdleHold)]
            }
            (State::Idle, _) => Vec::new(),

            // Any state other than Idle: ManualStop closes politely.
            (State::Connect | State::Active, ManualStop) => {
                self.connect_retry_counter = 0;
                self.state = State::Idle;
                vec![DropConnection, StopTimer(Timer::ConnectRetry)]
            }
            (state, ManualStop) => {
                self.connect_retry_counter = 0;
                let idle = self.enter_idle(state, false, false);
                notify_then(
                    Some(Notification::cease(CeaseSubcode::AdministrativeShutdown)),
                    idle,
                )
            }

            // §8.2.2 Connect.
            (State::Connect, ConnectRetryTimerExpires) => vec![
                DropConnection,
                StartTimer(Timer::ConnectRetry, self.backoff()),
                InitiateConnection,
            ],
            (State::Connect | State::Active, TcpCrAcked | TcpConnectionConfirmed) => {
                self.state = State::OpenSent;
                vec![
                    StopTimer(Timer::ConnectRetry),
                    SendOpen,
                    StartTimer(Timer::Hold, LARGE_HOLD_TIME),
                ]
            }
            (State::Connect, TcpConnectionFails) => {
                self.connect_retry_counter = self.connect_retry_counter.saturating_add(1);
                self.state = State::Active;
                vec![
                    DropConnection,
                    StartTimer(Timer::ConnectRetry, self.backoff()),
                ]
            }

            // §8.2.2 Active.
            (State::Active, ConnectRetryTimerExpires) if !self.config.passive => {
                self.state = State::Connect;
                vec![
                    StartTimer(Timer::ConnectRetry, self.backoff()),
                    InitiateConnection,
                ]
            }
            (State::Active, ConnectRetryTimerExpires) => Vec::new(),
            (State::Active, TcpConnectionFails) => self.fail(State::Active, None),
            (
                State::Connect | State::Active,
                ManualStart | AutomaticStart | AutomaticStartPassive | IdleHoldTimerExpires,
            ) => Vec::new(),

            // Connect and Active: anything else is an error without a NOTIFICATION (there is
            // no BGP conversation yet).
            (state @ (State::Connect | State::Active), _) => self.fail(state, None),

            // §8.2.2 OpenSent.
            (State::OpenSent, BgpOpen(open)) => self.receive_open(&open),
            (State::OpenSent, TcpConnectionFails) => {
                // RFC 4271: close, restart ConnectRetry, and listen (Active).
                self.connect_retry_counter = self.connect_retry_counter.saturating_add(1);
                self.state = State::Active;
                let mut actions = vec![
                    DropConnection,
                    StopTimer(Timer::Hold),
                    StartTimer(Timer::ConnectRetry, self.backoff()),
                ];
                if self.config.passive {
                    actions.pop();
                }
                actions
            }

            // OpenSent, OpenConfirm and Established share the error transitions.
            (
                state @ (State::OpenSent | State::OpenConfirm | State::Established),
                HoldTimerExpires,
            ) => self.fail(state, Some(Notification::hold_timer_expired())),
            (
                state @ (State::OpenSent | State::OpenConfirm | State::Established),
                BgpHeaderErr(n) | BgpOpenMsgErr(n) | AutomaticStop(n),
            ) => self.fail(state, Some(n)),
            (
                state @ (State::OpenSent | State::OpenConfirm | State::Established),
                OpenCollisionDump,
            ) => self.fail(
                state,
                Some(Notification::cease(
                    CeaseSubcode::ConnectionCollisionResolution,
                )),
            ),
            (
                state @ (State::OpenSent | State::OpenConfirm | State::Established),
                NotifMsgVerErr(_),
            ) => {
                // A version error is not counted: the peer may simply speak another version.
                self.enter_idle(state, false, true)
            }
            (state @ (State::OpenSent | State::OpenConfirm | State::Established), NotifMsg(_)) => {
                self.connect_retry_counter = self.connect_retry_counter.saturating_add(1);
                self.enter_idle(state, false, true)
            }
            (state @ (State::OpenConfirm | State::Established), TcpConnectionFails) => {
                self.connect_retry_counter = self.connect_retry_counter.saturating_add(1);
                self.enter_idle(state, true, true)
            }
            (
                state @ (State::OpenSent | State::OpenConfirm | State::Established),
                ConnectRetryTimerExpires
                | IdleHoldTimerExpires
                | AutomaticStart
                | AutomaticStartPassive
                | ManualStart
                | TcpCrAcked
                | TcpConnectionConfirmed,
            ) if state != State::OpenSent => Vec::new(),
            (
                State::OpenSent,
                ManualStart
                | AutomaticStart
                | AutomaticStartPassive
                | TcpCrAcked
                | TcpConnectionConfirmed,
            ) => Vec::new(),
            (State::OpenSent, _) => self.fail(
                State::OpenSent,
                Some(Notification::fsm(FsmSubcode::UnexpectedInOpenSent)),
            ),

            // §8.2.2 OpenConfirm.
            (State::OpenConfirm, KeepaliveTimerExpires) => self.keepalive(),
            (State::OpenConfirm, KeepAliveMsg) => {
                self.state = State::Established;
                self.connect_retry_counter = 0;
                let mut actions = self.restart_hold();
                actions.push(Established);
                actions
            }
            (State::OpenConfirm, _) => self.fail(
                State::OpenConfirm,
                Some(Notification::fsm(FsmSubcode::UnexpectedInOpenConfirm)),
            ),

            // §8.2.2 Established.
            (State::Established, KeepaliveTimerExpires) => self.keepalive(),
            (State::Established, KeepAliveMsg) => self.restart_hold(),
            (State::Established, UpdateMsg) => {
                let mut actions = self.restart_hold();
                actions.push(ProcessUpdate);
                actions
            }
            (State::Established, UpdateMsgErr(n)) => self.fail(State::Established, Some(n)),
            (State::Established, BgpOpen(_)) => self.fail(
                State::Established,
                Some(Notification::fsm(FsmSubcode::UnexpectedInEstablished)),
            ),
            (State::Established, _) => self.fail(
                State::Established,
                Some(Notification::fsm(FsmSubcode::Unspecified)),
            ),
        }
    }

    fn start(&mut self) -> Vec<Action> {
        let mut actions = vec![Action::StopTimer(Timer::IdleHold)];
        if self.config.passive {
            self.state = State::Active;
        } else {
            self.state = State::Connect;
            actions.push(Action::StartTimer(Timer::ConnectRetry, self.backoff()));
            actions.push(Action::InitiateConnection);
        }
        actions
    }

    /// RFC 4271 §8.2.2 OpenSent, event 19: check the OPEN (RFC 4271 §6.2), negotiate the hold
    /// time, answer with KEEPALIVE.
    fn receive_open(&mut self, open: &Open) -> Vec<Action> {
        if let Err(n) = self.check_open(open) {
            return self.fail(State::OpenSent, Some(n));
        }
        self.hold_time = negotiate_hold_time(self.config.hold_time, open.hold_time);
        self.state = State::OpenConfirm;
        let mut actions = vec![
            Action::StopTimer(Timer::ConnectRetry),
            Action::SendKeepalive,
        ];
        match keepalive_for(self.hold_time) {
            Some(keepalive) => {
                actions.push(Action::StartTimer(Timer::Keepalive, keepalive));
                actions.push(Action::StartTimer(
                    Timer::Hold,
                    Duration::from_secs(u64::from(self.hold_time)),
                ));
            }
            None => {
                actions.push(Action::StopTimer(Timer::Keepalive));
                actions.push(Action::StopTimer(Timer::Hold));
            }
        }
        actions
    }

    /// The OPEN checks that need our configuration (the codec did the rest).
    pub fn check_open(&self, open: &Open) -> Result<(), Notification> {
        if matches!(open.hold_time, 1 | 2) {
            return Err(Notification::open(
                OpenSubcode::UnacceptableHoldTime,
                Vec::new(),
            ));
        }
        if open.asn() != self.config.remote_asn {
            return Err(Notification::open(
                OpenSubcode::BadPeerAs,
                open.my_as.to_be_bytes().to_vec(),
            ));
        }
        // RFC 6286 §2.2: only iBGP peers must have an identifier other than ours.
        if open.bgp_id.is_unspecified()
            || (self.config.remote_asn == self.config.local_asn
                && open.bgp_id == self.config.local_id)
        {
            return Err(Notification::open(
                OpenSubcode::BadBgpIdentifier,
                open.bgp_id.octets().to_vec(),
            ));
        }
        Ok(())
    }

    fn keepalive(&mut self) -> Vec<Action> {
        match self.keepalive_interval() {
            Some(k) => vec![
                Action::SendKeepalive,
                Action::StartTimer(Timer::Keepalive, k),
            ],
            None => Vec::new(),
        }
    }

    fn restart_hold(&mut self) -> Vec<Action> {
        if self.hold_time == 0 {
            return Vec::new();
        }
        vec![Action::StartTimer(
            Timer::Hold,
            Duration::from_secs(u64::from(self.hold_time)),
        )]
    }

    /// An error: send `notification` if there is one, count the failure, go to Idle.
    fn fail(&mut self, state: State, notification: Option<Notification>) -> Vec<Action> {
        self.connect_retry_counter = self.connect_retry_counter.saturating_add(1);
        let idle = self.enter_idle(state, false, true);
        notify_then(notification, idle)
    }

    /// Releases the session and goes to Idle; `restart` schedules the automatic restart.
    fn enter_idle(&mut self, from: State, graceful: bool, restart: bool) -> Vec<Action> {
        self.state = State::Idle;
        self.hold_time = 0;
        let mut actions = vec![
            Action::DropConnection,
            Action::StopTimer(Timer::ConnectRetry),
            Action::StopTimer(Timer::Hold),
            Action::StopTimer(Timer::Keepalive),
        ];
        if from == State::Established {
            actions.push(Action::SessionDown { graceful });
        }
        if restart {
            actions.push(Action::StartTimer(Timer::IdleHold, self.backoff()));
        }
        actions
    }
}

/// `notification` sent ahead of `idle` (the actions that go to Idle), except for the session's
/// end: an ended session's routes leave the RIB before the peer is told, so nothing of the
/// session is installed once its NOTIFICATION is out (the agent fences kernel writes on the
/// RIB, and the peer may act on the NOTIFICATION at once).
fn notify_then(notification: Option<Notification>, mut idle: Vec<Action>) -> Vec<Action> {
    let mut actions = Vec::with_capacity(idle.len() + 2);
    if let Some(i) = idle
        .iter()
        .position(|a| matches!(a, Action::SessionDown { .. }))
    {
        actions.push(idle.remove(i));
    }
    actions.extend(notification.map(Action::SendNotification));
    actions.extend(idle);
    actions
}

/// The hold time both sides use: the smaller proposal, where 0 (no keepalives) wins
/// (RFC 4271 §4.2).
pub fn negotiate_hold_time(ours: u16, theirs: u16) -> u16 {
    ours.min(theirs)
}

/// A third of the hold time (RFC 4271 §10), at least one second; `None` for hold time 0.
pub fn keepalive_for(hold_time: u16) -> Option<Duration> {
    (hold_time > 0).then(|| Duration::from_secs(u64::from((hold_time / 3).max(1))))
}

/// RFC 4271 §6.8 connection collision: whether to keep the connection this speaker initiated
/// (and close the one the peer initiated). The connection initiated by the speaker with the
/// higher BGP identifier survives; equal identifiers (possible across ASes, RFC 6286 §2.3)
/// fall back to the higher AS number.
pub fn keep_locally_initiated(
    local_id: Ipv4Addr,
    local_asn: u32,
    remote_id: Ipv4Addr,
    remote_asn: u32,
) -> bool {
    if local_id == remote_id {
        local_asn > remote_asn
    } else {
        u32::from(local_id) > u32::from(remote_id)
    }
}

#[cfg(test)]
mod tests {
    use super::Action::*;
    use super::*;
    use crate::codec::Capability;
    use crate::codec::notification::code;

    const LOCAL_ID: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const REMOTE_ID: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    fn config(passive: bool) -> FsmConfig {
        FsmConfig {
            local_asn: 64512,
            local_id: LOCAL_ID,
            remote_asn: 64512,
            hold_time: 90,
            passive,
            connect_retry: Duration::from_secs(5),
            connect_retry_max: Duration::from_secs(60),
        }
    }

    fn open(hold_time: u16) -> Open {
        Open::new(
            64512,
            hold_time,
            REMOTE_ID,
            vec![Capability::FourOctetAs(64512)],
        )
    }

    fn in_state(state: State) -> Fsm {
        let mut fsm = Fsm::new(config(false));
        fsm.handle(Event::ManualStart);
        if state == State::Connect {
            return fsm;
        }
        if state == State::Active {
            fsm.handle(Event::TcpConnectionFails);
            return fsm;
        }
        fsm.handle(Event::TcpCrAcked);
        if state == State::OpenSent {
            return fsm;
        }
        fsm.handle(Event::BgpOpen(open(90)));
        if state == State::OpenConfirm {
            return fsm;
        }
        fsm.handle(Event::KeepAliveMsg);
        assert_eq!(fsm.state(), State::Established);
        fsm
    }

    fn sent_notification(actions: &[Action]) -> Option<(u8, u8)> {
        actions.iter().find_map(|a| match a {
            SendNotification(n) => Some((n.code, n.subcode)),
            _ => None,
        })
    }

    /// Whether the NOTIFICATION goes out before the connection is dropped (None: neither).
    fn notified_before_dropping(actions: &[Action]) -> Option<bool> {
        let sent = actions
            .iter()
            .position(|a| matches!(a, SendNotification(_)))?;
        let dropped = actions.iter().position(|a| *a == DropConnection)?;
        Some(sent < dropped)
    }

    #[test]
    fn idle_ignores_everything_but_a_start() {
        let mut fsm = Fsm::new(config(false));
        for event in [
            Event::TcpConnectionConfirmed,
            Event::KeepAliveMsg,
            Event::HoldTimerExpires,
            Event::BgpOpen(open(90)),
        ] {
            assert_eq!(fsm.handle(event), vec![]);
            assert_eq!(fsm.state(), State::Idle);
        }
    }

    #[test]
    fn manual_start_initiates_a_connection_and_starts_connect_retry() {
        let mut fsm = Fsm::new(config(false));
        let actions = fsm.handle(Event::ManualStart);
        assert_eq!(fsm.state(), State::Connect);
        assert!(actions.contains(&StartTimer(Timer::ConnectRetry, Duration::from_secs(5))));
        assert!(actions.contains(&InitiateConnection));
    }

    #[test]
    fn a_passive_start_waits_in_active_and_never_connects() {
        let mut fsm = Fsm::new(config(true));
        let actions = fsm.handle(Event::ManualStart);
        assert_eq!(fsm.state(), State::Active);
        assert!(!actions.contains(&InitiateConnection));
        assert_eq!(fsm.handle(Event::ConnectRetryTimerExpires), vec![]);
        assert_eq!(fsm.state(), State::Active);
    }

    #[test]
    fn a_completed_connection_sends_open_and_starts_the_large_hold_timer() {
        for event in [Event::TcpCrAcked, Event::TcpConnectionConfirmed] {
            let mut fsm = in_state(State::Connect);
            let actions = fsm.handle(event);
            assert_eq!(fsm.state(), State::OpenSent);
            assert_eq!(
                actions,
                vec![
                    StopTimer(Timer::ConnectRetry),
                    SendOpen,
                    StartTimer(Timer::Hold, LARGE_HOLD_TIME)
                ]
            );
        }
    }

    #[test]
    fn an_incoming_connection_in_active_sends_open() {
        let mut fsm = in_state(State::Active);
        assert!(
            fsm.handle(Event::TcpConnectionConfirmed)
                .contains(&SendOpen)
        );
        assert_eq!(fsm.state(), State::OpenSent);
    }

    #[test]
    fn connect_retry_backs_off_with_each_failure_up_to_the_maximum() {
        let mut fsm = in_state(State::Connect);
        let mut seen = Vec::new();
        for _ in 0..6 {
            let actions = fsm.handle(Event::TcpConnectionFails);
            assert_eq!(fsm.state(), State::Active);
            let Some(StartTimer(Timer::ConnectRetry, d)) = actions.last().cloned() else {
                panic!("no ConnectRetry in {actions:?}");
            };
            seen.push(d.as_secs());
            fsm.handle(Event::ConnectRetryTimerExpires);
            assert_eq!(fsm.state(), State::Connect);
        }
        assert_eq!(seen, vec![10, 20, 40, 60, 60, 60]);
    }

    #[test]
    fn connect_retry_expiry_in_connect_tries_again() {
        let mut fsm = in_state(State::Connect);
        let actions = fsm.handle(Event::ConnectRetryTimerExpires);
        assert_eq!(fsm.state(), State::Connect);
        assert_eq!(actions.first(), Some(&DropConnection));
        assert_eq!(actions.last(), Some(&InitiateConnection));
    }

    #[test]
    fn an_open_negotiates_the_smaller_hold_time_and_keepalive_is_a_third() {
        let mut fsm = in_state(State::OpenSent);
        let actions = fsm.handle(Event::BgpOpen(open(30)));
        assert_eq!(fsm.state(), State::OpenConfirm);
        assert_eq!(fsm.negotiated_hold_time(), 30);
        assert_eq!(
            actions,
            vec![
                StopTimer(Timer::ConnectRetry),
                SendKeepalive,
                StartTimer(Timer::Keepalive, Duration::from_secs(10)),
                StartTimer(Timer::Hold, Duration::from_secs(30)),
            ]
        );
    }

    #[test]
    fn hold_time_zero_on_either_side_means_no_hold_timer_and_no_keepalives() {
        let mut fsm = in_state(State::OpenSent);
        let actions = fsm.handle(Event::BgpOpen(open(0)));
        assert_eq!(fsm.negotiated_hold_time(), 0);
        assert!(actions.contains(&StopTimer(Timer::Hold)));
        assert!(actions.contains(&StopTimer(Timer::Keepalive)));
        assert_eq!(fsm.handle(Event::KeepAliveMsg), vec![Established]);
        assert_eq!(fsm.handle(Event::KeepaliveTimerExpires), vec![]);
    }

    #[test]
    fn hold_time_one_or_two_is_unacceptable() {
        for hold in [1, 2] {
            let mut fsm = in_state(State::OpenSent);
            let actions = fsm.handle(Event::BgpOpen(open(hold)));
            assert_eq!(
                sent_notification(&actions),
                Some((code::OPEN_MESSAGE, OpenSubcode::UnacceptableHoldTime as u8))
            );
            assert_eq!(fsm.state(), State::Idle);
        }
    }

    #[test]
    fn an_open_from_the_wrong_as_is_a_bad_peer_as() {
        let mut fsm = in_state(State::OpenSent);
        let wrong = Open::new(65000, 90, REMOTE_ID, vec![]);
        let actions = fsm.handle(Event::BgpOpen(wrong));
        assert_eq!(
            sent_notification(&actions),
            Some((code::OPEN_MESSAGE, OpenSubcode::BadPeerAs as u8))
        );
        assert!(actions.contains(&DropConnection));
        assert_eq!(fsm.state(), State::Idle);
    }

    #[test]
    fn an_ibgp_peer_with_our_identifier_is_a_bad_bgp_identifier() {
        let mut fsm = in_state(State::OpenSent);
        let same = Open::new(64512, 90, LOCAL_ID, vec![]);
        assert_eq!(
            sent_notification(&fsm.handle(Event::BgpOpen(same))),
            Some((code::OPEN_MESSAGE, OpenSubcode::BadBgpIdentifier as u8))
        );
    }

    #[test]
    fn a_keepalive_in_open_confirm_establishes_the_session() {
        let mut fsm = in_state(State::OpenConfirm);
        let actions = fsm.handle(Event::KeepAliveMsg);
        assert_eq!(fsm.state(), State::Established);
        assert_eq!(
            actions,
            vec![
                StartTimer(Timer::Hold, Duration::from_secs(90)),
                Established
            ]
        );
    }

    #[test]
    fn a_message_other_than_open_in_open_sent_is_an_fsm_error() {
        let mut fsm = in_state(State::OpenSent);
        let actions = fsm.handle(Event::KeepAliveMsg);
        assert_eq!(
            sent_notification(&actions),
            Some((code::FSM, FsmSubcode::UnexpectedInOpenSent as u8))
        );
        assert_eq!(fsm.state(), State::Idle);
        assert!(actions.contains(&StartTimer(Timer::IdleHold, Duration::from_secs(10))));
    }

    #[test]
    fn an_update_in_open_confirm_is_an_fsm_error() {
        let mut fsm = in_state(State::OpenConfirm);
        assert_eq!(
            sent_notification(&fsm.handle(Event::UpdateMsg)),
            Some((code::FSM, FsmSubcode::UnexpectedInOpenConfirm as u8))
        );
    }

    #[test]
    fn an_open_in_established_is_an_fsm_error() {
        let mut fsm = in_state(State::Established);
        let actions = fsm.handle(Event::BgpOpen(open(90)));
        assert_eq!(
            sent_notification(&actions),
            Some((code::FSM, FsmSubcode::UnexpectedInEstablished as u8))
        );
        assert!(actions.contains(&SessionDown { graceful: false }));
    }

    #[test]
    fn keepalives_and_updates_restart_the_hold_timer_in_established() {
        let mut fsm = in_state(State::Established);
        let hold = StartTimer(Timer::Hold, Duration::from_secs(90));
        assert_eq!(fsm.handle(Event::KeepAliveMsg), vec![hold.clone()]);
        assert_eq!(fsm.handle(Event::UpdateMsg), vec![hold, ProcessUpdate]);
        assert_eq!(
            fsm.handle(Event::KeepaliveTimerExpires),
            vec![
                SendKeepalive,
                StartTimer(Timer::Keepalive, Duration::from_secs(30))
            ]
        );
    }

    #[test]
    fn hold_timer_expiry_sends_hold_timer_expired_and_drops_the_session() {
        for state in [State::OpenSent, State::OpenConfirm, State::Established] {
            let mut fsm = in_state(state);
            let actions = fsm.handle(Event::HoldTimerExpires);
            assert_eq!(
                sent_notification(&actions),
                Some((code::HOLD_TIMER_EXPIRED, 0))
            );
            assert!(actions.contains(&DropConnection));
            assert_eq!(fsm.state(), State::Idle);
            assert_eq!(
                actions.contains(&SessionDown { graceful: false }),
                state == State::Established
            );
        }
    }

    #[test]
    fn an_automatic_stop_sends_its_cease_and_restarts() {
        let cease = Notification::cease(CeaseSubcode::OutOfResources);
        for state in [State::OpenSent, State::OpenConfirm, State::Established] {
            let mut fsm = in_state(state);
            let actions = fsm.handle(Event::AutomaticStop(cease.clone()));
            assert_eq!(
                sent_notification(&actions),
                Some((cease.code, cease.subcode))
            );
            assert_eq!(notified_before_dropping(&actions), Some(true));
            assert!(
                actions
                    .iter()
                    .any(|a| matches!(a, StartTimer(Timer::IdleHold, _)))
            );
            assert_eq!(fsm.state(), State::Idle);
            assert_eq!(
                actions.contains(&SessionDown { graceful: false }),
                state == State::Established
            );
        }
        // Before a BGP conversation there is no one to tell.
        for state in [State::Connect, State::Active] {
            let mut fsm = in_state(state);
            let actions = fsm.handle(Event::AutomaticStop(cease.clone()));
            assert_eq!(sent_notification(&actions), None);
            assert_eq!(fsm.state(), State::Idle);
        }
    }

    #[test]
    fn an_update_error_in_established_sends_its_notification() {
        let mut fsm = in_state(State::Established);
        let n = Notification::new(code::UPDATE_MESSAGE, 11, vec![]);
        let actions = fsm.handle(Event::UpdateMsgErr(n.clone()));
        // The session's routes go first: nothing of it is installed once the peer is told.
        assert_eq!(
            actions[..2],
            [SessionDown { graceful: false }, SendNotification(n)]
        );
        assert_eq!(notified_before_dropping(&actions), Some(true));
        assert_eq!(fsm.state(), State::Idle);
    }

    #[test]
    fn header_and_open_errors_send_their_notification() {
        for state in [State::OpenSent, State::OpenConfirm, State::Established] {
            let n = Notification::new(code::MESSAGE_HEADER, 1, vec![]);
            let mut fsm = in_state(state);
            let actions = fsm.handle(Event::BgpHeaderErr(n.clone()));
            assert_eq!(sent_notification(&actions), Some((n.code, n.subcode)));
            assert_eq!(notified_before_dropping(&actions), Some(true));
            if state == State::Established {
                assert_eq!(actions.first(), Some(&SessionDown { graceful: false }));
            }
            assert_eq!(fsm.state(), State::Idle);
        }
    }

    #[test]
    fn transport_loss_in_established_is_a_graceful_session_down() {
        let mut fsm = in_state(State::Established);
        let actions = fsm.handle(Event::TcpConnectionFails);
        assert!(actions.contains(&SessionDown { graceful: true }));
        assert_eq!(sent_notification(&actions), None);
    }

    #[test]
    fn a_received_notification_ends_the_session_without_answering() {
        let mut fsm = in_state(State::Established);
        let actions = fsm.handle(Event::NotifMsg(Notification::cease(
            CeaseSubcode::AdministrativeShutdown,
        )));
        assert_eq!(sent_notification(&actions), None);
        assert!(actions.contains(&SessionDown { graceful: false }));
        assert_eq!(fsm.state(), State::Idle);
    }

    #[test]
    fn manual_stop_sends_cease_and_does_not_restart() {
        let mut fsm = in_state(State::Established);
        let actions = fsm.handle(Event::ManualStop);
        assert_eq!(
            sent_notification(&actions),
            Some((code::CEASE, CeaseSubcode::AdministrativeShutdown as u8))
        );
        assert!(!actions.iter().any(|a| matches!(a, StartTimer(..))));
        assert_eq!(fsm.state(), State::Idle);
    }

    #[test]
    fn automatic_start_after_an_error_reconnects() {
        let mut fsm = in_state(State::Established);
        fsm.handle(Event::HoldTimerExpires);
        fsm.handle(Event::AutomaticStart);
        assert_eq!(fsm.state(), State::Connect);
    }

    #[test]
    fn a_passive_automatic_start_waits_for_the_peer_without_connecting() {
        let mut fsm = in_state(State::Established);
        fsm.handle(Event::TcpConnectionFails);
        let actions = fsm.handle(Event::AutomaticStartPassive);
        assert_eq!(fsm.state(), State::Active);
        assert!(!actions.contains(&InitiateConnection));
        assert!(
            fsm.handle(Event::TcpConnectionConfirmed)
                .contains(&SendOpen)
        );
    }

    #[test]
    fn the_losing_connection_of_a_collision_sends_cease_collision_resolution() {
        let mut fsm = in_state(State::OpenConfirm);
        assert_eq!(
            sent_notification(&fsm.handle(Event::OpenCollisionDump)),
            Some((
                code::CEASE,
                CeaseSubcode::ConnectionCollisionResolution as u8
            ))
        );
    }

    #[test]
    fn the_connection_of_the_higher_identifier_survives_a_collision() {
        let low = Ipv4Addr::new(10, 0, 0, 1);
        let high = Ipv4Addr::new(10, 0, 0, 9);
        assert!(keep_locally_initiated(high, 1, low, 1));
        assert!(!keep_locally_initiated(low, 1, high, 1));
        // Equal identifiers (eBGP): the higher AS wins.
        assert!(keep_locally_initiated(low, 65001, low, 65000));
    }
}
