//! The token: a compact JWS (RFC 7515 section 7.1) read as a JWT (RFC 7519), and the claims
//! checks made once its signature has been verified: `iss`, `aud`, `exp`, `nbf`, `iat` with
//! leeway, and a cap on the token's lifetime.
//!
//! `exp` is required and the lifetime is capped (`max_token_lifetime`), so a leaked token is
//! useful for a bounded time even when an issuer mints very long-lived tokens.

use serde_json::{Map, Value};

use super::{AttestError, clip, shown};
use crate::jose::{Algorithm, CompactError, CompactJws};

/// Longest JWT we look at. Kubernetes tokens are 1-2 KiB and OIDC ID tokens rarely exceed 8 KiB;
/// the limit only keeps a hostile client from making us base64-decode and parse megabytes.
pub(super) const MAX_TOKEN_BYTES: usize = 64 * 1024;
/// Human-readable list of accepted algorithms, for error details.
const ACCEPTED_ALGS: &str = "RS256, RS384, RS512, PS256, ES256, ES384 and EdDSA";

/// A compact JWS, split and decoded but not yet verified.
#[derive(Debug)]
pub(super) struct Token<'a> {
    /// `header.payload`, the bytes the signature covers.
    pub(super) signing_input: &'a str,
    /// The decoded signature.
    pub(super) signature: Vec<u8>,
    /// The header's `alg`, one of [`Algorithm::ALL`] (every algorithm the JOSE layer verifies).
    pub(super) alg: Algorithm,
    pub(super) kid: Option<String>,
    /// The claims set; not to be trusted before the signature is verified.
    pub(super) claims: Map<String, Value>,
}

impl<'a> Token<'a> {
    pub(super) fn parse(raw: &'a str) -> Result<Self, AttestError> {
        // Tokens are often read from files; a trailing newline is not an attack.
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(AttestError::malformed("the JWT is empty"));
        }
        if raw.len() > MAX_TOKEN_BYTES {
            return Err(AttestError::malformed(format!("the JWT is longer than {MAX_TOKEN_BYTES} bytes")));
        }
        let jws = CompactJws::parse(raw).map_err(|e| match e {
            CompactError::Parts(n) => {
                let hint = if n == 5 { " (an encrypted JWE is not supported)" } else { "" };
                AttestError::malformed(format!(
                    "the JWT is not a compact JWS: it has {n} dot-separated parts instead of 3{hint}"
                ))
            }
            CompactError::Encoding(b) if b.member == "signature" => {
                AttestError::malformed("the JWT's signature is not base64url")
            }
            CompactError::Encoding(b) => AttestError::malformed(format!("the JWT {} is not base64url", b.member)),
            CompactError::HeaderNotJson(e) => AttestError::malformed(format!("the JWT header is not JSON: {e}")),
            CompactError::HeaderNotObject => AttestError::malformed("the JWT header is not a JSON object"),
            // RFC 7515 section 4.1.11: extensions listed in crit must be understood; we know none.
            CompactError::Critical => {
                AttestError::unauthorized("the JWT header lists critical extensions (crit); none are supported")
            }
        })?;
        let claims = match serde_json::from_slice(&jws.payload) {
            Ok(Value::Object(map)) => map,
            Ok(_) => return Err(AttestError::malformed("the JWT payload is not a JSON object")),
            Err(e) => return Err(AttestError::malformed(format!("the JWT payload is not JSON: {e}"))),
        };
        let alg = match jws.header.get("alg") {
            Some(Value::String(name)) => Algorithm::from_name(name).ok_or_else(|| {
                AttestError::unauthorized(format!(
                    "token algorithm {} is not accepted (only {ACCEPTED_ALGS})",
                    shown(name)
                ))
            })?,
            _ => return Err(AttestError::malformed("the JWT header has no alg")),
        };
        let kid = match jws.header.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.clone()),
            Some(_) => return Err(AttestError::malformed("the JWT header's kid is not a string")),
        };
        Ok(Token { signing_input: jws.signing_input, signature: jws.signature, alg, kid, claims })
    }
}

