//! The service tests of proxy.rs in the routed mode: two nodes each running the BGP agent and
//! `trellis proxy`, pods wired by the routed plugin's configuration (/32 addresses, no bridge),
//! Services and EndpointSlices written through the API by the test. The service range is routed
//! only inside the nodes' namespaces, which the test made.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/routed_cluster.rs"]
mod cluster;
use cluster::{Cluster, Pod};

/// The proxy backend these tests run: iptables, explicitly (nftables is the default).
const PROXY_BACKEND: Option<&str> = Some("iptables");

include!("support/proxy_common.rs");
