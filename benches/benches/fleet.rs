//! A fleet of simulated workloads against one real `lanyard-ca` on loopback.
//!
//! Every workload has its own P-256 key and certificate (enrolled through ACME with a JWT of its
//! own, `jwt-01`), long-polls `GET /workload/v1/notices` over mTLS with its current certificate
//! and its own `Lanyard-Trust-Report`, refetches the trust bundle on a jittered schedule, and
//! renews over mTLS (`POST /workload/v1/renew`, a fresh key each time) at a random moment inside
//! the window a notice gives, as `lanyard-agent` does. Workloads share the bench's process and
//! runtime, not connections: each request is its own TLS connection with its own client
//! certificate, as the agent makes them.
//!
//! Phases, each printed with its figures:
//! 1. enrollment of the fleet;
//! 2. steady state with the whole fleet long-polling: CA resident memory and CPU;
//! 3. an emergency rotation of every workload (`--window`, default 2 min): from the command to the
//!    last affected certificate renewed, with the CA's CPU sampled every second (goal: under 5
//!    minutes, the CA under 80 % of the machine);
//! 4. a canary that goes bad and rolls back by itself: a successor intermediate canaried on 5 %
//!    of the fleet (`rotate intermediate --canary-fraction 0.05`); the canaries move to it; then
//!    one workload in ten reports handshakes refused for `unknown_issuer` (peers refusing the
//!    new chain): from the first refusal to the CA's rollback, and to every canary back on the
//!    previous intermediate;
//! 5. an intermediate rotation judged by a canary that passes (5 %, 20 s soak): from the command
//!    to every live workload serving the successor (the rest renew across a 60 s rollout);
//! 6. a root rotation gated on the fleet: from `rotate root` to every live workload confirming the
//!    new bundle and the new root taking over.
//!
//! `cargo bench -p benches --bench fleet` (env `LANYARD_BENCH_FLEET_WORKLOADS`, default 10000;
//! `LANYARD_BENCH_FLEET_WAIT` notices wait in seconds, default 30;
//! `LANYARD_BENCH_FLEET_WINDOW` emergency window in seconds, default 120; `LANYARD_BENCH_NO_BUILD=1`).
//! `cargo test --benches` runs a 50-workload smoke.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use benches::lanyard_proc::{bin, bin_dir, build_binaries, start_lanyard_with_metrics};
use benches::renewal_load::{proc_cpu, proc_status_kb};
use hyper::Method;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::RwLock;
use workload_agent::agent::ca_client::parse_notice;
use workload_agent::agent::cert::chain_from_pem;
use workload_agent::agent::enroll::{Proof, enroll, new_key_and_csr};
use workload_agent::agent::http::{request_with, tls_config};

const TRUST_DOMAIN: &str = "fleet.test";
const JWT_ISSUER: &str = "https://jwt.fleet.test";
const JWT_AUDIENCE: &str = "lanyard";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One workload's identity, replaced on every renewal.
struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
}

impl Identity {
    fn tls(&self, roots: &[CertificateDer<'static>]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()));
        tls_config(roots, Some((self.chain.clone(), key)))
    }

    fn serving(&self) -> String {
        self.chain.get(1).map(|c| ca::sha256_fingerprint(c.as_ref())).unwrap_or_default()
    }
}

/// What the whole fleet shares: where the CA is, what it trusts, and counters.
struct Shared {
    base: String,
    roots: RwLock<Vec<CertificateDer<'static>>>,
    /// The bundle sequence every workload has installed (each refetch updates its own view).
    renewals: AtomicU64,
    renewal_failures: AtomicU64,
    poll_failures: AtomicU64,
    polls: AtomicU64,
    /// While set, one workload in ten reports a handshake refused for `unknown_issuer` with
    /// every report: the canary's peers that refuse the new chain.
    refusing: std::sync::atomic::AtomicBool,
}

/// An ES256 JWT signer standing in for a Kubernetes service-account issuer.
struct Jwt {
    key: EcdsaKeyPair,
}

impl Jwt {
    fn new() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
        Jwt { key: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).expect("key") }
    }

    fn jwks(&self) -> serde_json::Value {
        let p = self.key.public_key().as_ref();
        serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": "k1",
            "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..65])}]})
    }

    fn token(&self, sa: &str) -> String {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = serde_json::json!({"iss": JWT_ISSUER, "aud": [JWT_AUDIENCE],
            "sub": format!("system:serviceaccount:fleet:{sa}"), "iat": now, "nbf": now, "exp": now + 1800,
            "kubernetes.io": {"namespace": "fleet", "serviceaccount": {"name": sa, "uid": sa}}});
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": "k1"});
        let input = format!(
            "{}.{}",
            B64.encode(serde_json::to_vec(&header).expect("json")),
            B64.encode(serde_json::to_vec(&claims).expect("json"))
        );
        let sig = self.key.sign(&SystemRandom::new(), input.as_bytes()).expect("sign");
        format!("{input}.{}", B64.encode(sig))
    }
}

