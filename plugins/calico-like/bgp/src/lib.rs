//! `trellis-bgp`: a BGP-4 speaker of our own for the routed (calico-like) network mode.
//!
//! - [`codec`]: messages on the wire, with RFC 7606 error handling.
//! - [`fsm`]: the RFC 4271 §8 state machine as a pure transition function, with hold-time
//!   negotiation, ConnectRetry backoff and collision resolution.
//! - [`rib`]: Adj-RIB-In, Loc-RIB with the decision process, Adj-RIB-Out with export rules,
//!   route reflection and graceful restart, as plain data.
//! - [`speaker`]: the async (tokio) API an agent drives: peers, local prefixes, a stream of
//!   Loc-RIB changes to install, and per-peer status.
//!
//! The layers only depend downward (speaker → rib, fsm → codec), so each is tested alone and
//! the speaker's tests run real sessions over loopback TCP.

pub mod codec;
pub mod filter;
pub mod fsm;
pub mod rib;
pub mod speaker;

pub use filter::{PrefixFilter, PrefixRule, Verdict};
pub use rib::{BestRoute, LocRibChange, RoutePolicy, Source};
pub use speaker::{
    DeferralEnd, FailureHandle, MaxPrefixes, Md5Key, Negotiated, PeerConfig, PeerStatus, Recovery,
    RecoveryStatus, RouteChange, Speaker, SpeakerConfig, SpeakerError, Subscription,
};
