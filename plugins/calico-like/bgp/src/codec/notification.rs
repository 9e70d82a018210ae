//! NOTIFICATION messages (RFC 4271 §4.5) and the error codes a speaker sends in them.
//!
//! The message keeps the code and subcode as the raw octets a peer sent, so that codes we do
//! not know survive; the typed subcode enums are what our own code builds notifications from.

use super::{Context, DecodeError, HeaderError};

/// NOTIFICATION error codes (RFC 4271 §4.5, RFC 6608, RFC 7313).
pub mod code {
    /// Message Header Error.
    pub const MESSAGE_HEADER: u8 = 1;
    /// OPEN Message Error.
    pub const OPEN_MESSAGE: u8 = 2;
    /// UPDATE Message Error.
    pub const UPDATE_MESSAGE: u8 = 3;
    /// Hold Timer Expired.
    pub const HOLD_TIMER_EXPIRED: u8 = 4;
    /// Finite State Machine Error.
    pub const FSM: u8 = 5;
    /// Cease.
    pub const CEASE: u8 = 6;
    /// ROUTE-REFRESH Message Error (RFC 7313).
    pub const ROUTE_REFRESH: u8 = 7;
}

/// Message Header Error subcodes (RFC 4271 §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum HeaderSubcode {
    /// The marker is not all ones.
    ConnectionNotSynchronized = 1,
    /// The length field is out of range for the message type.
    BadMessageLength = 2,
    /// The type field is not a type we know.
    BadMessageType = 3,
}

/// OPEN Message Error subcodes (RFC 4271 §6.2, RFC 5492).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OpenSubcode {
    /// An OPEN error with no more specific subcode (IANA "Unspecific"), used for malformed
    /// optional parameters and capabilities, which RFC 4271 gives no subcode of their own.
    Unspecific = 0,
    /// Version is not 4.
    UnsupportedVersionNumber = 1,
    /// The peer's AS is not the one configured, or is 0 (RFC 7607).
    BadPeerAs = 2,
    /// The BGP identifier is 0 or (iBGP) equal to ours (RFC 6286).
    BadBgpIdentifier = 3,
    /// An optional parameter other than Capabilities.
    UnsupportedOptionalParameter = 4,
    /// Hold time 1 or 2 seconds.
    UnacceptableHoldTime = 6,
    /// A capability the peer requires that we do not support (RFC 5492).
    UnsupportedCapability = 7,
}

/// UPDATE Message Error subcodes (RFC 4271 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum UpdateSubcode {
    /// Lengths that do not add up, or a duplicated MP attribute.
    MalformedAttributeList = 1,
    /// An attribute with the Optional bit clear whose type we do not know.
    UnrecognizedWellKnownAttribute = 2,
    /// ORIGIN, AS_PATH or NEXT_HOP missing from an UPDATE that carries NLRI.
    MissingWellKnownAttribute = 3,
    /// The Optional or Transitive bit conflicts with the attribute type.
    AttributeFlagsError = 4,
    /// An attribute whose length is wrong for its type.
    AttributeLengthError = 5,
    /// ORIGIN other than IGP, EGP, INCOMPLETE.
    InvalidOrigin = 6,
    /// NEXT_HOP that cannot be a next hop (0.0.0.0, multicast, broadcast).
    InvalidNextHop = 8,
    /// A malformed optional attribute (MP_REACH_NLRI / MP_UNREACH_NLRI, RFC 4760 §7).
    OptionalAttributeError = 9,
    /// A prefix longer than the address or running past the field.
    InvalidNetworkField = 10,
    /// AS_PATH segments that do not parse.
    MalformedAsPath = 11,
}

/// Finite State Machine Error subcodes (RFC 6608).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FsmSubcode {
    /// No more specific reason.
    Unspecified = 0,
    /// A message other than OPEN or NOTIFICATION in OpenSent.
    UnexpectedInOpenSent = 1,
    /// A message other than KEEPALIVE or NOTIFICATION in OpenConfirm.
    UnexpectedInOpenConfirm = 2,
    /// An OPEN in Established.
    UnexpectedInEstablished = 3,
}

