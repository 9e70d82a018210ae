//! IPAddress objects (`networking.k8s.io/v1`, cluster-scoped), after upstream's
//! MultiCIDRServiceAllocator: every cluster IP a Service holds is also an IPAddress named by
//! the address (IPv6 in its canonical form), `spec.parentRef` the Service, labelled
//! `ipaddress.kubernetes.io/managed-by: ipallocator.k8s.io`. The allocator writes it in the
//! Service's own store transaction (beside the allocation key of [`crate::alloc`]) and deletes
//! it in the transaction that releases the address, so the two never disagree through the
//! API; the repair loop recreates missing ones and removes orphans (direct store edits, or
//! managed ones a user wrote) older than a grace. An IPAddress a user creates for an address
//! blocks it for Services, as upstream's allocator refuses an address whose IPAddress exists.

use std::net::IpAddr;

use serde_json::{Value, json};
use trellis_api::ResourceInfo;
use trellis_store::{KeyRange, RangeRequest};

use crate::meta;
use crate::status::{ApiError, Cause};
use crate::storage::Storage;

pub const GROUP: &str = "networking.k8s.io";
pub const KIND: &str = "IPAddress";
/// The label upstream's allocator puts on the IPAddresses it manages.
pub const MANAGED_BY: &str = "ipaddress.kubernetes.io/managed-by";
/// Its value for the cluster IP allocator.
pub const ALLOCATOR: &str = "ipallocator.k8s.io";

pub fn info() -> Result<ResourceInfo, ApiError> {
    trellis_api::resources::builtin_kind(GROUP, KIND)
        .ok_or_else(|| ApiError::internal("ipaddresses are not served"))
}

/// The store key of the IPAddress of `ip`.
pub fn key(ip: IpAddr) -> Result<String, ApiError> {
    Ok(info()?.storage_key(None, &ip.to_string()))
}

/// Where IPAddress objects live in the store.
pub fn prefix() -> Result<String, ApiError> {
    Ok(info()?.storage_namespace_prefix(None))
}

/// The IPAddress the allocator writes for `ip` of the Service `namespace/name`.
pub fn for_service(ip: IpAddr, namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": format!("{GROUP}/v1"),
        "kind": KIND,
        "metadata": {
            "name": ip.to_string(),
            "uid": uuid::Uuid::new_v4().to_string(),
            "creationTimestamp": meta::now(),
            "generation": 1,
            "labels": {MANAGED_BY: ALLOCATOR},
        },
        "spec": {"parentRef": {
            "group": "",
            "resource": "services",
            "namespace": namespace,
            "name": name,
        }},
    })
}

/// The claim (store key and stored value) of the IPAddress of `ip` for a Service.
pub fn claim(ip: IpAddr, namespace: &str, name: &str) -> Result<(String, Vec<u8>), ApiError> {
    let value = serde_json::to_vec(&for_service(ip, namespace, name))
        .map_err(|e| ApiError::internal(format!("cannot encode IPAddress: {e}")))?;
    Ok((key(ip)?, value))
}

/// Whether an IPAddress exists for `ip`.
pub async fn exists(storage: &Storage, ip: IpAddr) -> Result<bool, ApiError> {
    Ok(storage.store().get(key(ip)?.as_bytes()).await?.is_some())
}

/// The addresses that have an IPAddress object (names that are no address are skipped).
pub async fn addresses(storage: &Storage) -> Result<Vec<IpAddr>, ApiError> {
    crate::alloc::allocated_keys(storage, &prefix()?).await
}

/// The Service (`namespace`, `name`) an IPAddress names as its parent, when it names one.
pub fn parent_service(obj: &Value) -> Option<(String, String)> {
    let p = meta::at(obj, &["spec", "parentRef"])?;
    let s = |f: &str| p.get(f).and_then(Value::as_str).unwrap_or_default();
    (s("group").is_empty() && s("resource") == "services" && !s("name").is_empty())
        .then(|| (s("namespace").to_string(), s("name").to_string()))
}

/// Whether the cluster IP allocator manages this IPAddress (its label).
pub fn managed(obj: &Value) -> bool {
    meta::labels(obj).get(MANAGED_BY).map(String::as_str) == Some(ALLOCATOR)
}

