//! Shared bits of Lanyard's benchmarks: CSR workloads and figure printing.
#![forbid(unsafe_code)]

pub mod acme_load;
pub mod lanyard_proc;
pub mod renewal_load;

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

/// CPU time (user + system) this process has used so far, from `/proc/self/stat` (Linux).
pub fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Throughput and CPU cost of one run.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    /// Certificates per second (wall clock).
    pub rate: f64,
    /// Process CPU time (user + system, every thread) per certificate, in microseconds.
    pub cpu_us: f64,
}

/// Like [`report`], adding the CPU time per certificate spent since `cpu_start`.
pub fn report_cpu(name: &str, n: usize, d: Duration, cpu_start: Duration) -> f64 {
    report_figures(name, n, d, cpu_start).rate
}

/// Like [`report_cpu`], returning the CPU time per certificate as well, so that a benchmark can
/// subtract one mode's CPU from another's (the store's share of durable issuance).
pub fn report_figures(name: &str, n: usize, d: Duration, cpu_start: Duration) -> Figures {
    let rate = report(name, n, d);
    let cpu = cpu_time().saturating_sub(cpu_start);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let cpu_us = cpu.as_secs_f64() * 1e6 / n as f64;
    println!(
        "{:<44} {cpu_us:>7.1} us CPU per cert, {:.0} % of {cores} cores busy",
        "",
        100.0 * cpu.as_secs_f64() / d.as_secs_f64() / cores as f64,
    );
    Figures { rate, cpu_us }
}
