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

/// The watch behind a cache (an informer's, the garbage collector's): kube-runtime's watcher
/// feeding `writer`, retrying a failed list or watch after `backoff`. The controller-manager
/// passes [`trellis_api::cluster::WatchBackoff`], whose pauses grow while the API server is
/// away (200 ms doubling to 5 s, as the other daemons'); kube-runtime's default back-off
/// never grows, because the watcher's `Init` before every list resets it.
pub fn watch_stream<K, B>(
    writer: reflector::store::Writer<K>,
    api: Api<K>,
    backoff: B,
) -> impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
    B: kube::runtime::utils::Backoff + Send,
{
    reflector::reflector(writer, watcher(api, watcher::Config::default())).backoff(backoff)
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
        let stream = watch_stream(writer, api, trellis_api::cluster::WatchBackoff::default());
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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An API server that cannot list: it answers every request 500 and reports when each
    /// came. (Not 503: kube-rs's client retries a 503 itself, a few times within
    /// milliseconds, which would blur one list attempt into several requests.)
    async fn away() -> (kube::Client, tokio::sync::mpsc::UnboundedReceiver<Instant>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let _ = tx.send(Instant::now());
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    )
                    .await;
            }
        });
        let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
        (kube::Client::try_from(config).unwrap(), rx)
    }

    /// The pauses between the first `n` requests (bounded: 60 s in all).
    async fn gaps(
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<Instant>,
        n: usize,
    ) -> Vec<Duration> {
        let mut at = Vec::new();
        while at.len() < n {
            let t = tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await
                .expect("the watch keeps retrying")
                .unwrap();
            at.push(t);
        }
        at.windows(2).map(|w| w[1] - w[0]).collect()
    }

    /// Issue 14's follow-up: the controller-manager's caches retry a failed list after pauses
    /// that grow (200 ms doubling to 5 s) while the API server fails. Lower bounds only:
    /// a sleep never ends early, however loaded the machine.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_informer_backs_off_longer_while_the_api_server_fails() {
        let (client, mut rx) = away().await;
        let informer: Informer<ConfigMap> = Informer::new();
        let (stop_tx, stop) = watch::channel(false);
        let task = informer.start(Api::all(client), Vec::new(), stop).unwrap();
        let gaps = gaps(&mut rx, 7).await;
        let _ = stop_tx.send(true);
        let _ = task.await;
        println!("pauses between list attempts: {gaps:?}");
        let want = [200, 400, 800, 1600, 3200, 5000];
        for (g, w) in gaps.iter().zip(want) {
            assert!(
                *g >= Duration::from_millis(w),
                "{gaps:?}: a pause under {w} ms"
            );
        }
    }

    /// The negative control: the same watch with kube-runtime's default back-off never waits
    /// long — its first pause (0.8–1.6 s) every time, as each `Init` resets it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kube_runtimes_default_back_off_does_not_grow() {
        let (client, mut rx) = away().await;
        let (_reader, writer) = reflector::store::<ConfigMap>();
        let stream = watch_stream(
            writer,
            Api::all(client),
            kube::runtime::watcher::DefaultBackoff::default(),
        );
        let pump = tokio::spawn(async move {
            futures::pin_mut!(stream);
            while stream.next().await.is_some() {}
        });
        let gaps = gaps(&mut rx, 7).await;
        pump.abort();
        println!("pauses between list attempts: {gaps:?}");
        assert!(
            gaps.iter().all(|g| *g < Duration::from_secs(4)),
            "{gaps:?}: the default grew to our 5 s"
        );
    }
}
