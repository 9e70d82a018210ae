//! Capabilities advertised in OPEN (RFC 5492).
//!
//! ```text
//! +------------------------------+
//! | Capability Code (1 octet)    |
//! +------------------------------+
//! | Capability Length (1 octet)  |
//! +------------------------------+
//! | Capability Value (variable)  |
//! +------------------------------+
//! ```
//!
//! Capabilities we do not know are kept as received: the agent may want to log them, and an
//! unknown capability is never a reason to refuse a session (RFC 5492 §5).

use super::{Cursor, EncodeError, OpenError, OpenSubcode};

/// Capability codes we understand.
pub mod code {
    /// Multiprotocol Extensions (RFC 4760).
    pub const MULTIPROTOCOL: u8 = 1;
    /// Route Refresh (RFC 2918).
    pub const ROUTE_REFRESH: u8 = 2;
    /// Extended Next Hop Encoding (RFC 8950).
    pub const EXTENDED_NEXT_HOP: u8 = 5;
    /// Graceful Restart (RFC 4724).
    pub const GRACEFUL_RESTART: u8 = 64;
    /// Support for 4-octet AS numbers (RFC 6793).
    pub const FOUR_OCTET_AS: u8 = 65;
}

/// An address family: AFI and SAFI (RFC 4760).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Family {
    /// Address Family Identifier (1 = IPv4, 2 = IPv6).
    pub afi: u16,
    /// Subsequent AFI (1 = unicast).
    pub safi: u8,
}

impl Family {
    /// IPv4 unicast.
    pub const IPV4_UNICAST: Family = Family { afi: 1, safi: 1 };
    /// IPv6 unicast.
    pub const IPV6_UNICAST: Family = Family { afi: 2, safi: 1 };

    /// A family from its raw numbers.
    pub const fn new(afi: u16, safi: u8) -> Self {
        Self { afi, safi }
    }

    /// Whether this speaker carries routes of this family.
    pub fn is_supported(self) -> bool {
        self == Self::IPV4_UNICAST || self == Self::IPV6_UNICAST
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::IPV4_UNICAST => f.write_str("ipv4-unicast"),
            Self::IPV6_UNICAST => f.write_str("ipv6-unicast"),
            Family { afi, safi } => write!(f, "afi {afi} safi {safi}"),
        }
    }
}

/// One family in the graceful restart capability, with its Forwarding State (F) bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrFamily {
    /// The family.
    pub family: Family,
    /// F bit: the sender kept its forwarding state for this family across the restart.
    pub forwarding_preserved: bool,
}

/// The Graceful Restart capability (RFC 4724 §3).
///
/// ```text
/// +--------------------------------------------------+
/// | Restart Flags (4 bits) | Restart Time (12 bits)  |
/// +--------------------------------------------------+
/// | AFI (16 bits) | SAFI (8 bits) | Flags (8 bits)   |  repeated
/// +--------------------------------------------------+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GracefulRestartCap {
    /// R bit: the sender has restarted (its peers must not wait for its End-of-RIB before
    /// sending their own routes).
    pub restart_state: bool,
    /// N bit (RFC 8538): the sender supports graceful restart for NOTIFICATION messages.
    pub notification: bool,
    /// Seconds the sender's peers should keep its routes after the session drops (12 bits).
    restart_time: u16,
    /// Families whose routes are preserved.
    pub families: Vec<GrFamily>,
}

impl GracefulRestartCap {
    /// Largest restart time the 12-bit field holds.
    pub const MAX_RESTART_TIME: u16 = 0x0fff;

    /// A capability; `restart_time` is capped at 4095 seconds, the field's width.
    pub fn new(restart_state: bool, restart_time: u16, families: Vec<GrFamily>) -> Self {
        Self {
            restart_state,
            notification: false,
            restart_time: restart_time.min(Self::MAX_RESTART_TIME),
            families,
        }
    }

    /// Restart time in seconds.
    pub fn restart_time(&self) -> u16 {
        self.restart_time
    }

    /// The entry for `family`, if the sender preserves it.
    pub fn family(&self, family: Family) -> Option<&GrFamily> {
        self.families.iter().find(|f| f.family == family)
    }
}

/// One tuple of the Extended Next Hop Encoding capability (RFC 8950 §3): routes of the NLRI
/// family may carry next hops of `next_hop_afi`.
///
/// ```text
/// +-----------------------------------------------------+
/// | NLRI AFI - 1 (2 octets)                             |
/// | NLRI SAFI - 1 (2 octets)                            |
/// | Nexthop AFI - 1 (2 octets)                          |
/// +-----------------------------------------------------+  repeated
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExtendedNextHop {
    /// AFI of the NLRI (1 = IPv4).
    pub nlri_afi: u16,
    /// SAFI of the NLRI, two octets wide here (1 = unicast).
    pub nlri_safi: u16,
    /// AFI of the next hops it may carry (2 = IPv6).
    pub next_hop_afi: u16,
}

