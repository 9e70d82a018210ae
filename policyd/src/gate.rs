//! The ADD gate, policyd's side: a CNI plugin tells policyd about a new local pod (namespace,
//! pod, addresses, host interface) and waits; policyd programs the pod and answers Committed
//! only once the pod's dispatch and chains are in the kernel. Until then the pod's interface is
//! default-deny (pending deny in the dispatch chains), so no packet passes unjudged.
//!
//! The Pod's labels come from its Pod object; if the watch has not delivered it yet, it is
//! fetched from the API (bounded). Every wait is bounded: past it the answer is Refused and
//! the plugin fails the ADD.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod as KubePod;
use kube::Api;
use tokio::sync::{mpsc, oneshot};

use crate::model::{Cluster, Pod};

/// What a plugin sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateRequest {
    pub namespace: String,
    pub pod: String,
    pub container_id: String,
    pub addresses: Vec<IpAddr>,
    pub host_interface: String,
}

/// What policyd answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateReply {
    Committed,
    Refused(String),
}

/// A gate request on its way to the daemon's loop.
#[derive(Debug)]
pub struct Registration {
    pub key: String,
    pub ips: Vec<Ipv4Addr>,
    pub iface: String,
    /// The Pod as fetched from the API when the watch did not have it yet.
    pub fetched: Option<Pod>,
    pub reply: oneshot::Sender<GateReply>,
    pub at: Instant,
}

/// How long a plugin is kept waiting at most (the plugin bounds its own wait too).
pub const COMMIT_BOUND: Duration = Duration::from_secs(20);
const FETCH_BOUND: Duration = Duration::from_secs(5);

/// The gate's handler: cheap to clone, one per connection.
#[derive(Clone)]
pub struct Gate {
    pub tx: mpsc::Sender<Registration>,
    pub client: kube::Client,
    pub cluster: Arc<RwLock<Cluster>>,
    pub metrics: Arc<trellis_daemon::Metrics>,
}

impl Gate {
    /// Answers one request (and counts refusals; commits are counted where they happen).
    pub async fn handle(&self, req: GateRequest) -> GateReply {
        let started = Instant::now();
        let answer = self.answer(req).await;
        if let GateReply::Refused(_) = &answer {
            crate::metrics::gate(&self.metrics, "refused", started.elapsed().as_secs_f64());
        }
        answer
    }

    async fn answer(&self, req: GateRequest) -> GateReply {
        let key = format!("{}/{}", req.namespace, req.pod);
        let known = self
            .cluster
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .pods
            .contains_key(&key);
        let fetched = if known {
            None
        } else {
            let api: Api<KubePod> = Api::namespaced(self.client.clone(), &req.namespace);
            match tokio::time::timeout(FETCH_BOUND, api.get_opt(&req.pod)).await {
                Ok(Ok(Some(p))) => Some(crate::watch::pod_of(&p)),
                Ok(Ok(None)) => return GateReply::Refused(format!("no Pod {key} in the API")),
                Ok(Err(e)) => return GateReply::Refused(format!("fetching Pod {key}: {e}")),
                Err(_) => {
                    return GateReply::Refused(format!(
                        "fetching Pod {key}: no answer within {FETCH_BOUND:?}"
                    ));
                }
            }
        };
        let ips = req
            .addresses
            .iter()
            .filter_map(|a| match a {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .collect();
        let (reply, rx) = oneshot::channel();
        let reg = Registration {
            key: key.clone(),
            ips,
            iface: req.host_interface,
            fetched,
            reply,
            at: Instant::now(),
        };
        if self.tx.send(reg).await.is_err() {
            return GateReply::Refused("policyd is shutting down".into());
        }
        match tokio::time::timeout(COMMIT_BOUND, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => GateReply::Refused("policyd is shutting down".into()),
            Err(_) => GateReply::Refused(format!(
                "the rules of {key} were not committed within {COMMIT_BOUND:?}"
            )),
        }
    }
}
