//! A JSON token request body, converted to a form.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    tower_pkce::fuzzing::token_json(body);
});
