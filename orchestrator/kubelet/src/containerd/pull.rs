//! Registry pulls without containerd's Transfer service (1.6 has none): the kubelet speaks the
//! registry's HTTP API v2 itself (manifest, then the blobs, with the Bearer-token or Basic auth
//! a registry asks for), then writes and unpacks the image as `trellis image import` does
//! ([`super::image::import_blobs`]).
//!
//! Which endpoint serves a registry and its credentials come from a `registries.yaml` in k3s'
//! format (`--registry-config`): `mirrors.<registry>.endpoint` (an `http://` endpoint is a
//! plain-HTTP registry) and `configs.<registry>.auth` (`username`/`password`, or `auth`:
//! base64 of `user:password`). A registry without a mirror entry is reached at
//! `https://<registry>` (docker.io at `https://registry-1.docker.io`), verified against the
//! system's CA bundle.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use serde::Deserialize;

use super::image::{self, Desc, Imported};
use super::{Conn, CtrdError};

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
/// The largest manifest read.
const MAX_MANIFEST: usize = 4 << 20;
/// The largest blob read (a blob is held in memory until the image is written).
const MAX_BLOB: usize = 2 << 30;
/// The most an image's config and layers may add up to (they are held in memory until the
/// import).
const MAX_IMAGE: u64 = 4 << 30;
/// Connecting to an endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// One request, its body included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// The system CA bundle HTTPS endpoints are verified against.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// `registries.yaml` (k3s' format, the parts the kubelet reads).
#[derive(Debug, Default, Clone, Deserialize)]
pub struct Registries {
    #[serde(default)]
    pub mirrors: HashMap<String, Mirror>,
    #[serde(default)]
    pub configs: HashMap<String, RegistryConfig>,
}

#[derive(Debug, Default, Clone, Deserialize)]
pub struct Mirror {
    /// Endpoints tried in order: `http://host:port` or `https://host[:port]`.
    #[serde(default)]
    pub endpoint: Vec<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
pub struct RegistryConfig {
    #[serde(default)]
    pub auth: Option<Auth>,
}

#[derive(Debug, Default, Clone, Deserialize)]
pub struct Auth {
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// base64 of `username:password` (as in a Docker config).
    #[serde(default)]
    pub auth: Option<String>,
}

impl Auth {
    fn pair(&self) -> Option<(String, String)> {
        if let (Some(u), Some(p)) = (&self.username, &self.password) {
            return Some((u.clone(), p.clone()));
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(self.auth.as_deref()?.trim())
            .ok()?;
        let s = String::from_utf8(raw).ok()?;
        let (u, p) = s.split_once(':')?;
        Some((u.to_string(), p.to_string()))
    }
}

impl Registries {
    /// Reads a `registries.yaml`.
    pub fn load(path: &Path) -> Result<Registries, CtrdError> {
        let text = std::fs::read_to_string(path).map_err(|e| CtrdError::Io {
            what: format!("read {}", path.display()),
            source: e,
        })?;
        Registries::parse(&text).map_err(|e| CtrdError::Image(format!("{}: {e}", path.display())))
    }

    pub fn parse(text: &str) -> Result<Registries, String> {
        if text.trim().is_empty() {
            return Ok(Registries::default());
        }
        let r: Registries = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        for (host, m) in &r.mirrors {
            for e in &m.endpoint {
                Url::parse(e).map_err(|why| format!("mirrors.{host}.endpoint {e:?}: {why}"))?;
            }
        }
        Ok(r)
    }

    /// The endpoints of `registry`, in order.
    pub fn endpoints(&self, registry: &str) -> Vec<String> {
        match self.mirrors.get(registry) {
            Some(m) if !m.endpoint.is_empty() => m.endpoint.clone(),
            _ if registry == "docker.io" => vec!["https://registry-1.docker.io".into()],
            _ => vec![format!("https://{registry}")],
        }
    }

