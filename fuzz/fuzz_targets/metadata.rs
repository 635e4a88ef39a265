//! A discovery document and its path: `code_challenge_methods_supported` set, nothing else
//! changed.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&[u8], &str)| {
    tower_pkce::fuzzing::metadata(input.0, input.1);
});
