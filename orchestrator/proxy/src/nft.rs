//! The nftables backend: the same service semantics as [`crate::rules`], laid out so that the
//! kernel work grows with what changed, not with the table.
//!
//! One table, `ip trellis-proxy`, that the proxy owns whole. A packet to a service address is
//! dispatched by one lookup in the verdict map `service-ips` (address . protocol . port →
//! `goto …`), node ports by one lookup in `service-nodeports`; iptables walks a list of
//! rules per Service instead. A cluster IP's spread needs no rules of its own: its element
//! leads to a chain its shard shares with every port of as many endpoints, `spread-<shard>-<n>`,
//! whose one DNAT takes its target from the chain's map `endpoints-<n>`, keyed by the packet's
//! address, protocol and port and `numgen random mod n` (each endpoint one index: 1/n each); a
//! count new to a shard brings its map, chain and rule in one incremental change. So a
//! Service is map elements, not rules — at 10,000 Services × 10 endpoints the tables hold a
//! few dozen rules instead of 110,000, which nft parses and the kernel commits far faster, and
//! nft's per-command cache (every chain of every table) stays small — and an endpoint change
//! replaces an element or two. No per-Service set or map: each one a rule refers to costs the
//! kernel a scan of every other binding when it is bound, which at 10,000 Services made a full
//! load take 15 s. Rules per port remain where the spread is not the cluster IP's alone: node
//! ports and load-balancer addresses (`ext-…`, with `numgen random mod k == 0` rules that
//! DNAT, the statistic-mode probabilities drawn per rule), externalTrafficPolicy Local
//! (`local-…`, and the cluster-IP chain `svc-…` that pods reach the node port through), and
//! session affinity: such a port gets a chain and a dynamic timeout set (`aff-…`) per
//! endpoint, as kube-proxy's nftables mode does.
//!
//! LoadBalancer addresses are keys of `service-ips` too, leading to the node port's chain.
//! Services without endpoints are rejected through the sets `no-endpoint-services` and
//! `no-endpoint-nodeports` (dropped, for externalTrafficPolicy Local without a local endpoint,
//! through `no-local-endpoint-*`); hairpin traffic (a pod reaching itself through its Service) is
//! masqueraded by the set `hairpin` of endpoint address pairs; everything else that must be
//! masqueraded carries the mark 0x4000, which the overlay agent's masquerade chain honours.
//!
//! Shards: the service ports' chains, their affinity sets, their `endpoints-<n>` elements and the
//! dispatch maps are spread over [`SHARDS`] tables `ip trellis-proxy-svc-NN` by the port's
//! key, each with its own
//! dispatch chain on the nat hooks. Why: a commit that adds a DNAT rule or a `goto` element
//! makes the kernel validate every chain reachable from the *table's* base chains (its
//! `NFT_VALIDATE_NEED` state is per table): in one table that was every rule of every Service,
//! ~60 ms per change at 10,000 Services on a loaded 2-core VM; in a shard it is a sixteenth.
//! The nat core runs the shards' chains one after the other until one of them has set up a
//! mapping, so a new connection costs at most one map lookup per shard; established ones go
//! by conntrack. What needs no verdict (the reject and hairpin sets, masquerading, the filter
//! hooks) stays in the main table `ip trellis-proxy`.
//!
//! Syncs: the first (and every resync) replaces every table in one transaction — old rules
//! serve until the new ones are in; later syncs send only the chains and elements that changed,
//! also as one transaction, through a long-lived `nft` ([`trellis_net::nft::NftSession`]).
//!
//! IPv6: the same tables (names, shards, chains, sets) once more in the family `ip6`, with
//! `ip6` matches, `ipv6_addr` keys and `dnat ip6 to [addr]:port`; a dual-stack Service's two
//! ports have the same key, so the same shard and chain names, in their own family's tables.
//! Not one `inet` family: a table's chains are validated together on every commit that adds a
//! DNAT rule or a `goto` element, so `inet` shards would validate both families' chains for
//! each change — separate `ip6` tables keep an IPv4 change's commit exactly what it was (and
//! kube-proxy's nftables mode does the same, one `ip` and one `ip6` table). Both families'
//! changes still go in one transaction per sync. IPv6 TCP ports without endpoints are refused
//! with a TCP reset, other IPv6 ones with ICMPv6 port unreachable (why: [`crate::rules`]).
//! Without IPv6 service ports there are no `ip6` tables at all (removed in the sync that
//! finds none): `nft` reads every table into its cache before each command, and 17 empty
//! ones made an IPv4 change at 1,000 Services about twice as slow on a loaded machine.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;

use trellis_net::nft::{Delivery, Nft, NftSession};

use crate::model::{Endpoint, Family, PortName, ServicePort};
use crate::rules::{MASQ_MARK, NodeRules, port_key};
use crate::sync::SyncStats;

/// The proxy's main table (family `ip`).
pub const TABLE: &str = "trellis-proxy";

/// How many tables the service ports' chains are spread over (see the module doc).
pub const SHARDS: u8 = 16;

/// The prefix of the shard tables' names.
pub const SHARD_PREFIX: &str = "trellis-proxy-svc-";

/// Shard `k`'s table.
pub fn shard_table(k: u8) -> String {
    format!("{SHARD_PREFIX}{k:02}")
}

/// The nft keyword of a family: the tables' family and the address expressions (`ip saddr`,
/// `ip6 daddr`, `dnat ip6 to`).
pub fn family_keyword(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

/// The nft type of an address of `family`.
fn addr_type(family: Family) -> &'static str {
    match family {
        Family::V4 => "ipv4_addr",
        Family::V6 => "ipv6_addr",
    }
}

/// A set or map declaration of the tables of `family` (the constants are written for IPv4).
fn declaration(decl: &str, family: Family) -> String {
    decl.replace("ipv4_addr", addr_type(family))
        .replace("ip daddr", &format!("{} daddr", family_keyword(family)))
}

/// Every table the proxy owns (the same names in both families).
pub fn tables() -> Vec<String> {
    std::iter::once(TABLE.to_string())
        .chain((0..SHARDS).map(shard_table))
        .collect()
}

/// The shard of a port key (a [`crate::rules::short_hash`]: its characters are uniform).
fn shard_of_key(key: &str) -> u8 {
    const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digit = key
        .chars()
        .next()
        .and_then(|c| ALPHABET.find(c))
        .unwrap_or(0);
    (digit % usize::from(SHARDS)) as u8
}

/// The shard that holds a chain or affinity set of a service port: every such name is
/// `<kind>-<port key>[-…]` (the port's names share one table, as `jump`/`goto` and set
/// references cannot leave a table). None for the main table's chains.
fn shard_of_name(name: &str) -> Option<u8> {
    let mut parts = name.split('-');
    match parts.next() {
        Some("ep" | "local" | "svc" | "ext" | "aff") => parts.next().map(shard_of_key),
        Some("spread") => parts
            .next()
            .and_then(|k| k.parse::<u8>().ok())
            .filter(|k| *k < SHARDS),
        _ => None,
    }
}

/// The shared chain of shard `shard` that spreads over `n` endpoints through the map
/// `endpoints-<n>` (see [`spread_rules`]): `spread-<shard>-<n>`, one per endpoint count in use.
fn spread_chain(shard: u8, n: usize) -> String {
    format!("spread-{shard:02}-{n}")
}

/// The map a shared spread chain for `n` endpoints DNATs from, in the chain's shard: (cluster
/// IP . protocol . port . endpoint index) → endpoint address . port. One per chain, created and
/// removed with it: nft 1.0.6 cannot read a map of this type back from the kernel for a new
/// rule naming it ("conflicting protocols specified: ip vs. th", for the `th dport` of its
/// data), but a map declared in the same transaction it takes from the command itself, so a
/// new endpoint count is a map, a chain and its rule in one incremental change.
fn spread_map(n: usize) -> String {
    format!("{ENDPOINTS}-{n}")
}

/// The endpoint count of a shared spread chain `spread-<shard>-<n>`.
fn spread_count(chain: &str) -> Option<usize> {
    chain.rsplit('-').next().and_then(|n| n.parse().ok())
}

/// The declaration of [`spread_map`]`(n)` in a table of `family`. Not `: ip daddr . tcp
/// dport`: nft then makes every rule using the map match TCP only (a hidden `meta l4proto
/// tcp`).
fn spread_map_decl(family: Family, n: usize) -> String {
    declaration(
        &format!(
            "map {} {{ typeof ip daddr . meta l4proto . th dport . numgen random mod {n} : ip daddr . th dport; }}",
            spread_map(n)
        ),
        family,
    )
}

/// Whether a chain is shared by the service ports (a `spread-…` chain): counted per port like
/// set elements, created with the first port that needs it and removed after the last.
fn is_shared(name: &str) -> bool {
    name.starts_with("spread-")
}

/// The table a chain or set named `name` lives in.
fn table_of(name: &str) -> String {
    match shard_of_name(name) {
        Some(k) => shard_table(k),
        None => TABLE.to_string(),
    }
}

/// The dispatch maps of every shard (a verdict may only name a chain of its table).
const MAPS: [(&str, &str); 2] = [
    (
        "service-ips",
        "map service-ips { type ipv4_addr . inet_proto . inet_service : verdict; }",
    ),
    (
        "service-nodeports",
        "map service-nodeports { type inet_proto . inet_service : verdict; }",
    ),
];

/// The elements of the shards' [`spread_map`]s, the DNAT targets of the cluster IPs' spreads,
/// are kept under this name; each carries its shard and map as a prefix `@NN-n `.
const ENDPOINTS: &str = "endpoints";

