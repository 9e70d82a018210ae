//! ipsets through `ipset restore`: the peers of policy rules. A rule matches a set in one hash
//! lookup however many members it has (one set rule keeps 0.91× of the connection rate where a
//! linear list of 10k rules drops it to 0.07–0.27×), and pod churn changes members, not rules.
//!
//! Whole sets are replaced by filling a temporary set and swapping it in, so a packet never
//! meets a half-filled set; incremental changes are one `ipset restore -exist`. Sets live in a
//! network namespace like links do.

use std::fmt::{self, Write as _};
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;

use crate::error::{Error, Result};
use crate::exec;
use crate::iptables::IpFamily;
use crate::netns::Netns;

/// The kernel's limit on a set name (IPSET_MAXNAMELEN 32, with the terminating NUL).
pub const MAX_NAME_LEN: usize = 31;

/// The set types Trellis uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SetKind {
    /// `hash:ip`: pods picked by selectors.
    HashIp,
    /// `hash:net`: ipBlocks, with `nomatch` members for their excepts.
    HashNet,
    /// `hash:ip,port`: pods whose named port resolves to a port of their own.
    HashIpPort,
}

impl SetKind {
    /// The type name `ipset create` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            SetKind::HashIp => "hash:ip",
            SetKind::HashNet => "hash:net",
            SetKind::HashIpPort => "hash:ip,port",
        }
    }

    fn parse(s: &str) -> Option<SetKind> {
        match s {
            "hash:ip" => Some(SetKind::HashIp),
            "hash:net" => Some(SetKind::HashNet),
            "hash:ip,port" => Some(SetKind::HashIpPort),
            _ => None,
        }
    }
}

impl fmt::Display for SetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The transport protocol of a `hash:ip,port` member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }

    fn parse(s: &str) -> Option<Proto> {
        match s {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            "sctp" => Some(Proto::Sctp),
            _ => None,
        }
    }
}

/// One member of a set; which form fits depends on the set's [`SetKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SetMember {
    /// A `hash:ip` member.
    Ip(IpAddr),
    /// A `hash:net` member; `nomatch` carves an exception out of a wider member (ipBlock
    /// `except`). The kernel refuses a zero-length prefix: split 0.0.0.0/0 into two /1s.
    Net { net: IpNet, nomatch: bool },
    /// A `hash:ip,port` member.
    IpPort { ip: IpAddr, proto: Proto, port: u16 },
}

impl SetMember {
    fn addr(&self) -> IpAddr {
        match self {
            SetMember::Ip(ip) | SetMember::IpPort { ip, .. } => *ip,
            SetMember::Net { net, .. } => net.addr(),
        }
    }

    fn kind(&self) -> SetKind {
        match self {
            SetMember::Ip(_) => SetKind::HashIp,
            SetMember::Net { .. } => SetKind::HashNet,
            SetMember::IpPort { .. } => SetKind::HashIpPort,
        }
    }

    /// Parses a member as `ipset save` prints it for a set of `kind`.
    pub fn parse(kind: SetKind, text: &str) -> Option<SetMember> {
        let mut words = text.split_whitespace();
        let entry = words.next()?;
        let rest: Vec<&str> = words.collect();
        match kind {
            SetKind::HashIp if rest.is_empty() => entry.parse().ok().map(SetMember::Ip),
            SetKind::HashNet => {
                let nomatch = match rest.as_slice() {
                    [] => false,
                    ["nomatch"] => true,
                    _ => return None,
                };
                // A host member is printed without its /32 (or /128).
                let net = match entry.parse::<IpNet>() {
                    Ok(net) => net,
                    Err(_) => IpNet::from(entry.parse::<IpAddr>().ok()?),
                };
                Some(SetMember::Net { net, nomatch })
            }
            SetKind::HashIpPort if rest.is_empty() => {
                let (ip, port) = entry.split_once(',')?;
                let (proto, port) = port.split_once(':')?;
                Some(SetMember::IpPort {
                    ip: ip.parse().ok()?,
                    proto: Proto::parse(proto)?,
                    port: port.parse().ok()?,
                })
            }
            _ => None,
        }
    }
}

/// The restore syntax: `10.1.2.3`, `10.0.0.0/8 nomatch`, `10.1.2.3,tcp:80`.
impl fmt::Display for SetMember {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetMember::Ip(ip) => write!(f, "{ip}"),
            SetMember::Net { net, nomatch } => {
                write!(f, "{net}")?;
                if *nomatch {
                    f.write_str(" nomatch")?;
                }
                Ok(())
            }
            SetMember::IpPort { ip, proto, port } => write!(f, "{ip},{}:{port}", proto.as_str()),
        }
    }
}

/// A whole set: what [`Ipset::sync`] makes the kernel hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpSet {
    pub name: String,
    pub kind: SetKind,
    pub family: IpFamily,
    pub members: Vec<SetMember>,
}

