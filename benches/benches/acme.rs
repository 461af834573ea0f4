//! Complete ACME flows per second: lanyard-ca (SQLite, durable, in-process) and Debian's Pebble in
//! the same run on the same machine, both with challenges in always-valid test mode, the same
//! client (instant-acme) and the same concurrency. Then lego's wall time per issuance against each.
//!
//! `cargo bench -p benches --bench acme` (env `LANYARD_BENCH_ACME_FLOWS`, default 400;
//! `LANYARD_BENCH_ACME_CONCURRENCY`, default 16). Needs `pebble` and `lego` (apt-get install).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use benches::acme_load::{LoadStats, run};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A throwaway root and a localhost server certificate for Pebble's own TLS listener.
fn pebble_tls(dir: &Path) -> PathBuf {
    use ca::rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let root_key = KeyPair::generate().expect("key");
    let mut root = CertificateParams::new(Vec::<String>::new()).expect("params");
    root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let root_cert = root.self_signed(&root_key).expect("root");
    let issuer = ca::rcgen::Issuer::new(root, root_key);
    let key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).expect("params");
    let cert = leaf.signed_by(&key, &issuer).expect("leaf");
    std::fs::write(dir.join("pebble-cert.pem"), cert.pem()).expect("write");
    std::fs::write(dir.join("pebble-key.pem"), key.serialize_pem()).expect("write");
    let root_path = dir.join("pebble-root.pem");
    std::fs::write(&root_path, root_cert.pem()).expect("write");
    root_path
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        // Best effort in Drop: the child may have exited already.
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

fn start_pebble(dir: &Path) -> (Killed, SocketAddr) {
    let port = free_port();
    let cfg = dir.join("pebble.json");
    std::fs::write(
        &cfg,
        serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{}", free_port()),
            "certificate": dir.join("pebble-cert.pem"), "privateKey": dir.join("pebble-key.pem"),
            "httpPort": free_port(), "tlsPort": free_port(), "ocspResponderURL": "",
            "externalAccountBindingRequired": false}})
        .to_string(),
    )
    .expect("config");
    let child = Command::new("pebble")
        .arg("-config")
        .arg(&cfg)
        // Always-valid challenges, no artificial validation sleep, no deliberately rejected
        // nonces: Pebble at its fastest, as Lanyard runs here.
        .env("PEBBLE_VA_ALWAYS_VALID", "1")
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pebble (apt-get install pebble)");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "pebble did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (Killed(child), addr)
}

async fn start_lanyard(dir: &Path) -> SocketAddr {
    let toml = format!(
        "data_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\n[acme]\ninsecure_always_valid_challenges = true\n\
         [acme.rate_limits]\nrequests_per_ip = {{ burst = 100000000, period = \"1s\" }}\nnew_accounts_per_ip = {{ burst = 100000000, period = \"1s\" }}\n",
        dir.join("lanyard").display()
    );
    let cfg: issuer_api::config::Config = toml::from_str(&toml).expect("config");
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let r = issuer_api::run_server(cfg, std::future::pending(), move |a| {
            tx.send(a).ok(); // the bench stops listening once it has what it needs
        })
        .await;
        if let Err(e) = r {
            eprintln!("lanyard-ca: {e:#}");
        }
    });
    rx.await.expect("lanyard-ca listening")
}

fn lego_wall_time(directory: &str, root: &Path, dir: &Path, runs: usize) -> Option<Duration> {
    let mut total = Duration::ZERO;
    for i in 0..runs {
        let path = dir.join(format!("lego-{i}-{}", free_port()));
        let t = Instant::now();
        let out = Command::new("lego")
            .env("LEGO_CA_CERTIFICATES", root)
            .args(["--server", directory, "--email", "bench@example.test", "--accept-tos"])
            .args([
                "--domains",
                &format!("lego{i}.example.test"),
                "--http",
                "--http.port",
                &format!("127.0.0.1:{}", free_port()),
            ])
            .arg("--path")
            .arg(&path)
            .arg("run")
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!("lego against {directory} failed: {}", String::from_utf8_lossy(&out.stderr));
            return None;
        }
        total += t.elapsed();
    }
    Some(total / u32::try_from(runs).ok()?)
}

