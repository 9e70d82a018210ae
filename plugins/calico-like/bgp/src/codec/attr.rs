//! Path attributes (RFC 4271 §4.3, §5) with RFC 7606 per-attribute error handling.
//!
//! ```text
//!  0                   1
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  Attr. Flags  |Attr. Type Code|  then 1 length octet, or 2 with Extended Length
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! flags: O(ptional) T(ransitive) P(artial) E(xtended length) 0 0 0 0
//! ```
//!
//! The model is the session-independent one: AS numbers are always 4 octets. On a session
//! without 4-octet AS support the codec writes AS_PATH/AGGREGATOR with AS_TRANS plus
//! AS4_PATH/AS4_AGGREGATOR, and merges them back on receipt (RFC 6793 §4.2).

use std::net::Ipv4Addr;

use super::update::{MpReach, MpUnreach};
use super::{AS_TRANS, Context, Cursor, EncodeError, ErrorAction, UpdateError, UpdateSubcode};

/// Attribute flag bits.
pub mod flags {
    /// Optional (clear = well-known).
    pub const OPTIONAL: u8 = 0x80;
    /// Transitive.
    pub const TRANSITIVE: u8 = 0x40;
    /// Partial: some speaker on the path did not recognise this optional transitive attribute.
    pub const PARTIAL: u8 = 0x20;
    /// The length field is two octets.
    pub const EXTENDED_LENGTH: u8 = 0x10;
}

/// Attribute type codes.
pub mod code {
    /// ORIGIN (RFC 4271).
    pub const ORIGIN: u8 = 1;
    /// AS_PATH (RFC 4271).
    pub const AS_PATH: u8 = 2;
    /// NEXT_HOP (RFC 4271).
    pub const NEXT_HOP: u8 = 3;
    /// MULTI_EXIT_DISC (RFC 4271).
    pub const MED: u8 = 4;
    /// LOCAL_PREF (RFC 4271).
    pub const LOCAL_PREF: u8 = 5;
    /// ATOMIC_AGGREGATE (RFC 4271).
    pub const ATOMIC_AGGREGATE: u8 = 6;
    /// AGGREGATOR (RFC 4271).
    pub const AGGREGATOR: u8 = 7;
    /// COMMUNITIES (RFC 1997).
    pub const COMMUNITIES: u8 = 8;
    /// ORIGINATOR_ID (RFC 4456).
    pub const ORIGINATOR_ID: u8 = 9;
    /// CLUSTER_LIST (RFC 4456).
    pub const CLUSTER_LIST: u8 = 10;
    /// MP_REACH_NLRI (RFC 4760).
    pub const MP_REACH_NLRI: u8 = 14;
    /// MP_UNREACH_NLRI (RFC 4760).
    pub const MP_UNREACH_NLRI: u8 = 15;
    /// AS4_PATH (RFC 6793).
    pub const AS4_PATH: u8 = 17;
    /// AS4_AGGREGATOR (RFC 6793).
    pub const AS4_AGGREGATOR: u8 = 18;
}

/// ORIGIN (RFC 4271 §5.1.1). Lower is preferred in the decision process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Origin {
    /// Learned from an interior protocol (or configured).
    #[default]
    Igp = 0,
    /// Learned via EGP.
    Egp = 1,
    /// Learned some other way (redistribution).
    Incomplete = 2,
}

/// AS_PATH segment types (RFC 4271 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegmentKind {
    /// An unordered set of ASes (after aggregation); counts as one AS.
    Set,
    /// An ordered list of ASes, nearest first.
    Sequence,
}

/// One AS_PATH segment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Segment {
    /// Set or sequence.
    pub kind: SegmentKind,
    /// AS numbers; never empty in a decoded path.
    pub asns: Vec<u32>,
}

/// An AS path in 4-octet form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct AsPath {
    /// Segments, nearest AS first.
    pub segments: Vec<Segment>,
}

impl AsPath {
    /// A path of one AS_SEQUENCE (empty for an empty slice).
    pub fn sequence(asns: &[u32]) -> Self {
        if asns.is_empty() {
            return Self::default();
        }
        Self {
            segments: vec![Segment {
                kind: SegmentKind::Sequence,
                asns: asns.to_vec(),
            }],
        }
    }

