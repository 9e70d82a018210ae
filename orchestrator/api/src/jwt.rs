//! Service-account tokens as JSON Web Tokens signed with ES256 (ECDSA P-256, SHA-256): the
//! key and its signature, shared by the API server (which issues TokenRequests and checks every
//! bearer token) and the controller-manager's token controller (which fills legacy token
//! Secrets). Both load the same PKCS#8 key (`<data-dir>/pki/sa.key`); what a valid token
//! must further say (issuer, lifetime, audience, the objects it is bound to) is the API
//! server's business.

use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};

/// The issuer of legacy (Secret-based, non-expiring) tokens, as upstream's token controller
/// writes it.
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";

/// Errors of loading the key or signing.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("service-account key: {0}")]
    Key(String),
    #[error("signing the token failed")]
    Sign,
}

/// The key that signs and checks tokens, and its key id (`kid`).
pub struct Signer {
    key: EcdsaKeyPair,
    kid: String,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Signer {
    /// A PKCS#8 P-256 private key in PEM (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pem(pem: &str) -> Result<Signer, JwtError> {
        use rustls::pki_types::{PrivatePkcs8KeyDer, pem::PemObject};
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| JwtError::Key(format!("not a PKCS#8 PEM key: {e}")))?;
        let key = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            der.secret_pkcs8_der(),
            &SystemRandom::new(),
        )
        .map_err(|e| JwtError::Key(format!("not an ECDSA P-256 key: {e}")))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, key.public_key().as_ref());
        let kid = b64(&digest.as_ref()[..16]);
        Ok(Signer { key, kid })
    }

    /// A signed JWT with these claims.
    pub fn sign(&self, claims: &Value) -> Result<String, JwtError> {
        let header = json!({"alg": "ES256", "kid": self.kid, "typ": "JWT"});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self
            .key
            .sign(&SystemRandom::new(), input.as_bytes())
            .map_err(|_| JwtError::Sign)?;
        Ok(format!("{input}.{}", b64(sig.as_ref())))
    }

    /// The claims of a token this key signed (ES256, signature intact); `None` for anything
    /// else. Lifetime, issuer and audience are the caller's to check.
    pub fn verify(&self, token: &str) -> Option<Value> {
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
        claims.is_object().then_some(claims)
    }
}

/// The claims of a legacy token for the ServiceAccount `account` (uid `account_uid`) stored in
/// the Secret `secret` of `namespace`, exactly as upstream's token controller makes them: no
/// expiry, no audience; the token is valid while that Secret holds it and the account exists.
pub fn legacy_claims(namespace: &str, secret: &str, account: &str, account_uid: &str) -> Value {
    json!({
        "iss": LEGACY_ISSUER,
        "kubernetes.io/serviceaccount/namespace": namespace,
        "kubernetes.io/serviceaccount/secret.name": secret,
        "kubernetes.io/serviceaccount/service-account.name": account,
        "kubernetes.io/serviceaccount/service-account.uid": account_uid,
        "sub": format!("system:serviceaccount:{namespace}:{account}"),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn signer() -> Signer {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        Signer::from_pem(&key.serialize_pem()).unwrap()
    }

    #[test]
    fn a_token_verifies_only_unaltered_and_with_its_key() {
        let s = signer();
        let claims = legacy_claims("ns", "tok", "robot", "u1");
        let t = s.sign(&claims).unwrap();
        assert_eq!(s.verify(&t), Some(claims));
        assert_eq!(signer().verify(&t), None, "another key");
        let parts: Vec<&str> = t.split('.').collect();
        let forged = legacy_claims("ns", "tok", "admin", "u1");
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64(forged.to_string().as_bytes()),
            parts[2]
        );
        assert_eq!(s.verify(&forged), None, "changed claims");
        assert_eq!(s.verify("not.a.jwt"), None);
        assert_eq!(s.verify(""), None);
    }

    #[test]
    fn legacy_claims_name_the_secret_and_the_account() {
        let c = legacy_claims("team", "robot-token", "robot", "u1");
        assert_eq!(c["iss"], LEGACY_ISSUER);
        assert_eq!(c["sub"], "system:serviceaccount:team:robot");
        assert_eq!(c["kubernetes.io/serviceaccount/secret.name"], "robot-token");
        assert!(c.get("exp").is_none(), "legacy tokens do not expire");
    }

    #[test]
    fn a_key_that_is_not_p256_pkcs8_is_refused() {
        assert!(matches!(Signer::from_pem("garbage"), Err(JwtError::Key(_))));
        let rsa_like = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        assert!(Signer::from_pem(&rsa_like.serialize_pem()).is_err());
    }
}
