//! The node's pod network: the default conflist of the CNI configuration directory (the first
//! by file name, as libcni picks it), its STATUS for node readiness, and ADD/DEL/GC through
//! trellis-cni's invoker. Plugins run on a blocking thread, never on the async workers. The
//! pod's hostPorts go to the plugins as the `portMappings` capability (the reference `portmap`
//! plugin, chained by the network agents' conflists, turns them into DNAT rules).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::PodSpec;
use serde::{Deserialize, Serialize};
use trellis_cni::NetworkConfigList;
use trellis_cni::invoke::{CniConfig, RuntimeConf};
use trellis_cni::skel::AttachmentId;

use crate::{Config, Error};

/// The pod's identity as CNI_ARGS carry it, and its hostPorts.
#[derive(Debug, Clone, Default)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The sandbox id: the CNI container id.
    pub sandbox_id: String,
    pub netns: PathBuf,
    /// The `portMappings` capability's value (empty: none passed).
    pub port_mappings: Vec<PortMapping>,
}

/// One hostPort, in the shape of CNI's `portMappings` capability (CONVENTIONS.md), as
/// containerd's CRI plugin passes it: the protocol in lower case, `hostIP` only when set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    #[serde(rename = "hostPort")]
    pub host_port: u16,
    #[serde(rename = "containerPort")]
    pub container_port: u16,
    pub protocol: Protocol,
    #[serde(rename = "hostIP", default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<IpAddr>,
}

/// The protocols a container port can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

/// The port mappings of a pod: every port of its (app) containers with a `hostPort`, as the
/// kubelet passes them to the runtime (init containers' ports are not mapped, as upstream).
/// A port the API should have refused (out of range, unknown protocol, a host IP that is not
/// an address, a hostPort twice for one protocol and host IP) is left out and named in the
/// error list.
pub fn port_mappings(spec: &PodSpec) -> (Vec<PortMapping>, Vec<String>) {
    let mut out: Vec<PortMapping> = Vec::new();
    let mut bad = Vec::new();
    for c in &spec.containers {
        for p in c.ports.iter().flatten() {
            let Some(host_port) = p.host_port.filter(|h| *h != 0) else {
                continue;
            };
            let what = format!("container {} port {}", c.name, p.container_port);
            let (Ok(host_port), Ok(container_port)) =
                (u16::try_from(host_port), u16::try_from(p.container_port))
            else {
                bad.push(format!("{what}: port out of range"));
                continue;
            };
            if host_port == 0 || container_port == 0 {
                bad.push(format!("{what}: port out of range"));
                continue;
            }
            let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => Protocol::Tcp,
                "UDP" => Protocol::Udp,
                "SCTP" => Protocol::Sctp,
                other => {
                    bad.push(format!("{what}: unknown protocol {other:?}"));
                    continue;
                }
            };
            let host_ip = match p.host_ip.as_deref().filter(|s| !s.is_empty()) {
                None => None,
                Some(s) => match s.parse::<IpAddr>() {
                    Ok(ip) if ip.is_unspecified() => None,
                    Ok(ip) => Some(ip),
                    Err(_) => {
                        bad.push(format!("{what}: hostIP {s:?} is not an address"));
                        continue;
                    }
                },
            };
            if out
                .iter()
                .any(|m| (m.host_port, m.protocol, m.host_ip) == (host_port, protocol, host_ip))
            {
                bad.push(format!(
                    "{what}: hostPort {host_port}/{} is taken by another port of the pod",
                    protocol.as_str()
                ));
                continue;
            }
            out.push(PortMapping {
                host_port,
                container_port,
                protocol,
                host_ip,
            });
        }
    }
    (out, bad)
}

/// The mappings whose `hostIP` is not an address of this node (the kubelet runs in the
/// node's network namespace): nothing would ever reach them there. An address is the node's
/// when a socket can be bound to it.
pub fn foreign_host_ips(maps: &[PortMapping]) -> Vec<String> {
    maps.iter()
        .filter_map(|m| {
            let ip = m.host_ip?;
            // An IPv6 link-local address cannot be bound without its interface (EINVAL), so it
            // is not judged here; only "no such address here" counts (an address still in
            // duplicate address detection says so too, and the back-off retries it).
            if let std::net::IpAddr::V6(v6) = ip
                && v6.is_unicast_link_local()
            {
                return None;
            }
            std::net::UdpSocket::bind((ip, 0))
                .err()
                .filter(|e| e.raw_os_error() == Some(nix::libc::EADDRNOTAVAIL))
                .map(|e| {
                    format!(
                        "hostPort {}/{}: hostIP {ip} is not an address of this node ({e})",
                        m.host_port,
                        m.protocol.as_str()
                    )
                })
        })
        .collect()
}

impl Protocol {
    /// The name as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

#[derive(Clone)]
pub struct Network {
    inner: Arc<Inner>,
}

struct Inner {
    conf_dir: PathBuf,
    cni: CniConfig,
}

impl Network {
    pub fn new(cfg: &Config) -> Network {
        Network {
            inner: Arc::new(Inner {
                conf_dir: cfg.cni_conf_dir.clone(),
                cni: CniConfig::new(cfg.cni_bin_dirs.clone(), cfg.cni_cache_dir.clone())
                    .with_timeout(cfg.cni_timeout),
            }),
        }
    }

    /// The default network, chosen as libcni's users do (the first valid file by name).
    pub fn default_list(conf_dir: &Path) -> Result<NetworkConfigList, String> {
        trellis_cni::invoke::default_network(conf_dir).map_err(|e| e.to_string())
    }

