//! cni-bench: ADD/DEL latency of CNI plugin configurations, side by side.
//!
//!     cni-bench --pods 200 \
//!         --config tests/netns/bench/trellis-overlay.conflist --label trellis-overlay \
//!         --config tests/netns/bench/bridge-host-local.conflist --label bridge+host-local
//!
//! Runs as root: every pod is a fresh network namespace, the plugins run in a throwaway host
//! namespace, and everything is removed at the end.
//!
//! `--ipamd target/release/trellis` starts a standalone `trellis ipamd` for the run (its store
//! and socket in a scratch directory, one pool), puts its socket where a configuration says
//! `@IPAMD_SOCKET@`, adds the binary's directory (where `trellis-ipam` is built) to the plugin
//! directories, and stops it at the end:
//!
//!     cni-bench --pods 200 --ipamd target/release/trellis \
//!         --config tests/netns/bench/bridge-trellis-ipam.conflist --label bridge+trellis-ipam \
//!         --config tests/netns/bench/bridge-host-local.conflist --label bridge+host-local

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;
use netns_testbed::bench::{self, Subject};

#[derive(Parser)]
#[command(about = "ADD/DEL latency of CNI plugin configurations, side by side")]
struct Args {
    /// Pods per configuration.
    #[arg(long, default_value_t = 200)]
    pods: usize,
    /// A .conflist or .conf file; give two to compare. `@STATE@` in it becomes a scratch dir.
    #[arg(long = "config", required = true)]
    configs: Vec<PathBuf>,
    /// A name for each config, in the same order (default: the file name).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Where plugin binaries are (CNI_PATH); the reference plugins by default.
    #[arg(long = "plugin-dir", default_value = netns_testbed::REFERENCE_PLUGIN_DIR)]
    plugin_dirs: Vec<PathBuf>,
    /// The `trellis` binary: run a standalone ipamd for the configurations' `@IPAMD_SOCKET@`.
    #[arg(long)]
    ipamd: Option<PathBuf>,
    /// The pool that ipamd serves (the first two and the last address of each block reserved,
    /// block network + 1 the gateway).
    #[arg(long, default_value = "10.21.0.0/16")]
    ipamd_pool: String,
    /// The prefix length of the pool's blocks (a /22 holds 1,000 pods of one node).
    #[arg(long, default_value_t = 24)]
    ipamd_block_size: u8,
    /// For a configuration of `trellis-overlay`: the node block in the readiness state the
    /// overlay agent would have written (to `@STATE@/overlay`, which the configuration's
    /// `stateDir` names).
    #[arg(long, default_value = "10.22.0.0/24")]
    overlay_block: ipnet::Ipv4Net,
    /// For a configuration of `trellis-routed`: the MTU in the readiness state the BGP agent
    /// would have written (to `@STATE@/routed`): the underlay's, whole.
    #[arg(long, default_value_t = 1500)]
    routed_mtu: u32,
    /// For a configuration of `trellis-canal`: the MTU in the readiness state the overlay agent
    /// in canal mode would have written (to `@STATE@/canal`): the underlay's less VXLAN's 50.
    #[arg(long, default_value_t = 1450)]
    canal_mtu: u32,
    /// Also print how ADD latency grows: the p50 of the first N ADDs against the last N.
    #[arg(long, default_value_t = 0)]
    scale_window: usize,
    /// Delete each pod's namespace right after its DEL, as the runtime does (containerd, CRI-O,
    /// our kubelet), and print how long that took; by default every namespace stays until the
    /// end of the run.
    #[arg(long)]
    teardown: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !nix::unistd::geteuid().is_root() {
        bail!("cni-bench creates network namespaces: run it as root");
    }
    if args.configs.len() > 2 {
        bail!("give one configuration, or two to compare");
    }
    let mut plugin_dirs = args.plugin_dirs.clone();
    let ipamd = match &args.ipamd {
        Some(trellis) => {
            if let Some(dir) = trellis.parent() {
                plugin_dirs.push(dir.to_path_buf());
            }
            Some(Ipamd::start(
                trellis,
                &args.ipamd_pool,
                args.ipamd_block_size,
            )?)
        }
        None => None,
    };
    let teardown = if args.teardown {
        bench::Teardown::AfterEachDel
    } else {
        bench::Teardown::AtTheEnd
    };
    let mut figures = Vec::new();
    for (i, path) in args.configs.iter().enumerate() {
        let label = args.labels.get(i).cloned().unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let mut config = bench::read_config(path)?;
        if config.contains("@IPAMD_SOCKET@") {
            let Some(ipamd) = &ipamd else {
                bail!(
                    "{} needs ipamd: give --ipamd <path to trellis>",
                    path.display()
                );
            };
            config = config.replace("@IPAMD_SOCKET@", &ipamd.socket.display().to_string());
        }
        let files = agent_states(&config, &args);
        let subject = Subject {
            label,
            config,
            plugin_dirs: plugin_dirs.clone(),
            files,
        };
        eprintln!("measuring {} over {} pods…", subject.label, args.pods);
        figures.push(
            bench::measure_with(&subject, args.pods, teardown)
                .await
                .with_context(|| format!("benchmark of {}", path.display()))?,
        );
    }
    if let Some(ipamd) = ipamd {
        ipamd.stop();
    }
    print!("{}", bench::table(&figures));
    print!("{}", bench::scaling(&figures, args.scale_window));
    Ok(())
}

