//! The server side of one SPDY/3.1 connection after the HTTP upgrade: the client opens streams
//! (SYN_STREAM, answered at once with a SYN_REPLY, as upstream's kubelet does), each handed to
//! the caller with its headers and a channel of the data it carries; the caller writes DATA and
//! FIN through a [`Sender`]. Client PINGs are answered. One task reads, one writes; all frames
//! out go through the writer, in order, so the header compression context stays in step.

use std::collections::HashMap;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use crate::spdy::{self, Codec, FLAG_FIN, Frame, FrameReader, Headers, ReadError};

/// DATA frames carry at most this much (spdystream reads any size; smaller keeps latency low).
const CHUNK: usize = 32 * 1024;

/// A stream the client opened.
#[derive(Debug)]
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    /// What the client sends on it; closed at its FIN, a reset, or the connection's end.
    pub data: mpsc::Receiver<Vec<u8>>,
}

impl Stream {
    /// A header's value (names are matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        spdy::header(&self.headers, name)
    }
}

enum Out {
    Frame(Frame),
    /// Flush, shut the write side down, stop writing.
    Close,
}

/// Writes to the client.
#[derive(Clone)]
pub struct Sender {
    tx: mpsc::Sender<Out>,
}

impl Sender {
    /// DATA on `stream`; false once the connection is gone.
    pub async fn data(&self, stream: u32, bytes: &[u8]) -> bool {
        for chunk in bytes.chunks(CHUNK) {
            let frame = Frame::Data {
                stream,
                flags: 0,
                data: chunk.to_vec(),
            };
            if self.tx.send(Out::Frame(frame)).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Half-closes `stream` (an empty DATA with FIN).
    pub async fn fin(&self, stream: u32) {
        let frame = Frame::Data {
            stream,
            flags: FLAG_FIN,
            data: Vec::new(),
        };
        let _ = self.tx.send(Out::Frame(frame)).await;
    }

    pub async fn reset(&self, stream: u32, status: u32) {
        let _ = self
            .tx
            .send(Out::Frame(Frame::RstStream { stream, status }))
            .await;
    }

    /// GOAWAY, then the write side is flushed and shut down.
    pub async fn close(&self, last_good: u32) {
        let _ = self
            .tx
            .send(Out::Frame(Frame::GoAway {
                last_good,
                status: 0,
            }))
            .await;
        let _ = self.tx.send(Out::Close).await;
    }
}

/// A served connection.
pub struct Conn {
    /// Streams as the client opens them; closed when the connection ends.
    pub streams: mpsc::Receiver<Stream>,
    pub out: Sender,
    /// Becomes true when the client's side has ended (EOF, an error, bad frames).
    pub gone: watch::Receiver<bool>,
    reader: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
}

impl Conn {
    /// Closes the connection: GOAWAY, the write side shut, then up to `grace` for the client
    /// to close its side.
    pub async fn finish(mut self, last_good: u32, grace: Duration) {
        self.out.close(last_good).await;
        let _ = tokio::time::timeout(grace, &mut self.writer).await;
        let gone = async { drop(self.gone.wait_for(|g| *g).await) };
        let _ = tokio::time::timeout(grace, gone).await;
        self.reader.abort();
        self.writer.abort();
    }
}

/// Serves SPDY on an upgraded connection.
pub fn serve<IO>(io: IO) -> Conn
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, mut wr) = tokio::io::split(io);
    let (tx, mut rx) = mpsc::channel::<Out>(64);
    let writer = tokio::spawn(async move {
        let Ok(mut codec) = Codec::new() else { return };
        let mut buf = Vec::new();
        while let Some(out) = rx.recv().await {
            let frame = match out {
                Out::Frame(f) => f,
                Out::Close => break,
            };
            buf.clear();
            if let Err(e) = codec.encode(&frame, &mut buf) {
                tracing::warn!(error = %e, "SPDY encode");
                break;
            }
            if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let (streams_tx, streams) = mpsc::channel(16);
    let (gone_tx, gone) = watch::channel(false);
    let out = Sender { tx };
    let reader = tokio::spawn(read_loop(rd, out.clone(), streams_tx, gone_tx));
    Conn {
        streams,
        out,
        gone,
        reader,
        writer,
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    rd: R,
    out: Sender,
    streams: mpsc::Sender<Stream>,
    gone: watch::Sender<bool>,
) {
    let Ok(mut frames) = FrameReader::new(rd) else {
        let _ = gone.send(true);
        return;
    };
    let mut open: HashMap<u32, mpsc::Sender<Vec<u8>>> = HashMap::new();
    loop {
        let frame = match frames.next().await {
            Ok(Some(f)) => f,
            // The client closed its side, the read failed, or it sent more than a frame.
            Ok(None) | Err(ReadError::Io(_) | ReadError::Overflow) => break,
            Err(ReadError::Spdy(e)) => {
                tracing::debug!(error = %e, "SPDY: bad frame from the client");
                let _ = out
                    .tx
                    .send(Out::Frame(Frame::GoAway {
                        last_good: 0,
                        status: 1,
                    }))
                    .await;
                break;
            }
        };
        match frame {
            Frame::SynStream {
                stream,
                flags,
                headers,
                ..
            } => {
                if stream == 0 || stream % 2 == 0 || open.contains_key(&stream) {
                    out.reset(stream, spdy::rst::PROTOCOL_ERROR).await;
                    continue;
                }
                let reply = Frame::SynReply {
                    stream,
                    flags: 0,
                    headers: Vec::new(),
                };
                if out.tx.send(Out::Frame(reply)).await.is_err() {
                    break;
                }
                let (dtx, data) = mpsc::channel(16);
                if flags & FLAG_FIN == 0 {
                    open.insert(stream, dtx);
                }
                let s = Stream {
                    id: stream,
                    headers,
                    data,
                };
                if streams.send(s).await.is_err() {
                    out.reset(stream, spdy::rst::REFUSED_STREAM).await;
                }
            }
            Frame::Data {
                stream,
                flags,
                data,
            } => {
                if !data.is_empty()
                    && let Some(tx) = open.get(&stream)
                    && tx.send(data).await.is_err()
                {
                    open.remove(&stream);
                }
                if flags & FLAG_FIN != 0 {
                    open.remove(&stream);
                }
            }
            Frame::Headers { stream, flags, .. } if flags & FLAG_FIN != 0 => {
                open.remove(&stream);
            }
            Frame::RstStream { stream, .. } => {
                open.remove(&stream);
            }
            Frame::Ping { id } if id % 2 == 1 => {
                let _ = out.tx.send(Out::Frame(Frame::Ping { id })).await;
            }
            // Replies to our pings (we send none), SETTINGS, WINDOW_UPDATE (spdystream
            // enforces no flow control), GOAWAY (the client closes next), unknown types.
            _ => {}
        }
    }
    drop(open);
    let _ = gone.send(true);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's side of the wire, for tests.
    struct Client {
        codec: Codec,
        wr: tokio::io::WriteHalf<tokio::io::DuplexStream>,
        frames: FrameReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>,
    }

    impl Client {
        fn new(io: tokio::io::DuplexStream) -> Client {
            let (rd, wr) = tokio::io::split(io);
            Client {
                codec: Codec::new().unwrap(),
                wr,
                frames: FrameReader::new(rd).unwrap(),
            }
        }
        async fn send(&mut self, f: Frame) {
            let mut b = Vec::new();
            self.codec.encode(&f, &mut b).unwrap();
            self.wr.write_all(&b).await.unwrap();
        }
        async fn recv(&mut self) -> Option<Frame> {
            self.frames.next().await.unwrap()
        }
    }

    #[tokio::test]
    async fn streams_are_replied_to_and_carry_data_both_ways() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut conn = serve(a);
        let mut c = Client::new(b);
        c.send(Frame::SynStream {
            stream: 1,
            associated: 0,
            priority: 0,
            flags: 0,
            headers: vec![("streamtype".into(), "stdin".into())],
        })
        .await;
        assert_eq!(
            c.recv().await,
            Some(Frame::SynReply {
                stream: 1,
                flags: 0,
                headers: vec![]
            })
        );
        let mut s = conn.streams.recv().await.unwrap();
        assert_eq!(s.header("streamType"), Some("stdin"));
        c.send(Frame::Data {
            stream: 1,
            flags: FLAG_FIN,
            data: b"abc".to_vec(),
        })
        .await;
        assert_eq!(s.data.recv().await.as_deref(), Some(&b"abc"[..]));
        assert_eq!(s.data.recv().await, None, "FIN ends the stream");
        c.send(Frame::Ping { id: 7 }).await;
        assert_eq!(c.recv().await, Some(Frame::Ping { id: 7 }));
        assert!(conn.out.data(1, b"out").await);
        conn.out.fin(1).await;
        assert!(matches!(c.recv().await, Some(Frame::Data { data, .. }) if data == b"out"));
        assert!(matches!(
            c.recv().await,
            Some(Frame::Data {
                flags: FLAG_FIN,
                ..
            })
        ));
        // A server-numbered (even) stream from the client is refused.
        c.send(Frame::SynStream {
            stream: 2,
            associated: 0,
            priority: 0,
            flags: 0,
            headers: vec![],
        })
        .await;
        assert!(matches!(
            c.recv().await,
            Some(Frame::RstStream { stream: 2, .. })
        ));
        let finish = tokio::spawn(conn.finish(1, Duration::from_secs(5)));
        assert!(matches!(c.recv().await, Some(Frame::GoAway { .. })));
        assert_eq!(c.recv().await, None);
        drop(c);
        finish.await.unwrap();
    }
}
