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
//! Security choices, and why:
//!
//! - Only asymmetric algorithms are accepted (RS256, RS384, RS512, PS256, ES256, ES384, EdDSA).
//!   `none` would let anyone mint tokens, and `HS*` would make the issuer's *public* key a MAC
//!   secret (the classic algorithm-confusion attack). The header's `alg` must also match the
//!   type of the selected key, and the key's own `alg`, if the JWKS states one.
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

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ca::SpiffeId;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};
use tracing::{error, info, warn};

/// Longest JWT we look at. Kubernetes tokens are 1-2 KiB and OIDC ID tokens rarely exceed 8 KiB;
/// the limit only keeps a hostile client from making us base64-decode and parse megabytes.
const MAX_TOKEN_BYTES: usize = 64 * 1024;
/// Largest JWKS document we accept, from a file or a URL.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Deadline for a whole JWKS download (connect, TLS, headers and body).
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Least time between two JWKS loads that tokens can trigger (an unknown `kid`, a stale cache).
/// Without it a client could make us hit the issuer's JWKS endpoint once per request by sending
/// random `kid`s.
const MIN_RELOAD_INTERVAL: Duration = Duration::from_secs(10);
/// RSA keys below this size are ignored: they are factorable with serious effort.
const MIN_RSA_BITS: usize = 2048;
/// Largest accepted `leeway`: more would make `exp` meaningless.
const MAX_LEEWAY: Duration = Duration::from_secs(600);
/// Human-readable list of accepted algorithms, for error details.
const ACCEPTED_ALGS: &str = "RS256, RS384, RS512, PS256, ES256, ES384 and EdDSA";

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

fn default_max_token_lifetime() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_jwks_refresh() -> Duration {
    Duration::from_secs(300)
}

/// One `[[workload.jwt]]` entry of the server configuration: one token issuer we trust, e.g. one
/// Kubernetes cluster.
///
/// ```toml
/// [[workload.jwt]]
/// issuer = "https://kubernetes.default.svc.cluster.local"
/// audience = "lanyard"
/// jwks_file = "/etc/lanyard/cluster-a-jwks.json"
/// spiffe_id_template = "spiffe://example.org/ns/{/kubernetes.io/namespace}/sa/{/kubernetes.io/serviceaccount/name}"
/// ```
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtAttestorConfig {
    /// The exact `iss` of the tokens. It also selects this attestor, so it must be unique.
    pub issuer: String,
    /// A value that must appear in the token's `aud` (a string or an array). Issuers mint tokens
    /// for many relying parties; requiring our own audience stops a token meant for another
    /// service from being replayed here.
    pub audience: String,
    /// Local JWKS file (e.g. from `kubectl get --raw /openid/v1/jwks`). Re-read when it changes.
    /// Exactly one of `jwks_file` and `jwks_url` must be set.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// JWKS URL. `https://` only: the keys decide who gets certificates, so they must not travel
    /// unauthenticated. `http://` is allowed for loopback hosts only (tests, local sidecars).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// PEM file with the roots that authenticate `jwks_url` (e.g. the cluster's CA); default:
    /// the system's roots. Read at every fetch, so it can be rotated without a restart.
    #[serde(default)]
    pub jwks_ca_file: Option<PathBuf>,
    /// How claims become a SPIFFE ID. `{name}` is a top-level claim, `{/a/b}` a JSON pointer
    /// (RFC 6901, so `{/kubernetes.io/namespace}` reaches a key with a dot in it). Each value
    /// fills one path segment. The template must start with `spiffe://<trust domain>/`.
    pub spiffe_id_template: String,
    /// Allowed clock skew for `exp`, `nbf` and `iat` (at most 10 minutes).
    #[serde(with = "humantime_serde", default = "default_leeway")]
    pub leeway: Duration,
    /// Tokens whose `exp - iat` (or `exp - now` without `iat`) exceeds this are refused, so that
    /// a long-lived token that leaks cannot be used to enroll for long.
    #[serde(with = "humantime_serde", default = "default_max_token_lifetime")]
    pub max_token_lifetime: Duration,
    /// The JWKS is reloaded at least this often, so that removed (compromised) keys stop
    /// working. A token signed with a key we do not know also triggers a reload (at most once
    /// every 10 seconds), so a rotation by the issuer is picked up immediately.
    #[serde(with = "humantime_serde", default = "default_jwks_refresh")]
    pub jwks_refresh: Duration,
}

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

/// An invalid `[[workload.jwt]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("entry {index} (issuer {issuer:?}): {reason}")]
pub struct JwtConfigError {
    /// 1-based position of the entry in the configuration.
    pub index: usize,
    /// Its `issuer`.
    pub issuer: String,
    /// What is wrong with it.
    pub reason: String,
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
            by_issuer.insert(attestor.issuer.clone(), attestor);
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

    /// Loads every JWKS now, logging failures instead of returning them: optional, but it makes
    /// a wrong path or URL visible in the startup log instead of at the first enrollment.
    pub async fn warm_up(&self) {
        for a in self.by_issuer.values() {
            // Failures are logged by `current_keys`; a later attestation retries.
            let _ = a.current_keys().await;
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
    issuer: String,
    audience: String,
    template: Template,
    source: JwksSource,
    leeway: i64,
    max_lifetime: i64,
    refresh: Duration,
    /// [`MIN_RELOAD_INTERVAL`]; a field so tests can shorten it.
    min_reload_interval: Duration,
    /// The keys in use. Readers clone the `Arc` and release the lock at once, so verification
    /// never waits for a download.
    loaded: RwLock<Option<Arc<Loaded>>>,
    /// Held while loading, so concurrent requests cause one load, not one each.
    reload: tokio::sync::Mutex<ReloadState>,
}

impl fmt::Debug for Attestor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attestor")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("template", &self.template.raw)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// A loaded JWKS.
#[derive(Debug)]
struct Loaded {
    keys: Arc<KeySet>,
    at: Instant,
    /// For a file source: the file's identity when it was read.
    stamp: Option<FileStamp>,
}

#[derive(Debug, Default)]
struct ReloadState {
    last_attempt: Option<Instant>,
    /// The file's identity at the last attempt, so a changed file is re-read at once even
    /// within [`MIN_RELOAD_INTERVAL`], while an unchanged (or missing) one is not re-read.
    last_stamp: Option<FileStamp>,
    last_error: Option<String>,
}

/// Cheap change detection for a JWKS file: size, modification time and (on Unix) inode, which
/// changes when Kubernetes swaps a mounted ConfigMap's symlink.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

#[derive(Debug, Clone)]
enum JwksSource {
    File(PathBuf),
    Url { uri: hyper::Uri, ca_file: Option<PathBuf> },
}

impl fmt::Display for JwksSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksSource::File(p) => write!(f, "file {}", p.display()),
            JwksSource::Url { uri, .. } => write!(f, "URL {uri}"),
        }
    }
}

