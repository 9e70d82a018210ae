//! The upstream NetworkPolicy conformance scenarios (kubernetes test/e2e/network/netpol),
//! re-encoded against real connections in both data-path modes: namespaces x, y, z with pods
//! a, b, c serving TCP and UDP on 80 and 81 (SCTP too where the kernel has it); after every
//! step the full matrix — every ordered pair × port × protocol — is probed and compared with
//! the independent model (netns_testbed::policy_model), polling until it matches or 15 s pass.
//!
//! SCTP: this machine's kernel gives out no SCTP sockets, so SCTP is probed only where it exists;
//! the SCTP steps here still prove that a policy naming SCTP is compiled and enforced for the
//! other protocols (it must not break the program).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/overlay_cluster.rs"]
mod overlay_cluster;
#[path = "support/policy_cluster.rs"]
mod policy_cluster;
#[path = "support/routed_cluster.rs"]
mod routed_cluster;

use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use netns_testbed::matrix::Proto;
use netns_testbed::policy_model::{Direction, NetworkPolicy, NpPeer, NpPort, NpRule, Op, Selector};
use policy_cluster::{Mode, PolicyCluster};

/// How long one step may take to show in the data path (the bound is far lower; this
/// is the test's patience on a loaded machine, and the figure is printed).
const CONVERGE: Duration = Duration::from_secs(15);

fn rule(peers: Vec<NpPeer>, ports: Vec<NpPort>) -> NpRule {
    NpRule { peers, ports }
}

async fn clear(c: &mut PolicyCluster, step: &str) {
    let all: Vec<(String, String)> = c
        .world
        .policies
        .iter()
        .map(|p| (p.namespace.clone(), p.name.clone()))
        .collect();
    for (ns, name) in all {
        c.delete_np(&ns, &name).await;
    }
    c.converge(step, CONVERGE).await;
}

