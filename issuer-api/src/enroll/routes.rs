//! HTTP side of workload identity: mTLS renewal and the SPIFFE trust bundle.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ca::{Authority, TrustBundle};
use tokio::sync::Mutex;

use super::trust_report;
use crate::notices::{NoticeBoard, Waiter};
use crate::problem::Problem;
use crate::server::PeerCertificates;

/// Largest CSR accepted for renewal.
const MAX_CSR: usize = 16 * 1024;
/// How long a notices long poll is held without `?wait=`: under the 60 s idle timeout common in
/// proxies and load balancers.
const NOTICE_WAIT: Duration = Duration::from_secs(55);
/// The longest `?wait=` honoured.
const MAX_NOTICE_WAIT: Duration = Duration::from_secs(300);

/// State of the workload routes.
#[derive(Debug)]
pub struct WorkloadState {
    /// The CA core.
    pub authority: Arc<Authority>,
    /// `spiffe_refresh_hint`.
    pub refresh_hint: Duration,
    /// Last computed (digest, sequence), so unchanged bundles cost no write.
    sequence: Mutex<Option<(String, u64)>>,
    /// Wakes the notices long polls when the rotation loop sees a new emergency.
    notices: NoticeBoard,
    /// Where refused authentications are counted.
    metrics: Arc<crate::metrics::Metrics>,
}

impl WorkloadState {
    /// New state.
    pub fn new(
        authority: Arc<Authority>,
        refresh_hint: Duration,
        notices: NoticeBoard,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        WorkloadState { authority, refresh_hint, sequence: Mutex::new(None), notices, metrics }
    }
}

/// `POST /workload/v1/renew`: the body is a PKCS#10 CSR (DER, `application/pkcs10`, or PEM); the
/// caller authenticates with its current workload certificate in the TLS handshake. Answers the
/// new chain as `application/pem-certificate-chain`.
async fn renew(
    State(state): State<Arc<WorkloadState>>,
    peer: Option<axum::Extension<PeerCertificates>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let Some(axum::Extension(PeerCertificates(chain))) = peer else {
        state.metrics.auth_failure("renewal_no_certificate");
        return Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "renewal needs the current workload certificate as the TLS client certificate",
        ));
    };
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !matches!(ct.split(';').next().map(str::trim), Some("application/pkcs10" | "application/x-pem-file")) {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "badRequest",
            "send the CSR as application/pkcs10 (DER) or application/x-pem-file",
        ));
    }
    if body.len() > MAX_CSR {
        return Err(Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "badRequest", "the CSR is too large"));
    }
    let leaf = chain.first().ok_or_else(|| Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "no certificate"))?;
    let report = trust_report::from_headers(&headers)?;
    let issued = state.authority.renew_reporting(leaf.as_ref(), &body, report.as_ref()).await.map_err(|e| {
        tracing::info!(error = %e, "workload renewal refused");
        if e.kind() == ca::ErrorKind::Unauthenticated {
            state.metrics.auth_failure("renewal_certificate");
        }
        Problem::from(e)
    })?;
    tracing::debug!(serial = %issued.serial.to_hex(), "workload certificate renewed");
    let mut r = (StatusCode::OK, issued.pem_chain()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/pem-certificate-chain"));
    Ok(r)
}

#[derive(Debug, serde::Deserialize)]
struct NoticeQuery {
    /// Seconds to hold the request open when there is nothing to say.
    wait: Option<u64>,
}

