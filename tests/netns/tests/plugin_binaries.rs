//! Each Trellis plugin binary as a runtime sees it before its agent is ready: VERSION answers,
//! STATUS says "not available" (50) and ADD says "try again later" (11) — a CNI error object on
//! stdout and a non-zero exit, never a file error, and nothing written. Needs no root: nothing
//! is touched before the readiness check.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use netns_testbed::bin_path;

/// The plugins, by type (their binaries' names).
const PLUGINS: [&str; 2] = ["trellis-overlay", "trellis-routed"];

fn run(plugin: &str, command: &str, conf: &serde_json::Value) -> (Option<i32>, serde_json::Value) {
    let mut child = Command::new(bin_path(plugin))
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "c1")
        .env("CNI_NETNS", "/proc/self/ns/net")
        .env("CNI_NETNS_OVERRIDE", "1")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/nonexistent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{plugin} {command}: stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (out.status.code(), json)
}

fn conf(plugin: &str, state_dir: &Path) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": "1.1.0",
        "name": "net",
        "type": plugin,
        "stateDir": state_dir,
        "ipam": {"type": "trellis-ipam"},
    })
}

#[test]
fn version_lists_every_version() {
    let dir = tempfile::tempdir().unwrap();
    for plugin in PLUGINS {
        let (code, out) = run(plugin, "VERSION", &conf(plugin, dir.path()));
        assert_eq!(code, Some(0), "{plugin}");
        let versions = out["supportedVersions"].as_array().unwrap();
        for v in ["0.1.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            assert!(
                versions.iter().any(|x| x == v),
                "{plugin}: {v} missing: {out}"
            );
        }
    }
}

#[test]
fn before_the_agent_is_ready_status_is_50_and_add_is_11() {
    for plugin in PLUGINS {
        let dir = tempfile::tempdir().unwrap();
        let (code, out) = run(plugin, "STATUS", &conf(plugin, dir.path()));
        assert_ne!(code, Some(0), "{plugin}");
        assert_eq!(out["code"], 50, "{plugin}: {out}");
        let (code, out) = run(plugin, "ADD", &conf(plugin, dir.path()));
        assert_ne!(code, Some(0), "{plugin}");
        assert_eq!(out["code"], 11, "{plugin}: {out}");
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "{plugin}: nothing is written before the agent is ready"
        );
    }
}
