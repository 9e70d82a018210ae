//! The properties the CNI fuzz targets check, as plain functions: cargo-fuzz runs them on
//! generated inputs (`fuzz_targets/`), and the workspace's tests run them on the committed seed
//! corpora (`seeds/<target>/`) on stable, so they are built, linted and run in CI.
//!
//! Each returns whether the input parsed, so the seed test can tell that its valid seeds reach
//! the round-trip assertions.

use trellis_cni::{CniResult, NetworkConfigList, PluginConf, Version};

/// Any bytes as a network configuration list, a single config, or a plugin request: parsing
/// either fails cleanly or gives a value that survives a round trip.
pub fn parse_config(data: &[u8]) -> bool {
    let mut parsed = false;
    if let Ok(list) = NetworkConfigList::from_slice(data) {
        let again = serde_json::to_vec(&list).expect("a parsed list serialises");
        let back = NetworkConfigList::from_slice(&again).expect("a serialised list parses");
        assert_eq!(back, list);
        let _ = list.version();
        parsed = true;
    }
    parsed |= NetworkConfigList::from_single(data).is_ok();
    if let Ok(conf) = serde_json::from_slice::<PluginConf>(data) {
        let _ = conf.version();
        let _ = conf.runtime("ips");
        let _ = conf.cni_arg("ips");
    }
    parsed
}

/// Any bytes as a result of any version: reading fails cleanly, or the result prints in every
/// version (or refuses to, for 0.1.0/0.2.0 without an address) and reads back as printed.
pub fn parse_result(data: &[u8]) -> bool {
    let Ok((_, result)) = CniResult::from_slice(data, Some(Version::V1_0_0)) else {
        return false;
    };
    for v in Version::ALL {
        let Ok(printed) = result.to_value(v) else {
            continue;
        };
        let (read_v, back) =
            CniResult::from_value(printed.clone(), None).expect("what we print, we read");
        assert_eq!(read_v, v);
        if result.expressible_in(v) {
            assert_eq!(back, result, "lossless in {v}");
        }
        assert_eq!(
            back.to_value(v).expect("prints again"),
            printed,
            "stable in {v}"
        );
    }
    true
}
