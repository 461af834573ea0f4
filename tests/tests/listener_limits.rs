//! `lanyard-ca` under hostile connection load (issue 13): floods of idle TCP connections and
//! slow-header TLS clients are closed within their deadlines, over-the-limit connections are
//! refused and counted, legitimate requests and mTLS renewal still get through, and running out of
//! file descriptors neither spins the CPU nor floods the log.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use tests::process::{Killed, Log, cpu_time, metric};
use tests::workload::{TD, WorkloadCa};
use tests::{bin, https_get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A TLS client trusting `root_pem`.
fn tls_connector(root_pem: &str) -> tokio_rustls::TlsConnector {
    tls_connector_alpn(root_pem, &[])
}

/// A TLS client trusting `root_pem` that offers `alpn`.
fn tls_connector_alpn(root_pem: &str, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in <CertificateDer<'static> as rustls_pki_types::pem::PemObject>::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(c.expect("pem")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut config = config;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Reads until the server closes (EOF or reset); how long that took, or `None` past `limit`.
async fn wait_closed<S: tokio::io::AsyncRead + Unpin>(s: &mut S, since: Instant, limit: Duration) -> Option<Duration> {
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::from_std(since + limit);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(since.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// GET /acme/directory, retried every 100 ms until it answers 200; (latency, attempts).
async fn legit_request(addr: SocketAddr, root_pem: &str, within: Duration) -> (Duration, u32) {
    let t0 = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            https_get(addr, "localhost", "/acme/directory", Some(root_pem)),
        )
        .await;
        if let Ok(Ok(resp)) = r {
            assert_eq!(resp.status, 200);
            assert!(resp.json()["newOrder"].is_string(), "an ACME directory");
            return (t0.elapsed(), attempts);
        }
        assert!(t0.elapsed() < within, "no legitimate request got through within {within:?} ({attempts} attempts)");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Default)]
struct FloodStats {
    opened: AtomicU64,
    connect_failures: AtomicU64,
    closed_by_server: AtomicU64,
    closed_fast: AtomicU64,
    not_closed_in_time: AtomicU64,
    max_close_ms: AtomicU64,
}

const HANDSHAKE: Duration = Duration::from_secs(2);
const HEADER: Duration = Duration::from_secs(2);
const MAX_CONNECTIONS: usize = 64;
const IDLE: Duration = Duration::from_secs(5);
/// Idle TCP connections kept open (and reopened) at once during the flood: 5x the limit.
const FLOODERS: u64 = 5 * MAX_CONNECTIONS as u64;
/// Longest a flood connection may stay open, from connect to close: the handshake deadline plus a
/// margin for time in the kernel's accept queue when the machine is busy (CI runs builds beside).
const FLOOD_CLOSE_LIMIT: Duration = Duration::from_secs(6);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_is_bounded_and_legitimate_clients_and_renewal_get_through() {
    let limits = format!(
        "[listener]\nmax_connections = {MAX_CONNECTIONS}\nhandshake_timeout = \"{}s\"\nheader_read_timeout = \
         \"{}s\"\nidle_timeout = \"{}s\"\n",
        HANDSHAKE.as_secs(),
        HEADER.as_secs(),
        IDLE.as_secs()
    );
    let mut ca = WorkloadCa::start_with("", &limits).expect("start CA");
    let process = ca.process.as_mut().expect("running");
    let pid = process.child.id();
    let log = Log::collect(&mut process.child);
    let addr = ca.addr;
    let root_pem = std::fs::read_to_string(ca.dir.path().join("data/root.pem")).expect("root.pem");

    // An agent that renews over mTLS every ~6 s (10 % of its 60 s certificates).
    let agents = ca.enrolled_agents(&[&format!("spiffe://{TD}/flood")], 0.1).await.expect("enrolled");
    let agent_metrics = agents[0].metrics();
    legit_request(addr, &root_pem, Duration::from_secs(5)).await;
    let before = ca.metrics().await.expect("metrics");
    let refused_before = metric(&before, "lanyard_listener_connections_refused_total{listener=\"https\"}");
    let renewals_before = agent_metrics.renewals_ok.get();
    let cpu_before = cpu_time(pid);
    let log_before = log.len();
    let t_flood = Instant::now();

    // A keep-alive HTTP/1 client that goes quiet after one request: closed by the header deadline.
    let name = || ServerName::try_from("localhost").expect("name");
    let mut keep_alive =
        tls_connector(&root_pem).connect(name(), TcpStream::connect(addr).await.expect("tcp")).await.expect("tls");
    keep_alive.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").await.expect("request");
    let mut first = [0u8; 12];
    keep_alive.read_exact(&mut first).await.expect("response");
    assert_eq!(&first, b"HTTP/1.1 200");
    let keep_alive_task =
        tokio::spawn(
            async move { wait_closed(&mut keep_alive, Instant::now(), HEADER + Duration::from_secs(3)).await },
        );
    // An HTTP/2 client (ALPN h2) that never sends its preface: closed by the idle deadline.
    let h2 = tls_connector_alpn(&root_pem, &[b"h2"]);
    let mut silent_h2 = h2.connect(name(), TcpStream::connect(addr).await.expect("tcp")).await.expect("tls");
    assert_eq!(silent_h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let h2_task =
        tokio::spawn(async move { wait_closed(&mut silent_h2, Instant::now(), IDLE + Duration::from_secs(4)).await });

    // Slow-header clients: complete the TLS handshake, send half a request line, stall. Opened
    // until the server refuses one, so every slot is past its handshake (newcomers are refused).
    let connector = tls_connector(&root_pem);
    let mut slow = Vec::new();
    let mut slow_refused = 0;
    for _ in 0..MAX_CONNECTIONS + 8 {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from("localhost").expect("name");
        match tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp)).await {
            Ok(Ok(mut tls)) => {
                tls.write_all(b"GET /acme/directory HTT").await.expect("partial request line");
                tls.flush().await.expect("flush");
                slow.push((Instant::now(), tls));
            }
            _ => slow_refused += 1,
        }
        // Let the server see the handshake finish before the next one arrives.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let slow_opened = slow.len();
    let slow_tasks: Vec<_> = slow
        .into_iter()
        .map(|(t, mut tls)| {
            tokio::spawn(async move { wait_closed(&mut tls, t, HEADER + Duration::from_secs(3)).await })
        })
        .collect();

    // Idle TCP connections that never send a byte: FLOODERS of them (started over 1 s), each
    // reopened 1 s after the server closes it, for 12 s. The rate (a few hundred per second) stays
    // below what the kernel's accept queue absorbs on a busy 2-core machine: beyond it, clients
    // sit in SYN-ACK retransmission limbo that no server-side deadline can shorten.
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(FloodStats::default());
    let mut flooders = Vec::new();
    for i in 0..FLOODERS {
        let (stop, stats) = (stop.clone(), stats.clone());
        flooders.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 1000 / FLOODERS)).await;
            let mut held = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let mut tcp = match tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr)).await {
                    Ok(Ok(s)) => s,
                    _ => {
                        stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                };
                stats.opened.fetch_add(1, Ordering::Relaxed);
                match wait_closed(&mut tcp, t, FLOOD_CLOSE_LIMIT).await {
                    Some(d) => {
                        stats.closed_by_server.fetch_add(1, Ordering::Relaxed);
                        stats
                            .max_close_ms
                            .fetch_max(u64::try_from(d.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
                        if d < Duration::from_millis(500) {
                            stats.closed_fast.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    None => {
                        stats.not_closed_in_time.fetch_add(1, Ordering::Relaxed);
                        held.push(tcp);
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }));
    }

    // Legitimate requests while the flood goes on: the first waits at most for the slow-header
    // clients' deadline; later ones get a slot by evicting a junk handshake.
    let (first_latency, first_attempts) = legit_request(addr, &root_pem, HEADER + Duration::from_secs(4)).await;
    let mut later = Vec::new();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        later.push(legit_request(addr, &root_pem, Duration::from_secs(5)).await);
    }
    // mTLS renewal through the same listener during the flood.
    let renewed = tokio::time::timeout(Duration::from_secs(12), async {
        while agent_metrics.renewals_ok.get() <= renewals_before {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        t_flood.elapsed()
    })
    .await;
    let during = ca.metrics().await.expect("metrics during the flood");
    while t_flood.elapsed() < Duration::from_secs(12) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cpu = cpu_time(pid) - cpu_before;
    let flood_secs = t_flood.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        f.await.expect("flooder");
    }
    let mut slow_closed = Vec::new();
    for t in slow_tasks {
        slow_closed.push(t.await.expect("slow client"));
    }
    let keep_alive_closed = keep_alive_task.await.expect("keep-alive client");
    let h2_closed = h2_task.await.expect("h2 client");
    let log_bytes = log.len() - log_before;
    let after = ca.metrics().await.expect("metrics after the flood");

    let series = |page: &str, name: &str| metric(page, &format!("{name}{{listener=\"https\"}}"));
    let refused = series(&after, "lanyard_listener_connections_refused_total") - refused_before;
    let evicted = series(&after, "lanyard_listener_handshakes_evicted_total");
    let timeouts = series(&after, "lanyard_listener_handshake_timeouts_total");
    let open_during = series(&during, "lanyard_listener_open_connections");
    let slow_max = slow_closed.iter().flatten().max().copied().unwrap_or_default();
    println!(
        "flood: {} idle TCP connections opened over {flood_secs:.1} s ({} connect failures), {} closed by the server \
         ({} within 500 ms, slowest {} ms, {} not closed within {} s)",
        stats.opened.load(Ordering::Relaxed),
        stats.connect_failures.load(Ordering::Relaxed),
        stats.closed_by_server.load(Ordering::Relaxed),
        stats.closed_fast.load(Ordering::Relaxed),
        stats.max_close_ms.load(Ordering::Relaxed),
        stats.not_closed_in_time.load(Ordering::Relaxed),
        FLOOD_CLOSE_LIMIT.as_secs(),
    );
    println!(
        "slow-header TLS clients: {slow_opened} held a slot, {slow_refused} refused; {} closed by the server, slowest \
         after {slow_max:?}",
        slow_closed.iter().flatten().count()
    );
    println!(
        "server: refused {refused}, evicted handshakes {evicted}, handshake timeouts {timeouts}, open connections \
         mid-flood {open_during}"
    );
    println!("server CPU during the flood: {cpu:?} over {flood_secs:.1} s; log: {log_bytes} bytes");
    println!(
        "legitimate GET /acme/directory: first {first_latency:?} ({first_attempts} attempts), then {:?}",
        later.iter().map(|(d, a)| format!("{d:?}/{a}")).collect::<Vec<_>>()
    );
    println!("mTLS renewal during the flood: {renewed:?} after the flood began");
    println!(
        "quiet HTTP/1 keep-alive connection closed after {keep_alive_closed:?}; silent HTTP/2 connection closed after \
         {h2_closed:?}"
    );
    let keep_alive_closed = keep_alive_closed.expect("the keep-alive connection is closed");
    assert!(keep_alive_closed >= HEADER - Duration::from_millis(500), "kept alive until the header deadline");
    assert!(keep_alive_closed <= HEADER + Duration::from_millis(1500), "{keep_alive_closed:?}");
    let h2_closed = h2_closed.expect("the silent HTTP/2 connection is closed");
    assert!(
        h2_closed >= IDLE - Duration::from_millis(500) && h2_closed <= IDLE + Duration::from_millis(2500),
        "{h2_closed:?}"
    );

    assert!(slow_refused >= 1 && refused >= 1.0, "over-the-limit connections are refused and counted");
    assert!(slow_closed.iter().all(Option::is_some), "every slow-header client is closed: {slow_closed:?}");
    assert!(slow_max <= HEADER + Duration::from_millis(1500), "slow-header clients closed after {slow_max:?}");
    assert_eq!(stats.not_closed_in_time.load(Ordering::Relaxed), 0, "idle connections are all closed in time");
    assert!(stats.opened.load(Ordering::Relaxed) >= 5 * FLOODERS);
    assert!(evicted >= 1.0, "junk handshakes were evicted for newcomers");
    assert!(open_during <= MAX_CONNECTIONS as f64, "never more than max_connections open");
    assert!(first_latency <= HEADER + Duration::from_secs(3));
    assert!(later.iter().all(|(d, _)| *d < Duration::from_secs(3)), "{later:?}");
    assert!(renewed.is_ok(), "the agent renewed over mTLS during the flood");
    assert!(cpu.as_secs_f64() < 0.5 * flood_secs, "server CPU {cpu:?} over {flood_secs:.1} s");
    assert!(log_bytes < 16 * 1024, "log grew by {log_bytes} bytes:\n{}", log.text());
}

/// Starts `lanyard-ca serve` under `sh -c 'ulimit -n N; exec ...'` (no unsafe pre_exec needed).
fn start_with_fd_limit(config: &std::path::Path, nofile: u32) -> (Child, SocketAddr, String) {
    let script = format!("ulimit -n {nofile} && exec \"$0\" \"$@\"");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(bin("lanyard-ca"))
        .arg("--config")
        .arg(config)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("LANYARD_CA_PASSPHRASE")
        .env("LANYARD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lanyard-ca");
    let stdout = child.stdout.take().expect("stdout");
    let mut banner = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("stdout");
        banner.push_str(&line);
        banner.push('\n');
        if let Some(a) = line.strip_prefix("lanyard-ca: listening on https://") {
            return (child, a.parse().expect("address"), banner);
        }
    }
    child.kill().ok();
    child.wait().ok();
    panic!("lanyard-ca exited before listening: {banner}");
}