/// The table an element of `set` lives in, the set or map it goes into and the element as nft
/// reads it: an `endpoints` element carries its shard and endpoint count as a prefix `@NN-n `
/// (its text names no chain) and goes into the map `endpoints-n`; a dispatch map's element
/// lives in the shard of the chain it leads to (`… : goto <chain>`); every other in the main
/// table.
fn place_element<'a>(set: &str, element: &'a str) -> (Option<u8>, String, &'a str) {
    if let Some(rest) = element.strip_prefix('@')
        && let Some((place, shown)) = rest.split_once(' ')
        && let Some((shard, n)) = place.split_once('-')
        && let (Ok(k), Ok(n)) = (shard.parse::<u8>(), n.parse::<usize>())
    {
        return (Some(k), spread_map(n), shown);
    }
    if MAPS.iter().any(|(m, _)| *m == set) {
        (
            element.rsplit(' ').next().and_then(shard_of_name),
            set.to_string(),
            element,
        )
    } else {
        (None, set.to_string(), element)
    }
}

/// A table by its shard (None: the main table).
fn table_name(shard: Option<u8>) -> String {
    shard.map(shard_table).unwrap_or_else(|| TABLE.to_string())
}

/// The table an element of `set` lives in (see [`place_element`]).
#[cfg(test)]
fn table_of_element(set: &str, element: &str) -> String {
    table_name(place_element(set, element).0)
}

/// The named sets of the main table, with their declarations.
const SETS: [(&str, &str); 5] = [
    (
        "no-endpoint-services",
        "set no-endpoint-services { type ipv4_addr . inet_proto . inet_service; }",
    ),
    (
        "no-endpoint-nodeports",
        "set no-endpoint-nodeports { type inet_proto . inet_service; }",
    ),
    (
        "no-local-endpoint-services",
        "set no-local-endpoint-services { type ipv4_addr . inet_proto . inet_service; }",
    ),
    (
        "no-local-endpoint-nodeports",
        "set no-local-endpoint-nodeports { type inet_proto . inet_service; }",
    ),
    ("hairpin", "set hairpin { type ipv4_addr . ipv4_addr; }"),
];

/// Every shard's base chains: the nat hooks, jumping to the shard's dispatch.
const SHARD_BASE_CHAINS: [(&str, &str, &str); 2] = [
    (
        "nat-prerouting",
        "type nat hook prerouting priority dstnat; policy accept;",
        "jump services",
    ),
    (
        "nat-output",
        "type nat hook output priority -100; policy accept;",
        "jump services",
    ),
];

/// The main table's base chains: the hooks into the kernel, each jumping to one of ours.
const BASE_CHAINS: [(&str, &str, &str); 4] = [
    (
        "nat-postrouting",
        "type nat hook postrouting priority srcnat; policy accept;",
        "jump masquerading",
    ),
    (
        "filter-input",
        "type filter hook input priority filter - 10; policy accept;",
        "ct state new jump reject-services",
    ),
    (
        "filter-forward",
        "type filter hook forward priority filter - 10; policy accept;",
        "ct state new jump reject-services",
    ),
    (
        "filter-output",
        "type filter hook output priority filter - 10; policy accept;",
        "ct state new jump reject-services",
    ),
];

/// The desired content of the table (besides its fixed declarations).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Regular chains, in the order they are declared (callees before callers).
    pub chains: BTreeMap<String, Vec<String>>,
    /// Elements of the named sets and maps, rendered.
    pub elements: BTreeMap<&'static str, BTreeSet<String>>,
    /// Session-affinity sets: name → timeout in seconds.
    pub affinity_sets: BTreeMap<String, u32>,
}

impl Ruleset {
    fn rules_total(&self) -> usize {
        self.chains.values().map(Vec::len).sum()
    }

    /// The rules of the chains that are this share's alone (not [`is_shared`]).
    fn own_rules(&self) -> usize {
        self.chains
            .iter()
            .filter(|(n, _)| !is_shared(n))
            .map(|(_, r)| r.len())
            .sum()
    }

    /// Adds `other`'s chains, elements and sets to these.
    fn merge(&mut self, other: Ruleset) {
        self.chains.extend(other.chains);
        for (set, elements) in other.elements {
            self.elements.entry(set).or_default().extend(elements);
        }
        self.affinity_sets.extend(other.affinity_sets);
    }

    /// A ruleset with every named set present (empty), so that a diff sees each set's removals.
    fn with_every_set() -> Ruleset {
        let mut rs = Ruleset::default();
        for (name, _) in SETS.iter().chain(MAPS.iter()) {
            rs.elements.insert(name, BTreeSet::new());
        }
        rs.elements.insert(ENDPOINTS, BTreeSet::new());
        rs
    }
}

fn svc_chain(sp: &ServicePort) -> String {
    format!("svc-{}", port_key(sp))
}

fn ext_chain(sp: &ServicePort) -> String {
    format!("ext-{}", port_key(sp))
}

fn local_chain(sp: &ServicePort) -> String {
    format!("local-{}", port_key(sp))
}

/// `<port key>-<endpoint hash>`: the port's key first, which places its chain and set in the
/// port's shard.
fn endpoint_key(sp: &ServicePort, ep: &Endpoint) -> String {
    let ep_hash = crate::rules::short_hash(&[
        &sp.name.to_string(),
        sp.protocol.iptables(),
        &format!("{}:{}", ep.ip, ep.port),
    ]);
    format!("{}-{ep_hash}", port_key(sp))
}

/// An endpoint as a DNAT target: `a.b.c.d:port` or `[v6]:port`.
fn dnat_to(ep: &Endpoint) -> String {
    std::net::SocketAddr::new(ep.ip, ep.port).to_string()
}

/// The rules that pick one of `eps` and DNAT to it. Without affinity: rule i of n matches with
/// probability 1/(n-i), the last always. With affinity: a client seen recently goes to the
/// endpoint it had; the pick goes through the endpoint's chain, which remembers the client.
fn spread(sp: &ServicePort, eps: &[&Endpoint], ruleset: &mut Ruleset, out: &mut Vec<String>) {
    let proto = sp.protocol.iptables();
    let ip = family_keyword(Family::of(sp.cluster_ip));
    let n = eps.len();
    let mut targets = Vec::new();
    for ep in eps {
        if let Some(secs) = sp.affinity {
            let key = endpoint_key(sp, ep);
            // The timeout is part of the set's name: a set cannot be redeclared with another
            // timeout, nor deleted while rules refer to it, so a new timeout is a new set that
            // the rewritten chains refer to, and the old one goes after them.
            let (set, chain) = (format!("aff-{key}-{secs}"), format!("ep-{key}"));
            ruleset.affinity_sets.insert(set.clone(), secs);
            ruleset.chains.insert(
                chain.clone(),
                vec![
                    format!("update @{set} {{ {ip} saddr }}"),
                    format!("meta l4proto {proto} dnat {ip} to {}", dnat_to(ep)),
                ],
            );
            out.push(format!("{ip} saddr @{set} goto {chain}"));
            targets.push(format!("goto {chain}"));
        } else {
            targets.push(format!("meta l4proto {proto} dnat {ip} to {}", dnat_to(ep)));
        }
    }
    for (i, t) in targets.into_iter().enumerate() {
        if i + 1 < n {
            out.push(format!("numgen random mod {} == 0 {t}", n - i));
        } else {
            out.push(t);
        }
    }
}

/// Whether a port's cluster IP spreads through a shared chain of its shard and that chain's
/// map `endpoints-<n>` instead of rules of its own: every port but those with session affinity
/// (a chain and set per endpoint) and those whose node-port or load-balancer traffic jumps to the cluster-IP
/// chain (externalTrafficPolicy Local: that traffic's address and port are not the cluster
/// IP's, which the map is keyed by).
fn spreads_by_map(sp: &ServicePort) -> bool {
    sp.affinity.is_none()
        && !(sp.external_local && (sp.node_port.is_some() || !sp.load_balancer_ips.is_empty()))
}

/// A shared spread chain's rules: the masquerade mark for traffic from outside the cluster
/// CIDR, then one DNAT whose target is looked up in `endpoints-<n>` by the packet's destination,
/// protocol and port and `numgen random mod n` (each of the port's n endpoints is one index,
/// so each gets 1/n).
fn spread_rules(family: Family, node: &NodeRules, n: usize) -> Vec<String> {
    let ip = family_keyword(family);
    let mut rules = Vec::new();
    if let Some(cidr) = node.cluster_cidr {
        rules.push(format!(
            "{ip} saddr != {cidr} meta mark set meta mark | {MASQ_MARK}"
        ));
    }
    rules.push(format!(
        "dnat {ip} to {ip} daddr . meta l4proto . th dport . numgen random mod {n} map @{}",
        spread_map(n)
    ));
    rules
}

/// The whole desired state of `family`'s tables for these service ports (all of that family).
pub fn compile(family: Family, ports: &[ServicePort], node: &NodeRules) -> Ruleset {
    let mut rs = fixed(family, node);
    for sp in ports {
        rs.merge(compile_port(sp, node));
    }
    rs
}