impl Attestor {
    fn new(cfg: JwtAttestorConfig, trust_domain: &str) -> Result<Self, String> {
        if cfg.issuer.is_empty() {
            return Err("issuer may not be empty".into());
        }
        if cfg.audience.is_empty() {
            return Err("audience may not be empty: it is what keeps tokens for other services out".into());
        }
        let source = match (cfg.jwks_file, cfg.jwks_url) {
            (Some(_), Some(_)) => return Err("set only one of jwks_file and jwks_url".into()),
            (None, None) => return Err("set one of jwks_file and jwks_url".into()),
            (Some(path), None) => {
                if cfg.jwks_ca_file.is_some() {
                    return Err("jwks_ca_file only applies to jwks_url".into());
                }
                JwksSource::File(path)
            }
            (None, Some(url)) => JwksSource::Url { uri: check_jwks_url(&url)?, ca_file: cfg.jwks_ca_file },
        };
        if cfg.leeway > MAX_LEEWAY {
            return Err(format!("leeway may be at most {}", humantime(MAX_LEEWAY)));
        }
        if cfg.max_token_lifetime < Duration::from_secs(1) {
            return Err("max_token_lifetime must be at least 1s".into());
        }
        if cfg.jwks_refresh < Duration::from_secs(1) {
            return Err("jwks_refresh must be at least 1s".into());
        }
        let template = Template::parse(&cfg.spiffe_id_template, trust_domain)
            .map_err(|e| format!("spiffe_id_template {:?} {e}", cfg.spiffe_id_template))?;
        Ok(Attestor {
            issuer: cfg.issuer,
            audience: cfg.audience,
            template,
            source,
            leeway: secs(cfg.leeway),
            max_lifetime: secs(cfg.max_token_lifetime),
            refresh: cfg.jwks_refresh,
            min_reload_interval: MIN_RELOAD_INTERVAL,
            loaded: RwLock::new(None),
            reload: tokio::sync::Mutex::new(ReloadState::default()),
        })
    }

    async fn attest(&self, token: &Token<'_>, now: i64) -> Result<SpiffeId, AttestError> {
        let mut keys = self.current_keys().await?;
        let known = match &token.kid {
            Some(kid) => keys.keys.iter().any(|k| k.kid.as_deref() == Some(kid.as_str())),
            None => !keys.keys.is_empty(),
        };
        if !known {
            // The issuer may have rotated its keys since we loaded them.
            keys = self.reload(true).await?;
        }
        self.check_token(&keys, token, now)
    }

    /// Signature, then claims, then the SPIFFE ID.
    fn check_token(&self, keys: &KeySet, token: &Token<'_>, now: i64) -> Result<SpiffeId, AttestError> {
        self.verify_signature(keys, token)?;
        // From here on the claims are authentic.
        self.check_claims(&token.claims, now)?;
        self.template.render(&token.claims)
    }

    fn verify_signature(&self, keys: &KeySet, token: &Token<'_>) -> Result<(), AttestError> {
        let candidates: Vec<&Key> = match &token.kid {
            Some(kid) => keys.keys.iter().filter(|k| k.kid.as_deref() == Some(kid.as_str())).collect(),
            None if keys.keys.len() == 1 => keys.keys.iter().collect(),
            None => {
                return Err(AttestError::unauthorized(format!(
                    "the token has no kid header and the JWKS of issuer {} has {} usable keys, so the signing key \
                     is unknown",
                    shown(&self.issuer),
                    keys.keys.len()
                )));
            }
        };
        if candidates.is_empty() {
            let kid = token.kid.as_deref().unwrap_or_default();
            return Err(AttestError::unauthorized(format!(
                "no key with kid={} in the JWKS of issuer {} (it has {})",
                shown(kid),
                shown(&self.issuer),
                keys.describe_kids()
            )));
        }
        let usable: Vec<&Key> = candidates.iter().copied().filter(|k| k.accepts(token.alg)).collect();
        if usable.is_empty() {
            let k = candidates[0];
            return Err(AttestError::unauthorized(format!(
                "the token's algorithm {:?} does not match key {} ({})",
                token.alg,
                k.name(),
                k.describe()
            )));
        }
        let mut problem = None;
        for key in &usable {
            match jsonwebtoken::crypto::verify(
                token.signature,
                token.signing_input.as_bytes(),
                &key.decoding,
                token.alg,
            ) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => problem = Some(e.to_string()),
            }
        }
        let names: Vec<String> = usable.iter().map(|k| k.name()).collect();
        Err(AttestError::unauthorized(match problem {
            Some(p) => format!("signature does not verify with key {}: {p}", names.join(", ")),
            None => format!("signature does not verify with key {}", names.join(", ")),
        }))
    }

    fn check_claims(&self, claims: &Map<String, Value>, now: i64) -> Result<(), AttestError> {
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

    fn snapshot(&self) -> Option<Arc<Loaded>> {
        // A poisoned lock only means a panic elsewhere; the `Option<Arc>` inside is still whole.
        self.loaded.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The keys to verify with: the cached set, unless it is too old or its file changed.
    async fn current_keys(&self) -> Result<Arc<KeySet>, AttestError> {
        if let Some(l) = self.snapshot()
            && !self.is_stale(&l).await
        {
            return Ok(l.keys.clone());
        }
        self.reload(false).await
    }

    async fn is_stale(&self, loaded: &Loaded) -> bool {
        if loaded.at.elapsed() >= self.refresh {
            return true;
        }
        match &self.source {
            JwksSource::File(path) => file_stamp(path).await.ok() != loaded.stamp,
            JwksSource::Url { .. } => false,
        }
    }

    /// Loads the JWKS unless that was tried within [`MIN_RELOAD_INTERVAL`] (and, for a file, the
    /// file has not changed since). A failed load keeps the previous keys: an issuer's JWKS
    /// endpoint being briefly down should not stop enrollment.
    async fn reload(&self, for_unknown_kid: bool) -> Result<Arc<KeySet>, AttestError> {
        let seen = self.snapshot();
        let mut state = match self.reload.try_lock() {
            Ok(guard) => guard,
            // Someone is loading. Stale keys are good enough for a known kid; otherwise wait.
            Err(_) => match &seen {
                Some(l) if !for_unknown_kid => return Ok(l.keys.clone()),
                _ => self.reload.lock().await,
            },
        };
        let current = self.snapshot();
        let changed = match (&seen, &current) {
            (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
            (None, Some(_)) => true,
            _ => false,
        };
        if let Some(cur) = &current
            && changed
        {
            // Another request reloaded while we waited for the lock.
            return Ok(cur.keys.clone());
        }

        let stamp = match &self.source {
            JwksSource::File(path) => file_stamp(path).await.ok(),
            JwksSource::Url { .. } => None,
        };
        let file_changed = matches!(self.source, JwksSource::File(_)) && stamp != state.last_stamp;
        let recently = state.last_attempt.is_some_and(|t| t.elapsed() < self.min_reload_interval);
        if recently && !file_changed {
            return match current {
                Some(cur) => Ok(cur.keys.clone()),
                None => Err(self.unavailable(state.last_error.as_deref().unwrap_or("loading"))),
            };
        }
        state.last_attempt = Some(Instant::now());
        state.last_stamp = stamp.clone();
        match self.load().await {
            Ok(keys) => {
                state.last_error = None;
                let loaded = Arc::new(Loaded { keys: keys.clone(), at: Instant::now(), stamp });
                *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = Some(loaded);
                Ok(keys)
            }
            Err(e) => {
                state.last_error = Some(e.clone());
                match current {
                    Some(cur) => {
                        warn!(issuer = %self.issuer, error = %e, "could not reload the JWKS; keeping the keys loaded before");
                        Ok(cur.keys.clone())
                    }
                    None => {
                        error!(issuer = %self.issuer, error = %e, "could not load the JWKS");
                        Err(self.unavailable(&e))
                    }
                }
            }
        }
    }

    /// The cause (file paths, URLs, network errors) goes to the log; the workload only learns that
    /// the CA could not check its token right now.
    fn unavailable(&self, cause: &str) -> AttestError {
        warn!(issuer = %self.issuer, cause = %cause, "JWT signing keys unavailable");
        AttestError::server_internal(format!("the signing keys of issuer {} are unavailable", self.issuer))
    }

    async fn load(&self) -> Result<Arc<KeySet>, String> {
        let bytes = match &self.source {
            JwksSource::File(path) => read_jwks_file(path).await?,
            JwksSource::Url { uri, ca_file } => fetch_jwks(uri, ca_file.as_deref()).await?,
        };
        let (set, skipped) = parse_jwks(&bytes).map_err(|e| format!("the JWKS from {} {e}", self.source))?;
        for reason in &skipped {
            warn!(issuer = %self.issuer, source = %self.source, "ignoring a JWKS key: {reason}");
        }
        if set.keys.is_empty() {
            warn!(issuer = %self.issuer, source = %self.source, "the JWKS has no usable key; every token will be refused");
        }
        info!(issuer = %self.issuer, source = %self.source, keys = set.keys.len(), "loaded JWKS");
        Ok(Arc::new(set))
    }
}

/// `jwks_url` must be https, or http to a loopback address (nothing on the wire to tamper with).
fn check_jwks_url(url: &str) -> Result<hyper::Uri, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("jwks_url {url:?} is not a URL: {e}"))?;
    let host = uri.host().ok_or_else(|| format!("jwks_url {url:?} has no host"))?;
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") => {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let loopback =
                bare.eq_ignore_ascii_case("localhost") || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(uri)
            } else {
                Err(format!("jwks_url {url:?} must use https (http is allowed only for loopback hosts)"))
            }
        }
        _ => Err(format!("jwks_url {url:?} must be an https:// URL")),
    }
}