async fn scrape(banner: &str) -> String {
    let addr = banner
        .lines()
        .find_map(|l| l.strip_prefix("lanyard-ca: metrics on http://"))
        .and_then(|a| a.strip_suffix("/metrics"))
        .expect("metrics address");
    let mut s = TcpStream::connect(addr).await.expect("connect metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.expect("write");
    let mut page = String::new();
    s.read_to_string(&mut page).await.expect("read");
    page
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_backs_off_quietly_and_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("ca.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\nmetrics_listen = \"127.0.0.1:0\"\n[listener]\nhandshake_timeout = \"{}s\"\n",
            dir.path().join("data").display(),
            HANDSHAKE.as_secs()
        ),
    )
    .expect("config");
    // max_connections stays at its default (4096), far above the descriptor limit.
    let (mut child, addr, banner) = start_with_fd_limit(&cfg, 256);
    let log = Log::collect(&mut child);
    let pid = child.id();
    let _guard = Killed(child);
    let root_pem = std::fs::read_to_string(dir.path().join("data/root.pem")).expect("root.pem");
    legit_request(addr, &root_pem, Duration::from_secs(5)).await;

    let cpu_before = cpu_time(pid);
    let log_before = log.len();
    let t0 = Instant::now();
    // 600 idle connections against 256 descriptors: the kernel queues them, accept hits EMFILE.
    let mut idle = Vec::new();
    for _ in 0..600 {
        match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => idle.push((Instant::now(), s)),
            _ => break,
        }
    }
    let opened = idle.len();
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(t0.elapsed())).await;
    let cpu = cpu_time(pid) - cpu_before;
    let window = t0.elapsed().as_secs_f64();
    let log_window = log.len() - log_before;

    // Recovery: junk is closed at its handshake deadline, queued junk is accepted and closed in
    // turn, and a legitimate client gets through.
    let (latency, attempts) = legit_request(addr, &root_pem, Duration::from_secs(25)).await;
    let recovered_after = t0.elapsed();
    let mut closes = Vec::new();
    for (t, mut s) in idle {
        closes.push(wait_closed(&mut s, t, Duration::from_secs(20)).await);
    }
    let closed = closes.iter().flatten().count();
    let page = scrape(&banner).await;
    let errors = metric(&page, "lanyard_listener_accept_errors_total{listener=\"https\"}");
    let text = log.text();
    let accept_lines = text.lines().filter(|l| l.contains("accept failed")).count();
    println!(
        "EMFILE: {opened} idle connections against RLIMIT_NOFILE 256; server CPU {cpu:?} over {window:.1} s, \
         log +{log_window} bytes, {accept_lines} 'accept failed' lines for {errors} accept errors; legitimate \
         request after {recovered_after:?} ({latency:?}, {attempts} attempts); {closed}/{opened} idle \
         connections closed by the server"
    );
    assert!(text.contains("max_connections is not below the open-file limit"), "warned at start:\n{text}");
    assert!(errors >= 1.0, "the descriptor limit was hit (accept errors counted)");
    assert!(cpu.as_secs_f64() < 0.25 * window, "server CPU {cpu:?} over {window:.1} s while out of descriptors");
    assert!(log_window < 8 * 1024, "log grew by {log_window} bytes:\n{text}");
    assert!(accept_lines as f64 <= t0.elapsed().as_secs_f64() / 10.0 + 2.0, "accept errors are rate-limited:\n{text}");
    assert_eq!(closed, opened, "every idle connection is closed by the server: {closes:?}");
}
