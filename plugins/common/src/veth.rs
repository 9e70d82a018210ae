//! A pod's host-side veth: its name (one rule for every plugin, so policyd can name a pod's
//! interface from its Pod object) and the label that says which attachment owns it.
//!
//! The name follows the pod, not the sandbox: a new sandbox of the same pod gets the same
//! name. So the host end carries its attachment (`<plugin> <container id>/<ifname>`) in its
//! alias, and a late DEL of an earlier sandbox leaves the newer sandbox's interface alone.
//!
//! DEL retires a pair instead of deleting it (down, renamed to a `trz…` tombstone) and leaves
//! the deletion to the namespace's teardown: see [`retire_attachment`].

use std::path::Path;

use trellis_cni::Error;
use trellis_cni::skel::Attachment;
use trellis_net::{Handle, Netns};

use crate::host::net_err;

/// The host end's name for this attachment (`trellis_net::link::pod_host_veth`).
pub fn host_veth(req: &Attachment) -> String {
    trellis_net::link::pod_host_veth(
        req.args.pod(),
        req.container_id.as_str(),
        req.ifname.as_str(),
    )
}

/// The alias that says `plugin`'s attachment `container_id/ifname` owns a host end.
pub fn owner_alias(plugin: &str, container_id: &str, ifname: &str) -> String {
    format!("{plugin} {container_id}/{ifname}")
}

/// The owner label of this attachment.
pub fn owner(plugin: &str, req: &Attachment) -> String {
    owner_alias(plugin, req.container_id.as_str(), req.ifname.as_str())
}

/// The undo of an ADD that failed at the policy gate: the host end deleted (and the pair with
/// it) unless another attachment of `plugin` has taken the name over since (a newer sandbox of
/// the same pod). Nothing there is success. DEL retires instead ([`retire_attachment`]).
pub async fn remove_host_end(
    host: &Handle,
    plugin: &str,
    name: &str,
    owner: &str,
) -> Result<(), Error> {
    let Some(link) = host.link(name).await.map_err(net_err)? else {
        return Ok(());
    };
    if let Some(alias) = &link.alias
        && alias.starts_with(&format!("{plugin} "))
        && alias != owner
    {
        eprintln!("{plugin}: leaving {name}: it belongs to {alias:?}");
        return Ok(());
    }
    host.delete_link(name).await.map(|_| ()).map_err(net_err)
}

/// A plugin's whole DEL of a veth attachment: the pair retired ([`retire_attachment`]), then
/// the addresses released — an address is never reused while an interface still holds it, and
/// a retired end holds none. Succeeds when all is gone already, and with the netns gone.
pub fn del_attachment(plugin: &str, req: &Attachment) -> Result<(), Error> {
    let name = host_veth(req);
    let owner = owner(plugin, req);
    crate::host::runtime()?.block_on(async {
        let host = Handle::current().map_err(net_err)?;
        let pod = PodEnd {
            netns: req.netns.as_deref(),
            ifname: req.ifname.as_str(),
        };
        retire_attachment(&host, plugin, &name, &owner, &pod).await?;
        crate::ipam::del(req).await
    })
}

/// Where DEL looks for the container's end: CNI_NETNS (none when the runtime gave none or it
/// is gone) and CNI_IFNAME.
pub struct PodEnd<'a> {
    pub netns: Option<&'a Path>,
    pub ifname: &'a str,
}

/// What [`retire_attachment`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retired {
    /// No host end of that name: nothing to do (a repeated DEL, or the netns went first and
    /// took the pair with it).
    Nothing,
    /// The host end belongs to a newer sandbox of the pod (its alias): left alone.
    NotOurs { alias: String },
    /// The pair is down and renamed: the host end to `host`, the container's end (when it was
    /// found in the netns, as the host end's peer) to `pod`.
    Tombstoned { host: String, pod: Option<String> },
    /// The pair was deleted instead (the slow path): DEL had no CNI_NETNS, or an end could
    /// not be retired.
    Deleted,
}

