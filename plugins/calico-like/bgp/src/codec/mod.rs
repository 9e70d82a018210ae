//! The BGP-4 message codec (RFC 4271 §4) with the extensions a routed CNI needs: capabilities
//! (RFC 5492), 4-octet AS numbers (RFC 6793), multiprotocol IPv4/IPv6 unicast (RFC 4760), route
//! refresh (RFC 2918), graceful restart (RFC 4724), route reflection attributes (RFC 4456), and
//! the revised UPDATE error handling of RFC 7606.
//!
//! Decoding is total: any input gives either a message or a typed error that names the
//! NOTIFICATION to send. Nothing here panics on wire data.
//!
//! ```text
//! Message header (RFC 4271 §4.1):
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                                                               |
//! +                                                               +
//! |                           Marker                              |
//! +                                                               +
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |          Length               |      Type     |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

pub mod attr;
pub mod capability;
pub mod notification;
pub mod open;
pub mod prefix;
pub mod update;

#[cfg(test)]
mod proptests;

pub use attr::{Aggregator, AsPath, Origin, PathAttributes, RawAttribute, Segment, SegmentKind};
pub use capability::{Capability, ExtendedNextHop, Family, GrFamily, GracefulRestartCap};
pub use notification::{
    CeaseSubcode, FsmSubcode, HeaderSubcode, Notification, OpenSubcode, UpdateSubcode,
};
pub use open::{AS_TRANS, Open};
pub use update::{MpReach, MpUnreach, Update};

use ipnet::IpNet;

/// Length of the fixed message header.
pub const HEADER_LEN: usize = 19;
/// Largest BGP message (RFC 4271 §4.1).
pub const MAX_MESSAGE_LEN: usize = 4096;

/// What a session has negotiated that changes how messages look on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Context {
    /// Both sides sent the 4-octet AS capability: AS_PATH and AGGREGATOR carry 4-octet AS
    /// numbers and AS4_PATH/AS4_AGGREGATOR are not used (RFC 6793).
    pub four_octet_as: bool,
}

/// Message type codes (RFC 4271 §4.1, RFC 2918).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageType {
    /// OPEN.
    Open = 1,
    /// UPDATE.
    Update = 2,
    /// NOTIFICATION.
    Notification = 3,
    /// KEEPALIVE.
    Keepalive = 4,
    /// ROUTE-REFRESH.
    RouteRefresh = 5,
}

impl MessageType {
    fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::Open,
            2 => Self::Update,
            3 => Self::Notification,
            4 => Self::Keepalive,
            5 => Self::RouteRefresh,
            _ => return None,
        })
    }

    /// The length bounds RFC 4271 §6.1 (and RFC 2918 for ROUTE-REFRESH) allow for this type.
    fn length_bounds(self) -> (usize, usize) {
        match self {
            Self::Open => (29, MAX_MESSAGE_LEN),
            Self::Update => (23, MAX_MESSAGE_LEN),
            Self::Notification => (21, MAX_MESSAGE_LEN),
            Self::Keepalive => (HEADER_LEN, HEADER_LEN),
            // RFC 7313 §5 makes a wrong length a ROUTE-REFRESH error, checked in the body.
            Self::RouteRefresh => (HEADER_LEN, MAX_MESSAGE_LEN),
        }
    }
}

/// A BGP message.
// Messages are transient (decoded, handled, dropped): boxing UPDATE would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// OPEN.
    Open(Open),
    /// UPDATE.
    Update(Update),
    /// NOTIFICATION.
    Notification(Notification),
    /// KEEPALIVE.
    Keepalive,
    /// ROUTE-REFRESH.
    RouteRefresh(RouteRefresh),
}

impl Message {
    /// The message type code.
    pub fn message_type(&self) -> MessageType {
        match self {
            Self::Open(_) => MessageType::Open,
            Self::Update(_) => MessageType::Update,
            Self::Notification(_) => MessageType::Notification,
            Self::Keepalive => MessageType::Keepalive,
            Self::RouteRefresh(_) => MessageType::RouteRefresh,
        }
    }
}

/// ROUTE-REFRESH (RFC 2918): asks the peer to send its Adj-RIB-Out for one family again.
///
/// ```text
///  0       7      15      23      31
/// +-------+-------+-------+-------+
/// |      AFI      | Res.  | SAFI  |
/// +-------+-------+-------+-------+
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRefresh {
    /// The family to refresh.
    pub family: Family,
    /// Reserved in RFC 2918; the message subtype in RFC 7313. Kept as received.
    pub subtype: u8,
}

