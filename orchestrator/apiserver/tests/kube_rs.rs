//! kube-rs, the client library our own controllers and agents use, against the API server:
//! list, watch with bookmarks, watcher() recovering from a 410 after compaction, conflicts on a
//! stale update, and patches.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::watcher;
use support::TestServer;

fn cm(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    let mut c = ConfigMap::default();
    c.metadata.name = Some(name.into());
    c.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    c.data = Some(BTreeMap::from([("k".to_string(), "v".to_string())]));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_with_selectors_and_pages() {
    let s = TestServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(s.client().await, "default");
    for i in 0..7 {
        let tier = if i % 2 == 0 { "web" } else { "db" };
        api.create(
            &PostParams::default(),
            &cm(&format!("cm-{i}"), &[("tier", tier)]),
        )
        .await
        .unwrap();
    }
    let all = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(all.items.len(), 7);
    let web = api
        .list(&ListParams::default().labels("tier=web"))
        .await
        .unwrap();
    assert_eq!(web.items.len(), 4);
    let set = api
        .list(&ListParams::default().labels("tier in (db,cache),!missing"))
        .await
        .unwrap();
    assert_eq!(set.items.len(), 3);
    let by_name = api
        .list(&ListParams::default().fields("metadata.name=cm-3"))
        .await
        .unwrap();
    assert_eq!(by_name.items.len(), 1);
    // Pages of 3 through continue tokens, all at one resourceVersion.
    let mut names = Vec::new();
    let mut lp = ListParams::default().limit(3);
    loop {
        let page = api.list(&lp).await.unwrap();
        names.extend(page.items.iter().map(|c| c.metadata.name.clone().unwrap()));
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    assert_eq!(names.len(), 7);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_delivers_changes_and_bookmarks() {
    let s = TestServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(s.client().await, "default");
    let list = api.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.unwrap();
    let mut stream = api
        .watch(&WatchParams::default().timeout(30), &rv)
        .await
        .unwrap()
        .boxed();
    api.create(&PostParams::default(), &cm("watched", &[]))
        .await
        .unwrap();
    api.patch(
        "watched",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": {"k": "changed"}})),
    )
    .await
    .unwrap();
    api.delete("watched", &Default::default()).await.unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match ev {
            WatchEvent::Added(c) => kinds.push(("ADDED", c.data.unwrap()["k"].clone())),
            WatchEvent::Modified(c) => kinds.push(("MODIFIED", c.data.unwrap()["k"].clone())),
            WatchEvent::Deleted(c) => kinds.push(("DELETED", c.data.unwrap()["k"].clone())),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(
        kinds,
        [
            ("ADDED", "v".to_string()),
            ("MODIFIED", "changed".to_string()),
            ("DELETED", "changed".to_string())
        ]
    );
    // Bookmarks come while the watch is idle.
    let bookmark = tokio::time::timeout(Duration::from_secs(25), async {
        loop {
            if let Some(WatchEvent::Bookmark(b)) = stream.try_next().await.unwrap() {
                return b;
            }
        }
    })
    .await
    .expect("a bookmark within 25 s");
    assert!(!bookmark.metadata.resource_version.is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_recovers_from_410_after_compaction() {
    let s = TestServer::start().await;
    let client = s.client().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &cm("before", &[]))
        .await
        .unwrap();
    // Short watches, so the watcher re-watches from its last resourceVersion every second.
    let mut events = watcher(api.clone(), watcher::Config::default().timeout(1)).boxed();
    let mut inits = 0;
    let mut seen_after = false;
    let mut compacted = false;
    let mut gone = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while !(inits >= 2 && seen_after) {
        let ev = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("the watcher recovers in time")
            .unwrap();
        match ev {
            Ok(watcher::Event::InitDone) => {
                inits += 1;
                if inits == 1 {
                    // Move the store well past what the watcher saw, then forget history: its
                    // next watch asks for a compacted revision and gets 410.
                    let other: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
                    for i in 0..20 {
                        other
                            .create(&PostParams::default(), &cm(&format!("noise-{i}"), &[]))
                            .await
                            .unwrap();
                    }
                    let store = s.running.store();
                    let rev = store.current_revision().await.unwrap();
                    store.compact(rev).await.unwrap();
                    compacted = true;
                } else {
                    api.create(&PostParams::default(), &cm("after", &[]))
                        .await
                        .unwrap();
                }
            }
            Ok(watcher::Event::Apply(c)) if c.metadata.name.as_deref() == Some("after") => {
                seen_after = true
            }
            Ok(_) => {}
            // The 410 surfaces as an error the watcher retries from a fresh list.
            Err(e) => {
                assert!(compacted, "an error before compaction: {e}");
                gone = gone
                    || e.to_string().contains("410")
                    || e.to_string().to_lowercase().contains("too old");
            }
        }
    }
    assert!(
        gone,
        "the watcher was told its resourceVersion was gone (410) and listed again"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_update_is_a_409_conflict() {
    let s = TestServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(s.client().await, "default");
    let created = api
        .create(&PostParams::default(), &cm("c", &[]))
        .await
        .unwrap();
    let mut first = created.clone();
    first.data = Some(BTreeMap::from([("k".into(), "first".into())]));
    let updated = api
        .replace("c", &PostParams::default(), &first)
        .await
        .unwrap();
    assert_ne!(
        updated.metadata.resource_version,
        created.metadata.resource_version
    );
    let mut stale = created.clone();
    stale.data = Some(BTreeMap::from([("k".into(), "stale".into())]));
    match api.replace("c", &PostParams::default(), &stale).await {
        Err(kube::Error::Api(e)) => assert_eq!((e.code, e.reason.as_str()), (409, "Conflict")),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(api.get("c").await.unwrap().data.unwrap()["k"], "first");
    match api.create(&PostParams::default(), &cm("c", &[])).await {
        Err(kube::Error::Api(e)) => assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists")),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patches_merge_strategically_by_container_name() {
    let s = TestServer::start().await;
    let api: Api<Deployment> = Api::namespaced(s.client().await, "default");
    let d: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "web", "image": "nginx:1.25", "env": [{"name": "A", "value": "1"}]},
                                                      {"name": "log", "image": "busybox"}]}}}
    }))
    .unwrap();
    let created = api.create(&PostParams::default(), &d).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    let smp = serde_json::json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:1.26", "env": [{"name": "B", "value": "2"}]}]}}}});
    let patched = api
        .patch("web", &PatchParams::default(), &Patch::Strategic(smp))
        .await
        .unwrap();
    let containers = patched
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers
        .clone();
    assert_eq!(containers.len(), 2, "the other container stays");
    assert_eq!(containers[0].image.as_deref(), Some("nginx:1.26"));
    let env: Vec<String> = containers[0]
        .env
        .clone()
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(env, ["B", "A"], "env merged by name");
    assert_eq!(
        patched.metadata.generation,
        Some(2),
        "a spec change moves the generation"
    );
    let merged = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        merged.metadata.generation,
        Some(2),
        "a metadata change does not"
    );
    let json = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::<()>::Json(
                serde_json::from_value(
                    serde_json::json!([{"op": "replace", "path": "/spec/replicas", "value": 4}]),
                )
                .unwrap(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(json.spec.unwrap().replicas, Some(4));
    s.stop().await;
}
