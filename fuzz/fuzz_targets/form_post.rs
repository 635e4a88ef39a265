//! An upstream page: reading a form_post response and putting the client's state back.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&[u8], Option<&str>)| {
    tower_pkce::fuzzing::form_post(input.0, input.1);
});
