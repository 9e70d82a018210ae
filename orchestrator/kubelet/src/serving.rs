//! The serving certificate of the kubelet's HTTPS port, renewed while the kubelet runs.
//!
//! Every TLS handshake asks [`ServingCert`] for the certificate (rustls' `ResolvesServerCert`),
//! so a new one is used from the next handshake on; connections already open (a followed log,
//! an exec) keep the session they made and are never dropped. With rotation on
//! ([`Rotation::enabled`], `--rotate-server-certificates`), a task renews the certificate:
//!
//! - when the files (`--tls-cert-file`, `--tls-private-key-file`) change on disk, checked every
//!   [`Rotation::check_every`] — whoever re-issues them (`trellis certs serving`, a
//!   certificate tool) needs no kubelet restart;
//! - when a fraction of its lifetime has passed, upstream's jittered deadline (`notBefore` +
//!   lifetime × a random fraction in [`Rotation::renew_fraction`] … (the fraction + 2/3 of
//!   the rest), 70–90 % by default): it runs [`Rotation::renew_command`] (which writes new
//!   files) and loads them; without files it makes a new self-signed certificate.
//!
//! A pair that does not load (a half-written file, a key of another certificate) is logged
//! and the certificate in use kept; the next check tries again.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::Error;

/// How the serving certificate is renewed.
#[derive(Debug, Clone)]
pub struct Rotation {
    /// Renew at all (false: the certificate loaded at start is served until it expires).
    pub enabled: bool,
    /// The earliest fraction of the lifetime after which it is renewed (0 < f < 1).
    pub renew_fraction: f64,
    /// Run (`sh -c`) to renew files-based certificates: it writes the new pair to the files.
    pub renew_command: Option<String>,
    /// How often the files and the deadline are checked.
    pub check_every: Duration,
    /// The lifetime of a self-signed certificate (made without files).
    pub self_signed_lifetime: Duration,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            enabled: true,
            renew_fraction: 0.7,
            renew_command: None,
            check_every: Duration::from_secs(1),
            self_signed_lifetime: Duration::from_secs(365 * 24 * 3600),
        }
    }
}

/// A certificate as served, with what rotation reads of it.
#[derive(Clone)]
struct Loaded {
    key: Arc<CertifiedKey>,
    not_before: i64,
    not_after: i64,
    serial: String,
    /// The files' identity when read (None: self-signed).
    stamp: Option<Stamp>,
}

/// What tells a changed file: inode, size and modification time, of both files.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp([(u64, u64, i64, i64); 2]);

fn stamp(files: &(PathBuf, PathBuf)) -> Option<Stamp> {
    let one = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
    };
    Some(Stamp([one(&files.0)?, one(&files.1)?]))
}

/// The certificate the kubelet's port serves, swapped in place on renewal.
pub struct ServingCert {
    current: RwLock<Loaded>,
    node: String,
    names: Vec<String>,
    files: Option<(PathBuf, PathBuf)>,
    rotation: Rotation,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = self.current();
        f.debug_struct("ServingCert")
            .field("serial", &c.serial)
            .field("not_after", &c.not_after)
            .finish()
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current().key)
    }
}

/// A pair of PEM texts made into what rustls serves, with its serial and validity.
fn load_pem(cert_pem: &str, key_pem: &str) -> Result<Loaded, Error> {
    let e = |x: &dyn std::fmt::Display| Error::Other(format!("kubelet TLS: {x}"));
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|x| e(&x))?;
    let first = chain
        .first()
        .ok_or_else(|| Error::Other("kubelet TLS: no certificate in the file".into()))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(first.as_ref()).map_err(|x| e(&x))?;
    let validity = parsed.validity();
    let (not_before, not_after) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    let serial = parsed.raw_serial_as_string();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|x| e(&x))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|x| e(&x))?;
    Ok(Loaded {
        key: Arc::new(certified),
        not_before,
        not_after,
        serial,
        stamp: None,
    })
}

