//! The `trellis-overlay` CNI plugin: each pod on the node's bridge (`trellis0`, holding the
//! block's gateway), through a veth pair, with an address of the node's block from the IPAM
//! plugin the configuration names, a default route via the gateway, and the overlay's MTU.
//!
//! The plugin reads the node's state from the agent. Before the agent has made the node ready,
//! ADD answers "try again later" (11) and STATUS "not available" (50).

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net};
use serde::Deserialize;
use trellis_cni::Error;
use trellis_cni::ipam::Delegation;
use trellis_cni::result::{CniResult, Interface, IpConfig, Route as CniRoute};
use trellis_cni::skel::{Attachment, GcRequest, NetConf, Plugin};
use trellis_net::{Handle, Netns, Route, VethSpec};

use crate::state::{DEFAULT_STATE_DIR, NodeState};

/// IPAM: `trellis-ipam` is linked in and runs in this process — one RPC to ipamd, no process
/// to start, the same answers and error codes as its binary (it is the same code, run through
/// the same skeleton). Any other `ipam.type` is delegated to its binary as usual.
const IPAM: Delegation<'static> = Delegation::linking(&[(
    trellis_ipam::plugin::TYPE,
    &trellis_ipam::plugin::TrellisIpam,
)]);

/// The plugin's own keys in its configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OverlayConf {
    /// Where the agent writes the node's state.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Overrides the MTU the agent computed.
    #[serde(default)]
    pub mtu: Option<u32>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}

pub struct Overlay;

/// `0.0.0.0/0`.
const DEFAULT_ROUTE: IpNet = IpNet::V4(Ipv4Net::new_assert(std::net::Ipv4Addr::UNSPECIFIED, 0));

fn net_err(e: trellis_net::Error) -> Error {
    if e.is_not_found() {
        return Error::internal("a network object is missing", e.to_string());
    }
    Error::internal("host networking failed", e.to_string())
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("cannot start the plugin's runtime", e))
}

/// The node state, or the CNI error that says why there is none.
fn node_state(conf: &OverlayConf) -> Result<NodeState, Error> {
    NodeState::require(&conf.state_dir)
}

fn host_veth(req: &Attachment) -> String {
    trellis_net::link::host_veth_name(&format!(
        "{}/{}",
        req.container_id.as_str(),
        req.ifname.as_str()
    ))
}

