//! Checks every Trellis plugin binary must pass, run by each plugin crate's own integration test
//! (which is also what makes cargo build the binary before the namespace tests use it).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Runs `binary` once as a runtime would, with `conf` on stdin.
fn run(binary: &Path, command: &str, conf: &serde_json::Value) -> (Option<i32>, serde_json::Value) {
    let spawned = Command::new(binary)
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
        .spawn();
    let mut child = spawned.unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(conf.to_string().as_bytes());
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{} {command}: stdout is not JSON ({e}): {}",
            binary.display(),
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (out.status.code(), json)
}

/// A fresh, empty state directory (no agent has made the node ready).
fn empty_dir(plugin: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "{plugin}-binary-{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
    ));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

/// The plugin `binary` of type `plugin`, before its agent is ready: VERSION lists every
/// version; STATUS says "not available" (50) and ADD "try again later" (11) — a CNI error object
/// on stdout and a non-zero exit, never a file error — and nothing is written. Needs no root:
/// nothing is touched before the readiness check.
pub fn check_before_ready(binary: &Path, plugin: &str) {
    let dir = empty_dir(plugin);
    let conf = serde_json::json!({
        "cniVersion": "1.1.0", "name": "net", "type": plugin, "stateDir": dir,
        "ipam": {"type": "trellis-ipam"},
    });
    let (code, out) = run(binary, "VERSION", &conf);
    assert_eq!(code, Some(0), "{plugin} VERSION: {out}");
    let versions = out["supportedVersions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for v in ["0.1.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        assert!(
            versions.iter().any(|x| x == v),
            "{plugin}: {v} missing: {out}"
        );
    }
    for (command, code_wanted) in [("STATUS", 50), ("ADD", 11)] {
        let (code, out) = run(binary, command, &conf);
        assert_ne!(code, Some(0), "{plugin} {command}");
        assert_eq!(out["code"], code_wanted, "{plugin} {command}: {out}");
    }
    let written = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        written, 0,
        "{plugin}: nothing is written before the agent is ready"
    );
}

/// The error code `plugin` answers `command` with, `conf` on stdin and the test's own namespace
/// as CNI_NETNS; fails the test if the plugin succeeds or prints no CNI error object.
pub fn error_code(
    plugin: &dyn trellis_cni::skel::Plugin,
    command: &str,
    conf: &serde_json::Value,
) -> u64 {
    let env = [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", "/proc/self/ns/net"),
        ("CNI_NETNS_OVERRIDE", "1"),
        ("CNI_PATH", "/nonexistent"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let out = trellis_cni::skel::run(
        plugin,
        trellis_cni::skel::Invocation {
            env,
            stdin: conf.to_string().into_bytes(),
        },
    );
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_ne!(out.exit_code, 0, "{command} succeeded: {said}");
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{said}: {e}"));
    assert!(
        !v["msg"].as_str().unwrap_or_default().is_empty(),
        "an error without msg: {v}"
    );
    v["code"]
        .as_u64()
        .unwrap_or_else(|| panic!("an error without code: {v}"))
}