/// DEL's removal of an attachment's veth pair without the kernel's slow path: deleting a veth
/// waits for an RCU grace period (~12–25 ms here), while removing an address, setting a link
/// down, taking it off a bridge or renaming it takes a fraction of a millisecond. So DEL
/// retires both ends instead:
///
/// 1. the container's end (CNI_IFNAME in CNI_NETNS, when it is the host end's peer): its
///    addresses removed, then down and renamed to a tombstone in one request, so a later ADD
///    into the same namespace with the same name finds it free and no address of the
///    attachment is held anywhere once IPAM releases it;
/// 2. the host end down, off any bridge and renamed to a tombstone in one request — the kernel
///    drops every route and neighbour entry through it, and a new sandbox of the pod finds its
///    name free. Last, so that a DEL cut short and repeated still finds the host end by its
///    name and does the rest.
///
/// The runtime deletes the pod's namespace right after DEL (containerd, CRI-O, our kubelet),
/// and the kernel then frees the pair asynchronously, off the DEL path. A namespace that
/// outlives DEL leaves a tombstone — down, unaddressed, unrouted — which the plugin's GC and
/// the node agent's sweep delete ([`sweep_tombstones`]).
///
/// Without CNI_NETNS the container's end is out of reach: it would keep its name and addresses
/// should its namespace live on, so the pair is deleted (the slow path). The same when an end
/// cannot be retired. A host end whose alias names another attachment of `plugin` (a newer
/// sandbox of the same pod, which has the same host name) is left alone. Every step acts on the
/// host end's index, not its name: a pair freed meanwhile with its namespace, or replaced by a
/// newer sandbox's ADD, is never mistaken for another link, and its absence means done.
pub async fn retire_attachment(
    host: &Handle,
    plugin: &str,
    name: &str,
    owner: &str,
    pod: &PodEnd<'_>,
) -> Result<Retired, Error> {
    let Some(link) = host.link(name).await.map_err(net_err)? else {
        return Ok(Retired::Nothing);
    };
    retire_found(host, plugin, &link, owner, pod).await
}

/// [`retire_attachment`] once the host end has been looked up: `link` may be gone by now (its
/// namespace's teardown freed the pair, or a newer sandbox's ADD replaced the host end), which
/// is done, not an error.
pub async fn retire_found(
    host: &Handle,
    plugin: &str,
    link: &trellis_net::Link,
    owner: &str,
    pod: &PodEnd<'_>,
) -> Result<Retired, Error> {
    let name = &link.name;
    if let Some(alias) = &link.alias
        && alias.starts_with(&format!("{plugin} "))
        && alias != owner
    {
        eprintln!("{plugin}: leaving {name}: it belongs to {alias:?}");
        return Ok(Retired::NotOurs {
            alias: alias.clone(),
        });
    }
    let Some(path) = pod.netns else {
        return delete_pair(host, link.index).await;
    };
    let pod_tomb = match retire_pod_end(link, path, pod.ifname).await {
        Ok(t) => t,
        // The container's end keeps its name: only deleting the pair frees it.
        Err(e) => {
            eprintln!(
                "{plugin}: cannot retire the container's end of {name} ({e}): deleting the pair"
            );
            return delete_pair(host, link.index).await;
        }
    };
    match host.retire(link.index).await {
        Ok(host_tomb) => Ok(Retired::Tombstoned {
            host: host_tomb,
            pod: pod_tomb,
        }),
        // The pair went with its namespace between the lookup and now (a namespace deleted
        // before DEL frees its veths asynchronously), or a newer sandbox's ADD replaced the
        // host end: nothing is left to retire.
        Err(e) if e.is_not_found() => Ok(Retired::Nothing),
        // A name in our tombstone space taken by someone else: the slow path, still correct.
        Err(e) => {
            eprintln!("{plugin}: cannot retire {name} ({e}): deleting it");
            delete_pair(host, link.index).await
        }
    }
}

/// The slow path: the pair deleted by its host end's index (nothing when it is gone already).
async fn delete_pair(host: &Handle, index: u32) -> Result<Retired, Error> {
    Ok(
        match host.delete_link_index(index).await.map_err(net_err)? {
            true => Retired::Deleted,
            false => Retired::Nothing,
        },
    )
}

