//! What `trellis` logs, as a user reads it (issue 11, item 5): a daemon writing its log to a
//! file writes no terminal colour codes, and the `trellis ipam` tools, which act on the whole
//! cluster, do not name the machine they run on as the node (only `gc`, which frees one node's
//! leaks, acts as a node: the one given).
//!
//! The binary is the real one (`CARGO_BIN_EXE_trellis`), each run under `timeout` in its own
//! process group, which is killed on drop.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const TRELLIS: &str = env!("CARGO_BIN_EXE_trellis");

/// A process group started under `timeout`, killed when dropped.
struct Group(std::process::Child);

impl Drop for Group {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(-i32::try_from(self.0.id()).unwrap());
        let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

fn trellis(args: &[&str], secs: u32) -> Command {
    let mut c = Command::new("timeout");
    c.args(["-s", "KILL", &secs.to_string(), TRELLIS])
        .args(args)
        .env_remove("NODE_NAME")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .process_group(0);
    c
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_daemon_logging_to_a_file_writes_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("ipamd.log");
    let file = std::fs::File::create(&log).unwrap();
    let cache = dir.path().join("cni");
    std::fs::create_dir(&cache).unwrap();
    let _ipamd = Group(
        trellis(
            &[
                "ipamd",
                "--node",
                "log-node",
                "--local",
                path(&dir.path().join("ipam.db")),
                "--socket",
                path(&dir.path().join("ipamd.sock")),
                "--cni-cache-dir",
                path(&cache),
                "--gc-interval",
                "0",
            ],
            60,
        )
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap(),
    );
    // The daemon logs at info by default; wait for a line that carries fields (where colour
    // codes would be: level, field names).
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.contains("ipam engine ready") {
            break text;
        }
        assert!(Instant::now() < deadline, "ipamd never got ready:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(text.contains("INFO"), "{text}");
    assert!(
        !text.contains('\x1b'),
        "a log written to a file carries terminal escape codes:\n{text:?}"
    );
}

fn ipam(db: &Path, args: &[&str]) -> Output {
    let out = trellis(&[&["ipam", "--local", path(db)], args].concat(), 60)
        // The engine's own lines (info) name the node it acts as.
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains('\x1b'),
        "colour in a piped log"
    );
    out
}

fn says_node(stderr: &str, node: &str) -> bool {
    stderr.contains(&format!("node=\"{node}\"")) || stderr.contains(&format!("node={node} "))
}

#[test]
fn ipam_tools_act_cluster_wide_and_gc_as_the_node_given() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ipam.db");
    let host = hostname();
    for args in [
        &[
            "pool",
            "create",
            "pods",
            "--cidr",
            "10.250.0.0/16",
            "--block-size",
            "26",
        ][..],
        &["pools"][..],
    ] {
        let out = ipam(&db, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "ipam {args:?}: {stderr}");
        assert!(
            says_node(&stderr, "cluster-wide"),
            "ipam {args:?} must act cluster-wide:\n{stderr}"
        );
        assert!(
            !says_node(&stderr, &host),
            "ipam {args:?} logs the host name {host} as its node:\n{stderr}"
        );
    }
    // gc frees one node's leaks: it needs the node, and acts as that one.
    let cache = dir.path().join("cni");
    std::fs::create_dir(&cache).unwrap();
    let out = ipam(&db, &["gc", "--cni-cache-dir", path(&cache)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("give --node"),
        "gc without a node must refuse:\n{stderr}"
    );
    let out = ipam(
        &db,
        &["gc", "--node", "gc-node", "--cni-cache-dir", path(&cache)],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        says_node(&stderr, "gc-node") && !says_node(&stderr, &host),
        "gc acts as the node given:\n{stderr}"
    );
}
