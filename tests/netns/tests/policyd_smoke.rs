//! policyd end to end, the smallest case: an overlay node (same-node pods on the bridge, so the
//! bridged path is filtered too) with two pods wired through the ADD gate, the real API server,
//! `trellis policyd` in the node's namespace. A connection works as soon as ADD returned; a deny
//! policy blocks it (and `trellis policy explain` names the policy and counts the drops), also
//! across a `kill -9` and restart of policyd; deleting the policy lets it through again. An
//! Admin-tier ClusterNetworkPolicy deny (its definition installed after policyd started) beats a
//! NetworkPolicy allowing everything, until it is deleted. The verifier reports no repairs of an
//! untouched data path, and puts back a flushed chain and a deleted jump. The conformance, tier,
//! restart and gate suites are elsewhere (branch ptest).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod as KubePod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Api;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use netns_testbed::probe::{echo_peer_server, http_get, stop_echo, who_am_i};
use netns_testbed::{REFERENCE_PLUGIN_DIR, bin_dir, bin_path, require_tool};
use serde_json::json;
use trellis_cni::NetworkConfigList;
use trellis_cni::invoke::{CniConfig, RuntimeConf};
use trellis_net::Netns;

#[path = "support/overlay_cluster.rs"]
mod overlay_cluster;
use overlay_cluster::Cluster;

const NS: &str = "pol";
const LISTEN: &str = "127.0.0.1:9914";

