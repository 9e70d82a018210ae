//! The model → one node's program: chains and sets.
//!
//! Layout (filter table):
//!
//! ```text
//! FORWARD → TRELLIS-POL-FWD: ESTABLISHED,RELATED accept; -j TRELLIS-POL-EGR; -j TRELLIS-POL-ING
//! INPUT   → TRELLIS-POL-IN:  ESTABLISHED,RELATED accept; -j TRELLIS-POL-EGR   (pods to the node)
//! OUTPUT  → TRELLIS-POL-OUT: ESTABLISHED,RELATED accept; committed pods return; pending deny
//! TRELLIS-POL-EGR: per local pod  -s IP -i IFACE -g TRELLIS-PE-<id>   (routed veth)
//!                                 -s IP -m physdev --physdev-in IFACE -g TRELLIS-PE-<id> (bridged)
//!                  -i trellis.1 -j RETURN; -i tr+ -j DROP (pending deny and anti-spoofing)
//! TRELLIS-POL-ING: per local pod  -d IP -g TRELLIS-PI-<id>
//!                  -o trellis.1 -j RETURN; -o tr+ -j DROP (pending deny)
//! TRELLIS-PI-/PE-<id>: Admin rules → NetworkPolicy rules (+ DROP if isolated) → Baseline
//!                  rules → RETURN (default allow). Accept = RETURN (the other direction still
//!                  decides), Deny = DROP, Admin Pass = -g <chain>-N (the NetworkPolicy half).
//! ```
//!
//! Dispatch is by address *and* interface: a pod's egress is looked up by its source address
//! only on the interface that address belongs to (`-i` for a routed veth, `--physdev-in` for a
//! bridge port), so a pod that forges another pod's address gets no policy of that pod's; it
//! falls to `-i tr+ -j DROP`. Ingress is by destination address (routing already binds it to
//! the pod). Every pod interface and the bridge start with `tr`, and so does the VTEP
//! `trellis.1` — hence its RETURN before the wildcard drop. When a local pod's interface is not
//! known (neither the gate nor the naming rule gives one), its egress dispatch is by address
//! alone.
//!
//! Peers are sets, shared by every rule that names the same peer: `trellis-p-…` hash:ip with
//! the addresses of the pods a selector pair names, `trellis-n-…` hash:net for an ipBlock with
//! its excepts as `nomatch` entries, `trellis-q-…` hash:ip,port for named ports on the egress
//! side (where the port differs per destination pod). Ingress named ports are resolved
//! against the pod itself, in its own chain. So pod churn changes set members, not rules.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use crate::cnp::CnpTier;
use crate::model::{Cluster, Pod};
use crate::names;
use crate::rules::{Action, Direction, NsMatch, Peer, Peers, PortSpec, Proto, Rule};
use crate::xt::{Match, Member, Program, SetDef, SetKind, Target, XRule};

/// What the compiler needs besides the model.
#[derive(Debug, Clone)]
pub struct Options {
    /// The node whose pods are enforced.
    pub node: String,
    /// Drop traffic of local pod interfaces with no committed rules (default on).
    pub pending_deny: bool,
}

struct Builder<'a> {
    cluster: &'a Cluster,
    prog: Program,
}

fn ns_key(ns: &NsMatch) -> String {
    match ns {
        NsMatch::Named(n) => format!("ns={n}"),
        NsMatch::Selector(s) => format!("nssel={}", s.canonical),
    }
}

/// hash:net cannot hold a /0: two /1s instead.
fn net_members(net: ipnet::Ipv4Net) -> Vec<ipnet::Ipv4Net> {
    if net.prefix_len() == 0 {
        vec![
            "0.0.0.0/1".parse().unwrap_or(net),
            "128.0.0.0/1".parse().unwrap_or(net),
        ]
    } else {
        vec![net]
    }
}

