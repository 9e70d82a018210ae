//! Many route changes in few system calls: a netlink socket of its own, on which a batch of
//! `RTM_NEWROUTE`/`RTM_DELROUTE` requests goes out in one `sendmsg`, only the last one asking
//! for an acknowledgement (the kernel answers a failed request whatever its flags, so every
//! failure still comes back, tied to its request by sequence number). The kernel handles an
//! rtnetlink datagram before `sendmsg` returns, so the answers are all queued by then and are
//! read without waiting. [`Handle::replace_route`](crate::Handle::replace_route) costs a round
//! trip through the connection task per route; a speaker installing a full table wants this.

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::error::{Error, Result};
use crate::route::Route;

/// Requests per `sendmsg`. The answers of a batch whose every request fails (each a
/// separate datagram of a few hundred bytes of socket memory) must fit the default receive
/// buffer.
const BATCH: usize = 128;

/// One change of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteOp {
    /// `ip route replace`.
    Replace(Route),
    /// `ip route del`: a route that is not there is no error (the result says false).
    Delete(Route),
}

impl RouteOp {
    fn route(&self) -> &Route {
        match self {
            RouteOp::Replace(r) | RouteOp::Delete(r) => r,
        }
    }

    fn op(&self) -> &'static str {
        match self {
            RouteOp::Replace(_) => "replace route",
            RouteOp::Delete(_) => "delete route",
        }
    }
}

/// A netlink socket for batches of route changes, in the network namespace of the thread that
/// opened it.
pub struct RouteWriter {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl std::fmt::Debug for RouteWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteWriter")
            .field("seq", &self.seq)
            .finish()
    }
}

impl RouteWriter {
    /// A writer for the calling thread's network namespace (normally the process's own).
    pub fn current() -> Result<RouteWriter> {
        let object = "route batch socket";
        let mut socket =
            Socket::new(NETLINK_ROUTE).map_err(|e| Error::os("open netlink", object, e))?;
        socket
            .bind_auto()
            .map_err(|e| Error::os("bind netlink", object, e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| Error::os("connect netlink", object, e))?;
        // Failures answer with the request's header only, not the whole request.
        let _ = socket.set_cap_ack(true);
        Ok(RouteWriter {
            socket,
            seq: 0,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    /// Applies `ops` in order: per op, Ok(true) when done, Ok(false) for a delete of a route
    /// that was not there, or the kernel's refusal. Two ops on the same route keep their order.
    pub fn apply(&mut self, ops: &[RouteOp]) -> Vec<Result<bool>> {
        let mut out = Vec::with_capacity(ops.len());
        for chunk in ops.chunks(BATCH) {
            self.apply_chunk(chunk, &mut out);
        }
        out
    }

    fn apply_chunk(&mut self, ops: &[RouteOp], out: &mut Vec<Result<bool>>) {
        let first = out.len();
        // Per op of the chunk: None until answered (an op without an answer succeeded once the
        // acknowledgement of the last one is in).
        let mut answers: Vec<Option<Result<bool>>> = (0..ops.len()).map(|_| None).collect();
        let base = self.seq.wrapping_add(1);
        self.buf.clear();
        for (i, op) in ops.iter().enumerate() {
            let msg = match op.route().to_message(matches!(op, RouteOp::Delete(_))) {
                Ok(m) => m,
                Err(e) => {
                    answers[i] = Some(Err(e));
                    continue;
                }
            };
            let (payload, mut flags) = match op {
                RouteOp::Replace(_) => (
                    RouteNetlinkMessage::NewRoute(msg),
                    NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE,
                ),
                RouteOp::Delete(_) => (RouteNetlinkMessage::DelRoute(msg), NLM_F_REQUEST),
            };
            if i + 1 == ops.len() {
                flags |= NLM_F_ACK;
            }
            let mut header = NetlinkHeader::default();
            header.flags = flags;
            header.sequence_number = base.wrapping_add(i as u32);
            let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
            m.finalize();
            let at = self.buf.len();
            self.buf.resize(at + m.buffer_len(), 0);
            m.serialize(&mut self.buf[at..]);
        }
        self.seq = base.wrapping_add(ops.len() as u32);
        let last = self.seq.wrapping_sub(1);
        // The last op itself could not be built: ask for an acknowledgement of nothing; the
        // answers of the others still come (only failures), so look for them without waiting.
        let acked = answers.last().is_some_and(Option::is_none);
        let fail_all = |answers: &mut Vec<Option<Result<bool>>>,
                        why: &dyn Fn() -> std::io::Error| {
            for (i, a) in answers.iter_mut().enumerate() {
                if a.is_none() {
                    *a = Some(Err(Error::os(
                        ops[i].op(),
                        ops[i].route().describe(),
                        why(),
                    )));
                }
            }
        };
        if !self.buf.is_empty()
            && let Err(e) = self.socket.send(&self.buf, 0)
        {
            let kind = e.raw_os_error();
            fail_all(&mut answers, &|| match kind {
                Some(errno) => std::io::Error::from_raw_os_error(errno),
                None => std::io::Error::other("netlink send failed"),
            });
        } else {
            let mut rx = Vec::with_capacity(8192);
            loop {
                rx.clear();
                // Everything is queued before sendmsg returned: an empty queue is the end.
                match self.socket.recv(&mut rx, nix::libc::MSG_DONTWAIT) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        let errno = e.raw_os_error();
                        fail_all(&mut answers, &|| match errno {
                            Some(n) => std::io::Error::from_raw_os_error(n),
                            None => std::io::Error::other("netlink receive failed"),
                        });
                        break;
                    }
                }
                let mut done = false;
                let mut at = 0;
                while at + 16 <= rx.len() {
                    let len =
                        u32::from_ne_bytes([rx[at], rx[at + 1], rx[at + 2], rx[at + 3]]) as usize;
                    if len < 16 || at + len > rx.len() {
                        break;
                    }
                    if let Ok(m) =
                        NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[at..at + len])
                        && let NetlinkPayload::Error(e) = &m.payload
                    {
                        let seq = m.header.sequence_number;
                        let i = seq.wrapping_sub(base) as usize;
                        if i < ops.len() {
                            answers[i] = Some(match (e.code, &ops[i]) {
                                (None, _) => Ok(true),
                                (Some(c), RouteOp::Delete(_))
                                    if matches!(
                                        -c.get(),
                                        nix::libc::ESRCH | nix::libc::ENOENT | nix::libc::ENODEV
                                    ) =>
                                {
                                    Ok(false)
                                }
                                (Some(c), op) => Err(Error::os(
                                    op.op(),
                                    op.route().describe(),
                                    std::io::Error::from_raw_os_error(-c.get()),
                                )),
                            });
                        }
                        if seq == last {
                            done = true;
                        }
                    }
                    at += (len + 3) & !3;
                }
                if done {
                    break;
                }
            }
            if acked && answers.last().is_some_and(Option::is_none) {
                // The acknowledgement of the last request never came: nothing is known.
                fail_all(&mut answers, &|| {
                    std::io::Error::other("no netlink acknowledgement")
                });
            }
        }
        debug_assert_eq!(out.len(), first);
        out.extend(answers.into_iter().map(|a| a.unwrap_or(Ok(true))));
    }
}
