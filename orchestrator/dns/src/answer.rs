//! One query in, one answer out: the part of the server that never touches the network, so
//! that any bytes at all can be thrown at it (the property test does). EDNS(0) as RFC 6891
//! says, and answers cut to what the transport carries (RFC 1035 §4.2.1, RFC 6891 §7).

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::zone::{Lookup, Qtype, Rec, Zone};

/// TTL of cluster answers (CoreDNS' kubernetes plugin default).
pub const TTL: u32 = 5;

/// The most a UDP answer carries when the query advertises more: the DNS flag day 2020 size,
/// which crosses common paths unfragmented. It is also the payload size we advertise.
pub const UDP_PAYLOAD_MAX: u16 = 1232;
/// A UDP answer to a query without EDNS (RFC 1035 §4.2.1); also the floor of an advertised size.
pub const UDP_PLAIN_MAX: u16 = 512;

/// How a query came, which bounds the size of its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    /// Length-prefixed messages on a stream (RFC 1035 §4.2.2, RFC 7766).
    Tcp,
}

impl Transport {
    /// The largest answer this transport carries to a query with this OPT record (or none).
    pub fn limit(self, edns: Option<&Edns>) -> usize {
        match (self, edns) {
            (Transport::Tcp, _) => usize::from(u16::MAX),
            (Transport::Udp, None) => usize::from(UDP_PLAIN_MAX),
            (Transport::Udp, Some(e)) => {
                usize::from(e.max_payload().clamp(UDP_PLAIN_MAX, UDP_PAYLOAD_MAX))
            }
        }
    }
}

/// `reply` as it may go back in `limit` bytes: whole if it fits, else its header and question
/// (and OPT) with TC set and no records, so that the client asks again over TCP. Partial
/// record sets are never sent (RFC 2181 §9 lets a resolver drop them anyway).
pub fn fit(reply: Vec<u8>, limit: usize) -> Vec<u8> {
    if reply.len() <= limit {
        return reply;
    }
    if let Some(short) = Message::from_vec(&reply)
        .ok()
        .and_then(|m| m.truncate().to_vec().ok())
        .filter(|b| b.len() <= limit)
    {
        return short;
    }
    // Unparseable (a forwarded answer we cannot read) or a question too long even alone:
    // the bare header, TC set, every count zero.
    let mut h = reply;
    h.truncate(12);
    if let Some(flags) = h.get_mut(2) {
        *flags |= 0x02;
    }
    for b in h.iter_mut().skip(4) {
        *b = 0;
    }
    h
}

/// The OPT record of an answer to a query that had `query`'s: our payload size, version 0,
/// the DO bit copied (RFC 3225 §3), no options.
fn answer_edns(query: &Edns) -> Edns {
    let mut e = Edns::new();
    e.set_max_payload(UDP_PAYLOAD_MAX);
    e.set_version(0);
    e.set_dnssec_ok(query.flags().dnssec_ok);
    e
}

/// What to do with a datagram.
#[derive(Debug)]
pub enum Outcome {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Not a cluster name: ask the upstream resolvers (the parsed query).
    Forward(Box<Message>),
    /// Nothing sensible to answer (too short to carry an ID, or itself a response).
    Drop,
}

/// How the answer went, for metrics.
pub fn rcode_label(code: ResponseCode) -> &'static str {
    match code {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        _ => "OTHER",
    }
}

fn error_reply(id: u16, op: OpCode, code: ResponseCode, query: Option<&Message>) -> Vec<u8> {
    let mut m = Message::error_msg(id, op, code);
    if let Some(q) = query {
        m.metadata.recursion_desired = q.metadata.recursion_desired;
        m.add_queries(q.queries.iter().take(1).cloned());
        if let Some(e) = &q.edns {
            m.set_edns(answer_edns(e));
        }
    }
    m.metadata.recursion_available = true;
    // An error message with at most one query always encodes; fall back to the bare header.
    m.to_vec().unwrap_or_else(|_| {
        let mut h = Message::error_msg(id, op, code);
        h.metadata.recursion_available = true;
        h.to_vec().unwrap_or_default()
    })
}

