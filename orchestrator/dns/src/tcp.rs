//! DNS over TCP (RFC 1035 §4.2.2, RFC 7766): each message behind a two-byte length, several
//! queries per connection, pipelined and answered as they are ready (out of order allowed).
//! A connection that sends nothing complete for the idle timeout, or does not read its
//! answers within it, is closed; at most a fixed number of connections are open at once
//! (beyond that a new one is closed at once rather than left waiting), and each has at most
//! [`IN_FLIGHT`] queries being answered, so no client can hold the others up.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};

use crate::{Server, Transport};

/// Queries of one connection being answered at once; the next waits for one to finish.
pub const IN_FLIGHT: usize = 16;

/// The bounds of the TCP server.
#[derive(Debug, Clone, Copy)]
pub struct TcpLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// How long a connection may send no complete query, or leave an answer unread.
    pub idle_timeout: Duration,
}

impl Default for TcpLimits {
    fn default() -> Self {
        TcpLimits {
            max_connections: 256,
            idle_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves TCP connections from `listener` until `stop`.
pub async fn serve(
    server: Arc<Server>,
    listener: TcpListener,
    limits: TcpLimits,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let stream = tokio::select! {
            _ = &mut stop => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of descriptors and the like: let it pass rather than spin.
                    tracing::warn!(error = %e, "accept");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            server.metrics.inc(
                "trellis_dns_tcp_connections_total",
                "TCP connections, by whether a slot was free.",
                &[("result", "refused")],
                1.0,
            );
            drop(stream);
            continue;
        };
        server.metrics.inc(
            "trellis_dns_tcp_connections_total",
            "TCP connections, by whether a slot was free.",
            &[("result", "accepted")],
            1.0,
        );
        let _ = stream.set_nodelay(true);
        let server = server.clone();
        tokio::spawn(async move {
            connection(server, stream, limits.idle_timeout).await;
            drop(slot);
        });
    }
}

/// Reads one length-prefixed message; None at a clean end of the stream.
async fn read_message<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match r.read_exact(&mut len[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    r.read_exact(&mut len[1..]).await?;
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
    r.read_exact(&mut body).await?;
    Ok(Some(body))
}

/// Serves one connection until the client closes it, goes idle, stops reading, or sends
/// something that is not a length-prefixed stream; answers still being made are sent first.
pub async fn connection<S>(server: Arc<Server>, stream: S, idle: Duration)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(IN_FLIGHT);
    let writer = tokio::spawn(async move {
        while let Some(reply) = rx.recv().await {
            let Ok(len) = u16::try_from(reply.len()) else {
                continue;
            };
            let mut frame = Vec::with_capacity(reply.len() + 2);
            frame.extend_from_slice(&len.to_be_bytes());
            frame.extend_from_slice(&reply);
            if !matches!(
                tokio::time::timeout(idle, wr.write_all(&frame)).await,
                Ok(Ok(()))
            ) {
                // The client does not read: give up on it (the reader sees the channel close).
                return;
            }
        }
        let _ = tokio::time::timeout(idle, wr.shutdown()).await;
    });
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let message = tokio::select! {
            _ = tx.closed() => break,
            r = tokio::time::timeout(idle, read_message(&mut rd)) => match r {
                Ok(Ok(Some(m))) => m,
                // The end, an error, or idle.
                _ => break,
            },
        };
        let permit = tokio::select! {
            _ = tx.closed() => break,
            p = in_flight.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (server, tx) = (server.clone(), tx.clone());
        tokio::spawn(async move {
            if let Some(reply) = server.handle(&message, Transport::Tcp).await {
                let _ = tx.send(reply).await;
            }
            drop(permit);
        });
    }
    drop(tx);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::Zone;
    use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::{Name, RecordType};
    use proptest::prelude::*;
    use tokio::net::TcpStream;

    fn zone() -> Zone {
        let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"clusterIP": "10.96.0.20", "ports": [{"name": "http", "port": 80}]}
        }))
        .unwrap();
        Zone::build("cluster.local", [&svc], [])
    }

    fn query(id: u16, name: &str) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m.to_vec().unwrap()
    }

    fn framed(msg: &[u8]) -> Vec<u8> {
        let mut f = (msg.len() as u16).to_be_bytes().to_vec();
        f.extend_from_slice(msg);
        f
    }

    /// Every message of a stream of frames; the bytes after the last whole frame are ignored.
    fn frames(mut b: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while b.len() >= 2 {
            let n = usize::from(u16::from_be_bytes([b[0], b[1]]));
            if b.len() < 2 + n {
                break;
            }
            out.push(b[2..2 + n].to_vec());
            b = &b[2 + n..];
        }
        out
    }

    async fn listen(limits: TcpLimits) -> std::net::SocketAddr {
        let server = Arc::new(Server::new(zone(), vec![]));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve(server, l, limits, std::future::pending()));
        addr
    }

    async fn ask(s: &mut TcpStream, id: u16, name: &str) -> Message {
        s.write_all(&framed(&query(id, name))).await.unwrap();
        let n = s.read_u16().await.unwrap();
        let mut b = vec![0u8; usize::from(n)];
        s.read_exact(&mut b).await.unwrap();
        Message::from_vec(&b).unwrap()
    }

    /// Whether the server closed `s` (reads its end) within `limit`.
    async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
        let mut b = [0u8; 64];
        matches!(
            tokio::time::timeout(limit, s.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    #[tokio::test]
    async fn several_pipelined_queries_on_one_connection_are_all_answered() {
        let addr = listen(TcpLimits::default()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut all = Vec::new();
        for id in 1..=5u16 {
            all.extend(framed(&query(id, "web.default.svc.cluster.local.")));
        }
        s.write_all(&all).await.unwrap();
        let mut ids = Vec::new();
        for _ in 0..5 {
            let n = s.read_u16().await.unwrap();
            let mut b = vec![0u8; usize::from(n)];
            s.read_exact(&mut b).await.unwrap();
            let m = Message::from_vec(&b).unwrap();
            assert_eq!(m.answers.len(), 1);
            ids.push(m.metadata.id);
        }
        ids.sort();
        assert_eq!(ids, vec![1, 2, 3, 4, 5]);
        // And the connection stays open for more.
        let m = ask(&mut s, 9, "nothing.default.svc.cluster.local.").await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }

    #[tokio::test]
    async fn a_stalled_client_holds_up_no_one_and_is_closed_when_idle() {
        let addr = listen(TcpLimits {
            max_connections: 4,
            idle_timeout: Duration::from_millis(300),
        })
        .await;
        // Half a length prefix, then nothing; and a whole prefix promising more than is sent.
        let mut half = TcpStream::connect(addr).await.unwrap();
        half.write_all(&[0]).await.unwrap();
        let mut short = TcpStream::connect(addr).await.unwrap();
        short.write_all(&[0, 200, 1, 2, 3]).await.unwrap();
        let mut good = TcpStream::connect(addr).await.unwrap();
        let m = tokio::time::timeout(
            Duration::from_millis(200),
            ask(&mut good, 7, "web.default.svc.cluster.local."),
        )
        .await
        .expect("answered while the others stall");
        assert_eq!(m.metadata.id, 7);
        assert!(closed_within(&mut half, Duration::from_secs(3)).await);
        assert!(closed_within(&mut short, Duration::from_secs(3)).await);
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_are_closed_at_once_and_a_freed_slot_serves_again() {
        let addr = listen(TcpLimits {
            max_connections: 1,
            idle_timeout: Duration::from_secs(10),
        })
        .await;
        let mut first = TcpStream::connect(addr).await.unwrap();
        ask(&mut first, 1, "web.default.svc.cluster.local.").await;
        let mut second = TcpStream::connect(addr).await.unwrap();
        assert!(closed_within(&mut second, Duration::from_secs(2)).await);
        drop(first);
        // The slot is freed once the server sees the close: poll for it, bounded.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&framed(&query(3, "web.default.svc.cluster.local.")))
                .await
                .unwrap();
            let mut b = [0u8; 2];
            if tokio::time::timeout(Duration::from_millis(500), s.read_exact(&mut b))
                .await
                .is_ok_and(|r| r.is_ok())
            {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "no slot freed");
        }
    }

    #[tokio::test]
    async fn a_client_that_never_reads_is_dropped_and_others_go_on() {
        let addr = listen(TcpLimits {
            max_connections: 4,
            idle_timeout: Duration::from_millis(300),
        })
        .await;
        // Thousands of queries, never reading an answer: the socket buffers fill.
        let mut greedy = TcpStream::connect(addr).await.unwrap();
        let one = framed(&query(1, "web.default.svc.cluster.local."));
        let flood: Vec<u8> = one
            .iter()
            .copied()
            .cycle()
            .take(one.len() * 20_000)
            .collect();
        let writer = tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), greedy.write_all(&flood)).await;
            greedy
        });
        let mut good = TcpStream::connect(addr).await.unwrap();
        for id in 0..20 {
            let m = tokio::time::timeout(
                Duration::from_secs(1),
                ask(&mut good, id, "web.default.svc.cluster.local."),
            )
            .await
            .expect("answered while another client floods");
            assert_eq!(m.metadata.id, id);
        }
        let _greedy = writer.await.unwrap();
    }

    /// Drives [`connection`] over an in-memory stream with `input` and returns all it wrote
    /// back (the client half-closes after writing, as a one-shot client does).
    async fn exchange(input: Vec<u8>, chunk: usize) -> Vec<u8> {
        let server = Arc::new(Server::new(zone(), vec![]));
        let (client, srv) = tokio::io::duplex(64 * 1024);
        let conn = tokio::spawn(connection(server, srv, Duration::from_secs(2)));
        let (mut rd, mut wr) = tokio::io::split(client);
        let writer = tokio::spawn(async move {
            for c in input.chunks(chunk.max(1)) {
                if wr.write_all(c).await.is_err() {
                    return;
                }
            }
            let _ = wr.shutdown().await;
        });
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut out)).await;
        let _ = writer.await;
        let _ = conn.await;
        out
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]
        /// Any byte stream, cut anywhere: the connection never panics or hangs, and every frame
        /// it sends back is a response.
        #[test]
        fn any_byte_stream_gets_only_responses(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
            chunk in 1usize..64,
        ) {
            let out = runtime().block_on(exchange(bytes, chunk));
            for f in frames(&out) {
                let m = Message::from_vec(&f).unwrap();
                prop_assert_eq!(m.metadata.message_type, MessageType::Response);
            }
        }

        /// Valid queries (some of them mutated, some empty frames) written in arbitrary chunks:
        /// each well-formed one is answered exactly once, whatever the order.
        #[test]
        fn pipelined_queries_in_any_chunks_are_each_answered_once(
            names in proptest::collection::vec(prop_oneof![
                Just("web.default.svc.cluster.local."),
                Just("no.default.svc.cluster.local."),
                Just("_http._tcp.web.default.svc.cluster.local."),
            ], 1..20),
            chunk in 1usize..100,
            mutate in proptest::option::of((0usize..40, any::<u8>())),
        ) {
            let mut input = Vec::new();
            for (i, n) in names.iter().enumerate() {
                let mut q = query(i as u16, n);
                if let (0, Some((pos, val))) = (i, mutate) {
                    // The first query's body mutated (its frame's length intact).
                    let p = 2 + pos % (q.len() - 2);
                    q[p] = val;
                }
                input.extend(framed(&q));
            }
            let out = runtime().block_on(exchange(input, chunk));
            let mut ids: Vec<u16> = frames(&out)
                .iter()
                .map(|f| Message::from_vec(f).unwrap().metadata.id)
                .collect();
            ids.sort();
            let skip = usize::from(mutate.is_some());
            let answered_first = ids.first() == Some(&0);
            // The mutated first query may or may not be answered; all the others are, once.
            let want: Vec<u16> = (0..names.len() as u16)
                .filter(|&i| i > 0 || skip == 0 || answered_first)
                .collect();
            prop_assert_eq!(ids, want);
        }
    }
}
