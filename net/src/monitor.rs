//! Changes the kernel announces: a daemon that owns links, routes and neighbour entries
//! reconciles at once when one of them is deleted, instead of waiting for its next resync.

use futures::StreamExt;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::MulticastGroup;
use tokio::sync::mpsc;

use crate::error::{Error, Result};

/// What went away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deleted {
    /// A link, by index.
    Link(u32),
    /// A route (its output interface, if it had one).
    Route(Option<u32>),
    /// A neighbour or FDB entry, on this link.
    Neighbour(u32),
}

/// Deletions of links, IPv4 routes and neighbour entries in the caller's namespace, until the
/// receiver is dropped.
pub fn deletions() -> Result<mpsc::Receiver<Deleted>> {
    spawn(
        &[
            MulticastGroup::Link,
            MulticastGroup::Ipv4Route,
            MulticastGroup::Neigh,
        ],
        |msg| match msg {
            RouteNetlinkMessage::DelLink(l) => Some(Deleted::Link(l.header.index)),
            RouteNetlinkMessage::DelRoute(r) => {
                Some(Deleted::Route(r.attributes.iter().find_map(|a| match a {
                    netlink_packet_route::route::RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                })))
            }
            RouteNetlinkMessage::DelNeighbour(n) => Some(Deleted::Neighbour(n.header.ifindex)),
            _ => None,
        },
    )
}

/// A link created, changed (the kernel announces every change of state or attribute as a new
/// link) or deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkChange {
    pub index: u32,
    /// Its name, when the announcement carried one (it always does from Linux).
    pub name: Option<String>,
    pub deleted: bool,
}

/// Link changes in the caller's namespace, until the receiver is dropped: a daemon that keeps
/// state per interface name (a session bound to an interface's index) follows a deleted and
/// re-created interface at once.
pub fn links() -> Result<mpsc::Receiver<LinkChange>> {
    spawn(&[MulticastGroup::Link], |msg| {
        let (l, deleted) = match msg {
            RouteNetlinkMessage::NewLink(l) => (l, false),
            RouteNetlinkMessage::DelLink(l) => (l, true),
            _ => return None,
        };
        let name = l.attributes.into_iter().find_map(|a| match a {
            netlink_packet_route::link::LinkAttribute::IfName(n) => Some(n),
            _ => None,
        });
        Some(LinkChange {
            index: l.header.index,
            name,
            deleted,
        })
    })
}

/// Opens a netlink socket in the caller's namespace joined to `groups` and forwards what `map`
/// makes of each announcement until the receiver is dropped.
fn spawn<T: Send + 'static>(
    groups: &[MulticastGroup],
    map: impl Fn(RouteNetlinkMessage) -> Option<T> + Send + Sync + 'static,
) -> Result<mpsc::Receiver<T>> {
    let rt = tokio::runtime::Handle::try_current()
        .map_err(|e| Error::invalid("monitor", "netlink", e.to_string()))?;
    let (conn, _handle, mut messages) = rtnetlink::new_multicast_connection(groups)
        .map_err(|e| Error::os("open netlink monitor", "in the current netns", e))?;
    let (tx, rx) = mpsc::channel(256);
    rt.spawn(async move {
        let conn = std::pin::pin!(conn);
        let forward = async {
            while let Some((msg, _)) = messages.next().await {
                let NetlinkPayload::InnerMessage(inner) = msg.payload else {
                    continue;
                };
                let Some(event) = map(inner) else { continue };
                // A full buffer drops the event: readers keep a periodic resync as the
                // backstop (for deletions, a reconcile is due anyway).
                if tx.is_closed() {
                    return;
                }
                let _ = tx.try_send(event);
            }
        };
        futures::future::select(conn, std::pin::pin!(forward)).await;
    });
    Ok(rx)
}
