//! `GET /crl/{issuer_id}.crl`: the CRL of one intermediate (RFC 5280 section 5), DER, as
//! `application/pkix-crl` (RFC 2585 section 4.2). This is the distribution point written into
//! leaves when `[policy] crl_url` is set (`<crl_url>/<issuer_id>.crl`). Unknown, expired and root
//! issuers have no CRL: 404 problem document. `GET /crls.pem` lists every current CRL at once.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ca::Authority;
use tracing::warn;

use crate::problem::Problem;

/// Shared state of the CRL routes.
#[derive(Debug)]
pub struct CrlState {
    /// The CA core, which makes, signs and caches the CRLs.
    pub authority: Arc<Authority>,
}

fn no_crl(what: &str) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "notFound", format!("no CRL for {what}"))
}

async fn crl(State(state): State<Arc<CrlState>>, Path(file): Path<String>) -> Result<Response, Problem> {
    // Issuer ids are 16 lower-case hex digits; anything else cannot name an issuer.
    let id = file
        .strip_suffix(".crl")
        .filter(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .ok_or_else(|| no_crl("this name"))?;
    let crl = state.authority.crl(id).await.map_err(Problem::from)?.ok_or_else(|| no_crl(&format!("issuer {id}")))?;
    let mut r = (StatusCode::OK, crl.der).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/pkix-crl"));
    // A revocation must show at once; relying parties cache the CRL until nextUpdate themselves.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(r)
}

/// `GET /crls.pem`: every current CRL (intermediates' and roots'), PEM `X509 CRL` blocks, so a
/// relying party learns the whole revocation state in one request. Each CRL is signed, so the
/// transport adds nothing to its authenticity; agents fetch it over the TLS connection they
/// already verify against the bundle.
async fn all_crls(State(state): State<Arc<CrlState>>) -> Result<Response, Problem> {
    let crls = state.authority.current_crls().await.map_err(Problem::from)?;
    let body: String = crls.iter().map(ca::Crl::pem).collect();
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-pem-file"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(r)
}

/// The router.
pub fn router(authority: Arc<Authority>) -> Router {
    Router::new()
        .route("/crl/{file}", get(crl))
        .route("/crls.pem", get(all_crls))
        .with_state(Arc::new(CrlState { authority }))
}

/// The schedule: when CRLs are published (`[policy] crl_url` set), reissues each one before half
/// of its validity has passed even if nobody asks, so a fresh CRL always exists and every
/// revoked entry appears on one issued after its certificate expired. Does nothing otherwise:
/// CRLs are then still made on request.
pub fn spawn_refresh(tasks: &crate::supervise::Tasks, authority: Arc<Authority>) {
    if authority.policy().crl_url.is_none() {
        return;
    }
    let every = (authority.policy().crl_validity / 4).clamp(Duration::from_secs(1), Duration::from_secs(600));
    tasks.spawn("crl_refresh", async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = authority.refresh_crls().await {
                warn!(error = %e, "cannot refresh the CRLs; will retry");
            }
        }
    });
}