/// Checks that the kernel and the restore syntax accept `name`.
pub fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "is empty"
    } else if name.len() > MAX_NAME_LEN {
        "is longer than 31 bytes"
    } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "contains whitespace or control characters"
    } else {
        return Ok(());
    };
    Err(Error::SetName {
        name: name.to_string(),
        reason,
    })
}

fn family_name(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "inet",
        IpFamily::V6 => "inet6",
    }
}

fn family_of(ip: IpAddr) -> IpFamily {
    match ip {
        IpAddr::V4(_) => IpFamily::V4,
        IpAddr::V6(_) => IpFamily::V6,
    }
}

/// Checks that `member` fits a set of `kind` and `family` (the kernel would refuse the whole
/// restore otherwise, naming only a line number).
fn check_member(set: &str, kind: SetKind, family: IpFamily, member: &SetMember) -> Result<()> {
    if member.kind() != kind {
        return Err(Error::invalid(
            "render ipset member",
            format!("{member} of {set}"),
            format!("does not fit a {kind} set"),
        ));
    }
    if family_of(member.addr()) != family {
        return Err(Error::invalid(
            "render ipset member",
            format!("{member} of {set}"),
            format!("is not of the set's family {}", family_name(family)),
        ));
    }
    if let SetMember::Net { net, .. } = member
        && net.prefix_len() == 0
    {
        return Err(Error::invalid(
            "render ipset member",
            format!("{member} of {set}"),
            "hash:net refuses a zero-length prefix (use two /1 members)",
        ));
    }
    Ok(())
}

/// The temporary set [`Ipset::sync`] fills before swapping: the name's head (so a listing by
/// prefix still finds a leftover of an interrupted sync) and a hash of the whole name.
fn temp_name(name: &str) -> String {
    // FNV-1a: stable across runs and builds, unlike std's hasher.
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let mut head_len = name.len().min(MAX_NAME_LEN - 9);
    while !name.is_char_boundary(head_len) {
        head_len -= 1;
    }
    format!("{}-t{:07x}", &name[..head_len], h & 0x0fff_ffff)
}

/// `ipset restore` input that makes each set hold exactly its members: create it if missing,
/// fill a temporary set, swap the two, destroy the temporary one.
fn render_sync(sets: &[IpSet]) -> Result<String> {
    let mut out = String::new();
    for set in sets {
        validate_name(&set.name)?;
        let tmp = temp_name(&set.name);
        if sets.iter().any(|s| s.name == tmp) {
            return Err(Error::invalid(
                "sync ipset",
                &set.name,
                format!("its temporary set name {tmp} is itself in the request"),
            ));
        }
        let header = format!("{} family {}", set.kind.as_str(), family_name(set.family));
        let _ = writeln!(out, "create {} {header}", set.name);
        let _ = writeln!(out, "create {tmp} {header}");
        let _ = writeln!(out, "flush {tmp}");
        for m in &set.members {
            check_member(&set.name, set.kind, set.family, m)?;
            let _ = writeln!(out, "add {tmp} {m}");
        }
        let _ = writeln!(out, "swap {tmp} {}", set.name);
        let _ = writeln!(out, "destroy {tmp}");
    }
    Ok(out)
}

/// `ipset restore -exist` input: deletions first, then additions.
fn render_apply(add: &[(String, SetMember)], del: &[(String, SetMember)]) -> Result<String> {
    let mut out = String::new();
    for (verb, list) in [("del", del), ("add", add)] {
        for (name, m) in list {
            validate_name(name)?;
            if let SetMember::Net { net, .. } = m
                && net.prefix_len() == 0
            {
                return Err(Error::invalid(
                    "render ipset member",
                    format!("{m} of {name}"),
                    "hash:net refuses a zero-length prefix (use two /1 members)",
                ));
            }
            // `del` takes no nomatch flag: the entry is the net itself.
            let text = match (verb, m) {
                ("del", SetMember::Net { net, .. }) => net.to_string(),
                _ => m.to_string(),
            };
            let _ = writeln!(out, "{verb} {name} {text}");
        }
    }
    Ok(out)
}

/// Parses `ipset list NAME -o save` (the same as `ipset save NAME`).
fn parse_save(name: &str, text: &str) -> std::result::Result<Vec<SetMember>, String> {
    let mut kind = None;
    let mut members = Vec::new();
    for line in text.lines() {
        let mut words = line.splitn(3, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("create"), Some(n), Some(rest)) if n == name => {
                let t = rest.split_whitespace().next().unwrap_or_default();
                kind = Some(SetKind::parse(t).ok_or_else(|| line.to_string())?);
            }
            (Some("add"), Some(n), Some(rest)) if n == name => {
                let kind = kind.ok_or_else(|| line.to_string())?;
                members.push(SetMember::parse(kind, rest).ok_or_else(|| line.to_string())?);
            }
            _ => {}
        }
    }
    Ok(members)
}

