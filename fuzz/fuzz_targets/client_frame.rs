#![no_main]
//! Fuzz target: see `chatd::fuzzing::client_frame`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| chatd::fuzzing::client_frame(data));
