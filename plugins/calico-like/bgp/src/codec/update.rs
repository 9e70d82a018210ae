//! UPDATE messages (RFC 4271 §4.3), MP_REACH_NLRI / MP_UNREACH_NLRI (RFC 4760 §3-4), End-of-RIB
//! markers (RFC 4724 §2), and the RFC 7606 outcome of decoding one.
//!
//! ```text
//! +-----------------------------------------------------+
//! |   Withdrawn Routes Length (2 octets)                |
//! +-----------------------------------------------------+
//! |   Withdrawn Routes (variable)                       |
//! +-----------------------------------------------------+
//! |   Total Path Attribute Length (2 octets)            |
//! +-----------------------------------------------------+
//! |   Path Attributes (variable)                        |
//! +-----------------------------------------------------+
//! |   Network Layer Reachability Information (variable) |
//! +-----------------------------------------------------+
//! ```

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::attr::{self, PathAttributes, code};
use super::{
    Context, Cursor, DecodeError, Decoded, EncodeError, ErrorAction, Family, HEADER_LEN,
    MAX_MESSAGE_LEN, Message, UpdateError, UpdateSubcode, prefix,
};

/// MP_REACH_NLRI for a family we carry.
///
/// ```text
/// +---------------------------------------------------------+
/// | Address Family Identifier (2 octets)                    |
/// | Subsequent Address Family Identifier (1 octet)          |
/// | Length of Next Hop Network Address (1 octet)            |
/// | Network Address of Next Hop (variable)                  |
/// | Reserved (1 octet)                                      |
/// | Network Layer Reachability Information (variable)       |
/// +---------------------------------------------------------+
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MpReach {
    /// IPv4 unicast carried in MP_REACH_NLRI (RFC 4760), with an IPv4 next hop.
    Ipv4 {
        /// Next hop.
        next_hop: Ipv4Addr,
        /// Announced prefixes.
        nlri: Vec<Ipv4Net>,
    },
    /// IPv4 unicast with an IPv6 next hop (RFC 8950 §4, the Extended Next Hop Encoding
    /// capability on both sides): a global next hop and optionally a link-local one, laid out
    /// as for IPv6 routes (next hop length 16 or 32).
    Ipv4ViaIpv6 {
        /// Global next hop (over an unnumbered link, the link-local address here too).
        next_hop: Ipv6Addr,
        /// Link-local next hop (next hop length 32).
        link_local: Option<Ipv6Addr>,
        /// Announced prefixes.
        nlri: Vec<Ipv4Net>,
    },
    /// IPv6 unicast (RFC 2545): a global next hop and optionally a link-local one.
    Ipv6 {
        /// Global next hop.
        next_hop: Ipv6Addr,
        /// Link-local next hop (next hop length 32).
        link_local: Option<Ipv6Addr>,
        /// Announced prefixes.
        nlri: Vec<Ipv6Net>,
    },
}

/// Why an MP attribute failed to parse; RFC 7606 §7.11 answers with a session reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MalformedMp;

impl MpReach {
    /// The family.
    pub fn family(&self) -> Family {
        match self {
            Self::Ipv4 { .. } | Self::Ipv4ViaIpv6 { .. } => Family::IPV4_UNICAST,
            Self::Ipv6 { .. } => Family::IPV6_UNICAST,
        }
    }

    /// The announced prefixes.
    pub fn prefixes(&self) -> Vec<IpNet> {
        match self {
            Self::Ipv4 { nlri, .. } | Self::Ipv4ViaIpv6 { nlri, .. } => {
                nlri.iter().copied().map(IpNet::V4).collect()
            }
            Self::Ipv6 { nlri, .. } => nlri.iter().copied().map(IpNet::V6).collect(),
        }
    }

    /// `None` for a family we do not carry: we never advertise one, so a well-behaved peer
    /// does not send it, and ignoring it is harmless.
    pub(crate) fn decode_value(value: &[u8]) -> Result<Option<Self>, MalformedMp> {
        let mut cur = Cursor::new(value);
        let (Some(afi), Some(safi), Some(nh_len)) = (cur.u16(), cur.u8(), cur.u8()) else {
            return Err(MalformedMp);
        };
        let family = Family::new(afi, safi);
        let Some(nh) = cur.take(usize::from(nh_len)) else {
            return Err(MalformedMp);
        };
        if cur.u8().is_none() {
            return Err(MalformedMp);
        }
        let nlri = cur.rest();
        if family == Family::IPV4_UNICAST {
            if let [a, b, c, d] = nh {
                let nlri = prefix::decode_v4(nlri).map_err(|_| MalformedMp)?;
                return Ok(Some(Self::Ipv4 {
                    next_hop: Ipv4Addr::new(*a, *b, *c, *d),
                    nlri,
                }));
            }
            // RFC 8950 §4: an IPv6 next hop, 16 or 32 octets; any other length is malformed.
            let (next_hop, link_local) = ipv6_next_hops(nh)?;
            let nlri = prefix::decode_v4(nlri).map_err(|_| MalformedMp)?;
            Ok(Some(Self::Ipv4ViaIpv6 {
                next_hop,
                link_local,
                nlri,
            }))
        } else if family == Family::IPV6_UNICAST {
            let (next_hop, link_local) = ipv6_next_hops(nh)?;
            let nlri = prefix::decode_v6(nlri).map_err(|_| MalformedMp)?;
            Ok(Some(Self::Ipv6 {
                next_hop,
                link_local,
                nlri,
            }))
        } else {
            Ok(None)
        }
    }

