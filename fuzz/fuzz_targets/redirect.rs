//! An upstream `Location`: finding the handle and putting the client's state back.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&[u8], Option<&str>)| {
    tower_pkce::fuzzing::redirect(input.0, input.1);
});
