//! Service-account tokens: bound, signed JWTs (ES256), as upstream's TokenRequest API issues
//! them, and the bearer-token authenticator that accepts them.
//!
//! A token names its ServiceAccount (and that account's uid) and, when bound, a Pod (and its
//! uid). It is valid while it has not expired, its audience includes the API server's, the
//! account still exists with that uid and, for a bound token, the pod still exists with that
//! uid: deleting the pod (or the account) revokes every token bound to it.
//!
//! Legacy tokens (issuer `kubernetes/serviceaccount`, no expiry), which the controller-manager's
//! token controller writes into Secrets of type `kubernetes.io/service-account-token`, are
//! valid while that Secret exists and still holds the token, and the account exists with the
//! uid the token names: deleting the Secret revokes it.
//!
//! TokenReview ([`review`]) answers with the same checks.
//!
//! The signing key is `<data-dir>/pki/sa.key` (PKCS#8, P-256), made on first start next to
//! the CA.

use std::path::Path;

use serde_json::{Value, json};
pub use trellis_api::jwt::Signer;
use trellis_api::jwt::{JwtError, LEGACY_ISSUER};

use crate::auth::User;
use crate::handlers::Api;
use crate::status::{ApiError, Cause};

/// The issuer (`iss`), and the audience the API server accepts (upstream's default).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// TokenRequest's default lifetime, and the shortest one it grants (upstream's).
const DEFAULT_SECONDS: i64 = 3600;
const MIN_SECONDS: i64 = 600;
/// The Secret type whose tokens the legacy authenticator accepts, and its annotation naming
/// the account.
pub const SECRET_TYPE: &str = "kubernetes.io/service-account-token";

/// Errors of loading the signing key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    #[error(transparent)]
    Jwt(#[from] JwtError),
    #[error("service-account key: {0}")]
    Key(String),
}

/// Loads `<pki_dir>/sa.key`, making it when missing.
pub fn ensure_key(pki_dir: &Path) -> Result<Signer, KeyError> {
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
    Ok(Signer::from_pem(&pem)?)
}

/// The claims of a bound (TokenRequest) token this key signed, if it is in its lifetime and
/// from our issuer; `None` for anything else.
pub fn verify_bound(signer: &Signer, token: &str, now: i64) -> Option<Value> {
    signer.verify(token).filter(|c| bound_and_current(c, now))
}

/// Whether verified claims are a bound token's from our issuer, in its lifetime.
fn bound_and_current(claims: &Value, now: i64) -> bool {
    let Some(exp) = claims["exp"].as_i64() else {
        return false;
    };
    let nbf = claims["nbf"].as_i64().unwrap_or(0);
    // A minute of clock skew, as upstream allows.
    now < exp && now + 60 >= nbf && claims["iss"] == ISSUER
}

fn unix_now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// Who a token stands for, and for which of the audiences asked about it is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub user: User,
    pub audiences: Vec<String>,
}

/// Why a token does not authenticate (TokenReview's `status.error`).
const INVALID: &str = "invalid bearer token";

/// The user a bearer token stands for, or `None` (then the request gets 401).
pub async fn authenticate(api: &Api, token: &str) -> Option<User> {
    check(api, token, &[]).await.ok().map(|a| a.user)
}