    pub(crate) fn encode_value(&self) -> Vec<u8> {
        let mut v = Vec::new();
        let family = self.family();
        v.extend_from_slice(&family.afi.to_be_bytes());
        v.push(family.safi);
        match self {
            Self::Ipv4 { next_hop, nlri } => {
                v.push(4);
                v.extend_from_slice(&next_hop.octets());
                v.push(0);
                for n in nlri {
                    prefix::encode_v4(n, &mut v);
                }
            }
            Self::Ipv4ViaIpv6 {
                next_hop,
                link_local,
                nlri,
            } => {
                put_ipv6_next_hops(*next_hop, *link_local, &mut v);
                for n in nlri {
                    prefix::encode_v4(n, &mut v);
                }
            }
            Self::Ipv6 {
                next_hop,
                link_local,
                nlri,
            } => {
                put_ipv6_next_hops(*next_hop, *link_local, &mut v);
                for n in nlri {
                    prefix::encode_v6(n, &mut v);
                }
            }
        }
        v
    }
}

/// An IPv6 next-hop field (RFC 2545 §3, RFC 8950 §4): a global address, and a link-local one
/// when it is 32 octets long.
fn ipv6_next_hops(nh: &[u8]) -> Result<(Ipv6Addr, Option<Ipv6Addr>), MalformedMp> {
    let addr = |b: &[u8]| <[u8; 16]>::try_from(b).map(Ipv6Addr::from).ok();
    let (next_hop, link_local) = match nh.len() {
        16 => (addr(nh), None),
        32 => (addr(&nh[..16]), addr(&nh[16..])),
        _ => return Err(MalformedMp),
    };
    Ok((next_hop.ok_or(MalformedMp)?, link_local))
}

/// Appends the next-hop length, the IPv6 next hop(s) and the reserved octet.
fn put_ipv6_next_hops(next_hop: Ipv6Addr, link_local: Option<Ipv6Addr>, v: &mut Vec<u8>) {
    v.push(if link_local.is_some() { 32 } else { 16 });
    v.extend_from_slice(&next_hop.octets());
    if let Some(ll) = link_local {
        v.extend_from_slice(&ll.octets());
    }
    v.push(0);
}

/// MP_UNREACH_NLRI for a family we carry.
///
/// ```text
/// +---------------------------------------------------------+
/// | Address Family Identifier (2 octets)                    |
/// | Subsequent Address Family Identifier (1 octet)          |
/// | Withdrawn Routes (variable)                             |
/// +---------------------------------------------------------+
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MpUnreach {
    /// Withdrawn IPv4 unicast prefixes.
    Ipv4(Vec<Ipv4Net>),
    /// Withdrawn IPv6 unicast prefixes.
    Ipv6(Vec<Ipv6Net>),
}

impl MpUnreach {
    /// The family.
    pub fn family(&self) -> Family {
        match self {
            Self::Ipv4(_) => Family::IPV4_UNICAST,
            Self::Ipv6(_) => Family::IPV6_UNICAST,
        }
    }

    /// The withdrawn prefixes.
    pub fn prefixes(&self) -> Vec<IpNet> {
        match self {
            Self::Ipv4(nlri) => nlri.iter().copied().map(IpNet::V4).collect(),
            Self::Ipv6(nlri) => nlri.iter().copied().map(IpNet::V6).collect(),
        }
    }

    pub(crate) fn decode_value(value: &[u8]) -> Result<Option<Self>, MalformedMp> {
        let mut cur = Cursor::new(value);
        let (Some(afi), Some(safi)) = (cur.u16(), cur.u8()) else {
            return Err(MalformedMp);
        };
        let family = Family::new(afi, safi);
        if family == Family::IPV4_UNICAST {
            Ok(Some(Self::Ipv4(
                prefix::decode_v4(cur.rest()).map_err(|_| MalformedMp)?,
            )))
        } else if family == Family::IPV6_UNICAST {
            Ok(Some(Self::Ipv6(
                prefix::decode_v6(cur.rest()).map_err(|_| MalformedMp)?,
            )))
        } else {
            Ok(None)
        }
    }

    pub(crate) fn encode_value(&self) -> Vec<u8> {
        let family = self.family();
        let mut v = family.afi.to_be_bytes().to_vec();
        v.push(family.safi);
        match self {
            Self::Ipv4(nlri) => nlri.iter().for_each(|n| prefix::encode_v4(n, &mut v)),
            Self::Ipv6(nlri) => nlri.iter().for_each(|n| prefix::encode_v6(n, &mut v)),
        }
        v
    }
}

