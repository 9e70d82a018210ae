//! The fuzz targets' seed corpora as ordinary tests on stable: every file of
//! `fuzz/seeds/<target>/` goes through the property its cargo-fuzz target checks
//! (`fuzz/src/lib.rs`, shared with the targets). Seeds named `ok-*` must parse, so they reach
//! the round-trip assertions; `bad-*` must be refused.

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

fn run(target: &str, property: fn(&[u8]) -> bool) {
    for (name, data) in seeds(target) {
        eprintln!("{target}: {name}");
        let parsed = property(&data);
        assert_eq!(
            parsed,
            name.starts_with("ok-"),
            "{target}/{name}: parsed is {parsed}"
        );
    }
}

#[test]
fn parse_config_seeds_hold() {
    run("parse_config", fuzz::parse_config);
}

#[test]
fn parse_result_seeds_hold() {
    run("parse_result", fuzz::parse_result);
}
