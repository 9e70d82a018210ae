//! One query in, one answer out: the part of the server that never touches the network, so
//! that any bytes at all can be thrown at it (the property test does).

use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::zone::{Lookup, Qtype, Rec, Zone};

/// TTL of cluster answers (CoreDNS' kubernetes plugin default).
pub const TTL: u32 = 5;

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
        m.add_queries(q.queries.iter().cloned());
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

/// Answers `bytes` from `zone`, or says it must be forwarded.
pub fn respond(bytes: &[u8], zone: &Zone) -> Outcome {
    if bytes.len() < 2 {
        return Outcome::Drop;
    }
    let id = u16::from_be_bytes([bytes[0], bytes[1]]);
    let msg = match Message::from_vec(bytes) {
        Ok(m) => m,
        // The QR bit set: a response (or garbage claiming to be one); never answer those.
        Err(_) if bytes.len() >= 3 && bytes[2] & 0x80 != 0 => return Outcome::Drop,
        Err(_) => {
            return Outcome::Reply(error_reply(id, OpCode::Query, ResponseCode::FormErr, None));
        }
    };
    if msg.metadata.message_type != MessageType::Query {
        return Outcome::Drop;
    }
    if msg.metadata.op_code != OpCode::Query {
        return Outcome::Reply(error_reply(
            id,
            msg.metadata.op_code,
            ResponseCode::NotImp,
            None,
        ));
    }
    if msg.queries.len() != 1 {
        return Outcome::Reply(error_reply(id, OpCode::Query, ResponseCode::FormErr, None));
    }
    let q = &msg.queries[0];
    let name = q.name().to_ascii();
    match zone.lookup(&name, qtype(q.query_type())) {
        Lookup::NotOurs => Outcome::Forward(Box::new(msg)),
        Lookup::NxDomain => Outcome::Reply(error_reply(
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
            for r in &recs {
                if let Some(rec) = record(q.name(), r) {
                    m.add_answer(rec);
                }
            }
            match m.to_vec() {
                Ok(v) => Outcome::Reply(v),
                Err(_) => Outcome::Reply(error_reply(
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
        ));
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert!(matches!(
            respond(&query("example.org.", RecordType::A), &zone()),
            Outcome::Forward(_)
        ));
    }

    #[test]
    fn malformed_queries_get_formerr() {
        let mut b = query("web.default.svc.cluster.local.", RecordType::A);
        b.truncate(b.len() - 3);
        let m = reply(respond(&b, &zone()));
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(m.metadata.id, 0x1234);
        assert!(matches!(respond(&[1], &zone()), Outcome::Drop));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        /// Random bytes never panic, and whatever is answered parses as a response.
        #[test]
        fn any_bytes_are_answered_or_dropped_never_a_crash(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Outcome::Reply(b) = respond(&bytes, &zone()) {
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
            if let Outcome::Reply(b) = respond(&b, &zone()) {
                prop_assert!(Message::from_vec(&b).is_ok());
            }
        }
    }
}
