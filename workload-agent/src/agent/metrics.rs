//! Prometheus metrics of the agent (text exposition format 0.0.4), served on a loopback address.
//!
//! The one number an operator must be able to alert on is how close the current certificate is
//! to expiry: a renewal that silently stops shows up there long before anything breaks.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;
use tokio::time::{Duration, Instant};

/// Counters and gauges.
#[derive(Debug, Default)]
pub struct Metrics {
    /// notAfter of the current certificate (Unix seconds), 0 before the first.
    pub expiry: AtomicI64,
    /// Successful renewals (enrollments included).
    pub renewals_ok: AtomicU64,
    /// Failed renewal attempts.
    pub renewals_failed: AtomicU64,
    /// Enrollments (first certificate, or re-enrollment after a refused renewal).
    pub enrollments: AtomicU64,
    /// Time of the last successful renewal (Unix seconds).
    pub last_success: AtomicI64,
    /// `spiffe_sequence` of the trust bundle in use.
    pub bundle_sequence: AtomicU64,
    /// Failed trust bundle refreshes.
    pub bundle_refresh_failed: AtomicU64,
    /// When the agent started (Unix seconds): the revocation state's age before any success.
    pub started: AtomicI64,
    /// Time of the last successful CRL refresh (Unix seconds), 0 before the first.
    pub revocation_last_success: AtomicI64,
    /// Failed CRL refreshes (the CA unreachable, or CRLs refused); the last known CRLs stay.
    pub revocation_refresh_failed: AtomicU64,
    /// CRLs in force.
    pub revocation_crls: AtomicU64,
    /// nextUpdate (Unix seconds) of each CRL in force: the stale ones are counted at render time,
    /// since staleness grows exactly while refreshes fail.
    pub revocation_next_updates: Mutex<Vec<i64>>,
    /// Metrics connections closed at accept because every slot was taken.
    pub metrics_connections_refused: AtomicU64,
    /// Failed attempts to write the credential files (each retried with backoff).
    pub file_write_failures: AtomicU64,
    /// The supervised background tasks and whether each still runs (`/health`).
    pub tasks: crate::supervise::Tasks,
}