fn spiffe_id(i: usize) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/fleet/sa/w{i}")
}

/// Enrolls workloads `0..n`, `concurrency` at a time.
async fn enroll_fleet(shared: &Arc<Shared>, jwt: &Arc<Jwt>, n: usize, concurrency: usize) -> Vec<Identity> {
    let next = Arc::new(AtomicUsize::new(0));
    let roots = shared.roots.read().await.clone();
    let tls = tls_config(&roots, None).expect("tls");
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (next, tls, base, jwt) = (next.clone(), tls.clone(), shared.base.clone(), jwt.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return out;
                }
                let id = spiffe_id(i);
                let (key, csr) = new_key_and_csr(&id).expect("key and CSR");
                let proof = Proof::Jwt(jwt.token(&format!("w{i}")));
                let pem = enroll(tls.clone(), &base, &id, &proof, &csr, Duration::from_secs(60))
                    .await
                    .unwrap_or_else(|e| panic!("enrolling {id}: {e}"));
                out.push((i, Identity { chain: chain_from_pem(&pem).expect("chain"), key }));
            }
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await.expect("enroll task"));
    }
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, id)| id).collect()
}

/// The bundle sequence in a `/bundle.spiffe` answer.
fn bundle_sequence(body: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(body).ok()?["spiffe_sequence"].as_u64()
}

