//! trellis-net's netfilter side against the real tools and kernel: ipsets (sync by swap,
//! incremental apply, members, destroy) and iptables (several tables in one restore, chain
//! deletion, counters read back, jump positions), each inside a namespace of the test's own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use netns_testbed::snapshot::NsState;
use netns_testbed::{Testbed, require_root, require_tool};
use trellis_net::Error;
use trellis_net::ipset::{IpSet, Ipset, Proto, SetKind, SetMember};
use trellis_net::iptables::{Backend, IpFamily, Iptables, RestoreSession, Table};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str, nomatch: bool) -> SetMember {
    SetMember::Net {
        net: s.parse().unwrap(),
        nomatch,
    }
}

fn hosts(third: u8, n: u8) -> Vec<SetMember> {
    (1..=n)
        .map(|i| SetMember::Ip(ip(&format!("10.{third}.0.{i}"))))
        .collect()
}

fn sorted(mut v: Vec<SetMember>) -> Vec<String> {
    let mut s: Vec<String> = v.drain(..).map(|m| m.to_string()).collect();
    s.sort();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipsets_sync_by_swap_apply_list_and_destroy() {
    require_root();
    require_tool("ipset", "ipset");
    require_tool("iptables-nft", "iptables");
    let tb = Testbed::new().unwrap();
    let ns = tb.add_ns("ipset").await.unwrap();
    let sets = Ipset::new(Some(&ns));
    let name = "trellis-t-peers".to_string();
    let mk = |members| IpSet {
        name: name.clone(),
        kind: SetKind::HashIp,
        family: IpFamily::V4,
        members,
    };
    let blocks = IpSet {
        name: "trellis-t-block".into(),
        kind: SetKind::HashNet,
        family: IpFamily::V4,
        members: vec![net("10.0.0.0/8", false), net("10.1.0.0/16", true)],
    };
    let ports = IpSet {
        name: "trellis-t-ports".into(),
        kind: SetKind::HashIpPort,
        family: IpFamily::V4,
        members: vec![SetMember::IpPort {
            ip: ip("10.2.0.1"),
            proto: Proto::Tcp,
            port: 80,
        }],
    };

    // Creation, and a second identical sync changes nothing.
    let a = hosts(10, 200);
    for _ in 0..2 {
        sets.sync(&[mk(a.clone()), blocks.clone(), ports.clone()])
            .await
            .unwrap();
        assert_eq!(
            sorted(sets.members(&name).await.unwrap()),
            sorted(a.clone())
        );
        assert_eq!(
            sorted(sets.members("trellis-t-block").await.unwrap()),
            sorted(blocks.members.clone())
        );
        assert_eq!(
            sets.members("trellis-t-ports").await.unwrap(),
            ports.members
        );
        let mut names = sets.list_names("trellis-t-").await.unwrap();
        names.sort();
        assert_eq!(
            names,
            ["trellis-t-block", "trellis-t-peers", "trellis-t-ports"],
            "no temporary set is left behind"
        );
    }

    // A set referenced by a rule can't be destroyed and recreated: sync must swap in place.
    let ipt = Iptables::detect(Some(&ns), IpFamily::V4).await.unwrap();
    ipt.restore(&Table::new("filter").chain(
        "TRELLIS-T",
        vec![format!("-m set --match-set {name} src -j ACCEPT")],
    ))
    .await
    .unwrap();

    // Replacing the members while a reader lists the set over and over: every read sees the
    // old set or the new one whole, never a mixture or a partly filled set.
    let b = hosts(20, 200);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (sets, name, stop) = (sets.clone(), name.clone(), stop.clone());
        let (a, b) = (sorted(a.clone()), sorted(b.clone()));
        tokio::spawn(async move {
            let mut reads = 0;
            for _ in 0..2000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let got = sorted(sets.members(&name).await.unwrap());
                assert!(
                    got == a || got == b,
                    "a reader saw a set of {} members that is neither the old nor the new one",
                    got.len()
                );
                reads += 1;
            }
            reads
        })
    };
    for i in 0..10 {
        let next = if i % 2 == 0 { b.clone() } else { a.clone() };
        sets.sync(&[mk(next)]).await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let reads = reader.await.unwrap();
    assert!(reads > 0, "the reader read nothing");
    assert_eq!(
        sorted(sets.members(&name).await.unwrap()),
        sorted(a.clone())
    );

    // Held deterministically: a restore that fails half-way (the kernel refuses 0.0.0.0 in a
    // hash set, after 100 good members) leaves the live set exactly as it was...
    let mut half = b.clone();
    half.insert(100, SetMember::Ip(ip("0.0.0.0")));
    let e = sets.sync(&[mk(half.clone())]).await.unwrap_err();
    assert!(e.to_string().contains("Null-valued"), "{e}");
    assert_eq!(
        sorted(sets.members(&name).await.unwrap()),
        sorted(a.clone())
    );
    // ...where filling the live set in place (flush, then add) leaves it half-filled: the
    // negative control for the swap.
    let other = "trellis-t-naive";
    sets.sync(&[IpSet {
        name: other.into(),
        ..mk(a.clone())
    }])
    .await
    .unwrap();
    let naive: String = std::iter::once(format!("flush {other}\n"))
        .chain(half.iter().map(|m| format!("add {other} {m}\n")))
        .collect();
    let out = tb
        .exec_stdin(
            &ns,
            &["ipset", "restore", "-exist"],
            naive.as_bytes(),
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    assert!(!out.success());
    assert_eq!(
        sets.members(other).await.unwrap().len(),
        100,
        "in place, a failed fill is seen half done"
    );
    // The next good sync reuses and removes the failed one's temporary set.
    sets.sync(&[mk(a.clone())]).await.unwrap();
    sets.destroy(&[other.to_string()]).await.unwrap();
    let mut names = sets.list_names("trellis-t-").await.unwrap();
    names.sort();
    assert_eq!(
        names,
        ["trellis-t-block", "trellis-t-peers", "trellis-t-ports"]
    );

    // Incremental changes; adding a present member or deleting a missing one is not an error.
    let add = vec![
        (name.clone(), SetMember::Ip(ip("10.30.0.1"))),
        (name.clone(), a[0]),
        ("trellis-t-block".to_string(), net("10.2.0.0/16", true)),
    ];
    let del = vec![
        (name.clone(), a[1]),
        (name.clone(), SetMember::Ip(ip("10.99.0.1"))),
        ("trellis-t-block".to_string(), net("10.1.0.0/16", true)),
    ];
    for _ in 0..2 {
        sets.apply(&add, &del).await.unwrap();
    }
    let got = sets.members(&name).await.unwrap();
    assert!(got.contains(&SetMember::Ip(ip("10.30.0.1"))));
    assert!(!got.contains(&a[1]));
    assert_eq!(got.len(), 200);
    assert_eq!(
        sorted(sets.members("trellis-t-block").await.unwrap()),
        sorted(vec![net("10.0.0.0/8", false), net("10.2.0.0/16", true)])
    );

    // Errors are typed and name the cause.
    let long = "trellis-".to_string() + &"x".repeat(24);
    assert!(matches!(
        sets.sync(&[IpSet {
            name: long,
            ..mk(vec![])
        }])
        .await,
        Err(Error::SetName { .. })
    ));
    assert!(
        sets.members("trellis-t-none")
            .await
            .unwrap_err()
            .is_not_found()
    );

    // A referenced set survives a destroy attempt; unreferenced and missing ones are fine.
    let in_use = sets.destroy(std::slice::from_ref(&name)).await.unwrap_err();
    assert!(in_use.to_string().contains("in use"), "{in_use}");
    ipt.restore(&Table::new("filter").delete("TRELLIS-T"))
        .await
        .unwrap();
    let all: Vec<String> = [
        "trellis-t-peers",
        "trellis-t-block",
        "trellis-t-ports",
        "x-gone",
    ]
    .map(String::from)
    .to_vec();
    sets.destroy(&all).await.unwrap();
    sets.destroy(&all).await.unwrap();
    assert!(sets.list_names("").await.unwrap().is_empty());
}

/// Both backends: several tables in one restore, a chain deleted, counters that move with
/// real packets (loopback pings inside the test's namespace), and jump positions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iptables_restore_all_delete_counters_and_positions() {
    require_root();
    require_tool("ping", "iputils-ping");
    require_tool("iptables-nft", "iptables");
    require_tool("iptables-legacy", "iptables");
    require_tool("ipset", "ipset");
    let tb = Testbed::new().unwrap();
    for backend in [Backend::Nft, Backend::Legacy] {
        let ns = tb.add_ns(&format!("ipt{backend:?}")).await.unwrap();
        let mut ipt = Iptables::detect(Some(&ns), IpFamily::V4).await.unwrap();
        ipt.backend = backend;
        let sets = Ipset::new(Some(&ns));
        sets.sync(&[IpSet {
            name: "trellis-t-dst".into(),
            kind: SetKind::HashIp,
            family: IpFamily::V4,
            members: vec![SetMember::Ip(ip("127.0.0.2"))],
        }])
        .await
        .unwrap();

        // Someone else's rule first in OUTPUT: our jump goes to position 2, idempotently.
        ipt.ensure_rule("filter", "OUTPUT", &["-d", "127.0.0.9/32", "-j", "ACCEPT"])
            .await
            .unwrap();
        let filter = Table::new("filter")
            .chain(
                "TRELLIS-T-OUT",
                vec![
                    "-p icmp -m icmp --icmp-type 8 -m set --match-set trellis-t-dst dst -j TRELLIS-T-OLD"
                        .into(),
                    "-j RETURN".into(),
                ],
            )
            .chain("TRELLIS-T-OLD", vec!["-j RETURN".into()]);
        let mangle = Table::new("mangle").chain("TRELLIS-T-MARK", vec!["-j RETURN".into()]);
        ipt.restore_all(&[filter, mangle]).await.unwrap();
        for _ in 0..2 {
            ipt.ensure_rule_at("filter", "OUTPUT", 2, &["-j", "TRELLIS-T-OUT"])
                .await
                .unwrap();
        }
        assert_eq!(
            ipt.list_rules("filter", "OUTPUT").await.unwrap(),
            ["-d 127.0.0.9/32 -j ACCEPT", "-j TRELLIS-T-OUT"],
            "{backend:?}"
        );
        // A position past the end appends.
        ipt.ensure_rule_at(
            "filter",
            "OUTPUT",
            9,
            &["-d", "127.0.0.8/32", "-j", "ACCEPT"],
        )
        .await
        .unwrap();
        assert_eq!(
            ipt.list_rules("filter", "OUTPUT")
                .await
                .unwrap()
                .last()
                .map(String::as_str),
            Some("-d 127.0.0.8/32 -j ACCEPT")
        );
        assert!(
            ipt.delete_rule("filter", "OUTPUT", &["-d", "127.0.0.8/32", "-j", "ACCEPT"])
                .await
                .unwrap()
        );
        let mangle = ipt.read_chains("mangle", "TRELLIS-T-").await.unwrap();
        assert_eq!(mangle.len(), 1, "{mangle:?}");
        assert_eq!(mangle[0].name, "TRELLIS-T-MARK");

        // Three echo requests through the set rule: its counters say 3 packets of 84 bytes.
        tb.exec_ok(
            &ns,
            &["ping", "-c", "3", "-i", "0.2", "-W", "2", "127.0.0.2"],
            Duration::from_secs(20),
        )
        .await
        .unwrap();
        let chains = ipt.read_chains("filter", "TRELLIS-T-").await.unwrap();
        let out = chains.iter().find(|c| c.name == "TRELLIS-T-OUT").unwrap();
        assert_eq!(out.rules.len(), 2, "{chains:?}");
        assert!(
            out.rules[0].spec.contains("--match-set trellis-t-dst dst"),
            "{:?}",
            out.rules[0]
        );
        assert_eq!(
            (out.rules[0].packets, out.rules[0].bytes),
            (3, 3 * 84),
            "{backend:?}: {chains:?}"
        );
        assert!(chains.iter().any(|c| c.name == "TRELLIS-T-OLD"));

        // Rewrite the chain without its jump and delete the old one, in the same restore;
        // a second identical restore (the chain already gone) succeeds too.
        for _ in 0..2 {
            let filter = Table::new("filter")
                .chain("TRELLIS-T-OUT", vec!["-j RETURN".into()])
                .delete("TRELLIS-T-OLD");
            let mangle = Table::new("mangle").delete("TRELLIS-T-MARK");
            ipt.restore_all(&[filter, mangle]).await.unwrap();
        }
        let chains = ipt.read_chains("filter", "TRELLIS-T-").await.unwrap();
        assert_eq!(
            chains.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["TRELLIS-T-OUT"],
            "{backend:?}"
        );
        assert_eq!(
            chains[0].rules[0].packets, 0,
            "a rewritten rule starts at 0"
        );
        assert!(
            ipt.read_chains("mangle", "TRELLIS-T-")
                .await
                .unwrap()
                .is_empty()
        );
        // Deleting a chain still referenced fails, and leaves it in place.
        assert!(
            ipt.restore(&Table::new("filter").delete("TRELLIS-T-OUT"))
                .await
                .is_err()
        );
        assert_eq!(
            ipt.read_chains("filter", "TRELLIS-T-").await.unwrap().len(),
            1
        );

        // Uninstall: jump, chain, set — the namespace ends as it began.
        assert!(
            ipt.delete_rule("filter", "OUTPUT", &["-j", "TRELLIS-T-OUT"])
                .await
                .unwrap()
        );
        ipt.restore(&Table::new("filter").delete("TRELLIS-T-OUT"))
            .await
            .unwrap();
        sets.destroy(&["trellis-t-dst".to_string()]).await.unwrap();
        assert!(
            ipt.read_chains("filter", "TRELLIS-")
                .await
                .unwrap()
                .is_empty()
        );
        assert!(sets.list_names("").await.unwrap().is_empty());
    }
}

