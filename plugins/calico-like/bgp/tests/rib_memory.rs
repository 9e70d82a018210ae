//! What a full table costs the RIB (issue 18): 100,000 /32s from one eBGP peer, in UPDATEs of
//! 800 prefixes sharing their attributes (as BIRD sends them), counted by a global allocator
//! of this test binary's own. Prints the bytes per route (`--nocapture`) and holds them to a
//! budget, so a change that makes every route bigger shows here rather than in the agent's
//! resident memory.

// Counting needs a global allocator, and `GlobalAlloc` is an unsafe trait: its methods only
// pass each call on to the system allocator.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ipnet::{IpNet, Ipv4Net};
use trellis_bgp::codec::{AsPath, Family, Origin, PathAttributes};
use trellis_bgp::rib::{Path, PeerInfo, Rib, RibConfig, RoutePolicy, SessionInfo};

/// Live heap bytes and their peak, as the allocations of this binary count them.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is passed on to the system allocator unchanged; only counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const ROUTES: u32 = 100_000;
/// Prefixes per UPDATE: a 4,096-byte UPDATE holds about 800 /32s.
const PER_UPDATE: u32 = 800;
const ASN: u32 = 64512;
const PEER_ASN: u32 = 64600;

fn peer(rib: &mut Rib, address: Ipv4Addr, asn: u32, rr_client: bool) -> IpAddr {
    let a = IpAddr::V4(address);
    rib.add_peer(PeerInfo {
        address: a,
        asn,
        rr_client,
        link: None,
        policy: RoutePolicy::default(),
    });
    rib.session_up(
        a,
        SessionInfo {
            router_id: address,
            local_address: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)),
            families: vec![Family::IPV4_UNICAST, Family::IPV6_UNICAST],
            extended_next_hop: false,
        },
    );
    a
}

fn prefix(i: u32) -> IpNet {
    let base = u32::from(Ipv4Addr::new(10, 64, 0, 0));
    IpNet::V4(Ipv4Net::new(Ipv4Addr::from(base + i), 32).expect("a /32"))
}

/// Live bytes after `from` sends the whole table (one shared attribute set per UPDATE), and
/// the peak while it did.
fn fill(rib: &mut Rib, from: IpAddr, next_hop: Ipv4Addr) -> (usize, usize) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let mut i = 0;
    while i < ROUTES {
        let attrs = Arc::new(PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath::sequence(&[PEER_ASN])),
            // As the speaker hands them over: NEXT_HOP is each path's own.
            next_hop: None,
            ..Default::default()
        });
        let end = (i + PER_UPDATE).min(ROUTES);
        let announced: Vec<(IpNet, Path)> = (i..end)
            .map(|n| (prefix(n), Path::shared(attrs.clone(), IpAddr::V4(next_hop))))
            .collect();
        drop(rib.update(from, announced, Vec::new()));
        i = end;
    }
    let after = LIVE.load(Ordering::Relaxed);
    (
        after.saturating_sub(before),
        PEAK.load(Ordering::Relaxed) - before,
    )
}

fn per_route(bytes: usize) -> f64 {
    bytes as f64 / f64::from(ROUTES)
}

#[test]
fn a_full_table_from_one_ebgp_peer_costs_the_rib_a_bounded_number_of_bytes_per_route() {
    let mut rib = Rib::new(RibConfig {
        local_asn: ASN,
        router_id: Ipv4Addr::new(198, 18, 0, 2),
        cluster_id: None,
        max_paths: 1,
    });
    let sender = peer(&mut rib, Ipv4Addr::new(198, 18, 0, 1), PEER_ASN, false);
    let (live, peak) = fill(&mut rib, sender, Ipv4Addr::new(198, 18, 0, 1));
    assert_eq!(rib.counts(sender).0, ROUTES as usize);
    assert_eq!(rib.loc_rib().count(), ROUTES as usize);
    eprintln!(
        "one eBGP peer, {ROUTES} routes: {live} bytes live ({:.1} per route), peak {peak} ({:.1} per route)",
        per_route(live),
        per_route(peak)
    );
    // Measured 142 (an Adj-RIB-In path ~97, a Loc-RIB entry ~45 — the winner's peer id, not
    // a copy of its route —, B-tree nodes included); 297 with the copy.
    assert!(
        per_route(live) < 170.0,
        "{:.1} bytes per route",
        per_route(live)
    );

    // An iBGP peer the routes are exported to: its Adj-RIB-Out.
    let before = LIVE.load(Ordering::Relaxed);
    let ibgp = peer(&mut rib, Ipv4Addr::new(198, 18, 0, 3), ASN, false);
    let out = LIVE.load(Ordering::Relaxed).saturating_sub(before);
    assert_eq!(rib.counts(ibgp).1, ROUTES as usize);
    eprintln!(
        "plus an iBGP peer's Adj-RIB-Out: {out} bytes ({:.1} per route)",
        per_route(out)
    );
    // Measured 97: the exported routes share their attributes (285 when each had a copy).
    assert!(
        per_route(out) < 120.0,
        "{:.1} bytes per route",
        per_route(out)
    );

    // A second eBGP peer with the same table: an equally good path for every prefix.
    let second = peer(&mut rib, Ipv4Addr::new(198, 18, 0, 4), PEER_ASN, false);
    let (live2, _) = fill(&mut rib, second, Ipv4Addr::new(198, 18, 0, 4));
    eprintln!(
        "plus a second eBGP peer's Adj-RIB-In: {live2} bytes ({:.1} per route)",
        per_route(live2)
    );
    assert!(
        per_route(live2) < 120.0,
        "{:.1} bytes per route",
        per_route(live2)
    );
    drop(rib);
}
