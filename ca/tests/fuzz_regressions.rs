//! The fuzz targets of `ca` (`fuzz/fuzz_targets/{csr,pem_der}.rs`) replayed as ordinary tests:
//! every input in `fuzz/regressions/<target>/` and the checks' seeds.

#[path = "../../fuzz/checks/replay.rs"]
mod replay;

#[path = "../../fuzz/checks/csr.rs"]
mod csr;
#[path = "../../fuzz/checks/pem_der.rs"]
mod pem_der;

#[test]
fn csr_regressions() {
    replay::replay("csr", csr::check, csr::seeds());
}

#[test]
fn pem_der_regressions() {
    replay::replay("pem_der", pem_der::check, pem_der::seeds());
}
