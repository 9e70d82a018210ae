//! `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`.
//!
//! As libcni does, a plugin refuses keys it does not know unless the runtime sets
//! `IgnoreUnknown=1` (Kubernetes always does, for its `K8S_POD_*` keys).

use crate::Error;

/// Keys every plugin of ours understands.
pub const WELL_KNOWN: &[&str] = &[
    "IgnoreUnknown",
    "K8S_POD_NAMESPACE",
    "K8S_POD_NAME",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID",
    "IP",
    "MAC",
];

/// Parsed `CNI_ARGS`, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs(Vec<(String, String)>);

impl CniArgs {
    /// Parses `CNI_ARGS`, refusing keys outside `known` unless `IgnoreUnknown` is true.
    pub fn parse(text: &str, known: &[&str]) -> Result<CniArgs, Error> {
        let mut pairs = Vec::new();
        for item in text.split(';').filter(|s| !s.is_empty()) {
            let Some((k, v)) = item.split_once('=') else {
                return Err(Error::invalid_env(
                    "CNI_ARGS: invalid pair",
                    format!("{item:?} is not KEY=VALUE"),
                ));
            };
            if k.is_empty() {
                return Err(Error::invalid_env(
                    "CNI_ARGS: invalid pair",
                    format!("{item:?} has an empty key"),
                ));
            }
            pairs.push((k.to_string(), v.to_string()));
        }
        let args = CniArgs(pairs);
        if !args.ignore_unknown()
            && let Some((k, _)) = args.0.iter().find(|(k, _)| !known.contains(&k.as_str()))
        {
            return Err(Error::invalid_env(
                "CNI_ARGS: unknown key",
                format!("{k:?} (set IgnoreUnknown=1 to pass keys this plugin does not use)"),
            ));
        }
        Ok(args)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    /// `IgnoreUnknown` is true for `1`, `true` or `True` (Go's boolean spelling).
    pub fn ignore_unknown(&self) -> bool {
        matches!(
            self.get("IgnoreUnknown"),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True")
        )
    }

    /// The Kubernetes pod these args describe, when the runtime named one.
    pub fn pod(&self) -> Option<(&str, &str)> {
        Some((self.get("K8S_POD_NAMESPACE")?, self.get("K8S_POD_NAME")?))
    }

    /// Renders the pairs back into `CNI_ARGS` form.
    pub fn to_env(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }
}

impl FromIterator<(String, String)> for CniArgs {
    fn from_iter<T: IntoIterator<Item = (String, String)>>(iter: T) -> Self {
        CniArgs(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_args() {
        let a = CniArgs::parse(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc",
            WELL_KNOWN,
        )
        .unwrap();
        assert_eq!(a.pod(), Some(("default", "web-0")));
        assert_eq!(a.get("K8S_POD_INFRA_CONTAINER_ID"), Some("abc"));
    }

    #[test]
    fn unknown_keys_need_ignore_unknown() {
        let err = CniArgs::parse("FOO=bar", WELL_KNOWN).unwrap_err();
        assert_eq!(err.code.get(), 4);
        assert!(CniArgs::parse("FOO=bar;IgnoreUnknown=true", WELL_KNOWN).is_ok());
        assert!(CniArgs::parse("IgnoreUnknown=0;FOO=bar", WELL_KNOWN).is_err());
    }

    #[test]
    fn malformed_pairs_are_refused() {
        assert!(CniArgs::parse("NOEQUALS", WELL_KNOWN).is_err());
        assert!(CniArgs::parse("=value", WELL_KNOWN).is_err());
        assert_eq!(CniArgs::parse("", WELL_KNOWN).unwrap(), CniArgs::default());
        assert_eq!(
            CniArgs::parse("IP=10.0.0.1;", WELL_KNOWN)
                .unwrap()
                .get("IP"),
            Some("10.0.0.1")
        );
    }

    #[test]
    fn values_may_contain_equals_signs() {
        let a = CniArgs::parse("IgnoreUnknown=1;LABEL=a=b", WELL_KNOWN).unwrap();
        assert_eq!(a.get("LABEL"), Some("a=b"));
        assert_eq!(a.to_env(), "IgnoreUnknown=1;LABEL=a=b");
    }
}