    /// The path length used by the decision process: each AS in a sequence counts one, each
    /// set counts one (RFC 4271 §9.1.2.2 a).
    pub fn length(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match s.kind {
                SegmentKind::Sequence => s.asns.len(),
                SegmentKind::Set => 1,
            })
            .sum()
    }

    /// The neighbouring AS: the first AS of a leading AS_SEQUENCE (RFC 4271 §9.1.2.2 c).
    pub fn neighbor_as(&self) -> Option<u32> {
        match self.segments.first() {
            Some(Segment {
                kind: SegmentKind::Sequence,
                asns,
            }) => asns.first().copied(),
            _ => None,
        }
    }

    /// The originating AS: the last AS of a trailing AS_SEQUENCE.
    pub fn origin_as(&self) -> Option<u32> {
        match self.segments.last() {
            Some(Segment {
                kind: SegmentKind::Sequence,
                asns,
            }) => asns.last().copied(),
            _ => None,
        }
    }

    /// Whether `asn` appears anywhere in the path (RFC 4271 §9.1.2 loop detection).
    pub fn contains(&self, asn: u32) -> bool {
        self.segments.iter().any(|s| s.asns.contains(&asn))
    }

    /// Every AS in order, sets flattened.
    pub fn asns(&self) -> impl Iterator<Item = u32> + '_ {
        self.segments.iter().flat_map(|s| s.asns.iter().copied())
    }

    /// The path with `asn` prepended, as an eBGP speaker sends it (RFC 4271 §5.1.2).
    pub fn prepended(&self, asn: u32) -> Self {
        let mut segments = self.segments.clone();
        match segments.first_mut() {
            Some(Segment {
                kind: SegmentKind::Sequence,
                asns,
            }) if asns.len() < 255 => {
                asns.insert(0, asn);
            }
            _ => segments.insert(
                0,
                Segment {
                    kind: SegmentKind::Sequence,
                    asns: vec![asn],
                },
            ),
        }
        Self { segments }
    }

    fn needs_four_octets(&self) -> bool {
        self.asns().any(|a| a > u32::from(u16::MAX))
    }

    /// Appends the path value; `wide` picks 4-octet AS numbers. Segments longer than 255 ASes
    /// are split, empty ones skipped.
    fn encode(&self, wide: bool, out: &mut Vec<u8>) {
        for seg in &self.segments {
            for chunk in seg.asns.chunks(255) {
                out.push(match seg.kind {
                    SegmentKind::Set => 1,
                    SegmentKind::Sequence => 2,
                });
                out.push(chunk.len() as u8);
                for &asn in chunk {
                    if wide {
                        out.extend_from_slice(&asn.to_be_bytes());
                    } else {
                        let narrow = u16::try_from(asn).unwrap_or(AS_TRANS);
                        out.extend_from_slice(&narrow.to_be_bytes());
                    }
                }
            }
        }
    }

    /// Parses a path value. RFC 7606 §7.2: an unknown segment type (including the
    /// confederation types, which we do not support), an empty segment, or a segment that
    /// overruns the attribute makes the AS_PATH malformed.
    fn decode(value: &[u8], wide: bool) -> Option<Self> {
        let width = if wide { 4 } else { 2 };
        let mut cur = Cursor::new(value);
        let mut segments = Vec::new();
        while !cur.is_empty() {
            let kind = match cur.u8()? {
                1 => SegmentKind::Set,
                2 => SegmentKind::Sequence,
                _ => return None,
            };
            let count = usize::from(cur.u8()?);
            if count == 0 {
                return None;
            }
            let raw = cur.take(count * width)?;
            let asns = raw
                .chunks_exact(width)
                .map(|c| match c {
                    [a, b] => u32::from(u16::from_be_bytes([*a, *b])),
                    [a, b, c, d] => u32::from_be_bytes([*a, *b, *c, *d]),
                    _ => 0,
                })
                .collect();
            segments.push(Segment { kind, asns });
        }
        Some(Self { segments })
    }

    /// RFC 6793 §4.2.3: rebuilds the real path from AS_PATH and AS4_PATH.
    fn merge_as4(self, as4: AsPath) -> AsPath {
        let (n, m) = (self.length(), as4.length());
        if n < m {
            return self;
        }
        let mut need = n - m;
        let mut segments = Vec::new();
        for seg in self.segments {
            if need == 0 {
                break;
            }
            match seg.kind {
                SegmentKind::Set => {
                    need -= 1;
                    segments.push(seg);
                }
                SegmentKind::Sequence => {
                    let take = need.min(seg.asns.len());
                    need -= take;
                    segments.push(Segment {
                        kind: seg.kind,
                        asns: seg.asns[..take].to_vec(),
                    });
                }
            }
        }
        segments.extend(as4.segments);
        AsPath { segments }
    }
}

impl std::fmt::Display for AsPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for seg in &self.segments {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            let list: Vec<String> = seg.asns.iter().map(u32::to_string).collect();
            match seg.kind {
                SegmentKind::Sequence => f.write_str(&list.join(" "))?,
                SegmentKind::Set => write!(f, "{{{}}}", list.join(","))?,
            }
        }
        Ok(())
    }
}

/// AGGREGATOR (RFC 4271 §5.1.7): the AS and router that formed an aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Aggregator {
    /// The aggregating AS (4-octet form).
    pub asn: u32,
    /// The aggregating router.
    pub address: Ipv4Addr,
}

/// An optional transitive attribute we do not recognise, passed on with the Partial bit set
/// (RFC 4271 §5).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RawAttribute {
    /// Flags, without the Extended Length bit (the encoder picks it).
    pub flags: u8,
    /// Type code.
    pub type_code: u8,
    /// Value.
    pub value: Vec<u8>,
}

