//! A pod on a routed veth, as the routed (calico-like) and canal modes wire it: a veth pair
//! with no bridge. The pod end (`CNI_IFNAME`) holds the pod's address as a /32 (/128) and
//! routes everything through a link-local gateway — `169.254.1.1`, which exists nowhere, and
//! for IPv6 `fe80::1`, the host end's own second link-local address (as Calico routes via the
//! host end's link-local) — whose permanent neighbour entry is the host end's MAC, so the
//! kernel sends every packet to the host without resolving anything. The host end (named by [`crate::veth`]) answers ARP by proxy and forwards; the
//! host routes the pod's /32 to it (protocol [`proto::POD`]). How the node reaches the other
//! nodes' pods is the mode's business (BGP routes, or the VXLAN overlay's).
//!
//! A mode's plugin is a [`RoutedVeth`]: its type, where its agent's readiness state lives, and
//! that state (a [`RoutedState`], which gives the pod MTU). It is the whole CNI plugin: ADD (with
//! the policy gate when the configuration has a `policy` section), DEL, CHECK, GC, STATUS.
//!
//! The host end carries the attachment it belongs to in its alias (`<type> <container
//! id>/<ifname>`, see [`crate::veth`]): a late DEL of an earlier sandbox of the same pod, whose
//! host end has the same name, leaves the new sandbox's veth alone.

use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use trellis_cni::Error;
use trellis_cni::result::{CniResult, IpConfig, Route as CniRoute};
use trellis_cni::skel::{Attachment, GcRequest, NetConf, Plugin};
use trellis_net::{Family, Handle, Link, OperState, Route, Scope, proto};

use crate::attach::{self, Add, Checked, Sides};
use crate::host::{net_err, open_netns, runtime};
use crate::ready::ReadyState;
use crate::{PluginConf, ipam, veth};

/// The readiness state of an agent whose node's pods get routed veths.
pub trait RoutedState: ReadyState {
    /// The pod MTU the agent computed.
    fn mtu(&self) -> u32;
}

/// The CNI plugin of a mode whose pods get routed veths, its agent's state being `S`.
pub struct RoutedVeth<S> {
    /// The plugin's type, and the prefix of the owner label on its host ends.
    pub plugin: &'static str,
    /// Where the agent writes its state when the configuration names no `stateDir`.
    pub default_state_dir: &'static str,
    state: PhantomData<fn() -> S>,
}

impl<S> RoutedVeth<S> {
    pub const fn new(plugin: &'static str, default_state_dir: &'static str) -> RoutedVeth<S> {
        RoutedVeth {
            plugin,
            default_state_dir,
            state: PhantomData,
        }
    }
}

impl<S> RoutedVeth<S> {
    /// The host end's name for this attachment, and its owner label.
    fn host_end(&self, req: &Attachment) -> (String, String) {
        (veth::host_veth(req), veth::owner(self.plugin, req))
    }
}

/// The prefixes of `nets` in `family`.
fn of_family(nets: &[IpNet], family: Family) -> impl Iterator<Item = &IpNet> {
    nets.iter().filter(move |n| Family::of(&n.addr()) == family)
}

/// The pods' IPv4 gateway: answered by the host end, held by no interface.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The pods' IPv6 gateway: the host end's own (second) link-local address, reached through a
/// permanent neighbour entry.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// The gateway pods of `family` use.
pub fn gateway(family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(GATEWAY_V4),
        Family::V6 => IpAddr::V6(GATEWAY_V6),
    }
}

fn default_route(family: Family) -> IpNet {
    match family {
        Family::V4 => IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::UNSPECIFIED, 0)),
        Family::V6 => IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::UNSPECIFIED, 0)),
    }
}

