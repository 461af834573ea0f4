//! Issuance throughput: durable (intent + certificate committed, fsync on commit) against the
//! ceiling of the same CPU work with nothing recorded.
//!
//! `cargo bench -p benches --bench issuance` (env `LANYARD_BENCH_N`: certificates per run,
//! `LANYARD_BENCH_CONCURRENCY`: comma-separated in-flight counts for the all-cores runs).
//!
//! Every run prints the process CPU time per certificate; durable minus ceiling is what recording
//! costs ("store CPU per certificate": the writer thread, the hand-offs to it and back, and the
//! encoding of what is recorded), which issue 14 bounds at 40 us.

use std::sync::Arc;
use std::time::Instant;

use benches::{Figures, cpu_time, report_figures, tls_csrs};
use ca::{AuditEvent, Authority, InitOptions, IssueRequest, Outcome, Passphrase, Policy, Profile, Store};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn authority(dir: &std::path::Path) -> Authority {
    let pass = Passphrase::random().expect("pass");
    let store = Store::open(&format!("sqlite://{}", dir.join("bench.db").display())).await.expect("store");
    let m = ca::create_ca(&InitOptions::default(), &pass).expect("ca");
    store
        .insert_issuers(
            &[&m.root, &m.intermediate],
            &[AuditEvent::now("bench", "ca.init", &m.root.id, Outcome::Success, "")],
        )
        .await
        .expect("insert");
    Authority::load(store, Policy::default(), &pass).await.expect("load")
}

fn req(csr: &[u8]) -> IssueRequest<'_> {
    IssueRequest { csr, profile: Profile::TlsServer, requester: "bench", lifetime: None, authorized: None }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: run a quick smoke then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let n = env_usize("LANYARD_BENCH_N", if quick { 200 } else { 20_000 });
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let concurrency_sweep: Vec<usize> = match std::env::var("LANYARD_BENCH_CONCURRENCY") {
        Ok(v) => v.split(',').filter_map(|c| c.trim().parse().ok()).collect(),
        Err(_) if quick => vec![64],
        Err(_) => vec![256, 1024, 4096],
    };
    println!("issuance benchmark: {n} P-256 CSRs per run, {cores} cores, SQLite (WAL, synchronous=FULL)");
    let csrs = Arc::new(tls_csrs(n));
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(cores).enable_all().build().expect("runtime");
    let auth = Arc::new(rt.block_on(authority(dir.path())));

    // Ceiling, one thread: verify CSR + policy + sign, nothing recorded.
    let (t, cpu) = (Instant::now(), cpu_time());
    for c in csrs.iter() {
        auth.measure_ceiling(&req(c)).expect("sign");
    }
    let ceil_1 = report_figures("ceiling (verify+sign), 1 thread", n, t.elapsed(), cpu);

    // Ceiling, all cores.
    let (t, cpu) = (Instant::now(), cpu_time());
    std::thread::scope(|s| {
        for k in 0..cores {
            let (auth, csrs) = (auth.clone(), csrs.clone());
            s.spawn(move || {
                for c in csrs.iter().skip(k).step_by(cores) {
                    auth.measure_ceiling(&req(c)).expect("sign");
                }
            });
        }
    });
    let ceil_all = report_figures(&format!("ceiling (verify+sign), {cores} threads"), n, t.elapsed(), cpu);

    // Durable, one at a time on a single-threaded runtime: every issuance pays its own commits.
    let single_n = n.min(2_000);
    let single = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let dir1 = tempfile::tempdir().expect("tempdir");
    let auth1 = single.block_on(authority(dir1.path()));
    let (t, cpu) = (Instant::now(), cpu_time());
    single.block_on(async {
        for c in csrs.iter().take(single_n) {
            auth1.issue(req(c)).await.expect("issue");
        }
    });
    let durable_1 = report_figures("durable issuance, 1 thread, sequential", single_n, t.elapsed(), cpu);
    store_cpu_line(durable_1, ceil_1);

    // Durable, all cores, many in flight: group commit shares each fsync across a batch. A sweep
    // over in-flight counts shows how much concurrency the group commit needs.
    let mut best: Option<Figures> = None;
    for &concurrency in &concurrency_sweep {
        let dir = tempfile::tempdir().expect("tempdir");
        let auth = Arc::new(rt.block_on(authority(dir.path())));
        let (t, cpu) = (Instant::now(), cpu_time());
        rt.block_on(async {
            let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let mut tasks = Vec::new();
            for _ in 0..concurrency {
                let (auth, csrs, next) = (auth.clone(), csrs.clone(), next.clone());
                tasks.push(tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(c) = csrs.get(i) else { break };
                        auth.issue(req(c)).await.expect("issue");
                    }
                }));
            }
            for t in tasks {
                t.await.expect("join");
            }
        });
        let r =
            report_figures(&format!("durable issuance, {cores} cores, {concurrency} in flight"), n, t.elapsed(), cpu);
        let counts = rt.block_on(auth.store().certificate_counts()).expect("counts");
        assert_eq!(usize::try_from(counts.1).ok(), Some(n), "every issued certificate is recorded");
        store_cpu_line(r, ceil_all);
        println!("{:<44} {:>6.1} % of the all-cores ceiling", "", 100.0 * r.rate / ceil_all.rate);
        if best.is_none_or(|b| r.rate > b.rate) {
            best = Some(r);
        }
    }
    println!();
    println!(
        "ceiling CPU per certificate:   {:>6.1} us (1 thread), {:.1} us (all cores)",
        ceil_1.cpu_us, ceil_all.cpu_us
    );
    println!("durable / ceiling, 1 thread:   {:>6.1} %", 100.0 * durable_1.rate / ceil_1.rate);
    if let Some(best) = best {
        println!(
            "durable / ceiling, all cores:  {:>6.1} %  (best of the sweep; target >= 70 %)",
            100.0 * best.rate / ceil_all.rate
        );
        println!(
            "store CPU per certificate: {:.1} us  (durable {:.1} - ceiling {:.1}, best run of the sweep; target <= 40 us)",
            best.cpu_us - ceil_all.cpu_us,
            best.cpu_us,
            ceil_all.cpu_us
        );
    }
}

/// What recording added to the CPU time of each certificate: the durable run's CPU per
/// certificate minus that of the ceiling with the same number of threads.
fn store_cpu_line(durable: Figures, ceiling: Figures) {
    println!("{:<44} {:>7.1} us store CPU per cert (durable - ceiling)", "", durable.cpu_us - ceiling.cpu_us);
}
