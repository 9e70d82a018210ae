//! The conformance kit against `trellis-routed` at every version, with no deviation allowed:
//! trellis-ipam hands out the addresses through a real `trellis ipamd` (standalone store) whose
//! pool is cut in routed-mode /26 blocks with nothing reserved (the plugin narrows each
//! address to a /32). The readiness state stands in for the BGP agent.
//!
//! The same plugin behind a wrapper whose GC releases nothing, or releases the attachment the
//! runtime still lists, fails the kit's GC rule: the rule looks at the allocations, not only at
//! exit codes.
//!
//! Beside the kit, the plugin's own promises on a node namespace with host-local handing out
//! IPv4 and IPv6: ADD waits for the agent's readiness; each pod's first ping6, right after its
//! ADD, reaches its gateway (no retry: ADD returns once IPv6 is usable); two pods reach each
//! other in both families through the host (proxy ARP, the permanent gateway entry, the host routes) with the
//! agent's MTU; CHECK notices a missing host route; a late DEL of an earlier sandbox of the same
//! pod leaves the current one alone; DEL removes every route and address and retires the pairs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use netns_testbed::cluster::{StandaloneIpamd, kit_with_trellis_ipam, kit_with_trellis_ipam_dual};
use netns_testbed::cni_kit::{self, PluginUnderTest};
use netns_testbed::{REFERENCE_PLUGIN_DIR, Testbed, bin_dir, bin_path, require_root, require_tool};
use serde_json::{Value, json};
use trellis_cni::Version;
use trellis_net::{Family, Netns, Route};

/// Writes the agent's readiness state under `dir` (idempotent) and returns its directory.
fn ready_state(dir: &std::path::Path) -> PathBuf {
    let state = dir.join("routed");
    let file = state.join("ready.json");
    if !file.is_file() {
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(&file, json!({"mtu": 1500}).to_string()).unwrap();
    }
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trellis_routed_passes_the_kit_with_trellis_ipam_at_every_version() {
    require_root();
    kit_with_trellis_ipam(
        "trellis-routed",
        json!({"mtu": 1500}),
        &["--cidr", "10.97.0.0/24", "--block-size", "26"],
    )
    .await
    .unwrap();
}

/// Dual-stack: every attachment gets an IPv4 /32 and an IPv6 /128 from two pools; the kit's
/// rules hold for both (DEL releases both, CHECK and GC see both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trellis_routed_passes_the_kit_dual_stack() {
    require_root();
    kit_with_trellis_ipam_dual(
        "trellis-routed",
        json!({"mtu": 1500}),
        &["--cidr", "10.97.0.0/24", "--block-size", "26"],
        &["--cidr", "fd00:97::/112", "--block-size", "122"],
    )
    .await
    .unwrap();
}

/// The kit against `trellis-routed` behind `support/kit-broken-plugin.sh` in `mode`, at 1.1.0
/// with trellis-ipam: the verdict.
async fn routed_behind_wrapper(mode: &str) -> Result<(), String> {
    require_root();
    let routed = bin_path("trellis-routed");
    let tb = Testbed::new().unwrap();
    let ipamd = StandaloneIpamd::start(
        &tb,
        "kit",
        &["--cidr", "10.97.0.0/24", "--block-size", "26"],
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let name = format!("kit-broken-{mode}");
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/kit-broken-plugin.sh");
    std::os::unix::fs::symlink(&script, dir.path().join(&name)).unwrap();
    std::os::unix::fs::symlink(&routed, dir.path().join("real-plugin")).unwrap();
    let sock = ipamd.socket.display().to_string();
    let kind = name.clone();
    let put = PluginUnderTest {
        label: format!("trellis-routed behind kit-broken-plugin.sh ({mode})"),
        plugin: name,
        cni_path: vec![dir.path().to_path_buf(), bin_dir()],
        versions: vec![Version::V1_1_0],
        config: Box::new(move |ctx, v| {
            json!({
                "cniVersion": v.as_str(),
                "name": "kitnet",
                "type": kind,
                "stateDir": ready_state(&ctx.state_dir),
                "ipam": {"type": "trellis-ipam", "socket": sock},
            })
        }),
        allocations: Some(ipamd.allocations(&tb)),
        deviations: Vec::new(),
    };
    let report = cni_kit::run(&put).await.unwrap();
    let verdict = report.verdict(&put);
    eprintln!("{mode}: {verdict:?}");
    verdict
}

/// The control: the wrapper changing nothing passes, GC included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trellis_routed_behind_a_faithful_wrapper_passes_the_kit() {
    routed_behind_wrapper("faithful").await.unwrap();
}