/// Cease subcodes (RFC 4486, RFC 8538).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CeaseSubcode {
    /// The peer sent more prefixes than allowed.
    MaximumPrefixesReached = 1,
    /// The operator stopped the session (or the speaker is shutting down).
    AdministrativeShutdown = 2,
    /// The peer was removed from the configuration.
    PeerDeconfigured = 3,
    /// The operator reset the session.
    AdministrativeReset = 4,
    /// An incoming connection we do not accept.
    ConnectionRejected = 5,
    /// A configuration change that needs a new session.
    OtherConfigurationChange = 6,
    /// This connection lost the RFC 4271 §6.8 collision resolution.
    ConnectionCollisionResolution = 7,
    /// The speaker ran out of resources.
    OutOfResources = 8,
    /// Graceful restart must not apply (RFC 8538).
    HardReset = 9,
}

/// A NOTIFICATION message.
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// | Error code    | Error subcode |   Data (variable)             |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// Error code (see [`code`]).
    pub code: u8,
    /// Error subcode; meaning depends on the code.
    pub subcode: u8,
    /// Diagnostic data, e.g. the offending attribute.
    pub data: Vec<u8>,
}

impl Notification {
    /// A notification with the given raw code, subcode and data.
    pub fn new(code: u8, subcode: u8, data: Vec<u8>) -> Self {
        Self {
            code,
            subcode,
            data,
        }
    }

    /// Message Header Error.
    pub fn header(subcode: HeaderSubcode, data: Vec<u8>) -> Self {
        Self::new(code::MESSAGE_HEADER, subcode as u8, data)
    }

    /// OPEN Message Error.
    pub fn open(subcode: OpenSubcode, data: Vec<u8>) -> Self {
        Self::new(code::OPEN_MESSAGE, subcode as u8, data)
    }

    /// UPDATE Message Error.
    pub fn update(subcode: UpdateSubcode, data: Vec<u8>) -> Self {
        Self::new(code::UPDATE_MESSAGE, subcode as u8, data)
    }

    /// Hold Timer Expired (RFC 4271 §6.5).
    pub fn hold_timer_expired() -> Self {
        Self::new(code::HOLD_TIMER_EXPIRED, 0, Vec::new())
    }

    /// Finite State Machine Error (RFC 6608).
    pub fn fsm(subcode: FsmSubcode) -> Self {
        Self::new(code::FSM, subcode as u8, Vec::new())
    }

    /// Cease (RFC 4486).
    pub fn cease(subcode: CeaseSubcode) -> Self {
        Self::new(code::CEASE, subcode as u8, Vec::new())
    }

    /// Whether this is a Cease with the given subcode.
    pub fn is_cease(&self, subcode: CeaseSubcode) -> bool {
        self.code == code::CEASE && self.subcode == subcode as u8
    }

    /// RFC 4271 §6.2: an "Unsupported Version Number" NOTIFICATION carries the largest version
    /// the sender supports; the FSM treats it as NotifMsgVerErr, not as an error.
    pub fn is_version_error(&self) -> bool {
        self.code == code::OPEN_MESSAGE
            && self.subcode == OpenSubcode::UnsupportedVersionNumber as u8
    }

    pub(crate) fn decode_body(body: &[u8], _cx: &Context) -> Result<Self, DecodeError> {
        // The header check guarantees the two fixed octets; this guard keeps decoding total
        // even if a caller hands us a bare body.
        match body {
            [code, subcode, data @ ..] => Ok(Self::new(*code, *subcode, data.to_vec())),
            _ => Err(DecodeError::Header(HeaderError::BadLength(
                (super::HEADER_LEN + body.len()) as u16,
            ))),
        }
    }

    pub(crate) fn encode_body(&self, out: &mut Vec<u8>) {
        out.push(self.code);
        out.push(self.subcode);
        out.extend_from_slice(&self.data);
    }
}

