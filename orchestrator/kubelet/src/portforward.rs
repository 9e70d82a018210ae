//! `kubectl port-forward` on the kubelet: `/portForward/{ns}/{pod}` upgraded to SPDY/3.1 with
//! `portforward.k8s.io` (or, from kubectl ≥1.31, a WebSocket whose binary messages carry the
//! same SPDY bytes, subprotocol `SPDY/3.1+portforward.k8s.io`). For each local connection the
//! client opens two streams with the same `requestID` and `port`: `error` and `data`. The
//! kubelet connects to 127.0.0.1:port inside the pod's network namespace and relays the data
//! stream both ways; a failure is written on the error stream, which kubectl prints.
//!
//! The socket is made by a short-lived thread that enters the pod's namespace (`setns` moves
//! only that thread); a socket stays in the namespace it was created in.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::spdy_conn::{self, Sender, Stream};

/// The SPDY subprotocol (`X-Stream-Protocol-Version`).
pub const PROTOCOL: &str = "portforward.k8s.io";
/// The WebSocket subprotocol of the tunnel.
pub const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// The pod's network namespace from its sandbox record; None for a hostNetwork pod (the
/// node's own).
pub fn pod_netns(pod_dir: &Path) -> Result<Option<PathBuf>, String> {
    let raw = std::fs::read(pod_dir.join("sandbox.json"))
        .map_err(|e| format!("read the pod's sandbox record: {e}"))?;
    let rec: serde_json::Value =
        serde_json::from_slice(&raw).map_err(|e| format!("the pod's sandbox record: {e}"))?;
    Ok(rec["netns"].as_str().map(PathBuf::from))
}

/// A TCP connection to 127.0.0.1:`port` inside `netns`.
pub async fn connect(netns: Option<PathBuf>, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("portforward-dial".into())
        .spawn(move || {
            let dial = || -> std::io::Result<std::net::TcpStream> {
                if let Some(p) = &netns {
                    let ns = std::fs::File::open(p)?;
                    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)?;
                }
                let to = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
                let s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
                s.set_nonblocking(true)?;
                let _ = s.set_nodelay(true);
                Ok(s)
            };
            let _ = tx.send(dial());
        })?;
    let s = rx
        .await
        .map_err(|_| std::io::Error::other("the dialling thread ended"))??;
    tokio::net::TcpStream::from_std(s)
}

/// A pair's port, from its `port` header.
fn port_of(s: &Stream) -> Result<u16, String> {
    let raw = s.header("port").unwrap_or("");
    match raw.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("invalid port header {raw:?}")),
    }
}

/// Relays one pair: connects, copies both ways until the pod's end closes, reports a failure
/// on the error stream; both streams are half-closed at the end.
async fn forward(
    pod: String,
    netns: Option<PathBuf>,
    error: Stream,
    mut data: Stream,
    out: Sender,
) {
    let connected = match port_of(&data) {
        Ok(port) => connect(netns.clone(), port).await.map_err(|e| {
            format!(
                "error forwarding port {port} to pod {pod}: failed to connect to localhost:{port} inside namespace {:?}: {e}",
                netns.as_deref().unwrap_or(Path::new("(the node's)"))
            )
        }),
        Err(e) => Err(e),
    };
    match connected {
        Err(message) => {
            out.data(error.id, message.as_bytes()).await;
            out.fin(data.id).await;
        }
        Ok(sock) => {
            let id = data.id;
            let (mut r, mut w) = sock.into_split();
            let up = async {
                while let Some(b) = data.data.recv().await {
                    if w.write_all(&b).await.is_err() {
                        break;
                    }
                }
                // The client closed its side: so do we, towards the pod.
                let _ = w.shutdown().await;
            };
            let down = async {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if !out.data(id, &buf[..n]).await {
                                break;
                            }
                        }
                    }
                }
                out.fin(id).await;
            };
            // The pod's end closing ends the pair (kubectl closes its local connection only once
            // the error stream ends, as upstream's kubelet does it); the client's FIN is passed
            // on as a half-close and the pod's answer still awaited.
            tokio::pin!(down);
            tokio::select! {
                _ = &mut down => {}
                _ = up => down.await,
            }
        }
    }
    out.fin(error.id).await;
}

