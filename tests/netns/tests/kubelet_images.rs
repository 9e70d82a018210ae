//! Issue 14, the containerd runtime's images: registry pulls and image garbage collection.
//!
//! Pulls: Debian's `docker-registry` runs in the worker node's namespace on 127.0.0.1:5000
//! (plain HTTP, declared in the kubelet's `--registry-config`, k3s' registries.yaml); the test
//! pushes its busybox image there over the registry API v2; a pod naming
//! `127.0.0.1:5000/trellis/busybox:1` runs from it, with the Events `Pulling` and `Pulled`
//! upstream's kubelet reports; a tag the registry does not have gets ErrImagePull, then
//! ImagePullBackOff, `Failed` Events and no hot loop.
//!
//! GC: two images, one a running pod uses. With GC off (`--image-gc-high-threshold 100`, the
//! negative control) both stay; with a 1 MB image budget (`--image-gc-fs-size`, the busybox
//! image alone is over it) the kubelet removes the unused one only, and the pod runs on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/kubelet.rs"]
mod kubelet;
#[path = "support/overlay_cluster.rs"]
mod overlay_cluster;
#[path = "support/registry.rs"]
mod registry;

use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::ListParams;
use serde_json::json;

use kubelet::{Kubelets, create_pod, wait_node_ready, wait_pod};
use netns_testbed::containerd::Containerd;
use netns_testbed::{Node, Testbed, bin_path};

const NS: &str = "trellis";

async fn events_of(client: &kube::Client, pod: &str) -> Vec<Event> {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(pod))
        .collect()
}