/// ipset in one network namespace.
#[derive(Debug, Clone)]
pub struct Ipset {
    /// Where to run (None: the caller's namespace).
    netns: Option<PathBuf>,
}

impl Ipset {
    pub fn new(netns: Option<&Netns>) -> Ipset {
        Ipset {
            netns: netns.map(|n| n.path().to_path_buf()),
        }
    }

    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        exec::run(self.netns.as_deref(), "ipset", args, stdin).await
    }

    /// One `ipset restore`: creates missing sets and replaces each given set's members
    /// atomically (fill a temporary set, `swap`, destroy the temporary one), so a reader never
    /// sees a half-filled set. An existing set of another type or family is an error.
    pub async fn sync(&self, sets: &[IpSet]) -> Result<()> {
        let input = render_sync(sets)?;
        if input.is_empty() {
            return Ok(());
        }
        self.run(&["restore", "-exist"], Some(&input))
            .await
            .map(|_| ())
    }

    /// Incremental members change in one `ipset restore -exist` (deletions, then additions):
    /// adding a present member or deleting a missing one is not an error; the sets must exist.
    pub async fn apply(
        &self,
        add: &[(String, SetMember)],
        del: &[(String, SetMember)],
    ) -> Result<()> {
        let input = render_apply(add, del)?;
        if input.is_empty() {
            return Ok(());
        }
        self.run(&["restore", "-exist"], Some(&input))
            .await
            .map(|_| ())
    }

    /// Names of existing sets that start with `prefix` (`ipset list -n`).
    pub async fn list_names(&self, prefix: &str) -> Result<Vec<String>> {
        let text = self.run(&["list", "-n"], None).await?;
        Ok(text
            .lines()
            .map(str::trim)
            .filter(|n| !n.is_empty() && n.starts_with(prefix))
            .map(str::to_string)
            .collect())
    }

    /// Members of one set (`ipset list NAME -o save` parsed); a missing set is NotFound.
    pub async fn members(&self, name: &str) -> Result<Vec<SetMember>> {
        validate_name(name)?;
        let text = match self.run(&["list", name, "-o", "save"], None).await {
            Ok(t) => t,
            Err(Error::Invalid { reason, .. }) if reason.contains("does not exist") => {
                return Err(Error::not_found("list ipset", name));
            }
            Err(e) => return Err(e),
        };
        parse_save(name, &text).map_err(|line| Error::invalid("parse ipset save", name, line))
    }

    /// Destroys sets in one restore (they must no longer be referenced by rules); missing
    /// ones are not an error.
    pub async fn destroy(&self, names: &[String]) -> Result<()> {
        for n in names {
            validate_name(n)?;
        }
        let present = self.list_names("").await?;
        let mut input = String::new();
        for n in names.iter().filter(|n| present.contains(n)) {
            let _ = writeln!(input, "destroy {n}");
        }
        if input.is_empty() {
            return Ok(());
        }
        self.run(&["restore", "-exist"], Some(&input))
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str, nomatch: bool) -> SetMember {
        SetMember::Net {
            net: s.parse().unwrap(),
            nomatch,
        }
    }

    #[test]
    fn members_render_in_restore_syntax() {
        assert_eq!(SetMember::Ip(ip("10.1.2.3")).to_string(), "10.1.2.3");
        assert_eq!(net("10.0.0.0/8", false).to_string(), "10.0.0.0/8");
        assert_eq!(net("10.0.0.0/8", true).to_string(), "10.0.0.0/8 nomatch");
        let m = SetMember::IpPort {
            ip: ip("10.1.2.3"),
            proto: Proto::Tcp,
            port: 80,
        };
        assert_eq!(m.to_string(), "10.1.2.3,tcp:80");
        let m = SetMember::IpPort {
            ip: ip("fd00::1"),
            proto: Proto::Sctp,
            port: 81,
        };
        assert_eq!(m.to_string(), "fd00::1,sctp:81");
    }

    #[test]
    fn save_output_parses_back_to_members() {
        let text = "create p hash:net family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x913e0c6c
add p 10.1.2.3 nomatch
add p 10.1.0.0/16 nomatch
add p 10.0.0.0/8
";
        assert_eq!(
            parse_save("p", text).unwrap(),
            vec![
                net("10.1.2.3/32", true),
                net("10.1.0.0/16", true),
                net("10.0.0.0/8", false)
            ]
        );
        let text = "create q hash:ip,port family inet6 hashsize 1024 maxelem 65536\nadd q fd00::1,udp:53\n";
        assert_eq!(
            parse_save("q", text).unwrap(),
            vec![SetMember::IpPort {
                ip: ip("fd00::1"),
                proto: Proto::Udp,
                port: 53
            }]
        );
        let text = "create r hash:ip family inet\nadd r 10.0.0.7\n";
        assert_eq!(
            parse_save("r", text).unwrap(),
            vec![SetMember::Ip(ip("10.0.0.7"))]
        );
        assert_eq!(
            parse_save("r", "create r hash:ip family inet\nadd r 10.0.0.7 bogus\n"),
            Err("add r 10.0.0.7 bogus".to_string())
        );
        assert!(parse_save("s", "create s list:set size 8\n").is_err());
    }

    #[test]
    fn every_rendered_member_parses_back_to_itself() {
        let cases = [
            (SetKind::HashIp, SetMember::Ip(ip("10.9.8.7"))),
            (SetKind::HashIp, SetMember::Ip(ip("fd00::7"))),
            (SetKind::HashNet, net("10.0.0.0/8", true)),
            (SetKind::HashNet, net("fd00::/64", false)),
            (
                SetKind::HashIpPort,
                SetMember::IpPort {
                    ip: ip("10.1.2.3"),
                    proto: Proto::Sctp,
                    port: 65535,
                },
            ),
        ];
        for (kind, m) in cases {
            assert_eq!(SetMember::parse(kind, &m.to_string()), Some(m));
        }
    }

    #[test]
    fn names_longer_than_31_bytes_are_refused_before_running_anything() {
        assert!(validate_name(&"a".repeat(31)).is_ok());
        for bad in ["a".repeat(32), String::new(), "a b".into(), "a\nb".into()] {
            let e = validate_name(&bad).unwrap_err();
            assert!(matches!(e, Error::SetName { .. }), "{bad:?}: {e}");
        }
        let set = IpSet {
            name: format!("trellis-{}", "x".repeat(30)),
            kind: SetKind::HashIp,
            family: IpFamily::V4,
            members: vec![],
        };
        assert!(matches!(render_sync(&[set]), Err(Error::SetName { .. })));
        let add = [("y".repeat(40), SetMember::Ip(ip("10.0.0.1")))];
        assert!(matches!(
            render_apply(&add, &[]),
            Err(Error::SetName { .. })
        ));
    }

    #[test]
    fn temporary_names_fit_and_keep_the_prefix() {
        for name in ["a", "trellis-ns-x", &"t".repeat(31)] {
            let t = temp_name(name);
            assert!(t.len() <= MAX_NAME_LEN, "{t}");
            assert_ne!(t, name);
            assert!(t.starts_with(&name[..name.len().min(22)]), "{t}");
            assert_eq!(t, temp_name(name), "stable");
        }
        assert_ne!(
            temp_name(&format!("{}a", "t".repeat(30))),
            temp_name(&format!("{}b", "t".repeat(30)))
        );
    }

    #[test]
    fn sync_fills_a_temporary_set_and_swaps_it_in() {
        let set = IpSet {
            name: "trellis-a".into(),
            kind: SetKind::HashNet,
            family: IpFamily::V4,
            members: vec![net("10.0.0.0/8", false), net("10.1.0.0/16", true)],
        };
        let tmp = temp_name("trellis-a");
        assert_eq!(
            render_sync(&[set]).unwrap(),
            format!(
                "create trellis-a hash:net family inet\n\
                 create {tmp} hash:net family inet\n\
                 flush {tmp}\n\
                 add {tmp} 10.0.0.0/8\n\
                 add {tmp} 10.1.0.0/16 nomatch\n\
                 swap {tmp} trellis-a\n\
                 destroy {tmp}\n"
            )
        );
    }

    #[test]
    fn members_that_do_not_fit_the_set_are_refused() {
        let mk = |kind, family, m| IpSet {
            name: "s".into(),
            kind,
            family,
            members: vec![m],
        };
        for set in [
            mk(SetKind::HashIp, IpFamily::V4, net("10.0.0.0/8", false)),
            mk(SetKind::HashIp, IpFamily::V6, SetMember::Ip(ip("10.0.0.1"))),
            mk(SetKind::HashNet, IpFamily::V4, net("0.0.0.0/0", false)),
        ] {
            assert!(
                matches!(
                    render_sync(std::slice::from_ref(&set)),
                    Err(Error::Invalid { .. })
                ),
                "{set:?}"
            );
        }
    }

    #[test]
    fn apply_deletes_first_and_adds_with_flags() {
        let add = [
            ("s".to_string(), net("10.2.0.0/16", true)),
            ("t".to_string(), SetMember::Ip(ip("10.0.0.2"))),
        ];
        let del = [("s".to_string(), net("10.3.0.0/16", true))];
        assert_eq!(
            render_apply(&add, &del).unwrap(),
            "del s 10.3.0.0/16\nadd s 10.2.0.0/16 nomatch\nadd t 10.0.0.2\n"
        );
    }
}
