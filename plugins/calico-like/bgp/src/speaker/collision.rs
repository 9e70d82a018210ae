//! A second connection from a peer that has a session (or an attempt) already: its OPEN
//! exchange runs in a helper task, then RFC 4271 §6.8 (or a graceful restart, RFC 4724) decides
//! which connection stays.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tracing::{debug, info};

use super::peer::{PeerMsg, PeerTask};
use crate::codec::{self, CeaseSubcode, Context, Decoded, Message, Notification, Open};
use crate::fsm::{self, Event, State};

impl PeerTask {
    /// A connection from the peer (RFC 4271 §8.2.2 event 17, and §6.8 when one exists).
    pub(super) async fn on_incoming(&mut self, stream: TcpStream) {
        let Ok(local) = stream.local_addr() else {
            return;
        };
        let _ = stream.set_nodelay(true);
        match self.fsm.state() {
            // Idle refuses connections unless an automatic restart is pending, in which case
            // the peer's connection is the restart (RFC 4271 §8.1.1 passive automatic start).
            State::Idle if self.timers.idle_hold.is_none() => {}
            // Held down after a max-prefix breach: refused, with the reason.
            State::Idle if self.held_down.is_some() => {
                info!(peer = %self.address(), "connection refused: the session is held down after a max-prefix breach");
                tokio::spawn(reject(
                    stream,
                    self.address(),
                    CeaseSubcode::ConnectionRejected,
                ));
            }
            State::Idle => {
                self.timers.idle_hold = None;
                self.step(Event::AutomaticStartPassive).await;
                self.accept(stream, local).await;
            }
            State::Connect | State::Active => self.accept(stream, local).await,
            // A second connection: its OPEN decides (collision, or a restarted peer).
            State::OpenSent | State::OpenConfirm | State::Established => {
                if self.candidate.is_none() {
                    self.spawn_candidate(stream);
                }
            }
        }
    }

    async fn accept(&mut self, stream: TcpStream, local: SocketAddr) {
        self.cancel_connect();
        self.adopt(stream, local, false, Vec::new());
        self.step(Event::TcpConnectionConfirmed).await;
    }

    /// Runs the OPEN exchange on a colliding connection in a helper task, so that the
    /// collision can be resolved by BGP identifier (RFC 4271 §6.8).
    fn spawn_candidate(&mut self, stream: TcpStream) {
        let Ok(open) = codec::encode(&Message::Open(self.our_open()), &Context::default()) else {
            return;
        };
        let tx = self.tx.clone();
        let peer = self.address();
        self.candidate = Some(tokio::spawn(async move {
            let exchange = async move {
                let mut stream = stream;
                stream.write_all(&open).await.ok()?;
                let mut buf = Vec::new();
                loop {
                    if let Ok(Some(len)) = codec::frame_length(&buf)
                        && buf.len() >= len
                    {
                        let frame: Vec<u8> = buf.drain(..len).collect();
                        return match codec::decode(&frame, &Context::default()) {
                            Ok(Decoded::Message(Message::Open(open))) => Some((stream, open, buf)),
                            _ => None,
                        };
                    }
                    if codec::frame_length(&buf).is_err() {
                        return None;
                    }
                    if stream.read_buf(&mut buf).await.ok()? == 0 {
                        return None;
                    }
                }
            };
            match timeout(fsm::LARGE_HOLD_TIME, exchange).await {
                Ok(Some((stream, open, rest))) => {
                    let _ = tx.send(PeerMsg::Candidate { stream, open, rest }).await;
                }
                _ => debug!(%peer, "colliding connection gave no OPEN"),
            }
        }));
    }

    /// RFC 4271 §6.8: keep the connection initiated by the speaker with the higher BGP
    /// identifier. A candidate that finds the other connection already gone is simply used.
    pub(super) async fn on_candidate(&mut self, stream: TcpStream, open: Open, rest: Vec<u8>) {
        let current_outgoing = self.conn.as_ref().is_some_and(|c| c.outgoing);
        let keep_local = fsm::keep_locally_initiated(
            self.shared.config.router_id,
            self.shared.config.asn,
            open.bgp_id,
            open.asn(),
        );
        match self.fsm.state() {
            // Our connection wins the collision; in Established too, where the peer is racing
            // us at start-up rather than restarting (it will drop its own connection).
            State::OpenSent | State::OpenConfirm | State::Established
                if current_outgoing && keep_local =>
            {
                debug!(peer = %self.address(), "collision: keeping our connection");
                tokio::spawn(reject(
                    stream,
                    self.address(),
                    CeaseSubcode::ConnectionCollisionResolution,
                ));
                return;
            }
            // RFC 4724 §4.2: a peer that can restart gracefully and opens a new session has
            // restarted; the old session is gone and its routes are kept stale.
            State::Established if self.peer_gr.is_some() => {
                info!(peer = %self.address(), "peer reconnected: graceful restart");
                self.step(Event::TcpConnectionFails).await;
            }
            // RFC 4271 §6.8: otherwise an Established session wins.
            State::Established => {
                tokio::spawn(reject(
                    stream,
                    self.address(),
                    CeaseSubcode::ConnectionCollisionResolution,
                ));
                return;
            }
            State::OpenSent | State::OpenConfirm => {
                debug!(peer = %self.address(), "collision: keeping the peer's connection");
                self.step(Event::OpenCollisionDump).await;
            }
            State::Idle | State::Connect | State::Active => {}
        }
        let Ok(local) = stream.local_addr() else {
            return;
        };
        if self.fsm.state() == State::Idle {
            self.timers.idle_hold = None;
            self.step(Event::AutomaticStartPassive).await;
        }
        self.cancel_connect();
        self.adopt(stream, local, false, rest);
        self.open_sent = true;
        self.step(Event::TcpConnectionConfirmed).await;
        self.open_sent = false;
        self.receive_open(open).await;
        self.drain_frames().await;
    }
}

/// Closes a connection we will not use, telling the peer why.
async fn reject(mut stream: TcpStream, peer: std::net::IpAddr, subcode: CeaseSubcode) {
    let n = Notification::cease(subcode);
    info!(
        %peer,
        code = n.code_name(),
        subcode = n.subcode_name(),
        notification = %n,
        "sending NOTIFICATION on a second connection that is not kept"
    );
    let message = Message::Notification(n);
    if let Ok(bytes) = codec::encode(&message, &Context::default()) {
        let _ = timeout(Duration::from_secs(1), stream.write_all(&bytes)).await;
    }
    let _ = timeout(Duration::from_secs(1), stream.shutdown()).await;
}
