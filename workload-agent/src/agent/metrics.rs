//! Prometheus metrics of the agent (text exposition format 0.0.4), served on a loopback address.
//!
//! The one number an operator must be able to alert on is how close the current certificate is
//! to expiry: a renewal that silently stops shows up there long before anything breaks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

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
        out
    }
}

/// Serves `GET /metrics` (any path, in fact) until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let m = metrics.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |_req| {
                let body = m.render();
                async move {
                    hyper::Response::builder()
                        .header("content-type", "text/plain; version=0.0.4")
                        .body(Full::new(Bytes::from(body)))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
        });
    }
}

/// Binds the metrics address.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    Ok(tokio::net::TcpListener::bind(addr).await?)
}