/// A self-signed serving certificate for `names`, valid for `lifetime` from now (upstream's
/// kubelet makes one without `--tls-cert-file`; CN `<node>@<unix time>`, as it names it).
fn self_signed(
    node: &str,
    names: &[String],
    lifetime: Duration,
) -> Result<(String, String), Error> {
    let e = |x: &dyn std::fmt::Display| Error::Other(format!("self-signed certificate: {x}"));
    let key = rcgen::KeyPair::generate().map_err(|x| e(&x))?;
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(|x| e(&x))?;
    let now = jiff::Timestamp::now();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("{node}@{}", now.as_second()),
    );
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let secs = u64::try_from(now.as_second()).unwrap_or(0);
    params.not_before = epoch + Duration::from_secs(secs);
    params.not_after = epoch + Duration::from_secs(secs) + lifetime;
    let cert = params.self_signed(&key).map_err(|x| e(&x))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A uniform random number in [0, 1).
fn random_unit() -> f64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 4];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        return 0.5;
    }
    f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0)
}

/// When a certificate valid from `not_before` to `not_after` (unix seconds) is renewed: after
/// `fraction` + `jitter` × ⅔ × (1 − `fraction`) of its lifetime (upstream's 70–90 % for 0.7).
pub fn deadline(not_before: i64, not_after: i64, fraction: f64, jitter: f64) -> i64 {
    let f = fraction.clamp(0.05, 0.99);
    let at = f + jitter.clamp(0.0, 1.0) * (1.0 - f) * 2.0 / 3.0;
    let life = (not_after - not_before).max(0) as f64;
    not_before + (life * at) as i64
}

impl ServingCert {
    /// Loads the files, or makes a self-signed certificate for the node's name and `ip`.
    pub fn new(
        node: &str,
        ip: Option<std::net::IpAddr>,
        files: Option<(PathBuf, PathBuf)>,
        rotation: Rotation,
    ) -> Result<ServingCert, Error> {
        let mut names = vec![node.to_string()];
        if let Some(ip) = ip {
            names.push(ip.to_string());
        }
        let loaded = match &files {
            Some(f) => Self::read(f)?,
            None => {
                let (c, k) = self_signed(node, &names, rotation.self_signed_lifetime)?;
                load_pem(&c, &k)?
            }
        };
        Ok(ServingCert {
            current: RwLock::new(loaded),
            node: node.to_string(),
            names,
            files,
            rotation,
        })
    }

