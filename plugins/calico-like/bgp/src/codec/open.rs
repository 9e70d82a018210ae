//! OPEN messages (RFC 4271 §4.2) with Capabilities optional parameters (RFC 5492).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+
//! |    Version    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |     My Autonomous System      |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |           Hold Time           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                         BGP Identifier                        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! | Opt Parm Len  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |             Optional Parameters (variable)                    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use std::net::Ipv4Addr;

use super::capability::{Capability, GracefulRestartCap};
use super::{Cursor, DecodeError, EncodeError, Family, OpenError, OpenSubcode};

/// The 2-octet AS number a 4-octet-AS speaker puts where a 2-octet peer expects its AS
/// (RFC 6793 §9).
pub const AS_TRANS: u16 = 23456;

/// The BGP version we speak.
pub const BGP_VERSION: u8 = 4;

/// Optional parameter type: Capabilities (RFC 5492).
const PARAM_CAPABILITIES: u8 = 2;

/// An OPEN message. Decoding has already enforced RFC 4271 §6.2: version 4, hold time 0 or at
/// least 3, a non-zero BGP identifier and a non-zero AS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    /// My Autonomous System: the sender's AS, or [`AS_TRANS`] when it does not fit 2 octets.
    pub my_as: u16,
    /// Proposed hold time in seconds.
    pub hold_time: u16,
    /// The sender's BGP identifier (router id).
    pub bgp_id: Ipv4Addr,
    /// All capabilities, from every Capabilities parameter, in order.
    pub capabilities: Vec<Capability>,
}

impl Open {
    /// An OPEN for `asn`: puts AS_TRANS in My AS when `asn` needs 4 octets. The caller lists
    /// the capabilities, including [`Capability::FourOctetAs`].
    pub fn new(asn: u32, hold_time: u16, bgp_id: Ipv4Addr, capabilities: Vec<Capability>) -> Self {
        Self {
            my_as: u16::try_from(asn).unwrap_or(AS_TRANS),
            hold_time,
            bgp_id,
            capabilities,
        }
    }

    /// The sender's real AS: the 4-octet AS capability if present, else My AS (RFC 6793 §4.1).
    pub fn asn(&self) -> u32 {
        self.four_octet_as().unwrap_or(u32::from(self.my_as))
    }

