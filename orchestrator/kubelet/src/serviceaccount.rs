//! The projected service-account volume, as upstream's kubelet fills `kube-api-access-*`: a
//! token from TokenRequest bound to the pod, the cluster CA (`ca.crt` of the namespace's
//! `kube-root-ca.crt` ConfigMap, which the controller-manager publishes; the kubeconfig's CA
//! when there is none) and the pod's namespace, at
//! `/var/run/secrets/kubernetes.io/serviceaccount`, and the `KUBERNETES_SERVICE_*` variables
//! that tell a client where the API server is.
//!
//! The files live in `<pod dir>/serviceaccount/` and are replaced by rename, so a container
//! that has the directory bind-mounted (the process runtime's shim does it) always reads a
//! whole token, also after a refresh.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};

/// Where containers find the files (upstream's path).
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The directory under the pod's directory that holds them.
pub const DIR: &str = "serviceaccount";
/// The lifetime the kubelet asks for (upstream's projected default, 1 h + 7 s).
pub const EXPIRATION_SECONDS: i64 = 3607;

/// The ConfigMap the controller-manager publishes the cluster CA in, in every namespace.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";

/// The CA bundle a `kube-root-ca.crt` ConfigMap publishes (its `ca.crt`), if any.
pub fn published_ca(cm: &ConfigMap) -> Option<String> {
    cm.data
        .as_ref()?
        .get("ca.crt")
        .filter(|c| !c.trim().is_empty())
        .cloned()
}

/// The account a pod runs as: `serviceAccountName`, the deprecated `serviceAccount`, or
/// `default` (what admission would have set).
pub fn account_name(pod: &Pod) -> String {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.service_account_name.clone())
        .or_else(|| spec.and_then(|s| s.service_account.clone()))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into())
}

/// Whether the pod gets a token: the pod's `automountServiceAccountToken` wins, then the
/// account's, and the default is yes.
pub fn automount(pod: &Pod, account: Option<&ServiceAccount>) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.automount_service_account_token)
        .or_else(|| account.and_then(|a| a.automount_service_account_token))
        .unwrap_or(true)
}

/// How long after issue a token of lifetime `ttl` is replaced: at 80 % of its life, and at
/// least daily (upstream's token manager).
pub fn refresh_after(ttl: Duration) -> Duration {
    (ttl.mul_f64(0.8)).min(Duration::from_secs(24 * 3600))
}

/// Writes the three files, each replaced atomically.
pub fn write(dir: &Path, token: &str, ca: Option<&str>, namespace: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    crate::shim::write_atomic(dir, "token", token)?;
    if let Some(ca) = ca {
        crate::shim::write_atomic(dir, "ca.crt", ca)?;
    }
    crate::shim::write_atomic(dir, "namespace", namespace)
}

/// The variables of the `kubernetes` Service every container gets, as docker links name them.
pub fn env(host: &str, port: u16) -> Vec<(String, String)> {
    let url = if host.contains(':') {
        format!("tcp://[{host}]:{port}")
    } else {
        format!("tcp://{host}:{port}")
    };
    let p = format!("KUBERNETES_PORT_{port}_TCP");
    vec![
        ("KUBERNETES_SERVICE_HOST".into(), host.into()),
        ("KUBERNETES_SERVICE_PORT".into(), port.to_string()),
        ("KUBERNETES_SERVICE_PORT_HTTPS".into(), port.to_string()),
        ("KUBERNETES_PORT".into(), url.clone()),
        (p.clone(), url),
        (format!("{p}_PROTO"), "tcp".into()),
        (format!("{p}_PORT"), port.to_string()),
        (format!("{p}_ADDR"), host.into()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    #[test]
    fn the_published_ca_is_the_config_maps_ca_crt_when_it_has_one() {
        let cm = |data: serde_json::Value| -> ConfigMap {
            serde_json::from_value(json!({"metadata": {"name": ROOT_CA_CONFIGMAP}, "data": data}))
                .unwrap()
        };
        assert_eq!(
            published_ca(&cm(json!({"ca.crt": "PEM"}))).as_deref(),
            Some("PEM")
        );
        assert_eq!(published_ca(&cm(json!({"ca.crt": " "}))), None);
        assert_eq!(published_ca(&cm(json!({"other": "x"}))), None);
        assert_eq!(published_ca(&ConfigMap::default()), None);
    }

    #[test]
    fn the_account_is_the_named_one_or_default() {
        let c = json!([{"name": "c"}]);
        assert_eq!(account_name(&pod(json!({"containers": c}))), "default");
        assert_eq!(
            account_name(&pod(
                json!({"containers": c, "serviceAccountName": "reader"})
            )),
            "reader"
        );
        assert_eq!(
            account_name(&pod(json!({"containers": c, "serviceAccount": "old"}))),
            "old"
        );
    }

    #[test]
    fn the_pod_setting_wins_over_the_account_and_the_default_is_to_mount() {
        let c = json!([{"name": "c"}]);
        let sa = |v: Option<bool>| ServiceAccount {
            automount_service_account_token: v,
            ..Default::default()
        };
        let plain = pod(json!({"containers": c}));
        let off = pod(json!({"containers": c, "automountServiceAccountToken": false}));
        let on = pod(json!({"containers": c, "automountServiceAccountToken": true}));
        assert!(automount(&plain, None));
        assert!(automount(&plain, Some(&sa(None))));
        assert!(!automount(&plain, Some(&sa(Some(false)))));
        assert!(!automount(&off, Some(&sa(Some(true)))));
        assert!(automount(&on, Some(&sa(Some(false)))));
    }

    #[test]
    fn a_token_is_replaced_at_eighty_percent_of_its_life() {
        let hour = Duration::from_secs(3600);
        assert_eq!(refresh_after(hour), Duration::from_secs(2880));
        assert_eq!(
            refresh_after(hour * 48),
            Duration::from_secs(24 * 3600),
            "at least daily"
        );
    }

    #[test]
    fn files_are_written_and_replaced_whole() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join(DIR);
        write(&dir, "t1", Some("CA"), "ns").unwrap();
        write(&dir, "t2", Some("CA"), "ns").unwrap();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(
            (read("token"), read("ca.crt"), read("namespace")),
            ("t2".into(), "CA".into(), "ns".into())
        );
    }

    #[test]
    fn the_service_variables_name_host_and_port() {
        let e: std::collections::HashMap<_, _> = env("10.96.0.1", 443).into_iter().collect();
        assert_eq!(e["KUBERNETES_SERVICE_HOST"], "10.96.0.1");
        assert_eq!(e["KUBERNETES_SERVICE_PORT"], "443");
        assert_eq!(e["KUBERNETES_PORT_443_TCP"], "tcp://10.96.0.1:443");
        assert_eq!(e["KUBERNETES_PORT_443_TCP_ADDR"], "10.96.0.1");
    }
}