impl Builder<'_> {
    fn pod_set(&mut self, ns: &NsMatch, pods: &crate::rules::SelectorKey) -> String {
        let name = names::set('p', &format!("pods|{}|{}", ns_key(ns), pods.canonical));
        if !self.prog.sets.contains_key(&name) {
            let members = self
                .cluster
                .peer_pods(ns, pods)
                .flat_map(|p| p.ips.iter().map(|ip| Member::Ip(*ip)))
                .collect();
            self.prog.sets.insert(
                name.clone(),
                SetDef {
                    kind: SetKind::HashIp,
                    members,
                },
            );
        }
        name
    }

    /// None: the block admits nothing (an except covers it whole).
    fn block_set(&mut self, cidr: ipnet::Ipv4Net, except: &[ipnet::Ipv4Net]) -> Option<String> {
        let mut positive: BTreeSet<ipnet::Ipv4Net> = net_members(cidr).into_iter().collect();
        let mut negative = BTreeSet::new();
        for e in except {
            if e.contains(&cidr) || positive.remove(e) {
                continue;
            }
            negative.insert(*e);
        }
        if except.iter().any(|e| e.contains(&cidr)) || positive.is_empty() {
            return None;
        }
        let seed = format!("block|{cidr}|{except:?}");
        let name = names::set('n', &seed);
        let members = positive
            .into_iter()
            .map(|net| Member::Net {
                net,
                nomatch: false,
            })
            .chain(
                negative
                    .into_iter()
                    .map(|net| Member::Net { net, nomatch: true }),
            )
            .collect();
        self.prog.sets.insert(
            name.clone(),
            SetDef {
                kind: SetKind::HashNet,
                members,
            },
        );
        Some(name)
    }

    /// Destination (address, port) pairs of `name`/`proto` on the pods `peer` names (every pod
    /// when the peer is not a pod peer).
    fn named_set(&mut self, peer: Option<&Peer>, proto: Proto, port_name: &str) -> String {
        let scope = match peer {
            Some(Peer::Pods { ns, pods }) => format!("{}|{}", ns_key(ns), pods.canonical),
            _ => "all".to_string(),
        };
        let name = names::set('q', &format!("named|{scope}|{proto}|{port_name}"));
        if !self.prog.sets.contains_key(&name) {
            let cluster = self.cluster;
            let pods: Vec<&Pod> = match peer {
                Some(Peer::Pods { ns, pods }) => cluster.peer_pods(ns, pods).collect(),
                _ => cluster
                    .pods
                    .values()
                    .filter(|p| p.is_policy_pod())
                    .collect(),
            };
            let members = pods
                .into_iter()
                .filter_map(|p| p.named_port(proto, port_name).map(|port| (p, port)))
                .flat_map(|(p, port)| {
                    p.ips.iter().map(move |ip| Member::IpPort {
                        ip: *ip,
                        proto,
                        port,
                    })
                })
                .collect();
            self.prog.sets.insert(
                name.clone(),
                SetDef {
                    kind: SetKind::HashIpPort,
                    members,
                },
            );
        }
        name
    }

    /// The iptables rules of one policy rule for `subject` in direction `d`.
    fn rule(
        &mut self,
        subject: &Pod,
        d: Direction,
        r: &Rule,
        target: Target,
        desc: &str,
    ) -> Vec<XRule> {
        let peers: Vec<Option<&Peer>> = match &r.peers {
            Peers::All => vec![None],
            Peers::Any(list) => list.iter().map(Some).collect(),
        };
        let ports: Vec<Option<&PortSpec>> = match &r.ports {
            None => vec![None],
            Some(list) => list.iter().map(Some).collect(),
        };
        let mut out = Vec::new();
        for peer in &peers {
            for port in &ports {
                let mut m = Vec::new();
                let named_egress =
                    matches!(port, Some(PortSpec::Named { .. })) && d == Direction::Egress;
                match peer {
                    None => {}
                    Some(Peer::Pods { .. }) if named_egress => {}
                    Some(Peer::Pods { ns, pods }) => {
                        let s = self.pod_set(ns, pods);
                        m.push(match d {
                            Direction::Ingress => Match::SrcSet(s),
                            Direction::Egress => Match::DstSet(s),
                        });
                    }
                    Some(Peer::Block { cidr, except }) => {
                        let Some(s) = self.block_set(*cidr, except) else {
                            continue;
                        };
                        m.push(match d {
                            Direction::Ingress => Match::SrcSet(s),
                            Direction::Egress => Match::DstSet(s),
                        });
                    }
                }
                match port {
                    None => {}
                    Some(PortSpec::Proto(p)) => m.push(Match::Proto(*p)),
                    Some(PortSpec::Range { proto, port, end }) => {
                        m.push(Match::Proto(*proto));
                        m.push(Match::DPort(*port, *end));
                    }
                    Some(PortSpec::Named { proto, name }) => match d {
                        Direction::Ingress => {
                            let Some(n) = subject.named_port(*proto, name) else {
                                continue;
                            };
                            m.push(Match::Proto(*proto));
                            m.push(Match::DPort(n, n));
                        }
                        Direction::Egress => {
                            let s = self.named_set(*peer, *proto, name);
                            m.push(Match::Proto(*proto));
                            m.push(Match::DstPortSet(s));
                        }
                    },
                }
                out.push(XRule::new(m, target.clone(), desc));
            }
        }
        out
    }

    fn cnp_rules(
        &mut self,
        subject: &Pod,
        d: Direction,
        tier: CnpTier,
        pass: Option<&str>,
    ) -> Vec<XRule> {
        let cluster = self.cluster;
        let tier_name = match tier {
            CnpTier::Admin => "Admin",
            CnpTier::Baseline => "Baseline",
        };
        let mut out = Vec::new();
        for cnp in cluster.cnps_for(tier, subject) {
            for r in cnp.rules(d) {
                let target = match (r.action, pass) {
                    (Action::Accept, _) => Target::Return,
                    (Action::Deny, _) => Target::Drop,
                    (Action::Pass, Some(chain)) => Target::Goto(chain.to_string()),
                    (Action::Pass, None) => continue,
                };
                let desc = format!("{tier_name}|{}|{}", cnp.name, r.label);
                out.extend(self.rule(subject, d, r, target, &desc));
            }
        }
        out
    }

    /// NetworkPolicy, Baseline and the default, for one pod and direction.
    fn lower_tiers(&mut self, subject: &Pod, d: Direction) -> Vec<XRule> {
        let cluster = self.cluster;
        let isolating: Vec<_> = cluster
            .netpols_for(subject)
            .filter(|p| p.side(d).is_some())
            .collect();
        let mut out = Vec::new();
        if !isolating.is_empty() {
            for p in &isolating {
                for r in p.side(d).map(|s| s.rules.as_slice()).unwrap_or_default() {
                    let desc = format!("NetworkPolicy|{}|{}", p.key(), r.label);
                    out.extend(self.rule(subject, d, r, Target::Return, &desc));
                }
            }
            let names: Vec<String> = isolating.iter().map(|p| p.key()).collect();
            out.push(XRule::new(
                vec![],
                Target::Drop,
                format!("NetworkPolicy|{}|no rule allows", names.join(",")),
            ));
            return out;
        }
        out.extend(self.cnp_rules(subject, d, CnpTier::Baseline, None));
        out.push(XRule::new(vec![], Target::Return, "Default||allow"));
        out
    }

    fn pod_chains(&mut self, pod: &Pod, d: Direction) {
        let chain = match d {
            Direction::Ingress => names::ingress_chain(&pod.key()),
            Direction::Egress => names::egress_chain(&pod.key()),
        };
        let has_pass = self
            .cluster
            .cnps_for(CnpTier::Admin, pod)
            .iter()
            .any(|c| c.rules(d).iter().any(|r| r.action == Action::Pass));
        if has_pass {
            let second = names::after_admin(&chain);
            let mut first = self.cnp_rules(pod, d, CnpTier::Admin, Some(&second));
            first.push(XRule::new(
                vec![],
                Target::Goto(second.clone()),
                "Admin||end of tier",
            ));
            let rest = self.lower_tiers(pod, d);
            self.prog.chains.insert(chain, first);
            self.prog.chains.insert(second, rest);
        } else {
            let mut rules = self.cnp_rules(pod, d, CnpTier::Admin, None);
            rules.extend(self.lower_tiers(pod, d));
            self.prog.chains.insert(chain, rules);
        }
    }
}

