//! The steps every Trellis plugin takes around its own wiring of a veth attachment, written
//! once: ADD's opening of both sides (refusing an interface that already exists, before IPAM is
//! asked), the veth pair made in place of a host end left behind (and removed again if the
//! wiring fails), CHECK's reading of prevResult, and GC and STATUS, which are IPAM's business
//! once the agent has made the node ready.

use std::path::{Path, PathBuf};

use ipnet::IpNet;

use trellis_cni::Error;
use trellis_cni::result::{CniResult, Interface, IpConfig};
use trellis_cni::skel::{Attachment, GcRequest, NetConf};
use trellis_net::{Handle, Link, Netns, VethSpec};

use crate::PluginConf;
use crate::host::{net_err, open_netns, runtime};
use crate::ready::ReadyState;

/// What ADD knows before it touches anything: the plugin's configuration, the agent's state
/// (11 until the agent has made the node ready), the pod MTU and the container's namespace.
pub struct Add<S> {
    pub conf: PluginConf,
    pub state: S,
    /// The configuration's `mtu`, else the agent's.
    pub mtu: u32,
    pub netns_path: PathBuf,
}

impl<S: ReadyState> Add<S> {
    pub fn prepare(
        req: &Attachment,
        default_state_dir: &str,
        agents_mtu: impl FnOnce(&S) -> u32,
    ) -> Result<Add<S>, Error> {
        let conf = PluginConf::read(&req.conf, default_state_dir)?;
        let state = S::require(&conf.state_dir)?;
        let mtu = conf.mtu_or(agents_mtu(&state));
        let netns_path = req.netns()?.to_path_buf();
        Ok(Add {
            conf,
            state,
            mtu,
            netns_path,
        })
    }
}

/// The container's namespace with connections to it and to the host, once CNI_IFNAME is known
/// to be free in it.
pub struct Sides {
    pub netns: Netns,
    pub host: Handle,
    pub pod: Handle,
}

impl Sides {
    /// Opens both sides. An interface of that name in the container is refused before IPAM is
    /// asked: a repeated ADD must not release, on its way out, the address the first one holds.
    pub async fn open(netns_path: &Path, ifname: &str) -> Result<Sides, Error> {
        let netns = open_netns(netns_path)?;
        let host = Handle::current().map_err(net_err)?;
        let pod = netns.connect().map_err(net_err)?;
        if pod.link(ifname).await.map_err(net_err)?.is_some() {
            return Err(Error::internal(
                format!("interface {ifname} already exists in the container"),
                netns_path.display().to_string(),
            ));
        }
        Ok(Sides { netns, host, pod })
    }

    /// Makes the veth pair (`host_name` on the host, `ifname` in the container) and runs
    /// `configure` on the host end; if that fails the pair goes (and with it every address,
    /// route and neighbour entry on it), so a failed ADD leaves nothing behind.
    pub async fn veth<T>(
        &self,
        host_name: &str,
        ifname: &str,
        mtu: u32,
        configure: impl AsyncFnOnce(&Link) -> Result<T, Error>,
    ) -> Result<(Link, T), Error> {
        let host_link = self.make_veth(host_name, ifname, mtu).await?;
        match configure(&host_link).await {
            Ok(t) => Ok((host_link, t)),
            Err(e) => {
                self.remove_veth(host_name).await;
                Err(e)
            }
        }
    }

    /// Makes the veth pair (`host_name` on the host, `ifname` in the container) and returns
    /// its host end. The caller removes it with [`Sides::remove_veth`] if the ADD fails later.
    ///
    /// A host end of the same name is left from an earlier sandbox of this pod (or a failed ADD
    /// of this one) whose DEL never came: the name is the pod's, so it goes first.
    pub async fn make_veth(&self, host_name: &str, ifname: &str, mtu: u32) -> Result<Link, Error> {
        self.host.delete_link(host_name).await.map_err(net_err)?;
        let spec = VethSpec {
            name: host_name,
            peer_name: ifname,
            peer_ns: Some(&self.netns),
            mtu: Some(mtu),
            mac: None,
            peer_mac: None,
        };
        self.host.add_veth(&spec).await.map_err(net_err)
    }

    /// Removes a pair [`Sides::make_veth`] made (with every address, route and neighbour entry
    /// on it), on a failed ADD's way out; a failure here is not the error the runtime must see.
    pub async fn remove_veth(&self, host_name: &str) {
        let _ = self.host.delete_link(host_name).await;
    }
}

