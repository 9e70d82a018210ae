//! Links: lookup, veth pairs across namespaces, bridges, VXLAN devices, and their settings.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use futures::TryStreamExt;
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
    State,
};
use rtnetlink::{LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan};

use crate::error::{Error, Result, errno_of};
use crate::handle::Handle;
use crate::netns::Netns;

/// An Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub fn from_bytes(b: &[u8]) -> Option<Mac> {
        <[u8; 6]>::try_from(b).ok().map(Mac)
    }

    /// A locally administered unicast address derived from `seed` (stable for a stable seed).
    pub fn local_from(seed: &[u8]) -> Mac {
        // FNV-1a: small, stable across releases, and good enough to spread names over 46 bits.
        let mut h: u64 = 0xcbf29ce484222325;
        for b in seed {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x100000001b3);
        }
        let b = h.to_be_bytes();
        Mac([(b[0] & 0xfe) | 0x02, b[1], b[2], b[3], b[4], b[5]])
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A string that is not six colon-separated hex octets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?}")]
pub struct InvalidMac(pub String);

impl FromStr for Mac {
    type Err = InvalidMac;
    fn from_str(s: &str) -> Result<Mac, InvalidMac> {
        let bad = || InvalidMac(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(out))
    }
}

/// The host end of a pod's veth, the one rule every Trellis plugin (and policyd, which names a
/// pod's interface from its Pod object) follows: `tr` + 11 hex digits of a hash of the pod's
/// `namespace/name` — or of the container id when the runtime passes no `K8S_POD_*` arguments —
/// with `/<ifname>` appended when the interface is not `eth0`, so a pod's second interface gets
/// a host end of its own.
pub fn pod_host_veth(pod: Option<(&str, &str)>, container_id: &str, ifname: &str) -> String {
    let base = match pod {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() => format!("{ns}/{name}"),
        _ => container_id.to_string(),
    };
    if ifname == "eth0" {
        host_veth_name(&base)
    } else {
        host_veth_name(&format!("{base}/{ifname}"))
    }
}

/// `tr` + 11 hex digits of a hash of `seed` — stable, 13 characters, within IFNAMSIZ.
pub fn host_veth_name(seed: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in seed.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("tr{:011x}", h & 0xfff_ffff_ffff)
}

/// The prefix of a tombstone: a pod's veth end that CNI DEL retired instead of deleting
/// (deleting a veth waits for an RCU grace period, ~25 ms; a rename takes well under 1 ms). No
/// host end is ever called so (`tr` + hex digits, and `z` is no hex digit), so a tombstone never
/// takes a live pod's name, and whoever sweeps tombstones never touches a live pod.
pub const TOMBSTONE_PREFIX: &str = "trz";

/// The tombstone name of the link with `index`: `trz` + the index in hex, at most 11
/// characters, within IFNAMSIZ. Unique among the namespace's links for as long as the link
/// lives, because the index is; and stable, so a repeated retirement renames nothing twice.
pub fn tombstone_name(index: u32) -> String {
    format!("{TOMBSTONE_PREFIX}{index:x}")
}

/// Whether `name` is a tombstone's name ([`tombstone_name`]).
pub fn is_tombstone(name: &str) -> bool {
    name.strip_prefix(TOMBSTONE_PREFIX)
        .is_some_and(|hex| !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit()))
}

/// What the kernel says about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `veth`, `bridge`, `vxlan`, … (None for plain devices such as `lo`).
    pub kind: Option<String>,
    pub mac: Option<Mac>,
    pub mtu: u32,
    /// Administratively up (`ip link set up`).
    pub admin_up: bool,
    pub oper_state: OperState,
    /// The bridge this link is a port of.
    pub controller: Option<u32>,
    /// For a veth: the peer's index (in the peer's namespace).
    pub peer_index: Option<u32>,
    pub vxlan: Option<VxlanInfo>,
    /// The link's alias (`ip link set … alias …`): who made it, for links we own.
    pub alias: Option<String>,
}

/// Operational state (RFC 2863), as `ip link` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperState {
    Up,
    Down,
    LowerLayerDown,
    Unknown,
    Other,
}

