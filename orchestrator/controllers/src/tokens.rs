//! Token controller (upstream's `serviceaccount-token`), for the legacy token Secrets users
//! still create by hand (upstream 1.24+ no longer makes them itself): a Secret of type
//! `kubernetes.io/service-account-token` annotated `kubernetes.io/service-account.name` gets
//! `token` (a non-expiring JWT naming the Secret and the account, signed with the API server's
//! service-account key), `ca.crt` and `namespace`, and the account's uid in
//! `kubernetes.io/service-account.uid`. A Secret whose account is gone (or was made again,
//! with another uid) is deleted, as upstream does. The API server accepts such a token only
//! while the Secret exists and holds it: deleting the Secret revokes it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::Api;
use kube::api::{DeleteParams, PostParams, Preconditions};
use trellis_api::jwt::{Signer, legacy_claims};

use crate::controller::{OnDelete, Reconciler, owner_handler};
use crate::informer::{Change, Handler, Informer, Synced, handler};
use crate::manager::Watches;
use crate::workqueue::WorkQueue;
use crate::{Ctx, SyncError, owner};

/// The Secret type and annotations (upstream's).
pub const SECRET_TYPE: &str = "kubernetes.io/service-account-token";
pub const NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";
pub const UID_ANNOTATION: &str = "kubernetes.io/service-account.uid";

/// The service-account signing key (`--service-account-private-key-file`); its Debug never
/// shows the key.
#[derive(Clone)]
pub struct SigningKey(pub Arc<Signer>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

#[derive(Clone)]
pub struct Controller {
    pub secrets: Informer<Secret>,
    pub accounts: Informer<ServiceAccount>,
    pub queue: WorkQueue,
    key: SigningKey,
    /// The CA bundle written as `ca.crt` (none: left out).
    ca: Option<String>,
    ctx: Ctx,
}

fn annotation<'a>(s: &'a Secret, key: &str) -> Option<&'a str> {
    s.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

fn is_token_secret(s: &Secret) -> bool {
    s.type_.as_deref() == Some(SECRET_TYPE)
}

/// The data a token Secret lacks, given its account's uid: `None` when it is complete. The
/// token is made only when there is none (as upstream: a present token is the user's to keep).
pub fn missing(
    s: &Secret,
    account_uid: &str,
    ca: Option<&str>,
    make_token: impl FnOnce() -> Result<String, SyncError>,
) -> Result<Option<Secret>, SyncError> {
    let ns = s.metadata.namespace.clone().unwrap_or_default();
    let data = s.data.clone().unwrap_or_default();
    let has = |k: &str, want: &[u8]| data.get(k).is_some_and(|v| v.0 == want);
    let needs_token = data.get("token").is_none_or(|t| t.0.is_empty());
    let needs_ca = ca.is_some_and(|ca| !has("ca.crt", ca.as_bytes()));
    let needs_ns = !has("namespace", ns.as_bytes());
    let needs_uid = annotation(s, UID_ANNOTATION) != Some(account_uid);
    if !(needs_token || needs_ca || needs_ns || needs_uid) {
        return Ok(None);
    }
    let mut out = s.clone();
    let data: &mut BTreeMap<String, ByteString> = out.data.get_or_insert_with(Default::default);
    if needs_token {
        data.insert("token".into(), ByteString(make_token()?.into_bytes()));
    }
    if let Some(ca) = ca {
        data.insert("ca.crt".into(), ByteString(ca.as_bytes().to_vec()));
    }
    data.insert("namespace".into(), ByteString(ns.into_bytes()));
    out.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(UID_ANNOTATION.into(), account_uid.into());
    Ok(Some(out))
}

impl Controller {
    pub fn new(
        ctx: Ctx,
        secrets: Informer<Secret>,
        accounts: Informer<ServiceAccount>,
        key: SigningKey,
        ca: Option<String>,
    ) -> Self {
        Controller {
            secrets,
            accounts,
            queue: WorkQueue::new(),
            key,
            ca,
            ctx,
        }
    }

    /// A change of an account queues the token Secrets that name it (made for it, or to be
    /// deleted with it).
    fn account_handler(&self) -> Handler<ServiceAccount> {
        let c = self.clone();
        handler(move |ch: Change<'_, ServiceAccount>| {
            let sa = match ch {
                Change::Applied(sa) | Change::Deleted(sa) => sa,
                Change::Synced => return,
            };
            let (Some(ns), Some(name)) = (&sa.metadata.namespace, &sa.metadata.name) else {
                return;
            };
            for s in c.secrets.state() {
                if is_token_secret(&s)
                    && s.metadata.namespace.as_ref() == Some(ns)
                    && annotation(&s, NAME_ANNOTATION) == Some(name)
                {
                    c.queue.add(owner::key(&s.metadata));
                }
            }
        })
    }

    /// The account, from the cache or (missing there: the cache may be behind) the API.
    async fn account(&self, ns: &str, name: &str) -> Result<Option<ServiceAccount>, SyncError> {
        if let Some(sa) = self.accounts.get(&format!("{ns}/{name}")) {
            return Ok(Some((*sa).clone()));
        }
        let api: Api<ServiceAccount> = Api::namespaced(self.ctx.client.clone(), ns);
        Ok(api.get_opt(name).await?)
    }

    async fn delete(&self, s: &Secret, why: &str) -> Result<Option<Duration>, SyncError> {
        let (ns, name) = (
            s.metadata.namespace.as_deref().unwrap_or_default(),
            s.metadata.name.as_deref().unwrap_or_default(),
        );
        let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), ns);
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: s.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(name, &dp).await {
            Ok(_) => {
                tracing::info!(namespace = %ns, secret = %name, "deleted a token Secret: {why}")
            }
            Err(e) if owner::is_not_found(&e) || owner::is_conflict(&e) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(None)
    }
}