/// Creates Pod `name` of namespace NS on node `on` (as the API has it before a kubelet runs
/// its sandbox), then wires it with the node's CNI configuration plus the ADD gate to policyd,
/// passing the pod's name as kubelet does, and finally writes the address into the Pod's
/// status (there is no kubelet to do that). ADD returns only once policyd committed the pod.
async fn add_pod(
    c: &Cluster,
    on: usize,
    name: &str,
    labels: serde_json::Value,
) -> (Arc<Netns>, Ipv4Addr) {
    let w = &c.workers[on];
    let pods: Api<KubePod> = Api::namespaced(c.client.clone(), NS);
    let pod: KubePod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {"nodeName": w.node.name, "containers": [{"name": "c", "image": "none",
                 "ports": [{"name": "echo", "containerPort": 7000}]}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let ns = c.tb.add_ns(name).await.unwrap();
    let mut conf: serde_json::Value = serde_json::from_slice(
        &std::fs::read(w.dirs.join("net.d/10-trellis-overlay.conflist")).unwrap(),
    )
    .unwrap();
    conf["plugins"][0]["policy"] =
        json!({"socket": w.dirs.join("policyd.sock"), "timeoutMs": 20000});
    let list = NetworkConfigList::from_slice(&serde_json::to_vec(&conf).unwrap()).unwrap();
    let cni = CniConfig::new(
        vec![bin_dir(), PathBuf::from(REFERENCE_PLUGIN_DIR)],
        w.dirs.join("cache"),
    );
    let rt = RuntimeConf {
        container_id: format!("{name}-sandbox"),
        netns: ns.path().to_path_buf(),
        ifname: "eth0".into(),
        args: vec![
            ("IgnoreUnknown".into(), "1".into()),
            ("K8S_POD_NAMESPACE".into(), NS.into()),
            ("K8S_POD_NAME".into(), name.into()),
        ],
        ..Default::default()
    };
    let result = w
        .node
        .ns
        .run(|| cni.add(&list, &rt))
        .unwrap()
        .unwrap_or_else(|e| panic!("ADD of {name}: {e}"));
    let ip = match result.ips[0].address {
        ipnet::IpNet::V4(v4) => v4.addr(),
        other => panic!("{other}"),
    };
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(
            json!({"status": {"podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]}}),
        ),
    )
    .await
    .unwrap();
    (ns, ip)
}

/// Whether a TCP exchange from `from` reaches the echo server at `to` (3 s connect bound).
async fn connects(from: &Arc<Netns>, to: SocketAddr) -> bool {
    let from = from.clone();
    tokio::task::spawn_blocking(move || who_am_i(&from, to).is_ok())
        .await
        .unwrap()
}

/// Polls until the connection's outcome is `want` (bounded).
async fn wait_connects(from: &Arc<Netns>, to: SocketAddr, want: bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if connects(from, to).await == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {} after 30 s",
            if want { "blocked" } else { "open" }
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts `trellis policyd` in node 0's namespace and waits for its /readyz (and ready file).
async fn start_policyd(c: &Cluster, ready: &std::path::Path) -> i32 {
    let w = &c.workers[0];
    let trellis = bin_path("trellis");
    let policyd =
        c.tb.spawn(
            &w.node.ns,
            &[
                trellis.to_str().unwrap(),
                "policyd",
                "--node",
                &w.node.name,
                "--kubeconfig",
                c.cp.kubeconfig.to_str().unwrap(),
                "--gate-socket",
                w.dirs.join("policyd.sock").to_str().unwrap(),
                "--listen",
                LISTEN,
                "--ready-file",
                ready.to_str().unwrap(),
            ],
            Duration::from_secs(300),
        )
        .unwrap();
    let readyz: SocketAddr = LISTEN.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ns = w.node.ns.clone();
        let answer = tokio::task::spawn_blocking(move || http_get(&ns, readyz, "/readyz"))
            .await
            .unwrap();
        if matches!(answer, Ok((200, _))) {
            break;
        }
        assert!(
            c.tb.running(policyd),
            "policyd exited:\n{}",
            c.tb.log_of(policyd)
        );
        assert!(
            Instant::now() < deadline,
            "policyd never became ready:\n{}",
            c.tb.log_of(policyd)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        ready.is_file(),
        "the ready file is written after the first commit"
    );
    policyd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_policy_blocks_a_connection_until_it_is_deleted() {
    require_tool("ipset", "ipset");
    let c = Cluster::start(1).await;
    let w = &c.workers[0];
    let nss: Api<Namespace> = Api::all(c.client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap(),
    )
    .await
    .unwrap();
    let ready = w.dirs.join("policyd.ready");
    let trellis = bin_path("trellis");
    let readyz: SocketAddr = LISTEN.parse().unwrap();
    let policyd = start_policyd(&c, &ready).await;

    let (a_ns, _a_ip) = add_pod(&c, 0, "a", json!({"app": "a"})).await;
    let (b_ns, b_ip) = add_pod(&c, 0, "b", json!({"app": "b"})).await;
    let b = SocketAddr::new(b_ip.into(), 7000);
    let server = echo_peer_server(&b_ns, b_ip, 7000).unwrap();

    // No policy: open at once — both ADDs returned only after policyd committed the pods
    // (until then pending deny would drop them), so the very first attempt gets through.
    assert!(
        connects(&a_ns, b).await,
        "a → b right after ADD returned:\n{}",
        c.tb.log_of(policyd)
    );

    let nps: Api<NetworkPolicy> = Api::namespaced(c.client.clone(), NS);
    let deny: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": "deny-to-b", "namespace": NS},
        "spec": {"podSelector": {"matchLabels": {"app": "b"}}, "policyTypes": ["Ingress"]}
    }))
    .unwrap();
    nps.create(&PostParams::default(), &deny).await.unwrap();
    wait_connects(&a_ns, b, false, "a → b under deny-to-b").await;
    // Blocked, and it stays blocked (not a transient).
    assert!(!connects(&a_ns, b).await, "a → b got through deny-to-b");

    // Killed, the rules stay; a new policyd takes over the same chains and sets.
    c.tb.signal(policyd, nix::sys::signal::Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.tb.running(policyd) {
        assert!(Instant::now() < deadline, "policyd did not die on SIGKILL");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !connects(&a_ns, b).await,
        "a → b got through while policyd was down"
    );
    let _ = std::fs::remove_file(&ready);
    let policyd = start_policyd(&c, &ready).await;
    assert!(
        !connects(&a_ns, b).await,
        "a → b got through after policyd restarted"
    );

    let out =
        c.tb.exec(
            &w.node.ns,
            &[
                trellis.to_str().unwrap(),
                "policy",
                "explain",
                "pol/a",
                "pol/b:7000/TCP",
                "--policyd",
                LISTEN,
            ],
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    assert!(
        out.success(),
        "explain failed: {} {}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout.contains("DENIED")
            && out.stdout.contains("NetworkPolicy")
            && out.stdout.contains("pol/deny-to-b"),
        "{}",
        out.stdout
    );
    // The deciding rule counted the dropped SYNs.
    let dropped: u64 = out
        .stdout
        .lines()
        .find(|l| l.contains("ingress") && l.contains("denied"))
        .and_then(|l| l.rsplit("packets ").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        dropped > 0,
        "no packets counted on the deciding rule: {}",
        out.stdout
    );

    nps.delete("deny-to-b", &DeleteParams::default())
        .await
        .unwrap();
    wait_connects(&a_ns, b, true, "a → b after deny-to-b is deleted").await;

    // The admin tier, through a ClusterNetworkPolicy definition installed only now (policyd
    // started without it): an Admin Deny beats a NetworkPolicy that allows everything.
    let crds: Api<DynamicObject> = Api::all_with(
        c.client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "customresourcedefinitions",
        ),
    );
    let crd: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "clusternetworkpolicies.policy.networking.k8s.io"},
        "spec": {"group": "policy.networking.k8s.io", "scope": "Cluster",
            "names": {"kind": "ClusterNetworkPolicy", "plural": "clusternetworkpolicies",
                      "singular": "clusternetworkpolicy", "listKind": "ClusterNetworkPolicyList"},
            "versions": [{"name": "v1alpha2", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}}]}
    }))
    .unwrap();
    crds.create(&PostParams::default(), &crd).await.unwrap();
    let cnps: Api<DynamicObject> = Api::all_with(
        c.client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(
                "policy.networking.k8s.io",
                "v1alpha2",
                "ClusterNetworkPolicy",
            ),
            "clusternetworkpolicies",
        ),
    );
    let allow_all: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": "allow-all", "namespace": NS},
        "spec": {"podSelector": {}, "ingress": [{}]}
    }))
    .unwrap();
    nps.create(&PostParams::default(), &allow_all)
        .await
        .unwrap();
    let strict: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
        "metadata": {"name": "strict-b"},
        "spec": {"tier": "Admin", "priority": 10,
            "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "b"}}}},
            "ingress": [{"name": "no-one", "action": "Deny", "from": [{"namespaces": {}}]}]}
    }))
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = cnps.create(&PostParams::default(), &strict).await {
        assert!(
            Instant::now() < deadline,
            "the ClusterNetworkPolicy kind is not served: {e}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_connects(&a_ns, b, false, "a → b under the Admin deny strict-b").await;
    let out =
        c.tb.exec(
            &w.node.ns,
            &[
                trellis.to_str().unwrap(),
                "policy",
                "explain",
                "pol/a",
                "pol/b:7000/TCP",
                "--policyd",
                LISTEN,
            ],
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    assert!(
        out.stdout.contains("DENIED")
            && out.stdout.contains("Admin")
            && out.stdout.contains("strict-b"),
        "{} {}",
        out.stdout,
        out.stderr
    );
    cnps.delete("strict-b", &DeleteParams::default())
        .await
        .unwrap();
    wait_connects(&a_ns, b, true, "a → b after strict-b is deleted").await;

    let metrics = {
        let ns = w.node.ns.clone();
        tokio::task::spawn_blocking(move || http_get(&ns, readyz, "/metrics"))
            .await
            .unwrap()
            .unwrap()
            .1
    };
    assert!(
        metrics.contains("trellis_policyd_commit_latency_seconds_count"),
        "{metrics}"
    );

    // No spurious repairs: what the verifier reads back is what was written.
    for kind in ["chain", "jump", "set"] {
        assert!(
            metrics.contains(&format!(
                "trellis_policyd_verifier_repairs_total{{kind=\"{kind}\"}} 0"
            )),
            "{metrics}"
        );
    }
    // Someone flushes our ingress dispatch and removes our FORWARD jump: both come back.
    for argv in [
        &["iptables", "-w", "-F", "TRELLIS-POL-ING"][..],
        &[
            "iptables",
            "-w",
            "-D",
            "FORWARD",
            "-m",
            "comment",
            "--comment",
            "trellis-policyd",
            "-j",
            "TRELLIS-POL-FWD",
        ][..],
    ] {
        let out =
            c.tb.exec(&w.node.ns, argv, Duration::from_secs(10))
                .await
                .unwrap();
        assert!(out.success(), "{argv:?}: {}", out.stderr);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ing =
            c.tb.exec(
                &w.node.ns,
                &["iptables", "-w", "-S", "TRELLIS-POL-ING"],
                Duration::from_secs(10),
            )
            .await
            .unwrap()
            .stdout;
        let fwd =
            c.tb.exec(
                &w.node.ns,
                &["iptables", "-w", "-S", "FORWARD"],
                Duration::from_secs(10),
            )
            .await
            .unwrap()
            .stdout;
        if ing.lines().count() > 2 && fwd.contains("-j TRELLIS-POL-FWD") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not repaired within 10 s:\n{ing}\n{fwd}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Quiet again, the verifier stops reading the rules back (iptables-nft: the ruleset's
    // generation has not moved since a pass found it whole), while the repair above was a pass
    // that read everything.
    let passes = |metrics: &str, result: &str| -> f64 {
        let key = format!("trellis_policyd_verifier_passes_total{{result=\"{result}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ns = w.node.ns.clone();
        let m = tokio::task::spawn_blocking(move || http_get(&ns, readyz, "/metrics"))
            .await
            .unwrap()
            .unwrap()
            .1;
        if passes(&m, "unchanged") >= 2.0 {
            assert!(passes(&m, "checked") >= 1.0, "{m}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no verifier pass skipped the read-back within 20 s of quiet:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    stop_echo(&b_ns, b);
    let _ = server.join();
    c.tb.signal(policyd, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.tb.running(policyd) {
        assert!(Instant::now() < deadline, "policyd did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!ready.exists(), "the ready file is removed on exit");
}
