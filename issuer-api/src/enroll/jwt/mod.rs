//! JWT / OIDC workload attestation (the `jwt-01` challenge).
//!
//! A workload proves who it is with a JWT that a platform it runs on has signed for it: a
//! Kubernetes projected service-account token, a CI system's OIDC token, a cloud instance
//! identity token. We trust such a token exactly as far as an operator configured: one
//! [`JwtAttestorConfig`] names the issuer (`iss`), the audience that must be in `aud` (so a token
//! minted for some other relying party cannot be replayed to us), where the issuer's public keys
//! (JWKS) are, and a template that turns claims into a SPIFFE ID. This is the idea of SPIRE's
//! `k8s_psat` and `jwt` attestors, without a node agent in between.
//!
//! The parts: [`config`] (the `[[workload.jwt]]` entry and its checks), `jwks` (where keys come
//! from, caching and reloading), `token` (the compact JWS and the claims checks), `template`
//! (claims to SPIFFE ID), and this module, which selects the attestor and ties them together.
//! Decoding, the key policy and signature verification are [`crate::jose`]'s, shared with ACME.
//!
//! Security choices, and why:
//!
//! - Only asymmetric algorithms are accepted (RS256, RS384, RS512, PS256, ES256, ES384, EdDSA).
//!   `none` would let anyone mint tokens, and `HS*` would make the issuer's *public* key a MAC
//!   secret (the classic algorithm-confusion attack); the JOSE layer has neither. The header's
//!   `alg` must also match the type of the selected key, and the key's own `alg`, if the JWKS
//!   states one.
//! - Keys come only from the configured JWKS; `jku`, `x5u`, `jwk` and `x5c` header parameters
//!   are ignored, because a token must never choose the key that verifies it.
//! - The attestor is chosen by the token's *unverified* `iss`, but nothing else is read from the
//!   claims before the signature has been verified with that attestor's keys.
//! - `exp` is required and the lifetime is capped (`max_token_lifetime`), so a leaked token is
//!   useful for a bounded time even when an issuer mints very long-lived tokens.
//! - A claim value fills in exactly one SPIFFE ID path segment: it must be a non-empty string of
//!   letters, digits, `-`, `.` and `_`, and not `.` or `..`. Otherwise a workload that controls a
//!   claim (a namespace name, a repository name) could inject `/` or `..` and climb into another
//!   workload's ID.
//! - Error details say precisely what is wrong (they end up in ACME problem documents and logs)
//!   but never contain the token: it is a bearer credential.

pub mod config;
mod jwks;
mod template;
#[cfg(test)]
mod test_support;
mod token;

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use ca::SpiffeId;
use serde_json::Value;
use tracing::warn;

pub use self::config::{JwtAttestorConfig, JwtConfigError};
use self::jwks::{JwksCache, KeySet, key_description, key_name, parse_jwks};
use self::template::Template;
use self::token::{ClaimRules, Token};
use crate::jose::{JwkSetKey, VerifyError};

/// Why a JWT was not accepted. `kind` is the suffix of an ACME error type
/// (`urn:ietf:params:acme:error:<kind>`); `detail` is for humans and never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct AttestError {
    /// `unauthorized` (the token is not acceptable), `malformed` (it is not a JWT) or
    /// `serverInternal` (we could not load the issuer's keys).
    pub kind: &'static str,
    /// What exactly is wrong.
    pub detail: String,
}

impl AttestError {
    /// The token is well-formed but not acceptable: signature, issuer, audience, time, claims.
    pub const UNAUTHORIZED: &'static str = "unauthorized";
    /// The token cannot be parsed as a compact JWS.
    pub const MALFORMED: &'static str = "malformed";
    /// The server could not load the issuer's keys; the client may retry later.
    pub const SERVER_INTERNAL: &'static str = "serverInternal";

    fn unauthorized(detail: impl Into<String>) -> Self {
        AttestError { kind: Self::UNAUTHORIZED, detail: detail.into() }
    }

    fn malformed(detail: impl Into<String>) -> Self {
        AttestError { kind: Self::MALFORMED, detail: detail.into() }
    }

    fn server_internal(detail: impl Into<String>) -> Self {
        AttestError { kind: Self::SERVER_INTERNAL, detail: detail.into() }
    }
}

/// The configured JWT attestors, keyed by issuer.
#[derive(Debug, Default)]
pub struct JwtAttestors {
    by_issuer: HashMap<String, Attestor>,
}