/// `ip`'s host prefix: `/32` or `/128`.
pub fn host_prefix(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

/// The pod's addresses: each IPAM address narrowed to a host prefix (IPAM reports the block's
/// prefix; a routed pod has no on-link neighbours), without duplicates, in IPAM's order.
pub fn pod_addresses(result: &CniResult) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = Vec::new();
    for ip in &result.ips {
        let a = host_prefix(ip.address.addr());
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

/// The families of `addresses`, IPv4 first.
fn families(addresses: &[IpNet]) -> Vec<Family> {
    [Family::V4, Family::V6]
        .into_iter()
        .filter(|f| addresses.iter().any(|a| Family::of(&a.addr()) == *f))
        .collect()
}

/// The extra routes the IPAM plugin asked for (its `routes`), each through the gateway of its
/// family; the default route is ours already, and a family the pod has no address of is
/// skipped.
pub fn extra_routes(result: &CniResult, families: &[Family]) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = Vec::new();
    for r in &result.routes {
        let dst = r.dst.trunc();
        if dst.prefix_len() == 0 || !families.contains(&Family::of(&dst.addr())) {
            continue;
        }
        if !out.contains(&dst) {
            out.push(dst);
        }
    }
    out
}

/// Everything ADD wires once IPAM has answered.
struct Plan<'a> {
    ifname: &'a str,
    host_name: &'a str,
    addresses: &'a [IpNet],
    families: &'a [Family],
    extra_routes: &'a [IpNet],
}

