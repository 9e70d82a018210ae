//! policyd's side: one task per connection, so a pod waiting for its rules never holds up
//! another's answer.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;

use crate::{AddRequest, MAX_LINE, Reply};

/// How long a connected client may take to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the gate's socket at `path`: makes the directory, and replaces a socket file left by
/// an earlier run (a bound socket whose process died refuses connections forever).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    UnixListener::bind(path)
}

/// Accepts connections on `listener`, calls `handler` per request (it resolves when the pod's
/// rules are committed or refused) and replies; requests are served concurrently. Returns
/// when `shutdown` resolves; requests still waiting then are dropped, and their plugins see
/// the connection close (ADD fails with "try again later" and the runtime retries).
pub async fn serve<F, Fut>(
    listener: UnixListener,
    handler: F,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    F: Fn(AddRequest) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    // A client that went away between connect and accept, or a moment without
                    // file descriptors: the listener itself is fine.
                    Err(e) if transient(&e) => continue,
                    Err(e) => return Err(e),
                };
                let handler = handler.clone();
                tasks.spawn(async move {
                    let _ = answer(stream, handler).await;
                });
            }
            // Reap finished connections so the set does not grow with every pod.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    tasks.shutdown().await;
    Ok(())
}

fn transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::Interrupted
    ) || e.raw_os_error() == Some(24) // EMFILE
        || e.raw_os_error() == Some(23) // ENFILE
}

async fn answer<F, Fut>(stream: UnixStream, handler: F) -> std::io::Result<()>
where
    F: Fn(AddRequest) -> Fut,
    Fut: Future<Output = Reply>,
{
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = BufReader::new(read).take(MAX_LINE as u64 + 1);
    let n = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    if n == 0 {
        return Ok(());
    }
    let reply = if line.last() != Some(&b'\n') {
        Reply::Refused {
            reason: format!("malformed request: no complete line within {MAX_LINE} bytes"),
        }
    } else {
        match serde_json::from_slice::<AddRequest>(&line) {
            Ok(req) => handler(req).await,
            Err(e) => Reply::Refused {
                reason: format!("malformed request: {e}"),
            },
        }
    };
    let mut out = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GateError, wait_committed};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    fn req(pod: &str) -> AddRequest {
        AddRequest {
            namespace: "x".into(),
            pod: pod.into(),
            container_id: format!("c-{pod}"),
            addresses: vec!["10.244.1.5".parse().unwrap()],
            host_interface: "tr0123456789a".into(),
        }
    }

    /// Runs the blocking client off the runtime.
    async fn client(
        path: std::path::PathBuf,
        r: AddRequest,
        timeout: Duration,
    ) -> Result<(), GateError> {
        tokio::task::spawn_blocking(move || wait_committed(&path, &r, timeout))
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_round_trip_concurrently_and_shutdown_stops_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/policyd.sock");
        let listener = bind(&path).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        // Pod "slow" is answered only after pod "fast" has been: one waiting pod holds up no other.
        let (fast_done_tx, fast_done_rx) = tokio::sync::watch::channel(false);
        let handler = {
            let seen = seen.clone();
            move |r: AddRequest| {
                let seen = seen.clone();
                let mut fast_done = fast_done_rx.clone();
                let fast_done_tx = fast_done_tx.clone();
                async move {
                    seen.lock().unwrap().push(r.clone());
                    match r.pod.as_str() {
                        "slow" => {
                            let _ = fast_done.wait_for(|d| *d).await;
                            Reply::Committed
                        }
                        "fast" => {
                            let _ = fast_done_tx.send(true);
                            Reply::Committed
                        }
                        _ => Reply::Refused {
                            reason: format!("no rules for {}", r.pod),
                        },
                    }
                }
            }
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, handler, async {
            let _ = stop_rx.await;
        }));
        let slow = tokio::spawn(client(path.clone(), req("slow"), Duration::from_secs(20)));
        // Let the slow request reach the handler first.
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen.lock().unwrap().is_empty() {
            assert!(
                Instant::now() < deadline,
                "the server never saw the request"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        client(path.clone(), req("fast"), Duration::from_secs(20))
            .await
            .unwrap();
        slow.await.unwrap().unwrap();
        let e = client(path.clone(), req("other"), Duration::from_secs(20))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, GateError::Refused { reason } if reason == "no rules for other"),
            "{e}"
        );
        assert_eq!(seen.lock().unwrap()[0], req("slow"));

        // A malformed request is refused, not left hanging.
        let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
        s.write_all(b"{not json}\n").await.unwrap();
        let mut back = String::new();
        s.read_to_string(&mut back).await.unwrap();
        assert!(
            back.starts_with(r#"{"status":"refused","reason":"malformed request"#),
            "{back}"
        );

        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("serve returns on shutdown")
            .unwrap()
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_still_waiting_at_shutdown_sees_the_connection_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policyd.sock");
        // A stale file from an earlier run is replaced.
        std::fs::write(&path, b"").unwrap();
        let listener = bind(&path).unwrap();
        let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
        let entered_tx = Arc::new(Mutex::new(Some(entered_tx)));
        let handler = move |_r: AddRequest| {
            let entered_tx = entered_tx.clone();
            async move {
                if let Some(tx) = entered_tx.lock().unwrap().take() {
                    let _ = tx.send(());
                }
                std::future::pending::<Reply>().await
            }
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, handler, async {
            let _ = stop_rx.await;
        }));
        let waiting = tokio::spawn(client(path.clone(), req("p"), Duration::from_secs(30)));
        tokio::time::timeout(Duration::from_secs(10), entered_rx)
            .await
            .unwrap()
            .unwrap();
        let started = Instant::now();
        stop_tx.send(()).unwrap();
        server.await.unwrap().unwrap();
        let e = waiting.await.unwrap().unwrap_err();
        assert!(matches!(e, GateError::Protocol(_)), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
