#![no_main]
//! Fuzz target `ca_responses`; the logic is in `fuzz/checks/ca_responses.rs`, which the regression tests share.

#[path = "../checks/ca_responses.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
