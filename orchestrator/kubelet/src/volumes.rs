//! A container's `hostPath` volume mounts, resolved from the pod spec for an image runtime
//! (the process runtime's processes see the node's files anyway). Upstream's hostPath types
//! are checked, and `DirectoryOrCreate`/`FileOrCreate` create what is missing, as the kubelet's
//! volume manager does before the container starts (an agent's `/run/xtables.lock`).

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, PodSpec};

/// One node path bind-mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostMount {
    /// The node's path (the volume's `hostPath.path`, with the mount's `subPath`).
    pub host: PathBuf,
    /// The container's path (`mountPath`).
    pub container: PathBuf,
    pub read_only: bool,
}

/// What the mounts of `c` need that cannot be given.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VolumeError {
    #[error("volumeMount {0:?} names no volume of the pod")]
    NoVolume(String),
    #[error("hostPath {path:?} of volume {volume:?}: {why}")]
    HostPath {
        volume: String,
        path: String,
        why: String,
    },
}

/// The hostPath mounts of container `c` (mounts of other volume types are left to the
/// runtime's defaults, as before), with each path checked against its `type` and created
/// where the type says so.
pub fn host_mounts(spec: &PodSpec, c: &Container) -> Result<Vec<HostMount>, VolumeError> {
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let v = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == m.name)
            .ok_or_else(|| VolumeError::NoVolume(m.name.clone()))?;
        let Some(hp) = &v.host_path else {
            continue;
        };
        let bad = |why: String| VolumeError::HostPath {
            volume: v.name.clone(),
            path: hp.path.clone(),
            why,
        };
        prepare(Path::new(&hp.path), hp.type_.as_deref().unwrap_or("")).map_err(bad)?;
        let mut host = PathBuf::from(&hp.path);
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            if Path::new(sub).is_absolute() || sub.split('/').any(|p| p == "..") {
                return Err(bad(format!("subPath {sub:?} must be relative, without ..")));
            }
            host.push(sub);
        }
        out.push(HostMount {
            host,
            container: PathBuf::from(&m.mount_path),
            read_only: m.read_only.unwrap_or(false),
        });
    }
    Ok(out)
}

/// Checks (and for the `…OrCreate` types makes) `path` as hostPath type `kind` says.
fn prepare(path: &Path, kind: &str) -> Result<(), String> {
    let meta = std::fs::metadata(path);
    let io = |e: std::io::Error| e.to_string();
    match kind {
        "" => Ok(()),
        "DirectoryOrCreate" => {
            if meta.is_err() {
                std::fs::create_dir_all(path).map_err(io)?;
            }
            is(path, |m| m.is_dir(), "a directory")
        }
        "FileOrCreate" => {
            if meta.is_err() {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(io)?;
                }
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(io)?;
            }
            is(path, |m| m.is_file(), "a file")
        }
        "Directory" => is(path, |m| m.is_dir(), "a directory"),
        "File" => is(path, |m| m.is_file(), "a file"),
        "Socket" | "CharDevice" | "BlockDevice" => {
            use std::os::unix::fs::FileTypeExt;
            let want = kind.to_string();
            is(
                path,
                move |m| match want.as_str() {
                    "Socket" => m.file_type().is_socket(),
                    "CharDevice" => m.file_type().is_char_device(),
                    _ => m.file_type().is_block_device(),
                },
                kind,
            )
        }
        other => Err(format!("unknown hostPath type {other:?}")),
    }
}

fn is(path: &Path, ok: impl Fn(&std::fs::Metadata) -> bool, what: &str) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if ok(&m) => Ok(()),
        Ok(_) => Err(format!("it is not {what}")),
        Err(e) => Err(format!("{what} is required: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(dir: &Path) -> (PodSpec, Container) {
        let spec: PodSpec = serde_json::from_value(serde_json::json!({
            "containers": [{"name": "c", "volumeMounts": [
                {"name": "run", "mountPath": "/run/trellis"},
                {"name": "lock", "mountPath": "/run/xtables.lock", "readOnly": true},
                {"name": "scratch", "mountPath": "/scratch"},
            ]}],
            "volumes": [
                {"name": "run", "hostPath": {"path": dir.join("run").to_str().unwrap(), "type": "DirectoryOrCreate"}},
                {"name": "lock", "hostPath": {"path": dir.join("a/xtables.lock").to_str().unwrap(), "type": "FileOrCreate"}},
                {"name": "scratch", "emptyDir": {}},
            ]
        }))
        .unwrap();
        let c = spec.containers[0].clone();
        (spec, c)
    }

    #[test]
    fn host_paths_are_made_as_their_type_says_and_other_volumes_left() {
        let d = tempfile::tempdir().unwrap();
        let (spec, c) = pod(d.path());
        let m = host_mounts(&spec, &c).unwrap();
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(m[0].container, Path::new("/run/trellis"));
        assert!(d.path().join("run").is_dir());
        assert!(m[1].read_only && d.path().join("a/xtables.lock").is_file());
    }

    #[test]
    fn a_wrong_type_a_missing_volume_and_a_bad_subpath_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let (mut spec, mut c) = pod(d.path());
        std::fs::create_dir_all(d.path().join("a/xtables.lock")).unwrap();
        let e = host_mounts(&spec, &c).unwrap_err().to_string();
        assert!(e.contains("not a file"), "{e}");
        std::fs::remove_dir(d.path().join("a/xtables.lock")).unwrap();
        if let Some(v) = spec.volumes.as_mut() {
            v[0].host_path.as_mut().unwrap().type_ = Some("Directory".into());
            v[0].host_path.as_mut().unwrap().path = d.path().join("absent").display().to_string();
        }
        let e = host_mounts(&spec, &c).unwrap_err().to_string();
        assert!(e.contains("a directory is required"), "{e}");
        c.volume_mounts.as_mut().unwrap()[0].name = "nope".into();
        assert_eq!(
            host_mounts(&spec, &c).unwrap_err(),
            VolumeError::NoVolume("nope".into())
        );
        let (spec, mut c) = pod(d.path());
        c.volume_mounts.as_mut().unwrap()[0].sub_path = Some("../etc".into());
        let e = host_mounts(&spec, &c).unwrap_err().to_string();
        assert!(e.contains("subPath"), "{e}");
    }
}