/// The path attributes of a route, apart from the MP_REACH/MP_UNREACH attributes, which
/// [`super::Update`] keeps beside them because they carry NLRI rather than describe it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct PathAttributes {
    /// ORIGIN (well-known mandatory).
    pub origin: Option<Origin>,
    /// AS_PATH (well-known mandatory), in 4-octet form.
    pub as_path: Option<AsPath>,
    /// NEXT_HOP (well-known mandatory for IPv4 NLRI in the UPDATE's own NLRI field).
    pub next_hop: Option<Ipv4Addr>,
    /// MULTI_EXIT_DISC.
    pub med: Option<u32>,
    /// LOCAL_PREF (iBGP only).
    pub local_pref: Option<u32>,
    /// ATOMIC_AGGREGATE.
    pub atomic_aggregate: bool,
    /// AGGREGATOR, in 4-octet form.
    pub aggregator: Option<Aggregator>,
    /// COMMUNITIES (RFC 1997); empty when absent.
    pub communities: Vec<u32>,
    /// ORIGINATOR_ID (RFC 4456).
    pub originator_id: Option<Ipv4Addr>,
    /// CLUSTER_LIST (RFC 4456); empty when absent.
    pub cluster_list: Vec<Ipv4Addr>,
    /// Unrecognised optional transitive attributes, in the order received.
    pub unknown: Vec<RawAttribute>,
}

/// The expected Optional and Transitive flags of each attribute we recognise, and what
/// RFC 7606 says to do when it is malformed.
fn known(type_code: u8) -> Option<(u8, ErrorAction)> {
    use ErrorAction::*;
    const WELL_KNOWN: u8 = flags::TRANSITIVE;
    const OPT_TRANS: u8 = flags::OPTIONAL | flags::TRANSITIVE;
    const OPT: u8 = flags::OPTIONAL;
    Some(match type_code {
        code::ORIGIN | code::AS_PATH | code::NEXT_HOP | code::LOCAL_PREF => {
            (WELL_KNOWN, TreatAsWithdraw)
        }
        code::ATOMIC_AGGREGATE => (WELL_KNOWN, AttributeDiscard),
        code::MED | code::ORIGINATOR_ID | code::CLUSTER_LIST => (OPT, TreatAsWithdraw),
        code::AGGREGATOR | code::AS4_PATH | code::AS4_AGGREGATOR => (OPT_TRANS, AttributeDiscard),
        code::COMMUNITIES => (OPT_TRANS, TreatAsWithdraw),
        code::MP_REACH_NLRI | code::MP_UNREACH_NLRI => (OPT, SessionReset),
        _ => return None,
    })
}

/// The attribute section after parsing: the attributes, the MP NLRI, and the errors that did
/// not call for a session reset.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub(crate) attrs: PathAttributes,
    pub(crate) mp_reach: Option<MpReach>,
    pub(crate) mp_unreach: Option<MpUnreach>,
    pub(crate) errors: Vec<UpdateError>,
}

