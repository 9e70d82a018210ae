//! Service-account tokens: bound, signed JWTs (ES256), as upstream's TokenRequest API issues
//! them, and the bearer-token authenticator that accepts them.
//!
//! A token names its ServiceAccount (and that account's uid) and, when bound, a Pod (and its
//! uid). It is valid while it has not expired, its audience includes the API server's, the
//! account still exists with that uid and, for a bound token, the pod still exists with that
//! uid: deleting the pod (or the account) revokes every token bound to it.
//!
//! The signing key is `<data-dir>/pki/sa.key` (PKCS#8, P-256), made on first start next to
//! the CA.

use std::path::Path;

use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};

use crate::auth::User;
use crate::handlers::Api;
use crate::status::{ApiError, Cause};

/// The issuer (`iss`), and the audience the API server accepts (upstream's default).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// TokenRequest's default lifetime, and the shortest one it grants (upstream's).
const DEFAULT_SECONDS: i64 = 3600;
const MIN_SECONDS: i64 = 600;

/// Errors of loading the signing key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    #[error("service-account key: {0}")]
    Key(String),
}

/// The key that signs and checks tokens.
pub struct Signer {
    key: EcdsaKeyPair,
    kid: String,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Signer {
    /// Loads `<pki_dir>/sa.key`, making it when missing.
    pub fn ensure(pki_dir: &Path) -> Result<Signer, KeyError> {
        let path = pki_dir.join("sa.key");
        let pem = match std::fs::read_to_string(&path) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                    .map_err(|e| KeyError::Key(e.to_string()))?;
                let pem = key.serialize_pem();
                crate::pki::write_private(&path, &pem)?;
                pem
            }
            Err(e) => {
                return Err(KeyError::Key(format!("read {}: {e}", path.display())));
            }
        };
        Signer::from_pem(&pem)
    }

    pub fn from_pem(pem: &str) -> Result<Signer, KeyError> {
        use rustls::pki_types::{PrivatePkcs8KeyDer, pem::PemObject};
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| KeyError::Key(e.to_string()))?;
        let key = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            der.secret_pkcs8_der(),
            &SystemRandom::new(),
        )
        .map_err(|e| KeyError::Key(e.to_string()))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, key.public_key().as_ref());
        let kid = b64(&digest.as_ref()[..16]);
        Ok(Signer { key, kid })
    }

    /// A signed JWT with these claims.
    pub fn sign(&self, claims: &Value) -> Result<String, ApiError> {
        let header = json!({"alg": "ES256", "kid": self.kid, "typ": "JWT"});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self
            .key
            .sign(&SystemRandom::new(), input.as_bytes())
            .map_err(|_| ApiError::internal("signing the token failed"))?;
        Ok(format!("{input}.{}", b64(sig.as_ref())))
    }

    /// The claims of a token this key signed, if the signature holds and it is in its
    /// lifetime; `None` for anything else.
    pub fn verify(&self, token: &str, now: i64) -> Option<Value> {
        let (input, sig) = token.rsplit_once('.')?;
        let (header, claims) = input.split_once('.')?;
        let decode = |s: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(s)
                .ok()
        };
        let header: Value = serde_json::from_slice(&decode(header)?).ok()?;
        if header["alg"] != "ES256" {
            return None;
        }
        signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            self.key.public_key().as_ref(),
        )
        .verify(input.as_bytes(), &decode(sig)?)
        .ok()?;
        let claims: Value = serde_json::from_slice(&decode(claims)?).ok()?;
        let exp = claims["exp"].as_i64()?;
        let nbf = claims["nbf"].as_i64().unwrap_or(0);
        // A minute of clock skew, as upstream allows.
        (now < exp && now + 60 >= nbf && claims["iss"] == ISSUER).then_some(claims)
    }
}

fn unix_now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// The user a bearer token stands for, or `None` (then the request gets 401).
pub async fn authenticate(api: &Api, token: &str) -> Option<User> {
    let signer = api.tokens.get()?;
    let claims = signer.verify(token, unix_now())?;
    let audiences: Vec<&str> = match &claims["aud"] {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !audiences.contains(&ISSUER) {
        return None;
    }
    let k8s = &claims["kubernetes.io"];
    let ns = k8s["namespace"].as_str()?;
    let sa = k8s["serviceaccount"]["name"].as_str()?;
    let uid_of = |info: Option<trellis_api::ResourceInfo>, name: String| async move {
        let stored = api.storage.get(&info?, Some(ns), &name).await.ok()??;
        if crate::meta::is_deleting(&stored.obj) {
            return None;
        }
        crate::meta::at(&stored.obj, &["metadata", "uid"])
            .and_then(Value::as_str)
            .map(String::from)
    };
    let sa_uid = uid_of(api.registry.find("", "v1", "serviceaccounts"), sa.into()).await?;
    if k8s["serviceaccount"]["uid"].as_str() != Some(sa_uid.as_str()) {
        return None;
    }
    if let Some(pod) = k8s["pod"]["name"].as_str() {
        let pod_uid = uid_of(api.registry.find("", "v1", "pods"), pod.into()).await?;
        if k8s["pod"]["uid"].as_str() != Some(pod_uid.as_str()) {
            return None;
        }
    }
    Some(User::authenticated(
        format!("system:serviceaccount:{ns}:{sa}"),
        vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
        ],
    ))
}