impl Metrics {
    /// The exposition text.
    pub fn render(&self) -> String {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let expiry = self.expiry.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, String)]| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, v) in lines {
                out.push_str(&format!("{name}{labels} {v}\n"));
            }
        };
        metric(
            "lanyard_agent_certificate_expiry_timestamp_seconds",
            "gauge",
            "notAfter of the current workload certificate.",
            &[(String::new(), expiry.to_string())],
        );
        metric(
            "lanyard_agent_certificate_seconds_until_expiry",
            "gauge",
            "Seconds until the current workload certificate expires (negative: expired).",
            &[(String::new(), if expiry == 0 { "0".into() } else { (expiry - now).to_string() })],
        );
        metric(
            "lanyard_agent_renewals_total",
            "counter",
            "Renewal attempts by result.",
            &[
                ("{result=\"success\"}".into(), self.renewals_ok.load(Ordering::Relaxed).to_string()),
                ("{result=\"failure\"}".into(), self.renewals_failed.load(Ordering::Relaxed).to_string()),
            ],
        );
        metric(
            "lanyard_agent_enrollments_total",
            "counter",
            "Enrollments through attestation.",
            &[(String::new(), self.enrollments.load(Ordering::Relaxed).to_string())],
        );
        metric(
            "lanyard_agent_last_renewal_success_timestamp_seconds",
            "gauge",
            "Time of the last successful renewal.",
            &[(String::new(), self.last_success.load(Ordering::Relaxed).to_string())],
        );
        let api = &crate::workload_api::limits::STATS;
        metric(
            "lanyard_agent_workload_api_connections_total",
            "counter",
            "Workload API socket connections by outcome: served, refused at the connection cap, closed \
             for sending no HTTP/2 preface in time, evicted (no preface yet) to make room for a newcomer; and failed accepts (each followed by a pause).",
            &[
                ("{outcome=\"accepted\"}".into(), api.accepted.load(Ordering::Relaxed).to_string()),
                ("{outcome=\"refused\"}".into(), api.refused.load(Ordering::Relaxed).to_string()),
                ("{outcome=\"preface_timeout\"}".into(), api.preface_timeouts.load(Ordering::Relaxed).to_string()),
                ("{outcome=\"evicted\"}".into(), api.evicted.load(Ordering::Relaxed).to_string()),
                ("{outcome=\"accept_error\"}".into(), api.accept_errors.load(Ordering::Relaxed).to_string()),
            ],
        );
        metric(
            "lanyard_agent_bundle_sequence",
            "gauge",
            "spiffe_sequence of the trust bundle in use.",
            &[(String::new(), self.bundle_sequence.load(Ordering::Relaxed).to_string())],
        );
        metric(
            "lanyard_agent_bundle_refresh_failures_total",
            "counter",
            "Failed trust bundle refreshes.",
            &[(String::new(), self.bundle_refresh_failed.load(Ordering::Relaxed).to_string())],
        );
        metric(
            "lanyard_agent_revocation_state_age_seconds",
            "gauge",
            "Seconds since the CRLs in force were last refreshed from the CA (since start if never).",
            &[(String::new(), self.revocation_age(now).to_string())],
        );
        metric(
            "lanyard_agent_revocation_refresh_failures_total",
            "counter",
            "Failed CRL refreshes; the last known CRLs stay in force.",
            &[(String::new(), self.revocation_refresh_failed.load(Ordering::Relaxed).to_string())],
        );
        metric(
            "lanyard_agent_revocation_crls",
            "gauge",
            "CRLs the verifiers check peers against.",
            &[(String::new(), self.revocation_crls.load(Ordering::Relaxed).to_string())],
        );
        metric(
            "lanyard_agent_revocation_crls_stale",
            "gauge",
            "CRLs in force whose nextUpdate has passed.",
            &[(String::new(), self.stale_crls(now).to_string())],
        );
        metric(
            "lanyard_agent_file_write_failures_total",
            "counter",
            "Failed attempts to write the credential files; each is retried with backoff until it succeeds.",
            &[(String::new(), self.file_write_failures.load(Ordering::Relaxed).to_string())],
        );
        metric(
            "lanyard_agent_task_up",
            "gauge",
            "1 while a supervised background task runs, 0 once it ended (see /health).",
            &self
                .tasks
                .snapshot()
                .into_iter()
                .map(|(name, up)| (format!("{{task=\"{name}\"}}"), u8::from(up).to_string()))
                .collect::<Vec<_>>(),
        );
        metric(
            "lanyard_agent_metrics_connections_refused_total",
            "counter",
            "Metrics connections closed at accept because the connection limit was reached.",
            &[(String::new(), self.metrics_connections_refused.load(Ordering::Relaxed).to_string())],
        );
        out
    }

    /// `GET /health`: 200 while every supervised task runs, 503 naming each task that died. The
    /// certificate's own state is in the metrics (expiry, renewals); this answers "is the agent
    /// still doing its job", which a dead Workload API or file writer silently stops.
    pub fn health(&self) -> (hyper::StatusCode, &'static str, String) {
        let dead = self.tasks.dead();
        if dead.is_empty() {
            return (hyper::StatusCode::OK, "text/plain", "ok\n".to_owned());
        }
        let body = dead.iter().map(|d| format!("task {} ended: {}\n", d.name, d.why)).collect();
        (hyper::StatusCode::SERVICE_UNAVAILABLE, "text/plain", body)
    }

    /// Records the nextUpdate of every CRL now in force.
    pub fn set_crl_next_updates(&self, next_updates: Vec<i64>) {
        let mut g = self.revocation_next_updates.lock().unwrap_or_else(|p| p.into_inner());
        *g = next_updates;
    }

    /// CRLs in force whose nextUpdate is before `now`. Still used by the verifiers (what they list
    /// stays revoked); an alert on this and on the age says revocations may be missing.
    pub fn stale_crls(&self, now: i64) -> usize {
        let g = self.revocation_next_updates.lock().unwrap_or_else(|p| p.into_inner());
        g.iter().filter(|n| **n <= now).count()
    }

    /// Age of the revocation state at `now`: since the last successful refresh, or since start.
    pub fn revocation_age(&self, now: i64) -> i64 {
        let last = self.revocation_last_success.load(Ordering::Relaxed);
        let since = if last > 0 { last } else { self.started.load(Ordering::Relaxed) };
        if since == 0 { 0 } else { (now - since).max(0) }
    }
}

