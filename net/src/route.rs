//! Routes: onlink, scope, protocol, table, blackhole, replace.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteNextHop, RouteProtocol,
    RouteScope, RouteType, RouteVia,
};
use rtnetlink::RouteMessageBuilder;

use crate::error::{Error, Result, errno_of};
use crate::handle::Handle;

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }
}

/// Route scope, as `ip route` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Universe,
    Link,
    Host,
    Other(u8),
}

impl Scope {
    fn to_netlink(self) -> RouteScope {
        match self {
            Scope::Universe => RouteScope::Universe,
            Scope::Link => RouteScope::Link,
            Scope::Host => RouteScope::Host,
            Scope::Other(n) => RouteScope::from(n),
        }
    }

    fn from_netlink(s: RouteScope) -> Scope {
        match s {
            RouteScope::Universe => Scope::Universe,
            RouteScope::Link => Scope::Link,
            RouteScope::Host => Scope::Host,
            other => Scope::Other(u8::from(other)),
        }
    }
}

/// What the route does with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteKind {
    Unicast,
    /// Drop silently: covers a block we own so its unused addresses never leak elsewhere.
    Blackhole,
    Unreachable,
    Local,
    Other,
}

/// A route in one table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// The destination network (host bits cleared).
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    /// The gateway is reachable on `oif` without a route to it (VXLAN's `via <vtep> onlink`).
    pub onlink: bool,
    pub scope: Scope,
    /// Who installed it (`ip route … proto N`): we mark our routes with our own number.
    pub protocol: u8,
    pub table: u32,
    pub kind: RouteKind,
    pub priority: Option<u32>,
    pub src: Option<IpAddr>,
    /// A multipath route (ECMP): its next hops, each a gateway of equal weight, in place of
    /// `gateway` (`ip route … nexthop via A nexthop via B`).
    pub multipath: Vec<IpAddr>,
}

impl Route {
    pub const TABLE_MAIN: u32 = 254;
    pub const PROTO_BOOT: u8 = 3;
    pub const PROTO_STATIC: u8 = 4;

    fn base(dst: IpNet) -> Route {
        Route {
            dst: dst.trunc(),
            gateway: None,
            oif: None,
            onlink: false,
            scope: Scope::Universe,
            protocol: Route::PROTO_BOOT,
            table: Route::TABLE_MAIN,
            kind: RouteKind::Unicast,
            priority: None,
            src: None,
            multipath: Vec::new(),
        }
    }

    /// A unicast route to `dst` with nothing else set: what a delete matches on.
    pub fn to(dst: IpNet) -> Route {
        Route::base(dst)
    }

    /// `dst via gw`.
    pub fn via(dst: IpNet, gateway: IpAddr) -> Route {
        Route {
            gateway: Some(gateway),
            ..Route::base(dst)
        }
    }

    /// `dst dev <oif> scope link`.
    pub fn dev(dst: IpNet, oif: u32) -> Route {
        Route {
            oif: Some(oif),
            scope: Scope::Link,
            ..Route::base(dst)
        }
    }

    /// `blackhole dst`.
    pub fn blackhole(dst: IpNet) -> Route {
        Route {
            kind: RouteKind::Blackhole,
            ..Route::base(dst)
        }
    }

    /// `dst nexthop via A nexthop via B …`: one next hop makes a plain `via`, several a
    /// multipath route (sorted, so equal routes compare equal).
    pub fn via_all(dst: IpNet, gateways: &[IpAddr]) -> Route {
        let mut hops = gateways.to_vec();
        hops.sort();
        hops.dedup();
        match hops.as_slice() {
            [one] => Route::via(dst, *one),
            _ => Route {
                multipath: hops,
                ..Route::base(dst)
            },
        }
    }

    /// Every gateway: the one of a plain route, or each next hop of a multipath route.
    pub fn gateways(&self) -> Vec<IpAddr> {
        match self.gateway {
            Some(gw) => vec![gw],
            None => self.multipath.clone(),
        }
    }

    pub fn oif(mut self, oif: u32) -> Route {
        self.oif = Some(oif);
        self
    }

