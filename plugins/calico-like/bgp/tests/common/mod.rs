//! Helpers shared by the speaker tests: speakers on 127.0.0.x with ephemeral ports, bounded
//! waits, and a hand-driven "raw" peer that writes whatever bytes a test wants.

#![allow(dead_code)]

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{Instant, sleep, timeout};
use trellis_bgp::codec::{self, Capability, Context, Decoded, Family, Message, Notification, Open};
use trellis_bgp::fsm::State;
use trellis_bgp::{BestRoute, PeerConfig, Speaker, SpeakerConfig};

/// Calico's default AS.
pub const ASN: u32 = 64512;

/// The longest any single wait in these tests may take.
pub const WAIT: Duration = Duration::from_secs(15);

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

pub fn net(s: &str) -> IpNet {
    s.parse().expect("prefix")
}

/// A speaker listening on `address` (a 127.0.0.x address) with an ephemeral port, short
/// timers, and router id = its address.
pub async fn speaker(address: &str, asn: u32, tweak: impl FnOnce(&mut SpeakerConfig)) -> Speaker {
    let IpAddr::V4(id) = ip(address) else {
        panic!("IPv4 loopback only")
    };
    let mut config = SpeakerConfig::new(asn, id);
    config.listen = Some(SocketAddr::new(ip(address), 0));
    config.hold_time = 9;
    config.connect_retry = Duration::from_millis(200);
    config.connect_retry_max = Duration::from_secs(1);
    config.restart_time = 30;
    tweak(&mut config);
    Speaker::start(config).await.expect("speaker starts")
}

/// `remote` as a peer of `local`: its listening address and port, bound to `local`'s address.
pub fn peer_of(local: &Speaker, remote: &Speaker, passive: bool) -> PeerConfig {
    let r = remote.local_addr().expect("remote listens");
    let l = local.local_addr().expect("local listens");
    let mut p = PeerConfig::new(r.ip(), remote.config().asn);
    p.port = r.port();
    p.passive = passive;
    p.local_address = Some(l.ip());
    p
}

/// Configures a session between `a` (active) and `b` (passive).
pub fn link(a: &Speaker, b: &Speaker) {
    a.add_peer(peer_of(a, b, false)).expect("add peer");
    b.add_peer(peer_of(b, a, true)).expect("add peer");
}

pub fn addr(s: &Speaker) -> IpAddr {
    s.local_addr().expect("listens").ip()
}

/// Polls `check` until it holds; panics with `what` after [`WAIT`].
pub async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(20)).await;
    }
}

/// Bounds a future by [`WAIT`].
pub async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

pub fn state(s: &Speaker, peer: IpAddr) -> Option<State> {
    s.peer(peer).map(|p| p.state)
}

pub async fn established(s: &Speaker, peer: IpAddr) {
    wait_for(&format!("session with {peer} established"), || {
        state(s, peer) == Some(State::Established)
    })
    .await;
}

pub fn route(s: &Speaker, prefix: &str) -> Option<BestRoute> {
    let prefix = net(prefix);
    s.routes().into_iter().find(|r| r.prefix == prefix)
}

/// Waits until `s` has a best route for `prefix` that satisfies `check`.
pub async fn route_where(
    s: &Speaker,
    prefix: &str,
    what: &str,
    check: impl Fn(&BestRoute) -> bool,
) -> BestRoute {
    wait_for(&format!("{prefix}: {what}"), || {
        route(s, prefix).is_some_and(|r| check(&r))
    })
    .await;
    route(s, prefix).expect("route present")
}

pub async fn no_route(s: &Speaker, prefix: &str) {
    wait_for(&format!("{prefix} gone"), || route(s, prefix).is_none()).await;
}

/// A peer driven by hand: the test decides every byte.
pub struct RawPeer {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

pub const RAW_ID: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);

