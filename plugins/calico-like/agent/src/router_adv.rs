//! Router Advertisements on the interfaces of unnumbered peers: how a peer that names only the
//! interface (FRR's `neighbor swp1 interface`, Cumulus and SONiC fabrics) learns our link-local
//! address. FRR's zebra records the source of every RA it receives on such an interface as the
//! neighbour; without one its bgpd waits ("Unable to get neighbor's IP address") and refuses
//! our connection ("not configured"). FRR sends them itself for the same reason.
//!
//! Ours say nothing else: router lifetime 0 (we are nobody's default router, RFC 4861 §4.2),
//! no prefixes, no flags, hop limit 255 (receivers drop others, RFC 4861 §6.1.2). One goes out
//! when the peer is added, then one every [`INTERVAL`] while an unnumbered peer is on the
//! interface: the last one removed (or moved to a re-created interface) stops them.

use std::collections::BTreeMap;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn6, sendto, setsockopt,
    socket, sockopt,
};

/// Between two advertisements (FRR's default `ipv6 nd ra-interval` is 10 s too).
pub const INTERVAL: Duration = Duration::from_secs(10);

/// ICMPv6 type 134.
const ROUTER_ADVERTISEMENT: u8 = 134;

/// The interfaces advertised on: how many unnumbered peers are on each, and its task.
static ADVERTISING: Mutex<BTreeMap<u32, (usize, tokio::task::AbortHandle)>> =
    Mutex::new(BTreeMap::new());

fn advertising() -> std::sync::MutexGuard<'static, BTreeMap<u32, (usize, tokio::task::AbortHandle)>>
{
    ADVERTISING.lock().unwrap_or_else(|p| p.into_inner())
}

/// A Router Advertisement with router lifetime 0 and nothing else (the checksum is the
/// kernel's: it fills it for ICMPv6 raw sockets).
pub fn message() -> [u8; 16] {
    let mut m = [0u8; 16];
    m[0] = ROUTER_ADVERTISEMENT;
    // code 0, checksum 0 (kernel), cur hop limit 0 (unspecified), flags 0, router lifetime 0,
    // reachable time 0, retrans timer 0.
    m
}

/// Sends one advertisement to all nodes (ff02::1) on interface `index`.
pub fn send(index: u32) -> std::io::Result<()> {
    let fd = socket(
        AddressFamily::Inet6,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::IcmpV6,
    )?;
    setsockopt(&fd, sockopt::Ipv6MulticastHops, &255)?;
    let to = SockaddrIn6::from(SocketAddrV6::new(
        Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
        0,
        0,
        index,
    ));
    sendto(fd.as_raw_fd(), &message(), &to, MsgFlags::empty())?;
    Ok(())
}

/// Advertises on interface `index` (`name` for the log) now and every [`INTERVAL`] for one
/// more unnumbered peer on it: one task per interface however many peers are on it, until
/// [`stop`] was called as often.
pub fn advertise(index: u32, name: &str) {
    let mut on = advertising();
    if let Some((peers, _)) = on.get_mut(&index) {
        *peers += 1;
        return;
    }
    let name = name.to_string();
    tracing::info!(iface = %name, "sending router advertisements (lifetime 0) so that interface peers learn our link-local address");
    let task = tokio::spawn(async move {
        let mut warned = false;
        loop {
            if let Err(e) = send(index)
                && !warned
            {
                tracing::warn!(iface = %name, error = %e, "router advertisement not sent");
                warned = true;
            }
            tokio::time::sleep(INTERVAL).await;
        }
    });
    on.insert(index, (1, task.abort_handle()));
}

/// One unnumbered peer on interface `index` is gone: the advertisements stop with the last.
pub fn stop(index: u32) {
    let mut on = advertising();
    if let Some((peers, task)) = on.get_mut(&index) {
        *peers -= 1;
        if *peers == 0 {
            task.abort();
            on.remove(&index);
            tracing::info!(
                index,
                "no unnumbered peer left on the interface: router advertisements stopped"
            );
        }
    }
}

/// Whether advertisements go out on interface `index` (the tests' view of the bookkeeping).
#[cfg(test)]
fn is_advertising(index: u32) -> bool {
    advertising().contains_key(&index)
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_advertisement_says_only_that_we_are_here() {
        let m = super::message();
        assert_eq!(m[0], 134, "type Router Advertisement");
        assert_eq!(m[1], 0, "code");
        assert_eq!(
            &m[6..8],
            &[0, 0],
            "router lifetime 0: nobody's default router"
        );
        assert_eq!(m.len(), 16, "no options");
    }

    /// Two peers on one interface share its advertisements; they stop with the last one.
    #[tokio::test]
    async fn advertisements_stop_with_the_last_peer_on_the_interface() {
        // An index no interface of the test's namespace has: the sends fail (warned), the
        // bookkeeping is what is tested.
        let index = 4_000_000_001;
        super::advertise(index, "ll-test");
        super::advertise(index, "ll-test");
        super::stop(index);
        assert!(super::is_advertising(index), "one peer is still on it");
        super::stop(index);
        assert!(!super::is_advertising(index), "the last peer left");
        super::stop(index);
        assert!(
            !super::is_advertising(index),
            "a stop too many changes nothing"
        );
    }
}
