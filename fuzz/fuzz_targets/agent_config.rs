#![no_main]
//! Fuzz target `agent_config`; the logic is in `fuzz/checks/agent_config.rs`, which the regression tests share.

#[path = "../checks/agent_config.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
