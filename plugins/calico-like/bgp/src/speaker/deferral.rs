//! Graceful restart, the restarting side (RFC 4724 §4.1): after a restart that kept the
//! forwarding state, route selection is deferred — the kernel is not reprogrammed and our
//! UPDATEs are held — until every peer has sent End-of-RIB, or until the
//! Selection_Deferral_Timer runs out. Plain data, so the rules are tested without sessions.
//!
//! A peer counts as done when its session is up and it has sent End-of-RIB for every family
//! the session carries, or at once when it did not advertise graceful restart (it may never
//! send End-of-RIB) or advertised the R bit itself (it is restarting too and waits for ours:
//! waiting for each other would deadlock). A peer whose session is not up is waited for, until
//! the timer; so is any peer before the first one is configured (the mesh's peers arrive
//! after the speaker starts), so an empty peer list never ends the deferral.
//!
//! A peer with the R bit still owes us its routes, though: it sends them once it has our
//! End-of-RIB. Such a peer does not hold route selection, but until its End-of-RIB (or the
//! timer) it is [`Deferral::is_settling_for`]: the kernel routes the earlier run left are not
//! swept yet, so its routes do not vanish from forwarding for the moment between the end of
//! the deferral and its UPDATEs. (FRR in restarting mode sets the R bit for its restart time
//! after bgpd starts, whether or not it restarted: a restart of ours within that window met
//! this.)

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use tokio::time::Instant;

use crate::codec::{Family, GracefulRestartCap};

/// Why the deferral ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeferralEnd {
    /// Every peer sent End-of-RIB (or needs not send it).
    EndOfRib,
    /// The Selection_Deferral_Timer ran out first.
    Timer,
}

impl std::fmt::Display for DeferralEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeferralEnd::EndOfRib => "End-of-RIB from every peer",
            DeferralEnd::Timer => "the selection deferral timer",
        })
    }
}

/// Where one peer is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Progress {
    /// No session yet.
    NotUp,
    /// Up, End-of-RIB still due for these families.
    Waiting(BTreeSet<Family>),
    /// It has the R bit: not waited for, but End-of-RIB still due for these families.
    Restarting(BTreeSet<Family>),
    /// Its routes are all in (or it sends no End-of-RIB we could wait for).
    Done,
}

impl Progress {
    /// It holds route selection.
    fn holds(&self) -> bool {
        matches!(self, Progress::NotUp | Progress::Waiting(_))
    }
}

/// The deferral's state.
#[derive(Debug)]
pub(crate) struct Deferral {
    deadline: Instant,
    peers: BTreeMap<IpAddr, Progress>,
    ended: Option<DeferralEnd>,
}

impl Deferral {
    /// Deferring until `deadline` at the latest.
    pub(crate) fn new(deadline: Instant) -> Self {
        Self {
            deadline,
            peers: BTreeMap::new(),
            ended: None,
        }
    }

    /// When the timer runs out.
    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Still deferring.
    pub(crate) fn is_deferring(&self) -> bool {
        self.ended.is_none()
    }

    /// How it ended, once it has.
    pub(crate) fn ended(&self) -> Option<DeferralEnd> {
        self.ended
    }

    /// A configured peer: waited for.
    pub(crate) fn add_peer(&mut self, address: IpAddr) {
        self.peers.insert(address, Progress::NotUp);
    }

    /// A peer removed from the configuration is no longer waited for.
    pub(crate) fn remove_peer(&mut self, address: IpAddr) {
        self.peers.remove(&address);
    }

    /// The session with `address` is Established, carrying `families`; `gr` is the peer's
    /// graceful restart capability (None: it has none).
    pub(crate) fn established(
        &mut self,
        address: IpAddr,
        families: &[Family],
        gr: Option<&GracefulRestartCap>,
    ) {
        let progress = match gr {
            // RFC 4724 §4.1: peers without the capability, and peers restarting themselves,
            // are not waited for.
            None => Progress::Done,
            Some(_) if families.is_empty() => Progress::Done,
            Some(g) if g.restart_state => Progress::Restarting(families.iter().copied().collect()),
            Some(_) => Progress::Waiting(families.iter().copied().collect()),
        };
        self.peers.insert(address, progress);
    }

