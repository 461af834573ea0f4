//! Workload renewal throughput: lanyard-ca's `POST /workload/v1/renew` (mTLS with the client's
//! current workload certificate, durable intent + certificate records in SQLite) against Debian's
//! `cfssl serve` `POST /api/v1/cfssl/sign` in the same run, with the same clients, the same
//! concurrency and the same pre-generated CSRs (fresh P-256 keys naming each client's SPIFFE ID).
//! Every client holds one keep-alive HTTP/1.1 connection for the whole run.
//!
//! cfssl runs twice: as the issue describes it (plain HTTP, no certificate database: nothing
//! durable) and like for like (HTTPS with mutual TLS against the Lanyard root, every certificate
//! recorded in cfssl's SQLite certdb in WAL mode with synchronous=FULL, as Lanyard's store).
//! Then the resident memory of a real `lanyard-agent` holding an identity.
//!
//! `cargo bench -p benches --bench renewal`. Needs `cfssl` (Debian package `golang-cfssl`).
//! Builds `lanyard-ca` and `lanyard-agent` in the bench's profile first (env
//! `LANYARD_BENCH_NO_BUILD=1` skips that). Env: `LANYARD_BENCH_RENEWAL_CONCURRENCY` (comma-separated
//! client counts, default 32,128), `LANYARD_BENCH_RENEWAL_SECS` (measured seconds per run, default
//! 10, after 1 s of warm-up), `LANYARD_BENCH_RENEWAL_CSRS` (pre-generated CSRs per client, 32),
//! `LANYARD_BENCH_RENEWAL_SIDES` (any of lanyard,cfssl-http,cfssl-mtls-db; default all).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::lanyard_proc::{Killed, bin, bin_dir, build_binaries, start_lanyard};
use benches::renewal_load::{Client, Stats, Target, proc_status_kb, run};
use ca::rcgen::{self, BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, SanType};
use hyper::body::Bytes;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use workload_agent::agent::enroll::{Proof, enroll, new_key_and_csr};
use workload_agent::agent::http::tls_config;

const TRUST_DOMAIN: &str = "bench.test";
/// The 2.5x target of the issue, and the agent's memory budget.
const TARGET_RATIO: f64 = 2.5;
const AGENT_RSS_TARGET_MIB: f64 = 15.0;

const LANYARD: &str = "lanyard-ca (mTLS, SQLite durable)";
const CFSSL_PLAIN: &str = "cfssl serve (HTTP, no DB)";
const CFSSL_DURABLE: &str = "cfssl serve (mTLS, SQLite certdb)";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn create_token(ca_bin: &Path, config: &Path, spiffe_id: &str) -> String {
    let out = Command::new(ca_bin)
        .arg("--config")
        .arg(config)
        .args(["token", "create", "--spiffe-id", spiffe_id])
        .env("LANYARD_LOG", "warn")
        .output()
        .expect("run lanyard-ca token create");
    assert!(out.status.success(), "token create failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8").trim().to_owned()
}

/// A client's workload identity: certificate chain (leaf, intermediate) and key.
struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
}

/// Enrolls every SPIFFE ID through the server (ACME, join-token-01), 16 at a time.
async fn enroll_all(base: &str, root: &CertificateDer<'static>, ids: &[(String, String)]) -> Vec<Identity> {
    let tls = tls_config(std::slice::from_ref(root), None).expect("tls config");
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(16) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|(id, token)| {
                let (tls, base, id, token) = (tls.clone(), base.to_owned(), id.clone(), token.clone());
                tokio::spawn(async move {
                    let (key, csr) = new_key_and_csr(&id).expect("key and CSR");
                    let pem = enroll(tls, &base, &id, &Proof::JoinToken(token), &csr, Duration::from_secs(30))
                        .await
                        .unwrap_or_else(|e| panic!("enrolling {id}: {e}"));
                    let chain: Vec<CertificateDer<'static>> =
                        CertificateDer::pem_slice_iter(&pem).collect::<Result<_, _>>().expect("PEM chain");
                    Identity { chain, key: PrivatePkcs8KeyDer::from(key) }
                })
            })
            .collect();
        for t in tasks {
            out.push(t.await.expect("enroll task"));
        }
    }
    out
}