/// CPU time (user + system) of another process, from `/proc/<pid>/stat`.
fn proc_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let flows = env_usize("LANYARD_BENCH_ACME_FLOWS", if quick { 20 } else { 400 });
    // 16 in flight: Debian's Pebble 2.4 stalls (requests never answered) at 32 concurrent flows here.
    let concurrency = env_usize("LANYARD_BENCH_ACME_CONCURRENCY", if quick { 4 } else { 16 });
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    println!(
        "ACME benchmark: {flows} complete flows (account, order, challenge, finalize, download), {concurrency} in flight"
    );

    let lanyard_addr = rt.block_on(start_lanyard(d));
    let lanyard_dir = format!("https://localhost:{}/acme/directory", lanyard_addr.port());
    let lanyard_root = d.join("lanyard/root.pem");
    let pebble_root = pebble_tls(d);
    let (_pebble, pebble_addr) = start_pebble(d);
    let pebble_dir = format!("https://localhost:{}/dir", pebble_addr.port());

    let pebble_pid = _pebble.0.id();
    let (c0, w0) = (benches::cpu_time(), Instant::now());
    let lanyard: LoadStats = rt.block_on(run(&lanyard_dir, &lanyard_root, concurrency, flows));
    let lanyard_cpu = benches::cpu_time() - c0;
    println!("{}", lanyard.line("lanyard-ca (SQLite)"));
    let (c1, p1) = (benches::cpu_time(), proc_cpu(pebble_pid));
    let pebble: LoadStats = rt.block_on(run(&pebble_dir, &pebble_root, concurrency, flows));
    let (client_cpu, pebble_cpu) = (benches::cpu_time() - c1, proc_cpu(pebble_pid) - p1);
    println!("{}", pebble.line("pebble 2.4 (in memory)"));
    // The client is the same in both runs: its CPU in the Pebble run, subtracted from the
    // in-process Lanyard run, leaves Lanyard's own CPU.
    let per = |d: Duration, n: usize| d.as_secs_f64() * 1e3 / n.max(1) as f64;
    println!(
        "CPU per flow: client {:.2} ms, lanyard-ca {:.2} ms, pebble {:.2} ms ({} cores, {:.1}s of wall time measured)",
        per(client_cpu, pebble.completed),
        per(
            lanyard_cpu.saturating_sub(client_cpu.mul_f64(lanyard.completed as f64 / pebble.completed.max(1) as f64)),
            lanyard.completed
        ),
        per(pebble_cpu, pebble.completed),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        w0.elapsed().as_secs_f64()
    );
    for (name, s) in [("lanyard-ca", &lanyard), ("pebble", &pebble)] {
        if let Some(e) = &s.first_error {
            println!("  first {name} error: {e}");
        }
    }
    if pebble.failed > 0 || pebble.not_started > 0 {
        println!(
            "ratio lanyard-ca / pebble: none (pebble completed {} of {flows} flows; its in-memory store deadlocks under \
             concurrent flows, see acme_load::run)",
            pebble.completed
        );
    } else {
        println!(
            "ratio lanyard-ca / pebble: {:.2}x orders/s (target >= 5x)",
            lanyard.orders_per_sec() / pebble.orders_per_sec()
        );
    }

    let runs = if quick { 1 } else { 5 };
    let lt = lego_wall_time(&lanyard_dir, &lanyard_root, d, runs);
    let pt = lego_wall_time(&pebble_dir, &pebble_root, d, runs);
    let ms =
        |t: Option<Duration>| t.map(|t| format!("{:.0} ms", t.as_secs_f64() * 1e3)).unwrap_or_else(|| "failed".into());
    println!("lego wall time per issuance ({runs} runs): lanyard-ca {}, pebble {}", ms(lt), ms(pt));
    assert_eq!(lanyard.failed, 0, "every lanyard-ca flow completes");
}
