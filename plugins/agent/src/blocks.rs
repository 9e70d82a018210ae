//! The node's IPAM blocks, followed live through ipamd's `WatchBlocks` stream: a block is
//! announced the moment ipamd has stored its claim, so a node's first pods are reachable from
//! the other nodes as soon as they have an address — not one resync later.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::watch;

/// How long to wait before reconnecting to an ipamd that went away.
const RECONNECT: Duration = Duration::from_millis(500);

/// Follows ipamd on `socket`; the receiver sees each new set of the node's blocks. While ipamd
/// is unreachable the last set stays (its blocks are still the node's); the task reconnects,
/// and ends when the receiver is dropped.
pub fn follow(socket: PathBuf) -> watch::Receiver<BTreeSet<IpNet>> {
    let (tx, rx) = watch::channel(BTreeSet::new());
    tokio::spawn(async move {
        let mut told = false;
        loop {
            let ended = tokio::select! {
                e = stream(&socket, &tx) => e,
                _ = tx.closed() => return,
            };
            if !told {
                tracing::warn!(socket = %socket.display(), reason = %ended, "following ipamd's blocks; reconnecting");
                told = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(RECONNECT) => {}
                _ = tx.closed() => return,
            }
        }
    });
    rx
}

/// One connection: forwards every set until the stream ends; returns why it ended.
async fn stream(socket: &std::path::Path, tx: &watch::Sender<BTreeSet<IpNet>>) -> String {
    let mut client = match trellis_ipam::client::connect(
        socket,
        Duration::from_secs(2),
        Duration::from_secs(10),
    )
    .await
    {
        Ok(c) => c,
        Err(e) => return e.to_string(),
    };
    let mut updates = match client
        .watch_blocks(trellis_ipam::proto::WatchBlocksRequest {})
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return s.message().to_string(),
    };
    loop {
        match updates.message().await {
            Ok(Some(m)) => {
                let mut set = BTreeSet::new();
                for c in &m.cidrs {
                    match c.parse::<IpNet>() {
                        Ok(n) => {
                            set.insert(n.trunc());
                        }
                        Err(e) => tracing::warn!(block = %c, error = %e, "ipamd sent a bad block"),
                    }
                }
                tx.send_if_modified(|was| {
                    let changed = *was != set;
                    *was = set;
                    changed
                });
            }
            Ok(None) => return "ipamd closed the stream".into(),
            Err(s) => return s.message().to_string(),
        }
    }
}