impl Notification {
    /// The error code's name (RFC 4271 §4.5, RFC 7313).
    pub fn code_name(&self) -> &'static str {
        match self.code {
            code::MESSAGE_HEADER => "message header error",
            code::OPEN_MESSAGE => "OPEN message error",
            code::UPDATE_MESSAGE => "UPDATE message error",
            code::HOLD_TIMER_EXPIRED => "hold timer expired",
            code::FSM => "finite state machine error",
            code::CEASE => "cease",
            code::ROUTE_REFRESH => "ROUTE-REFRESH message error",
            _ => "unknown error code",
        }
    }

    /// The subcode's name under its code (RFC 4271 §6, RFC 4486, RFC 6608, RFC 8538), or
    /// "unspecific" for 0.
    pub fn subcode_name(&self) -> &'static str {
        match (self.code, self.subcode) {
            (code::MESSAGE_HEADER, 1) => "connection not synchronized",
            (code::MESSAGE_HEADER, 2) => "bad message length",
            (code::MESSAGE_HEADER, 3) => "bad message type",
            (code::OPEN_MESSAGE, 1) => "unsupported version number",
            (code::OPEN_MESSAGE, 2) => "bad peer AS",
            (code::OPEN_MESSAGE, 3) => "bad BGP identifier",
            (code::OPEN_MESSAGE, 4) => "unsupported optional parameter",
            (code::OPEN_MESSAGE, 6) => "unacceptable hold time",
            (code::OPEN_MESSAGE, 7) => "unsupported capability",
            (code::OPEN_MESSAGE, 11) => "role mismatch",
            (code::UPDATE_MESSAGE, s) => {
                UpdateSubcode::from_u8(s).map_or("unknown subcode", UpdateSubcode::name)
            }
            (code::FSM, 1) => "unexpected message in OpenSent",
            (code::FSM, 2) => "unexpected message in OpenConfirm",
            (code::FSM, 3) => "unexpected message in Established",
            (code::CEASE, 1) => "maximum number of prefixes reached",
            (code::CEASE, 2) => "administrative shutdown",
            (code::CEASE, 3) => "peer de-configured",
            (code::CEASE, 4) => "administrative reset",
            (code::CEASE, 5) => "connection rejected",
            (code::CEASE, 6) => "other configuration change",
            (code::CEASE, 7) => "connection collision resolution",
            (code::CEASE, 8) => "out of resources",
            (code::CEASE, 9) => "hard reset",
            (code::CEASE, 10) => "BFD down",
            (code::ROUTE_REFRESH, 1) => "invalid message length",
            (_, 0) => "unspecific",
            _ => "unknown subcode",
        }
    }
}

impl UpdateSubcode {
    /// The subcode with this number.
    pub fn from_u8(subcode: u8) -> Option<Self> {
        Some(match subcode {
            1 => Self::MalformedAttributeList,
            2 => Self::UnrecognizedWellKnownAttribute,
            3 => Self::MissingWellKnownAttribute,
            4 => Self::AttributeFlagsError,
            5 => Self::AttributeLengthError,
            6 => Self::InvalidOrigin,
            8 => Self::InvalidNextHop,
            9 => Self::OptionalAttributeError,
            10 => Self::InvalidNetworkField,
            11 => Self::MalformedAsPath,
            _ => return None,
        })
    }

    /// Its name in words (RFC 4271 §6.3).
    pub fn name(self) -> &'static str {
        match self {
            Self::MalformedAttributeList => "malformed attribute list",
            Self::UnrecognizedWellKnownAttribute => "unrecognized well-known attribute",
            Self::MissingWellKnownAttribute => "missing well-known attribute",
            Self::AttributeFlagsError => "attribute flags error",
            Self::AttributeLengthError => "attribute length error",
            Self::InvalidOrigin => "invalid ORIGIN attribute",
            Self::InvalidNextHop => "invalid NEXT_HOP attribute",
            Self::OptionalAttributeError => "optional attribute error",
            Self::InvalidNetworkField => "invalid network field",
            Self::MalformedAsPath => "malformed AS_PATH",
        }
    }
}

