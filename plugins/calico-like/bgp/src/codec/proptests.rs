//! Property tests: every valid message survives encode → decode unchanged, on sessions with and
//! without 4-octet AS numbers, and no input makes decoding panic.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use super::capability::{GrFamily, GracefulRestartCap};
use super::*;

fn family() -> impl Strategy<Value = Family> {
    prop_oneof![
        Just(Family::IPV4_UNICAST),
        Just(Family::IPV6_UNICAST),
        (any::<u16>(), any::<u8>()).prop_map(|(a, s)| Family::new(a, s)),
    ]
}

fn capability() -> impl Strategy<Value = Capability> {
    prop_oneof![
        family().prop_map(Capability::Multiprotocol),
        Just(Capability::RouteRefresh),
        (1u32..).prop_map(Capability::FourOctetAs),
        (
            any::<bool>(),
            any::<bool>(),
            0u16..4096,
            vec((family(), any::<bool>()), 0..3)
        )
            .prop_map(|(r, n, t, fams)| {
                let mut gr = GracefulRestartCap::new(
                    r,
                    t,
                    fams.into_iter()
                        .map(|(family, forwarding_preserved)| GrFamily {
                            family,
                            forwarding_preserved,
                        })
                        .collect(),
                );
                gr.notification = n;
                Capability::GracefulRestart(gr)
            }),
        vec(
            (any::<u16>(), any::<u16>(), any::<u16>()).prop_map(|(a, s, n)| ExtendedNextHop {
                nlri_afi: a,
                nlri_safi: s,
                next_hop_afi: n,
            }),
            1..4
        )
        .prop_map(Capability::ExtendedNextHop),
        // Codes we do not interpret (5, Extended Next Hop, is one we do).
        (
            (3u8..64).prop_filter("not a known code", |c| *c != 5),
            vec(any::<u8>(), 0..8)
        )
            .prop_map(|(code, value)| Capability::Unknown { code, value }),
    ]
}

fn open() -> impl Strategy<Value = Open> {
    (
        1u16..,
        prop_oneof![Just(0u16), 3u16..],
        1u32..,
        vec(capability(), 0..6),
    )
        .prop_map(|(my_as, hold_time, id, capabilities)| Open {
            my_as,
            hold_time,
            bgp_id: Ipv4Addr::from(id),
            capabilities,
        })
}

fn v4net() -> impl Strategy<Value = Ipv4Net> {
    (any::<u32>(), 0u8..=32).prop_map(|(a, l)| {
        Ipv4Net::new(Ipv4Addr::from(a), l)
            .map(|n| n.trunc())
            .unwrap_or_default()
    })
}

fn v6net() -> impl Strategy<Value = Ipv6Net> {
    (any::<u128>(), 0u8..=128).prop_map(|(a, l)| {
        Ipv6Net::new(Ipv6Addr::from(a), l)
            .map(|n| n.trunc())
            .unwrap_or_default()
    })
}

fn unicast_v4() -> impl Strategy<Value = Ipv4Addr> {
    (1u32..0xe000_0000).prop_map(Ipv4Addr::from)
}

fn as_path(big: bool) -> impl Strategy<Value = AsPath> {
    let asn = if big {
        (1u32..).boxed()
    } else {
        (1u32..65536).boxed()
    };
    vec(
        (
            prop_oneof![Just(SegmentKind::Set), Just(SegmentKind::Sequence)],
            vec(asn, 1..8),
        )
            .prop_map(|(kind, asns)| Segment { kind, asns }),
        0..4,
    )
    .prop_map(|segments| AsPath { segments })
}

fn unknown_attrs() -> impl Strategy<Value = Vec<RawAttribute>> {
    proptest::sample::subsequence(vec![16u8, 20, 22, 32, 40, 128, 200, 255], 0..3).prop_flat_map(
        |types| {
            let n = types.len();
            vec(vec(any::<u8>(), 0..40), n).prop_map(move |values| {
                types
                    .iter()
                    .zip(values)
                    .map(|(t, value)| RawAttribute {
                        flags: 0xe0,
                        type_code: *t,
                        value,
                    })
                    .collect()
            })
        },
    )
}

/// Attributes that a valid UPDATE may carry. On a 2-octet session an AGGREGATOR with a plain
/// 2-octet AS would (correctly) make AS4_PATH stale, so big paths only go with big aggregators.
fn attributes(
    four_octet_as: bool,
    announcing: bool,
    next_hop: bool,
) -> impl Strategy<Value = PathAttributes> {
    (
        (
            option::of(prop_oneof![
                Just(Origin::Igp),
                Just(Origin::Egp),
                Just(Origin::Incomplete)
            ]),
            option::of(as_path(true)),
            option::of(unicast_v4()),
            option::of(any::<u32>()),
            option::of(any::<u32>()),
            any::<bool>(),
        ),
        (
            option::of((any::<u32>(), any::<u32>())),
            vec(any::<u32>(), 0..4),
            option::of(any::<u32>()),
            vec(any::<u32>(), 0..4),
            unknown_attrs(),
        ),
    )
        .prop_map(
            move |(
                (origin, as_path, nh, med, local_pref, atomic),
                (agg, communities, orig, clusters, unknown),
            )| {
                let mut a = PathAttributes {
                    origin,
                    as_path,
                    next_hop: nh,
                    med,
                    local_pref,
                    atomic_aggregate: atomic,
                    aggregator: agg.map(|(asn, ip)| Aggregator {
                        asn,
                        address: ip.into(),
                    }),
                    communities,
                    originator_id: orig.map(Ipv4Addr::from),
                    cluster_list: clusters.into_iter().map(Ipv4Addr::from).collect(),
                    unknown,
                };
                if announcing {
                    a.origin.get_or_insert(Origin::Igp);
                    a.as_path.get_or_insert_with(AsPath::default);
                    if next_hop {
                        a.next_hop.get_or_insert(Ipv4Addr::new(10, 0, 0, 1));
                    }
                }
                if !four_octet_as {
                    let big_path = a
                        .as_path
                        .as_ref()
                        .is_some_and(|p| p.asns().any(|x| x > 0xffff));
                    if big_path && let Some(agg) = &mut a.aggregator {
                        agg.asn |= 0x0001_0000;
                    }
                }
                a
            },
        )
}

