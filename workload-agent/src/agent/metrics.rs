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
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;
use tokio::time::{Duration, Instant};

/// `result` of `lanyard_agent_renewals_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RenewalResult {
    result: &'static str,
}

/// The metric handles the agent bumps, registered in its [`Registry`] by [`Metrics::register`],
/// and what the scrape-time gauges are computed from.
#[derive(Debug)]
pub struct Metrics {
    /// notAfter of the current certificate (Unix seconds), 0 before the first.
    pub expiry: Gauge,
    /// Successful renewals (enrollments included).
    pub renewals_ok: Counter,
    /// Failed renewal attempts.
    pub renewals_failed: Counter,
    /// Enrollments (first certificate, or re-enrollment after a refused renewal).
    pub enrollments: Counter,
    /// Time of the last successful renewal (Unix seconds).
    pub last_success: Gauge,
    /// `spiffe_sequence` of the trust bundle in use.
    pub bundle_sequence: Gauge<u64, AtomicU64>,
    /// Failed trust bundle refreshes.
    pub bundle_refresh_failed: Counter,
    /// When the agent started (Unix seconds): the revocation state's age before any success.
    pub started: AtomicI64,
    /// Time of the last successful CRL refresh (Unix seconds), 0 before the first.
    pub revocation_last_success: AtomicI64,
    /// Failed CRL refreshes (the CA unreachable, or CRLs refused); the last known CRLs stay.
    pub revocation_refresh_failed: Counter,
    /// CRLs in force.
    pub revocation_crls: Gauge<u64, AtomicU64>,
    /// nextUpdate (Unix seconds) of each CRL in force: the stale ones are counted at scrape time,
    /// since staleness grows exactly while refreshes fail.
    pub revocation_next_updates: Mutex<Vec<i64>>,
    /// Metrics connections closed at accept because every slot was taken.
    pub metrics_connections_refused: Counter,
    /// Failed attempts to write the credential files (each retried with backoff).
    pub file_write_failures: Counter,
    /// The supervised background tasks and whether each still runs (`/health`).
    pub tasks: crate::supervise::Tasks,
}

impl Metrics {
    /// Registers every family of the agent in `registry` and returns the handles; the gauges
    /// computed from them (time until expiry, revocation state age, stale CRLs, task liveness,
    /// Workload API connections) are a collector, read when scraped.
    pub fn register(registry: &mut Registry) -> Arc<Metrics> {
        // Both series exist from the start, as before any renewal.
        let renewals = Family::<RenewalResult, Counter>::default();
        let m = Arc::new(Metrics {
            expiry: Gauge::default(),
            renewals_ok: renewals.get_or_create_owned(&RenewalResult { result: "success" }),
            renewals_failed: renewals.get_or_create_owned(&RenewalResult { result: "failure" }),
            enrollments: Counter::default(),
            last_success: Gauge::default(),
            bundle_sequence: Gauge::default(),
            bundle_refresh_failed: Counter::default(),
            started: AtomicI64::new(0),
            revocation_last_success: AtomicI64::new(0),
            revocation_refresh_failed: Counter::default(),
            revocation_crls: Gauge::default(),
            revocation_next_updates: Mutex::new(Vec::new()),
            metrics_connections_refused: Counter::default(),
            file_write_failures: Counter::default(),
            tasks: crate::supervise::Tasks::default(),
        });
        registry.register(
            "lanyard_agent_certificate_expiry_timestamp_seconds",
            "notAfter of the current workload certificate",
            m.expiry.clone(),
        );
        registry.register("lanyard_agent_renewals", "Renewal attempts by result", renewals);
        registry.register("lanyard_agent_enrollments", "Enrollments through attestation", m.enrollments.clone());
        registry.register(
            "lanyard_agent_last_renewal_success_timestamp_seconds",
            "Time of the last successful renewal",
            m.last_success.clone(),
        );
        registry.register(
            "lanyard_agent_bundle_sequence",
            "spiffe_sequence of the trust bundle in use",
            m.bundle_sequence.clone(),
        );
        registry.register(
            "lanyard_agent_bundle_refresh_failures",
            "Failed trust bundle refreshes",
            m.bundle_refresh_failed.clone(),
        );
        registry.register(
            "lanyard_agent_revocation_refresh_failures",
            "Failed CRL refreshes; the last known CRLs stay in force",
            m.revocation_refresh_failed.clone(),
        );
        registry.register(
            "lanyard_agent_revocation_crls",
            "CRLs the verifiers check peers against",
            m.revocation_crls.clone(),
        );
        registry.register(
            "lanyard_agent_file_write_failures",
            "Failed attempts to write the credential files; each is retried with backoff until it succeeds",
            m.file_write_failures.clone(),
        );
        registry.register(
            "lanyard_agent_metrics_connections_refused",
            "Metrics connections closed at accept because the connection limit was reached",
            m.metrics_connections_refused.clone(),
        );
        registry.register_collector(Box::new(Derived(m.clone())));
        m
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

/// Registers `lanyard_agent_handshakes_total{outcome,reason}`: the handshakes `seam`'s
/// verifiers accepted and refused (by reason), the same counts the agent reports to the CA.
pub fn register_handshakes(registry: &mut Registry, seam: crate::tls::CredentialSeam) {
    registry.register_collector(Box::new(Handshakes(seam)));
}

/// The seam's handshake counts, read when scraped.
#[derive(Debug)]
struct Handshakes(crate::tls::CredentialSeam);

impl Collector for Handshakes {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counts = self.0.handshake_counts();
        let mut f = encoder.encode_descriptor(
            "lanyard_agent_handshakes",
            "Handshakes the in-process seam verifiers accepted and refused, refusals by reason (unknown_issuer, \
             expired, revoked, identity, no_bundle, other).",
            None,
            MetricType::Counter,
        )?;
        f.encode_family(&[("outcome", "accepted"), ("reason", "")])?
            .encode_counter::<NoLabelSet, _, u64>(&counts.accepted, None)?;
        for why in crate::tls::Refusal::ALL {
            f.encode_family(&[("outcome", "refused"), ("reason", why.label())])?
                .encode_counter::<NoLabelSet, _, u64>(&counts.refused_for(why), None)?;
        }
        Ok(())
    }
}

/// The registry `lanyard-agent` exposes and the handles registered in it.
pub fn registry() -> (Registry, Arc<Metrics>) {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    (registry, metrics)
}

/// The exposition text (Prometheus text format 0.0.4) of `registry`.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail and the collectors only write; an error would leave a
    // truncated page, which a scraper rejects, so it is logged rather than hidden.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, registry) {
        tracing::warn!(error = %e, "encoding the metrics failed");
    }
    out
}

