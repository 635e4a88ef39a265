//! A request target: the fast endpoint comparison agrees with full normalization.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &[u8]| {
    tower_pkce::fuzzing::path(raw);
});
