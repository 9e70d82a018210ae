//! The BFD control packet (RFC 5880 §4.1), mandatory section only: authentication is not
//! supported, so a packet with the A bit set is refused like a malformed one (§6.8.6: a
//! system that does not authenticate discards it).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! |Vers |  Diag   |Sta|P|F|C|A|D|M|  Detect Mult  |    Length     |
//! |                       My Discriminator                        |
//! |                      Your Discriminator                       |
//! |                    Desired Min TX Interval                    |
//! |                   Required Min RX Interval                    |
//! |                 Required Min Echo RX Interval                 |
//! ```

use std::fmt;

/// The protocol version this codec speaks.
pub const VERSION: u8 = 1;
/// The mandatory section's length, and so every packet we send.
pub const LEN: usize = 24;

/// A session state (§4.1 "Sta").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Administratively held down: no failure, the session is off on purpose.
    AdminDown,
    /// Down, or never up.
    Down,
    /// We hear the remote system; it has not said it hears us.
    Init,
    /// Both directions work.
    Up,
}

impl State {
    fn from_bits(bits: u8) -> State {
        match bits & 0b11 {
            0 => State::AdminDown,
            1 => State::Down,
            2 => State::Init,
            _ => State::Up,
        }
    }

    fn bits(self) -> u8 {
        match self {
            State::AdminDown => 0,
            State::Down => 1,
            State::Init => 2,
            State::Up => 3,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::AdminDown => "AdminDown",
            State::Down => "Down",
            State::Init => "Init",
            State::Up => "Up",
        })
    }
}

/// Why a session last left Up (§4.1 "Diag"). Values 9–31 are reserved and kept as they came.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Diagnostic {
    /// 0.
    None,
    /// 1: no packet for the detection time.
    ControlDetectionTimeExpired,
    /// 2.
    EchoFunctionFailed,
    /// 3: the remote system said it went down.
    NeighborSignaledSessionDown,
    /// 4.
    ForwardingPlaneReset,
    /// 5.
    PathDown,
    /// 6.
    ConcatenatedPathDown,
    /// 7: switched off on purpose.
    AdministrativelyDown,
    /// 8.
    ReverseConcatenatedPathDown,
    /// 9–31.
    Reserved(u8),
}

impl Diagnostic {
    fn from_bits(bits: u8) -> Diagnostic {
        match bits & 0x1f {
            0 => Diagnostic::None,
            1 => Diagnostic::ControlDetectionTimeExpired,
            2 => Diagnostic::EchoFunctionFailed,
            3 => Diagnostic::NeighborSignaledSessionDown,
            4 => Diagnostic::ForwardingPlaneReset,
            5 => Diagnostic::PathDown,
            6 => Diagnostic::ConcatenatedPathDown,
            7 => Diagnostic::AdministrativelyDown,
            8 => Diagnostic::ReverseConcatenatedPathDown,
            n => Diagnostic::Reserved(n),
        }
    }

    /// The code on the wire.
    pub fn code(self) -> u8 {
        match self {
            Diagnostic::None => 0,
            Diagnostic::ControlDetectionTimeExpired => 1,
            Diagnostic::EchoFunctionFailed => 2,
            Diagnostic::NeighborSignaledSessionDown => 3,
            Diagnostic::ForwardingPlaneReset => 4,
            Diagnostic::PathDown => 5,
            Diagnostic::ConcatenatedPathDown => 6,
            Diagnostic::AdministrativelyDown => 7,
            Diagnostic::ReverseConcatenatedPathDown => 8,
            Diagnostic::Reserved(n) => n & 0x1f,
        }
    }
}

impl fmt::Display for Diagnostic {
    /// In words, as logs and `trellis bgp status` show it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Diagnostic::None => f.write_str("no diagnostic"),
            Diagnostic::ControlDetectionTimeExpired => {
                f.write_str("control detection time expired")
            }
            Diagnostic::EchoFunctionFailed => f.write_str("echo function failed"),
            Diagnostic::NeighborSignaledSessionDown => {
                f.write_str("neighbor signaled session down")
            }
            Diagnostic::ForwardingPlaneReset => f.write_str("forwarding plane reset"),
            Diagnostic::PathDown => f.write_str("path down"),
            Diagnostic::ConcatenatedPathDown => f.write_str("concatenated path down"),
            Diagnostic::AdministrativelyDown => f.write_str("administratively down"),
            Diagnostic::ReverseConcatenatedPathDown => {
                f.write_str("reverse concatenated path down")
            }
            Diagnostic::Reserved(n) => write!(f, "reserved diagnostic {n}"),
        }
    }
}

