//! Errors that name the operation and the object: "add route 10.244.2.0/24 via 10.244.2.0 dev
//! trellis.1: File exists (os error 17)" tells an operator what to look at.

use std::fmt;

/// An error of a host-networking operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {object}: {source}")]
    Netlink {
        op: &'static str,
        object: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{op} {object}: {source}")]
    Os {
        op: &'static str,
        object: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{op} {object}: not found")]
    NotFound { op: &'static str, object: String },
    /// An ipset name the kernel would refuse (empty, over 31 bytes, or with whitespace that
    /// would break the restore syntax), caught before anything runs.
    #[error("ipset name {name:?}: {reason}")]
    SetName { name: String, reason: &'static str },
    #[error("{op} {object}: {reason}")]
    Invalid {
        op: &'static str,
        object: String,
        reason: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn netlink(
        op: &'static str,
        object: impl fmt::Display,
        source: rtnetlink::Error,
    ) -> Self {
        Error::Netlink {
            op,
            object: object.to_string(),
            source,
        }
    }

    pub(crate) fn os(
        op: &'static str,
        object: impl fmt::Display,
        source: impl Into<std::io::Error>,
    ) -> Self {
        Error::Os {
            op,
            object: object.to_string(),
            source: source.into(),
        }
    }

    pub(crate) fn not_found(op: &'static str, object: impl fmt::Display) -> Self {
        Error::NotFound {
            op,
            object: object.to_string(),
        }
    }

    pub(crate) fn invalid(
        op: &'static str,
        object: impl fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        Error::Invalid {
            op,
            object: object.to_string(),
            reason: reason.into(),
        }
    }

    /// The kernel's errno, when the kernel refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink {
                source: rtnetlink::Error::NetlinkError(m),
                ..
            } => m.code.map(|c| -c.get()),
            Error::Os { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// The object does not exist (a link, address, route or neighbour entry).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
            || matches!(
                self.errno(),
                Some(
                    nix::libc::ENODEV
                        | nix::libc::ENOENT
                        | nix::libc::ESRCH
                        | nix::libc::EADDRNOTAVAIL
                )
            )
    }

    /// The object already exists.
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(nix::libc::EEXIST)
    }
}

pub(crate) fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}
