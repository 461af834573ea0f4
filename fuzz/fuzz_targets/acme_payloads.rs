#![no_main]
//! Fuzz target `acme_payloads`; the logic is in `fuzz/checks/acme_payloads.rs`, which the regression tests share.

#[path = "../checks/acme_payloads.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
