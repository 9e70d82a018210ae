//! DEL below the kernel's veth floor: DEL of trellis-overlay, trellis-routed and trellis-canal
//! retires the veth pair (down, off the bridge, both ends renamed to `trz…` tombstones, the
//! container end's addresses removed) instead of deleting it, and leaves the deletion to the
//! namespace's teardown. For each plugin, on a node namespace with a real `trellis ipamd`:
//!
//! 1. right after DEL the host end still exists, as a down tombstone out of any bridge, and
//!    the container's end too (the negative control: DEL did not take the kernel's slow path);
//!    nothing of the attachment is up, addressed or routed; CHECK of the deleted attachment
//!    fails;
//! 2. while the namespace stays, ADD again with `eth0` into it works and traffic flows;
//! 3. GC deletes the tombstone of a DEL whose namespace survived, and leaves the live
//!    attachments working;
//! 4. DEL and then the namespace's deletion leave no link, route, address, tombstone or
//!    allocation behind.
//!
//! DEL racing what frees or replaces the pair between its lookup of the host end and its
//! retirement (driven deterministically through `retire_found` with the stale lookup): the
//! namespace's teardown (the pair is gone: done, not ENODEV — the negative control shows the
//! kernel's ENODEV for the same request), and a newer sandbox's ADD of the same pod (its host
//! end, of the same name, is left alone); and DEL without CNI_NETNS while the namespace lives
//! on, which deletes the pair (the container's end is out of reach).
//!
//! And the node agent's sweep (`trellis bgp-agent` in a node namespace, its look period
//! shortened by `--tombstone-sweep-ms`): a tombstone of its plugin seen at the previous look is
//! deleted with its peer, while another plugin's tombstone and a fresh one (not yet seen at a
//! look) stay. The agent's look counter (`/metrics`) orders the test's observations against the
//! looks, so nothing depends on how fast the machine is.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use netns_testbed::bird::{Agent, AgentSpec};
use netns_testbed::cluster::StandaloneIpamd;
use netns_testbed::{Testbed, bin_dir, bin_path, require_root, require_tool};
use serde_json::{Value, json};
use trellis_net::link::is_tombstone;
use trellis_net::{Family, Handle, Link, Netns, VethSpec};

/// How long the kernel may take to free a pair once its namespace is deleted (asynchronous).
const RECLAIM: Duration = Duration::from_secs(30);

/// One plugin under test: its type, the readiness state its agent would write, and ipamd's
/// pool.
struct Mode {
    plugin: &'static str,
    ready: Value,
    pool: &'static [&'static str],
    /// The overlay's bridge, which the host end is a port of until DEL.
    bridge: Option<&'static str>,
}

/// One plugin run in the node namespace, as a runtime makes it.
async fn cni(
    tb: &Testbed,
    node: &Netns,
    m: &Mode,
    cmd: &str,
    cid: &str,
    pod: Option<&Netns>,
    conf: &Value,
) -> (bool, Value, String) {
    let env = [
        ("CNI_PATH", bin_dir().display().to_string()),
        ("CNI_COMMAND", cmd.to_string()),
        ("CNI_CONTAINERID", cid.to_string()),
        ("CNI_IFNAME", "eth0".to_string()),
        (
            "CNI_NETNS",
            pod.map(|p| p.path().display().to_string())
                .unwrap_or_default(),
        ),
        // The pod is named by the container id's first letter: a1 and a2 are two sandboxes of
        // pod a, whose host ends have the same name.
        (
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={}",
                &cid[..1]
            ),
        ),
    ];
    let run = tb
        .run_plugin(
            node,
            &bin_path(m.plugin),
            &env,
            conf,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    (run.ok, run.out, run.stderr)
}

fn with_prev(conf: &Value, result: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = result.clone();
    c
}

/// The pod's first IPv4 address in an ADD result, without its prefix.
fn ipv4(result: &Value) -> String {
    result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["address"].as_str())
        .find(|a| !a.contains(':'))
        .and_then(|a| a.split('/').next())
        .unwrap()
        .to_string()
}

async fn ping(tb: &Testbed, from: &Netns, to: &str) {
    let out = tb
        .exec(
            from,
            &["ping", "-c", "1", "-W", "2", to],
            Duration::from_secs(8),
        )
        .await
        .unwrap();
    assert!(out.success(), "ping {to}: {}{}", out.stdout, out.stderr);
}

