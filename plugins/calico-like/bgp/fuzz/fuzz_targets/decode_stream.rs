//! A TCP byte stream cut into frames as a session does
//! ([`trellis_bgp_fuzz::decode_stream`]).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    trellis_bgp_fuzz::decode_stream(data);
});
