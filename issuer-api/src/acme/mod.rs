//! RFC 8555 ACME server.
//!
//! Every POST goes through [`Acme::authenticate`]: content type, JWS structure, `url`, key
//! reference (`jwk` or `kid`), signature, then the nonce is redeemed, in that order so that garbage
//! never costs a database write. Every response, errors included, carries a fresh `Replay-Nonce`
//! and `Link: <directory>;rel="index"`.

mod handlers;
pub mod jws;
pub mod nonce;
pub mod problem;
pub mod ratelimit;
pub mod validation;
pub mod wire;

#[doc(hidden)]
pub use handlers::order::{PayloadKind, check_payload};

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use ca::Authority;
use ca::ra::AcmeAccount;
use serde::Deserialize;

use self::jws::{Jwk, ParsedJws};
use self::nonce::Nonces;
use self::problem::AcmeProblem;
use self::validation::ValidationConfig;

/// `[acme]` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AcmeConfig {
    /// Serve ACME under `/acme`.
    pub enabled: bool,
    /// Public base URL clients reach the server at (`https://ca.internal:8443`); default
    /// `https://localhost:<port>`. Every ACME URL is built from it.
    pub public_url: Option<String>,
    /// Terms of service URL; when set, newAccount must agree to it.
    pub terms_of_service: Option<String>,
    /// How long an order (and its authorizations) stays usable.
    #[serde(with = "humantime_serde")]
    pub order_lifetime: Duration,
    /// Challenge validation settings.
    pub validation: ValidationConfig,
    /// Require external account binding (RFC 8555 section 7.3.4) for new accounts; keys come from
    /// `lanyard-ca eab create`.
    pub require_eab: bool,
    /// Token-bucket rate limits.
    pub rate_limits: ratelimit::RateLimitConfig,
    /// How long expired orders, their authorizations and challenges, orders whose certificate
    /// expired, and the orders and contacts of deactivated accounts are kept before they are
    /// deleted. Certificate records are never deleted.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// TEST ONLY: treat every challenge as passed without connecting anywhere. Logged loudly at
    /// start; never enable it on a CA anyone trusts.
    pub insecure_always_valid_challenges: bool,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        AcmeConfig {
            enabled: true,
            public_url: None,
            terms_of_service: None,
            order_lifetime: Duration::from_secs(24 * 3600),
            validation: ValidationConfig::default(),
            require_eab: false,
            rate_limits: ratelimit::RateLimitConfig::default(),
            retention: Duration::from_secs(30 * 24 * 3600),
            insecure_always_valid_challenges: false,
        }
    }
}

/// The ACME service state.
#[derive(Debug)]
pub struct Acme {
    pub(crate) authority: Arc<Authority>,
    /// The registration authority: ACME state changes that must agree with issuance.
    pub(crate) ra: ca::ra::Registration,
    pub(crate) nonces: Nonces,
    pub(crate) base: String,
    pub(crate) cfg: AcmeConfig,
    pub(crate) limits: ratelimit::Limiter,
    /// Outbound validations running at once.
    pub(crate) validation_slots: validation::Slots,
    pub(crate) enroll: Arc<crate::enroll::Enrollment>,
    /// Where authentication failures, validations, rate limits and purges are counted.
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
}

/// An authenticated POST.
#[derive(Debug)]
pub(crate) struct Authenticated {
    pub jws: ParsedJws,
    /// The signer's account when signed with `kid`.
    pub account: Option<AcmeAccount>,
    /// The key that verified the signature.
    pub jwk: Jwk,
}

