//! An authorization request's query and form body: parsed, the PKCE policy applied, and the
//! handle put in place of `state` without changing anything else the layer reads.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&[u8], Option<&[u8]>)| {
    tower_pkce::fuzzing::authorize(input.0, input.1);
});
