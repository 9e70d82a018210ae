//! One BGP message from arbitrary bytes, with and without 4-octet AS numbers
//! ([`trellis_bgp_fuzz::decode_message`]).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    trellis_bgp_fuzz::decode_message(data);
});