/// Checks a token as the authenticator does, for `audiences` (none: the API server's own).
/// Bound tokens must name one of them; legacy tokens (from token Secrets) carry no audience
/// and are good for the API server's only, as upstream treats them.
pub async fn check(api: &Api, token: &str, audiences: &[String]) -> Result<Authenticated, String> {
    let signer = api
        .tokens
        .get()
        .ok_or_else(|| "the service-account key is not loaded yet".to_string())?;
    let wanted: Vec<String> = if audiences.is_empty() {
        vec![ISSUER.to_string()]
    } else {
        audiences.to_vec()
    };
    let claims = signer.verify(token).ok_or_else(|| INVALID.to_string())?;
    if claims["iss"] == LEGACY_ISSUER {
        return legacy(api, token, &claims, &wanted).await;
    }
    if !bound_and_current(&claims, unix_now()) {
        return Err(INVALID.into());
    }
    let token_audiences: Vec<&str> = match &claims["aud"] {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let valid_for: Vec<String> = wanted
        .iter()
        .filter(|a| token_audiences.contains(&a.as_str()))
        .cloned()
        .collect();
    if valid_for.is_empty() {
        return Err("token audiences do not match the requested audiences".into());
    }
    let k8s = &claims["kubernetes.io"];
    let ns = k8s["namespace"].as_str().ok_or(INVALID)?;
    let sa = k8s["serviceaccount"]["name"].as_str().ok_or(INVALID)?;
    let sa_uid = live_uid(api, "serviceaccounts", ns, sa)
        .await
        .ok_or_else(|| format!("serviceaccounts \"{sa}\" not found"))?;
    if k8s["serviceaccount"]["uid"].as_str() != Some(sa_uid.as_str()) {
        return Err(format!(
            "the ServiceAccount {ns}/{sa} was deleted and made again: the token is no longer valid"
        ));
    }
    let mut user = account_user(ns, sa, &sa_uid);
    if let Some(pod) = k8s["pod"]["name"].as_str() {
        let pod_uid = live_uid(api, "pods", ns, pod)
            .await
            .ok_or_else(|| format!("pods \"{pod}\" not found"))?;
        if k8s["pod"]["uid"].as_str() != Some(pod_uid.as_str()) {
            return Err(format!(
                "the pod {ns}/{pod} was deleted and made again: the token is no longer valid"
            ));
        }
        user.extra.insert(
            "authentication.kubernetes.io/pod-name".into(),
            vec![pod.into()],
        );
        user.extra
            .insert("authentication.kubernetes.io/pod-uid".into(), vec![pod_uid]);
    }
    if let Some(jti) = claims["jti"].as_str() {
        user.extra.insert(
            "authentication.kubernetes.io/credential-id".into(),
            vec![format!("JTI={jti}")],
        );
    }
    Ok(Authenticated {
        user,
        audiences: valid_for,
    })
}

/// A legacy token: valid while its Secret exists (not being deleted), still holds this very
/// token, and its account exists with the uid the token names — deleting the Secret revokes it.
async fn legacy(
    api: &Api,
    token: &str,
    claims: &Value,
    wanted: &[String],
) -> Result<Authenticated, String> {
    if !wanted.iter().any(|a| a == ISSUER) {
        return Err("token audiences do not match the requested audiences".into());
    }
    let claim = |k: &str| {
        claims[format!("kubernetes.io/serviceaccount/{k}")]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| INVALID.to_string())
    };
    let (ns, secret, sa, uid) = (
        claim("namespace")?,
        claim("secret.name")?,
        claim("service-account.name")?,
        claim("service-account.uid")?,
    );
    let info = api
        .registry
        .find("", "v1", "secrets")
        .ok_or_else(|| "secrets are not served".to_string())?;
    let stored = api
        .storage
        .get(&info, Some(ns), secret)
        .await
        .ok()
        .flatten()
        .filter(|s| !crate::meta::is_deleting(&s.obj))
        .ok_or_else(|| format!("secrets \"{secret}\" not found"))?;
    let held = crate::meta::at(&stored.obj, &["data", "token"])
        .and_then(Value::as_str)
        .and_then(|b| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(b).ok()
        });
    if held.as_deref() != Some(token.as_bytes()) {
        return Err("token does not match the Secret's".into());
    }
    let sa_uid = live_uid(api, "serviceaccounts", ns, sa)
        .await
        .ok_or_else(|| format!("serviceaccounts \"{sa}\" not found"))?;
    if sa_uid != uid {
        return Err(format!(
            "the ServiceAccount {ns}/{sa} was deleted and made again: the token is no longer valid"
        ));
    }
    Ok(Authenticated {
        user: account_user(ns, sa, &sa_uid),
        audiences: vec![ISSUER.to_string()],
    })
}

