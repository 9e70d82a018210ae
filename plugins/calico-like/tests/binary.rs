//! The `trellis-routed` binary as a runtime sees it before the agent is ready: VERSION answers,
//! STATUS says "not available" (50) and ADD says "try again later" (11) — a CNI error object on
//! stdout and a non-zero exit, never a file error. Needs no root: nothing is touched before the
//! readiness check. (It also makes cargo build the binary for the netns tests.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Stdio};

fn run(command: &str, conf: &serde_json::Value) -> (Option<i32>, serde_json::Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_trellis-routed"))
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
            "{command}: stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (out.status.code(), json)
}

fn conf(state_dir: &std::path::Path) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": "1.1.0",
        "name": "net",
        "type": "trellis-routed",
        "stateDir": state_dir,
        "ipam": {"type": "trellis-ipam"},
    })
}

#[test]
fn version_lists_every_version() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = run("VERSION", &conf(dir.path()));
    assert_eq!(code, Some(0));
    let versions = out["supportedVersions"].as_array().unwrap();
    for v in ["0.1.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        assert!(versions.iter().any(|x| x == v), "{v} missing: {out}");
    }
}

#[test]
fn before_the_agent_is_ready_status_is_50_and_add_is_11() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = run("STATUS", &conf(dir.path()));
    assert_ne!(code, Some(0));
    assert_eq!(out["code"], 50, "{out}");
    let (code, out) = run("ADD", &conf(dir.path()));
    assert_ne!(code, Some(0));
    assert_eq!(out["code"], 11, "{out}");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing is written before the agent is ready"
    );
}
