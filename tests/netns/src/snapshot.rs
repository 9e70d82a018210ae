//! What a namespace and a state directory hold, to prove that a refused request changed nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use trellis_net::{Family, Netns};

use crate::{Result, process};

/// The network state of one namespace, in comparable text form.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NsState {
    pub links: Vec<String>,
    pub addresses: Vec<String>,
    pub routes: Vec<String>,
    pub iptables: Vec<String>,
    /// `ipset save` lines (sets and members), random `initval`s dropped.
    pub ipsets: Vec<String>,
}

impl NsState {
    /// Takes the state of `ns`: links (name, kind, MAC, MTU, admin state, bridge), addresses,
    /// routes of every table, the iptables rules (counters dropped) and the ipsets with their
    /// members.
    pub async fn capture(ns: &Netns, tag: &str) -> Result<NsState> {
        let h = ns.connect()?;
        let mut links: Vec<String> = h
            .links()
            .await?
            .into_iter()
            .map(|l| {
                format!(
                    "{} kind={:?} mac={:?} mtu={} up={} master={:?}",
                    l.name, l.kind, l.mac, l.mtu, l.admin_up, l.controller
                )
            })
            .collect();
        links.sort();
        let mut addresses: Vec<String> = h
            .addresses(None)
            .await?
            .into_iter()
            .filter(|a| !kernel_link_local(&a.address))
            .map(|a| format!("{} dev {}", a.address, a.index))
            .collect();
        addresses.sort();
        let mut routes = Vec::new();
        for family in [Family::V4, Family::V6] {
            routes.extend(
                h.routes(family, None)
                    .await?
                    .into_iter()
                    .filter(|r| {
                        !(r.protocol == KERNEL
                            && (kernel_link_local(&r.dst) || r.dst.addr().is_multicast()))
                    })
                    .map(|r| format!("{r:?}")),
            );
        }
        routes.sort();
        let mut iptables = Vec::new();
        for tool in ["iptables-save", "ip6tables-save"] {
            let out = process::exec_ok(ns, &[tool], Duration::from_secs(10), tag).await?;
            iptables.extend(
                out.lines()
                    .filter(|l| !l.starts_with('#'))
                    .map(strip_counters),
            );
        }
        let out = process::exec_ok(ns, &["ipset", "save"], Duration::from_secs(10), tag).await?;
        let mut ipsets: Vec<String> = out.lines().map(strip_initval).collect();
        ipsets.sort();
        Ok(NsState {
            links,
            addresses,
            routes,
            iptables,
            ipsets,
        })
    }

    /// What changed from `self` to `after`, one line per difference.
    pub fn diff(&self, after: &NsState) -> Vec<String> {
        let mut d = Vec::new();
        for (what, a, b) in [
            ("link", &self.links, &after.links),
            ("address", &self.addresses, &after.addresses),
            ("route", &self.routes, &after.routes),
            ("iptables", &self.iptables, &after.iptables),
            ("ipset", &self.ipsets, &after.ipsets),
        ] {
            d.extend(
                a.iter()
                    .filter(|x| !b.contains(x))
                    .map(|x| format!("{what} gone: {x}")),
            );
            d.extend(
                b.iter()
                    .filter(|x| !a.contains(x))
                    .map(|x| format!("{what} added: {x}")),
            );
        }
        d
    }
}

impl NsState {
    /// The names of links in `after` and not in `self` that are down and in no bridge: what a
    /// plugin that retires a veth pair on DEL instead of deleting it (a tombstone, freed with
    /// the pod's namespace) leaves behind for a while.
    pub fn retired_links(&self, after: &NsState) -> Vec<String> {
        after
            .links
            .iter()
            .filter(|l| !self.links.contains(l))
            .filter(|l| l.contains(" up=false master=None"))
            .filter_map(|l| l.split(' ').next().map(str::to_string))
            .collect()
    }

