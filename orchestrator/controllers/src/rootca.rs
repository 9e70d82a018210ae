//! Root CA publisher (upstream's `root-ca-cert-publisher`): every active namespace has the
//! ConfigMap `kube-root-ca.crt` whose `ca.crt` is the cluster CA bundle, so pods can check the
//! API server's certificate (the kubelet projects it into their service-account volume). It is
//! made when a namespace appears, made again when deleted, and put back when edited.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;

use crate::controller::{OnDelete, Reconciler, owner_handler};
use crate::informer::{Change, Handler, Informer, Synced, handler};
use crate::manager::Watches;
use crate::workqueue::WorkQueue;
use crate::{Ctx, SyncError};

/// The ConfigMap's name and key (upstream's).
pub const NAME: &str = "kube-root-ca.crt";
pub const KEY: &str = "ca.crt";
/// Upstream's annotation on it.
pub const DESCRIPTION_ANNOTATION: &str = "kubernetes.io/description";
pub const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

#[derive(Clone)]
pub struct Controller {
    pub namespaces: Informer<Namespace>,
    pub config_maps: Informer<ConfigMap>,
    pub queue: WorkQueue,
    /// The CA bundle (PEM) to publish.
    ca: String,
    ctx: Ctx,
}

/// What the ConfigMap must hold, if `cm` does not hold it already.
pub fn wanted(cm: Option<&ConfigMap>, ca: &str) -> Option<ConfigMap> {
    let data: BTreeMap<String, String> = [(KEY.to_string(), ca.to_string())].into();
    if let Some(cm) = cm
        && cm.data.as_ref() == Some(&data)
        && cm.binary_data.as_ref().is_none_or(BTreeMap::is_empty)
        && cm
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.get(DESCRIPTION_ANNOTATION).is_some_and(|d| !d.is_empty()))
    {
        return None;
    }
    let mut meta = cm
        .map(|c| c.metadata.clone())
        .unwrap_or_else(|| ObjectMeta {
            name: Some(NAME.into()),
            ..Default::default()
        });
    meta.annotations
        .get_or_insert_with(Default::default)
        .insert(DESCRIPTION_ANNOTATION.into(), DESCRIPTION.into());
    Some(ConfigMap {
        metadata: meta,
        data: Some(data),
        binary_data: None,
        immutable: cm.and_then(|c| c.immutable),
    })
}

impl Controller {
    pub fn new(
        ctx: Ctx,
        namespaces: Informer<Namespace>,
        config_maps: Informer<ConfigMap>,
        ca: String,
    ) -> Self {
        Controller {
            namespaces,
            config_maps,
            queue: WorkQueue::new(),
            ca,
            ctx,
        }
    }

    /// A change to (or the deletion of) a `kube-root-ca.crt` queues its namespace.
    fn config_map_handler(&self) -> Handler<ConfigMap> {
        let q = self.queue.clone();
        handler(move |ch: Change<'_, ConfigMap>| {
            let cm = match ch {
                Change::Applied(cm) | Change::Deleted(cm) => cm,
                Change::Synced => return,
            };
            if cm.metadata.name.as_deref() == Some(NAME)
                && let Some(ns) = &cm.metadata.namespace
            {
                q.add(ns.clone());
            }
        })
    }
}

impl Reconciler for Controller {
    fn name(&self) -> &'static str {
        "root-ca-cert-publisher"
    }

    fn queue(&self) -> &WorkQueue {
        &self.queue
    }

    fn caches(&self) -> Vec<Synced> {
        vec![self.namespaces.synced(), self.config_maps.synced()]
    }

    fn handlers(&self, watches: &mut Watches) {
        watches.on(owner_handler(
            &self.queue,
            &self.namespaces,
            OnDelete::Ignore,
        ));
        watches.on(self.config_map_handler());
    }

    async fn sync(&self, ns: &str) -> Result<Option<Duration>, SyncError> {
        let Some(n) = self.namespaces.get(ns) else {
            return Ok(None);
        };
        let active = n.metadata.deletion_timestamp.is_none()
            && n.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating");
        if !active {
            return Ok(None);
        }
        let cached = self.config_maps.get(&format!("{ns}/{NAME}"));
        let Some(want) = wanted(cached.as_deref(), &self.ca) else {
            return Ok(None);
        };
        let api: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), ns);
        let r = if cached.is_some() {
            // From the cache's resourceVersion: a conflict (the cache was behind) is retried.
            api.replace(NAME, &PostParams::default(), &want).await
        } else {
            api.create(&PostParams::default(), &want).await
        };
        match r {
            Ok(_) => {
                tracing::info!(namespace = %ns, "published {NAME}");
                Ok(None)
            }
            // The namespace is going: nothing to publish.
            Err(kube::Error::Api(s)) if s.code == 403 || s.code == 404 => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_missing_or_edited_config_map_is_put_back_and_a_right_one_left_alone() {
        let made = wanted(None, "CA").unwrap();
        assert_eq!(made.metadata.name.as_deref(), Some(NAME));
        assert_eq!(made.data.as_ref().unwrap()[KEY], "CA");
        assert_eq!(wanted(Some(&made), "CA"), None, "already right");
        // Edited: another bundle, another key, or the annotation gone.
        let mut edited = made.clone();
        edited
            .data
            .as_mut()
            .unwrap()
            .insert(KEY.into(), "evil".into());
        edited.metadata.resource_version = Some("7".into());
        let fixed = wanted(Some(&edited), "CA").unwrap();
        assert_eq!(fixed.data.as_ref().unwrap()[KEY], "CA");
        assert_eq!(
            fixed.metadata.resource_version.as_deref(),
            Some("7"),
            "updated from what was read"
        );
        let mut extra = made.clone();
        extra
            .data
            .as_mut()
            .unwrap()
            .insert("other".into(), "x".into());
        assert_eq!(wanted(Some(&extra), "CA").unwrap().data.unwrap().len(), 1);
        let mut bare = made.clone();
        bare.metadata.annotations = None;
        assert!(wanted(Some(&bare), "CA").is_some());
        // A new CA is published.
        assert!(wanted(Some(&made), "CA2").is_some());
    }
}
