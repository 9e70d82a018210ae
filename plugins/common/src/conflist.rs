//! The configuration list a node agent writes for its runtime (`10-trellis-<mode>.conflist`).
//!
//! Its top-level `cniVersion` is 1.0.0, not 1.1.0: containerd 1.6 and 1.7 (and every runtime on
//! libcni before 1.2) ignore `cniVersions` and refuse a 1.1.0 result ("unsupported CNI result
//! version"), while a runtime that knows `cniVersions` still picks 1.1.0 from it (GC, STATUS).

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use trellis_cni::Version;

/// The top-level version: the highest that libcni before 1.2 (containerd 1.6/1.7, CRI-O of
/// that age) accepts.
pub const TOP_LEVEL: Version = Version::V1_0_0;

/// The list: `plugins` in order, offering every version from 0.3.1 up to `max` (1.1.0 unless a
/// chained plugin answers no higher, as the reference host-local, which stops at 1.0.0).
pub fn conflist(name: &str, plugins: Vec<Value>, max: Version) -> Value {
    let offered: Vec<&str> = [
        Version::V0_3_1,
        Version::V0_4_0,
        Version::V1_0_0,
        Version::V1_1_0,
    ]
    .into_iter()
    .filter(|v| *v <= max)
    .map(Version::as_str)
    .collect();
    json!({
        "cniVersion": TOP_LEVEL.min(max).as_str(),
        "cniVersions": offered,
        "name": name,
        "plugins": plugins,
    })
}

/// The reference `portmap` plugin as flannel's and canal's lists chain it (last, after the
/// network's own plugin): the runtime's `portMappings` (pods' hostPorts) become DNAT rules on
/// the node, `snat` masquerading what reaches a hostPort from the node itself (127.0.0.1) or
/// hairpins from a pod. It answers CNI up to 1.0.0 in Debian's build (1.1.1): trellis-cni's
/// invoker speaks 1.0.0 to it and leaves it out of STATUS and GC; upstream's ≥1.5 speaks 1.1.0.
pub fn portmap() -> Value {
    json!({"type": "portmap", "snat": true, "capabilities": {"portMappings": true}})
}

/// The file names Trellis' node agents write, one per network mode (overlay, canal, routed).
pub const TRELLIS_FILES: [&str; 3] = [
    "10-trellis-overlay.conflist",
    "10-trellis-canal.conflist",
    "10-trellis-routed.conflist",
];

/// Writes `list` as `dir/file_name`, atomically (a runtime reads the old file or the new one),
/// then removes the other modes' Trellis lists from `dir`: a node switched from one mode to
/// another has one Trellis network, not a stale one that a runtime might still pick (the
/// runtime takes the first file by name). Files of other networks are not ours and stay.
pub fn write(dir: &Path, file_name: &str, list: &Value) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(file_name);
    let tmp = dir.join(format!(".{file_name}.tmp"));
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(list).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(tmp, &path)?;
    for other in TRELLIS_FILES.iter().filter(|f| **f != file_name) {
        match std::fs::remove_file(dir.join(other)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_cni::NetworkConfigList;

    #[test]
    fn writing_one_mode_removes_the_other_modes_lists_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let list = conflist("net", vec![json!({"type": "x"})], Version::V1_1_0);
        write(dir.path(), "10-trellis-overlay.conflist", &list).unwrap();
        std::fs::write(dir.path().join("05-other.conflist"), "{}").unwrap();
        std::fs::write(dir.path().join("10-trellis-routed.conflist"), "{}").unwrap();
        write(dir.path(), "10-trellis-canal.conflist", &list).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["05-other.conflist", "10-trellis-canal.conflist"]);
    }

    /// What libcni 1.1 (containerd 1.6/1.7) accepts as a list's `cniVersion`.
    const OLD_LIBCNI: [&str; 6] = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"];

    #[test]
    fn every_runtime_in_use_accepts_the_list_and_new_ones_still_get_1_1_0() {
        let list = conflist("net", vec![json!({"type": "x"})], Version::V1_1_0);
        assert!(
            OLD_LIBCNI.contains(&list["cniVersion"].as_str().unwrap()),
            "containerd 1.6/1.7 would refuse {}",
            list["cniVersion"]
        );
        let parsed = NetworkConfigList::from_slice(list.to_string().as_bytes()).unwrap();
        assert_eq!(
            parsed.version().unwrap(),
            Version::V1_1_0,
            "cniVersions offers 1.1.0"
        );
        let capped = conflist("net", vec![json!({"type": "x"})], Version::V1_0_0);
        assert_eq!(capped["cniVersions"], json!(["0.3.1", "0.4.0", "1.0.0"]));
        assert_eq!(
            NetworkConfigList::from_slice(capped.to_string().as_bytes())
                .unwrap()
                .version()
                .unwrap(),
            Version::V1_0_0
        );
    }

    #[test]
    fn writing_replaces_the_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let a = conflist("a", vec![], Version::V1_1_0);
        let p = write(dir.path(), "10-x.conflist", &a).unwrap();
        let b = conflist("b", vec![], Version::V1_1_0);
        write(dir.path(), "10-x.conflist", &b).unwrap();
        let back: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(back["name"], "b");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary left"
        );
    }
}
