//! What the agent shows: `/bgp/status` and `/bgp/routes` (JSON, for `trellis bgp status` and
//! `trellis bgp routes`) and the Prometheus metrics, refreshed every second.

use serde::{Deserialize, Serialize};
use trellis_bfd::Bfd;
use trellis_bgp::{Source, Speaker};
use trellis_daemon::{Health, Metrics};

pub const STATUS_PATH: &str = "/bgp/status";
pub const ROUTES_PATH: &str = "/bgp/routes";

/// One peer, as `/bgp/status` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRow {
    pub address: String,
    pub remote_asn: u32,
    pub state: String,
    pub uptime_seconds: u64,
    pub prefixes_received: usize,
    pub prefixes_sent: usize,
    /// UPDATEs of the current session (0 while none is up).
    pub updates_received: u64,
    pub updates_sent: u64,
    /// All messages of the current session.
    #[serde(default)]
    pub messages_received: u64,
    #[serde(default)]
    pub messages_sent: u64,
    /// Times a session with this peer reached Established.
    #[serde(default)]
    pub sessions: u64,
    /// Counts over every session since the agent started.
    #[serde(default)]
    pub total: Totals,
    /// The last NOTIFICATION sent or received, or the last malformed UPDATE handled.
    #[serde(default)]
    pub last_error: Option<String>,
    /// The peer's BFD session, when BFD is on for it.
    #[serde(default)]
    pub bfd: Option<BfdRow>,
    /// Graceful restart: the peer's last OPEN carried the R bit (it had restarted).
    #[serde(default)]
    pub peer_restarted: bool,
    /// Sessions in which the peer's OPEN carried the R bit.
    #[serde(default)]
    pub peer_restarts: u64,
    /// Our own restart's deferral still waits for this peer (its session or End-of-RIB), or
    /// for the End-of-RIB of this peer with the R bit before sweeping the old kernel routes.
    #[serde(default)]
    pub awaiting_end_of_rib: bool,
    /// What the Established session negotiated, short names (`ipv4`, `ipv6`, `ENH` for RFC
    /// 8950's extended next hop, `GR`, `4B` for four-octet AS, `RR` for route refresh); empty
    /// while no session is up.
    #[serde(default)]
    pub capabilities: Vec<String>,
}

/// A peer's BFD session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BfdRow {
    /// `AdminDown`, `Down`, `Init` or `Up`.
    pub state: String,
    pub remote_state: String,
    /// Why the session last left Up, in words (`no diagnostic` if it never did).
    pub diag: String,
    /// What the peer last said about its side.
    pub remote_diag: String,
    /// Configured Desired Min TX, Required Min RX (ms) and Detect Mult.
    pub min_tx_ms: u64,
    pub min_rx_ms: u64,
    pub multiplier: u8,
    /// The agreed detection time (0 until the peer was heard).
    pub detection_ms: u64,
    pub uptime_seconds: u64,
    /// Times it went from Up to Down.
    pub downs: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
}

/// A peer's lifetime message counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub updates_received: u64,
    pub updates_sent: u64,
    pub messages_received: u64,
    pub messages_sent: u64,
}

/// One best route, as `/bgp/routes` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRow {
    pub prefix: String,
    pub next_hop: String,
    /// `local` or the peer's address.
    pub source: String,
    pub as_path: String,
    pub stale: bool,
}

fn bfd_row(s: &trellis_bfd::SessionStatus) -> BfdRow {
    BfdRow {
        state: s.state.to_string(),
        remote_state: s.remote_state.to_string(),
        diag: s.diag.to_string(),
        remote_diag: s.remote_diag.to_string(),
        min_tx_ms: s.intervals.desired_min_tx.as_millis() as u64,
        min_rx_ms: s.intervals.required_min_rx.as_millis() as u64,
        multiplier: s.intervals.multiplier,
        detection_ms: s.detection_time.as_millis() as u64,
        uptime_seconds: s.up_since.map_or(0, |t| t.elapsed().as_secs()),
        downs: s.downs,
        packets_sent: s.packets_sent,
        packets_received: s.packets_received,
    }
}

/// Publishes `/bgp/status` and the metrics, at every call. `/bgp/routes` is not kept: it is
/// the whole Loc-RIB (100,000 routes are 10 MB of JSON, and rendering them anew after every
/// batch of changes cost time and a copy of the RIB each), so it is rendered when asked for
/// (see [`routes_json`]).
#[derive(Debug, Default)]
pub struct Publisher {}