/// The IPv4 settings of the host end: answers ARP for the gateway at once, forwards. Written
/// whatever the pod's families (as they always were), so they need nothing of IPAM.
fn host_v4_settings(h: &str) -> [(String, &'static str); 3] {
    [
        (format!("net/ipv4/conf/{h}/proxy_arp"), "1"),
        (format!("net/ipv4/neigh/{h}/proxy_delay"), "0"),
        (format!("net/ipv4/conf/{h}/forwarding"), "1"),
    ]
}

/// What ADD can do before IPAM answers, and does while ipamd stores the allocation: the veth
/// pair, the host end's owner label and its IPv4 settings. The host end stays down (IPv6's
/// settings come first, once the families are known). On failure the pair is gone again.
async fn make_pair(
    sides: &Sides,
    host_name: &str,
    owner: &str,
    ifname: &str,
    mtu: u32,
) -> Result<Link, Error> {
    let (host_link, ()) = sides
        .veth(host_name, ifname, mtu, async |host_link| {
            sides
                .host
                .set_alias(host_link.index, owner)
                .await
                .map_err(net_err)?;
            let settings = host_v4_settings(host_name);
            let settings: Vec<(&str, &str)> =
                settings.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            // The plugin's thread is in the host's namespace: no thread of its own needed.
            trellis_net::sysctl::set_here(&settings).map_err(net_err)
        })
        .await?;
    Ok(host_link)
}

/// Wires both ends of the pair [`make_pair`] made, with IPAM's addresses. The caller removes
/// the pair if this fails (and with it the addresses, routes and neighbour entries on it), so
/// a failed ADD leaves nothing behind.
async fn configure(p: &Plan<'_>, sides: &Sides, host_link: &Link) -> Result<Link, Error> {
    let Sides { netns, host, pod } = sides;
    let host_mac = host_link.mac.ok_or_else(|| {
        Error::internal(
            "the host end of the veth has no MAC",
            p.host_name.to_string(),
        )
    })?;
    // For IPv6 the host end does no duplicate address detection (its link-local address must
    // be usable at once to resolve the pod) and takes no router advertisements from a pod;
    // set before the link comes up.
    let h = p.host_name;
    let v6 = p.families.contains(&Family::V6);
    if v6 {
        let settings = [
            (format!("net/ipv6/conf/{h}/accept_dad"), "0"),
            (format!("net/ipv6/conf/{h}/accept_ra"), "0"),
            (format!("net/ipv6/conf/{h}/forwarding"), "1"),
        ];
        let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        trellis_net::sysctl::set_here(&settings).map_err(net_err)?;
    }
    host.set_up(host_link.index).await.map_err(net_err)?;
    if v6 {
        // The IPv6 gateway is the host end's: it answers the pod's ping6 and NDP (no proxy
        // NDP needed). Added without DAD: every host end holds the same fe80::1, each on a
        // link of its own with one pod on the other side, which never claims it.
        let gw = IpNet::V6(Ipv6Net::new_assert(GATEWAY_V6, 64));
        host.add_address_nodad(host_link.index, gw)
            .await
            .map_err(net_err)?;
    }

    // The pod end: its addresses, then the gateway's link route, its neighbour entry and the
    // default route through it (a route needs its device up). A veth's host end names its
    // peer's index in the peer's namespace.
    let pod_index = match host_link.peer_index {
        Some(i) => i,
        None => pod.require_link(p.ifname).await.map_err(net_err)?.index,
    };
    if v6 {
        // No DAD on the pod end either, for the kernel's own link-local address (ours are
        // added with IFA_F_NODAD below, whatever the namespace's `all.accept_dad`).
        trellis_net::sysctl::set(
            netns,
            &[(&format!("net/ipv6/conf/{}/accept_dad", p.ifname), "0")],
        )
        .map_err(net_err)?;
    }
    pod.set_up(pod_index).await.map_err(net_err)?;
    for a in p.addresses {
        // IPv6 without DAD (IFA_F_NODAD, as other runtimes add theirs): IPAM hands each address
        // to one attachment only, so it is unique by construction, and DAD would keep it
        // "tentative" — neither a source nor a destination — for a second or two after ADD.
        pod.add_address_nodad(pod_index, *a)
            .await
            .map_err(net_err)?;
    }
    for &family in p.families {
        let gw = gateway(family);
        if family == Family::V4 {
            pod.replace_route(&Route::dev(host_prefix(gw), pod_index))
                .await
                .map_err(net_err)?;
        }
        // Proxy ARP answers for the gateway only when the node has a route to it through
        // another interface; a permanent entry needs nothing of the node.
        pod.ensure_neighbour(pod_index, gw, host_mac)
            .await
            .map_err(net_err)?;
        pod.replace_route(&Route::via(default_route(family), gw).oif(pod_index))
            .await
            .map_err(net_err)?;
        for dst in of_family(p.extra_routes, family) {
            pod.replace_route(&Route::via(*dst, gw).oif(pod_index))
                .await
                .map_err(net_err)?;
        }
    }

    // The host route to each address. `add`, not `replace`: a route to the address through
    // another live interface means the address is in use twice, and taking it over would cut
    // the other pod off.
    for a in p.addresses {
        let mut route = Route::dev(*a, host_link.index).protocol(proto::POD);
        if a.addr().is_ipv6() {
            // IPv6 routes have no scope: the kernel reports them all as universe.
            route = route.scope(Scope::Universe);
        }
        if let Err(e) = host.add_route(&route).await {
            if e.is_exists() {
                return Err(Error::internal(
                    format!("the host already routes {a} to another interface"),
                    "the address is in use by another pod; refusing to take its route over",
                ));
            }
            return Err(net_err(e));
        }
    }
    let pod_link = pod.require_link(p.ifname).await.map_err(net_err)?;
    if pod_link.index != pod_index {
        return Err(Error::internal(
            format!("{} in the container is not the veth just made", p.ifname),
            format!(
                "index {} where the pair's peer is {pod_index}",
                pod_link.index
            ),
        ));
    }
    let ends = Ends {
        host,
        host_index: host_link.index,
        pod,
        pod_index,
        addresses: p.addresses,
    };
    await_usable(&ends, USABLE_WITHIN).await?;
    Ok(pod_link)
}

/// How long ADD waits for the kernel to finish making a pod's interfaces usable
/// ([`await_usable`]) before it undoes the ADD and answers "try again later" (11). Here it takes
/// well under a millisecond; the bound is for a kernel whose work queues are starved.
pub const USABLE_WITHIN: Duration = Duration::from_secs(2);

/// Both ends of a pod's routed veth, as [`await_usable`] looks at them.
pub struct Ends<'a> {
    pub host: &'a Handle,
    pub host_index: u32,
    pub pod: &'a Handle,
    pub pod_index: u32,
    /// The pod's addresses (only the IPv6 ones need waiting for).
    pub addresses: &'a [IpNet],
}

