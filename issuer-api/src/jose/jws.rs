//! JSON Web Signature (RFC 7515): the flattened JSON serialization ACME uses (section 7.2.2) and
//! the compact serialization of JWTs (section 7.1), decoded in one place, and signature
//! verification of either with the key policy of [`super::keys`].
//!
//! Both forms refuse a `crit` header parameter (section 4.1.11): a recipient must reject a JWS
//! whose critical extensions it does not understand, and we understand none (`b64: false` of
//! RFC 7797, for instance, would change what the signature covers).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::base64url::{self, Base64Error};
use super::jwk::Jwk;
use super::keys::{Algorithm, PublicKey, VerifyError};

/// A flattened JWS as it arrives (RFC 7515 section 7.2.2). Only the integrity-protected header
/// is supported: an unprotected `header` member (or any other) is refused, as RFC 8555
/// section 6.2 requires for ACME, the one user of this form.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlattenedJws {
    /// base64url of the protected header JSON.
    pub protected: String,
    /// base64url of the payload ("" for ACME's POST-as-GET).
    pub payload: String,
    /// base64url of the signature.
    pub signature: String,
}

/// Why a JWS could not be decoded (before any signature check).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The body is not a flattened JWS JSON object.
    #[error("not a flattened JWS: {0}")]
    NotFlattened(String),
    /// A part is not base64url.
    #[error(transparent)]
    Encoding(#[from] Base64Error),
    /// The protected header is not the JSON the caller expects.
    #[error("bad protected header: {0}")]
    Header(String),
    /// The header lists critical extensions.
    #[error("the protected header lists critical extensions (crit); none are supported")]
    Critical,
}

/// A decoded flattened JWS: header, payload and signature bytes, and the signing input.
#[derive(Debug, Clone)]
pub struct DecodedJws<H> {
    /// The protected header, parsed as the caller's type.
    pub header: H,
    /// The payload bytes.
    pub payload: Vec<u8>,
    /// `ASCII(BASE64URL(protected) || '.' || BASE64URL(payload))` (RFC 7515 section 5.1 step 5).
    pub signing_input: Vec<u8>,
    /// The signature bytes.
    pub signature: Vec<u8>,
}

/// Only for finding `crit` in a header of any caller type.
#[derive(Deserialize)]
struct CritProbe {
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

impl FlattenedJws {
    /// Parses a request body as a flattened JWS.
    pub fn from_slice(body: &[u8]) -> Result<Self, FormatError> {
        serde_json::from_slice(body).map_err(|e| FormatError::NotFlattened(e.to_string()))
    }

    /// Decodes and parses the protected header as `H`, refusing `crit`.
    pub fn header<H: DeserializeOwned>(&self) -> Result<H, FormatError> {
        let json = base64url::decode("protected", &self.protected)?;
        let header = serde_json::from_slice(&json).map_err(|e| FormatError::Header(e.to_string()))?;
        let probe: CritProbe = serde_json::from_slice(&json).map_err(|e| FormatError::Header(e.to_string()))?;
        if probe.crit.is_some() {
            return Err(FormatError::Critical);
        }
        Ok(header)
    }

    /// The decoded payload.
    pub fn payload_bytes(&self) -> Result<Vec<u8>, Base64Error> {
        base64url::decode("payload", &self.payload)
    }

    /// The decoded signature.
    pub fn signature_bytes(&self) -> Result<Vec<u8>, Base64Error> {
        base64url::decode("signature", &self.signature)
    }

    /// The bytes the signature covers (RFC 7515 section 5.1 step 5).
    pub fn signing_input(&self) -> Vec<u8> {
        let mut input = Vec::with_capacity(self.protected.len() + 1 + self.payload.len());
        input.extend_from_slice(self.protected.as_bytes());
        input.push(b'.');
        input.extend_from_slice(self.payload.as_bytes());
        input
    }

