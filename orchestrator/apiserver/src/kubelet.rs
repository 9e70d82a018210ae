//! The API server as a client of kubelets: `pods/log` (and exec, attach, port-forward) goes to the kubelet of the pod's node, on
//! the address and port its Node reports (InternalIP, then Hostname;
//! `status.daemonEndpoints.kubeletEndpoint.Port`), over HTTPS with the API server's kubelet
//! client certificate (upstream's `--kubelet-client-certificate`). The kubelet's serving
//! certificate is checked against a CA only when one is given
//! (`--kubelet-certificate-authority`); without one it is not, as upstream.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::handlers::{Api, Call, Reply};
use crate::meta;
use crate::pki::CertPair;
use crate::status::ApiError;

/// The query parameters of pods/log the kubelet's `/containerLogs` understands.
const LOG_PARAMS: &[&str] = &[
    "follow",
    "previous",
    "timestamps",
    "sinceSeconds",
    "sinceTime",
    "tailLines",
    "limitBytes",
];

/// HTTPS to kubelets.
pub struct KubeletClient {
    tls: tokio_rustls::TlsConnector,
}

/// Accepts any kubelet serving certificate (no `--kubelet-certificate-authority`), still
/// checking the handshake signatures.
#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl KubeletClient {
    /// A client presenting `cert`; kubelets' certificates are checked against `ca_pem` when set.
    pub fn new(cert: &CertPair, ca_pem: Option<&str>) -> Result<KubeletClient, String> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|x| e(&x))?;
        let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).map_err(|x| e(&x))?;
        let builder = rustls::ClientConfig::builder();
        let builder = match ca_pem {
            Some(pem) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    roots.add(c.map_err(|x| e(&x))?).map_err(|x| e(&x))?;
                }
                builder.with_root_certificates(roots)
            }
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServerCert(Arc::new(
                    rustls::crypto::ring::default_provider(),
                )))),
        };
        let mut config = builder
            .with_client_auth_cert(chain, key)
            .map_err(|x| e(&x))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(KubeletClient {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    /// GETs `path_and_query` from the kubelet at `host:port`; the answer's status, content type
    /// and body (streamed: a followed log keeps coming).
    pub async fn get(
        &self,
        host: &str,
        port: u16,
        path_and_query: &str,
    ) -> Result<(u16, String, mpsc::Receiver<Bytes>), ApiError> {
        self.send(
            hyper::Method::GET,
            host,
            port,
            path_and_query,
            None,
            Bytes::new(),
        )
        .await
    }

    /// Sends `method` `path_and_query` with `body` (of `content_type`) to the kubelet at
    /// `host:port`; the answer as [`KubeletClient::get`] gives it.
    pub async fn send(
        &self,
        method: hyper::Method,
        host: &str,
        port: u16,
        path_and_query: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<(u16, String, mpsc::Receiver<Bytes>), ApiError> {
        let unreachable = |e: &dyn std::fmt::Display| {
            ApiError::internal(format!(
                "Get \"https://{host}:{port}{path_and_query}\": {e}"
            ))
        };
        let tcp = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tokio::net::TcpStream::connect((host, port)),
        )
        .await
        .map_err(|_| unreachable(&"dial timeout"))?
        .map_err(|e| unreachable(&e))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(host.to_string()).map_err(|e| unreachable(&e))?;
        let tls = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            self.tls.connect(name, tcp),
        )
        .await
        .map_err(|_| unreachable(&"TLS handshake timeout"))?
        .map_err(|e| unreachable(&handshake_failure(&e)))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| unreachable(&e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(hyper::header::HOST, format!("{host}:{port}"));
        if let Some(ct) = content_type.filter(|c| !c.is_empty()) {
            req = req.header(hyper::header::CONTENT_TYPE, ct);
        }
        let req = req
            .body(http_body_util::Full::new(body))
            .map_err(|e| unreachable(&e))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| unreachable(&e))?;
        let code = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("text/plain")
            .to_string();
        let mut body = resp.into_body();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            // Held until the body ends or the client goes (then the kubelet's stream closes).
            let _sender = sender;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Ok(data) = frame.into_data()
                    && tx.send(data).await.is_err()
                {
                    break;
                }
            }
        });
        Ok((code, content_type, rx))
    }
}