/// Waits (30 s at most) for an Event of `pod` with `reason` whose message has `text`.
async fn wait_event(client: &kube::Client, pod: &str, reason: &str, text: &str) -> Event {
    for _ in 0..300 {
        if let Some(e) = events_of(client, pod).await.into_iter().find(|e| {
            e.reason.as_deref() == Some(reason)
                && e.message.as_deref().is_some_and(|m| m.contains(text))
        }) {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all: Vec<_> = events_of(client, pod)
        .await
        .into_iter()
        .map(|e| (e.reason, e.message))
        .collect();
    panic!("no {reason} Event with {text:?} for {pod}: {all:?}");
}

async fn ctr(ctrd: &Containerd, args: &[&str]) -> String {
    let mut all = vec!["-n", NS];
    all.extend_from_slice(args);
    let out = ctrd.ctr(&all).await.unwrap();
    assert!(out.success(), "ctr {args:?}: {}", out.stderr);
    out.stdout
}

async fn import(tb: &Testbed, node: &Node, sock: &str, archive: &std::path::Path) {
    let trellis = bin_path("trellis");
    let argv = [
        trellis.to_str().unwrap(),
        "image",
        "import",
        archive.to_str().unwrap(),
        "--address",
        sock,
        "--namespace",
        NS,
    ];
    let out = tb
        .exec(&node.ns, &argv, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(out.success(), "{out:?}");
}

fn running(p: &serde_json::Value) -> bool {
    p["status"]["phase"] == "Running"
        && p["status"]["containerStatuses"][0]["state"]["running"].is_object()
}

#[tokio::test(flavor = "multi_thread")]
async fn containerd_pulls_from_a_plain_http_registry() {
    netns_testbed::require_tool("busybox", "busybox-static");
    let c = overlay_cluster::Cluster::start(1).await;
    let (tb, w) = (&c.tb, &c.workers[0]);
    let ctrd = Containerd::start(tb).await.unwrap();
    let sock = ctrd.socket().display().to_string();
    let reg = registry::Registry::start(tb, &w.node, "127.0.0.1:5000".parse().unwrap()).await;
    let archive = ctrd.busybox_image("trellis.test/busybox:1").unwrap();
    let layout = archive.parent().unwrap().join("layout");
    reg.push_layout(&w.node, &layout, "trellis/busybox", "1");
    let conf = tb.state_dir().join("registries.yaml");
    std::fs::write(
        &conf,
        "mirrors:\n  \"127.0.0.1:5000\":\n    endpoint:\n      - \"http://127.0.0.1:5000\"\n",
    )
    .unwrap();
    let mut k = Kubelets::new(tb);
    k.start_with(
        tb,
        &c.cp,
        &w.node,
        &w.dirs,
        "net.d",
        &[
            "--runtime",
            "containerd",
            "--containerd-address",
            &sock,
            "--containerd-namespace",
            NS,
            "--registry-config",
            conf.to_str().unwrap(),
        ],
    );
    wait_node_ready(&c.client, &w.node.name).await;
    let image = "127.0.0.1:5000/trellis/busybox:1";
    assert!(
        !ctr(&ctrd, &["images", "ls", "-q"]).await.contains(image),
        "not there before the pull"
    );

    // Pulled (IfNotPresent, the default for a tag), run, reported as upstream does.
    create_pod(
        &c.client,
        json!({"metadata": {"name": "pulled"}, "spec": {"nodeName": w.node.name,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": image, "command": ["/bin/sleep", "3600"]}]}}),
    )
    .await;
    wait_pod(
        &c.client,
        "pulled",
        Duration::from_secs(90),
        "Running",
        running,
    )
    .await;
    wait_event(
        &c.client,
        "pulled",
        "Pulling",
        &format!("Pulling image {image:?}"),
    )
    .await;
    wait_event(&c.client, "pulled", "Pulled", "Successfully pulled image").await;
    assert!(ctr(&ctrd, &["images", "ls", "-q"]).await.contains(image));
    assert!(ctr(&ctrd, &["containers", "ls"]).await.contains(image));

    // A second pod with the image present: no pull, "already present".
    create_pod(
        &c.client,
        json!({"metadata": {"name": "present"}, "spec": {"nodeName": w.node.name,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": image, "command": ["/bin/sleep", "3600"]}]}}),
    )
    .await;
    wait_pod(
        &c.client,
        "present",
        Duration::from_secs(60),
        "Running",
        running,
    )
    .await;
    wait_event(&c.client, "present", "Pulled", "already present on machine").await;
    assert!(
        !events_of(&c.client, "present")
            .await
            .iter()
            .any(|e| e.reason.as_deref() == Some("Pulling")),
        "no pull for a present image with IfNotPresent"
    );

    // A tag the registry does not have: ErrImagePull, then ImagePullBackOff, no hot loop.
    let absent = "127.0.0.1:5000/trellis/busybox:absent";
    create_pod(
        &c.client,
        json!({"metadata": {"name": "absent"}, "spec": {"nodeName": w.node.name,
            "containers": [{"name": "c", "image": absent}]}}),
    )
    .await;
    let p = wait_pod(
        &c.client,
        "absent",
        Duration::from_secs(60),
        "ErrImagePull",
        |p| {
            let r = &p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"];
            r == "ErrImagePull" || r == "ImagePullBackOff"
        },
    )
    .await;
    assert_eq!(p["status"]["phase"], "Pending");
    wait_event(&c.client, "absent", "Failed", "not found").await;
    wait_pod(
        &c.client,
        "absent",
        Duration::from_secs(30),
        "ImagePullBackOff",
        |p| p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ImagePullBackOff",
    )
    .await;
    // The bound is the point: with 2 s doubling, at most 3 tries in 6 s more (a hot loop
    // makes dozens).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let evs = events_of(&c.client, "absent").await;
    let count = |r: &str| {
        evs.iter()
            .filter(|e| e.reason.as_deref() == Some(r))
            .map(|e| e.count.unwrap_or(1))
            .sum::<i32>()
    };
    assert!(
        (1..=5).contains(&count("Failed")),
        "{} failed pulls: no hot loop",
        count("Failed")
    );
    // Each try is one pull (the last one's Failed may still be on its way).
    assert!(
        (0..=1).contains(&(count("Pulling") - count("Failed"))),
        "{} pulls, {} failures",
        count("Pulling"),
        count("Failed")
    );
    drop(k);
    let _ = reg.pid;
    drop(ctrd);
}

#[tokio::test(flavor = "multi_thread")]
async fn containerd_image_gc_removes_only_unused_images() {
    netns_testbed::require_tool("busybox", "busybox-static");
    let c = overlay_cluster::Cluster::start(1).await;
    let (tb, w) = (&c.tb, &c.workers[0]);
    let ctrd = Containerd::start(tb).await.unwrap();
    let sock = ctrd.socket().display().to_string();
    let (used, unused) = ("trellis.test/gc-used:1", "trellis.test/gc-unused:1");
    for name in [used, unused] {
        let archive = ctrd.busybox_image(name).unwrap();
        import(tb, &w.node, &sock, &archive).await;
    }
    let base = [
        "--runtime",
        "containerd",
        "--containerd-address",
        &sock,
        "--containerd-namespace",
        NS,
        "--image-gc-period",
        "1s",
        "--image-minimum-gc-age",
        "0s",
        // The busybox image alone is over 1 MB: usage is over any threshold below 100.
        "--image-gc-fs-size",
        "1000000",
        "--image-gc-low-threshold",
        "10",
    ];
    let mut k = Kubelets::new(tb);
    // GC off: the negative control.
    let mut off = base.to_vec();
    off.extend_from_slice(&["--image-gc-high-threshold", "100"]);
    let pid = k.start_with(tb, &c.cp, &w.node, &w.dirs, "net.d", &off);
    wait_node_ready(&c.client, &w.node.name).await;
    create_pod(
        &c.client,
        json!({"metadata": {"name": "user"}, "spec": {"nodeName": w.node.name,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": used, "command": ["/bin/sleep", "3600"]}]}}),
    )
    .await;
    wait_pod(
        &c.client,
        "user",
        Duration::from_secs(60),
        "Running",
        running,
    )
    .await;
    // Absence takes a wait: four GC periods.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let images = ctr(&ctrd, &["images", "ls", "-q"]).await;
    assert!(
        images.contains(used) && images.contains(unused),
        "GC off keeps both: {images}"
    );

    // GC on (high threshold 50): the unused image goes, the used one stays.
    tb.kill(pid);
    let mut on = base.to_vec();
    on.extend_from_slice(&["--image-gc-high-threshold", "50"]);
    let pid = k.start_with(tb, &c.cp, &w.node, &w.dirs, "net.d", &on);
    let mut images = String::new();
    for _ in 0..300 {
        images = ctr(&ctrd, &["images", "ls", "-q"]).await;
        if !images.contains(unused) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !images.contains(unused),
        "GC removes the unused image: {images}"
    );
    assert!(images.contains(used), "GC keeps the used image: {images}");
    assert!(
        tb.log_of(pid).contains("removed an unused image"),
        "{}",
        tb.log_of(pid)
    );
    // Still there a few periods later, and the pod still runs.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(ctr(&ctrd, &["images", "ls", "-q"]).await.contains(used));
    wait_pod(
        &c.client,
        "user",
        Duration::from_secs(10),
        "Running",
        running,
    )
    .await;
    drop(k);
    drop(ctrd);
}
