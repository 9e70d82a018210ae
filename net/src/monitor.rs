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
    let rt = tokio::runtime::Handle::try_current()
        .map_err(|e| Error::invalid("monitor", "netlink", e.to_string()))?;
    let (conn, _handle, mut messages) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Neigh,
    ])
    .map_err(|e| Error::os("open netlink monitor", "in the current netns", e))?;
    let (tx, rx) = mpsc::channel(256);
    rt.spawn(async move {
        let conn = std::pin::pin!(conn);
        let forward = async {
            while let Some((msg, _)) = messages.next().await {
                let NetlinkPayload::InnerMessage(inner) = msg.payload else {
                    continue;
                };
                let event = match inner {
                    RouteNetlinkMessage::DelLink(l) => Deleted::Link(l.header.index),
                    RouteNetlinkMessage::DelRoute(r) => {
                        Deleted::Route(r.attributes.iter().find_map(|a| match a {
                            netlink_packet_route::route::RouteAttribute::Oif(i) => Some(*i),
                            _ => None,
                        }))
                    }
                    RouteNetlinkMessage::DelNeighbour(n) => Deleted::Neighbour(n.header.ifindex),
                    _ => continue,
                };
                // A full buffer means a reconcile is already due: dropping the event is fine.
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
