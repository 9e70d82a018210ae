//! Names of everything policyd owns: deterministic (the same input always gives the same
//! names, so a restarted policyd re-declares the very chains and sets it left behind and the
//! swap is atomic), short enough for the kernel (chains ≤ 28, sets ≤ 31 characters), and under
//! prefixes nobody else uses (the overlay agent owns `TRELLIS-FWD` and `TRELLIS-POSTRTG`).

/// FORWARD → this chain (ahead of the overlay's `-j TRELLIS-FWD`).
pub const FWD: &str = "TRELLIS-POL-FWD";
/// INPUT → this chain (pods to the node).
pub const IN: &str = "TRELLIS-POL-IN";
/// OUTPUT → this chain (the node to pods).
pub const OUT: &str = "TRELLIS-POL-OUT";
/// Dispatch of local pods' egress (by source address and interface).
pub const EGRESS: &str = "TRELLIS-POL-EGR";
/// Dispatch of local pods' ingress (by destination address).
pub const INGRESS: &str = "TRELLIS-POL-ING";
/// The comment on our jumps from the built-in chains.
pub const JUMP_COMMENT: &str = "trellis-policyd";

/// Chain prefixes we own (and only these are ever deleted).
pub const OWNED_CHAIN_PREFIXES: [&str; 3] = ["TRELLIS-POL-", "TRELLIS-PI-", "TRELLIS-PE-"];
/// The prefix of every Trellis set.
pub const SET_PREFIX: &str = "trellis-";
/// The set prefixes policyd owns (only these are ever destroyed): other Trellis components may
/// name sets `trellis-…` too.
pub const OWNED_SET_PREFIXES: [&str; 3] = ["trellis-p-", "trellis-n-", "trellis-q-"];

/// The overlay agent's FORWARD accept our jump must precede.
pub const OVERLAY_FWD: &str = "TRELLIS-FWD";
/// The bridge and the VTEP, whose names share the pods' `tr` interface prefix.
pub const BRIDGE: &str = "trellis0";
pub const VTEP: &str = "trellis.1";
/// Every pod's host interface (and the bridge) starts with this.
pub const POD_IFACE_WILDCARD: &str = "tr+";

/// 64-bit FNV-1a: small, stable across versions and platforms.
pub fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn id(seed: &str) -> String {
    format!("{:012x}", fnv(seed) & 0xffff_ffff_ffff)
}

/// A pod's ingress chain: `TRELLIS-PI-<12 hex>` (23 characters).
pub fn ingress_chain(pod_key: &str) -> String {
    format!("TRELLIS-PI-{}", id(pod_key))
}

/// A pod's egress chain: `TRELLIS-PE-<12 hex>`.
pub fn egress_chain(pod_key: &str) -> String {
    format!("TRELLIS-PE-{}", id(pod_key))
}

/// The second half of a pod chain, where an Admin `Pass` jumps (`<chain>-N`, 25 characters).
pub fn after_admin(chain: &str) -> String {
    format!("{chain}-N")
}

/// A set: `trellis-<kind letter>-<16 hex>` (26 characters): `p` pods (hash:ip), `n` an ipBlock
/// (hash:net), `q` named ports (hash:ip,port).
pub fn set(kind: char, seed: &str) -> String {
    format!("trellis-{kind}-{:016x}", fnv(seed))
}

pub fn is_owned_chain(name: &str) -> bool {
    OWNED_CHAIN_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// A set of ours: `trellis-<p|n|q>-<16 hex>`, exactly what [`set`] makes.
pub fn is_owned_set(name: &str) -> bool {
    OWNED_SET_PREFIXES.iter().any(|p| {
        name.strip_prefix(p)
            .is_some_and(|h| h.len() == 16 && h.chars().all(|c| c.is_ascii_hexdigit()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_and_are_ours() {
        let c = after_admin(&ingress_chain("x/a"));
        assert!(c.len() <= 28 && is_owned_chain(&c), "{c}");
        assert_eq!(ingress_chain("x/a"), ingress_chain("x/a"));
        assert_ne!(ingress_chain("x/a"), ingress_chain("x/b"));
        let s = set('p', "anything");
        assert!(s.len() <= 31 && is_owned_set(&s), "{s}");
        assert!(!is_owned_set("trellis-svc-1234") && !is_owned_set("trellis-p-x"));
        for theirs in ["TRELLIS-FWD", "TRELLIS-POSTRTG"] {
            assert!(!is_owned_chain(theirs));
        }
    }
}
