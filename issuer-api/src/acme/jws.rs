//! JSON Web Signature as ACME uses it (RFC 8555 section 6.2, RFC 7515 flattened JSON
//! serialization, RFC 7518 algorithms, RFC 7638 thumbprints).
//!
//! Only asymmetric algorithms authenticate requests: ES256, ES384, RS256 and EdDSA (Ed25519).
//! `none` and MAC algorithms are refused, except HS256 inside external account binding, which has
//! its own entry point ([`verify_eab`]).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::signature::{self, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

/// Why a JWS was refused. Each maps to an ACME error type at the edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwsError {
    /// Not a flattened JWS, bad base64url, bad JSON (`malformed`).
    #[error("malformed JWS: {0}")]
    Malformed(String),
    /// `alg` is not one we accept (`badSignatureAlgorithm`).
    #[error("unsupported JWS algorithm {0:?}; accepted: ES256, ES384, RS256, EdDSA")]
    BadAlgorithm(String),
    /// The key is malformed, too small, or does not match `alg` (`badPublicKey`).
    #[error("bad public key: {0}")]
    BadKey(String),
    /// The signature does not verify (`malformed`, per RFC 8555 section 6.2).
    #[error("JWS signature does not verify")]
    BadSignature,
    /// `jwk`/`kid` rules of RFC 8555 section 6.2 are broken (`malformed`).
    #[error("{0}")]
    KeyReference(String),
}

/// A flattened JWS as it arrives (RFC 7515 section 7.2.2).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlattenedJws {
    /// base64url of the protected header JSON.
    pub protected: String,
    /// base64url of the payload ("" for POST-as-GET).
    pub payload: String,
    /// base64url of the signature.
    pub signature: String,
}

/// A JSON Web Key holding a public key (RFC 7517), the kinds ACME accounts may use.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "kty")]
pub enum Jwk {
    /// Elliptic curve key (RFC 7518 section 6.2).
    #[serde(rename = "EC")]
    Ec {
        /// `P-256` or `P-384`.
        crv: String,
        /// base64url x coordinate.
        x: String,
        /// base64url y coordinate.
        y: String,
    },
    /// RSA key (RFC 7518 section 6.3).
    #[serde(rename = "RSA")]
    Rsa {
        /// base64url modulus.
        n: String,
        /// base64url exponent.
        e: String,
    },
    /// Octet key pair (RFC 8037), Ed25519 only.
    #[serde(rename = "OKP")]
    Okp {
        /// `Ed25519`.
        crv: String,
        /// base64url public key.
        x: String,
    },
}

/// The protected header fields ACME uses (RFC 8555 section 6.2).
#[derive(Debug, Clone, Deserialize)]
pub struct ProtectedHeader {
    /// Signature algorithm.
    pub alg: String,
    /// Anti-replay nonce (absent only inside keyChange's inner JWS and EAB).
    #[serde(default)]
    pub nonce: Option<String>,
    /// The request URL, which must equal the URL the request was sent to.
    pub url: String,
    /// The signer's key, for newAccount and certificate-key revocation.
    #[serde(default)]
    pub jwk: Option<Jwk>,
    /// The signer's account URL, for everything else.
    #[serde(default)]
    pub kid: Option<String>,
}

/// A JWS whose structure and header parsed; its signature is not yet checked.
#[derive(Debug, Clone)]
pub struct ParsedJws {
    /// The decoded protected header.
    pub header: ProtectedHeader,
    /// The decoded payload bytes (empty for POST-as-GET).
    pub payload: Vec<u8>,
    signing_input: Vec<u8>,
    signature: Vec<u8>,
}

fn b64(field: &str, s: &str) -> Result<Vec<u8>, JwsError> {
    B64.decode(s).map_err(|_| JwsError::Malformed(format!("{field} is not base64url without padding")))
}