/// An UPDATE message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Update {
    /// Withdrawn IPv4 prefixes.
    pub withdrawn: Vec<Ipv4Net>,
    /// Path attributes for the NLRI and MP_REACH_NLRI prefixes.
    pub attributes: PathAttributes,
    /// MP_REACH_NLRI.
    pub mp_reach: Option<MpReach>,
    /// MP_UNREACH_NLRI.
    pub mp_unreach: Option<MpUnreach>,
    /// Announced IPv4 prefixes (next hop in NEXT_HOP).
    pub nlri: Vec<Ipv4Net>,
}

impl Update {
    /// The End-of-RIB marker for `family` (RFC 4724 §2): an empty UPDATE for IPv4 unicast, an
    /// UPDATE with only an empty MP_UNREACH_NLRI otherwise.
    pub fn end_of_rib(family: Family) -> Self {
        match family {
            Family::IPV6_UNICAST => Self {
                mp_unreach: Some(MpUnreach::Ipv6(Vec::new())),
                ..Default::default()
            },
            _ => Self::default(),
        }
    }

    /// The family whose End-of-RIB this is, if it is one.
    pub fn is_end_of_rib(&self) -> Option<Family> {
        let no_attrs = self.attributes == PathAttributes::default();
        let bare = self.withdrawn.is_empty()
            && self.nlri.is_empty()
            && self.mp_reach.is_none()
            && no_attrs;
        match &self.mp_unreach {
            None if bare => Some(Family::IPV4_UNICAST),
            Some(MpUnreach::Ipv6(v)) if bare && v.is_empty() => Some(Family::IPV6_UNICAST),
            Some(MpUnreach::Ipv4(v)) if bare && v.is_empty() => Some(Family::IPV4_UNICAST),
            _ => None,
        }
    }

    /// Every prefix this UPDATE announces or withdraws.
    pub fn all_prefixes(&self) -> Vec<IpNet> {
        let mut out: Vec<IpNet> = self.withdrawn.iter().copied().map(IpNet::V4).collect();
        out.extend(self.nlri.iter().copied().map(IpNet::V4));
        if let Some(r) = &self.mp_reach {
            out.extend(r.prefixes());
        }
        if let Some(u) = &self.mp_unreach {
            out.extend(u.prefixes());
        }
        out
    }

    pub(crate) fn encode_body(&self, out: &mut Vec<u8>, cx: &Context) -> Result<(), EncodeError> {
        let mut withdrawn = Vec::new();
        for n in &self.withdrawn {
            prefix::encode_v4(n, &mut withdrawn);
        }
        let mut attrs = Vec::new();
        attr::encode(
            &self.attributes,
            self.mp_reach.as_ref(),
            self.mp_unreach.as_ref(),
            cx,
            &mut attrs,
        )?;
        let too_long = |n: usize| EncodeError::TooLong(HEADER_LEN + n);
        out.extend_from_slice(
            &u16::try_from(withdrawn.len())
                .map_err(|_| too_long(withdrawn.len()))?
                .to_be_bytes(),
        );
        out.extend_from_slice(&withdrawn);
        out.extend_from_slice(
            &u16::try_from(attrs.len())
                .map_err(|_| too_long(attrs.len()))?
                .to_be_bytes(),
        );
        out.extend_from_slice(&attrs);
        for n in &self.nlri {
            prefix::encode_v4(n, out);
        }
        Ok(())
    }
}

