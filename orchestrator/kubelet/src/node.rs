//! The Node object and its Lease: registration, status (addresses, capacity, conditions,
//! nodeInfo) and the heartbeat in kube-node-lease.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::collections::BTreeMap;

use crate::{Config, Error};

/// Conditions this kubelet owns; others (NetworkUnavailable from the network agent) are kept.
const OWN: [&str; 4] = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

/// CPU count and memory bytes of this host, limited by its cgroup where one says less.
pub fn capacity() -> (u64, u64) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let mut mem = mem_kib * 1024;
    for limit in [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ] {
        if let Some(l) = std::fs::read_to_string(limit)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            && l < mem
        {
            mem = l;
        }
    }
    (cpus, mem)
}

/// The status this kubelet reports.
pub fn status(cfg: &Config, network_ready: Result<(), String>) -> Value {
    let (cpus, mem) = capacity();
    let ready = match &network_ready {
        Ok(()) => json!({"type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "kubelet is posting ready status"}),
        Err(why) => json!({"type": "Ready", "status": "False", "reason": "KubeletNotReady",
            "message": format!("container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:{why}")}),
    };
    let cond = |t: &str, reason: &str, msg: &str| json!({"type": t, "status": "False", "reason": reason, "message": msg});
    let capacity = json!({"cpu": cpus.to_string(), "memory": format!("{}Ki", mem / 1024),
        "pods": cfg.max_pods.to_string(), "ephemeral-storage": "0"});
    let uname = nix::sys::utsname::uname().ok();
    let kernel = uname
        .as_ref()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut addresses = vec![json!({"type": "Hostname", "address": cfg.node_name})];
    if let Some(ip) = cfg.node_ip {
        addresses.insert(0, json!({"type": "InternalIP", "address": ip.to_string()}));
    }
    json!({
        "capacity": capacity,
        "allocatable": capacity,
        "addresses": addresses,
        "conditions": [
            cond("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            cond("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            cond("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            ready,
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": cfg.port}},
        "nodeInfo": {
            "machineID": std::fs::read_to_string("/etc/machine-id").unwrap_or_default().trim(),
            "systemUUID": "",
            "bootID": std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default().trim(),
            "kernelVersion": kernel,
            "osImage": "Linux",
            "containerRuntimeVersion": "process://0.1.0",
            "kubeletVersion": "v1.33.0-trellis",
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": arch(),
        },
    })
}

/// The node's architecture as Kubernetes names it (`GOARCH`).
fn arch() -> String {
    std::env::consts::ARCH
        .replace("x86_64", "amd64")
        .replace("aarch64", "arm64")
}

/// The labels every kubelet puts on its Node (upstream's default labels).
fn default_labels(node_name: &str) -> BTreeMap<String, String> {
    [
        ("kubernetes.io/hostname", node_name.to_string()),
        ("kubernetes.io/os", "linux".to_string()),
        ("kubernetes.io/arch", arch()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The default labels a Node lacks or has with another value (what registration must patch).
fn missing_labels(
    have: Option<&BTreeMap<String, String>>,
    want: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    want.iter()
        .filter(|(k, v)| have.and_then(|h| h.get(*k)) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Registers the Node: creates it with the default labels if it does not exist, and gives a
/// pre-created one the default labels it lacks ([`reconcile_labels`]).
pub async fn register(client: &kube::Client, cfg: &Config) -> Result<(), Error> {
    let node = create_if_absent(client, &cfg.node_name).await?;
    reconcile_labels(client, &node).await
}

/// The Node `name`: the one that exists (pre-created, or a previous run's, as it is), or a new
/// one with the default labels.
pub async fn create_if_absent(client: &kube::Client, name: &str) -> Result<Node, Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    if let Some(node) = nodes.get_opt(name).await? {
        return Ok(node);
    }
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": default_labels(name)},
    }))?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(made) => Ok(made),
        // Created meanwhile by someone else: treat it like a pre-created one.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(nodes.get(name).await?),
        Err(e) => Err(e.into()),
    }
}

/// Gives `node` the default labels it lacks or has with another value, keeping its spec and
/// other labels, as upstream's kubelet reconciles them: the scheduler's topology spreading and
/// `kubernetes.io/hostname` selectors rely on them.
pub async fn reconcile_labels(client: &kube::Client, node: &Node) -> Result<(), Error> {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let patch = missing_labels(node.metadata.labels.as_ref(), &default_labels(name));
    if !patch.is_empty() {
        let nodes: Api<Node> = Api::all(client.clone());
        nodes
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": patch}})),
            )
            .await?;
    }
    Ok(())
}

/// Writes the status, keeping conditions other components own and the transition times of
/// conditions that did not change.
pub async fn update_status(client: &kube::Client, status: &Value, name: &str) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let cur = serde_json::to_value(nodes.get(name).await?)?;
    let old: Vec<Value> = cur["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut conditions: Vec<Value> = old
        .iter()
        .filter(|c| !OWN.contains(&c["type"].as_str().unwrap_or_default()))
        .cloned()
        .collect();
    let now = now();
    for c in status["conditions"].as_array().into_iter().flatten() {
        let mut c = c.clone();
        let prev = old.iter().find(|o| o["type"] == c["type"]);
        let since = match prev {
            Some(p) if p["status"] == c["status"] => p["lastTransitionTime"].clone(),
            _ => json!(now),
        };
        c["lastTransitionTime"] = since;
        c["lastHeartbeatTime"] = json!(now);
        conditions.push(c);
    }
    let mut st = status.clone();
    st["conditions"] = Value::Array(conditions);
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": st})),
        )
        .await?;
    Ok(())
}

/// Renews (or creates) the node's Lease.
pub async fn renew_lease(client: &kube::Client, name: &str) -> Result<(), Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    if leases.get_opt(name).await?.is_some() {
        leases
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"renewTime": now}})),
            )
            .await?;
        return Ok(());
    }
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now},
    }))?;
    leases.create(&PostParams::default(), &lease).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_pre_created_node_gets_only_the_default_labels_it_lacks_or_has_wrong() {
        let want = labels(&[
            ("kubernetes.io/hostname", "n1"),
            ("kubernetes.io/os", "linux"),
        ]);
        let have = labels(&[
            ("kubernetes.io/hostname", "old-name"),
            ("kubernetes.io/os", "linux"),
            ("zone", "a"),
        ]);
        assert_eq!(
            missing_labels(Some(&have), &want),
            labels(&[("kubernetes.io/hostname", "n1")])
        );
        assert_eq!(missing_labels(None, &want), want);
        assert!(missing_labels(Some(&want), &want).is_empty());
    }
}
