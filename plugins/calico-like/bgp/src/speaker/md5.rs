//! TCP MD5 signatures (RFC 2385), done by the kernel: a key per peer address on a socket
//! (`TCP_MD5SIG`). On the listening socket a key admits that peer's signed connections (and
//! accepted sockets inherit it); on our connecting socket it signs what we send. A segment
//! with a missing or wrong signature is dropped by the kernel without a word to us, so a
//! wrong password shows only as a session that never comes up.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

/// The longest key Linux accepts.
pub const MAX_KEY_LEN: usize = 80;

/// A peer's MD5 password. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Md5Key(Vec<u8>);

/// Why a password cannot be a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Empty.
    #[error("an MD5 password cannot be empty")]
    Empty,
    /// Over [`MAX_KEY_LEN`] octets.
    #[error("an MD5 password is at most {MAX_KEY_LEN} octets, this one has {0}")]
    TooLong(usize),
}

impl Md5Key {
    /// A key of 1 to 80 octets.
    pub fn new(password: impl Into<Vec<u8>>) -> Result<Self, KeyError> {
        let key = password.into();
        match key.len() {
            0 => Err(KeyError::Empty),
            n if n > MAX_KEY_LEN => Err(KeyError::TooLong(n)),
            _ => Ok(Self(key)),
        }
    }
}

impl std::fmt::Debug for Md5Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Md5Key(…)")
    }
}

/// `struct tcp_md5sig` of `<linux/tcp.h>`.
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: libc::c_int,
    key: [u8; MAX_KEY_LEN],
}

/// Sets (`Some`) or removes (`None`) the key for `peer` on `socket`. `socket_v6`: the socket
/// is IPv6 (an IPv4 peer is then given IPv4-mapped).
pub(super) fn set_key(
    socket: &impl AsRawFd,
    socket_v6: bool,
    peer: IpAddr,
    key: Option<&Md5Key>,
) -> std::io::Result<()> {
    let peer = match (peer, socket_v6) {
        (IpAddr::V4(v4), true) => IpAddr::V6(v4.to_ipv6_mapped()),
        (other, _) => other,
    };
    // SAFETY: all-zero is a valid sockaddr_storage.
    #[allow(unsafe_code)]
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match SocketAddr::new(peer, 0) {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            #[allow(unsafe_code)]
            unsafe {
                std::ptr::write((&raw mut addr).cast::<libc::sockaddr_in>(), sin)
            };
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in6 and suitably aligned.
            #[allow(unsafe_code)]
            unsafe {
                std::ptr::write((&raw mut addr).cast::<libc::sockaddr_in6>(), sin6)
            };
        }
    }
    let mut sig = TcpMd5Sig {
        addr,
        flags: 0,
        prefixlen: 0,
        keylen: 0,
        ifindex: 0,
        key: [0; MAX_KEY_LEN],
    };
    if let Some(Md5Key(k)) = key {
        sig.keylen = k.len() as u16;
        sig.key[..k.len()].copy_from_slice(k);
    }
    // SAFETY: setsockopt reads `size_of::<TcpMd5Sig>()` bytes from a live, initialised struct
    // laid out as the kernel's `struct tcp_md5sig`; TCP_MD5SIG has no safe wrapper.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            (&raw const sig).cast::<libc::c_void>(),
            std::mem::size_of::<TcpMd5Sig>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    // Removing a key that is not there is no failure.
    if key.is_none() && e.raw_os_error() == Some(libc::ENOENT) {
        return Ok(());
    }
    Err(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_1_to_80_octets_and_never_printed() {
        assert_eq!(Md5Key::new(""), Err(KeyError::Empty));
        assert_eq!(Md5Key::new(vec![b'x'; 81]), Err(KeyError::TooLong(81)));
        let k = Md5Key::new("s3cret").expect("key");
        assert!(!format!("{k:?}").contains("s3cret"));
    }

    #[test]
    fn the_struct_is_the_kernels_size() {
        // 128 (sockaddr_storage) + 1 + 1 + 2 + 4 + 80.
        assert_eq!(std::mem::size_of::<TcpMd5Sig>(), 216);
    }

    #[tokio::test]
    async fn keys_are_set_and_removed_on_listening_sockets_of_both_families() {
        let v4 = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let key = Md5Key::new("s3cret").expect("key");
        let peer: IpAddr = "127.0.0.9".parse().expect("ip");
        set_key(&v4, false, peer, Some(&key)).expect("set");
        set_key(&v4, false, peer, None).expect("remove");
        set_key(&v4, false, peer, None).expect("remove again is fine");
        if let Ok(v6) = tokio::net::TcpListener::bind("[::1]:0").await {
            set_key(&v6, true, peer, Some(&key)).expect("set v4-mapped");
            set_key(&v6, true, "::1".parse().expect("ip"), Some(&key)).expect("set v6");
        }
    }
}