/// The readiness files the node agents of the configuration's plugins would have written:
/// for each of our plugins that waits for its agent, the file under `@STATE@` (which the
/// configuration's `stateDir` names) and its content.
fn agent_states(config: &str, args: &Args) -> Vec<(PathBuf, String)> {
    let agents: [(&str, &str, String); 3] = [
        (
            "trellis-overlay",
            "overlay/ready.json",
            overlay_state(args.overlay_block),
        ),
        (
            "trellis-routed",
            "routed/ready.json",
            serde_json::json!({"mtu": args.routed_mtu}).to_string(),
        ),
        (
            "trellis-canal",
            "canal/ready.json",
            serde_json::json!({"mtu": args.canal_mtu}).to_string(),
        ),
    ];
    agents
        .into_iter()
        .filter(|(plugin, _, _)| config.contains(&format!("\"{plugin}\"")))
        .map(|(_, file, content)| (PathBuf::from(file), content))
        .collect()
}

/// The readiness state `trellis overlay-agent` writes once the node's data path is in place.
fn overlay_state(block: ipnet::Ipv4Net) -> String {
    serde_json::json!({
        "block": block.to_string(),
        "cluster_cidr": ipnet::Ipv4Net::new(block.network(), 16).map(|n| n.trunc().to_string()).unwrap_or_default(),
        "mtu": 1450,
        "bridge": "trellis0",
    })
    .to_string()
}

/// A standalone `trellis ipamd` for one run, under `timeout` so it never outlives it.
struct Ipamd {
    child: std::process::Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Ipamd {
    fn start(trellis: &std::path::Path, pool: &str, block_size: u8) -> anyhow::Result<Ipamd> {
        let dir = tempfile::Builder::new()
            .prefix("cni-bench-ipamd-")
            .tempdir()?;
        let socket = dir.path().join("ipamd.sock");
        let log = std::fs::File::create(dir.path().join("ipamd.log"))?;
        let child = std::process::Command::new("timeout")
            .args(["-s", "KILL", "3600"])
            .arg(trellis)
            .args(["ipamd", "--node", "cni-bench", "--gc-interval", "0"])
            .arg("--local")
            .arg(dir.path().join("ipamd.db"))
            .arg("--socket")
            .arg(&socket)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {} ipamd", trellis.display()))?;
        let mut ipamd = Ipamd {
            child,
            socket,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&ipamd.socket).is_err() {
            if std::time::Instant::now() > deadline || ipamd.child.try_wait()?.is_some() {
                bail!("ipamd did not start; see its log");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let created = std::process::Command::new(trellis)
            .arg("ipam")
            .arg("--socket")
            .arg(&ipamd.socket)
            .args([
                "pool",
                "create",
                "bench",
                "--cidr",
                pool,
                "--block-size",
                &block_size.to_string(),
            ])
            .args(["--reserve-head", "2", "--reserve-tail", "1", "--gateway"])
            .output()?;
        if !created.status.success() {
            bail!(
                "creating the bench pool: {}",
                String::from_utf8_lossy(&created.stderr)
            );
        }
        Ok(ipamd)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM to `timeout` is passed on to ipamd, which stops gracefully (and whatever is left
    /// is killed on drop).
    fn stop(mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Ipamd {
    fn drop(&mut self) {
        self.kill();
    }
}
