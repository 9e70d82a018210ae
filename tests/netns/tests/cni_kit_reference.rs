//! The conformance kit proven against the reference plugins: Debian's bridge + host-local
//! (containernetworking-plugins 1.1.1) must pass it at every version they support, with the
//! rules they are known to break listed — and each listed deviation must still happen.
//!
//! And the kit proven able to fail: the same plugins behind a wrapper that breaks one rule on
//! purpose (`support/kit-broken-plugin.sh`) must fail it, with a message naming the rule; a
//! listed deviation that changes nature must fail it too. The wrapper breaking nothing passes,
//! so each failure is the break's doing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use netns_testbed::cni_kit::{self, PluginUnderTest};
use netns_testbed::{REFERENCE_PLUGIN_DIR, require_root, require_tool};
use serde_json::json;
use trellis_cni::Version;

fn bridge_host_local() -> PluginUnderTest {
    // 1.1.1 answers up to 1.0.0.
    let versions = vec![
        Version::V0_3_0,
        Version::V0_3_1,
        Version::V0_4_0,
        Version::V1_0_0,
    ];
    bridge_as(
        "bridge",
        "reference bridge + host-local",
        vec![PathBuf::from(REFERENCE_PLUGIN_DIR)],
        versions,
    )
}

/// bridge + host-local, run as `plugin` found in `cni_path`, with bridge's own deviations.
fn bridge_as(
    plugin: &str,
    label: &str,
    cni_path: Vec<PathBuf>,
    versions: Vec<Version>,
) -> PluginUnderTest {
    let kind = plugin.to_string();
    PluginUnderTest {
        label: label.into(),
        plugin: plugin.into(),
        cni_path,
        versions: versions.clone(),
        config: Box::new(move |ctx, v| {
            json!({
                "cniVersion": v.as_str(),
                "name": "kitnet",
                "type": kind,
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
        // host-local keeps files, but GC is 1.1.0, which 1.1.1 does not answer.
        allocations: None,
        deviations: cni_kit::reference_bridge_deviations(&versions),
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

/// The kit run against bridge behind the wrapper in `mode`, at 1.0.0; the report's verdict.
async fn broken(mode: &str, adjust: impl FnOnce(&mut PluginUnderTest)) -> Result<(), String> {
    require_root();
    require_tool("bridge", "containernetworking-plugins");
    require_tool("iptables-save", "iptables");
    let dir = tempfile::tempdir().unwrap();
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/kit-broken-plugin.sh");
    let name = format!("kit-broken-{mode}");
    std::os::unix::fs::symlink(&script, dir.path().join(&name)).unwrap();
    std::os::unix::fs::symlink(
        PathBuf::from(REFERENCE_PLUGIN_DIR).join("bridge"),
        dir.path().join("real-plugin"),
    )
    .unwrap();
    let mut put = bridge_as(
        &name,
        &format!("bridge behind kit-broken-plugin.sh ({mode})"),
        vec![
            dir.path().to_path_buf(),
            PathBuf::from(REFERENCE_PLUGIN_DIR),
        ],
        vec![Version::V1_0_0],
    );
    adjust(&mut put);
    let report = cni_kit::run(&put).await.unwrap();
    let verdict = report.verdict(&put);
    eprintln!("{mode}: {verdict:?}");
    verdict
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrapper_breaking_nothing_passes_the_kit() {
    broken("faithful", |_| {}).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_leaks_a_link_fails_the_kit() {
    let e = broken("leak", |_| {}).await.unwrap_err();
    assert!(
        e.contains("[1.0.0 Del] ") && e.contains("link added: kl"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_answers_a_wrong_code_fails_the_kit() {
    let e = broken("code", |_| {}).await.unwrap_err();
    for rule in ["MissingContainerId", "MissingIfname", "LongIfname"] {
        assert!(
            e.contains(&format!("[1.0.0 {rule}] error code Some(7), expected 4")),
            "{rule}: {e}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_whose_result_has_the_wrong_version_fails_the_kit() {
    let e = broken("result", |_| {}).await.unwrap_err();
    assert!(e.contains("[1.0.0 AddResultShape] "), "{e}");
}

/// bridge's listed deviations answer 999; behind the wrapper they answer 998: the same rules
/// broken another way, which the listing does not excuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deviation_with_another_code_fails_the_kit() {
    let e = broken("code999", |_| {}).await.unwrap_err();
    for rule in ["NetnsDoesNotExist", "IpamNotFound"] {
        assert!(
            e.contains(&format!("[1.0.0 {rule}] error code Some(998), expected")),
            "{rule}: {e}"
        );
    }
    assert!(e.contains("no longer happen as listed"), "{e}");
}

/// A listing that says the host stays unchanged where bridge changes it, and one that says
/// the opposite: neither matches what happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deviation_that_changes_the_host_otherwise_than_listed_fails_the_kit() {
    let e = broken("faithful", |put| {
        for d in &mut put.deviations {
            if let Some(changed) = d.behaviour.host_changed.as_mut() {
                *changed = !*changed;
            }
        }
    })
    .await
    .unwrap_err();
    assert!(e.contains("[1.0.0 IpamNotFound] "), "{e}");
    assert!(e.contains("[1.0.0 NetnsDoesNotExist] "), "{e}");
}

/// A deviation listed for a version where it does not happen fails the kit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deviation_listed_for_a_rule_the_plugin_keeps_fails_the_kit() {
    let e = broken("faithful", |put| {
        put.deviations.push(cni_kit::Deviation {
            rule: cni_kit::Rule::Check,
            versions: vec![Version::V1_0_0],
            behaviour: cni_kit::Behaviour::refused(999, false),
            why: "a deviation that does not happen",
        });
    })
    .await
    .unwrap_err();
    assert!(
        e.contains("no longer happen as listed:\n  [1.0.0 Check]"),
        "{e}"
    );
}
