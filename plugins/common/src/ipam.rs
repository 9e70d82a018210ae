//! IPAM for a Trellis plugin. When the configuration names `trellis-ipam`, it is linked in and
//! its calls are awaited in the plugin's own runtime — one RPC to ipamd, no process, no JSON in
//! between — the very code its binary runs, so the answers and error codes are the binary's.
//! Any other `ipam.type` is executed from CNI_PATH, as the specification says.
//!
//! [`add`] returns a [`Lease`]: unless ADD keeps it, the addresses go back — by
//! [`Lease::release`] on the error path, or by the drop guard if anything unwinds past it.

use trellis_cni::result::CniResult;
use trellis_cni::skel::{Attachment, GcRequest, NetConf};
use trellis_cni::{Error, ipam as exec};
use trellis_ipam::plugin::{TYPE as LINKED, TrellisIpam};

/// Whether this configuration's IPAM is the linked `trellis-ipam`.
fn linked(conf: &NetConf) -> bool {
    conf.config
        .ipam
        .as_ref()
        .is_some_and(|i| i.plugin_type == LINKED)
}

/// Addresses obtained for one ADD; released unless [`Lease::keep`] is called.
#[must_use = "dropping a Lease releases its addresses"]
pub struct Lease<'a> {
    req: &'a Attachment,
    result: CniResult,
    held: bool,
}

impl Lease<'_> {
    pub fn result(&self) -> &CniResult {
        &self.result
    }

    /// ADD succeeded: the addresses stay allocated.
    pub fn keep(mut self) -> CniResult {
        self.held = false;
        std::mem::take(&mut self.result)
    }

    /// ADD failed after IPAM: gives the addresses back now. A failure to release is logged (the
    /// plugin's ADD error is the one the runtime must see; ipamd's leak pass frees the rest).
    pub async fn release(mut self) {
        self.held = false;
        if let Err(e) = del(self.req).await {
            eprintln!("releasing addresses after a failed ADD: {e}");
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        // Dropped without keep or release (a panic, an early return): release on a thread of
        // its own, which works whether or not a runtime is running here.
        let req = self.req;
        std::thread::scope(|s| {
            s.spawn(|| {
                let released = crate::host::runtime().and_then(|rt| rt.block_on(del(req)));
                if let Err(e) = released {
                    eprintln!("releasing addresses after a failed ADD: {e}");
                }
            });
        });
    }
}

/// IPAM ADD: the addresses in our model (read in the configuration's version when executed).
pub async fn add(req: &Attachment) -> Result<Lease<'_>, Error> {
    let result = if linked(&req.conf) {
        let result = TrellisIpam.allocate(req).await?;
        if result.ips.is_empty() {
            // Same as an executed IPAM plugin that answered no address.
            let _ = TrellisIpam.release(req).await;
            return Err(Error::internal(
                "the IPAM plugin returned no address",
                LINKED.to_string(),
            ));
        }
        result
    } else {
        exec::add(req)?.keep()
    };
    Ok(Lease {
        req,
        result,
        held: true,
    })
}

/// IPAM DEL: succeeds when nothing is held.
pub async fn del(req: &Attachment) -> Result<(), Error> {
    if linked(&req.conf) {
        TrellisIpam.release(req).await
    } else {
        exec::del(req)
    }
}

/// IPAM CHECK (0.4.0 and later).
pub async fn check(req: &Attachment) -> Result<(), Error> {
    if req.conf.version < trellis_cni::Version::V0_4_0 {
        return Ok(());
    }
    if linked(&req.conf) {
        TrellisIpam.verify(req).await
    } else {
        exec::check(req)
    }
}

/// IPAM GC, with the request's valid attachments.
pub async fn gc(req: &GcRequest) -> Result<(), Error> {
    if linked(&req.conf) {
        TrellisIpam.collect(req).await
    } else {
        exec::gc(req)
    }
}

/// IPAM STATUS: the specification requires an upper plugin to pass STATUS on.
pub async fn status(conf: &NetConf) -> Result<(), Error> {
    if linked(conf) {
        TrellisIpam.ready(conf).await
    } else {
        exec::status(conf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_cni::skel::Plugin;

    /// The linked call skips trellis-ipam's own skeleton: that is faithful only because its
    /// skeleton would check exactly what the calling plugin's skeleton already checked.
    #[test]
    fn the_linked_plugin_accepts_what_any_trellis_plugin_accepts() {
        assert_eq!(TrellisIpam.supported_versions(), &trellis_cni::Version::ALL);
        assert_eq!(TrellisIpam.known_args(), trellis_cni::args::WELL_KNOWN);
    }
}