/// `per_client` CSRs for each SPIFFE ID, each with a fresh P-256 key: (DER, PEM).
fn csr_pools(ids: &[String], per_client: usize) -> Vec<Vec<(Vec<u8>, String)>> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut pools: Vec<Vec<(Vec<u8>, String)>> = vec![Vec::new(); ids.len()];
    std::thread::scope(|s| {
        for (k, part) in pools.chunks_mut(ids.len().div_ceil(cores).max(1)).enumerate() {
            let first = k * ids.len().div_ceil(cores).max(1);
            s.spawn(move || {
                for (j, pool) in part.iter_mut().enumerate() {
                    let uri = rcgen::string::Ia5String::try_from(ids[first + j].as_str()).expect("ia5");
                    for _ in 0..per_client {
                        let key = KeyPair::generate().expect("key");
                        let mut p = CertificateParams::default();
                        p.distinguished_name = DistinguishedName::new();
                        p.subject_alt_names = vec![SanType::URI(uri.clone())];
                        let csr = p.serialize_request(&key).expect("csr");
                        pool.push((csr.der().to_vec(), csr.pem().expect("pem")));
                    }
                }
            });
        }
    });
    pools
}

/// cfssl's CA (root and P-256 intermediate, like Lanyard's), its TLS certificate, and configs.
struct CfsslFiles {
    root_der: CertificateDer<'static>,
    ca: PathBuf,
    ca_key: PathBuf,
    tls_cert: PathBuf,
    tls_key: PathBuf,
    config: PathBuf,
}

fn cfssl_files(dir: &Path) -> CfsslFiles {
    let root_key = KeyPair::generate().expect("key");
    let mut root = CertificateParams::default();
    root.distinguished_name.push(DnType::CommonName, "cfssl bench root");
    root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let root_cert = root.self_signed(&root_key).expect("root");
    let root_issuer = rcgen::Issuer::new(root, root_key);

    let int_key = KeyPair::generate().expect("key");
    let mut int = CertificateParams::default();
    int.distinguished_name.push(DnType::CommonName, "cfssl bench intermediate");
    int.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    int.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let int_cert = int.signed_by(&int_key, &root_issuer).expect("intermediate");

    let tls_key = KeyPair::generate().expect("key");
    let tls = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).expect("params");
    let tls_cert = tls.signed_by(&tls_key, &root_issuer).expect("tls cert");

    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let usages = ["signing", "digital signature", "server auth", "client auth"];
    let profile = serde_json::json!({"expiry": "1h", "usages": usages});
    CfsslFiles {
        root_der: root_cert.der().clone(),
        ca: write("cfssl-ca.pem", int_cert.pem()),
        ca_key: write("cfssl-ca-key.pem", int_key.serialize_pem()),
        tls_cert: write("cfssl-tls.pem", tls_cert.pem()),
        tls_key: write("cfssl-tls-key.pem", tls_key.serialize_pem()),
        config: write(
            "cfssl-config.json",
            serde_json::json!({"signing": {"default": profile, "profiles": {"workload": profile}}}).to_string(),
        ),
    }
}

/// cfssl's certdb schema (certdb/sqlite/migrations of cfssl 1.2, matching its INSERT).
async fn create_certdb(path: &Path) {
    use sqlx::Connection;
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let mut c = sqlx::SqliteConnection::connect(&url).await.expect("create cfssl certdb");
    sqlx::raw_sql(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE certificates (
           serial_number            blob NOT NULL,
           authority_key_identifier blob NOT NULL,
           ca_label                 blob,
           status                   blob NOT NULL,
           reason                   int,
           expiry                   timestamp,
           revoked_at               timestamp,
           pem                      blob NOT NULL,
           PRIMARY KEY(serial_number, authority_key_identifier));
         CREATE TABLE ocsp_responses (
           serial_number            blob NOT NULL,
           authority_key_identifier blob NOT NULL,
           body                     blob NOT NULL,
           expiry                   timestamp,
           PRIMARY KEY(serial_number, authority_key_identifier),
           FOREIGN KEY(serial_number, authority_key_identifier)
             REFERENCES certificates(serial_number, authority_key_identifier));",
    )
    .execute(&mut c)
    .await
    .expect("cfssl certdb schema");
    c.close().await.expect("close");
}