    pub fn onlink(mut self) -> Route {
        self.onlink = true;
        self
    }

    pub fn protocol(mut self, p: u8) -> Route {
        self.protocol = p;
        self
    }

    pub fn table(mut self, t: u32) -> Route {
        self.table = t;
        self
    }

    pub fn priority(mut self, p: u32) -> Route {
        self.priority = Some(p);
        self
    }

    pub fn scope(mut self, s: Scope) -> Route {
        self.scope = s;
        self
    }

    pub fn src(mut self, ip: IpAddr) -> Route {
        self.src = Some(ip);
        self
    }

    pub fn family(&self) -> Family {
        Family::of(&self.dst.addr())
    }

    pub(crate) fn describe(&self) -> String {
        let mut s = match self.kind {
            RouteKind::Blackhole => format!("blackhole {}", self.dst),
            _ => self.dst.to_string(),
        };
        if let Some(gw) = self.gateway {
            s.push_str(&format!(" via {gw}"));
        }
        for gw in &self.multipath {
            s.push_str(&format!(" nexthop via {gw}"));
        }
        if let Some(oif) = self.oif {
            s.push_str(&format!(" dev {oif}"));
        }
        if self.onlink {
            s.push_str(" onlink");
        }
        if self.table != Route::TABLE_MAIN {
            s.push_str(&format!(" table {}", self.table));
        }
        s
    }

    pub(crate) fn to_message(&self, for_delete: bool) -> Result<RouteMessage> {
        let bad = |e: &dyn std::fmt::Display| {
            Error::invalid("build route", self.describe(), e.to_string())
        };
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(self.dst.addr(), self.dst.prefix_len())
            .map_err(|e| bad(&e))?;
        if let Some(gw) = self.gateway {
            b = b.gateway(gw).map_err(|e| bad(&e))?;
        }
        if let Some(src) = self.src {
            b = b.pref_source(src).map_err(|e| bad(&e))?;
        }
        if let Some(oif) = self.oif {
            b = b.output_interface(oif);
        }
        if self.onlink {
            b = b.onlink();
        }
        if let Some(p) = self.priority {
            b = b.priority(p);
        }
        let kind = match self.kind {
            RouteKind::Unicast => RouteType::Unicast,
            RouteKind::Blackhole => RouteType::BlackHole,
            RouteKind::Unreachable => RouteType::Unreachable,
            RouteKind::Local => RouteType::Local,
            RouteKind::Other => RouteType::Unspec,
        };
        // Deleting matches any scope, as `ip route del` does.
        let scope = if for_delete {
            RouteScope::NoWhere
        } else {
            self.scope.to_netlink()
        };
        let mut msg = b
            .table_id(self.table)
            .protocol(RouteProtocol::from(self.protocol))
            .scope(scope)
            .kind(kind)
            .build();
        if !self.multipath.is_empty() && !for_delete {
            let hops = self
                .multipath
                .iter()
                .map(|gw| {
                    let mut hop = RouteNextHop::default();
                    hop.attributes.push(gateway_attribute(self.dst.addr(), *gw));
                    hop
                })
                .collect();
            msg.attributes.push(RouteAttribute::MultiPath(hops));
        }
        Ok(msg)
    }