/// A restore session (one `iptables-nft-restore` fed block after block): each call returns
/// once its block is live, chains others changed in between are handled, a bad block fails
/// with the tool's own error and the session after it works; on legacy it is one process per
/// restore. Dropping the session ends its tool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_session_commits_each_block_before_it_returns() {
    require_root();
    require_tool("iptables-nft", "iptables");
    require_tool("iptables-legacy", "iptables");
    let tb = Testbed::new().unwrap();
    for backend in [Backend::Nft, Backend::Legacy] {
        let ns = tb.add_ns(&format!("sess{backend:?}")).await.unwrap();
        let mut ipt = Iptables::detect(Some(&ns), IpFamily::V4).await.unwrap();
        ipt.backend = backend;
        let session = RestoreSession::new(ipt.clone());
        assert_eq!(session.streams(), backend == Backend::Nft);
        let rules = |ipt: &Iptables, chain: &'static str| {
            let ipt = ipt.clone();
            async move {
                ipt.read_chains("filter", chain)
                    .await
                    .unwrap()
                    .into_iter()
                    .find(|c| c.name == chain)
                    .map(|c| c.rules.into_iter().map(|r| r.spec).collect::<Vec<_>>())
            }
        };
        // The restore tools running in this namespace.
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(ns.path()).unwrap());
        let tools = move || {
            std::fs::read_dir("/proc")
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| {
                    let pid = e.path();
                    let comm = std::fs::read_to_string(pid.join("comm")).unwrap_or_default();
                    let net = std::fs::read_link(pid.join("ns/net")).unwrap_or_default();
                    comm.starts_with("iptables-") && net.to_string_lossy() == format!("net:[{ino}]")
                })
                .count()
        };
        // Block after block, each in place when the call returns.
        for i in 0..20 {
            let spec = format!("-d 127.0.0.{}/32 -j RETURN", i + 1);
            session
                .restore_all(&[Table::new("filter").chain("TRELLIS-T-S", vec![spec.clone()])])
                .await
                .unwrap();
            assert_eq!(
                rules(&ipt, "TRELLIS-T-S").await,
                Some(vec![spec]),
                "{backend:?}: block {i}"
            );
        }
        // One tool for all of them (nf_tables), none left running (legacy).
        assert_eq!(tools(), usize::from(backend == Backend::Nft), "{backend:?}");
        // Someone else removes our chain and adds one of theirs between two blocks.
        ipt.restore(&Table::new("filter").delete("TRELLIS-T-S"))
            .await
            .unwrap();
        ipt.restore(&Table::new("filter").chain("TRELLIS-T-THEIRS", vec!["-j RETURN".into()]))
            .await
            .unwrap();
        session
            .restore_all(&[Table::new("filter")
                .chain("TRELLIS-T-S", vec!["-j TRELLIS-T-THEIRS".into()])
                .delete("TRELLIS-T-GONE")])
            .await
            .unwrap();
        assert_eq!(
            rules(&ipt, "TRELLIS-T-S").await,
            Some(vec!["-j TRELLIS-T-THEIRS".to_string()]),
            "{backend:?}"
        );
        // A bad block: the tool's error (its line), nothing of the block applied.
        let bad = session
            .restore_all(&[Table::new("filter").chain(
                "TRELLIS-T-S",
                vec!["-j RETURN".into(), "-j TRELLIS-T-MISSING".into()],
            )])
            .await
            .unwrap_err();
        assert!(bad.to_string().contains("line"), "{backend:?}: {bad}");
        assert_eq!(
            rules(&ipt, "TRELLIS-T-S").await,
            Some(vec!["-j TRELLIS-T-THEIRS".to_string()]),
            "{backend:?}: a failed block changes nothing"
        );
        // And the next block goes through (a new session).
        session
            .restore_all(&[Table::new("filter")
                .chain("TRELLIS-T-S", vec!["-j RETURN".into()])
                .delete("TRELLIS-T-THEIRS")])
            .await
            .unwrap();
        assert_eq!(
            rules(&ipt, "TRELLIS-T-S").await,
            Some(vec!["-j RETURN".to_string()])
        );
        assert_eq!(rules(&ipt, "TRELLIS-T-THEIRS").await, None);
        session
            .restore_all(&[Table::new("filter").delete("TRELLIS-T-S")])
            .await
            .unwrap();
        drop(session);
        let gone = std::time::Instant::now();
        while tools() > 0 {
            assert!(
                gone.elapsed() < Duration::from_secs(10),
                "the session's tool outlived it"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            ipt.read_chains("filter", "TRELLIS-")
                .await
                .unwrap()
                .is_empty()
        );
    }
}