fn mp_reach() -> impl Strategy<Value = MpReach> {
    prop_oneof![
        (unicast_v4(), vec(v4net(), 0..10))
            .prop_map(|(next_hop, nlri)| MpReach::Ipv4 { next_hop, nlri }),
        (
            any::<u128>(),
            option::of(any::<u128>()),
            vec(v6net(), 0..10)
        )
            .prop_map(|(nh, ll, nlri)| MpReach::Ipv6 {
                next_hop: nh.into(),
                link_local: ll.map(Ipv6Addr::from),
                nlri
            }),
        (
            any::<u128>(),
            option::of(any::<u128>()),
            vec(v4net(), 0..10)
        )
            .prop_map(|(nh, ll, nlri)| MpReach::Ipv4ViaIpv6 {
                next_hop: nh.into(),
                link_local: ll.map(Ipv6Addr::from),
                nlri
            }),
    ]
}

fn mp_unreach() -> impl Strategy<Value = MpUnreach> {
    prop_oneof![
        vec(v4net(), 0..10).prop_map(MpUnreach::Ipv4),
        vec(v6net(), 0..10).prop_map(MpUnreach::Ipv6)
    ]
}

fn update(four_octet_as: bool) -> impl Strategy<Value = Update> {
    (
        vec(v4net(), 0..10),
        vec(v4net(), 0..10),
        option::of(mp_reach()),
        option::of(mp_unreach()),
    )
        .prop_flat_map(move |(withdrawn, nlri, mp_reach, mp_unreach)| {
            let announcing =
                !nlri.is_empty() || mp_reach.as_ref().is_some_and(|r| !r.prefixes().is_empty());
            attributes(four_octet_as, announcing, !nlri.is_empty()).prop_map(move |attributes| {
                Update {
                    withdrawn: withdrawn.clone(),
                    attributes,
                    mp_reach: mp_reach.clone(),
                    mp_unreach: mp_unreach.clone(),
                    nlri: nlri.clone(),
                }
            })
        })
}

fn message(four_octet_as: bool) -> impl Strategy<Value = Message> {
    prop_oneof![
        open().prop_map(Message::Open),
        update(four_octet_as).prop_map(Message::Update),
        (any::<u8>(), any::<u8>(), vec(any::<u8>(), 0..64))
            .prop_map(|(c, s, d)| Message::Notification(Notification::new(c, s, d))),
        Just(Message::Keepalive),
        (family(), any::<u8>())
            .prop_map(|(family, subtype)| Message::RouteRefresh(RouteRefresh { family, subtype })),
    ]
}

fn check_round_trip(m: &Message, cx: &Context) -> Result<(), TestCaseError> {
    let bytes = encode(m, cx).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(decode(&bytes, cx), Ok(Decoded::Message(m.clone())));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn valid_messages_round_trip_on_a_4_octet_session(m in message(true)) {
        check_round_trip(&m, &Context { four_octet_as: true })?;
    }

    #[test]
    fn valid_messages_round_trip_on_a_2_octet_session(m in message(false)) {
        check_round_trip(&m, &Context { four_octet_as: false })?;
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_what_decodes_re_encodes(bytes in vec(any::<u8>(), 0..200), wide in any::<bool>()) {
        let cx = Context { four_octet_as: wide };
        let mut framed = vec![0xff; 16];
        framed.extend_from_slice(&((19 + bytes.len()) as u16).to_be_bytes());
        framed.extend_from_slice(&bytes);
        for input in [&bytes[..], &framed[..]] {
            if let Ok(Decoded::Message(m)) = decode(input, &cx) {
                check_round_trip(&m, &cx)?;
            }
        }
    }

    #[test]
    fn flipping_any_octet_of_a_valid_update_never_panics(
        m in update(true),
        at in any::<prop::sample::Index>(),
        value in any::<u8>(),
    ) {
        let cx = Context { four_octet_as: true };
        let mut bytes = encode(&Message::Update(m), &cx).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let i = at.index(bytes.len());
        bytes[i] = value;
        match decode(&bytes, &cx) {
            Ok(Decoded::Message(m)) => check_round_trip(&m, &cx)?,
            Ok(Decoded::AttributeDiscard { update, .. }) => check_round_trip(&Message::Update(update), &cx)?,
            Ok(Decoded::TreatAsWithdraw { .. }) | Err(_) => {}
        }
    }
}
