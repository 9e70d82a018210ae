//! The `trellis-ipam` binary cargo built for these tests, in a CNI_PATH directory of its own.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

/// A directory holding only `trellis-ipam` (a symlink to the binary cargo built for this test,
/// so the test always runs the plugin of this very build).
pub fn plugin_dir(scratch: &Path) -> PathBuf {
    let dir = scratch.join("cni-bin");
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("trellis-ipam");
    if !link.exists() {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_trellis-ipam"), &link).unwrap();
    }
    dir
}

/// One run of the plugin: exit code and the JSON it printed.
pub async fn run(
    dir: &Path,
    command: &str,
    cid: &str,
    netns: Option<&Path>,
    conf: &Value,
) -> (i32, Value) {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(dir.join("trellis-ipam"));
    cmd.env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", dir)
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-{cid}"),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(ns) = netns {
        cmd.env("CNI_NETNS", ns);
    }
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(conf.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the plugin answers within 60 s")
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), v)
}