/// Decodes an UPDATE body and applies RFC 7606 to what it finds.
pub(crate) fn decode_body(body: &[u8], cx: &Context) -> Result<Decoded, DecodeError> {
    let reset = |subcode| DecodeError::Update(UpdateError::reset(subcode, Vec::new()));
    let mut cur = Cursor::new(body);
    // RFC 4271 §6.3 / RFC 7606 §5.1: lengths that overrun the message leave no way to find the
    // NLRI, so only a session reset is possible.
    let withdrawn = cur
        .u16()
        .and_then(|len| cur.take(usize::from(len)))
        .ok_or(reset(UpdateSubcode::MalformedAttributeList))?;
    let attrs = cur
        .u16()
        .and_then(|len| cur.take(usize::from(len)))
        .ok_or(reset(UpdateSubcode::MalformedAttributeList))?;
    let withdrawn =
        prefix::decode_v4(withdrawn).map_err(|_| reset(UpdateSubcode::InvalidNetworkField))?;
    let nlri =
        prefix::decode_v4(cur.rest()).map_err(|_| reset(UpdateSubcode::InvalidNetworkField))?;
    let mut parsed = attr::decode(attrs, cx).map_err(DecodeError::Update)?;

    // RFC 7606 §3 d: missing well-known mandatory attributes mean treat-as-withdraw. NEXT_HOP is
    // needed only for NLRI in the UPDATE's own field (RFC 4760 §3).
    let announces = !nlri.is_empty()
        || parsed
            .mp_reach
            .as_ref()
            .is_some_and(|r| !r.prefixes().is_empty());
    let already_withdrawn = parsed
        .errors
        .iter()
        .any(|e| e.action == ErrorAction::TreatAsWithdraw);
    if announces && !already_withdrawn {
        let a = &parsed.attrs;
        let mut missing = Vec::new();
        if a.origin.is_none() {
            missing.push(code::ORIGIN);
        }
        if a.as_path.is_none() {
            missing.push(code::AS_PATH);
        }
        if !nlri.is_empty() && a.next_hop.is_none() {
            missing.push(code::NEXT_HOP);
        }
        for t in missing {
            parsed.errors.push(UpdateError::new(
                UpdateSubcode::MissingWellKnownAttribute,
                vec![t],
                ErrorAction::TreatAsWithdraw,
            ));
        }
    }

    let update = Update {
        withdrawn,
        attributes: parsed.attrs,
        mp_reach: parsed.mp_reach,
        mp_unreach: parsed.mp_unreach,
        nlri,
    };
    Ok(match parsed.errors.iter().map(|e| e.action).max() {
        None => Decoded::Message(Message::Update(update)),
        Some(ErrorAction::AttributeDiscard) => Decoded::AttributeDiscard {
            update,
            errors: parsed.errors,
        },
        Some(_) => Decoded::TreatAsWithdraw {
            withdrawn: update.all_prefixes(),
            errors: parsed.errors,
        },
    })
}

/// Room for withdrawn routes, attributes and NLRI in one message.
const BODY_ROOM: usize = MAX_MESSAGE_LEN - HEADER_LEN - 4;

fn chunks<T>(items: &[T], room: usize, cost: impl Fn(&T) -> usize) -> Vec<&[T]> {
    let mut out = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (i, item) in items.iter().enumerate() {
        let c = cost(item);
        if used + c > room && i > start {
            out.push(&items[start..i]);
            start = i;
            used = 0;
        }
        used += c;
    }
    if start < items.len() {
        out.push(&items[start..]);
    }
    out
}

fn attrs_len(attrs: &PathAttributes, cx: &Context) -> Result<usize, EncodeError> {
    let mut v = Vec::new();
    attr::encode(attrs, None, None, cx, &mut v)?;
    Ok(v.len())
}

/// UPDATEs announcing IPv4 `prefixes` with `attrs` (which must carry NEXT_HOP), each within
/// 4096 octets.
pub fn announce_v4(
    attrs: &PathAttributes,
    prefixes: &[Ipv4Net],
    cx: &Context,
) -> Result<Vec<Update>, EncodeError> {
    let base = attrs_len(attrs, cx)?;
    let room = BODY_ROOM
        .checked_sub(base)
        .ok_or(EncodeError::TooLong(base))?;
    Ok(chunks(prefixes, room, prefix::encoded_len_v4)
        .into_iter()
        .map(|c| Update {
            attributes: attrs.clone(),
            nlri: c.to_vec(),
            ..Default::default()
        })
        .collect())
}

/// UPDATEs announcing IPv6 `prefixes` in MP_REACH_NLRI, each within 4096 octets.
pub fn announce_v6(
    attrs: &PathAttributes,
    next_hop: Ipv6Addr,
    link_local: Option<Ipv6Addr>,
    prefixes: &[Ipv6Net],
    cx: &Context,
) -> Result<Vec<Update>, EncodeError> {
    announce_via_v6(
        attrs,
        link_local,
        prefixes,
        prefix::encoded_len_v6,
        cx,
        |nlri| MpReach::Ipv6 {
            next_hop,
            link_local,
            nlri,
        },
    )
}

/// UPDATEs announcing IPv4 `prefixes` in MP_REACH_NLRI with an IPv6 next hop (RFC 8950: only
/// to a peer that sent the Extended Next Hop Encoding capability for IPv4 unicast), each within
/// 4096 octets. `attrs` must not carry NEXT_HOP.
pub fn announce_v4_via_v6(
    attrs: &PathAttributes,
    next_hop: Ipv6Addr,
    link_local: Option<Ipv6Addr>,
    prefixes: &[Ipv4Net],
    cx: &Context,
) -> Result<Vec<Update>, EncodeError> {
    announce_via_v6(
        attrs,
        link_local,
        prefixes,
        prefix::encoded_len_v4,
        cx,
        |nlri| MpReach::Ipv4ViaIpv6 {
            next_hop,
            link_local,
            nlri,
        },
    )
}

