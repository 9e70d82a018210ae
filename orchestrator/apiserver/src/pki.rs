//! The cluster's certificates. On first start with an empty data directory: a cluster CA, a
//! serving certificate for the API server (SANs: the listen address, localhost, 127.0.0.1 and
//! every `--san`), and an admin client certificate (CN=admin, O=system:masters), written as
//! `<data-dir>/admin.kubeconfig`. Later starts reuse them; the serving certificate is made anew
//! when the SANs asked for change.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// Errors of certificate handling.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
}

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The cluster CA and the API server's own certificates.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: CertPair,
    pub serving: CertPair,
    pub admin: CertPair,
    /// The API server's client certificate towards kubelets (logs, exec, stats), as kubeadm's
    /// `apiserver-kubelet-client`: CN=kube-apiserver-kubelet-client, bound by RBAC to
    /// `system:kubelet-api-admin`.
    pub kubelet_client: CertPair,
}

/// The user name of the API server when it calls a kubelet.
pub const KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";

fn read(path: &Path) -> Result<Option<String>, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PkiError::Io {
            what: "read",
            path: path.into(),
            source: e,
        }),
    }
}

fn write(path: &Path, text: &str, private: bool) -> Result<(), PkiError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mode = if private { 0o600 } else { 0o644 };
    let tmp = path.with_extension("tmp");
    let io = |e| PkiError::Io {
        what: "write",
        path: path.into(),
        source: e,
    };
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

/// Validity from yesterday for `years` years.
fn validity(params: &mut CertificateParams, years: i16) {
    let today = jiff::Zoned::now().date();
    let from = today.yesterday().unwrap_or(today);
    params.not_before =
        rcgen::date_time_ymd(i32::from(from.year()), from.month() as u8, from.day() as u8);
    params.not_after = rcgen::date_time_ymd(
        i32::from(today.year() + years),
        today.month() as u8,
        today.day().min(28) as u8,
    );
}

fn new_ca() -> Result<CertPair, PkiError> {
    new_ca_named("trellis-ca")
}

/// A new self-signed CA (10 years) with common name `common_name`: the cluster CA, or a CA of
/// its own for another trust domain (`trellis up`'s etcd CA, as kubeadm's `etcd/ca.crt`).
pub fn new_ca_named(common_name: &str) -> Result<CertPair, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, 10);
    let cert = params.self_signed(&key)?;
    Ok(CertPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Issues a certificate signed by `ca`: a client certificate (CN = user, O = groups) when
/// `sans` is empty, a serving certificate for `sans` otherwise.
pub fn issue(
    ca: &CertPair,
    common_name: &str,
    organizations: &[&str],
    sans: &[String],
) -> Result<CertPair, PkiError> {
    issue_for(ca, common_name, organizations, sans, None)
}

/// [`issue`], valid for `lifetime` from now (to the second) when given, else from yesterday
/// for a year.
fn issue_for(
    ca: &CertPair,
    common_name: &str,
    organizations: &[&str],
    sans: &[String],
    lifetime: Option<std::time::Duration>,
) -> Result<CertPair, PkiError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    for o in organizations {
        params.distinguished_name.push(DnType::OrganizationName, *o);
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    if sans.is_empty() {
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    } else {
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        for san in sans {
            params.subject_alt_names.push(match san.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(san.clone().try_into()?),
            });
        }
    }
    match lifetime {
        Some(life) => {
            let now = u64::try_from(jiff::Timestamp::now().as_second()).unwrap_or(0);
            let from = rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs(now);
            params.not_before = from;
            params.not_after = from + life;
        }
        None => validity(&mut params, 1),
    }
    let cert = params.signed_by(&key, &issuer)?;
    Ok(CertPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A kubelet's serving certificate, as upstream's `kubernetes.io/kubelet-serving` signer
/// issues it: CN `system:node:<node>`, O `system:nodes`, the node's name and `dns` names and
/// its addresses as SANs — what an API server started with `--kubelet-certificate-authority`
/// checks when it calls the kubelet at the Node's InternalIP.
pub fn kubelet_serving(
    ca: &CertPair,
    node: &str,
    ips: &[IpAddr],
    dns: &[String],
) -> Result<CertPair, PkiError> {
    kubelet_serving_for(ca, node, ips, dns, None)
}

/// [`kubelet_serving`] valid for `lifetime` from now when given (short-lived certificates
/// for rotation tests), else for a year.
pub fn kubelet_serving_for(
    ca: &CertPair,
    node: &str,
    ips: &[IpAddr],
    dns: &[String],
    lifetime: Option<std::time::Duration>,
) -> Result<CertPair, PkiError> {
    let mut sans: Vec<String> = vec![node.to_string()];
    for name in dns {
        if !sans.contains(name) {
            sans.push(name.clone());
        }
    }
    for ip in ips {
        let ip = ip.to_string();
        if !sans.contains(&ip) {
            sans.push(ip);
        }
    }
    issue_for(
        ca,
        &format!("system:node:{node}"),
        &["system:nodes"],
        &sans,
        lifetime,
    )
}

impl Pki {
    /// Loads the certificates under `<data_dir>/pki`, making what is missing.
    pub fn ensure(data_dir: &Path, sans: &[String]) -> Result<Pki, PkiError> {
        let dir = data_dir.join("pki");
        std::fs::create_dir_all(&dir).map_err(|e| PkiError::Io {
            what: "create",
            path: dir.clone(),
            source: e,
        })?;
        let p = |name: &str| dir.join(name);
        let ca = match (read(&p("ca.crt"))?, read(&p("ca.key"))?) {
            (Some(cert_pem), Some(key_pem)) => CertPair { cert_pem, key_pem },
            _ => {
                let ca = new_ca()?;
                write(&p("ca.key"), &ca.key_pem, true)?;
                write(&p("ca.crt"), &ca.cert_pem, false)?;
                ca
            }
        };
        let mut all_sans: Vec<String> = vec![
            "localhost".into(),
            "127.0.0.1".into(),
            "kubernetes".into(),
            "kubernetes.default".into(),
            "kubernetes.default.svc".into(),
        ];
        for s in sans {
            if !all_sans.contains(s) {
                all_sans.push(s.clone());
            }
        }
        let wanted = all_sans.join(",");
        let serving = match (
            read(&p("apiserver.crt"))?,
            read(&p("apiserver.key"))?,
            read(&p("apiserver.sans"))?,
        ) {
            (Some(cert_pem), Some(key_pem), Some(had)) if had == wanted => {
                CertPair { cert_pem, key_pem }
            }
            _ => {
                let s = issue(&ca, "trellis-apiserver", &[], &all_sans)?;
                write(&p("apiserver.key"), &s.key_pem, true)?;
                write(&p("apiserver.crt"), &s.cert_pem, false)?;
                write(&p("apiserver.sans"), &wanted, false)?;
                s
            }
        };
        let admin = match (read(&p("admin.crt"))?, read(&p("admin.key"))?) {
            (Some(cert_pem), Some(key_pem)) => CertPair { cert_pem, key_pem },
            _ => {
                let a = issue(&ca, "admin", &["system:masters"], &[])?;
                write(&p("admin.key"), &a.key_pem, true)?;
                write(&p("admin.crt"), &a.cert_pem, false)?;
                a
            }
        };
        let kubelet_client = match (
            read(&p("apiserver-kubelet-client.crt"))?,
            read(&p("apiserver-kubelet-client.key"))?,
        ) {
            (Some(cert_pem), Some(key_pem)) => CertPair { cert_pem, key_pem },
            _ => {
                let c = issue(&ca, KUBELET_CLIENT_USER, &[], &[])?;
                write(&p("apiserver-kubelet-client.key"), &c.key_pem, true)?;
                write(&p("apiserver-kubelet-client.crt"), &c.cert_pem, false)?;
                c
            }
        };
        Ok(Pki {
            dir,
            ca,
            serving,
            admin,
            kubelet_client,
        })
    }
}

/// A kubeconfig for `user` with its certificate embedded.
pub fn kubeconfig(server: &str, ca: &CertPair, user: &str, cert: &CertPair) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: trellis\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: {user}@trellis\n  context:\n    cluster: trellis\n    user: {user}\ncurrent-context: {user}@trellis\n",
        b64(&ca.cert_pem),
        b64(&cert.cert_pem),
        b64(&cert.key_pem)
    )
}