/// Why the TLS handshake with a kubelet failed, in the words of upstream's API server (Go's
/// `x509` errors) where the kubelet's certificate was refused, so that `kubectl logs` says
/// what is wrong: its certificate is not from `--kubelet-certificate-authority`, or does not
/// name the address the Node reports.
fn handshake_failure(e: &std::io::Error) -> String {
    use rustls::CertificateError as C;
    let refused = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match refused {
        Some(rustls::Error::InvalidCertificate(why)) => {
            let x509 = match why {
                C::UnknownIssuer => "certificate signed by unknown authority".to_string(),
                C::NotValidForName | C::NotValidForNameContext { .. } => {
                    "certificate is not valid for the kubelet's address".to_string()
                }
                C::Expired | C::ExpiredContext { .. } => {
                    "certificate has expired or is not yet valid".to_string()
                }
                other => format!("{other:?}"),
            };
            format!(
                "tls: failed to verify certificate: x509: {x509} (the kubelet's serving certificate, checked against --kubelet-certificate-authority)"
            )
        }
        _ => e.to_string(),
    }
}

/// The upgrade handshake headers (WebSocket, and SPDY/3.1's protocol versions) passed between
/// client and kubelet, both ways.
pub const UPGRADE_HEADERS: &[&str] = &[
    "upgrade",
    "connection",
    "x-stream-protocol-version",
    "x-accepted-stream-protocol-versions",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-accept",
    "sec-websocket-extensions",
];

impl KubeletClient {
    /// Opens `path_and_query` on the kubelet with an upgrade request (`method`: GET for a
    /// WebSocket, POST for SPDY) carrying `headers`; the kubelet's 101 answer and its upgraded
    /// stream, or its error.
    pub async fn upgrade(
        &self,
        method: hyper::Method,
        host: &str,
        port: u16,
        path_and_query: &str,
        headers: &hyper::HeaderMap,
    ) -> Result<(hyper::HeaderMap, hyper::upgrade::Upgraded), ApiError> {
        let unreachable = |e: &dyn std::fmt::Display| {
            ApiError::internal(format!(
                "error dialing backend https://{host}:{port}{path_and_query}: {e}"
            ))
        };
        let tcp = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tokio::net::TcpStream::connect((host, port)),
        )
        .await
        .map_err(|_| unreachable(&"dial timeout"))?
        .map_err(|e| unreachable(&e))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(host.to_string()).map_err(|e| unreachable(&e))?;
        let tls = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            self.tls.connect(name, tcp),
        )
        .await
        .map_err(|_| unreachable(&"TLS handshake timeout"))?
        .map_err(|e| unreachable(&handshake_failure(&e)))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| unreachable(&e))?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(hyper::header::HOST, format!("{host}:{port}"))
            .body(Empty::<Bytes>::new())
            .map_err(|e| unreachable(&e))?;
        for (k, v) in headers {
            if UPGRADE_HEADERS.contains(&k.as_str()) {
                req.headers_mut().append(k.clone(), v.clone());
            }
        }
        let mut resp = sender
            .send_request(req)
            .await
            .map_err(|e| unreachable(&e))?;
        if resp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
            let code = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(ApiError::from_backend(
                code,
                String::from_utf8_lossy(&body).trim().to_string(),
            ));
        }
        let upgraded = hyper::upgrade::on(&mut resp)
            .await
            .map_err(|e| unreachable(&e))?;
        Ok((resp.headers().clone(), upgraded))
    }
}

/// Where the kubelet of node `name` listens: its preferred address and port.
async fn kubelet_of(api: &Api, node: &str) -> Result<(String, u16), ApiError> {
    let nodes = api
        .registry
        .find("", "v1", "nodes")
        .ok_or_else(|| ApiError::internal("nodes are not served"))?;
    let stored = api
        .storage
        .get(&nodes, None, node)
        .await?
        .ok_or_else(|| ApiError::not_found("", "nodes", node))?;
    kubelet_endpoint(&stored.obj).ok_or_else(|| {
        ApiError::bad_request(format!("no preferred addresses found for node {node}"))
    })
}

