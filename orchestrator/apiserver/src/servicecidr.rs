//! ServiceCIDR objects (`networking.k8s.io/v1`, cluster-scoped), after upstream's
//! MultiCIDRServiceAllocator: the default one, `kubernetes`, holds `--service-cluster-ip-range`;
//! users add more to extend the ClusterIP space. The allocator hands out addresses from every
//! Ready ServiceCIDR of a family (the default range first); a ServiceCIDR being deleted is no
//! longer Ready, and its finalizer `networking.k8s.io/service-cidr-finalizer` holds it until no
//! allocated cluster IP lies in it outside every other Ready ServiceCIDR (and the flag ranges).

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde_json::{Value, json};
use trellis_api::ResourceInfo;

use crate::alloc::IP_PREFIX;
use crate::handlers::Api;
use crate::meta;
use crate::status::{ApiError, Cause};
use crate::storage::{ListAt, Storage};

pub const GROUP: &str = "networking.k8s.io";
pub const KIND: &str = "ServiceCIDR";
/// The well-known name of the ServiceCIDR made from `--service-cluster-ip-range`.
pub const DEFAULT_NAME: &str = "kubernetes";
pub const FINALIZER: &str = "networking.k8s.io/service-cidr-finalizer";
/// How often the finalizer loop looks at ServiceCIDRs being deleted.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// How long after its deletion a ServiceCIDR keeps its finalizer even when no address needs
/// it: a Service create that chose an address of it just before the deletion has this long to
/// store that address (upstream's controller waits likewise), on any API server.
pub const DELETION_GRACE: Duration = Duration::from_secs(10);

const TERMINATING_MESSAGE: &str = "There are still IPAddresses referencing the ServiceCIDR, please remove them or create a new ServiceCIDR";

fn info() -> Result<ResourceInfo, ApiError> {
    trellis_api::resources::builtin_kind(GROUP, KIND)
        .ok_or_else(|| ApiError::internal("servicecidrs are not served"))
}

/// The ranges of a ServiceCIDR object (`spec.cidrs`); unparsable entries are skipped
/// (validation refuses them on write).
pub fn cidrs_of(obj: &Value) -> Vec<IpNet> {
    meta::at(obj, &["spec", "cidrs"])
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|s| s.parse::<IpNet>().ok())
        .collect()
}

fn ready(status: bool, reason: &str, message: &str) -> Value {
    json!({"conditions": [{
        "type": "Ready",
        "status": if status { "True" } else { "False" },
        "reason": reason,
        "message": message,
        "lastTransitionTime": meta::now(),
    }]})
}

/// What a new ServiceCIDR gets: the finalizer, and the Ready condition (upstream's
/// servicecidrs controller sets it right after the create; here the create itself does).
pub fn create_defaults(obj: &mut Value) {
    let m = meta::meta_mut(obj);
    let mut fins: Vec<Value> = m
        .get("finalizers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !fins.iter().any(|v| v.as_str() == Some(FINALIZER)) {
        fins.push(json!(FINALIZER));
    }
    m.insert("finalizers".into(), Value::Array(fins));
    obj["status"] = ready(true, "", "Kubernetes Service CIDR is ready");
}

/// Upstream's ValidateServiceCIDR (and the update's immutability of `spec.cidrs`).
pub fn validate(obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    let raw: Vec<&Value> = meta::at(obj, &["spec", "cidrs"])
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    if raw.is_empty() {
        causes.push(Cause::required("spec.cidrs"));
    } else if raw.len() > 2 {
        causes.push(Cause::invalid(
            "spec.cidrs",
            serde_json::to_string(&raw).unwrap_or_default(),
            "may only hold up to 2 values",
        ));
    } else {
        let mut families = Vec::new();
        for (i, v) in raw.iter().enumerate() {
            let field = format!("spec.cidrs[{i}]");
            let s = v.as_str().unwrap_or_default();
            match s.parse::<IpNet>() {
                Ok(net) if net.trunc() == net && net.to_string() == s => {
                    families.push(net.addr().is_ipv4());
                }
                Ok(net) if net.trunc() != net => causes.push(Cause::invalid(
                    &field,
                    s,
                    format!("must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64); the network address is {}", net.trunc()),
                )),
                Ok(net) => causes.push(Cause::invalid(
                    &field,
                    s,
                    format!("must be in canonical form (\"{net}\")"),
                )),
                Err(_) => causes.push(Cause::invalid(
                    &field,
                    s,
                    "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
                )),
            }
        }
        if families.len() == 2 && families[0] == families[1] {
            causes.push(Cause::invalid(
                "spec.cidrs",
                serde_json::to_string(&raw).unwrap_or_default(),
                "may specify no more than one IP for each IP family, i.e 192.168.0.0/24 and 2001:db8::/64",
            ));
        }
    }
    if let Some(old) = old
        && meta::at(old, &["spec", "cidrs"]) != meta::at(obj, &["spec", "cidrs"])
    {
        causes.push(Cause::invalid(
            "spec.cidrs",
            serde_json::to_string(&raw).unwrap_or_default(),
            "field is immutable",
        ));
    }
    causes
}

