//! A netlink connection bound to one namespace. Operations live in the modules named for what
//! they touch: [`crate::link`], [`crate::addr`], [`crate::route`], [`crate::neigh`].

use std::sync::Arc;

use futures::channel::oneshot;

use crate::error::{Error, Result};

/// A netlink connection to one namespace's network stack.
#[derive(Clone)]
pub struct Handle {
    pub(crate) inner: rtnetlink::Handle,
    /// Which namespace, for error messages.
    pub(crate) ns: String,
    /// Dropped with the last clone: ends the connection task, closing the socket. A socket keeps
    /// its namespace alive, so a forgotten one would keep a deleted pod's namespace (and veth).
    _closer: Arc<oneshot::Sender<()>>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").field("ns", &self.ns).finish()
    }
}

type Connection = rtnetlink::proto::Connection<netlink_packet_route::RouteNetlinkMessage>;

impl Handle {
    /// Drives `conn` on `rt` until the connection fails or every clone of the handle is gone
    /// (rtnetlink's connection alone would outlive its handles).
    pub(crate) fn spawn(
        rt: &tokio::runtime::Handle,
        conn: Connection,
        inner: rtnetlink::Handle,
        ns: String,
    ) -> Self {
        let (tx, rx) = oneshot::channel::<()>();
        rt.spawn(async move {
            let conn = std::pin::pin!(conn);
            futures::future::select(conn, rx).await;
        });
        Handle {
            inner,
            ns,
            _closer: Arc::new(tx),
        }
    }

    /// A connection to the namespace of the calling thread (normally the process's own),
    /// driven by the current tokio runtime.
    pub fn current() -> Result<Handle> {
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|e| Error::invalid("connect to", "netlink", e.to_string()))?;
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| Error::os("open netlink socket", "in the current netns", e))?;
        Ok(Handle::spawn(&rt, conn, handle, "current netns".into()))
    }

    /// The raw rtnetlink handle, for requests this crate does not wrap.
    pub fn rtnetlink(&self) -> &rtnetlink::Handle {
        &self.inner
    }

    /// Which namespace this handle talks to (for messages).
    pub fn namespace(&self) -> &str {
        &self.ns
    }
}