impl ExtendedNextHop {
    /// IPv4 unicast routes with IPv6 next hops: what BGP unnumbered needs.
    pub const IPV4_UNICAST_VIA_IPV6: ExtendedNextHop = ExtendedNextHop {
        nlri_afi: 1,
        nlri_safi: 1,
        next_hop_afi: 2,
    };
}

/// A capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    /// Multiprotocol Extensions for one family (RFC 4760 §8).
    Multiprotocol(Family),
    /// Route Refresh (RFC 2918).
    RouteRefresh,
    /// Extended Next Hop Encoding (RFC 8950): the NLRI / next-hop family pairs the sender
    /// accepts.
    ExtendedNextHop(Vec<ExtendedNextHop>),
    /// Graceful Restart (RFC 4724).
    GracefulRestart(GracefulRestartCap),
    /// The sender's real AS number (RFC 6793).
    FourOctetAs(u32),
    /// A capability we do not interpret, kept as received.
    Unknown {
        /// Capability code.
        code: u8,
        /// Capability value.
        value: Vec<u8>,
    },
}

impl Capability {
    /// Decodes the capabilities packed in one Capabilities optional parameter.
    pub(crate) fn decode_all(value: &[u8], out: &mut Vec<Capability>) -> Result<(), OpenError> {
        let mut cur = Cursor::new(value);
        while !cur.is_empty() {
            let (Some(code), Some(len)) = (cur.u8(), cur.u8()) else {
                return Err(malformed(value));
            };
            let Some(value) = cur.take(usize::from(len)) else {
                return Err(malformed(value));
            };
            out.push(Self::decode_one(code, value)?);
        }
        Ok(())
    }

    fn decode_one(code: u8, value: &[u8]) -> Result<Capability, OpenError> {
        Ok(match (code, value) {
            (code::MULTIPROTOCOL, [a, b, _reserved, safi]) => {
                Capability::Multiprotocol(Family::new(u16::from_be_bytes([*a, *b]), *safi))
            }
            (code::ROUTE_REFRESH, []) => Capability::RouteRefresh,
            // RFC 8950 §3: a whole number of 6-octet tuples, at least one.
            (code::EXTENDED_NEXT_HOP, tuples) if !tuples.is_empty() && tuples.len() % 6 == 0 => {
                Capability::ExtendedNextHop(
                    tuples
                        .chunks_exact(6)
                        .map(|c| ExtendedNextHop {
                            nlri_afi: u16::from_be_bytes([c[0], c[1]]),
                            nlri_safi: u16::from_be_bytes([c[2], c[3]]),
                            next_hop_afi: u16::from_be_bytes([c[4], c[5]]),
                        })
                        .collect(),
                )
            }
            (code::FOUR_OCTET_AS, [a, b, c, d]) => {
                Capability::FourOctetAs(u32::from_be_bytes([*a, *b, *c, *d]))
            }
            (code::GRACEFUL_RESTART, [hi, lo, rest @ ..]) if rest.len() % 4 == 0 => {
                let families = rest
                    .chunks_exact(4)
                    .map(|c| GrFamily {
                        family: Family::new(u16::from_be_bytes([c[0], c[1]]), c[2]),
                        forwarding_preserved: c[3] & 0x80 != 0,
                    })
                    .collect();
                Capability::GracefulRestart(GracefulRestartCap {
                    restart_state: hi & 0x80 != 0,
                    notification: hi & 0x40 != 0,
                    restart_time: u16::from_be_bytes([hi & 0x0f, *lo]),
                    families,
                })
            }
            (code::MULTIPROTOCOL | code::ROUTE_REFRESH | code::FOUR_OCTET_AS, _)
            | (code::GRACEFUL_RESTART | code::EXTENDED_NEXT_HOP, _) => {
                // A known capability with a length its RFC does not allow.
                let mut data = vec![code, value.len() as u8];
                data.extend_from_slice(value);
                return Err(malformed(&data));
            }
            (code, value) => Capability::Unknown {
                code,
                value: value.to_vec(),
            },
        })
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let (code, value): (u8, Vec<u8>) = match self {
            Capability::Multiprotocol(f) => {
                let [a, b] = f.afi.to_be_bytes();
                (code::MULTIPROTOCOL, vec![a, b, 0, f.safi])
            }
            Capability::RouteRefresh => (code::ROUTE_REFRESH, Vec::new()),
            Capability::ExtendedNextHop(tuples) => (
                code::EXTENDED_NEXT_HOP,
                tuples
                    .iter()
                    .flat_map(|t| {
                        let [a, b] = t.nlri_afi.to_be_bytes();
                        let [c, d] = t.nlri_safi.to_be_bytes();
                        let [e, f] = t.next_hop_afi.to_be_bytes();
                        [a, b, c, d, e, f]
                    })
                    .collect(),
            ),
            Capability::FourOctetAs(asn) => (code::FOUR_OCTET_AS, asn.to_be_bytes().to_vec()),
            Capability::GracefulRestart(gr) => {
                let time = gr.restart_time.min(GracefulRestartCap::MAX_RESTART_TIME);
                let mut flags = 0u8;
                if gr.restart_state {
                    flags |= 0x80;
                }
                if gr.notification {
                    flags |= 0x40;
                }
                let [hi, lo] = time.to_be_bytes();
                let mut v = vec![flags | hi, lo];
                for f in &gr.families {
                    v.extend_from_slice(&f.family.afi.to_be_bytes());
                    v.push(f.family.safi);
                    v.push(if f.forwarding_preserved { 0x80 } else { 0 });
                }
                (code::GRACEFUL_RESTART, v)
            }
            Capability::Unknown { code, value } => (*code, value.clone()),
        };
        let len = u8::try_from(value.len()).map_err(|_| EncodeError::FieldTooLong("capability"))?;
        out.push(code);
        out.push(len);
        out.extend_from_slice(&value);
        Ok(())
    }
}

