//! Property: every result survives printing in any version able to express it and reading back;
//! and printing is stable — what one version printed, read and printed again, is the same text.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;
use trellis_cni::Version;
use trellis_cni::result::{CniResult, Dns, Interface, IpConfig, Route};

fn v4() -> impl Strategy<Value = IpAddr> {
    any::<u32>().prop_map(|n| IpAddr::V4(Ipv4Addr::from(n)))
}

fn v6() -> impl Strategy<Value = IpAddr> {
    any::<u128>().prop_map(|n| IpAddr::V6(Ipv6Addr::from(n)))
}

fn net4() -> impl Strategy<Value = IpNet> {
    (any::<u32>(), 0u8..=32)
        .prop_map(|(a, l)| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(a), l).unwrap()))
}

fn net6() -> impl Strategy<Value = IpNet> {
    (any::<u128>(), 0u8..=128)
        .prop_map(|(a, l)| IpNet::V6(Ipv6Net::new(Ipv6Addr::from(a), l).unwrap()))
}

fn net() -> impl Strategy<Value = IpNet> {
    prop_oneof![net4(), net6()]
}

fn gateway_for(n: IpNet) -> BoxedStrategy<Option<IpAddr>> {
    if n.addr().is_ipv4() {
        proptest::option::of(v4()).boxed()
    } else {
        proptest::option::of(v6()).boxed()
    }
}

fn text() -> impl Strategy<Value = String> {
    "[a-z0-9/._-]{0,12}"
}

fn interface() -> impl Strategy<Value = Interface> {
    (
        "[a-z][a-z0-9]{0,14}",
        proptest::option::of(any::<[u8; 6]>()),
        proptest::option::of(68u32..65536),
        text(),
        text(),
        text(),
    )
        .prop_map(|(name, mac, mtu, sandbox, socket_path, pci_id)| Interface {
            name,
            mac: mac
                .map(|m| {
                    m.iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(":")
                })
                .unwrap_or_default(),
            mtu,
            sandbox,
            socket_path,
            pci_id,
        })
}

fn route(extended: bool) -> impl Strategy<Value = Route> {
    net().prop_flat_map(move |dst| {
        let ext = if extended {
            (
                proptest::option::of(68u32..9000),
                proptest::option::of(0u32..9000),
                proptest::option::of(any::<u32>()),
                proptest::option::of(any::<u32>()),
                proptest::option::of(prop_oneof![Just(0u8), Just(253u8), Just(254u8)]),
            )
                .boxed()
        } else {
            Just((None, None, None, None, None)).boxed()
        };
        (gateway_for(dst), ext).prop_map(move |(gw, (mtu, advmss, priority, table, scope))| Route {
            dst,
            gw,
            mtu,
            advmss,
            priority,
            table,
            scope,
        })
    })
}

fn dns() -> impl Strategy<Value = Dns> {
    (
        proptest::collection::vec(prop_oneof![v4(), v6()].prop_map(|a| a.to_string()), 0..3),
        "[a-z.]{0,10}",
        proptest::collection::vec("[a-z.]{1,10}", 0..3),
        proptest::collection::vec("[a-z:0-9]{1,10}", 0..3),
    )
        .prop_map(|(nameservers, domain, search, options)| Dns {
            nameservers,
            domain,
            search,
            options,
        })
}

/// Any 1.1.0 result.
fn any_result() -> impl Strategy<Value = CniResult> {
    proptest::collection::vec(interface(), 0..4).prop_flat_map(|interfaces| {
        let n = interfaces.len();
        let ip = (net(), proptest::option::of(0..n.max(1))).prop_flat_map(move |(address, idx)| {
            gateway_for(address).prop_map(move |gateway| IpConfig {
                interface: if n == 0 { None } else { idx },
                address,
                gateway,
            })
        });
        (
            Just(interfaces),
            proptest::collection::vec(ip, 0..4),
            proptest::collection::vec(route(true), 0..4),
            dns(),
        )
            .prop_map(|(interfaces, ips, routes, dns)| CniResult {
                interfaces,
                ips,
                routes,
                dns,
            })
    })
}