async fn file_stamp(path: &Path) -> std::io::Result<FileStamp> {
    let md = tokio::fs::metadata(path).await?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&md);
    #[cfg(not(unix))]
    let inode = 0;
    Ok(FileStamp { len: md.len(), modified: md.modified().ok(), inode })
}

async fn read_jwks_file(path: &Path) -> Result<Vec<u8>, String> {
    let what = || format!("reading the JWKS file {}", path.display());
    let md = tokio::fs::metadata(path).await.map_err(|e| format!("{}: {e}", what()))?;
    if md.len() > MAX_JWKS_BYTES as u64 {
        return Err(format!("{}: larger than {MAX_JWKS_BYTES} bytes", what()));
    }
    let bytes = tokio::fs::read(path).await.map_err(|e| format!("{}: {e}", what()))?;
    if bytes.len() > MAX_JWKS_BYTES {
        return Err(format!("{}: larger than {MAX_JWKS_BYTES} bytes", what()));
    }
    Ok(bytes)
}

/// Downloads a JWKS with a fresh client: fetches are rare (minutes apart), and a new client
/// picks up a rotated `jwks_ca_file` or system roots without any cache invalidation.
async fn fetch_jwks(uri: &hyper::Uri, ca_file: Option<&Path>) -> Result<Vec<u8>, String> {
    use http_body_util::{BodyExt, Empty, Limited};
    use hyper::body::Bytes;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let https = uri.scheme_str() == Some("https");
    let tls_config = |roots: rustls::RootCertStore| -> Result<rustls::ClientConfig, String> {
        Ok(rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth())
    };
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match ca_file {
        Some(path) => builder.with_tls_config(tls_config(read_roots(path)?)?),
        None if https => builder
            .with_provider_and_native_roots(provider.clone())
            .map_err(|e| format!("loading the system's root certificates: {e}"))?,
        // Plain http to a loopback host (checked at startup): no TLS happens.
        None => builder.with_tls_config(tls_config(rustls::RootCertStore::empty())?),
    };
    let builder = if https { builder.https_only() } else { builder.https_or_http() };
    let connector = builder.enable_http1().build();
    let client: hyper_util::client::legacy::Client<_, Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
    let request = hyper::Request::get(uri.clone())
        .header(hyper::header::ACCEPT, "application/jwk-set+json, application/json")
        .header(hyper::header::USER_AGENT, concat!("lanyard-ca/", env!("CARGO_PKG_VERSION")))
        .body(Empty::new())
        .map_err(|e| format!("GET {uri}: {e}"))?;
    let fetch = async {
        let response = client.request(request).await.map_err(|e| format!("GET {uri}: {}", error_chain(&e)))?;
        let status = response.status();
        if status != hyper::StatusCode::OK {
            return Err(format!("GET {uri}: HTTP status {status}"));
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES).collect().await.map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                format!("GET {uri}: the response is larger than {MAX_JWKS_BYTES} bytes")
            } else {
                format!("GET {uri}: reading the response: {}", error_chain(&*e))
            }
        })?;
        Ok(body.to_bytes().to_vec())
    };
    tokio::time::timeout(JWKS_FETCH_TIMEOUT, fetch)
        .await
        .map_err(|_| format!("GET {uri}: no complete response within {}", humantime(JWKS_FETCH_TIMEOUT)))?
}

