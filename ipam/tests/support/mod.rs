//! What the IPAM integration tests share: an in-process API server with the CRDs, ipamd daemons
//! on sockets of their own, gRPC clients, pools.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Channel;
use trellis_ipam::backend::Backend;
use trellis_ipam::backend::kube::KubeBackend;
use trellis_ipam::backend::local::LocalBackend;
use trellis_ipam::daemon::{self, BackendSpec, Daemon, DaemonConfig};
use trellis_ipam::proto::{self, ipam_client::IpamClient};

pub mod plugin;

/// The API server of a test, with the IPAM CRDs installed.
pub struct Cluster {
    pub running: trellis_apiserver::Running,
    pub dir: tempfile::TempDir,
    pub client: kube::Client,
}

impl Cluster {
    pub async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let config = trellis_apiserver::Config::new(
            dir.path().join("apiserver"),
            "127.0.0.1:0".parse().unwrap(),
        );
        let running = trellis_apiserver::start(config)
            .await
            .expect("the API server starts");
        let client = trellis_api::cluster::client(Some(&running.kubeconfig))
            .await
            .unwrap();
        trellis_ipam::crds::install_crds(&client)
            .await
            .expect("CRDs install");
        Cluster {
            running,
            dir,
            client,
        }
    }

    pub fn backend(&self) -> Arc<dyn Backend> {
        Arc::new(KubeBackend::new(self.client.clone()))
    }

    /// A Node object, so the cluster knows the node (check finds blocks of nodes that are gone).
    pub async fn add_node(&self, name: &str, labels: &[(&str, &str)]) {
        use kube::api::{Api, PostParams};
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.client.clone());
        let mut n = k8s_openapi::api::core::v1::Node::default();
        n.metadata.name = Some(name.into());
        n.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        nodes.create(&PostParams::default(), &n).await.unwrap();
    }

    pub async fn stop(self) {
        self.running.shutdown().await;
    }
}

/// A standalone store in `dir`.
pub fn local_backend(dir: &Path) -> Arc<dyn Backend> {
    Arc::new(LocalBackend::open(&dir.join("ipam.db")).unwrap())
}

/// An ipamd for `node` on a socket in `dir`, sharing `backend`.
pub async fn daemon(node: &str, backend: Arc<dyn Backend>, dir: &Path) -> Daemon {
    let mut config = DaemonConfig::new(
        node,
        BackendSpec::Opened(backend),
        dir.join(format!("{node}.sock")),
    );
    config.gc_interval = None;
    config.cni_cache_dir = dir.join(format!("{node}-cni"));
    daemon::start(config).await.expect("ipamd starts")
}

pub async fn client(socket: &Path) -> IpamClient<Channel> {
    trellis_ipam::client::connect(socket, Duration::from_secs(5), Duration::from_secs(60))
        .await
        .unwrap()
}

pub fn pool(name: &str, cidr: &str, block: u32) -> proto::Pool {
    proto::Pool {
        name: name.into(),
        cidr: cidr.into(),
        block_size: block,
        reserve_head: 2,
        reserve_tail: 1,
        gateway: true,
        ..Default::default()
    }
}

/// An Allocate request for CNI attachment `cid`/eth0 of network `net`.
pub fn add(net: &str, cid: &str, families: &[proto::Family]) -> proto::AllocateRequest {
    proto::AllocateRequest {
        handle: format!("{net}.{cid}.eth0"),
        families: families.iter().map(|f| *f as i32).collect(),
        network: net.into(),
        container_id: cid.into(),
        ifname: "eth0".into(),
        namespace: "default".into(),
        pod: format!("pod-{cid}"),
        ..Default::default()
    }
}

pub fn v4() -> Vec<proto::Family> {
    vec![proto::Family::Ipv4]
}

/// Every address held in the datastore, with its handle.
pub async fn held(backend: &dyn Backend) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for b in backend.list_blocks().await.unwrap() {
        for a in &b.value.spec.allocations {
            out.push((
                b.value.addr(a.ordinal).unwrap().to_string(),
                a.handle.clone(),
            ));
        }
    }
    out
}

pub fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub fn path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}
