//! ownerReferences: which object controls which, and adopting or releasing pods (and
//! ReplicaSets) by selector, the way upstream's `ControllerRefManager` does.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource};
use serde_json::json;
use trellis_api::LabelSelector;

/// `namespace/name`, the key every queue uses.
pub fn key(meta: &ObjectMeta) -> String {
    match &meta.namespace {
        Some(ns) => format!("{ns}/{}", meta.name.as_deref().unwrap_or_default()),
        None => meta.name.clone().unwrap_or_default(),
    }
}

/// Splits a key back into namespace and name.
pub fn split_key(key: &str) -> (Option<&str>, &str) {
    match key.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, key),
    }
}

/// The owner reference with `controller: true`, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// The reference a controller puts on what it creates: `controller: true` and
/// `blockOwnerDeletion: true`, so foreground deletion of the owner waits for it.
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A `LabelSelector` from the API type: absent or invalid selects nothing.
pub fn selector(
    sel: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
) -> LabelSelector {
    let Some(sel) = sel else {
        return LabelSelector::nothing();
    };
    serde_json::to_value(sel)
        .ok()
        .and_then(|v| LabelSelector::from_json_or_nothing(&v).ok())
        .unwrap_or_else(LabelSelector::nothing)
}

/// A selector of exactly these labels (ReplicationController's map selector): empty selects
/// nothing.
pub fn map_selector(labels: Option<&BTreeMap<String, String>>) -> LabelSelector {
    match labels {
        Some(l) if !l.is_empty() => {
            LabelSelector::from_labels(l).unwrap_or_else(|_| LabelSelector::nothing())
        }
        _ => LabelSelector::nothing(),
    }
}

pub fn labels(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

/// What to do with one candidate object for an owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Controlled by the owner and matching: it is the owner's.
    Owned,
    /// Matching, controlled by nobody: take it (unless the owner is being deleted).
    Adopt,
    /// Controlled by the owner but no longer matching: let it go.
    Release,
    /// Somebody else's, or not matching.
    Ignore,
}

/// Upstream's `ClaimObject` decision, without the writes.
pub fn claim(owner_uid: &str, sel: &LabelSelector, candidate: &ObjectMeta) -> Claim {
    let matches = sel.matches(&labels(candidate));
    match controller_of(candidate) {
        Some(r) if r.uid == owner_uid => {
            if matches {
                Claim::Owned
            } else {
                Claim::Release
            }
        }
        Some(_) => Claim::Ignore,
        None if matches && candidate.deletion_timestamp.is_none() => Claim::Adopt,
        None => Claim::Ignore,
    }
}

/// Writes `refs` as the object's owner references, guarded by its resourceVersion (a
/// concurrent change makes this fail and the caller retry from a fresh view).
pub async fn set_owner_refs<K>(
    api: &Api<K>,
    obj: &ObjectMeta,
    refs: Vec<OwnerReference>,
) -> Result<(), kube::Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = obj.name.as_deref().unwrap_or_default();
    let patch = json!({"metadata": {
        "ownerReferences": refs,
        "resourceVersion": obj.resource_version,
        "uid": obj.uid,
    }});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

/// Makes `owner` the controller of `obj`.
pub async fn adopt<K>(
    api: &Api<K>,
    obj: &ObjectMeta,
    owner: OwnerReference,
) -> Result<(), kube::Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut refs: Vec<OwnerReference> = obj
        .owner_references
        .iter()
        .flatten()
        .filter(|r| r.uid != owner.uid)
        .cloned()
        .collect();
    refs.push(owner);
    set_owner_refs(api, obj, refs).await
}

/// Removes the reference to `owner_uid` from `obj`.
pub async fn release<K>(api: &Api<K>, obj: &ObjectMeta, owner_uid: &str) -> Result<(), kube::Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let refs: Vec<OwnerReference> = obj
        .owner_references
        .iter()
        .flatten()
        .filter(|r| r.uid != owner_uid)
        .cloned()
        .collect();
    set_owner_refs(api, obj, refs).await
}

/// Whether an API error means the object is gone (404) or changed under us (409).
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(labels: &[(&str, &str)], controller: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            name: Some("p".into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            owner_references: controller.map(|uid| {
                vec![OwnerReference {
                    uid: uid.into(),
                    controller: Some(true),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        }
    }

    #[test]
    fn claims_follow_the_selector_and_the_controller_reference() {
        let sel = LabelSelector::parse("app=web").unwrap();
        assert_eq!(
            claim("me", &sel, &meta(&[("app", "web")], Some("me"))),
            Claim::Owned
        );
        assert_eq!(
            claim("me", &sel, &meta(&[("app", "web")], None)),
            Claim::Adopt
        );
        assert_eq!(
            claim("me", &sel, &meta(&[("app", "db")], Some("me"))),
            Claim::Release
        );
        assert_eq!(
            claim("me", &sel, &meta(&[("app", "web")], Some("other"))),
            Claim::Ignore
        );
        assert_eq!(
            claim("me", &sel, &meta(&[("app", "db")], None)),
            Claim::Ignore
        );
    }

    #[test]
    fn a_missing_selector_selects_nothing() {
        assert!(selector(None).is_nothing());
        assert!(map_selector(Some(&BTreeMap::new())).is_nothing());
    }
}