/// A control packet's mandatory section. Intervals are in microseconds, as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub diag: Diagnostic,
    pub state: State,
    /// Poll: the sender asks for a Final (it changed its intervals).
    pub poll: bool,
    /// Final: the answer to a Poll.
    pub fin: bool,
    /// Control plane independent. We are not (BFD runs in the agent), so we send 0.
    pub control_plane_independent: bool,
    /// Demand mode (not supported: we run asynchronous mode and never set it).
    pub demand: bool,
    pub detect_mult: u8,
    pub my_discr: u32,
    pub your_discr: u32,
    pub desired_min_tx_us: u32,
    pub required_min_rx_us: u32,
    pub required_min_echo_rx_us: u32,
}

/// Why a received packet is discarded (§6.8.6, the checks that need no session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("shorter than a control packet: {0} octets")]
    Truncated(usize),
    #[error("version {0}, not 1")]
    Version(u8),
    #[error("length field {0} is below 24")]
    LengthTooShort(u8),
    #[error("length field {field} exceeds the {payload} octets received")]
    LengthExceedsPayload { field: u8, payload: usize },
    #[error("detect multiplier is zero")]
    ZeroDetectMult,
    #[error("the multipoint bit is set")]
    Multipoint,
    #[error("my discriminator is zero")]
    ZeroMyDiscriminator,
    #[error("your discriminator is zero in state {0}")]
    ZeroYourDiscriminator(State),
    #[error("authenticated packet, and authentication is not configured")]
    Authenticated,
}

impl Packet {
    /// Decodes and runs the reception checks of §6.8.6 that concern the packet alone.
    pub fn decode(buf: &[u8]) -> Result<Packet, PacketError> {
        let Some(head) = buf.get(..LEN) else {
            return Err(PacketError::Truncated(buf.len()));
        };
        let word = |i: usize| u32::from_be_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        let version = head[0] >> 5;
        if version != VERSION {
            return Err(PacketError::Version(version));
        }
        let flags = head[1];
        let length = head[3];
        let auth = flags & 0x04 != 0;
        // A packet that claims authentication is refused before its length is judged: we
        // could not check it anyway.
        if auth {
            return Err(PacketError::Authenticated);
        }
        if usize::from(length) < LEN {
            return Err(PacketError::LengthTooShort(length));
        }
        if usize::from(length) > buf.len() {
            return Err(PacketError::LengthExceedsPayload {
                field: length,
                payload: buf.len(),
            });
        }
        let packet = Packet {
            diag: Diagnostic::from_bits(head[0]),
            state: State::from_bits(flags >> 6),
            poll: flags & 0x20 != 0,
            fin: flags & 0x10 != 0,
            control_plane_independent: flags & 0x08 != 0,
            demand: flags & 0x02 != 0,
            detect_mult: head[2],
            my_discr: word(4),
            your_discr: word(8),
            desired_min_tx_us: word(12),
            required_min_rx_us: word(16),
            required_min_echo_rx_us: word(20),
        };
        if flags & 0x01 != 0 {
            return Err(PacketError::Multipoint);
        }
        if packet.detect_mult == 0 {
            return Err(PacketError::ZeroDetectMult);
        }
        if packet.my_discr == 0 {
            return Err(PacketError::ZeroMyDiscriminator);
        }
        if packet.your_discr == 0 && !matches!(packet.state, State::Down | State::AdminDown) {
            return Err(PacketError::ZeroYourDiscriminator(packet.state));
        }
        Ok(packet)
    }

