//! The `kubernetes` Service's endpoints, as upstream's lease endpoint reconciler keeps them
//! (`--endpoint-reconciler-type lease`): every API server renews a lease of its advertised
//! address in the store (`/registry/masterleases/<ip>`, upstream's key, not an API object)
//! and writes `default/kubernetes` — the Service, its Endpoints and its EndpointSlice — with
//! the addresses whose lease is live. A member that stops renewing (killed, cut off) drops
//! out of the endpoints within the lease's time to live plus one interval, as its peers
//! reconcile; one that shuts down cleanly removes itself at once.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use trellis_store::KeyRange;

use crate::handlers::Api;
use crate::meta;
use crate::status::ApiError;

/// Where the leases live: upstream's prefix.
const PREFIX: &str = "/registry/masterleases/";
/// The name of the Service, its Endpoints and its EndpointSlice, in `default`.
const NAME: &str = "kubernetes";

/// How the reconciler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// The address (and port) this API server advertises.
    pub advertise: SocketAddr,
    /// The Service's cluster IP (the service range's first address).
    pub cluster_ip: IpAddr,
    /// How long a lease lives without renewal (upstream: 15 s).
    pub ttl: Duration,
    /// How often the lease is renewed and the endpoints reconciled (upstream: 10 s).
    pub interval: Duration,
}

/// The address an API server advertises in `default/kubernetes`, picked as upstream's
/// kube-apiserver picks it: `advertise` (`--advertise-address`) when given; else the listen
/// address, unless it is unspecified or loopback; else `host()`, the address of the host's
/// default-route interface. Never an unspecified or loopback address: pods could not reach
/// it, and upstream's Endpoints validation refuses one.
pub fn advertise_address(
    listen: IpAddr,
    advertise: Option<IpAddr>,
    host: impl FnOnce() -> Option<IpAddr>,
) -> Result<IpAddr, String> {
    let reachable = |ip: &IpAddr| !ip.is_unspecified() && !ip.is_loopback();
    match advertise {
        Some(ip) if reachable(&ip) => Ok(ip),
        Some(ip) => Err(format!(
            "--advertise-address {ip} is not an address pods can reach (unspecified or loopback)"
        )),
        None if reachable(&listen) => Ok(listen),
        None => host().filter(reachable).ok_or_else(|| {
            format!(
                "the API server listens on {listen} and this host has no default route to take \
                 an address from: give --advertise-address (the address pods reach this API \
                 server at), or --endpoint-reconciler-type none to leave default/kubernetes alone"
            )
        }),
    }
}

/// One API server's lease, as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Lease {
    ip: IpAddr,
    port: u16,
    /// Milliseconds since the epoch when it runs out.
    expires_ms: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The live addresses among `leases` at `now`, sorted (the order upstream writes them in).
fn live(leases: &[Lease], now: u64) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = leases
        .iter()
        .filter(|l| l.expires_ms > now)
        .map(|l| l.ip)
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// Renews this API server's lease and reconciles the endpoints every interval until `stop`;
/// then removes its lease and its address.
pub async fn run(
    api: std::sync::Arc<Api>,
    s: Settings,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        if let Err(e) = reconcile(&api, &s, true).await {
            tracing::warn!(error = %e.message, "the kubernetes Service's endpoints");
        }
        tokio::select! {
            _ = tokio::time::sleep(s.interval) => {}
            _ = stop.changed() => break,
        }
    }
    if let Err(e) = reconcile(&api, &s, false).await {
        tracing::warn!(error = %e.message, "removing this API server from the kubernetes endpoints");
    }
}

