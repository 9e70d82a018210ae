//! The CNI conformance kit with `trellis-ipam` delegated from the reference `bridge` plugin
//! (containernetworking-plugins 1.1.1): our IPAM works under a main plugin we did not write.
//! bridge's own known deviations still apply, since it is the plugin the kit runs.
//! Needs root (it builds namespaces); fails without it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;

use netns_testbed::cni_kit::{self, PluginUnderTest};
use netns_testbed::{REFERENCE_PLUGIN_DIR, require_root, require_tool};
use serde_json::json;
use support::*;
use trellis_cni::Version;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_with_trellis_ipam_passes_the_kit() {
    require_root();
    require_tool("bridge", "containernetworking-plugins");
    require_tool("iptables-save", "iptables");
    let dir = scratch();
    let backend = local_backend(dir.path());
    let d = daemon("kit-node", backend.clone(), dir.path()).await;
    let mut c = client(&d.socket).await;
    c.create_pool(pool("kit", "10.99.0.0/16", 24))
        .await
        .unwrap();
    let socket = d.socket.clone();
    let versions = vec![
        Version::V0_3_0,
        Version::V0_3_1,
        Version::V0_4_0,
        Version::V1_0_0,
    ];
    let put = PluginUnderTest {
        label: "reference bridge + trellis-ipam".into(),
        plugin: "bridge".into(),
        cni_path: vec![
            PathBuf::from(REFERENCE_PLUGIN_DIR),
            plugin::plugin_dir(dir.path()),
        ],
        versions: versions.clone(),
        config: Box::new(move |_ctx, v| {
            json!({
                "cniVersion": v.as_str(),
                "name": "kitnet",
                "type": "bridge",
                "bridge": "kitbr0",
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "trellis-ipam",
                    "socket": socket.display().to_string(),
                    "routes": [{"dst": "0.0.0.0/0"}],
                }
            })
        }),
        // GC is 1.1.0, which bridge 1.1.1 does not answer.
        allocations: None,
        deviations: cni_kit::reference_bridge_deviations(&versions),
    };
    let report = cni_kit::run(&put).await.unwrap();
    for f in &report.findings {
        eprintln!("[{} {}] {}", f.version, f.rule, f.problem);
    }
    report.assert_conformant(&put);
    // Every ADD of the kit was followed by a DEL: nothing is left allocated.
    assert_eq!(held(backend.as_ref()).await, Vec::<(String, String)>::new());
    let findings = c
        .consistency(trellis_ipam::proto::ConsistencyRequest {})
        .await
        .unwrap()
        .into_inner()
        .findings;
    assert!(findings.is_empty(), "{findings:?}");
    d.shutdown().await;
}