/// Creates the default ServiceCIDR `kubernetes` from the flag ranges if it is absent.
pub async fn bootstrap(api: &Api) -> Result<(), ApiError> {
    let info = info()?;
    if api.storage.get(&info, None, DEFAULT_NAME).await?.is_some() {
        return Ok(());
    }
    let cidrs = &api.alloc.service_cidrs;
    let list: Vec<String> = [Some(cidrs.primary()), cidrs.secondary()]
        .into_iter()
        .flatten()
        .map(|n| n.to_string())
        .collect();
    let mut obj = json!({
        "apiVersion": format!("{GROUP}/v1"), "kind": KIND,
        "metadata": {"name": DEFAULT_NAME, "uid": uuid::Uuid::new_v4().to_string(),
                     "creationTimestamp": meta::now(), "generation": 1},
        "spec": {"cidrs": list},
    });
    create_defaults(&mut obj);
    match api
        .storage
        .create(&info, None, DEFAULT_NAME, &obj, Vec::new())
        .await
    {
        Ok(_) => Ok(()),
        // Another API server on the same store made it first.
        Err(e) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

async fn all(storage: &Storage) -> Result<Vec<crate::storage::Stored>, ApiError> {
    let info = info()?;
    let page = storage
        .list(&info, None, ListAt::Latest, 0, None, &|_: &Value| true)
        .await?;
    Ok(page
        .items
        .into_iter()
        .map(|obj| {
            let revision = meta::resource_version(&obj)
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            crate::storage::Stored { obj, revision }
        })
        .collect())
}

/// The ranges of the Ready ServiceCIDRs (not being deleted), in name order, the default one's
/// left out (the allocator has the flag ranges first anyway).
pub async fn ready_ranges(storage: &Storage) -> Result<Vec<IpNet>, ApiError> {
    let mut out = Vec::new();
    for s in all(storage).await? {
        if meta::is_deleting(&s.obj) || meta::name(&s.obj) == Some(DEFAULT_NAME) {
            continue;
        }
        for n in cidrs_of(&s.obj) {
            if !out.contains(&n) {
                out.push(n);
            }
        }
    }
    Ok(out)
}

/// The ranges of every ServiceCIDR but the default one (the flags rule there), also those
/// being deleted (their addresses are still valid until the last is released: the repair
/// loop must not call them out of range).
pub async fn all_ranges(storage: &Storage) -> Result<Vec<IpNet>, ApiError> {
    let mut out = Vec::new();
    for s in all(storage).await? {
        if meta::name(&s.obj) == Some(DEFAULT_NAME) {
            continue;
        }
        for n in cidrs_of(&s.obj) {
            if !out.contains(&n) {
                out.push(n);
            }
        }
    }
    Ok(out)
}

/// The finalizer: one round over the ServiceCIDRs being deleted. One whose addresses are all
/// released (or covered by another Ready ServiceCIDR or the flag ranges), and that was seen
/// deleting in an earlier round already (so a create that read it as Ready before the delete
/// has committed its key by now), loses the finalizer and so goes; one still holding
/// addresses gets Ready False, reason Terminating. Returns the names released.
pub async fn sweep(api: &Api, seen: &mut HashSet<String>) -> Result<Vec<String>, ApiError> {
    let info = info()?;
    let objs = all(&api.storage).await?;
    let deleting: Vec<_> = objs
        .iter()
        .filter(|s| {
            meta::is_deleting(&s.obj) && meta::finalizers(&s.obj).iter().any(|f| f == FINALIZER)
        })
        .collect();
    seen.retain(|n| {
        deleting
            .iter()
            .any(|s| meta::name(&s.obj) == Some(n.as_str()))
    });
    if deleting.is_empty() {
        return Ok(Vec::new());
    }
    let flags: Vec<IpNet> = [
        Some(api.alloc.service_cidrs.primary()),
        api.alloc.service_cidrs.secondary(),
    ]
    .into_iter()
    .flatten()
    .collect();
    let others: Vec<IpNet> = objs
        .iter()
        .filter(|s| !meta::is_deleting(&s.obj))
        .flat_map(|s| cidrs_of(&s.obj))
        .collect();
    let mut ips: Vec<IpAddr> = crate::alloc::allocated_keys(&api.storage, IP_PREFIX).await?;
    // An IPAddress (a user's too) holds its ServiceCIDR as well, as upstream's.
    ips.extend(crate::ipaddress::addresses(&api.storage).await?);
    let mut released = Vec::new();
    for s in deleting {
        let name = meta::name(&s.obj).unwrap_or_default().to_string();
        let mine = cidrs_of(&s.obj);
        // The flag ranges cover other ServiceCIDRs' addresses, not the default one's own: it
        // stays while anything (the `kubernetes` Service at least) holds an address in it.
        let covering: Vec<IpNet> = if name == DEFAULT_NAME {
            others.clone()
        } else {
            flags.iter().chain(&others).copied().collect()
        };
        let held = ips.iter().any(|ip| {
            mine.iter().any(|n| n.contains(ip)) && !covering.iter().any(|n| n.contains(ip))
        });
        let grace_over = meta::at(&s.obj, &["metadata", "deletionTimestamp"])
            .and_then(Value::as_str)
            .and_then(meta::parse_time)
            .is_none_or(|at| {
                jiff::Timestamp::now().duration_since(at).as_secs()
                    >= DELETION_GRACE.as_secs().try_into().unwrap_or(i64::MAX)
            });
        let mut obj = s.obj.clone();
        if held || !grace_over || !seen.contains(&name) {
            seen.insert(name.clone());
            let cur_reason = meta::at(&obj, &["status", "conditions"])
                .and_then(Value::as_array)
                .and_then(|c| c.first())
                .and_then(|c| c.get("reason"))
                .and_then(Value::as_str);
            if held && cur_reason != Some("Terminating") {
                obj["status"] = ready(false, "Terminating", TERMINATING_MESSAGE);
                api.storage
                    .update(&info, None, &name, s.revision, &obj)
                    .await?;
            }
            continue;
        }
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut)
            && let Some(f) = m.get_mut("finalizers").and_then(Value::as_array_mut)
        {
            f.retain(|v| v.as_str() != Some(FINALIZER));
        }
        let done = if meta::finalizers(&obj).is_empty() {
            api.storage
                .delete(&info, None, &name, s.revision, Vec::new())
                .await?
                .is_some()
        } else {
            api.storage
                .update(&info, None, &name, s.revision, &obj)
                .await?
                .is_some()
        };
        if done {
            tracing::info!(servicecidr = %name, "ServiceCIDR released: no cluster IPs left in it");
            seen.remove(&name);
            released.push(name);
        }
    }
    Ok(released)
}

/// Runs [`sweep`] every [`INTERVAL`] until `stop`.
pub async fn run(api: Arc<Api>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut seen = HashSet::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(INTERVAL) => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = sweep(&api, &mut seen).await {
            tracing::warn!(error = %e.message, "ServiceCIDR finalizer round failed; retried next interval");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(cidrs: Value) -> Value {
        json!({"metadata": {"name": "x"}, "spec": {"cidrs": cidrs}})
    }

    #[test]
    fn cidrs_are_one_or_two_canonical_ranges_of_different_families_and_immutable() {
        assert!(validate(&obj(json!(["10.0.0.0/24"])), None).is_empty());
        assert!(validate(&obj(json!(["10.0.0.0/24", "fd00:1::/112"])), None).is_empty());
        let has =
            |c: &[Cause], f: &str, t: &str| c.iter().any(|c| c.field == f && c.message.contains(t));
        assert!(has(
            &validate(&obj(json!([])), None),
            "spec.cidrs",
            "Required"
        ));
        assert!(has(
            &validate(&obj(json!(["10.0.0.0/24", "10.1.0.0/24"])), None),
            "spec.cidrs",
            "one IP for each IP family"
        ));
        assert!(has(
            &validate(&obj(json!(["10.0.0.1/24"])), None),
            "spec.cidrs[0]",
            "valid CIDR"
        ));
        assert!(has(
            &validate(&obj(json!(["nope"])), None),
            "spec.cidrs[0]",
            "valid CIDR"
        ));
        let old = obj(json!(["10.0.0.0/24"]));
        assert!(has(
            &validate(&obj(json!(["10.0.1.0/24"])), Some(&old)),
            "spec.cidrs",
            "field is immutable"
        ));
        assert!(validate(&old, Some(&old)).is_empty());
    }

    #[test]
    fn a_new_service_cidr_gets_the_finalizer_once_and_is_ready() {
        let mut o = obj(json!(["10.0.0.0/24"]));
        o["metadata"]["finalizers"] = json!([FINALIZER, "other"]);
        create_defaults(&mut o);
        assert_eq!(
            meta::finalizers(&o),
            vec![FINALIZER.to_string(), "other".into()]
        );
        assert_eq!(o["status"]["conditions"][0]["type"], "Ready");
        assert_eq!(o["status"]["conditions"][0]["status"], "True");
    }
}
