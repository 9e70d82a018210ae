//! SPDY/3.1 framing, what kubectl ≤1.29 (exec) and every kubectl (port-forward) speak after an
//! `Upgrade: SPDY/3.1`: control frames (SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING,
//! GOAWAY, HEADERS, WINDOW_UPDATE) and DATA frames. Name/value header blocks are compressed
//! with zlib primed with SPDY/3's fixed dictionary, one compression context per direction for
//! the whole connection (each block ends with a sync flush), so a [`Codec`] lives as long as
//! its connection and frames go through it in wire order; a [`FrameReader`] does that for
//! the frames coming off one direction of a connection.
//!
//! Clients (Go's spdystream) send no WINDOW_UPDATE and ignore ours, so flow control is not
//! enforced either way; SETTINGS and WINDOW_UPDATE are decoded and left to the caller.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// SPDY/3's header-compression dictionary (the draft's §2.6.10.1), 1423 bytes.
pub const DICTIONARY: &[u8] = include_bytes!("spdy_dictionary.bin");

/// The protocol version in every control frame.
pub const VERSION: u16 = 3;
/// FLAG_FIN on DATA, SYN_STREAM, SYN_REPLY and HEADERS.
pub const FLAG_FIN: u8 = 0x01;
/// FLAG_UNIDIRECTIONAL on SYN_STREAM.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// An uncompressed header block larger than this is refused (a zlib bomb, or nonsense).
pub const MAX_HEADER_BLOCK: usize = 256 * 1024;
/// Frame payloads are 24-bit lengths.
pub const MAX_FRAME: usize = (1 << 24) - 1;

/// RST_STREAM status codes used here.
pub mod rst {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const REFUSED_STREAM: u32 = 3;
    pub const CANCEL: u32 = 5;
    pub const INTERNAL_ERROR: u32 = 6;
}

/// A header block: lower-case names, values (several values of one name are NUL-separated).
pub type Headers = Vec<(String, String)>;

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream: u32,
        associated: u32,
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream: u32,
        status: u32,
    },
    /// (flags, id, value) entries.
    Settings {
        flags: u8,
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good: u32,
        status: u32,
    },
    Headers {
        stream: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream: u32,
        delta: u32,
    },
    Data {
        stream: u32,
        flags: u8,
        data: Vec<u8>,
    },
    /// A control frame of a type SPDY/3 does not define: to be ignored, as the draft says.
    Unknown {
        kind: u16,
    },
}

