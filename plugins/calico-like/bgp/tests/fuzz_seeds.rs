//! The codec fuzz targets' seed corpora as ordinary tests on stable: every file of
//! `fuzz/seeds/<target>/` goes through the property its cargo-fuzz target checks
//! (`fuzz/src/lib.rs`, shared with the targets). `decode_message` seeds named `ok-*` must decode,
//! `bad-*` must be refused; a `decode_stream` seed's name ends with the number of frames a
//! session cuts from it (`…-4frames`, `…-1frame`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../fuzz/src/lib.rs"]
mod fuzz;

use std::path::PathBuf;

/// The seeds of `target`, by name; at least four, so an emptied corpus cannot pass.
fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    out.sort();
    assert!(
        out.len() >= 4,
        "{}: only {} seeds",
        dir.display(),
        out.len()
    );
    out
}

#[test]
fn decode_message_seeds_hold() {
    for (name, data) in seeds("decode_message") {
        eprintln!("decode_message: {name}");
        assert_eq!(
            fuzz::decode_message(&data),
            name.starts_with("ok-"),
            "decode_message/{name}"
        );
    }
}

#[test]
fn decode_stream_seeds_hold() {
    for (name, data) in seeds("decode_stream") {
        eprintln!("decode_stream: {name}");
        let frames: usize = name
            .rsplit('-')
            .next()
            .and_then(|n| n.strip_suffix("frames").or(n.strip_suffix("frame")))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{name}: the name ends with -<N>frames"));
        assert_eq!(fuzz::decode_stream(&data), frames, "decode_stream/{name}");
    }
}