/// The outcome of decoding one received message under RFC 7606.
///
/// A session reset is the `Err` side of [`decode`]; the two milder outcomes only arise for
/// UPDATE messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A well-formed message.
    Message(Message),
    /// RFC 7606 "attribute discard": the listed malformed or duplicated attributes were
    /// dropped; the rest of the UPDATE is to be processed normally.
    AttributeDiscard {
        /// The UPDATE without the discarded attributes.
        update: Update,
        /// What was discarded, and why.
        errors: Vec<UpdateError>,
    },
    /// RFC 7606 "treat-as-withdraw": every prefix the UPDATE carried, announced or withdrawn,
    /// is to be withdrawn; the session stays up.
    TreatAsWithdraw {
        /// All prefixes in the message (withdrawn routes, NLRI, MP_REACH and MP_UNREACH).
        withdrawn: Vec<IpNet>,
        /// The errors that called for it.
        errors: Vec<UpdateError>,
    },
}

impl Decoded {
    /// The message, if it was well formed.
    pub fn into_message(self) -> Option<Message> {
        match self {
            Self::Message(message) => Some(message),
            _ => None,
        }
    }
}

/// RFC 7606 §2 error-handling approaches, weakest first. When an UPDATE has several errors the
/// strongest approach wins (RFC 7606 §3 f).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorAction {
    /// Drop the attribute, keep the route.
    AttributeDiscard,
    /// Withdraw every prefix in the UPDATE.
    TreatAsWithdraw,
    /// Send a NOTIFICATION and close the session.
    SessionReset,
}

/// One error in an UPDATE, with the RFC 4271 subcode and data a NOTIFICATION would carry and the
/// RFC 7606 approach that applies to it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} ({}){}", subcode.name(), action.name(), describe_data(data))]
pub struct UpdateError {
    /// The RFC 4271 §6.3 subcode.
    pub subcode: UpdateSubcode,
    /// NOTIFICATION data (usually the offending attribute, or its type code).
    pub data: Vec<u8>,
    /// What RFC 7606 says to do about it.
    pub action: ErrorAction,
}

fn describe_data(data: &[u8]) -> String {
    if data.is_empty() {
        String::new()
    } else {
        format!(", data {}", notification::hex(data))
    }
}

/// Several errors in words, `; ` between them (for logs and `last_error`).
pub fn describe_errors(errors: &[UpdateError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl ErrorAction {
    /// What it does, in words.
    pub fn name(self) -> &'static str {
        match self {
            Self::AttributeDiscard => "attribute discarded",
            Self::TreatAsWithdraw => "treated as withdraw",
            Self::SessionReset => "session reset",
        }
    }
}

impl UpdateError {
    pub(crate) fn new(subcode: UpdateSubcode, data: Vec<u8>, action: ErrorAction) -> Self {
        Self {
            subcode,
            data,
            action,
        }
    }

    pub(crate) fn reset(subcode: UpdateSubcode, data: Vec<u8>) -> Self {
        Self::new(subcode, data, ErrorAction::SessionReset)
    }

    /// The NOTIFICATION for this error.
    pub fn notification(&self) -> Notification {
        Notification::update(self.subcode, self.data.clone())
    }
}

/// Message header errors (RFC 4271 §6.1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The marker is not all ones.
    #[error("connection not synchronized (bad marker)")]
    ConnectionNotSynchronized,
    /// The length field is out of range for this message type.
    #[error("bad message length {0}")]
    BadLength(u16),
    /// Unknown message type.
    #[error("bad message type {0}")]
    BadType(u8),
}

/// An OPEN message error (RFC 4271 §6.2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("OPEN message error {subcode:?}")]
pub struct OpenError {
    /// The subcode.
    pub subcode: OpenSubcode,
    /// NOTIFICATION data.
    pub data: Vec<u8>,
}

impl OpenError {
    pub(crate) fn new(subcode: OpenSubcode, data: Vec<u8>) -> Self {
        Self { subcode, data }
    }
}

/// A received message that calls for a session reset; [`DecodeError::notification`] is the
/// NOTIFICATION to send before closing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Message header error (FSM event BGPHeaderErr).
    #[error("{0}")]
    Header(HeaderError),
    /// OPEN message error (FSM event BGPOpenMsgErr).
    #[error("{0}")]
    Open(OpenError),
    /// UPDATE message error that RFC 7606 still answers with a session reset (FSM event
    /// UpdateMsgErr).
    #[error("{0}")]
    Update(UpdateError),
    /// ROUTE-REFRESH whose length is not 23 (RFC 7313 §5); carries the whole message.
    #[error("ROUTE-REFRESH message with invalid length")]
    RouteRefreshLength(Vec<u8>),
}