/// What is wrong with the bytes received.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpdyError {
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    #[error("a {kind} frame of {len} bytes is malformed")]
    Malformed { kind: &'static str, len: usize },
    #[error("a bad header block: {0}")]
    HeaderBlock(&'static str),
    #[error("header decompression: {0}")]
    Inflate(String),
    #[error("header compression: {0}")]
    Deflate(String),
    #[error("a frame of {0} bytes is too large")]
    TooLarge(usize),
}

/// The two zlib contexts of one connection.
pub struct Codec {
    deflate: Compress,
    inflate: Decompress,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("spdy::Codec")
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

impl Codec {
    pub fn new() -> Result<Codec, SpdyError> {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate
            .set_dictionary(DICTIONARY)
            .map_err(|e| SpdyError::Deflate(e.to_string()))?;
        Ok(Codec {
            deflate,
            inflate: Decompress::new(true),
        })
    }

    /// Appends `frame`'s bytes to `out`.
    pub fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), SpdyError> {
        let control = |out: &mut Vec<u8>, kind: u16, flags: u8, body: &[u8]| {
            out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
            out.extend_from_slice(&kind.to_be_bytes());
            out.push(flags);
            out.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
            out.extend_from_slice(body);
        };
        let mut body = Vec::new();
        match frame {
            Frame::SynStream {
                stream,
                associated,
                priority,
                flags,
                headers,
            } => {
                body.extend_from_slice(&(stream & 0x7FFF_FFFF).to_be_bytes());
                body.extend_from_slice(&(associated & 0x7FFF_FFFF).to_be_bytes());
                body.push((priority & 0x7) << 5);
                body.push(0);
                self.compress(headers, &mut body)?;
                check_len(body.len())?;
                control(out, 1, *flags, &body);
            }
            Frame::SynReply {
                stream,
                flags,
                headers,
            } => {
                body.extend_from_slice(&(stream & 0x7FFF_FFFF).to_be_bytes());
                self.compress(headers, &mut body)?;
                check_len(body.len())?;
                control(out, 2, *flags, &body);
            }
            Frame::RstStream { stream, status } => {
                body.extend_from_slice(&(stream & 0x7FFF_FFFF).to_be_bytes());
                body.extend_from_slice(&status.to_be_bytes());
                control(out, 3, 0, &body);
            }
            Frame::Settings { flags, entries } => {
                body.extend_from_slice(&(entries.len() as u32).to_be_bytes());
                for (f, id, value) in entries {
                    body.push(*f);
                    body.extend_from_slice(&id.to_be_bytes()[1..]);
                    body.extend_from_slice(&value.to_be_bytes());
                }
                check_len(body.len())?;
                control(out, 4, *flags, &body);
            }
            Frame::Ping { id } => control(out, 6, 0, &id.to_be_bytes()),
            Frame::GoAway { last_good, status } => {
                body.extend_from_slice(&(last_good & 0x7FFF_FFFF).to_be_bytes());
                body.extend_from_slice(&status.to_be_bytes());
                control(out, 7, 0, &body);
            }
            Frame::Headers {
                stream,
                flags,
                headers,
            } => {
                body.extend_from_slice(&(stream & 0x7FFF_FFFF).to_be_bytes());
                self.compress(headers, &mut body)?;
                check_len(body.len())?;
                control(out, 8, *flags, &body);
            }
            Frame::WindowUpdate { stream, delta } => {
                body.extend_from_slice(&(stream & 0x7FFF_FFFF).to_be_bytes());
                body.extend_from_slice(&(delta & 0x7FFF_FFFF).to_be_bytes());
                control(out, 9, 0, &body);
            }
            Frame::Data {
                stream,
                flags,
                data,
            } => {
                check_len(data.len())?;
                out.extend_from_slice(&(stream & 0x7FFF_FFFF).to_be_bytes());
                out.push(*flags);
                out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
                out.extend_from_slice(data);
            }
            Frame::Unknown { kind } => control(out, *kind, 0, &[]),
        }
        Ok(())
    }

    /// The first whole frame in `buf` and the bytes it took, or None while it is incomplete.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<(Frame, usize)>, SpdyError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let len = (usize::from(buf[5]) << 16) | (usize::from(buf[6]) << 8) | usize::from(buf[7]);
        let Some(body) = buf.get(8..8 + len) else {
            return Ok(None);
        };
        let flags = buf[4];
        let used = 8 + len;
        if buf[0] & 0x80 == 0 {
            let frame = Frame::Data {
                stream: be32(buf) & 0x7FFF_FFFF,
                flags,
                data: body.to_vec(),
            };
            return Ok(Some((frame, used)));
        }
        let version = u16::from_be_bytes([buf[0] & 0x7F, buf[1]]);
        if version != VERSION {
            return Err(SpdyError::Version(version));
        }
        let kind = u16::from_be_bytes([buf[2], buf[3]]);
        let need = |name: &'static str, min: usize| {
            if body.len() < min {
                Err(SpdyError::Malformed {
                    kind: name,
                    len: body.len(),
                })
            } else {
                Ok(())
            }
        };
        let frame = match kind {
            1 => {
                need("SYN_STREAM", 10)?;
                Frame::SynStream {
                    stream: be32(body) & 0x7FFF_FFFF,
                    associated: be32(&body[4..]) & 0x7FFF_FFFF,
                    priority: body[8] >> 5,
                    flags,
                    headers: self.decompress(&body[10..])?,
                }
            }
            2 => {
                need("SYN_REPLY", 4)?;
                Frame::SynReply {
                    stream: be32(body) & 0x7FFF_FFFF,
                    flags,
                    headers: self.decompress(&body[4..])?,
                }
            }
            3 => {
                need("RST_STREAM", 8)?;
                Frame::RstStream {
                    stream: be32(body) & 0x7FFF_FFFF,
                    status: be32(&body[4..]),
                }
            }
            4 => {
                need("SETTINGS", 4)?;
                let n = be32(body) as usize;
                if body.len() != 4 + n.saturating_mul(8) {
                    return Err(SpdyError::Malformed {
                        kind: "SETTINGS",
                        len: body.len(),
                    });
                }
                let entries = body[4..]
                    .chunks_exact(8)
                    .map(|e| (e[0], be32(e) & 0x00FF_FFFF, be32(&e[4..])))
                    .collect();
                Frame::Settings { flags, entries }
            }
            6 => {
                need("PING", 4)?;
                Frame::Ping { id: be32(body) }
            }
            7 => {
                need("GOAWAY", 4)?;
                Frame::GoAway {
                    last_good: be32(body) & 0x7FFF_FFFF,
                    // SPDY/2-style GOAWAYs have no status.
                    status: body.get(4..8).map(be32).unwrap_or(0),
                }
            }
            8 => {
                need("HEADERS", 4)?;
                Frame::Headers {
                    stream: be32(body) & 0x7FFF_FFFF,
                    flags,
                    headers: self.decompress(&body[4..])?,
                }
            }
            9 => {
                need("WINDOW_UPDATE", 8)?;
                Frame::WindowUpdate {
                    stream: be32(body) & 0x7FFF_FFFF,
                    delta: be32(&body[4..]) & 0x7FFF_FFFF,
                }
            }
            kind => Frame::Unknown { kind },
        };
        Ok(Some((frame, used)))
    }

    fn compress(&mut self, headers: &Headers, out: &mut Vec<u8>) -> Result<(), SpdyError> {
        let mut block = Vec::new();
        block.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (name, value) in headers {
            for s in [name.to_ascii_lowercase().as_bytes(), value.as_bytes()] {
                block.extend_from_slice(&(s.len() as u32).to_be_bytes());
                block.extend_from_slice(s);
            }
        }
        let mut input = &block[..];
        let mut buf = [0u8; 4096];
        loop {
            let (in0, out0) = (self.deflate.total_in(), self.deflate.total_out());
            self.deflate
                .compress(input, &mut buf, FlushCompress::Sync)
                .map_err(|e| SpdyError::Deflate(e.to_string()))?;
            let consumed = (self.deflate.total_in() - in0) as usize;
            let produced = (self.deflate.total_out() - out0) as usize;
            input = &input[consumed..];
            out.extend_from_slice(&buf[..produced]);
            // A sync flush is complete once it leaves room in the output.
            if input.is_empty() && produced < buf.len() {
                return Ok(());
            }
        }
    }

    fn decompress(&mut self, mut input: &[u8]) -> Result<Headers, SpdyError> {
        let mut block = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let (in0, out0) = (self.inflate.total_in(), self.inflate.total_out());
            let r = self
                .inflate
                .decompress(input, &mut buf, FlushDecompress::Sync);
            let consumed = (self.inflate.total_in() - in0) as usize;
            let produced = (self.inflate.total_out() - out0) as usize;
            input = &input[consumed..];
            block.extend_from_slice(&buf[..produced]);
            if block.len() > MAX_HEADER_BLOCK {
                return Err(SpdyError::HeaderBlock("larger than 256 KiB"));
            }
            match r {
                Ok(Status::StreamEnd) => {
                    return Err(SpdyError::Inflate("the zlib stream ended".into()));
                }
                Ok(_) => {
                    if input.is_empty() && produced < buf.len() {
                        break;
                    }
                    if consumed == 0 && produced == 0 {
                        return Err(SpdyError::Inflate("no progress".into()));
                    }
                }
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(DICTIONARY)
                        .map_err(|e| SpdyError::Inflate(e.to_string()))?;
                }
                Err(e) => return Err(SpdyError::Inflate(e.to_string())),
            }
        }
        parse_block(&block)
    }
}