/// What the kernel has not finished yet for the pod's first packet to go out and come back, in
/// words; empty once it has. Some of it the kernel does after the netlink request that asked
/// for it has returned:
///
/// - each end of the veth operationally up: the link watcher (a work queue) turns the carrier
///   on and gives the end its queue; until then packets sent through it are dropped;
/// - each IPv6 address usable — the pod's, and the gateway `fe80::1` on the host end: out of
///   duplicate address detection (never in it, with `IFA_F_NODAD`) *and* with its local
///   route in, which the kernel installs from its address work queue even for a NODAD
///   address. "The kernel routes it `local`" says both at once ([`Handle::is_local`]).
pub async fn not_yet_usable(e: &Ends<'_>) -> Result<Vec<String>, Error> {
    let mut missing = Vec::new();
    for (side, handle, index) in [("host", e.host, e.host_index), ("pod", e.pod, e.pod_index)] {
        match handle.link_by_index(index).await.map_err(net_err)? {
            Some(l) if l.oper_state == OperState::Up => {}
            Some(l) => missing.push(format!(
                "the {side} end {} is {:?}, not up",
                l.name, l.oper_state
            )),
            None => missing.push(format!("the {side} end (index {index}) is gone")),
        }
    }
    let v6: Vec<IpAddr> = e
        .addresses
        .iter()
        .map(IpNet::addr)
        .filter(IpAddr::is_ipv6)
        .collect();
    if v6.is_empty() {
        return Ok(missing);
    }
    if !e
        .host
        .is_local(IpAddr::V6(GATEWAY_V6), Some(e.host_index))
        .await
        .map_err(net_err)?
    {
        missing.push(format!(
            "the gateway {GATEWAY_V6} on the host end is not usable yet"
        ));
    }
    for a in v6 {
        if !e.pod.is_local(a, None).await.map_err(net_err)? {
            missing.push(format!("the pod's {a} is not usable yet"));
        }
    }
    Ok(missing)
}

/// Waits, at most `within`, until [`not_yet_usable`] finds nothing missing, so that the pod's
/// first packet — IPv6 included — works the moment ADD returns. Past `within`: "try again
/// later" (11), saying what the kernel had not finished; the caller undoes the ADD.
pub async fn await_usable(e: &Ends<'_>, within: Duration) -> Result<(), Error> {
    let start = Instant::now();
    let deadline = start + within;
    // Every millisecond at first (the kernel usually finishes within a few, and a doubling
    // pause would overshoot by as much again), then backing off to 50 ms.
    let mut pause = Duration::from_millis(1);
    loop {
        let missing = not_yet_usable(e).await?;
        if missing.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::try_again_later(
                format!(
                    "the kernel did not make the pod's interface usable within {} ms",
                    within.as_millis()
                ),
                missing.join("; "),
            ));
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        if now - start > Duration::from_millis(100) {
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}

/// What CHECK compares with the kernel.
struct Expect<'a> {
    ifname: &'a str,
    host_name: &'a str,
    owner: &'a str,
    mac: &'a str,
    addresses: &'a [IpNet],
}

