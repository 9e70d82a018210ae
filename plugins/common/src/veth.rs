//! A pod's host-side veth: its name (one rule for every plugin, so policyd can name a pod's
//! interface from its Pod object) and the label that says which attachment owns it.
//!
//! The name follows the pod, not the sandbox: a new sandbox of the same pod gets the same
//! name. So the host end carries its attachment (`<plugin> <container id>/<ifname>`) in its
//! alias, and a late DEL of an earlier sandbox leaves the newer sandbox's interface alone.

use trellis_cni::Error;
use trellis_cni::skel::Attachment;
use trellis_net::Handle;

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

/// DEL's removal of a host end: deleted unless another attachment of `plugin` has taken the
/// name over since (a newer sandbox of the same pod). Nothing there is success.
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

/// A plugin's whole DEL of a veth attachment: the host end (with the pod end and every route
/// through it), then the addresses — an address is never reused while an interface still
/// holds it. Succeeds when all is gone already, and with the netns gone.
pub fn del_attachment(plugin: &str, req: &Attachment) -> Result<(), Error> {
    let name = host_veth(req);
    let owner = owner(plugin, req);
    crate::host::runtime()?.block_on(async {
        let host = Handle::current().map_err(net_err)?;
        remove_host_end(&host, plugin, &name, &owner).await?;
        crate::ipam::del(req).await
    })
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

    #[test]
    fn the_owner_label_names_plugin_container_and_interface() {
        assert_eq!(
            owner_alias("trellis-routed", "abc", "eth0"),
            "trellis-routed abc/eth0"
        );
    }
}