impl JwtAttestors {
    /// Checks the configuration and builds the attestors. Everything that can be checked without
    /// I/O is checked here, so that a typo fails at startup rather than at the first enrollment;
    /// the JWKS itself is loaded on first use (or by [`JwtAttestors::warm_up`]), so a JWKS
    /// endpoint that is briefly down does not keep the CA from starting.
    pub fn new(configs: Vec<JwtAttestorConfig>, trust_domain: &str) -> Result<Self, JwtConfigError> {
        let mut by_issuer = HashMap::new();
        for (i, cfg) in configs.into_iter().enumerate() {
            let issuer = cfg.issuer.clone();
            let err = |reason: String| JwtConfigError { index: i + 1, issuer: issuer.clone(), reason };
            if by_issuer.contains_key(&cfg.issuer) {
                return Err(err("another entry has the same issuer; the issuer selects the entry".into()));
            }
            let attestor = Attestor::new(cfg, trust_domain).map_err(err)?;
            by_issuer.insert(attestor.rules.issuer.clone(), attestor);
        }
        Ok(JwtAttestors { by_issuer })
    }

    /// Whether no attestor is configured (then the `jwt-01` challenge is not offered).
    pub fn is_empty(&self) -> bool {
        self.by_issuer.is_empty()
    }

    /// The configured issuers, for logs.
    pub fn issuers(&self) -> impl Iterator<Item = &str> {
        self.by_issuer.keys().map(String::as_str)
    }

    /// Loads every JWKS now: optional, but it makes a wrong path or URL visible in the startup
    /// log instead of at the first enrollment. A failure is logged (the cause in detail by the
    /// loader, the outcome here) and not returned: a later attestation retries, and a JWKS
    /// endpoint that is briefly down must not keep the CA from starting.
    pub async fn warm_up(&self) {
        for (issuer, a) in &self.by_issuer {
            if let Err(e) = a.jwks.current_keys().await {
                warn!(issuer = %issuer, error = %e, "JWKS warm-up failed; attestation will retry the load");
            }
        }
    }

    /// Verifies `jwt` at time `now_unix` (seconds) and returns the SPIFFE ID its claims map to.
    pub async fn attest(&self, jwt: &str, now_unix: i64) -> Result<SpiffeId, AttestError> {
        let token = Token::parse(jwt)?;
        self.select(&token)?.attest(&token, now_unix).await
    }

    /// The attestor of the token's (unverified) `iss`.
    fn select(&self, token: &Token<'_>) -> Result<&Attestor, AttestError> {
        let iss = match token.claims.get("iss") {
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(AttestError::unauthorized("the token's iss claim is not a string")),
            None => return Err(AttestError::unauthorized("the token has no iss claim, so no attestor can check it")),
        };
        self.by_issuer
            .get(iss)
            .ok_or_else(|| AttestError::unauthorized(format!("no attestor for issuer {}", shown(iss))))
    }

    /// [`JwtAttestors::attest`] with `jwks` as the issuer's key set (what a load would have read)
    /// instead of loading it: the same parsing and checks, without I/O. For fuzzing.
    #[doc(hidden)]
    pub fn attest_with_jwks(&self, jwt: &str, jwks: &[u8], now_unix: i64) -> Result<SpiffeId, AttestError> {
        let token = Token::parse(jwt)?;
        let attestor = self.select(&token)?;
        let (keys, _skipped) = parse_jwks(jwks).map_err(|e| AttestError::server_internal(format!("the JWKS {e}")))?;
        attestor.check_token(&keys, &token, now_unix)
    }
}

/// One configured issuer.
struct Attestor {
    rules: ClaimRules,
    template: Template,
    jwks: JwksCache,
}

impl fmt::Debug for Attestor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attestor")
            .field("issuer", &self.rules.issuer)
            .field("audience", &self.rules.audience)
            .field("template", &self.template.raw)
            .field("jwks", &self.jwks)
            .finish_non_exhaustive()
    }
}

impl Attestor {
    fn new(cfg: JwtAttestorConfig, trust_domain: &str) -> Result<Self, String> {
        let checked = cfg.check(trust_domain)?;
        let jwks = JwksCache::new(checked.rules.issuer.clone(), checked.source, checked.refresh);
        Ok(Attestor { rules: checked.rules, template: checked.template, jwks })
    }

