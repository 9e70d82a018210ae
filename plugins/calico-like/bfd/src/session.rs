//! One BFD session in asynchronous mode (RFC 5880 §6.8), as data: the caller passes the time,
//! feeds received packets in, asks for the packet to send when one is due, and reads the next
//! deadline. Nothing here sleeps or does I/O, so the tests drive it with tokio's paused clock.
//!
//! What it does, in the RFC's words:
//! - the state machine of §6.8.6 (Down → Init → Up, Up → Down on the remote's Down or
//!   AdminDown, and AdminDown locally, whose packets are ignored);
//! - the detection time of §6.8.4: the remote's Detect Mult × the larger of our Required Min
//!   RX and the remote's Desired Min TX, restarted by every accepted packet; when it passes,
//!   an Init or Up session goes Down with "control detection time expired", and any session
//!   forgets the remote discriminator (§6.8.1);
//! - the slow rate of §6.8.3: while not Up we advertise (and use) a Desired Min TX of 1 s, and
//!   the configured rate once Up; every change of what we advertise starts a Poll Sequence
//!   (P set until a packet with F comes back), and a received P is answered at once with F
//!   (§6.8.7);
//! - the transmit interval of §6.8.7: the larger of our Desired Min TX and the remote's
//!   Required Min RX, jittered to 75–100 % (75–90 % with a Detect Mult of 1); nothing is sent
//!   periodically while the remote's Required Min RX is 0.
//!
//! Intervals only change by a new session here (the agent replaces a peer whose settings
//! changed), so the rule that an increased Desired Min TX waits for the poll to finish before
//! it is used (§6.8.3) only meets the decrease to the configured rate on going Up, which may
//! apply at once.

use std::time::Duration;

use tokio::time::Instant;

use crate::packet::{Diagnostic, Packet, State};

/// The rate while the session is not Up (§6.8.3: at least one second).
pub const SLOW_TX: Duration = Duration::from_secs(1);

/// A session's configured timers. Defaults: 300 ms × 3 (detection in 900 ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intervals {
    /// How often we would like to send once Up (Desired Min TX).
    pub desired_min_tx: Duration,
    /// How often we can take packets (Required Min RX); never 0 here, we always receive.
    pub required_min_rx: Duration,
    /// Detect Mult: packets missed before the remote declares us down.
    pub multiplier: u8,
}

impl Default for Intervals {
    fn default() -> Self {
        Intervals {
            desired_min_tx: Duration::from_millis(300),
            required_min_rx: Duration::from_millis(300),
            multiplier: 3,
        }
    }
}

/// Why intervals cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IntervalError {
    #[error("the detect multiplier must be 1 to 255")]
    ZeroMultiplier,
    #[error("intervals must be 1 ms to 60 s, got {0:?}")]
    OutOfRange(Duration),
}

impl Intervals {
    /// Checks the ranges we accept: intervals of 1 ms to 60 s, a multiplier of 1 or more.
    pub fn validate(&self) -> Result<(), IntervalError> {
        if self.multiplier == 0 {
            return Err(IntervalError::ZeroMultiplier);
        }
        for d in [self.desired_min_tx, self.required_min_rx] {
            if d < Duration::from_millis(1) || d > Duration::from_secs(60) {
                return Err(IntervalError::OutOfRange(d));
            }
        }
        Ok(())
    }
}

/// A state change, with the diagnostic that explains it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    /// Our diagnostic (why we left Up, or none).
    pub diag: Diagnostic,
    /// The state the remote last announced; `AdminDown` means the path did not fail: the
    /// remote switched the session off (RFC 5882 §3.2: not to be taken as a failure).
    pub remote_state: State,
}

impl Transition {
    /// Up to Down for a reason other than the remote's AdminDown: the path is lost.
    pub fn is_failure(&self) -> bool {
        self.from == State::Up && self.to == State::Down && self.remote_state != State::AdminDown
    }
}

/// One session's variables (§6.8.1) and timers.
#[derive(Debug, Clone)]
pub struct Session {
    config: Intervals,
    state: State,
    remote_state: State,
    local_discr: u32,
    remote_discr: u32,
    local_diag: Diagnostic,
    /// What we advertise now: [`SLOW_TX`] while not Up, the configured rate once Up.
    desired_min_tx: Duration,
    remote_min_rx: Duration,
    remote_desired_min_tx: Duration,
    remote_detect_mult: u8,
    /// A Poll Sequence is running: our packets carry P until a Final comes.
    polling: bool,
    /// A Poll was received: the next packet (sent at once) carries F.
    final_due: bool,
    next_tx: Instant,
    /// When the remote is declared gone; `None` until a packet has been accepted.
    detect_at: Option<Instant>,
    /// A small PRNG for the jitter (xorshift), seeded from the discriminator.
    rng: u64,
    /// When the session last came Up.
    up_since: Option<Instant>,
}

