//! `trellis scheduler`: pending pods filtered and scored onto nodes, bound through pods/binding.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

#[derive(clap::Args)]
pub struct Args {
    /// The kubeconfig to reach the API server with (default: in-cluster, then ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Where `/healthz`, `/readyz` and `/metrics` are served (plain HTTP).
    #[arg(long, default_value = "127.0.0.1:10259")]
    listen: SocketAddr,
    /// Elect one active scheduler through the Lease kube-system/kube-scheduler
    /// (`--leader-elect=false` to schedule without one).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// This candidate's identity in the Lease (default: `<hostname>_<uuid>`).
    #[arg(long)]
    leader_elect_identity: Option<String>,
    /// How long a Lease not renewed stays the holder's, in seconds.
    #[arg(long, default_value_t = 15)]
    leader_elect_lease_duration: u64,
    /// How long the leader keeps trying to renew before it stops scheduling, in seconds.
    #[arg(long, default_value_t = 10)]
    leader_elect_renew_deadline: u64,
    /// Seconds between attempts to acquire or renew the Lease.
    #[arg(long, default_value_t = 2)]
    leader_elect_retry_period: u64,
    /// Bindings in flight at most.
    #[arg(long, default_value_t = 16)]
    parallelism: usize,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = trellis_scheduler::Config {
        kubeconfig: args.kubeconfig,
        listen: Some(args.listen),
        leader_elect: args.leader_elect,
        identity: args.leader_elect_identity,
        lease_duration: Duration::from_secs(args.leader_elect_lease_duration.max(1)),
        renew_deadline: Duration::from_secs(args.leader_elect_renew_deadline.max(1)),
        retry_period: Duration::from_secs(args.leader_elect_retry_period.max(1)),
        parallelism: args.parallelism.max(1),
    };
    trellis_scheduler::run(config, trellis_daemon::shutdown_signal())
        .await
        .context("the scheduler failed")
}
