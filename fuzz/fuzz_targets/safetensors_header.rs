//! cargo fuzz target: `stipple::fuzzing::safetensors_header` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| stipple::fuzzing::safetensors_header(data));