async fn verify(netns_path: &Path, e: &Expect<'_>) -> Result<(), Error> {
    let netns = open_netns(netns_path)?;
    let pod = netns.connect().map_err(net_err)?;
    let host = Handle::current().map_err(net_err)?;
    let missing = |what: String| Error::internal(what, netns_path.display().to_string());

    // The interface, its MAC and its addresses.
    let link = attach::pod_interface(&pod, netns_path, e.ifname, e.mac, e.addresses).await?;
    if !link.admin_up {
        return Err(missing(format!("{} is down", e.ifname)));
    }

    // Both pod routes of each family.
    for family in families(e.addresses) {
        let gw = gateway(family);
        let routes = pod
            .routes(family, Some(Route::TABLE_MAIN))
            .await
            .map_err(net_err)?;
        if family == Family::V4
            && !routes.iter().any(|r| {
                r.dst == host_prefix(gw)
                    && r.gateway.is_none()
                    && r.oif == Some(link.index)
                    && r.scope == Scope::Link
            })
        {
            return Err(missing(format!(
                "the container has no route {gw} dev {} scope link",
                e.ifname
            )));
        }
        if !routes
            .iter()
            .any(|r| r.dst.prefix_len() == 0 && r.gateway == Some(gw) && r.oif == Some(link.index))
        {
            return Err(missing(format!(
                "the container has no default route via {gw} dev {}",
                e.ifname
            )));
        }
    }

    // The host end: ours, the pod end's peer, up, and routing each address.
    let veth = host
        .link(e.host_name)
        .await
        .map_err(net_err)?
        .ok_or_else(|| {
            Error::internal(
                "the host end of the veth is missing",
                e.host_name.to_string(),
            )
        })?;
    veth::require_owner(&veth, e.owner)?;
    if veth.kind.as_deref() != Some("veth")
        || veth.peer_index != Some(link.index)
        || link.peer_index != Some(veth.index)
    {
        return Err(Error::internal(
            "the host end is not the peer of the container's interface",
            format!(
                "{} and {} in {}",
                e.host_name,
                e.ifname,
                netns_path.display()
            ),
        ));
    }
    if !veth.admin_up {
        return Err(Error::internal(
            "the host end of the veth is down",
            e.host_name.to_string(),
        ));
    }
    for family in families(e.addresses) {
        let routes = host
            .routes(family, Some(Route::TABLE_MAIN))
            .await
            .map_err(net_err)?;
        for a in of_family(e.addresses, family) {
            if !routes
                .iter()
                .any(|r| r.dst == *a && r.gateway.is_none() && r.oif == Some(veth.index))
            {
                return Err(Error::internal(
                    format!("the host has no route {a} dev {}", e.host_name),
                    "the pod is unreachable",
                ));
            }
        }
    }
    Ok(())
}

impl<S: RoutedState> Plugin for RoutedVeth<S> {
    fn add(&self, req: &Attachment) -> Result<CniResult, Error> {
        let add = Add::<S>::prepare(req, self.default_state_dir, S::mtu)?;
        let (conf, mtu, netns_path) = (&add.conf, add.mtu, &add.netns_path);
        let ifname = req.ifname.as_str();
        runtime()?.block_on(async {
            let sides = Sides::open(netns_path, ifname).await?;
            let (host_name, owner) = self.host_end(req);
            // IPAM and the veth pair need nothing of each other: the pair is made while ipamd
            // stores the allocation. IPAM's error is the one reported when both fail (each
            // cleans up after itself), and each undoes the other when only one does.
            let (lease, pair) = tokio::join!(
                ipam::add(req),
                make_pair(&sides, &host_name, &owner, ifname, mtu)
            );
            let (lease, host_link) = match (lease, pair) {
                (Ok(lease), Ok(host_link)) => (lease, host_link),
                (Ok(lease), Err(e)) => {
                    lease.release().await;
                    return Err(e);
                }
                (Err(e), Ok(_)) => {
                    sides.remove_veth(&host_name).await;
                    return Err(e);
                }
                (Err(e), Err(_)) => return Err(e),
            };
            let addresses = pod_addresses(lease.result());
            let families = families(&addresses);
            let extra = extra_routes(lease.result(), &families);
            let plan = Plan {
                ifname,
                host_name: &host_name,
                addresses: &addresses,
                families: &families,
                extra_routes: &extra,
            };
            let pod_link = match configure(&plan, &sides, &host_link).await {
                Ok(link) => link,
                Err(e) => {
                    sides.remove_veth(&host_name).await;
                    lease.release().await;
                    return Err(e);
                }
            };
            // Everything is in place: with policy on, the pod may not start before its rules.
            let ips: Vec<IpAddr> = addresses.iter().map(IpNet::addr).collect();
            crate::policy::admit(
                self.plugin,
                req,
                conf.policy.as_ref(),
                &ips,
                &host_link.name,
                lease,
            )
            .await?;
            Ok(result(
                req, netns_path, mtu, &host_link, &pod_link, &addresses, &families, &extra,
            ))
        })
    }

