//! Watch-fed caches that also tell the controllers what changed: every applied or deleted
//! object goes to a handler, which maps it to the queue keys of the controllers concerned.

use std::sync::Arc;

use futures::StreamExt;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

/// A kind an informer can cache: an API object that can be listed and watched.
pub trait Kind:
    kube::Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> Kind for K where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// What the handler is told.
pub enum Change<'a, K> {
    /// Created or updated (also every object of a (re)list).
    Applied(&'a K),
    Deleted(&'a K),
    /// A (re)list finished: the cache is complete again; resync everything.
    Synced,
}

/// A cache of `K` kept by a watch, and a flag that turns true after its first complete list.
pub struct Informer<K: kube::Resource<DynamicType = ()> + Clone + 'static> {
    pub store: Store<K>,
    synced: watch::Receiver<bool>,
    pending: Pending<K>,
}

impl<K> Clone for Informer<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    fn clone(&self) -> Self {
        Informer {
            store: self.store.clone(),
            synced: self.synced.clone(),
            pending: self.pending.clone(),
        }
    }
}

/// What a change goes to.
pub type Handler<K> = Arc<dyn Fn(Change<'_, K>) + Send + Sync>;

type Pending<K> = Arc<std::sync::Mutex<Option<(reflector::store::Writer<K>, watch::Sender<bool>)>>>;

impl<K: Kind> Default for Informer<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Kind> Informer<K> {
    /// An empty cache; [`Informer::start`] fills it. Controllers get the cache before the
    /// watch starts, so the handlers can refer to the controllers.
    pub fn new() -> Informer<K> {
        let (reader, writer) = reflector::store();
        let (tx, rx) = watch::channel(false);
        Informer {
            store: reader,
            synced: rx,
            pending: Arc::new(std::sync::Mutex::new(Some((writer, tx)))),
        }
    }

    /// Starts the watch (once); `handlers` see every change after the cache has it. The
    /// task ends when `stop` turns true.
    pub fn start(
        &self,
        api: Api<K>,
        handlers: Vec<Handler<K>>,
        mut stop: watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let (writer, tx) = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff();
        Some(tokio::spawn(async move {
            futures::pin_mut!(stream);
            loop {
                let ev = tokio::select! {
                    ev = stream.next() => ev,
                    _ = stop.wait_for(|s| *s) => break,
                };
                let Some(ev) = ev else { break };
                match ev {
                    Ok(ev) => {
                        let change = match &ev {
                            watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                                Change::Applied(o)
                            }
                            watcher::Event::Delete(o) => Change::Deleted(o),
                            watcher::Event::InitDone => {
                                let _ = tx.send(true);
                                Change::Synced
                            }
                            watcher::Event::Init => continue,
                        };
                        for h in &handlers {
                            h(match &change {
                                Change::Applied(o) => Change::Applied(o),
                                Change::Deleted(o) => Change::Deleted(o),
                                Change::Synced => Change::Synced,
                            });
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, kind = %K::kind(&()), "watch error; retrying")
                    }
                }
            }
        }))
    }

    /// Waits for the first complete list.
    pub async fn wait_synced(&self) {
        self.synced().wait().await
    }

    /// A handle on the flag that turns true after the first complete list.
    pub fn synced(&self) -> Synced {
        Synced(self.synced.clone())
    }

    pub fn state(&self) -> Vec<Arc<K>> {
        self.store.state()
    }

    /// The cached object `namespace/name`.
    pub fn get(&self, key: &str) -> Option<Arc<K>> {
        let (ns, name) = crate::owner::split_key(key);
        let mut r = reflector::ObjectRef::new(name);
        if let Some(ns) = ns {
            r = r.within(ns);
        }
        self.store.get(&r)
    }
}

/// Says when a cache first held a complete list (cheap to clone, whatever the kind).
#[derive(Clone)]
pub struct Synced(watch::Receiver<bool>);

impl Synced {
    /// Waits for the first complete list (at once if it was already there).
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// A boxed handler.
pub fn handler<K>(f: impl Fn(Change<'_, K>) + Send + Sync + 'static) -> Handler<K> {
    Arc::new(f)
}
