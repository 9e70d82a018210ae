//! `metrics.k8s.io/v1beta1`: NodeMetrics and PodMetrics, what `kubectl top` and the
//! HorizontalPodAutoscaler read, served by the API server itself instead of an aggregated
//! metrics-server. Each answer is computed when asked from the kubelets' `/stats/summary`
//! (over HTTPS with the kubelet client certificate, as pods/log): `usageNanoCores` becomes the
//! CPU quantity (`<n>n`), `workingSetBytes` the memory quantity (`<n>Ki`), as metrics-server
//! reports them.
//!
//! The kubelets are asked in parallel, each within [`KUBELET_TIMEOUT`]; a node that does not
//! answer (or answers nonsense) is left out of the answer, as metrics-server leaves out a node
//! it could not scrape, rather than failing the whole list. Only the nodes that run a selected
//! pod are asked for pod metrics. A pod or container without a CPU rate yet (a first sample) is
//! left out too, so no reader mistakes "unknown" for "idle".

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::{Value, json};
use trellis_api::ResourceInfo;

use crate::handlers::{Api, Call, Reply};
use crate::meta;
use crate::request::Verb;
use crate::status::ApiError;
use crate::storage::ListAt;

/// The group these resources are served in.
pub const GROUP: &str = "metrics.k8s.io";

/// How long one kubelet may take to answer `/stats/summary` (its first answer samples twice,
/// 200 ms apart).
pub const KUBELET_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest summary read from a kubelet.
const MAX_SUMMARY: usize = 16 * 1024 * 1024;

/// The window metrics-server reports (its scrape resolution); ours is the time between two
/// kubelet samples, which this stands for.
const WINDOW: &str = "10s";

/// CPU as metrics-server writes it: nanocores.
pub fn cpu_quantity(nano_cores: u64) -> String {
    format!("{nano_cores}n")
}

/// Memory as metrics-server writes it: whole KiB (bytes rounded down).
pub fn memory_quantity(bytes: u64) -> String {
    format!("{}Ki", bytes / 1024)
}

/// `usage` of a summary entry with `cpu` and `memory`, if its CPU rate is known.
fn usage(entry: &Value) -> Option<Value> {
    let cpu = entry["cpu"]["usageNanoCores"].as_u64()?;
    let mem = entry["memory"]["workingSetBytes"].as_u64().unwrap_or(0);
    Some(json!({"cpu": cpu_quantity(cpu), "memory": memory_quantity(mem)}))
}

fn timestamp(entry: &Value) -> Value {
    entry["cpu"]["time"]
        .as_str()
        .map_or_else(|| json!(meta::now()), |t| json!(t))
}

/// The NodeMetrics of `node` (its object) from its kubelet's summary.
pub fn node_metrics(node: &Value, summary: &Value) -> Option<Value> {
    let usage = usage(&summary["node"])?;
    let mut metadata = json!({"name": meta::name(node)?, "creationTimestamp": meta::now()});
    if let Some(labels) = node["metadata"].get("labels") {
        metadata["labels"] = labels.clone();
    }
    Some(json!({
        "kind": "NodeMetrics",
        "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": metadata,
        "timestamp": timestamp(&summary["node"]),
        "window": WINDOW,
        "usage": usage,
    }))
}