    /// The 24 octets on the wire.
    pub fn encode(&self) -> [u8; LEN] {
        let mut out = [0u8; LEN];
        out[0] = (VERSION << 5) | self.diag.code();
        out[1] = (self.state.bits() << 6)
            | (u8::from(self.poll) << 5)
            | (u8::from(self.fin) << 4)
            | (u8::from(self.control_plane_independent) << 3)
            | (u8::from(self.demand) << 1);
        out[2] = self.detect_mult;
        out[3] = LEN as u8;
        out[4..8].copy_from_slice(&self.my_discr.to_be_bytes());
        out[8..12].copy_from_slice(&self.your_discr.to_be_bytes());
        out[12..16].copy_from_slice(&self.desired_min_tx_us.to_be_bytes());
        out[16..20].copy_from_slice(&self.required_min_rx_us.to_be_bytes());
        out[20..24].copy_from_slice(&self.required_min_echo_rx_us.to_be_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up() -> Packet {
        Packet {
            diag: Diagnostic::None,
            state: State::Up,
            poll: false,
            fin: false,
            control_plane_independent: false,
            demand: false,
            detect_mult: 3,
            my_discr: 0x0102_0304,
            your_discr: 0x0a0b_0c0d,
            desired_min_tx_us: 300_000,
            required_min_rx_us: 300_000,
            required_min_echo_rx_us: 0,
        }
    }

    #[test]
    fn a_packet_is_24_octets_in_network_order() {
        let bytes = up().encode();
        assert_eq!(
            bytes,
            [
                0x20, 0xc0, 3, 24, 1, 2, 3, 4, 0x0a, 0x0b, 0x0c, 0x0d, 0, 0x04, 0x93, 0xe0, 0,
                0x04, 0x93, 0xe0, 0, 0, 0, 0
            ]
        );
        assert_eq!(Packet::decode(&bytes), Ok(up()));
    }

    #[test]
    fn every_state_diagnostic_and_flag_round_trips() {
        for state in [State::AdminDown, State::Down, State::Init, State::Up] {
            for code in 0..32u8 {
                for (poll, fin, cpi) in [
                    (false, false, false),
                    (true, false, true),
                    (false, true, false),
                ] {
                    let p = Packet {
                        state,
                        diag: Diagnostic::from_bits(code),
                        poll,
                        fin,
                        control_plane_independent: cpi,
                        your_discr: 7,
                        ..up()
                    };
                    assert_eq!(Packet::decode(&p.encode()), Ok(p));
                    assert_eq!(p.diag.code(), code);
                }
            }
        }
    }

    #[test]
    fn a_longer_datagram_is_read_up_to_its_length_field() {
        let mut bytes = up().encode().to_vec();
        bytes.extend_from_slice(&[0xff; 8]);
        assert_eq!(Packet::decode(&bytes), Ok(up()));
    }

    /// §6.8.6: each of these is discarded.
    #[test]
    fn malformed_packets_are_discarded_with_the_rfcs_reason() {
        let good = up().encode();
        let with = |f: &dyn Fn(&mut [u8; LEN])| {
            let mut b = good;
            f(&mut b);
            Packet::decode(&b)
        };
        assert_eq!(Packet::decode(&good[..23]), Err(PacketError::Truncated(23)));
        assert_eq!(with(&|b| b[0] = 0x40), Err(PacketError::Version(2)));
        assert_eq!(with(&|b| b[0] = 0x00), Err(PacketError::Version(0)));
        assert_eq!(with(&|b| b[3] = 20), Err(PacketError::LengthTooShort(20)));
        assert_eq!(
            with(&|b| b[3] = 26),
            Err(PacketError::LengthExceedsPayload {
                field: 26,
                payload: 24
            })
        );
        assert_eq!(with(&|b| b[2] = 0), Err(PacketError::ZeroDetectMult));
        assert_eq!(with(&|b| b[1] |= 0x01), Err(PacketError::Multipoint));
        assert_eq!(
            with(&|b| b[4..8].fill(0)),
            Err(PacketError::ZeroMyDiscriminator)
        );
        assert_eq!(
            with(&|b| b[8..12].fill(0)),
            Err(PacketError::ZeroYourDiscriminator(State::Up))
        );
        assert_eq!(with(&|b| b[1] |= 0x04), Err(PacketError::Authenticated));
        // A zero Your Discriminator is how a Down system starts: accepted.
        let down = with(&|b| {
            b[1] = 0x40;
            b[8..12].fill(0);
        })
        .expect("a Down packet without your discriminator");
        assert_eq!(down.state, State::Down);
    }

    #[test]
    fn diagnostics_read_in_words() {
        assert_eq!(
            Diagnostic::ControlDetectionTimeExpired.to_string(),
            "control detection time expired"
        );
        assert_eq!(
            Diagnostic::NeighborSignaledSessionDown.to_string(),
            "neighbor signaled session down"
        );
        assert_eq!(
            Diagnostic::Reserved(12).to_string(),
            "reserved diagnostic 12"
        );
    }
}