    /// Header, payload and signature, decoded in that order.
    pub fn decode<H: DeserializeOwned>(&self) -> Result<DecodedJws<H>, FormatError> {
        let header = self.header()?;
        let payload = self.payload_bytes()?;
        let signature = self.signature_bytes()?;
        Ok(DecodedJws { header, payload, signing_input: self.signing_input(), signature })
    }
}

/// A compact JWS (RFC 7515 section 7.1), split and decoded; its signature is not yet checked.
#[derive(Debug, Clone)]
pub struct CompactJws<'a> {
    /// The JOSE header (section 4), a JSON object.
    pub header: Map<String, Value>,
    /// The payload bytes (for a JWT, the claims set JSON).
    pub payload: Vec<u8>,
    /// `header.payload` as it arrived, the bytes the signature covers.
    pub signing_input: &'a str,
    /// The signature bytes.
    pub signature: Vec<u8>,
}

/// Why a string is not a compact JWS.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CompactError {
    /// Not three dot-separated parts (five would be a JWE, RFC 7516 section 7.1).
    #[error("it has {0} dot-separated parts instead of 3")]
    Parts(usize),
    /// A part is not base64url (`member` is `header`, `payload` or `signature`).
    #[error(transparent)]
    Encoding(#[from] Base64Error),
    /// The header is not JSON.
    #[error("the header is not JSON: {0}")]
    HeaderNotJson(String),
    /// The header is JSON but not an object.
    #[error("the header is not a JSON object")]
    HeaderNotObject,
    /// The header lists critical extensions.
    #[error("the header lists critical extensions (crit); none are supported")]
    Critical,
}

impl<'a> CompactJws<'a> {
    /// Splits and decodes `raw` (exactly as given: callers trim). Checks header, then payload,
    /// then signature encoding, then `crit`.
    pub fn parse(raw: &'a str) -> Result<Self, CompactError> {
        let parts: Vec<&str> = raw.split('.').collect();
        let [header, payload, signature] = parts[..] else { return Err(CompactError::Parts(parts.len())) };
        let header_json = base64url::decode("header", header)?;
        let header_map = match serde_json::from_slice(&header_json) {
            Ok(Value::Object(map)) => map,
            Ok(_) => return Err(CompactError::HeaderNotObject),
            Err(e) => return Err(CompactError::HeaderNotJson(e.to_string())),
        };
        let payload_bytes = base64url::decode("payload", payload)?;
        let signature_bytes = base64url::decode("signature", signature)?;
        if header_map.contains_key("crit") {
            return Err(CompactError::Critical);
        }
        Ok(CompactJws {
            header: header_map,
            payload: payload_bytes,
            signing_input: &raw[..header.len() + 1 + payload.len()],
            signature: signature_bytes,
        })
    }
}

/// Verifies a signature whose header names algorithm `alg`, with `key`: `alg` must be one of
/// `accepted` (each protocol has its own list), the key must be of the algorithm's family, and
/// the key must pass the key policy (without the on-curve test, which ring makes itself).
/// The checks come in that order, so the error says the most specific thing that is wrong.
pub fn verify(
    alg: &str,
    accepted: &[Algorithm],
    key: &Jwk,
    signing_input: &[u8],
    signature: &[u8],
) -> Result<(), VerifyError> {
    let alg = Algorithm::from_name(alg)
        .filter(|a| accepted.contains(a))
        .ok_or_else(|| VerifyError::Algorithm(alg.to_owned()))?;
    if key.family() != Some(alg.family()) {
        return Err(VerifyError::KeyMismatch(alg));
    }
    PublicKey::from_jwk(key)?.verify(alg, signing_input, signature)
}

#[cfg(test)]
mod tests {
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
    use serde_json::json;

    use super::*;

    fn ed25519() -> (Ed25519KeyPair, Jwk) {
        let kp = Ed25519KeyPair::from_seed_unchecked(&[3u8; 32]).expect("seed");
        let jwk = Jwk::Okp { crv: "Ed25519".into(), x: base64url::encode(kp.public_key().as_ref()) };
        (kp, jwk)
    }