async fn conformance(mode: Mode) {
    let start = Instant::now();
    let mut c = PolicyCluster::start(mode).await;
    eprintln!("[{mode:?}] cluster up in {:?}", start.elapsed());

    // Deny all ingress to x (policyTypes defaulted to Ingress): only x's ingress closes.
    c.apply_np(NetworkPolicy::new("x", "deny-all", Selector::all()).ingress(vec![]))
        .await;
    c.converge("deny-all ingress in x", CONVERGE).await;
    // Allow from the same namespace: a second policy, the allows are a union.
    c.apply_np(
        NetworkPolicy::new("x", "allow-same-ns", Selector::all())
            .ingress(vec![rule(vec![NpPeer::pods(Selector::all())], vec![])]),
    )
    .await;
    c.converge("deny-all + allow from the same namespace", CONVERGE)
        .await;
    clear(&mut c, "policy delete: all allowed again").await;

    // namespaceSelector: x/a accepts only namespace y.
    c.apply_np(
        NetworkPolicy::new("x", "from-y", Selector::eq("pod", "a")).ingress(vec![rule(
            vec![NpPeer::namespaces(Selector::eq("ns", "y"))],
            vec![],
        )]),
    )
    .await;
    c.converge("namespaceSelector ns=y to x/a", CONVERGE).await;
    // podSelector AND namespaceSelector in one peer: pods b of namespaces y or z.
    let yz = Selector::all().expr("ns", Op::In, &["y", "z"]);
    c.apply_np(
        NetworkPolicy::new("x", "from-y", Selector::eq("pod", "a")).ingress(vec![rule(
            vec![NpPeer::both(yz.clone(), Selector::eq("pod", "b"))],
            vec![],
        )]),
    )
    .await;
    c.converge("policy update: namespaceSelector AND podSelector", CONVERGE)
        .await;
    // The same selectors as two peers: OR (any pod of y or z, or pod b of x).
    c.apply_np(
        NetworkPolicy::new("x", "from-y", Selector::eq("pod", "a")).ingress(vec![rule(
            vec![
                NpPeer::namespaces(yz),
                NpPeer::pods(Selector::eq("pod", "b")),
            ],
            vec![],
        )]),
    )
    .await;
    c.converge("policy update: namespaceSelector OR podSelector", CONVERGE)
        .await;
    // Pod relabel: x/c becomes pod=b (allowed as peer), y/a becomes pod=x (still in y: allowed),
    // x/b becomes pod=a (now a subject: isolated).
    c.relabel_pod("x/c", &[("pod", "b")]).await;
    c.relabel_pod("x/b", &[("pod", "a")]).await;
    c.converge(
        "pod relabel: x/c joins the peers, x/b becomes a subject",
        CONVERGE,
    )
    .await;
    c.relabel_pod("x/c", &[("pod", "c")]).await;
    c.relabel_pod("x/b", &[("pod", "b")]).await;
    c.converge("pod relabel back", CONVERGE).await;
    // Namespace relabel: z leaves the selector (ns=w), then y joins as... nothing changes for y.
    c.relabel_ns("z", &[("ns", "w")]).await;
    c.converge(
        "namespace relabel: z no longer matches ns In (y, z)",
        CONVERGE,
    )
    .await;
    c.relabel_ns("z", &[("ns", "z")]).await;
    c.converge("namespace relabel back", CONVERGE).await;
    clear(&mut c, "policy delete").await;

    // Named ports: x accepts from everyone on serve-81-tcp and serve-80-udp only.
    c.apply_np(
        NetworkPolicy::new("x", "named", Selector::all()).ingress(vec![rule(
            vec![NpPeer::namespaces(Selector::all())],
            vec![
                NpPort::named(Proto::Tcp, "serve-81-tcp"),
                NpPort::named(Proto::Udp, "serve-80-udp"),
            ],
        )]),
    )
    .await;
    c.converge("named ports serve-81-tcp, serve-80-udp", CONVERGE)
        .await;
    // Port ranges (endPort) and numbers, by protocol: TCP 70–80, UDP 81–90.
    c.apply_np(
        NetworkPolicy::new("x", "named", Selector::all()).ingress(vec![rule(
            vec![],
            vec![
                NpPort::range(Proto::Tcp, 70, 80),
                NpPort::range(Proto::Udp, 81, 90),
            ],
        )]),
    )
    .await;
    c.converge("endPort ranges TCP 70-80, UDP 81-90", CONVERGE)
        .await;
    // A policy naming SCTP only: TCP and UDP to y/b closed (SCTP not probed without kernel support).
    c.apply_np(
        NetworkPolicy::new("y", "sctp-only", Selector::eq("pod", "b"))
            .ingress(vec![rule(vec![], vec![NpPort::number(Proto::Sctp, 80)])]),
    )
    .await;
    c.converge("SCTP-only ingress to y/b", CONVERGE).await;
    clear(&mut c, "policy delete").await;

    // ipBlock with except: y/a may reach the whole pod range but x/b; z/c accepts only x/a's /32.
    let xa = c.world.pods[c.pod("x/a")].ip;
    let xb = c.world.pods[c.pod("x/b")].ip;
    c.apply_np(
        NetworkPolicy::new("y", "egress-block", Selector::eq("pod", "a"))
            .types(&[Direction::Egress])
            .egress(vec![rule(
                vec![NpPeer::IpBlock {
                    cidr: "10.244.0.0/16".parse().unwrap(),
                    except: vec![Ipv4Net::new(xb, 32).unwrap()],
                }],
                vec![],
            )]),
    )
    .await;
    c.apply_np(
        NetworkPolicy::new("z", "ingress-block", Selector::eq("pod", "c")).ingress(vec![rule(
            vec![NpPeer::IpBlock {
                cidr: Ipv4Net::new(xa, 32).unwrap(),
                except: vec![],
            }],
            vec![],
        )]),
    )
    .await;
    c.converge(
        "ipBlock with except (egress), ipBlock /32 (ingress)",
        CONVERGE,
    )
    .await;
    clear(&mut c, "policy delete").await;

    // Egress: deny all from z, then allow z → y on TCP 80 only (policyTypes explicit).
    c.apply_np(NetworkPolicy::new("z", "deny-egress", Selector::all()).types(&[Direction::Egress]))
        .await;
    c.converge("deny all egress from z", CONVERGE).await;
    c.apply_np(
        NetworkPolicy::new("z", "to-y-80", Selector::all())
            .types(&[Direction::Egress])
            .egress(vec![rule(
                vec![NpPeer::namespaces(Selector::eq("ns", "y"))],
                vec![NpPort::number(Proto::Tcp, 80)],
            )]),
    )
    .await;
    c.converge("egress allow z → y TCP 80", CONVERGE).await;
    clear(&mut c, "policy delete").await;

    // policyTypes defaulting: egress rules and no policyTypes → Ingress and Egress.
    c.apply_np(
        NetworkPolicy::new("y", "defaulted", Selector::eq("pod", "c"))
            .ingress(vec![rule(vec![NpPeer::pods(Selector::all())], vec![])])
            .egress(vec![rule(
                vec![NpPeer::namespaces(Selector::eq("ns", "x"))],
                vec![],
            )]),
    )
    .await;
    c.converge("policyTypes defaulted to Ingress+Egress", CONVERGE)
        .await;
    // Multiple policies for one pod: union of both.
    c.apply_np(
        NetworkPolicy::new("y", "more", Selector::eq("pod", "c"))
            .types(&[Direction::Egress])
            .egress(vec![rule(
                vec![NpPeer::pods(Selector::eq("pod", "a"))],
                vec![NpPort::number(Proto::Udp, 81)],
            )]),
    )
    .await;
    c.converge("two egress policies: union", CONVERGE).await;
    clear(&mut c, "policy delete").await;

    // Upstream's defaulting adds Egress only when there is at least one egress rule: an empty
    // egress list leaves the pod's egress open.
    c.apply_np(
        NetworkPolicy::new("x", "empty-egress", Selector::eq("pod", "a"))
            .ingress(vec![])
            .egress(vec![]),
    )
    .await;
    assert_eq!(
        c.stored_policy_types("x", "empty-egress").await,
        ["Ingress"],
        "the API server defaults policyTypes as upstream's SetDefaults_NetworkPolicy: Egress only when egress has rules"
    );
    c.converge("egress: [] without policyTypes → Ingress only", CONVERGE)
        .await;
    clear(&mut c, "policy delete (end)").await;
    eprintln!("[{mode:?}] conformance done in {:?}", start.elapsed());
    c.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn network_policy_conformance_overlay() {
    conformance(Mode::Overlay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn network_policy_conformance_routed() {
    conformance(Mode::Routed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn network_policy_conformance_canal() {
    conformance(Mode::Canal).await;
}