fn check_len(n: usize) -> Result<(), SpdyError> {
    if n > MAX_FRAME {
        Err(SpdyError::TooLarge(n))
    } else {
        Ok(())
    }
}

/// An uncompressed name/value block: a count, then length-prefixed names and values.
fn parse_block(b: &[u8]) -> Result<Headers, SpdyError> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], SpdyError> {
        let s = b
            .get(at..at.saturating_add(n))
            .ok_or(SpdyError::HeaderBlock("truncated"))?;
        at += n;
        Ok(s)
    };
    let count = be32(take(4)?) as usize;
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let n = be32(take(4)?) as usize;
        let name = std::str::from_utf8(take(n)?)
            .map_err(|_| SpdyError::HeaderBlock("a name is not UTF-8"))?
            .to_string();
        if name.is_empty() {
            return Err(SpdyError::HeaderBlock("an empty name"));
        }
        let n = be32(take(4)?) as usize;
        let value = String::from_utf8_lossy(take(n)?).into_owned();
        headers.push((name, value));
    }
    if at != b.len() {
        return Err(SpdyError::HeaderBlock("bytes after the last pair"));
    }
    Ok(headers)
}

/// Why [`FrameReader::next`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer sent bytes that are no frame: answer with a GOAWAY.
    #[error(transparent)]
    Spdy(#[from] SpdyError),
    #[error("reading the connection: {0}")]
    Io(#[from] std::io::Error),
    /// More than a whole frame buffered without one decoding.
    #[error("more than {MAX_FRAME} bytes buffered without a whole frame")]
    Overflow,
}

/// Frames from one direction of a connection, in wire order, through the codec whose inflate
/// context that direction's header blocks share. The server's read loop and the tests'
/// clients read with it.
pub struct FrameReader<R> {
    rd: R,
    codec: Codec,
    buf: Vec<u8>,
    chunk: Vec<u8>,
}

impl<R: tokio::io::AsyncRead + Unpin> FrameReader<R> {
    pub fn new(rd: R) -> Result<FrameReader<R>, SpdyError> {
        Ok(FrameReader {
            rd,
            codec: Codec::new()?,
            buf: Vec::with_capacity(64 * 1024),
            chunk: vec![0u8; 64 * 1024],
        })
    }

    /// The next frame; None once the peer has closed its side (or the read fails, as
    /// [`ReadError::Io`]).
    pub async fn next(&mut self) -> Result<Option<Frame>, ReadError> {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some((frame, used)) = self.codec.decode(&self.buf)? {
                self.buf.drain(..used);
                return Ok(Some(frame));
            }
            let n = self.rd.read(&mut self.chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&self.chunk[..n]);
            if self.buf.len() > MAX_FRAME + 8 {
                return Err(ReadError::Overflow);
            }
        }
    }
}