async fn certdb_rows(path: &Path) -> (i64, String) {
    use sqlx::Connection;
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.expect("open certdb");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM certificates").fetch_one(&mut c).await.expect("count");
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut c).await.expect("journal mode");
    (n, mode)
}

fn start_cfssl(f: &CfsslFiles, extra: &[&std::ffi::OsStr], log: &Path) -> (Killed, SocketAddr) {
    let port = free_port();
    let mut cmd = Command::new("cfssl");
    cmd.args(["serve", "-address", "127.0.0.1", "-port", &port.to_string()])
        .arg("-ca")
        .arg(&f.ca)
        .arg("-ca-key")
        .arg(&f.ca_key)
        .arg("-config")
        .arg(&f.config)
        // Warnings only: at the default level cfssl logs a line per signature, Lanyard none.
        .args(["-loglevel", "2"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"));
    let child = Killed(cmd.spawn().expect("start cfssl serve"));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "cfssl serve did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, addr)
}

/// The SAN URIs (or, when there are none, all SANs) of the first certificate in a PEM text.
fn describe_leaf(pem: &[u8]) -> String {
    use x509_parser::extensions::GeneralName;
    let Ok((_, p)) = x509_parser::pem::parse_x509_pem(pem) else { return "no PEM certificate".into() };
    let Ok(cert) = p.parse_x509() else { return "the certificate does not parse".into() };
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|s| s.value.general_names.iter().map(|n| n.to_string()).collect())
        .unwrap_or_default();
    let uris: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|n| if let GeneralName::URI(u) = n { Some((*u).to_owned()) } else { None })
                .collect()
        })
        .unwrap_or_default();
    let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    match uris.first() {
        Some(u) if u.starts_with(&format!("spiffe://{TRUST_DOMAIN}/client-")) => {
            format!("parses; names {u} (lifetime {life} s)")
        }
        _ if sans.is_empty() => format!("parses; NO SAN at all, the SPIFFE ID was dropped (lifetime {life} s)"),
        _ => format!("parses; no SPIFFE ID among its SANs {sans:?} (lifetime {life} s)"),
    }
}

fn check_lanyard_sample(s: &Stats) -> String {
    match &s.sample {
        Some(b) => describe_leaf(b),
        None => "no successful answer".into(),
    }
}

fn check_cfssl_sample(s: &Stats) -> String {
    let Some(b) = &s.sample else { return "no successful answer".into() };
    let v: serde_json::Value = serde_json::from_slice(b).unwrap_or_default();
    match (v["success"].as_bool(), v["result"]["certificate"].as_str()) {
        (Some(true), Some(pem)) => describe_leaf(pem.as_bytes()),
        _ => format!("unexpected answer: {}", String::from_utf8_lossy(b).chars().take(200).collect::<String>()),
    }
}