/// Parses the path attribute section. `Err` is a session reset; everything milder is collected
/// in [`Parsed::errors`], and the attribute concerned is left out.
pub(crate) fn decode(buf: &[u8], cx: &Context) -> Result<Parsed, UpdateError> {
    let mut parsed = Parsed::default();
    let mut seen = [false; 256];
    let mut as4_path = None;
    let mut as4_aggregator = None;
    let mut cur = Cursor::new(buf);
    while !cur.is_empty() {
        let start = cur.rest();
        let header = (cur.u8(), cur.u8());
        let (Some(flag_bits), Some(type_code)) = header else {
            // RFC 7606 §4: fewer octets left than an attribute header needs.
            parsed.errors.push(list_error());
            break;
        };
        let len = if flag_bits & flags::EXTENDED_LENGTH != 0 {
            cur.u16().map(usize::from)
        } else {
            cur.u8().map(usize::from)
        };
        let Some(value) = len.and_then(|len| cur.take(len)) else {
            // RFC 7606 §4: the attribute runs past the Total Path Attribute Length.
            parsed.errors.push(list_error());
            break;
        };
        let raw = &start[..start.len() - cur.remaining()];

        // RFC 7606 §3 g: a repeated MP attribute resets the session; any other repeat is
        // discarded, keeping the first.
        if seen[usize::from(type_code)] {
            if matches!(type_code, code::MP_REACH_NLRI | code::MP_UNREACH_NLRI) {
                return Err(UpdateError::reset(
                    UpdateSubcode::MalformedAttributeList,
                    Vec::new(),
                ));
            }
            parsed.errors.push(UpdateError::new(
                UpdateSubcode::MalformedAttributeList,
                Vec::new(),
                ErrorAction::AttributeDiscard,
            ));
            continue;
        }
        seen[usize::from(type_code)] = true;

        let Some((expected, on_error)) = known(type_code) else {
            if flag_bits & flags::OPTIONAL == 0 {
                return Err(UpdateError::reset(
                    UpdateSubcode::UnrecognizedWellKnownAttribute,
                    raw.to_vec(),
                ));
            }
            if flag_bits & flags::TRANSITIVE != 0 {
                parsed.attrs.unknown.push(RawAttribute {
                    flags: (flag_bits & 0xe0) | flags::PARTIAL,
                    type_code,
                    value: value.to_vec(),
                });
            }
            // Unrecognised optional non-transitive attributes are dropped quietly (RFC 4271 §5).
            continue;
        };
        let fail = |subcode| UpdateError::new(subcode, raw.to_vec(), on_error);
        // RFC 7606 §3 c: conflicting Optional/Transitive bits make the attribute malformed.
        if flag_bits & (flags::OPTIONAL | flags::TRANSITIVE) != expected {
            let e = fail(UpdateSubcode::AttributeFlagsError);
            if e.action == ErrorAction::SessionReset {
                return Err(e);
            }
            parsed.errors.push(e);
            continue;
        }
        let attrs = &mut parsed.attrs;
        let outcome: Result<(), UpdateSubcode> = match type_code {
            code::ORIGIN => match value {
                [v] => match v {
                    0 => Some(Origin::Igp),
                    1 => Some(Origin::Egp),
                    2 => Some(Origin::Incomplete),
                    _ => None,
                }
                .map(|o| attrs.origin = Some(o))
                .ok_or(UpdateSubcode::InvalidOrigin),
                _ => Err(UpdateSubcode::AttributeLengthError),
            },
            code::AS_PATH => AsPath::decode(value, cx.four_octet_as)
                .map(|p| attrs.as_path = Some(p))
                .ok_or(UpdateSubcode::MalformedAsPath),
            code::NEXT_HOP => match value {
                [a, b, c, d] => {
                    let nh = Ipv4Addr::new(*a, *b, *c, *d);
                    if nh.is_unspecified() || nh.is_multicast() || nh.is_broadcast() {
                        Err(UpdateSubcode::InvalidNextHop)
                    } else {
                        attrs.next_hop = Some(nh);
                        Ok(())
                    }
                }
                _ => Err(UpdateSubcode::AttributeLengthError),
            },
            code::MED => u32_value(value).map(|v| attrs.med = Some(v)),
            code::LOCAL_PREF => u32_value(value).map(|v| attrs.local_pref = Some(v)),
            code::ATOMIC_AGGREGATE => match value {
                [] => {
                    attrs.atomic_aggregate = true;
                    Ok(())
                }
                _ => Err(UpdateSubcode::AttributeLengthError),
            },
            code::AGGREGATOR => {
                aggregator(value, cx.four_octet_as).map(|a| attrs.aggregator = Some(a))
            }
            code::COMMUNITIES => {
                if value.is_empty() || value.len() % 4 != 0 {
                    Err(UpdateSubcode::AttributeLengthError)
                } else {
                    attrs.communities = value
                        .chunks_exact(4)
                        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                    Ok(())
                }
            }
            code::ORIGINATOR_ID => u32_value(value).map(|v| attrs.originator_id = Some(v.into())),
            code::CLUSTER_LIST => {
                if value.is_empty() || value.len() % 4 != 0 {
                    Err(UpdateSubcode::AttributeLengthError)
                } else {
                    attrs.cluster_list = value
                        .chunks_exact(4)
                        .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
                        .collect();
                    Ok(())
                }
            }
            code::MP_REACH_NLRI => MpReach::decode_value(value)
                .map(|r| parsed.mp_reach = r)
                .map_err(|_| UpdateSubcode::OptionalAttributeError),
            code::MP_UNREACH_NLRI => MpUnreach::decode_value(value)
                .map(|u| parsed.mp_unreach = u)
                .map_err(|_| UpdateSubcode::OptionalAttributeError),
            // RFC 6793 §4.1: a 4-octet speaker ignores AS4_* from a peer that is one too.
            code::AS4_PATH if cx.four_octet_as => Ok(()),
            code::AS4_AGGREGATOR if cx.four_octet_as => Ok(()),
            code::AS4_PATH => AsPath::decode(value, true)
                .map(|p| as4_path = Some(p))
                .ok_or(UpdateSubcode::OptionalAttributeError),
            code::AS4_AGGREGATOR => aggregator(value, true)
                .map(|a| as4_aggregator = Some(a))
                .map_err(|_| UpdateSubcode::OptionalAttributeError),
            _ => Ok(()),
        };
        if let Err(subcode) = outcome {
            let e = fail(subcode);
            if e.action == ErrorAction::SessionReset {
                return Err(e);
            }
            parsed.errors.push(e);
        }
    }

    // RFC 6793 §4.2.3: an AGGREGATOR that is not AS_TRANS means an old speaker aggregated the
    // route, and AS4_PATH/AS4_AGGREGATOR are stale.
    if !cx.four_octet_as {
        let attrs = &mut parsed.attrs;
        let aggregated_by_old = attrs
            .aggregator
            .is_some_and(|a| a.asn != u32::from(AS_TRANS));
        if !aggregated_by_old {
            if let Some(as4) = as4_aggregator {
                attrs.aggregator = Some(as4);
            }
            if let (Some(as4), Some(path)) = (as4_path, attrs.as_path.as_mut()) {
                *path = std::mem::take(path).merge_as4(as4);
            }
        }
    }
    Ok(parsed)
}

fn list_error() -> UpdateError {
    UpdateError::new(
        UpdateSubcode::MalformedAttributeList,
        Vec::new(),
        ErrorAction::TreatAsWithdraw,
    )
}

fn u32_value(value: &[u8]) -> Result<u32, UpdateSubcode> {
    match value {
        [a, b, c, d] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => Err(UpdateSubcode::AttributeLengthError),
    }
}