fn invalid(name: &str, field: &str, value: &Value, why: &str) -> ApiError {
    ApiError::invalid(
        "authentication.k8s.io",
        "TokenRequest",
        name,
        vec![Cause::invalid(field, value, why)],
    )
}

/// `POST serviceaccounts/<name>/token`: a TokenRequest answered with a signed token.
pub async fn request(
    api: &Api,
    namespace: &str,
    name: &str,
    content_type: &str,
    body: &[u8],
) -> Result<Value, ApiError> {
    let signer = api
        .tokens
        .get()
        .ok_or_else(|| ApiError::unavailable("the service-account key is not loaded yet"))?;
    let mut req = crate::handlers::parse_body(content_type, body)?;
    let sa_info = api
        .registry
        .find("", "v1", "serviceaccounts")
        .ok_or_else(|| ApiError::internal("serviceaccounts are not served"))?;
    let sa = api.storage.require(&sa_info, Some(namespace), name).await?;
    let sa_uid = crate::meta::at(&sa.obj, &["metadata", "uid"])
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let spec = req["spec"].clone();
    let seconds = spec["expirationSeconds"]
        .as_i64()
        .unwrap_or(DEFAULT_SECONDS);
    if seconds < MIN_SECONDS {
        return Err(invalid(
            name,
            "spec.expirationSeconds",
            &spec["expirationSeconds"],
            "may not specify a duration less than 10 minutes",
        ));
    }
    let audiences: Vec<String> = match spec["audiences"].as_array() {
        Some(a) if !a.is_empty() => a
            .iter()
            .filter_map(|s| s.as_str().map(String::from))
            .collect(),
        _ => vec![ISSUER.to_string()],
    };
    let now = unix_now();
    let mut k8s = json!({"namespace": namespace, "serviceaccount": {"name": name, "uid": sa_uid}});
    let bound = &spec["boundObjectRef"];
    if bound.is_object() {
        if bound["kind"] != "Pod" {
            return Err(invalid(
                name,
                "spec.boundObjectRef.kind",
                &bound["kind"],
                "supported values: \"Pod\"",
            ));
        }
        let pod_name = bound["name"].as_str().unwrap_or("");
        let pods = api
            .registry
            .find("", "v1", "pods")
            .ok_or_else(|| ApiError::internal("pods are not served"))?;
        let pod = api
            .storage
            .require(&pods, Some(namespace), pod_name)
            .await?;
        let uid = crate::meta::at(&pod.obj, &["metadata", "uid"])
            .and_then(Value::as_str)
            .unwrap_or("");
        if let Some(want) = bound["uid"].as_str().filter(|u| !u.is_empty())
            && want != uid
        {
            return Err(ApiError::conflict_state(
                "",
                "pods",
                pod_name,
                format!(
                    "the UID in the bound object reference ({want}) does not match the UID in record. The object might have been deleted and then recreated"
                ),
            ));
        }
        k8s["pod"] = json!({"name": pod_name, "uid": uid});
        req["spec"]["boundObjectRef"]["uid"] = json!(uid);
    }
    let claims = json!({
        "aud": audiences,
        "exp": now + seconds,
        "iat": now,
        "nbf": now,
        "iss": ISSUER,
        "sub": format!("system:serviceaccount:{namespace}:{name}"),
        "jti": uuid::Uuid::new_v4().to_string(),
        "kubernetes.io": k8s,
    });
    let token = signer.sign(&claims)?;
    let expires = jiff::Timestamp::from_second(now + seconds)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    req["apiVersion"] = json!("authentication.k8s.io/v1");
    req["kind"] = json!("TokenRequest");
    req["metadata"]["name"] = json!(name);
    req["metadata"]["namespace"] = json!(namespace);
    req["spec"]["audiences"] = json!(audiences);
    req["spec"]["expirationSeconds"] = json!(seconds);
    req["status"] = json!({"token": token, "expirationTimestamp": expires});
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        Signer::from_pem(&key.serialize_pem()).unwrap()
    }

    #[test]
    fn a_signed_token_verifies_only_unaltered_in_its_lifetime_and_with_its_key() {
        let s = signer();
        let claims = json!({"iss": ISSUER, "exp": 2000, "nbf": 1000, "sub": "x"});
        let t = s.sign(&claims).unwrap();
        assert_eq!(s.verify(&t, 1500), Some(claims.clone()));
        assert_eq!(s.verify(&t, 2000), None, "expired");
        assert_eq!(s.verify(&t, 900), None, "not yet valid");
        // Another key's token, or a changed payload, does not verify.
        assert_eq!(signer().verify(&t, 1500), None);
        let parts: Vec<&str> = t.split('.').collect();
        let forged = json!({"iss": ISSUER, "exp": 2000, "nbf": 1000, "sub": "admin"});
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64(forged.to_string().as_bytes()),
            parts[2]
        );
        assert_eq!(s.verify(&forged, 1500), None);
        assert_eq!(s.verify("not.a.jwt", 1500), None);
        // Another issuer's.
        let other = s.sign(&json!({"iss": "elsewhere", "exp": 2000})).unwrap();
        assert_eq!(s.verify(&other, 1500), None);
    }
}