/// The VXLAN settings of a device.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VxlanInfo {
    pub vni: Option<u32>,
    pub local: Option<Ipv4Addr>,
    pub port: Option<u16>,
    pub dev: Option<u32>,
    pub learning: Option<bool>,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Link {
        let mut link = Link {
            index: m.header.index,
            name: String::new(),
            kind: None,
            mac: None,
            mtu: 0,
            admin_up: m.header.flags.contains(LinkFlags::Up),
            oper_state: OperState::Unknown,
            controller: None,
            peer_index: None,
            vxlan: None,
            alias: None,
        };
        for attr in &m.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Address(a) => link.mac = Mac::from_bytes(a),
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                LinkAttribute::Controller(c) => link.controller = Some(*c),
                LinkAttribute::Link(l) => link.peer_index = Some(*l),
                LinkAttribute::IfAlias(a) => link.alias = Some(a.clone()),
                LinkAttribute::OperState(s) => {
                    link.oper_state = match s {
                        State::Up => OperState::Up,
                        State::Down => OperState::Down,
                        State::LowerLayerDown => OperState::LowerLayerDown,
                        State::Unknown => OperState::Unknown,
                        _ => OperState::Other,
                    }
                }
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                            LinkInfo::Data(InfoData::Vxlan(v)) => {
                                link.vxlan = Some(VxlanInfo::from_attrs(v))
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if link.kind.as_deref() != Some("veth") {
            link.peer_index = None;
        }
        link
    }
}

impl VxlanInfo {
    fn from_attrs(attrs: &[InfoVxlan]) -> VxlanInfo {
        let mut v = VxlanInfo::default();
        for a in attrs {
            match a {
                InfoVxlan::Id(id) => v.vni = Some(*id),
                InfoVxlan::Local(ip) => v.local = Some(*ip),
                InfoVxlan::Port(p) => v.port = Some(*p),
                InfoVxlan::Link(l) => v.dev = Some(*l),
                InfoVxlan::Learning(l) => v.learning = Some(*l),
                _ => {}
            }
        }
        v
    }
}

/// A veth pair: `name` here, `peer_name` in `peer_ns` (here too when `None`).
#[derive(Debug, Clone, Copy)]
pub struct VethSpec<'a> {
    pub name: &'a str,
    pub peer_name: &'a str,
    pub peer_ns: Option<&'a Netns>,
    pub mtu: Option<u32>,
    pub mac: Option<Mac>,
    pub peer_mac: Option<Mac>,
}

/// A VXLAN device as flannel makes it: one VNI, a local address, no learning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub local: Ipv4Addr,
    /// UDP port; 8472 is the Linux (and flannel) default, 4789 the IANA one.
    pub port: u16,
    /// The underlay device's index.
    pub dev: Option<u32>,
    pub learning: bool,
    pub mtu: Option<u32>,
    /// Kept stable across restarts so remote neighbour entries stay valid.
    pub mac: Option<Mac>,
}