impl Plugin for Overlay {
    fn add(&self, req: &Attachment) -> Result<CniResult, Error> {
        let conf: OverlayConf = req.conf.parse()?;
        let state = node_state(&conf)?;
        let mtu = conf.mtu.unwrap_or(state.mtu);
        let netns_path = req.netns()?.to_path_buf();
        let lease = IPAM.add(req)?;
        let (address, prefix) = lease
            .result()
            .ips
            .iter()
            .find_map(|ip| match ip.address {
                IpNet::V4(v4) => Some((v4.addr(), v4.prefix_len())),
                IpNet::V6(_) => None,
            })
            .ok_or_else(|| {
                Error::invalid_config(
                    "the IPAM plugin gave no IPv4 address",
                    "the overlay is IPv4",
                )
            })?;
        if !state.block.contains(&address) {
            return Err(Error::invalid_config(
                "the IPAM plugin gave an address outside this node's block",
                format!(
                    "{address} is not in {}; configure the IPAM pool to hand out this node's block",
                    state.block
                ),
            ));
        }
        let gateway = state.gateway();
        // Pods share the bridge's subnet: the block, whatever prefix the IPAM plugin reported.
        let _ = prefix;
        let pod_net = Ipv4Net::new(address, state.block.prefix_len())
            .map_err(|e| Error::internal("bad address", e.to_string()))?;
        let host_name = host_veth(req);
        let ifname = req.ifname.as_str().to_string();
        let extra_routes: Vec<CniRoute> = lease.result().routes.clone();
        let rt = runtime()?;
        let (bridge, host_link, pod_link) = rt.block_on(async {
            let netns = Netns::open(&netns_path).map_err(|e| {
                Error::unknown_container("cannot open the network namespace", e.to_string())
            })?;
            let host = Handle::current().map_err(net_err)?;
            let pod = netns.connect().map_err(net_err)?;
            if pod.link(&ifname).await.map_err(net_err)?.is_some() {
                return Err(Error::internal(
                    format!("interface {ifname} already exists in the container"),
                    netns_path.display().to_string(),
                ));
            }
            // The bridge holds the block's gateway; an address left from another block is
            // replaced, not an error (flannel's "cni0 already has an IP address different").
            let bridge = host
                .ensure_bridge(&state.bridge, Some(mtu))
                .await
                .map_err(net_err)?;
            let gw_net = IpNet::V4(
                Ipv4Net::new(gateway, state.block.prefix_len())
                    .map_err(|e| Error::internal("bad gateway", e.to_string()))?,
            );
            // Only a bridge that lacked the gateway can hold a stale address: the common path
            // costs one request, not a dump of every address on a node with many pods.
            if host
                .add_address(bridge.index, gw_net)
                .await
                .map_err(net_err)?
            {
                host.set_addresses(bridge.index, &[gw_net])
                    .await
                    .map_err(net_err)?;
            }
            // A leftover host end of an earlier, failed ADD of this attachment goes first.
            host.delete_link(&host_name).await.map_err(net_err)?;
            let spec = VethSpec {
                name: &host_name,
                peer_name: &ifname,
                peer_ns: Some(&netns),
                mtu: Some(mtu),
                mac: None,
                peer_mac: None,
            };
            let host_link = host.add_veth(&spec).await.map_err(net_err)?;
            let wired = async {
                host.set_controller(host_link.index, Some(bridge.index))
                    .await?;
                host.set_hairpin(host_link.index, true).await?;
                host.set_up(host_link.index).await?;
                let pod_link = pod.require_link(&ifname).await?;
                trellis_net::sysctl::set(
                    &netns,
                    &[(&format!("net/ipv4/conf/{ifname}/arp_notify"), "1")],
                )?;
                pod.ensure_address(pod_link.index, IpNet::V4(pod_net))
                    .await?;
                pod.set_up(pod_link.index).await?;
                pod.replace_route(
                    &Route::via(DEFAULT_ROUTE, IpAddr::V4(gateway)).oif(pod_link.index),
                )
                .await?;
                for r in &extra_routes {
                    if r.dst.prefix_len() == 0 || r.dst.addr().is_ipv6() {
                        continue;
                    }
                    let mut route = match r.gw {
                        Some(gw) => Route::via(r.dst, gw),
                        None => Route::via(r.dst, IpAddr::V4(gateway)),
                    };
                    route = route.oif(pod_link.index);
                    pod.replace_route(&route).await?;
                }
                pod.require_link(&ifname).await
            }
            .await;
            match wired {
                Ok(pod_link) => Ok((bridge, host_link, pod_link)),
                Err(e) => {
                    // Leave nothing half made: the pair goes (the lease is released on return).
                    let _ = host.delete_link(&host_name).await;
                    Err(net_err(e))
                }
            }
        })?;
        lease.keep();
        let mac = |m: Option<trellis_net::Mac>| m.map(|m| m.to_string()).unwrap_or_default();
        Ok(CniResult {
            interfaces: vec![
                Interface {
                    name: bridge.name.clone(),
                    mac: mac(bridge.mac),
                    ..Default::default()
                },
                Interface {
                    name: host_link.name.clone(),
                    mac: mac(host_link.mac),
                    ..Default::default()
                },
                Interface {
                    name: pod_link.name.clone(),
                    mac: mac(pod_link.mac),
                    mtu: Some(mtu),
                    sandbox: netns_path.display().to_string(),
                    ..Default::default()
                },
            ],
            ips: vec![IpConfig {
                interface: Some(2),
                address: IpNet::V4(pod_net),
                gateway: Some(IpAddr::V4(gateway)),
            }],
            routes: vec![CniRoute::new(DEFAULT_ROUTE, Some(IpAddr::V4(gateway)))],
            dns: req.conf.config.dns.clone().unwrap_or_default(),
        })
    }

    fn del(&self, req: &Attachment) -> Result<(), Error> {
        let host_name = host_veth(req);
        // The interface goes first, then its address: an address is never reused while an
        // interface still holds it.
        let rt = runtime()?;
        rt.block_on(async {
            let host = Handle::current().map_err(net_err)?;
            host.delete_link(&host_name).await.map_err(net_err)
        })?;
        IPAM.del(req)
    }