    /// The AS in the 4-octet AS capability, if the sender supports 4-octet AS numbers.
    pub fn four_octet_as(&self) -> Option<u32> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::FourOctetAs(asn) => Some(*asn),
            _ => None,
        })
    }

    /// Families in Multiprotocol capabilities. RFC 4760 §8: a speaker that sends none is taken
    /// to support IPv4 unicast only.
    pub fn families(&self) -> Vec<Family> {
        let mut families: Vec<Family> = self
            .capabilities
            .iter()
            .filter_map(|c| match c {
                Capability::Multiprotocol(f) => Some(*f),
                _ => None,
            })
            .collect();
        if families.is_empty() {
            families.push(Family::IPV4_UNICAST);
        }
        families.sort();
        families.dedup();
        families
    }

    /// Whether the sender supports ROUTE-REFRESH.
    pub fn route_refresh(&self) -> bool {
        self.capabilities
            .iter()
            .any(|c| matches!(c, Capability::RouteRefresh))
    }

    /// Whether the sender accepts routes of `tuple`'s NLRI family with next hops of its next-hop
    /// family (the Extended Next Hop Encoding capability, RFC 8950 §3).
    pub fn extended_next_hop(&self, tuple: super::ExtendedNextHop) -> bool {
        self.capabilities
            .iter()
            .any(|c| matches!(c, Capability::ExtendedNextHop(t) if t.contains(&tuple)))
    }

    /// The graceful restart capability, if sent.
    pub fn graceful_restart(&self) -> Option<&GracefulRestartCap> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::GracefulRestart(gr) => Some(gr),
            _ => None,
        })
    }

    pub(crate) fn decode_body(body: &[u8]) -> Result<Self, DecodeError> {
        let err = |subcode, data| DecodeError::Open(OpenError::new(subcode, data));
        let mut cur = Cursor::new(body);
        let (Some(version), Some(my_as), Some(hold_time), Some(id), Some(opt_len)) =
            (cur.u8(), cur.u16(), cur.u16(), cur.u32(), cur.u8())
        else {
            return Err(err(OpenSubcode::Unspecific, Vec::new()));
        };
        if version != BGP_VERSION {
            // RFC 4271 §6.2: the data is the largest version we support, as 2 octets.
            return Err(err(
                OpenSubcode::UnsupportedVersionNumber,
                vec![0, BGP_VERSION],
            ));
        }
        if usize::from(opt_len) != cur.remaining() {
            return Err(err(OpenSubcode::Unspecific, Vec::new()));
        }
        let mut capabilities = Vec::new();
        while !cur.is_empty() {
            let (Some(kind), Some(len)) = (cur.u8(), cur.u8()) else {
                return Err(err(OpenSubcode::Unspecific, Vec::new()));
            };
            let Some(value) = cur.take(usize::from(len)) else {
                return Err(err(OpenSubcode::Unspecific, Vec::new()));
            };
            if kind != PARAM_CAPABILITIES {
                return Err(err(OpenSubcode::UnsupportedOptionalParameter, Vec::new()));
            }
            Capability::decode_all(value, &mut capabilities).map_err(DecodeError::Open)?;
        }
        let open = Open {
            my_as,
            hold_time,
            bgp_id: Ipv4Addr::from(id),
            capabilities,
        };
        // RFC 4271 §6.2: a hold time of one or two seconds is unacceptable.
        if matches!(open.hold_time, 1 | 2) {
            return Err(err(OpenSubcode::UnacceptableHoldTime, Vec::new()));
        }
        // RFC 6286 §2.2: the identifier is a non-zero 4-octet number.
        if open.bgp_id.is_unspecified() {
            return Err(err(OpenSubcode::BadBgpIdentifier, Vec::new()));
        }
        // RFC 7607: AS 0 is never a valid peer AS.
        if open.my_as == 0 || open.four_octet_as() == Some(0) {
            return Err(err(
                OpenSubcode::BadPeerAs,
                open.my_as.to_be_bytes().to_vec(),
            ));
        }
        Ok(open)
    }

    pub(crate) fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        out.push(BGP_VERSION);
        out.extend_from_slice(&self.my_as.to_be_bytes());
        out.extend_from_slice(&self.hold_time.to_be_bytes());
        out.extend_from_slice(&self.bgp_id.octets());
        // Capabilities go into as few parameters as fit their 1-octet length.
        let mut params = Vec::new();
        let mut current = Vec::new();
        for cap in &self.capabilities {
            let mut one = Vec::new();
            cap.encode(&mut one)?;
            if current.len() + one.len() > usize::from(u8::MAX) {
                push_param(&mut params, &current)?;
                current.clear();
            }
            current.extend_from_slice(&one);
        }
        if !current.is_empty() {
            push_param(&mut params, &current)?;
        }
        let opt_len = u8::try_from(params.len())
            .map_err(|_| EncodeError::FieldTooLong("optional parameters"))?;
        out.push(opt_len);
        out.extend_from_slice(&params);
        Ok(())
    }
}

