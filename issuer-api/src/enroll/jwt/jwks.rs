//! The JWKS source of one attestor: where the issuer's keys come from (a file or an HTTPS URL),
//! how long they are cached, and when they are reloaded.
//!
//! Keys come only from the configured JWKS; `jku`, `x5u`, `jwk` and `x5c` header parameters are
//! ignored, because a token must never choose the key that verifies it. Which JWKS members are
//! used at all is the JOSE layer's key policy ([`JwkSetKey::from_value`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use tracing::{error, info, warn};

use super::{AttestError, clip, humantime};
use crate::jose::JwkSetKey;

/// Largest JWKS document we accept, from a file or a URL.
pub(super) const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Deadline for a whole JWKS download (connect, TLS, headers and body).
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Least time between two JWKS loads that tokens can trigger (an unknown `kid`, a stale cache).
/// Without it a client could make us hit the issuer's JWKS endpoint once per request by sending
/// random `kid`s.
const MIN_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// The cached JWKS of one issuer, and its reload machinery.
pub(super) struct JwksCache {
    /// The issuer, for logs and error details.
    issuer: String,
    source: JwksSource,
    refresh: Duration,
    /// [`MIN_RELOAD_INTERVAL`]; a field so tests can shorten it.
    pub(super) min_reload_interval: Duration,
    /// The keys in use. Readers clone the `Arc` and release the lock at once, so verification
    /// never waits for a download.
    loaded: RwLock<Option<Arc<Loaded>>>,
    /// Held while loading, so concurrent requests cause one load, not one each.
    reload: tokio::sync::Mutex<ReloadState>,
}

impl fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksCache").field("issuer", &self.issuer).field("source", &self.source).finish_non_exhaustive()
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
pub(super) enum JwksSource {
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

impl JwksCache {
    /// A cache that loads on first use.
    pub(super) fn new(issuer: String, source: JwksSource, refresh: Duration) -> Self {
        JwksCache {
            issuer,
            source,
            refresh,
            min_reload_interval: MIN_RELOAD_INTERVAL,
            loaded: RwLock::new(None),
            reload: tokio::sync::Mutex::new(ReloadState::default()),
        }
    }

    fn snapshot(&self) -> Option<Arc<Loaded>> {
        // A poisoned lock only means a panic elsewhere; the `Option<Arc>` inside is still whole.
        self.loaded.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The keys to verify with: the cached set, unless it is too old or its file changed.
    pub(super) async fn current_keys(&self) -> Result<Arc<KeySet>, AttestError> {
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
    pub(super) async fn reload(&self, for_unknown_kid: bool) -> Result<Arc<KeySet>, AttestError> {
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
pub(super) struct KeySet {
    pub(super) keys: Vec<JwkSetKey>,
}

impl KeySet {
    pub(super) fn describe_kids(&self) -> String {
        if self.keys.is_empty() {
            return "no usable key".into();
        }
        let kids: Vec<String> = self.keys.iter().take(10).map(key_name).collect();
        let more = if self.keys.len() > 10 { ", ..." } else { "" };
        format!("{}{more}", kids.join(", "))
    }
}

/// How a key is named in error details: its `kid`, escaped and shortened.
pub(super) fn key_name(key: &JwkSetKey) -> String {
    match &key.kid {
        Some(kid) => format!("kid={}", clip(kid)),
        None => "(without kid)".into(),
    }
}

/// A key's type and pinned algorithm, for error details.
pub(super) fn key_description(key: &JwkSetKey) -> String {
    match key.alg {
        Some(alg) => format!("{} key for {alg}", key.key.key_type()),
        None => format!("{} key", key.key.key_type()),
    }
}

/// Parses a JWKS. Keys we cannot or will not use (encryption keys, symmetric keys, weak RSA,
/// unknown curves) are skipped with a reason rather than failing the whole set: issuers publish
/// sets with mixed keys, and one odd key should not block the others.
pub(super) fn parse_jwks(bytes: &[u8]) -> Result<(KeySet, Vec<String>), String> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| format!("is not JSON: {e}"))?;
    let entries = doc.get("keys").and_then(Value::as_array).ok_or("is not a JSON Web Key Set (no \"keys\" array)")?;
    let mut set = KeySet::default();
    let mut skipped = Vec::new();
    for (i, raw) in entries.iter().enumerate() {
        match JwkSetKey::from_value(raw) {
            Ok(key) => set.keys.push(key),
            Err(reason) => {
                let kid = raw.get("kid").and_then(Value::as_str).map(clip).unwrap_or_else(|| "none".into());
                skipped.push(format!("key #{} (kid {kid}): {reason}", i + 1));
            }
        }
    }
    Ok((set, skipped))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;

    use super::super::JwtAttestors;
    use super::super::test_support::*;
    use super::*;
    use crate::jose::KeyType;

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
        assert_eq!(set.keys[0].key.key_type(), KeyType::Rsa { bits: 2048 });
        assert_eq!(skipped.len(), 4, "{skipped:?}");
        assert!(skipped[0].contains("at least 2048 bits, this one has 1024"), "{skipped:?}");
        assert!(skipped[1].contains("use is not"), "{skipped:?}");
        assert!(skipped[2].contains("does not fit"), "{skipped:?}");
        assert!(skipped[3].contains("P-521") || skipped[3].contains("P521"), "{skipped:?}");
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
        attestors.by_issuer.get_mut(ISS).expect("attestor").jwks.min_reload_interval = Duration::ZERO;
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
}
