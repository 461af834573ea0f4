//! The real `lanyard-agent` binary under hostile local load (issue 13), with the soft descriptor
//! limit a systemd service commonly gets (1,024): a flood of idle and half-preface connections on
//! its Workload API socket and of idle and slow-header connections on its metrics listener. The
//! agent closes all of them, keeps its descriptors and memory bounded, does not spin or flood its
//! log, and a workload (the `spiffe` crate) still fetches its SVID during the flood while a stream
//! opened before it stays open. With a limit far below its connection cap, accept errors (EMFILE)
//! are paused, rate-logged and recovered from.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tests::process::{Killed, Log, cpu_time, metric, open_fds, rss_bytes};
use tests::workload::{TD, WorkloadCa, wait_for_file};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_stream::StreamExt as _;

/// The agent's HTTP/2 preface deadline on the Workload API socket (its default).
const PREFACE: Duration = Duration::from_secs(10);
/// The agent's metrics listener header deadline (its default).
const HEADER: Duration = Duration::from_secs(10);

struct RunningAgent {
    _guard: Killed,
    pid: u32,
    log: Log,
    socket: PathBuf,
    metrics: SocketAddr,
    _dir: tempfile::TempDir,
}

/// Enrolls `name` with a join token and starts `lanyard-agent` for it under
/// `sh -c 'ulimit -n N; exec ...'`, logging at warn (what a production agent logs by default
/// besides its renewals).
async fn start_agent(ca: &WorkloadCa, name: &str, nofile: u32) -> RunningAgent {
    let dir = tempfile::tempdir().expect("tmp");
    let id = format!("spiffe://{TD}/{name}");
    let token = ca.token(&id, &[]).expect("token");
    std::fs::write(dir.path().join("token"), &token).expect("token file");
    let socket = dir.path().join("agent.sock");
    let out = dir.path().join("out");
    let cfg = format!(
        r#"ca_url = "{url}"
root_fingerprint = "{fp}"
spiffe_id = "{id}"
workload_api_socket = "{socket}"
metrics_listen = "127.0.0.1:0"
[attestation]
join_token_file = "{tokfile}"
[output]
key_file = "{out}/key.pem"
cert_file = "{out}/cert.pem"
bundle_file = "{out}/bundle.pem"
"#,
        url = ca.url(),
        fp = ca.fingerprint().expect("fp"),
        socket = socket.display(),
        tokfile = dir.path().join("token").display(),
        out = out.display(),
    );
    std::fs::write(dir.path().join("agent.toml"), cfg).expect("config");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
        .arg(tests::bin("lanyard-agent"))
        .arg("--config")
        .arg(dir.path().join("agent.toml"))
        .env("LANYARD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lanyard-agent");
    let log = Log::collect(&mut child);
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("metrics line");
    let metrics = line
        .trim()
        .strip_prefix("lanyard-agent: metrics on http://")
        .and_then(|a| a.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no metrics address in {line:?}; log:\n{}", log.text()))
        .parse()
        .expect("metrics address");
    let pid = child.id();
    let guard = Killed(child);
    wait_for_file(&socket, Duration::from_secs(30)).await.expect("Workload API socket");
    RunningAgent { _guard: guard, pid, log, socket, metrics, _dir: dir }
}

async fn fetch_svid(socket: &Path) -> Result<String, String> {
    let client = spiffe::WorkloadApiClient::connect_to(format!("unix:{}", socket.display()))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let svid = client.fetch_x509_svid().await.map_err(|e| format!("fetch: {e}"))?;
    Ok(svid.spiffe_id().to_string())
}

/// Fetches the SVID, retried every 100 ms until it works; how long it took from `since`.
async fn fetch_within(socket: &Path, name: &str, within: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(3), fetch_svid(socket)).await {
            Ok(Ok(id)) => {
                assert_eq!(id, format!("spiffe://{TD}/{name}"));
                return t0.elapsed();
            }
            other => assert!(t0.elapsed() < within, "no SVID within {within:?}: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn scrape(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.map_err(|e| e.to_string())?;
    let mut page = String::new();
    s.read_to_string(&mut page).await.map_err(|e| e.to_string())?;
    if page.starts_with("HTTP/1.1 200") { Ok(page) } else { Err(format!("not a metrics page: {page:.80}")) }
}

/// Connects, retrying while the listen backlog is full (a busy accept loop).
async fn connect_unix(path: &Path) -> Option<UnixStream> {
    for _ in 0..200 {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(1), UnixStream::connect(path)).await {
            return Some(s);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// Reads until the peer closes; how long that took from `since`, or None past `limit`.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    since: Instant,
    limit: Duration,
) -> Option<Duration> {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::from_std(since + limit);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(since.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Samples the agent's open descriptors every 50 ms until dropped; the maximum seen.
fn watch_fds(pid: u32) -> (Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let max = Arc::new(AtomicUsize::new(0));
    let m = max.clone();
    let task = tokio::spawn(async move {
        loop {
            m.fetch_max(open_fds(pid), Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    (max, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_under_a_1024_descriptor_limit_survives_a_local_connection_flood() {
    let ca = WorkloadCa::start().expect("CA");
    let agent = start_agent(&ca, "flooded", 1024).await;
    fetch_within(&agent.socket, "flooded", Duration::from_secs(30)).await;
    // A workload that connected before the flood and streams its SVIDs.
    let client = spiffe::WorkloadApiClient::connect_to(format!("unix:{}", agent.socket.display())).await.expect("c");
    let mut early = client.stream_x509_svids().await.expect("stream");
    tokio::time::timeout(Duration::from_secs(5), early.next())
        .await
        .expect("first message")
        .expect("open")
        .expect("svid");

    let (fds_before, rss_before, cpu_before, log_before) =
        (open_fds(agent.pid), rss_bytes(agent.pid), cpu_time(agent.pid), agent.log.len());
    let (max_fds, sampler) = watch_fds(agent.pid);
    let t0 = Instant::now();

    // The flood: 1,100 idle and 20 half-preface connections on the socket, 300 idle and 20
    // slow-header connections on the metrics listener.
    let mut unix = Vec::new();
    let mut unix_failed = 0;
    for i in 0..1120 {
        match connect_unix(&agent.socket).await {
            Some(mut s) => {
                if i % 56 == 0 {
                    s.write_all(&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..12]).await.ok();
                }
                unix.push((Instant::now(), s));
            }
            None => unix_failed += 1,
        }
    }
    let mut tcp = Vec::new();
    for i in 0..320 {
        if let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(agent.metrics)).await {
            if i % 16 == 0 {
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").await.ok();
            }
            tcp.push((Instant::now(), s));
        }
    }
    let flooded_in = t0.elapsed();

    // A workload fetches its SVID in the middle of it.
    let fetch_during = fetch_within(&agent.socket, "flooded", Duration::from_secs(5)).await;
    let fetched_at = t0.elapsed();

    // Every flood connection is closed by the agent: evicted, refused, or at its deadline.
    let mut unix_closed = Vec::new();
    for (t, mut s) in unix {
        unix_closed.push(closed_within(&mut s, t, PREFACE + Duration::from_secs(5)).await);
    }
    let mut tcp_closed = Vec::new();
    for (t, mut s) in tcp {
        tcp_closed.push(closed_within(&mut s, t, HEADER + Duration::from_secs(5)).await);
    }
    let all_closed = t0.elapsed();
    let scrape_at = Instant::now();
    let page = loop {
        match scrape(agent.metrics).await {
            Ok(p) => break p,
            Err(e) => assert!(scrape_at.elapsed() < Duration::from_secs(5), "metrics after the flood: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let cpu = cpu_time(agent.pid) - cpu_before;
    let window = t0.elapsed();
    sampler.abort();
    let (max_fds, rss_after, log_growth) =
        (max_fds.load(Ordering::Relaxed), rss_bytes(agent.pid), agent.log.len() - log_before);
    let fetch_after = fetch_within(&agent.socket, "flooded", Duration::from_secs(5)).await;
    let early_open = match tokio::time::timeout(Duration::from_millis(300), early.next()).await {
        Err(_) | Ok(Some(Ok(_))) => true,
        Ok(_) => false,
    };

    let closed_unix = unix_closed.iter().flatten().count();
    let closed_tcp = tcp_closed.iter().flatten().count();
    let slowest_unix = unix_closed.iter().flatten().max().copied().unwrap_or_default();
    let slowest_tcp = tcp_closed.iter().flatten().max().copied().unwrap_or_default();
    let api = |o: &str| metric(&page, &format!("lanyard_agent_workload_api_connections_total{{outcome=\"{o}\"}}"));
    println!(
        "agent flood (RLIMIT_NOFILE 1024): {} socket connections opened in {:.2} s ({unix_failed} could not \
         connect), {} metrics connections; SVID fetched {:.3} s (at {:.2} s into the flood); closed by the agent: \
         {closed_unix}/{} socket (slowest {:.2} s), {closed_tcp}/{} metrics (slowest {:.2} s), all after {:.2} s; \
         socket outcomes: accepted {}, evicted {}, preface timeouts {}, refused {}, accept errors {}; metrics \
         refused {}; agent descriptors {fds_before} -> max {max_fds}; RSS {:.1} -> {:.1} MB; CPU {:?} over {:.1} s; \
         log +{log_growth} bytes; SVID after the flood in {:.3} s; pre-flood stream open: {early_open}",
        unix_closed.len(),
        flooded_in.as_secs_f64(),
        tcp_closed.len(),
        fetch_during.as_secs_f64(),
        fetched_at.as_secs_f64(),
        unix_closed.len(),
        slowest_unix.as_secs_f64(),
        tcp_closed.len(),
        slowest_tcp.as_secs_f64(),
        all_closed.as_secs_f64(),
        api("accepted"),
        api("evicted"),
        api("preface_timeout"),
        api("refused"),
        api("accept_error"),
        metric(&page, "lanyard_agent_metrics_connections_refused_total"),
        rss_before as f64 / 1e6,
        rss_after as f64 / 1e6,
        cpu,
        window.as_secs_f64(),
        fetch_after.as_secs_f64(),
    );
    assert!(unix_closed.len() >= 1100, "the flood reached the socket: {} connections", unix_closed.len());
    assert_eq!(closed_unix, unix_closed.len(), "every socket flood connection was closed by the agent");
    assert_eq!(closed_tcp, tcp_closed.len(), "every metrics flood connection was closed by the agent");
    assert!(fetch_during < Duration::from_secs(3), "a workload got its SVID during the flood");
    assert!(fetched_at < PREFACE, "... before any preface deadline could have freed a slot");
    assert!(max_fds <= 512 + 64 + 64, "descriptors bounded by the connection caps: {max_fds}");
    assert!(rss_after < rss_before + 64 * 1024 * 1024, "memory bounded: {rss_before} -> {rss_after}");
    assert!(cpu.as_secs_f64() < 0.25 * window.as_secs_f64(), "no hot loop: {cpu:?} over {window:?}");
    assert!(log_growth < 16 * 1024, "log grew by {log_growth} bytes:\n{}", agent.log.text());
    assert!(api("evicted") >= 1.0, "the full socket evicted silent connections");
    assert!(early_open, "the stream opened before the flood was cut");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_out_of_descriptors_backs_off_quietly_and_recovers() {
    let ca = WorkloadCa::start().expect("CA");
    // Far below the socket's connection cap (512): accept runs into EMFILE.
    let agent = start_agent(&ca, "starved", 128).await;
    fetch_within(&agent.socket, "starved", Duration::from_secs(30)).await;
    let (cpu_before, log_before) = (cpu_time(agent.pid), agent.log.len());
    let t0 = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..400 {
        if let Some(s) = connect_unix(&agent.socket).await {
            idle.push((Instant::now(), s));
        }
    }
    let opened = idle.len();
    let fetch_during = fetch_within(&agent.socket, "starved", Duration::from_secs(10)).await;
    let mut closes = Vec::new();
    for (t, mut s) in idle {
        closes.push(closed_within(&mut s, t, PREFACE + Duration::from_secs(5)).await);
    }
    let closed = closes.iter().flatten().count();
    let cpu = cpu_time(agent.pid) - cpu_before;
    let window = t0.elapsed();
    let log_growth = agent.log.len() - log_before;
    let page = scrape(agent.metrics).await.expect("metrics");
    let errors = metric(&page, "lanyard_agent_workload_api_connections_total{outcome=\"accept_error\"}");
    let text = agent.log.text();
    let lines = text.lines().filter(|l| l.contains("accept failed")).count();
    let fetch_after = fetch_within(&agent.socket, "starved", Duration::from_secs(5)).await;
    println!(
        "agent EMFILE (RLIMIT_NOFILE 128): {opened} idle socket connections; SVID fetched {:.3} s during the flood; \
         {closed}/{opened} closed by the agent; {errors} accept errors, {lines} 'accept failed' log lines; CPU \
         {cpu:?} over {:.1} s; log +{log_growth} bytes; SVID after in {:.3} s",
        fetch_during.as_secs_f64(),
        window.as_secs_f64(),
        fetch_after.as_secs_f64()
    );
    assert!(errors >= 1.0, "the descriptor limit was hit");
    assert_eq!(closed, opened, "every idle connection was closed by the agent");
    assert!(cpu.as_secs_f64() < 0.25 * window.as_secs_f64(), "no hot loop: {cpu:?} over {window:?}");
    assert!(lines as f64 <= window.as_secs_f64() + 2.0, "accept errors are logged at most once a second:\n{text}");
    assert!(log_growth < 16 * 1024, "log grew by {log_growth} bytes");
}