async fn tombstones(h: &Handle) -> Vec<Link> {
    h.links()
        .await
        .unwrap()
        .into_iter()
        .filter(|l| is_tombstone(&l.name))
        .collect()
}

/// Asserts `link` is a retired end: a veth, down, in no bridge, holding no address but the
/// kernel's IPv6 link-local one, and no route goes through it.
async fn assert_retired(h: &Handle, link: &Link, where_: &str) {
    assert_eq!(link.kind.as_deref(), Some("veth"), "{where_}: {link:?}");
    assert!(!link.admin_up, "{where_}: still up: {link:?}");
    assert_eq!(
        link.controller, None,
        "{where_}: still in a bridge: {link:?}"
    );
    let held: Vec<_> = h
        .addresses(Some(link.index))
        .await
        .unwrap()
        .into_iter()
        .filter(|a| !matches!(a.address.addr(), std::net::IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80))
        .collect();
    assert!(
        held.is_empty(),
        "{where_}: {} still holds {held:?}",
        link.name
    );
    for family in [Family::V4, Family::V6] {
        let through: Vec<_> = h
            .routes(family, None)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.oif == Some(link.index))
            .collect();
        assert!(
            through.is_empty(),
            "{where_}: routes through {}: {through:?}",
            link.name
        );
    }
}