impl Handle {
    /// The link called `name`, if there is one.
    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        let mut stream = self.inner.link().get().match_name(name).execute();
        match stream.try_next().await {
            Ok(m) => Ok(m.as_ref().map(Link::from_message)),
            Err(e) if matches!(errno_of(&e), Some(nix::libc::ENODEV | nix::libc::ENOENT)) => {
                Ok(None)
            }
            Err(e) => Err(Error::netlink(
                "get link",
                format!("{name} in {}", self.ns),
                e,
            )),
        }
    }

    /// The link called `name`, or a not-found error naming it.
    pub async fn require_link(&self, name: &str) -> Result<Link> {
        self.link(name)
            .await?
            .ok_or_else(|| Error::not_found("get link", format!("{name} in {}", self.ns)))
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let mut stream = self.inner.link().get().match_index(index).execute();
        match stream.try_next().await {
            Ok(m) => Ok(m.as_ref().map(Link::from_message)),
            Err(e) if matches!(errno_of(&e), Some(nix::libc::ENODEV | nix::libc::ENOENT)) => {
                Ok(None)
            }
            Err(e) => Err(Error::netlink(
                "get link",
                format!("index {index} in {}", self.ns),
                e,
            )),
        }
    }

    pub async fn links(&self) -> Result<Vec<Link>> {
        let msgs: Vec<LinkMessage> = self
            .inner
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::netlink("list links", &self.ns, e))?;
        Ok(msgs.iter().map(Link::from_message).collect())
    }

    /// Creates a veth pair, the peer directly in its namespace. Fails if `name` exists.
    pub async fn add_veth(&self, spec: &VethSpec<'_>) -> Result<Link> {
        let what = format!("{} (peer {}) in {}", spec.name, spec.peer_name, self.ns);
        let mut peer = LinkMessageBuilder::<LinkUnspec>::new().name(spec.peer_name.to_string());
        if let Some(ns) = spec.peer_ns {
            use std::os::fd::AsRawFd;
            peer = peer.setns_by_fd(ns.fd().as_raw_fd());
        }
        if let Some(mtu) = spec.mtu {
            peer = peer.mtu(mtu);
        }
        if let Some(mac) = spec.peer_mac {
            peer = peer.address(mac.0.to_vec());
        }
        let mut builder = LinkVeth::new(spec.name, spec.peer_name)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())));
        if let Some(mtu) = spec.mtu {
            builder = builder.mtu(mtu);
        }
        if let Some(mac) = spec.mac {
            builder = builder.address(mac.0.to_vec());
        }
        self.inner
            .link()
            .add(builder.build())
            .execute()
            .await
            .map_err(|e| Error::netlink("add veth", &what, e))?;
        self.require_link(spec.name).await
    }

    /// Makes sure the veth pair exists: an existing `name` whose peer is `peer_name` in the peer
    /// namespace (checked through `peer`) is kept; anything else under that name is replaced.
    pub async fn ensure_veth(&self, spec: &VethSpec<'_>, peer: &Handle) -> Result<Link> {
        if let Some(existing) = self.link(spec.name).await? {
            let peer_ok = match (existing.kind.as_deref(), existing.peer_index) {
                (Some("veth"), Some(peer_index)) => peer
                    .link(spec.peer_name)
                    .await?
                    .is_some_and(|p| p.index == peer_index && p.peer_index == Some(existing.index)),
                _ => false,
            };
            if peer_ok {
                if let Some(mtu) = spec.mtu
                    && existing.mtu != mtu
                {
                    self.set_mtu(existing.index, mtu).await?;
                }
                return self.require_link(spec.name).await;
            }
            self.delete_link(spec.name).await?;
        }
        self.add_veth(spec).await
    }

    /// Makes sure a bridge called `name` exists (with `mtu`, if given) and is up.
    pub async fn ensure_bridge(&self, name: &str, mtu: Option<u32>) -> Result<Link> {
        let what = format!("{name} in {}", self.ns);
        let mut created = false;
        let link = match self.link(name).await? {
            Some(l) if l.kind.as_deref() == Some("bridge") => l,
            Some(l) => {
                return Err(Error::invalid(
                    "ensure bridge",
                    &what,
                    format!(
                        "a {} device has that name",
                        l.kind.as_deref().unwrap_or("plain")
                    ),
                ));
            }
            None => {
                // Made without an MTU: see below.
                let b = LinkBridge::new(name);
                match self.inner.link().add(b.build()).execute().await {
                    Ok(()) => {}
                    // Another ADD made it between our lookup and our create: that is fine.
                    Err(e) if errno_of(&e) == Some(nix::libc::EEXIST) => {}
                    Err(e) => return Err(Error::netlink("add bridge", &what, e)),
                }
                created = true;
                self.require_link(name).await?
            }
        };
        // An MTU given at creation is not sticky: the kernel puts the bridge back to 1500 when
        // its last port leaves. Changed after creation (to a different value, or the kernel
        // skips it), it is the user's and stays.
        if let Some(mtu) = mtu
            && (created || link.mtu != mtu)
        {
            self.set_mtu(link.index, mtu).await?;
        }
        if !link.admin_up {
            self.set_up(link.index).await?;
        }
        self.require_link(name).await
    }

    /// Makes sure the VXLAN device matches `spec`: kept when it does (its MAC with it), made
    /// anew when it does not. Brought up.
    pub async fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<Link> {
        let what = format!("{} (vni {}) in {}", spec.name, spec.vni, self.ns);
        if let Some(existing) = self.link(&spec.name).await? {
            let matches = existing.kind.as_deref() == Some("vxlan")
                && existing.vxlan.as_ref().is_some_and(|v| {
                    v.vni == Some(spec.vni)
                        && v.local == Some(spec.local)
                        && v.port == Some(spec.port)
                        && (spec.dev.is_none() || v.dev == spec.dev)
                        && v.learning.unwrap_or(true) == spec.learning
                })
                && spec.mac.is_none_or(|m| existing.mac == Some(m));
            if matches {
                if let Some(mtu) = spec.mtu
                    && existing.mtu != mtu
                {
                    self.set_mtu(existing.index, mtu).await?;
                }
                if !existing.admin_up {
                    self.set_up(existing.index).await?;
                }
                return self.require_link(&spec.name).await;
            }
            self.delete_link(&spec.name).await?;
        }
        let mut b = LinkVxlan::new(&spec.name, spec.vni)
            .local(spec.local)
            .port(spec.port)
            .learning(spec.learning);
        if let Some(dev) = spec.dev {
            b = b.dev(dev);
        }
        if let Some(mtu) = spec.mtu {
            b = b.mtu(mtu);
        }
        if let Some(mac) = spec.mac {
            b = b.address(mac.0.to_vec());
        }
        self.inner
            .link()
            .add(b.build())
            .execute()
            .await
            .map_err(|e| Error::netlink("add vxlan", &what, e))?;
        let link = self.require_link(&spec.name).await?;
        self.set_up(link.index).await?;
        self.require_link(&spec.name).await
    }

    async fn change(&self, op: &'static str, index: u32, msg: LinkMessage) -> Result<()> {
        self.inner
            .link()
            .change(msg)
            .execute()
            .await
            .map_err(|e| Error::netlink(op, format!("link {index} in {}", self.ns), e))
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.change(
            "set up",
            index,
            LinkUnspec::new_with_index(index).up().build(),
        )
        .await
    }

    pub async fn set_down(&self, index: u32) -> Result<()> {
        self.change(
            "set down",
            index,
            LinkUnspec::new_with_index(index).down().build(),
        )
        .await
    }

    /// Sets the link's alias: a label that says who owns it.
    pub async fn set_alias(&self, index: u32, alias: &str) -> Result<()> {
        self.change(
            "set alias",
            index,
            LinkUnspec::new_with_index(index).alias(alias).build(),
        )
        .await
    }

    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        self.change(
            "set mtu",
            index,
            LinkUnspec::new_with_index(index).mtu(mtu).build(),
        )
        .await
    }

    pub async fn set_mac(&self, index: u32, mac: Mac) -> Result<()> {
        self.change(
            "set mac",
            index,
            LinkUnspec::new_with_index(index)
                .address(mac.0.to_vec())
                .build(),
        )
        .await
    }

    /// Makes the link a port of `bridge` (or of nothing).
    pub async fn set_controller(&self, index: u32, bridge: Option<u32>) -> Result<()> {
        let b = LinkUnspec::new_with_index(index);
        let msg = match bridge {
            Some(br) => b.controller(br).build(),
            None => b.nocontroller().build(),
        };
        self.change("set master", index, msg).await
    }

    /// Hairpin mode on a bridge port: frames may go back out the port they came in on, so a
    /// pod reaches itself through a service address.
    pub async fn set_hairpin(&self, index: u32, on: bool) -> Result<()> {
        let msg = LinkBridgePort::new(index)
            .append_info_data(InfoBridgePort::HairpinMode(on))
            .build();
        self.inner
            .link()
            .set_port(msg)
            .execute()
            .await
            .map_err(|e| Error::netlink("set hairpin", format!("link {index} in {}", self.ns), e))
    }

    /// Moves the link into `ns`.
    pub async fn move_to(&self, index: u32, ns: &Netns) -> Result<()> {
        use std::os::fd::AsRawFd;
        self.change(
            "move to netns",
            index,
            LinkUnspec::new_with_index(index)
                .setns_by_fd(ns.fd().as_raw_fd())
                .build(),
        )
        .await
    }

    /// Sets the link down and out of any bridge, in one request: the first half of a
    /// retirement ([`Handle::retire`]). The kernel drops the routes and neighbour entries
    /// through a link that goes down.
    pub async fn set_down_detached(&self, index: u32) -> Result<()> {
        self.change(
            "set down and detach",
            index,
            LinkUnspec::new_with_index(index)
                .down()
                .nocontroller()
                .build(),
        )
        .await
    }

    /// Retires the link instead of deleting it: down, out of any bridge and renamed to its
    /// [`tombstone_name`], in one request where the kernel renames a link that is up (Linux
    /// 6.x), else (EBUSY) in two: down first, then the name. Whoever owns the link's namespace
    /// frees it later (a veth pair goes when either end's namespace goes); a tombstone sweep
    /// deletes it otherwise. Far below a deletion's RCU wait either way. The new name.
    pub async fn retire(&self, index: u32) -> Result<String> {
        let name = tombstone_name(index);
        let at_once = self
            .change(
                "retire",
                index,
                LinkUnspec::new_with_index(index)
                    .down()
                    .nocontroller()
                    .name(name.clone())
                    .build(),
            )
            .await;
        match at_once {
            Ok(()) => Ok(name),
            Err(e) if e.errno() == Some(nix::libc::EBUSY) => {
                self.set_down_detached(index).await?;
                self.rename(index, &name).await?;
                Ok(name)
            }
            Err(e) => Err(e),
        }
    }

    /// Deletes the link with `index`; false when there was none.
    pub async fn delete_link_index(&self, index: u32) -> Result<bool> {
        match self.inner.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if matches!(errno_of(&e), Some(nix::libc::ENODEV | nix::libc::ENOENT)) => {
                Ok(false)
            }
            Err(e) => Err(Error::netlink(
                "delete link",
                format!("index {index} in {}", self.ns),
                e,
            )),
        }
    }

    pub async fn rename(&self, index: u32, name: &str) -> Result<()> {
        self.change(
            "rename",
            index,
            LinkUnspec::new_with_index(index)
                .name(name.to_string())
                .build(),
        )
        .await
    }

    /// Deletes the link called `name`; false when there was none.
    pub async fn delete_link(&self, name: &str) -> Result<bool> {
        let Some(link) = self.link(name).await? else {
            return Ok(false);
        };
        match self.inner.link().del(link.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if matches!(errno_of(&e), Some(nix::libc::ENODEV | nix::libc::ENOENT)) => {
                Ok(false)
            }
            Err(e) => Err(Error::netlink(
                "delete link",
                format!("{name} in {}", self.ns),
                e,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parses_and_prints() {
        let m: Mac = "aa:10:0B:ff:00:2c".parse().unwrap();
        assert_eq!(m.to_string(), "aa:10:0b:ff:00:2c");
        for bad in [
            "",
            "aa:bb",
            "aa:bb:cc:dd:ee:ff:00",
            "aa:bb:cc:dd:ee:g0",
            "aaa:b:cc:dd:ee:ff",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }

    #[test]
    fn tombstones_never_take_a_host_ends_name() {
        let t = tombstone_name(u32::MAX);
        assert_eq!(t, "trzffffffff");
        assert!(t.len() < 16, "within IFNAMSIZ");
        assert!(is_tombstone(&t) && is_tombstone(&tombstone_name(7)));
        for live in [
            host_veth_name("default/web-1"),
            host_veth_name("ctr1/eth1"),
            "trz".to_string(),
            "trzx1".to_string(),
            "trellis0".to_string(),
        ] {
            assert!(!is_tombstone(&live), "{live}");
        }
    }

    #[test]
    fn host_veth_names_are_stable_and_short() {
        let a = host_veth_name("ctr1/eth0");
        assert_eq!(a, host_veth_name("ctr1/eth0"));
        assert_ne!(a, host_veth_name("ctr1/eth1"));
        assert!(
            a.starts_with("tr") && a.len() == 13 && a[2..].chars().all(|c| c.is_ascii_hexdigit()),
            "{a}"
        );
    }

    #[test]
    fn a_pods_host_end_is_named_for_the_pod_not_its_sandbox() {
        let pod = Some(("default", "web-1"));
        assert_eq!(
            pod_host_veth(pod, "sandbox-a", "eth0"),
            pod_host_veth(pod, "sandbox-b", "eth0"),
            "a new sandbox of the same pod gets the same name"
        );
        assert_eq!(
            pod_host_veth(pod, "x", "eth0"),
            host_veth_name("default/web-1")
        );
        assert_ne!(
            pod_host_veth(pod, "x", "eth0"),
            pod_host_veth(pod, "x", "net1")
        );
        assert_eq!(pod_host_veth(None, "ctr1", "eth0"), host_veth_name("ctr1"));
        assert_eq!(
            pod_host_veth(Some(("", "")), "ctr1", "eth1"),
            host_veth_name("ctr1/eth1")
        );
    }

    #[test]
    fn derived_macs_are_stable_local_unicast() {
        let a = Mac::local_from(b"node-1");
        assert_eq!(a, Mac::local_from(b"node-1"));
        assert_ne!(a, Mac::local_from(b"node-2"));
        assert_eq!(a.0[0] & 0x01, 0, "unicast");
        assert_eq!(a.0[0] & 0x02, 0x02, "locally administered");
    }
}