/// Writes a private key file (mode 0600).
pub fn write_private(path: &Path, text: &str) -> Result<(), PkiError> {
    write(path, text, true)
}

/// Writes a certificate file (mode 0644).
pub fn write_public(path: &Path, text: &str) -> Result<(), PkiError> {
    write(path, text, false)
}

/// Writes a kubeconfig file (mode 0600).
pub fn write_kubeconfig(path: &Path, text: &str) -> Result<(), PkiError> {
    write(path, text, true)
}

/// The user (CN) and groups (O) a client certificate names.
pub fn identity(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let cn = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(String::from))
        .collect();
    Some((cn, groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_made_once_and_name_their_holder() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::ensure(dir.path(), &["10.0.0.5".into(), "api.example".into()]).unwrap();
        let again = Pki::ensure(dir.path(), &["10.0.0.5".into(), "api.example".into()]).unwrap();
        assert_eq!(pki.ca.cert_pem, again.ca.cert_pem);
        assert_eq!(pki.serving.cert_pem, again.serving.cert_pem);
        let node = issue(&pki.ca, "system:node:n1", &["system:nodes"], &[]).unwrap();
        let der = rustls_pemfile_first(&node.cert_pem);
        assert_eq!(
            identity(&der),
            Some(("system:node:n1".into(), vec!["system:nodes".into()]))
        );
        let moved = Pki::ensure(dir.path(), &["10.0.0.6".into()]).unwrap();
        assert_ne!(
            moved.serving.cert_pem, pki.serving.cert_pem,
            "new SANs, new serving certificate"
        );
        assert_eq!(moved.ca.cert_pem, pki.ca.cert_pem, "the CA stays");
    }

    #[test]
    fn a_kubelet_serving_certificate_names_the_node_and_its_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::ensure(dir.path(), &[]).unwrap();
        let ip: IpAddr = "198.18.0.3".parse().unwrap();
        let c = kubelet_serving(&pki.ca, "n1", &[ip], &["n1.example".into()]).unwrap();
        let der = rustls_pemfile_first(&c.cert_pem);
        assert_eq!(
            identity(&der),
            Some(("system:node:n1".into(), vec!["system:nodes".into()]))
        );
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let sans = cert.subject_alternative_name().unwrap().unwrap();
        let names: Vec<String> = sans
            .value
            .general_names
            .iter()
            .map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => d.to_string(),
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    let b: [u8; 4] = (*b).try_into().unwrap();
                    std::net::Ipv4Addr::from(b).to_string()
                }
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(names, ["n1", "n1.example", "198.18.0.3"]);
        let server_auth = cert
            .extended_key_usage()
            .unwrap()
            .unwrap()
            .value
            .server_auth;
        assert!(server_auth, "a serving certificate");
    }

    fn rustls_pemfile_first(pem: &str) -> Vec<u8> {
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    }
}
