//! TLS to a real etcd (Debian's etcd-server) that serves clients over TLS only and requires a
//! client certificate (`--client-cert-auth`): the store connects with the CA and a client
//! certificate, reads, writes and watches; the negative controls — plain HTTP to that port, TLS
//! without a client certificate, a CA that did not sign etcd's certificate — are refused, the
//! last at once with an error that names the cause and the flag.
//!
//! Fails — never skips — when `etcd` is missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use netns_testbed::etcd::{EtcdCluster, ServerTls};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use trellis_store::etcd::EtcdOptions;
use trellis_store::{Error, EtcdStore, EtcdTls, KeyRange, RangeRequest, Store, WatchRequest};

/// A CA: its certificate (PEM) and what signs with it.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let pem = params.self_signed(&key).unwrap().pem();
    Ca {
        pem,
        issuer: Issuer::new(params, key),
    }
}

/// A certificate from `ca` for `cn` (and the address 127.0.0.1 when `server`): (cert, key).
fn issue(ca: &Ca, cn: &str, server: bool) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if server {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
        params.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
    }
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, pem: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, pem).unwrap();
    p
}

fn options(tls: Option<EtcdTls>) -> EtcdOptions {
    EtcdOptions {
        retry_window: Duration::from_secs(3),
        tls,
        ..EtcdOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_speaks_tls_with_a_client_certificate_and_nothing_else_gets_in() {
    netns_testbed::require_tool("etcd", "etcd-server");
    let dir = tempfile::tempdir().unwrap();
    let cluster_ca = ca("trellis-test-ca");
    let (server_cert, server_key) = issue(&cluster_ca, "trellis-etcd-server", true);
    let (client_cert, client_key) = issue(&cluster_ca, "kube-apiserver-etcd-client", false);
    let ca_file = write(dir.path(), "ca.crt", &cluster_ca.pem);
    let server = ServerTls {
        cert: write(dir.path(), "server.crt", &server_cert),
        key: write(dir.path(), "server.key", &server_key),
        client_ca: ca_file.clone(),
    };
    let etcd = EtcdCluster::start_with(
        1,
        netns_testbed::etcd::EtcdOptions {
            tls: Some(server),
            ..Default::default()
        },
    )
    .unwrap();
    let endpoints = etcd.endpoints();
    assert!(endpoints[0].starts_with("https://"), "{endpoints:?}");

    // With the CA and a client certificate (read from files, as the API server's flags give
    // them): reads, writes and a watch work.
    let tls = EtcdTls::from_files(
        &ca_file,
        Some((
            &write(dir.path(), "client.crt", &client_cert),
            &write(dir.path(), "client.key", &client_key),
        )),
    )
    .unwrap();
    let store = EtcdStore::connect_with(&endpoints, options(Some(tls.clone())))
        .await
        .unwrap();
    let mut watch = store
        .watch(WatchRequest::new(KeyRange::prefix(b"/tls/".to_vec())))
        .await
        .unwrap();
    let rev = store.put(b"/tls/a", b"over tls").await.unwrap();
    let page = store
        .range(RangeRequest::new(KeyRange::Key(b"/tls/a".to_vec())))
        .await
        .unwrap();
    assert_eq!(page.kvs[0].value, b"over tls");
    let batch = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("the watch delivers within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(batch.events[0].kv.mod_revision, rev);

    // Negative control 1: plain HTTP to the TLS port gets nothing.
    let plain: Vec<String> = endpoints
        .iter()
        .map(|e| e.replace("https://", "http://"))
        .collect();
    let e = EtcdStore::connect_with(&plain, options(None))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Unavailable(_)), "plain HTTP: {e}");

    // https:// without a CA, or a CA with http://: refused before dialling, saying why.
    let e = EtcdStore::connect_with(&endpoints, options(None))
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Tls(_)) && e.to_string().contains("--etcd-cafile"),
        "{e}"
    );
    let e = EtcdStore::connect_with(&plain, options(Some(tls.clone())))
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Tls(_)) && e.to_string().contains("https://"),
        "{e}"
    );

    // Negative control 2: TLS without a client certificate is refused by etcd. Usually at
    // once, as a TLS error (etcd's BadCertificate alert); with TLS 1.3 the client may see
    // only the connection closing (the alert comes after its side of the handshake), which is
    // retried until the window ends. Refused either way.
    let no_cert = EtcdTls {
        identity: None,
        ..tls.clone()
    };
    let started = Instant::now();
    let e = EtcdStore::connect_with(&endpoints, options(Some(no_cert)))
        .await
        .unwrap_err();
    println!("no client certificate: {e} ({:.2?})", started.elapsed());
    assert!(
        matches!(e, Error::Tls(_) | Error::Unavailable(_)),
        "no client certificate: {e}"
    );

    // Negative control 3: a CA that did not sign etcd's certificate: a clear error, at once.
    let other = ca("another-ca");
    let wrong = EtcdTls {
        ca_pem: other.pem.into_bytes(),
        ..tls
    };
    let started = Instant::now();
    let e = EtcdStore::connect_with(&endpoints, options(Some(wrong)))
        .await
        .unwrap_err();
    let text = e.to_string();
    println!("wrong CA: {text} ({:.2?})", started.elapsed());
    assert!(matches!(e, Error::Tls(_)), "wrong CA: {text}");
    assert!(
        text.contains("UnknownIssuer") && text.contains("--etcd-cafile"),
        "the error names the cause and the flag: {text}"
    );
}
