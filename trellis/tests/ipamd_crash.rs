//! kill -9 of `trellis ipamd` in the middle of a burst of ADDs, then a restart: nothing
//! acknowledged is lost, `trellis ipam check` is clean, and `trellis ipam gc` frees exactly the
//! addresses of the attachments that did not complete (the runtime has no result for them).
//!
//! The daemon is the real binary as a child process (`CARGO_BIN_EXE_trellis`: cargo builds it
//! for this test, in the same profile, so the test never runs a stale binary). The API server
//! runs in-process. Every child is killed on drop and lives at most a bounded time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use trellis_ipam::proto;

const TRELLIS: &str = env!("CARGO_BIN_EXE_trellis");

struct Env {
    kubeconfig: PathBuf,
    socket: PathBuf,
    cache: PathBuf,
    dir: PathBuf,
}

/// ipamd under `timeout`. Killing `timeout` (kill_on_drop) would leave ipamd running, so the
/// guard kills ipamd itself first.
struct Ipamd(tokio::process::Child);

impl Drop for Ipamd {
    fn drop(&mut self) {
        if let Some(pid) = self.0.id().and_then(child_of) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.0.start_kill();
    }
}

fn child_of(pid: u32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn ipamd(env: &Env, log: &str) -> Ipamd {
    let log = std::fs::File::create(env.dir.join(log)).unwrap();
    tokio::process::Command::new("timeout")
        .args([
            "-s",
            "KILL",
            "120",
            TRELLIS,
            "ipamd",
            "--node",
            "crash-node",
            "--gc-interval",
            "0",
        ])
        .arg("--kubeconfig")
        .arg(&env.kubeconfig)
        .arg("--socket")
        .arg(&env.socket)
        .arg("--cni-cache-dir")
        .arg(&env.cache)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map(Ipamd)
        .unwrap()
}

/// `timeout` execs nothing: kill -9 must reach ipamd itself, the child of `timeout`.
fn ipamd_pid(timeout_pid: u32) -> i32 {
    child_of(timeout_pid).expect("ipamd runs under timeout")
}

async fn wait_for_socket(
    socket: &Path,
) -> proto::ipam_client::IpamClient<tonic::transport::Channel> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match trellis_ipam::client::connect(socket, Duration::from_secs(1), Duration::from_secs(30))
            .await
        {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("ipamd did not come up: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn add(cid: &str) -> proto::AllocateRequest {
    proto::AllocateRequest {
        handle: format!("net.{cid}.eth0"),
        families: vec![proto::Family::Ipv4 as i32],
        network: "net".into(),
        container_id: cid.into(),
        ifname: "eth0".into(),
        namespace: "default".into(),
        pod: format!("pod-{cid}"),
        ..Default::default()
    }
}

async fn cli(env: &Env, args: &[&str]) -> (i32, String) {
    let out = tokio::process::Command::new(TRELLIS)
        .arg("ipam")
        .arg("--socket")
        .arg(&env.socket)
        .args(args)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "trellis ipam {args:?}:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

async fn held(backend: &dyn trellis_ipam::backend::Backend) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for b in backend.list_blocks().await.unwrap() {
        out.extend(b.value.spec.allocations.iter().map(|a| a.handle.clone()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_a_burst_loses_nothing_and_gc_frees_exactly_the_incomplete() {
    let dir = tempfile::tempdir().unwrap();
    let running = trellis_apiserver::start(trellis_apiserver::Config::new(
        dir.path().join("api"),
        "127.0.0.1:0".parse().unwrap(),
    ))
    .await
    .unwrap();
    let env = Env {
        kubeconfig: running.kubeconfig.clone(),
        socket: dir.path().join("run").join("ipamd.sock"),
        cache: dir.path().join("cni"),
        dir: dir.path().to_path_buf(),
    };
    std::fs::create_dir_all(env.cache.join("results")).unwrap();
    let client = trellis_api::cluster::client(Some(&env.kubeconfig))
        .await
        .unwrap();
    // The node exists: its allocations are judged by their cached results, not as a gone node's.
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    let mut node = k8s_openapi::api::core::v1::Node::default();
    node.metadata.name = Some("crash-node".into());
    nodes.create(&Default::default(), &node).await.unwrap();
    let backend = trellis_ipam::backend::kube::KubeBackend::new(client);

    let mut first = ipamd(&env, "ipamd-1.log");
    let mut c = wait_for_socket(&env.socket).await;
    let (code, _) = cli(
        &env,
        &[
            "pool",
            "create",
            "pods",
            "--cidr",
            "10.70.0.0/16",
            "--block-size",
            "26",
            "--reserve-head",
            "1",
            "--reserve-tail",
            "1",
        ],
    )
    .await;
    assert_eq!(code, 0);
    // Attachments whose runtime died right after ADD: allocated, never completed.
    for cid in ["died-0", "died-1", "died-2"] {
        c.allocate(add(cid)).await.unwrap();
    }

    // The burst: 64 concurrent runtimes, each ADD followed by the runtime caching its result.
    let completed: Arc<Mutex<BTreeSet<String>>> = Default::default();
    let mut runtimes = Vec::new();
    for r in 0..64 {
        let (socket, cache, completed) = (env.socket.clone(), env.cache.clone(), completed.clone());
        runtimes.push(tokio::spawn(async move {
            let Ok(mut c) = trellis_ipam::client::connect(
                &socket,
                Duration::from_secs(2),
                Duration::from_secs(10),
            )
            .await
            else {
                return;
            };
            for i in 0..1000 {
                let cid = format!("r{r}-{i}");
                if c.allocate(add(&cid)).await.is_err() {
                    return;
                }
                std::fs::write(cache.join("results").join(format!("net-{cid}-eth0")), "{}")
                    .unwrap();
                completed.lock().unwrap().insert(format!("net.{cid}.eth0"));
            }
        }));
    }
    // Kill ipamd once the burst is well under way.
    let deadline = Instant::now() + Duration::from_secs(60);
    while completed.lock().unwrap().len() < 300 {
        assert!(Instant::now() < deadline, "the burst made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let pid = ipamd_pid(first.0.id().unwrap());
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    first.0.wait().await.unwrap();
    for r in runtimes {
        tokio::time::timeout(Duration::from_secs(30), r)
            .await
            .expect("runtimes stop")
            .unwrap();
    }
    let completed = completed.lock().unwrap().clone();
    let stored = held(&backend).await;
    eprintln!(
        "{} ADDs completed before kill -9; {} allocations stored",
        completed.len(),
        stored.len()
    );
    let lost: Vec<&String> = completed.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged allocations lost: {lost:?}");

    let _second = ipamd(&env, "ipamd-2.log");
    wait_for_socket(&env.socket).await;
    let (code, text) = cli(&env, &["check"]).await;
    assert_eq!(code, 0, "check after the crash: {text}");
    // Read the store again: a write the killed ipamd had sent may still have been committed by
    // the API server after the first read (its request outlives the process that sent it). By
    // now a new ipamd has started and loaded the blocks, so those writes are long settled.
    let settled = held(&backend).await;
    assert!(
        settled.is_superset(&stored),
        "nothing vanished after the crash"
    );
    let incomplete: BTreeSet<String> = settled.difference(&completed).cloned().collect();
    assert!(
        incomplete.len() >= 3,
        "at least the three whose runtime died"
    );
    let (code, text) = cli(&env, &["gc", "--grace", "0s"]).await;
    assert_eq!(code, 0);
    let freed: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("freed "))
        .filter_map(|l| Some(l.split_once(" (")?.1.split_once("):")?.0.to_string()))
        .collect();
    assert_eq!(
        freed, incomplete,
        "gc frees exactly the attachments that did not complete"
    );
    assert_eq!(held(&backend).await, completed, "and nothing else");
    let (code, text) = cli(&env, &["check"]).await;
    assert_eq!(code, 0, "{text}");
    running.shutdown().await;
}