    /// [`NsState::diff`] without the added links named in `retired`.
    pub fn diff_except(&self, after: &NsState, retired: &[String]) -> Vec<String> {
        self.diff(after)
            .into_iter()
            .filter(|d| {
                !d.strip_prefix("link added: ")
                    .and_then(|l| l.split(' ').next())
                    .is_some_and(|name| retired.iter().any(|r| r == name))
            })
            .collect()
    }
}

const KERNEL: u8 = 2;

/// IPv6 link-local addresses and their routes come and go with links on the kernel's own
/// schedule (after duplicate address detection): they tell nothing about what a plugin did.
fn kernel_link_local(net: &ipnet::IpNet) -> bool {
    matches!(net.addr(), std::net::IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

/// `:CHAIN ACCEPT [12:3456]` → `:CHAIN ACCEPT`: packet counters move with traffic.
fn strip_counters(line: &str) -> String {
    match line.rfind(" [") {
        Some(i) if line.ends_with(']') && line.starts_with(':') => line[..i].to_string(),
        _ => line.to_string(),
    }
}

/// `create S hash:ip family inet … initval 0x1a2b3c4d` → without the `initval` pair: the
/// kernel picks a random hash seed per set, which says nothing about its contents.
fn strip_initval(line: &str) -> String {
    let mut words: Vec<&str> = line.split(' ').collect();
    if let Some(i) = words.iter().position(|w| *w == "initval") {
        words.drain(i..(i + 2).min(words.len()));
    }
    words.join(" ")
}

/// Every file under `dir` with its contents.
pub fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    out
}

/// Differences between two [`files`] snapshots; `contents` false compares names only.
pub fn files_diff(
    before: &BTreeMap<PathBuf, Vec<u8>>,
    after: &BTreeMap<PathBuf, Vec<u8>>,
    contents: bool,
) -> Vec<String> {
    let mut d = Vec::new();
    for (p, c) in before {
        match after.get(p) {
            None => d.push(format!("file gone: {}", p.display())),
            Some(c2) if contents && c2 != c => d.push(format!("file changed: {}", p.display())),
            _ => {}
        }
    }
    for p in after.keys().filter(|p| !before.contains_key(*p)) {
        d.push(format!("file added: {}", p.display()));
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_dropped_from_chain_lines_only() {
        assert_eq!(strip_counters(":INPUT ACCEPT [12:3456]"), ":INPUT ACCEPT");
        assert_eq!(
            strip_counters("-A FORWARD -j ACCEPT"),
            "-A FORWARD -j ACCEPT"
        );
    }

    #[test]
    fn only_down_unbridged_added_links_count_as_retired() {
        let before = NsState {
            links: vec!["lo kind=None mac=None mtu=65536 up=true master=None".into()],
            ..Default::default()
        };
        let mut after = before.clone();
        after.links.extend([
            "trz1f kind=Some(\"veth\") mac=None mtu=1500 up=false master=None".to_string(),
            "kl1 kind=Some(\"veth\") mac=None mtu=1500 up=true master=None".to_string(),
            "kl2 kind=Some(\"veth\") mac=None mtu=1500 up=false master=Some(3)".to_string(),
        ]);
        after.routes.push("a route".into());
        let retired = before.retired_links(&after);
        assert_eq!(retired, ["trz1f"]);
        let left = before.diff_except(&after, &retired);
        assert_eq!(left.len(), 3, "{left:?}");
        assert!(left.iter().all(|d| !d.contains("trz1f")), "{left:?}");
    }

    #[test]
    fn ipset_hash_seeds_are_dropped() {
        assert_eq!(
            strip_initval(
                "create s hash:ip family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x913e0c6c"
            ),
            "create s hash:ip family inet hashsize 1024 maxelem 65536 bucketsize 12"
        );
        assert_eq!(strip_initval("add s 10.0.0.1"), "add s 10.0.0.1");
    }
}