/// Gauges computed at scrape time from the agent's state, and the Workload API socket's counters.
#[derive(Debug)]
struct Derived(Arc<Metrics>);

/// Writes a gauge family without labels.
fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> Result<(), std::fmt::Error> {
    encoder.encode_descriptor(name, help, None, MetricType::Gauge)?.encode_gauge(&v)
}

impl Collector for Derived {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.0;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let expiry = m.expiry.get();
        gauge(
            &mut encoder,
            "lanyard_agent_certificate_seconds_until_expiry",
            "Seconds until the current workload certificate expires (negative: expired).",
            if expiry == 0 { 0 } else { expiry - now },
        )?;
        gauge(
            &mut encoder,
            "lanyard_agent_revocation_state_age_seconds",
            "Seconds since the CRLs in force were last refreshed from the CA (since start if never).",
            m.revocation_age(now),
        )?;
        gauge(
            &mut encoder,
            "lanyard_agent_revocation_crls_stale",
            "CRLs in force whose nextUpdate has passed.",
            i64::try_from(m.stale_crls(now)).unwrap_or(i64::MAX),
        )?;
        let mut f = encoder.encode_descriptor(
            "lanyard_agent_task_up",
            "1 while a supervised background task runs, 0 once it ended (see /health).",
            None,
            MetricType::Gauge,
        )?;
        for (name, up) in m.tasks.snapshot() {
            f.encode_family(&[("task", name)])?.encode_gauge(&i64::from(up))?;
        }
        let api = &crate::workload_api::limits::STATS;
        let mut f = encoder.encode_descriptor(
            "lanyard_agent_workload_api_connections",
            "Workload API socket connections by outcome: served, refused at the connection cap, closed \
             for sending no HTTP/2 preface in time, evicted (no preface yet) to make room for a newcomer; and failed accepts (each followed by a pause).",
            None,
            MetricType::Counter,
        )?;
        for (outcome, v) in [
            ("accepted", &api.accepted),
            ("refused", &api.refused),
            ("preface_timeout", &api.preface_timeouts),
            ("evicted", &api.evicted),
            ("accept_error", &api.accept_errors),
        ] {
            f.encode_family(&[("outcome", outcome)])?
                .encode_counter::<NoLabelSet, _, u64>(&v.load(Ordering::Relaxed), None)?;
        }
        Ok(())
    }
}