/// Upstream's ValidateIPAddress (and the update's immutability of `spec.parentRef`): the name
/// is an IP address in canonical form, not unspecified, loopback, link-local or multicast;
/// `spec.parentRef` with `resource` and `name` is required.
pub fn validate(obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = meta::name(obj).unwrap_or_default();
    match name.parse::<IpAddr>() {
        Err(_) => causes.push(Cause::invalid(
            "metadata.name",
            name,
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        )),
        Ok(ip) if ip.to_string() != name => causes.push(Cause::invalid(
            "metadata.name",
            name,
            format!("must be in canonical form (\"{ip}\")"),
        )),
        Ok(ip) if ip.is_unspecified() => causes.push(Cause::invalid(
            "metadata.name",
            name,
            "may not be unspecified",
        )),
        Ok(ip) if ip.is_loopback() => causes.push(Cause::invalid(
            "metadata.name",
            name,
            "may not be in the loopback range (127.0.0.0/8, ::1/128)",
        )),
        Ok(ip) if ip.is_multicast() => causes.push(Cause::invalid(
            "metadata.name",
            name,
            "may not be a multicast address",
        )),
        Ok(ip) if is_link_local(ip) => causes.push(Cause::invalid(
            "metadata.name",
            name,
            "may not be in the link-local range (169.254.0.0/16, fe80::/10)",
        )),
        Ok(_) => {}
    }
    match meta::at(obj, &["spec", "parentRef"]).filter(|v| v.is_object()) {
        None => causes.push(Cause::required("spec.parentRef")),
        Some(p) => {
            for f in ["resource", "name"] {
                if p.get(f).and_then(Value::as_str).is_none_or(str::is_empty) {
                    causes.push(Cause::required(format!("spec.parentRef.{f}")));
                }
            }
        }
    }
    if let Some(old) = old
        && meta::at(old, &["spec", "parentRef"]) != meta::at(obj, &["spec", "parentRef"])
    {
        causes.push(Cause::immutable("spec.parentRef"));
    }
    causes
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// A user's IPAddress may not take an address a Service already holds (one stored before
/// IPAddress objects existed has only its allocation key): upstream's objects are the
/// allocation itself, so there the create fails as AlreadyExists.
pub async fn check_free(storage: &Storage, obj: &Value) -> Result<(), ApiError> {
    let Some(ip) = meta::name(obj).and_then(|n| n.parse::<IpAddr>().ok()) else {
        return Ok(());
    };
    let held = storage
        .store()
        .range(RangeRequest {
            keys_only: true,
            ..RangeRequest::new(KeyRange::Key(
                format!("{}{ip}", crate::alloc::IP_PREFIX).into_bytes(),
            ))
        })
        .await?;
    if held.kvs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::already_exists(
            GROUP,
            "ipaddresses",
            &ip.to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(name: &str, parent: Value) -> Value {
        json!({"metadata": {"name": name}, "spec": {"parentRef": parent}})
    }

    fn svc_ref() -> Value {
        json!({"group": "", "resource": "services", "namespace": "default", "name": "web"})
    }

    #[test]
    fn the_name_is_a_canonical_address_and_the_parent_ref_is_required_and_immutable() {
        assert!(validate(&obj("10.96.0.5", svc_ref()), None).is_empty());
        assert!(validate(&obj("fd00:96::5", svc_ref()), None).is_empty());
        let has =
            |c: &[Cause], f: &str, t: &str| c.iter().any(|c| c.field == f && c.message.contains(t));
        let c = validate(&obj("fd00:96:0::5", svc_ref()), None);
        assert!(
            has(&c, "metadata.name", "canonical form (\"fd00:96::5\")"),
            "{c:?}"
        );
        assert!(has(
            &validate(&obj("nope", svc_ref()), None),
            "metadata.name",
            "valid IP address"
        ));
        for bad in [
            "0.0.0.0",
            "127.0.0.1",
            "::1",
            "fe80::1",
            "169.254.1.1",
            "ff02::1",
        ] {
            assert!(!validate(&obj(bad, svc_ref()), None).is_empty(), "{bad}");
        }
        let none = json!({"metadata": {"name": "10.0.0.1"}, "spec": {}});
        assert!(has(&validate(&none, None), "spec.parentRef", "Required"));
        let c = validate(&obj("10.0.0.1", json!({"group": ""})), None);
        assert!(has(&c, "spec.parentRef.resource", "Required"), "{c:?}");
        assert!(has(&c, "spec.parentRef.name", "Required"), "{c:?}");
        let old = obj("10.0.0.1", svc_ref());
        let mut moved = svc_ref();
        moved["name"] = json!("other");
        assert!(has(
            &validate(&obj("10.0.0.1", moved), Some(&old)),
            "spec.parentRef",
            "field is immutable"
        ));
        assert!(validate(&old, Some(&old)).is_empty());
    }

    #[test]
    fn the_allocator_s_object_names_the_service_and_is_managed() {
        let ip: IpAddr = "fd00:96:0:0::a".parse().unwrap();
        let o = for_service(ip, "ns", "web");
        assert_eq!(o["metadata"]["name"], "fd00:96::a");
        assert!(managed(&o));
        assert_eq!(parent_service(&o), Some(("ns".into(), "web".into())));
        assert!(validate(&o, None).is_empty());
        let mut user = o.clone();
        user["metadata"]["labels"] = json!({});
        assert!(!managed(&user));
        let mut gw = o;
        gw["spec"]["parentRef"]["resource"] = json!("gateways");
        gw["spec"]["parentRef"]["group"] = json!("gateway.networking.k8s.io");
        assert_eq!(parent_service(&gw), None);
    }
}
