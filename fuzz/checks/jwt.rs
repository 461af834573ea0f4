//! Fuzz check `jwt`: JWT attestation tokens (`issuer-api/src/enroll/jwt.rs`): the compact JWS
//! parse, the JWKS parse (`parse_jwks`), signature, claims and the SPIFFE ID template, through
//! `JwtAttestors::attest_with_jwks` (the attestation path with the key set given instead of
//! loaded). Shared by `fuzz/fuzz_targets/jwt.rs` and `issuer-api/tests/fuzz_regressions.rs`.
#![allow(dead_code)]

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use issuer_api::enroll::jwt::{AttestError, JwtAttestorConfig, JwtAttestors};
use ring::signature::{Ed25519KeyPair, KeyPair};

const ISS: &str = "https://kubernetes.default.svc";
const AUD: &str = "lanyard";
const NOW: i64 = 1_700_000_000;

fn signer() -> &'static Ed25519KeyPair {
    static KEY: std::sync::OnceLock<Ed25519KeyPair> = std::sync::OnceLock::new();
    KEY.get_or_init(|| Ed25519KeyPair::from_seed_unchecked(&[5u8; 32]).expect("fixed Ed25519 seed"))
}

fn jwks() -> &'static [u8] {
    static JWKS: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    JWKS.get_or_init(make_jwks)
}

fn make_jwks() -> Vec<u8> {
    let x = B64.encode(signer().public_key().as_ref());
    serde_json::to_vec(&serde_json::json!({"keys": [
        {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1", "use": "sig", "alg": "EdDSA"},
        {"kty": "EC", "crv": "P-256", "kid": "ec", "x": "f83OJ3D2xF4oRqvOJvZJkBD_AtGAB-tntYfnUB6PjEY", "y": "x3JgG0nxhCl_QgOCVa7GAv4xHlug2ubvPrbKlOEBbEE"},
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}
    ]}))
    .expect("jwks json")
}

fn attestors() -> &'static JwtAttestors {
    static A: std::sync::OnceLock<JwtAttestors> = std::sync::OnceLock::new();
    A.get_or_init(make_attestors)
}

fn make_attestors() -> JwtAttestors {
    let cfg = JwtAttestorConfig {
        issuer: ISS.into(),
        audience: AUD.into(),
        jwks_file: Some("/nonexistent/jwks.json".into()),
        jwks_url: None,
        jwks_ca_file: None,
        spiffe_id_template: "spiffe://example.org/ns/{/kubernetes.io/namespace}/sa/{sub}".into(),
        leeway: Duration::from_secs(30),
        max_token_lifetime: Duration::from_secs(24 * 3600),
        jwks_refresh: Duration::from_secs(300),
    };
    JwtAttestors::new(vec![cfg], "example.org").expect("valid attestor")
}

/// A token over `header` and `claims` (JSON bytes, as given) signed with the fixed key.
fn sign(header: &[u8], claims: &[u8]) -> String {
    let input = format!("{}.{}", B64.encode(header), B64.encode(claims));
    let sig = signer().sign(input.as_bytes());
    format!("{input}.{}", B64.encode(sig))
}

fn expect_result(r: Result<ca::SpiffeId, AttestError>, claims: Option<&serde_json::Value>) {
    match r {
        Ok(id) => {
            assert_eq!(id.trust_domain(), "example.org");
            let s = id.to_string();
            assert!(s.starts_with("spiffe://example.org/ns/"), "{s}");
            if let Some(c) = claims {
                let ns = c["kubernetes.io"]["namespace"].as_str().expect("namespace was rendered");
                let sub = c["sub"].as_str().expect("sub was rendered");
                assert_eq!(s, format!("spiffe://example.org/ns/{ns}/sa/{sub}"));
                assert_eq!(c["iss"], ISS);
            }
        }
        Err(e) => {
            assert!(
                [AttestError::UNAUTHORIZED, AttestError::MALFORMED, AttestError::SERVER_INTERNAL].contains(&e.kind),
                "{e:?}"
            );
            assert!(!e.detail.is_empty());
        }
    }
}

/// Byte 0 picks the mode: a raw token; a header and claims (split at 0xff) the harness signs; or
/// a JWKS against a valid token.
pub(crate) fn check(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let a = attestors();
    match mode % 3 {
        0 => expect_result(a.attest_with_jwks(&String::from_utf8_lossy(rest), jwks(), NOW), None),
        1 => {
            let (header, claims) = match rest.iter().position(|b| *b == 0xff) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (&br#"{"alg":"EdDSA","kid":"k1"}"#[..], rest),
            };
            let token = sign(header, claims);
            let parsed: Option<serde_json::Value> = serde_json::from_slice(claims).ok();
            // Only a header that names our key and EdDSA can verify; then the claims decide.
            let ours = serde_json::from_slice::<serde_json::Value>(header)
                .is_ok_and(|h| h["alg"] == "EdDSA" && h["kid"] == "k1" && h.get("crit").is_none());
            let r = a.attest_with_jwks(&token, jwks(), NOW);
            if r.is_ok() {
                assert!(ours, "only EdDSA with kid k1 can verify");
            }
            expect_result(r, parsed.as_ref());
        }
        _ => {
            let claims = valid_claims();
            let token = sign(br#"{"alg":"EdDSA","kid":"k1"}"#, claims.to_string().as_bytes());
            expect_result(a.attest_with_jwks(&token, rest, NOW), Some(&claims));
        }
    }
}

fn valid_claims() -> serde_json::Value {
    serde_json::json!({
        "iss": ISS, "aud": [AUD, "api"], "sub": "web", "iat": NOW - 60, "nbf": NOW - 60, "exp": NOW + 600,
        "kubernetes.io": {"namespace": "prod", "serviceaccount": {"name": "web"}}
    })
}

pub(crate) fn seeds() -> Vec<Vec<u8>> {
    let claims = valid_claims();
    let header = br#"{"alg":"EdDSA","kid":"k1","typ":"JWT"}"#;
    let token = sign(header, claims.to_string().as_bytes());
    let m = |mode: u8, b: &[u8]| [&[mode][..], b].concat();
    vec![
        m(0, token.as_bytes()),
        m(0, sign(br#"{"alg":"RS256","kid":"r"}"#, claims.to_string().as_bytes()).as_bytes()),
        m(0, b"eyJhbGciOiJub25lIn0.eyJpc3MiOiJ4In0."),
        m(1, &[&header[..], &[0xff], claims.to_string().as_bytes()].concat()),
        m(1, &[&br#"{"alg":"EdDSA","kid":"k1"}"#[..], &[0xff], br#"{"iss":"https://kubernetes.default.svc","aud":"lanyard","exp":1700000600,"sub":"..","kubernetes.io":{"namespace":"a/b"}}"#].concat()),
        m(2, jwks()),
        m(2, br#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB","kid":"k1"}]}"#),
    ]
}