fn read_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let what = || format!("jwks_ca_file {}", path.display());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| format!("{}: {e}", what()))? {
        let cert = cert.map_err(|e| format!("{}: {e}", what()))?;
        roots.add(cert).map_err(|e| format!("{}: {e}", what()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no certificate found", what()));
    }
    Ok(roots)
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// The signature keys of one JWKS that we are willing to use.
#[derive(Debug, Default)]
struct KeySet {
    keys: Vec<Key>,
}

impl KeySet {
    fn describe_kids(&self) -> String {
        if self.keys.is_empty() {
            return "no usable key".into();
        }
        let kids: Vec<String> = self.keys.iter().take(10).map(Key::name).collect();
        let more = if self.keys.len() > 10 { ", ..." } else { "" };
        format!("{}{more}", kids.join(", "))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyType {
    Rsa { bits: usize },
    P256,
    P384,
    Ed25519,
}

#[derive(Debug)]
struct Key {
    kid: Option<String>,
    kty: KeyType,
    /// The key's own `alg`, if the JWKS pins one.
    alg: Option<Algorithm>,
    decoding: DecodingKey,
}

impl Key {
    /// Whether a token with header `alg` may be verified with this key: the algorithm must fit
    /// the key type (and the key's `alg`), so that no key is ever used with another algorithm.
    fn accepts(&self, alg: Algorithm) -> bool {
        let fits = matches!(
            (self.kty, alg),
            (KeyType::Rsa { .. }, Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256)
                | (KeyType::P256, Algorithm::ES256)
                | (KeyType::P384, Algorithm::ES384)
                | (KeyType::Ed25519, Algorithm::EdDSA)
        );
        fits && self.alg.is_none_or(|a| a == alg)
    }

    fn name(&self) -> String {
        match &self.kid {
            Some(kid) => format!("kid={}", clip(kid)),
            None => "(without kid)".into(),
        }
    }

    fn describe(&self) -> String {
        let kty = match self.kty {
            KeyType::Rsa { bits } => format!("RSA {bits}-bit"),
            KeyType::P256 => "EC P-256".into(),
            KeyType::P384 => "EC P-384".into(),
            KeyType::Ed25519 => "Ed25519".into(),
        };
        match self.alg {
            Some(alg) => format!("{kty} key for {alg:?}"),
            None => format!("{kty} key"),
        }
    }
}

/// Parses a JWKS. Keys we cannot or will not use (encryption keys, symmetric keys, weak RSA,
/// unknown curves) are skipped with a reason rather than failing the whole set: issuers publish
/// sets with mixed keys, and one odd key should not block the others.
fn parse_jwks(bytes: &[u8]) -> Result<(KeySet, Vec<String>), String> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| format!("is not JSON: {e}"))?;
    let entries = doc.get("keys").and_then(Value::as_array).ok_or("is not a JSON Web Key Set (no \"keys\" array)")?;
    let mut set = KeySet::default();
    let mut skipped = Vec::new();
    for (i, raw) in entries.iter().enumerate() {
        match parse_key(raw) {
            Ok(key) => set.keys.push(key),
            Err(reason) => {
                let kid = raw.get("kid").and_then(Value::as_str).map(clip).unwrap_or_else(|| "none".into());
                skipped.push(format!("key #{} (kid {kid}): {reason}", i + 1));
            }
        }
    }
    Ok((set, skipped))
}

fn parse_key(raw: &Value) -> Result<Key, String> {
    let jwk: Jwk = serde_json::from_value(raw.clone()).map_err(|e| format!("not a JWK we can read: {e}"))?;
    if let Some(u) = &jwk.common.public_key_use
        && *u != PublicKeyUse::Signature
    {
        return Err("its use is not \"sig\"".into());
    }
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(a) => {
            Some(key_algorithm(a).ok_or_else(|| format!("its alg {a:?} is not an accepted signature algorithm"))?)
        }
    };
    let bad = |e: jsonwebtoken::errors::Error| format!("invalid key: {e}");
    let (kty, decoding) = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            let n = b64(&p.n).map_err(|e| format!("invalid RSA modulus: {e}"))?;
            let bits = significant_bits(&n);
            if bits < MIN_RSA_BITS {
                return Err(format!("RSA keys need at least {MIN_RSA_BITS} bits, this one has {bits}"));
            }
            (KeyType::Rsa { bits }, DecodingKey::from_rsa_components(&p.n, &p.e).map_err(bad)?)
        }
        AlgorithmParameters::EllipticCurve(p) => {
            let (kty, len) = match p.curve {
                EllipticCurve::P256 => (KeyType::P256, 32),
                EllipticCurve::P384 => (KeyType::P384, 48),
                ref other => return Err(format!("EC curve {other:?} is not supported (only P-256 and P-384)")),
            };
            let (x, y) = (b64(&p.x).unwrap_or_default(), b64(&p.y).unwrap_or_default());
            if x.len() != len || y.len() != len {
                return Err("invalid EC coordinates".into());
            }
            (kty, DecodingKey::from_ec_components(&p.x, &p.y).map_err(bad)?)
        }
        AlgorithmParameters::OctetKeyPair(p) => {
            if p.curve != EllipticCurve::Ed25519 {
                return Err(format!("OKP curve {:?} is not supported (only Ed25519)", p.curve));
            }
            if !b64(&p.x).is_ok_and(|x| x.len() == 32) {
                return Err("invalid Ed25519 public key".into());
            }
            (KeyType::Ed25519, DecodingKey::from_ed_components(&p.x).map_err(bad)?)
        }
        AlgorithmParameters::OctetKey(_) => return Err("symmetric (oct) keys are never accepted".into()),
        _ => return Err("unsupported key type".into()),
    };
    let key = Key { kid: jwk.common.key_id, kty, alg, decoding };
    if let Some(a) = alg
        && !key.accepts(a)
    {
        return Err(format!("its alg {a:?} does not fit its key type"));
    }
    Ok(key)
}

fn key_algorithm(a: KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// The algorithms we accept in a token header, and nothing else (see the module docs).
fn accepted_algorithm(name: &str) -> Option<Algorithm> {
    Some(match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

fn significant_bits(n: &[u8]) -> usize {
    let n = match n.iter().position(|&b| b != 0) {
        Some(i) => &n[i..],
        None => return 0,
    };
    n.len() * 8 - n[0].leading_zeros() as usize
}

/// Base64url, tolerating the padding some JWKS publishers add.
fn b64(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('='))
}

/// A compact JWS, split and decoded but not yet verified.
#[derive(Debug)]
struct Token<'a> {
    /// `header.payload`, the bytes the signature covers.
    signing_input: &'a str,
    /// The base64url signature.
    signature: &'a str,
    alg: Algorithm,
    kid: Option<String>,
    claims: Map<String, Value>,
}

impl<'a> Token<'a> {
    fn parse(raw: &'a str) -> Result<Self, AttestError> {
        // Tokens are often read from files; a trailing newline is not an attack.
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(AttestError::malformed("the JWT is empty"));
        }
        if raw.len() > MAX_TOKEN_BYTES {
            return Err(AttestError::malformed(format!("the JWT is longer than {MAX_TOKEN_BYTES} bytes")));
        }
        let parts: Vec<&str> = raw.split('.').collect();
        let [header, payload, signature] = parts[..] else {
            let hint = if parts.len() == 5 { " (an encrypted JWE is not supported)" } else { "" };
            return Err(AttestError::malformed(format!(
                "the JWT is not a compact JWS: it has {} dot-separated parts instead of 3{hint}",
                parts.len()
            )));
        };
        let header_json = decode_part(header, "header")?;
        let claims = decode_part(payload, "payload")?;
        if URL_SAFE_NO_PAD.decode(signature).is_err() {
            return Err(AttestError::malformed("the JWT's signature is not base64url"));
        }
        let alg = match header_json.get("alg") {
            Some(Value::String(name)) => accepted_algorithm(name).ok_or_else(|| {
                AttestError::unauthorized(format!(
                    "token algorithm {} is not accepted (only {ACCEPTED_ALGS})",
                    shown(name)
                ))
            })?,
            _ => return Err(AttestError::malformed("the JWT header has no alg")),
        };
        if header_json.contains_key("crit") {
            // RFC 7515 section 4.1.11: extensions listed in crit must be understood; we know none.
            return Err(AttestError::unauthorized(
                "the JWT header lists critical extensions (crit); none are supported",
            ));
        }
        let kid = match header_json.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.clone()),
            Some(_) => return Err(AttestError::malformed("the JWT header's kid is not a string")),
        };
        let signing_input = &raw[..header.len() + 1 + payload.len()];
        Ok(Token { signing_input, signature, alg, kid, claims })
    }
}

