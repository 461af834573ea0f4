#![no_main]
//! Fuzz target `jwt`; the logic is in `fuzz/checks/jwt.rs`, which the regression tests share.

#[path = "../checks/jwt.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
