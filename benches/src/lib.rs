//! Shared bits of Lanyard's benchmarks: CSR workloads and figure printing.
#![forbid(unsafe_code)]

use std::time::Duration;

use ca::rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};

/// `n` distinct P-256 CSRs for `tls-server` names under `example.test`. Keys are reused across
/// CSRs (key generation is not what is measured), names and signatures differ.
pub fn tls_csrs(n: usize) -> Vec<Vec<u8>> {
    let keys: Vec<KeyPair> = (0..64).map(|_| KeyPair::generate().expect("key")).collect();
    (0..n)
        .map(|i| {
            let mut p = CertificateParams::default();
            p.distinguished_name = DistinguishedName::new();
            p.subject_alt_names = vec![SanType::DnsName(format!("host{i}.example.test").try_into().expect("ia5"))];
            p.serialize_request(&keys[i % keys.len()]).expect("csr").der().to_vec()
        })
        .collect()
}

/// Certificates per second.
pub fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// Prints one result line in a stable, grep-able format.
pub fn report(name: &str, n: usize, d: Duration) -> f64 {
    let r = rate(n, d);
    println!("{name:<44} {n:>7} certs in {:>8.3}s = {r:>10.1} certs/s", d.as_secs_f64());
    r
}
