#![no_main]
//! Fuzz target: see `chatd::fuzzing::admin_request`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| chatd::fuzzing::admin_request(data));