/// A result of the shape 0.1.0/0.2.0 can hold: at most one address per family (IPv4 first), no
/// interfaces, routes of a family that has an address (IPv4 first).
fn legacy_result() -> impl Strategy<Value = CniResult> {
    (proptest::option::of(net4()), proptest::option::of(net6()))
        .prop_filter("needs an address", |(a, b)| a.is_some() || b.is_some())
        .prop_flat_map(|(a4, a6)| {
            let ip = |n: Option<IpNet>| match n {
                None => Just(None).boxed(),
                Some(n) => gateway_for(n)
                    .prop_map(move |gateway| {
                        Some(IpConfig {
                            interface: None,
                            address: n,
                            gateway,
                        })
                    })
                    .boxed(),
            };
            let routes = |n: Option<IpNet>, s: BoxedStrategy<IpNet>| match n {
                None => Just(Vec::new()).boxed(),
                Some(_) => proptest::collection::vec(
                    s.prop_flat_map(|dst| gateway_for(dst).prop_map(move |gw| Route::new(dst, gw))),
                    0..3,
                )
                .boxed(),
            };
            (
                ip(a4),
                ip(a6),
                routes(a4, net4().boxed()),
                routes(a6, net6().boxed()),
                dns(),
            )
                .prop_map(|(i4, i6, r4, r6, dns)| CniResult {
                    interfaces: Vec::new(),
                    ips: i4.into_iter().chain(i6).collect(),
                    routes: r4.into_iter().chain(r6).collect(),
                    dns,
                })
        })
}

/// A 1.1.0 result stripped of what 1.0.0 cannot say.
fn v10_result() -> impl Strategy<Value = CniResult> {
    any_result().prop_map(|mut r| {
        for i in &mut r.interfaces {
            i.mtu = None;
            i.socket_path.clear();
            i.pci_id.clear();
        }
        r.routes = r
            .routes
            .iter()
            .map(|rt| Route::new(rt.dst, rt.gw))
            .collect();
        r
    })
}

fn round_trip(r: &CniResult, v: Version) -> Result<(), TestCaseError> {
    let printed = r
        .to_value(v)
        .map_err(|e| TestCaseError::fail(format!("{v}: {e}")))?;
    let (read_v, back) = CniResult::from_value(printed.clone(), None)
        .map_err(|e| TestCaseError::fail(format!("{v}: {e} in {printed}")))?;
    prop_assert_eq!(read_v, v);
    prop_assert_eq!(&back, r, "version {} printed {}", v, printed);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_result_round_trips_through_1_1_0(r in any_result()) {
        prop_assert!(r.expressible_in(Version::V1_1_0));
        round_trip(&r, Version::V1_1_0)?;
    }

    #[test]
    fn results_without_1_1_fields_round_trip_through_0_3_0_to_1_0_0(r in v10_result()) {
        for v in [Version::V0_3_0, Version::V0_3_1, Version::V0_4_0, Version::V1_0_0, Version::V1_1_0] {
            prop_assert!(r.expressible_in(v));
            round_trip(&r, v)?;
        }
    }

    #[test]
    fn legacy_shaped_results_round_trip_through_every_version(r in legacy_result()) {
        for v in Version::ALL {
            prop_assert!(r.expressible_in(v), "{} should be expressible in {}", serde_json::to_string(&r.to_value(Version::V1_1_0).unwrap()).unwrap(), v);
            round_trip(&r, v)?;
        }
    }

    #[test]
    fn every_version_able_to_express_a_result_round_trips_it(r in any_result()) {
        for v in Version::ALL {
            if r.expressible_in(v) {
                round_trip(&r, v)?;
            }
        }
    }

    #[test]
    fn printing_is_stable_in_every_version(r in any_result()) {
        for v in Version::ALL {
            if let Ok(first) = r.to_value(v) {
                let (_, back) = CniResult::from_value(first.clone(), None).unwrap();
                prop_assert_eq!(back.to_value(v).unwrap(), first);
            }
        }
    }
}
