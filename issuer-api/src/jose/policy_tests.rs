//! The key policy seen from both doors: an ACME request signed with a JWK, and a JWT verified
//! with a JWKS key. The same key must be accepted or refused by both, for the same reason.

use std::time::Duration;

use ring::rand::SystemRandom;
use ring::signature::{self, RsaKeyPair};
use serde_json::{Value, json};

use super::base64url;
use super::keys::test_modulus;
use crate::acme::jws::{JwsError, ParsedJws};
use crate::enroll::jwt::{AttestError, JwtAttestorConfig, JwtAttestors};
use crate::jose::Jwk;

const ISS: &str = "https://issuer.example";
const NOW: i64 = 1_780_000_000;

fn attestors() -> JwtAttestors {
    let cfg = JwtAttestorConfig {
        issuer: ISS.into(),
        audience: "lanyard".into(),
        jwks_file: Some("/nonexistent/jwks.json".into()),
        jwks_url: None,
        jwks_ca_file: None,
        spiffe_id_template: "spiffe://example.org/sub/{sub}".into(),
        leeway: Duration::from_secs(30),
        max_token_lifetime: Duration::from_secs(3600),
        jwks_refresh: Duration::from_secs(300),
    };
    JwtAttestors::new(vec![cfg], "example.org").expect("valid")
}

fn claims() -> Value {
    json!({"iss": ISS, "aud": "lanyard", "sub": "w", "iat": NOW - 60, "exp": NOW + 600})
}

/// What a path made of a key.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The key passed the policy (a signature was then checked with it).
    Accepted,
    /// The key was refused by the policy.
    Refused,
}

/// ACME: the key is validated at admission (newAccount) and used to verify; both must agree.
fn acme(jwk: &Jwk, alg: &str) -> Verdict {
    let protected = base64url::encode(json!({"alg": alg, "jwk": jwk, "nonce": "n", "url": "u"}).to_string());
    let body = json!({"protected": protected, "payload": "", "signature": base64url::encode([1u8; 256])});
    let jws = ParsedJws::parse(body.to_string().as_bytes()).expect("parse");
    let validated = jwk.validate().map_err(JwsError::from);
    match jws.verify(jwk) {
        Err(JwsError::BadSignature) => {
            assert_eq!(validated, Ok(()), "verification used a key that admission refuses");
            Verdict::Accepted
        }
        Err(JwsError::BadKey(detail)) => {
            assert!(validated.is_err(), "admission accepts a key that verification refuses: {detail}");
            Verdict::Refused
        }
        other => panic!("unexpected ACME outcome {other:?}"),
    }
}

/// JWT: the key is a JWKS member; a refused one is skipped, so the token's kid is unknown.
fn jwt(jwk: &Jwk, alg: &str) -> Verdict {
    let mut member = serde_json::to_value(jwk).expect("json");
    member["kid"] = json!("k");
    let jwks = json!({"keys": [member]}).to_string();
    let input = format!(
        "{}.{}",
        base64url::encode(json!({"alg": alg, "kid": "k"}).to_string()),
        base64url::encode(claims().to_string())
    );
    let token = format!("{input}.{}", base64url::encode([1u8; 256]));
    let err = attestors().attest_with_jwks(&token, jwks.as_bytes(), NOW).expect_err("a bogus signature");
    assert_eq!(err.kind, AttestError::UNAUTHORIZED, "{err}");
    if err.detail.contains("no key with kid=\"k\"") {
        Verdict::Refused
    } else {
        assert!(err.detail.contains("signature does not verify with key kid=k"), "{err}");
        Verdict::Accepted
    }
}

fn rsa(n: String, e: &str) -> Jwk {
    Jwk::Rsa { n, e: e.into() }
}

#[test]
fn both_paths_apply_one_rsa_rule() {
    let cases = [
        ("2047 bits", rsa(test_modulus(2047, 0), "AQAB"), Verdict::Refused),
        ("2047 bits behind a zero byte", rsa(test_modulus(2047, 1), "AQAB"), Verdict::Refused),
        ("2048 bits", rsa(test_modulus(2048, 0), "AQAB"), Verdict::Accepted),
        ("2048 bits behind zero bytes", rsa(test_modulus(2048, 2), "AQAB"), Verdict::Accepted),
        ("4096 bits", rsa(test_modulus(4096, 0), "AQAB"), Verdict::Accepted),
        ("8192 bits", rsa(test_modulus(8192, 0), "AQAB"), Verdict::Accepted),
        ("8193 bits", rsa(test_modulus(8193, 0), "AQAB"), Verdict::Refused),
        ("e = 3", rsa(test_modulus(2048, 0), "Aw"), Verdict::Accepted),
        ("e = 65537 with a zero byte", rsa(test_modulus(2048, 0), "AAEAAQ"), Verdict::Accepted),
        ("e = 2^33 - 1", rsa(test_modulus(2048, 0), &base64url::encode([1, 255, 255, 255, 255])), Verdict::Accepted),
        ("e = 1", rsa(test_modulus(2048, 0), "AQ"), Verdict::Refused),
        ("e = 2", rsa(test_modulus(2048, 0), "Ag"), Verdict::Refused),
        ("e = 65536", rsa(test_modulus(2048, 0), "AQAA"), Verdict::Refused),
        ("e = 2^33 + 1", rsa(test_modulus(2048, 0), &base64url::encode([2, 0, 0, 0, 1])), Verdict::Refused),
        ("e empty", rsa(test_modulus(2048, 0), ""), Verdict::Refused),
        ("even modulus", rsa(base64url::encode([&[0x80u8][..], &[0u8; 255]].concat()), "AQAB"), Verdict::Refused),
    ];
    for (what, jwk, want) in cases {
        assert_eq!(acme(&jwk, "RS256"), want, "ACME, {what}");
        assert_eq!(jwt(&jwk, "RS256"), want, "JWT, {what}");
    }
}