/// What one attestor requires of a token's claims.
#[derive(Debug, Clone)]
pub(super) struct ClaimRules {
    /// The exact `iss`.
    pub(super) issuer: String,
    /// A value that must be in `aud`.
    pub(super) audience: String,
    /// Allowed clock skew, seconds.
    pub(super) leeway: i64,
    /// Longest accepted `exp - iat` (or `exp - now`), seconds.
    pub(super) max_lifetime: i64,
}

impl ClaimRules {
    pub(super) fn check(&self, claims: &Map<String, Value>, now: i64) -> Result<(), AttestError> {
        // Selected by `iss`, but checking again keeps this function correct on its own.
        if claims.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(AttestError::unauthorized(format!("the token's issuer is not {}", shown(&self.issuer))));
        }
        let audiences: Vec<&str> = match claims.get("aud") {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(items)) => {
                let mut v = Vec::with_capacity(items.len());
                for item in items {
                    v.push(item.as_str().ok_or_else(|| {
                        AttestError::unauthorized("the token's aud array contains a value that is not a string")
                    })?);
                }
                v
            }
            Some(_) => return Err(AttestError::unauthorized("the token's aud claim is neither a string nor an array")),
            None => {
                return Err(AttestError::unauthorized(format!(
                    "the token has no aud claim; it must include {}",
                    self.audience
                )));
            }
        };
        if !audiences.contains(&self.audience.as_str()) {
            let listed: Vec<String> = audiences.iter().take(10).map(|a| clip(a)).collect();
            let more = if audiences.len() > 10 { ", ..." } else { "" };
            return Err(AttestError::unauthorized(format!(
                "token audience [{}{more}] does not include {}",
                listed.join(", "),
                self.audience
            )));
        }

        let exp = numeric_date(claims, "exp")?.ok_or_else(|| {
            AttestError::unauthorized("the token has no exp claim; tokens that never expire are not accepted")
        })?;
        let nbf = numeric_date(claims, "nbf")?;
        let iat = numeric_date(claims, "iat")?;
        let leeway = self.leeway;
        if now >= exp.saturating_add(leeway) {
            return Err(AttestError::unauthorized(format!(
                "token expired at {} (now {}, leeway {leeway}s)",
                unix_time(exp),
                unix_time(now)
            )));
        }
        if let Some(nbf) = nbf
            && now.saturating_add(leeway) < nbf
        {
            return Err(AttestError::unauthorized(format!(
                "token not valid before {} (now {}, leeway {leeway}s)",
                unix_time(nbf),
                unix_time(now)
            )));
        }
        if let Some(iat) = iat
            && iat > now.saturating_add(leeway)
        {
            return Err(AttestError::unauthorized(format!(
                "token issued in the future, at {} (now {}, leeway {leeway}s)",
                unix_time(iat),
                unix_time(now)
            )));
        }
        let from = iat.unwrap_or(now);
        let lifetime = exp.saturating_sub(from);
        if lifetime > self.max_lifetime {
            return Err(AttestError::unauthorized(format!(
                "token lifetime {}s ({} to {}) exceeds max_token_lifetime {}s; ask the issuer for a shorter-lived \
                 token (e.g. expirationSeconds on a projected service-account token)",
                lifetime,
                unix_time(from),
                unix_time(exp),
                self.max_lifetime
            )));
        }
        Ok(())
    }
}

/// A NumericDate claim (RFC 7519 section 2): seconds, possibly fractional. Fractional values
/// beyond ±9e15 s (far past any real date) are refused rather than saturated.
#[allow(clippy::cast_possible_truncation)] // the filter keeps the float well inside i64
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, AttestError> {
    let Some(v) = claims.get(name) else { return Ok(None) };
    let n = v.as_i64().or_else(|| v.as_f64().filter(|f| f.is_finite() && f.abs() < 9.0e15).map(|f| f.floor() as i64));
    n.map(Some).ok_or_else(|| AttestError::unauthorized(format!("the token's {name} claim is not a number of seconds")))
}