    fn del(&self, req: &Attachment) -> Result<(), Error> {
        veth::del_attachment(self.plugin, req)
    }

    fn check(&self, req: &Attachment) -> Result<(), Error> {
        PluginConf::read(&req.conf, self.default_state_dir)?;
        let checked = Checked::of(req)?;
        let ifname = checked.ifname;
        let addresses: Vec<IpNet> = checked
            .ips()
            .map(|ip| host_prefix(ip.address.addr()))
            .collect();
        if addresses.is_empty() {
            return Err(Error::invalid_config(
                "prevResult gives the interface no address",
                ifname.to_string(),
            ));
        }
        let (host_name, owner) = self.host_end(req);
        let expect = Expect {
            ifname,
            host_name: &host_name,
            owner: &owner,
            mac: checked.mac(),
            addresses: &addresses,
        };
        runtime()?.block_on(async {
            verify(&checked.netns_path, &expect).await?;
            ipam::check(req).await
        })
    }

    fn gc(&self, req: &GcRequest) -> Result<(), Error> {
        attach::gc(self.plugin, req)
    }

    fn status(&self, conf: &NetConf) -> Result<(), Error> {
        attach::status::<S>(conf, self.default_state_dir)
    }
}

/// The ADD result: host end, pod end (in the sandbox), the /32s with their family's gateway.
#[allow(clippy::too_many_arguments)]
fn result(
    req: &Attachment,
    netns_path: &Path,
    mtu: u32,
    host_link: &Link,
    pod_link: &Link,
    addresses: &[IpNet],
    families: &[Family],
    extra: &[IpNet],
) -> CniResult {
    let mut routes = Vec::new();
    for &family in families {
        let gw = gateway(family);
        routes.push(CniRoute::new(default_route(family), Some(gw)));
        routes.extend(of_family(extra, family).map(|d| CniRoute::new(*d, Some(gw))));
    }
    CniResult {
        interfaces: vec![
            attach::interface(host_link, Some(mtu), None),
            attach::interface(pod_link, Some(mtu), Some(netns_path)),
        ],
        ips: addresses
            .iter()
            .map(|a| IpConfig {
                interface: Some(1),
                address: *a,
                gateway: Some(gateway(Family::of(&a.addr()))),
            })
            .collect(),
        routes,
        dns: req.conf.config.dns.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn result(v: serde_json::Value) -> CniResult {
        CniResult::from_value(v, None).unwrap().1
    }

    #[test]
    fn ipam_prefixes_are_narrowed_to_host_prefixes() {
        let r = result(json!({"cniVersion": "1.0.0", "ips": [
            {"address": "10.244.3.17/26", "gateway": "10.244.3.1"},
            {"address": "10.244.3.17/32"},
            {"address": "fd00:10:244::11/122"},
        ]}));
        let got: Vec<String> = pod_addresses(&r).iter().map(|a| a.to_string()).collect();
        assert_eq!(got, ["10.244.3.17/32", "fd00:10:244::11/128"]);
        assert_eq!(families(&pod_addresses(&r)), [Family::V4, Family::V6]);
    }

    #[test]
    fn ipam_routes_go_through_the_gateway_of_their_family() {
        let r = result(json!({"cniVersion": "1.0.0",
            "ips": [{"address": "10.244.3.17/26"}],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.96.0.0/12", "gw": "10.244.3.1"},
                       {"dst": "10.96.0.0/12"}, {"dst": "fd00::/8"}]}));
        let got: Vec<String> = extra_routes(&r, &[Family::V4])
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(got, ["10.96.0.0/12"]);
        assert_eq!(gateway(Family::V4).to_string(), "169.254.1.1");
        assert_eq!(gateway(Family::V6).to_string(), "fe80::1");
        assert_eq!(
            host_prefix(gateway(Family::V4)).to_string(),
            "169.254.1.1/32"
        );
    }
}
