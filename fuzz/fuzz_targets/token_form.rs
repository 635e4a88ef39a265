//! A form-encoded token request body.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    tower_pkce::fuzzing::token_form(body);
});