/// What CHECK checks against: the ADD result (prevResult) and the container's interface in it.
pub struct Checked<'a> {
    pub prev: &'a CniResult,
    pub netns_path: PathBuf,
    pub ifname: &'a str,
    /// The container's interface: its index in `prev.interfaces`.
    pub pod_index: usize,
}

impl<'a> Checked<'a> {
    /// prevResult and the interface CNI_IFNAME names in CNI_NETNS, or the error (7) that says
    /// which is missing.
    pub fn of(req: &'a Attachment) -> Result<Checked<'a>, Error> {
        let prev = req.prev_result.as_ref().ok_or_else(|| {
            Error::invalid_config("CHECK needs prevResult", "the ADD result was not passed")
        })?;
        let netns_path = req.netns()?.to_path_buf();
        let ifname = req.ifname.as_str();
        let pod_index = prev
            .interface_index(ifname, Some(&netns_path.display().to_string()))
            .ok_or_else(|| {
                Error::invalid_config(
                    "prevResult names no such interface",
                    format!("{ifname} in {}", netns_path.display()),
                )
            })?;
        Ok(Checked {
            prev,
            netns_path,
            ifname,
            pod_index,
        })
    }

    /// The addresses ADD gave the container's interface.
    pub fn ips(&self) -> impl Iterator<Item = &'a IpConfig> + use<'a> {
        self.prev.ips_of(self.pod_index)
    }

    /// The MAC ADD reported for the container's interface.
    pub fn mac(&self) -> &'a str {
        &self.prev.interfaces[self.pod_index].mac
    }
}

/// CHECK's look at the container's interface: there, with the MAC ADD reported, and holding
/// every one of `addresses`. The link, for the plugin's own checks.
pub async fn pod_interface(
    pod: &Handle,
    netns_path: &Path,
    ifname: &str,
    mac: &str,
    addresses: &[IpNet],
) -> Result<Link, Error> {
    let link = pod.link(ifname).await.map_err(net_err)?.ok_or_else(|| {
        Error::internal(
            format!("{ifname} is missing in the container"),
            netns_path.display().to_string(),
        )
    })?;
    if link.mac.map(|m| m.to_string()) != Some(mac.to_lowercase()) {
        return Err(Error::internal(
            format!("{ifname} has another MAC"),
            format!("{:?}, expected {mac}", link.mac),
        ));
    }
    let have: Vec<IpNet> = pod
        .addresses(Some(link.index))
        .await
        .map_err(net_err)?
        .into_iter()
        .map(|a| a.address)
        .collect();
    if let Some(a) = addresses.iter().find(|a| !have.contains(a)) {
        return Err(Error::internal(
            format!("{ifname} lacks {a}"),
            format!("has {have:?}"),
        ));
    }
    Ok(link)
}

/// A link as the ADD result lists it: name and MAC, with its MTU when given, and the container's
/// namespace for an interface inside it.
pub fn interface(link: &Link, mtu: Option<u32>, sandbox: Option<&Path>) -> Interface {
    Interface {
        name: link.name.clone(),
        mac: link.mac.map(|m| m.to_string()).unwrap_or_default(),
        mtu,
        sandbox: sandbox.map(|p| p.display().to_string()).unwrap_or_default(),
        ..Default::default()
    }
}

/// GC: the tombstones `plugin`'s DELs left in the host's namespace (pairs whose namespace
/// outlived DEL) deleted, then the IPAM plugin's GC. A tombstone's attachment was deleted
/// whatever the runtime lists, so all go.
pub fn gc(plugin: &str, req: &GcRequest) -> Result<(), Error> {
    runtime()?.block_on(async {
        let host = Handle::current().map_err(net_err)?;
        let swept = crate::veth::sweep_tombstones(&host, plugin).await?;
        if swept > 0 {
            eprintln!("{plugin}: GC deleted {swept} tombstone(s) of deleted attachments");
        }
        crate::ipam::gc(req).await
    })
}

/// STATUS: "not available" (50) until the agent has written `S`, then the IPAM plugin's.
pub fn status<S: ReadyState>(conf: &NetConf, default_state_dir: &str) -> Result<(), Error> {
    let own = PluginConf::read(conf, default_state_dir)?;
    S::status(&own.state_dir)?;
    runtime()?.block_on(crate::ipam::status(conf))
}
