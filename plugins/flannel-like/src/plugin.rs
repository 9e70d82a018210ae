//! The `trellis-overlay` CNI plugin: each pod on the node's bridge (`trellis0`, holding the
//! block's gateway), through a veth pair, with an address of the node's block from the IPAM
//! plugin the configuration names, a default route via the gateway, and the overlay's MTU.
//!
//! The plugin reads the node's state from the agent. Before the agent has made the node ready,
//! ADD answers "try again later" (11) and STATUS "not available" (50). An address the node
//! itself needs — the VTEP's (the block's network address), the gateway, the block's broadcast
//! address — or one outside the node's block is refused (7) and released.
//!
//! With a `policy` section, ADD waits for policyd to commit the pod's rules
//! (`trellis_plugin::policy`); if it does not, ADD is undone and answers 11.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use ipnet::{IpNet, Ipv4Net};
use trellis_cni::Error;
use trellis_cni::result::{CniResult, IpConfig, Route as CniRoute};
use trellis_cni::skel::{Attachment, GcRequest, NetConf, Plugin};
use trellis_net::{Handle, Link, Route};
use trellis_plugin::attach::{self, Add, Checked, Sides};
use trellis_plugin::host::{net_err, open_netns, runtime};
use trellis_plugin::{PluginConf, ipam, veth};

use crate::state::{DEFAULT_STATE_DIR, NodeState};
use trellis_plugin::ready::ReadyState;

/// The plugin's type, and the prefix of the owner label on its host ends.
pub const TYPE: &str = "trellis-overlay";

pub struct Overlay;

/// `0.0.0.0/0`.
const DEFAULT_ROUTE: IpNet = IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::UNSPECIFIED, 0));

fn read_conf(conf: &NetConf) -> Result<PluginConf, Error> {
    PluginConf::read(conf, DEFAULT_STATE_DIR)
}

