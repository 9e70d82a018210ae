//! The service tests of proxy_routed.rs with the default backend, nftables (no `--backend`):
//! two nodes each running the BGP agent and `trellis proxy`, pods wired by the routed plugin's
//! configuration — the same assertions as the iptables backend's in the routed mode.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/routed_cluster.rs"]
mod cluster;
use cluster::{Cluster, Pod};

/// The proxy backend these tests run: the default, nftables (no `--backend`).
const PROXY_BACKEND: Option<&str> = None;

include!("support/proxy_common.rs");