/// `GET /workload/v1/notices[?wait=<seconds>]`: a long poll authenticated like renewal (the
/// current workload certificate as the TLS client certificate). Answers at once with
/// `{"renew": {"start": ..., "end": ...}}` (RFC 3339) if the CA has asked for that certificate to
/// be replaced, else as soon as an emergency rotation asks for it, else 204 No Content after
/// `wait` (default 55 s, at most 300 s, never past the certificate's expiry).
async fn notices(
    State(state): State<Arc<WorkloadState>>,
    peer: Option<axum::Extension<PeerCertificates>>,
    headers: HeaderMap,
    query: Result<Query<NoticeQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = query.map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "badRequest", e.body_text()))?;
    let report = trust_report::from_headers(&headers)?;
    let Some(leaf) = peer.as_ref().and_then(|axum::Extension(PeerCertificates(c))| c.first()) else {
        state.metrics.auth_failure("notices_no_certificate");
        return Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "notices need the current workload certificate as the TLS client certificate",
        ));
    };
    let record = state.authority.authenticate_workload(leaf.as_ref()).await.map_err(|e| {
        if e.kind() == ca::ErrorKind::Unauthenticated {
            state.metrics.auth_failure("notices_certificate");
        }
        Problem::from(e)
    })?;
    if let Some(r) = &report {
        state.authority.record_trust_report(&record, r);
    }
    let left = Duration::try_from(record.not_after - time::OffsetDateTime::now_utc()).unwrap_or_default();
    let wait = q.wait.map_or(NOTICE_WAIT, Duration::from_secs).min(MAX_NOTICE_WAIT).min(left);
    let deadline = tokio::time::Instant::now() + wait;
    // Subscribe before the first look, so an emergency committed after it still wakes us.
    let mut board = state.notices.subscribe();
    board.borrow_and_update();
    let _waiter = Waiter::enter(&state.notices);
    loop {
        if let Some((start, end)) = renewal_window(&state.authority, &record.serial).await? {
            let rfc = |t: i64| {
                time::OffsetDateTime::from_unix_timestamp(t)
                    .ok()
                    .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
                    .unwrap_or_default()
            };
            let body = serde_json::json!({ "renew": { "start": rfc(start), "end": rfc(end) } });
            let mut r = axum::Json(body).into_response();
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return Ok(r);
        }
        // No database connection is held here: wait for an emergency of this certificate's issuer.
        loop {
            match tokio::time::timeout_at(deadline, board.changed()).await {
                Ok(Ok(())) if board.borrow_and_update().issuers.contains(&record.issuer_id) => break,
                Ok(Ok(())) => {}
                Err(_) | Ok(Err(_)) => return Ok(StatusCode::NO_CONTENT.into_response()),
            }
        }
    }
}

/// The renewal window the CA asked for (as renewalInfo reports it), Unix seconds.
async fn renewal_window(authority: &Authority, serial: &str) -> Result<Option<(i64, i64)>, Problem> {
    Ok(match authority.views().replacement_window(serial).await.map_err(Problem::from)? {
        Some((start, Some(end))) => Some((start, end)),
        Some((at, None)) => Some((at - 3600, at)),
        None => None,
    })
}

/// `GET /bundle.spiffe`: the SPIFFE trust bundle (JWK set with `spiffe_sequence` and
/// `spiffe_refresh_hint`, SPIFFE Trust Domain and Bundle specification section 4).
async fn spiffe_bundle(State(state): State<Arc<WorkloadState>>) -> Result<Response, Problem> {
    let views = state.authority.views();
    let bundle = TrustBundle::from_journal(&views.issuers().await.map_err(Problem::from)?);
    let digest = bundle.digest();
    let mut cached = state.sequence.lock().await;
    let seq = match cached.as_ref() {
        Some((d, s)) if *d == digest => *s,
        _ => {
            let s = views.bundle_sequence(&digest).await.map_err(Problem::from)?;
            *cached = Some((digest, s));
            s
        }
    };
    drop(cached);
    let doc = bundle.spiffe_document(seq, state.refresh_hint.as_secs());
    let mut r = axum::Json(doc).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(r)
}

/// The workload routes.
pub fn router(state: Arc<WorkloadState>) -> Router {
    Router::new()
        .route("/workload/v1/renew", post(renew))
        .route("/workload/v1/notices", get(notices))
        .route("/bundle.spiffe", get(spiffe_bundle))
        .with_state(state)
}