/// UPDATEs carrying `prefixes` in MP_REACH_NLRI with an IPv6 next hop (and a link-local one),
/// each within 4096 octets; `reach` makes the attribute of one UPDATE's share.
fn announce_via_v6<P: Clone>(
    attrs: &PathAttributes,
    link_local: Option<Ipv6Addr>,
    prefixes: &[P],
    cost: impl Fn(&P) -> usize,
    cx: &Context,
    reach: impl Fn(Vec<P>) -> MpReach,
) -> Result<Vec<Update>, EncodeError> {
    // Attribute header (4 with extended length) + AFI/SAFI/NH length + next hops + reserved.
    let mp_overhead = 4 + 4 + if link_local.is_some() { 32 } else { 16 } + 1;
    let base = attrs_len(attrs, cx)? + mp_overhead;
    let room = BODY_ROOM
        .checked_sub(base)
        .ok_or(EncodeError::TooLong(base))?;
    Ok(chunks(prefixes, room, cost)
        .into_iter()
        .map(|c| Update {
            attributes: attrs.clone(),
            mp_reach: Some(reach(c.to_vec())),
            ..Default::default()
        })
        .collect())
}

/// UPDATEs withdrawing IPv4 `prefixes`.
pub fn withdraw_v4(prefixes: &[Ipv4Net]) -> Vec<Update> {
    chunks(prefixes, BODY_ROOM, prefix::encoded_len_v4)
        .into_iter()
        .map(|c| Update {
            withdrawn: c.to_vec(),
            ..Default::default()
        })
        .collect()
}