impl ParsedJws {
    /// Parses a flattened JWS body.
    pub fn parse(body: &[u8]) -> Result<Self, JwsError> {
        let jws: FlattenedJws =
            serde_json::from_slice(body).map_err(|e| JwsError::Malformed(format!("not a flattened JWS: {e}")))?;
        let header_json = b64("protected", &jws.protected)?;
        let header: ProtectedHeader = serde_json::from_slice(&header_json)
            .map_err(|e| JwsError::Malformed(format!("bad protected header: {e}")))?;
        let payload = b64("payload", &jws.payload)?;
        let signature = b64("signature", &jws.signature)?;
        let mut signing_input = Vec::with_capacity(jws.protected.len() + 1 + jws.payload.len());
        signing_input.extend_from_slice(jws.protected.as_bytes());
        signing_input.push(b'.');
        signing_input.extend_from_slice(jws.payload.as_bytes());
        Ok(ParsedJws { header, payload, signing_input, signature })
    }

    /// Checks the RFC 8555 section 6.2 key-reference rule: exactly one of `jwk` and `kid`, and the
    /// one this endpoint expects.
    pub fn require_jwk(&self) -> Result<&Jwk, JwsError> {
        match (&self.header.jwk, &self.header.kid) {
            (Some(k), None) => Ok(k),
            (_, Some(_)) => Err(JwsError::KeyReference("this request must be signed with jwk, not kid".into())),
            (None, None) => Err(JwsError::KeyReference("the protected header has neither jwk nor kid".into())),
        }
    }

    /// As [`ParsedJws::require_jwk`], for endpoints that take `kid`.
    pub fn require_kid(&self) -> Result<&str, JwsError> {
        match (&self.header.jwk, &self.header.kid) {
            (None, Some(k)) => Ok(k),
            (Some(_), _) => Err(JwsError::KeyReference("this request must be signed with kid, not jwk".into())),
            (None, None) => Err(JwsError::KeyReference("the protected header has neither jwk nor kid".into())),
        }
    }

    /// Verifies the signature with `key`, which must suit `alg`.
    pub fn verify(&self, key: &Jwk) -> Result<(), JwsError> {
        verify_signature(&self.header.alg, key, &self.signing_input, &self.signature)
    }
}

fn verify_signature(alg: &str, key: &Jwk, input: &[u8], sig: &[u8]) -> Result<(), JwsError> {
    match (alg, key) {
        ("ES256", Jwk::Ec { crv, x, y }) if crv == "P-256" => {
            let point = ec_point(x, y, 32)?;
            UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(input, sig)
                .map_err(|_| JwsError::BadSignature)
        }
        ("ES384", Jwk::Ec { crv, x, y }) if crv == "P-384" => {
            let point = ec_point(x, y, 48)?;
            UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point)
                .verify(input, sig)
                .map_err(|_| JwsError::BadSignature)
        }
        ("RS256", Jwk::Rsa { n, e }) => {
            let n = b64("n", n)?;
            let e = b64("e", e)?;
            let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
            if bits < 2048 {
                return Err(JwsError::BadKey(format!("RSA modulus of {bits} bits; at least 2048 required")));
            }
            signature::RsaPublicKeyComponents { n: &n, e: &e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, input, sig)
                .map_err(|_| JwsError::BadSignature)
        }
        ("EdDSA", Jwk::Okp { crv, x }) if crv == "Ed25519" => {
            let x = b64("x", x)?;
            if x.len() != 32 {
                return Err(JwsError::BadKey("Ed25519 key is not 32 bytes".into()));
            }
            UnparsedPublicKey::new(&signature::ED25519, x).verify(input, sig).map_err(|_| JwsError::BadSignature)
        }
        ("ES256" | "ES384" | "RS256" | "EdDSA", _) => {
            Err(JwsError::BadKey(format!("the key does not match the algorithm {alg}")))
        }
        (other, _) => Err(JwsError::BadAlgorithm(other.to_owned())),
    }
}

/// Uncompressed SEC1 point from JWK coordinates (each exactly `len` bytes, RFC 7518 section 6.2.1.2).
fn ec_point(x: &str, y: &str, len: usize) -> Result<Vec<u8>, JwsError> {
    let x = b64("x", x)?;
    let y = b64("y", y)?;
    if x.len() != len || y.len() != len {
        return Err(JwsError::BadKey(format!("EC coordinates must be {len} bytes")));
    }
    let mut p = Vec::with_capacity(1 + 2 * len);
    p.push(4);
    p.extend_from_slice(&x);
    p.extend_from_slice(&y);
    Ok(p)
}