/// The value of header `name` (case-insensitive), its first value if several.
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.split('\0').next().unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn round_trip(frames: &[Frame]) {
        let (mut tx, mut rx) = (Codec::new().unwrap(), Codec::new().unwrap());
        let mut wire = Vec::new();
        for f in frames {
            tx.encode(f, &mut wire).unwrap();
        }
        let mut at = 0;
        for f in frames {
            let (got, used) = rx.decode(&wire[at..]).unwrap().unwrap();
            assert_eq!(&got, f);
            at += used;
        }
        assert_eq!(at, wire.len());
    }

    #[test]
    fn the_dictionary_is_spdy3s() {
        assert_eq!(DICTIONARY.len(), 1423);
        // Its Adler-32 is the dictionary id in a SPDY/3 zlib stream's header.
        let (mut a, mut b) = (1u32, 0u32);
        for x in DICTIONARY {
            a = (a + u32::from(*x)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((b << 16) | a, 0xe3c6_a7c2);
    }

    #[test]
    fn header_blocks_from_another_zlib_decode_in_one_context() {
        // Two blocks compressed by C zlib (level 9, the SPDY/3 dictionary, sync flushes) in one
        // stream, as a client's SYN_STREAMs carry them.
        let first = hex("78f9e3c6a7c202a62346703a2b294a4dcc851625c0149b925f5a02000000ffff");
        let second = hex("02254848d95c04623359180049ce22484c66825238a301865e50319408000000ffff");
        let mut c = Codec::new().unwrap();
        let mut wire = Vec::new();
        for (id, block) in [(1u32, &first), (3, &second)] {
            let mut body = id.to_be_bytes().to_vec();
            body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
            body.extend_from_slice(block);
            wire.extend_from_slice(&[0x80, 3, 0, 1, 0]);
            wire.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
            wire.extend_from_slice(&body);
        }
        let (f1, used) = c.decode(&wire).unwrap().unwrap();
        let (f2, _) = c.decode(&wire[used..]).unwrap().unwrap();
        let headers = |f: Frame| match f {
            Frame::SynStream { headers, .. } => headers,
            other => panic!("{other:?}"),
        };
        assert_eq!(headers(f1), h(&[("streamtype", "stdout")]));
        let second = headers(f2);
        assert_eq!(
            second,
            h(&[("port", "80"), ("requestid", "0"), ("streamtype", "data")])
        );
        assert_eq!(header(&second, "requestID"), Some("0"));
    }

    #[test]
    fn every_frame_type_round_trips_with_shared_contexts() {
        round_trip(&[
            Frame::SynStream {
                stream: 1,
                associated: 0,
                priority: 7,
                flags: FLAG_FIN,
                headers: h(&[("streamtype", "error")]),
            },
            Frame::SynReply {
                stream: 1,
                flags: 0,
                headers: vec![],
            },
            Frame::Headers {
                stream: 1,
                flags: 0,
                headers: h(&[("streamtype", "error"), ("x", "a\0b")]),
            },
            Frame::RstStream {
                stream: 3,
                status: rst::CANCEL,
            },
            Frame::Settings {
                flags: 0,
                entries: vec![(0, 7, 65536), (1, 4, 100)],
            },
            Frame::Ping { id: 1 },
            Frame::GoAway {
                last_good: 5,
                status: 0,
            },
            Frame::WindowUpdate {
                stream: 0,
                delta: 1 << 20,
            },
            Frame::Data {
                stream: 3,
                flags: FLAG_FIN,
                data: b"hello".to_vec(),
            },
            Frame::SynStream {
                stream: 3,
                associated: 0,
                priority: 0,
                flags: 0,
                headers: h(&[("streamtype", "stdout")]),
            },
        ]);
    }

    #[test]
    fn incomplete_input_waits_and_bad_input_is_a_typed_error() {
        let mut c = Codec::new().unwrap();
        assert_eq!(c.decode(&[0x80, 3, 0]), Ok(None));
        assert_eq!(c.decode(&[0, 0, 0, 1, 0, 0, 0, 5, b'a']), Ok(None));
        assert_eq!(
            c.decode(&[0x80, 2, 0, 1, 0, 0, 0, 0]),
            Err(SpdyError::Version(2))
        );
        assert!(matches!(
            c.decode(&[0x80, 3, 0, 3, 0, 0, 0, 2, 0, 1]),
            Err(SpdyError::Malformed {
                kind: "RST_STREAM",
                ..
            })
        ));
        // A SYN_STREAM whose header block is not zlib.
        let mut f = vec![0x80, 3, 0, 1, 0, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        f.extend_from_slice(b"junk");
        assert!(matches!(
            Codec::new().unwrap().decode(&f),
            Err(SpdyError::Inflate(_))
        ));
        // Unknown control types are passed over.
        assert_eq!(
            c.decode(&[0x80, 3, 0, 0x42, 0, 0, 0, 1, 9]),
            Ok(Some((Frame::Unknown { kind: 0x42 }, 9)))
        );
    }

    #[test]
    fn a_block_claiming_more_pairs_than_it_holds_is_refused() {
        assert_eq!(
            parse_block(&[0, 0, 0, 2, 0, 0, 0, 1, b'a', 0, 0, 0, 0]),
            Err(SpdyError::HeaderBlock("truncated"))
        );
        assert_eq!(
            parse_block(&[0, 0, 0, 0, 1]),
            Err(SpdyError::HeaderBlock("bytes after the last pair"))
        );
        assert_eq!(
            parse_block(&[0xff, 0xff, 0xff, 0xff]),
            Err(SpdyError::HeaderBlock("truncated"))
        );
    }

    #[tokio::test]
    async fn the_reader_joins_split_frames_and_ends_at_eof_or_bad_bytes() {
        use tokio::io::AsyncWriteExt;
        let frames = [
            Frame::SynStream {
                stream: 1,
                associated: 0,
                priority: 0,
                flags: 0,
                headers: h(&[("streamtype", "data")]),
            },
            Frame::Data {
                stream: 1,
                flags: FLAG_FIN,
                data: b"hello".to_vec(),
            },
        ];
        let mut wire = Vec::new();
        let mut tx = Codec::new().unwrap();
        for f in &frames {
            tx.encode(f, &mut wire).unwrap();
        }
        let (mut w, r) = tokio::io::duplex(1 << 16);
        let mut reader = FrameReader::new(r).unwrap();
        // Split inside the first frame: it is read in two pieces.
        w.write_all(&wire[..5]).await.unwrap();
        let rest = wire[5..].to_vec();
        let writer = tokio::spawn(async move {
            w.write_all(&rest).await.unwrap();
            w
        });
        for f in &frames {
            assert_eq!(reader.next().await.unwrap().as_ref(), Some(f));
        }
        drop(writer.await.unwrap());
        assert!(matches!(reader.next().await, Ok(None)), "EOF ends it");

        let (mut w, r) = tokio::io::duplex(1 << 16);
        let mut reader = FrameReader::new(r).unwrap();
        w.write_all(&[0x80, 2, 0, 1, 0, 0, 0, 0]).await.unwrap();
        assert!(matches!(
            reader.next().await,
            Err(ReadError::Spdy(SpdyError::Version(2)))
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut c = Codec::new().unwrap();
            let mut at = 0;
            while let Ok(Some((_, used))) = c.decode(&bytes[at..]) {
                at += used;
            }
            // A valid frame prefix followed by arbitrary header bytes is not a panic either.
            let mut f = vec![0x80, 3, 0, 1, 0];
            f.extend_from_slice(&((bytes.len() + 10) as u32).to_be_bytes()[1..]);
            f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
            f.extend_from_slice(&bytes);
            let _ = Codec::new().unwrap().decode(&f);
        }

        #[test]
        fn data_and_headers_round_trip(
            data in proptest::collection::vec(any::<u8>(), 0..2000),
            names in proptest::collection::vec("[a-z][a-z0-9-]{0,12}", 0..6),
            value in "[ -~]{0,40}",
        ) {
            let headers: Headers = names.iter().map(|n| (n.clone(), value.clone())).collect();
            round_trip(&[
                Frame::SynStream { stream: 5, associated: 0, priority: 0, flags: 0, headers: headers.clone() },
                Frame::Data { stream: 5, flags: 0, data },
                Frame::Headers { stream: 5, flags: FLAG_FIN, headers },
            ]);
        }
    }
}
