#![no_main]
//! Fuzz target `server_config`; the logic is in `fuzz/checks/server_config.rs`, which the regression tests share.

#[path = "../checks/server_config.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