    async fn attest(&self, token: &Token<'_>, now: i64) -> Result<SpiffeId, AttestError> {
        let mut keys = self.jwks.current_keys().await?;
        let known = match &token.kid {
            Some(kid) => keys.keys.iter().any(|k| k.kid.as_deref() == Some(kid.as_str())),
            None => !keys.keys.is_empty(),
        };
        if !known {
            // The issuer may have rotated its keys since we loaded them.
            keys = self.jwks.reload(true).await?;
        }
        self.check_token(&keys, token, now)
    }

    /// Signature, then claims, then the SPIFFE ID.
    fn check_token(&self, keys: &KeySet, token: &Token<'_>, now: i64) -> Result<SpiffeId, AttestError> {
        self.verify_signature(keys, token)?;
        // From here on the claims are authentic.
        self.rules.check(&token.claims, now)?;
        self.template.render(&token.claims)
    }

    fn verify_signature(&self, keys: &KeySet, token: &Token<'_>) -> Result<(), AttestError> {
        let candidates: Vec<&JwkSetKey> = match &token.kid {
            Some(kid) => keys.keys.iter().filter(|k| k.kid.as_deref() == Some(kid.as_str())).collect(),
            None if keys.keys.len() == 1 => keys.keys.iter().collect(),
            None => {
                return Err(AttestError::unauthorized(format!(
                    "the token has no kid header and the JWKS of issuer {} has {} usable keys, so the signing key \
                     is unknown",
                    shown(&self.rules.issuer),
                    keys.keys.len()
                )));
            }
        };
        if candidates.is_empty() {
            let kid = token.kid.as_deref().unwrap_or_default();
            return Err(AttestError::unauthorized(format!(
                "no key with kid={} in the JWKS of issuer {} (it has {})",
                shown(kid),
                shown(&self.rules.issuer),
                keys.describe_kids()
            )));
        }
        let usable: Vec<&JwkSetKey> = candidates.iter().copied().filter(|k| k.accepts(token.alg)).collect();
        if usable.is_empty() {
            let k = candidates[0];
            return Err(AttestError::unauthorized(format!(
                "the token's algorithm {} does not match key {} ({})",
                token.alg,
                key_name(k),
                key_description(k)
            )));
        }
        let mut problem = None;
        for key in &usable {
            match key.key.verify(token.alg, token.signing_input.as_bytes(), &token.signature) {
                Ok(()) => return Ok(()),
                Err(VerifyError::Signature) => {}
                Err(e) => problem = Some(e.to_string()),
            }
        }
        let names: Vec<String> = usable.iter().map(|k| key_name(k)).collect();
        Err(AttestError::unauthorized(match problem {
            Some(p) => format!("signature does not verify with key {}: {p}", names.join(", ")),
            None => format!("signature does not verify with key {}", names.join(", ")),
        }))
    }
}

/// A token-supplied string, quoted, escaped and shortened for an error detail.
fn shown(s: &str) -> String {
    format!("\"{}\"", clip(s))
}

