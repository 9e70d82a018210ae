//! The properties the BGP codec's fuzz targets check, as plain functions: cargo-fuzz runs them
//! on generated inputs (`fuzz_targets/`), and the workspace's tests run them on the committed
//! seed corpora (`seeds/<target>/`) on stable, so they are built, linted and run in CI.

use trellis_bgp::codec::{self, Context};

/// One BGP message from arbitrary bytes, with and without 4-octet AS numbers: decoding never
/// panics, and whatever decodes cleanly encodes again and decodes to the same message. Returns
/// whether it decoded as a message with either AS size.
pub fn decode_message(data: &[u8]) -> bool {
    let mut decoded_any = false;
    for four_octet_as in [false, true] {
        let cx = Context { four_octet_as };
        if let Ok(decoded) = codec::decode(data, &cx)
            && let Some(message) = decoded.into_message()
        {
            decoded_any = true;
            if let Ok(bytes) = codec::encode(&message, &cx) {
                let again = codec::decode(&bytes, &cx)
                    .ok()
                    .and_then(|d| d.into_message());
                assert_eq!(
                    again.as_ref(),
                    Some(&message),
                    "re-encoding changed the message"
                );
            }
        }
    }
    decoded_any
}

/// A TCP byte stream cut into frames as a session does: `frame_length` then `decode`, until
/// the bytes run out (a frame announces its length before all of it has arrived) or a frame is
/// refused. Never a panic, never a frame shorter than its header. Returns how many frames
/// decoded.
pub fn decode_stream(data: &[u8]) -> usize {
    let cx = Context {
        four_octet_as: true,
    };
    let mut rest = data;
    let mut frames = 0;
    while let Ok(Some(len)) = codec::frame_length(rest) {
        assert!(len >= 19, "a frame shorter than the BGP header");
        if len > rest.len() {
            break; // a session would read more
        }
        let (frame, tail) = rest.split_at(len);
        if codec::decode(frame, &cx).is_err() {
            break;
        }
        frames += 1;
        rest = tail;
    }
    frames
}
