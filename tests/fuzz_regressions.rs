//! Replays every input kept under `fuzz/regressions/<target>/` through the same entry point
//! and decoding as the fuzz target, on the stable toolchain: an input that once crashed a
//! target must keep passing. (The `layer` target's inputs replay with
//! `cargo +nightly fuzz run layer fuzz/regressions/layer/*`, since that harness lives in the
//! fuzz crate.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};
use tower_pkce::fuzzing;

/// Decodes `bytes` as libfuzzer-sys does for a typed target, and runs `run` on the result.
fn replay<'a, T: Arbitrary<'a>>(bytes: &'a [u8], run: impl FnOnce(T)) {
    if let Ok(input) = T::arbitrary_take_rest(Unstructured::new(bytes)) {
        run(input);
    }
}

fn run(target: &str, bytes: &[u8]) {
    match target {
        "authorize" => replay(bytes, |(q, b): (&[u8], Option<&[u8]>)| {
            fuzzing::authorize(q, b)
        }),
        "token_form" => fuzzing::token_form(bytes),
        "token_json" => fuzzing::token_json(bytes),
        "basic" => fuzzing::basic(bytes),
        "redirect" => replay(bytes, |(l, s): (&[u8], Option<&str>)| {
            fuzzing::redirect(l, s)
        }),
        "metadata" => replay(bytes, |(b, p): (&[u8], &str)| fuzzing::metadata(b, p)),
        "form_post" => replay(bytes, |(h, s): (&[u8], Option<&str>)| {
            fuzzing::form_post(h, s)
        }),
        "path" => fuzzing::path(bytes),
        "layer" => {}
        other => panic!("no fuzz target named {other}"),
    }
}

#[test]
fn every_kept_crash_input_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut replayed = 0;
    for target in std::fs::read_dir(&root).unwrap() {
        let target = target.unwrap();
        let name = target.file_name().into_string().unwrap();
        for input in std::fs::read_dir(target.path()).unwrap() {
            let bytes = std::fs::read(input.unwrap().path()).unwrap();
            run(&name, &bytes);
            replayed += 1;
        }
    }
    assert!(replayed > 0, "no inputs under {}", root.display());
}