    fn check(&self, req: &Attachment) -> Result<(), Error> {
        let conf: OverlayConf = req.conf.parse()?;
        let state = node_state(&conf)?;
        let prev = req.prev_result.as_ref().ok_or_else(|| {
            Error::invalid_config("CHECK needs prevResult", "the ADD result was not passed")
        })?;
        let netns_path = req.netns()?.to_path_buf();
        let ifname = req.ifname.as_str().to_string();
        let pod_index = prev
            .interface_index(&ifname, Some(&netns_path.display().to_string()))
            .ok_or_else(|| {
                Error::invalid_config(
                    "prevResult names no such interface",
                    format!("{ifname} in {}", netns_path.display()),
                )
            })?;
        let want_mac = prev.interfaces[pod_index].mac.clone();
        let want_ips: Vec<IpNet> = prev.ips_of(pod_index).map(|ip| ip.address).collect();
        let host_name = host_veth(req);
        let rt = runtime()?;
        rt.block_on(async {
            let netns = Netns::open(&netns_path).map_err(|e| {
                Error::unknown_container("cannot open the network namespace", e.to_string())
            })?;
            let pod = netns.connect().map_err(net_err)?;
            let host = Handle::current().map_err(net_err)?;
            let link = pod.link(&ifname).await.map_err(net_err)?.ok_or_else(|| {
                Error::internal(
                    format!("{ifname} is missing in the container"),
                    netns_path.display().to_string(),
                )
            })?;
            if link.mac.map(|m| m.to_string()) != Some(want_mac.to_lowercase()) {
                return Err(Error::internal(
                    format!("{ifname} has another MAC"),
                    format!("{:?}, expected {want_mac}", link.mac),
                ));
            }
            let have: Vec<IpNet> = pod
                .addresses(Some(link.index))
                .await
                .map_err(net_err)?
                .into_iter()
                .map(|a| a.address)
                .collect();
            for ip in &want_ips {
                if !have.contains(ip) {
                    return Err(Error::internal(
                        format!("{ifname} lacks {ip}"),
                        format!("has {have:?}"),
                    ));
                }
            }
            let routes = pod
                .routes(trellis_net::Family::V4, Some(Route::TABLE_MAIN))
                .await
                .map_err(net_err)?;
            let gw = IpAddr::V4(state.gateway());
            if !routes
                .iter()
                .any(|r| r.dst.prefix_len() == 0 && r.gateway == Some(gw))
            {
                return Err(Error::internal(
                    "the container has no default route via the gateway",
                    gw.to_string(),
                ));
            }
            let bridge = host
                .link(&state.bridge)
                .await
                .map_err(net_err)?
                .ok_or_else(|| Error::internal("the bridge is missing", state.bridge.clone()))?;
            let veth = host
                .link(&host_name)
                .await
                .map_err(net_err)?
                .ok_or_else(|| {
                    Error::internal("the host end of the veth is missing", host_name.clone())
                })?;
            if veth.controller != Some(bridge.index) {
                return Err(Error::internal(
                    "the host end of the veth is not on the bridge",
                    format!("{host_name} not on {}", state.bridge),
                ));
            }
            Ok(())
        })?;
        IPAM.check(req)
    }

    fn gc(&self, req: &GcRequest) -> Result<(), Error> {
        IPAM.gc(req)
    }

    fn status(&self, conf: &NetConf) -> Result<(), Error> {
        let own: OverlayConf = conf.parse()?;
        match NodeState::read(&own.state_dir) {
            Ok(Some(_)) => IPAM.status(conf),
            Ok(None) => Err(Error::not_available(
                "the overlay agent has not made this node ready yet",
                NodeState::path(&own.state_dir).display().to_string(),
            )),
            Err(e) => Err(Error::not_available(
                "cannot read the overlay agent's state",
                e.to_string(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use std::collections::HashMap;
    use trellis_cni::skel::{Invocation, run};

    fn status_code(conf: &Value) -> u64 {
        let env: HashMap<String, String> =
            [("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/nonexistent")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let out = run(
            &Overlay,
            Invocation {
                env,
                stdin: conf.to_string().into_bytes(),
            },
        );
        assert_ne!(out.exit_code, 0);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["code"].as_u64().unwrap()
    }

    #[test]
    fn trellis_ipam_runs_in_process_and_other_types_are_executed() {
        let dir = tempfile::tempdir().unwrap();
        NodeState {
            block: "10.244.1.0/24".parse().unwrap(),
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            mtu: 1450,
            bridge: "trellis0".into(),
        }
        .write(dir.path())
        .unwrap();
        let mut c = json!({"cniVersion": "1.1.0", "name": "overlay", "type": "trellis-overlay",
            "stateDir": dir.path(),
            "ipam": {"type": "trellis-ipam", "socket": dir.path().join("none.sock")}});
        // No trellis-ipam in CNI_PATH (that would be 7): the linked plugin finds ipamd down.
        assert_eq!(status_code(&c), 50);
        c["ipam"]["subnet"] = json!("10.0.0.0/8");
        assert_eq!(status_code(&c), 2);
        c["ipam"] = json!({"type": "host-local"});
        assert_eq!(status_code(&c), 7);
    }
}
