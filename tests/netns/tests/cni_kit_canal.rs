//! The conformance kit against `trellis-canal` at every version, with no deviation allowed:
//! trellis-ipam hands out the addresses through a real `trellis ipamd` (standalone store) whose
//! pool is cut in /26 blocks with nothing reserved (the plugin narrows each address to a /32, as
//! trellis-routed does). The readiness state stands in for the overlay agent in canal mode.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use netns_testbed::cluster::kit_with_trellis_ipam;
use netns_testbed::require_root;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trellis_canal_passes_the_kit_with_trellis_ipam_at_every_version() {
    require_root();
    let pool = ["--cidr", "10.95.0.0/24", "--block-size", "26"];
    let verdict = kit_with_trellis_ipam("trellis-canal", json!({"mtu": 1450}), &pool).await;
    verdict.unwrap();
}
