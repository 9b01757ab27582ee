//! cargo fuzz target: `stipple::fuzzing::job_lines` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| stipple::fuzzing::job_lines(data));
