//! The node's pod network: the default conflist of the CNI configuration directory (the first
//! by file name, as libcni picks it), its STATUS for node readiness, and ADD/DEL/GC through
//! trellis-cni's invoker. Plugins run on a blocking thread, never on the async workers.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use trellis_cni::NetworkConfigList;
use trellis_cni::invoke::{CniConfig, RuntimeConf};
use trellis_cni::skel::AttachmentId;

use crate::{Config, Error};

/// The pod's identity as CNI_ARGS carry it.
#[derive(Debug, Clone)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The sandbox id: the CNI container id.
    pub sandbox_id: String,
    pub netns: PathBuf,
}

#[derive(Clone)]
pub struct Network {
    inner: Arc<Inner>,
}

struct Inner {
    conf_dir: PathBuf,
    cni: CniConfig,
}

impl Network {
    pub fn new(cfg: &Config) -> Network {
        Network {
            inner: Arc::new(Inner {
                conf_dir: cfg.cni_conf_dir.clone(),
                cni: CniConfig::new(cfg.cni_bin_dirs.clone(), cfg.cni_cache_dir.clone())
                    .with_timeout(cfg.cni_timeout),
            }),
        }
    }

    /// The default network, chosen as libcni's users do (the first valid file by name).
    pub fn default_list(conf_dir: &Path) -> Result<NetworkConfigList, String> {
        trellis_cni::invoke::default_network(conf_dir).map_err(|e| e.to_string())
    }

    /// Ok when a network configuration exists and its plugins answer STATUS.
    pub async fn ready(&self) -> Result<(), String> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let list = Network::default_list(&inner.conf_dir)?;
            inner
                .cni
                .status(&list)
                .map_err(|e| format!("network plugin not ready: {e}"))
        })
        .await
        .map_err(|e| e.to_string())?
    }

    fn rt(pod: &PodRef) -> RuntimeConf {
        RuntimeConf {
            container_id: pod.sandbox_id.clone(),
            netns: pod.netns.clone(),
            ifname: "eth0".into(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), pod.namespace.clone()),
                ("K8S_POD_NAME".into(), pod.name.clone()),
                ("K8S_POD_INFRA_CONTAINER_ID".into(), pod.sandbox_id.clone()),
                ("K8S_POD_UID".into(), pod.uid.clone()),
            ],
            capability_args: Default::default(),
        }
    }

    /// CNI ADD; the pod's addresses from the result.
    pub async fn add(&self, pod: PodRef) -> Result<Vec<IpAddr>, Error> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let list = Network::default_list(&inner.conf_dir).map_err(Error::Other)?;
            let result = inner.cni.add(&list, &Network::rt(&pod))?;
            Ok(result.ips.iter().map(|ip| ip.address.addr()).collect())
        })
        .await
        .map_err(|e| Error::Other(e.to_string()))?
    }

    /// CNI DEL (idempotent: after a failed ADD, or when nothing is left).
    pub async fn del(&self, pod: PodRef) -> Result<(), Error> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let list = Network::default_list(&inner.conf_dir).map_err(Error::Other)?;
            inner.cni.del(&list, &Network::rt(&pod))?;
            Ok(())
        })
        .await
        .map_err(|e| Error::Other(e.to_string()))?
    }

    /// CNI GC: everything not held by `valid` sandbox ids is released.
    pub async fn gc(&self, valid: Vec<String>) -> Result<(), Error> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let list = Network::default_list(&inner.conf_dir).map_err(Error::Other)?;
            let valid: Vec<AttachmentId> = valid
                .into_iter()
                .map(|container_id| AttachmentId {
                    container_id,
                    ifname: "eth0".into(),
                })
                .collect();
            inner.cni.gc(&list, &valid)?;
            Ok(())
        })
        .await
        .map_err(|e| Error::Other(e.to_string()))?
    }
}