/// Connections the metrics listener serves at once; past it they are accepted and closed.
const MAX_CONNECTIONS: usize = 64;
/// Time a scraper has to send its request head (also the keep-alive idle limit).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `GET /health` ([`Metrics::health`]) and `GET /metrics` (any other path) until the task is
/// dropped.
///
/// Bounded like `lanyard-ca`'s listeners (a smaller copy of `issuer_api::listener`, which the
/// agent does not depend on): at most [`MAX_CONNECTIONS`] at once, the rest closed at accept and
/// counted; a request head must arrive within [`HEADER_READ_TIMEOUT`]; accept errors (EMFILE) back
/// off from 10 ms to 1 s and are logged at most every 10 s, never in a hot loop.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = Duration::from_millis(10);
    let mut last_log: Option<Instant> = None;
    let mut unlogged = 0u64;
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => {
                backoff = Duration::from_millis(10);
                tcp
            }
            Err(e) => {
                if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(error = %e, failures_since_last_log = unlogged, "metrics accept failed");
                    last_log = Some(Instant::now());
                    unlogged = 0;
                } else {
                    unlogged += 1;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.metrics_connections_refused.fetch_add(1, Ordering::Relaxed);
            drop(tcp);
            continue;
        };
        let m = metrics.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let (status, kind, body) = match req.uri().path() {
                    "/health" => m.health(),
                    _ => (hyper::StatusCode::OK, "text/plain; version=0.0.4", m.render()),
                };
                async move {
                    hyper::Response::builder()
                        .status(status)
                        .header("content-type", kind)
                        .body(Full::new(Bytes::from(body)))
                }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), svc)
                .await
            {
                tracing::debug!(error = %e, "a metrics connection ended with an error");
            }
        });
    }
}

/// Binds the metrics address.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    Ok(tokio::net::TcpListener::bind(addr).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn the_listener_refuses_past_its_limit_and_still_serves_afterwards() {
        let listener = bind("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let metrics = Arc::new(Metrics::default());
        let server = tokio::spawn(serve(listener, metrics.clone()));
        // Idle connections take every slot (each until the header deadline).
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
        }
        let mut over = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), over.read(&mut buf)).await.expect("closed at once");
        assert_eq!(n.unwrap_or(0), 0, "the connection past the limit is closed without an answer");
        assert!(metrics.metrics_connections_refused.load(Ordering::Relaxed) >= 1);
        // A slot frees as soon as an idle connection goes away; scrapes work again.
        drop(idle.pop());
        let page = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.expect("write");
                let mut page = String::new();
                // Closed at accept (still over the limit): empty or reset; try again.
                if s.read_to_string(&mut page).await.is_err() {
                    page.clear();
                }
                if !page.is_empty() {
                    break page;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("a scrape gets through");
        assert!(page.contains("lanyard_agent_metrics_connections_refused_total "), "{page}");
        server.abort();
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut page = String::new();
        s.read_to_string(&mut page).await.expect("read");
        page
    }

    #[tokio::test]
    async fn health_turns_red_when_a_background_task_ends() {
        let listener = bind("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let metrics = Arc::new(Metrics::default());
        let server = tokio::spawn(serve(listener, metrics.clone()));
        let (fail, failed) = tokio::sync::oneshot::channel::<()>();
        let _api = metrics.tasks.spawn("workload_api", async move {
            failed.await.ok();
            Err(anyhow::anyhow!("the socket was removed"))
        });
        let healthy = get(addr, "/health").await;
        assert!(healthy.starts_with("HTTP/1.1 200"), "{healthy}");
        assert!(get(addr, "/metrics").await.contains("lanyard_agent_task_up{task=\"workload_api\"} 1"));

        fail.send(()).expect("task waiting");
        let deadline = Instant::now() + Duration::from_secs(5);
        let red = loop {
            let page = get(addr, "/health").await;
            if page.starts_with("HTTP/1.1 503") {
                break page;
            }
            assert!(Instant::now() < deadline, "/health stayed green: {page}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(red.contains("task workload_api ended: the socket was removed"), "{red}");
        assert!(get(addr, "/metrics").await.contains("lanyard_agent_task_up{task=\"workload_api\"} 0"));
        server.abort();
    }
}