impl Publisher {
    pub fn new() -> Publisher {
        Publisher {}
    }

    /// The Loc-RIB changed: the status and the metrics published now.
    pub fn routes_changed(
        &mut self,
        speaker: &Speaker,
        bfd: Option<&Bfd>,
        health: &Health,
        metrics: &Metrics,
    ) {
        publish_parts(speaker, bfd, health, metrics);
    }

    /// The status and the metrics published now.
    pub fn publish(
        &mut self,
        speaker: &Speaker,
        bfd: Option<&Bfd>,
        health: &Health,
        metrics: &Metrics,
    ) {
        publish_parts(speaker, bfd, health, metrics);
    }
}

/// `/bgp/routes`: the Loc-RIB now, as a JSON list of [`RouteRow`]s, written straight from the
/// routes (a copy of the Loc-RIB shares every route's attributes: cheap), without a String per
/// field of every route.
pub fn routes_json(speaker: &Speaker) -> String {
    let routes = speaker.routes();
    let rows: Vec<RouteRowRef<'_>> = routes.iter().map(RouteRowRef).collect();
    serde_json::to_string(&rows).unwrap_or_else(|_| "[]".into())
}

/// Publishes `/bgp/status` and the metrics.
pub fn publish_parts(speaker: &Speaker, bfd: Option<&Bfd>, health: &Health, metrics: &Metrics) {
    let bfd_sessions: std::collections::BTreeMap<std::net::IpAddr, BfdRow> = bfd
        .map(|b| b.sessions().iter().map(|s| (s.peer, bfd_row(s))).collect())
        .unwrap_or_default();
    let peers: Vec<PeerRow> = speaker
        .peers()
        .into_iter()
        .map(|p| PeerRow {
            address: p.address.to_string(),
            remote_asn: p.remote_asn,
            state: p.state.to_string(),
            uptime_seconds: p.uptime().map(|d| d.as_secs()).unwrap_or(0),
            prefixes_received: p.prefixes_received,
            prefixes_sent: p.prefixes_sent,
            updates_received: p.updates_received,
            updates_sent: p.updates_sent,
            messages_received: p.messages_received,
            messages_sent: p.messages_sent,
            sessions: p.established_transitions,
            total: Totals {
                updates_received: p.total.updates_received,
                updates_sent: p.total.updates_sent,
                messages_received: p.total.messages_received,
                messages_sent: p.total.messages_sent,
            },
            last_error: p.last_error,
            bfd: bfd_sessions.get(&p.address).cloned(),
            peer_restarted: p.peer_restarted,
            peer_restarts: p.peer_restarts,
            awaiting_end_of_rib: p.awaiting_end_of_rib,
            capabilities: p.negotiated.names().into_iter().map(String::from).collect(),
        })
        .collect();
    metrics.clear("bgp_session_established");
    metrics.clear("bgp_prefixes_received");
    metrics.clear("bgp_prefixes_sent");
    metrics.clear("bgp_updates_received");
    metrics.clear("bgp_updates_sent");
    metrics.clear("bgp_bfd_session_up");
    metrics.clear("bgp_bfd_session_downs");
    metrics.clear("bgp_bfd_packets_sent");
    metrics.clear("bgp_bfd_packets_received");
    for p in &peers {
        if let Some(b) = &p.bfd {
            let l = [("peer", p.address.as_str())];
            metrics.set(
                "bgp_bfd_session_up",
                "1 while the peer's BFD session is Up.",
                &l,
                if b.state == "Up" { 1.0 } else { 0.0 },
            );
            metrics.set(
                "bgp_bfd_session_downs",
                "Times the peer's BFD session went from Up to Down (each one ended the BGP session unless the peer said AdminDown).",
                &l,
                b.downs as f64,
            );
            metrics.set(
                "bgp_bfd_packets_sent",
                "BFD control packets sent to the peer.",
                &l,
                b.packets_sent as f64,
            );
            metrics.set(
                "bgp_bfd_packets_received",
                "BFD control packets accepted from the peer.",
                &l,
                b.packets_received as f64,
            );
        }
    }
    if let Some(b) = bfd {
        let d = b.discards();
        for (reason, n) in [
            ("ttl", d.ttl),
            ("malformed", d.malformed),
            ("no_session", d.no_session),
        ] {
            metrics.set(
                "bgp_bfd_packets_discarded",
                "BFD packets thrown away: ttl (not 255, RFC 5881 §5), malformed (RFC 5880 §6.8.6), no_session (no session matches).",
                &[("reason", reason)],
                n as f64,
            );
        }
    }
    for p in &peers {
        let l = [("peer", p.address.as_str())];
        metrics.set(
            "bgp_session_established",
            "1 while the session with the peer is Established.",
            &l,
            if p.state == "Established" { 1.0 } else { 0.0 },
        );
        metrics.set(
            "bgp_prefixes_received",
            "Prefixes in the peer's Adj-RIB-In.",
            &l,
            p.prefixes_received as f64,
        );
        metrics.set(
            "bgp_prefixes_sent",
            "Prefixes in the peer's Adj-RIB-Out.",
            &l,
            p.prefixes_sent as f64,
        );
        metrics.set(
            "bgp_updates_received",
            "UPDATE messages received from the peer, over every session.",
            &l,
            p.total.updates_received as f64,
        );
        metrics.set(
            "bgp_updates_sent",
            "UPDATE messages sent to the peer, over every session.",
            &l,
            p.total.updates_sent as f64,
        );
    }
    health.publish(
        STATUS_PATH,
        serde_json::to_string(&peers).unwrap_or_else(|_| "[]".into()),
    );
    metrics.set(
        "bgp_loc_rib_routes",
        "Best routes in the Loc-RIB.",
        &[],
        speaker.route_count() as f64,
    );
}

