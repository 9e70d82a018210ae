//! The service tests of proxy.rs with the nftables backend (`trellis proxy --backend
//! nftables`), on the overlay: ClusterIP spread, endpoint moves, rejects, hairpin, session
//! affinity, the traffic policies, node ports from another node and from outside, and DNS
//! through the kube-dns Service — the same assertions as the iptables backend's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/overlay_cluster.rs"]
mod cluster;
use cluster::{Cluster, Pod};

/// The proxy backend these tests run.
const PROXY_BACKEND: &str = "nftables";

include!("support/proxy_common.rs");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_rules_until_the_new_state_swaps_in_and_touches_only_our_chains() {
    restart_keeps_rules().await;
}
