//! events.k8s.io/v1 next to core/v1 events, over the same objects: what one API writes the other
//! reads with its own field names (`note` is `message`, `regarding` is `involvedObject`, ...),
//! merge patches and watches through events.k8s.io included; the way kube-rs' event recorder
//! (and client-go's new one) talks to it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Event as CoreEvent;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use support::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_v1_and_core_v1_are_two_views_of_the_same_events() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let core: Api<CoreEvent> = Api::namespaced(client.clone(), "default");

    // Written through events.k8s.io, read through core/v1.
    let ev: Event = serde_json::from_value(json!({
        "metadata": {"name": "web.1"},
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "regarding": {"kind": "Pod", "name": "web", "namespace": "default"},
        "note": "Started container srv", "reason": "Started", "type": "Normal", "action": "Start",
        "reportingController": "trellis.dev/kubelet", "reportingInstance": "n1",
    }))
    .unwrap();
    let made = events.create(&PostParams::default(), &ev).await.unwrap();
    assert_eq!(made.note.as_deref(), Some("Started container srv"));
    let seen = core.get("web.1").await.unwrap();
    assert_eq!(seen.message.as_deref(), Some("Started container srv"));
    assert_eq!(seen.involved_object.name.as_deref(), Some("web"));
    assert_eq!(
        seen.reporting_component.as_deref(),
        Some("trellis.dev/kubelet")
    );
    assert_eq!(seen.action.as_deref(), Some("Start"));

    // A merge patch through events.k8s.io, as the recorders send for a series.
    let patched = events
        .patch(
            "web.1",
            &PatchParams::default(),
            &Patch::Merge(json!({"note": "Started again",
                                 "series": {"count": 2, "lastObservedTime": "2026-01-01T00:01:00.000000Z"}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.note.as_deref(), Some("Started again"));
    assert_eq!(patched.series.as_ref().map(|s| s.count), Some(2));
    assert_eq!(
        core.get("web.1").await.unwrap().message.as_deref(),
        Some("Started again")
    );

    // Written through core/v1 (as the kubelet does today), watched and listed through
    // events.k8s.io with the deprecated* names.
    let list = events.list(&Default::default()).await.unwrap();
    let rv = list.metadata.resource_version.clone().unwrap();
    let mut stream = events
        .watch(&WatchParams::default().timeout(30), &rv)
        .await
        .unwrap()
        .boxed();
    let old: CoreEvent = serde_json::from_value(json!({
        "metadata": {"name": "node.1"},
        "involvedObject": {"kind": "Node", "name": "n1"},
        "message": "Node n1 is ready", "reason": "NodeReady", "type": "Normal", "count": 4,
        "source": {"component": "kubelet", "host": "n1"},
        "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:02:00Z",
    }))
    .unwrap();
    core.create(&PostParams::default(), &old).await.unwrap();
    let added = loop {
        match stream
            .try_next()
            .await
            .unwrap()
            .expect("the watch ends early")
        {
            WatchEvent::Added(e) => break e,
            WatchEvent::Bookmark(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(added.note.as_deref(), Some("Node n1 is ready"));
    assert_eq!(
        added.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some("n1")
    );
    assert_eq!(added.deprecated_count, Some(4));
    assert_eq!(
        added
            .deprecated_source
            .as_ref()
            .and_then(|s| s.component.as_deref()),
        Some("kubelet")
    );
    let listed = events.list(&Default::default()).await.unwrap();
    let names: Vec<_> = listed
        .items
        .iter()
        .filter_map(|e| e.metadata.name.clone())
        .collect();
    assert_eq!(names, ["node.1", "web.1"]);
    assert!(listed.items.iter().all(|e| e.note.is_some()));
    server.stop().await;
}