    fn credentials(&self, registry: &str) -> Option<(String, String)> {
        self.configs.get(registry)?.auth.as_ref()?.pair()
    }
}

/// A reference split into registry, repository and tag or digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    /// A tag or a `sha256:` digest.
    pub reference: String,
}

impl Reference {
    /// From any reference (normalized first, as containerd stores it).
    pub fn parse(reference: &str) -> Result<Reference, CtrdError> {
        let full = image::normalize(reference);
        let bad = || CtrdError::Image(format!("{reference:?} is not an image reference"));
        let (registry, rest) = full.split_once('/').ok_or_else(bad)?;
        let (repository, r) = if let Some((repo, digest)) = rest.split_once('@') {
            (repo.to_string(), digest.to_string())
        } else {
            let (repo, tag) = rest.rsplit_once(':').ok_or_else(bad)?;
            (repo.to_string(), tag.to_string())
        };
        if registry.is_empty() || repository.is_empty() || r.is_empty() {
            return Err(bad());
        }
        Ok(Reference {
            registry: registry.to_string(),
            repository,
            reference: r,
        })
    }
}

/// An `http(s)://host[:port]/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Url {
    tls: bool,
    host: String,
    port: u16,
    /// The path and query, starting with `/`.
    path: String,
}

impl Url {
    fn parse(s: &str) -> Result<Url, String> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err("only http:// and https:// URLs".into());
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = if let Some(h) = authority.strip_prefix('[') {
            let (h, after) = h.split_once(']').ok_or("a bad IPv6 address")?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| "a bad port")?,
                None => default_port(tls),
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| "a bad port")?),
                None => (authority.to_string(), default_port(tls)),
            }
        };
        if host.is_empty() {
            return Err("no host".into());
        }
        Ok(Url {
            tls,
            host,
            port,
            path: path.to_string(),
        })
    }

    fn authority(&self) -> String {
        let h = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default_port(self.tls) {
            h
        } else {
            format!("{h}:{}", self.port)
        }
    }

    /// `loc` (a `Location` header) against this URL.
    fn join(&self, loc: &str) -> Result<Url, String> {
        if loc.starts_with("http://") || loc.starts_with("https://") {
            Url::parse(loc)
        } else if loc.starts_with('/') {
            Ok(Url {
                path: loc.to_string(),
                ..self.clone()
            })
        } else {
            Err(format!("a relative redirect {loc:?}"))
        }
    }
}

fn default_port(tls: bool) -> u16 {
    if tls { 443 } else { 80 }
}

struct Resp {
    status: u16,
    headers: hyper::HeaderMap,
    body: Bytes,
}

