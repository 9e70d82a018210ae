//! The invoker (the runtime side of trellis-cni) driving a chain of real reference plugins:
//! bridge + host-local, then tuning — ADD in order with prevResult, CHECK, DEL in reverse.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use netns_testbed::bench::{self, Subject};
use netns_testbed::{REFERENCE_PLUGIN_DIR, Testbed, require_root, require_tool};
use trellis_cni::invoke::{self, CniConfig, RuntimeConf};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoker_runs_a_reference_chain() {
    require_root();
    require_tool("bridge", "containernetworking-plugins");
    let tb = Testbed::new().unwrap();
    let host = tb.add_ns("host").await.unwrap();
    let pod = tb.add_ns("pod").await.unwrap();
    let conf_dir = tb.state_dir().join("net.d");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let data = tb.state_dir().join("ipam");
    std::fs::write(
        conf_dir.join("10-chain.conflist"),
        format!(
            r#"{{"cniVersion":"1.0.0","name":"chain","plugins":[
                {{"type":"bridge","bridge":"chainbr0","isGateway":true,
                  "ipam":{{"type":"host-local","ranges":[[{{"subnet":"10.88.0.0/24"}}]],"dataDir":"{}"}}}},
                {{"type":"tuning","sysctl":{{"net.ipv4.conf.eth0.accept_redirects":"0"}}}}]}}"#,
            data.display()
        ),
    )
    .unwrap();
    let loaded = invoke::load_dir(&conf_dir).unwrap();
    let list = loaded[0].1.as_ref().unwrap().clone();
    let cni = CniConfig::new(
        vec![PathBuf::from(REFERENCE_PLUGIN_DIR)],
        tb.state_dir().join("cache"),
    );
    let rt = RuntimeConf {
        container_id: "ctr-1".into(),
        netns: pod.path().to_path_buf(),
        ifname: "eth0".into(),
        args: vec![
            ("IgnoreUnknown".into(), "1".into()),
            ("K8S_POD_NAME".into(), "web".into()),
        ],
        capability_args: Default::default(),
    };
    let (result, cached, checked, deleted) = host
        .run(|| {
            let result = cni.add(&list, &rt).unwrap();
            let cached = cni.cached_result(&list, &rt).unwrap();
            let checked = cni.check(&list, &rt);
            let deleted = cni.del(&list, &rt).and_then(|_| cni.del(&list, &rt));
            (result, cached, checked, deleted)
        })
        .unwrap();
    assert_eq!(result.ips[0].address.to_string(), "10.88.0.2/24");
    assert_eq!(
        cached.as_ref(),
        Some(&result),
        "ADD's result is cached for DEL and CHECK"
    );
    checked.unwrap();
    deleted.unwrap();
    assert!(
        pod.connect().unwrap().link("eth0").await.unwrap().is_none(),
        "DEL removed the interface"
    );
    let after = host.run(|| cni.cached_result(&list, &rt).unwrap()).unwrap();
    assert_eq!(after, None, "DEL forgot the cached result");
    let _ = tb
        .exec(&host, &["true"], Duration::from_secs(5))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_bench_measures_and_compares_two_configurations() {
    require_root();
    require_tool("bridge", "containernetworking-plugins");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench");
    let subject = |file: &str, label: &str| Subject {
        label: label.into(),
        config: bench::read_config(&dir.join(file)).unwrap(),
        plugin_dirs: vec![PathBuf::from(REFERENCE_PLUGIN_DIR)],
        files: Vec::new(),
    };
    let a = bench::measure(&subject("bridge-host-local.conflist", "bridge"), 5)
        .await
        .unwrap();
    let b = bench::measure(&subject("ptp-host-local.conflist", "ptp"), 5)
        .await
        .unwrap();
    assert_eq!((a.pods, b.pods), (5, 5));
    assert!(a.add.p50 > Duration::ZERO && a.add.p50 <= a.add.p99 && a.add.p99 <= a.add.max);
    let table = bench::table(&[a, b]);
    assert!(
        table.contains("bridge") && table.contains("ptp") && table.contains("ratio"),
        "{table}"
    );
}
