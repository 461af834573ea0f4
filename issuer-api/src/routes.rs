//! HTTP routes of the CA that exist today: health, trust material and the fingerprint to pin.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ca::{Authority, TrustBundle};

use crate::problem::Problem;

/// Shared state of the web edge.
#[derive(Debug)]
pub struct AppState {
    /// The CA core.
    pub authority: Arc<Authority>,
    /// The background tasks, whose death `/health` reports.
    pub tasks: crate::supervise::Tasks,
}

/// PEM chains are served as `application/pem-certificate-chain` (RFC 8555 section 9.1).
fn pem(body: String) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/pem-certificate-chain"));
    r
}

async fn bundle(state: &AppState) -> Result<TrustBundle, Problem> {
    Ok(TrustBundle::from_journal(&state.authority.views().issuers().await.map_err(Problem::from)?))
}

/// The 503 `/health` answers while a background task is dead, naming each and why it ended.
fn dead_tasks(tasks: &crate::supervise::Tasks) -> Option<Problem> {
    let dead = tasks.dead();
    if dead.is_empty() {
        return None;
    }
    let detail = dead.iter().map(|(name, why)| format!("task {name} ended: {why}")).collect::<Vec<_>>().join("; ");
    Some(Problem::new(StatusCode::SERVICE_UNAVAILABLE, "taskDied", detail))
}

async fn health(State(state): State<Arc<AppState>>) -> Result<Response, Problem> {
    let active = state.authority.active_issuer().map_err(Problem::from)?;
    // A health check that does not reach the store would report "ok" while issuance fails.
    state.authority.views().ping().await.map_err(Problem::from)?;
    // A replica whose rotation loop or CRL refresh died still answers requests; it must not look
    // healthy while it no longer keeps its issuer and CRLs current.
    if let Some(p) = dead_tasks(&state.tasks) {
        return Err(p);
    }
    Ok(axum::Json(serde_json::json!({
        "status": "ok",
        "active_issuer": active.record.id,
        "active_issuer_not_after": active.record.not_after.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
    }))
    .into_response())
}

async fn roots(State(state): State<Arc<AppState>>) -> Result<Response, Problem> {
    Ok(pem(bundle(&state).await?.pem()))
}

async fn chain(State(state): State<Arc<AppState>>) -> Result<Response, Problem> {
    Ok(pem(state.authority.active_issuer().map_err(Problem::from)?.chain_pem()))
}

/// Every intermediate relying parties may meet: the prepared successor (published here before it
/// signs anything), the active one and retired ones still trusted, and during a root rotation the
/// cross certificates between the roots. Chains to the roots of `/roots.pem`.
async fn intermediates(State(state): State<Arc<AppState>>) -> Result<Response, Problem> {
    let journal = state.authority.views().issuers().await.map_err(Problem::from)?;
    let order = |s: ca::IssuerState| match s {
        ca::IssuerState::Active => 0,
        ca::IssuerState::Prepared => 1,
        _ => 2,
    };
    let mut ints: Vec<_> = journal
        .iter()
        .filter(|r| r.kind == ca::IssuerKind::Intermediate && r.state != ca::IssuerState::Expired)
        .collect();
    ints.sort_by_key(|r| order(r.state));
    let mut body = String::new();
    for r in ints {
        body.push_str(&r.cert_pem);
        if let Some(c) = &r.cross_cert_pem {
            body.push_str(c);
        }
    }
    // During a root rotation, the roots certified by each other: the links between the two roots
    // of `/roots.pem` that chains carry.
    for r in journal.iter().filter(|r| r.kind == ca::IssuerKind::Root && r.state != ca::IssuerState::Expired) {
        body.push_str(r.cross_cert_pem.as_deref().unwrap_or_default());
    }
    Ok(pem(body))
}

async fn fingerprint(State(state): State<Arc<AppState>>) -> Result<Response, Problem> {
    let b = bundle(&state).await?;
    let roots: Vec<_> = b
        .roots
        .iter()
        .map(|r| {
            serde_json::json!({
                "id": r.id,
                "subject": r.subject,
                "state": r.state.as_str(),
                "sha256": r.fingerprint,
                "not_after": r.not_after.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            })
        })
        .collect();
    Ok(axum::Json(serde_json::json!({ "sha256": b.primary_fingerprint(), "roots": roots })).into_response())
}

async fn not_found() -> Problem {
    Problem::not_found()
}

/// The longest request target (path and query) served. Every URL of this server is far shorter;
/// a longer one is refused before routing, with a problem document rather than a dropped
/// connection, so a client sees why.
pub const MAX_URI_BYTES: usize = 4096;

/// Answers 414 (RFC 9110 section 15.5.15) for request targets over [`MAX_URI_BYTES`].
pub async fn limit_uri(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if len > MAX_URI_BYTES {
        return Problem::new(
            StatusCode::URI_TOO_LONG,
            "uriTooLong",
            format!("the request target is {len} bytes; at most {MAX_URI_BYTES} are served"),
        )
        .into_response();
    }
    next.run(req).await
}

/// The router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/roots.pem", get(roots))
        .route("/chain.pem", get(chain))
        .route("/intermediates.pem", get(intermediates))
        .route("/root-fingerprint", get(fingerprint))
        .fallback(not_found)
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn health_is_unavailable_while_a_background_task_is_dead() {
        let tasks = crate::supervise::Tasks::default();
        tasks.spawn("metrics", std::future::pending());
        assert!(dead_tasks(&tasks).is_none(), "every task runs");
        tasks.spawn("rotation", async { Err(anyhow::anyhow!("the lease table is gone")) });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let p = loop {
            if let Some(p) = dead_tasks(&tasks) {
                break p;
            }
            assert!(std::time::Instant::now() < deadline, "the dead task was never reported");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        };
        assert_eq!(p.status, 503);
        assert_eq!(p.kind, "urn:lanyard:problem:taskDied");
        assert_eq!(p.detail, "task rotation ended: the lease table is gone");
    }
}