/// A restore session whose tool dies between two blocks (killed by its process id) or stops
/// answering (SIGSTOP) costs one restore through a process of its own: that block still lands,
/// whole, and the one after it goes through a new session. The stopped tool is reaped before
/// the fallback runs, so it cannot apply anything later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_session_that_dies_or_hangs_is_replaced_and_no_block_is_lost() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    use trellis_net::iptables::Delivery;

    require_root();
    require_tool("iptables-nft", "iptables");
    let tb = Testbed::new().unwrap();
    let ns = tb.add_ns("sessdie").await.unwrap();
    let mut ipt = Iptables::detect(Some(&ns), IpFamily::V4).await.unwrap();
    ipt.backend = Backend::Nft;
    let session = RestoreSession::new(ipt.clone()).answer_within(Duration::from_millis(1500));
    let chain = |ipt: &Iptables| {
        let ipt = ipt.clone();
        async move {
            ipt.read_chains("filter", "TRELLIS-T-K")
                .await
                .unwrap()
                .into_iter()
                .map(|c| {
                    (
                        c.name,
                        c.rules.into_iter().map(|r| r.spec).collect::<Vec<_>>(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    // Two chains per block, the dispatch jumping to the other: a block is whole or absent.
    let block = |n: u8| {
        Table::new("filter")
            .chain("TRELLIS-T-KP", vec![format!("-d 127.0.0.{n}/32 -j RETURN")])
            .chain(
                "TRELLIS-T-KD",
                vec![format!("-s 127.0.1.{n}/32 -j TRELLIS-T-KP")],
            )
    };
    let want = |n: u8| {
        vec![
            (
                "TRELLIS-T-KD".to_string(),
                vec![format!("-s 127.0.1.{n}/32 -j TRELLIS-T-KP")],
            ),
            (
                "TRELLIS-T-KP".to_string(),
                vec![format!("-d 127.0.0.{n}/32 -j RETURN")],
            ),
        ]
    };
    let by_name = |mut v: Vec<(String, Vec<String>)>| {
        v.sort();
        v
    };
    assert_eq!(
        session.restore_all(&[block(1)]).await.unwrap(),
        Delivery::Session
    );
    assert_eq!(by_name(chain(&ipt).await), want(1));
    let first = session.pid().await.expect("a session runs");

    // Killed between two blocks.
    kill(Pid::from_raw(first as i32), Signal::SIGKILL).unwrap();
    let d = session.restore_all(&[block(2)]).await.unwrap();
    assert!(
        matches!(
            d,
            Delivery::OneShot {
                session_error: Some(_)
            }
        ),
        "the dead session is noticed: {d:?}"
    );
    assert_eq!(
        by_name(chain(&ipt).await),
        want(2),
        "the block landed anyway"
    );
    assert_eq!(
        session.restore_all(&[block(3)]).await.unwrap(),
        Delivery::Session
    );
    assert_eq!(by_name(chain(&ipt).await), want(3));
    let second = session.pid().await.expect("a new session runs");
    assert_ne!(first, second);

    // Stopped: no acknowledgement within the bound; killed, reaped, the block one-shot.
    kill(Pid::from_raw(second as i32), Signal::SIGSTOP).unwrap();
    let t = std::time::Instant::now();
    let d = session.restore_all(&[block(4)]).await.unwrap();
    let Delivery::OneShot {
        session_error: Some(e),
    } = d
    else {
        panic!("the silent session is noticed: {d:?}")
    };
    assert!(e.contains("not acknowledged"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(
        !std::path::Path::new(&format!("/proc/{second}")).exists(),
        "the stopped tool is reaped before the fallback"
    );
    assert_eq!(by_name(chain(&ipt).await), want(4));
    assert_eq!(
        session.restore_all(&[block(5)]).await.unwrap(),
        Delivery::Session
    );
    assert_eq!(by_name(chain(&ipt).await), want(5));
    assert_eq!((session.sessions_started(), session.fallbacks()), (3, 2));

    session
        .restore_all(&[Table::new("filter")
            .delete("TRELLIS-T-KD")
            .delete("TRELLIS-T-KP")])
        .await
        .unwrap();
    assert!(chain(&ipt).await.is_empty());
}

/// The namespace snapshot the plugin and daemon tests compare includes ipsets: a set left
/// behind (or a member changed) shows up in the diff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_catches_a_set_left_behind() {
    require_root();
    require_tool("ipset", "ipset");
    require_tool("iptables-save", "iptables");
    let tb = Testbed::new().unwrap();
    let ns = tb.add_ns("snap").await.unwrap();
    let before = NsState::capture(&ns, tb.prefix()).await.unwrap();
    let sets = Ipset::new(Some(&ns));
    let left = IpSet {
        name: "trellis-t-left".into(),
        kind: SetKind::HashIp,
        family: IpFamily::V4,
        members: vec![SetMember::Ip(ip("10.0.0.1"))],
    };
    sets.sync(std::slice::from_ref(&left)).await.unwrap();
    let after = NsState::capture(&ns, tb.prefix()).await.unwrap();
    let diff = before.diff(&after);
    assert!(
        diff.iter()
            .any(|d| d.starts_with("ipset added: create trellis-t-left hash:ip")),
        "{diff:?}"
    );
    assert!(
        diff.contains(&"ipset added: add trellis-t-left 10.0.0.1".to_string()),
        "{diff:?}"
    );
    // A member swapped for another is a difference too; the same contents are none.
    let same = NsState::capture(&ns, tb.prefix()).await.unwrap();
    assert!(after.diff(&same).is_empty(), "{:?}", after.diff(&same));
    sets.sync(&[IpSet {
        members: vec![SetMember::Ip(ip("10.0.0.2"))],
        ..left
    }])
    .await
    .unwrap();
    let changed = NsState::capture(&ns, tb.prefix()).await.unwrap();
    assert_eq!(
        after.diff(&changed),
        [
            "ipset gone: add trellis-t-left 10.0.0.1",
            "ipset added: add trellis-t-left 10.0.0.2"
        ]
    );
    sets.destroy(&["trellis-t-left".to_string()]).await.unwrap();
    let end = NsState::capture(&ns, tb.prefix()).await.unwrap();
    assert!(before.diff(&end).is_empty(), "{:?}", before.diff(&end));
}

/// An nft session (one `nft -i` fed transaction after transaction, issue 16's proxy writer)
/// against the real nft and kernel: each call returns once its transaction is live; a refused
/// one is reported with nft's error, changes nothing (not even its commands before the bad
/// one) and the session goes on in the same process; an nft killed between two transactions
/// costs one `nft -f` of its own, through which that transaction still lands whole, and the
/// next goes through a new session; dropping the session ends its nft.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nft_session_commits_each_transaction_and_survives_a_dead_nft() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    use trellis_net::nft::{Delivery, Nft, NftSession};

    require_root();
    require_tool("nft", "nftables");
    let tb = Testbed::new().unwrap();
    let ns = tb.add_ns("nftsess").await.unwrap();
    let session = NftSession::new(Nft::new(Some(&ns)));
    let limit = Duration::from_secs(10);
    let chain = || {
        let tb = &tb;
        let ns = &ns;
        async move {
            tb.exec_ok(
                ns,
                &["nft", "list", "chain", "ip", "trellis-t-sess", "c"],
                limit,
            )
            .await
            .unwrap()
        }
    };
    // The nft processes running in this namespace.
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(ns.path()).unwrap());
    let nfts = move || {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                let pid = e.path();
                let comm = std::fs::read_to_string(pid.join("comm")).unwrap_or_default();
                let net = std::fs::read_link(pid.join("ns/net")).unwrap_or_default();
                comm.trim() == "nft" && net.to_string_lossy() == format!("net:[{ino}]")
            })
            .count()
    };
    let d = session
        .apply("add table ip trellis-t-sess\nadd chain ip trellis-t-sess c\n")
        .await
        .unwrap();
    assert_eq!(d, Delivery::Session);
    // Transaction after transaction, each in place when the call returns.
    let rule = |i: u32| format!("ip daddr 127.0.0.{i} counter");
    for i in 1..=20 {
        let d = session
            .apply(&format!(
                "flush chain ip trellis-t-sess c\nadd rule ip trellis-t-sess c {}\n",
                rule(i)
            ))
            .await
            .unwrap();
        assert_eq!(d, Delivery::Session, "transaction {i}");
        let now = chain().await;
        assert!(
            now.contains(&format!("ip daddr 127.0.0.{i} ")),
            "{i}: {now}"
        );
        assert!(
            !now.contains(&format!("ip daddr 127.0.0.{} ", i - 1)),
            "{i}: {now}"
        );
    }
    assert_eq!(nfts(), 1, "one nft for all of them");
    let pid = session.pid().await.unwrap();
    // A refused transaction: nft's error, and nothing of it applied (the flush before the bad
    // rule neither).
    let bad = session
        .apply("flush chain ip trellis-t-sess c\nadd rule ip trellis-t-sess nosuchchain counter\n")
        .await
        .unwrap_err();
    assert!(
        bad.to_string().contains("No such file or directory"),
        "{bad}"
    );
    assert!(chain().await.contains("ip daddr 127.0.0.20 "));
    assert_eq!(session.pid().await, Some(pid), "the same nft goes on");
    session
        .apply(&format!(
            "flush chain ip trellis-t-sess c\nadd rule ip trellis-t-sess c {}\n",
            rule(21)
        ))
        .await
        .unwrap();
    assert!(chain().await.contains("ip daddr 127.0.0.21 "));
    // The nft dies between two transactions: the next lands through a one-shot nft.
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let d = session
        .apply(&format!(
            "flush chain ip trellis-t-sess c\nadd rule ip trellis-t-sess c {}\n",
            rule(22)
        ))
        .await
        .unwrap();
    assert!(
        matches!(
            d,
            Delivery::OneShot {
                session_error: Some(_)
            }
        ),
        "{d:?}"
    );
    let now = chain().await;
    assert!(
        now.contains("ip daddr 127.0.0.22 ") && !now.contains("127.0.0.21 "),
        "{now}"
    );
    assert_eq!((session.fallbacks(), session.sessions_started()), (1, 1));
    // And the one after goes through a new session.
    let d = session
        .apply(&format!(
            "flush chain ip trellis-t-sess c\nadd rule ip trellis-t-sess c {}\n",
            rule(23)
        ))
        .await
        .unwrap();
    assert_eq!(d, Delivery::Session);
    assert_ne!(session.pid().await, Some(pid));
    assert!(chain().await.contains("ip daddr 127.0.0.23 "));
    session
        .apply("delete table ip trellis-t-sess\n")
        .await
        .unwrap();
    drop(session);
    let gone = std::time::Instant::now();
    while nfts() > 0 {
        assert!(gone.elapsed() < limit, "the session's nft outlived it");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The nf_tables generation is the namespace's own, stays put while nothing is committed, and
/// moves with every commit — by iptables-nft, by nft, by a restore session — so policyd's
/// verifier may skip reading the rules back while it has not moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nf_tables_generation_moves_with_every_commit_and_only_then() {
    require_root();
    require_tool("iptables-nft", "iptables");
    require_tool("nft", "nftables");
    let tb = Testbed::new().unwrap();
    let ns = tb.add_ns("gen").await.unwrap();
    let other = tb.add_ns("gen2").await.unwrap();
    let gen_in = |ns: &trellis_net::Netns| ns.run(trellis_net::nft::generation).unwrap().unwrap();
    let g0 = gen_in(&ns);
    // Reading, listing and saving commit nothing.
    tb.exec_ok(&ns, &["iptables-nft-save"], Duration::from_secs(10))
        .await
        .unwrap();
    tb.exec_ok(&ns, &["nft", "list", "ruleset"], Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(gen_in(&ns), g0, "a read moved the generation");
    let g_other = gen_in(&other);
    let limit = Duration::from_secs(10);
    tb.exec_ok(
        &ns,
        &["iptables-nft", "-t", "filter", "-N", "TRELLIS-G"],
        limit,
    )
    .await
    .unwrap();
    let g1 = gen_in(&ns);
    assert_ne!(g1, g0, "creating a chain did not move the generation");
    assert_eq!(
        gen_in(&other),
        g_other,
        "another namespace's commit moved this one"
    );
    tb.exec_ok(&ns, &["nft", "add", "table", "ip", "trellis-g"], limit)
        .await
        .unwrap();
    let g2 = gen_in(&ns);
    assert_ne!(g2, g1, "an nft commit did not move the generation");
    let mut ipt = Iptables::detect(Some(&ns), IpFamily::V4).await.unwrap();
    ipt.backend = Backend::Nft;
    let session = RestoreSession::new(ipt);
    session
        .restore_all(&[Table::new("filter").chain("TRELLIS-G", vec!["-j RETURN".into()])])
        .await
        .unwrap();
    let g3 = gen_in(&ns);
    assert_ne!(
        g3, g2,
        "a restore session's commit did not move the generation"
    );
    assert_eq!(gen_in(&ns), g3);
}
