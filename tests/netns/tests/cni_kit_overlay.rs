//! The conformance kit against `trellis-overlay` at every version it claims, with no deviation
//! allowed. The readiness state stands in for the overlay agent (what it writes once the
//! node's data path is in place); host-local hands out the addresses up to 1.0.0, which is as
//! far as Debian's host-local goes; every version, 1.1.0 included, runs again with trellis-ipam
//! through a real `trellis ipamd` (standalone store) whose pool is the node's block.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use netns_testbed::cni_kit::{self, PluginUnderTest};

use netns_testbed::cluster::StandaloneIpamd;
use netns_testbed::{REFERENCE_PLUGIN_DIR, Testbed, bin_dir, require_root, require_tool};
use serde_json::json;
use trellis_cni::Version;

/// Writes the agent's readiness state under `dir` (idempotent) and returns its directory.
fn ready_state(dir: &std::path::Path) -> PathBuf {
    let state = dir.join("overlay");
    let file = state.join("ready.json");
    if !file.is_file() {
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(
            &file,
            json!({"block": "10.98.0.0/24", "cluster_cidr": "10.98.0.0/16", "mtu": 1450, "bridge": "kittr0"})
                .to_string(),
        )
        .unwrap();
    }
    state
}

fn overlay_with_host_local() -> PluginUnderTest {
    PluginUnderTest {
        label: "trellis-overlay + host-local".into(),
        plugin: "trellis-overlay".into(),
        cni_path: vec![bin_dir(), PathBuf::from(REFERENCE_PLUGIN_DIR)],
        versions: Version::ALL
            .into_iter()
            .filter(|v| *v <= Version::V1_0_0)
            .collect(),
        config: Box::new(|ctx, v| {
            json!({
                "cniVersion": v.as_str(),
                "name": "kitnet",
                "type": "trellis-overlay",
                "stateDir": ready_state(&ctx.state_dir),
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "10.98.0.0/24", "rangeStart": "10.98.0.2", "rangeEnd": "10.98.0.254", "gateway": "10.98.0.1"}]],
                    "dataDir": ctx.state_dir.join("host-local"),
                }
            })
        }),
        // GC is 1.1.0, beyond Debian's host-local.
        allocations: None,
        deviations: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trellis_overlay_passes_the_kit_with_host_local() {
    require_root();
    require_tool("host-local", "containernetworking-plugins");
    let put = overlay_with_host_local();
    let report = cni_kit::run(&put).await.unwrap();
    for f in &report.findings {
        eprintln!("[{} {}] {}", f.version, f.rule, f.problem);
    }
    assert!(report.checks > 50, "the kit ran ({} checks)", report.checks);
    report.assert_conformant(&put);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trellis_overlay_passes_the_kit_with_trellis_ipam_at_every_version() {
    require_root();
    // ipamd runs in a namespace of its own; its unix socket is reachable from every namespace.
    let tb = Testbed::new().unwrap();
    let ipamd = StandaloneIpamd::start(
        &tb,
        "kit",
        &[
            "--cidr",
            "10.98.0.0/24",
            "--block-size",
            "24",
            "--reserve-head",
            "2",
            "--reserve-tail",
            "1",
            "--gateway",
        ],
    )
    .await
    .unwrap();
    let sock = ipamd.socket.display().to_string();
    let put = PluginUnderTest {
        label: "trellis-overlay + trellis-ipam".into(),
        plugin: "trellis-overlay".into(),
        cni_path: vec![bin_dir()],
        versions: Version::ALL.into_iter().collect(),
        config: Box::new(move |ctx, v| {
            json!({
                "cniVersion": v.as_str(),
                "name": "kitnet",
                "type": "trellis-overlay",
                "stateDir": ready_state(&ctx.state_dir),
                "ipam": {"type": "trellis-ipam", "socket": sock},
            })
        }),
        allocations: Some(ipamd.allocations(&tb)),
        deviations: Vec::new(),
    };
    let report = cni_kit::run(&put).await.unwrap();
    for f in &report.findings {
        eprintln!("[{} {}] {}", f.version, f.rule, f.problem);
    }
    assert!(report.checks > 50, "the kit ran ({} checks)", report.checks);
    report.assert_conformant(&put);
    // Every ADD was followed by its DEL: ipamd holds nothing, and its store is consistent.
    ipamd.assert_released(&tb, "kitnet").await.unwrap();
}
