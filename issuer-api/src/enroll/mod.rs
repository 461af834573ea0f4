//! Workload enrollment and renewal.
//!
//! A workload's first certificate comes through the ordinary ACME machinery: it orders an
//! identifier of type `spiffe` (its SPIFFE ID) and answers one of two attestation challenges that
//! this module checks, instead of proving control of a DNS name:
//!
//! - `join-token-01`: the challenge response payload is `{"token": "..."}`, a one-time, short-lived
//!   token created by `lanyard-ca token create` and bound to one SPIFFE ID or a path prefix;
//! - `jwt-01`: the payload is `{"jwt": "..."}`, a JWT (e.g. a Kubernetes projected service-account
//!   token) checked against a configured JWKS, issuer and audience, whose claims are mapped to the
//!   SPIFFE ID by a template.
//!
//! After that, renewal is one mTLS request authenticated by the current certificate
//! ([`routes`]), so no attestation secret is needed again.

pub mod jwt;
pub mod routes;
pub mod trust_report;

use std::time::Duration;

use ca::SpiffeId;
use ca::ra::{JoinToken, join_token_digest};
use serde::Deserialize;

use crate::acme::validation::ValidationError;

/// ACME identifier type for SPIFFE IDs.
pub const SPIFFE_IDENTIFIER: &str = ca::ra::SPIFFE_IDENTIFIER;
/// Challenge answered with a join token.
pub const JOIN_TOKEN_CHALLENGE: &str = "join-token-01";
/// Challenge answered with a JWT.
pub const JWT_CHALLENGE: &str = "jwt-01";

/// `[workload]` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkloadConfig {
    /// `spiffe_refresh_hint` of the SPIFFE bundle: how often relying parties should re-fetch it.
    #[serde(with = "humantime_serde")]
    pub bundle_refresh_hint: Duration,
    /// Lifetime of join tokens when `token create` is not given `--ttl`.
    #[serde(with = "humantime_serde")]
    pub join_token_ttl: Duration,
    /// Longest lifetime a join token may be given.
    #[serde(with = "humantime_serde")]
    pub join_token_max_ttl: Duration,
    /// JWT / OIDC attestors (`[[workload.jwt]]`), e.g. one per Kubernetes cluster.
    pub jwt: Vec<jwt::JwtAttestorConfig>,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            bundle_refresh_hint: Duration::from_secs(300),
            join_token_ttl: Duration::from_secs(3600),
            join_token_max_ttl: Duration::from_secs(7 * 24 * 3600),
            jwt: Vec::new(),
        }
    }
}

/// The attestation side of enrollment.
#[derive(Debug)]
pub struct Enrollment {
    jwt: jwt::JwtAttestors,
    workload: ca::ra::Workload,
}

/// The challenge response payload of an attestation challenge.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationPayload {
    /// `join-token-01`.
    pub token: Option<String>,
    /// `jwt-01`.
    pub jwt: Option<String>,
}

fn fail(kind: &'static str, detail: impl Into<String>) -> ValidationError {
    ValidationError { kind, detail: detail.into() }
}

impl Enrollment {
    /// Builds the attestors from configuration.
    pub fn new(cfg: &WorkloadConfig, trust_domain: &str, workload: ca::ra::Workload) -> anyhow::Result<Self> {
        let jwt = jwt::JwtAttestors::new(cfg.jwt.clone(), trust_domain)
            .map_err(|e| anyhow::anyhow!("invalid [[workload.jwt]]: {e}"))?;
        Ok(Enrollment { jwt, workload })
    }

    /// Loads every JWKS once so that a wrong path or URL shows up in the startup log.
    pub async fn warm_up(&self) {
        self.jwt.warm_up().await;
    }

    /// The attestation challenges offered for a SPIFFE identifier.
    pub fn challenge_kinds(&self) -> &'static [&'static str] {
        if self.jwt.is_empty() { &[JOIN_TOKEN_CHALLENGE] } else { &[JOIN_TOKEN_CHALLENGE, JWT_CHALLENGE] }
    }

    /// Checks an attestation for `id`. A join token is checked here but not spent: the returned
    /// digest is spent by the caller in the transaction that records the valid result
    /// (`ca::ra::Registration::finish_challenge`), so a result that cannot be recorded leaves it unspent.
    pub async fn attest(
        &self,
        kind: &str,
        id: &str,
        payload: &[u8],
        now: i64,
    ) -> Result<Option<String>, ValidationError> {
        let id = SpiffeId::parse(id).map_err(|e| fail("rejectedIdentifier", e.to_string()))?;
        let p: AttestationPayload = serde_json::from_slice(payload)
            .map_err(|e| fail("malformed", format!("the attestation payload is not valid: {e}")))?;
        match kind {
            JOIN_TOKEN_CHALLENGE => {
                let token = p.token.ok_or_else(|| fail("malformed", "join-token-01 needs {\"token\": ...}"))?;
                let digest = join_token_digest(&token);
                let r = self
                    .workload
                    .check_join_token(&digest, &id, now)
                    .await
                    .map_err(|e| fail("serverInternal", e.to_string()))?;
                r.map_err(|e| fail("unauthorized", e.to_string()))?;
                Ok(Some(digest))
            }
            JWT_CHALLENGE => {
                let token = p.jwt.ok_or_else(|| fail("malformed", "jwt-01 needs {\"jwt\": ...}"))?;
                let got = self.jwt.attest(&token, now).await.map_err(|e| fail(e.kind, e.detail))?;
                if got != id {
                    return Err(fail("unauthorized", format!("the JWT maps to {got}, not {id}")));
                }
                Ok(None)
            }
            other => Err(fail("malformed", format!("unknown challenge {other}"))),
        }
    }
}

/// Creates a join token bound to `spiffe_id` (or everything below it with `prefix`); returns the
/// secret, which is shown once and stored only as a digest.
pub async fn create_join_token(
    admin: &ca::Admin,
    trust_domain: &str,
    spiffe_id: &str,
    prefix: bool,
    ttl: Duration,
) -> anyhow::Result<(String, JoinToken)> {
    let id = SpiffeId::parse(spiffe_id)?;
    if id.trust_domain() != trust_domain {
        anyhow::bail!("{id} is outside the trust domain {trust_domain}");
    }
    if id.path().is_empty() {
        anyhow::bail!("a join token is bound to a workload SPIFFE ID with a path, not the trust domain itself");
    }
    let mut raw = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw)
        .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
    use base64::Engine;
    let secret = format!("lanyard-jt-{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw));
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let token = JoinToken { spiffe_id: id, is_prefix: prefix, expires_at: now.saturating_add(ca::units::secs(ttl)) };
    let scope = if prefix { format!("{}/*", token.spiffe_id) } else { token.spiffe_id.to_string() };
    let audit = ca::AuditEvent::now(
        "operator",
        "join_token.create",
        scope,
        ca::Outcome::Success,
        format!("expires in {}s", ttl.as_secs()),
    );
    // The token and its audit event commit together.
    admin.create_join_token(&join_token_digest(&secret), &token, now, &audit).await?;
    Ok((secret, token))
}