fn malformed(data: &[u8]) -> OpenError {
    OpenError::new(OpenSubcode::Unspecific, data.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(cap: Capability) -> Vec<u8> {
        let mut bytes = Vec::new();
        cap.encode(&mut bytes).expect("encodes");
        let mut back = Vec::new();
        Capability::decode_all(&bytes, &mut back).expect("decodes");
        assert_eq!(back, vec![cap]);
        bytes
    }

    #[test]
    fn multiprotocol_carries_afi_a_reserved_octet_and_safi() {
        assert_eq!(
            round_trip(Capability::Multiprotocol(Family::IPV6_UNICAST)),
            [1, 4, 0, 2, 0, 1]
        );
    }

    #[test]
    fn route_refresh_has_no_value() {
        assert_eq!(round_trip(Capability::RouteRefresh), [2, 0]);
    }

    #[test]
    fn extended_next_hop_carries_afi_safi_next_hop_afi_tuples() {
        assert_eq!(
            round_trip(Capability::ExtendedNextHop(vec![
                ExtendedNextHop::IPV4_UNICAST_VIA_IPV6
            ])),
            [5, 6, 0, 1, 0, 1, 0, 2]
        );
        // Several tuples, one of a family we do not carry (kept as received).
        let other = ExtendedNextHop {
            nlri_afi: 1,
            nlri_safi: 128,
            next_hop_afi: 2,
        };
        assert_eq!(
            round_trip(Capability::ExtendedNextHop(vec![
                ExtendedNextHop::IPV4_UNICAST_VIA_IPV6,
                other
            ])),
            [5, 12, 0, 1, 0, 1, 0, 2, 0, 1, 0, 128, 0, 2]
        );
    }

    #[test]
    fn extended_next_hop_of_a_length_not_a_multiple_of_six_is_an_open_error() {
        let mut out = Vec::new();
        for bad in [
            &[5u8, 0][..],
            &[5, 4, 0, 1, 0, 1],
            &[5, 7, 0, 1, 0, 1, 0, 2, 0],
            &[5, 11, 0, 1, 0, 1, 0, 2, 0, 1, 0, 1, 0],
        ] {
            let err = Capability::decode_all(bad, &mut out).expect_err("rejected");
            assert_eq!(err.subcode, OpenSubcode::Unspecific, "{bad:?}");
            assert_eq!(err.data, bad, "the capability as received");
        }
        // A tuple cut short by the parameter's end.
        assert!(Capability::decode_all(&[5, 6, 0, 1, 0, 1], &mut out).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn four_octet_as_carries_the_real_as_number() {
        assert_eq!(
            round_trip(Capability::FourOctetAs(4_200_000_000)),
            [65, 4, 0xfa, 0x56, 0xea, 0]
        );
    }

    #[test]
    fn graceful_restart_packs_r_bit_and_12_bit_time_and_per_family_f_bits() {
        let gr = GracefulRestartCap::new(
            true,
            120,
            vec![
                GrFamily {
                    family: Family::IPV4_UNICAST,
                    forwarding_preserved: true,
                },
                GrFamily {
                    family: Family::IPV6_UNICAST,
                    forwarding_preserved: false,
                },
            ],
        );
        assert_eq!(
            round_trip(Capability::GracefulRestart(gr)),
            [64, 10, 0x80, 120, 0, 1, 1, 0x80, 0, 2, 1, 0]
        );
    }

    #[test]
    fn graceful_restart_time_is_capped_at_the_field_width() {
        assert_eq!(
            GracefulRestartCap::new(false, 60_000, vec![]).restart_time(),
            4095
        );
    }

    #[test]
    fn unknown_capabilities_are_kept() {
        round_trip(Capability::Unknown {
            code: 73,
            value: b"host".to_vec(),
        });
    }

    #[test]
    fn a_known_capability_with_the_wrong_length_is_an_open_error() {
        let mut out = Vec::new();
        let err = Capability::decode_all(&[65, 2, 0, 1], &mut out).expect_err("rejected");
        assert_eq!(err.subcode, OpenSubcode::Unspecific);
        assert!(Capability::decode_all(&[64, 3, 0, 0, 1], &mut out).is_err());
    }

    #[test]
    fn a_capability_running_past_its_parameter_is_an_open_error() {
        let mut out = Vec::new();
        assert!(Capability::decode_all(&[1, 4, 0, 1], &mut out).is_err());
        assert!(Capability::decode_all(&[1], &mut out).is_err());
    }
}