fn decode_part(part: &str, what: &str) -> Result<Map<String, Value>, AttestError> {
    let bytes =
        URL_SAFE_NO_PAD.decode(part).map_err(|_| AttestError::malformed(format!("the JWT {what} is not base64url")))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(AttestError::malformed(format!("the JWT {what} is not a JSON object"))),
        Err(e) => Err(AttestError::malformed(format!("the JWT {what} is not JSON: {e}"))),
    }
}

/// A NumericDate claim (RFC 7519 section 2): seconds, possibly fractional.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, AttestError> {
    let Some(v) = claims.get(name) else { return Ok(None) };
    let n = v.as_i64().or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f.floor() as i64));
    n.map(Some).ok_or_else(|| AttestError::unauthorized(format!("the token's {name} claim is not a number of seconds")))
}

/// A parsed `spiffe_id_template`.
#[derive(Debug, Clone)]
struct Template {
    raw: String,
    trust_domain: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// `{name}`: a top-level claim.
    Claim(String),
    /// `{/a/b}`: an RFC 6901 JSON pointer into the claims.
    Pointer(String),
}

impl Part {
    /// How the placeholder is written in the template, for error details.
    fn label(&self) -> String {
        match self {
            Part::Literal(l) => l.clone(),
            Part::Claim(name) | Part::Pointer(name) => format!("{{{name}}}"),
        }
    }
}

impl Template {
    /// Parses and checks a template. The fixed prefix must be `spiffe://<trust domain>/`, so that
    /// no claim can change the trust domain, and a sample rendering must be a valid SPIFFE ID, so
    /// that the literal parts are sound.
    fn parse(raw: &str, trust_domain: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = raw;
        while let Some(i) = rest.find(['{', '}']) {
            if rest[i..].starts_with('}') {
                return Err("has a '}' without a matching '{'".into());
            }
            literal.push_str(&rest[..i]);
            let inner = &rest[i + 1..];
            let end = match inner.find(['{', '}']) {
                Some(j) if inner[j..].starts_with('}') => j,
                _ => return Err("has a '{' without a matching '}'".into()),
            };
            let name = &inner[..end];
            let part = if name.is_empty() {
                return Err("has an empty placeholder {}".into());
            } else if name.starts_with('/') {
                check_pointer(name)?;
                Part::Pointer(name.to_owned())
            } else {
                Part::Claim(name.to_owned())
            };
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(part);
            rest = &inner[end + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        let prefix = format!("spiffe://{trust_domain}/");
        if !matches!(parts.first(), Some(Part::Literal(l)) if l.starts_with(&prefix)) {
            return Err(format!(
                "must start with {prefix} (SPIFFE IDs are issued only in the trust domain {trust_domain}, and \
                 placeholders may fill in path segments only)"
            ));
        }
        let sample: String = parts
            .iter()
            .map(|p| match p {
                Part::Literal(l) => l.as_str(),
                _ => "x",
            })
            .collect();
        SpiffeId::parse(&sample).map_err(|e| format!("does not make a valid SPIFFE ID: {e}"))?;
        Ok(Template { raw: raw.to_owned(), trust_domain: trust_domain.to_owned(), parts })
    }

    fn render(&self, claims: &Map<String, Value>) -> Result<SpiffeId, AttestError> {
        let mut out = String::new();
        for part in &self.parts {
            let value = match part {
                Part::Literal(l) => {
                    out.push_str(l);
                    continue;
                }
                Part::Claim(name) => claims.get(name),
                Part::Pointer(pointer) => pointer_get(claims, pointer),
            };
            let label = part.label();
            let value = match value {
                Some(Value::String(s)) => s,
                Some(_) => {
                    return Err(AttestError::unauthorized(format!(
                        "the token's claim {label} (used by the SPIFFE ID template) is not a string"
                    )));
                }
                None => {
                    return Err(AttestError::unauthorized(format!(
                        "the token has no claim {label}, which the SPIFFE ID template needs"
                    )));
                }
            };
            check_segment(value).map_err(|why| {
                AttestError::unauthorized(format!(
                    "the token's claim {label} is {}, which cannot be a SPIFFE ID path segment: {why}",
                    shown(value)
                ))
            })?;
            out.push_str(value);
        }
        let id = SpiffeId::parse(&out)
            .map_err(|e| AttestError::unauthorized(format!("the token's claims do not make a valid SPIFFE ID: {e}")))?;
        // Guaranteed by the template's prefix; checked again because it is what matters.
        if id.trust_domain() != self.trust_domain {
            return Err(AttestError::unauthorized(format!("{id} is outside the configured trust domain")));
        }
        Ok(id)
    }
}

/// RFC 6901: `~` must be followed by `0` (for `~`) or `1` (for `/`).
fn check_pointer(pointer: &str) -> Result<(), String> {
    let mut chars = pointer.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(format!("has an invalid JSON pointer {{{pointer}}}: '~' must be followed by 0 or 1"));
        }
    }
    Ok(())
}

fn pointer_get<'v>(claims: &'v Map<String, Value>, pointer: &str) -> Option<&'v Value> {
    let mut segments = pointer.split('/').skip(1).map(|s| s.replace("~1", "/").replace("~0", "~"));
    let first = segments.next()?;
    let mut cur = claims.get(&first)?;
    for seg in segments {
        cur = match cur {
            Value::Object(map) => map.get(&seg)?,
            Value::Array(items) => {
                // RFC 6901 array indexes: no leading zeros, no signs.
                if seg.is_empty() || (seg.len() > 1 && seg.starts_with('0')) || !seg.bytes().all(|b| b.is_ascii_digit())
                {
                    return None;
                }
                items.get(seg.parse::<usize>().ok()?)?
            }
            _ => return None,
        };
    }
    Some(cur)
}

/// A claim value must be exactly one SPIFFE ID path segment.
fn check_segment(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("it is empty");
    }
    if value == "." || value == ".." {
        return Err("it may not be . or ..");
    }
    if !value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) {
        return Err("only letters, digits, '-', '.' and '_' are allowed");
    }
    Ok(())
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

