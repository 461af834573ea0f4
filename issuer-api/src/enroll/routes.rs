//! HTTP side of workload identity: mTLS renewal and the SPIFFE trust bundle.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ca::{Authority, TrustBundle};
use tokio::sync::Mutex;

use crate::problem::Problem;
use crate::server::PeerCertificates;

/// Largest CSR accepted for renewal.
const MAX_CSR: usize = 16 * 1024;

/// State of the workload routes.
#[derive(Debug)]
pub struct WorkloadState {
    /// The CA core.
    pub authority: Arc<Authority>,
    /// `spiffe_refresh_hint`.
    pub refresh_hint: Duration,
    /// Last computed (digest, sequence), so unchanged bundles cost no write.
    sequence: Mutex<Option<(String, u64)>>,
}

impl WorkloadState {
    /// New state.
    pub fn new(authority: Arc<Authority>, refresh_hint: Duration) -> Self {
        WorkloadState { authority, refresh_hint, sequence: Mutex::new(None) }
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
        crate::metrics::auth_failure("renewal_no_certificate");
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
    let issued = state.authority.renew(leaf.as_ref(), &body).await.map_err(|e| {
        tracing::info!(error = %e, "workload renewal refused");
        if e.kind() == ca::ErrorKind::Unauthenticated {
            crate::metrics::auth_failure("renewal_certificate");
        }
        Problem::from(e)
    })?;
    tracing::debug!(serial = %issued.serial.to_hex(), "workload certificate renewed");
    let mut r = (StatusCode::OK, issued.pem_chain()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/pem-certificate-chain"));
    Ok(r)
}

/// `GET /bundle.spiffe`: the SPIFFE trust bundle (JWK set with `spiffe_sequence` and
/// `spiffe_refresh_hint`, SPIFFE Trust Domain and Bundle specification section 4).
async fn spiffe_bundle(State(state): State<Arc<WorkloadState>>) -> Result<Response, Problem> {
    let store = state.authority.store();
    let bundle = TrustBundle::from_journal(&store.issuers().await.map_err(Problem::from)?);
    let digest = bundle.digest();
    let mut cached = state.sequence.lock().await;
    let seq = match cached.as_ref() {
        Some((d, s)) if *d == digest => *s,
        _ => {
            let s = store.bundle_sequence(&digest).await.map_err(Problem::from)?;
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
    Router::new().route("/workload/v1/renew", post(renew)).route("/bundle.spiffe", get(spiffe_bundle)).with_state(state)
}