fn push_param(params: &mut Vec<u8>, caps: &[u8]) -> Result<(), EncodeError> {
    let len = u8::try_from(caps.len()).map_err(|_| EncodeError::FieldTooLong("capability"))?;
    params.push(PARAM_CAPABILITIES);
    params.push(len);
    params.extend_from_slice(caps);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Context, Decoded, Message, decode, encode};

    fn open_bytes(body: &[u8]) -> Vec<u8> {
        let mut b = vec![0xff; 16];
        b.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
        b.push(1);
        b.extend_from_slice(body);
        b
    }

    fn decode_open(body: &[u8]) -> Result<Decoded, DecodeError> {
        decode(&open_bytes(body), &Context::default())
    }

    fn subcode(result: Result<Decoded, DecodeError>) -> (u8, u8, Vec<u8>) {
        let n = result.expect_err("rejected").notification();
        (n.code, n.subcode, n.data)
    }

    #[test]
    fn an_open_for_a_4_octet_as_sends_as_trans_and_the_capability() {
        let open = Open::new(
            4_200_000_001,
            90,
            Ipv4Addr::new(10, 0, 0, 1),
            vec![
                Capability::FourOctetAs(4_200_000_001),
                Capability::RouteRefresh,
            ],
        );
        assert_eq!(open.my_as, AS_TRANS);
        assert_eq!(open.asn(), 4_200_000_001);
        let bytes = encode(&Message::Open(open.clone()), &Context::default()).expect("encodes");
        assert_eq!(
            &bytes[19..],
            &[
                4, 0x5b, 0xa0, 0, 90, 10, 0, 0, 1, 10, 2, 8, 65, 4, 0xfa, 0x56, 0xea, 1, 2, 0
            ]
        );
        assert_eq!(
            decode(&bytes, &Context::default()),
            Ok(Decoded::Message(Message::Open(open)))
        );
    }

    #[test]
    fn a_speaker_without_multiprotocol_capabilities_supports_ipv4_unicast_only() {
        let open = Open::new(65000, 90, Ipv4Addr::new(1, 1, 1, 1), vec![]);
        assert_eq!(open.families(), vec![Family::IPV4_UNICAST]);
        assert_eq!(open.asn(), 65000);
    }

    #[test]
    fn capabilities_split_over_several_parameters_are_all_read() {
        // Two Capabilities parameters, one capability each.
        let body = [
            4, 0xfd, 0xe8, 0, 90, 1, 1, 1, 1, 12, 2, 6, 1, 4, 0, 2, 0, 1, 2, 2, 2, 0,
        ];
        let Ok(Decoded::Message(Message::Open(open))) = decode_open(&body) else {
            panic!("decodes");
        };
        assert_eq!(
            open.capabilities,
            vec![
                Capability::Multiprotocol(Family::IPV6_UNICAST),
                Capability::RouteRefresh
            ]
        );
        assert!(open.route_refresh());
    }

    #[test]
    fn version_other_than_4_is_unsupported_and_names_version_4() {
        let body = [3, 0xfd, 0xe8, 0, 90, 1, 1, 1, 1, 0];
        assert_eq!(subcode(decode_open(&body)), (2, 1, vec![0, 4]));
    }

    #[test]
    fn hold_time_of_one_or_two_seconds_is_unacceptable() {
        for hold in [1u8, 2] {
            let body = [4, 0xfd, 0xe8, 0, hold, 1, 1, 1, 1, 0];
            assert_eq!(subcode(decode_open(&body)).1, 6);
        }
        for hold in [0u8, 3] {
            let body = [4, 0xfd, 0xe8, 0, hold, 1, 1, 1, 1, 0];
            assert!(decode_open(&body).is_ok(), "hold time {hold} is fine");
        }
    }

    #[test]
    fn a_zero_bgp_identifier_is_bad() {
        let body = [4, 0xfd, 0xe8, 0, 90, 0, 0, 0, 0, 0];
        assert_eq!(subcode(decode_open(&body)).1, 3);
    }

    #[test]
    fn as_zero_is_a_bad_peer_as() {
        let body = [4, 0, 0, 0, 90, 1, 1, 1, 1, 0];
        assert_eq!(subcode(decode_open(&body)).1, 2);
        let body = [4, 0x5b, 0xa0, 0, 90, 1, 1, 1, 1, 8, 2, 6, 65, 4, 0, 0, 0, 0];
        assert_eq!(subcode(decode_open(&body)).1, 2);
    }

    #[test]
    fn an_optional_parameter_other_than_capabilities_is_unsupported() {
        let body = [4, 0xfd, 0xe8, 0, 90, 1, 1, 1, 1, 3, 1, 1, 0];
        assert_eq!(subcode(decode_open(&body)).1, 4);
    }

    #[test]
    fn optional_parameters_length_that_disagrees_with_the_message_is_malformed() {
        let body = [4, 0xfd, 0xe8, 0, 90, 1, 1, 1, 1, 5, 2, 0];
        assert_eq!(subcode(decode_open(&body)).1, 0);
        let body = [4, 0xfd, 0xe8, 0, 90, 1, 1, 1, 1, 2, 2, 5];
        assert_eq!(subcode(decode_open(&body)).1, 0);
    }

    #[test]
    fn a_truncated_open_is_a_header_length_error_before_it_is_parsed() {
        // 28 octets: one short of the OPEN minimum.
        let mut bytes = open_bytes(&[4, 0xfd, 0xe8, 0, 90, 1, 1, 1, 1]);
        assert_eq!(bytes.len(), 28);
        let n = decode(&bytes, &Context::default())
            .expect_err("rejected")
            .notification();
        assert_eq!((n.code, n.subcode), (1, 2));
        bytes.truncate(25);
        assert!(decode(&bytes, &Context::default()).is_err());
    }
}
