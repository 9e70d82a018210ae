//! Any bytes as a network configuration list, a single config, or a plugin request: parsing
//! either fails cleanly or gives a value that survives a round trip
//! ([`trellis_cni_fuzz::parse_config`]).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    trellis_cni_fuzz::parse_config(data);
});
