//! cargo fuzz target: `stipple::fuzzing::png_text` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| stipple::fuzzing::png_text(data));
