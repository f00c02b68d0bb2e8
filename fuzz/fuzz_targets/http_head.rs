#![no_main]
//! Fuzz target: see `chatd::fuzzing::http_head`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| chatd::fuzzing::http_head(data));