/// Octets as hex pairs, `40 01 01 07`, at most 32 of them.
pub fn hex(data: &[u8]) -> String {
    let mut out: Vec<String> = data.iter().take(32).map(|b| format!("{b:02x}")).collect();
    if data.len() > 32 {
        out.push(format!("… ({} octets)", data.len()));
    }
    out.join(" ")
}

/// `UPDATE message error / invalid ORIGIN attribute (3/6), data 40 01 01 07`.
impl std::fmt::Display for Notification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} / {} ({}/{})",
            self.code_name(),
            self.subcode_name(),
            self.code,
            self.subcode
        )?;
        match (self.code, self.subcode, self.data.as_slice()) {
            // RFC 4486 §4: AFI, SAFI and the limit.
            (code::CEASE, 1, &[a0, a1, safi, l0, l1, l2, l3]) => {
                let family = super::Family {
                    afi: u16::from_be_bytes([a0, a1]),
                    safi,
                };
                let limit = u32::from_be_bytes([l0, l1, l2, l3]);
                write!(f, ", {family}, limit {limit}")
            }
            (_, _, []) => Ok(()),
            (_, _, data) => write!(f, ", data {}", hex(data)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Message, decode, encode};

    #[test]
    fn a_notification_carries_code_subcode_and_data() {
        let n = Notification::update(UpdateSubcode::MissingWellKnownAttribute, vec![3]);
        let bytes =
            encode(&Message::Notification(n.clone()), &Context::default()).expect("encodes");
        assert_eq!(bytes.len(), 22);
        assert_eq!(&bytes[19..], &[3, 3, 3]);
        assert_eq!(
            decode(&bytes, &Context::default())
                .expect("decodes")
                .into_message(),
            Some(Message::Notification(n))
        );
    }

    #[test]
    fn notifications_read_in_words() {
        let n = Notification::update(UpdateSubcode::InvalidOrigin, vec![0x40, 1, 1, 7]);
        assert_eq!(
            n.to_string(),
            "UPDATE message error / invalid ORIGIN attribute (3/6), data 40 01 01 07"
        );
        let n = Notification::new(code::CEASE, 1, vec![0, 1, 1, 0, 0, 0, 10]);
        assert_eq!(
            n.to_string(),
            "cease / maximum number of prefixes reached (6/1), ipv4-unicast, limit 10"
        );
        assert_eq!(
            Notification::open(OpenSubcode::BadPeerAs, vec![0xfd, 0xe8]).to_string(),
            "OPEN message error / bad peer AS (2/2), data fd e8"
        );
        assert_eq!(
            Notification::hold_timer_expired().to_string(),
            "hold timer expired / unspecific (4/0)"
        );
        assert_eq!(
            Notification::new(99, 3, vec![]).to_string(),
            "unknown error code / unknown subcode (99/3)"
        );
    }

    #[test]
    fn unknown_codes_are_kept_as_received() {
        let n = Notification::new(200, 17, vec![1, 2, 3]);
        let bytes =
            encode(&Message::Notification(n.clone()), &Context::default()).expect("encodes");
        assert_eq!(
            decode(&bytes, &Context::default())
                .expect("decodes")
                .into_message(),
            Some(Message::Notification(n))
        );
    }

    #[test]
    fn version_error_is_recognised_for_the_fsm() {
        assert!(
            Notification::open(OpenSubcode::UnsupportedVersionNumber, vec![0, 4])
                .is_version_error()
        );
        assert!(!Notification::cease(CeaseSubcode::AdministrativeShutdown).is_version_error());
        assert!(
            Notification::cease(CeaseSubcode::ConnectionCollisionResolution)
                .is_cease(CeaseSubcode::ConnectionCollisionResolution)
        );
    }
}
