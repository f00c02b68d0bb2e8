#![no_main]
//! Fuzz target: see `chatd::fuzzing::stored_value`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| chatd::fuzzing::stored_value(data));