fn qtype(t: RecordType) -> Qtype {
    match t {
        RecordType::A => Qtype::A,
        RecordType::AAAA => Qtype::Aaaa,
        RecordType::SRV => Qtype::Srv,
        RecordType::PTR => Qtype::Ptr,
        RecordType::CNAME => Qtype::Cname,
        RecordType::ANY => Qtype::Any,
        _ => Qtype::Other,
    }
}

fn fqdn(s: &str) -> Option<Name> {
    Name::from_ascii(format!("{s}.")).ok()
}

fn record(owner: &Name, rec: &Rec) -> Option<Record> {
    let data = match rec {
        Rec::Ip(IpAddr::V4(v4)) => RData::A(A(*v4)),
        Rec::Ip(IpAddr::V6(v6)) => RData::AAAA(AAAA(*v6)),
        Rec::Cname(t) => RData::CNAME(CNAME(fqdn(t)?)),
        Rec::Ptr(t) => RData::PTR(PTR(fqdn(t)?)),
        Rec::Srv { port, target } => RData::SRV(SRV::new(0, 100, *port, fqdn(target)?)),
    };
    Some(Record::from_rdata(owner.clone(), TTL, data))
}

/// Answers `bytes`, which came over `transport`, from `zone`, or says it must be forwarded.
/// A reply is already cut to what the transport carries ([`fit`]); a forwarded answer must be
/// cut by the caller.
pub fn respond(bytes: &[u8], zone: &Zone, transport: Transport) -> Outcome {
    if bytes.len() < 2 {
        return Outcome::Drop;
    }
    let id = u16::from_be_bytes([bytes[0], bytes[1]]);
    // Unparseable includes an OPT record outside the additional section, and more than one
    // OPT record: FORMERR either way (RFC 6891 §6.1.1).
    let msg = match Message::from_vec(bytes) {
        Ok(m) => m,
        // The QR bit set: a response (or garbage claiming to be one); never answer those.
        Err(_) if bytes.len() >= 3 && bytes[2] & 0x80 != 0 => return Outcome::Drop,
        Err(_) => {
            return Outcome::Reply(error_reply(id, OpCode::Query, ResponseCode::FormErr, None));
        }
    };
    let limit = transport.limit(msg.edns.as_ref());
    let reply = |b: Vec<u8>| Outcome::Reply(fit(b, limit));
    if msg.metadata.message_type != MessageType::Query {
        return Outcome::Drop;
    }
    if msg.metadata.op_code != OpCode::Query {
        return reply(error_reply(
            id,
            msg.metadata.op_code,
            ResponseCode::NotImp,
            None,
        ));
    }
    // We speak EDNS version 0 only: a higher one gets BADVERS with our OPT (RFC 6891 §6.1.3).
    if msg.edns.as_ref().is_some_and(|e| e.version() > 0) {
        return reply(error_reply(
            id,
            OpCode::Query,
            ResponseCode::BADVERS,
            Some(&msg),
        ));
    }
    if msg.queries.len() != 1 {
        let mut m = msg.clone();
        m.queries.clear();
        return reply(error_reply(
            id,
            OpCode::Query,
            ResponseCode::FormErr,
            Some(&m),
        ));
    }
    let q = &msg.queries[0];
    let name = q.name().to_ascii();
    match zone.lookup(&name, qtype(q.query_type())) {
        Lookup::NotOurs => Outcome::Forward(Box::new(msg)),
        Lookup::NxDomain => reply(error_reply(
            id,
            OpCode::Query,
            ResponseCode::NXDomain,
            Some(&msg),
        )),
        Lookup::Answer(recs) => {
            let mut m = Message::response(id, OpCode::Query);
            m.metadata.authoritative = true;
            m.metadata.recursion_desired = msg.metadata.recursion_desired;
            m.metadata.recursion_available = true;
            m.add_query(q.clone());
            if let Some(e) = &msg.edns {
                m.set_edns(answer_edns(e));
            }
            for r in &recs {
                if let Some(rec) = record(q.name(), r) {
                    m.add_answer(rec);
                }
            }
            match m.to_vec() {
                Ok(v) => reply(v),
                Err(_) => reply(error_reply(
                    id,
                    OpCode::Query,
                    ResponseCode::ServFail,
                    Some(&msg),
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use hickory_proto::op::Query;
    use proptest::prelude::*;

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    fn zone() -> Zone {
        let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"clusterIP": "10.96.0.20", "ports": [{"name": "http", "port": 80}]}
        }))
        .unwrap();
        Zone::build("cluster.local", [&svc], [])
    }

    fn reply(o: Outcome) -> Message {
        match o {
            Outcome::Reply(b) => Message::from_vec(&b).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_cluster_name_is_answered_authoritatively() {
        let m = reply(respond(
            &query("web.default.svc.cluster.local.", RecordType::A),
            &zone(),
            Transport::Udp,
        ));
        assert_eq!(m.metadata.id, 0x1234);
        assert!(m.metadata.authoritative);
        assert_eq!(m.answers.len(), 1);
        assert_eq!(
            m.answers[0].data,
            RData::A(A("10.96.0.20".parse().unwrap()))
        );
    }

    #[test]
    fn unknown_cluster_names_get_nxdomain_and_others_are_forwarded() {
        let m = reply(respond(
            &query("no.default.svc.cluster.local.", RecordType::A),
            &zone(),
            Transport::Udp,
        ));
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert!(matches!(
            respond(
                &query("example.org.", RecordType::A),
                &zone(),
                Transport::Udp
            ),
            Outcome::Forward(_)
        ));
    }

    #[test]
    fn malformed_queries_get_formerr() {
        let mut b = query("web.default.svc.cluster.local.", RecordType::A);
        b.truncate(b.len() - 3);
        let m = reply(respond(&b, &zone(), Transport::Udp));
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(m.metadata.id, 0x1234);
        assert!(matches!(
            respond(&[1], &zone(), Transport::Udp),
            Outcome::Drop
        ));
    }

    /// `bytes` with an OPT record appended to the additional section.
    fn with_opt(
        mut bytes: Vec<u8>,
        payload: u16,
        version: u8,
        dnssec_ok: bool,
        rdata: &[u8],
    ) -> Vec<u8> {
        bytes.push(0); // the root name
        bytes.extend_from_slice(&41u16.to_be_bytes());
        bytes.extend_from_slice(&payload.to_be_bytes());
        bytes.extend_from_slice(&[0, version, if dnssec_ok { 0x80 } else { 0 }, 0]);
        bytes.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        bytes.extend_from_slice(rdata);
        let ar = u16::from_be_bytes([bytes[10], bytes[11]]) + 1;
        bytes[10..12].copy_from_slice(&ar.to_be_bytes());
        bytes
    }

    /// A headless Service `big` with `n` ready endpoints 10.244.x.y.
    fn headless_zone(n: usize) -> Zone {
        let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "default", "name": "big"},
            "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80}]}
        }))
        .unwrap();
        let endpoints: Vec<_> = (0..n)
            .map(|i| serde_json::json!({"addresses": [format!("10.244.{}.{}", i / 200, i % 200 + 1)]}))
            .collect();
        let slice: k8s_openapi::api::discovery::v1::EndpointSlice =
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": "default", "name": "big-1",
                             "labels": {"kubernetes.io/service-name": "big"}},
                "addressType": "IPv4",
                "endpoints": endpoints,
            }))
            .unwrap();
        Zone::build("cluster.local", [&svc], [&slice])
    }

    const BIG: &str = "big.default.svc.cluster.local.";

    fn raw(o: Outcome) -> Vec<u8> {
        match o {
            Outcome::Reply(b) => b,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_udp_answer_over_512_bytes_without_edns_is_truncated_with_tc_and_no_records() {
        let z = headless_zone(40);
        let b = raw(respond(&query(BIG, RecordType::A), &z, Transport::Udp));
        assert!(b.len() <= 512, "{} bytes", b.len());
        let m = Message::from_vec(&b).unwrap();
        assert!(m.metadata.truncation);
        assert!(m.answers.is_empty());
        assert_eq!(m.queries.len(), 1);
        assert_eq!(m.metadata.id, 0x1234);
        assert!(m.edns.is_none());
        // The same question over TCP: all 40, no TC.
        let m = reply(respond(&query(BIG, RecordType::A), &z, Transport::Tcp));
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 40);
        // A small answer over UDP is whole.
        let m = reply(respond(
            &query(BIG, RecordType::A),
            &headless_zone(5),
            Transport::Udp,
        ));
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 5);
    }

    #[test]
    fn an_edns_query_gets_up_to_its_payload_size_capped_at_1232_and_our_opt_back() {
        let z = headless_zone(40); // ~700 bytes
        let q = with_opt(query(BIG, RecordType::A), 4096, 0, false, &[]);
        let b = raw(respond(&q, &z, Transport::Udp));
        assert!(b.len() > 512 && b.len() <= 1232, "{} bytes", b.len());
        let m = Message::from_vec(&b).unwrap();
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 40);
        let e = m.edns.as_ref().expect("an OPT in the answer");
        assert_eq!((e.max_payload(), e.version()), (1232, 0));
        assert!(!e.flags().dnssec_ok);
        // 100 endpoints (~1,650 bytes) exceed the 1232 cap whatever the client says.
        let b = raw(respond(&q, &headless_zone(100), Transport::Udp));
        assert!(b.len() <= 1232);
        let m = Message::from_vec(&b).unwrap();
        assert!(m.metadata.truncation && m.answers.is_empty());
        assert!(m.edns.is_some(), "the OPT stays in a truncated answer");
        // An advertised size under 512 counts as 512; 600 allows 600.
        let small = with_opt(query(BIG, RecordType::A), 100, 0, true, &[]);
        let b = raw(respond(&small, &z, Transport::Udp));
        let m = Message::from_vec(&b).unwrap();
        assert!(b.len() <= 512 && m.metadata.truncation);
        assert!(m.edns.unwrap().flags().dnssec_ok, "DO is copied");
        let b = raw(respond(
            &with_opt(query(BIG, RecordType::A), 1000, 0, false, &[]),
            &headless_zone(30),
            Transport::Udp,
        ));
        assert!(b.len() > 512 && b.len() <= 1000);
        assert!(!Message::from_vec(&b).unwrap().metadata.truncation);
    }

    #[test]
    fn a_query_without_opt_gets_no_opt() {
        let m = reply(respond(
            &query("web.default.svc.cluster.local.", RecordType::A),
            &zone(),
            Transport::Udp,
        ));
        assert!(m.edns.is_none());
        // NXDOMAIN to an EDNS query carries our OPT too.
        let q = with_opt(
            query("no.default.svc.cluster.local.", RecordType::A),
            1232,
            0,
            false,
            &[],
        );
        let m = reply(respond(&q, &zone(), Transport::Udp));
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(m.edns.unwrap().max_payload(), 1232);
    }

    #[test]
    fn edns_version_1_gets_badvers_with_our_version_0_opt() {
        let q = with_opt(
            query("web.default.svc.cluster.local.", RecordType::A),
            1232,
            1,
            false,
            &[],
        );
        let b = raw(respond(&q, &zone(), Transport::Udp));
        let m = Message::from_vec(&b).unwrap();
        // 16 is BADVERS in an OPT (BADSIG in a TSIG, as hickory names it).
        assert_eq!(u16::from(m.metadata.response_code), 16);
        assert!(m.answers.is_empty());
        assert_eq!(m.edns.unwrap().version(), 0);
        // The extended RCODE 16: 0 in the header, 1 in the OPT's TTL.
        assert_eq!(b[3] & 0x0f, 0);
    }

    #[test]
    fn two_opt_records_or_an_opt_outside_the_additional_section_get_formerr() {
        let q = query("web.default.svc.cluster.local.", RecordType::A);
        let two = with_opt(
            with_opt(q.clone(), 1232, 0, false, &[]),
            1232,
            0,
            false,
            &[],
        );
        let m = reply(respond(&two, &zone(), Transport::Udp));
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(m.metadata.id, 0x1234);
        // The OPT counted as an answer record instead.
        let mut wrong = with_opt(q, 1232, 0, false, &[]);
        wrong[10..12].copy_from_slice(&[0, 0]);
        wrong[6..8].copy_from_slice(&[0, 1]);
        let m = reply(respond(&wrong, &zone(), Transport::Udp));
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    }

    #[test]
    fn fit_cuts_unparseable_bytes_to_a_header_with_tc() {
        let b = fit(vec![0xab; 600], 512);
        assert_eq!(b.len(), 12);
        assert_eq!(b[2] & 0x02, 0x02);
        assert_eq!(&b[4..], &[0; 8]);
        assert_eq!(fit(vec![1; 100], 512), vec![1; 100]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        /// Random bytes never panic, and whatever is answered parses as a response.
        #[test]
        fn any_bytes_are_answered_or_dropped_never_a_crash(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Outcome::Reply(b) = respond(&bytes, &zone(), Transport::Udp) {
                let m = Message::from_vec(&b).unwrap();
                prop_assert_eq!(m.metadata.message_type, MessageType::Response);
            }
        }

        /// Valid queries with mutated bytes: the same.
        #[test]
        fn mutated_queries_never_crash(pos in 0usize..64, val in any::<u8>(), t in prop_oneof![Just(RecordType::A), Just(RecordType::SRV), Just(RecordType::PTR)]) {
            let mut b = query("_http._tcp.web.default.svc.cluster.local.", t);
            let i = pos % b.len();
            b[i] = val;
            if let Outcome::Reply(b) = respond(&b, &zone(), Transport::Udp) {
                prop_assert!(Message::from_vec(&b).is_ok());
            }
        }

        /// Queries with OPT records of any payload size, version, flags and option bytes, one or
        /// two of them, over either transport: never a crash; an answer parses, fits the
        /// transport, and follows RFC 6891 (BADVERS for version > 0, FORMERR for two OPTs, our
        /// OPT back otherwise).
        #[test]
        fn opt_records_follow_rfc_6891(
            payload in any::<u16>(),
            version in prop_oneof![Just(0u8), any::<u8>()],
            dnssec_ok in any::<bool>(),
            rdata in proptest::collection::vec(any::<u8>(), 0..24),
            second in any::<bool>(),
            endpoints in 1usize..120,
            tcp in any::<bool>(),
        ) {
            let q = with_opt(query(BIG, RecordType::A), payload, version, dnssec_ok, &rdata);
            let q = if second { with_opt(q, 512, 0, false, &[]) } else { q };
            let transport = if tcp { Transport::Tcp } else { Transport::Udp };
            let Outcome::Reply(b) = respond(&q, &headless_zone(endpoints), transport) else {
                return Err(TestCaseError::fail("no reply"));
            };
            let limit = if tcp { 65535 } else { usize::from(payload.clamp(512, 1232)) };
            prop_assert!(b.len() <= limit, "{} > {}", b.len(), limit);
            let m = Message::from_vec(&b).unwrap();
            prop_assert_eq!(m.metadata.id, 0x1234);
            let options_parse = Message::from_vec(&with_opt(query(BIG, RecordType::A), 512, 0, false, &rdata)).is_ok();
            if second || !options_parse {
                prop_assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
            } else if version > 0 {
                prop_assert_eq!(u16::from(m.metadata.response_code), 16);
                prop_assert_eq!(m.edns.as_ref().map(|e| e.version()), Some(0));
            } else {
                prop_assert_eq!(m.metadata.response_code, ResponseCode::NoError);
                prop_assert_eq!(m.edns.as_ref().map(|e| e.max_payload()), Some(1232));
                prop_assert_eq!(m.metadata.truncation, m.answers.len() < endpoints);
                if !m.metadata.truncation {
                    prop_assert_eq!(m.answers.len(), endpoints);
                }
            }
        }
    }
}
