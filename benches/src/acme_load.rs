//! ACME load: N concurrent complete flows (new account, new order, challenge, finalize,
//! download) against any directory URL, with instant-acme as the client. Challenges are not
//! served: the server under test must run in an always-valid test mode (Lanyard's
//! `acme.insecure_always_valid_challenges`, Pebble's `PEBBLE_VA_ALWAYS_VALID=1`).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use instant_acme::{Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, RetryPolicy};

/// What a load run measured.
#[derive(Debug, Clone)]
pub struct LoadStats {
    /// Completed flows (each ends with a downloaded certificate).
    pub completed: usize,
    /// Failed flows.
    pub failed: usize,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Flow latencies, sorted.
    pub latencies: Vec<Duration>,
    /// First error seen, if any.
    pub first_error: Option<String>,
    /// Flows never started because the run's time budget ([`RUN_BUDGET`]) ran out first: a
    /// server that stalls makes the run stop instead of hanging the benchmark.
    pub not_started: usize,
}

/// Wall time after which a run starts no new flow; flows under way get at most [`FLOW_TIMEOUT`].
pub const RUN_BUDGET: Duration = Duration::from_secs(90);

/// Longest a single flow may take before it counts as failed (the client has no HTTP timeouts).
pub const FLOW_TIMEOUT: Duration = Duration::from_secs(20);

impl LoadStats {
    /// Completed orders per second.
    pub fn orders_per_sec(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64()
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

    /// One line of figures.
    pub fn line(&self, name: &str) -> String {
        format!(
            "{name:<28} {:>6} orders in {:>7.2}s = {:>8.1} orders/s   p50 {:>7.1} ms   p99 {:>7.1} ms   failed {}{}",
            self.completed,
            self.elapsed.as_secs_f64(),
            self.orders_per_sec(),
            self.percentile(50.0).as_secs_f64() * 1e3,
            self.percentile(99.0).as_secs_f64() * 1e3,
            self.failed,
            if self.not_started > 0 {
                format!(
                    "   not started {} (run budget of {} s exhausted: the server stalled)",
                    self.not_started,
                    RUN_BUDGET.as_secs()
                )
            } else {
                String::new()
            }
        )
    }
}

/// An HTTP client like instant-acme's default one, trusting `root`, with TCP_NODELAY: without it
/// every POST (headers and body written separately) waits ~40 ms for Nagle's algorithm and the
/// server's delayed ACK, and the benchmark measures that instead of the servers.
fn http_client(root: &Path) -> Result<Box<dyn instant_acme::HttpClient>, instant_acme::Error> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let der =
        rustls_pki_types::CertificateDer::from_pem_file(root).map_err(|e| instant_acme::Error::Other(e.into()))?;
    roots.add(der).map_err(|e| instant_acme::Error::Other(e.into()))?;
    let tls =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| instant_acme::Error::Other(e.into()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Box::new(hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https)))
}

async fn one_flow(directory: &str, root: &Path, n: usize) -> Result<(), instant_acme::Error> {
    let poll = RetryPolicy::new().initial_delay(Duration::from_millis(5)).backoff(1.5).timeout(Duration::from_secs(30));
    let (account, _) = Account::builder_with_http(http_client(root)?)
        .create(
            &NewAccount { contact: &[], terms_of_service_agreed: true, only_return_existing: false },
            directory.to_owned(),
            None,
        )
        .await?;
    let ids = [Identifier::Dns(format!("load{n}.example.test"))];
    let mut order = account.new_order(&NewOrder::new(&ids)).await?;
    let mut authzs = order.authorizations();
    while let Some(a) = authzs.next().await {
        let mut a = a?;
        if a.status == AuthorizationStatus::Pending {
            let mut ch = a.challenge(ChallengeType::Http01).ok_or(instant_acme::Error::Str("no http-01"))?;
            ch.set_ready().await?;
        }
    }
    order.poll_ready(&poll).await?;
    order.finalize().await?;
    order.poll_certificate(&poll).await?;
    Ok(())
}

/// Runs `total` flows with `concurrency` in flight against `directory`, trusting `root`.
///
/// Every flow opens its own connection, as a fresh client process (lego, certbot) does. With one
/// kept-alive connection per in-flight slot, Debian's Pebble 2.4 deadlocks within seconds (its
/// in-memory store takes its locks in conflicting orders: `AddCertificate` against
/// `GetAccountByKey` and `AddAccount`, seen in a goroutine dump), so that comparison cannot run.
pub async fn run(directory: &str, root: &Path, concurrency: usize, total: usize) -> LoadStats {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let stop_at = tokio::time::Instant::now() + RUN_BUDGET;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (next, directory, root) = (next.clone(), directory.to_owned(), root.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut failed = 0;
            let mut first_error = None;
            loop {
                if tokio::time::Instant::now() >= stop_at {
                    break;
                }
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let t = Instant::now();
                // A flow that hangs (no HTTP timeouts in the client) must not hang the benchmark.
                match tokio::time::timeout(FLOW_TIMEOUT, one_flow(&directory, &root, n)).await {
                    Ok(Ok(())) => lat.push(t.elapsed()),
                    Ok(Err(e)) => {
                        failed += 1;
                        first_error.get_or_insert_with(|| e.to_string());
                    }
                    Err(_) => {
                        failed += 1;
                        first_error.get_or_insert_with(|| format!("flow timed out after {} s", FLOW_TIMEOUT.as_secs()));
                    }
                }
            }
            (lat, failed, first_error)
        }));
    }
    let mut stats = LoadStats {
        completed: 0,
        failed: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
        first_error: None,
        not_started: 0,
    };
    for t in tasks {
        if let Ok((lat, failed, err)) = t.await {
            stats.latencies.extend(lat);
            stats.failed += failed;
            if stats.first_error.is_none() {
                stats.first_error = err;
            }
        }
    }
    stats.elapsed = started.elapsed();
    stats.completed = stats.latencies.len();
    stats.not_started = total.saturating_sub(stats.completed + stats.failed);
    stats.latencies.sort();
    stats
}