impl DecodeError {
    /// The NOTIFICATION that answers this error.
    pub fn notification(&self) -> Notification {
        match self {
            Self::Header(HeaderError::ConnectionNotSynchronized) => {
                Notification::header(HeaderSubcode::ConnectionNotSynchronized, Vec::new())
            }
            Self::Header(HeaderError::BadLength(len)) => {
                Notification::header(HeaderSubcode::BadMessageLength, len.to_be_bytes().to_vec())
            }
            Self::Header(HeaderError::BadType(t)) => {
                Notification::header(HeaderSubcode::BadMessageType, vec![*t])
            }
            Self::Open(e) => Notification::open(e.subcode, e.data.clone()),
            Self::Update(e) => e.notification(),
            Self::RouteRefreshLength(message) => {
                Notification::new(notification::code::ROUTE_REFRESH, 1, message.clone())
            }
        }
    }
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The message would exceed 4096 octets; split it.
    #[error("message of {0} octets exceeds the 4096-octet maximum")]
    TooLong(usize),
    /// An optional parameter or capability longer than its one-octet length field.
    #[error("{0} too long for its length field")]
    FieldTooLong(&'static str),
}

/// Checks the header at the start of `buf` (RFC 4271 §6.1) and returns the whole message
/// length once 19 octets are available, so a reader knows how much more to read.
pub fn frame_length(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    if header[..16].iter().any(|b| *b != 0xff) {
        return Err(DecodeError::Header(HeaderError::ConnectionNotSynchronized));
    }
    let length = u16::from_be_bytes([header[16], header[17]]);
    let Some(kind) = MessageType::from_u8(header[18]) else {
        // The length is checked first when it is out of any range: a bad length makes the
        // type octet itself suspect.
        if usize::from(length) < HEADER_LEN || usize::from(length) > MAX_MESSAGE_LEN {
            return Err(DecodeError::Header(HeaderError::BadLength(length)));
        }
        return Err(DecodeError::Header(HeaderError::BadType(header[18])));
    };
    let (min, max) = kind.length_bounds();
    if usize::from(length) < min || usize::from(length) > max {
        return Err(DecodeError::Header(HeaderError::BadLength(length)));
    }
    Ok(Some(usize::from(length)))
}

/// Decodes one whole message (header included).
pub fn decode(frame: &[u8], cx: &Context) -> Result<Decoded, DecodeError> {
    let length = match frame_length(frame)? {
        Some(length) => length,
        None => {
            return Err(DecodeError::Header(HeaderError::BadLength(
                frame.len() as u16
            )));
        }
    };
    if length != frame.len() {
        return Err(DecodeError::Header(HeaderError::BadLength(length as u16)));
    }
    let body = &frame[HEADER_LEN..];
    // frame_length accepted the type octet, so this lookup cannot fail; stay total anyway.
    let kind = MessageType::from_u8(frame[18])
        .ok_or(DecodeError::Header(HeaderError::BadType(frame[18])))?;
    Ok(match kind {
        MessageType::Open => Decoded::Message(Message::Open(Open::decode_body(body)?)),
        MessageType::Update => update::decode_body(body, cx)?,
        MessageType::Notification => {
            Decoded::Message(Message::Notification(Notification::decode_body(body, cx)?))
        }
        MessageType::Keepalive => Decoded::Message(Message::Keepalive),
        MessageType::RouteRefresh => match body {
            [a, b, subtype, safi] => Decoded::Message(Message::RouteRefresh(RouteRefresh {
                family: Family::new(u16::from_be_bytes([*a, *b]), *safi),
                subtype: *subtype,
            })),
            _ => return Err(DecodeError::RouteRefreshLength(frame.to_vec())),
        },
    })
}

/// Encodes one message, header included.
pub fn encode(message: &Message, cx: &Context) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&[0xff; 16]);
    out.extend_from_slice(&[0, 0]);
    out.push(message.message_type() as u8);
    match message {
        Message::Open(open) => open.encode_body(&mut out)?,
        Message::Update(update) => update.encode_body(&mut out, cx)?,
        Message::Notification(n) => n.encode_body(&mut out),
        Message::Keepalive => {}
        Message::RouteRefresh(rr) => {
            out.extend_from_slice(&rr.family.afi.to_be_bytes());
            out.push(rr.subtype);
            out.push(rr.family.safi);
        }
    }
    if out.len() > MAX_MESSAGE_LEN {
        return Err(EncodeError::TooLong(out.len()));
    }
    let len = (out.len() as u16).to_be_bytes();
    out[16] = len[0];
    out[17] = len[1];
    Ok(out)
}

