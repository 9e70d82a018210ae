//! One BGP message from arbitrary bytes, with and without 4-octet AS numbers: decoding never
//! panics, and whatever decodes cleanly encodes again and decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_bgp::codec::{self, Context};

fuzz_target!(|data: &[u8]| {
    for four_octet_as in [false, true] {
        let cx = Context { four_octet_as };
        if let Ok(decoded) = codec::decode(data, &cx)
            && let Some(message) = decoded.into_message()
            && let Ok(bytes) = codec::encode(&message, &cx)
        {
            let again = codec::decode(&bytes, &cx)
                .ok()
                .and_then(|d| d.into_message());
            assert_eq!(again.as_ref(), Some(&message), "re-encoding changed the message");
        }
    }
});
