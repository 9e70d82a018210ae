//! trellis-policyd: NetworkPolicy and the ClusterNetworkPolicy admin tiers, enforced per node
//! with iptables chains and ipsets, committed before a pod's first packet.
//!
//! - [`netpol`], [`cnp`]: the two policy kinds, parsed strictly into [`rules`] (what cannot be
//!   enforced fails closed).
//! - [`model`]: the cluster as policyd sees it; [`eval`]: the semantics (explain answers from
//!   it; the compiler is tested against it).
//! - [`compile`]: model → one node's [`xt::Program`] (chains and sets, deterministic names:
//!   [`names`]), or for pod events only a [`compile::Plan`] (the set members they change, and a
//!   local pod's own chains); [`sync`]: commits a program with one `iptables-restore` of the
//!   changed chains, or a plan; [`verify`]: puts back what someone else removed.
//! - [`daemon`]: watches, the gate, /healthz /readyz /metrics /explain.

pub mod cnp;
pub mod compile;
pub mod daemon;
pub mod eval;
pub mod explain;
pub mod gate;
mod gate_server;
mod http;
pub mod kernel;
pub mod metrics;
pub mod model;
pub mod names;
pub mod netpol;
pub mod rules;
pub mod sync;
#[cfg(test)]
mod tests;
pub mod verify;
pub mod watch;
pub mod xt;