/// The fixed 2048-bit test key (ring cannot generate RSA keys).
fn test_rsa() -> RsaKeyPair {
    use rustls_pki_types::PrivatePkcs1KeyDer;
    use rustls_pki_types::pem::PemObject;
    let pem = include_bytes!("../../tests/data/jwt/rsa2048-test-only.pem");
    let der = PrivatePkcs1KeyDer::from_pem_slice(pem).expect("PKCS#1 PEM");
    RsaKeyPair::from_der(der.secret_pkcs1_der()).expect("RSA key")
}

fn rsa_sign(kp: &RsaKeyPair, input: &str) -> String {
    let mut sig = vec![0u8; kp.public().modulus_len()];
    kp.sign(&signature::RSA_PKCS1_SHA256, &SystemRandom::new(), input.as_bytes(), &mut sig).expect("sign");
    base64url::encode(sig)
}

#[test]
fn a_real_key_with_a_leading_zero_modulus_verifies_on_both_paths() {
    let kp = test_rsa();
    let parts = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(kp.public());
    let minimal = rsa(base64url::encode(&parts.n), &base64url::encode(&parts.e));
    let padded = rsa(base64url::encode([&[0u8][..], &parts.n].concat()), &base64url::encode(&parts.e));
    assert_eq!(padded.thumbprint(), minimal.thumbprint(), "one key, one ACME identity");
    for jwk in [&minimal, &padded] {
        jwk.validate().expect("2048-bit key");
        // ACME.
        let protected = base64url::encode(json!({"alg": "RS256", "jwk": jwk, "nonce": "n", "url": "u"}).to_string());
        let sig = rsa_sign(&kp, &format!("{protected}."));
        let body = json!({"protected": protected, "payload": "", "signature": sig}).to_string();
        ParsedJws::parse(body.as_bytes()).expect("parse").verify(jwk).expect("ACME verifies");
        // JWT.
        let mut member = serde_json::to_value(jwk).expect("json");
        member["kid"] = json!("k");
        let jwks = json!({"keys": [member]}).to_string();
        let input = format!(
            "{}.{}",
            base64url::encode(br#"{"alg":"RS256","kid":"k"}"#),
            base64url::encode(claims().to_string())
        );
        let token = format!("{input}.{}", rsa_sign(&kp, &input));
        let id = attestors().attest_with_jwks(&token, jwks.as_bytes(), NOW).expect("JWT verifies");
        assert_eq!(id.to_string(), "spiffe://example.org/sub/w");
    }
}

#[test]
fn both_paths_refuse_a_wrong_algorithm_for_the_key_none_and_hmac() {
    let key = rsa(test_modulus(2048, 0), "AQAB");
    let ec = Jwk::Ec {
        crv: "P-256".into(),
        x: "axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY".into(),
        y: "T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU".into(),
    };
    let acme_err = |jwk: &Jwk, alg: &str| {
        let protected = base64url::encode(json!({"alg": alg, "jwk": jwk, "nonce": "n", "url": "u"}).to_string());
        let body = json!({"protected": protected, "payload": "", "signature": "AAAA"}).to_string();
        ParsedJws::parse(body.as_bytes()).expect("parse").verify(jwk).expect_err("refused")
    };
    let jwt_err = |jwk: &Jwk, alg: &str| {
        let mut member = serde_json::to_value(jwk).expect("json");
        member["kid"] = json!("k");
        let jwks = json!({"keys": [member]}).to_string();
        let token = format!(
            "{}.{}.AAAA",
            base64url::encode(json!({"alg": alg, "kid": "k"}).to_string()),
            base64url::encode(claims().to_string())
        );
        attestors().attest_with_jwks(&token, jwks.as_bytes(), NOW).expect_err("refused")
    };
    for (jwk, alg) in [(&key, "ES256"), (&key, "EdDSA"), (&ec, "RS256"), (&ec, "ES384")] {
        assert_eq!(acme_err(jwk, alg), JwsError::BadKey(format!("the key does not match the algorithm {alg}")));
        let e = jwt_err(jwk, alg);
        assert!(e.detail.contains(&format!("the token's algorithm {alg} does not match key kid=k")), "{e}");
    }
    for alg in ["none", "HS256", "HS512"] {
        for jwk in [&key, &ec] {
            assert_eq!(acme_err(jwk, alg), JwsError::BadAlgorithm(alg.into()));
            let e = jwt_err(jwk, alg);
            assert_eq!(e.kind, AttestError::UNAUTHORIZED);
            assert!(e.detail.contains(&format!("token algorithm \"{alg}\" is not accepted")), "{e}");
        }
    }
    // ACME accepts fewer algorithms than JWT attestation: PS256 is a JWT-only algorithm.
    assert_eq!(acme_err(&key, "PS256"), JwsError::BadAlgorithm("PS256".into()));
    assert!(jwt_err(&key, "PS256").detail.contains("signature does not verify"));
    // An unsigned `none` token (empty signature) is refused for its algorithm, not its encoding.
    let none = format!("{}.{}.", base64url::encode(br#"{"alg":"none"}"#), base64url::encode(claims().to_string()));
    let e = attestors().attest_with_jwks(&none, br#"{"keys": []}"#, NOW).expect_err("refused");
    assert!(e.detail.contains("\"none\" is not accepted"), "{e}");
}
