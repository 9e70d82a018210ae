//! "Why was this dropped?": the verdict on a connection between two pods, the tier, policy and
//! rule that decided each side, from the same model the compiler uses, and the live packet
//! counters of the compiled rules of that decision (on the node where the pod is local).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::eval::{Decision, Flow, evaluate};
use crate::model::Cluster;
use crate::names;
use crate::rules::{Direction, Proto};
use crate::sync::ChainRead;
use crate::xt::Program;

/// One side's decision with its counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SideExplained {
    pub direction: String,
    pub pod: String,
    pub allowed: bool,
    pub tier: String,
    pub policy: Option<String>,
    pub rule: Option<String>,
    /// Packets that matched the deciding rule(s) here (None: the pod is not local to this
    /// node, so its chains live elsewhere).
    pub packets: Option<u64>,
    pub chain: Option<String>,
}

/// The answer of `/explain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    pub from: String,
    pub to: String,
    pub port: u16,
    pub proto: String,
    pub allowed: bool,
    pub sides: Vec<SideExplained>,
}

/// A query: `NS/POD`, `NS/POD`, port, protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub from: (String, String),
    pub to: (String, String),
    pub port: u16,
    pub proto: Proto,
}

fn pod_ref(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, pod)) if !ns.is_empty() && !pod.is_empty() && !pod.contains('/') => {
            Ok((ns.to_string(), pod.to_string()))
        }
        _ => Err(format!("{s:?} is not NS/POD")),
    }
}

impl Query {
    /// From the CLI's spelling: `NS/POD` and `NS/POD:PORT/PROTO`.
    pub fn parse_cli(from: &str, to: &str) -> Result<Query, String> {
        let (pod, rest) = to
            .rsplit_once(':')
            .ok_or_else(|| format!("{to:?} is not NS/POD:PORT/PROTO"))?;
        let (port, proto) = rest.split_once('/').unwrap_or((rest, "TCP"));
        Query::new(from, pod, port, proto)
    }

    pub fn new(from: &str, to: &str, port: &str, proto: &str) -> Result<Query, String> {
        Ok(Query {
            from: pod_ref(from)?,
            to: pod_ref(to)?,
            port: port
                .parse()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{port:?} is not a port"))?,
            proto: Proto::parse(&proto.to_ascii_uppercase())
                .ok_or_else(|| format!("{proto:?} is not TCP, UDP or SCTP"))?,
        })
    }

    /// From `/explain?from=NS/POD&to=NS/POD&port=N&proto=TCP`.
    pub fn parse_http(query: &str) -> Result<Query, String> {
        let args: BTreeMap<&str, String> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k, v.replace("%2F", "/").replace("%2f", "/")))
            .collect();
        let get = |k: &str| args.get(k).cloned().ok_or_else(|| format!("missing {k}="));
        Query::new(
            &get("from")?,
            &get("to")?,
            &get("port")?,
            &args.get("proto").cloned().unwrap_or_else(|| "TCP".into()),
        )
    }

    pub fn to_http(&self) -> String {
        format!(
            "/explain?from={}/{}&to={}/{}&port={}&proto={}",
            self.from.0, self.from.1, self.to.0, self.to.1, self.port, self.proto
        )
    }
}

fn counters(d: &Decision, program: &Program, read: &[ChainRead]) -> (Option<u64>, Option<String>) {
    let chain = match d.direction {
        Direction::Ingress => names::ingress_chain(&d.pod),
        Direction::Egress => names::egress_chain(&d.pod),
    };
    if !program.chains.contains_key(&chain) {
        return (None, None);
    }
    let desc = d.desc();
    let mut packets = 0;
    for c in [chain.clone(), names::after_admin(&chain)] {
        let Some(rules) = program.chains.get(&c) else {
            continue;
        };
        let tags: Vec<String> = rules
            .iter()
            .filter(|r| r.desc == desc)
            .map(|r| r.tag())
            .collect();
        if let Some(live) = read.iter().find(|r| r.name == c) {
            packets += live
                .rules
                .iter()
                .filter(|(spec, _)| {
                    crate::xt::tag_of(spec).is_some_and(|t| tags.iter().any(|x| x == t))
                })
                .map(|(_, p)| p)
                .sum::<u64>();
        }
    }
    (Some(packets), Some(chain))
}