impl Resp {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    let certs =
        CertificateDer::pem_file_iter(CA_BUNDLE).map_err(|e| format!("{CA_BUNDLE}: {e}"))?;
    for c in certs.flatten() {
        let _ = roots.add(c);
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// One GET (no redirects followed).
async fn get_once(url: &Url, headers: &[(&str, String)], limit: usize) -> Result<Resp, String> {
    let addr = (url.host.as_str(), url.port);
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connect to {}: timed out", url.authority()))?
        .map_err(|e| format!("connect to {}: {e}", url.authority()))?;
    let io: Box<dyn Io> = if url.tls {
        let name = rustls::pki_types::ServerName::try_from(url.host.clone())
            .map_err(|e| format!("{}: {e}", url.host))?;
        let tls = tokio_rustls::TlsConnector::from(tls_config()?)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {}: {e}", url.authority()))?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    let (mut send, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP with {}: {e}", url.authority()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = hyper::Request::get(url.path.as_str()).header("host", url.authority());
    req = req.header("user-agent", "trellis-kubelet");
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("GET {}{}: {e}", url.authority(), url.path))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = Limited::new(resp.into_body(), limit)
        .collect()
        .await
        .map_err(|e| format!("GET {}{}: {e}", url.authority(), url.path))?
        .to_bytes();
    Ok(Resp {
        status,
        headers,
        body,
    })
}

/// A registry endpoint with its credentials and the token it handed out.
struct Client {
    base: Url,
    creds: Option<(String, String)>,
    /// The `Authorization` header value that worked.
    authz: Option<String>,
}

impl Client {
    /// GET `path` on the endpoint: redirects followed (no credentials to another host), a 401
    /// answered once with the challenge's scheme.
    async fn get(
        &mut self,
        path: &str,
        accept: Option<&str>,
        limit: usize,
    ) -> Result<Resp, String> {
        let fut = async {
            let mut tried_auth = false;
            loop {
                let r = self.get_following(path, accept, limit).await?;
                if r.status == 401 && !tried_auth {
                    tried_auth = true;
                    let challenge = r.header("www-authenticate").unwrap_or_default();
                    self.authz = Some(self.authenticate(&challenge).await?);
                    continue;
                }
                return Ok(r);
            }
        };
        tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .map_err(|_| {
                format!(
                    "GET {path}: no answer within {} s",
                    REQUEST_TIMEOUT.as_secs()
                )
            })?
    }

    async fn get_following(
        &self,
        path: &str,
        accept: Option<&str>,
        limit: usize,
    ) -> Result<Resp, String> {
        let mut url = Url {
            path: path.to_string(),
            ..self.base.clone()
        };
        for _ in 0..6 {
            let mut h: Vec<(&str, String)> = Vec::new();
            if let Some(a) = accept {
                h.push(("accept", a.to_string()));
            }
            if url.host == self.base.host
                && url.port == self.base.port
                && let Some(z) = &self.authz
            {
                h.push(("authorization", z.clone()));
            }
            let r = get_once(&url, &h, limit).await?;
            if matches!(r.status, 301 | 302 | 303 | 307 | 308) {
                let loc = r
                    .header("location")
                    .ok_or("a redirect without a Location")?;
                url = url.join(&loc)?;
                continue;
            }
            return Ok(r);
        }
        Err(format!("GET {path}: too many redirects"))
    }

    /// The `Authorization` value for a `WWW-Authenticate` challenge.
    async fn authenticate(&self, challenge: &str) -> Result<String, String> {
        let basic = self.creds.as_ref().map(|(u, p)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        });
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return basic.ok_or_else(|| "the registry wants credentials (401 Basic)".into());
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(format!("the registry answered 401 with {challenge:?}"));
        }
        let p = challenge_params(params);
        let realm = p.get("realm").ok_or("a Bearer challenge without a realm")?;
        let mut q = Vec::new();
        for k in ["service", "scope"] {
            if let Some(v) = p.get(k) {
                q.push(format!("{k}={}", query_escape(v)));
            }
        }
        let mut url = Url::parse(realm)?;
        if !q.is_empty() {
            url.path = format!(
                "{}{}{}",
                url.path,
                if url.path.contains('?') { "&" } else { "?" },
                q.join("&")
            );
        }
        let mut h = Vec::new();
        if let Some(b) = &basic {
            h.push(("authorization", b.clone()));
        }
        let r = get_once(&url, &h, MAX_MANIFEST).await?;
        if r.status != 200 {
            return Err(format!(
                "the token service {} answered {}",
                url.authority(),
                r.status
            ));
        }
        #[derive(Deserialize)]
        struct Token {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
        }
        let t: Token = serde_json::from_slice(&r.body).map_err(|e| format!("token: {e}"))?;
        let t = t
            .token
            .or(t.access_token)
            .ok_or("the token service gave no token")?;
        Ok(format!("Bearer {t}"))
    }
}

/// `k="v",k2="v2"` of a challenge.
fn challenge_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((k, after)) = rest.split_once('=') else {
            break;
        };
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let (v, after) = if let Some(a) = after.strip_prefix('"') {
            match a.split_once('"') {
                Some((v, r)) => (v.to_string(), r),
                None => (a.to_string(), ""),
            }
        } else {
            match after.split_once(',') {
                Some((v, r)) => (v.trim().to_string(), r),
                None => (after.trim().to_string(), ""),
            }
        };
        out.insert(k, v);
        rest = after.trim_start_matches(',').trim();
    }
    out
}

fn query_escape(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// What a pull did.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub image: Imported,
    /// Bytes fetched (0: the image was current already).
    pub bytes: u64,
}

/// Pulls `reference` into containerd under its normalized name: the manifest (an index's for
/// this platform), its config and layers, written and unpacked. An image whose name already
/// points at the registry's digest is not fetched again.
pub async fn pull(
    conn: &Conn,
    registries: &Registries,
    reference: &str,
    snapshotter: &str,
) -> Result<Pulled, CtrdError> {
    let r = Reference::parse(reference)?;
    let mut errors = Vec::new();
    for ep in registries.endpoints(&r.registry) {
        let base =
            Url::parse(&ep).map_err(|e| CtrdError::Image(format!("endpoint {ep:?}: {e}")))?;
        let mut client = Client {
            base,
            creds: registries.credentials(&r.registry),
            authz: None,
        };
        match pull_from(conn, &mut client, &r, snapshotter).await {
            Ok(p) => return Ok(p),
            // Not found is final: another mirror is not asked.
            Err(PullError::Ctrd(e)) => return Err(e),
            Err(PullError::Endpoint(e)) => errors.push(format!("{ep}: {e}")),
        }
    }
    Err(CtrdError::Image(format!(
        "pulling {}: {}",
        image::normalize(reference),
        errors.join("; ")
    )))
}