/// One service port's share of the table: its chains, elements and affinity sets. The share of
/// every port is independent of the others' (names and keys are the port's own; only hairpin
/// pairs can be shared, which [`Syncer`] counts), so a sync compiles only the ports that
/// changed. The port's cluster IP gives the family of its tables.
pub fn compile_port(sp: &ServicePort, node: &NodeRules) -> Ruleset {
    let mut rs = Ruleset::default();
    let proto = sp.protocol.iptables();
    let ip = family_keyword(Family::of(sp.cluster_ip));
    let internal = sp.usable(sp.internal_local);
    let all = sp.usable(false);
    // Hairpin pairs for this node's endpoints only: a pod reaches itself through a Service
    // on its own node, where its packet is DNATed; another node's endpoint never sends a packet
    // this node DNATs back to it. (At 10,000 Services × 10 endpoints a pair for every endpoint
    // was 100,000 elements, half of a full load's.)
    let hairpin = rs.elements.entry("hairpin").or_default();
    for ep in all.iter().chain(sp.usable(true).iter()).filter(|e| e.local) {
        hairpin.insert(format!("{0} . {0}", ep.ip));
    }
    let set = |rs: &mut Ruleset, name: &str, e: String| {
        if let Some(known) = SETS
            .iter()
            .chain(MAPS.iter())
            .map(|(n, _)| *n)
            .chain(std::iter::once(ENDPOINTS))
            .find(|n| *n == name)
        {
            rs.elements.entry(known).or_default().insert(e);
        }
    };
    if internal.is_empty() {
        set(
            &mut rs,
            "no-endpoint-services",
            format!("{} . {proto} . {}", sp.cluster_ip, sp.port),
        );
    } else if spreads_by_map(sp) {
        // No chain of its own: its dispatch element leads to the shard's shared chain for its
        // endpoint count, which DNATs from the chain's map `endpoints-<n>` keyed by the
        // packet's own address, protocol and port and the drawn index.
        let shard = shard_of_key(&port_key(sp));
        let chain = spread_chain(shard, internal.len());
        rs.chains.insert(
            chain.clone(),
            spread_rules(Family::of(sp.cluster_ip), node, internal.len()),
        );
        let n = internal.len();
        for (i, ep) in internal.iter().enumerate() {
            set(
                &mut rs,
                ENDPOINTS,
                format!(
                    "@{shard:02}-{n} {} . {proto} . {} . {i} : {} . {}",
                    sp.cluster_ip, sp.port, ep.ip, ep.port
                ),
            );
        }
        set(
            &mut rs,
            "service-ips",
            format!("{} . {proto} . {} : goto {chain}", sp.cluster_ip, sp.port),
        );
    } else {
        let mut rules = Vec::new();
        if let Some(cidr) = node.cluster_cidr {
            rules.push(format!(
                "{ip} saddr != {cidr} meta mark set meta mark | {MASQ_MARK}"
            ));
        }
        spread(sp, &internal, &mut rs, &mut rules);
        rs.chains.insert(svc_chain(sp), rules);
        set(
            &mut rs,
            "service-ips",
            format!(
                "{} . {proto} . {} : goto {}",
                sp.cluster_ip,
                sp.port,
                svc_chain(sp)
            ),
        );
    }

    // Where outside traffic comes in: the node port on the node's addresses (keyed
    // protocol . port), the service port on the load-balancer addresses (keyed address .
    // protocol . port, in the same maps as cluster IPs).
    let mut entries: Vec<(&'static str, String)> = Vec::new();
    if let Some(np) = sp.node_port {
        entries.push(("nodeports", format!("{proto} . {np}")));
    }
    for ip in &sp.load_balancer_ips {
        entries.push(("services", format!("{ip} . {proto} . {}", sp.port)));
    }
    if entries.is_empty() {
        return rs;
    }
    let external = sp.usable(sp.external_local);
    if external.is_empty() && (!sp.external_local || all.is_empty()) {
        for (kind, key) in entries {
            set(&mut rs, &format!("no-endpoint-{kind}"), key);
        }
        return rs;
    }
    let mut x = Vec::new();
    if sp.external_local {
        // Pods and the node itself reach the service as through its cluster IP.
        if !all.is_empty() && !sp.internal_local && !internal.is_empty() {
            let cchain = svc_chain(sp);
            if let Some(cidr) = node.cluster_cidr {
                x.push(format!("{ip} saddr {cidr} jump {cchain}"));
            }
            x.push(format!(
                "fib saddr type local meta mark set meta mark | {MASQ_MARK}"
            ));
            x.push(format!("fib saddr type local jump {cchain}"));
        }
        let mut l = Vec::new();
        if external.is_empty() {
            // No endpoint here: dropped (a load balancer's health check steers clients
            // away), as kube-proxy does.
            for (kind, key) in &entries {
                set(&mut rs, &format!("no-local-endpoint-{kind}"), key.clone());
            }
        } else {
            spread(sp, &external, &mut rs, &mut l);
        }
        rs.chains.insert(local_chain(sp), l);
        x.push(format!("jump {}", local_chain(sp)));
    } else {
        x.push(format!("meta mark set meta mark | {MASQ_MARK}"));
        spread(sp, &external, &mut rs, &mut x);
    }
    rs.chains.insert(ext_chain(sp), x);
    for (kind, key) in entries {
        let map = if kind == "nodeports" {
            "service-nodeports"
        } else {
            "service-ips"
        };
        set(&mut rs, map, format!("{key} : goto {}", ext_chain(sp)));
    }
    rs
}

/// What does not depend on the service ports: the main table's reject and masquerade chains,
/// and every named set and map (empty). The shards' dispatch chains are rendered from `node`.
fn fixed(family: Family, node: &NodeRules) -> Ruleset {
    let mut rs = Ruleset::with_every_set();
    let ip = family_keyword(family);
    let mut reject = refusal(
        family,
        &format!("{ip} daddr . meta l4proto . th dport @no-endpoint-services"),
    );
    reject.push(format!(
        "{ip} daddr . meta l4proto . th dport @no-local-endpoint-services drop"
    ));
    for d in node_destinations(family, node) {
        reject.extend(refusal(
            family,
            &format!("{d} meta l4proto . th dport @no-endpoint-nodeports"),
        ));
        reject.push(format!(
            "{d} meta l4proto . th dport @no-local-endpoint-nodeports drop"
        ));
    }
    rs.chains.insert("reject-services".into(), reject);
    rs.chains.insert(
        "masquerading".into(),
        vec![
            format!(
                "meta mark & {MASQ_MARK} == {MASQ_MARK} meta mark set meta mark ^ {MASQ_MARK} masquerade fully-random"
            ),
            format!("ct status dnat {ip} saddr . {ip} daddr @hairpin masquerade fully-random"),
        ],
    );
    rs
}

/// The rules that refuse what `matched` (a rule's matches) selects. IPv4: ICMP port
/// unreachable (nft's `reject`). IPv6: TCP with a reset, the rest with ICMPv6 port
/// unreachable — an ICMPv6 error that reaches a pod's TCP socket inside its own `connect()` is
/// kept only as a soft error (see [`crate::rules`]' `reject_rule`), a reset is not.
fn refusal(family: Family, matched: &str) -> Vec<String> {
    match family {
        Family::V4 => vec![format!("{matched} reject")],
        Family::V6 => vec![
            format!("{matched} meta l4proto tcp reject with tcp reset"),
            format!("{matched} reject with icmpv6 type port-unreachable"),
        ],
    }
}

/// The match for "to this node" that node ports need.
fn node_destinations(family: Family, node: &NodeRules) -> Vec<String> {
    if node.node_addresses.is_empty() {
        vec!["fib daddr type local".into()]
    } else {
        let list: Vec<String> = node.node_addresses.iter().map(|a| a.to_string()).collect();
        vec![format!(
            "{} daddr {{ {} }}",
            family_keyword(family),
            list.join(", ")
        )]
    }
}

/// A shard's dispatch chain `services`: one lookup for service addresses, one for node ports.
fn dispatch_rules(family: Family, node: &NodeRules) -> Vec<String> {
    let mut rules = vec![format!(
        "{} daddr . meta l4proto . th dport vmap @service-ips",
        family_keyword(family)
    )];
    for d in node_destinations(family, node) {
        rules.push(format!(
            "{d} meta l4proto . th dport vmap @service-nodeports"
        ));
    }
    rules
}

/// Chains in an order where every chain comes after the chains it refers to: endpoint chains,
/// then local, service, external, and the fixed ones last.
fn ordered(chains: &BTreeMap<String, Vec<String>>) -> Vec<(&String, &Vec<String>)> {
    let rank = |name: &str| match name.split('-').next() {
        Some("ep") => 0,
        Some("local") => 1,
        Some("svc") => 2,
        Some("ext") => 3,
        _ => 4,
    };
    let mut v: Vec<_> = chains.iter().collect();
    v.sort_by_key(|(n, _)| (rank(n), n.as_str()));
    v
}

fn affinity_decl(family: Family, name: &str, secs: u32) -> String {
    format!(
        "set {name} {{ type {}; flags dynamic,timeout; timeout {secs}s; }}",
        addr_type(family)
    )
}

/// `verb element` lines for `elements` of `set`, one per table they live in. `key_only`: a
/// map element is deleted by its key alone (its table still follows from the whole element).
fn push_elements(
    out: &mut String,
    family: Family,
    verb: &str,
    set: &str,
    elements: &BTreeSet<String>,
    key_only: bool,
) {
    let mut by_table: BTreeMap<(Option<u8>, String), Vec<&str>> = BTreeMap::new();
    for e in elements {
        let (shard, into, whole) = place_element(set, e);
        let shown = if key_only {
            whole.split(" : ").next().unwrap_or(whole)
        } else {
            whole
        };
        by_table.entry((shard, into)).or_default().push(shown);
    }
    for ((shard, into), list) in by_table {
        let _ = writeln!(
            out,
            "{verb} element {} {} {into} {{ {} }}",
            family_keyword(family),
            table_name(shard),
            list.join(", ")
        );
    }
}

/// The script that replaces every table of `family` (the first sync, resyncs, repairs), in
/// one transaction.
pub fn full_script(family: Family, rs: &Ruleset, node: &NodeRules) -> String {
    let mut s = String::new();
    let ip = family_keyword(family);
    let ordered = ordered(&rs.chains);
    let mut tables: Vec<(String, Option<u8>)> = vec![(TABLE.to_string(), None)];
    tables.extend((0..SHARDS).map(|k| (shard_table(k), Some(k))));
    for (table, shard) in tables {
        // Declared first so that the delete succeeds on a fresh node too; one transaction.
        let _ = writeln!(
            s,
            "table {ip} {table}\ndelete table {ip} {table}\ntable {ip} {table} {{"
        );
        let decls = if shard.is_some() {
            &MAPS[..]
        } else {
            &SETS[..]
        };
        for (_, decl) in decls {
            let _ = writeln!(s, "  {}", declaration(decl, family));
        }
        for name in rs.chains.keys() {
            if is_shared(name)
                && shard_of_name(name) == shard
                && let Some(n) = spread_count(name)
            {
                let _ = writeln!(s, "  {}", spread_map_decl(family, n));
            }
        }
        for (name, secs) in &rs.affinity_sets {
            if shard_of_name(name) == shard {
                let _ = writeln!(s, "  {}", affinity_decl(family, name, *secs));
            }
        }
        for (name, rules) in &ordered {
            if shard_of_name(name) != shard {
                continue;
            }
            let _ = writeln!(s, "  chain {name} {{");
            for r in rules.iter() {
                let _ = writeln!(s, "    {r}");
            }
            let _ = writeln!(s, "  }}");
        }
        let base: &[(&str, &str, &str)] = if shard.is_some() {
            let _ = writeln!(s, "  chain services {{");
            for r in dispatch_rules(family, node) {
                let _ = writeln!(s, "    {r}");
            }
            let _ = writeln!(s, "  }}");
            &SHARD_BASE_CHAINS
        } else {
            &BASE_CHAINS
        };
        for (name, hook, rule) in base {
            let _ = writeln!(s, "  chain {name} {{\n    {hook}\n    {rule}\n  }}");
        }
        let _ = writeln!(s, "}}");
    }
    for (set, elements) in &rs.elements {
        push_elements(&mut s, family, "add", set, elements, false);
    }
    s
}

/// The script that turns `prev` into `next`, and what it writes.
pub fn delta_script(family: Family, prev: &Ruleset, next: &Ruleset) -> (String, SyncStats) {
    let mut s = String::new();
    let ip = family_keyword(family);
    let mut stats = SyncStats {
        rules_total: next.rules_total(),
        ..Default::default()
    };
    for (name, secs) in &next.affinity_sets {
        // Named by endpoint and timeout (see `spread`): a set never changes, it is new or gone.
        if !prev.affinity_sets.contains_key(name) {
            let _ = writeln!(
                s,
                "add {}",
                affinity_decl(family, name, *secs).replacen(
                    "set ",
                    &format!("set {ip} {} ", table_of(name)),
                    1
                )
            );
        }
    }
    for (name, rules) in ordered(&next.chains) {
        match prev.chains.get(name) {
            Some(old) if old == rules => continue,
            Some(_) => {
                let _ = writeln!(s, "flush chain {ip} {} {name}", table_of(name));
            }
            None => {
                // A new spread chain's map goes in the same transaction, before the rule that
                // names it (see `spread_map`).
                if is_shared(name)
                    && let Some(n) = spread_count(name)
                {
                    let _ = writeln!(
                        s,
                        "add {}",
                        spread_map_decl(family, n).replacen(
                            "map ",
                            &format!("map {ip} {} ", table_of(name)),
                            1
                        )
                    );
                }
                let _ = writeln!(s, "add chain {ip} {} {name}", table_of(name));
            }
        }
        let table = table_of(name);
        for r in rules {
            let _ = writeln!(s, "add rule {ip} {table} {name} {r}");
        }
        stats.chains_written += 1;
        stats.rules_written += rules.len();
    }
    let empty = BTreeSet::new();
    for (set, elements) in &next.elements {
        let old = prev.elements.get(set).unwrap_or(&empty);
        let gone: BTreeSet<String> = old.difference(elements).cloned().collect();
        let new: BTreeSet<String> = elements.difference(old).cloned().collect();
        push_elements(&mut s, family, "delete", set, &gone, true);
        push_elements(&mut s, family, "add", set, &new, false);
    }
    // Last, once nothing refers to them any more.
    for (name, _) in ordered(&prev.chains).into_iter().rev() {
        if !next.chains.contains_key(name) {
            let _ = writeln!(s, "delete chain {ip} {} {name}", table_of(name));
            if is_shared(name)
                && let Some(n) = spread_count(name)
            {
                let _ = writeln!(s, "delete map {ip} {} {}", table_of(name), spread_map(n));
            }
            stats.chains_deleted += 1;
        }
    }
    for name in prev.affinity_sets.keys() {
        if !next.affinity_sets.contains_key(name) {
            let _ = writeln!(s, "delete set {ip} {} {name}", table_of(name));
        }
    }
    (s, stats)
}

/// `family`'s tables from scratch: the script that replaces them, and the per-port record.
fn plan_full(
    family: Family,
    ports: &[ServicePort],
    node: &NodeRules,
) -> (String, SyncStats, Applied) {
    let mut applied = Applied {
        family,
        node: node.clone(),
        ports: HashMap::with_capacity(ports.len()),
        elements: HashMap::new(),
        rules_total: 0,
    };
    let mut desired = fixed(family, node);
    let mut ignored = (Ruleset::default(), Ruleset::default());
    for sp in ports {
        let share = compile_port(sp, node);
        applied.count(&share, true, &mut ignored.0, &mut ignored.1);
        desired.merge(share.clone());
        applied.ports.insert(sp.name.clone(), (sp.clone(), share));
    }
    applied.rules_total = desired.rules_total();
    let stats = SyncStats {
        chains_written: desired.chains.len()
            + BASE_CHAINS.len()
            + usize::from(SHARDS) * (SHARD_BASE_CHAINS.len() + 1),
        chains_deleted: 0,
        rules_written: applied.rules_total,
        rules_total: applied.rules_total,
    };
    (full_script(family, &desired, node), stats, applied)
}

/// Only the ports that changed since `applied`: their old shares against their new ones (the
/// same script a diff of the two whole tables gives).
fn plan_changes(
    mut applied: Applied,
    ports: &[ServicePort],
    node: &NodeRules,
) -> (String, SyncStats, Applied) {
    let (mut before, mut after) = (Ruleset::with_every_set(), Ruleset::with_every_set());
    let mut seen: HashSet<&PortName> = HashSet::with_capacity(ports.len());
    let mut changed: Vec<(ServicePort, Option<Ruleset>, Ruleset)> = Vec::new();
    for sp in ports {
        if !seen.insert(&sp.name) {
            // Two ports of one name: the per-port record cannot hold them; start over.
            return plan_full(applied.family, ports, node);
        }
        if applied
            .ports
            .get(&sp.name)
            .is_some_and(|(old, _)| old == sp)
        {
            continue;
        }
        let old_share = applied.ports.remove(&sp.name).map(|(_, share)| share);
        changed.push((sp.clone(), old_share, compile_port(sp, node)));
    }
    let gone: Vec<PortName> = applied
        .ports
        .keys()
        .filter(|name| !seen.contains(name))
        .cloned()
        .collect();
    // Elements: counted out for every old share first, then in for every new one, so that a
    // pair moving from one port to another is neither deleted nor added.
    let (mut vanished, mut appeared) = (Ruleset::default(), Ruleset::default());
    let mut old_shares = Vec::new();
    for name in gone {
        if let Some((_, share)) = applied.ports.remove(&name) {
            old_shares.push(share);
        }
    }
    for (_, old, _) in &mut changed {
        if let Some(share) = old.take() {
            old_shares.push(share);
        }
    }
    let own = |share: &Ruleset| -> Vec<(String, Vec<String>)> {
        share
            .chains
            .iter()
            .filter(|(n, _)| !is_shared(n))
            .map(|(n, r)| (n.clone(), r.clone()))
            .collect()
    };
    for share in &old_shares {
        applied.count(share, false, &mut appeared, &mut vanished);
        applied.rules_total = applied.rules_total.saturating_sub(share.own_rules());
        before.chains.extend(own(share));
        before.affinity_sets.extend(share.affinity_sets.clone());
    }
    for (sp, _, share) in changed {
        applied.count(&share, true, &mut appeared, &mut vanished);
        applied.rules_total += share.own_rules();
        after.chains.extend(own(&share));
        after.affinity_sets.extend(share.affinity_sets.clone());
        applied.ports.insert(sp.name.clone(), (sp, share));
    }
    // An element or shared chain that vanished and appeared again (it moved between ports) is
    // in both and so in neither of the diff's lists.
    for (set, elements) in vanished.elements {
        before.elements.entry(set).or_default().extend(elements);
    }
    for (set, elements) in appeared.elements {
        after.elements.entry(set).or_default().extend(elements);
    }
    // A shared chain whose last holder left and whose new holder came in the same sync (an
    // endpoint replaced by another, the count unchanged) stays as it is in the kernel.
    appeared
        .chains
        .retain(|name, _| vanished.chains.remove(name).is_none());
    // A new shared spread chain goes in with its map (see `spread_map`), as a change too.
    applied.rules_total = applied
        .rules_total
        .saturating_sub(vanished.chains.values().map(Vec::len).sum());
    applied.rules_total += appeared.chains.values().map(Vec::len).sum::<usize>();
    before.chains.extend(vanished.chains);
    after.chains.extend(appeared.chains);
    let (script, mut stats) = delta_script(applied.family, &before, &after);
    stats.rules_total = applied.rules_total;
    (script, stats, applied)
}

/// The key under which [`Applied`] counts the shares holding a shared chain.
const SHARED_CHAIN: &str = "#chain";

/// Errors of an nftables sync.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("nft: {0}")]
    Nft(#[from] trellis_net::Error),
}

/// What is in the kernel, per service port: each port's own share as it was compiled, and how
/// many shares hold each element (hairpin pairs may be shared).
struct Applied {
    family: Family,
    node: NodeRules,
    ports: HashMap<PortName, (ServicePort, Ruleset)>,
    elements: HashMap<(&'static str, String), usize>,
    rules_total: usize,
}

impl Applied {
    /// Counts `share`'s elements in (`+1`) or out (`-1`); the elements whose presence in the
    /// table changed go to `appeared` or `vanished`.
    fn count(&mut self, share: &Ruleset, up: bool, appeared: &mut Ruleset, vanished: &mut Ruleset) {
        // Shared chains likewise (their rules follow from the name, the family and the node,
        // which every share of one record has in common).
        for (name, rules) in share.chains.iter().filter(|(n, _)| is_shared(n)) {
            let n = self
                .elements
                .entry((SHARED_CHAIN, name.clone()))
                .or_default();
            if up {
                *n += 1;
                if *n == 1 {
                    appeared.chains.insert(name.clone(), rules.clone());
                }
            } else {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.elements.remove(&(SHARED_CHAIN, name.clone()));
                    vanished.chains.insert(name.clone(), rules.clone());
                }
            }
        }
        for (set, elements) in &share.elements {
            for e in elements {
                let n = self.elements.entry((set, e.clone())).or_default();
                if up {
                    *n += 1;
                    if *n == 1 {
                        appeared.elements.entry(set).or_default().insert(e.clone());
                    }
                } else {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.elements.remove(&(*set, e.clone()));
                        vanished.elements.entry(set).or_default().insert(e.clone());
                    }
                }
            }
        }
    }
}

