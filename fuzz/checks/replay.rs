//! Replays the inputs kept in `fuzz/regressions/<target>/` (crashes the fuzzers found, and
//! hand-made inputs for known bugs) and the check's hand-written seeds through a fuzz check.
//! Included by the `fuzz_regressions` tests of `ca`, `issuer-api` and `workload-agent`.
//!
//! With `LANYARD_FUZZ_SEEDS=<dir>` the seeds are also written to `<dir>/<target>/`, as the seed
//! corpus of a fuzzing run (`scripts/fuzz.sh` does this).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub(crate) fn replay(target: &str, check: fn(&[u8]), seeds: Vec<Vec<u8>>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("regression inputs {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no regression inputs in {}", dir.display());
    for f in &files {
        eprintln!("{target}: replaying {}", f.display());
        check(&std::fs::read(f).expect("read regression input"));
    }
    assert!(!seeds.is_empty(), "{target} has no seeds");
    for (i, s) in seeds.iter().enumerate() {
        eprintln!("{target}: seed {i}");
        check(s);
    }
    if let Some(out) = std::env::var_os("LANYARD_FUZZ_SEEDS") {
        let out = Path::new(&out).join(target);
        std::fs::create_dir_all(&out).expect("seed directory");
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(out.join(format!("seed-{i:02}")), s).expect("write seed");
        }
        for f in &files {
            std::fs::copy(f, out.join(f.file_name().expect("file name"))).expect("copy regression input");
        }
    }
}
