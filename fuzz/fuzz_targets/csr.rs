#![no_main]
//! Fuzz target `csr`; the logic is in `fuzz/checks/csr.rs`, which the regression tests share.

#[path = "../checks/csr.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
