//! Prefixes as they appear in NLRI and withdrawn-routes fields (RFC 4271 §4.3, RFC 4760 §5).
//!
//! ```text
//! +---------------------------+
//! |   Length (1 octet)        |
//! +---------------------------+
//! |   Prefix (variable)       |   ceil(Length / 8) octets
//! +---------------------------+
//! ```
//!
//! Bits past the prefix length are ignored on receipt (the prefix is truncated), and sent as
//! zero.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

/// A prefix field that does not parse: too long for the address, or cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidPrefix;

/// Decodes a field of packed IPv4 prefixes.
pub fn decode_v4(mut buf: &[u8]) -> Result<Vec<Ipv4Net>, InvalidPrefix> {
    let mut out = Vec::new();
    while let Some((&len, rest)) = buf.split_first() {
        let (octets, rest) = split_prefix::<4>(len, rest)?;
        let net = Ipv4Net::new(Ipv4Addr::from(octets), len).map_err(|_| InvalidPrefix)?;
        out.push(net.trunc());
        buf = rest;
    }
    Ok(out)
}

/// Decodes a field of packed IPv6 prefixes.
pub fn decode_v6(mut buf: &[u8]) -> Result<Vec<Ipv6Net>, InvalidPrefix> {
    let mut out = Vec::new();
    while let Some((&len, rest)) = buf.split_first() {
        let (octets, rest) = split_prefix::<16>(len, rest)?;
        let net = Ipv6Net::new(Ipv6Addr::from(octets), len).map_err(|_| InvalidPrefix)?;
        out.push(net.trunc());
        buf = rest;
    }
    Ok(out)
}

fn split_prefix<const N: usize>(len: u8, rest: &[u8]) -> Result<([u8; N], &[u8]), InvalidPrefix> {
    if usize::from(len) > N * 8 {
        return Err(InvalidPrefix);
    }
    let bytes = usize::from(len).div_ceil(8);
    let (field, rest) = rest.split_at_checked(bytes).ok_or(InvalidPrefix)?;
    let mut octets = [0u8; N];
    octets[..bytes].copy_from_slice(field);
    Ok((octets, rest))
}

/// Octets one IPv4 prefix takes on the wire.
pub fn encoded_len_v4(net: &Ipv4Net) -> usize {
    1 + usize::from(net.prefix_len()).div_ceil(8)
}

/// Octets one IPv6 prefix takes on the wire.
pub fn encoded_len_v6(net: &Ipv6Net) -> usize {
    1 + usize::from(net.prefix_len()).div_ceil(8)
}

/// Appends one IPv4 prefix.
pub fn encode_v4(net: &Ipv4Net, out: &mut Vec<u8>) {
    let len = net.prefix_len();
    out.push(len);
    out.extend_from_slice(&net.trunc().addr().octets()[..usize::from(len).div_ceil(8)]);
}

/// Appends one IPv6 prefix.
pub fn encode_v6(net: &Ipv6Net, out: &mut Vec<u8>) {
    let len = net.prefix_len();
    out.push(len);
    out.extend_from_slice(&net.trunc().addr().octets()[..usize::from(len).div_ceil(8)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> Ipv4Net {
        s.parse().expect("prefix")
    }

    #[test]
    fn a_prefix_takes_one_length_octet_and_only_the_octets_its_length_needs() {
        let mut out = Vec::new();
        for p in [
            "10.244.1.0/24",
            "0.0.0.0/0",
            "192.168.7.9/32",
            "172.16.0.0/12",
        ] {
            encode_v4(&v4(p), &mut out);
        }
        assert_eq!(out, [24, 10, 244, 1, 0, 32, 192, 168, 7, 9, 12, 172, 16]);
        assert_eq!(
            decode_v4(&out),
            Ok(vec![
                v4("10.244.1.0/24"),
                v4("0.0.0.0/0"),
                v4("192.168.7.9/32"),
                v4("172.16.0.0/12")
            ])
        );
    }

    #[test]
    fn trailing_bits_past_the_length_are_ignored() {
        assert_eq!(decode_v4(&[23, 10, 0, 3]), Ok(vec![v4("10.0.2.0/23")]));
    }

    #[test]
    fn a_length_longer_than_the_address_is_invalid() {
        assert_eq!(decode_v4(&[33, 1, 2, 3, 4, 5]), Err(InvalidPrefix));
        assert_eq!(decode_v6(&[129]), Err(InvalidPrefix));
    }

    #[test]
    fn a_prefix_cut_short_is_invalid() {
        assert_eq!(decode_v4(&[24, 10, 0]), Err(InvalidPrefix));
    }

    #[test]
    fn ipv6_prefixes_round_trip() {
        let nets: Vec<Ipv6Net> = ["2001:db8::/32", "fd00:10:244:1::/64", "::/0"]
            .iter()
            .map(|s| s.parse().expect("v6"))
            .collect();
        let mut out = Vec::new();
        for n in &nets {
            encode_v6(n, &mut out);
        }
        assert_eq!(out.len(), nets.iter().map(encoded_len_v6).sum::<usize>());
        assert_eq!(decode_v6(&out), Ok(nets));
    }
}
