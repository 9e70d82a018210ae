//! `trellis policyd`: the network policy daemon of one node (runs in the node's network
//! namespace).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use trellis_policyd::daemon::Config;

#[derive(clap::Args)]
pub struct Args {
    /// This node's name (its Node object): policyd enforces for the pods on this node.
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// The kubeconfig to reach the API server with (default: in-cluster, then ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The unix socket the CNI plugins' ADD gate calls.
    #[arg(long, default_value = "/run/trellis/policyd.sock")]
    gate_socket: PathBuf,
    /// Where `/healthz`, `/readyz` (200 once the first full program is committed), `/metrics`
    /// and `/explain` are served.
    #[arg(long, default_value = "127.0.0.1:9914")]
    listen: SocketAddr,
    /// Milliseconds between verifier passes (our chains, jumps and sets put back if changed).
    #[arg(long, default_value_t = 1000)]
    verify_period_ms: u64,
    /// A file written after the first full commit and removed on exit.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// For negative controls only: do NOT default-deny pods whose rules are not committed yet.
    #[arg(long)]
    no_pending_deny: bool,
    /// For comparison only: compile and diff the whole program on every event, pod events
    /// included (by default a pod event commits only the set members and chains it changes).
    #[arg(long)]
    full_compile: bool,
    /// For comparison only: every iptables restore a process of its own (by default, on
    /// nf_tables, restores go through one long-lived `iptables-nft-restore`).
    #[arg(long)]
    restore_per_commit: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = Config {
        node: args.node,
        kubeconfig: args.kubeconfig,
        gate_socket: args.gate_socket,
        listen: args.listen,
        verify_period: Duration::from_millis(args.verify_period_ms.max(1)),
        ready_file: args.ready_file,
        pending_deny: !args.no_pending_deny,
        incremental: !args.full_compile,
        restore_session: !args.restore_per_commit,
    };
    trellis_policyd::daemon::run(config, trellis_daemon::shutdown_signal())
        .await
        .context("policyd failed")
}