    fn from_message(m: &RouteMessage) -> Option<Route> {
        let h = &m.header;
        let mut dst = None;
        let mut r = Route::base(IpNet::new(Ipv4Addr::UNSPECIFIED.into(), 0).ok()?);
        r.table = u32::from(h.table);
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(d) => dst = address(d),
                RouteAttribute::Gateway(g) => r.gateway = address(g),
                // A gateway of the other family (`10.0.0.0/24 via inet6 fe80::1`, RFC 8950).
                RouteAttribute::Via(v) => r.gateway = via_address(v),
                RouteAttribute::Oif(i) => r.oif = Some(*i),
                RouteAttribute::Table(t) => r.table = *t,
                RouteAttribute::Priority(p) => r.priority = Some(*p),
                RouteAttribute::PrefSource(s) => r.src = address(s),
                RouteAttribute::MultiPath(hops) => {
                    r.multipath = hops
                        .iter()
                        .flat_map(|h| &h.attributes)
                        .filter_map(|a| match a {
                            RouteAttribute::Gateway(g) => address(g),
                            RouteAttribute::Via(v) => via_address(v),
                            _ => None,
                        })
                        .collect();
                    r.multipath.sort();
                }
                _ => {}
            }
        }
        let dst = match (dst, h.address_family) {
            (Some(d), _) => d,
            (None, netlink_packet_route::AddressFamily::Inet6) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            (None, netlink_packet_route::AddressFamily::Inet) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            _ => return None,
        };
        r.dst = IpNet::new(dst, h.destination_prefix_length).ok()?.trunc();
        r.onlink = h.flags.contains(RouteFlags::Onlink);
        r.scope = Scope::from_netlink(h.scope);
        r.protocol = u8::from(h.protocol);
        r.kind = match h.kind {
            RouteType::Unicast => RouteKind::Unicast,
            RouteType::BlackHole => RouteKind::Blackhole,
            RouteType::Unreachable => RouteKind::Unreachable,
            RouteType::Local => RouteKind::Local,
            _ => RouteKind::Other,
        };
        Some(r)
    }
}

/// The next-hop attribute for `gateway` in a route to `dst`: RTA_GATEWAY in the route's own
/// family, RTA_VIA for the other one (an IPv4 route via an IPv6 next hop, `via inet6`).
fn gateway_attribute(dst: IpAddr, gateway: IpAddr) -> RouteAttribute {
    match (dst, gateway) {
        (IpAddr::V4(_), IpAddr::V4(v4)) => RouteAttribute::Gateway(RouteAddress::Inet(v4)),
        (IpAddr::V6(_), IpAddr::V6(v6)) => RouteAttribute::Gateway(RouteAddress::Inet6(v6)),
        (_, IpAddr::V4(v4)) => RouteAttribute::Via(RouteVia::Inet(v4)),
        (_, IpAddr::V6(v6)) => RouteAttribute::Via(RouteVia::Inet6(v6)),
    }
}

