//! Namespace deletion: a namespace marked for deletion has its contents deleted, then goes
//! itself (the `kubernetes` finalizer that the Kubernetes namespace controller serves).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::handlers::Api;
use crate::meta;
use crate::status::ApiError;
use crate::storage::ListAt;

/// How often terminating namespaces are looked at even without a wake-up.
const PERIOD: Duration = Duration::from_secs(2);

/// Runs until `stop` fires.
pub async fn run(api: Arc<Api>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        if let Err(e) = pass(&api).await {
            tracing::warn!(error = %e, "namespace finalization");
        }
        tokio::select! {
            _ = api.namespace_deleted.notified() => {}
            _ = tokio::time::sleep(PERIOD) => {}
            _ = stop.changed() => return,
        }
    }
}

/// One pass over the terminating namespaces.
pub async fn pass(api: &Api) -> Result<(), ApiError> {
    let ns_info = api
        .registry
        .find("", "v1", "namespaces")
        .ok_or_else(|| ApiError::internal("namespaces are not served"))?;
    let terminating = api
        .storage
        .list(&ns_info, None, ListAt::Latest, 0, None, &meta::is_deleting)
        .await?;
    for ns in terminating.items {
        let Some(name) = meta::name(&ns).map(String::from) else {
            continue;
        };
        let mut remaining = 0;
        // autoscaling/v1 is a view of the v2 objects: visiting them once is enough.
        for info in api
            .registry
            .all()
            .into_iter()
            .filter(|r| r.namespaced && !crate::hpa_v1::is_v1(r))
        {
            let page = api
                .storage
                .list(&info, Some(&name), ListAt::Latest, 0, None, &|_: &Value| {
                    true
                })
                .await?;
            for obj in page.items {
                remaining += 1;
                let Some(obj_name) = meta::name(&obj).map(String::from) else {
                    continue;
                };
                let opts = crate::handlers::DeleteOptions {
                    grace: Some(0),
                    ..Default::default()
                };
                match api
                    .delete_one(&info, Some(&name), &obj_name, &opts, false)
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.code == 404 => {}
                    Err(e) => {
                        tracing::warn!(error = %e, namespace = %name, object = %obj_name, "deleting namespace content")
                    }
                }
            }
        }
        if remaining > 0 {
            continue;
        }
        // Empty: the `kubernetes` finalizer is done; the namespace goes once no other finalizer
        // (in metadata, someone else's) holds it.
        let Some(cur) = api.storage.get(&ns_info, None, &name).await? else {
            continue;
        };
        if !meta::finalizers(&cur.obj).is_empty() {
            continue;
        }
        api.storage
            .delete(&ns_info, None, &name, cur.revision, Vec::new())
            .await?;
        tracing::info!(namespace = %name, "namespace deleted");
    }
    Ok(())
}