impl Jwk {
    /// RFC 7638 thumbprint: SHA-256 over the required members in lexicographic order, base64url.
    /// Used for key authorizations and as the account's key identity.
    pub fn thumbprint(&self) -> String {
        // serde_json escapes nothing in these base64url / curve values, so format! is canonical.
        let canonical = match self {
            Jwk::Ec { crv, x, y } => format!(r#"{{"crv":"{crv}","kty":"EC","x":"{x}","y":"{y}"}}"#),
            Jwk::Rsa { n, e } => format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#),
            Jwk::Okp { crv, x } => format!(r#"{{"crv":"{crv}","kty":"OKP","x":"{x}"}}"#),
        };
        B64.encode(ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()))
    }

    /// Checks that the key is well formed and of an accepted kind and size, without a signature.
    pub fn validate(&self) -> Result<(), JwsError> {
        match self {
            Jwk::Ec { crv, x, y } => {
                let len = match crv.as_str() {
                    "P-256" => 32,
                    "P-384" => 48,
                    other => return Err(JwsError::BadKey(format!("unsupported curve {other}"))),
                };
                let point = ec_point(x, y, len)?;
                // An invalid point fails here rather than later in every verification.
                let alg: &'static dyn signature::VerificationAlgorithm =
                    if len == 32 { &signature::ECDSA_P256_SHA256_FIXED } else { &signature::ECDSA_P384_SHA384_FIXED };
                match UnparsedPublicKey::new(alg, &point).verify(b"", &[0u8; 1]) {
                    Err(_) => Ok(()),
                    Ok(()) => Err(JwsError::BadKey("impossible signature accepted".into())),
                }
            }
            Jwk::Rsa { n, .. } => {
                let bits = b64("n", n)?.iter().skip_while(|b| **b == 0).count() * 8;
                if bits < 2048 {
                    return Err(JwsError::BadKey(format!("RSA modulus of {bits} bits; at least 2048 required")));
                }
                Ok(())
            }
            Jwk::Okp { crv, x } => {
                if crv != "Ed25519" || b64("x", x)?.len() != 32 {
                    return Err(JwsError::BadKey("only 32-byte Ed25519 OKP keys are accepted".into()));
                }
                Ok(())
            }
        }
    }
}

/// Verifies an external account binding (RFC 8555 section 7.3.4): an HS256 JWS whose `kid` is the
/// EAB key id, whose `url` is the newAccount URL and whose payload is the account's JWK. The MAC
/// comparison is constant-time (ring's `hmac::verify`). Returns the EAB key id.
pub fn verify_eab(
    eab: &FlattenedJws,
    account_key: &Jwk,
    new_account_url: &str,
    lookup_key: impl FnOnce(&str) -> Option<Vec<u8>>,
) -> Result<String, JwsError> {
    #[derive(Deserialize)]
    struct EabHeader {
        alg: String,
        kid: String,
        url: String,
        #[serde(default)]
        nonce: Option<String>,
    }
    let header: EabHeader = serde_json::from_slice(&b64("protected", &eab.protected)?)
        .map_err(|e| JwsError::Malformed(format!("bad EAB protected header: {e}")))?;
    if header.alg != "HS256" {
        return Err(JwsError::BadAlgorithm(header.alg));
    }
    if header.nonce.is_some() {
        return Err(JwsError::Malformed("the EAB JWS must not carry a nonce".into()));
    }
    if header.url != new_account_url {
        return Err(JwsError::Malformed("the EAB JWS url is not the newAccount URL".into()));
    }
    let payload: Jwk = serde_json::from_slice(&b64("payload", &eab.payload)?)
        .map_err(|_| JwsError::Malformed("the EAB payload is not a JWK".into()))?;
    if &payload != account_key {
        return Err(JwsError::Malformed("the EAB payload is not the account key".into()));
    }
    let key = lookup_key(&header.kid).ok_or(JwsError::BadSignature)?;
    let input = format!("{}.{}", eab.protected, eab.payload);
    ring::hmac::verify(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
        input.as_bytes(),
        &b64("signature", &eab.signature)?,
    )
    .map_err(|_| JwsError::BadSignature)?;
    Ok(header.kid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair};

    fn p256() -> (EcdsaKeyPair, Jwk) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("gen");
        let kp =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).expect("kp");
        let pk = kp.public_key().as_ref();
        let jwk = Jwk::Ec { crv: "P-256".into(), x: B64.encode(&pk[1..33]), y: B64.encode(&pk[33..65]) };
        (kp, jwk)
    }

    fn sign_es256(kp: &EcdsaKeyPair, header: serde_json::Value, payload: &[u8]) -> Vec<u8> {
        let protected = B64.encode(header.to_string());
        let payload = B64.encode(payload);
        let sig = kp.sign(&SystemRandom::new(), format!("{protected}.{payload}").as_bytes()).expect("sign");
        serde_json::to_vec(
            &serde_json::json!({"protected": protected, "payload": payload, "signature": B64.encode(sig)}),
        )
        .expect("json")
    }

    #[test]
    fn es256_round_trip_and_tampering() {
        let (kp, jwk) = p256();
        jwk.validate().expect("valid key");
        let body = sign_es256(
            &kp,
            serde_json::json!({"alg": "ES256", "jwk": jwk, "nonce": "n1", "url": "https://ca/acme/new-account"}),
            br#"{"termsOfServiceAgreed":true}"#,
        );
        let jws = ParsedJws::parse(&body).expect("parse");
        assert_eq!(jws.header.url, "https://ca/acme/new-account");
        let key = jws.require_jwk().expect("jwk").clone();
        jws.verify(&key).expect("verifies");
        assert!(jws.require_kid().is_err());

        // Another key does not verify it.
        let (_, other) = p256();
        assert_eq!(jws.verify(&other), Err(JwsError::BadSignature));
        // A changed payload does not verify.
        let mut v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        v["payload"] = B64.encode(br#"{"termsOfServiceAgreed":false}"#).into();
        let tampered = ParsedJws::parse(&serde_json::to_vec(&v).expect("json")).expect("parse");
        assert_eq!(tampered.verify(&key), Err(JwsError::BadSignature));
    }

    #[test]
    fn ed25519_and_algorithm_key_mismatch() {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("gen");
        let kp = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("kp");
        let jwk = Jwk::Okp { crv: "Ed25519".into(), x: B64.encode(kp.public_key().as_ref()) };
        let protected = B64.encode(
            serde_json::json!({"alg": "EdDSA", "kid": "https://ca/acct/1", "nonce": "n", "url": "u"}).to_string(),
        );
        let sig = kp.sign(format!("{protected}.").as_bytes());
        let body = serde_json::to_vec(
            &serde_json::json!({"protected": protected, "payload": "", "signature": B64.encode(sig)}),
        )
        .expect("json");
        let jws = ParsedJws::parse(&body).expect("parse");
        assert!(jws.payload.is_empty(), "POST-as-GET");
        assert_eq!(jws.require_kid().expect("kid"), "https://ca/acct/1");
        jws.verify(&jwk).expect("verifies");
        let (_, ec) = p256();
        assert!(matches!(jws.verify(&ec), Err(JwsError::BadKey(_))));
    }

    #[test]
    fn rs256_with_a_key_from_openssl() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rsa.der");
        let out = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-outform", "DER", "-out"])
            .arg(&path)
            .output()
            .expect("openssl");
        assert!(out.status.success());
        // OpenSSL 3 writes DER RSA keys as PKCS#1 RSAPrivateKey, older ones as PKCS#8.
        let der = std::fs::read(&path).expect("read");
        let kp = signature::RsaKeyPair::from_der(&der)
            .or_else(|_| signature::RsaKeyPair::from_pkcs8(&der))
            .expect("rsa key");
        let parts = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(kp.public());
        let jwk = Jwk::Rsa { n: B64.encode(&parts.n), e: B64.encode(&parts.e) };
        jwk.validate().expect("2048-bit key");
        let protected =
            B64.encode(serde_json::json!({"alg": "RS256", "jwk": jwk, "nonce": "n", "url": "u"}).to_string());
        let mut sig = vec![0u8; kp.public().modulus_len()];
        kp.sign(&signature::RSA_PKCS1_SHA256, &SystemRandom::new(), format!("{protected}.").as_bytes(), &mut sig)
            .expect("sign");
        let body = serde_json::to_vec(
            &serde_json::json!({"protected": protected, "payload": "", "signature": B64.encode(&sig)}),
        )
        .expect("json");
        ParsedJws::parse(&body).expect("parse").verify(&jwk).expect("RS256 verifies");
        let short = Jwk::Rsa { n: B64.encode([0xffu8; 128]), e: "AQAB".into() };
        assert!(matches!(short.validate(), Err(JwsError::BadKey(_))));
    }

    #[test]
    fn refused_algorithms_and_malformed_input() {
        let (_, jwk) = p256();
        for alg in ["none", "HS256", "RS1", "ES512"] {
            let protected = B64.encode(serde_json::json!({"alg": alg, "jwk": jwk, "url": "u"}).to_string());
            let body = serde_json::to_vec(&serde_json::json!({"protected": protected, "payload": "", "signature": ""}))
                .expect("json");
            let jws = ParsedJws::parse(&body).expect("parse");
            assert_eq!(jws.verify(&jwk), Err(JwsError::BadAlgorithm(alg.into())), "{alg}");
        }
        for bad in [&b"{}"[..], b"not json", br#"{"protected":"!!","payload":"","signature":""}"#] {
            assert!(matches!(ParsedJws::parse(bad), Err(JwsError::Malformed(_))));
        }
        // Compact serialization and extra members are not the flattened JSON form ACME requires.
        assert!(ParsedJws::parse(br#""a.b.c""#).is_err());
        let both = B64.encode(serde_json::json!({"alg": "ES256", "jwk": jwk, "kid": "k", "url": "u"}).to_string());
        let jws = ParsedJws::parse(
            &serde_json::to_vec(&serde_json::json!({"protected": both, "payload": "", "signature": ""})).expect("json"),
        )
        .expect("parse");
        assert!(jws.require_jwk().is_err() && jws.require_kid().is_err());
    }

    #[test]
    fn thumbprint_matches_rfc7638_example() {
        // The RSA key of RFC 7638 section 3.1 and its published thumbprint.
        let jwk = Jwk::Rsa {
            n: "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw".into(),
            e: "AQAB".into(),
        };
        assert_eq!(jwk.thumbprint(), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    #[test]
    fn external_account_binding() {
        let (_, account) = p256();
        let mac_key = b"0123456789abcdef0123456789abcdef".to_vec();
        let url = "https://ca/acme/new-account";
        let make = |kid: &str, url: &str, payload: &Jwk, key: &[u8]| {
            let protected = B64.encode(serde_json::json!({"alg": "HS256", "kid": kid, "url": url}).to_string());
            let payload = B64.encode(serde_json::to_vec(payload).expect("json"));
            let tag = ring::hmac::sign(
                &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
                format!("{protected}.{payload}").as_bytes(),
            );
            FlattenedJws { protected, payload, signature: B64.encode(tag.as_ref()) }
        };
        let lookup = |kid: &str| (kid == "kid-1").then(|| mac_key.clone());
        assert_eq!(verify_eab(&make("kid-1", url, &account, &mac_key), &account, url, lookup).expect("valid"), "kid-1");
        assert!(verify_eab(&make("kid-2", url, &account, &mac_key), &account, url, lookup).is_err(), "unknown kid");
        assert!(verify_eab(&make("kid-1", "https://elsewhere", &account, &mac_key), &account, url, lookup).is_err());
        assert!(
            verify_eab(&make("kid-1", url, &account, b"wrong key wrong key wrong key!!"), &account, url, lookup)
                .is_err()
        );
        let (_, other) = p256();
        assert!(verify_eab(&make("kid-1", url, &other, &mac_key), &account, url, lookup).is_err(), "other account key");
    }
}
