//! Prometheus metrics of the CA (text format 0.0.4) on a separate plain-HTTP listener
//! (`metrics_listen`, loopback by default when set), so scraping never needs the CA's TLS and the
//! numbers are not published on the public port.
//!
//! The exposition is written into a `String` with `writeln!`, which cannot fail; `.ok()` discards
//! that always-`Ok` result.
//!
//! Counters that code paths bump live here as statics; gauges about the journal, the fleet and
//! emergencies are read from the store at scrape time, so every replica reports the same truth.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use ca::{Authority, IssuerState, TrustBundle};

use crate::listener::{self, BoundedListener, ListenerConfig, ListenerStats, Protocol};

/// Counters bumped by request and rotation paths.
#[derive(Debug, Default)]
pub struct Counters {
    /// Authentication failures by reason (ACME problem type, renewal refusal, attestation).
    auth_failures: Mutex<BTreeMap<String, u64>>,
    /// Rotation steps by (step, result).
    rotation_steps: Mutex<BTreeMap<(String, String), u64>>,
    /// Active intermediate changes this process loaded.
    pub issuer_changes: AtomicU64,
    /// Duration of the last rotation step run, milliseconds.
    pub last_rotation_ms: AtomicI64,
    /// Agents waiting on `GET /workload/v1/notices` right now.
    pub notice_waiters: AtomicI64,
    /// Per ACME rate limit: (name, client keys tracked, requests refused), as of the last sweep.
    pub rate_limits: Mutex<Vec<(&'static str, usize, u64)>>,
    /// ACME rows purged after their retention: (kind, rows), since start.
    pub acme_purged: Mutex<BTreeMap<&'static str, u64>>,
    /// Outbound ACME validations running now.
    pub validations_in_flight: AtomicI64,
    /// Challenge POSTs refused because every validation slot was busy.
    pub validations_refused: AtomicU64,
}

/// The process's counters.
pub static COUNTERS: LazyLock<Counters> = LazyLock::new(Counters::default);

/// Counts an authentication failure.
pub fn auth_failure(reason: &str) {
    if let Ok(mut m) = COUNTERS.auth_failures.lock() {
        *m.entry(reason.to_owned()).or_default() += 1;
    }
}

/// Counts a rotation step.
pub fn rotation_step(step: &str, ok: bool) {
    if let Ok(mut m) = COUNTERS.rotation_steps.lock() {
        *m.entry((step.to_owned(), if ok { "success" } else { "failure" }.to_owned())).or_default() += 1;
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}").ok();
}

/// Renders every metric.
pub async fn render(authority: &Authority) -> Result<String, ca::CaError> {
    let views = authority.views();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let journal = views.issuers().await?;
    let mut out = String::new();

    family(&mut out, "lanyard_issuer_not_after_timestamp_seconds", "gauge", "Expiry of each issuer in the journal.");
    for r in &journal {
        writeln!(
            out,
            "lanyard_issuer_not_after_timestamp_seconds{{id=\"{}\",kind=\"{}\",state=\"{}\"}} {}",
            r.id,
            r.kind,
            r.state,
            r.not_after.unix_timestamp()
        )
        .ok();
    }
    family(&mut out, "lanyard_issuers", "gauge", "Issuers by kind and state.");
    let mut by_state: BTreeMap<(String, String), u64> = BTreeMap::new();
    for r in &journal {
        *by_state.entry((r.kind.to_string(), r.state.to_string())).or_default() += 1;
    }
    for ((k, s), n) in &by_state {
        writeln!(out, "lanyard_issuers{{kind=\"{k}\",state=\"{s}\"}} {n}").ok();
    }
    family(
        &mut out,
        "lanyard_certificates_valid_under_retired_issuer",
        "gauge",
        "Unexpired certificates signed by an issuer that no longer signs (retired or revoked).",
    );
    for r in journal.iter().filter(|r| r.state == IssuerState::Retired) {
        let n = views.valid_certificates_of(&r.id, now).await?;
        writeln!(out, "lanyard_certificates_valid_under_retired_issuer{{issuer=\"{}\"}} {n}", r.id).ok();
    }

    let bundle = TrustBundle::from_journal(&journal);
    let seq = views.bundle_sequence(&bundle.digest()).await?;
    family(&mut out, "lanyard_bundle_sequence", "gauge", "spiffe_sequence of the trust bundle.");
    writeln!(out, "lanyard_bundle_sequence {seq}").ok();

    family(
        &mut out,
        "lanyard_emergency_rotation_affected_certificates",
        "gauge",
        "Certificates an emergency rotation asked to renew.",
    );
    let emergencies = views.emergencies().await?;
    for e in &emergencies {
        writeln!(out, "lanyard_emergency_rotation_affected_certificates{{rotation=\"{}\"}} {}", e.id, e.affected).ok();
    }
    family(
        &mut out,
        "lanyard_emergency_rotation_outstanding_certificates",
        "gauge",
        "Certificates of a revoked intermediate still valid and not yet renewed.",
    );
    for e in &emergencies {
        let n = if e.completed_at.is_some() { 0 } else { views.emergency_outstanding(&e.issuer_id, now).await? };
        writeln!(out, "lanyard_emergency_rotation_outstanding_certificates{{rotation=\"{}\"}} {n}", e.id).ok();
    }
    family(
        &mut out,
        "lanyard_emergency_rotation_duration_seconds",
        "gauge",
        "From the emergency rotation command to the last affected workload renewed (so far, while running).",
    );
    for e in &emergencies {
        let end = e.completed_at.unwrap_or(now);
        writeln!(out, "lanyard_emergency_rotation_duration_seconds{{rotation=\"{}\"}} {}", e.id, end - e.started_at)
            .ok();
    }

    family(
        &mut out,
        "lanyard_emergency_revocation_pending_seconds",
        "gauge",
        "Seconds until relying parties are told of an emergency rotation's revocation (0: in force).",
    );
    for e in &emergencies {
        let pending = e.enforce_at.map_or(0, |t| (t - now).max(0));
        writeln!(out, "lanyard_emergency_revocation_pending_seconds{{rotation=\"{}\"}} {pending}", e.id).ok();
    }

    family(
        &mut out,
        "lanyard_rotations_total",
        "counter",
        "Completed rotations by kind, from the journal (the same on every replica).",
    );
    let ints = journal.iter().filter(|r| r.kind == ca::IssuerKind::Intermediate && r.state != IssuerState::Prepared);
    let roots = journal.iter().filter(|r| r.kind == ca::IssuerKind::Root && r.state != IssuerState::Prepared);
    writeln!(out, "lanyard_rotations_total{{kind=\"intermediate\"}} {}", ints.count().saturating_sub(1)).ok();
    writeln!(out, "lanyard_rotations_total{{kind=\"root\"}} {}", roots.count().saturating_sub(1)).ok();
    writeln!(out, "lanyard_rotations_total{{kind=\"emergency\"}} {}", emergencies.len()).ok();
    family(
        &mut out,
        "lanyard_rotation_steps_total",
        "counter",
        "Rotation steps taken by this replica, by step and result.",
    );
    if let Ok(m) = COUNTERS.rotation_steps.lock() {
        for ((step, result), n) in m.iter() {
            writeln!(out, "lanyard_rotation_steps_total{{step=\"{step}\",result=\"{result}\"}} {n}").ok();
        }
    }
    family(&mut out, "lanyard_rotation_last_duration_seconds", "gauge", "Time the last rotation run took.");
    writeln!(
        out,
        "lanyard_rotation_last_duration_seconds {}",
        COUNTERS.last_rotation_ms.load(Ordering::Relaxed) as f64 / 1000.0
    )
    .ok();
    family(
        &mut out,
        "lanyard_active_issuer_changes_total",
        "counter",
        "Active intermediate changes this process loaded.",
    );
    writeln!(out, "lanyard_active_issuer_changes_total {}", COUNTERS.issuer_changes.load(Ordering::Relaxed)).ok();

    family(&mut out, "lanyard_notice_waiters", "gauge", "Agents waiting for a push notice on this replica.");
    writeln!(out, "lanyard_notice_waiters {}", COUNTERS.notice_waiters.load(Ordering::Relaxed)).ok();

    acme_metrics(&mut out);

    let stats = authority.stats();
    family(&mut out, "lanyard_issuance_total", "counter", "Issuance requests by result.");
    for (result, v) in [("issued", &stats.issued), ("refused", &stats.refused), ("failed", &stats.failed)] {
        writeln!(out, "lanyard_issuance_total{{result=\"{result}\"}} {}", v.load(Ordering::Relaxed)).ok();
    }
    family(
        &mut out,
        "lanyard_issuance_duration_seconds",
        "histogram",
        "Durable issuance latency (record, sign, record).",
    );
    for (b, n) in ca::stats::LATENCY_BUCKETS.iter().zip(stats.buckets()) {
        writeln!(out, "lanyard_issuance_duration_seconds_bucket{{le=\"{b}\"}} {n}").ok();
    }
    let count = stats.issued.load(Ordering::Relaxed);
    writeln!(out, "lanyard_issuance_duration_seconds_bucket{{le=\"+Inf\"}} {count}").ok();
    writeln!(out, "lanyard_issuance_duration_seconds_sum {}", stats.sum_seconds()).ok();
    writeln!(out, "lanyard_issuance_duration_seconds_count {count}").ok();

    family(&mut out, "lanyard_authentication_failures_total", "counter", "Refused authentications by reason.");
    if let Ok(m) = COUNTERS.auth_failures.lock() {
        for (reason, n) in m.iter() {
            writeln!(out, "lanyard_authentication_failures_total{{reason=\"{reason}\"}} {n}").ok();
        }
    }
    listener_metrics(&mut out);
    Ok(out)
}

fn acme_metrics(out: &mut String) {
    family(out, "lanyard_acme_rate_limited_total", "counter", "ACME requests refused by each rate limit.");
    let limits = COUNTERS.rate_limits.lock().map(|l| l.clone()).unwrap_or_default();
    for (name, _, refused) in &limits {
        writeln!(out, "lanyard_acme_rate_limited_total{{limit=\"{name}\"}} {refused}").ok();
    }
    family(out, "lanyard_acme_rate_limit_keys", "gauge", "Client keys each ACME rate limit tracks (bounded).");
    for (name, tracked, _) in &limits {
        writeln!(out, "lanyard_acme_rate_limit_keys{{limit=\"{name}\"}} {tracked}").ok();
    }
    family(out, "lanyard_acme_purged_rows_total", "counter", "ACME rows deleted after their retention period.");
    if let Ok(m) = COUNTERS.acme_purged.lock() {
        for (kind, n) in m.iter() {
            writeln!(out, "lanyard_acme_purged_rows_total{{kind=\"{kind}\"}} {n}").ok();
        }
    }
    family(out, "lanyard_acme_validations_in_flight", "gauge", "Outbound challenge validations running now.");
    writeln!(out, "lanyard_acme_validations_in_flight {}", COUNTERS.validations_in_flight.load(Ordering::Relaxed)).ok();
    family(
        out,
        "lanyard_acme_validations_refused_total",
        "counter",
        "Challenge POSTs answered rateLimited because every validation slot was busy.",
    );
    writeln!(out, "lanyard_acme_validations_refused_total {}", COUNTERS.validations_refused.load(Ordering::Relaxed))
        .ok();
}

/// `lanyard_task_up`: whether each supervised background task still runs.
fn task_metrics(out: &mut String, tasks: &crate::supervise::Tasks) {
    family(
        out,
        "lanyard_task_up",
        "gauge",
        "1 while a supervised background task runs, 0 once it ended (see /health).",
    );
    for (name, up) in tasks.snapshot() {
        out.push_str(&format!("lanyard_task_up{{task=\"{name}\"}} {}\n", u8::from(up)));
    }
}

/// Counters of the HTTPS listener.
pub static HTTPS_LISTENER: ListenerStats = ListenerStats::new();
/// Counters of this metrics listener.
pub static METRICS_LISTENER: ListenerStats = ListenerStats::new();

/// A listener metric family: name, type, help, and how to read it from the counters.
type ListenerFamily = (&'static str, &'static str, &'static str, fn(&ListenerStats) -> i64);

fn listener_metrics(out: &mut String) {
    let listeners = [("https", &HTTPS_LISTENER), ("metrics", &METRICS_LISTENER)];
    let families: [ListenerFamily; 6] = [
        ("lanyard_listener_open_connections", "gauge", "Connections holding a slot (TLS handshakes included).", |s| {
            s.open.load(Ordering::Relaxed)
        }),
        (
            "lanyard_listener_connections_refused_total",
            "counter",
            "Connections closed at accept because max_connections were open.",
            |s| i64::try_from(s.refused.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
        ),
        (
            "lanyard_listener_accept_errors_total",
            "counter",
            "Failed accepts (e.g. out of file descriptors), each followed by a back-off.",
            |s| i64::try_from(s.accept_errors.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
        ),
        (
            "lanyard_listener_handshake_timeouts_total",
            "counter",
            "Connections closed because the TLS handshake exceeded handshake_timeout.",
            |s| i64::try_from(s.handshake_timeouts.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
        ),
        (
            "lanyard_listener_handshakes_evicted_total",
            "counter",
            "Connections closed mid-handshake to make room for a new one while every slot was taken.",
            |s| i64::try_from(s.handshakes_evicted.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
        ),
        (
            "lanyard_listener_idle_closed_total",
            "counter",
            "Connections closed after idle_timeout without a request or a byte.",
            |s| i64::try_from(s.idle_closed.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
        ),
    ];
    for (name, kind, help, value) in families {
        family(out, name, kind, help);
        for (listener, stats) in listeners {
            writeln!(out, "{name}{{listener=\"{listener}\"}} {}", value(stats)).ok();
        }
    }
}

/// Serves `/metrics` on `listener` (plain HTTP/1.1) until the task is dropped, with the timeouts of
/// `limits` and its connection limit (see [`crate::listener`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    authority: Arc<Authority>,
    tasks: crate::supervise::Tasks,
    limits: ListenerConfig,
) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    let stats = &METRICS_LISTENER;
    let mut incoming = BoundedListener::new(listener, "metrics", limits.max_connections, stats);
    let limits = Arc::new(limits);
    loop {
        // No handshake to evict on plain HTTP: the header deadline bounds a silent scraper.
        let listener::Accepted { tcp, slot, .. } = incoming.accept().await;
        let authority = authority.clone();
        let tasks = tasks.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |_req| {
                let authority = authority.clone();
                let tasks = tasks.clone();
                async move {
                    let (status, body) = match render(&authority).await {
                        Ok(mut b) => {
                            task_metrics(&mut b, &tasks);
                            (200, b)
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "metrics unavailable");
                            (503, "metrics unavailable\n".to_owned())
                        }
                    };
                    hyper::Response::builder()
                        .status(status)
                        .header("content-type", "text/plain; version=0.0.4")
                        .body(Full::new(Bytes::from(body)))
                }
            });
            if let Err(e) = listener::serve_http(tcp, Protocol::Http1, &limits, stats, svc).await {
                tracing::debug!(error = %e, "a metrics connection ended with an error");
            }
        });
    }
}