/// Keeps what was last written, to send only changes, and compiles only the service ports
/// that changed: a sync costs what changed, not the table (10,000 Services compile in about a
/// second in a debug build). Changes go through one long-lived `nft` ([`NftSession`]); whole
/// tables, one-shot. Both families' tables change in one transaction per sync.
pub struct Syncer {
    session: NftSession,
    /// What was written to the `ip` tables and to the `ip6` ones.
    applied: [Option<Applied>; 2],
    /// Whether the `ip6` tables are written (false: the host has no IPv6).
    ipv6: bool,
    /// Known since the last full sync: there are no `ip6` tables of ours. Without IPv6
    /// service ports the proxy keeps none: each `nft` command reads every table into its
    /// cache first, so 17 empty tables would slow every IPv4 change.
    v6_absent: bool,
    /// When writing the `ip6` tables last failed (None: the last attempt succeeded). While
    /// set, IPv4 is written in a transaction of its own, and IPv6 tried after it at most
    /// every [`V6_RETRY_AFTER`] (or the syncer's own wait).
    v6_failed_at: Option<std::time::Instant>,
    v6_failures: u64,
    v6_error: Option<String>,
    v6_retry_after: std::time::Duration,
}

/// How long after a failed IPv6 write the next is tried.
pub const V6_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// The script that removes every table of `family` the proxy owns (missing ones too).
fn removal_script(family: Family) -> String {
    let ip = family_keyword(family);
    tables()
        .iter()
        .map(|t| format!("table {ip} {t}\ndelete table {ip} {t}\n"))
        .collect()
}

