//! The leak check: after a testbed is gone, nothing with its prefix may remain — no namespace,
//! no link or ipset in this namespace, no process it started.

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
    // ipsets live per namespace: a set of ours in this (the test's) namespace is a leak.
    if let Ok(out) = std::process::Command::new("ipset").args(["list", "-n"]).output() {
        for name in String::from_utf8_lossy(&out.stdout).lines() {
            if name.starts_with(prefix) {
                found.push(format!("ipset {name}"));
            }
        }
    }
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