/// UPDATEs withdrawing IPv6 `prefixes` in MP_UNREACH_NLRI.
pub fn withdraw_v6(prefixes: &[Ipv6Net]) -> Vec<Update> {
    chunks(prefixes, BODY_ROOM - 8, prefix::encoded_len_v6)
        .into_iter()
        .map(|c| Update {
            mp_unreach: Some(MpUnreach::Ipv6(c.to_vec())),
            ..Default::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::attr::{AsPath, Origin};
    use crate::codec::{decode, encode};

    /// `u` encodes and decodes back to itself.
    fn assert_round_trip(u: Update) {
        let bytes = encode(&Message::Update(u.clone()), &cx()).expect("encodes");
        assert_eq!(
            decode(&bytes, &cx()),
            Ok(Decoded::Message(Message::Update(u)))
        );
    }
    fn cx() -> Context {
        Context {
            four_octet_as: true,
        }
    }

    fn v4(s: &str) -> Ipv4Net {
        s.parse().expect("v4 prefix")
    }

    fn v6(s: &str) -> Ipv6Net {
        s.parse().expect("v6 prefix")
    }

    fn update_bytes(withdrawn: &[u8], attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
        let mut body = (withdrawn.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(withdrawn);
        body.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        body.extend_from_slice(attrs);
        body.extend_from_slice(nlri);
        let mut b = vec![0xff; 16];
        b.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
        b.push(2);
        b.extend(body);
        b
    }

    const ORIGIN_IGP: [u8; 4] = [0x40, 1, 1, 0];
    const PATH_65001: [u8; 9] = [0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xe9];
    const NH_10_0_0_1: [u8; 7] = [0x40, 3, 4, 10, 0, 0, 1];

    fn basic_attrs() -> Vec<u8> {
        [&ORIGIN_IGP[..], &PATH_65001, &NH_10_0_0_1].concat()
    }

    fn basic() -> PathAttributes {
        PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath::sequence(&[65001])),
            next_hop: Some(Ipv4Addr::new(10, 0, 0, 1)),
            ..Default::default()
        }
    }

    #[test]
    fn an_update_announces_ipv4_nlri_with_origin_as_path_and_next_hop() {
        let bytes = update_bytes(&[], &basic_attrs(), &[24, 10, 244, 1]);
        let expected = Update {
            attributes: basic(),
            nlri: vec![v4("10.244.1.0/24")],
            ..Default::default()
        };
        assert_eq!(
            decode(&bytes, &cx()),
            Ok(Decoded::Message(Message::Update(expected.clone())))
        );
        assert_eq!(
            encode(&Message::Update(expected), &cx()).expect("encodes"),
            bytes
        );
    }

    #[test]
    fn an_update_withdraws_ipv4_routes_without_attributes() {
        let bytes = update_bytes(&[24, 10, 244, 1, 16, 10, 9], &[], &[]);
        let Ok(Decoded::Message(Message::Update(u))) = decode(&bytes, &cx()) else {
            panic!("decodes")
        };
        assert_eq!(u.withdrawn, vec![v4("10.244.1.0/24"), v4("10.9.0.0/16")]);
        assert_eq!(u.is_end_of_rib(), None);
    }

    #[test]
    fn an_empty_update_is_the_ipv4_end_of_rib() {
        let bytes = update_bytes(&[], &[], &[]);
        assert_eq!(bytes.len(), 23);
        let Ok(Decoded::Message(Message::Update(u))) = decode(&bytes, &cx()) else {
            panic!("decodes")
        };
        assert_eq!(u.is_end_of_rib(), Some(Family::IPV4_UNICAST));
        assert_eq!(u, Update::end_of_rib(Family::IPV4_UNICAST));
    }

    #[test]
    fn an_empty_ipv6_mp_unreach_is_the_ipv6_end_of_rib() {
        let bytes = update_bytes(&[], &[0x80, 15, 3, 0, 2, 1], &[]);
        let Ok(Decoded::Message(Message::Update(u))) = decode(&bytes, &cx()) else {
            panic!("decodes")
        };
        assert_eq!(u.is_end_of_rib(), Some(Family::IPV6_UNICAST));
        assert_eq!(
            encode(
                &Message::Update(Update::end_of_rib(Family::IPV6_UNICAST)),
                &cx()
            )
            .expect("encodes"),
            bytes
        );
    }

    #[test]
    fn ipv6_routes_travel_in_mp_reach_nlri_with_global_and_link_local_next_hops() {
        let reach = MpReach::Ipv6 {
            next_hop: "fd00::1".parse().expect("v6"),
            link_local: Some("fe80::1".parse().expect("v6")),
            nlri: vec![v6("fd00:10:244:1::/64")],
        };
        let u = Update {
            attributes: PathAttributes {
                next_hop: None,
                ..basic()
            },
            mp_reach: Some(reach),
            ..Default::default()
        };
        assert_round_trip(u);
    }

    #[test]
    fn ipv4_routes_may_travel_in_mp_reach_nlri_too() {
        let u = Update {
            attributes: PathAttributes {
                next_hop: None,
                ..basic()
            },
            mp_reach: Some(MpReach::Ipv4 {
                next_hop: Ipv4Addr::new(10, 0, 0, 9),
                nlri: vec![v4("10.1.0.0/16")],
            }),
            mp_unreach: Some(MpUnreach::Ipv4(vec![v4("10.2.0.0/16")])),
            ..Default::default()
        };
        assert_round_trip(u);
    }

    #[test]
    fn ipv4_routes_travel_in_mp_reach_nlri_with_an_ipv6_next_hop_rfc_8950() {
        let ll: Ipv6Addr = "fe80::1".parse().expect("v6");
        let attrs = PathAttributes {
            next_hop: None,
            ..basic()
        };
        // 32 octets: global and link-local (over an unnumbered link both are the link-local).
        let reach = MpReach::Ipv4ViaIpv6 {
            next_hop: ll,
            link_local: Some(ll),
            nlri: vec![v4("10.245.0.0/26")],
        };
        let mut value = vec![0, 1, 1, 32];
        value.extend_from_slice(&ll.octets());
        value.extend_from_slice(&ll.octets());
        value.extend_from_slice(&[0, 26, 10, 245, 0, 0]);
        assert_eq!(reach.encode_value(), value);
        assert_eq!(reach.family(), Family::IPV4_UNICAST);
        assert_eq!(reach.prefixes(), vec![IpNet::V4(v4("10.245.0.0/26"))]);
        let u = Update {
            attributes: attrs.clone(),
            mp_reach: Some(reach),
            ..Default::default()
        };
        assert_round_trip(u);
        // 16 octets: one global next hop.
        let u = Update {
            attributes: attrs,
            mp_reach: Some(MpReach::Ipv4ViaIpv6 {
                next_hop: "fd00::9".parse().expect("v6"),
                link_local: None,
                nlri: vec![v4("10.1.0.0/16"), v4("10.2.3.0/24")],
            }),
            ..Default::default()
        };
        assert_round_trip(u);
    }

    #[test]
    fn ipv4_withdrawals_travel_in_mp_unreach_nlri() {
        let attrs = [0x80, 15, 8, 0, 1, 1, 26, 10, 245, 0, 0];
        let Ok(Decoded::Message(Message::Update(u))) =
            decode(&update_bytes(&[], &attrs, &[]), &cx())
        else {
            panic!("decodes")
        };
        assert_eq!(
            u.mp_unreach,
            Some(MpUnreach::Ipv4(vec![v4("10.245.0.0/26")]))
        );
        assert_eq!(u.is_end_of_rib(), None);
        assert_eq!(u.all_prefixes(), vec![IpNet::V4(v4("10.245.0.0/26"))]);
        // Empty: the IPv4 End-of-RIB as an MP speaker may send it.
        let Ok(Decoded::Message(Message::Update(u))) =
            decode(&update_bytes(&[], &[0x80, 15, 3, 0, 1, 1], &[]), &cx())
        else {
            panic!("decodes")
        };
        assert_eq!(u.is_end_of_rib(), Some(Family::IPV4_UNICAST));
    }

    #[test]
    fn an_ipv4_mp_reach_next_hop_of_another_length_resets_the_session() {
        // IPv4 NLRI: 4 (IPv4), 16 or 32 (IPv6) octets of next hop; 8, 12, 24 and 0 are not.
        for len in [0u8, 8, 12, 24, 33] {
            let mut mp = vec![0x80, 14, 4 + len + 1 + 4, 0, 1, 1, len];
            mp.extend(std::iter::repeat_n(0xfe, usize::from(len)));
            mp.extend_from_slice(&[0, 24, 10, 0, 0]);
            let attrs = [&basic_attrs()[..], &mp].concat();
            let n = decode(&update_bytes(&[], &attrs, &[]), &cx())
                .expect_err("reset")
                .notification();
            assert_eq!((n.code, n.subcode), (3, 9), "next hop length {len}");
        }
        // A 32-octet next hop cut short by the attribute's end.
        let mut mp = vec![0x80, 14, 4 + 20, 0, 1, 1, 32];
        mp.extend(std::iter::repeat_n(0xfe, 20));
        let attrs = [&basic_attrs()[..], &mp].concat();
        assert!(decode(&update_bytes(&[], &attrs, &[]), &cx()).is_err());
    }

    #[test]
    fn large_ipv4_announcements_with_ipv6_next_hops_are_split_to_fit_4096_octets() {
        let prefixes: Vec<Ipv4Net> = (0..2000u32)
            .map(|i| Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + (i << 8)), 24).expect("net"))
            .collect();
        let attrs = PathAttributes {
            next_hop: None,
            ..basic()
        };
        let ll: Ipv6Addr = "fe80::1".parse().expect("v6");
        let updates = announce_v4_via_v6(&attrs, ll, Some(ll), &prefixes, &cx()).expect("fits");
        assert!(updates.len() > 1);
        let mut seen = Vec::new();
        for u in &updates {
            let bytes = encode(&Message::Update(u.clone()), &cx()).expect("each fits");
            assert!(bytes.len() <= 4096);
            seen.extend(u.mp_reach.as_ref().expect("mp_reach").prefixes());
        }
        assert_eq!(
            seen,
            prefixes.iter().copied().map(IpNet::V4).collect::<Vec<_>>()
        );
    }

    #[test]
    fn mp_reach_for_a_family_we_do_not_carry_is_ignored() {
        // AFI 1 SAFI 128 (VPNv4).
        let attrs = [
            &basic_attrs()[..],
            &[0x80, 14, 9, 0, 1, 128, 4, 1, 1, 1, 1, 0],
        ]
        .concat();
        let Ok(Decoded::Message(Message::Update(u))) =
            decode(&update_bytes(&[], &attrs, &[]), &cx())
        else {
            panic!("decodes")
        };
        assert_eq!(u.mp_reach, None);
    }

    #[test]
    fn a_malformed_mp_reach_nlri_resets_the_session_with_optional_attribute_error() {
        // IPv6 with a 5-octet next hop.
        let attrs = [
            &basic_attrs()[..],
            &[0x80, 14, 10, 0, 2, 1, 5, 1, 2, 3, 4, 5, 0],
        ]
        .concat();
        let n = decode(&update_bytes(&[], &attrs, &[]), &cx())
            .expect_err("reset")
            .notification();
        assert_eq!((n.code, n.subcode), (3, 9));
        // A prefix in MP_REACH that is too long.
        let attrs = [
            &basic_attrs()[..],
            &[0x80, 14, 22, 0, 2, 1, 16],
            &[0xfd; 16],
            &[0, 129],
        ]
        .concat();
        let n = decode(&update_bytes(&[], &attrs, &[]), &cx())
            .expect_err("reset")
            .notification();
        assert_eq!((n.code, n.subcode), (3, 9));
    }

    #[test]
    fn a_withdrawn_routes_length_past_the_message_is_a_malformed_attribute_list() {
        let mut bytes = update_bytes(&[], &[], &[]);
        bytes[20] = 9;
        let n = decode(&bytes, &cx()).expect_err("reset").notification();
        assert_eq!((n.code, n.subcode), (3, 1));
    }

    #[test]
    fn a_total_attribute_length_past_the_message_is_a_malformed_attribute_list() {
        let mut bytes = update_bytes(&[], &ORIGIN_IGP, &[]);
        bytes[22] = 200;
        let n = decode(&bytes, &cx()).expect_err("reset").notification();
        assert_eq!((n.code, n.subcode), (3, 1));
    }

    #[test]
    fn an_nlri_prefix_longer_than_32_bits_is_an_invalid_network_field() {
        let n = decode(
            &update_bytes(&[], &basic_attrs(), &[33, 1, 2, 3, 4, 5]),
            &cx(),
        )
        .expect_err("reset")
        .notification();
        assert_eq!((n.code, n.subcode), (3, 10));
        let n = decode(&update_bytes(&[24, 10], &[], &[]), &cx())
            .expect_err("reset")
            .notification();
        assert_eq!((n.code, n.subcode), (3, 10));
    }

    #[test]
    fn nlri_without_next_hop_is_missing_a_well_known_attribute_and_treated_as_withdraw() {
        let attrs = [&ORIGIN_IGP[..], &PATH_65001].concat();
        let decoded =
            decode(&update_bytes(&[], &attrs, &[24, 10, 244, 1]), &cx()).expect("no reset");
        let Decoded::TreatAsWithdraw { withdrawn, errors } = decoded else {
            panic!("withdraw: {decoded:?}")
        };
        assert_eq!(withdrawn, vec![IpNet::V4(v4("10.244.1.0/24"))]);
        assert_eq!(errors[0].subcode, UpdateSubcode::MissingWellKnownAttribute);
        assert_eq!(errors[0].data, vec![3]);
    }

    #[test]
    fn mp_reach_does_not_need_the_next_hop_attribute() {
        let attrs = [
            &ORIGIN_IGP[..],
            &PATH_65001,
            &[0x80, 14, 23, 0, 2, 1, 16],
            &[0xfd; 16],
            &[0, 8, 0xfd],
        ]
        .concat();
        assert!(matches!(
            decode(&update_bytes(&[], &attrs, &[]), &cx()),
            Ok(Decoded::Message(_))
        ));
        // …but it needs ORIGIN.
        let attrs = [
            &PATH_65001[..],
            &[0x80, 14, 23, 0, 2, 1, 16],
            &[0xfd; 16],
            &[0, 8, 0xfd],
        ]
        .concat();
        assert!(matches!(
            decode(&update_bytes(&[], &attrs, &[]), &cx()),
            Ok(Decoded::TreatAsWithdraw { .. })
        ));
    }

    #[test]
    fn treat_as_withdraw_withdraws_every_prefix_in_the_message() {
        let attrs = [&[0x40, 1, 1, 7][..], &PATH_65001, &NH_10_0_0_1].concat();
        let decoded = decode(
            &update_bytes(&[16, 10, 9], &attrs, &[24, 10, 244, 1]),
            &cx(),
        )
        .expect("no reset");
        let Decoded::TreatAsWithdraw { withdrawn, .. } = decoded else {
            panic!("withdraw")
        };
        assert_eq!(
            withdrawn,
            vec![IpNet::V4(v4("10.9.0.0/16")), IpNet::V4(v4("10.244.1.0/24"))]
        );
    }

    #[test]
    fn the_strongest_approach_wins_when_errors_differ() {
        // A discardable ATOMIC_AGGREGATE error and a withdraw-worthy ORIGIN error.
        let attrs = [
            &[0x40, 1, 1, 9][..],
            &PATH_65001,
            &NH_10_0_0_1,
            &[0x40, 6, 1, 0],
        ]
        .concat();
        let decoded =
            decode(&update_bytes(&[], &attrs, &[24, 10, 244, 1]), &cx()).expect("no reset");
        let Decoded::TreatAsWithdraw { errors, .. } = decoded else {
            panic!("withdraw")
        };
        assert_eq!(errors.len(), 2);
    }

    #[test]
    fn attribute_discard_keeps_the_route_without_the_bad_attribute() {
        let attrs = [&basic_attrs()[..], &[0xc0, 7, 3, 1, 2, 3]].concat();
        let decoded =
            decode(&update_bytes(&[], &attrs, &[24, 10, 244, 1]), &cx()).expect("no reset");
        let Decoded::AttributeDiscard { update, errors } = decoded else {
            panic!("discard")
        };
        assert_eq!(update.attributes, basic());
        assert_eq!(update.nlri, vec![v4("10.244.1.0/24")]);
        assert_eq!(errors[0].subcode, UpdateSubcode::AttributeLengthError);
    }

    #[test]
    fn large_announcements_are_split_to_fit_4096_octets() {
        let prefixes: Vec<Ipv4Net> = (0..2000u32)
            .map(|i| Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + (i << 8)), 24).expect("net"))
            .collect();
        let updates = announce_v4(&basic(), &prefixes, &cx()).expect("fits");
        assert!(updates.len() > 1);
        let mut seen = Vec::new();
        for u in &updates {
            let bytes = encode(&Message::Update(u.clone()), &cx()).expect("each fits");
            assert!(bytes.len() <= 4096);
            seen.extend(u.nlri.iter().copied());
        }
        assert_eq!(seen, prefixes);
        let v6s: Vec<Ipv6Net> = (0..1000u128)
            .map(|i| {
                Ipv6Net::new(Ipv6Addr::from((0xfd00u128 << 112) + (i << 64)), 64).expect("net")
            })
            .collect();
        let attrs = PathAttributes {
            next_hop: None,
            ..basic()
        };
        for u in
            announce_v6(&attrs, "fd00::1".parse().expect("v6"), None, &v6s, &cx()).expect("fits")
        {
            assert!(encode(&Message::Update(u), &cx()).expect("fits").len() <= 4096);
        }
        for u in withdraw_v6(&v6s).into_iter().map(Message::Update) {
            assert!(encode(&u, &cx()).expect("fits").len() <= 4096);
        }
        for u in withdraw_v4(&prefixes).into_iter().map(Message::Update) {
            assert!(encode(&u, &cx()).expect("fits").len() <= 4096);
        }
    }
}