    /// Ok when a network configuration exists and its plugins answer STATUS.
    pub async fn ready(&self) -> Result<(), String> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let list = Network::default_list(&inner.conf_dir)?;
            inner
                .cni
                .status(&list)
                .map_err(|e| format!("network plugin not ready: {e}"))
        })
        .await
        .map_err(|e| e.to_string())?
    }

    fn rt(pod: &PodRef) -> RuntimeConf {
        let mut capability_args = serde_json::Map::new();
        if !pod.port_mappings.is_empty()
            && let Ok(v) = serde_json::to_value(&pod.port_mappings)
        {
            capability_args.insert("portMappings".into(), v);
        }
        RuntimeConf {
            container_id: pod.sandbox_id.clone(),
            netns: pod.netns.clone(),
            ifname: "eth0".into(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), pod.namespace.clone()),
                ("K8S_POD_NAME".into(), pod.name.clone()),
                ("K8S_POD_INFRA_CONTAINER_ID".into(), pod.sandbox_id.clone()),
                ("K8S_POD_UID".into(), pod.uid.clone()),
            ],
            capability_args,
        }
    }

    /// CNI ADD; the pod's addresses from the result.
    pub async fn add(&self, pod: PodRef) -> Result<Vec<IpAddr>, Error> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let list = Network::default_list(&inner.conf_dir).map_err(Error::Other)?;
            let result = inner.cni.add(&list, &Network::rt(&pod))?;
            Ok(result.ips.iter().map(|ip| ip.address.addr()).collect())
        })
        .await
        .map_err(|e| Error::Other(e.to_string()))?
    }

    /// CNI DEL (idempotent: after a failed ADD, or when nothing is left).
    pub async fn del(&self, pod: PodRef) -> Result<(), Error> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let list = Network::default_list(&inner.conf_dir).map_err(Error::Other)?;
            inner.cni.del(&list, &Network::rt(&pod))?;
            Ok(())
        })
        .await
        .map_err(|e| Error::Other(e.to_string()))?
    }

    /// CNI GC: everything not held by `valid` sandbox ids is released.
    pub async fn gc(&self, valid: Vec<String>) -> Result<(), Error> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let list = Network::default_list(&inner.conf_dir).map_err(Error::Other)?;
            let valid: Vec<AttachmentId> = valid
                .into_iter()
                .map(|container_id| AttachmentId {
                    container_id,
                    ifname: "eth0".into(),
                })
                .collect();
            inner.cni.gc(&list, &valid)?;
            Ok(())
        })
        .await
        .map_err(|e| Error::Other(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> PodSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn host_ports_become_port_mappings_as_the_cri_passes_them() {
        let s = spec(serde_json::json!({"containers": [
            {"name": "a", "ports": [
                {"containerPort": 80, "hostPort": 8080},
                {"containerPort": 53, "hostPort": 5353, "protocol": "UDP", "hostIP": "198.18.0.2"},
                {"containerPort": 9000},
                {"containerPort": 9001, "hostPort": 0},
                {"containerPort": 9002, "hostPort": 9002, "hostIP": "0.0.0.0"}]},
            {"name": "b", "ports": [{"containerPort": 70000, "hostPort": 7000},
                {"containerPort": 1, "hostPort": 2, "protocol": "ICMP"}]}],
            "initContainers": [{"name": "i", "ports": [{"containerPort": 1, "hostPort": 1}]}]}));
        let (maps, bad) = port_mappings(&s);
        assert_eq!(
            serde_json::to_value(&maps).unwrap(),
            serde_json::json!([
                {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "198.18.0.2"},
                {"hostPort": 9002, "containerPort": 9002, "protocol": "tcp"}])
        );
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert!(
            bad[0].contains("container b port 70000: port out of range")
                && bad[1].contains("unknown protocol \"ICMP\""),
            "{bad:?}"
        );
        let pod = PodRef {
            port_mappings: maps,
            ..Default::default()
        };
        let rt = Network::rt(&pod);
        assert_eq!(rt.capability_args["portMappings"][0]["hostPort"], 8080);
        let none = Network::rt(&PodRef::default());
        assert!(
            none.capability_args.is_empty(),
            "no hostPort: no portMappings key"
        );
    }

    /// Issue 14: a hostPort twice for one protocol and host IP (the API refuses it; a pod
    /// stored before that check may still have it) is named, the first kept; another protocol
    /// or another host IP is another hostPort.
    #[test]
    fn a_host_port_twice_is_named() {
        let s = spec(serde_json::json!({"containers": [
            {"name": "a", "ports": [{"containerPort": 80, "hostPort": 8080},
                {"containerPort": 80, "hostPort": 8080, "protocol": "UDP"},
                {"containerPort": 81, "hostPort": 8080, "hostIP": "127.0.0.1"}]},
            {"name": "b", "ports": [{"containerPort": 82, "hostPort": 8080, "protocol": "TCP"}]}]}));
        let (maps, bad) = port_mappings(&s);
        assert_eq!(maps.len(), 3, "{maps:?}");
        assert_eq!(
            bad,
            ["container b port 82: hostPort 8080/TCP is taken by another port of the pod"]
        );
    }

    /// Issue 14: a hostIP that is not an address of the node is named (loopback is one; a
    /// documentation address is none: only bound, nothing sent).
    #[test]
    fn a_host_ip_not_of_the_node_is_named() {
        let map = |ip: &str| PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: Protocol::Tcp,
            host_ip: Some(ip.parse().unwrap()),
        };
        let unset = PortMapping {
            host_ip: None,
            ..map("127.0.0.1")
        };
        assert!(foreign_host_ips(&[map("127.0.0.1"), unset]).is_empty());
        let bad = foreign_host_ips(&[map("198.51.100.7")]);
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert!(
            bad[0].starts_with(
                "hostPort 8080/TCP: hostIP 198.51.100.7 is not an address of this node"
            ),
            "{bad:?}"
        );
    }
}