/// One round: this API server's lease renewed (`present`) or removed, then the Service,
/// Endpoints and EndpointSlice written if they differ from the live leases.
pub async fn reconcile(api: &Api, s: &Settings, present: bool) -> Result<(), ApiError> {
    let store = api.storage.store();
    let own = format!("{PREFIX}{}", s.advertise.ip());
    let now = now_ms();
    if present {
        let ttl = u64::try_from(s.ttl.as_millis()).unwrap_or(u64::MAX);
        let lease = Lease {
            ip: s.advertise.ip(),
            port: s.advertise.port(),
            expires_ms: now.saturating_add(ttl),
        };
        let value = serde_json::to_vec(&lease).map_err(|e| ApiError::internal(e.to_string()))?;
        store.put(own.as_bytes(), &value).await?;
    } else {
        store
            .delete(KeyRange::Key(own.clone().into_bytes()))
            .await?;
    }
    let page = store
        .range(trellis_store::RangeRequest::new(KeyRange::prefix(PREFIX)))
        .await?;
    let mut leases = Vec::new();
    for kv in &page.kvs {
        match serde_json::from_slice::<Lease>(&kv.value) {
            Ok(l) if l.expires_ms > now => leases.push(l),
            // Expired (its API server is gone) or unreadable: upstream's etcd TTL drops it.
            _ => {
                store.delete(KeyRange::Key(kv.key.clone())).await?;
            }
        }
    }
    let ips = live(&leases, now);
    ensure_service(api, s).await?;
    let port = s.advertise.port();
    let addresses: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect();
    let subsets = if ips.is_empty() {
        json!([])
    } else {
        json!([{"addresses": addresses,
                "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}])
    };
    write(
        api,
        ("", "v1", "endpoints", "Endpoints"),
        json!({"labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}}),
        &[("subsets", subsets)],
    )
    .await?;
    let family = match s.advertise.ip() {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    };
    let endpoints: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip.to_string()], "conditions": {"ready": true}}))
        .collect();
    write(
        api,
        ("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"),
        json!({"labels": {"kubernetes.io/service-name": NAME}}),
        &[
            ("addressType", json!(family)),
            ("endpoints", json!(endpoints)),
            (
                "ports",
                json!([{"name": "https", "port": port, "protocol": "TCP"}]),
            ),
        ],
    )
    .await
}

/// Creates `default/kubernetes` (cluster IP `s.cluster_ip`, port 443 to the advertised port)
/// unless it exists.
async fn ensure_service(api: &Api, s: &Settings) -> Result<(), ApiError> {
    let info = api
        .registry
        .find("", "v1", "services")
        .ok_or_else(|| ApiError::internal("services are not served"))?;
    if api
        .storage
        .get(&info, Some("default"), NAME)
        .await?
        .is_some()
    {
        return Ok(());
    }
    let mut obj = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": NAME, "namespace": "default",
                     "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": meta::now(),
                     "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"type": "ClusterIP", "clusterIP": s.cluster_ip.to_string(), "sessionAffinity": "None",
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP",
                            "targetPort": s.advertise.port()}]},
        "status": {"loadBalancer": {}},
    });
    let claims = api.alloc.claims(&info, &api.storage, &mut obj).await?;
    match api
        .storage
        .create(&info, Some("default"), NAME, &obj, claims)
        .await
    {
        Ok(_) => Ok(()),
        // Another API server made it first.
        Err(e) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes the fields `fields` of `default/kubernetes` of the kind `(group, version, plural,
/// kind)`, with `meta` merged into its metadata: created when missing, replaced when a field
/// differs, left alone otherwise (a conflict with another API server is left to the next
/// round).
async fn write(
    api: &Api,
    (group, version, plural, kind): (&str, &str, &str, &str),
    extra_meta: Value,
    fields: &[(&str, Value)],
) -> Result<(), ApiError> {
    let info = api
        .registry
        .find(group, version, plural)
        .ok_or_else(|| ApiError::internal(format!("{plural} are not served")))?;
    let api_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    match api.storage.get(&info, Some("default"), NAME).await? {
        Some(cur) => {
            if fields.iter().all(|(k, v)| cur.obj.get(*k) == Some(v)) {
                return Ok(());
            }
            let mut next = cur.obj.clone();
            for (k, v) in fields {
                next[*k] = v.clone();
            }
            if let Some(m) = extra_meta.as_object() {
                for (k, v) in m {
                    meta::meta_mut(&mut next).insert(k.clone(), v.clone());
                }
            }
            meta::meta_mut(&mut next).remove("resourceVersion");
            api.storage
                .update(&info, Some("default"), NAME, cur.revision, &next)
                .await?;
            Ok(())
        }
        None => {
            let mut obj = json!({
                "apiVersion": api_version, "kind": kind,
                "metadata": {"name": NAME, "namespace": "default",
                             "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": meta::now()},
            });
            if let Some(m) = extra_meta.as_object() {
                for (k, v) in m {
                    meta::meta_mut(&mut obj).insert(k.clone(), v.clone());
                }
            }
            for (k, v) in fields {
                obj[*k] = v.clone();
            }
            match api
                .storage
                .create(&info, Some("default"), NAME, &obj, Vec::new())
                .await
            {
                Ok(_) => Ok(()),
                Err(e) if e.code == 409 => Ok(()),
                Err(e) => Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advertised_address_is_never_unspecified_or_loopback() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let host = || Some(ip("198.18.0.5"));
        let none = || None;
        // Given: taken as it is, unless pods could not reach it.
        assert_eq!(
            advertise_address(ip("0.0.0.0"), Some(ip("198.18.0.9")), none),
            Ok(ip("198.18.0.9"))
        );
        for bad in ["127.0.0.1", "0.0.0.0", "::1"] {
            assert!(advertise_address(ip("198.18.0.9"), Some(ip(bad)), host).is_err());
        }
        // Not given: the listen address, else the default-route interface's.
        assert_eq!(
            advertise_address(ip("198.18.0.9"), None, none),
            Ok(ip("198.18.0.9"))
        );
        for listen in ["0.0.0.0", "127.0.0.1", "::"] {
            assert_eq!(
                advertise_address(ip(listen), None, host),
                Ok(ip("198.18.0.5"))
            );
            let e = advertise_address(ip(listen), None, none).unwrap_err();
            assert!(e.contains("--advertise-address"), "{e}");
        }
    }

    #[test]
    fn only_unexpired_leases_are_endpoints_in_address_order() {
        let l = |ip: &str, expires_ms| Lease {
            ip: ip.parse().unwrap(),
            port: 6443,
            expires_ms,
        };
        let leases = [
            l("198.18.0.13", 2_000),
            l("198.18.0.11", 2_000),
            l("198.18.0.12", 999),
        ];
        assert_eq!(
            live(&leases, 1_000),
            vec![
                "198.18.0.11".parse::<IpAddr>().unwrap(),
                "198.18.0.13".parse().unwrap()
            ]
        );
        assert!(live(&leases, 2_000).is_empty());
    }
}