/// Where the kubelet of this Node object listens: its preferred address (InternalIP, then
/// Hostname, then ExternalIP) and its `daemonEndpoints` port (10250 when unset).
pub fn kubelet_endpoint(node: &Value) -> Option<(String, u16)> {
    let status = &node["status"];
    let addresses = status["addresses"].as_array().cloned().unwrap_or_default();
    let host = ["InternalIP", "Hostname", "ExternalIP"]
        .iter()
        .find_map(|t| {
            addresses
                .iter()
                .find(|a| a["type"] == *t)
                .and_then(|a| a["address"].as_str())
        })?
        .to_string();
    let port = status["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .unwrap_or(10250);
    Some((host, port))
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Go's `%s` of a string slice: `[a b]`.
fn go_list(names: &[String]) -> String {
    format!("[{}]", names.join(" "))
}

/// The container a log request is about: the one named, or the only one (upstream's
/// `validateContainer`, with its messages).
pub fn log_container(pod: &Value, asked: Option<&str>) -> Result<String, ApiError> {
    let name = meta::name(pod).unwrap_or("");
    let spec = &pod["spec"];
    let (containers, init, ephemeral) = (
        names(&spec["containers"]),
        names(&spec["initContainers"]),
        names(&spec["ephemeralContainers"]),
    );
    match asked {
        Some(c) => {
            if containers
                .iter()
                .chain(&init)
                .chain(&ephemeral)
                .any(|n| n == c)
            {
                Ok(c.to_string())
            } else {
                Err(ApiError::bad_request(format!(
                    "container {c} is not valid for pod {name}"
                )))
            }
        }
        None => match containers.as_slice() {
            [only] => Ok(only.clone()),
            [] => Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}"
            ))),
            _ => {
                let mut why = format!(
                    "a container name must be specified for pod {name}, choose one of: {}",
                    go_list(&containers)
                );
                if !init.is_empty() {
                    why.push_str(&format!(
                        " or one of the init containers: {}",
                        go_list(&init)
                    ));
                }
                if !ephemeral.is_empty() {
                    why.push_str(&format!(
                        " or one of the ephemeral containers: {}",
                        go_list(&ephemeral)
                    ));
                }
                Err(ApiError::bad_request(why))
            }
        },
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved characters pass).
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The kubelet's exec query from the API's (`command` repeated, `stdin`→`input`,
/// `stdout`→`output`, `stderr`→`error`, `tty`), values passed as encoded.
pub fn exec_query(raw: Option<&str>) -> String {
    raw.unwrap_or("")
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = match k {
                "command" => "command",
                "stdin" => "input",
                "stdout" => "output",
                "stderr" => "error",
                "tty" => "tty",
                _ => return None,
            };
            Some(format!("{k}={v}"))
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// The kubelet's port-forward query from the API's: `ports` becomes `port`.
pub fn portforward_query(raw: Option<&str>) -> String {
    raw.unwrap_or("")
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == "ports" || k == "port").then(|| format!("port={v}"))
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// pods/exec, pods/attach and pods/portforward: authorizes `create pods/exec` (also for the
/// WebSocket GET, as upstream's AuthorizePodWebsocketUpgradeCreatePermission; `create
/// pods/attach` and `create pods/portforward` likewise), picks
/// the container (exec) or checks the pod runs (port-forward), and opens the stream on the
/// pod's kubelet with the client's upgrade (a WebSocket, or SPDY/3.1 as kubectl ≤1.29
/// asks). The caller relays the two upgraded streams byte for byte, as upstream's
/// UpgradeAwareHandler does.
pub async fn exec(
    api: &Api,
    req: &crate::request::ResourceRequest,
    user: &crate::auth::User,
    raw_query: Option<&str>,
    headers: &hyper::HeaderMap,
) -> Result<(hyper::HeaderMap, hyper::upgrade::Upgraded), ApiError> {
    let pods = api
        .registry
        .find("", "v1", "pods")
        .ok_or_else(|| ApiError::internal("pods are not served"))?;
    let mut create = req.clone();
    create.verb = crate::request::Verb::Create;
    crate::auth::authorize(user, &create, &pods, api, "", &[]).await?;
    let sub = req.subresource.as_deref().unwrap_or("exec");
    let upgrade = headers
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let method = if upgrade.eq_ignore_ascii_case("websocket") {
        hyper::Method::GET
    } else if upgrade.eq_ignore_ascii_case("SPDY/3.1") {
        hyper::Method::POST
    } else {
        return Err(ApiError::bad_request(format!(
            "Upgrade request required: {sub} is streamed over SPDY/3.1 or a WebSocket"
        )));
    };
    let (ns, name) = (
        req.namespace.as_deref().unwrap_or("default"),
        req.name.as_deref().unwrap_or(""),
    );
    let pod = api
        .storage
        .get(&pods, Some(ns), name)
        .await?
        .ok_or_else(|| ApiError::not_found("", "pods", name))?
        .obj;
    let node = pod["spec"]["nodeName"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(format!("pod {name} does not have a host assigned"))
        })?;
    let path = if sub == "portforward" {
        if pod["status"]["phase"] != "Running" {
            return Err(ApiError::bad_request(format!(
                "pod {name} is not running: phase {}",
                pod["status"]["phase"].as_str().unwrap_or("Pending")
            )));
        }
        format!(
            "/portForward/{}/{}?{}",
            encode(ns),
            encode(name),
            portforward_query(raw_query)
        )
    } else {
        let asked = crate::request::query(raw_query).get("container").cloned();
        let container = log_container(&pod, asked.as_deref().filter(|c| !c.is_empty()))?;
        if pod["status"]["phase"] == "Succeeded" || pod["status"]["phase"] == "Failed" {
            let what = if sub == "attach" {
                "cannot attach to a container in a completed pod; current phase is "
            } else {
                "cannot exec into a container in a completed pod; current phase is "
            };
            return Err(ApiError::bad_request(
                what.to_string() + pod["status"]["phase"].as_str().unwrap_or(""),
            ));
        }
        // Attach takes the same streams as exec, and no command.
        format!(
            "/{}/{}/{}/{}?{}",
            if sub == "attach" { "attach" } else { "exec" },
            encode(ns),
            encode(name),
            encode(&container),
            exec_query(raw_query)
        )
    };
    let client = api
        .kubelet
        .get()
        .ok_or_else(|| ApiError::unavailable("no kubelet client certificate is configured"))?;
    let (host, port) = kubelet_of(api, node).await?;
    client.upgrade(method, &host, port, &path, headers).await
}

/// The node and the port a `nodes/<id>/proxy` request names: `<name>`, `<name>:<port>` or
/// `https:<name>:<port>` (upstream's `SplitSchemeNamePort`); only HTTPS is spoken to kubelets.
pub fn node_proxy_target(id: &str) -> Result<(&str, Option<u16>), ApiError> {
    let bad = || ApiError::bad_request(format!("invalid node request {id:?}"));
    let parts: Vec<&str> = id.split(':').collect();
    let (scheme, name, port) = match parts.as_slice() {
        [name] => ("", *name, None),
        [name, port] => ("", *name, Some(*port)),
        [scheme, name, port] => (*scheme, *name, Some(*port)),
        _ => return Err(bad()),
    };
    if name.is_empty() {
        return Err(bad());
    }
    if !matches!(scheme, "" | "https") {
        return Err(ApiError::bad_request(format!(
            "nodes/{id}/proxy: only https is spoken to kubelets, not {scheme:?}"
        )));
    }
    let port = match port.filter(|p| !p.is_empty()) {
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?),
        None => None,
    };
    Ok((name, port))
}