fn aggregator(value: &[u8], wide: bool) -> Result<Aggregator, UpdateSubcode> {
    match (wide, value) {
        (false, [a, b, rest @ ..]) if rest.len() == 4 => Ok(Aggregator {
            asn: u32::from(u16::from_be_bytes([*a, *b])),
            address: Ipv4Addr::new(rest[0], rest[1], rest[2], rest[3]),
        }),
        (true, [a, b, c, d, rest @ ..]) if rest.len() == 4 => Ok(Aggregator {
            asn: u32::from_be_bytes([*a, *b, *c, *d]),
            address: Ipv4Addr::new(rest[0], rest[1], rest[2], rest[3]),
        }),
        _ => Err(UpdateSubcode::AttributeLengthError),
    }
}

fn put(out: &mut Vec<u8>, flag_bits: u8, type_code: u8, value: &[u8]) -> Result<(), EncodeError> {
    let flag_bits = flag_bits & !flags::EXTENDED_LENGTH;
    if let Ok(len) = u8::try_from(value.len()) {
        out.extend_from_slice(&[flag_bits, type_code, len]);
    } else {
        let len = u16::try_from(value.len()).map_err(|_| EncodeError::TooLong(value.len()))?;
        out.extend_from_slice(&[flag_bits | flags::EXTENDED_LENGTH, type_code]);
        out.extend_from_slice(&len.to_be_bytes());
    }
    out.extend_from_slice(value);
    Ok(())
}