    fn compact(header: &Value, payload: &[u8], kp: &Ed25519KeyPair) -> String {
        let input = format!("{}.{}", base64url::encode(header.to_string()), base64url::encode(payload));
        let sig = kp.sign(input.as_bytes());
        format!("{input}.{}", base64url::encode(sig))
    }

    #[test]
    fn compact_parse_and_verify() {
        let (kp, jwk) = ed25519();
        let token = compact(&json!({"alg": "EdDSA", "kid": "k"}), b"{}", &kp);
        let jws = CompactJws::parse(&token).expect("parse");
        assert_eq!(jws.header["kid"], "k");
        assert_eq!(jws.payload, b"{}");
        verify("EdDSA", &Algorithm::ALL, &jwk, jws.signing_input.as_bytes(), &jws.signature).expect("verifies");
        assert_eq!(verify("EdDSA", &[Algorithm::ES256], &jwk, b"", &[]), Err(VerifyError::Algorithm("EdDSA".into())));
        assert_eq!(
            verify("ES256", &Algorithm::ALL, &jwk, jws.signing_input.as_bytes(), &jws.signature),
            Err(VerifyError::KeyMismatch(Algorithm::ES256))
        );
        for alg in ["none", "HS256"] {
            assert_eq!(verify(alg, &Algorithm::ALL, &jwk, b"", &[]), Err(VerifyError::Algorithm(alg.into())));
        }
        let mut other = jws.signature.clone();
        other[0] ^= 1;
        assert_eq!(
            verify("EdDSA", &Algorithm::ALL, &jwk, jws.signing_input.as_bytes(), &other),
            Err(VerifyError::Signature)
        );

        assert_eq!(CompactJws::parse("a.b").map(|_| ()), Err(CompactError::Parts(2)));
        assert_eq!(CompactJws::parse("a.b.c.d.e").map(|_| ()), Err(CompactError::Parts(5)));
        assert_eq!(
            CompactJws::parse("e30=.e30.").map(|_| ()),
            Err(CompactError::Encoding(Base64Error { member: "header" }))
        );
        assert_eq!(CompactJws::parse("W10.e30.").map(|_| ()), Err(CompactError::HeaderNotObject));
        assert_eq!(
            CompactJws::parse("e30.e30.AA=").map(|_| ()),
            Err(CompactError::Encoding(Base64Error { member: "signature" }))
        );
        let crit = compact(&json!({"alg": "EdDSA", "crit": ["b64"], "b64": false}), b"{}", &kp);
        assert_eq!(CompactJws::parse(&crit).map(|_| ()), Err(CompactError::Critical));
    }

    #[test]
    fn flattened_decode_and_crit() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("gen");
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).expect("kp");
        let pk = kp.public_key().as_ref();
        let jwk = Jwk::Ec { crv: "P-256".into(), x: base64url::encode(&pk[1..33]), y: base64url::encode(&pk[33..65]) };
        let sign = |header: Value| {
            let protected = base64url::encode(header.to_string());
            let payload = base64url::encode(b"hello");
            let sig = kp.sign(&rng, format!("{protected}.{payload}").as_bytes()).expect("sign");
            FlattenedJws { protected, payload, signature: base64url::encode(sig) }
        };
        let jws = sign(json!({"alg": "ES256"}));
        let d: DecodedJws<Map<String, Value>> = jws.decode().expect("decode");
        assert_eq!(d.payload, b"hello");
        verify("ES256", &[Algorithm::ES256], &jwk, &d.signing_input, &d.signature).expect("verifies");
        let crit = sign(json!({"alg": "ES256", "crit": ["exp"], "exp": 1}));
        assert_eq!(crit.decode::<Map<String, Value>>().map(|_| ()), Err(FormatError::Critical));
        assert!(matches!(
            FlattenedJws::from_slice(br#"{"protected":"","payload":"","signature":"","header":{}}"#),
            Err(FormatError::NotFlattened(_))
        ));
    }
}
