#![no_main]
//! Fuzz target `pem_der`; the logic is in `fuzz/checks/pem_der.rs`, which the regression tests share.

#[path = "../checks/pem_der.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
