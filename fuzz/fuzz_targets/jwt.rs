#![no_main]
//! Fuzz target `jwt`; the logic is in `fuzz/checks/jwt.rs`, which the regression tests share.
//! With `LANYARD_FUZZ_SEEDS=<dir>` it first writes the check's seeds into `<dir>`.

#[path = "../checks/jwt.rs"]
mod check;

libfuzzer_sys::fuzz_target!(
    init: {
        if let Some(dir) = std::env::var_os("LANYARD_FUZZ_SEEDS") {
            std::fs::create_dir_all(&dir).expect("seed directory");
            for (i, s) in check::seeds().iter().enumerate() {
                std::fs::write(std::path::Path::new(&dir).join(format!("seed-{i:02}")), s).expect("write seed");
            }
        }
    },
    |data: &[u8]| check::check(data)
);
