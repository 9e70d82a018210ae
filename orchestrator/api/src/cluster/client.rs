//! A kube-rs client from a kubeconfig file, or inferred (in-cluster, then `~/.kube/config`).

use std::path::Path;

/// Why no client could be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("read kubeconfig {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("kubeconfig {path}: {reason}")]
    Config { path: String, reason: String },
    #[error("no kubeconfig given and none found (in-cluster or ~/.kube/config): {0}")]
    Infer(String),
    #[error("kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// A client for the cluster `kubeconfig` describes; with `None`, the in-cluster service
/// account, else the user's default kubeconfig.
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, ClientError> {
    // kube-rs over rustls needs a process-wide crypto provider; installing twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = match kubeconfig {
        Some(path) => {
            let shown = path.display().to_string();
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| ClientError::Read {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| ClientError::Config {
                    path: shown,
                    reason: e.to_string(),
                })?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| ClientError::Infer(e.to_string()))?,
    };
    Ok(kube::Client::try_from(config)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_or_broken_kubeconfig_is_named_in_the_error() {
        let dir = std::env::temp_dir().join(format!("trellis-api-kc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("absent.kubeconfig");
        let Err(e) = client(Some(&missing)).await else {
            panic!("a missing kubeconfig gave a client")
        };
        assert!(matches!(e, ClientError::Read { .. }), "{e}");
        assert!(e.to_string().contains("absent.kubeconfig"), "{e}");
        let broken = dir.join("broken.kubeconfig");
        std::fs::write(
            &broken,
            "apiVersion: v1\nkind: Config\ncurrent-context: nowhere\n",
        )
        .unwrap();
        let Err(e) = client(Some(&broken)).await else {
            panic!("a broken kubeconfig gave a client")
        };
        assert!(e.to_string().contains("broken.kubeconfig"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
