//! TLS to etcd's client port, as kube-apiserver speaks it (`--etcd-cafile`, `--etcd-certfile`,
//! `--etcd-keyfile`): etcd's serving certificate checked against a CA, and a client
//! certificate for etcd's `--client-cert-auth`. Plain data, so that configurations carry it
//! whether or not the etcd backend is built.

use std::path::Path;

use crate::error::{Error, Result};

/// What the etcd backend needs for TLS, as PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA bundle etcd's serving certificates are checked against (only these: the
    /// machine's roots are never trusted for etcd).
    pub ca_pem: Vec<u8>,
    /// This client's certificate chain and private key, presented to etcd; None presents
    /// none (etcd with `--client-cert-auth` then refuses every request).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("EtcdTls")
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("client_certificate", &self.identity.is_some())
            .finish()
    }
}

impl EtcdTls {
    /// Reads the CA bundle `ca` and, when given, the client certificate `cert` and its key
    /// `key` (PEM files).
    pub fn from_files(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<EtcdTls> {
        let read = |what: &str, p: &Path| {
            std::fs::read(p).map_err(|source| Error::Io {
                what: format!("read the {what} {}", p.display()),
                source,
            })
        };
        let ca_pem = read("etcd CA", ca)?;
        if !contains_pem(&ca_pem, "CERTIFICATE") {
            return Err(Error::Tls(format!(
                "{} holds no PEM certificate",
                ca.display()
            )));
        }
        let identity = match identity {
            Some((cert, key)) => {
                let c = read("etcd client certificate", cert)?;
                let k = read("etcd client key", key)?;
                if !contains_pem(&c, "CERTIFICATE") {
                    return Err(Error::Tls(format!(
                        "{} holds no PEM certificate",
                        cert.display()
                    )));
                }
                if !contains_pem(&k, "PRIVATE KEY") {
                    return Err(Error::Tls(format!(
                        "{} holds no PEM private key",
                        key.display()
                    )));
                }
                Some((c, k))
            }
            None => None,
        };
        Ok(EtcdTls { ca_pem, identity })
    }
}

/// Whether `pem` has a `-----BEGIN …<label>-----` block (`PRIVATE KEY` also matches the
/// `EC`/`RSA` forms).
fn contains_pem(pem: &[u8], label: &str) -> bool {
    String::from_utf8_lossy(pem)
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.trim_end().ends_with(&format!("{label}-----")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_read_and_checked_and_the_key_is_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        let cert = dir.path().join("c.crt");
        let key = dir.path().join("c.key");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(&cert, std::fs::read(&ca).unwrap()).unwrap();
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let tls = EtcdTls::from_files(&ca, Some((&cert, &key))).unwrap();
        assert!(tls.identity.is_some());
        assert!(!format!("{tls:?}").contains("secret"));
        assert!(EtcdTls::from_files(&ca, None).unwrap().identity.is_none());
        // A key where the certificate belongs, a missing file: named.
        let e = EtcdTls::from_files(&key, None).unwrap_err().to_string();
        assert!(e.contains("c.key holds no PEM certificate"), "{e}");
        let e = EtcdTls::from_files(&ca, Some((&cert, &ca)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no PEM private key"), "{e}");
        let e = EtcdTls::from_files(&dir.path().join("nope"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("etcd CA") && e.contains("nope"), "{e}");
    }
}