/// `nodes/<name>[:<port>]/proxy/<path>` (`kubectl get --raw /api/v1/nodes/n1/proxy/stats/summary`):
/// authorizes the request's verb on `nodes/proxy` (RBAC; `system:kubelet-api-admin` grants it,
/// nodes get no such right), then sends the method, path and body to the node's kubelet with the API server's kubelet client certificate (`path_and_query`: the
/// kubelet's path, see [`crate::request::proxy_path`], and the request's query). The kubelet's status,
/// content type and body (streamed) are the answer, as upstream's proxy passes them.
pub async fn node_proxy(
    api: &Api,
    req: &crate::request::ResourceRequest,
    user: &crate::auth::User,
    method: hyper::Method,
    path_and_query: &str,
    content_type: &str,
    body: Bytes,
) -> Result<(u16, String, mpsc::Receiver<Bytes>), ApiError> {
    let nodes = api
        .registry
        .find("", "v1", "nodes")
        .ok_or_else(|| ApiError::internal("nodes are not served"))?;
    crate::auth::authorize(user, req, &nodes, api, content_type, &body).await?;
    let id = req.name.as_deref().unwrap_or("");
    let (node, port) = node_proxy_target(id)?;
    let (host, kubelet_port) = kubelet_of(api, node).await?;
    let client = api
        .kubelet
        .get()
        .ok_or_else(|| ApiError::unavailable("no kubelet client certificate is configured"))?;
    client
        .send(
            method,
            &host,
            port.unwrap_or(kubelet_port),
            path_and_query,
            Some(content_type),
            body,
        )
        .await
}

