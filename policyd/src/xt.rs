//! iptables rules and ipsets as data: what the compiler produces, what `sync` renders for
//! `iptables-restore`/`ipset`, and what the tests interpret packet by packet.
//!
//! Every rule carries a comment `tp:<8 hex> <tier>|<policy>|<rule>`: the tag is a hash of the
//! rule's text and description, so reading our chains back (`iptables-save`, whatever its
//! normal form) only needs the tags to know whether a chain is as we wrote it, and explain
//! finds the rules of a decision by their description.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::rules::Proto;

/// What a rule matches on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Match {
    /// conntrack states, e.g. `RELATED,ESTABLISHED`.
    CtState(&'static str),
    Src(Ipv4Addr),
    Dst(Ipv4Addr),
    /// `-i` (a trailing `+` is a prefix wildcard, as in iptables).
    InIface(String),
    OutIface(String),
    /// `-m physdev --physdev-in`: the bridge port a bridged frame came in on.
    PhysIn(String),
    /// The source address is in the set.
    SrcSet(String),
    /// The destination address is in the set.
    DstSet(String),
    /// The destination address and port (hash:ip,port) are in the set.
    DstPortSet(String),
    Proto(Proto),
    /// Destination port range (with the protocol before it).
    DPort(u16, u16),
}

/// Where a matching packet goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct XRule {
    pub matches: Vec<Match>,
    pub target: Target,
    /// `tier|policy|rule`, or a short note for structural rules.
    pub desc: String,
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace(['"', '\\', '\n'], "_"))
}

impl XRule {
    pub fn new(matches: Vec<Match>, target: Target, desc: impl Into<String>) -> XRule {
        XRule {
            matches,
            target,
            desc: desc.into(),
        }
    }

    /// The rule without its comment.
    fn body(&self) -> String {
        let mut out = String::new();
        let mut proto = None;
        for m in &self.matches {
            match m {
                Match::CtState(s) => {
                    let _ = write!(out, " -m conntrack --ctstate {s}");
                }
                Match::Src(ip) => {
                    let _ = write!(out, " -s {ip}/32");
                }
                Match::Dst(ip) => {
                    let _ = write!(out, " -d {ip}/32");
                }
                Match::InIface(i) => {
                    let _ = write!(out, " -i {i}");
                }
                Match::OutIface(i) => {
                    let _ = write!(out, " -o {i}");
                }
                Match::PhysIn(i) => {
                    let _ = write!(out, " -m physdev --physdev-in {i}");
                }
                Match::SrcSet(s) => {
                    let _ = write!(out, " -m set --match-set {s} src");
                }
                Match::DstSet(s) => {
                    let _ = write!(out, " -m set --match-set {s} dst");
                }
                Match::DstPortSet(s) => {
                    let _ = write!(out, " -m set --match-set {s} dst,dst");
                }
                Match::Proto(p) => {
                    proto = Some(*p);
                    let _ = write!(out, " -p {}", p.iptables());
                }
                Match::DPort(a, b) => {
                    let p = proto.unwrap_or(Proto::Tcp).iptables();
                    if a == b {
                        let _ = write!(out, " -m {p} --dport {a}");
                    } else {
                        let _ = write!(out, " -m {p} --dport {a}:{b}");
                    }
                }
            }
        }
        let target = match &self.target {
            Target::Accept => " -j ACCEPT".to_string(),
            Target::Drop => " -j DROP".to_string(),
            Target::Return => " -j RETURN".to_string(),
            Target::Jump(c) => format!(" -j {c}"),
            Target::Goto(c) => format!(" -g {c}"),
        };
        format!("{}{target}", out.trim_start())
    }

    /// The tag that identifies this exact rule when read back.
    pub fn tag(&self) -> String {
        format!(
            "tp:{:08x}",
            crate::names::fnv(&format!("{}\n{}", self.body(), self.desc)) as u32
        )
    }

    /// The sets this rule names.
    pub fn sets(&self) -> impl Iterator<Item = &str> {
        self.matches.iter().filter_map(|m| match m {
            Match::SrcSet(s) | Match::DstSet(s) | Match::DstPortSet(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// The rule as `iptables-restore` takes it (after `-A CHAIN `): matches, the tagged comment,
    /// the target.
    pub fn render(&self) -> String {
        let body = self.body();
        let (m, t) = match body.rfind(" -j ").or_else(|| body.rfind(" -g ")) {
            Some(i) => (&body[..i], &body[i..]),
            None => ("", body.as_str()),
        };
        let comment = format!(
            "-m comment --comment {}",
            quote(&format!("{} {}", self.tag(), self.desc))
        );
        let m = m.trim();
        if m.is_empty() {
            format!("{comment}{t}")
        } else {
            format!("{m} {comment}{t}")
        }
    }
}

/// The tag of a rule as read back (from `iptables-save` or `-S` text), if it is one of ours.
pub fn tag_of(spec: &str) -> Option<&str> {
    let i = spec.find("tp:")?;
    let tag = spec.get(i..i + 11)?;
    tag[3..]
        .chars()
        .all(|c| c.is_ascii_hexdigit())
        .then_some(tag)
}

/// An ipset's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SetKind {
    HashIp,
    HashNet,
    HashIpPort,
}

/// An ipset member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Member {
    Ip(Ipv4Addr),
    Net {
        net: Ipv4Net,
        nomatch: bool,
    },
    IpPort {
        ip: Ipv4Addr,
        proto: Proto,
        port: u16,
    },
}

impl Member {
    /// The single address of an address member (None for a network).
    pub fn addr(&self) -> Option<Ipv4Addr> {
        match self {
            Member::Ip(ip) | Member::IpPort { ip, .. } => Some(*ip),
            Member::Net { .. } => None,
        }
    }
}

/// One ipset: its type and members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetDef {
    pub kind: SetKind,
    pub members: BTreeSet<Member>,
}

impl SetDef {
    /// Whether a packet's address (and port) is in the set, as the kernel decides: for
    /// hash:net the most specific matching entry wins and a `nomatch` one excludes.
    pub fn contains(&self, ip: Ipv4Addr, proto: Proto, port: u16) -> bool {
        match self.kind {
            SetKind::HashIp => self.members.contains(&Member::Ip(ip)),
            SetKind::HashIpPort => self.members.contains(&Member::IpPort { ip, proto, port }),
            SetKind::HashNet => self
                .members
                .iter()
                .filter_map(|m| match m {
                    Member::Net { net, nomatch } if net.contains(&ip) => {
                        Some((net.prefix_len(), *nomatch))
                    }
                    _ => None,
                })
                .max_by_key(|(len, _)| *len)
                .is_some_and(|(_, nomatch)| !nomatch),
        }
    }
}

/// A node's whole policy data path: our chains (filter table) and our sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Program {
    pub chains: BTreeMap<String, Vec<XRule>>,
    pub sets: BTreeMap<String, SetDef>,
    /// What each set holds (the compiler's; sets without one are only ever replaced whole).
    pub sources: BTreeMap<String, crate::compile::SetSource>,
}

