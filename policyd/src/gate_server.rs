//! The gate's unix socket, on trellis-policy-gate's wire protocol (one JSON line each way):
//! each request goes to [`Gate::handle`], which answers once the pod's rules are committed.

use std::path::{Path, PathBuf};

use trellis_policy_gate::{AddRequest, Reply};

use crate::gate::{Gate, GateReply, GateRequest};

/// Binds `path` (replacing a socket an earlier run left) and serves the gate until `stop`
/// resolves; the socket file is removed then.
pub fn start(
    path: &Path,
    gate: Gate,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = trellis_policy_gate::bind(path)?;
    let path: PathBuf = path.to_path_buf();
    tracing::info!(socket = %path.display(), "serving the ADD gate");
    tokio::spawn(async move {
        let handler = move |req: AddRequest| {
            let gate = gate.clone();
            async move {
                if req.namespace.is_empty() || req.pod.is_empty() {
                    return Reply::Refused {
                        reason: format!(
                            "container {}: no K8S_POD_NAMESPACE/K8S_POD_NAME, so no Pod to take labels from",
                            req.container_id
                        ),
                    };
                }
                let answer = gate
                    .handle(GateRequest {
                        namespace: req.namespace,
                        pod: req.pod,
                        container_id: req.container_id,
                        addresses: req.addresses,
                        host_interface: req.host_interface,
                    })
                    .await;
                match answer {
                    GateReply::Committed => Reply::Committed,
                    GateReply::Refused(reason) => {
                        tracing::warn!(%reason, "gate request refused");
                        Reply::Refused { reason }
                    }
                }
            }
        };
        if let Err(e) = trellis_policy_gate::serve(listener, handler, stop).await {
            tracing::error!(error = %e, "the ADD gate stopped");
        }
        let _ = std::fs::remove_file(&path);
    });
    Ok(())
}
