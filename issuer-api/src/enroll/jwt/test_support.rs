//! Fixtures shared by the tests of the `jwt` modules: signers (tokens are minted with
//! `jsonwebtoken`, an independent implementation, so the tests do not check our JOSE code against
//! itself), claims, JWKS files and a local JWKS HTTP(S) server.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::config::{default_jwks_refresh, default_leeway, default_max_token_lifetime};
use super::{JwtAttestorConfig, JwtAttestors};

pub(super) const TD: &str = "example.org";
pub(super) const ISS: &str = "https://kubernetes.default.svc.cluster.local";
pub(super) const AUD: &str = "lanyard";
/// 2026-05-28T20:26:40Z; `attest` takes the time as a parameter, so tests are deterministic.
pub(super) const NOW: i64 = 1_780_000_000;
pub(super) const SUB_TEMPLATE: &str = "spiffe://example.org/sub/{sub}";
pub(super) const K8S_TEMPLATE: &str =
    "spiffe://example.org/ns/{/kubernetes.io/namespace}/sa/{/kubernetes.io/serviceaccount/name}";

pub(super) struct Signer {
    pub(super) kid: Option<String>,
    pub(super) alg: Algorithm,
    pub(super) key: EncodingKey,
    pub(super) jwk: Value,
}

pub(super) fn b64e(b: &[u8]) -> String {
    crate::jose::base64url::encode(b)
}

pub(super) fn es256(kid: &str) -> Signer {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("generate");
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).expect("parse");
    let point = pair.public_key().as_ref();
    assert_eq!(point.len(), 65);
    let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64e(&point[1..33]), "y": b64e(&point[33..]),
                     "kid": kid, "use": "sig", "alg": "ES256"});
    Signer { kid: Some(kid.into()), alg: Algorithm::ES256, key: EncodingKey::from_ec_der(pkcs8.as_ref()), jwk }
}

pub(super) fn ed25519(kid: &str) -> Signer {
    let rng = SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("generate");
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("parse");
    let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64e(pair.public_key().as_ref()), "kid": kid});
    Signer { kid: Some(kid.into()), alg: Algorithm::EdDSA, key: EncodingKey::from_ed_der(pkcs8.as_ref()), jwk }
}

/// A fixed RSA key (ring cannot generate RSA keys); it signs nothing outside these tests.
pub(super) fn rs256(kid: &str) -> Signer {
    let pem = include_bytes!("../../../tests/data/jwt/rsa2048-test-only.pem");
    let key = EncodingKey::from_rsa_pem(pem).expect("rsa key");
    let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&key, Algorithm::RS256).expect("jwk")).expect("json");
    jwk["kid"] = json!(kid);
    Signer { kid: Some(kid.into()), alg: Algorithm::RS256, key, jwk }
}

pub(super) fn sign(s: &Signer, claims: &Value) -> String {
    let mut header = Header::new(s.alg);
    header.kid = s.kid.clone();
    jsonwebtoken::encode(&header, claims, &s.key).expect("sign")
}

pub(super) fn claims(sub: &str) -> Value {
    json!({"iss": ISS, "aud": AUD, "sub": sub, "iat": NOW - 60, "nbf": NOW - 60, "exp": NOW + 600})
}

/// A Kubernetes projected service-account token's claims.
pub(super) fn k8s_claims(namespace: &str, sa: &str) -> Value {
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

pub(super) fn jwks(keys: &[&Signer]) -> String {
    json!({"keys": keys.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

pub(super) fn write_jwks(path: &Path, keys: &[&Signer]) {
    std::fs::write(path, jwks(keys)).expect("write jwks");
}

pub(super) fn config(jwks_file: &Path, template: &str) -> JwtAttestorConfig {
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

pub(super) struct Fixture {
    _dir: tempfile::TempDir,
    pub(super) path: PathBuf,
    pub(super) attestors: JwtAttestors,
}

pub(super) fn fixture(keys: &[&Signer], template: &str) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("jwks.json");
    write_jwks(&path, keys);
    let attestors = JwtAttestors::new(vec![config(&path, template)], TD).expect("valid config");
    Fixture { _dir: dir, path, attestors }
}

pub(super) async fn refused(attestors: &JwtAttestors, token: &str, kind: &str, needle: &str) -> String {
    let err = attestors.attest(token, NOW).await.expect_err("must be refused");
    assert_eq!(err.kind, kind, "{err}");
    assert!(err.detail.contains(needle), "detail {:?} should contain {needle:?}", err.detail);
    assert!(token.len() < 4 || !err.detail.contains(token), "the detail must not contain the token");
    err.detail
}

pub(super) type Answer = Arc<std::sync::Mutex<(u16, String)>>;

/// A one-route HTTP/1.1 server answering every request with the current (status, body);
/// with `tls`, over TLS.
pub(super) async fn serve_with(
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

pub(super) async fn serve(answer: Answer, hits: Arc<AtomicUsize>) -> std::net::SocketAddr {
    serve_with(answer, hits, None).await
}

pub(super) async fn respond<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
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
    // A client may hang up before reading everything (the size-limit test stops early); then
    // there is nobody left to answer.
    if sock.write_all(head.as_bytes()).await.is_err() || sock.write_all(body.as_bytes()).await.is_err() {
        return;
    }
    // The client may also close first once it has the whole response; that is not a failure.
    sock.shutdown().await.ok();
}

pub(super) fn url_attestors(addr: std::net::SocketAddr) -> JwtAttestors {
    let mut cfg = config(Path::new("unused"), SUB_TEMPLATE);
    cfg.jwks_file = None;
    cfg.jwks_url = Some(format!("http://{addr}/jwks"));
    JwtAttestors::new(vec![cfg], TD).expect("valid")
}
