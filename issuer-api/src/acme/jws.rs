//! JSON Web Signature as ACME uses it (RFC 8555 section 6.2): the flattened serialization with
//! a protected header that carries `url`, `nonce` and exactly one of `jwk` and `kid`, and
//! external account binding (section 7.3.4). The JOSE mechanics (decoding, the JWK model, key
//! policy, thumbprints, signature verification) are [`crate::jose`]'s, shared with JWT
//! attestation.
//!
//! Only asymmetric algorithms authenticate requests: ES256, ES384, RS256 and EdDSA (Ed25519),
//! the ones RFC 8555 section 6.2 requires or common clients use. `none` and MAC algorithms are
//! refused, except HS256 inside external account binding, which has its own entry point
//! ([`verify_eab`]).

use serde::Deserialize;

use crate::jose::{self, Algorithm, FormatError, KeyError, VerifyError, base64url};
pub use crate::jose::{FlattenedJws, Jwk};

/// The algorithms an ACME request may be signed with.
pub const ACME_ALGORITHMS: [Algorithm; 4] = [Algorithm::ES256, Algorithm::ES384, Algorithm::RS256, Algorithm::EdDSA];

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

impl From<FormatError> for JwsError {
    fn from(e: FormatError) -> Self {
        JwsError::Malformed(e.to_string())
    }
}

impl From<base64url::Base64Error> for JwsError {
    fn from(e: base64url::Base64Error) -> Self {
        JwsError::Malformed(e.to_string())
    }
}

/// A key member that is not base64url is a malformed request; anything else wrong with the key
/// is `badPublicKey` (RFC 8555 section 6.7).
impl From<KeyError> for JwsError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Encoding(e) => e.into(),
            other => JwsError::BadKey(other.to_string()),
        }
    }
}

impl From<VerifyError> for JwsError {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::Algorithm(alg) => JwsError::BadAlgorithm(alg),
            VerifyError::KeyMismatch(_) => JwsError::BadKey(e.to_string()),
            VerifyError::Key(k) => k.into(),
            _ => JwsError::BadSignature,
        }
    }
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

impl ParsedJws {
    /// Parses a flattened JWS body.
    pub fn parse(body: &[u8]) -> Result<Self, JwsError> {
        let d = FlattenedJws::from_slice(body)?.decode::<ProtectedHeader>()?;
        Ok(ParsedJws { header: d.header, payload: d.payload, signing_input: d.signing_input, signature: d.signature })
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

    /// Verifies the signature with `key`, which must suit `alg` (one of [`ACME_ALGORITHMS`]).
    pub fn verify(&self, key: &Jwk) -> Result<(), JwsError> {
        Ok(jose::jws::verify(&self.header.alg, &ACME_ALGORITHMS, key, &self.signing_input, &self.signature)?)
    }
}

/// Verifies an external account binding (RFC 8555 section 7.3.4): an HS256 JWS whose `kid` is the
/// EAB key id, whose `url` is the newAccount URL and whose payload is the account's JWK. The MAC
/// comparison is constant-time (ring's `hmac::verify`). Returns the EAB key id.
///
/// The MAC key comes from `lookup_key` (our EAB key store), never from the JWS, which is why this
/// is the one place HMAC is verified and it is not part of [`crate::jose`].
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
    let header: EabHeader = eab.header().map_err(|e| match e {
        FormatError::Header(e) => JwsError::Malformed(format!("bad EAB protected header: {e}")),
        other => other.into(),
    })?;
    if header.alg != "HS256" {
        return Err(JwsError::BadAlgorithm(header.alg));
    }
    if header.nonce.is_some() {
        return Err(JwsError::Malformed("the EAB JWS must not carry a nonce".into()));
    }
    if header.url != new_account_url {
        return Err(JwsError::Malformed("the EAB JWS url is not the newAccount URL".into()));
    }
    let payload: Jwk = serde_json::from_slice(&eab.payload_bytes()?)
        .map_err(|_| JwsError::Malformed("the EAB payload is not a JWK".into()))?;
    if &payload != account_key {
        return Err(JwsError::Malformed("the EAB payload is not the account key".into()));
    }
    let key = lookup_key(&header.kid).ok_or(JwsError::BadSignature)?;
    ring::hmac::verify(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
        &eab.signing_input(),
        &eab.signature_bytes()?,
    )
    .map_err(|_| JwsError::BadSignature)?;
    Ok(header.kid)
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use ring::rand::SystemRandom;
    use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};

    use super::*;

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
        assert!(matches!(short.validate().map_err(JwsError::from), Err(JwsError::BadKey(_))));
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
