//! Sysctls inside a namespace. `/proc/sys/net` shows the namespace of the thread that opens it,
//! so each batch is read or written from a thread inside the namespace.

use crate::error::{Error, Result};
use crate::netns::Netns;

/// `net.ipv4.ip_forward` or `net/ipv4/ip_forward` → `/proc/sys/net/ipv4/ip_forward`. Interface
/// names may contain dots, so a key with slashes is taken as it is.
fn path_of(key: &str) -> Result<String> {
    if key.is_empty() || key.contains("..") || key.starts_with('/') {
        return Err(Error::invalid("sysctl", key, "not a sysctl key"));
    }
    let rel = if key.contains('/') {
        key.to_string()
    } else {
        key.replace('.', "/")
    };
    Ok(format!("/proc/sys/{rel}"))
}

/// Sets each `(key, value)` inside `ns`, in order.
pub fn set(ns: &Netns, settings: &[(&str, &str)]) -> Result<()> {
    let paths = paths_of(settings)?;
    ns.run(|| write_all(&paths, &ns.path().display().to_string()))?
}

/// Sets each `(key, value)` in the calling thread's own namespace, in order, from this thread:
/// no thread of its own and no namespace entry (for a caller that knows where it is — a CNI
/// plugin's thread is in the host's namespace).
pub fn set_here(settings: &[(&str, &str)]) -> Result<()> {
    write_all(&paths_of(settings)?, "the current netns")
}

fn paths_of<'a>(settings: &[(&'a str, &'a str)]) -> Result<Vec<(String, &'a str, &'a str)>> {
    settings
        .iter()
        .map(|(k, v)| Ok((path_of(k)?, *k, *v)))
        .collect()
}

fn write_all(paths: &[(String, &str, &str)], ns: &str) -> Result<()> {
    for (path, key, value) in paths {
        std::fs::write(path, value)
            .map_err(|e| Error::os("set sysctl", format!("{key}={value} in {ns}"), e))?;
    }
    Ok(())
}

/// Reads one sysctl inside `ns`.
pub fn get(ns: &Netns, key: &str) -> Result<String> {
    let path = path_of(key)?;
    ns.run(|| {
        std::fs::read_to_string(&path)
            .map(|s| s.trim_end().to_string())
            .map_err(|e| {
                Error::os(
                    "read sysctl",
                    format!("{key} in {}", ns.path().display()),
                    e,
                )
            })
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_proc_paths() {
        assert_eq!(
            path_of("net.ipv4.ip_forward").unwrap(),
            "/proc/sys/net/ipv4/ip_forward"
        );
        assert_eq!(
            path_of("net/ipv4/conf/trellis.1/proxy_arp").unwrap(),
            "/proc/sys/net/ipv4/conf/trellis.1/proxy_arp"
        );
        assert!(path_of("../etc/passwd").is_err());
        assert!(path_of("/etc/passwd").is_err());
    }
}
