//! Any bytes as a result of any version: reading fails cleanly, or the result prints in every
//! version (or refuses to, for 0.1.0/0.2.0 without an address) and reads back as printed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_cni::{CniResult, Version};

fuzz_target!(|data: &[u8]| {
    let Ok((_, result)) = CniResult::from_slice(data, Some(Version::V1_0_0)) else { return };
    for v in Version::ALL {
        let Ok(printed) = result.to_value(v) else { continue };
        let (read_v, back) = CniResult::from_value(printed.clone(), None).expect("what we print, we read");
        assert_eq!(read_v, v);
        if result.expressible_in(v) {
            assert_eq!(back, result, "lossless in {v}");
        }
        assert_eq!(back.to_value(v).expect("prints again"), printed, "stable in {v}");
    }
});