    /// End-of-RIB for `family` from `address`.
    pub(crate) fn end_of_rib(&mut self, address: IpAddr, family: Family) {
        if let Some(p) = self.peers.get_mut(&address)
            && let Progress::Waiting(due) | Progress::Restarting(due) = p
        {
            due.remove(&family);
            if due.is_empty() {
                *p = Progress::Done;
            }
        }
    }

    /// The peers still waited for.
    pub(crate) fn waiting_for(&self) -> Vec<IpAddr> {
        self.peers
            .iter()
            .filter(|(_, p)| p.holds())
            .map(|(a, _)| *a)
            .collect()
    }

    /// Whether `address` has the R bit and its End-of-RIB is still due (before the timer):
    /// the earlier run's kernel routes are not swept yet.
    pub(crate) fn is_settling_for(&self, address: IpAddr, now: Instant) -> bool {
        now < self.deadline
            && self
                .peers
                .get(&address)
                .is_some_and(|p| matches!(p, Progress::Restarting(_)))
    }

    /// Whether `address` is still waited for.
    pub(crate) fn is_waiting_for(&self, address: IpAddr) -> bool {
        self.is_deferring() && self.peers.get(&address).is_some_and(Progress::holds)
    }

    /// Ends the deferral if its time has come: returns how, once (None while it goes on and
    /// after it has ended).
    pub(crate) fn poll(&mut self, now: Instant) -> Option<DeferralEnd> {
        if self.ended.is_some() {
            return None;
        }
        let end = if !self.peers.is_empty() && !self.peers.values().any(Progress::holds) {
            DeferralEnd::EndOfRib
        } else if now >= self.deadline {
            DeferralEnd::Timer
        } else {
            return None;
        };
        self.ended = Some(end);
        Some(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::GrFamily;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    fn gr(restarting: bool) -> GracefulRestartCap {
        GracefulRestartCap::new(
            restarting,
            120,
            vec![GrFamily {
                family: Family::IPV4_UNICAST,
                forwarding_preserved: true,
            }],
        )
    }

    const BOTH: [Family; 2] = [Family::IPV4_UNICAST, Family::IPV6_UNICAST];

    #[test]
    fn ends_when_every_peer_sent_end_of_rib_for_every_family() {
        let now = Instant::now();
        let mut d = Deferral::new(now + Duration::from_secs(60));
        assert_eq!(d.poll(now), None, "no peer yet: nothing to end on");
        let (a, b) = (ip("198.18.0.2"), ip("198.18.0.3"));
        d.add_peer(a);
        d.add_peer(b);
        d.established(a, &BOTH, Some(&gr(false)));
        d.end_of_rib(a, Family::IPV4_UNICAST);
        d.end_of_rib(a, Family::IPV6_UNICAST);
        assert_eq!(d.poll(now), None, "b is not up yet: waited for");
        assert_eq!(d.waiting_for(), vec![b]);
        d.established(b, &BOTH, Some(&gr(false)));
        d.end_of_rib(b, Family::IPV4_UNICAST);
        assert_eq!(d.poll(now), None, "b's IPv6 End-of-RIB is still due");
        assert!(d.is_waiting_for(b));
        assert!(!d.is_waiting_for(a));
        d.end_of_rib(b, Family::IPV6_UNICAST);
        assert_eq!(d.poll(now), Some(DeferralEnd::EndOfRib));
        assert!(!d.is_deferring());
        assert_eq!(d.poll(now), None, "it ends once");
        assert!(!d.is_waiting_for(b));
    }

    #[test]
    fn the_timer_ends_it_when_a_peer_never_comes() {
        let now = Instant::now();
        let mut d = Deferral::new(now + Duration::from_secs(60));
        let (a, b) = (ip("198.18.0.2"), ip("198.18.0.3"));
        d.add_peer(a);
        d.add_peer(b);
        d.established(a, &BOTH[..1], Some(&gr(false)));
        d.end_of_rib(a, Family::IPV4_UNICAST);
        assert_eq!(d.poll(now + Duration::from_secs(59)), None);
        assert!(d.is_deferring());
        assert_eq!(
            d.poll(now + Duration::from_secs(60)),
            Some(DeferralEnd::Timer)
        );
        assert_eq!(d.ended(), Some(DeferralEnd::Timer));
        // A peer's End-of-RIB after the end changes nothing.
        d.established(b, &BOTH[..1], Some(&gr(false)));
        d.end_of_rib(b, Family::IPV4_UNICAST);
        assert_eq!(d.poll(now + Duration::from_secs(61)), None);
    }

    #[test]
    fn peers_without_graceful_restart_or_restarting_themselves_are_not_waited_for() {
        let now = Instant::now();
        let mut d = Deferral::new(now + Duration::from_secs(60));
        let (plain, restarting) = (ip("198.18.0.2"), ip("198.18.0.3"));
        d.add_peer(plain);
        d.add_peer(restarting);
        // It never had graceful restart: it may send no End-of-RIB at all.
        d.established(plain, &BOTH, None);
        assert_eq!(d.poll(now), None);
        // R bit: it waits for our End-of-RIB; waiting for its would deadlock.
        d.established(restarting, &BOTH, Some(&gr(true)));
        assert_eq!(d.poll(now), Some(DeferralEnd::EndOfRib));
        assert!(!d.is_waiting_for(restarting));
    }

    #[test]
    fn a_peer_with_the_r_bit_is_settling_until_its_end_of_rib_or_the_timer() {
        let now = Instant::now();
        let mut d = Deferral::new(now + Duration::from_secs(60));
        let (plain, restarting) = (ip("198.18.0.2"), ip("198.18.0.3"));
        d.add_peer(plain);
        d.add_peer(restarting);
        d.established(plain, &BOTH[..1], Some(&gr(false)));
        d.end_of_rib(plain, Family::IPV4_UNICAST);
        d.established(restarting, &BOTH, Some(&gr(true)));
        // Selection is not held for it (it waits for ours first)...
        assert_eq!(d.poll(now), Some(DeferralEnd::EndOfRib));
        assert_eq!(d.waiting_for(), Vec::<IpAddr>::new());
        // ...but its routes are still due: the old kernel routes stay until they are in.
        assert!(d.is_settling_for(restarting, now));
        assert!(!d.is_settling_for(plain, now));
        d.end_of_rib(restarting, Family::IPV4_UNICAST);
        assert!(d.is_settling_for(restarting, now), "IPv6 still due");
        d.end_of_rib(restarting, Family::IPV6_UNICAST);
        assert!(!d.is_settling_for(restarting, now));
        // One that never sends it settles at the timer.
        let other = ip("198.18.0.4");
        d.established(other, &BOTH[..1], Some(&gr(true)));
        assert!(d.is_settling_for(other, now + Duration::from_secs(59)));
        assert!(!d.is_settling_for(other, now + Duration::from_secs(60)));
    }

    #[test]
    fn a_removed_peer_is_no_longer_waited_for() {
        let now = Instant::now();
        let mut d = Deferral::new(now + Duration::from_secs(60));
        let (a, gone) = (ip("198.18.0.2"), ip("198.18.0.3"));
        d.add_peer(a);
        d.add_peer(gone);
        d.established(a, &BOTH[..1], Some(&gr(false)));
        d.end_of_rib(a, Family::IPV4_UNICAST);
        assert_eq!(d.poll(now), None);
        d.remove_peer(gone);
        assert_eq!(d.poll(now), Some(DeferralEnd::EndOfRib));
    }
}