/// The PodMetrics of `pod` (its object) from its node's summary: one entry per container the
/// summary has a CPU rate for; none when it has none.
pub fn pod_metrics(pod: &Value, summary: &Value) -> Option<Value> {
    let (ns, name) = (meta::namespace(pod)?, meta::name(pod)?);
    let entry = summary["pods"].as_array()?.iter().find(|p| {
        p["podRef"]["namespace"] == ns
            && p["podRef"]["name"] == name
            && meta::uid(pod).is_none_or(|u| p["podRef"]["uid"] == u)
    })?;
    let containers: Vec<Value> = entry["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| Some(json!({"name": c["name"].as_str()?, "usage": usage(c)?})))
        .collect();
    if containers.is_empty() {
        return None;
    }
    let mut metadata = json!({"name": name, "namespace": ns, "creationTimestamp": meta::now()});
    if let Some(labels) = pod["metadata"].get("labels") {
        metadata["labels"] = labels.clone();
    }
    Some(json!({
        "kind": "PodMetrics",
        "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": metadata,
        "timestamp": timestamp(entry),
        "window": WINDOW,
        "containers": containers,
    }))
}

/// One kubelet's summary, or `None` when it does not answer well within the timeout.
async fn summary(api: &Api, node: &Value) -> Option<Value> {
    let (host, port) = crate::kubelet::kubelet_endpoint(node)?;
    let client = api.kubelet.get()?;
    let ask = async {
        let (code, _, mut rx) = client.get(&host, port, "/stats/summary").await.ok()?;
        if code != 200 {
            return None;
        }
        let mut body = Vec::new();
        while let Some(chunk) = rx.recv().await {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_SUMMARY {
                return None;
            }
        }
        serde_json::from_slice::<Value>(&body).ok()
    };
    let got = tokio::time::timeout(KUBELET_TIMEOUT, ask)
        .await
        .ok()
        .flatten();
    if got.is_none() {
        tracing::debug!(node = meta::name(node).unwrap_or(""), %host, "no summary from the kubelet; left out");
    }
    got
}

/// The summaries of `nodes`, asked in parallel; nodes that did not answer are missing.
async fn summaries(api: &Api, nodes: &[Value]) -> HashMap<String, Value> {
    let asks = nodes.iter().map(|n| async move {
        let name = meta::name(n)?.to_string();
        Some((name, summary(api, n).await?))
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

fn label_filter(call: &Call<'_>) -> Result<trellis_api::LabelSelector, ApiError> {
    match call.q("labelSelector") {
        Some(s) => trellis_api::selector::LabelSelector::parse(s)
            .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}"))),
        None => Ok(trellis_api::LabelSelector::everything()),
    }
}

async fn all(api: &Api, plural: &str, ns: Option<&str>) -> Result<Vec<Value>, ApiError> {
    let info = api
        .registry
        .find("", "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("{plural} are not served")))?;
    Ok(api
        .storage
        .list(&info, ns, ListAt::Latest, 0, None, &|_: &Value| true)
        .await?
        .items)
}

fn list_of(kind: &str, items: Vec<Value>) -> Value {
    json!({"kind": format!("{kind}List"), "apiVersion": "metrics.k8s.io/v1beta1",
           "metadata": {}, "items": items})
}

/// Serves get and list of `nodes` and `pods` in metrics.k8s.io (authorization done).
pub async fn serve(api: &Api, info: &ResourceInfo, call: &Call<'_>) -> Result<Reply, ApiError> {
    let r = &call.req;
    if r.subresource.is_some() || !matches!(r.verb, Verb::Get | Verb::List) {
        return Err(ApiError::method_not_allowed(r.verb.as_str(), &info.plural));
    }
    let selector = label_filter(call)?;
    let name = r.name.as_deref();
    match info.plural.as_str() {
        "nodes" => {
            let nodes: Vec<Value> = all(api, "nodes", None)
                .await?
                .into_iter()
                .filter(|n| match name {
                    Some(want) => meta::name(n) == Some(want),
                    None => selector.matches(&meta::labels(n)),
                })
                .collect();
            let got = summaries(api, &nodes).await;
            let items: Vec<Value> = nodes
                .iter()
                .filter_map(|n| node_metrics(n, got.get(meta::name(n)?)?))
                .collect();
            match name {
                Some(n) => items
                    .into_iter()
                    .next()
                    .map(Reply::ok)
                    .ok_or_else(|| ApiError::not_found(GROUP, "nodemetrics", n)),
                None => Ok(Reply::ok(list_of("NodeMetrics", items))),
            }
        }
        "pods" => {
            let pods: Vec<Value> = all(api, "pods", r.namespace.as_deref())
                .await?
                .into_iter()
                .filter(|p| match name {
                    Some(want) => meta::name(p) == Some(want),
                    None => selector.matches(&meta::labels(p)),
                })
                .filter(|p| p["status"]["phase"] == "Running")
                .collect();
            let wanted: BTreeMap<&str, ()> = pods
                .iter()
                .filter_map(|p| p["spec"]["nodeName"].as_str())
                .map(|n| (n, ()))
                .collect();
            let nodes: Vec<Value> = all(api, "nodes", None)
                .await?
                .into_iter()
                .filter(|n| meta::name(n).is_some_and(|n| wanted.contains_key(n)))
                .collect();
            let got = summaries(api, &nodes).await;
            let items: Vec<Value> = pods
                .iter()
                .filter_map(|p| pod_metrics(p, got.get(p["spec"]["nodeName"].as_str()?)?))
                .collect();
            match name {
                Some(n) => items
                    .into_iter()
                    .next()
                    .map(Reply::ok)
                    .ok_or_else(|| ApiError::not_found(GROUP, "podmetrics", n)),
                None => Ok(Reply::ok(list_of("PodMetrics", items))),
            }
        }
        other => Err(ApiError::no_route(&format!("{GROUP}/{other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> Value {
        json!({
            "node": {"nodeName": "n1", "cpu": {"time": "2026-12-04T00:00:00Z", "usageNanoCores": 250_000_000u64, "usageCoreNanoSeconds": 9},
                     "memory": {"workingSetBytes": 2_097_152u64}},
            "pods": [
                {"podRef": {"name": "web", "namespace": "default", "uid": "u1"},
                 "containers": [
                    {"name": "srv", "cpu": {"usageNanoCores": 12_345_678u64}, "memory": {"workingSetBytes": 4096u64}},
                    {"name": "fresh", "cpu": {"usageCoreNanoSeconds": 5}, "memory": {"workingSetBytes": 4096u64}}]},
                {"podRef": {"name": "new", "namespace": "default", "uid": "u2"},
                 "containers": [{"name": "c", "cpu": {}, "memory": {}}]}
            ]
        })
    }

    #[test]
    fn node_usage_is_in_nanocores_and_kibibytes() {
        let node = json!({"metadata": {"name": "n1", "labels": {"role": "w"}}});
        let m = node_metrics(&node, &summary()).unwrap();
        assert_eq!(m["usage"], json!({"cpu": "250000000n", "memory": "2048Ki"}));
        assert_eq!(m["metadata"]["labels"]["role"], "w");
        assert_eq!(m["timestamp"], "2026-12-04T00:00:00Z");
        assert_eq!(m["kind"], "NodeMetrics");
    }

    #[test]
    fn a_pod_has_its_containers_with_a_rate_and_none_without() {
        let pod = json!({"metadata": {"name": "web", "namespace": "default", "uid": "u1"}});
        let m = pod_metrics(&pod, &summary()).unwrap();
        assert_eq!(
            m["containers"],
            json!([{"name": "srv", "usage": {"cpu": "12345678n", "memory": "4Ki"}}])
        );
        let new = json!({"metadata": {"name": "new", "namespace": "default", "uid": "u2"}});
        assert!(pod_metrics(&new, &summary()).is_none());
        // Another pod of the same name (recreated): not this one's usage.
        let other = json!({"metadata": {"name": "web", "namespace": "default", "uid": "u9"}});
        assert!(pod_metrics(&other, &summary()).is_none());
    }
}
