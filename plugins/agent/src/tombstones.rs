//! The agent's sweep of tombstones: veth pairs that CNI DEL retired (down, renamed `trz…`, see
//! `trellis_plugin::veth::retire_attachment`) instead of deleting them, because a deletion waits
//! ~25 ms for the kernel. The runtime deletes the pod's namespace right after DEL, and with it
//! the pair; a tombstone still here a sweep period after it was first seen belongs to a
//! namespace that outlived DEL, and the agent deletes it (and its peer with it), off any pod's
//! path. Bound: a tombstone lives at most two [`SWEEP_PERIOD`]s (plus the deletion itself).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;
use trellis_net::{Handle, Link};

/// How often the agent looks for tombstones; one seen in two looks in a row goes.
pub const SWEEP_PERIOD: Duration = Duration::from_secs(10);

/// Which tombstones are due: those of the agent's plugins seen at least `grace` ago.
#[derive(Debug)]
pub struct Reaper {
    /// The plugin types whose tombstones this agent owns (the prefix of their alias).
    plugins: Vec<String>,
    grace: Duration,
    /// Tombstones by index, with the time each was first seen.
    seen: HashMap<u32, Instant>,
}

impl Reaper {
    pub fn new(plugins: &[&str], grace: Duration) -> Reaper {
        Reaper {
            plugins: plugins.iter().map(|p| p.to_string()).collect(),
            grace,
            seen: HashMap::new(),
        }
    }

    /// Whether `link` is a tombstone one of our plugins left.
    fn ours(&self, link: &Link) -> bool {
        trellis_net::link::is_tombstone(&link.name)
            && link.alias.as_deref().is_some_and(|a| {
                self.plugins.iter().any(|p| {
                    a.strip_prefix(p.as_str())
                        .is_some_and(|r| r.starts_with(' '))
                })
            })
    }

    /// Takes the namespace's links as they are `now`: remembers new tombstones, forgets gone
    /// ones, and returns the indexes of those first seen `grace` or more ago.
    pub fn due(&mut self, links: &[Link], now: Instant) -> Vec<u32> {
        let present: HashSet<u32> = links
            .iter()
            .filter(|l| self.ours(l))
            .map(|l| l.index)
            .collect();
        self.seen.retain(|i, _| present.contains(i));
        for i in &present {
            self.seen.entry(*i).or_insert(now);
        }
        let mut due: Vec<u32> = self
            .seen
            .iter()
            .filter(|(_, first)| now.saturating_duration_since(**first) >= self.grace)
            .map(|(i, _)| *i)
            .collect();
        due.sort_unstable();
        due
    }

    /// One look: deletes the due tombstones; how many went.
    pub async fn sweep(&mut self, host: &Handle) -> Result<usize, trellis_net::Error> {
        let links = host.links().await?;
        let mut deleted = 0;
        for index in self.due(&links, Instant::now()) {
            if host.delete_link_index(index).await? {
                deleted += 1;
            }
            self.seen.remove(&index);
        }
        Ok(deleted)
    }
}

/// The agent's sweeping task; stopped when dropped (the agent's run ends).
#[derive(Debug)]
pub struct Sweeper(tokio::task::JoinHandle<()>);

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts sweeping the tombstones of `plugins` in the calling thread's namespace (the agent's)
/// every [`SWEEP_PERIOD`], on the current runtime, until the returned [`Sweeper`] is dropped.
/// The sweep has a netlink connection of its own: the kernel runs one dump at a time per
/// socket and refuses a second with EBUSY, so sharing the agent's would fail whichever of the
/// two dumps (the sweep's links, the agent's addresses) came second.
pub fn spawn(plugins: &'static [&'static str]) -> Result<Sweeper, trellis_net::Error> {
    let host = Handle::current()?;
    Ok(Sweeper(tokio::spawn(sweep_forever(host, plugins))))
}

/// Sweeps the tombstones of `plugins` every [`SWEEP_PERIOD`], forever.
pub async fn sweep_forever(host: Handle, plugins: &'static [&'static str]) {
    let mut reaper = Reaper::new(plugins, SWEEP_PERIOD);
    let mut tick = tokio::time::interval(SWEEP_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match reaper.sweep(&host).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                deleted = n,
                "deleted tombstones of pods whose namespace outlived CNI DEL"
            ),
            Err(e) => tracing::warn!(error = %e, "sweeping tombstones"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_net::OperState;

    fn link(index: u32, name: &str, alias: Option<&str>) -> Link {
        Link {
            index,
            name: name.into(),
            kind: Some("veth".into()),
            mac: None,
            mtu: 1500,
            admin_up: false,
            oper_state: OperState::Down,
            controller: None,
            peer_index: None,
            vxlan: None,
            alias: alias.map(str::to_string),
        }
    }

    #[test]
    fn only_our_tombstones_seen_for_the_grace_period_are_due() {
        let grace = Duration::from_secs(10);
        let mut r = Reaper::new(&["trellis-routed"], grace);
        let t0 = Instant::now();
        let links = vec![
            link(5, "trz5", Some("trellis-routed c1/eth0")),
            link(6, "trz6", Some("trellis-overlay c2/eth0")),
            link(7, "tr0123456789a", Some("trellis-routed c3/eth0")),
            link(8, "trz8", None),
            link(9, "trz9", Some("trellis-routedx c4/eth0")),
        ];
        assert!(r.due(&links, t0).is_empty(), "first seen now");
        assert!(r.due(&links, t0 + grace / 2).is_empty());
        let later = vec![
            link(5, "trz5", Some("trellis-routed c1/eth0")),
            link(11, "trzb", Some("trellis-routed c5/eth0")),
        ];
        assert_eq!(r.due(&later, t0 + grace), vec![5], "5 is old, 11 new");
        // 5 went with its namespace meanwhile: forgotten, never deleted.
        let only_new = vec![link(11, "trzb", Some("trellis-routed c5/eth0"))];
        assert!(r.due(&only_new, t0 + grace + grace / 2).is_empty());
        assert_eq!(r.due(&only_new, t0 + 2 * grace), vec![11]);
    }
}