/// A bounds-checked reader over wire data: every read returns `None` instead of panicking.
#[derive(Debug, Clone)]
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn rest(&self) -> &'a [u8] {
        self.buf
    }

    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.buf.len() {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(length: u16, kind: u8) -> Vec<u8> {
        let mut b = vec![0xff; 16];
        b.extend_from_slice(&length.to_be_bytes());
        b.push(kind);
        b
    }

    #[test]
    fn a_keepalive_is_a_bare_19_octet_header() {
        let bytes = encode(&Message::Keepalive, &Context::default()).expect("encodes");
        assert_eq!(bytes, header(19, 4));
        assert_eq!(
            decode(&bytes, &Context::default()),
            Ok(Decoded::Message(Message::Keepalive))
        );
    }

    #[test]
    fn a_marker_that_is_not_all_ones_means_connection_not_synchronized() {
        let mut bytes = header(19, 4);
        bytes[3] = 0;
        let err = decode(&bytes, &Context::default()).expect_err("rejected");
        assert_eq!(
            err,
            DecodeError::Header(HeaderError::ConnectionNotSynchronized)
        );
        let n = err.notification();
        assert_eq!((n.code, n.subcode), (1, 1));
    }

    #[test]
    fn a_length_below_19_or_above_4096_is_a_bad_message_length_carrying_the_length() {
        for length in [0u16, 18, 4097, u16::MAX] {
            let err = frame_length(&header(length, 4)).expect_err("rejected");
            assert_eq!(err, DecodeError::Header(HeaderError::BadLength(length)));
            let n = err.notification();
            assert_eq!(
                (n.code, n.subcode, n.data),
                (1, 2, length.to_be_bytes().to_vec())
            );
        }
    }

    #[test]
    fn each_type_has_its_own_minimum_length() {
        // OPEN < 29, UPDATE < 23, NOTIFICATION < 21, KEEPALIVE != 19.
        for (kind, bad) in [(1u8, 28u16), (2, 22), (3, 20), (4, 20)] {
            assert_eq!(
                frame_length(&header(bad, kind)),
                Err(DecodeError::Header(HeaderError::BadLength(bad))),
                "type {kind}"
            );
        }
        assert_eq!(frame_length(&header(29, 1)), Ok(Some(29)));
    }

    #[test]
    fn an_unknown_type_is_a_bad_message_type_carrying_the_type() {
        let err = frame_length(&header(19, 9)).expect_err("rejected");
        assert_eq!(err, DecodeError::Header(HeaderError::BadType(9)));
        assert_eq!(err.notification().data, vec![9]);
    }

    #[test]
    fn a_frame_whose_length_field_disagrees_with_its_size_is_rejected() {
        let mut bytes = header(19, 4);
        bytes.push(0);
        assert_eq!(
            decode(&bytes, &Context::default()),
            Err(DecodeError::Header(HeaderError::BadLength(19)))
        );
        assert!(decode(&bytes[..10], &Context::default()).is_err());
    }

    #[test]
    fn frame_length_waits_for_a_whole_header() {
        assert_eq!(frame_length(&[0xff; 18]), Ok(None));
    }

    #[test]
    fn route_refresh_round_trips_and_a_wrong_length_is_a_route_refresh_error() {
        let rr = Message::RouteRefresh(RouteRefresh {
            family: Family::IPV6_UNICAST,
            subtype: 0,
        });
        let bytes = encode(&rr, &Context::default()).expect("encodes");
        assert_eq!(&bytes[16..], &[0, 23, 5, 0, 2, 0, 1]);
        assert_eq!(
            decode(&bytes, &Context::default()),
            Ok(Decoded::Message(rr))
        );

        let mut long = header(24, 5);
        long.extend_from_slice(&[0, 1, 0, 1, 0]);
        let n = decode(&long, &Context::default())
            .expect_err("rejected")
            .notification();
        assert_eq!((n.code, n.subcode, n.data), (7, 1, long));
    }
}