fn established() -> XRule {
    XRule::new(
        vec![Match::CtState("RELATED,ESTABLISHED")],
        Target::Accept,
        "replies and related traffic",
    )
}

/// The node's whole program.
pub fn compile(cluster: &Cluster, opts: &Options) -> Program {
    let mut b = Builder {
        cluster,
        prog: Program::default(),
    };
    let local: Vec<&Pod> = cluster.local_pods(&opts.node).collect();
    let mut egr = Vec::new();
    let mut ing = Vec::new();
    let mut out = vec![established()];
    for pod in &local {
        b.pod_chains(pod, Direction::Ingress);
        b.pod_chains(pod, Direction::Egress);
        let pe = names::egress_chain(&pod.key());
        let pi = names::ingress_chain(&pod.key());
        let desc = format!("dispatch|{}|", pod.key());
        for ip in &pod.ips {
            match &pod.iface {
                Some(iface) => {
                    egr.push(XRule::new(
                        vec![Match::Src(*ip), Match::InIface(iface.clone())],
                        Target::Goto(pe.clone()),
                        format!("{desc}egress"),
                    ));
                    egr.push(XRule::new(
                        vec![Match::Src(*ip), Match::PhysIn(iface.clone())],
                        Target::Goto(pe.clone()),
                        format!("{desc}egress"),
                    ));
                }
                None => egr.push(XRule::new(
                    vec![Match::Src(*ip)],
                    Target::Goto(pe.clone()),
                    format!("{desc}egress"),
                )),
            }
            ing.push(XRule::new(
                vec![Match::Dst(*ip)],
                Target::Goto(pi.clone()),
                format!("{desc}ingress"),
            ));
            out.push(XRule::new(
                vec![Match::Dst(*ip)],
                Target::Return,
                format!("{desc}node to pod"),
            ));
        }
    }
    let vtep_in = XRule::new(
        vec![Match::InIface(names::VTEP.into())],
        Target::Return,
        "other nodes",
    );
    let vtep_out = XRule::new(
        vec![Match::OutIface(names::VTEP.into())],
        Target::Return,
        "other nodes",
    );
    egr.push(vtep_in);
    ing.push(vtep_out.clone());
    out.push(vtep_out);
    if opts.pending_deny {
        let pending = "pending||rules not committed";
        egr.push(XRule::new(
            vec![Match::InIface(names::POD_IFACE_WILDCARD.into())],
            Target::Drop,
            pending,
        ));
        ing.push(XRule::new(
            vec![Match::OutIface(names::POD_IFACE_WILDCARD.into())],
            Target::Drop,
            pending,
        ));
        out.push(XRule::new(
            vec![Match::OutIface(names::POD_IFACE_WILDCARD.into())],
            Target::Drop,
            pending,
        ));
    }
    b.prog.chains.insert(names::EGRESS.into(), egr);
    b.prog.chains.insert(names::INGRESS.into(), ing);
    b.prog.chains.insert(names::OUT.into(), out);
    b.prog.chains.insert(
        names::FWD.into(),
        vec![
            established(),
            XRule::new(
                vec![],
                Target::Jump(names::EGRESS.into()),
                "egress of local pods",
            ),
            XRule::new(
                vec![],
                Target::Jump(names::INGRESS.into()),
                "ingress of local pods",
            ),
        ],
    );
    b.prog.chains.insert(
        names::IN.into(),
        vec![
            established(),
            XRule::new(
                vec![],
                Target::Jump(names::EGRESS.into()),
                "local pods to the node",
            ),
        ],
    );
    b.prog
}

/// The addresses a program dispatches (its committed local pods).
pub fn dispatched(prog: &Program) -> BTreeSet<Ipv4Addr> {
    prog.chains
        .get(names::INGRESS)
        .into_iter()
        .flatten()
        .filter_map(|r| match r.matches.first() {
            Some(Match::Dst(ip)) => Some(*ip),
            _ => None,
        })
        .collect()
}
