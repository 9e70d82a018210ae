//! nftables through `nft -f -`: a whole script is one kernel transaction, so a change of many
//! chains and map elements is applied atomically or not at all (the ruleset in between is never
//! seen by a packet). Tables live in a network namespace like links do. [`NftSession`] keeps
//! one `nft` running for a stream of small transactions.

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::exec;
use crate::netns::Netns;

pub use crate::nft_session::{
    ANSWER_WITHIN, Delivery, GIVE_UP_AFTER, NftSession, RECYCLE_AFTER, SESSION_MAX_SCRIPT,
};

/// `nft` in one network namespace (None: the caller's).
#[derive(Debug, Clone, Default)]
pub struct Nft {
    netns: Option<PathBuf>,
}

impl Nft {
    pub fn new(netns: Option<&Netns>) -> Nft {
        Nft {
            netns: netns.map(|n| n.path().to_path_buf()),
        }
    }

    /// The namespace it works in (None: the caller's).
    pub fn netns(&self) -> Option<&Path> {
        self.netns.as_deref()
    }

    /// Applies `script` (the `nft -f` language) as one transaction.
    pub async fn apply(&self, script: &str) -> Result<()> {
        exec::run(self.netns.as_deref(), "nft", &["-f", "-"], Some(script)).await?;
        Ok(())
    }

    /// Whether the table `family name` exists.
    pub async fn has_table(&self, family: &str, name: &str) -> Result<bool> {
        let out = exec::run(self.netns.as_deref(), "nft", &["list", "tables"], None).await?;
        let want = format!("table {family} {name}");
        Ok(out.lines().any(|l| l.trim() == want))
    }

    /// Deletes the table `family name` with everything in it; a missing table is no error.
    pub async fn delete_table(&self, family: &str, name: &str) -> Result<()> {
        // Declaring it first makes the delete succeed whether or not it existed, in one step.
        self.apply(&format!(
            "table {family} {name}\ndelete table {family} {name}\n"
        ))
        .await
    }
}

/// nf_tables' message numbers (linux/netfilter/nfnetlink.h, nf_tables.h).
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;

/// The nf_tables generation of the calling thread's network namespace. The kernel bumps it on
/// every committed transaction, whoever made it (iptables-nft, nft, an operator), so a reader
/// that saw the same number before and after knows nothing in nf_tables changed in between —
/// one netlink round trip instead of dumping a ruleset. (ipsets are not nf_tables: their
/// changes do not move it.)
pub fn generation() -> Result<u32> {
    use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
    let object = "nf_tables generation";
    let mut socket =
        Socket::new(NETLINK_NETFILTER).map_err(|e| crate::Error::os("open netlink", object, e))?;
    socket
        .bind_auto()
        .map_err(|e| crate::Error::os("bind netlink", object, e))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(|e| crate::Error::os("connect netlink", object, e))?;
    socket
        .send(&getgen_request(1), 0)
        .map_err(|e| crate::Error::os("send", object, e))?;
    // The kernel answers a GETGEN before sendmsg returns, so this never waits.
    let mut buf = Vec::with_capacity(512);
    socket
        .recv(&mut buf, 0)
        .map_err(|e| crate::Error::os("receive", object, e))?;
    parse_newgen(&buf).map_err(|reason| crate::Error::Invalid {
        op: "read",
        object: object.to_string(),
        reason,
    })
}

/// A GETGEN request: the netlink header and an empty nfgenmsg (family unspecified).
fn getgen_request(seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(20);
    m.extend_from_slice(&20u32.to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN).to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[0, 0, 0, 0]); // family, version, res_id
    m
}

/// The generation in a NEWGEN answer, or why there is none.
fn parse_newgen(msg: &[u8]) -> std::result::Result<u32, String> {
    let u16_at = |i: usize| msg.get(i..i + 2).map(|b| u16::from_ne_bytes([b[0], b[1]]));
    let (Some(len), Some(kind)) = (
        msg.get(0..4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize),
        u16_at(4),
    ) else {
        return Err(format!("short answer ({} bytes)", msg.len()));
    };
    if kind == NLMSG_ERROR {
        let errno = msg
            .get(16..20)
            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(0);
        return Err(std::io::Error::from_raw_os_error(-errno).to_string());
    }
    if kind != (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN {
        return Err(format!("unexpected message type {kind:#x}"));
    }
    let end = len.min(msg.len());
    // Attributes follow the 16-byte header and the 4-byte nfgenmsg, each 4-aligned.
    let mut at = 20;
    while at + 4 <= end {
        let (Some(alen), Some(atype)) = (u16_at(at), u16_at(at + 2)) else {
            break;
        };
        let alen = usize::from(alen);
        if alen < 4 {
            break;
        }
        if atype & 0x3fff == NFTA_GEN_ID
            && let Some(b) = msg.get(at + 4..at + 8)
        {
            return Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        }
        at += (alen + 3) & !3;
    }
    Err("no generation id in the answer".into())
}

#[cfg(test)]
mod generation_tests {
    use super::*;

    fn newgen(id: u32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN).to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&[0, 0, 0, 0]);
        // NFTA_GEN_PROC_PID first (any other attribute is skipped), then the id.
        m.extend_from_slice(&8u16.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes());
        m.extend_from_slice(&77u32.to_be_bytes());
        m.extend_from_slice(&8u16.to_ne_bytes());
        m.extend_from_slice(&NFTA_GEN_ID.to_ne_bytes());
        m.extend_from_slice(&id.to_be_bytes());
        m
    }

    #[test]
    fn the_id_is_read_past_other_attributes() {
        assert_eq!(parse_newgen(&newgen(0x0102_0304)), Ok(0x0102_0304));
    }

    #[test]
    fn short_wrong_and_error_answers_are_errors_not_panics() {
        assert!(parse_newgen(&[]).is_err());
        assert!(parse_newgen(&newgen(1)[..22]).is_err());
        let mut wrong = newgen(1);
        wrong[4] = 0x99;
        assert!(parse_newgen(&wrong).unwrap_err().contains("unexpected"));
        let mut err = Vec::new();
        err.extend_from_slice(&36u32.to_ne_bytes());
        err.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err.extend_from_slice(&[0; 10]);
        err.extend_from_slice(&(-1i32).to_ne_bytes());
        assert!(parse_newgen(&err).is_err());
    }

    #[test]
    fn the_request_is_a_getgen_of_twenty_bytes() {
        let r = getgen_request(7);
        assert_eq!(r.len(), 20);
        assert_eq!(u16::from_ne_bytes([r[4], r[5]]), 0x0a10);
    }
}