/// GET pods/log: the pod's container log from its node's kubelet, streamed as it answers.
pub async fn logs(api: &Api, call: &Call<'_>) -> Result<Reply, ApiError> {
    let r = &call.req;
    let (ns, name) = (
        r.namespace.as_deref().unwrap_or("default"),
        r.name.as_deref().unwrap_or(""),
    );
    let pods = api
        .registry
        .find("", "v1", "pods")
        .ok_or_else(|| ApiError::internal("pods are not served"))?;
    let pod = api
        .storage
        .get(&pods, Some(ns), name)
        .await?
        .ok_or_else(|| ApiError::not_found("", "pods", name))?
        .obj;
    let container = log_container(&pod, call.q("container"))?;
    let node = pod["spec"]["nodeName"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(format!("pod {name} does not have a host assigned"))
        })?;
    for (key, v) in LOG_PARAMS.iter().filter_map(|k| Some((k, call.q(k)?))) {
        let numeric = matches!(*key, "sinceSeconds" | "tailLines" | "limitBytes");
        if numeric
            && v.parse::<i64>()
                .map_or(true, |n| n < 0 || (n == 0 && *key != "tailLines"))
        {
            return Err(ApiError::bad_request(format!(
                "{key}: Invalid value: {v:?}: must be {}",
                if *key == "tailLines" {
                    "greater than or equal to 0"
                } else {
                    "greater than 0"
                }
            )));
        }
    }
    if call.q("sinceSeconds").is_some() && call.q("sinceTime").is_some() {
        return Err(ApiError::bad_request(
            "at most one of `sinceTime` or `sinceSeconds` may be specified",
        ));
    }
    let query: Vec<String> = LOG_PARAMS
        .iter()
        .filter_map(|k| Some(format!("{k}={}", encode(call.q(k)?))))
        .collect();
    let mut path = format!(
        "/containerLogs/{}/{}/{}",
        encode(ns),
        encode(name),
        encode(&container)
    );
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query.join("&"));
    }
    let client = api
        .kubelet
        .get()
        .ok_or_else(|| ApiError::unavailable("no kubelet client certificate is configured"))?;
    let (host, port) = kubelet_of(api, node).await?;
    let (code, content_type, mut rx) = client.get(&host, port, &path).await?;
    if !(200..300).contains(&code) {
        let mut text = Vec::new();
        while let Some(chunk) = rx.recv().await {
            text.extend_from_slice(&chunk);
            if text.len() > 64 * 1024 {
                break;
            }
        }
        return Err(ApiError::from_backend(
            code,
            String::from_utf8_lossy(&text).trim().to_string(),
        ));
    }
    Ok(Reply::Bytes {
        content_type: if content_type.starts_with("text/plain") {
            "text/plain"
        } else {
            "application/octet-stream"
        },
        body: rx,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::KeyPair;

    /// A one-shot HTTPS "kubelet" on 127.0.0.1 serving `cert`; answers `ok` to one request.
    async fn kubelet_serving(cert: &CertPair) -> u16 {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                return;
            };
            let mut buf = [0u8; 4096];
            let _ = tls.read(&mut buf).await;
            let _ = tls
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                .await;
            let _ = tls.shutdown().await;
        });
        port
    }

    #[tokio::test]
    async fn with_a_ca_a_self_signed_kubelet_is_refused_and_one_from_the_ca_is_not() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let pki = crate::pki::Pki::ensure(dir.path(), &[]).unwrap();
        let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let checked = KubeletClient::new(&pki.kubelet_client, Some(&pki.ca.cert_pem)).unwrap();
        // A kubelet's own certificate (what it makes without --tls-cert-file).
        let key = KeyPair::generate().unwrap();
        let own = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let own = CertPair {
            cert_pem: own.pem(),
            key_pem: key.serialize_pem(),
        };
        let port = kubelet_serving(&own).await;
        let err = checked
            .get("127.0.0.1", port, "/containerLogs/default/p/c")
            .await
            .expect_err("a self-signed kubelet is refused");
        let text = format!("{err:?}");
        assert!(
            text.contains("x509: certificate signed by unknown authority"),
            "{text}"
        );
        // The negative control: without a CA (upstream's default) the same kubelet is used.
        let unchecked = KubeletClient::new(&pki.kubelet_client, None).unwrap();
        let port = kubelet_serving(&own).await;
        let (code, _, _) = unchecked.get("127.0.0.1", port, "/x").await.unwrap();
        assert_eq!(code, 200);
        // One from the cluster CA naming the address: accepted.
        let issued = crate::pki::kubelet_serving(&pki.ca, "n1", &[ip], &[]).unwrap();
        let port = kubelet_serving(&issued).await;
        let (code, _, mut body) = checked.get("127.0.0.1", port, "/x").await.unwrap();
        assert_eq!(code, 200);
        assert_eq!(body.recv().await.as_deref(), Some(&b"ok"[..]));
        // From the CA but for another address: refused too.
        let other: std::net::IpAddr = "127.0.0.2".parse().unwrap();
        let elsewhere = crate::pki::kubelet_serving(&pki.ca, "n2", &[other], &[]).unwrap();
        let port = kubelet_serving(&elsewhere).await;
        let err = checked.get("127.0.0.1", port, "/x").await.unwrap_err();
        assert!(format!("{err:?}").contains("not valid for"), "{err:?}");
    }
    use serde_json::json;

    #[test]
    fn node_proxy_names_a_node_and_maybe_a_port() {
        assert_eq!(node_proxy_target("n1").ok(), Some(("n1", None)));
        assert_eq!(
            node_proxy_target("n1:10250").ok(),
            Some(("n1", Some(10250)))
        );
        assert_eq!(
            node_proxy_target("https:n1:10250").ok(),
            Some(("n1", Some(10250)))
        );
        for bad in ["http:n1:80", "n1:x", "n1:0", ":1", "a:b:c:d"] {
            assert_eq!(
                node_proxy_target(bad).err().map(|e| e.code),
                Some(400),
                "{bad}"
            );
        }
    }

    #[test]
    fn exec_parameters_take_the_kubelets_names() {
        assert_eq!(
            exec_query(Some(
                "command=sh&command=-c&command=echo%20hi&container=c&stdout=true&stderr=true"
            )),
            "command=sh&command=-c&command=echo%20hi&output=true&error=true"
        );
    }

    #[test]
    fn the_only_container_is_the_default_and_several_need_a_name() {
        let one = json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "srv"}]}});
        assert_eq!(log_container(&one, None).ok().as_deref(), Some("srv"));
        let two = json!({"metadata": {"name": "web"}, "spec": {
            "initContainers": [{"name": "setup"}],
            "containers": [{"name": "srv"}, {"name": "side"}]}});
        let e = log_container(&two, None).err().map(|e| (e.code, e.message));
        assert_eq!(
            e,
            Some((400, "a container name must be specified for pod web, choose one of: [srv side] or one of the init containers: [setup]".into()))
        );
        assert_eq!(
            log_container(&two, Some("setup")).ok().as_deref(),
            Some("setup")
        );
        let e = log_container(&two, Some("nope")).err().map(|e| e.message);
        assert_eq!(
            e.as_deref(),
            Some("container nope is not valid for pod web")
        );
    }
}