fn unix_time(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("unix time {t}"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::*;
    use super::*;

    #[tokio::test]
    async fn audience_must_include_ours() {
        let key = es256("k1");
        let f = fixture(&[&key], SUB_TEMPLATE);
        let mut c = claims("w");
        c["aud"] = json!("someone-else");
        let detail = refused(&f.attestors, &sign(&key, &c), "unauthorized", "does not include lanyard").await;
        assert_eq!(detail, "token audience [someone-else] does not include lanyard");
        c["aud"] = json!(["a", "b"]);
        refused(&f.attestors, &sign(&key, &c), "unauthorized", "[a, b] does not include lanyard").await;
        c["aud"] = json!(["a", AUD]);
        assert!(f.attestors.attest(&sign(&key, &c), NOW).await.is_ok());
        c.as_object_mut().expect("object").remove("aud");
        refused(&f.attestors, &sign(&key, &c), "unauthorized", "no aud claim").await;
    }

    #[tokio::test]
    async fn time_claims_are_checked_with_leeway() {
        let key = es256("k1");
        let f = fixture(&[&key], SUB_TEMPLATE);
        let at = |exp: i64, nbf: i64, iat: i64| {
            let mut c = claims("w");
            c["exp"] = json!(exp);
            c["nbf"] = json!(nbf);
            c["iat"] = json!(iat);
            sign(&key, &c)
        };
        let detail = refused(&f.attestors, &at(NOW - 100, NOW - 700, NOW - 700), "unauthorized", "expired at").await;
        assert!(detail.contains("2026-05-28T20:25:00Z"), "{detail}");
        // Within the 30 s leeway.
        assert!(f.attestors.attest(&at(NOW - 10, NOW - 700, NOW - 700), NOW).await.is_ok());
        refused(&f.attestors, &at(NOW + 600, NOW + 100, NOW - 10), "unauthorized", "not valid before").await;
        assert!(f.attestors.attest(&at(NOW + 600, NOW + 20, NOW - 10), NOW).await.is_ok());
        refused(&f.attestors, &at(NOW + 600, NOW - 10, NOW + 100), "unauthorized", "issued in the future").await;
        // exp is required.
        let mut c = claims("w");
        c.as_object_mut().expect("object").remove("exp");
        refused(&f.attestors, &sign(&key, &c), "unauthorized", "no exp claim").await;
        c["exp"] = json!("tomorrow");
        refused(&f.attestors, &sign(&key, &c), "unauthorized", "exp claim is not a number").await;
        // Fractional NumericDates are allowed.
        c["exp"] = json!(NOW as f64 + 600.5);
        assert!(f.attestors.attest(&sign(&key, &c), NOW).await.is_ok());
    }

    #[tokio::test]
    async fn overlong_tokens_are_refused() {
        let key = es256("k1");
        let f = fixture(&[&key], SUB_TEMPLATE);
        let mut c = claims("w");
        c["iat"] = json!(NOW - 60);
        c["exp"] = json!(NOW + 48 * 3600);
        refused(&f.attestors, &sign(&key, &c), "unauthorized", "exceeds max_token_lifetime 86400s").await;
        // Without iat, the remaining lifetime counts.
        c.as_object_mut().expect("object").remove("iat");
        refused(&f.attestors, &sign(&key, &c), "unauthorized", "exceeds max_token_lifetime").await;
        c["exp"] = json!(NOW + 23 * 3600);
        assert!(f.attestors.attest(&sign(&key, &c), NOW).await.is_ok());
    }

    #[tokio::test]
    async fn malformed_tokens_are_malformed() {
        let key = es256("k1");
        let f = fixture(&[&key], SUB_TEMPLATE);
        refused(&f.attestors, "", "malformed", "empty").await;
        refused(&f.attestors, "not-a-jwt", "malformed", "1 dot-separated parts").await;
        refused(&f.attestors, "a.b.c.d.e", "malformed", "JWE").await;
        refused(&f.attestors, "!!.e30.AAAA", "malformed", "header is not base64url").await;
        refused(&f.attestors, &format!("{}.e30.AAAA", b64e(b"[1]")), "malformed", "header is not a JSON object").await;
        refused(
            &f.attestors,
            &format!("{}.bm90IGpzb24.AAAA", b64e(br#"{"alg":"ES256"}"#)),
            "malformed",
            "payload is not JSON",
        )
        .await;
        refused(&f.attestors, &"a".repeat(MAX_TOKEN_BYTES + 1), "malformed", "longer than").await;
    }
}
