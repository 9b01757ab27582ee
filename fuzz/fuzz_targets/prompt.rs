//! cargo fuzz target: `stipple::fuzzing::prompt` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| stipple::fuzzing::prompt(data));
