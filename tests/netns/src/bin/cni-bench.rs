//! cni-bench: ADD/DEL latency of CNI plugin configurations, side by side.
//!
//!     cni-bench --pods 200 \
//!         --config tests/netns/bench/trellis-overlay.conflist --label trellis-overlay \
//!         --config tests/netns/bench/bridge-host-local.conflist --label bridge+host-local
//!
//! Runs as root: every pod is a fresh network namespace, the plugins run in a throwaway host
//! namespace, and everything is removed at the end.

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
    let mut figures = Vec::new();
    for (i, path) in args.configs.iter().enumerate() {
        let label = args.labels.get(i).cloned().unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let subject = Subject {
            label,
            config: bench::read_config(path)?,
            plugin_dirs: args.plugin_dirs.clone(),
        };
        eprintln!("measuring {} over {} pods…", subject.label, args.pods);
        figures.push(
            bench::measure(&subject, args.pods)
                .await
                .with_context(|| format!("benchmark of {}", path.display()))?,
        );
    }
    print!("{}", bench::table(&figures));
    Ok(())
}
