//! `trellis proxy` end to end on the overlay: an API server, two nodes each running the
//! overlay agent and the proxy, pods wired by the real CNI configuration. There is no kubelet
//! or EndpointSlice controller here, so the tests write Services and EndpointSlices through
//! the API as those would, and the "containers" are TCP servers the test runs in the pods'
//! namespaces. The service range is routed only inside the nodes' namespaces, which the test
//! made (a node needs a route for a ClusterIP it rejects, as kube-proxy's nodes have their
//! default route).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/overlay_cluster.rs"]
mod cluster;
use cluster::{Cluster, Pod};

/// The proxy backend these tests run: iptables, explicitly (nftables is the default).
const PROXY_BACKEND: Option<&str> = Some("iptables");

include!("support/proxy_common.rs");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_rules_until_the_new_state_swaps_in_and_touches_only_our_chains() {
    restart_keeps_rules().await;
}
