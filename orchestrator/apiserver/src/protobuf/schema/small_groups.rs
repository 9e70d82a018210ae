//! authentication/v1, policy/v1 and coordination/v1: TokenRequest, Eviction and Lease.

use super::Ty::{I32, I64, M, MicroTime, Str, Time};
use super::meta::{DELETE_OPTIONS, OBJECT_META};
use super::{Msg, f, keep, rep};

pub(super) static TOKEN_REQUEST: Msg = Msg::new(
    "authentication/v1 TokenRequest",
    &[
        f(1, "metadata", M(&OBJECT_META)),
        f(2, "spec", M(&TOKEN_REQUEST_SPEC)),
        f(3, "status", M(&TOKEN_REQUEST_STATUS)),
    ],
);

pub(super) static TOKEN_REQUEST_SPEC: Msg = Msg::new(
    "authentication/v1 TokenRequestSpec",
    &[
        rep(1, "audiences", Str),
        f(3, "boundObjectRef", M(&BOUND_OBJECT_REFERENCE)),
        keep(4, "expirationSeconds", I64),
    ],
);

pub(super) static BOUND_OBJECT_REFERENCE: Msg = Msg::new(
    "authentication/v1 BoundObjectReference",
    &[
        f(1, "kind", Str),
        f(2, "apiVersion", Str),
        f(3, "name", Str),
        f(4, "uid", Str),
    ],
);

pub(super) static TOKEN_REQUEST_STATUS: Msg = Msg::new(
    "authentication/v1 TokenRequestStatus",
    &[f(1, "token", Str), f(2, "expirationTimestamp", Time)],
);

pub(super) static EVICTION: Msg = Msg::new(
    "policy/v1 Eviction",
    &[
        f(1, "metadata", M(&OBJECT_META)),
        f(2, "deleteOptions", M(&DELETE_OPTIONS)),
    ],
);

pub(super) static LEASE: Msg = Msg::new(
    "coordination/v1 Lease",
    &[
        f(1, "metadata", M(&OBJECT_META)),
        f(2, "spec", M(&LEASE_SPEC)),
    ],
);

pub(super) static LEASE_SPEC: Msg = Msg::new(
    "coordination/v1 LeaseSpec",
    &[
        keep(1, "holderIdentity", Str),
        keep(2, "leaseDurationSeconds", I32),
        f(3, "acquireTime", MicroTime),
        f(4, "renewTime", MicroTime),
        keep(5, "leaseTransitions", I32),
        keep(6, "strategy", Str),
        keep(7, "preferredHolder", Str),
    ],
);
