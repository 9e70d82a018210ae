//! containerd through its own gRPC API (not its CRI plugin): the connection every call goes
//! through ([`Conn`]: the socket, the containerd namespace, an optional lease), OCI image import
//! and unpacking ([`image`]), and the kubelet's `containerd` runtime ([`runtime`]).
//!
//! Works with containerd 1.6 (Debian's): no Transfer service is needed, images are written blob
//! by blob through the Content service and unpacked with Snapshots and Diff, as containerd's own
//! client does.

pub mod exec;
pub mod gc;
pub mod image;
pub mod pull;
pub mod runtime;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::{CreateRequest, DeleteRequest};
use tonic::transport::Channel;

/// The default socket of a system containerd.
pub const DEFAULT_ADDRESS: &str = "/run/containerd/containerd.sock";
/// The containerd namespace the kubelet and `trellis image import` use by default (CRI's is
/// `k8s.io`: ours never mixes with a CRI kubelet's).
pub const DEFAULT_NAMESPACE: &str = "trellis";
/// The snapshotter images are unpacked into and containers run from.
pub const DEFAULT_SNAPSHOTTER: &str = "overlayfs";

/// How the containerd runtime gets images and collects unused ones.
#[derive(Debug, Clone, Default)]
pub struct ImageSettings {
    /// Registry endpoints and credentials (`--registry-config`, k3s' `registries.yaml`).
    pub registries: pull::Registries,
    pub gc: gc::GcPolicy,
}

/// A failure talking to containerd or handling an image.
#[derive(Debug, thiserror::Error)]
pub enum CtrdError {
    #[error("containerd at {address} is not reachable: {why}")]
    Connect { address: PathBuf, why: String },
    #[error("containerd {what}: {code:?}: {message}")]
    Rpc {
        what: String,
        code: tonic::Code,
        message: String,
    },
    /// The image is not in containerd's image store.
    #[error(
        "image {image:?} is not present in containerd namespace {namespace:?}: pull it from a registry or import it with `trellis image import`"
    )]
    ImageNotFound { image: String, namespace: String },
    /// A bad archive or image: not a tar, no index.json, a digest that does not match.
    #[error("{0}")]
    Image(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl CtrdError {
    pub(crate) fn rpc(what: impl Into<String>, s: tonic::Status) -> CtrdError {
        CtrdError::Rpc {
            what: what.into(),
            code: s.code(),
            message: s.message().to_string(),
        }
    }

    /// Whether this is containerd's "not found".
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            CtrdError::Rpc {
                code: tonic::Code::NotFound,
                ..
            }
        )
    }

    /// Whether this is containerd's "already exists".
    pub fn is_already_exists(&self) -> bool {
        matches!(
            self,
            CtrdError::Rpc {
                code: tonic::Code::AlreadyExists,
                ..
            }
        )
    }
}

/// An error and its causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A connection to containerd in one of its namespaces.
#[derive(Clone)]
pub struct Conn {
    pub channel: Channel,
    pub namespace: String,
    pub address: PathBuf,
}

impl Conn {
    /// Connects to the socket at `address` (it must answer now).
    pub async fn connect(address: &Path, namespace: &str) -> Result<Conn, CtrdError> {
        let channel =
            containerd_client::connect(address)
                .await
                .map_err(|e| CtrdError::Connect {
                    address: address.to_path_buf(),
                    why: chain(&e),
                })?;
        let conn = Conn {
            channel,
            namespace: namespace.to_string(),
            address: address.to_path_buf(),
        };
        // The channel connects lazily on some errors; one call proves the daemon answers.
        containerd_client::services::v1::version_client::VersionClient::new(conn.channel.clone())
            .version(conn.request(()))
            .await
            .map_err(|e| CtrdError::Connect {
                address: address.to_path_buf(),
                why: format!("{:?}: {}", e.code(), e.message()),
            })?;
        Ok(conn)
    }

    /// `msg` with the namespace metadata every containerd call needs.
    pub fn request<T>(&self, msg: T) -> tonic::Request<T> {
        self.request_leased(msg, None)
    }

    /// `msg` in the namespace, holding `lease` (what it writes is safe from GC until the lease
    /// goes).
    pub fn request_leased<T>(&self, msg: T, lease: Option<&str>) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        if let Ok(v) = self.namespace.parse() {
            req.metadata_mut().insert("containerd-namespace", v);
        }
        if let Some(l) = lease
            && let Ok(v) = l.parse()
        {
            req.metadata_mut().insert("containerd-lease", v);
        }
        req
    }

    /// A lease that expires by itself after an hour (should this process die holding it).
    pub async fn lease(&self, purpose: &str) -> Result<String, CtrdError> {
        let id = format!(
            "trellis-{purpose}-{}-{}",
            std::process::id(),
            jiff::Timestamp::now().as_nanosecond()
        );
        let expire = (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3600)).to_string();
        let labels = HashMap::from([("containerd.io/gc.expire".to_string(), expire)]);
        LeasesClient::new(self.channel.clone())
            .create(self.request(CreateRequest {
                id: id.clone(),
                labels,
            }))
            .await
            .map_err(|s| CtrdError::rpc("create a lease", s))?;
        Ok(id)
    }

    /// Drops a lease (what it held is now protected by what references it, or collected).
    pub async fn release(&self, lease: &str) {
        let r = LeasesClient::new(self.channel.clone())
            .delete(self.request(DeleteRequest {
                id: lease.to_string(),
                sync: false,
            }))
            .await;
        if let Err(e) = r {
            tracing::debug!(lease, error = %e.message(), "releasing a containerd lease");
        }
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("address", &self.address)
            .field("namespace", &self.namespace)
            .finish()
    }
}