/// A GC that releases nothing fails the kit: the gone attachment's addresses are still held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gc_that_releases_nothing_fails_the_kit() {
    let e = routed_behind_wrapper("gc-noop").await.unwrap_err();
    assert!(
        e.contains("[1.1.0 Gc] GC kept ") && e.contains("of kit-gc-gone"),
        "{e}"
    );
}

/// A GC that releases the listed attachment too fails the kit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gc_that_releases_a_valid_attachment_fails_the_kit() {
    let e = routed_behind_wrapper("gc-all").await.unwrap_err();
    assert!(
        e.contains("[1.1.0 Gc] GC released ") && e.contains("of kit-gc-keep, a valid attachment"),
        "{e}"
    );
}

/// One plugin run in `ns`, as a runtime makes it: the CNI variables, the config on stdin.
async fn cni(
    tb: &Testbed,
    ns: &Netns,
    env: &[(&str, &str)],
    conf: &Value,
) -> (bool, Value, String) {
    let path = std::env::join_paths([bin_dir(), PathBuf::from(REFERENCE_PLUGIN_DIR)]).unwrap();
    let mut all = vec![("CNI_PATH", path.to_string_lossy().into_owned())];
    all.extend(env.iter().map(|(k, v)| (*k, v.to_string())));
    let run = tb
        .run_plugin(
            ns,
            &bin_path("trellis-routed"),
            &all,
            conf,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    (run.ok, run.out, run.stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_pods_reach_each_other_in_both_families_and_del_is_owned() {
    require_root();
    require_tool("host-local", "containernetworking-plugins");
    require_tool("ping", "iputils-ping");
    let tb = Testbed::new().unwrap();
    let node = tb.add_ns("node").await.unwrap();
    // The agent's part of the node: forwarding on (the plugin only turns it on per host end).
    trellis_net::sysctl::set(
        &node,
        &[
            ("net.ipv4.ip_forward", "1"),
            ("net/ipv6/conf/all/forwarding", "1"),
        ],
    )
    .unwrap();
    let state_dir = tb.state_dir().join("routed");
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "routednet",
        "type": "trellis-routed",
        "stateDir": state_dir,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.95.0.0/26"}], [{"subnet": "fd00:95::/120"}]],
            "dataDir": tb.state_dir().join("host-local"),
        }
    });
    let host_h = node.connect().unwrap();
    let pod_a = tb.add_ns("pa").await.unwrap();
    let pod_b = tb.add_ns("pb").await.unwrap();
    let env = |cmd: &'static str, cid: &'static str, pod: &'static str, ns: &Netns| {
        vec![
            ("CNI_COMMAND", cmd.to_string()),
            ("CNI_CONTAINERID", cid.to_string()),
            ("CNI_NETNS", ns.path().display().to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            (
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}"),
            ),
        ]
    };
    let run = |e: Vec<(&'static str, String)>, c: Value| {
        let tb = &tb;
        let node = node.clone();
        async move {
            let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
            cni(tb, &node, &e, &c).await
        }
    };

    // Before the agent is ready: "try again later", and nothing taken or made.
    let links_before = host_h.links().await.unwrap().len();
    let (ok, err, _) = run(env("ADD", "ca", "a", &pod_a), conf.clone()).await;
    assert!(!ok && err["code"] == 11, "{err}");
    assert_eq!(host_h.links().await.unwrap().len(), links_before);
    assert!(
        pod_a
            .connect()
            .unwrap()
            .link("eth0")
            .await
            .unwrap()
            .is_none()
    );
    std::fs::create_dir_all(&state_dir).unwrap();
    std::fs::write(state_dir.join("ready.json"), r#"{"mtu": 1400}"#).unwrap();

    // Two pods. IPv6 is usable the moment ADD returns: the first ping6 of each pod, to its
    // gateway (the host end's own fe80::1), is sent right after its ADD and must succeed —
    // no retry (without IFA_F_NODAD and the wait for the kernel's work queues it fails).
    let mut results = Vec::new();
    for (cid, pod, ns) in [("ca", "a", &pod_a), ("cb", "b", &pod_b)] {
        let (ok, result, stderr) = run(env("ADD", cid, pod, ns), conf.clone()).await;
        assert!(ok, "ADD {pod}: {result} {stderr}");
        let out = tb
            .exec(
                ns,
                &["ping", "-6", "-c", "1", "-W", "2", "fe80::1%eth0"],
                Duration::from_secs(8),
            )
            .await
            .unwrap();
        assert!(
            out.success(),
            "the first ping6 of {pod} to its gateway right after ADD: {}{}",
            out.stdout,
            out.stderr
        );
        results.push(result);
    }
    let ip = |r: &Value, v6: bool| -> String {
        r["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["address"].as_str().unwrap().to_string())
            .find(|a| a.contains(':') == v6)
            .unwrap_or_else(|| panic!("no {} address in {r}", if v6 { "IPv6" } else { "IPv4" }))
    };
    for (r, pod, ns) in [(&results[0], "a", &pod_a), (&results[1], "b", &pod_b)] {
        assert!(
            ip(r, false).ends_with("/32") && ip(r, true).ends_with("/128"),
            "{r}"
        );
        let host_end = trellis_net::link::host_veth_name(&format!("default/{pod}"));
        assert_eq!(r["interfaces"][0]["name"], host_end.as_str(), "{r}");
        let link = host_h.require_link(&host_end).await.unwrap();
        assert_eq!(link.mtu, 1400);
        for (key, want) in [
            (format!("net/ipv4/conf/{host_end}/proxy_arp"), "1"),
            (format!("net/ipv4/neigh/{host_end}/proxy_delay"), "0"),
            (format!("net/ipv4/conf/{host_end}/forwarding"), "1"),
        ] {
            assert_eq!(
                trellis_net::sysctl::get(&node, &key).unwrap(),
                want,
                "{key}"
            );
        }
        let h = ns.connect().unwrap();
        let eth0 = h.require_link("eth0").await.unwrap();
        assert_eq!(eth0.mtu, 1400);
        let routes = h.routes(Family::V4, Some(Route::TABLE_MAIN)).await.unwrap();
        assert!(
            routes.iter().any(|r| r.dst.to_string() == "0.0.0.0/0"
                && r.gateway.map(|g| g.to_string()).as_deref() == Some("169.254.1.1")),
            "{routes:?}"
        );
        let neigh = h.neighbours(Some(eth0.index)).await.unwrap();
        assert!(
            neigh
                .iter()
                .any(|n| n.ip.to_string() == "169.254.1.1" && n.permanent && n.mac == link.mac),
            "{neigh:?}"
        );
    }
    let bare = |a: String| a.split('/').next().unwrap().to_string();
    let (a4, b4) = (bare(ip(&results[0], false)), bare(ip(&results[1], false)));
    let (a6, b6) = (bare(ip(&results[0], true)), bare(ip(&results[1], true)));
    for (from, to) in [(&pod_b, &a6), (&pod_a, &b6), (&pod_a, &b4), (&pod_b, &a4)] {
        let out = tb
            .exec(
                from,
                &["ping", "-c", "1", "-W", "2", to.as_str()],
                Duration::from_secs(8),
            )
            .await
            .unwrap();
        assert!(out.success(), "ping {to}: {}{}", out.stdout, out.stderr);
    }
    // The full underlay MTU: 1400 bytes of IPv4 go through unfragmented, 1401 do not.
    let out = tb
        .exec(
            &pod_a,
            &[
                "ping",
                "-c",
                "1",
                "-W",
                "2",
                "-M",
                "do",
                "-s",
                "1372",
                b4.as_str(),
            ],
            Duration::from_secs(8),
        )
        .await
        .unwrap();
    assert!(out.success(), "{}{}", out.stdout, out.stderr);

    // CHECK passes, and notices a missing host route.
    let with_prev = |r: &Value| {
        let mut c = conf.clone();
        c["prevResult"] = r.clone();
        c
    };
    let (ok, out, stderr) = run(env("CHECK", "ca", "a", &pod_a), with_prev(&results[0])).await;
    assert!(ok, "CHECK: {out} {stderr}");
    let host_end_a = trellis_net::link::host_veth_name("default/a");
    let link_a = host_h.require_link(&host_end_a).await.unwrap();
    assert!(
        host_h
            .delete_route(
                &Route::dev(ip(&results[0], false).parse().unwrap(), link_a.index)
                    .protocol(trellis_net::proto::POD)
            )
            .await
            .unwrap()
    );
    let (ok, out, _) = run(env("CHECK", "ca", "a", &pod_a), with_prev(&results[0])).await;
    assert!(
        !ok && out["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("host has no route"),
        "{out}"
    );
    host_h
        .replace_route(
            &Route::dev(ip(&results[0], false).parse().unwrap(), link_a.index)
                .protocol(trellis_net::proto::POD),
        )
        .await
        .unwrap();
    let (ok, out, stderr) = run(env("CHECK", "ca", "a", &pod_a), with_prev(&results[0])).await;
    assert!(ok, "CHECK after the route is back: {out} {stderr}");

    // A late DEL of an earlier sandbox of pod b (same pod, other container id): b stays.
    let (ok, out, _) = run(env("DEL", "cb-old", "b", &pod_b), conf.clone()).await;
    assert!(ok, "{out}");
    let host_end_b = trellis_net::link::host_veth_name("default/b");
    assert!(host_h.link(&host_end_b).await.unwrap().is_some());
    let out = tb
        .exec(
            &pod_a,
            &["ping", "-c", "1", "-W", "2", b4.as_str()],
            Duration::from_secs(8),
        )
        .await
        .unwrap();
    assert!(out.success(), "b was cut off: {}{}", out.stdout, out.stderr);

    // DEL both, twice: host ends, host routes and addresses gone.
    for (cid, pod, ns, r) in [
        ("ca", "a", &pod_a, &results[0]),
        ("cb", "b", &pod_b, &results[1]),
    ] {
        for _ in 0..2 {
            let (ok, out, stderr) = run(env("DEL", cid, pod, ns), with_prev(r)).await;
            assert!(ok, "DEL {pod}: {out} {stderr}");
        }
        assert!(ns.connect().unwrap().link("eth0").await.unwrap().is_none());
    }
    // DEL retires the pairs (down tombstones, freed with the pods' namespaces): nothing else
    // is left, and nothing of them is up.
    let links = host_h.links().await.unwrap();
    let (tombs, live): (Vec<_>, Vec<_>) = links
        .into_iter()
        .partition(|l| trellis_net::link::is_tombstone(&l.name));
    assert_eq!(live.len(), links_before, "{live:?}");
    assert_eq!(tombs.len(), 2, "{tombs:?}");
    assert!(tombs.iter().all(|l| !l.admin_up), "{tombs:?}");
    for family in [Family::V4, Family::V6] {
        let ours: Vec<_> = host_h
            .routes(family, None)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.protocol == trellis_net::proto::POD)
            .collect();
        assert!(ours.is_empty(), "{ours:?}");
    }
    let held: Vec<_> = walk(&tb.state_dir().join("host-local"))
        .into_iter()
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                n.to_string_lossy().contains('.') || n.to_string_lossy().contains(':')
            })
        })
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("last_reserved_ip"))
        })
        .collect();
    assert!(held.is_empty(), "host-local still holds {held:?}");
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