/// Answers a query from the model, the committed program and the counters read back.
pub fn explain(
    cluster: &Cluster,
    program: &Program,
    read: &[ChainRead],
    q: &Query,
) -> Result<Explanation, String> {
    let find = |(ns, name): &(String, String)| {
        let p = cluster
            .pod(ns, name)
            .ok_or_else(|| format!("no pod {ns}/{name}"))?;
        p.ips
            .first()
            .copied()
            .ok_or_else(|| format!("{ns}/{name} has no IPv4 address yet"))
    };
    let flow = Flow {
        src: find(&q.from)?,
        dst: find(&q.to)?,
        proto: q.proto,
        port: q.port,
    };
    let v = evaluate(cluster, flow);
    let sides = [v.egress.as_ref(), v.ingress.as_ref()]
        .into_iter()
        .flatten()
        .map(|d| {
            let (packets, chain) = counters(d, program, read);
            SideExplained {
                direction: d.direction.to_string(),
                pod: d.pod.clone(),
                allowed: d.allowed,
                tier: d.tier.to_string(),
                policy: d.policy.clone(),
                rule: d.rule.clone(),
                packets,
                chain,
            }
        })
        .collect();
    Ok(Explanation {
        from: format!("{}/{}", q.from.0, q.from.1),
        to: format!("{}/{}", q.to.0, q.to.1),
        port: q.port,
        proto: q.proto.to_string(),
        allowed: v.allowed,
        sides,
    })
}

/// The CLI's text.
pub fn render(e: &Explanation) -> String {
    let mut out = format!(
        "{} → {}:{}/{}: {}\n",
        e.from,
        e.to,
        e.port,
        e.proto,
        if e.allowed { "ALLOWED" } else { "DENIED" }
    );
    for s in &e.sides {
        let _ = writeln!(
            out,
            "  {:<7} of {:<20} {:<7} tier {:<13} policy {:<24} rule {:<16} packets {}",
            s.direction,
            s.pod,
            if s.allowed { "allowed" } else { "denied" },
            s.tier,
            s.policy.as_deref().unwrap_or("-"),
            s.rule.as_deref().unwrap_or("-"),
            s.packets
                .map(|p| p.to_string())
                .unwrap_or_else(|| "- (not local to this node)".into()),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_from_both_spellings() {
        let q = Query::parse_cli("x/a", "y/b:80/udp").unwrap();
        assert_eq!(q.to, ("y".into(), "b".into()));
        assert_eq!((q.port, q.proto), (80, Proto::Udp));
        assert_eq!(Query::parse_http(&q.to_http()[9..]).unwrap(), q);
        assert!(Query::parse_cli("x", "y/b:80/TCP").is_err());
        assert!(Query::parse_cli("x/a", "y/b:0/TCP").is_err());
        assert!(Query::parse_cli("x/a", "y/b:80/ICMP").is_err());
    }
}

#[cfg(test)]
mod counter_tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::compile::{Options, compile};
    use crate::model::Pod;

    #[test]
    fn the_deciding_rules_counters_are_summed_from_the_kernels_read_back() {
        let mut c = Cluster::default();
        for (name, ip) in [("a", "10.0.0.1"), ("b", "10.0.0.2")] {
            let p = Pod {
                namespace: "x".into(),
                name: name.into(),
                labels: BTreeMap::from([("app".into(), name.into())]),
                node: Some("n1".into()),
                ips: vec![ip.parse().unwrap()],
                iface: Some(format!("tr{name}")),
                ..Default::default()
            };
            c.pods.insert(p.key(), p);
        }
        let np = crate::netpol::parse(
            "x",
            "deny-b",
            &json!({"podSelector": {"matchLabels": {"app": "b"}}}),
        );
        c.netpols.insert(np.key(), np);
        let prog = compile(
            &c,
            &Options {
                node: "n1".into(),
                pending_deny: true,
            },
        );
        // The kernel's view: the same rules, with packets on each.
        let read: Vec<ChainRead> = prog
            .chains
            .iter()
            .map(|(n, rules)| ChainRead {
                name: n.clone(),
                rules: rules.iter().map(|r| (r.render(), 7)).collect(),
            })
            .collect();
        let q = Query::parse_cli("x/a", "x/b:80/TCP").unwrap();
        let e = explain(&c, &prog, &read, &q).unwrap();
        assert!(!e.allowed);
        let ingress = e.sides.iter().find(|s| s.direction == "ingress").unwrap();
        assert_eq!(ingress.policy.as_deref(), Some("x/deny-b"));
        assert_eq!(ingress.packets, Some(7));
        let egress = e.sides.iter().find(|s| s.direction == "egress").unwrap();
        assert_eq!(
            (egress.tier.as_str(), egress.allowed, egress.packets),
            ("Default", true, Some(7))
        );
        assert!(render(&e).contains("DENIED"));
        assert!(
            explain(
                &c,
                &prog,
                &read,
                &Query::parse_cli("x/a", "x/zz:80/TCP").unwrap()
            )
            .is_err()
        );
    }
}