/// Appends the attribute section (without its length field) in type-code order.
pub(crate) fn encode(
    attrs: &PathAttributes,
    mp_reach: Option<&MpReach>,
    mp_unreach: Option<&MpUnreach>,
    cx: &Context,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    const WK: u8 = flags::TRANSITIVE;
    const OT: u8 = flags::OPTIONAL | flags::TRANSITIVE;
    const ON: u8 = flags::OPTIONAL;
    let mut unknown = attrs.unknown.iter().peekable();
    let mut flush_unknown = |below: u8, out: &mut Vec<u8>| -> Result<(), EncodeError> {
        while let Some(u) = unknown.next_if(|u| u.type_code < below) {
            put(out, u.flags, u.type_code, &u.value)?;
        }
        Ok(())
    };
    let wide = cx.four_octet_as;
    let as4_path = attrs
        .as_path
        .as_ref()
        .filter(|p| !wide && p.needs_four_octets());
    let as4_aggregator = attrs
        .aggregator
        .filter(|a| !wide && a.asn > u32::from(u16::MAX));

    flush_unknown(code::ORIGIN, out)?;
    if let Some(origin) = attrs.origin {
        put(out, WK, code::ORIGIN, &[origin as u8])?;
    }
    flush_unknown(code::AS_PATH, out)?;
    if let Some(path) = &attrs.as_path {
        let mut v = Vec::new();
        path.encode(wide, &mut v);
        put(out, WK, code::AS_PATH, &v)?;
    }
    flush_unknown(code::NEXT_HOP, out)?;
    if let Some(nh) = attrs.next_hop {
        put(out, WK, code::NEXT_HOP, &nh.octets())?;
    }
    flush_unknown(code::MED, out)?;
    if let Some(med) = attrs.med {
        put(out, ON, code::MED, &med.to_be_bytes())?;
    }
    flush_unknown(code::LOCAL_PREF, out)?;
    if let Some(lp) = attrs.local_pref {
        put(out, WK, code::LOCAL_PREF, &lp.to_be_bytes())?;
    }
    flush_unknown(code::ATOMIC_AGGREGATE, out)?;
    if attrs.atomic_aggregate {
        put(out, WK, code::ATOMIC_AGGREGATE, &[])?;
    }
    flush_unknown(code::AGGREGATOR, out)?;
    if let Some(agg) = attrs.aggregator {
        let mut v = Vec::new();
        if wide {
            v.extend_from_slice(&agg.asn.to_be_bytes());
        } else {
            v.extend_from_slice(&u16::try_from(agg.asn).unwrap_or(AS_TRANS).to_be_bytes());
        }
        v.extend_from_slice(&agg.address.octets());
        put(out, OT, code::AGGREGATOR, &v)?;
    }
    flush_unknown(code::COMMUNITIES, out)?;
    if !attrs.communities.is_empty() {
        let v: Vec<u8> = attrs
            .communities
            .iter()
            .flat_map(|c| c.to_be_bytes())
            .collect();
        put(out, OT, code::COMMUNITIES, &v)?;
    }
    flush_unknown(code::ORIGINATOR_ID, out)?;
    if let Some(id) = attrs.originator_id {
        put(out, ON, code::ORIGINATOR_ID, &id.octets())?;
    }
    flush_unknown(code::CLUSTER_LIST, out)?;
    if !attrs.cluster_list.is_empty() {
        let v: Vec<u8> = attrs.cluster_list.iter().flat_map(|c| c.octets()).collect();
        put(out, ON, code::CLUSTER_LIST, &v)?;
    }
    flush_unknown(code::MP_REACH_NLRI, out)?;
    if let Some(reach) = mp_reach {
        put(out, ON, code::MP_REACH_NLRI, &reach.encode_value())?;
    }
    flush_unknown(code::MP_UNREACH_NLRI, out)?;
    if let Some(unreach) = mp_unreach {
        put(out, ON, code::MP_UNREACH_NLRI, &unreach.encode_value())?;
    }
    flush_unknown(code::AS4_PATH, out)?;
    if let Some(path) = as4_path {
        let mut v = Vec::new();
        path.encode(true, &mut v);
        put(out, OT, code::AS4_PATH, &v)?;
    }
    flush_unknown(code::AS4_AGGREGATOR, out)?;
    if let Some(agg) = as4_aggregator {
        let mut v = agg.asn.to_be_bytes().to_vec();
        v.extend_from_slice(&agg.address.octets());
        put(out, OT, code::AS4_AGGREGATOR, &v)?;
    }
    flush_unknown(u8::MAX, out)?;
    for u in unknown {
        put(out, u.flags, u.type_code, &u.value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn four() -> Context {
        Context {
            four_octet_as: true,
        }
    }

    fn two() -> Context {
        Context {
            four_octet_as: false,
        }
    }

    fn attr(flag_bits: u8, type_code: u8, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put(&mut out, flag_bits, type_code, value).expect("fits");
        out
    }

    fn decode_ok(buf: &[u8], cx: &Context) -> Parsed {
        decode(buf, cx).expect("no session reset")
    }

    #[test]
    fn well_known_attributes_are_transitive_and_not_optional() {
        let mut buf = attr(0x40, 1, &[2]);
        buf.extend(attr(0x40, 2, &[2, 2, 0, 0, 0xfd, 0xe9, 0, 0, 0xfd, 0xea]));
        buf.extend(attr(0x40, 3, &[10, 0, 0, 1]));
        let p = decode_ok(&buf, &four());
        assert!(p.errors.is_empty());
        assert_eq!(p.attrs.origin, Some(Origin::Incomplete));
        assert_eq!(p.attrs.as_path, Some(AsPath::sequence(&[65001, 65002])));
        assert_eq!(p.attrs.next_hop, Some(Ipv4Addr::new(10, 0, 0, 1)));
    }

    #[test]
    fn an_undefined_origin_value_is_treated_as_withdraw() {
        let p = decode_ok(&attr(0x40, 1, &[3]), &four());
        assert_eq!(p.errors[0].subcode, UpdateSubcode::InvalidOrigin);
        assert_eq!(p.errors[0].action, ErrorAction::TreatAsWithdraw);
        assert_eq!(p.attrs.origin, None);
    }

    #[test]
    fn an_origin_whose_length_is_not_one_is_an_attribute_length_error_treated_as_withdraw() {
        let p = decode_ok(&attr(0x40, 1, &[0, 0]), &four());
        assert_eq!(p.errors[0].subcode, UpdateSubcode::AttributeLengthError);
        assert_eq!(p.errors[0].action, ErrorAction::TreatAsWithdraw);
        assert_eq!(
            p.errors[0].data,
            vec![0x40, 1, 2, 0, 0],
            "data is the whole attribute"
        );
    }

    #[test]
    fn an_as_path_segment_of_unknown_type_is_a_malformed_as_path_treated_as_withdraw() {
        let p = decode_ok(&attr(0x40, 2, &[7, 1, 0, 0, 0xfd, 0xe9]), &four());
        assert_eq!(p.errors[0].subcode, UpdateSubcode::MalformedAsPath);
        assert_eq!(p.errors[0].action, ErrorAction::TreatAsWithdraw);
    }

    #[test]
    fn an_empty_or_overrunning_as_path_segment_is_malformed() {
        for value in [&[2u8, 0][..], &[2, 2, 0, 0, 0xfd, 0xe9]] {
            let p = decode_ok(&attr(0x40, 2, value), &four());
            assert_eq!(p.errors[0].subcode, UpdateSubcode::MalformedAsPath);
        }
    }

    #[test]
    fn an_empty_as_path_is_valid_for_routes_originated_inside_the_as() {
        let p = decode_ok(&attr(0x40, 2, &[]), &four());
        assert!(p.errors.is_empty());
        assert_eq!(p.attrs.as_path, Some(AsPath::default()));
    }

    #[test]
    fn as_sets_count_as_one_in_path_length() {
        let p = decode_ok(
            &attr(
                0x40,
                2,
                &[2, 1, 0, 0, 0, 1, 1, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4],
            ),
            &four(),
        );
        let path = p.attrs.as_path.expect("path");
        assert_eq!(path.length(), 2);
        assert_eq!(path.neighbor_as(), Some(1));
        assert_eq!(path.to_string(), "1 {2,3,4}");
    }

    #[test]
    fn a_next_hop_of_0_0_0_0_or_multicast_is_invalid_and_treated_as_withdraw() {
        for nh in [[0u8, 0, 0, 0], [224, 0, 0, 5], [255, 255, 255, 255]] {
            let p = decode_ok(&attr(0x40, 3, &nh), &four());
            assert_eq!(p.errors[0].subcode, UpdateSubcode::InvalidNextHop);
            assert_eq!(p.errors[0].action, ErrorAction::TreatAsWithdraw);
        }
        let p = decode_ok(&attr(0x40, 3, &[10, 0, 0]), &four());
        assert_eq!(p.errors[0].subcode, UpdateSubcode::AttributeLengthError);
    }

    #[test]
    fn wrong_optional_or_transitive_bits_are_an_attribute_flags_error() {
        // ORIGIN sent as optional: treat-as-withdraw (RFC 7606 §3 c).
        let p = decode_ok(&attr(0xc0, 1, &[0]), &four());
        assert_eq!(p.errors[0].subcode, UpdateSubcode::AttributeFlagsError);
        assert_eq!(p.errors[0].action, ErrorAction::TreatAsWithdraw);
        // AGGREGATOR sent as well-known: attribute discard (RFC 7606 §7.7).
        let p = decode_ok(&attr(0x40, 7, &[0, 0, 0, 1, 1, 1, 1, 1]), &four());
        assert_eq!(p.errors[0].action, ErrorAction::AttributeDiscard);
        // MP_REACH_NLRI sent as transitive: session reset.
        let e = decode(&attr(0xc0, 14, &[0, 2, 1, 16]), &four()).expect_err("reset");
        assert_eq!(e.subcode, UpdateSubcode::AttributeFlagsError);
    }

    #[test]
    fn the_partial_bit_on_a_recognised_attribute_is_not_an_error() {
        let p = decode_ok(&attr(0xe0, 7, &[0, 0, 0, 1, 1, 1, 1, 1]), &four());
        assert!(p.errors.is_empty());
    }

    #[test]
    fn a_duplicate_attribute_is_discarded_keeping_the_first() {
        let mut buf = attr(0x40, 5, &[0, 0, 0, 200]);
        buf.extend(attr(0x40, 5, &[0, 0, 0, 50]));
        let p = decode_ok(&buf, &four());
        assert_eq!(p.attrs.local_pref, Some(200));
        assert_eq!(p.errors.len(), 1);
        assert_eq!(p.errors[0].action, ErrorAction::AttributeDiscard);
        assert_eq!(p.errors[0].subcode, UpdateSubcode::MalformedAttributeList);
    }

    #[test]
    fn a_duplicate_mp_reach_nlri_resets_the_session() {
        let reach = [
            0, 2, 1, 16, 0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0,
        ];
        let mut buf = attr(0x80, 14, &reach);
        buf.extend(attr(0x80, 14, &reach));
        let e = decode(&buf, &four()).expect_err("reset");
        assert_eq!(e.subcode, UpdateSubcode::MalformedAttributeList);
    }

    #[test]
    fn an_unrecognised_well_known_attribute_resets_the_session_with_the_attribute_as_data() {
        let e = decode(&attr(0x40, 99, &[1]), &four()).expect_err("reset");
        assert_eq!(e.subcode, UpdateSubcode::UnrecognizedWellKnownAttribute);
        assert_eq!(e.data, vec![0x40, 99, 1, 1]);
    }

    #[test]
    fn unknown_optional_transitive_attributes_pass_on_with_the_partial_bit_set() {
        let mut buf = attr(0xc0, 32, &[0, 0, 0xfd, 0xe9, 0, 0, 0, 1, 0, 0, 0, 2]);
        buf.extend(attr(0x80, 99, &[1, 2]));
        let p = decode_ok(&buf, &four());
        assert_eq!(
            p.attrs.unknown,
            vec![RawAttribute {
                flags: 0xe0,
                type_code: 32,
                value: vec![0, 0, 0xfd, 0xe9, 0, 0, 0, 1, 0, 0, 0, 2]
            }],
            "the optional non-transitive one is dropped"
        );
    }

    #[test]
    fn an_attribute_running_past_the_section_is_a_malformed_list_treated_as_withdraw() {
        let mut buf = attr(0x40, 1, &[0]);
        buf.extend_from_slice(&[0x40, 2, 10, 2, 1]);
        let p = decode_ok(&buf, &four());
        assert_eq!(p.attrs.origin, Some(Origin::Igp));
        assert_eq!(p.errors[0].subcode, UpdateSubcode::MalformedAttributeList);
        assert_eq!(p.errors[0].action, ErrorAction::TreatAsWithdraw);
        // Fewer octets than an attribute header.
        let p = decode_ok(&[0x40], &four());
        assert_eq!(p.errors[0].action, ErrorAction::TreatAsWithdraw);
    }

    #[test]
    fn extended_length_is_honoured_on_receipt_and_chosen_when_needed() {
        let p = decode_ok(&[0x50, 1, 0, 1, 0], &four());
        assert_eq!(p.attrs.origin, Some(Origin::Igp));
        let long = AsPath::sequence(&(1..=100).collect::<Vec<_>>());
        let attrs = PathAttributes {
            as_path: Some(long.clone()),
            ..Default::default()
        };
        let mut out = Vec::new();
        encode(&attrs, None, None, &four(), &mut out).expect("encodes");
        assert_eq!(out[0], 0x50, "extended length set for a 402-octet value");
        assert_eq!(decode_ok(&out, &four()).attrs.as_path, Some(long));
    }

    #[test]
    fn atomic_aggregate_with_a_value_is_discarded() {
        let p = decode_ok(&attr(0x40, 6, &[1]), &four());
        assert!(!p.attrs.atomic_aggregate);
        assert_eq!(p.errors[0].action, ErrorAction::AttributeDiscard);
    }

    #[test]
    fn an_aggregator_of_the_wrong_length_for_the_session_is_discarded() {
        let p = decode_ok(&attr(0xc0, 7, &[0, 1, 1, 1, 1, 1]), &four());
        assert_eq!(p.errors[0].action, ErrorAction::AttributeDiscard);
        let p = decode_ok(&attr(0xc0, 7, &[0, 1, 1, 1, 1, 1]), &two());
        assert_eq!(
            p.attrs.aggregator,
            Some(Aggregator {
                asn: 1,
                address: Ipv4Addr::new(1, 1, 1, 1)
            })
        );
    }

    #[test]
    fn med_local_pref_originator_and_cluster_list_lengths_are_checked() {
        for (t, flag_bits, v) in [
            (4u8, 0x80u8, &[0u8, 0, 1][..]),
            (5, 0x40, &[0, 0, 0, 0, 1]),
            (9, 0x80, &[1, 1, 1]),
            (10, 0x80, &[1, 1, 1, 1, 2]),
            (10, 0x80, &[]),
            (8, 0xc0, &[]),
        ] {
            let p = decode_ok(&attr(flag_bits, t, v), &four());
            assert_eq!(
                p.errors[0].subcode,
                UpdateSubcode::AttributeLengthError,
                "type {t}"
            );
            assert_eq!(p.errors[0].action, ErrorAction::TreatAsWithdraw, "type {t}");
        }
    }

    #[test]
    fn a_2_octet_session_carries_big_as_numbers_in_as4_path_behind_as_trans() {
        let attrs = PathAttributes {
            as_path: Some(AsPath::sequence(&[65001, 4_200_000_000, 65003])),
            aggregator: Some(Aggregator {
                asn: 4_200_000_000,
                address: Ipv4Addr::new(9, 9, 9, 9),
            }),
            ..Default::default()
        };
        let mut out = Vec::new();
        encode(&attrs, None, None, &two(), &mut out).expect("encodes");
        let mut expected = attr(0x40, 2, &[2, 3, 0xfd, 0xe9, 0x5b, 0xa0, 0xfd, 0xeb]);
        expected.extend(attr(0xc0, 7, &[0x5b, 0xa0, 9, 9, 9, 9]));
        expected.extend(attr(
            0xc0,
            17,
            &[
                2, 3, 0, 0, 0xfd, 0xe9, 0xfa, 0x56, 0xea, 0, 0, 0, 0xfd, 0xeb,
            ],
        ));
        expected.extend(attr(0xc0, 18, &[0xfa, 0x56, 0xea, 0, 9, 9, 9, 9]));
        assert_eq!(out, expected);
        assert_eq!(decode_ok(&out, &two()).attrs, attrs);
    }

    #[test]
    fn as4_path_is_merged_behind_the_leading_ases_an_old_speaker_prepended() {
        // An old speaker (AS 65010) prepended itself to AS_PATH but not to AS4_PATH.
        let mut buf = attr(0x40, 2, &[2, 3, 0xfd, 0xf2, 0x5b, 0xa0, 0xfd, 0xeb]);
        buf.extend(attr(
            0xc0,
            17,
            &[2, 2, 0xfa, 0x56, 0xea, 0, 0, 0, 0xfd, 0xeb],
        ));
        let p = decode_ok(&buf, &two());
        assert_eq!(
            p.attrs.as_path,
            Some(AsPath {
                segments: vec![
                    Segment {
                        kind: SegmentKind::Sequence,
                        asns: vec![65010]
                    },
                    Segment {
                        kind: SegmentKind::Sequence,
                        asns: vec![4_200_000_000, 65003]
                    },
                ]
            })
        );
    }

    #[test]
    fn as4_path_longer_than_as_path_is_ignored() {
        let mut buf = attr(0x40, 2, &[2, 1, 0xfd, 0xe9]);
        buf.extend(attr(0xc0, 17, &[2, 2, 0, 0, 0, 1, 0, 0, 0, 2]));
        assert_eq!(
            decode_ok(&buf, &two()).attrs.as_path,
            Some(AsPath::sequence(&[65001]))
        );
    }

    #[test]
    fn an_aggregator_that_is_not_as_trans_makes_as4_attributes_stale() {
        let mut buf = attr(0x40, 2, &[2, 1, 0x5b, 0xa0]);
        buf.extend(attr(0xc0, 7, &[0, 7, 9, 9, 9, 9]));
        buf.extend(attr(0xc0, 17, &[2, 1, 0xfa, 0x56, 0xea, 0]));
        let p = decode_ok(&buf, &two());
        assert_eq!(p.attrs.as_path, Some(AsPath::sequence(&[23456])));
    }

    #[test]
    fn as4_attributes_from_a_4_octet_speaker_are_ignored() {
        let mut buf = attr(0x40, 2, &[2, 1, 0, 0, 0xfd, 0xe9]);
        buf.extend(attr(0xc0, 17, &[2, 1, 0xfa, 0x56, 0xea, 0]));
        let p = decode_ok(&buf, &four());
        assert!(p.errors.is_empty());
        assert_eq!(p.attrs.as_path, Some(AsPath::sequence(&[65001])));
    }

    #[test]
    fn prepending_extends_a_leading_sequence_or_starts_one() {
        assert_eq!(AsPath::default().prepended(1), AsPath::sequence(&[1]));
        assert_eq!(
            AsPath::sequence(&[2, 3]).prepended(1),
            AsPath::sequence(&[1, 2, 3])
        );
        let set = AsPath {
            segments: vec![Segment {
                kind: SegmentKind::Set,
                asns: vec![5, 6],
            }],
        };
        assert_eq!(set.prepended(1).to_string(), "1 {5,6}");
    }
}
