#![no_main]
//! Fuzz target: see `chatd::fuzzing::import_line`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| chatd::fuzzing::import_line(data));