impl Program {
    pub fn rule_count(&self) -> usize {
        self.chains.values().map(Vec::len).sum()
    }

    pub fn member_count(&self) -> usize {
        self.sets.values().map(|s| s.members.len()).sum()
    }
}

/// A packet as the filter table sees it, for the tests' interpreter.
#[derive(Debug, Clone)]
pub struct Packet {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: Proto,
    pub port: u16,
    pub in_iface: String,
    pub out_iface: String,
    /// The bridge port it came in on, for bridged frames.
    pub phys_in: Option<String>,
    pub established: bool,
}

fn iface_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('+') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

impl Program {
    fn rule_matches(&self, r: &XRule, p: &Packet) -> bool {
        let set = |name: &str| self.sets.get(name);
        r.matches.iter().all(|m| match m {
            Match::CtState(_) => p.established,
            Match::Src(ip) => p.src == *ip,
            Match::Dst(ip) => p.dst == *ip,
            Match::InIface(i) => iface_matches(i, &p.in_iface),
            Match::OutIface(i) => iface_matches(i, &p.out_iface),
            Match::PhysIn(i) => p.phys_in.as_deref().is_some_and(|x| iface_matches(i, x)),
            Match::SrcSet(s) => set(s).is_some_and(|s| s.contains(p.src, p.proto, p.port)),
            Match::DstSet(s) => set(s).is_some_and(|s| s.contains(p.dst, p.proto, p.port)),
            Match::DstPortSet(s) => set(s).is_some_and(|s| s.contains(p.dst, p.proto, p.port)),
            Match::Proto(x) => p.proto == *x,
            Match::DPort(a, b) => (*a..=*b).contains(&p.port),
        })
    }

    /// Runs `p` through `chain` as the kernel would: Some(true) accepted, Some(false) dropped,
    /// None fell off the end (returns to the caller). `-g` does not come back here.
    pub fn traverse(&self, chain: &str, p: &Packet) -> Option<bool> {
        self.walk(chain, p, 0).0
    }

    /// (verdict, whether a goto's chain returned: then the caller of this chain continues).
    fn walk(&self, chain: &str, p: &Packet, depth: usize) -> (Option<bool>, bool) {
        if depth > 16 {
            return (Some(false), false);
        }
        for r in self
            .chains
            .get(chain)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if !self.rule_matches(r, p) {
                continue;
            }
            match &r.target {
                Target::Accept => return (Some(true), false),
                Target::Drop => return (Some(false), false),
                Target::Return => return (None, false),
                Target::Jump(c) => {
                    if let (Some(v), _) = self.walk(c, p, depth + 1) {
                        return (Some(v), false);
                    }
                }
                Target::Goto(c) => {
                    let (v, _) = self.walk(c, p, depth + 1);
                    return (v, true);
                }
            }
        }
        (None, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_render_with_a_tagged_comment_before_the_target() {
        let r = XRule::new(
            vec![
                Match::SrcSet("trellis-p-1".into()),
                Match::Proto(Proto::Udp),
                Match::DPort(80, 81),
            ],
            Target::Return,
            "NetworkPolicy|x/p|0",
        );
        let text = r.render();
        assert!(
            text.starts_with("-m set --match-set trellis-p-1 src -p udp -m udp --dport 80:81 -m comment --comment \"tp:"),
            "{text}"
        );
        assert!(text.ends_with(" NetworkPolicy|x/p|0\" -j RETURN"), "{text}");
        assert_eq!(tag_of(&text), Some(r.tag().as_str()));
        let g = XRule::new(vec![], Target::Goto("TRELLIS-PI-1".into()), "dispatch");
        assert!(
            g.render().ends_with("dispatch\" -g TRELLIS-PI-1"),
            "{}",
            g.render()
        );
    }

    #[test]
    fn hash_net_with_nomatch_excludes_the_except() {
        let s = SetDef {
            kind: SetKind::HashNet,
            members: [
                Member::Net {
                    net: "10.0.0.0/8".parse().unwrap(),
                    nomatch: false,
                },
                Member::Net {
                    net: "10.1.0.0/16".parse().unwrap(),
                    nomatch: true,
                },
            ]
            .into(),
        };
        assert!(s.contains("10.2.0.1".parse().unwrap(), Proto::Tcp, 1));
        assert!(!s.contains("10.1.0.1".parse().unwrap(), Proto::Tcp, 1));
        assert!(!s.contains("11.0.0.1".parse().unwrap(), Proto::Tcp, 1));
    }
}
