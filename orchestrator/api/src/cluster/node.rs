//! Waiting for the daemon's own Node. A network agent deployed as a DaemonSet may start before
//! its kubelet has registered the Node; it waits — saying so once — instead of failing or
//! repeating an error every few seconds.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::watcher;

use super::wait::{self, ApiWait, WaitError};

/// How long to pause when the watch for the Node fails.
const RETRY: Duration = Duration::from_secs(2);

/// Returns the Node called `name` once it exists. Logs one line while it waits, and one when
/// the Node appears; an API server that does not answer is retried as [`super::wait::retry`]
/// does (200 ms doubling to 5 s, each failure logged), a permanent error (401/403) ends the wait.
/// [`WaitError::Stopped`] if `stop` resolves first.
pub async fn wait_for_node(
    nodes: &Api<Node>,
    name: &str,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Node, WaitError<kube::Error>> {
    tokio::pin!(stop);
    let mut told = false;
    loop {
        let found = wait::retry(
            "reading the Node",
            &ApiWait::default(),
            wait::is_transient,
            |_| {},
            &mut stop,
            || nodes.get_opt(name),
        )
        .await?;
        match found {
            Some(node) => {
                if told {
                    tracing::info!(node = name, "the Node is registered; going on");
                }
                return Ok(node);
            }
            None => {
                if !told {
                    tracing::info!(
                        node = name,
                        "waiting for the Node to be registered (by its kubelet, or `kubectl apply`)"
                    );
                    told = true;
                }
                // Wait for it to appear rather than polling.
                let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
                let mut events = watcher(nodes.clone(), cfg).boxed();
                loop {
                    tokio::select! {
                        ev = events.next() => match ev {
                            Some(Ok(watcher::Event::Apply(_) | watcher::Event::InitApply(_))) => break,
                            Some(Ok(_)) => {}
                            Some(Err(e)) => {
                                tracing::debug!(error = %e, "watching for the Node");
                                tokio::select! {
                                    _ = tokio::time::sleep(RETRY) => {}
                                    _ = &mut stop => return Err(WaitError::Stopped),
                                }
                                break;
                            }
                            None => break,
                        },
                        _ = &mut stop => return Err(WaitError::Stopped),
                    }
                }
            }
        }
    }
}
