//! ServiceAccount controller: every active namespace has a `default` ServiceAccount (made
//! again if deleted).

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::Api;
use kube::api::PostParams;

use crate::controller::{OnDelete, Reconciler, owner_handler};
use crate::informer::{Change, Handler, Informer, Synced, handler};
use crate::manager::Watches;
use crate::workqueue::WorkQueue;
use crate::{Ctx, SyncError, owner};

#[derive(Clone)]
pub struct Controller {
    pub namespaces: Informer<Namespace>,
    pub accounts: Informer<ServiceAccount>,
    pub queue: WorkQueue,
    ctx: Ctx,
}

impl Controller {
    pub fn new(
        ctx: Ctx,
        namespaces: Informer<Namespace>,
        accounts: Informer<ServiceAccount>,
    ) -> Self {
        Controller {
            namespaces,
            accounts,
            queue: WorkQueue::new(),
            ctx,
        }
    }

    fn account_handler(&self) -> Handler<ServiceAccount> {
        let c = self.clone();
        handler(move |ch: Change<'_, ServiceAccount>| {
            if let Change::Deleted(a) = ch
                && a.metadata.name.as_deref() == Some("default")
                && let Some(ns) = &a.metadata.namespace
            {
                c.queue.add(ns.clone());
            }
        })
    }
}

impl Reconciler for Controller {
    fn name(&self) -> &'static str {
        "serviceaccount"
    }

    fn queue(&self) -> &WorkQueue {
        &self.queue
    }

    fn caches(&self) -> Vec<Synced> {
        vec![self.namespaces.synced(), self.accounts.synced()]
    }

    fn handlers(&self, watches: &mut Watches) {
        watches.on(owner_handler(
            &self.queue,
            &self.namespaces,
            OnDelete::Ignore,
        ));
        watches.on(self.account_handler());
    }

    async fn sync(&self, ns: &str) -> Result<Option<Duration>, SyncError> {
        let Some(n) = self.namespaces.get(ns) else {
            return Ok(None);
        };
        let active = n.metadata.deletion_timestamp.is_none()
            && n.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating");
        if !active || self.accounts.get(&format!("{ns}/default")).is_some() {
            return Ok(None);
        }
        let api: Api<ServiceAccount> = Api::namespaced(self.ctx.client.clone(), ns);
        let sa = ServiceAccount {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("default".into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        match api.create(&PostParams::default(), &sa).await {
            Ok(_) => tracing::info!(namespace = %ns, "created the default ServiceAccount"),
            // Already there (the cache was behind) or the namespace is going: fine.
            Err(e) if owner::is_conflict(&e) => {}
            Err(kube::Error::Api(s)) if s.code == 403 || s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        Ok(None)
    }
}