/// Connections the metrics listener serves at once; past it they are accepted and closed.
const MAX_CONNECTIONS: usize = 64;
/// Time a scraper has to send its request head (also the keep-alive idle limit).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `GET /health` ([`Metrics::health`]) and `GET /metrics` (any other path: `registry`
/// rendered) until the task is dropped.
///
/// Bounded like `lanyard-ca`'s listeners (a smaller copy of `issuer_api::listener`, which the
/// agent does not depend on): at most [`MAX_CONNECTIONS`] at once, the rest closed at accept and
/// counted; a request head must arrive within [`HEADER_READ_TIMEOUT`]; accept errors (EMFILE) back
/// off from 10 ms to 1 s and are logged at most every 10 s, never in a hot loop.
pub async fn serve(listener: tokio::net::TcpListener, registry: Arc<Registry>, metrics: Arc<Metrics>) {
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
            metrics.metrics_connections_refused.inc();
            drop(tcp);
            continue;
        };
        let (m, registry) = (metrics.clone(), registry.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let (status, kind, body) = match req.uri().path() {
                    "/health" => m.health(),
                    _ => (
                        hyper::StatusCode::OK,
                        prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                        render(&registry),
                    ),
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
        let (registry, metrics) = registry();
        let server = tokio::spawn(serve(listener, Arc::new(registry), metrics.clone()));
        // Idle connections take every slot (each until the header deadline).
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
        }
        let mut over = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), over.read(&mut buf)).await.expect("closed at once");
        assert_eq!(n.unwrap_or(0), 0, "the connection past the limit is closed without an answer");
        assert!(metrics.metrics_connections_refused.get() >= 1);
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

    /// Every family README.md documents for `lanyard-agent` (metrics, Workload API limits), with
    /// its type.
    const DOCUMENTED: [(&str, &str); 15] = [
        ("lanyard_agent_certificate_expiry_timestamp_seconds", "gauge"),
        ("lanyard_agent_certificate_seconds_until_expiry", "gauge"),
        ("lanyard_agent_renewals_total", "counter"),
        ("lanyard_agent_enrollments_total", "counter"),
        ("lanyard_agent_last_renewal_success_timestamp_seconds", "gauge"),
        ("lanyard_agent_bundle_sequence", "gauge"),
        ("lanyard_agent_bundle_refresh_failures_total", "counter"),
        ("lanyard_agent_revocation_state_age_seconds", "gauge"),
        ("lanyard_agent_revocation_refresh_failures_total", "counter"),
        ("lanyard_agent_revocation_crls", "gauge"),
        ("lanyard_agent_revocation_crls_stale", "gauge"),
        ("lanyard_agent_file_write_failures_total", "counter"),
        ("lanyard_agent_task_up", "gauge"),
        ("lanyard_agent_metrics_connections_refused_total", "counter"),
        ("lanyard_agent_workload_api_connections_total", "counter"),
    ];

    /// Parses a text exposition (format 0.0.4) into family -> type, checking that every family
    /// has one HELP and one TYPE line and every sample belongs to a declared family and has a
    /// numeric value.
    fn families(text: &str) -> std::collections::BTreeMap<String, String> {
        let mut types = std::collections::BTreeMap::new();
        let mut helps = std::collections::BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(types.insert(name.to_owned(), kind.to_owned()).is_none(), "two TYPE lines for {name}");
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP name text");
                assert!(!help.is_empty(), "empty HELP for {name}");
                assert!(helps.insert(name.to_owned(), help.to_owned()).is_none(), "two HELP lines for {name}");
            } else if !line.is_empty() {
                let name = line.split(['{', ' ']).next().expect("sample name");
                let value = line.rsplit(' ').next().expect("sample value");
                assert!(value.parse::<f64>().is_ok(), "not a number: {line}");
                assert!(types.contains_key(name), "sample of an undeclared family: {line}");
            }
        }
        assert_eq!(types.keys().collect::<Vec<_>>(), helps.keys().collect::<Vec<_>>(), "HELP and TYPE agree");
        types
    }

    #[tokio::test]
    async fn the_metrics_endpoint_serves_every_documented_family_with_its_type() {
        let listener = bind("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (registry, metrics) = registry();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        metrics.expiry.set(now + 3600);
        metrics.renewals_ok.inc();
        metrics.bundle_sequence.set(7);
        metrics.started.store(now - 10, Ordering::Relaxed);
        metrics.set_crl_next_updates(vec![now - 1, now + 600]);
        metrics.revocation_crls.set(2);
        let server = tokio::spawn(serve(listener, Arc::new(registry), metrics.clone()));
        let page = get(addr, "/metrics").await;
        server.abort();

        let (head, body) = page.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("text/plain; version=0.0.4"), "{head}");
        let types = families(body);
        for (name, kind) in DOCUMENTED {
            assert_eq!(types.get(name).map(String::as_str), Some(kind), "{name} in\n{body}");
        }
        for sample in [
            "lanyard_agent_renewals_total{result=\"success\"} 1\n",
            "lanyard_agent_renewals_total{result=\"failure\"} 0\n",
            "lanyard_agent_bundle_sequence 7\n",
            "lanyard_agent_revocation_crls 2\n",
            "lanyard_agent_revocation_crls_stale 1\n",
            "lanyard_agent_workload_api_connections_total{outcome=\"accepted\"} ",
        ] {
            assert!(body.contains(sample), "{sample} in\n{body}");
        }
        let until: i64 = body
            .lines()
            .find_map(|l| l.strip_prefix("lanyard_agent_certificate_seconds_until_expiry "))
            .and_then(|v| v.parse().ok())
            .expect("seconds until expiry");
        assert!((3590..=3600).contains(&until), "{until}");
        let age: i64 = body
            .lines()
            .find_map(|l| l.strip_prefix("lanyard_agent_revocation_state_age_seconds "))
            .and_then(|v| v.parse().ok())
            .expect("revocation state age");
        assert!((10..=20).contains(&age), "{age}");
    }

    #[tokio::test]
    async fn health_turns_red_when_a_background_task_ends() {
        let listener = bind("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (registry, metrics) = registry();
        let server = tokio::spawn(serve(listener, Arc::new(registry), metrics.clone()));
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
