//! The model → one node's program: chains and sets.
//!
//! Layout (filter table):
//!
//! ```text
//! FORWARD → TRELLIS-POL-FWD: ESTABLISHED,RELATED accept; [-i tr+] -j TRELLIS-POL-EGR;
//!                            -j TRELLIS-POL-ING
//! INPUT   → TRELLIS-POL-IN:  ESTABLISHED,RELATED accept; [-i tr+] -j TRELLIS-POL-EGR
//!                            (pods to the node; `-i tr+` when every local pod's interface is
//!                            known, so other nodes' packets skip the egress dispatch)
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

use std::collections::{BTreeMap, BTreeSet};
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

/// What a set holds, so a pod event can recompute only that pod's memberships.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetSource {
    /// The addresses of the pods a pod peer names.
    Pods {
        ns: NsMatch,
        pods: crate::rules::SelectorKey,
    },
    /// (address, port) of the named container port on the pods `scope` names (every policy
    /// pod when None).
    Named {
        scope: Option<(NsMatch, crate::rules::SelectorKey)>,
        proto: Proto,
        port: String,
    },
    /// An ipBlock: fixed, no pod changes it.
    Block,
}

impl SetSource {
    /// The members `pod` contributes to this set.
    pub fn members_of(&self, cluster: &Cluster, pod: &Pod) -> Vec<Member> {
        match self {
            SetSource::Pods { ns, pods } if cluster.peer_has_pod(ns, pods, pod) => {
                pod.ips.iter().map(|ip| Member::Ip(*ip)).collect()
            }
            SetSource::Named { scope, proto, port } => {
                let selected = match scope {
                    Some((ns, pods)) => cluster.peer_has_pod(ns, pods, pod),
                    None => pod.is_policy_pod(),
                };
                match pod.named_port(*proto, port).filter(|_| selected) {
                    Some(n) => pod
                        .ips
                        .iter()
                        .map(|ip| Member::IpPort {
                            ip: *ip,
                            proto: *proto,
                            port: n,
                        })
                        .collect(),
                    None => Vec::new(),
                }
            }
            _ => Vec::new(),
        }
    }
}

