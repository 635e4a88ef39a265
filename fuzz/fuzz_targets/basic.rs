//! An `Authorization: Basic` header and the client identity rules.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|header: &[u8]| {
    tower_pkce::fuzzing::basic(header);
});