/// Retires `ifname` in the namespace at `path` if it is `host_end`'s peer: its addresses
/// removed, then down and renamed; its tombstone name. A namespace that cannot be opened is
/// gone, and the pair with it; one that is open stays (and the pair with it) while we work.
async fn retire_pod_end(
    host_end: &trellis_net::Link,
    path: &Path,
    ifname: &str,
) -> Result<Option<String>, Error> {
    let Ok(netns) = Netns::open(path) else {
        return Ok(None);
    };
    let pod = netns.connect().map_err(net_err)?;
    let Some(end) = pod.link(ifname).await.map_err(net_err)? else {
        return Ok(None);
    };
    if host_end.peer_index != Some(end.index) || end.peer_index != Some(host_end.index) {
        return Ok(None);
    }
    // The addresses first, while the end keeps its name: a DEL cut short here and repeated
    // finds it and does it all again.
    pod.flush_addresses(end.index).await.map_err(net_err)?;
    match pod.retire(end.index).await {
        Ok(tomb) => Ok(Some(tomb)),
        // The pair went meanwhile (a newer sandbox's ADD replaced the host end).
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(net_err(e)),
    }
}

/// Whether `link` is a tombstone that an attachment of `plugin` left (its name, and the owner
/// label it kept from its attachment).
pub fn is_plugins_tombstone(link: &trellis_net::Link, plugin: &str) -> bool {
    trellis_net::link::is_tombstone(&link.name)
        && link
            .alias
            .as_deref()
            .is_some_and(|a| a.starts_with(&format!("{plugin} ")))
}

/// Deletes every tombstone `plugin`'s DEL left in the host's namespace (and with each its
/// peer, in whatever namespace that is): all of them are attachments that were deleted. The
/// number deleted. Each deletion is the kernel's slow path, which is why DEL leaves it to the
/// namespace's teardown and this runs from GC and the node agent, off any pod's path.
pub async fn sweep_tombstones(host: &Handle, plugin: &str) -> Result<usize, Error> {
    let mut deleted = 0;
    for link in host.links().await.map_err(net_err)? {
        if is_plugins_tombstone(&link, plugin)
            && host.delete_link_index(link.index).await.map_err(net_err)?
        {
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// CHECK's view of a host end's owner: an error unless `owner` holds it.
pub fn require_owner(link: &trellis_net::Link, owner: &str) -> Result<(), Error> {
    match &link.alias {
        Some(alias) if alias == owner => Ok(()),
        other => Err(Error::internal(
            "the host end of the veth belongs to another attachment",
            format!("{} has alias {other:?}, expected {owner:?}", link.name),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, alias: Option<&str>) -> trellis_net::Link {
        trellis_net::Link {
            index: 31,
            name: name.into(),
            kind: Some("veth".into()),
            mac: None,
            mtu: 1500,
            admin_up: false,
            oper_state: trellis_net::OperState::Down,
            controller: None,
            peer_index: None,
            vxlan: None,
            alias: alias.map(str::to_string),
        }
    }

    #[test]
    fn a_sweep_takes_only_its_plugins_tombstones() {
        let mine = owner_alias("trellis-routed", "abc", "eth0");
        assert!(is_plugins_tombstone(
            &link("trz1f", Some(&mine)),
            "trellis-routed"
        ));
        for (name, alias) in [
            // A live pod's host end, though ours.
            ("tr0123456789a", Some(mine.as_str())),
            // Another plugin's tombstone.
            ("trz1f", Some("trellis-canal abc/eth0")),
            // Nobody's, or a name that only looks like ours.
            ("trz1f", None),
            ("trz1f", Some("trellis-routedx abc/eth0")),
        ] {
            assert!(
                !is_plugins_tombstone(&link(name, alias), "trellis-routed"),
                "{name} {alias:?}"
            );
        }
    }

    #[test]
    fn the_owner_label_names_plugin_container_and_interface() {
        assert_eq!(
            owner_alias("trellis-routed", "abc", "eth0"),
            "trellis-routed abc/eth0"
        );
    }
}