/// Serves port-forwarding on an upgraded connection (SPDY bytes) until the client closes it.
pub async fn serve<IO>(io: IO, pod: String, netns: Option<PathBuf>)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let mut conn = spdy_conn::serve(io);
    // Half-made pairs by requestID: (error, data).
    let mut pending: HashMap<String, (Option<Stream>, Option<Stream>)> = HashMap::new();
    let mut relays = tokio::task::JoinSet::new();
    let mut last = 0;
    while let Some(s) = conn.streams.recv().await {
        last = last.max(s.id);
        let key = s
            .header("requestID")
            .or_else(|| s.header("port"))
            .unwrap_or("")
            .to_string();
        let slot = pending.entry(key.clone()).or_default();
        match s.header("streamType") {
            Some("error") => slot.0 = Some(s),
            Some("data") => slot.1 = Some(s),
            _ => {
                conn.out.reset(s.id, crate::spdy::rst::PROTOCOL_ERROR).await;
                continue;
            }
        }
        if let (Some(_), Some(_)) = slot
            && let Some((Some(error), Some(data))) = pending.remove(&key)
        {
            relays.spawn(forward(
                pod.clone(),
                netns.clone(),
                error,
                data,
                conn.out.clone(),
            ));
        }
        // Reap finished relays as we go.
        while relays.try_join_next().is_some() {}
    }
    relays.abort_all();
    conn.finish(last, Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spdy::{Codec, FLAG_FIN, Frame, FrameReader};

    async fn send<W: AsyncWrite + Unpin>(c: &mut Codec, io: &mut W, f: Frame) {
        let mut b = Vec::new();
        c.encode(&f, &mut b).unwrap();
        io.write_all(&b).await.unwrap();
    }

    fn syn(stream: u32, kind: &str, port: u16) -> Frame {
        Frame::SynStream {
            stream,
            associated: 0,
            priority: 0,
            flags: 0,
            headers: vec![
                ("streamtype".into(), kind.into()),
                ("port".into(), port.to_string()),
                ("requestid".into(), "0".into()),
            ],
        }
    }

    #[tokio::test]
    async fn a_pair_relays_to_a_local_port_and_a_refusal_is_reported() {
        // An echo server on the test's own 127.0.0.1 (no namespace: a hostNetwork pod).
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut b = [0u8; 5];
            s.read_exact(&mut b).await.unwrap();
            s.write_all(&b.to_ascii_uppercase()).await.unwrap();
        });
        let (a, b) = tokio::io::duplex(1 << 16);
        tokio::spawn(serve(a, "p".into(), None));
        let (rd, mut b) = tokio::io::split(b);
        let mut rx = FrameReader::new(rd).unwrap();
        let mut tx = Codec::new().unwrap();
        send(&mut tx, &mut b, syn(1, "error", port)).await;
        send(&mut tx, &mut b, syn(3, "data", port)).await;
        send(
            &mut tx,
            &mut b,
            Frame::Data {
                stream: 3,
                flags: FLAG_FIN,
                data: b"hello".to_vec(),
            },
        )
        .await;
        let mut got = Vec::new();
        let mut fins = 0;
        while fins < 2 {
            let f = rx
                .next()
                .await
                .unwrap()
                .expect("the connection ended early");
            match f {
                Frame::Data {
                    stream,
                    flags,
                    data,
                } => {
                    if stream == 3 {
                        got.extend(data);
                    }
                    if flags & FLAG_FIN != 0 && (stream == 1 || stream == 3) {
                        fins += 1;
                    }
                }
                Frame::SynReply { .. } => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, b"HELLO");

        // A closed port: the error stream says so.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut rec = syn(5, "error", closed);
        let mut dat = syn(7, "data", closed);
        for f in [&mut rec, &mut dat] {
            if let Frame::SynStream { headers, .. } = f {
                headers[2].1 = "1".into();
            }
        }
        send(&mut tx, &mut b, rec).await;
        send(&mut tx, &mut b, dat).await;
        let mut message = Vec::new();
        loop {
            let f = rx
                .next()
                .await
                .unwrap()
                .expect("the connection ended early");
            if let Frame::Data {
                stream: 5,
                flags,
                data,
            } = f
            {
                message.extend(data);
                if flags & FLAG_FIN != 0 {
                    break;
                }
            }
        }
        let message = String::from_utf8(message).unwrap();
        assert!(
            message.contains(&format!("failed to connect to localhost:{closed}"))
                && message.contains("refused"),
            "{message}"
        );
    }
}