impl RawPeer {
    /// Connects from `from` to the speaker, without sending anything.
    pub async fn connect(from: IpAddr, to: SocketAddr) -> Self {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.bind(SocketAddr::new(from, 0)).expect("bind");
        let stream = bounded("connect", socket.connect(to))
            .await
            .expect("connects");
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// Connects and completes the OPEN/KEEPALIVE exchange as an iBGP peer with `hold_time`.
    pub async fn establish(from: IpAddr, to: SocketAddr, asn: u32, hold_time: u16) -> Self {
        let open = Open::new(
            asn,
            hold_time,
            RAW_ID,
            vec![
                Capability::FourOctetAs(asn),
                Capability::Multiprotocol(Family::IPV4_UNICAST),
                Capability::Multiprotocol(Family::IPV6_UNICAST),
            ],
        );
        Self::establish_with(from, to, open).await
    }

    /// Connects and completes the OPEN/KEEPALIVE exchange with this OPEN.
    pub async fn establish_with(from: IpAddr, to: SocketAddr, open: Open) -> Self {
        let mut raw = Self::connect(from, to).await;
        raw.send(&Message::Open(open)).await;
        let Message::Open(_) = raw.next().await else {
            panic!("expected OPEN")
        };
        raw.send(&Message::Keepalive).await;
        loop {
            if let Message::Keepalive = raw.next().await {
                break;
            }
        }
        raw
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        bounded("write", self.stream.write_all(bytes))
            .await
            .expect("write");
    }

    pub async fn send(&mut self, message: &Message) {
        let cx = Context {
            four_octet_as: true,
        };
        let bytes = codec::encode(message, &cx).expect("encodes");
        self.send_raw(&bytes).await;
    }

    /// The next message from the speaker.
    pub async fn next(&mut self) -> Message {
        let cx = Context {
            four_octet_as: true,
        };
        loop {
            if let Ok(Some(len)) = codec::frame_length(&self.buf)
                && self.buf.len() >= len
            {
                let frame: Vec<u8> = self.buf.drain(..len).collect();
                match codec::decode(&frame, &cx).expect("speaker sends valid messages") {
                    Decoded::Message(m) => return m,
                    other => panic!("speaker sent {other:?}"),
                }
            }
            let n = bounded("read", self.stream.read_buf(&mut self.buf))
                .await
                .expect("read");
            assert!(n > 0, "connection closed before a message arrived");
        }
    }

    /// Waits until the speaker closes the connection (skipping whatever it sends first).
    pub async fn closed(&mut self) {
        loop {
            let n = bounded("read", self.stream.read_buf(&mut self.buf))
                .await
                .unwrap_or(0);
            if n == 0 {
                return;
            }
        }
    }

    /// Skips KEEPALIVEs and UPDATEs until a NOTIFICATION arrives.
    pub async fn notification(&mut self) -> Notification {
        loop {
            if let Message::Notification(n) = self.next().await {
                return n;
            }
        }
    }
}

/// A message header for `body_len` octets of body.
pub fn header(total_len: u16, kind: u8) -> Vec<u8> {
    let mut b = vec![0xff; 16];
    b.extend_from_slice(&total_len.to_be_bytes());
    b.push(kind);
    b
}

/// An UPDATE from raw path attribute octets and IPv4 NLRI octets.
pub fn update_frame(attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
    let total = 19 + 2 + 2 + attrs.len() + nlri.len();
    let mut b = header(total as u16, 2);
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    b.extend_from_slice(attrs);
    b.extend_from_slice(nlri);
    b
}

/// ORIGIN IGP.
pub const ORIGIN: [u8; 4] = [0x40, 1, 1, 0];
/// An empty AS_PATH (iBGP).
pub const EMPTY_AS_PATH: [u8; 3] = [0x40, 2, 0];
/// NEXT_HOP 127.0.0.5.
pub const NEXT_HOP: [u8; 7] = [0x40, 3, 4, 127, 0, 0, 5];
/// LOCAL_PREF 100.
pub const LOCAL_PREF: [u8; 7] = [0x40, 5, 4, 0, 0, 0, 100];
/// NLRI 10.5.0.0/24.
pub const NLRI: [u8; 4] = [24, 10, 5, 0];
pub const RAW_PREFIX: &str = "10.5.0.0/24";

/// A well-formed iBGP UPDATE announcing 10.5.0.0/24 via 127.0.0.5.
pub fn good_update() -> Vec<u8> {
    let attrs = [&ORIGIN[..], &EMPTY_AS_PATH, &NEXT_HOP, &LOCAL_PREF].concat();
    update_frame(&attrs, &NLRI)
}
