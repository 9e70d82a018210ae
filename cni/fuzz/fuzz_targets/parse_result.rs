//! Any bytes as a result of any version: reading fails cleanly, or the result prints in every
//! version and reads back as printed ([`trellis_cni_fuzz::parse_result`]).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    trellis_cni_fuzz::parse_result(data);
});
