//! Renewal load: many clients, each holding one keep-alive HTTP/1.1 connection (TLS with its own
//! client certificate, or plain HTTP), POSTing pre-built request bodies back to back for a fixed
//! time after a warm-up. Request bodies are built before the clock starts, so what is measured is
//! the server (and the shared client), never key generation.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;

/// Longest wait for one answer before the request counts as failed and the connection is redone.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the load goes.
#[derive(Debug, Clone)]
pub struct Target {
    /// TCP address.
    pub addr: SocketAddr,
    /// TLS server name; None: plain HTTP.
    pub tls_name: Option<ServerName<'static>>,
    /// Request path.
    pub path: String,
    /// Content-Type of the request bodies.
    pub content_type: &'static str,
    /// Host header.
    pub host: String,
}

/// One client: its TLS configuration (client certificate included) and the bodies it sends, in
/// turn, cycling when the run outlasts them.
#[derive(Debug, Clone)]
pub struct Client {
    /// TLS configuration; unused for plain HTTP targets.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Request bodies.
    pub bodies: Arc<Vec<Bytes>>,
}

/// What a run measured. Only requests sent after the warm-up and answered before the end count.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Answered with 200 inside the window.
    pub completed: usize,
    /// Failed (error status, transport error, timeout) inside the window.
    pub failed: usize,
    /// Connections opened again after one broke (0 when keep-alive held throughout).
    pub reconnects: usize,
    /// The measured window.
    pub window: Duration,
    /// Latencies of the counted requests, sorted.
    pub latencies: Vec<Duration>,
    /// First error seen, at any time.
    pub first_error: Option<String>,
    /// The first successful answer body, for checking what the server issued.
    pub sample: Option<Bytes>,
    /// CPU time (user + system) of this process (the clients) inside the window.
    pub client_cpu: Duration,
    /// CPU time of the server process inside the window, when its pid was given.
    pub server_cpu: Option<Duration>,
    /// Busy CPU time of the whole machine inside the window (all processes, all cores).
    pub machine_cpu: Duration,
}

impl Stats {
    /// Certificates per second.
    pub fn per_sec(&self) -> f64 {
        self.completed as f64 / self.window.as_secs_f64().max(1e-9)
    }

    /// A latency percentile (0..=100).
    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        // p is in [0, 100], so the rounded rank lies in [0, len - 1].
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let i = ((p / 100.0) * (self.latencies.len() - 1) as f64).round() as usize;
        self.latencies[i.min(self.latencies.len() - 1)]
    }

    /// Server CPU per certificate, in microseconds.
    pub fn server_us_per_cert(&self) -> Option<f64> {
        self.server_cpu.map(|c| c.as_secs_f64() * 1e6 / self.completed.max(1) as f64)
    }

    /// Cores kept busy inside the window by processes other than this one and the server (other
    /// builds or benchmarks on a shared machine make the figures unreliable).
    pub fn other_load(&self) -> f64 {
        let ours = self.client_cpu + self.server_cpu.unwrap_or_default();
        self.machine_cpu.saturating_sub(ours).as_secs_f64() / self.window.as_secs_f64().max(1e-9)
    }

    /// One line of figures.
    pub fn line(&self, name: &str, concurrency: usize) -> String {
        let cpu = match (self.server_us_per_cert(), self.server_cpu) {
            (Some(us), Some(c)) => format!(
                "   server CPU {us:>6.0} us/cert ({:.1} s = {:.2} cores)",
                c.as_secs_f64(),
                c.as_secs_f64() / self.window.as_secs_f64().max(1e-9)
            ),
            _ => String::new(),
        };
        format!(
            "{name:<34} c={concurrency:<4} {:>7} certs in {:>5.2}s = {:>8.1} certs/s   p50 {:>7.2} ms   p99 {:>7.2} ms   failed {}{cpu}   client CPU {:>5.0} us/cert   other load {:.2} cores",
            self.completed,
            self.window.as_secs_f64(),
            self.per_sec(),
            self.percentile(50.0).as_secs_f64() * 1e3,
            self.percentile(99.0).as_secs_f64() * 1e3,
            self.failed,
            self.client_cpu.as_secs_f64() * 1e6 / self.completed.max(1) as f64,
            self.other_load(),
        )
    }
}

/// CPU time (user + system) of another process, from `/proc/<pid>/stat` (Linux).
pub fn proc_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Busy CPU time of the whole machine since boot (all cores), from `/proc/stat` (Linux; USER_HZ
/// is 100 on every Linux architecture that matters here).
pub fn machine_busy() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .map(|l| l.split_whitespace().filter_map(|v| v.parse().ok()).collect())
        .unwrap_or_default();
    // user nice system idle iowait irq softirq steal (guest time is already inside user).
    let busy: u64 = ticks.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum();
    Duration::from_millis(busy * 10)
}