/// A best route serialised as its [`RouteRow`] (the same fields), written straight from the
/// route.
struct RouteRowRef<'a>(&'a trellis_bgp::BestRoute);

/// A value serialised as the string its `Display` writes.
struct Shown<T>(T);

impl<T: std::fmt::Display> Serialize for Shown<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// `local` or the peer's address.
struct SourceName(Source);

impl std::fmt::Display for SourceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Source::Local => f.write_str("local"),
            Source::Peer(a) => a.fmt(f),
        }
    }
}

/// The AS path as `RouteRow::as_path` has it (empty when there is none).
struct AsPathText<'a>(Option<&'a trellis_bgp::codec::AsPath>);

impl std::fmt::Display for AsPathText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(p) => p.fmt(f),
            None => Ok(()),
        }
    }
}

impl Serialize for RouteRowRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let r = self.0;
        let mut st = s.serialize_struct("RouteRow", 5)?;
        st.serialize_field("prefix", &Shown(r.prefix))?;
        st.serialize_field("next_hop", &Shown(r.next_hop))?;
        st.serialize_field("source", &Shown(SourceName(r.source)))?;
        st.serialize_field("as_path", &Shown(AsPathText(r.attrs.as_path.as_ref())))?;
        st.serialize_field("stale", &r.stale)?;
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_bgp::codec::{AsPath, PathAttributes};

    #[test]
    fn routes_render_as_route_rows() {
        let route =
            |prefix: &str, source: Source, as_path: Option<AsPath>| trellis_bgp::BestRoute {
                prefix: prefix.parse().unwrap(),
                next_hop: "198.18.0.11".parse().unwrap(),
                source,
                attrs: std::sync::Arc::new(PathAttributes {
                    as_path,
                    ..Default::default()
                }),
                stale: true,
                multipath: Vec::new(),
            };
        let routes = [
            route(
                "10.64.0.1/32",
                Source::Peer("198.18.0.11".parse().unwrap()),
                Some(AsPath::sequence(&[64600, 64601])),
            ),
            route("fd00:10::/122", Source::Local, None),
        ];
        let rows: Vec<RouteRowRef<'_>> = routes.iter().map(RouteRowRef).collect();
        let back: Vec<RouteRow> =
            serde_json::from_str(&serde_json::to_string(&rows).unwrap()).unwrap();
        let want: Vec<RouteRow> = routes
            .iter()
            .map(|r| RouteRow {
                prefix: r.prefix.to_string(),
                next_hop: r.next_hop.to_string(),
                source: match r.source {
                    Source::Local => "local".into(),
                    Source::Peer(a) => a.to_string(),
                },
                as_path: r
                    .attrs
                    .as_path
                    .as_ref()
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
                stale: r.stale,
            })
            .collect();
        assert_eq!(back, want);
        assert_eq!(back[1].source, "local");
    }
}