impl Syncer {
    pub fn new(nft: Nft) -> Syncer {
        Syncer::with_session(NftSession::new(nft))
    }

    /// A syncer writing through `session` (tests give it other bounds or commands).
    pub fn with_session(session: NftSession) -> Syncer {
        Syncer {
            session,
            applied: [None, None],
            ipv6: true,
            v6_absent: false,
            v6_failed_at: None,
            v6_failures: 0,
            v6_error: None,
            v6_retry_after: V6_RETRY_AFTER,
        }
    }

    /// Writes only the `ip` tables: IPv6 service ports are ignored, and cleanup leaves the
    /// `ip6` family alone (for a host without IPv6, where nft cannot make `ip6` tables).
    pub fn ipv4_only(mut self) -> Syncer {
        self.ipv6 = false;
        self
    }

    /// Another wait than [`V6_RETRY_AFTER`] before IPv6 is tried again after a failure.
    pub fn v6_retry_after(mut self, after: std::time::Duration) -> Syncer {
        self.v6_retry_after = after;
        self
    }

    /// The families whose tables this syncer writes.
    pub fn families(&self) -> &'static [Family] {
        if self.ipv6 {
            &[Family::V4, Family::V6]
        } else {
            &[Family::V4]
        }
    }

    /// How many changes were applied one-shot because the long-lived `nft` broke.
    pub fn fallbacks(&self) -> u64 {
        self.session.fallbacks()
    }

    /// How many long-lived `nft` processes were started.
    pub fn sessions_started(&self) -> u64 {
        self.session.sessions_started()
    }

    /// The long-lived `nft`'s process id, while one runs.
    pub async fn session_pid(&self) -> Option<u32> {
        self.session.pid().await
    }

    /// Forgets what was written: the next sync replaces the whole tables.
    pub fn invalidate(&mut self) {
        self.applied = [None, None];
        self.v6_absent = false;
    }

    /// Brings the kernel to what the IPv4 service ports `v4` and the IPv6 ones `v6` need on
    /// the node (each with the node's rules of that family), in one transaction. Without IPv6
    /// service ports the `ip6` tables are removed (once) rather than kept empty.
    pub async fn sync(
        &mut self,
        v4: (&[ServicePort], &NodeRules),
        v6: (&[ServicePort], &NodeRules),
    ) -> Result<SyncStats, SyncError> {
        // One script per family: joined into one transaction, or, when the IPv6 part failed
        // before (see below), IPv4 alone and IPv6 after it in a transaction of its own.
        let mut scripts = [String::new(), String::new()];
        let mut stats = SyncStats::default();
        let mut now: [Option<Applied>; 2] = [None, None];
        let mut v6_absent = false;
        for (i, (family, (ports, node))) in
            [(Family::V4, v4), (Family::V6, v6)].into_iter().enumerate()
        {
            if family == Family::V6 {
                if !self.ipv6 {
                    continue;
                }
                if ports.is_empty() {
                    if !self.v6_absent {
                        scripts[i].push_str(&removal_script(Family::V6));
                    }
                    self.applied[i] = None;
                    v6_absent = true;
                    continue;
                }
                if self
                    .v6_failed_at
                    .is_some_and(|t| t.elapsed() < self.v6_retry_after)
                {
                    // Failed recently: IPv4 goes on alone; IPv6 is tried again later.
                    self.applied[i] = None;
                    continue;
                }
            }
            let (part, s, applied) = match self.applied[i].take() {
                Some(applied) if applied.node == *node => plan_changes(applied, ports, node),
                _ => plan_full(family, ports, node),
            };
            scripts[i] = part;
            stats.chains_written += s.chains_written;
            stats.chains_deleted += s.chains_deleted;
            stats.rules_written += s.rules_written;
            stats.rules_total += s.rules_total;
            // Two ports of one name (the model should not make them) cannot be recorded per
            // port: then every sync writes the whole tables.
            now[i] = (applied.ports.len() == ports.len()).then_some(applied);
        }
        let [v4_script, v6_script] = scripts;
        if self.v6_failed_at.is_none() || v6_script.is_empty() {
            let joint = format!("{v4_script}{v6_script}");
            match self.apply(&joint).await {
                Ok(()) => {
                    self.applied = now;
                    self.v6_absent = v6_absent;
                    if !v6_script.is_empty() {
                        self.v6_failed_at = None;
                    }
                    return Ok(stats);
                }
                // Refused whole (nothing applied): without an IPv6 part there is nothing
                // else to try, and the next sync replaces the tables.
                Err(e) if v6_script.is_empty() => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, "the joint transaction failed; IPv4 alone");
                }
            }
        }
        // IPv4 alone: an IPv6 failure (no IPv6 in the kernel, a rule it refuses) must not
        // keep IPv4 Services from working.
        if !v4_script.is_empty() {
            self.apply(&v4_script).await?;
        }
        self.applied[0] = now[0].take();
        let v6_error = match self.apply(&v6_script).await {
            Ok(()) => None,
            Err(e) => Some(e.to_string()),
        };
        match v6_error {
            None => {
                self.applied[1] = now[1].take();
                self.v6_absent = v6_absent;
                self.v6_failed_at = None;
            }
            Some(e) => {
                // Nothing of it applied: the next attempt writes the ip6 tables whole.
                self.applied[1] = None;
                self.v6_absent = false;
                self.v6_failed_at = Some(std::time::Instant::now());
                self.v6_failures += 1;
                self.v6_error = Some(e);
            }
        }
        Ok(stats)
    }

    /// Applies one transaction (nothing to do for an empty script).
    async fn apply(&self, script: &str) -> Result<(), SyncError> {
        if script.is_empty() {
            return Ok(());
        }
        match self.session.apply(script).await {
            Ok(Delivery::OneShot {
                session_error: Some(e),
            }) => {
                tracing::warn!(error = %e, "the long-lived nft broke; applied one-shot");
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// How many syncs could not write the IPv6 tables (IPv4 was written without them).
    pub fn v6_failures(&self) -> u64 {
        self.v6_failures
    }

    /// The error of the latest IPv6 failure not yet taken (for the log).
    pub fn take_v6_error(&mut self) -> Option<String> {
        self.v6_error.take()
    }

    /// Removes the proxy's tables of both families (`trellis proxy --cleanup`), in one
    /// transaction.
    pub async fn cleanup(&mut self) -> Result<(), SyncError> {
        let script: String = self.families().iter().map(|f| removal_script(*f)).collect();
        self.session.nft().apply(&script).await?;
        self.invalidate();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::fixtures::{ep, node, sp};

    #[test]
    fn three_endpoints_get_a_third_each_through_one_map_lookup() {
        let s = sp(vec![
            ep("10.244.1.2", true, false),
            ep("10.244.1.3", true, false),
            ep("10.244.1.4", true, false),
        ]);
        let rs = compile(Family::V4, std::slice::from_ref(&s), &node());
        // No chain of its own: the shard's shared chain for three endpoints.
        assert!(!rs.chains.contains_key(&svc_chain(&s)));
        let shard = shard_of_key(&port_key(&s));
        let chain = spread_chain(shard, 3);
        assert_eq!(
            rs.chains[&chain],
            vec![
                "ip saddr != 10.244.0.0/16 meta mark set meta mark | 0x4000".to_string(),
                "dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 3 map @endpoints-3"
                    .into(),
            ]
        );
        assert_eq!(table_of(&chain), shard_table(shard));
        assert!(
            rs.elements["service-ips"].contains(&format!("10.96.0.20 . tcp . 80 : goto {chain}"))
        );
        let eps: Vec<&String> = rs.elements["endpoints"].iter().collect();
        let want: Vec<String> = (0..3)
            .map(|i| {
                format!(
                    "@{shard:02}-3 10.96.0.20 . tcp . 80 . {i} : 10.244.1.{} . 8080",
                    i + 2
                )
            })
            .collect();
        assert_eq!(eps, want.iter().collect::<Vec<_>>());
        let (table, map, shown) = place_element("endpoints", eps[0]);
        assert_eq!(table_name(table), shard_table(shard));
        assert_eq!(map, "endpoints-3");
        assert_eq!(shown, "10.96.0.20 . tcp . 80 . 0 : 10.244.1.2 . 8080");
        assert!(rs.elements["no-endpoint-services"].is_empty());
        assert!(
            rs.elements["hairpin"].is_empty(),
            "no hairpin pairs for other nodes' endpoints"
        );
        let mut local = s.clone();
        local.endpoints[1].local = true;
        let rs = compile(Family::V4, std::slice::from_ref(&local), &node());
        let pairs: Vec<&String> = rs.elements["hairpin"].iter().collect();
        assert_eq!(pairs, ["10.244.1.3 . 10.244.1.3"]);
    }

    /// An IPv6 service port with a node port and a node with an IPv6 node-port address.
    fn v6_port(eps: Vec<Endpoint>) -> (ServicePort, NodeRules) {
        let mut s = sp(eps);
        s.cluster_ip = "fd00:96::20".parse().unwrap();
        s.node_port = Some(30080);
        let node = NodeRules {
            cluster_cidr: Some("fd00:244::/64".parse().unwrap()),
            node_addresses: vec!["fd00:198::1".parse().unwrap()],
        };
        (s, node)
    }

    #[test]
    fn an_ipv6_service_gets_ip6_matches_bracketed_dnat_and_node_ports_on_v6_addresses() {
        let (s, n) = v6_port(vec![
            ep("fd00:244::2", true, true),
            ep("fd00:244::3", true, false),
        ]);
        let rs = compile(Family::V6, std::slice::from_ref(&s), &n);
        let shard = shard_of_key(&port_key(&s));
        let chain = spread_chain(shard, 2);
        assert_eq!(
            rs.chains[&chain],
            vec![
                "ip6 saddr != fd00:244::/64 meta mark set meta mark | 0x4000".to_string(),
                "dnat ip6 to ip6 daddr . meta l4proto . th dport . numgen random mod 2 map @endpoints-2"
                    .into(),
            ]
        );
        assert!(rs.elements["endpoints"].contains(&format!(
            "@{shard:02}-2 fd00:96::20 . tcp . 80 . 1 : fd00:244::3 . 8080"
        )));
        assert!(
            rs.elements["service-ips"].contains(&format!("fd00:96::20 . tcp . 80 : goto {chain}"))
        );
        // The node port's own spread, with rules of its chain.
        assert_eq!(
            rs.chains[&ext_chain(&s)][1..],
            [
                "numgen random mod 2 == 0 meta l4proto tcp dnat ip6 to [fd00:244::2]:8080"
                    .to_string(),
                "meta l4proto tcp dnat ip6 to [fd00:244::3]:8080".into(),
            ]
        );
        assert!(
            rs.elements["service-nodeports"]
                .contains(&format!("tcp . 30080 : goto {}", ext_chain(&s)))
        );
        assert_eq!(
            rs.chains[&ext_chain(&s)][0],
            "meta mark set meta mark | 0x4000",
            "externalTrafficPolicy Cluster masquerades by the mark"
        );
        assert!(rs.elements["hairpin"].contains("fd00:244::2 . fd00:244::2"));
        assert_eq!(
            rs.chains["masquerading"][1],
            "ct status dnat ip6 saddr . ip6 daddr @hairpin masquerade fully-random"
        );
        assert_eq!(
            dispatch_rules(Family::V6, &n),
            vec![
                "ip6 daddr . meta l4proto . th dport vmap @service-ips".to_string(),
                "ip6 daddr { fd00:198::1 } meta l4proto . th dport vmap @service-nodeports".into(),
            ]
        );
        // Whole tables of family ip6, with IPv6 sets and maps, and nothing of IPv4.
        let script = full_script(Family::V6, &rs, &n);
        assert!(script.starts_with("table ip6 trellis-proxy\ndelete table ip6 trellis-proxy\n"));
        assert!(
            script.contains(
                "map service-ips { type ipv6_addr . inet_proto . inet_service : verdict; }"
            )
        );
        assert!(script.contains("set hairpin { type ipv6_addr . ipv6_addr; }"));
        assert!(
            !script.contains("ipv4_addr") && !script.contains("table ip "),
            "{script}"
        );
        assert!(script.contains(&format!(
            "add element ip6 {} service-ips {{ fd00:96::20 . tcp . 80 : goto {chain} }}",
            table_of(&chain),
        )));
        assert!(script.contains(
            "map endpoints-2 { typeof ip6 daddr . meta l4proto . th dport . numgen random mod 2 : ip6 daddr . th dport; }"
        ));
        assert!(script.contains(&format!(
            "add element ip6 {} endpoints-2 {{ fd00:96::20 . tcp . 80 . 0 : fd00:244::2 . 8080, fd00:96::20 . tcp . 80 . 1 : fd00:244::3 . 8080 }}",
            shard_table(shard)
        )));
        // A change is written to the ip6 tables only.
        let mut after = s.clone();
        after.endpoints.pop();
        let (delta, stats) = delta_script(
            Family::V6,
            &rs,
            &compile(Family::V6, std::slice::from_ref(&after), &n),
        );
        assert_eq!(
            stats.chains_written, 2,
            "the spread chain for one endpoint and the node-port chain: {delta}"
        );
        assert_eq!(
            stats.chains_deleted, 1,
            "the one for two endpoints: {delta}"
        );
        assert!(
            delta.lines().all(|l| l.split(' ').nth(2) == Some("ip6")),
            "{delta}"
        );
    }

    #[test]
    fn an_ipv6_port_without_endpoints_is_refused_tcp_by_a_reset_and_udp_by_icmpv6() {
        let (mut s, n) = v6_port(vec![]);
        let rs = compile(Family::V6, std::slice::from_ref(&s), &n);
        assert!(rs.elements["no-endpoint-services"].contains("fd00:96::20 . tcp . 80"));
        assert!(rs.elements["no-endpoint-nodeports"].contains("tcp . 30080"));
        assert!(rs.elements["service-ips"].is_empty());
        let reject = &rs.chains["reject-services"];
        let services = "ip6 daddr . meta l4proto . th dport @no-endpoint-services";
        let nodeports = "ip6 daddr { fd00:198::1 } meta l4proto . th dport @no-endpoint-nodeports";
        assert_eq!(
            reject,
            &vec![
                format!("{services} meta l4proto tcp reject with tcp reset"),
                format!("{services} reject with icmpv6 type port-unreachable"),
                "ip6 daddr . meta l4proto . th dport @no-local-endpoint-services drop".into(),
                format!("{nodeports} meta l4proto tcp reject with tcp reset"),
                format!("{nodeports} reject with icmpv6 type port-unreachable"),
                "ip6 daddr { fd00:198::1 } meta l4proto . th dport @no-local-endpoint-nodeports drop"
                    .into(),
            ]
        );
        // UDP has no reset: the set's element carries the protocol, the ICMPv6 rule refuses it.
        s.protocol = crate::model::Protocol::Udp;
        let rs = compile(Family::V6, std::slice::from_ref(&s), &n);
        assert!(rs.elements["no-endpoint-services"].contains("fd00:96::20 . udp . 80"));
        // IPv4 keeps ICMP port unreachable for every protocol (nft's `reject`).
        let v4 = compile(Family::V4, &[], &node());
        assert_eq!(
            v4.chains["reject-services"][0],
            "ip daddr . meta l4proto . th dport @no-endpoint-services reject"
        );
    }

    #[test]
    fn ipv6_affinity_and_local_policy_use_ip6_addresses() {
        let (mut s, n) = v6_port(vec![
            ep("fd00:244::2", true, true),
            ep("fd00:244::3", true, false),
        ]);
        s.affinity = Some(60);
        s.external_local = true;
        let rs = compile(Family::V6, std::slice::from_ref(&s), &n);
        let x = &rs.chains[&ext_chain(&s)];
        assert!(x.contains(&format!("ip6 saddr fd00:244::/64 jump {}", svc_chain(&s))));
        let l = &rs.chains[&local_chain(&s)];
        assert!(l[0].starts_with("ip6 saddr @aff-"), "{l:?}");
        let ep_chain = l.last().unwrap().trim_start_matches("goto ");
        assert!(rs.chains[ep_chain][0].ends_with("{ ip6 saddr }"));
        assert_eq!(
            rs.chains[ep_chain][1],
            "meta l4proto tcp dnat ip6 to [fd00:244::2]:8080"
        );
        let script = full_script(Family::V6, &rs, &n);
        assert!(script.contains("type ipv6_addr; flags dynamic,timeout; timeout 60s;"));
    }

    #[test]
    fn no_endpoints_is_rejected_not_dnated() {
        let s = sp(vec![ep("10.244.1.2", false, false)]);
        let rs = compile(Family::V4, std::slice::from_ref(&s), &node());
        assert!(rs.elements["service-ips"].is_empty());
        assert!(rs.elements["no-endpoint-services"].contains("10.96.0.20 . tcp . 80"));
        assert!(!rs.chains.contains_key(&svc_chain(&s)));
    }

    #[test]
    fn affinity_remembers_the_client_per_endpoint() {
        let mut s = sp(vec![
            ep("10.244.1.2", true, false),
            ep("10.244.1.3", true, false),
        ]);
        s.affinity = Some(600);
        let rs = compile(Family::V4, std::slice::from_ref(&s), &node());
        assert_eq!(rs.affinity_sets.len(), 2);
        assert!(rs.affinity_sets.values().all(|t| *t == 600));
        let c = &rs.chains[&svc_chain(&s)];
        assert!(c[1].starts_with("ip saddr @aff-") && c[1].contains(" goto ep-"));
        assert!(c[3].starts_with("numgen random mod 2 == 0 goto ep-"));
        let ep_chain = c.last().unwrap().trim_start_matches("goto ");
        assert!(rs.chains[ep_chain][0].starts_with("update @aff-"));
    }

    #[test]
    fn external_local_without_local_endpoints_drops_node_port_traffic() {
        let mut s = sp(vec![ep("10.244.2.2", true, false)]);
        s.node_port = Some(30080);
        s.external_local = true;
        let rs = compile(Family::V4, std::slice::from_ref(&s), &node());
        assert!(rs.elements["no-local-endpoint-nodeports"].contains("tcp . 30080"));
        let x = &rs.chains[&ext_chain(&s)];
        assert!(
            x.iter()
                .any(|r| r == &format!("ip saddr 10.244.0.0/16 jump {}", svc_chain(&s)))
        );
        assert!(rs.chains[&local_chain(&s)].is_empty());
    }

    #[test]
    fn load_balancer_addresses_go_where_the_node_port_goes() {
        let mut s = sp(vec![ep("10.244.1.2", true, false)]);
        s.node_port = Some(30080);
        s.load_balancer_ips = vec!["203.0.113.1".parse().unwrap()];
        let rs = compile(Family::V4, std::slice::from_ref(&s), &node());
        let x = ext_chain(&s);
        assert!(rs.elements["service-ips"].contains(&format!("203.0.113.1 . tcp . 80 : goto {x}")));
        assert!(rs.elements["service-nodeports"].contains(&format!("tcp . 30080 : goto {x}")));
        // Without endpoints the address is refused, not black-holed.
        s.endpoints.clear();
        let rs = compile(Family::V4, std::slice::from_ref(&s), &node());
        assert!(rs.elements["no-endpoint-services"].contains("203.0.113.1 . tcp . 80"));
        assert!(rs.elements["no-endpoint-nodeports"].contains("tcp . 30080"));
        // Local policy, no endpoint on this node: dropped here (the health check steers away).
        let mut s = sp(vec![ep("10.244.1.2", true, false)]);
        s.load_balancer_ips = vec!["203.0.113.1".parse().unwrap()];
        s.external_local = true;
        let rs = compile(Family::V4, std::slice::from_ref(&s), &node());
        assert!(rs.elements["no-local-endpoint-services"].contains("203.0.113.1 . tcp . 80"));
    }

    #[test]
    fn one_endpoint_change_writes_no_chain_and_four_elements() {
        let a = sp(vec![
            ep("10.244.1.2", true, true),
            ep("10.244.1.3", true, true),
        ]);
        let mut other = sp(vec![ep("10.244.9.9", true, false)]);
        other.name.service = "other".into();
        other.cluster_ip = "10.96.0.21".parse().unwrap();
        let before = compile(Family::V4, &[a.clone(), other.clone()], &node());
        let mut b = a.clone();
        b.endpoints[1] = ep("10.244.1.4", true, true);
        let after = compile(Family::V4, &[b, other], &node());
        let (script, stats) = delta_script(Family::V4, &before, &after);
        assert_eq!(stats.chains_written, 0, "{script}");
        assert_eq!(stats.chains_deleted, 0);
        let shard = shard_table(shard_of_key(&port_key(&a)));
        assert!(script.contains(&format!(
            "delete element ip {shard} endpoints-2 {{ 10.96.0.20 . tcp . 80 . 1 }}"
        )));
        assert!(script.contains(&format!(
            "add element ip {shard} endpoints-2 {{ 10.96.0.20 . tcp . 80 . 1 : 10.244.1.4 . 8080 }}"
        )));
        assert!(
            script.find(&format!("delete element ip {shard} endpoints-2"))
                < script.find(&format!("add element ip {shard} endpoints-2")),
            "{script}"
        );
        assert_eq!(script.lines().count(), 4, "{script}");
        assert!(
            script.contains("delete element ip trellis-proxy hairpin { 10.244.1.3 . 10.244.1.3 }")
        );
        assert!(
            script.contains("add element ip trellis-proxy hairpin { 10.244.1.4 . 10.244.1.4 }")
        );
        assert!(!script.contains("10.244.9.9"));
        let (nothing, _) = delta_script(Family::V4, &after, &after);
        assert!(nothing.is_empty());
    }

    #[test]
    fn a_removed_service_loses_its_element_before_its_chain() {
        let a = sp(vec![ep("10.244.1.2", true, false)]);
        let before = compile(Family::V4, std::slice::from_ref(&a), &node());
        let after = compile(Family::V4, &[], &node());
        let (script, stats) = delta_script(Family::V4, &before, &after);
        assert_eq!(stats.chains_deleted, 1);
        // Its (last user's) shared spread chain, after the element that leads to it.
        let chain = spread_chain(shard_of_key(&port_key(&a)), 1);
        let del_elem = script
            .find(&format!(
                "delete element ip {} service-ips {{ 10.96.0.20 . tcp . 80 }}",
                table_of(&chain)
            ))
            .unwrap();
        let del_chain = script
            .find(&format!("delete chain ip {} {chain}", table_of(&chain)))
            .unwrap();
        assert!(del_elem < del_chain, "{script}");
        // Its affinity twin has chains of its own, deleted the same way.
        let mut a = a;
        a.affinity = Some(60);
        let before = compile(Family::V4, std::slice::from_ref(&a), &node());
        let (script, _) = delta_script(Family::V4, &before, &after);
        let del_elem = script
            .find(&format!(
                "delete element ip {} service-ips {{ 10.96.0.20 . tcp . 80 }}",
                table_of(&svc_chain(&a))
            ))
            .unwrap();
        let del_chain = script
            .find(&format!(
                "delete chain ip {} {}",
                table_of(&svc_chain(&a)),
                svc_chain(&a)
            ))
            .unwrap();
        assert!(del_elem < del_chain, "{script}");
    }

    #[test]
    fn a_new_affinity_timeout_is_a_new_set_and_the_old_one_goes_after_its_rules() {
        let mut s = sp(vec![ep("10.244.1.2", true, false)]);
        s.affinity = Some(60);
        let before = compile(Family::V4, std::slice::from_ref(&s), &node());
        s.affinity = Some(90);
        let after = compile(Family::V4, std::slice::from_ref(&s), &node());
        let (old, new) = (
            before.affinity_sets.keys().next().unwrap().clone(),
            after.affinity_sets.keys().next().unwrap().clone(),
        );
        assert_ne!(old, new);
        let (script, _) = delta_script(Family::V4, &before, &after);
        let at = |needle: &str| {
            script
                .find(needle)
                .unwrap_or_else(|| panic!("{needle:?} not in {script}"))
        };
        let shard = table_of(&svc_chain(&s));
        assert_eq!(table_of(&new), shard, "a port's sets live with its chains");
        let added = at(&format!("add set ip {shard} {new} "));
        let rewritten = at(&format!(
            "add rule ip {shard} {} ip saddr @{new}",
            svc_chain(&s)
        ));
        let deleted = at(&format!("delete set ip {shard} {old}"));
        assert!(added < rewritten && rewritten < deleted, "{script}");
        // The kernel refuses to delete a set that rules still refer to (EBUSY): the old
        // set must never be flushed or deleted before the chains stop naming it.
        assert_eq!(script.matches(&old).count(), 1, "{script}");
    }

    /// A port `i` of the test's changing model, with endpoints drawn from a small pool of
    /// addresses so that hairpin pairs are shared between ports.
    fn numbered_port(i: u32, seed: u64) -> ServicePort {
        let mut s = sp(vec![]);
        s.name.service = format!("svc{i}");
        s.cluster_ip = std::net::Ipv4Addr::new(10, 96, 1, i as u8).into();
        let n = seed % 4;
        for k in 0..n {
            let last = ((seed >> (4 + k * 3)) % 6) as u8 + 2;
            s.endpoints.push(ep(
                &format!("10.244.1.{last}"),
                !(seed >> (20 + k)).is_multiple_of(5),
                (seed >> (30 + k)).is_multiple_of(2),
            ));
        }
        s.endpoints.dedup_by(|a, b| a.ip == b.ip);
        if (seed >> 40).is_multiple_of(3) {
            s.node_port = Some(30000 + i as u16);
        }
        if (seed >> 42).is_multiple_of(5) {
            s.load_balancer_ips = vec![std::net::Ipv4Addr::new(10, 0, 0, i as u8).into()];
        }
        s.external_local = (seed >> 44).is_multiple_of(2);
        s.internal_local = (seed >> 45).is_multiple_of(4);
        s.affinity = match (seed >> 46) % 4 {
            0 => Some(60),
            1 => Some(90),
            _ => None,
        };
        s
    }

    #[test]
    fn a_sync_of_changes_writes_what_a_diff_of_the_whole_tables_writes() {
        let node = node();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut ports: Vec<ServicePort> = (0..12).map(|i| numbered_port(i, next())).collect();
        let (_, _, mut applied) = plan_full(Family::V4, &ports, &node);
        for step in 0..500 {
            let prev = ports.clone();
            // Change one to three ports, add or remove one now and then.
            for _ in 0..(next() % 3 + 1) {
                let r = next();
                match r % 10 {
                    0 if ports.len() > 1 => {
                        ports.remove((r >> 8) as usize % ports.len());
                    }
                    1 => {
                        let i = (r >> 8) as u32 % 40;
                        if !ports.iter().any(|p| p.name.service == format!("svc{i}")) {
                            ports.push(numbered_port(i, next()));
                        }
                    }
                    _ => {
                        let at = (r >> 8) as usize % ports.len();
                        let i: u32 = ports[at].name.service[3..].parse().unwrap();
                        ports[at] = numbered_port(i, next());
                    }
                }
            }
            let (script, stats, now) = plan_changes(applied, &ports, &node);
            // A new spread chain too is a change (with its map), never the whole tables.
            assert!(!script.contains("delete table"), "step {step}: {script}");
            let (want, want_stats) = delta_script(
                Family::V4,
                &compile(Family::V4, &prev, &node),
                &compile(Family::V4, &ports, &node),
            );
            assert_eq!(script, want, "step {step}");
            assert_eq!(stats.rules_total, want_stats.rules_total, "step {step}");
            assert_eq!(
                stats.chains_written, want_stats.chains_written,
                "step {step}"
            );
            assert_eq!(
                stats.chains_deleted, want_stats.chains_deleted,
                "step {step}"
            );
            applied = now;
        }
        // And the record still adds up to the whole table.
        let mut whole = fixed(Family::V4, &node);
        for (_, share) in applied.ports.values() {
            whole.merge(share.clone());
        }
        assert_eq!(whole, compile(Family::V4, &ports, &node));
    }

    #[test]
    fn an_endpoint_replaced_with_the_count_unchanged_is_a_change_not_a_whole_rewrite() {
        let node = node();
        // The only port of its shard with one endpoint: its shared spread chain has one holder.
        let mut s = sp(vec![ep("10.244.1.2", true, false)]);
        let (_, _, applied) = plan_full(Family::V4, std::slice::from_ref(&s), &node);
        s.endpoints = vec![ep("10.244.1.3", true, false)];
        let (script, _, _) = plan_changes(applied, std::slice::from_ref(&s), &node);
        assert!(!script.contains("delete table"), "{script}");
        assert!(script.contains("10.244.1.3"), "{script}");
        assert!(
            script.contains("delete element ip trellis-proxy-svc-"),
            "the old element goes: {script}"
        );
    }

    #[test]
    fn a_new_endpoint_count_brings_its_map_before_its_rule_and_the_old_one_goes_after() {
        let node = node();
        let mut s = sp(vec![
            ep("10.244.1.2", true, false),
            ep("10.244.1.3", true, false),
        ]);
        let (_, _, applied) = plan_full(Family::V4, std::slice::from_ref(&s), &node);
        s.endpoints.push(ep("10.244.1.4", true, false));
        let (script, stats, _) = plan_changes(applied, std::slice::from_ref(&s), &node);
        assert!(!script.contains("delete table"), "{script}");
        assert_eq!((stats.chains_written, stats.chains_deleted), (1, 1));
        let shard = shard_of_key(&port_key(&s));
        let table = shard_table(shard);
        let at = |needle: &str| {
            script
                .find(needle)
                .unwrap_or_else(|| panic!("{needle:?} not in {script}"))
        };
        let map = at(&format!(
            "add map ip {table} endpoints-3 {{ typeof ip daddr . meta l4proto . th dport . numgen random mod 3 : ip daddr . th dport; }}"
        ));
        let chain = at(&format!("add chain ip {table} {}", spread_chain(shard, 3)));
        let rule = at("numgen random mod 3 map @endpoints-3");
        let elements = at(&format!("add element ip {table} endpoints-3 {{"));
        let dispatch = at(&format!(
            "add element ip {table} service-ips {{ 10.96.0.20 . tcp . 80 : goto {} }}",
            spread_chain(shard, 3)
        ));
        let old_elements = at(&format!("delete element ip {table} endpoints-2 {{"));
        let old_chain = at(&format!(
            "delete chain ip {table} {}",
            spread_chain(shard, 2)
        ));
        let old_map = at(&format!("delete map ip {table} endpoints-2\n"));
        assert!(map < chain && chain < rule && rule < elements && elements < dispatch);
        assert!(old_elements < old_chain && dispatch < old_chain && old_chain < old_map);
        // The whole tables declare each spread chain's map in its shard.
        let full = plan_full(Family::V4, std::slice::from_ref(&s), &node).0;
        let shard_at = full.find(&format!("table ip {table} {{")).unwrap();
        let decl = full
            .find("map endpoints-3 { typeof ip daddr . meta l4proto . th dport . numgen random mod 3 : ip daddr . th dport; }")
            .unwrap();
        assert!(shard_at < decl && decl < full.find("chain spread-").unwrap());
        assert_eq!(full.matches("map endpoints").count(), 1, "{full}");
    }

    #[test]
    fn ports_spread_over_the_shards_and_a_change_touches_one_shard_and_the_main_table() {
        let node = node();
        let ports: Vec<ServicePort> = (0..200)
            .map(|i| {
                let mut s = sp(vec![ep("10.244.1.2", true, true)]);
                s.name.service = format!("spread{i}");
                s.cluster_ip = std::net::Ipv4Addr::from(0x0a60_1000 + i).into();
                s.node_port = (i % 2 == 0).then_some(30000 + i as u16);
                s.affinity = (i % 3 == 0).then_some(60);
                s
            })
            .collect();
        let rs = compile(Family::V4, &ports, &node);
        let mut used = BTreeSet::new();
        for sp in &ports {
            let shard = shard_of_name(&svc_chain(sp)).unwrap();
            used.insert(shard);
            // Everything of one port lives in its shard: chains, affinity sets, map elements.
            let share = compile_port(sp, &node);
            for name in share.chains.keys().chain(share.affinity_sets.keys()) {
                assert_eq!(shard_of_name(name), Some(shard), "{name}");
            }
            for map in ["service-ips", "service-nodeports", "endpoints"] {
                for e in share.elements.get(map).into_iter().flatten() {
                    assert_eq!(table_of_element(map, e), shard_table(shard), "{e}");
                }
            }
        }
        assert_eq!(used.len(), usize::from(SHARDS), "200 ports use every shard");
        assert!(shard_of_name("reject-services").is_none());
        assert_eq!(
            table_of_element("hairpin", "10.244.1.2 . 10.244.1.2"),
            TABLE
        );
        // One endpoint replaced: the script names that port's shard and the main table only.
        let mut after = ports.clone();
        after[7].endpoints = vec![ep("10.244.1.9", true, true)];
        let (script, _) = delta_script(Family::V4, &rs, &compile(Family::V4, &after, &node));
        let want = table_of(&svc_chain(&ports[7]));
        let tables: BTreeSet<&str> = script.lines().filter_map(|l| l.split(' ').nth(3)).collect();
        assert_eq!(tables, BTreeSet::from([TABLE, want.as_str()]), "{script}");
    }

    #[test]
    fn a_sync_without_changes_writes_nothing() {
        let ports = vec![sp(vec![ep("10.244.1.2", true, false)])];
        let (full, _, applied) = plan_full(Family::V4, &ports, &node());
        assert!(full.starts_with("table ip trellis-proxy\ndelete table"));
        let (script, stats, _) = plan_changes(applied, &ports, &node());
        assert!(script.is_empty(), "{script}");
        assert_eq!(
            stats.rules_total,
            compile(Family::V4, &ports, &node()).rules_total()
        );
    }

    #[test]
    fn the_full_script_declares_callees_before_callers() {
        let mut s = sp(vec![ep("10.244.1.2", true, true)]);
        s.node_port = Some(30080);
        s.external_local = true;
        s.affinity = Some(60);
        let script = full_script(
            Family::V4,
            &compile(Family::V4, std::slice::from_ref(&s), &node()),
            &node(),
        );
        let at = |name: &str| script.find(&format!("chain {name} {{")).unwrap();
        let ep_chain = script
            .lines()
            .find(|l| l.trim_start().starts_with("chain ep-"))
            .unwrap()
            .trim()
            .trim_start_matches("chain ")
            .trim_end_matches(" {")
            .to_string();
        assert!(at(&ep_chain) < at(&local_chain(&s)));
        assert!(at(&local_chain(&s)) < at(&svc_chain(&s)));
        assert!(at(&svc_chain(&s)) < at(&ext_chain(&s)));
        let shard = table_of(&svc_chain(&s));
        let shard_at = script.find(&format!("table ip {shard} {{")).unwrap();
        assert!(
            shard_at < at(&ep_chain),
            "the port's chains are in its shard"
        );
        assert!(
            at(&ext_chain(&s)) < script[shard_at..].find("chain services {").unwrap() + shard_at
        );
        assert!(script.starts_with("table ip trellis-proxy\ndelete table ip trellis-proxy\n"));
        // Every shard is replaced in the same script (one transaction), each with its dispatch.
        for k in 0..SHARDS {
            let t = shard_table(k);
            assert!(script.contains(&format!("delete table ip {t}\ntable ip {t} {{")));
        }
        assert_eq!(
            script.matches("vmap @service-ips").count(),
            usize::from(SHARDS)
        );
    }
}