/// Starts a real `lanyard-agent`, waits for its first certificate, then 2 s more, and reads its
/// resident memory: (VmRSS, VmHWM) in KiB.
fn agent_memory(agent_bin: &Path, ca_url: &str, fingerprint: &str, token: &str, dir: &Path) -> Option<(u64, u64)> {
    let out = dir.join("agent");
    std::fs::create_dir_all(&out).expect("agent dir");
    let log = dir.join("agent.log");
    let child = Command::new(agent_bin)
        .args(["--ca-url", ca_url, "--root-fingerprint", fingerprint])
        .args(["--spiffe-id", &format!("spiffe://{TRUST_DOMAIN}/agent"), "--join-token", token])
        .arg("--out-dir")
        .arg(&out)
        .arg("--workload-api-socket")
        .arg(out.join("agent.sock"))
        .args(["--metrics-listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start lanyard-agent");
    let child = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !out.join("cert.pem").exists() {
        if Instant::now() > deadline {
            eprintln!("lanyard-agent wrote no cert.pem in 60 s: {}", std::fs::read_to_string(&log).unwrap_or_default());
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    let pid = child.0.id();
    let r = proc_status_kb(pid, "VmRSS").zip(proc_status_kb(pid, "VmHWM"));
    drop(child);
    r
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: run a quick smoke then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let concurrencies: Vec<usize> = match std::env::var("LANYARD_BENCH_RENEWAL_CONCURRENCY") {
        Ok(v) => v.split(',').filter_map(|c| c.trim().parse().ok()).filter(|c| *c > 0).collect(),
        Err(_) if quick => vec![4],
        Err(_) => vec![32, 128],
    };
    let measure = Duration::from_secs(env_usize("LANYARD_BENCH_RENEWAL_SECS", if quick { 1 } else { 10 }) as u64);
    let warmup = Duration::from_secs(1);
    let per_client = env_usize("LANYARD_BENCH_RENEWAL_CSRS", if quick { 4 } else { 32 }).max(1);
    let n_clients = concurrencies.iter().copied().max().unwrap_or(1);
    // Sides to run: any of lanyard, cfssl-http, cfssl-mtls-db (comma-separated); default all.
    let selected: Vec<&str> = match std::env::var("LANYARD_BENCH_RENEWAL_SIDES") {
        Ok(v) => [("lanyard", LANYARD), ("cfssl-http", CFSSL_PLAIN), ("cfssl-mtls-db", CFSSL_DURABLE)]
            .into_iter()
            .filter(|(k, _)| v.split(',').any(|x| x.trim() == *k))
            .map(|(_, name)| name)
            .collect(),
        Err(_) => vec![LANYARD, CFSSL_PLAIN, CFSSL_DURABLE],
    };
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);

    if Command::new("cfssl").arg("version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        eprintln!(
            "renewal bench: `cfssl` is not installed; it is Debian's package golang-cfssl (apt-get install golang-cfssl)"
        );
        std::process::exit(2);
    }
    let bins = bin_dir();
    build_binaries(&bins);
    let (ca_bin, agent_bin) = (bin(&bins, "lanyard-ca"), bin(&bins, "lanyard-agent"));

    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    println!(
        "renewal benchmark: {} s per run after {} s warm-up, concurrency {concurrencies:?}, one keep-alive HTTP/1.1 \
         connection per client, {per_client} pre-generated P-256 CSRs per client, {cores} cores shared by servers and clients",
        measure.as_secs(),
        warmup.as_secs()
    );

    // Lanyard: a fresh CA, then every client enrolled through the server with a join token.
    // Each client renews with the same certificate over and over, which the lineage rule allows
    // only as a lost-response retry inside `renewal_retry_window` (each renewal then replaces the
    // previous one): the window is opened to its maximum so the runs stay inside it.
    let data = d.join("lanyard");
    let config = d.join("lanyard.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[policy]\ntrust_domain = \"{TRUST_DOMAIN}\"\nrenewal_retry_window = \"1h\"\n[policy.workload]\ndefault = \"1h\"\nmax = \"24h\"\n\
             [acme.rate_limits]\nrequests_per_ip = {{ burst = 100000000, period = \"1s\" }}\nnew_accounts_per_ip = {{ burst = 100000000, period = \"1s\" }}\n",
            data.display()
        ),
    )
    .expect("config");
    let pass = ca::Passphrase::random().expect("passphrase").expose().to_owned();
    let (lanyard, lanyard_addr) = start_lanyard(&ca_bin, &config, &pass, &d.join("lanyard-ca.log"));
    let lanyard_pid = lanyard.0.id();
    println!("setup: lanyard-ca listening on {lanyard_addr} (pid {lanyard_pid})");
    let root_der = CertificateDer::from_pem_file(data.join("root.pem")).expect("root.pem");
    let fingerprint = ca::sha256_fingerprint(&root_der);
    let base = format!("https://127.0.0.1:{}", lanyard_addr.port());

    let t = Instant::now();
    let ids: Vec<String> = (0..n_clients).map(|i| format!("spiffe://{TRUST_DOMAIN}/client-{i}")).collect();
    let tokens: Vec<(String, String)> = ids.iter().map(|id| (id.clone(), create_token(&ca_bin, &config, id))).collect();
    let identities = rt.block_on(enroll_all(&base, &root_der, &tokens));
    println!(
        "setup: {n_clients} clients enrolled through lanyard-ca (join tokens, ACME) in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    // The agent's memory, measured before the load (it is idle during it anyway).
    let agent_token = create_token(&ca_bin, &config, &format!("spiffe://{TRUST_DOMAIN}/agent"));
    let agent = agent_memory(&agent_bin, &base, &fingerprint, &agent_token, d);
    match agent {
        Some((rss, hwm)) => println!(
            "lanyard-agent resident memory 2 s after its first certificate: VmRSS {:.1} MiB, VmHWM {:.1} MiB (target <= {AGENT_RSS_TARGET_MIB} MB)",
            mib(rss),
            mib(hwm)
        ),
        None => println!("lanyard-agent resident memory: not measured (see above)"),
    }

    let t = Instant::now();
    let pools = csr_pools(&ids, per_client);
    println!("setup: {} CSRs generated in {:.1}s (not measured)", n_clients * per_client, t.elapsed().as_secs_f64());

    // cfssl: plain HTTP without a database, and HTTPS + mutual TLS with its SQLite certdb.
    let files = cfssl_files(d);
    let certdb = d.join("cfssl-certs.db");
    rt.block_on(create_certdb(&certdb));
    let db_config = d.join("cfssl-db.json");
    std::fs::write(
        &db_config,
        serde_json::json!({"driver": "sqlite3",
            "data_source": format!("{}?_journal_mode=WAL&_synchronous=FULL&_busy_timeout=10000", certdb.display())})
        .to_string(),
    )
    .expect("db config");
    let (cfssl_plain, plain_addr) = start_cfssl(&files, &[], &d.join("cfssl-plain.log"));
    let lanyard_root = data.join("root.pem");
    let durable_args: Vec<&std::ffi::OsStr> = vec![
        "-db-config".as_ref(),
        db_config.as_os_str(),
        "-tls-cert".as_ref(),
        files.tls_cert.as_os_str(),
        "-tls-key".as_ref(),
        files.tls_key.as_os_str(),
        "-mutual-tls-ca".as_ref(),
        lanyard_root.as_os_str(),
    ];
    let (cfssl_durable, durable_addr) = start_cfssl(&files, &durable_args, &d.join("cfssl-durable.log"));

    // The same clients, CSRs and TLS identities for every server.
    let roots = [root_der.clone(), files.root_der.clone()];
    let mtls: Vec<Arc<rustls::ClientConfig>> = identities
        .iter()
        .map(|id| {
            tls_config(&roots, Some((id.chain.clone(), PrivateKeyDer::Pkcs8(id.key.clone_key())))).expect("mTLS config")
        })
        .collect();
    let der_bodies: Vec<Arc<Vec<Bytes>>> =
        pools.iter().map(|p| Arc::new(p.iter().map(|(der, _)| Bytes::from(der.clone())).collect())).collect();
    let json_bodies: Vec<Arc<Vec<Bytes>>> = pools
        .iter()
        .map(|p| {
            Arc::new(
                p.iter()
                    .map(|(_, pem)| {
                        Bytes::from(serde_json::json!({"certificate_request": pem, "profile": "workload"}).to_string())
                    })
                    .collect(),
            )
        })
        .collect();
    let ip = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let lanyard_target = Arc::new(Target {
        addr: lanyard_addr,
        tls_name: Some(ip.clone()),
        path: "/workload/v1/renew".into(),
        content_type: "application/pkcs10",
        host: lanyard_addr.to_string(),
    });
    let sign = |addr: SocketAddr, tls: bool| {
        Arc::new(Target {
            addr,
            tls_name: tls.then(|| ip.clone()),
            path: "/api/v1/cfssl/sign".into(),
            content_type: "application/json",
            host: addr.to_string(),
        })
    };
    let (plain_target, durable_target) = (sign(plain_addr, false), sign(durable_addr, true));
    let clients = |bodies: &[Arc<Vec<Bytes>>], tls: bool, c: usize| -> Vec<Client> {
        (0..c).map(|i| Client { tls: tls.then(|| mtls[i].clone()), bodies: bodies[i].clone() }).collect()
    };

    // (name, target, bodies, TLS, server pid) for each side selected.
    let all_sides = [
        (LANYARD, lanyard_target.clone(), &der_bodies, true, lanyard_pid),
        (CFSSL_PLAIN, plain_target, &json_bodies, false, cfssl_plain.0.id()),
        (CFSSL_DURABLE, durable_target, &json_bodies, true, cfssl_durable.0.id()),
    ];
    let sides: Vec<_> = all_sides.iter().filter(|s| selected.contains(&s.0)).collect();
    println!();
    let mut results: Vec<(usize, &str, Stats)> = Vec::new();
    for &c in &concurrencies {
        for (name, target, bodies, tls, pid) in sides.iter().copied() {
            let s = rt.block_on(run(target.clone(), &clients(bodies, *tls, c), warmup, measure, Some(*pid)));
            println!("{}", s.line(name, c));
            if let Some(e) = &s.first_error {
                println!("  first {name} error: {e}");
            }
            if s.reconnects > 0 {
                println!("  {name}: {} connections had to be reopened", s.reconnects);
            }
            results.push((c, name, s));
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let find = |c: usize, name: &str| results.iter().find(|r| r.0 == c && r.1 == name).map(|r| &r.2);

    println!();
    if let Some(c) = concurrencies.first().copied() {
        if let Some(s) = find(c, LANYARD) {
            println!("check: a lanyard-ca certificate {}", check_lanyard_sample(s));
        }
        if let Some(s) = find(c, CFSSL_PLAIN) {
            println!("check: a cfssl (HTTP) certificate {}", check_cfssl_sample(s));
        }
        if let Some(s) = find(c, CFSSL_DURABLE) {
            println!("check: a cfssl (mTLS, certdb) certificate {}", check_cfssl_sample(s));
        }
    }
    let (rows, mode) = rt.block_on(certdb_rows(&certdb));
    println!("check: cfssl certdb holds {rows} certificates (journal_mode {mode}, synchronous=FULL requested)");
    println!(
        "note: cfssl serve keeps no record without -db-config; with it, one row per certificate written synchronously \
         (Lanyard: an intent row before signing, the certificate after, group-committed)"
    );

    println!();
    println!(
        "{:<34} {:>5} {:>10} {:>9} {:>9} {:>16} {:>17}",
        "side", "conc", "certs/s", "p50 ms", "p99 ms", "server CPU/cert", "other load"
    );
    for (c, name, s) in &results {
        println!(
            "{name:<34} {c:>5} {:>10.1} {:>9.2} {:>9.2} {:>13.0} us {:>11.2} cores",
            s.per_sec(),
            s.percentile(50.0).as_secs_f64() * 1e3,
            s.percentile(99.0).as_secs_f64() * 1e3,
            s.server_us_per_cert().unwrap_or(f64::NAN),
            s.other_load()
        );
    }
    if results.iter().any(|r| r.2.other_load() > 0.2) {
        println!(
            "WARNING: other processes kept the machine busy during some runs (other load above): figures are unreliable"
        );
    }
    println!();
    for &c in &concurrencies {
        let Some(l) = find(c, LANYARD) else { continue };
        for other in [CFSSL_PLAIN, CFSSL_DURABLE] {
            let Some(o) = find(c, other) else { continue };
            let r = l.per_sec() / o.per_sec().max(1e-9);
            println!(
                "c={c:<4} ratio lanyard-ca / {:<34} {r:>5.2}x certs/s (target >= {TARGET_RATIO}x: {})",
                format!("{other}:"),
                if r >= TARGET_RATIO { "met" } else { "NOT met" }
            );
        }
    }
    match agent {
        Some((rss, hwm)) => println!(
            "lanyard-agent VmRSS {:.1} MiB, VmHWM {:.1} MiB (target <= {AGENT_RSS_TARGET_MIB} MB: {})",
            mib(rss),
            mib(hwm),
            if mib(rss) <= AGENT_RSS_TARGET_MIB { "met" } else { "NOT met" }
        ),
        None => println!("lanyard-agent memory: not measured"),
    }
    drop((cfssl_plain, cfssl_durable, lanyard));
    for (c, _, l) in results.iter().filter(|r| r.1 == LANYARD) {
        assert_eq!(l.failed, 0, "every lanyard-ca renewal succeeds (c={c})");
        assert!(l.completed > 0, "lanyard-ca renewed certificates (c={c})");
    }
}
