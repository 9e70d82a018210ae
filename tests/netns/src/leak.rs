//! The leak check: after a testbed is gone, nothing with its prefix may remain — no namespace,
//! no link or ipset in this namespace, no process it started. (Sets inside the testbed's own
//! namespaces go with them; [`crate::snapshot::NsState`] compares those of a namespace that
//! stays.)

use std::path::Path;

use crate::process::TAG_VAR;

/// Everything still present that carries `prefix`; empty when the testbed cleaned up.
pub fn leftovers(prefix: &str, run_dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(run_dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix) {
                found.push(format!("namespace {}", e.path().display()));
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/sys/class/net") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix) {
                found.push(format!("link {name}"));
            }
        }
    }
    found.extend(ipsets(prefix));
    let tag = format!("{TAG_VAR}={prefix}");
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let pid = e.file_name().to_string_lossy().into_owned();
            if !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            // Zombies and exited processes have an empty environment: they hold nothing.
            let Ok(environ) = std::fs::read(e.path().join("environ")) else {
                continue;
            };
            if environ.split(|b| *b == 0).any(|var| var == tag.as_bytes()) {
                let cmd = std::fs::read_to_string(e.path().join("cmdline"))
                    .unwrap_or_default()
                    .replace('\0', " ");
                found.push(format!("process {pid}: {}", cmd.trim()));
            }
        }
    }
    found
}

/// Sets in this namespace whose names carry `prefix` (as `trellis-<prefix>…` or `<prefix>…`).
/// Only reads (`ipset list -n`); a missing or failing `ipset` is reported, not ignored.
fn ipsets(prefix: &str) -> Vec<String> {
    let out = match std::process::Command::new("ipset")
        .args(["list", "-n"])
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => out,
        Ok(out) => {
            return vec![format!(
                "ipset list -n failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )];
        }
        Err(e) => return vec![format!("ipset list -n could not run (package ipset): {e}")],
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|n| n.contains(prefix))
        .map(|n| format!("ipset {n}"))
        .collect()
}

/// Panics listing what remains, if anything does. Processes get a moment to finish dying.
pub fn assert_clean(prefix: &str, run_dir: &Path) {
    let mut left = leftovers(prefix, run_dir);
    for _ in 0..50 {
        if left.is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        left = leftovers(prefix, run_dir);
    }
    assert!(left.is_empty(), "testbed {prefix} leaked: {left:?}");
}
