//! `trellis-bfd`: Bidirectional Forwarding Detection (RFC 5880) for single-hop IP (RFC 5881),
//! asynchronous mode, no authentication — what the routed mode needs to notice a dead link to
//! a BGP peer in under a second instead of a hold time.
//!
//! - [`packet`]: the control packet (the mandatory section) on the wire.
//! - [`session`]: one session's state machine and timers (RFC 5880 §6.8) as plain data driven
//!   by explicit instants, so every transition and deadline is tested without sleeping.
//! - [`driver`]: the UDP side (RFC 5881: port 3784, source ports 49152–65535, TTL 255 sent and
//!   required on receipt) and a tokio task running every session, with a stream of state
//!   changes for the BGP agent.
//!
//! The layers depend downward only (driver → session → packet).

pub mod driver;
pub mod packet;
pub mod session;

pub use driver::{Bfd, BfdError, SessionEvent, SessionStatus};
pub use packet::{Diagnostic, Packet, PacketError, State};
pub use session::{Intervals, Session};