fn unix_time(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("unix time {t}"))
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn humantime(d: Duration) -> String {
    humantime_serde::re::humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use jsonwebtoken::{EncodingKey, Header};
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const TD: &str = "example.org";
    const ISS: &str = "https://kubernetes.default.svc.cluster.local";
    const AUD: &str = "lanyard";
    /// 2026-05-28T20:26:40Z; `attest` takes the time as a parameter, so tests are deterministic.
    const NOW: i64 = 1_780_000_000;
    const SUB_TEMPLATE: &str = "spiffe://example.org/sub/{sub}";
    const K8S_TEMPLATE: &str =
        "spiffe://example.org/ns/{/kubernetes.io/namespace}/sa/{/kubernetes.io/serviceaccount/name}";

    struct Signer {
        kid: Option<String>,
        alg: Algorithm,
        key: EncodingKey,
        jwk: Value,
    }

    fn b64e(b: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(b)
    }

    fn es256(kid: &str) -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("generate");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).expect("parse");
        let point = pair.public_key().as_ref();
        assert_eq!(point.len(), 65);
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64e(&point[1..33]), "y": b64e(&point[33..]),
                         "kid": kid, "use": "sig", "alg": "ES256"});
        Signer { kid: Some(kid.into()), alg: Algorithm::ES256, key: EncodingKey::from_ec_der(pkcs8.as_ref()), jwk }
    }

    fn ed25519(kid: &str) -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("generate");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("parse");
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64e(pair.public_key().as_ref()), "kid": kid});
        Signer { kid: Some(kid.into()), alg: Algorithm::EdDSA, key: EncodingKey::from_ed_der(pkcs8.as_ref()), jwk }
    }

    /// A fixed RSA key (ring cannot generate RSA keys); it signs nothing outside these tests.
    fn rs256(kid: &str) -> Signer {
        let pem = include_bytes!("../../tests/data/jwt/rsa2048-test-only.pem");
        let key = EncodingKey::from_rsa_pem(pem).expect("rsa key");
        let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&key, Algorithm::RS256).expect("jwk")).expect("json");
        jwk["kid"] = json!(kid);
        Signer { kid: Some(kid.into()), alg: Algorithm::RS256, key, jwk }
    }

    fn sign(s: &Signer, claims: &Value) -> String {
        let mut header = Header::new(s.alg);
        header.kid = s.kid.clone();
        jsonwebtoken::encode(&header, claims, &s.key).expect("sign")
    }

    fn claims(sub: &str) -> Value {
        json!({"iss": ISS, "aud": AUD, "sub": sub, "iat": NOW - 60, "nbf": NOW - 60, "exp": NOW + 600})
    }

    /// A Kubernetes projected service-account token's claims.
    fn k8s_claims(namespace: &str, sa: &str) -> Value {
        json!({
            "aud": [AUD, "https://kubernetes.default.svc"],
            "exp": NOW + 3600, "iat": NOW - 10, "nbf": NOW - 10,
            "iss": ISS,
            "sub": format!("system:serviceaccount:{namespace}:{sa}"),
            "kubernetes.io": {
                "namespace": namespace,
                "node": {"name": "node-1", "uid": "0e4d4b4e-3b8d-4b7e-9e1a-5f6c2b0a9d11"},
                "pod": {"name": format!("{sa}-7d9f8c6b5-x2x7q"), "uid": "7a1c8f3e-2d4b-4c6a-8e9f-1b2c3d4e5f60"},
                "serviceaccount": {"name": sa, "uid": "c1d2e3f4-a5b6-4c7d-8e9f-0a1b2c3d4e5f"}
            }
        })
    }

    fn jwks(keys: &[&Signer]) -> String {
        json!({"keys": keys.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>()}).to_string()
    }

    fn write_jwks(path: &Path, keys: &[&Signer]) {
        std::fs::write(path, jwks(keys)).expect("write jwks");
    }

    fn config(jwks_file: &Path, template: &str) -> JwtAttestorConfig {
        JwtAttestorConfig {
            issuer: ISS.into(),
            audience: AUD.into(),
            jwks_file: Some(jwks_file.to_path_buf()),
            jwks_url: None,
            jwks_ca_file: None,
            spiffe_id_template: template.into(),
            leeway: default_leeway(),
            max_token_lifetime: default_max_token_lifetime(),
            jwks_refresh: default_jwks_refresh(),
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        path: PathBuf,
        attestors: JwtAttestors,
    }

    fn fixture(keys: &[&Signer], template: &str) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jwks.json");
        write_jwks(&path, keys);
        let attestors = JwtAttestors::new(vec![config(&path, template)], TD).expect("valid config");
        Fixture { _dir: dir, path, attestors }
    }

    async fn refused(attestors: &JwtAttestors, token: &str, kind: &str, needle: &str) -> String {
        let err = attestors.attest(token, NOW).await.expect_err("must be refused");
        assert_eq!(err.kind, kind, "{err}");
        assert!(err.detail.contains(needle), "detail {:?} should contain {needle:?}", err.detail);
        assert!(token.len() < 4 || !err.detail.contains(token), "the detail must not contain the token");
        err.detail
    }

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
        let mut h = Header::new(Algorithm::HS256);
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

    #[tokio::test]
    async fn claim_values_cannot_inject_path_segments() {
        let key = es256("k1");
        let f = fixture(&[&key], SUB_TEMPLATE);
        for (sub, why) in [
            ("a/../b", "only letters"),
            ("a/b", "only letters"),
            ("..", "may not be . or .."),
            (".", "may not be . or .."),
            ("", "it is empty"),
            ("spiffe://other.org/x", "only letters"),
            ("ns%2Fx", "only letters"),
        ] {
            refused(&f.attestors, &sign(&key, &claims(sub)), "unauthorized", why).await;
        }
        let mut c = claims("w");
        c["sub"] = json!(42);
        refused(
            &f.attestors,
            &sign(&key, &c),
            "unauthorized",
            "claim {sub} (used by the SPIFFE ID template) is not a string",
        )
        .await;
        c.as_object_mut().expect("object").remove("sub");
        refused(&f.attestors, &sign(&key, &c), "unauthorized", "no claim {sub}").await;
        let g = fixture(&[&key], K8S_TEMPLATE);
        refused(
            &g.attestors,
            &sign(&key, &k8s_claims("../kube-system", "x")),
            "unauthorized",
            "{/kubernetes.io/namespace}",
        )
        .await;
        let mut k = k8s_claims("payments", "api");
        k["kubernetes.io"].as_object_mut().expect("object").remove("serviceaccount");
        refused(&g.attestors, &sign(&key, &k), "unauthorized", "no claim {/kubernetes.io/serviceaccount/name}").await;
    }

    #[test]
    fn bad_configurations_are_refused_at_construction() {
        let p = Path::new("/nonexistent/jwks.json");
        let bad = |cfg: JwtAttestorConfig, needle: &str| {
            let e = JwtAttestors::new(vec![cfg], TD).expect_err("must be refused");
            assert!(e.to_string().contains(needle), "{e} should contain {needle:?}");
        };
        for t in [
            "spiffe://other.org/sub/{sub}",
            "spiffe://example.org.evil.com/{sub}",
            "spiffe://example.org{sub}",
            "{sub}",
            "spiffe://{iss}/x",
            "https://example.org/{sub}",
        ] {
            bad(config(p, t), "must start with spiffe://example.org/");
        }
        bad(config(p, "spiffe://example.org/{sub"), "without a matching '}'");
        bad(config(p, "spiffe://example.org/sub}"), "without a matching '{'");
        bad(config(p, "spiffe://example.org/{}"), "empty placeholder");
        bad(config(p, "spiffe://example.org/{/a~2b}"), "invalid JSON pointer");
        bad(config(p, "spiffe://example.org/a//{sub}"), "does not make a valid SPIFFE ID");
        bad(config(p, "spiffe://example.org/a b/{sub}"), "does not make a valid SPIFFE ID");
        bad(config(p, "spiffe://example.org/"), "does not make a valid SPIFFE ID");
        // A fixed ID (no placeholder) is allowed: every token of the issuer gets it.
        assert!(JwtAttestors::new(vec![config(p, "spiffe://example.org/ci")], TD).is_ok());

        let mut c = config(p, SUB_TEMPLATE);
        c.jwks_url = Some("https://issuer.example/jwks".into());
        bad(c.clone(), "only one of jwks_file and jwks_url");
        c.jwks_file = None;
        c.jwks_url = None;
        bad(c.clone(), "set one of jwks_file and jwks_url");
        for url in ["http://issuer.example/jwks", "ftp://127.0.0.1/jwks", "/jwks"] {
            c.jwks_url = Some(url.into());
            bad(c.clone(), "jwks_url");
        }
        for url in ["http://127.0.0.1:8080/jwks", "http://localhost/jwks", "http://[::1]:1/jwks", "https://x.example/k"]
        {
            c.jwks_url = Some(url.into());
            assert!(JwtAttestors::new(vec![c.clone()], TD).is_ok(), "{url}");
        }
        let mut d = config(p, SUB_TEMPLATE);
        d.jwks_ca_file = Some("/ca.pem".into());
        bad(d, "jwks_ca_file only applies to jwks_url");
        let mut e = config(p, SUB_TEMPLATE);
        e.audience.clear();
        bad(e, "audience may not be empty");
        let mut l = config(p, SUB_TEMPLATE);
        l.leeway = Duration::from_secs(3600);
        bad(l, "leeway may be at most 10m");
        let err = JwtAttestors::new(vec![config(p, SUB_TEMPLATE), config(p, K8S_TEMPLATE)], TD).expect_err("duplicate");
        assert!(err.to_string().starts_with("entry 2 (issuer \"https://kubernetes"), "{err}");
        assert!(JwtAttestors::new(vec![], TD).expect("empty").is_empty());
    }

    #[test]
    fn configuration_parses_from_toml_with_defaults() {
        let cfg: JwtAttestorConfig = toml::from_str(
            r#"
            issuer = "https://kubernetes.default.svc.cluster.local"
            audience = "lanyard"
            jwks_file = "/etc/lanyard/jwks.json"
            spiffe_id_template = "spiffe://example.org/ns/{/kubernetes.io/namespace}/sa/{/kubernetes.io/serviceaccount/name}"
            "#,
        )
        .expect("valid");
        assert_eq!(cfg.leeway, Duration::from_secs(30));
        assert_eq!(cfg.max_token_lifetime, Duration::from_secs(86400));
        assert_eq!(cfg.jwks_refresh, Duration::from_secs(300));
        let a = JwtAttestors::new(vec![cfg], TD).expect("valid");
        assert_eq!(a.issuers().collect::<Vec<_>>(), [ISS]);
        let with = |extra: &str| {
            toml::from_str::<JwtAttestorConfig>(&format!(
                "issuer = \"i\"\naudience = \"a\"\njwks_url = \"https://i/k\"\nspiffe_id_template = \"spiffe://example.org/x\"\n{extra}"
            ))
        };
        let c = with("leeway = \"1m\"\nmax_token_lifetime = \"1h\"\njwks_refresh = \"30s\"").expect("valid");
        assert_eq!((c.leeway.as_secs(), c.max_token_lifetime.as_secs(), c.jwks_refresh.as_secs()), (60, 3600, 30));
        assert!(with("audiences = \"typo\"").is_err());
        assert!(with("leeway = \"soon\"").is_err());
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

    #[tokio::test]
    async fn an_unknown_kid_reloads_the_jwks_file() {
        let old = es256("old");
        let new = es256("new");
        let f = fixture(&[&old], SUB_TEMPLATE);
        assert!(f.attestors.attest(&sign(&old, &claims("w")), NOW).await.is_ok());
        refused(&f.attestors, &sign(&new, &claims("w")), "unauthorized", "no key with kid=\"new\"").await;
        // The issuer rotates: the new key appears, and tokens signed with it work at once.
        write_jwks(&f.path, &[&old, &new]);
        let id = f.attestors.attest(&sign(&new, &claims("w")), NOW).await.expect("reloaded");
        assert_eq!(id.to_string(), "spiffe://example.org/sub/w");
        // A removed key stops working as soon as the file changes.
        write_jwks(&f.path, &[&new]);
        refused(&f.attestors, &sign(&old, &claims("w")), "unauthorized", "no key with kid=\"old\"").await;
    }

    #[tokio::test]
    async fn jwks_problems_are_server_errors_and_keep_old_keys() {
        let key = es256("k1");
        let f = fixture(&[&key], SUB_TEMPLATE);
        assert!(f.attestors.attest(&sign(&key, &claims("w")), NOW).await.is_ok());
        // A broken rewrite keeps the keys we had.
        std::fs::write(&f.path, "{not json").expect("write");
        assert!(f.attestors.attest(&sign(&key, &claims("w")), NOW).await.is_ok());
        // No usable JWKS at all: serverInternal, so the client knows to retry.
        let g = fixture(&[&key], SUB_TEMPLATE);
        std::fs::remove_file(&g.path).expect("remove");
        refused(&g.attestors, &sign(&key, &claims("w")), "serverInternal", "unavailable").await;
        let h = fixture(&[&key], SUB_TEMPLATE);
        std::fs::write(&h.path, r#"{"no": "keys"}"#).expect("write");
        refused(&h.attestors, &sign(&key, &claims("w")), "serverInternal", "unavailable").await;
    }

    #[test]
    fn weak_and_mismatched_jwks_keys_are_skipped() {
        let small_rsa = json!({"kty": "RSA", "n": b64e(&[0xC5; 128]), "e": "AQAB", "kid": "small"});
        let enc = {
            let mut k = es256("enc").jwk;
            k["use"] = json!("enc");
            k
        };
        let wrong_alg = {
            let mut k = es256("wrong").jwk;
            k["alg"] = json!("RS256");
            k
        };
        let p521 = json!({"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA", "kid": "p521"});
        let good = rs256("good").jwk;
        let doc = json!({"keys": [small_rsa, enc, wrong_alg, p521, good]}).to_string();
        let (set, skipped) = parse_jwks(doc.as_bytes()).expect("jwks");
        assert_eq!(set.keys.len(), 1);
        assert_eq!(set.keys[0].kty, KeyType::Rsa { bits: 2048 });
        assert_eq!(skipped.len(), 4, "{skipped:?}");
        assert!(skipped[0].contains("at least 2048 bits, this one has 1024"), "{skipped:?}");
        assert!(skipped[1].contains("use is not"), "{skipped:?}");
        assert!(skipped[2].contains("does not fit"), "{skipped:?}");
        assert!(skipped[3].contains("P-521") || skipped[3].contains("P521"), "{skipped:?}");
    }

    type Answer = Arc<std::sync::Mutex<(u16, String)>>;

    /// A one-route HTTP/1.1 server answering every request with the current (status, body);
    /// with `tls`, over TLS.
    async fn serve_with(
        answer: Answer,
        hits: Arc<AtomicUsize>,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (answer, hits, tls) = (answer.clone(), hits.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(sock).await {
                                respond(stream, answer, hits).await;
                            }
                        }
                        None => respond(sock, answer, hits).await,
                    }
                });
            }
        });
        addr
    }

    async fn serve(answer: Answer, hits: Arc<AtomicUsize>) -> std::net::SocketAddr {
        serve_with(answer, hits, None).await
    }

    async fn respond<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        mut sock: S,
        answer: Answer,
        hits: Arc<AtomicUsize>,
    ) {
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        assert!(request.starts_with(b"GET /jwks HTTP/1.1\r\n"));
        hits.fetch_add(1, Ordering::SeqCst);
        let (status, body) = answer.lock().expect("lock").clone();
        let head = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let _ = sock.write_all(head.as_bytes()).await;
        let _ = sock.write_all(body.as_bytes()).await;
        let _ = sock.shutdown().await;
    }

    fn url_attestors(addr: std::net::SocketAddr) -> JwtAttestors {
        let mut cfg = config(Path::new("unused"), SUB_TEMPLATE);
        cfg.jwks_file = None;
        cfg.jwks_url = Some(format!("http://{addr}/jwks"));
        JwtAttestors::new(vec![cfg], TD).expect("valid")
    }

    #[tokio::test]
    async fn jwks_url_is_fetched_and_refetched_for_unknown_kids_rate_limited() {
        let old = es256("old");
        let new = ed25519("new");
        let answer = Arc::new(std::sync::Mutex::new((200, jwks(&[&old]))));
        let hits = Arc::new(AtomicUsize::new(0));
        let addr = serve(answer.clone(), hits.clone()).await;
        let mut attestors = url_attestors(addr);

        let id = attestors.attest(&sign(&old, &claims("w")), NOW).await.expect("accepted");
        assert_eq!(id.to_string(), "spiffe://example.org/sub/w");
        assert!(attestors.attest(&sign(&old, &claims("w")), NOW).await.is_ok());
        assert_eq!(hits.load(Ordering::SeqCst), 1, "the JWKS is cached");

        // The issuer rotates. Right after a fetch, an unknown kid does not cause another one.
        *answer.lock().expect("lock") = (200, jwks(&[&old, &new]));
        refused(&attestors, &sign(&new, &claims("w")), "unauthorized", "no key with kid=\"new\"").await;
        assert_eq!(hits.load(Ordering::SeqCst), 1, "rate-limited");

        // Once the interval has passed (shortened here), it does.
        attestors.by_issuer.get_mut(ISS).expect("attestor").min_reload_interval = Duration::ZERO;
        assert!(attestors.attest(&sign(&new, &claims("w")), NOW).await.is_ok());
        assert_eq!(hits.load(Ordering::SeqCst), 2);
        // A failing endpoint keeps the keys we have.
        *answer.lock().expect("lock") = (503, "down".into());
        refused(&attestors, &sign(&es256("x"), &claims("w")), "unauthorized", "no key with kid=\"x\"").await;
        assert_eq!(hits.load(Ordering::SeqCst), 3);
        assert!(attestors.attest(&sign(&old, &claims("w")), NOW).await.is_ok());
    }

    #[tokio::test]
    async fn jwks_url_failures_are_server_errors() {
        let key = es256("k1");
        let answer = Arc::new(std::sync::Mutex::new((500, "oops".to_string())));
        let hits = Arc::new(AtomicUsize::new(0));
        let addr = serve(answer.clone(), hits.clone()).await;
        let attestors = url_attestors(addr);
        refused(&attestors, &sign(&key, &claims("w")), "serverInternal", "unavailable").await;
        // The failure is remembered for the rate-limit interval instead of refetched per request.
        refused(&attestors, &sign(&key, &claims("w")), "serverInternal", "unavailable").await;
        assert_eq!(hits.load(Ordering::SeqCst), 1);

        *answer.lock().expect("lock") = (200, format!("{{\"keys\": [], \"pad\": \"{}\"}}", "x".repeat(MAX_JWKS_BYTES)));
        let big = url_attestors(addr);
        refused(&big, &sign(&key, &claims("w")), "serverInternal", "unavailable").await;

        // Nobody listening.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        refused(&url_attestors(closed), &sign(&key, &claims("w")), "serverInternal", "unavailable").await;
    }

    #[tokio::test]
    async fn jwks_url_over_https_is_authenticated_with_jwks_ca_file() {
        let key = es256("k1");
        let server = ca::rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("cert");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![server.cert.der().clone()],
                rustls_pki_types::PrivatePkcs8KeyDer::from(server.signing_key.serialize_der()).into(),
            )
            .expect("server config");
        let answer = Arc::new(std::sync::Mutex::new((200, jwks(&[&key]))));
        let hits = Arc::new(AtomicUsize::new(0));
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let addr = serve_with(answer, hits.clone(), Some(acceptor)).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, server.cert.pem()).expect("write");

        let mut cfg = config(Path::new("unused"), SUB_TEMPLATE);
        cfg.jwks_file = None;
        cfg.jwks_url = Some(format!("https://{addr}/jwks"));
        // The system's roots do not know our test server: the fetch fails, closed.
        let untrusted = JwtAttestors::new(vec![cfg.clone()], TD).expect("valid");
        refused(&untrusted, &sign(&key, &claims("w")), "serverInternal", "unavailable").await;
        assert_eq!(hits.load(Ordering::SeqCst), 0, "no request without a trusted TLS handshake");
        // With jwks_ca_file it is trusted.
        cfg.jwks_ca_file = Some(ca_file);
        let trusted = JwtAttestors::new(vec![cfg], TD).expect("valid");
        let id = trusted.attest(&sign(&key, &claims("w")), NOW).await.expect("accepted");
        assert_eq!(id.to_string(), "spiffe://example.org/sub/w");
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn attest_futures_are_send() {
        fn assert_send<T: Send>(_: &T) {}
        let attestors = JwtAttestors::default();
        let fut = attestors.attest("x", NOW);
        assert_send(&fut);
    }

    #[test]
    fn json_pointers_follow_rfc_6901() {
        let claims = json!({"a/b": {"c~d": "v1"}, "list": ["x", "y"], "kubernetes.io": {"namespace": "ns"}});
        let m = claims.as_object().expect("object");
        assert_eq!(pointer_get(m, "/a~1b/c~0d"), Some(&json!("v1")));
        assert_eq!(pointer_get(m, "/list/1"), Some(&json!("y")));
        assert_eq!(pointer_get(m, "/list/01"), None);
        assert_eq!(pointer_get(m, "/kubernetes.io/namespace"), Some(&json!("ns")));
        assert_eq!(pointer_get(m, "/missing/x"), None);
    }
}