impl Acme {
    /// Builds the service; `base` is the public base URL without a trailing slash.
    pub async fn new(
        authority: Arc<Authority>,
        cfg: AcmeConfig,
        base: String,
        enroll: Arc<crate::enroll::Enrollment>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Arc<Self>, ca::CaError> {
        let ra = ca::ra::Registration::open(authority.clone()).await?;
        let nonces = Nonces::new(ra.nonce_ledger()).await?;
        if cfg.insecure_always_valid_challenges {
            tracing::warn!(
                "INSECURE: acme.insecure_always_valid_challenges is on; every ACME challenge passes without \
                 validation. For load tests only."
            );
        }
        let limits = ratelimit::Limiter::new(&cfg.rate_limits).map_err(ca::CaError::Config)?;
        let validation_slots = validation::Slots::new(&cfg.validation, &metrics);
        Ok(Arc::new(Acme {
            authority,
            ra,
            nonces,
            base: base.trim_end_matches('/').to_owned(),
            cfg,
            limits,
            validation_slots,
            enroll,
            metrics,
        }))
    }

    /// Absolute URL of an ACME path (`/acme/...`).
    pub fn url(&self, path: &str) -> String {
        format!("{}/acme{path}", self.base)
    }

    /// Authenticates a POST to `path`. `want_jwk` selects the key reference the endpoint takes
    /// (`None`: either, as for revokeCert).
    pub(crate) async fn authenticate(
        &self,
        headers: &HeaderMap,
        path: &str,
        body: &[u8],
        want_jwk: Option<bool>,
    ) -> Result<Authenticated, AcmeProblem> {
        let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        if ct.split(';').next().map(str::trim) != Some("application/jose+json") {
            return Err(AcmeProblem::new(
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "malformed",
                "Content-Type must be application/jose+json",
            ));
        }
        let jws = ParsedJws::parse(body)?;
        if jws.header.url != self.url(path) {
            return Err(AcmeProblem::unauthorized(format!(
                "the JWS url {:?} is not the request URL {}",
                jws.header.url,
                self.url(path)
            )));
        }
        let use_jwk = match want_jwk {
            Some(w) => w,
            None => jws.header.jwk.is_some(),
        };
        let (jwk, account) = if use_jwk {
            let jwk = jws.require_jwk()?.clone();
            jwk.validate()?;
            (jwk, None)
        } else {
            let kid = jws.require_kid()?;
            let id = kid
                .strip_prefix(&self.url("/account/"))
                .filter(|id| !id.is_empty() && !id.contains('/'))
                .ok_or_else(|| AcmeProblem::malformed("kid is not an account URL of this server"))?;
            let account = self.ra.account(id).await.map_err(AcmeProblem::from)?.ok_or_else(|| {
                AcmeProblem::new(axum::http::StatusCode::BAD_REQUEST, "accountDoesNotExist", "no such account")
            })?;
            if account.status != "valid" {
                return Err(AcmeProblem::unauthorized(format!("the account is {}", account.status)));
            }
            let jwk: Jwk = serde_json::from_str(&account.jwk).map_err(AcmeProblem::internal)?;
            (jwk, Some(account))
        };
        jws.verify(&jwk)?;
        let nonce = jws.header.nonce.as_deref().ok_or_else(|| bad_nonce("the JWS has no nonce"))?;
        if !self.nonces.redeem(nonce).await.map_err(AcmeProblem::from)? {
            return Err(bad_nonce("the nonce is unknown, expired or already used"));
        }
        Ok(Authenticated { jws, account, jwk })
    }
}

/// Largest JWS body accepted (a CSR with many names fits easily).
const MAX_BODY: usize = 64 * 1024;

/// An authenticated ACME POST, as an axum extractor. `MODE` picks the key reference the endpoint
/// takes: 0 `kid`, 1 `jwk`, 2 either (revokeCert). Rejections are ACME problem documents.
#[derive(Debug)]
pub(crate) struct Signed<const MODE: u8>(pub Authenticated);
/// Signed with the account URL (`kid`).
pub(crate) type Kid = Signed<0>;
/// Signed with an embedded key (`jwk`): newAccount.
pub(crate) type JwkSigned = Signed<1>;
/// Either: revokeCert by account or by certificate key.
pub(crate) type EitherKey = Signed<2>;

impl<const MODE: u8> axum::extract::FromRequest<Arc<Acme>> for Signed<MODE> {
    type Rejection = AcmeProblem;

    async fn from_request(req: Request, acme: &Arc<Acme>) -> Result<Self, AcmeProblem> {
        // The full path, also when this router is nested.
        let full = req
            .extensions()
            .get::<axum::extract::OriginalUri>()
            .map(|u| u.0.path().to_owned())
            .unwrap_or_else(|| req.uri().path().to_owned());
        let path = full.strip_prefix("/acme").unwrap_or(&full).to_owned();
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, MAX_BODY)
            .await
            .map_err(|_| AcmeProblem::malformed(format!("the request body exceeds {MAX_BODY} bytes")))?;
        let want = match MODE {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        };
        acme.authenticate(&parts.headers, &path, &body, want).await.map(Signed).inspect_err(|p| {
            acme.metrics.auth_failure(p.kind.rsplit(':').next().unwrap_or("unknown"));
        })
    }
}

fn bad_nonce(detail: &str) -> AcmeProblem {
    AcmeProblem::new(axum::http::StatusCode::BAD_REQUEST, "badNonce", detail)
}

