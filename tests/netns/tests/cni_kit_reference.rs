//! The conformance kit proven against the reference plugins: Debian's bridge + host-local
//! (containernetworking-plugins 1.1.1) must pass it at every version they support, with the
//! rules they are known to break listed — and each listed deviation must still happen.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use netns_testbed::cni_kit::{self, Deviation, PluginUnderTest, Rule};
use netns_testbed::{REFERENCE_PLUGIN_DIR, require_root, require_tool};
use serde_json::json;
use trellis_cni::Version;

fn bridge_host_local() -> PluginUnderTest {
    PluginUnderTest {
        label: "reference bridge + host-local".into(),
        plugin: "bridge".into(),
        cni_path: vec![PathBuf::from(REFERENCE_PLUGIN_DIR)],
        // 1.1.1 answers up to 1.0.0.
        versions: vec![
            Version::V0_3_0,
            Version::V0_3_1,
            Version::V0_4_0,
            Version::V1_0_0,
        ],
        config: Box::new(|ctx, v| {
            json!({
                "cniVersion": v.as_str(),
                "name": "kitnet",
                "type": "bridge",
                "bridge": "kitbr0",
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "10.99.0.0/24"}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": ctx.state_dir.join("host-local").display().to_string(),
                }
            })
        }),
        deviations: vec![
            Deviation {
                rule: Rule::MissingCommand,
                why: "without CNI_COMMAND, skel prints the plugin's about text to stderr and exits 0 instead of answering code 4",
            },
            Deviation {
                rule: Rule::NetnsDoesNotExist,
                why: "bridge answers a missing netns with code 999 (\"failed to open netns\"), not 3, after creating its bridge",
            },
            Deviation {
                rule: Rule::IpamNotFound,
                why: "bridge answers an IPAM type missing from CNI_PATH with code 999, not 7, and leaves the veth pair it made on the host and in the pod",
            },
        ],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_bridge_and_host_local_pass_the_kit() {
    require_root();
    require_tool("bridge", "containernetworking-plugins");
    require_tool("iptables-save", "iptables");
    let put = bridge_host_local();
    let report = cni_kit::run(&put).await.unwrap();
    for f in &report.findings {
        eprintln!("[{} {}] {}", f.version, f.rule, f.problem);
    }
    report.assert_conformant(&put);
}