/// A token-supplied string, escaped (no control characters reach logs) and shortened.
fn clip(s: &str) -> String {
    const MAX: usize = 80;
    let mut out: String = s.chars().take(MAX).flat_map(char::escape_debug).collect();
    if s.chars().count() > MAX {
        out.push_str("...");
    }
    out
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn humantime(d: Duration) -> String {
    humantime_serde::re::humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::test_support::*;
    use super::*;

    #[tokio::test]
    async fn a_valid_token_maps_to_its_spiffe_id() {
        let key = es256("k1");
        let f = fixture(&[&key], SUB_TEMPLATE);
        let id = f.attestors.attest(&sign(&key, &claims("builder-7")), NOW).await.expect("accepted");
        assert_eq!(id.to_string(), "spiffe://example.org/sub/builder-7");
        // A trailing newline (a token read from a file) is fine.
        let token = format!("{}\n", sign(&key, &claims("builder-7")));
        assert!(f.attestors.attest(&token, NOW).await.is_ok());
    }

    #[tokio::test]
    async fn a_kubernetes_token_maps_through_json_pointers() {
        let key = rs256("k8s-key");
        let f = fixture(&[&key], K8S_TEMPLATE);
        let id = f.attestors.attest(&sign(&key, &k8s_claims("payments", "api")), NOW).await.expect("accepted");
        assert_eq!(id.to_string(), "spiffe://example.org/ns/payments/sa/api");
        assert_eq!(id.trust_domain(), TD);
        assert_eq!(id.path(), "/ns/payments/sa/api");
        // The same token through {sub}: "system:serviceaccount:..." has ':' and is refused clearly.
        let g = fixture(&[&key], SUB_TEMPLATE);
        let detail = refused(&g.attestors, &sign(&key, &k8s_claims("payments", "api")), "unauthorized", "{sub}").await;
        assert!(detail.contains("only letters, digits"), "{detail}");
    }

    #[tokio::test]
    async fn eddsa_tokens_and_kid_less_tokens_with_a_single_key_verify() {
        let key = ed25519("ed");
        let f = fixture(&[&key], SUB_TEMPLATE);
        assert!(f.attestors.attest(&sign(&key, &claims("w")), NOW).await.is_ok());
        let anonymous = Signer { kid: None, ..ed25519("unused") };
        let g = fixture(&[&anonymous], SUB_TEMPLATE);
        assert!(g.attestors.attest(&sign(&anonymous, &claims("w")), NOW).await.is_ok());
        // Without a kid and with two keys there is no telling which key to use.
        let other = es256("other");
        let h = fixture(&[&anonymous, &other], SUB_TEMPLATE);
        refused(&h.attestors, &sign(&anonymous, &claims("w")), "unauthorized", "no kid").await;
    }

    #[tokio::test]
    async fn unknown_issuers_are_refused() {
        let key = es256("k1");
        let f = fixture(&[&key], SUB_TEMPLATE);
        let mut c = claims("w");
        c["iss"] = json!("https://evil.example");
        refused(&f.attestors, &sign(&key, &c), "unauthorized", "no attestor for issuer \"https://evil.example\"").await;
        c.as_object_mut().expect("object").remove("iss");
        refused(&f.attestors, &sign(&key, &c), "unauthorized", "no iss claim").await;
    }

    #[tokio::test]
    async fn bad_signatures_are_refused() {
        let key = es256("k1");
        let f = fixture(&[&key], SUB_TEMPLATE);
        // Another key claiming the same kid.
        let impostor = es256("k1");
        refused(
            &f.attestors,
            &sign(&impostor, &claims("w")),
            "unauthorized",
            "signature does not verify with key kid=k1",
        )
        .await;
        // A genuine token whose payload was swapped.
        let good = sign(&key, &claims("w"));
        let other = sign(&key, &claims("admin"));
        let (h, rest) = good.split_once('.').expect("dot");
        let (_, sig) = rest.split_once('.').expect("dot");
        let payload = other.split('.').nth(1).expect("payload");
        refused(&f.attestors, &format!("{h}.{payload}.{sig}"), "unauthorized", "signature does not verify").await;
        // The header's alg must fit the key: an ES256 key is not used for an EdDSA token.
        let ed = Signer { kid: Some("k1".into()), ..ed25519("x") };
        refused(
            &f.attestors,
            &sign(&ed, &claims("w")),
            "unauthorized",
            "does not match key kid=k1 (EC P-256 key for ES256)",
        )
        .await;
    }

    #[tokio::test]
    async fn none_and_hmac_algorithms_are_refused() {
        let key = es256("k1");
        let f = fixture(&[&key], SUB_TEMPLATE);
        let header = b64e(br#"{"alg":"none","kid":"k1"}"#);
        let payload = b64e(claims("w").to_string().as_bytes());
        refused(
            &f.attestors,
            &format!("{header}.{payload}."),
            "unauthorized",
            "token algorithm \"none\" is not accepted",
        )
        .await;
        // HS256 keyed with the public key: the algorithm-confusion attack.
        let mut h = Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some("k1".into());
        let secret = serde_json::to_vec(&key.jwk).expect("json");
        let token = jsonwebtoken::encode(&h, &claims("w"), &EncodingKey::from_secret(&secret)).expect("sign");
        refused(&f.attestors, &token, "unauthorized", "token algorithm \"HS256\" is not accepted").await;
        // Symmetric keys in the JWKS are ignored altogether.
        let (set, skipped) =
            parse_jwks(json!({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "s"}]}).to_string().as_bytes())
                .expect("jwks");
        assert!(set.keys.is_empty());
        assert!(skipped[0].contains("symmetric"), "{skipped:?}");
        // crit extensions we do not understand.
        let header = b64e(br#"{"alg":"ES256","kid":"k1","crit":["b64"],"b64":false}"#);
        refused(&f.attestors, &format!("{header}.{payload}.AAAA"), "unauthorized", "crit").await;
    }

    #[test]
    fn attest_futures_are_send() {
        fn assert_send<T: Send>(_: &T) {}
        let attestors = JwtAttestors::default();
        let fut = attestors.attest("x", NOW);
        assert_send(&fut);
    }
}
