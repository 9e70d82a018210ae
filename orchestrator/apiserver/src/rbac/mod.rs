//! Role-based access control (rbac.authorization.k8s.io/v1), as upstream's RBAC authorizer.
//!
//! - [`rule`]: one PolicyRule and whether it allows a request.
//! - [`authorizer`]: the bindings and roles in memory, and the decision.
//! - [`aggregate`]: ClusterRoles filled from the ClusterRoles their labels select.
//! - [`escalation`]: no granting of rights one does not hold.
//! - [`bootstrap`]: the default roles and bindings, created at start-up.
//! - [`review`]: SelfSubjectAccessReview and SubjectAccessReview (`kubectl auth can-i`).

pub mod aggregate;
pub mod authorizer;
pub mod bootstrap;
pub mod escalation;
pub mod review;
pub mod rule;

use std::sync::Arc;

use serde_json::Value;

use crate::handlers::Api;
use crate::status::ApiError;
use crate::storage::ListAt;
pub use authorizer::{RuleCache, Snapshot};
pub use rule::{Attributes, PolicyRule};

pub const GROUP: &str = "rbac.authorization.k8s.io";
pub const PLURALS: [&str; 4] = [
    "roles",
    "clusterroles",
    "rolebindings",
    "clusterrolebindings",
];

async fn list_all(api: &Api, plural: &str) -> Result<Vec<Value>, ApiError> {
    let info = api
        .registry
        .find(GROUP, "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("{plural} are not served")))?;
    Ok(api
        .storage
        .list(&info, None, ListAt::Latest, 0, None, &|_: &Value| true)
        .await?
        .items)
}

/// Re-reads the RBAC objects into the cache, and writes back aggregated ClusterRoles whose
/// rules are out of date (which brings another reload through the watch).
pub async fn reload(api: &Api) -> Result<(), ApiError> {
    let roles = list_all(api, "roles").await?;
    let cluster_roles = list_all(api, "clusterroles").await?;
    let role_bindings = list_all(api, "rolebindings").await?;
    let cluster_role_bindings = list_all(api, "clusterrolebindings").await?;
    // Decide with the aggregated rules at once, without waiting for the write-back.
    let aggregated = aggregate::apply(&cluster_roles);
    api.rbac.set(Snapshot::new(
        &roles,
        &aggregated,
        &role_bindings,
        &cluster_role_bindings,
    ));
    let info = api
        .registry
        .find(GROUP, "v1", "clusterroles")
        .ok_or_else(|| ApiError::internal("clusterroles are not served"))?;
    for role in aggregate::changes(&cluster_roles) {
        let Some(name) = crate::meta::name(&role).map(String::from) else {
            continue;
        };
        let revision = role["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        tracing::info!(%name, "aggregating ClusterRole rules");
        // A conflict: someone changed it meanwhile, and the watch brings us back here.
        let _ = api
            .storage
            .update(&info, None, &name, revision, &role)
            .await?;
    }
    Ok(())
}

/// Keeps the cache in step with the store: reloads on every change of an RBAC object, also
/// those written through other API servers.
pub async fn follow(api: Arc<Api>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let prefix = format!("/registry/{GROUP}/");
    loop {
        let watch = api
            .storage
            .store()
            .watch(trellis_store::WatchRequest::new(
                trellis_store::KeyRange::prefix(prefix.as_str()),
            ))
            .await;
        if let Ok(mut w) = watch {
            if let Err(e) = reload(&api).await {
                tracing::warn!(error = %e, "reloading RBAC rules");
            }
            loop {
                tokio::select! {
                    ev = w.next() => match ev {
                        Some(Ok(_)) => {
                            if let Err(e) = reload(&api).await {
                                tracing::warn!(error = %e, "reloading RBAC rules");
                            }
                        }
                        _ => break,
                    },
                    _ = stop.changed() => return,
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}