struct Builder<'a> {
    cluster: &'a Cluster,
    /// Sets already committed: referenced by name, their members not recomputed.
    known: Option<&'a BTreeMap<String, SetDef>>,
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
    fn has_set(&self, name: &str) -> bool {
        self.prog.sets.contains_key(name) || self.known.is_some_and(|k| k.contains_key(name))
    }

    fn pod_set(&mut self, ns: &NsMatch, pods: &crate::rules::SelectorKey) -> String {
        let name = names::set('p', &format!("pods|{}|{}", ns_key(ns), pods.canonical));
        if !self.has_set(&name) {
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
            self.prog.sources.insert(
                name.clone(),
                SetSource::Pods {
                    ns: ns.clone(),
                    pods: pods.clone(),
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
        if self.has_set(&name) {
            return Some(name);
        }
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
        self.prog.sources.insert(name.clone(), SetSource::Block);
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
        if !self.has_set(&name) {
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
            let scope = match peer {
                Some(Peer::Pods { ns, pods }) => Some((ns.clone(), pods.clone())),
                _ => None,
            };
            self.prog.sources.insert(
                name.clone(),
                SetSource::Named {
                    scope,
                    proto,
                    port: port_name.to_string(),
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
        known: None,
        prog: Program::default(),
    };
    let local: Vec<&Pod> = cluster.local_pods(&opts.node).collect();
    for pod in &local {
        b.pod_chains(pod, Direction::Ingress);
        b.pod_chains(pod, Direction::Egress);
    }
    b.prog.chains.extend(frame(&local, opts));
    // A set made for a rule that came to nothing (an ingress named port the pod lacks) is
    // referenced by no rule: not kept, so a pod event's change set can tell the same.
    let referenced = referenced_sets(b.prog.chains.values());
    b.prog.sets.retain(|n, _| referenced.contains(n.as_str()));
    b.prog
        .sources
        .retain(|n, _| referenced.contains(n.as_str()));
    b.prog
}

/// The sets the rules of `chains` name.
fn referenced_sets<'a>(chains: impl Iterator<Item = &'a Vec<XRule>>) -> BTreeSet<&'a str> {
    chains
        .flat_map(|rules| rules.iter().flat_map(XRule::sets))
        .collect()
}

/// The chains that do not belong to one pod: the dispatch of the local pods' addresses and
/// interfaces to their chains, and the entry chains.
fn frame(local: &[&Pod], opts: &Options) -> Vec<(String, Vec<XRule>)> {
    let mut egr = Vec::new();
    let mut ing = Vec::new();
    let mut out = vec![established()];
    for pod in local {
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
    // Every rule of the egress dispatch matches a pod interface (`tr…`) when every local pod's
    // interface is known: a packet from anywhere else (another node, the underlay) would walk
    // two rules per local pod to fall through, so it skips the chain — the first packet of every
    // connection into a pod pays one rule instead of a hundred at 50 pods. A pod whose
    // interface is unknown is dispatched by address alone, on any interface: then every packet
    // walks the chain as before.
    let tr = names::POD_IFACE_WILDCARD.trim_end_matches('+');
    let from_pods = if local
        .iter()
        .all(|p| p.iface.as_deref().is_some_and(|i| i.starts_with(tr)))
    {
        vec![Match::InIface(names::POD_IFACE_WILDCARD.into())]
    } else {
        Vec::new()
    };
    vec![
        (names::EGRESS.into(), egr),
        (names::INGRESS.into(), ing),
        (names::OUT.into(), out),
        (
            names::FWD.into(),
            vec![
                established(),
                XRule::new(
                    from_pods.clone(),
                    Target::Jump(names::EGRESS.into()),
                    "egress of local pods",
                ),
                XRule::new(
                    vec![],
                    Target::Jump(names::INGRESS.into()),
                    "ingress of local pods",
                ),
            ],
        ),
        (
            names::IN.into(),
            vec![
                established(),
                XRule::new(
                    from_pods,
                    Target::Jump(names::EGRESS.into()),
                    "local pods to the node",
                ),
            ],
        ),
    ]
}

/// What one batch of pod events changes, as the kernel must be told it: set members, and — only
/// when a local pod is among them — that pod's chains, the dispatch chains, and the sets they
/// newly need or no longer need. Applied to the program it was planned from, it gives exactly
/// what [`compile`] gives for the cluster now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Sets a chain newly needs, whole.
    pub new_sets: BTreeMap<String, (SetDef, SetSource)>,
    /// Members to add to and delete from committed sets.
    pub add: Vec<(String, Member)>,
    pub del: Vec<(String, Member)>,
    /// Chains (re)declared, with their rules.
    pub chains: BTreeMap<String, Vec<XRule>>,
    /// Chains removed.
    pub delete: Vec<String>,
    /// Sets no rule references any more.
    pub destroy: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.new_sets.is_empty()
            && self.add.is_empty()
            && self.del.is_empty()
            && self.chains.is_empty()
            && self.delete.is_empty()
            && self.destroy.is_empty()
    }

    /// Brings `prog` (the program it was planned from) to where the plan leads.
    pub fn apply_to(&self, prog: &mut Program) {
        for (n, (def, src)) in &self.new_sets {
            prog.sets.insert(n.clone(), def.clone());
            prog.sources.insert(n.clone(), src.clone());
        }
        for (n, m) in &self.add {
            if let Some(s) = prog.sets.get_mut(n) {
                s.members.insert(*m);
            }
        }
        for (n, m) in &self.del {
            if let Some(s) = prog.sets.get_mut(n) {
                s.members.remove(m);
            }
        }
        for (n, rules) in &self.chains {
            prog.chains.insert(n.clone(), rules.clone());
        }
        for n in &self.delete {
            prog.chains.remove(n);
        }
        for n in &self.destroy {
            prog.sets.remove(n);
            prog.sources.remove(n);
        }
    }
}

/// The change set of pod events: `changed` holds, for every pod that changed since `prev` was
/// compiled, what it was then (None: it did not exist); the cluster holds what it is now. Only
/// pod changes may be planned this way: a namespace or policy change needs [`compile`].
pub fn plan_pods(
    prev: &Program,
    cluster: &Cluster,
    opts: &Options,
    changed: &BTreeMap<String, Option<Pod>>,
) -> Plan {
    let mut plan = Plan::default();
    let is_local = |p: &Pod| p.node.as_deref() == Some(opts.node.as_str()) && p.is_policy_pod();
    let local_changed: Vec<&String> = changed
        .iter()
        .filter(|(k, old)| {
            old.as_ref().is_some_and(is_local) || cluster.pods.get(*k).is_some_and(is_local)
        })
        .map(|(k, _)| k)
        .collect();
    if !local_changed.is_empty() {
        // That pod's chains (and the dispatch) anew; every other chain stays as it is: a pod's
        // chains depend on its own labels, ports and namespace, never on other pods.
        let mut b = Builder {
            cluster,
            known: Some(&prev.sets),
            prog: Program::default(),
        };
        for k in &local_changed {
            if let Some(p) = cluster.pods.get(*k).filter(|p| is_local(p)) {
                b.pod_chains(p, Direction::Ingress);
                b.pod_chains(p, Direction::Egress);
            }
        }
        let local: Vec<&Pod> = cluster.local_pods(&opts.node).collect();
        b.prog.chains.extend(frame(&local, opts));
        for k in &local_changed {
            let (pi, pe) = (names::ingress_chain(k), names::egress_chain(k));
            for c in [names::after_admin(&pi), pi, names::after_admin(&pe), pe] {
                if prev.chains.contains_key(&c) && !b.prog.chains.contains_key(&c) {
                    plan.delete.push(c);
                }
            }
        }
        for (name, rules) in std::mem::take(&mut b.prog.chains) {
            if prev.chains.get(&name) != Some(&rules) {
                plan.chains.insert(name, rules);
            }
        }
        let kept = prev
            .chains
            .iter()
            .filter(|(n, _)| !plan.chains.contains_key(*n) && !plan.delete.contains(n))
            .map(|(_, r)| r);
        let referenced = referenced_sets(kept.chain(plan.chains.values()));
        for (name, def) in std::mem::take(&mut b.prog.sets) {
            if referenced.contains(name.as_str())
                && let Some(src) = b.prog.sources.remove(&name)
            {
                plan.new_sets.insert(name, (def, src));
            }
        }
        plan.destroy = prev
            .sets
            .keys()
            .filter(|n| !referenced.contains(n.as_str()))
            .cloned()
            .collect();
    }
    // Members: what the changed pods contributed then and contribute now, each checked against
    // every pod holding that address (two pods may share one for a moment).
    let sources: Vec<(&String, &SetSource)> = prev
        .sources
        .iter()
        .filter(|(n, s)| {
            !matches!(s, SetSource::Block)
                && prev.sets.contains_key(*n)
                && !plan.destroy.contains(n)
        })
        .collect();
    let mut candidates: BTreeSet<(usize, Member)> = BTreeSet::new();
    for (k, old) in changed {
        for p in old.iter().chain(cluster.pods.get(k)) {
            for (i, (_, src)) in sources.iter().enumerate() {
                candidates.extend(src.members_of(cluster, p).into_iter().map(|m| (i, m)));
            }
        }
    }
    if candidates.is_empty() {
        return plan;
    }
    let addrs: BTreeSet<Ipv4Addr> = candidates.iter().filter_map(|(_, m)| m.addr()).collect();
    let holders: Vec<&Pod> = cluster
        .pods
        .values()
        .filter(|p| p.ips.iter().any(|ip| addrs.contains(ip)))
        .collect();
    for (i, m) in candidates {
        let (name, src) = sources[i];
        let want = holders
            .iter()
            .any(|p| src.members_of(cluster, p).contains(&m));
        let has = prev.sets.get(name).is_some_and(|s| s.members.contains(&m));
        match (want, has) {
            (true, false) => plan.add.push((name.clone(), m)),
            (false, true) => plan.del.push((name.clone(), m)),
            _ => {}
        }
    }
    plan
}

/// The change set of policy events (NetworkPolicies and ClusterNetworkPolicies changed, no pod
/// and no namespace since `prev` was compiled): every local pod's chains and the dispatch are
/// built again — cheap, a node has few pods — but the sets `prev` already has are named, not
/// recomputed: a set's name is a hash of what selects its members, and pods and namespaces are
/// unchanged, so its members are too. Only sets a rule newly names are computed. The plan holds
/// the chains that differ, the chains and sets no longer wanted, and the new sets; applied to
/// `prev` it gives exactly what [`compile`] gives for the cluster now.
///
/// Not used by the daemon yet: it was tried together with a verifier moved off the daemon's
/// loop, and those runs of the policy-scale bench stalled (that change alone stalled too); it
/// has not been measured on its own.
pub fn plan_policies(prev: &Program, cluster: &Cluster, opts: &Options) -> Plan {
    let mut plan = Plan::default();
    let mut b = Builder {
        cluster,
        known: Some(&prev.sets),
        prog: Program::default(),
    };
    let local: Vec<&Pod> = cluster.local_pods(&opts.node).collect();
    for pod in &local {
        b.pod_chains(pod, Direction::Ingress);
        b.pod_chains(pod, Direction::Egress);
    }
    b.prog.chains.extend(frame(&local, opts));
    let chains = std::mem::take(&mut b.prog.chains);
    let referenced = referenced_sets(chains.values());
    for (name, def) in std::mem::take(&mut b.prog.sets) {
        if referenced.contains(name.as_str())
            && let Some(src) = b.prog.sources.remove(&name)
        {
            plan.new_sets.insert(name, (def, src));
        }
    }
    plan.destroy = prev
        .sets
        .keys()
        .filter(|n| !referenced.contains(n.as_str()))
        .cloned()
        .collect();
    plan.delete = prev
        .chains
        .keys()
        .filter(|n| !chains.contains_key(*n))
        .cloned()
        .collect();
    plan.chains = chains
        .into_iter()
        .filter(|(name, rules)| prev.chains.get(name) != Some(rules))
        .collect();
    plan
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
