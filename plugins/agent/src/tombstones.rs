//! The agent's sweep of tombstones: veth pairs that CNI DEL retired (down, renamed `trz…`, see
//! `trellis_plugin::veth::retire_attachment`) instead of deleting them, because a deletion waits
//! ~25 ms for the kernel. The runtime deletes the pod's namespace right after DEL, and with it
//! the pair; a tombstone still here at the next look belongs to a namespace that outlived DEL,
//! and the agent deletes it (and its peer with it), off any pod's path. Bound: a tombstone
//! lives at most two sweep periods (plus the deletion itself).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use trellis_net::{Handle, Link};

/// How often the agent looks for tombstones by default; one seen at two looks in a row goes.
pub const SWEEP_PERIOD: Duration = Duration::from_secs(10);

/// Which tombstones are due: those of the agent's plugins that were there at the previous look.
/// By looks, not by time, so that a late look never spares a tombstone it should take, and a
/// tombstone made just before a look always survives that look.
#[derive(Debug)]
pub struct Reaper {
    /// The plugin types whose tombstones this agent owns (the prefix of their alias).
    plugins: Vec<String>,
    /// Our tombstones (by index) present at the previous look.
    previous: HashSet<u32>,
}

impl Reaper {
    pub fn new(plugins: &[&str]) -> Reaper {
        Reaper {
            plugins: plugins.iter().map(|p| p.to_string()).collect(),
            previous: HashSet::new(),
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

    /// Takes one look at the namespace's links: the indexes of our tombstones that were there at
    /// the previous look too (due), in order. The others are remembered for the next look; gone
    /// ones are forgotten.
    pub fn look(&mut self, links: &[Link]) -> Vec<u32> {
        let present: HashSet<u32> = links
            .iter()
            .filter(|l| self.ours(l))
            .map(|l| l.index)
            .collect();
        let mut due: Vec<u32> = present.intersection(&self.previous).copied().collect();
        due.sort_unstable();
        self.previous = present.difference(&self.previous).copied().collect();
        due
    }
}

/// What a look did, for the agent's metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Look {
    /// The look has listed the links (and is about to delete the due tombstones): told before
    /// any deletion, so that a count of looks read after a tombstone vanished includes the
    /// look that deleted it.
    Listed,
    /// This many tombstones deleted (those that vanished meanwhile with their namespace are
    /// not counted).
    Deleted(usize),
    /// The links could not be listed (logged); the next look tries again.
    Failed,
}

/// One look: lists the links, deletes the due tombstones.
pub async fn sweep_once(reaper: &mut Reaper, host: &Handle, on_look: &impl Fn(&Look)) {
    let links = match host.links().await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "listing links for the tombstone sweep");
            on_look(&Look::Failed);
            return;
        }
    };
    let due = reaper.look(&links);
    on_look(&Look::Listed);
    let mut deleted = 0;
    for index in due {
        match host.delete_link_index(index).await {
            Ok(true) => deleted += 1,
            Ok(false) => {}
            // Left for a later look (the reaper sees it as new again).
            Err(e) => tracing::warn!(error = %e, index, "deleting a tombstone"),
        }
    }
    if deleted > 0 {
        tracing::info!(
            deleted,
            "deleted tombstones of pods whose namespace outlived CNI DEL"
        );
        on_look(&Look::Deleted(deleted));
    }
}

/// The `on_look` of [`spawn`] that counts the looks and the deletions in the agent's metrics:
/// `agent_tombstone_looks_total{result="ok"|"error"}` and `agent_tombstones_deleted_total`.
pub fn count_in(metrics: Arc<trellis_daemon::Metrics>) -> impl Fn(&Look) + Send + Sync + 'static {
    move |look| {
        match look {
        Look::Listed | Look::Failed => metrics.inc(
            "agent_tombstone_looks_total",
            "Looks for tombstones (veth pairs CNI DEL retired whose namespace outlived it), by result",
            &[(
                "result",
                if *look == Look::Failed { "error" } else { "ok" },
            )],
            1.0,
        ),
        Look::Deleted(n) => metrics.inc(
            "agent_tombstones_deleted_total",
            "Tombstones deleted by the sweep",
            &[],
            f64::from(u32::try_from(*n).unwrap_or(u32::MAX)),
        ),
    }
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
/// every `period` (the first look at once), on the current runtime, until the returned
/// [`Sweeper`] is dropped; `on_look` hears of every look. The sweep has a netlink connection
/// of its own: the kernel runs one dump at a time per socket and refuses a second with EBUSY,
/// so sharing the agent's would fail whichever of the two dumps (the sweep's links, the agent's
/// addresses) came second.
pub fn spawn(
    plugins: &'static [&'static str],
    period: Duration,
    on_look: impl Fn(&Look) + Send + Sync + 'static,
) -> Result<Sweeper, trellis_net::Error> {
    let host = Handle::current()?;
    Ok(Sweeper(tokio::spawn(sweep_forever(
        host, plugins, period, on_look,
    ))))
}

/// Sweeps the tombstones of `plugins` every `period`, forever.
pub async fn sweep_forever(
    host: Handle,
    plugins: &'static [&'static str],
    period: Duration,
    on_look: impl Fn(&Look),
) {
    let mut reaper = Reaper::new(plugins);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        sweep_once(&mut reaper, &host, &on_look).await;
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
    fn only_our_tombstones_seen_at_the_previous_look_are_due() {
        let mut r = Reaper::new(&["trellis-routed"]);
        let links = vec![
            link(5, "trz5", Some("trellis-routed c1/eth0")),
            link(6, "trz6", Some("trellis-overlay c2/eth0")),
            link(7, "tr0123456789a", Some("trellis-routed c3/eth0")),
            link(8, "trz8", None),
            link(9, "trz9", Some("trellis-routedx c4/eth0")),
        ];
        assert!(r.look(&links).is_empty(), "first seen now");
        let later = vec![
            link(5, "trz5", Some("trellis-routed c1/eth0")),
            link(6, "trz6", Some("trellis-overlay c2/eth0")),
            link(11, "trzb", Some("trellis-routed c5/eth0")),
        ];
        assert_eq!(r.look(&later), vec![5], "5 is old, 11 new, 6 not ours");
        // 11 went with its namespace meanwhile: forgotten, never deleted; 12 is new.
        let next = vec![link(12, "trzc", Some("trellis-routed c6/eth0"))];
        assert!(r.look(&next).is_empty());
        assert_eq!(r.look(&next), vec![12]);
        // A due tombstone is not remembered again (it was deleted; should it still be there,
        // say the deletion failed, the look after next takes it).
        assert!(r.look(&next).is_empty());
        assert_eq!(r.look(&next), vec![12]);
    }
}
