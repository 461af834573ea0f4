#![no_main]
//! Fuzz target `jws`; the logic is in `fuzz/checks/jws.rs`, which the regression tests share.

#[path = "../checks/jws.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