async fn scenario(m: Mode) {
    require_root();
    require_tool("ping", "iputils-ping");
    let tb = Testbed::new().unwrap();
    let ipamd = StandaloneIpamd::start(&tb, "del", m.pool).await.unwrap();
    let node = tb.add_ns("node").await.unwrap();
    trellis_net::sysctl::set(&node, &[("net.ipv4.ip_forward", "1")]).unwrap();
    let state: PathBuf = tb.state_dir().join("agent");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("ready.json"), m.ready.to_string()).unwrap();
    let conf = json!({
        "cniVersion": "1.1.0",
        "name": "delnet",
        "type": m.plugin,
        "stateDir": state,
        "ipam": {"type": "trellis-ipam", "socket": ipamd.socket},
    });
    let host = node.connect().unwrap();
    let links_before: Vec<String> = host
        .links()
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.name)
        .collect();
    let pod_a = tb.add_ns("pa").await.unwrap();
    let pod_b = tb.add_ns("pb").await.unwrap();

    let (ok, a1, err) = cni(&tb, &node, &m, "ADD", "a1", Some(&pod_a), &conf).await;
    assert!(ok, "ADD a1: {a1} {err}");
    let (ok, b1, err) = cni(&tb, &node, &m, "ADD", "b1", Some(&pod_b), &conf).await;
    assert!(ok, "ADD b1: {b1} {err}");
    ping(&tb, &pod_a, &ipv4(&b1)).await;

    // (1) DEL: the pair retired, not deleted.
    let host_name = a1["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| {
            i["sandbox"].as_str().unwrap_or_default().is_empty()
                && i["name"] != json!(m.bridge.unwrap_or(""))
        })
        .and_then(|i| i["name"].as_str())
        .unwrap()
        .to_string();
    let host_index = host.require_link(&host_name).await.unwrap().index;
    let (ok, out, err) = cni(
        &tb,
        &node,
        &m,
        "DEL",
        "a1",
        Some(&pod_a),
        &with_prev(&conf, &a1),
    )
    .await;
    assert!(ok, "DEL a1: {out} {err}");
    assert!(
        host.link(&host_name).await.unwrap().is_none(),
        "the host end kept its name"
    );
    let host_tomb = host
        .link_by_index(host_index)
        .await
        .unwrap()
        .expect("the negative control: DEL deleted the host end instead of retiring it");
    assert!(is_tombstone(&host_tomb.name), "{host_tomb:?}");
    assert_eq!(
        host_tomb.alias.as_deref(),
        Some(format!("{} a1/eth0", m.plugin).as_str()),
        "a tombstone keeps its owner label"
    );
    assert_retired(&host, &host_tomb, "host").await;
    let pod_h = pod_a.connect().unwrap();
    assert!(
        pod_h.link("eth0").await.unwrap().is_none(),
        "eth0 kept its name"
    );
    let pod_tombs = tombstones(&pod_h).await;
    assert_eq!(pod_tombs.len(), 1, "{pod_tombs:?}");
    assert_retired(&pod_h, &pod_tombs[0], "pod").await;
    // CHECK tells the truth about a deleted attachment; a second DEL is still a success.
    let (ok, out, _) = cni(
        &tb,
        &node,
        &m,
        "CHECK",
        "a1",
        Some(&pod_a),
        &with_prev(&conf, &a1),
    )
    .await;
    assert!(
        !ok && out["code"].as_u64().is_some(),
        "CHECK after DEL: {out}"
    );
    let (ok, out, err) = cni(
        &tb,
        &node,
        &m,
        "DEL",
        "a1",
        Some(&pod_a),
        &with_prev(&conf, &a1),
    )
    .await;
    assert!(ok, "DEL again: {out} {err}");

    // (2) The namespace stays: ADD again with eth0 into it works, and traffic flows.
    let (ok, a2, err) = cni(&tb, &node, &m, "ADD", "a2", Some(&pod_a), &conf).await;
    assert!(ok, "ADD a2 into the same netns: {a2} {err}");
    ping(&tb, &pod_a, &ipv4(&b1)).await;
    ping(&tb, &pod_b, &ipv4(&a2)).await;
    let (ok, out, err) = cni(
        &tb,
        &node,
        &m,
        "CHECK",
        "a2",
        Some(&pod_a),
        &with_prev(&conf, &a2),
    )
    .await;
    assert!(ok, "CHECK a2: {out} {err}");

    // (3) GC deletes the tombstone the namespace kept, and nothing live.
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([
        {"containerID": "a2", "ifname": "eth0"},
        {"containerID": "b1", "ifname": "eth0"},
    ]);
    let env = [
        ("CNI_PATH", bin_dir().display().to_string()),
        ("CNI_COMMAND", "GC".to_string()),
    ];
    let out = tb
        .run_plugin(
            &node,
            &bin_path(m.plugin),
            &env,
            &gc,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert!(out.ok, "GC: {}{}", out.out, out.stderr);
    assert!(
        tombstones(&host).await.is_empty(),
        "GC left a tombstone on the host"
    );
    assert!(
        tombstones(&pod_h).await.is_empty(),
        "GC left the pod's tombstone"
    );
    ping(&tb, &pod_a, &ipv4(&b1)).await;
    ping(&tb, &pod_b, &ipv4(&a2)).await;
    let (ok, out, err) = cni(
        &tb,
        &node,
        &m,
        "CHECK",
        "a2",
        Some(&pod_a),
        &with_prev(&conf, &a2),
    )
    .await;
    assert!(ok, "CHECK a2 after GC: {out} {err}");

    // (4) DEL, then the runtime deletes the namespaces: nothing is left.
    for (cid, pod, r) in [("a2", &pod_a, &a2), ("b1", &pod_b, &b1)] {
        let (ok, out, err) = cni(&tb, &node, &m, "DEL", cid, Some(pod), &with_prev(&conf, r)).await;
        assert!(ok, "DEL {cid}: {out} {err}");
    }
    assert_eq!(tombstones(&host).await.len(), 2, "both pairs retired");
    drop(pod_h);
    tb.delete_ns(&pod_a).unwrap();
    tb.delete_ns(&pod_b).unwrap();
    drop((pod_a, pod_b));
    let deadline = tokio::time::Instant::now() + RECLAIM;
    let left = loop {
        let mut names: Vec<String> = host
            .links()
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .filter(|n| !links_before.contains(n) && Some(n.as_str()) != m.bridge)
            .collect();
        names.sort();
        if names.is_empty() || tokio::time::Instant::now() >= deadline {
            break names;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(left.is_empty(), "left after the namespaces went: {left:?}");
    for family in [Family::V4, Family::V6] {
        let ours: Vec<_> = host
            .routes(family, None)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.protocol == trellis_net::proto::POD)
            .collect();
        assert!(ours.is_empty(), "{ours:?}");
    }
    ipamd.assert_released(&tb, "delnet").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_del_retires_the_pair_and_the_namespace_or_gc_frees_it() {
    scenario(Mode {
        plugin: "trellis-routed",
        ready: json!({"mtu": 1500}),
        pool: &["--cidr", "10.93.0.0/24", "--block-size", "26"],
        bridge: None,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canal_del_retires_the_pair_and_the_namespace_or_gc_frees_it() {
    scenario(Mode {
        plugin: "trellis-canal",
        ready: json!({"mtu": 1450}),
        pool: &["--cidr", "10.92.0.0/24", "--block-size", "26"],
        bridge: None,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_del_retires_the_pair_and_the_namespace_or_gc_frees_it() {
    scenario(Mode {
        plugin: "trellis-overlay",
        ready: json!({"block": "10.91.0.0/24", "cluster_cidr": "10.91.0.0/16", "mtu": 1450, "bridge": "deltr0"}),
        pool: &[
            "--cidr",
            "10.91.0.0/24",
            "--block-size",
            "24",
            "--reserve-head",
            "2",
            "--reserve-tail",
            "1",
            "--gateway",
        ],
        bridge: Some("deltr0"),
    })
    .await;
}

/// The agent's look period in the sweep test: long beside the test's few netlink requests
/// between two reads of the look counter, so a look rarely falls in between (when one does,
/// that round proves nothing and is taken again).
const SWEEP_MS: u64 = 500;
/// How long the sweep test waits for a look or a deletion (a handful of periods, loaded).
const SWEEP_BOUND: Duration = Duration::from_secs(30);

/// A tombstone as DEL leaves it when the namespace outlives DEL: a veth pair with its host end
/// in `host` renamed `trz…` and labelled `alias`, its other end in `pod` retired too.
async fn make_tombstone(host: &Handle, pod: &Netns, tmp: &str, alias: &str) -> Link {
    let peer = format!("{tmp}p");
    let link = host
        .add_veth(&VethSpec {
            name: tmp,
            peer_name: &peer,
            peer_ns: Some(pod),
            mtu: None,
            mac: None,
            peer_mac: None,
        })
        .await
        .unwrap();
    host.set_alias(link.index, alias).await.unwrap();
    let pod_h = pod.connect().unwrap();
    let pod_end = pod_h.require_link(&peer).await.unwrap();
    pod_h.retire(pod_end.index).await.unwrap();
    host.retire(link.index).await.unwrap();
    host.link_by_index(link.index).await.unwrap().unwrap()
}

/// The agent's count of looks that listed the links (`agent_tombstone_looks_total`).
async fn looks(agent: &Agent<'_>) -> u64 {
    let body = agent.get("/metrics").await.unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix("agent_tombstone_looks_total{result=\"ok\"} "))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

async fn present(h: &Handle, l: &Link) -> bool {
    h.link_by_index(l.index).await.unwrap().is_some()
}

/// Waits (bounded) until the agent has listed the links `n` times or more; the count.
async fn wait_looks(agent: &Agent<'_>, n: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + SWEEP_BOUND;
    loop {
        let now = looks(agent).await;
        if now >= n {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent looked {now} times, not {n}, within {SWEEP_BOUND:?}\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_sweeps_its_plugins_tombstones_seen_at_the_previous_look() {
    require_root();
    let tb = Testbed::new().unwrap();
    let node = tb.add_node("sw", 1).await.unwrap();
    // The namespace that outlived DEL: it keeps the tombstones' other ends.
    let pod = tb.add_ns("swp").await.unwrap();
    let host = node.ns.connect().unwrap();
    let pod_h = pod.connect().unwrap();
    let mut spec = AgentSpec::new(64512);
    spec.extra = vec!["--tombstone-sweep-ms".into(), SWEEP_MS.to_string()];
    let agent = Agent::start(&tb, &node, spec, Duration::from_secs(240))
        .await
        .unwrap();

    // (1) A tombstone of the agent's plugin goes, with its other end; another plugin's stays.
    let old = make_tombstone(&host, &pod, "swold", "trellis-routed old/eth0").await;
    let other = make_tombstone(&host, &pod, "swoth", "trellis-overlay other/eth0").await;
    assert!(is_tombstone(&old.name) && is_tombstone(&other.name));
    let deadline = tokio::time::Instant::now() + SWEEP_BOUND;
    while present(&host, &old).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent's tombstone {} still there after {SWEEP_BOUND:?}\n{}",
            old.name,
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gone_at = looks(&agent).await;
    // Two more looks, each of which saw the other plugin's tombstone at the previous one.
    wait_looks(&agent, gone_at + 2).await;
    assert!(
        present(&host, &other).await,
        "the sweep took another plugin's tombstone"
    );
    let pod_links: Vec<String> = pod_h
        .links()
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert_eq!(
        pod_links.len(),
        2,
        "lo and the other plugin's end only: {pod_links:?}"
    );
    let metrics = agent.get("/metrics").await.unwrap();
    assert!(
        metrics.contains("agent_tombstones_deleted_total 1"),
        "{metrics}"
    );

    // (2) A fresh tombstone survives the first look that sees it, and goes at the next. A
    // round in which a look falls between the two reads of the counter around the tombstone's
    // making (so which look first saw it is unknown), or between the reads around the check,
    // proves nothing and is taken again.
    let mut proven = false;
    for round in 0..5 {
        let before = looks(&agent).await;
        let fresh = make_tombstone(
            &host,
            &pod,
            &format!("swnew{round}"),
            &format!("trellis-routed new{round}/eth0"),
        )
        .await;
        let made_at = looks(&agent).await;
        if made_at == before {
            // Look before+1 is the first to see it; only look before+2 may delete it.
            wait_looks(&agent, before + 1).await;
            let there = present(&host, &fresh).await;
            if looks(&agent).await == before + 1 {
                assert!(
                    there,
                    "the sweep deleted a tombstone at the first look that saw it"
                );
                proven = true;
            }
        }
        let deadline = tokio::time::Instant::now() + SWEEP_BOUND;
        while present(&host, &fresh).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "fresh tombstone {} still there after {SWEEP_BOUND:?}\n{}",
                fresh.name,
                agent.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The look that deleted it was counted before it deleted, and was at least the second
        // to see it (look before+1 is the first that can).
        let gone_at = looks(&agent).await;
        assert!(
            gone_at >= before + 2,
            "deleted by look {gone_at} or earlier, made after look {before}"
        );
        if proven {
            break;
        }
    }
    assert!(proven, "no round without a look in its middle in 5");
    assert!(present(&host, &other).await);
}

/// DEL's lookup of the host end, then what frees or replaces the pair before DEL acts on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn del_racing_the_namespaces_teardown_or_a_newer_sandbox_is_done_and_harmless() {
    use trellis_plugin::veth::{PodEnd, Retired, retire_found};
    require_root();
    require_tool("ping", "iputils-ping");
    let m = Mode {
        plugin: "trellis-routed",
        ready: json!({"mtu": 1500}),
        pool: &["--cidr", "10.94.0.0/24", "--block-size", "26"],
        bridge: None,
    };
    let tb = Testbed::new().unwrap();
    let ipamd = StandaloneIpamd::start(&tb, "race", m.pool).await.unwrap();
    let node = tb.add_ns("node").await.unwrap();
    trellis_net::sysctl::set(&node, &[("net.ipv4.ip_forward", "1")]).unwrap();
    let state: PathBuf = tb.state_dir().join("agent");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("ready.json"), m.ready.to_string()).unwrap();
    let conf = json!({
        "cniVersion": "1.1.0",
        "name": "racenet",
        "type": m.plugin,
        "stateDir": state,
        "ipam": {"type": "trellis-ipam", "socket": ipamd.socket},
    });
    let host = node.connect().unwrap();
    let host_end = |r: &Value| -> String {
        r["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["sandbox"].as_str().unwrap_or_default().is_empty())
            .and_then(|i| i["name"].as_str())
            .unwrap()
            .to_string()
    };

    // (1) The namespace's teardown frees the pair between DEL's lookup and its first request.
    let pod_a = tb.add_ns("ra").await.unwrap();
    let pod_a_path = pod_a.path().to_path_buf();
    let (ok, a1, err) = cni(&tb, &node, &m, "ADD", "a1", Some(&pod_a), &conf).await;
    assert!(ok, "ADD a1: {a1} {err}");
    let looked_up = host.require_link(&host_end(&a1)).await.unwrap();
    tb.delete_ns(&pod_a).unwrap();
    drop(pod_a);
    let deadline = tokio::time::Instant::now() + RECLAIM;
    while host.link_by_index(looked_up.index).await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pair outlived its namespace by {RECLAIM:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The negative control: the request DEL makes first, on the stale index, is the kernel's
    // ENODEV (the error DEL answered with, code 999, before it took that for done).
    let stale = host.retire(looked_up.index).await.unwrap_err();
    assert!(stale.is_not_found(), "{stale}");
    let owner = trellis_plugin::veth::owner_alias(m.plugin, "a1", "eth0");
    let pod_end = PodEnd {
        netns: Some(&pod_a_path),
        ifname: "eth0",
    };
    let done = retire_found(&host, m.plugin, &looked_up, &owner, &pod_end)
        .await
        .unwrap();
    assert_eq!(done, Retired::Nothing);
    // The plugin's own DEL (the address released) succeeds too.
    let (ok, out, err) = cni(&tb, &node, &m, "DEL", "a1", None, &with_prev(&conf, &a1)).await;
    assert!(ok, "DEL a1 after its namespace went: {out} {err}");

    // (2) A newer sandbox of the same pod replaces the host end (same name) between the
    // earlier sandbox's DEL lookup and its requests: the newer one is left as it is.
    let pod_b1 = tb.add_ns("rb1").await.unwrap();
    let pod_b2 = tb.add_ns("rb2").await.unwrap();
    let pod_c = tb.add_ns("rc").await.unwrap();
    let (ok, b1, err) = cni(&tb, &node, &m, "ADD", "b1", Some(&pod_b1), &conf).await;
    assert!(ok, "ADD b1: {b1} {err}");
    let (ok, c1, err) = cni(&tb, &node, &m, "ADD", "c1", Some(&pod_c), &conf).await;
    assert!(ok, "ADD c1: {c1} {err}");
    let looked_up = host.require_link(&host_end(&b1)).await.unwrap();
    let (ok, b2, err) = cni(&tb, &node, &m, "ADD", "b2", Some(&pod_b2), &conf).await;
    assert!(ok, "ADD b2: {b2} {err}");
    assert_eq!(host_end(&b2), looked_up.name, "one pod, one host end name");
    let owner = trellis_plugin::veth::owner_alias(m.plugin, "b1", "eth0");
    let pod_b1_path = pod_b1.path().to_path_buf();
    let pod_end = PodEnd {
        netns: Some(&pod_b1_path),
        ifname: "eth0",
    };
    let done = retire_found(&host, m.plugin, &looked_up, &owner, &pod_end)
        .await
        .unwrap();
    assert_eq!(done, Retired::Nothing);
    let newer = host.require_link(&looked_up.name).await.unwrap();
    assert!(newer.admin_up, "{newer:?}");
    assert_eq!(
        newer.alias.as_deref(),
        Some(format!("{} b2/eth0", m.plugin).as_str())
    );
    // The earlier sandbox's real DEL now finds the newer host end by name, and leaves it.
    let (ok, out, err) = cni(
        &tb,
        &node,
        &m,
        "DEL",
        "b1",
        Some(&pod_b1),
        &with_prev(&conf, &b1),
    )
    .await;
    assert!(ok, "DEL b1: {out} {err}");
    let (ok, out, err) = cni(
        &tb,
        &node,
        &m,
        "CHECK",
        "b2",
        Some(&pod_b2),
        &with_prev(&conf, &b2),
    )
    .await;
    assert!(ok, "CHECK b2 after b1's DEL: {out} {err}");
    ping(&tb, &pod_b2, &ipv4(&c1)).await;
    ping(&tb, &pod_c, &ipv4(&b2)).await;
    assert!(tombstones(&host).await.is_empty());

    // (3) DEL without CNI_NETNS while the namespace lives on: the container's end is out of
    // DEL's reach, so the pair is deleted (a retired host end would leave eth0 addressed in
    // there), and a later ADD into that namespace with eth0 works.
    let pod_d = tb.add_ns("rd").await.unwrap();
    let (ok, d1, err) = cni(&tb, &node, &m, "ADD", "d1", Some(&pod_d), &conf).await;
    assert!(ok, "ADD d1: {d1} {err}");
    let (ok, out, err) = cni(&tb, &node, &m, "DEL", "d1", None, &with_prev(&conf, &d1)).await;
    assert!(ok, "DEL d1 without CNI_NETNS: {out} {err}");
    let left: Vec<String> = pod_d
        .connect()
        .unwrap()
        .links()
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert_eq!(left, ["lo"], "the pair is deleted");
    assert!(tombstones(&host).await.is_empty());
    let (ok, d2, err) = cni(&tb, &node, &m, "ADD", "d2", Some(&pod_d), &conf).await;
    assert!(ok, "ADD d2 into the same netns: {d2} {err}");
    ping(&tb, &pod_d, &ipv4(&c1)).await;

    for (cid, pod, r) in [
        ("b2", &pod_b2, &b2),
        ("c1", &pod_c, &c1),
        ("d2", &pod_d, &d2),
    ] {
        let (ok, out, err) = cni(&tb, &node, &m, "DEL", cid, Some(pod), &with_prev(&conf, r)).await;
        assert!(ok, "DEL {cid}: {out} {err}");
    }
    ipamd.assert_released(&tb, "racenet").await.unwrap();
}