impl Session {
    /// A new session in Down, sending at the slow rate from now on.
    pub fn new(local_discr: u32, config: Intervals, now: Instant) -> Session {
        Session {
            config,
            state: State::Down,
            remote_state: State::Down,
            local_discr,
            remote_discr: 0,
            local_diag: Diagnostic::None,
            desired_min_tx: SLOW_TX,
            // §6.8.1: bfd.RemoteMinRxInterval starts at 1 µs.
            remote_min_rx: Duration::from_micros(1),
            remote_desired_min_tx: Duration::ZERO,
            remote_detect_mult: 0,
            polling: false,
            final_due: false,
            next_tx: now,
            detect_at: None,
            rng: u64::from(local_discr) | 1 << 40,
            up_since: None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn remote_state(&self) -> State {
        self.remote_state
    }

    pub fn local_discr(&self) -> u32 {
        self.local_discr
    }

    pub fn remote_discr(&self) -> u32 {
        self.remote_discr
    }

    pub fn diag(&self) -> Diagnostic {
        self.local_diag
    }

    pub fn config(&self) -> Intervals {
        self.config
    }

    pub fn up_since(&self) -> Option<Instant> {
        self.up_since
    }

    /// The remote is declared down after this long without a packet (0 before the first).
    pub fn detection_time(&self) -> Duration {
        self.config
            .required_min_rx
            .max(self.remote_desired_min_tx)
            .saturating_mul(u32::from(self.remote_detect_mult))
    }

    /// The interval between our packets before jitter (§6.8.7).
    pub fn tx_interval(&self) -> Duration {
        self.desired_min_tx.max(self.remote_min_rx)
    }

    /// Whether a Poll Sequence is running.
    pub fn polling(&self) -> bool {
        self.polling
    }

    /// The next instant [`Session::on_timer`] or [`Session::transmit`] has work.
    pub fn next_deadline(&self) -> Instant {
        match self.detect_at {
            Some(d) => self.next_tx.min(d),
            None => self.next_tx,
        }
    }

    /// When the next periodic packet is due.
    pub fn next_transmit(&self) -> Instant {
        self.next_tx
    }

    /// §6.8.6: a packet the codec accepted, already matched to this session.
    pub fn receive(&mut self, p: &Packet, now: Instant) -> Option<Transition> {
        if self.state == State::AdminDown {
            return None;
        }
        self.remote_discr = p.my_discr;
        self.remote_state = p.state;
        self.remote_desired_min_tx = Duration::from_micros(u64::from(p.desired_min_tx_us));
        self.remote_detect_mult = p.detect_mult;
        let remote_min_rx = Duration::from_micros(u64::from(p.required_min_rx_us));
        if remote_min_rx != self.remote_min_rx {
            let slower = remote_min_rx > self.remote_min_rx;
            self.remote_min_rx = remote_min_rx;
            // A remote that wants packets less often is obeyed from the next one on; one that
            // wants them more often gets the next one sooner.
            if !slower && !remote_min_rx.is_zero() {
                let soonest = now + self.jittered(self.tx_interval());
                self.next_tx = self.next_tx.min(soonest);
            }
        }
        if p.fin {
            self.polling = false;
        }
        if p.poll {
            self.final_due = true;
        }
        self.detect_at = Some(now + self.detection_time());

        let from = self.state;
        let to = match (self.state, p.state) {
            (_, State::AdminDown) => {
                if self.state != State::Down {
                    self.local_diag = Diagnostic::NeighborSignaledSessionDown;
                }
                State::Down
            }
            (State::Down, State::Down) => State::Init,
            (State::Down, State::Init) => State::Up,
            (State::Down, State::Up) => State::Down,
            (State::Init, State::Init | State::Up) => State::Up,
            (State::Init, State::Down) => State::Init,
            (State::Up, State::Down) => {
                self.local_diag = Diagnostic::NeighborSignaledSessionDown;
                State::Down
            }
            (State::Up, _) => State::Up,
            (State::AdminDown, _) => State::AdminDown,
        };
        self.enter(from, to, now)
    }

    /// The detection time passed without a packet (§6.8.4, §6.8.1).
    pub fn on_timer(&mut self, now: Instant) -> Option<Transition> {
        let expired = self.detect_at.is_some_and(|d| now >= d);
        if !expired {
            return None;
        }
        self.detect_at = None;
        self.remote_discr = 0;
        let from = self.state;
        match from {
            State::Init | State::Up => {
                self.local_diag = Diagnostic::ControlDetectionTimeExpired;
                // The remote is gone: whatever it last asked of us no longer holds.
                self.remote_state = State::Down;
                self.remote_min_rx = Duration::from_micros(1);
                self.enter(from, State::Down, now)
            }
            State::Down | State::AdminDown => None,
        }
    }

    /// The packet to send now, if one is due (a Final at once, else on the schedule).
    pub fn transmit(&mut self, now: Instant) -> Option<Packet> {
        let due = now >= self.next_tx;
        if due {
            self.next_tx = now + self.jittered(self.tx_interval());
        }
        // §6.8.7: a remote whose Required Min RX is 0 gets no periodic packets.
        let periodic = due && !self.remote_min_rx.is_zero();
        if !(periodic || self.final_due) {
            return None;
        }
        let fin = std::mem::take(&mut self.final_due);
        Some(self.packet(fin))
    }

    /// The packet that describes the session now, outside the schedule (a goodbye after
    /// [`Session::admin_down`]).
    pub fn packet_now(&self) -> Packet {
        self.packet(false)
    }

    fn packet(&self, fin: bool) -> Packet {
        Packet {
            diag: self.local_diag,
            state: self.state,
            // §6.8.7: a Final never carries Poll.
            poll: self.polling && !fin,
            fin,
            control_plane_independent: false,
            demand: false,
            detect_mult: self.config.multiplier,
            my_discr: self.local_discr,
            your_discr: self.remote_discr,
            desired_min_tx_us: micros(self.desired_min_tx),
            required_min_rx_us: micros(self.config.required_min_rx),
            required_min_echo_rx_us: 0,
        }
    }

    /// Switches the session off on purpose (§6.8.16): it announces AdminDown with diagnostic
    /// 7, so the remote takes it as no failure, and ignores what it receives.
    pub fn admin_down(&mut self, now: Instant) -> Option<Transition> {
        let from = self.state;
        if from == State::AdminDown {
            return None;
        }
        self.local_diag = Diagnostic::AdministrativelyDown;
        self.detect_at = None;
        self.next_tx = now;
        self.enter(from, State::AdminDown, now)
    }

    fn enter(&mut self, from: State, to: State, now: Instant) -> Option<Transition> {
        if from == to {
            return None;
        }
        self.state = to;
        if to == State::Up {
            self.up_since = Some(now);
        } else if from == State::Up {
            self.up_since = None;
        }
        // §6.8.3: the slow rate unless Up; a change of what we advertise starts a poll.
        let desired = if to == State::Up {
            self.config.desired_min_tx
        } else {
            SLOW_TX
        };
        if desired != self.desired_min_tx {
            self.desired_min_tx = desired;
            self.polling = true;
        }
        // Tell the remote at once: the handshake and a Down travel without waiting a period.
        self.next_tx = now;
        Some(Transition {
            from,
            to,
            diag: self.local_diag,
            remote_state: self.remote_state,
        })
    }

    /// 75–100 % of `interval`, or 75–90 % with a Detect Mult of 1 (§6.8.7).
    fn jittered(&mut self, interval: Duration) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let extra = if self.config.multiplier == 1 { 15 } else { 25 };
        let percent = 75 + (self.rng % (extra + 1)) as u32;
        interval * percent / 100
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    const MS: Duration = Duration::from_millis(1);

    /// The packet `from` sends now (a test failure if none is due).
    fn send(from: &mut Session, now: Instant) -> Packet {
        from.transmit(now).expect("a packet is due")
    }

    /// Two sessions brought Up by the three-way handshake at `now`.
    fn up_pair(now: Instant) -> (Session, Session) {
        let mut a = Session::new(1, Intervals::default(), now);
        let mut b = Session::new(2, Intervals::default(), now);
        let p = send(&mut a, now);
        assert_eq!(b.receive(&p, now).map(|t| t.to), Some(State::Init));
        let p = send(&mut b, now);
        assert_eq!(a.receive(&p, now).map(|t| t.to), Some(State::Up));
        let p = send(&mut a, now);
        assert_eq!(b.receive(&p, now).map(|t| t.to), Some(State::Up));
        // b's first packet as Up tells a its fast rate.
        let p = send(&mut b, now);
        assert_eq!(a.receive(&p, now), None);
        (a, b)
    }

    #[tokio::test(start_paused = true)]
    async fn the_three_way_handshake_brings_both_up_and_the_fast_rate_after_a_poll() {
        let t0 = Instant::now();
        let mut a = Session::new(1, Intervals::default(), t0);
        let mut b = Session::new(2, Intervals::default(), t0);
        // Down: 1 s between packets, and Your Discriminator 0 until the remote is heard.
        let first = send(&mut a, t0);
        assert_eq!(
            (first.state, first.your_discr, first.desired_min_tx_us),
            (State::Down, 0, 1_000_000)
        );
        assert_eq!(a.transmit(t0), None, "nothing more until the next period");
        let next = a.next_deadline() - t0;
        assert!(next >= 750 * MS && next <= 1000 * MS, "{next:?}");

        let to_init = b.receive(&first, t0).expect("Down heard: Init");
        assert_eq!((to_init.from, to_init.to), (State::Down, State::Init));
        let init = send(&mut b, t0);
        assert_eq!((init.state, init.your_discr), (State::Init, 1));
        let to_up = a.receive(&init, t0).expect("Init heard: Up");
        assert_eq!(
            (to_up.from, to_up.to, to_up.diag),
            (State::Down, State::Up, Diagnostic::None)
        );
        // Up: the configured rate is advertised, with a Poll until a Final comes back.
        let poll = send(&mut a, t0);
        assert_eq!(
            (poll.state, poll.poll, poll.desired_min_tx_us),
            (State::Up, true, 300_000)
        );
        assert!(a.polling());
        assert_eq!(b.receive(&poll, t0).map(|t| t.to), Some(State::Up));
        // b went Up too (its own poll) and owes a Final: one packet carries F and not P.
        let fin = send(&mut b, t0);
        assert!(fin.fin && !fin.poll, "{fin:?}");
        a.receive(&fin, t0);
        assert!(!a.polling(), "the Final ends the poll");
        assert_eq!(a.tx_interval(), 300 * MS);
        assert_eq!(a.detection_time(), 900 * MS);
        assert!(b.polling(), "b's own poll waits for a's Final");
        advance(300 * MS).await;
        let now = Instant::now();
        let p = send(&mut b, now);
        assert!(p.poll && !p.fin, "{p:?}");
        a.receive(&p, now);
        let fin = a.transmit(now).expect("a Final goes at once");
        assert!(fin.fin && !fin.poll, "{fin:?}");
        b.receive(&fin, now);
        assert!(!b.polling());
    }

    #[tokio::test(start_paused = true)]
    async fn silence_for_the_detection_time_takes_an_up_session_down() {
        let t0 = Instant::now();
        let (mut a, _b) = up_pair(t0);
        advance(899 * MS).await;
        assert_eq!(a.on_timer(Instant::now()), None, "899 ms: still Up");
        assert_eq!(a.state(), State::Up);
        advance(MS).await;
        let down = a.on_timer(Instant::now()).expect("900 ms: Down");
        assert_eq!((down.from, down.to), (State::Up, State::Down));
        assert_eq!(down.diag, Diagnostic::ControlDetectionTimeExpired);
        assert!(down.is_failure());
        assert_eq!(
            a.remote_discr(),
            0,
            "§6.8.1: the remote discriminator is forgotten"
        );
        // Back to the slow rate, and the remote is told at once.
        let p = send(&mut a, Instant::now());
        assert_eq!(
            (p.state, p.diag.code(), p.desired_min_tx_us, p.your_discr),
            (State::Down, 1, 1_000_000, 0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn every_packet_restarts_the_detection_timer() {
        let t0 = Instant::now();
        let (mut a, mut b) = up_pair(t0);
        for _ in 0..10 {
            advance(600 * MS).await;
            let now = Instant::now();
            let p = b.transmit(now).expect("due");
            a.receive(&p, now);
            assert_eq!(a.on_timer(now), None);
        }
        assert_eq!(a.state(), State::Up);
    }

    #[tokio::test(start_paused = true)]
    async fn the_detection_time_uses_the_slower_of_our_rx_and_their_tx() {
        let t0 = Instant::now();
        let slow = Intervals {
            desired_min_tx: 1000 * MS,
            required_min_rx: 1000 * MS,
            multiplier: 5,
        };
        let mut a = Session::new(1, Intervals::default(), t0);
        let mut b = Session::new(2, slow, t0);
        let p = send(&mut a, t0);
        b.receive(&p, t0);
        let p = send(&mut b, t0);
        a.receive(&p, t0);
        let p = send(&mut a, t0);
        b.receive(&p, t0);
        let p = send(&mut b, t0);
        a.receive(&p, t0);
        // b sends every 1 s with multiplier 5: a waits 5 s; b waits 3 × max(1 s, 300 ms).
        assert_eq!(a.detection_time(), 5000 * MS);
        assert_eq!(b.detection_time(), 3000 * MS);
        // And a sends no faster than b can take.
        assert_eq!(a.tx_interval(), 1000 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn a_remote_down_is_a_failure_and_a_remote_admin_down_is_not() {
        let t0 = Instant::now();
        let (mut a, b) = up_pair(t0);
        let mut down = b.packet_now();
        down.state = State::Down;
        let t = a.receive(&down, t0).expect("Down");
        assert_eq!(
            (t.to, t.diag),
            (State::Down, Diagnostic::NeighborSignaledSessionDown)
        );
        assert!(t.is_failure());

        let (mut a, mut b) = up_pair(t0);
        let off = b.admin_down(t0).expect("AdminDown");
        assert_eq!(off.to, State::AdminDown);
        let p = send(&mut b, t0);
        assert_eq!(
            (p.state, p.diag),
            (State::AdminDown, Diagnostic::AdministrativelyDown)
        );
        let t = a.receive(&p, t0).expect("Down");
        assert_eq!(
            (t.to, t.diag, t.remote_state),
            (
                State::Down,
                Diagnostic::NeighborSignaledSessionDown,
                State::AdminDown
            )
        );
        assert!(
            !t.is_failure(),
            "RFC 5882 §3.2: AdminDown is no path failure"
        );
        // An AdminDown session ignores what comes.
        let p = a.packet_now();
        assert_eq!(b.receive(&p, t0), None);
        assert_eq!(b.state(), State::AdminDown);
    }

    #[tokio::test(start_paused = true)]
    async fn init_waits_for_the_remote_and_down_ignores_a_stale_up() {
        let t0 = Instant::now();
        let mut a = Session::new(1, Intervals::default(), t0);
        let mut b = Session::new(2, Intervals::default(), t0);
        let p = send(&mut a, t0);
        b.receive(&p, t0);
        // Init hearing Down again stays Init.
        assert_eq!(b.receive(&p, t0), None);
        assert_eq!(b.state(), State::Init);
        // A Down session hearing Up (the remote still thinks an old session lives) stays Down.
        let mut stale = send(&mut b, t0);
        stale.state = State::Up;
        assert_eq!(a.receive(&stale, t0), None);
        assert_eq!(a.state(), State::Down);
        // Init with no word for the detection time goes back Down.
        advance(3 * SLOW_TX).await;
        let t = b.on_timer(Instant::now()).expect("Init times out");
        assert_eq!((t.from, t.to), (State::Init, State::Down));
    }

    #[tokio::test(start_paused = true)]
    async fn periodic_packets_are_jittered_within_the_rfc_bounds() {
        for (mult, low, high) in [(3u8, 225, 300), (1, 225, 270)] {
            let t0 = Instant::now();
            let cfg = Intervals {
                multiplier: mult,
                ..Intervals::default()
            };
            let mut a = Session::new(7, cfg, t0);
            let mut b = Session::new(8, Intervals::default(), t0);
            let p = send(&mut a, t0);
            b.receive(&p, t0);
            let p = send(&mut b, t0);
            a.receive(&p, t0);
            assert_eq!(a.state(), State::Up);
            let mut now = t0;
            let mut seen = std::collections::BTreeSet::new();
            send(&mut a, now);
            for _ in 0..200 {
                let next = a.next_transmit();
                let gap = (next - now).as_millis();
                assert!((low..=high).contains(&gap), "mult {mult}: {gap} ms");
                seen.insert(gap);
                now = next;
                send(&mut a, now);
            }
            assert!(seen.len() > 10, "the gaps vary: {seen:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_remote_that_wants_no_packets_gets_none_but_finals() {
        let t0 = Instant::now();
        let (mut a, b) = up_pair(t0);
        let mut p = b.packet_now();
        p.required_min_rx_us = 0;
        p.poll = true;
        a.receive(&p, t0);
        let fin = a.transmit(t0).expect("the Final goes anyway");
        assert!(fin.fin);
        for i in 1..10 {
            assert_eq!(a.transmit(t0 + i * 1000 * MS), None);
        }
    }

    #[test]
    fn intervals_are_checked() {
        assert!(Intervals::default().validate().is_ok());
        let zero = Intervals {
            multiplier: 0,
            ..Intervals::default()
        };
        assert_eq!(zero.validate(), Err(IntervalError::ZeroMultiplier));
        let tiny = Intervals {
            desired_min_tx: Duration::from_micros(10),
            ..Intervals::default()
        };
        assert!(tiny.validate().is_err());
    }
}