/// Per-client-IP rate limit on every ACME request.
async fn limit_ip(State(acme): State<Arc<Acme>>, req: Request, next: Next) -> Response {
    use axum::response::IntoResponse;
    let ip = req.extensions().get::<crate::server::PeerAddr>().map(|p| p.0.ip());
    if let Some(ip) = ip
        && let Err(wait) = acme.limits.check_ip(ip)
    {
        return ratelimit::limited(wait, "too many requests from this address").into_response();
    }
    next.run(req).await
}

/// Adds a fresh `Replay-Nonce`, `Link: <directory>;rel="index"` and `Cache-Control: no-store` to
/// every ACME response, errors included.
async fn common_headers(State(acme): State<Arc<Acme>>, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    match acme.nonces.issue().map(|n| HeaderValue::from_str(&n)) {
        Ok(Ok(v)) => {
            h.insert("replay-nonce", v);
        }
        Ok(Err(_)) => tracing::error!("a fresh nonce is not a valid header value"),
        Err(e) => tracing::error!(error = %e, "no nonce for this response"),
    }
    if let Ok(v) = HeaderValue::from_str(&format!("<{}>;rel=\"index\"", acme.url("/directory"))) {
        h.append(header::LINK, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The ACME routes, to be merged into the server's router.
pub fn router(acme: Arc<Acme>) -> Router {
    use handlers::*;
    Router::new()
        .route("/acme/directory", get(directory))
        .route("/acme/new-nonce", get(new_nonce_get).head(new_nonce_head))
        .route("/acme/new-account", post(new_account))
        .route("/acme/new-order", post(new_order))
        .route("/acme/revoke-cert", post(revoke_cert))
        .route("/acme/key-change", post(key_change))
        .route("/acme/account/{id}", post(account))
        .route("/acme/account/{id}/orders", post(account_orders))
        .route("/acme/order/{id}", post(order))
        .route("/acme/order/{id}/finalize", post(finalize))
        .route("/acme/authz/{id}", post(authz))
        .route("/acme/challenge/{id}", post(challenge))
        .route("/acme/cert/{serial}", post(certificate))
        .route("/acme/cert/{serial}/alt/{n}", post(certificate_alternate))
        .route("/acme/renewal-info/{id}", get(renewal_info))
        .layer(axum::middleware::from_fn_with_state(acme.clone(), limit_ip))
        .layer(axum::middleware::from_fn_with_state(acme.clone(), common_headers))
        .with_state(acme)
}

/// Background upkeep of the ACME state: every five minutes, used nonces past their lifetime are
/// deleted, stale orders expired, and what is past the retention period purged
/// ([`ca::ra::Registration::purge`]); every [`ratelimit::SWEEP_INTERVAL`], refilled rate-limit buckets
/// are forgotten so the limiters' maps stay bounded.
pub fn spawn_cleanup(tasks: &crate::supervise::Tasks, acme: Arc<Acme>) {
    let sweeper = acme.clone();
    tasks.spawn("acme_rate_limit_sweep", async move {
        let mut tick = tokio::time::interval(ratelimit::SWEEP_INTERVAL);
        loop {
            tick.tick().await;
            let stats = sweeper.limits.sweep();
            sweeper.metrics.rate_limits(stats.iter().map(|s| (s.name, s.tracked, s.limited)).collect());
        }
    });
    tasks.spawn("acme_cleanup", async move {
        let mut tick = tokio::time::interval(Duration::from_secs(300));
        let mut failures = 0u32;
        loop {
            tick.tick().await;
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            match acme.ra.cleanup(now, &AcmeProblem::order_expired().to_json()).await {
                Ok((n, o)) if n + o > 0 => tracing::info!(nonces = n, orders = o, "ACME cleanup"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "ACME cleanup failed"),
            }
            let cutoff = now.saturating_sub(i64::try_from(acme.cfg.retention.as_secs()).unwrap_or(i64::MAX));
            match acme.ra.purge(cutoff).await {
                Ok(p) => {
                    failures = 0;
                    record_purge(&acme.metrics, &p);
                    if p != ca::ra::AcmePurged::default() {
                        tracing::info!(
                            orders = p.orders,
                            authorizations = p.authorizations,
                            challenges = p.challenges,
                            accounts = p.accounts,
                            "ACME rows past retention purged"
                        );
                    }
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, failures, "ACME purge failed; retrying at the next run");
                }
            }
        }
    });
}

fn record_purge(metrics: &crate::metrics::Metrics, p: &ca::ra::AcmePurged) {
    for (kind, n) in [
        ("orders", p.orders),
        ("authorizations", p.authorizations),
        ("challenges", p.challenges),
        ("accounts", p.accounts),
    ] {
        metrics.acme_purged(kind, n);
    }
}
