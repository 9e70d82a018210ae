//! A server for a test: in-process, on a free loopback port, with its own data directory.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use trellis_apiserver::{Config, Running};
use trellis_store::{KeyRange, RangeRequest};

/// Where the API server keeps the Service cluster-IP allocations (address → `ns/name`).
pub const SERVICE_IPS: &str = "/registry/ranges/serviceips/";
/// Where it keeps the node-port allocations (port → `ns/name`).
pub const NODE_PORTS: &str = "/registry/ranges/servicenodeports/";

/// Waits (20 s at most) for `done` to hold, looking every 50 ms.
pub async fn wait_for<F: std::future::Future<Output = bool>>(
    what: &str,
    mut done: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "after 20 s: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

pub struct TestServer {
    pub running: Running,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(dir.path(), "127.0.0.1:0".parse().unwrap());
        adjust(&mut config);
        let running = trellis_apiserver::start(config)
            .await
            .expect("the API server starts");
        TestServer { running, dir }
    }

    /// The allocation keys under `prefix` ([`SERVICE_IPS`], [`NODE_PORTS`]), read from the
    /// store directly: address or port → owner.
    pub async fn allocations(&self, prefix: &str) -> BTreeMap<String, String> {
        let resp = self
            .running
            .store()
            .range(RangeRequest::new(KeyRange::prefix(prefix)))
            .await
            .unwrap();
        resp.kvs
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned(),
                    String::from_utf8_lossy(&kv.value).into_owned(),
                )
            })
            .collect()
    }

    /// A kube-rs client with the admin kubeconfig.
    pub async fn client(&self) -> kube::Client {
        client_from(&std::fs::read_to_string(&self.running.kubeconfig).unwrap()).await
    }

    /// A kube-rs client for `user` in `groups`, with a certificate from the cluster CA.
    pub async fn client_as(&self, user: &str, groups: &[&str]) -> kube::Client {
        let cert = self.running.issue(user, groups).unwrap();
        client_from(&self.running.kubeconfig_for(user, &cert)).await
    }

    /// The watches the server has open now (its `apiserver_watches` gauge on `/metrics`).
    pub async fn open_watches(&self) -> i64 {
        let text = self
            .client()
            .await
            .request_text(http::Request::get("/metrics").body(Vec::new()).unwrap())
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("apiserver_watches "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no apiserver_watches in /metrics:\n{text}"))
    }

    /// Waits (20 s at most) until at least `n` watches are open: a watching client has its
    /// watch established, so a change made now reaches it.
    pub async fn wait_open_watches(&self, n: i64) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let open = self.open_watches().await;
            if open >= n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{open} watches open after 20 s, waiting for {n}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(self) {
        self.running.shutdown().await;
    }
}

pub async fn client_from(kubeconfig: &str) -> kube::Client {
    let kc = kube::config::Kubeconfig::from_yaml(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}
pub mod kubectl;