    fn read(files: &(PathBuf, PathBuf)) -> Result<Loaded, Error> {
        let before = stamp(files);
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|x| Error::io(format!("read {}", p.display()), x))
        };
        let mut loaded = load_pem(&read(&files.0)?, &read(&files.1)?)?;
        // A file replaced while it was read is read again at the next check.
        loaded.stamp = before.filter(|b| stamp(files).as_ref() == Some(b));
        Ok(loaded)
    }

    fn current(&self) -> Loaded {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn swap(&self, new: Loaded) {
        let old = self.current();
        tracing::info!(
            old_serial = %old.serial, serial = %new.serial,
            not_after = %jiff::Timestamp::from_second(new.not_after).map(|t| t.to_string()).unwrap_or_default(),
            "kubelet serving certificate rotated"
        );
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = new;
    }

    /// The serial (hex, `:`-separated) of the certificate now served.
    pub fn serial(&self) -> String {
        self.current().serial
    }

    /// Runs rotation until `stop` fires (returns at once with rotation off).
    pub async fn rotate(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        if !self.rotation.enabled {
            tracing::info!("serving certificate rotation is off");
            return;
        }
        let mut jitter = random_unit();
        let mut tick = tokio::time::interval(self.rotation.check_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A failed renewal is tried again after this long, doubling to a minute.
        let mut retry_at: Option<(tokio::time::Instant, Duration)> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let cur = self.current();
            // Files changed on disk: whoever renews them, the kubelet serves the new pair.
            if let Some(files) = &self.files
                && stamp(files) != cur.stamp
            {
                match Self::read(files) {
                    Ok(new) if new.serial == cur.serial => {
                        *self.current.write().unwrap_or_else(|p| p.into_inner()) = new;
                    }
                    Ok(new) => {
                        self.swap(new);
                        jitter = random_unit();
                        retry_at = None;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reloading the serving certificate; keeping the one in use");
                    }
                }
            }
            let now = jiff::Timestamp::now().as_second();
            let due = deadline(
                cur.not_before,
                cur.not_after,
                self.rotation.renew_fraction,
                jitter,
            );
            if now < due || retry_at.is_some_and(|(at, _)| tokio::time::Instant::now() < at) {
                continue;
            }
            match self.renew().await {
                Ok(new) => {
                    self.swap(new);
                    jitter = random_unit();
                    retry_at = None;
                }
                Err(e) => {
                    let wait = retry_at.map_or(Duration::from_secs(1), |(_, w)| {
                        (w * 2).min(Duration::from_secs(60))
                    });
                    tracing::warn!(error = %e, retry_in = ?wait, serial = %cur.serial, "renewing the serving certificate");
                    retry_at = Some((tokio::time::Instant::now() + wait, wait));
                }
            }
        }
    }

    /// A new certificate: the renew command's files, or a new self-signed one.
    async fn renew(&self) -> Result<Loaded, Error> {
        let Some(files) = &self.files else {
            let (c, k) = self_signed(&self.node, &self.names, self.rotation.self_signed_lifetime)?;
            return load_pem(&c, &k);
        };
        let Some(cmd) = &self.rotation.renew_command else {
            return Err(Error::Other(format!(
                "the serving certificate {} nears its expiry and no --serving-cert-renew-command is set: re-issue the files (e.g. trellis certs serving)",
                files.0.display()
            )));
        };
        let run = tokio::process::Command::new("/bin/sh")
            .args(["-c", cmd])
            .env("KUBELET_NODE_NAME", &self.node)
            .env("KUBELET_CERT_FILE", &files.0)
            .env("KUBELET_KEY_FILE", &files.1)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .map_err(|_| Error::Other(format!("{cmd:?} ran for 60 s; killed")))?
            .map_err(|e| Error::io(format!("run {cmd:?}"), e))?;
        if !out.status.success() {
            return Err(Error::Other(format!(
                "{cmd:?}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let new = Self::read(files)?;
        if new.serial == self.current().serial {
            return Err(Error::Other(format!(
                "{cmd:?} left the same certificate in {}",
                files.0.display()
            )));
        }
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_falls_between_the_fraction_and_two_thirds_of_the_rest() {
        // Upstream's 70–90 % for a year-long certificate.
        let year = 365 * 24 * 3600;
        assert_eq!(deadline(0, year, 0.7, 0.0), (year as f64 * 0.7) as i64);
        let late = deadline(0, year, 0.7, 1.0);
        assert!((late - (year as f64 * 0.9) as i64).abs() <= 1, "{late}");
        assert_eq!(deadline(100, 110, 0.5, 0.0), 105);
        // An expired or inverted validity is due at once.
        assert_eq!(deadline(100, 50, 0.7, 0.5), 100);
    }

    #[tokio::test]
    async fn changed_files_are_served_from_the_next_check_and_a_bad_pair_is_not() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let files = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let write = |(c, k): &(String, String)| {
            std::fs::write(&files.0, c).unwrap();
            std::fs::write(&files.1, k).unwrap();
        };
        let names = vec!["n1".to_string()];
        write(&self_signed("n1", &names, Duration::from_secs(3600)).unwrap());
        let rotation = Rotation {
            check_every: Duration::from_millis(20),
            ..Default::default()
        };
        let cert = Arc::new(ServingCert::new("n1", None, Some(files.clone()), rotation).unwrap());
        let first = cert.serial();
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(cert.clone().rotate(stop));
        // A key that does not match: kept.
        let other = self_signed("n1", &names, Duration::from_secs(3600)).unwrap();
        std::fs::write(&files.1, &other.1).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(cert.serial(), first);
        write(&other);
        let mut swapped = false;
        for _ in 0..200 {
            if cert.serial() != first {
                swapped = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(swapped, "the new pair is served");
        let _ = stop_tx.send(true);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_self_signed_certificate_is_renewed_at_its_deadline_only_with_rotation_on() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        for enabled in [true, false] {
            let rotation = Rotation {
                enabled,
                renew_fraction: 0.5,
                check_every: Duration::from_millis(50),
                self_signed_lifetime: Duration::from_secs(2),
                ..Default::default()
            };
            let cert = Arc::new(ServingCert::new("n1", None, None, rotation).unwrap());
            let first = cert.serial();
            let (stop_tx, stop) = tokio::sync::watch::channel(false);
            let task = tokio::spawn(cert.clone().rotate(stop));
            let mut renewed = false;
            for _ in 0..40 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if cert.serial() != first {
                    renewed = true;
                    break;
                }
            }
            assert_eq!(renewed, enabled, "rotation {enabled}");
            let _ = stop_tx.send(true);
            task.await.unwrap();
        }
    }
}
