//! A TCP byte stream cut into frames as a session does: `frame_length` then `decode`, until the
//! bytes run out (a frame announces its length before all of it has arrived) or a frame is
//! refused. Never a panic, never a frame shorter than its header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_bgp::codec::{self, Context};

fuzz_target!(|data: &[u8]| {
    let cx = Context { four_octet_as: true };
    let mut rest = data;
    while let Ok(Some(len)) = codec::frame_length(rest) {
        assert!(len >= 19, "a frame shorter than the BGP header");
        if len > rest.len() {
            break; // a session would read more
        }
        let (frame, tail) = rest.split_at(len);
        if codec::decode(frame, &cx).is_err() {
            break;
        }
        rest = tail;
    }
});