/// The pod's address on the bridge's subnet (the node's block), or why IPAM's address cannot
/// be a pod's.
pub fn pod_address(state: &NodeState, result: &CniResult) -> Result<Ipv4Net, Error> {
    let address = result
        .ips
        .iter()
        .find_map(|ip| match ip.address {
            IpNet::V4(v4) => Some(v4.addr()),
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
    let own = [
        (state.vtep_address(), "the VTEP's"),
        (state.gateway(), "the gateway's"),
        (state.block.broadcast(), "the block's broadcast"),
    ];
    if let Some((_, whose)) = own.iter().find(|(a, _)| *a == address) {
        return Err(Error::invalid_config(
            format!("the IPAM plugin gave {whose} address {address} to a pod"),
            "the node holds it; the overlay agent holds it in trellis-ipam; with another IPAM, exclude the first two and the last address of each block",
        ));
    }
    // Pods share the bridge's subnet: the block, whatever prefix the IPAM plugin reported.
    Ipv4Net::new(address, state.block.prefix_len())
        .map_err(|e| Error::internal("bad address", e.to_string()))
}

/// Bridge, veth and the pod's side, for a pod with `pod_net`; on failure the pair goes.
async fn wire(
    req: &Attachment,
    state: &NodeState,
    mtu: u32,
    sides: &Sides,
    pod_net: Ipv4Net,
    extra_routes: &[CniRoute],
) -> Result<(Link, Link, Link), Error> {
    let ifname = req.ifname.as_str();
    let Sides { netns, host, pod } = sides;
    let gateway = state.gateway();
    let host_name = veth::host_veth(req);
    // The bridge holds the block's gateway; an address left from another block is replaced,
    // not an error (flannel's "cni0 already has an IP address different").
    let bridge = host
        .ensure_bridge(&state.bridge, Some(mtu))
        .await
        .map_err(net_err)?;
    let gw_net = IpNet::V4(
        Ipv4Net::new(gateway, state.block.prefix_len())
            .map_err(|e| Error::internal("bad gateway", e.to_string()))?,
    );
    // Only a bridge that lacked the gateway can hold a stale address: the common path costs
    // one request, not a dump of every address on a node with many pods.
    if host
        .add_address(bridge.index, gw_net)
        .await
        .map_err(net_err)?
    {
        host.set_addresses(bridge.index, &[gw_net])
            .await
            .map_err(net_err)?;
    }
    let owner = veth::owner(TYPE, req);
    let (host_link, pod_link) = sides
        .veth(&host_name, ifname, mtu, async |host_link| {
            let wired = async {
                host.set_alias(host_link.index, &owner).await?;
                host.set_controller(host_link.index, Some(bridge.index))
                    .await?;
                host.set_hairpin(host_link.index, true).await?;
                host.set_up(host_link.index).await?;
                let pod_link = pod.require_link(ifname).await?;
                trellis_net::sysctl::set(
                    netns,
                    &[(&format!("net/ipv4/conf/{ifname}/arp_notify"), "1")],
                )?;
                pod.ensure_address(pod_link.index, IpNet::V4(pod_net))
                    .await?;
                pod.set_up(pod_link.index).await?;
                pod.replace_route(
                    &Route::via(DEFAULT_ROUTE, IpAddr::V4(gateway)).oif(pod_link.index),
                )
                .await?;
                for r in extra_routes {
                    if r.dst.prefix_len() == 0 || r.dst.addr().is_ipv6() {
                        continue;
                    }
                    let via = r.gw.unwrap_or(IpAddr::V4(gateway));
                    pod.replace_route(&Route::via(r.dst, via).oif(pod_link.index))
                        .await?;
                }
                pod.require_link(ifname).await
            };
            wired.await.map_err(net_err)
        })
        .await?;
    Ok((bridge, host_link, pod_link))
}

/// CHECK: the pod's interface, MAC, addresses and default route; the host end ours and on the
/// bridge.
async fn verify(
    req: &Attachment,
    state: &NodeState,
    netns_path: &Path,
    want_mac: &str,
    want_ips: &[IpNet],
) -> Result<(), Error> {
    let ifname = req.ifname.as_str();
    let netns = open_netns(netns_path)?;
    let pod = netns.connect().map_err(net_err)?;
    let host = Handle::current().map_err(net_err)?;
    attach::pod_interface(&pod, netns_path, ifname, want_mac, want_ips).await?;
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
    let host_name = veth::host_veth(req);
    let host_end = host
        .link(&host_name)
        .await
        .map_err(net_err)?
        .ok_or_else(|| Error::internal("the host end of the veth is missing", host_name.clone()))?;
    veth::require_owner(&host_end, &veth::owner(TYPE, req))?;
    if host_end.controller != Some(bridge.index) {
        return Err(Error::internal(
            "the host end of the veth is not on the bridge",
            format!("{host_name} not on {}", state.bridge),
        ));
    }
    Ok(())
}

impl Plugin for Overlay {
    fn add(&self, req: &Attachment) -> Result<CniResult, Error> {
        let add = Add::<NodeState>::prepare(req, DEFAULT_STATE_DIR, |s| s.mtu)?;
        let (conf, state, mtu, netns_path) = (&add.conf, &add.state, add.mtu, &add.netns_path);
        let ifname = req.ifname.as_str();
        runtime()?.block_on(async {
            let sides = Sides::open(netns_path, ifname).await?;
            let lease = ipam::add(req).await?;
            let wired = match pod_address(state, lease.result()) {
                Ok(pod_net) => wire(req, state, mtu, &sides, pod_net, &lease.result().routes)
                    .await
                    .map(|links| (pod_net, links)),
                Err(e) => Err(e),
            };
            let (pod_net, (bridge, host_link, pod_link)) = match wired {
                Ok(w) => w,
                Err(e) => {
                    lease.release().await;
                    return Err(e);
                }
            };
            // Everything is in place: with policy on, the pod may not start before its rules.
            trellis_plugin::policy::admit(
                TYPE,
                req,
                conf.policy.as_ref(),
                &[IpAddr::V4(pod_net.addr())],
                &host_link.name,
                lease,
            )
            .await?;
            let gateway = IpAddr::V4(state.gateway());
            Ok(CniResult {
                interfaces: vec![
                    attach::interface(&bridge, None, None),
                    attach::interface(&host_link, None, None),
                    attach::interface(&pod_link, Some(mtu), Some(netns_path)),
                ],
                ips: vec![IpConfig {
                    interface: Some(2),
                    address: IpNet::V4(pod_net),
                    gateway: Some(gateway),
                }],
                routes: vec![CniRoute::new(DEFAULT_ROUTE, Some(gateway))],
                dns: req.conf.config.dns.clone().unwrap_or_default(),
            })
        })
    }

    fn del(&self, req: &Attachment) -> Result<(), Error> {
        veth::del_attachment(TYPE, req)
    }

    fn check(&self, req: &Attachment) -> Result<(), Error> {
        let conf = read_conf(&req.conf)?;
        let state = NodeState::require(&conf.state_dir)?;
        let checked = Checked::of(req)?;
        let want_ips: Vec<IpNet> = checked.ips().map(|ip| ip.address).collect();
        runtime()?.block_on(async {
            verify(req, &state, &checked.netns_path, checked.mac(), &want_ips).await?;
            ipam::check(req).await
        })
    }

    fn gc(&self, req: &GcRequest) -> Result<(), Error> {
        attach::gc(TYPE, req)
    }

    fn status(&self, conf: &NetConf) -> Result<(), Error> {
        attach::status::<NodeState>(conf, DEFAULT_STATE_DIR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use std::collections::HashMap;
    use trellis_cni::skel::{Invocation, run};

    fn state() -> NodeState {
        NodeState {
            block: "10.244.1.0/24".parse().unwrap(),
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            mtu: 1450,
            bridge: "trellis0".into(),
        }
    }

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
        let mut c = json!({"cniVersion": "1.1.0", "name": "overlay", "type": "trellis-overlay",
            "stateDir": dir.path(),
            "ipam": {"type": "trellis-ipam", "socket": dir.path().join("none.sock")}});
        assert_eq!(status_code(&c), 50, "no agent yet");
        state().write(dir.path()).unwrap();
        // No trellis-ipam in CNI_PATH (that would be 7): the linked plugin finds ipamd down.
        assert_eq!(status_code(&c), 50);
        c["ipam"]["subnet"] = json!("10.0.0.0/8");
        assert_eq!(status_code(&c), 2);
        c["ipam"] = json!({"type": "host-local"});
        assert_eq!(status_code(&c), 7);
    }

    fn ipam_gave(address: &str) -> CniResult {
        CniResult::from_value(
            json!({"cniVersion": "1.0.0", "ips": [{"address": address}]}),
            None,
        )
        .unwrap()
        .1
    }

    #[test]
    fn addresses_the_node_holds_are_never_a_pods() {
        let s = state();
        assert_eq!(
            pod_address(&s, &ipam_gave("10.244.1.7/24"))
                .unwrap()
                .to_string(),
            "10.244.1.7/24"
        );
        assert_eq!(
            pod_address(&s, &ipam_gave("10.244.1.9/32"))
                .unwrap()
                .to_string(),
            "10.244.1.9/24",
            "the bridge's prefix, whatever IPAM reported"
        );
        for (taken, whose) in [
            ("10.244.1.0/24", "VTEP"),
            ("10.244.1.1/24", "gateway"),
            ("10.244.1.255/24", "broadcast"),
        ] {
            let e = pod_address(&s, &ipam_gave(taken)).unwrap_err();
            assert_eq!(e.code, trellis_cni::Code::INVALID_NETWORK_CONFIG, "{taken}");
            assert!(e.msg.contains(whose), "{taken}: {e}");
        }
        let e = pod_address(&s, &ipam_gave("10.244.2.7/24")).unwrap_err();
        assert!(e.msg.contains("outside"), "{e}");
    }
}