impl Reconciler for Controller {
    fn name(&self) -> &'static str {
        "serviceaccount-token"
    }

    fn queue(&self) -> &WorkQueue {
        &self.queue
    }

    fn caches(&self) -> Vec<Synced> {
        vec![self.secrets.synced(), self.accounts.synced()]
    }

    fn handlers(&self, watches: &mut Watches) {
        watches.on(owner_handler(&self.queue, &self.secrets, OnDelete::Ignore));
        watches.on(self.account_handler());
    }

    async fn sync(&self, key: &str) -> Result<Option<Duration>, SyncError> {
        let Some(s) = self.secrets.get(key) else {
            return Ok(None);
        };
        if !is_token_secret(&s) || s.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let (Some(ns), Some(name)) = (s.metadata.namespace.clone(), s.metadata.name.clone()) else {
            return Ok(None);
        };
        let Some(sa_name) = annotation(&s, NAME_ANNOTATION).map(String::from) else {
            return Ok(None);
        };
        let account = self.account(&ns, &sa_name).await?;
        let sa_uid = account.as_ref().and_then(|a| a.metadata.uid.clone());
        let Some(sa_uid) = sa_uid.filter(|_| {
            account
                .as_ref()
                .is_some_and(|a| a.metadata.deletion_timestamp.is_none())
        }) else {
            return self
                .delete(&s, &format!("its ServiceAccount {sa_name} does not exist"))
                .await;
        };
        if let Some(named) = annotation(&s, UID_ANNOTATION)
            && named != sa_uid
        {
            return self
                .delete(&s, &format!("its ServiceAccount {sa_name} was made again"))
                .await;
        }
        let signer = self.key.0.clone();
        let make = || {
            signer
                .sign(&legacy_claims(&ns, &name, &sa_name, &sa_uid))
                .map_err(|e| SyncError::Other(e.to_string()))
        };
        let Some(filled) = missing(&s, &sa_uid, self.ca.as_deref(), make)? else {
            return Ok(None);
        };
        let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &ns);
        // From the cache's resourceVersion: a conflict (the cache was behind) is retried.
        match api.replace(&name, &PostParams::default(), &filled).await {
            Ok(_) => {
                tracing::info!(namespace = %ns, secret = %name, account = %sa_name, "filled a token Secret");
                Ok(None)
            }
            Err(e) if owner::is_not_found(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn secret(data: serde_json::Value, uid: Option<&str>) -> Secret {
        let mut annotations = json!({NAME_ANNOTATION: "robot"});
        if let Some(u) = uid {
            annotations[UID_ANNOTATION] = json!(u);
        }
        serde_json::from_value(json!({
            "metadata": {"name": "robot-token", "namespace": "team", "annotations": annotations},
            "type": SECRET_TYPE,
            "data": data,
        }))
        .unwrap()
    }

    fn b64(s: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn an_empty_token_secret_gets_token_ca_namespace_and_the_uid() {
        let s = secret(json!({}), None);
        let filled = missing(&s, "u1", Some("CA"), || Ok("T".into()))
            .unwrap()
            .unwrap();
        let d = filled.data.as_ref().unwrap();
        assert_eq!(d["token"].0, b"T");
        assert_eq!(d["ca.crt"].0, b"CA");
        assert_eq!(d["namespace"].0, b"team");
        assert_eq!(annotation(&filled, UID_ANNOTATION), Some("u1"));
        // Complete: nothing to do, and no token is made.
        let again = missing(&filled, "u1", Some("CA"), || panic!("no new token")).unwrap();
        assert!(again.is_none());
    }

    #[test]
    fn a_present_token_is_kept_and_only_what_is_missing_is_added() {
        let s = secret(
            json!({"token": b64("mine"), "namespace": b64("team")}),
            Some("u1"),
        );
        let filled = missing(&s, "u1", Some("CA"), || panic!("no new token"))
            .unwrap()
            .unwrap();
        let d = filled.data.as_ref().unwrap();
        assert_eq!(d["token"].0, b"mine");
        assert_eq!(d["ca.crt"].0, b"CA");
        // Without a CA none is asked for.
        assert!(
            missing(&s, "u1", None, || panic!("no new token"))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_signing_key_never_shows_in_debug_output() {
        let key = rcgen_key();
        assert_eq!(format!("{key:?}"), "SigningKey(..)");
    }

    fn rcgen_key() -> SigningKey {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        SigningKey(Arc::new(Signer::from_pem(&key.serialize_pem()).unwrap()))
    }
}