enum PullError {
    /// The endpoint failed (the next one may serve).
    Endpoint(String),
    Ctrd(CtrdError),
}

impl From<CtrdError> for PullError {
    fn from(e: CtrdError) -> PullError {
        PullError::Ctrd(e)
    }
}

async fn pull_from(
    conn: &Conn,
    client: &mut Client,
    r: &Reference,
    snapshotter: &str,
) -> Result<Pulled, PullError> {
    let name = format!("{}/{}", r.registry, r.repository);
    let name = if r.reference.starts_with("sha256:") {
        format!("{name}@{}", r.reference)
    } else {
        format!("{name}:{}", r.reference)
    };
    let manifest_path = |reference: &str| format!("/v2/{}/manifests/{reference}", r.repository);
    let blob_path = |digest: &str| format!("/v2/{}/blobs/{digest}", r.repository);
    let resp = client
        .get(&manifest_path(&r.reference), Some(ACCEPT), MAX_MANIFEST)
        .await
        .map_err(PullError::Endpoint)?;
    match resp.status {
        200 => {}
        404 => {
            return Err(PullError::Ctrd(CtrdError::Image(format!(
                "{name}: not found (manifest unknown)"
            ))));
        }
        401 | 403 => {
            return Err(PullError::Ctrd(CtrdError::Image(format!(
                "{name}: pull access denied ({}): the repository does not exist or needs credentials",
                resp.status
            ))));
        }
        s => {
            return Err(PullError::Endpoint(format!(
                "manifest {}: HTTP {s}",
                r.reference
            )));
        }
    }
    let top_digest = image::digest_of(&resp.body);
    if r.reference.starts_with("sha256:") && r.reference != top_digest {
        return Err(PullError::Ctrd(CtrdError::Image(format!(
            "{name}: the registry's manifest has digest {top_digest}"
        ))));
    }
    let media_type = |body: &[u8], header: Option<String>| -> String {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Mt {
            #[serde(default)]
            media_type: String,
        }
        let from_body = serde_json::from_slice::<Mt>(body)
            .map(|m| m.media_type)
            .unwrap_or_default();
        if from_body.is_empty() {
            header
                .map(|h| h.split(';').next().unwrap_or_default().trim().to_string())
                .unwrap_or_default()
        } else {
            from_body
        }
    };
    let top = Desc {
        media_type: media_type(&resp.body, resp.header("content-type")),
        digest: top_digest.clone(),
        size: resp.body.len() as i64,
        annotations: HashMap::new(),
        platform: None,
    };
    if image::current_target(conn, &name).await?.as_deref() == Some(top_digest.as_str()) {
        let i = Imported {
            name,
            digest: top_digest,
            layers: 0,
        };
        return Ok(Pulled { image: i, bytes: 0 });
    }
    let mut blobs: HashMap<String, Vec<u8>> = HashMap::new();
    let mut bytes = resp.body.len() as u64;
    blobs.insert(top_digest.clone(), resp.body.to_vec());
    // Indexes down to this platform's manifest.
    let mut cur = top.clone();
    let mut depth = 0;
    while image::is_index(&cur.media_type) {
        depth += 1;
        if depth > 4 {
            return Err(CtrdError::Image("indexes nested too deep".into()).into());
        }
        let idx = image::parse_index(&blobs[&cur.digest], &cur.digest)?;
        let m = image::pick_platform(&idx)
            .ok_or_else(|| {
                CtrdError::Image(format!("{name}: no manifest for linux/{}", image::arch()))
            })?
            .clone();
        let resp = client
            .get(&manifest_path(&m.digest), Some(ACCEPT), MAX_MANIFEST)
            .await
            .map_err(PullError::Endpoint)?;
        if resp.status != 200 {
            return Err(PullError::Endpoint(format!(
                "manifest {}: HTTP {}",
                m.digest, resp.status
            )));
        }
        bytes += resp.body.len() as u64;
        let mt = if m.media_type.is_empty() {
            media_type(&resp.body, resp.header("content-type"))
        } else {
            m.media_type.clone()
        };
        blobs.insert(m.digest.clone(), resp.body.to_vec());
        cur = Desc {
            media_type: mt,
            ..m
        };
    }
    let (config, layers) = image::manifest_blobs(&blobs[&cur.digest], &cur.digest)?;
    // The blobs are held in memory until the import: an image larger than the bound is
    // refused before anything is fetched, not after the kubelet has grown by its size.
    let declared: u64 = std::iter::once(&config)
        .chain(layers.iter())
        .map(|d| u64::try_from(d.size).unwrap_or(u64::MAX))
        .fold(0, u64::saturating_add);
    if declared > MAX_IMAGE {
        return Err(PullError::Endpoint(format!(
            "the image's manifest declares {declared} bytes of blobs, more than the kubelet pulls ({MAX_IMAGE})"
        )));
    }
    for d in std::iter::once(&config).chain(layers.iter()) {
        if blobs.contains_key(&d.digest) {
            continue;
        }
        let resp = client
            .get(&blob_path(&d.digest), None, MAX_BLOB)
            .await
            .map_err(PullError::Endpoint)?;
        if resp.status != 200 {
            return Err(PullError::Endpoint(format!(
                "blob {}: HTTP {}",
                d.digest, resp.status
            )));
        }
        bytes += resp.body.len() as u64;
        blobs.insert(d.digest.clone(), resp.body.to_vec());
    }
    let imported = image::import_blobs(conn, top, blobs, &name, snapshotter).await?;
    Ok(Pulled {
        image: imported,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_registry_repository_and_tag() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(r.reference, "latest");
        let r = Reference::parse("127.0.0.1:5000/test/busybox:1").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "test/busybox");
        assert_eq!(r.reference, "1");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("reg.example/app@{d}")).unwrap();
        assert_eq!(r.repository, "app");
        assert_eq!(r.reference, d);
    }

    #[test]
    fn registries_yaml_is_read_as_k3s_writes_it() {
        let y = r#"
mirrors:
  "10.0.0.1:5000":
    endpoint:
      - "http://10.0.0.1:5000"
configs:
  "10.0.0.1:5000":
    auth:
      username: u
      password: p
  "other.example":
    auth:
      auth: dTI6cDI=
"#;
        let r = Registries::parse(y).unwrap();
        assert_eq!(r.endpoints("10.0.0.1:5000"), vec!["http://10.0.0.1:5000"]);
        assert_eq!(
            r.endpoints("docker.io"),
            vec!["https://registry-1.docker.io"]
        );
        assert_eq!(r.endpoints("quay.io"), vec!["https://quay.io"]);
        assert_eq!(
            r.credentials("10.0.0.1:5000"),
            Some(("u".into(), "p".into()))
        );
        assert_eq!(
            r.credentials("other.example"),
            Some(("u2".into(), "p2".into()))
        );
        assert!(Registries::parse("mirrors:\n  x:\n    endpoint: [\"ftp://x\"]\n").is_err());
        assert!(Registries::parse("").unwrap().mirrors.is_empty());
    }

    #[test]
    fn urls_and_redirects() {
        let u = Url::parse("http://[fd00::1]:5000").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("fd00::1", 5000, "/")
        );
        assert_eq!(u.authority(), "[fd00::1]:5000");
        let u = Url::parse("https://reg.example/v2/").unwrap();
        assert_eq!(u.port, 443);
        assert_eq!(u.authority(), "reg.example");
        let j = u.join("/v2/x/blobs/y").unwrap();
        assert_eq!(j.host, "reg.example");
        let j = u.join("https://cdn.example:8443/b?sig=1").unwrap();
        assert_eq!(
            (j.host.as_str(), j.port, j.path.as_str()),
            ("cdn.example", 8443, "/b?sig=1")
        );
        assert!(Url::parse("ftp://x").is_err());
    }

    #[test]
    fn bearer_challenges_are_parsed() {
        let p = challenge_params(
            r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/busybox:pull");
        assert_eq!(
            query_escape("repository:a/b:pull"),
            "repository%3Aa%2Fb%3Apull"
        );
    }
}