/// A `/proc/<pid>/status` field in kB (`VmRSS`, `VmHWM`...).
pub fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Opens one HTTP/1.1 connection (TLS when the target has a server name).
pub async fn connect(target: &Target, client: &Client) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let tcp = tokio::net::TcpStream::connect(target.addr).await?;
    // Small requests and answers must not wait for Nagle's algorithm and delayed ACKs.
    tcp.set_nodelay(true)?;
    let sender = match (&target.tls_name, &client.tls) {
        (Some(name), Some(tls)) => {
            let tls = tokio_rustls::TlsConnector::from(tls.clone()).connect(name.clone(), tcp).await?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
            tokio::spawn(conn);
            sender
        }
        (Some(_), None) => anyhow::bail!("a TLS target needs a client TLS configuration"),
        (None, _) => {
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            sender
        }
    };
    Ok(sender)
}

#[derive(Default)]
struct Partial {
    latencies: Vec<Duration>,
    failed: usize,
    reconnects: usize,
    first_error: Option<String>,
    sample: Option<Bytes>,
}

async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    req: hyper::Request<Full<Bytes>>,
) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

async fn worker(
    target: Arc<Target>,
    client: Client,
    mut sender: Option<SendRequest<Full<Bytes>>>,
    warm_end: Instant,
    end: Instant,
) -> Partial {
    let mut p = Partial::default();
    let mut next = 0usize;
    while Instant::now() < end {
        let s = match sender.as_mut() {
            Some(s) => s,
            None => match connect(&target, &client).await {
                Ok(s) => {
                    p.reconnects += 1;
                    sender.insert(s)
                }
                Err(e) => {
                    p.first_error.get_or_insert_with(|| format!("connect: {e:#}"));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let body = client.bodies[next % client.bodies.len()].clone();
        next += 1;
        let req = hyper::Request::post(target.path.as_str())
            .header(HOST, target.host.as_str())
            .header(CONTENT_TYPE, target.content_type)
            .body(Full::new(body))
            .expect("a valid request");
        let t0 = Instant::now();
        let r = tokio::time::timeout(REQUEST_TIMEOUT, exchange(s, req)).await;
        let t1 = Instant::now();
        let counted = t0 >= warm_end && t1 <= end;
        let err = match r {
            Ok(Ok((status, body))) if status == hyper::StatusCode::OK => {
                if counted {
                    p.latencies.push(t1 - t0);
                }
                if p.sample.is_none() {
                    p.sample = Some(body);
                }
                continue;
            }
            Ok(Ok((status, body))) => {
                format!("HTTP {status}: {}", String::from_utf8_lossy(&body).chars().take(300).collect::<String>())
            }
            Ok(Err(e)) => {
                sender = None;
                format!("{e:#}")
            }
            Err(_) => {
                sender = None;
                format!("no answer within {}s", REQUEST_TIMEOUT.as_secs())
            }
        };
        if counted {
            p.failed += 1;
        }
        p.first_error.get_or_insert(err);
    }
    p
}

/// Runs every client against `target`: connects them all, then sends back to back for
/// `warmup + measure`, counting only the `measure` window. `server_pid`: the process whose CPU
/// time is reported (the server under test).
pub async fn run(
    target: Arc<Target>,
    clients: &[Client],
    warmup: Duration,
    measure: Duration,
    server_pid: Option<u32>,
) -> Stats {
    // Connect everyone first (handshakes are not what is measured), a few at a time.
    let mut senders = Vec::with_capacity(clients.len());
    let mut first_error = None;
    for chunk in clients.chunks(16) {
        let handles: Vec<_> = chunk
            .iter()
            .map(|c| {
                let (target, c) = (target.clone(), c.clone());
                tokio::spawn(async move { connect(&target, &c).await })
            })
            .collect();
        for h in handles {
            match h.await.expect("connect task") {
                Ok(s) => senders.push(Some(s)),
                Err(e) => {
                    first_error.get_or_insert_with(|| format!("connect: {e:#}"));
                    senders.push(None);
                }
            }
        }
    }
    let start = Instant::now();
    let (warm_end, end) = (start + warmup, start + warmup + measure);
    let sampler = tokio::spawn(async move {
        tokio::time::sleep_until(warm_end.into()).await;
        let a = (crate::cpu_time(), server_pid.map(proc_cpu), machine_busy());
        tokio::time::sleep_until(end.into()).await;
        let b = (crate::cpu_time(), server_pid.map(proc_cpu), machine_busy());
        (b.0.saturating_sub(a.0), b.1.zip(a.1).map(|(b, a)| b.saturating_sub(a)), b.2.saturating_sub(a.2))
    });
    let tasks: Vec<_> = clients
        .iter()
        .zip(senders)
        .map(|(c, s)| tokio::spawn(worker(target.clone(), c.clone(), s, warm_end, end)))
        .collect();
    let mut stats = Stats { window: measure, first_error, ..Stats::default() };
    for t in tasks {
        let p = t.await.expect("worker task");
        stats.latencies.extend(p.latencies);
        stats.failed += p.failed;
        stats.reconnects += p.reconnects;
        if stats.first_error.is_none() {
            stats.first_error = p.first_error;
        }
        if stats.sample.is_none() {
            stats.sample = p.sample;
        }
    }
    (stats.client_cpu, stats.server_cpu, stats.machine_cpu) = sampler.await.expect("sampler");
    stats.completed = stats.latencies.len();
    stats.latencies.sort();
    stats
}