fn via_address(v: &RouteVia) -> Option<IpAddr> {
    match v {
        RouteVia::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteVia::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn address(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

impl Handle {
    /// Routes of one family, in one table or all of them.
    pub async fn routes(&self, family: Family, table: Option<u32>) -> Result<Vec<Route>> {
        self.routes_where(family, table, |_| true).await
    }

    /// The routes of `family` (in `table`, when given) that `keep` accepts, converted as the
    /// kernel's dump comes in: a table of 100,000 routes costs only the routes kept, never the
    /// whole dump's messages at once.
    pub async fn routes_where(
        &self,
        family: Family,
        table: Option<u32>,
        mut keep: impl FnMut(&Route) -> bool,
    ) -> Result<Vec<Route>> {
        let filter = match family {
            Family::V4 => RouteMessageBuilder::<Ipv4Addr>::new().build(),
            Family::V6 => RouteMessageBuilder::<Ipv6Addr>::new().build(),
        };
        let mut dump = self.inner.route().get(filter).execute();
        let mut out = Vec::new();
        while let Some(msg) = dump
            .try_next()
            .await
            .map_err(|e| Error::netlink("list routes", &self.ns, e))?
        {
            if let Some(r) = Route::from_message(&msg)
                && table.is_none_or(|t| r.table == t)
                && keep(&r)
            {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Whether the kernel delivers packets for `ip` locally now (`ip route get <ip> [oif …]`
    /// answers a `local` route): the address is on an interface of this namespace, out of
    /// duplicate address detection, and its local route is in. For an IPv6 link-local address
    /// pass its link as `oif`. An address the kernel routes elsewhere, or not at all, is false.
    pub async fn is_local(&self, ip: IpAddr, oif: Option<u32>) -> Result<bool> {
        let b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(ip, if ip.is_ipv4() { 32 } else { 128 })
            .map_err(|e| Error::invalid("look up route", ip.to_string(), e.to_string()))?;
        let msg = match oif {
            Some(i) => b.output_interface(i).build(),
            None => b.build(),
        };
        // With a destination the request is a lookup, not a dump: one answer.
        let mut answers = self.inner.route().get(msg).execute();
        match answers.try_next().await {
            Ok(Some(m)) => Ok(m.header.kind == RouteType::Local),
            Ok(None) => Ok(false),
            Err(e)
                if matches!(
                    errno_of(&e),
                    Some(
                        nix::libc::ENETUNREACH
                            | nix::libc::EHOSTUNREACH
                            | nix::libc::EADDRNOTAVAIL
                            | nix::libc::ENODEV
                    )
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(Error::netlink(
                "look up route",
                format!("{ip} in {}", self.ns),
                e,
            )),
        }
    }

    /// `ip route replace`: installs the route, replacing one to the same destination.
    pub async fn replace_route(&self, route: &Route) -> Result<()> {
        let msg = route.to_message(false)?;
        self.inner
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(|e| {
                Error::netlink(
                    "replace route",
                    format!("{} in {}", route.describe(), self.ns),
                    e,
                )
            })
    }

    /// `ip route add`: fails if a route to the destination exists.
    pub async fn add_route(&self, route: &Route) -> Result<()> {
        let msg = route.to_message(false)?;
        self.inner.route().add(msg).execute().await.map_err(|e| {
            Error::netlink(
                "add route",
                format!("{} in {}", route.describe(), self.ns),
                e,
            )
        })
    }

    /// Deletes the route; false when it was not there.
    pub async fn delete_route(&self, route: &Route) -> Result<bool> {
        let msg = route.to_message(true)?;
        match self.inner.route().del(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e)
                if matches!(
                    errno_of(&e),
                    Some(nix::libc::ESRCH | nix::libc::ENOENT | nix::libc::ENODEV)
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(Error::netlink(
                "delete route",
                format!("{} in {}", route.describe(), self.ns),
                e,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv4_route_via_an_ipv6_gateway_uses_rta_via_and_reads_back() {
        let dst: IpNet = "10.245.0.0/26".parse().unwrap();
        let gw: IpAddr = "fe80::1".parse().unwrap();
        let route = Route::via(dst, gw).oif(7).protocol(202).priority(20);
        let msg = route.to_message(false).unwrap();
        assert!(
            msg.attributes
                .iter()
                .any(|a| *a == RouteAttribute::Via(RouteVia::Inet6("fe80::1".parse().unwrap()))),
            "{msg:?}"
        );
        assert!(
            !msg.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Gateway(_))),
            "no RTA_GATEWAY of the wrong family: {msg:?}"
        );
        let back = Route::from_message(&msg).unwrap();
        assert_eq!(back.dst, dst);
        assert_eq!(back.gateway, Some(gw));
        assert_eq!(back.gateways(), vec![gw]);
        assert_eq!(back.oif, Some(7));
        assert_eq!(back.family(), Family::V4);
    }

    #[test]
    fn multipath_next_hops_of_the_other_family_use_rta_via_too() {
        let dst: IpNet = "10.245.0.0/26".parse().unwrap();
        let hops: Vec<IpAddr> = vec!["fe80::1".parse().unwrap(), "fe80::2".parse().unwrap()];
        let msg = Route::via_all(dst, &hops).to_message(false).unwrap();
        let back = Route::from_message(&msg).unwrap();
        assert_eq!(back.gateways(), hops);
        // The same family stays RTA_GATEWAY.
        let v4: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()];
        let msg = Route::via_all(dst, &v4).to_message(false).unwrap();
        let Some(RouteAttribute::MultiPath(nh)) = msg
            .attributes
            .iter()
            .find(|a| matches!(a, RouteAttribute::MultiPath(_)))
        else {
            panic!("{msg:?}")
        };
        assert!(nh.iter().all(|h| matches!(
            h.attributes.as_slice(),
            [RouteAttribute::Gateway(RouteAddress::Inet(_))]
        )));
        assert_eq!(Route::from_message(&msg).unwrap().gateways(), v4);
    }
}
