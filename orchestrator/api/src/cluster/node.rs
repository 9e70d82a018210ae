//! Waiting for the daemon's own Node. A network agent deployed as a DaemonSet may start before
//! its kubelet has registered the Node; it waits — saying so once — instead of failing or
//! repeating an error every few seconds.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::watcher;

/// How often the API is asked again when a watch cannot be opened.
const RETRY: Duration = Duration::from_secs(2);

/// Returns the Node called `name` once it exists; `None` if `stop` resolves first. Logs one
/// line while it waits, and one when the Node appears.
pub async fn wait_for_node(
    nodes: &Api<Node>,
    name: &str,
    stop: impl std::future::Future<Output = ()>,
) -> Option<Node> {
    tokio::pin!(stop);
    let mut told = false;
    loop {
        match nodes.get_opt(name).await {
            Ok(Some(node)) => {
                if told {
                    tracing::info!(node = name, "the Node is registered; going on");
                }
                return Some(node);
            }
            Ok(None) => {
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
                                tokio::time::sleep(RETRY).await;
                                break;
                            }
                            None => break,
                        },
                        _ = &mut stop => return None,
                    }
                }
            }
            Err(e) => {
                tracing::warn!(node = name, error = %e, "reading the Node; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => {}
                    _ = &mut stop => return None,
                }
            }
        }
    }
}