/// The uid of a live (stored, not being deleted) core/v1 object.
async fn live_uid(api: &Api, plural: &str, ns: &str, name: &str) -> Option<String> {
    let info = api.registry.find("", "v1", plural)?;
    let stored = api.storage.get(&info, Some(ns), name).await.ok()??;
    if crate::meta::is_deleting(&stored.obj) {
        return None;
    }
    crate::meta::at(&stored.obj, &["metadata", "uid"])
        .and_then(Value::as_str)
        .map(String::from)
}

/// A service account as a user: `system:serviceaccount:<ns>:<name>` in
/// `system:serviceaccounts` and `system:serviceaccounts:<ns>`, its uid the account's.
pub fn account_user(ns: &str, name: &str, uid: &str) -> User {
    let mut user = User::authenticated(
        format!("system:serviceaccount:{ns}:{name}"),
        vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
        ],
    );
    user.uid = uid.into();
    user
}

/// `POST tokenreviews` (authentication.k8s.io/v1): whether a token authenticates, as whom and
/// for which audiences, answered by the same checks as a request's bearer token; not stored.
pub async fn review(api: &Api, content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    let mut review = crate::handlers::parse_body(content_type, body)?;
    let token = review["spec"]["token"].as_str().unwrap_or("").to_string();
    if token.is_empty() {
        return Err(ApiError::bad_request(
            "token is required for TokenReview in authentication",
        ));
    }
    let audiences: Vec<String> = review["spec"]["audiences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(String::from))
        .collect();
    review["status"] = match check(api, &token, &audiences).await {
        Ok(a) => {
            let mut user = json!({"username": a.user.name, "groups": a.user.groups});
            if !a.user.uid.is_empty() {
                user["uid"] = json!(a.user.uid);
            }
            if !a.user.extra.is_empty() {
                user["extra"] = json!(a.user.extra);
            }
            json!({"authenticated": true, "user": user, "audiences": a.audiences})
        }
        Err(why) => json!({"authenticated": false, "user": {}, "error": why}),
    };
    review["apiVersion"] = json!("authentication.k8s.io/v1");
    review["kind"] = json!("TokenReview");
    if !review["metadata"].is_object() {
        review["metadata"] = json!({});
    }
    Ok(review)
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
    let token = signer
        .sign(&claims)
        .map_err(|e| ApiError::internal(e.to_string()))?;
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
    fn a_bound_token_verifies_only_in_its_lifetime_and_from_our_issuer() {
        let s = signer();
        let claims = json!({"iss": ISSUER, "exp": 2000, "nbf": 1000, "sub": "x"});
        let t = s.sign(&claims).unwrap();
        assert_eq!(verify_bound(&s, &t, 1500), Some(claims.clone()));
        assert_eq!(verify_bound(&s, &t, 2000), None, "expired");
        assert_eq!(verify_bound(&s, &t, 900), None, "not yet valid");
        assert_eq!(verify_bound(&signer(), &t, 1500), None, "another key");
        assert_eq!(verify_bound(&s, "not.a.jwt", 1500), None);
        // Another issuer's, and a legacy token (no lifetime) are no bound tokens.
        let other = s.sign(&json!({"iss": "elsewhere", "exp": 2000})).unwrap();
        assert_eq!(verify_bound(&s, &other, 1500), None);
        let legacy = s
            .sign(&trellis_api::jwt::legacy_claims("ns", "t", "sa", "u"))
            .unwrap();
        assert_eq!(verify_bound(&s, &legacy, 1500), None);
    }

    #[test]
    fn an_account_user_is_in_the_service_account_groups_with_its_uid() {
        let u = account_user("team", "robot", "u1");
        assert_eq!(u.name, "system:serviceaccount:team:robot");
        assert_eq!(
            u.groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:team",
                "system:authenticated"
            ]
        );
        assert_eq!(u.uid, "u1");
    }
}