/// One workload's life: poll notices (with its trust report), refetch the bundle now and then,
/// renew inside a notice's window.
async fn live(i: usize, mut me: Identity, shared: Arc<Shared>, wait: u64, sequence: u64) {
    let mut sequence = sequence;
    let url = format!("{}/workload/v1/notices?wait={wait}", shared.base);
    let bundle_url = format!("{}/bundle.spiffe", shared.base);
    let renew_url = format!("{}/workload/v1/renew", shared.base);
    // Spread the first polls and bundle checks over the wait.
    tokio::time::sleep(Duration::from_millis((i as u64 * 7919) % (wait * 1000).max(1))).await;
    let mut next_bundle = Instant::now();
    let mut last_fetch_ms: Option<u64> = None;
    loop {
        let roots = shared.roots.read().await.clone();
        if Instant::now() >= next_bundle {
            // As the agent does on the CA's refresh hint (here 20 s, jittered).
            next_bundle = Instant::now() + Duration::from_millis(15_000 + (i as u64 * 104_729) % 10_000);
            if let Ok(tls) = tls_config(&roots, None)
                && let Ok(r) =
                    request_with(tls, Method::GET, &bundle_url, &[], Vec::new(), Duration::from_secs(30)).await
                && let Some(s) = bundle_sequence(&r.body)
            {
                sequence = sequence.max(s);
            }
        }
        let mut report =
            serde_json::json!({"bundle_sequence": sequence, "serving_issuer": me.serving(), "accepted": 1});
        if i.is_multiple_of(10) && shared.refusing.load(Ordering::Relaxed) {
            report["refused"] = serde_json::json!({"unknown_issuer": 1});
        }
        if let Some(ms) = last_fetch_ms.take() {
            report["fetch_ms"] = ms.into();
        }
        let headers = [("lanyard-trust-report", report.to_string())];
        let Ok(tls) = me.tls(&roots) else { return };
        shared.polls.fetch_add(1, Ordering::Relaxed);
        let resp = request_with(tls, Method::GET, &url, &headers, Vec::new(), Duration::from_secs(wait + 30)).await;
        let window = match resp.as_ref().map(parse_notice) {
            Ok(Ok(w)) => w,
            _ => {
                shared.poll_failures.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some((start, end)) = window else { continue };
        // Renew at a random moment inside the window, as the agent does.
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let span = (end - start).max(1);
        let at = start + (i64::try_from(i).unwrap_or(0) * 7919) % span;
        if at > now {
            tokio::time::sleep(Duration::from_secs(u64::try_from(at - now).unwrap_or(0))).await;
        }
        let started = Instant::now();
        let (key, csr) = new_key_and_csr(&spiffe_id(i)).expect("key and CSR");
        let roots = shared.roots.read().await.clone();
        let Ok(tls) = me.tls(&roots) else { return };
        let headers = [("content-type", "application/pkcs10".to_owned()), ("lanyard-trust-report", report.to_string())];
        match request_with(tls, Method::POST, &renew_url, &headers, csr, Duration::from_secs(30)).await {
            Ok(r) if r.status.is_success() => {
                me = Identity { chain: chain_from_pem(&r.body).expect("chain"), key };
                shared.renewals.fetch_add(1, Ordering::Relaxed);
                last_fetch_ms = u64::try_from(started.elapsed().as_millis()).ok();
            }
            _ => {
                shared.renewal_failures.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// `GET /metrics` of the CA.
async fn metrics(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { return String::new() };
    if s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.is_err() {
        return String::new();
    }
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok(); // a partial page reads as missing values
    buf
}

/// The sum of the samples of `series` (a name, or a name with labels) on a metrics page.
fn value(page: &str, series: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

fn rss_mib(pid: u32) -> f64 {
    proc_status_kb(pid, "VmRSS").unwrap_or(0) as f64 / 1024.0
}

/// Waits until `done(page)`, sampling the CA's CPU share of the machine every second: (elapsed,
/// mean CPU %, max CPU %) or None at `limit`.
async fn watch(
    addr: SocketAddr,
    pid: u32,
    limit: Duration,
    done: impl Fn(&str) -> bool,
) -> Option<(Duration, f64, f64)> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    let t0 = Instant::now();
    let (mut last_cpu, mut last_t) = (proc_cpu(pid), Instant::now());
    let (mut sum, mut max, mut samples) = (0.0, 0.0f64, 0u32);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (cpu, t) = (proc_cpu(pid), Instant::now());
        let share = (cpu - last_cpu).as_secs_f64() / (t - last_t).as_secs_f64() / cores * 100.0;
        (last_cpu, last_t) = (cpu, t);
        sum += share;
        max = max.max(share);
        samples += 1;
        if done(&metrics(addr).await) {
            return Some((t0.elapsed(), sum / f64::from(samples), max));
        }
        if t0.elapsed() > limit {
            return None;
        }
    }
}

fn cli(ca_bin: &Path, config: &Path, pass: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(ca_bin)
        .arg("--config")
        .arg(config)
        .args(args)
        .env("LANYARD_CA_PASSPHRASE", pass)
        .env("LANYARD_LOG", "warn")
        .output()
        .expect("run lanyard-ca");
    assert!(out.status.success(), "lanyard-ca {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Phase 5: an intermediate rotation judged by a canary: 5 % soak 20 s, then the rest of the
/// fleet is asked to renew across the rollout window; from the command to the live fleet
/// converged on the successor (the rotation's window closing as converged).
async fn good_canary_phase(ca_bin: &Path, config: &Path, pass: &str, maddr: SocketAddr, pid: u32) {
    let converged = |p: &str| value(p, "lanyard_rotations_finished_total{step=\"intermediate\",result=\"converged\"}");
    let before = converged(&metrics(maddr).await);
    let t = Instant::now();
    let out = cli(ca_bin, config, pass, &["rotate", "intermediate", "--canary-fraction", "0.05", "--soak", "20s"]);
    println!("intermediate rotation: {}", out.lines().next().unwrap_or_default());
    let done = |p: &str| converged(p) > before;
    match watch(maddr, pid, Duration::from_secs(600), done).await {
        Some((_, mean, max)) => println!(
            "intermediate rotation: canary passed its 20 s soak, the fleet renewed across the 60 s rollout and every live workload served the successor {:.1} s after the command; CA CPU mean {mean:.0} %, max {max:.0} % of the machine",
            t.elapsed().as_secs_f64()
        ),
        None => println!("intermediate rotation: NOT converged within 600 s: {}", metrics(maddr).await),
    }
}

/// Phase 4: canary on 5 % of the fleet, peers refuse, the CA rolls back by itself.
async fn canary_phase(ca_bin: &Path, config: &Path, pass: &str, shared: &Shared, maddr: SocketAddr, pid: u32) {
    let renewed0 = shared.renewals.load(Ordering::Relaxed);
    let out = cli(ca_bin, config, pass, &["rotate", "intermediate", "--canary-fraction", "0.05", "--soak", "1h"]);
    let asked: u64 = out
        .split(" canary certificates asked")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    println!("canary: {}", out.lines().next().unwrap_or_default());
    let moved = |target: u64| move |_: &str| shared.renewals.load(Ordering::Relaxed) >= renewed0 + target;
    let limit = Duration::from_secs(300);
    match watch(maddr, pid, limit, moved(asked)).await {
        Some((took, mean, max)) => println!(
            "canary: {asked} canaries (5 % of the fleet) on the successor {:.1} s after the command; CA CPU mean {mean:.0} %, max {max:.0} %",
            took.as_secs_f64()
        ),
        None => println!("canary: NOT all {asked} canaries moved within {} s", limit.as_secs()),
    }
    // Their peers refuse the new chain: one workload in ten reports a refusal with each poll.
    let renewed1 = shared.renewals.load(Ordering::Relaxed);
    let t = Instant::now();
    shared.refusing.store(true, Ordering::Relaxed);
    let rolled_back =
        |p: &str| value(p, "lanyard_rotation_canaries_total{step=\"canary\",result=\"rolled_back\"}") >= 1.0;
    match watch(maddr, pid, limit, rolled_back).await {
        Some((took, _, _)) => println!(
            "canary: peers started refusing; the CA rolled the canary back by itself {:.1} s later (notices wait bounds how soon reports arrive)",
            took.as_secs_f64()
        ),
        None => println!("canary: NOT rolled back within {} s: {}", limit.as_secs(), metrics(maddr).await),
    }
    shared.refusing.store(false, Ordering::Relaxed);
    let back = |_: &str| shared.renewals.load(Ordering::Relaxed) >= renewed1 + asked;
    match watch(maddr, pid, limit, back).await {
        Some((took, mean, max)) => println!(
            "canary: all {asked} canaries back on the previous intermediate {:.1} s after the first refusal; CA CPU mean {mean:.0} %, max {max:.0} %; {} renewal failures in all",
            t.elapsed().as_secs_f64().max(took.as_secs_f64()),
            shared.renewal_failures.load(Ordering::Relaxed)
        ),
        None => println!("canary: NOT all canaries back within {} s", limit.as_secs()),
    }
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let n = usize::try_from(env_u64("LANYARD_BENCH_FLEET_WORKLOADS", if quick { 50 } else { 10_000 })).unwrap_or(50);
    let wait = env_u64("LANYARD_BENCH_FLEET_WAIT", if quick { 5 } else { 30 });
    let window = env_u64("LANYARD_BENCH_FLEET_WINDOW", if quick { 10 } else { 120 });
    let bins = bin_dir();
    build_binaries(&bins);
    let ca_bin = bin(&bins, "lanyard-ca");
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let jwt = Arc::new(Jwt::new());
    std::fs::write(d.join("jwks.json"), jwt.jwks().to_string()).expect("jwks");
    let config = d.join("lanyard.toml");
    std::fs::write(
        &config,
        format!(
            r#"data_dir = "{data}"
metrics_listen = "127.0.0.1:0"
[listener]
max_connections = {maxconn}
[policy]
trust_domain = "{TRUST_DOMAIN}"
[policy.workload]
default = "1h"
max = "24h"
[policy.fleet]
warmup = "1s"
horizon = "{horizon}s"
[workload]
bundle_refresh_hint = "20s"
[[workload.jwt]]
issuer = "{JWT_ISSUER}"
audience = "{JWT_AUDIENCE}"
jwks_file = "{jwks}"
spiffe_id_template = "spiffe://{TRUST_DOMAIN}/ns/{{/kubernetes.io/namespace}}/sa/{{/kubernetes.io/serviceaccount/name}}"
[acme.rate_limits]
requests_per_ip = {{ burst = 100000000, period = "1s" }}
new_accounts_per_ip = {{ burst = 100000000, period = "1s" }}
new_orders_per_account = {{ burst = 100000000, period = "1s" }}
[rotation]
check_interval = "1s"
root_overlap = "5s"
[rotation.canary]
renew_spread = "10s"
rollout = "60s"
"#,
            data = d.join("data").display(),
            maxconn = n + 2048,
            horizon = wait * 4,
            jwks = d.join("jwks.json").display(),
        ),
    )
    .expect("config");
    let pass = ca::Passphrase::random().expect("passphrase").expose().to_owned();
    let (ca, addr, metrics_addr) = start_lanyard_with_metrics(&ca_bin, &config, &pass, &d.join("lanyard-ca.log"));
    let (pid, maddr) = (ca.0.id(), metrics_addr.expect("metrics address"));
    let root = CertificateDer::from_pem_file(d.join("data/root.pem")).expect("root.pem");
    let shared = Arc::new(Shared {
        base: format!("https://127.0.0.1:{}", addr.port()),
        roots: RwLock::new(vec![root]),
        renewals: AtomicU64::new(0),
        renewal_failures: AtomicU64::new(0),
        poll_failures: AtomicU64::new(0),
        polls: AtomicU64::new(0),
        refusing: std::sync::atomic::AtomicBool::new(false),
    });
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "fleet benchmark: {n} workloads, notices wait {wait} s, emergency window {window} s, {cores} cores shared by lanyard-ca (pid {pid}) and the fleet"
    );
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        // 1. Enrollment.
        let (t, cpu0) = (Instant::now(), proc_cpu(pid));
        let fleet = enroll_fleet(&shared, &jwt, n, 32).await;
        let took = t.elapsed();
        println!(
            "enrollment: {n} workloads in {:.1} s = {:.0}/s (ACME jwt-01, 32 at a time), CA CPU {:.2} ms per enrollment",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64(),
            (proc_cpu(pid) - cpu0).as_secs_f64() * 1e3 / n as f64
        );
        let sequence = {
            let roots = shared.roots.read().await.clone();
            let r = request_with(
                tls_config(&roots, None).expect("tls"),
                Method::GET,
                &format!("{}/bundle.spiffe", shared.base),
                &[],
                Vec::new(),
                Duration::from_secs(30),
            )
            .await
            .expect("bundle");
            bundle_sequence(&r.body).expect("sequence")
        };
        let rss_before = rss_mib(pid);
        for (i, me) in fleet.into_iter().enumerate() {
            tokio::spawn(live(i, me, shared.clone(), wait, sequence));
        }

        // 2. Steady state.
        let live_all = |p: &str| value(p, "lanyard_fleet_workloads{state=\"live\"}") >= n as f64;
        let Some((t, _, _)) = watch(maddr, pid, Duration::from_secs(wait * 3 + 60), live_all).await else {
            panic!("the fleet never reported in full: {}", metrics(maddr).await);
        };
        println!("steady: every workload reported within {:.1} s of starting to poll", t.as_secs_f64());
        tokio::time::sleep(Duration::from_secs(wait.min(10))).await;
        let (cpu0, t0, polls0) = (proc_cpu(pid), Instant::now(), shared.polls.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_secs(if quick { 5 } else { 30 })).await;
        let (cpu, el) = ((proc_cpu(pid) - cpu0).as_secs_f64(), t0.elapsed().as_secs_f64());
        let page = metrics(maddr).await;
        println!(
            "steady: CA resident memory {:.1} MiB (before the fleet polled: {rss_before:.1} MiB), CPU {:.1} % of one core ({:.1} % of the machine), {:.0} polls/s, {} waiting on notices",
            rss_mib(pid),
            cpu / el * 100.0,
            cpu / el * 100.0 / cores as f64,
            (shared.polls.load(Ordering::Relaxed) - polls0) as f64 / el,
            value(&page, "lanyard_notice_waiters")
        );

        // 3. Emergency rotation of every workload (their certificates are all of the first intermediate).
        let renewed0 = shared.renewals.load(Ordering::Relaxed);
        let out = cli(&ca_bin, &config, &pass, &["rotate", "intermediate", "--emergency", "--window", &format!("{window}s")]);
        println!("emergency: {}", out.lines().next().unwrap_or_default());
        let complete = |p: &str| {
            p.lines().any(|l| l.starts_with("lanyard_emergency_rotation_outstanding_certificates{") && l.ends_with(" 0"))
        };
        match watch(maddr, pid, Duration::from_secs(window + 300), complete).await {
            Some((took, mean, max)) => println!(
                "emergency: all {} affected certificates renewed {:.1} s after the command (window {window} s; goal < 300 s: {}); CA CPU mean {mean:.0} %, max {max:.0} % of the machine (goal < 80 %: {}); {} renewal failures",
                shared.renewals.load(Ordering::Relaxed) - renewed0,
                took.as_secs_f64(),
                if took < Duration::from_secs(300) { "met" } else { "NOT met" },
                if max < 80.0 { "met" } else { "NOT met" },
                shared.renewal_failures.load(Ordering::Relaxed)
            ),
            None => println!("emergency: NOT complete within {} s: {}", window + 300, metrics(maddr).await),
        }
        // 4. A canary that goes bad.
        canary_phase(&ca_bin, &config, &pass, &shared, maddr, pid).await;

        // 5. A canary that passes: the fleet rolls onto the successor until converged.
        good_canary_phase(&ca_bin, &config, &pass, maddr, pid).await;

        // 6. Root rotation gated on the fleet.
        let t = Instant::now();
        let out = cli(&ca_bin, &config, &pass, &["rotate", "root"]);
        println!("root rotation: {}", out.lines().next().unwrap_or_default());
        // Workloads trust the new root from now on as well (they fetched the bundle over TLS).
        let new_root = CertificateDer::from_pem_file(
            std::fs::read_dir(d.join("data"))
                .expect("data dir")
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| {
                    p.file_name().and_then(|f| f.to_str()).is_some_and(|f| f.starts_with("root-") && !f.contains(".key."))
                })
                .expect("new root file"),
        )
        .expect("new root");
        shared.roots.write().await.push(new_root);
        let activated = |p: &str| value(p, "lanyard_rotation_steps_total{step=\"activate_root\",result=\"success\"}") >= 1.0;
        match watch(maddr, pid, Duration::from_secs(600), activated).await {
            Some((_, mean, max)) => println!(
                "root rotation: every live workload confirmed the new bundle and the new root took over {:.1} s after `rotate root` (overlap 5 s, bundle refresh every 15-25 s); CA CPU mean {mean:.0} %, max {max:.0} % of the machine",
                t.elapsed().as_secs_f64()
            ),
            None => println!("root rotation: NOT activated within 600 s: {}", metrics(maddr).await),
        }

        let page = metrics(maddr).await;
        println!(
            "SLIs: M2 converged windows {:.0} taking {:.1} s in all; M5 refused in windows {:.0}; M8 audited {:.0}, outside chain {:.0}; poll failures {}",
            value(&page, "lanyard_rotation_converge_seconds_count"),
            value(&page, "lanyard_rotation_converge_seconds_sum"),
            value(&page, "lanyard_rotation_refused_handshakes_total"),
            value(&page, "lanyard_audit_events{chain=\"in\"}"),
            value(&page, "lanyard_audit_events{chain=\"outside\"}"),
            shared.poll_failures.load(Ordering::Relaxed)
        );
    });
    drop(ca);
}
