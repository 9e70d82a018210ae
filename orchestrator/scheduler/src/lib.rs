//! The scheduler (`trellis scheduler`): pods whose `spec.schedulerName` is `default-scheduler`
//! (or empty) and that have no node are filtered against every node (NodeUnschedulable,
//! NodeName, TaintToleration, NodeAffinity and nodeSelector, NodePorts, NodeResourcesFit,
//! PodTopologySpread's DoNotSchedule constraints, InterPodAffinity's required terms), the nodes
//! that fit are scored with upstream's default weights, and the pod is bound to the best
//! through `pods/binding`. A pod no node fits gets `PodScheduled=False` with kube-scheduler's
//! per-node message and a `FailedScheduling` event, and is tried again when the cluster changes.
//!
//! Not done: preemption (the message says it is not helpful, as upstream does when it finds no
//! victims), volumes, the default system spreading constraints (explicit
//! topologySpreadConstraints are honoured), non-empty namespaceSelectors of affinity terms,
//! ImageLocality, and percentageOfNodesToScore (every node is evaluated; upstream also
//! evaluates all of them below 100 nodes).

pub mod bind;
pub mod cache;
pub mod daemon;
pub mod filter;
pub mod matching;
pub mod queue;
pub mod resources;
pub mod score;
pub mod topology;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use trellis_daemon::{Health, Metrics};

/// How the scheduler runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub kubeconfig: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    /// Elect a leader through the Lease `kube-system/kube-scheduler` (one active scheduler).
    pub leader_elect: bool,
    /// This candidate's identity in the Lease (default: `<hostname>_<uuid>`).
    pub identity: Option<String>,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    /// Bindings in flight at most.
    pub parallelism: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            kubeconfig: None,
            listen: None,
            leader_elect: true,
            identity: None,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            parallelism: 16,
        }
    }
}

/// Errors that stop the scheduler.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kube client: {0}")]
    Client(String),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("leader election: {0}")]
    Leader(String),
}

/// Runs the scheduler until `stop` resolves (or, with leader election, until the lease is lost:
/// an error, on which callers exit non-zero as upstream does).
pub async fn run(config: Config, stop: impl std::future::Future<Output = ()>) -> Result<(), Error> {
    let client = trellis_api::cluster::client(config.kubeconfig.as_deref())
        .await
        .map_err(|e| Error::Client(e.to_string()))?;
    let health = Arc::new(Health::default());
    health.set_not_ready("not leading, or waiting for the first lists");
    let metrics = Arc::new(Metrics::default());
    metrics.set(
        daemon::M_LEADER,
        "1 while this scheduler holds the lease and schedules.",
        &[],
        0.0,
    );
    let (stop_http_tx, stop_http_rx) = tokio::sync::oneshot::channel::<()>();
    if let Some(addr) = config.listen {
        let bound = trellis_daemon::serve(addr, health.clone(), metrics.clone(), async move {
            let _ = stop_http_rx.await;
        })
        .await
        .map_err(|source| Error::Listen { addr, source })?;
        tracing::info!(%bound, "health and metrics");
    }
    let state: daemon::Shared = Arc::new(Mutex::new(daemon::State::default()));
    let wake = Arc::new(Notify::new());
    let _watches = daemon::watch(client.clone(), state.clone(), wake.clone());
    let lp = daemon::Loop {
        client: client.clone(),
        state,
        wake,
        metrics: metrics.clone(),
        health: health.clone(),
        parallelism: config.parallelism,
    };
    let result = leading(&config, client, stop, lp).await;
    metrics.set(
        daemon::M_LEADER,
        "1 while this scheduler holds the lease and schedules.",
        &[],
        0.0,
    );
    let _ = stop_http_tx.send(());
    result
}

/// Runs the loop, under leader election when asked: only while this candidate holds the Lease
/// `kube-system/kube-scheduler`. Every write the loop makes lives in its future, which the
/// election drops when a renewal misses the renew deadline (before the lease can pass on).
async fn leading(
    config: &Config,
    client: kube::Client,
    stop: impl std::future::Future<Output = ()>,
    lp: daemon::Loop,
) -> Result<(), Error> {
    if !config.leader_elect {
        tokio::select! {
            _ = stop => {}
            _ = daemon::lead(lp) => {}
        }
        return Ok(());
    }
    let identity = config
        .identity
        .clone()
        .unwrap_or_else(trellis_api::cluster::leader::default_identity);
    let mut election =
        trellis_api::cluster::leader::LeaderElection::new("kube-scheduler", &identity);
    election.lease_duration = config.lease_duration;
    election.renew_deadline = config.renew_deadline;
    election.retry_period = config.retry_period;
    tracing::info!(%identity, "waiting to lead (Lease kube-system/kube-scheduler)");
    election
        .run(client, stop, move || daemon::lead(lp))
        .await
        .map_err(|e| Error::Leader(e.to_string()))
}
