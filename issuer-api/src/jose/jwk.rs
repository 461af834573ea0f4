//! JSON Web Keys (RFC 7517): the one JWK model for ACME account keys and JWT issuers' keys,
//! RFC 7638 thumbprints, and the policy for members of a JWK Set (RFC 7517 section 5).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::base64url;
use super::keys::{Algorithm, KeyError, KeyFamily, PublicKey, strip_leading_zeros};

/// A JSON Web Key holding a public key (RFC 7517 section 4), of the kinds we verify with.
///
/// Members are kept as the base64url strings that arrived: thumbprints and key comparisons are
/// made over them (RFC 7638), and an ACME account's key is stored as it was sent. Members other
/// than `kty` and the key material (`kid`, `use`, `alg`, ...) are not part of the key; JWK Sets
/// read them through [`JwkSetKey`].
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

impl Jwk {
    /// RFC 7638 thumbprint: SHA-256 over the required members in lexicographic order, base64url.
    /// Used for ACME key authorizations and as an ACME account's key identity.
    ///
    /// RSA members are hashed in their minimal form (RFC 7518 section 2, `Base64urlUInt`): the
    /// key policy tolerates leading zero bytes, and without this one key would have two
    /// identities. For every minimally encoded key (all keys ACME accepted before leading zeros
    /// were tolerated, since ring refused them) the thumbprint is the plain RFC 7638 one.
    pub fn thumbprint(&self) -> String {
        // serde_json escapes nothing in base64url or curve names, so format! is canonical for
        // valid keys; an invalid key's thumbprint only has to be stable.
        let canonical = match self {
            Jwk::Ec { crv, x, y } => format!(r#"{{"crv":"{crv}","kty":"EC","x":"{x}","y":"{y}"}}"#),
            Jwk::Rsa { n, e } => {
                let (n, e) = (minimal_uint("n", n), minimal_uint("e", e));
                format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#)
            }
            Jwk::Okp { crv, x } => format!(r#"{{"crv":"{crv}","kty":"OKP","x":"{x}"}}"#),
        };
        base64url::encode(ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()))
    }

    /// The key family its `kty` and `crv` name, without decoding anything (`None`: a curve we do
    /// not support). Lets a verifier report "wrong key for this algorithm" before "bad key".
    pub fn family(&self) -> Option<KeyFamily> {
        match self {
            Jwk::Rsa { .. } => Some(KeyFamily::Rsa),
            Jwk::Ec { crv, .. } if crv == "P-256" => Some(KeyFamily::P256),
            Jwk::Ec { crv, .. } if crv == "P-384" => Some(KeyFamily::P384),
            Jwk::Okp { crv, .. } if crv == "Ed25519" => Some(KeyFamily::Ed25519),
            _ => None,
        }
    }

    /// The full key policy (see [`super::keys`]), including the EC on-curve test: for keys being
    /// admitted, so that a bad key is refused with a reason once rather than failing every
    /// signature later.
    pub fn validate(&self) -> Result<(), KeyError> {
        PublicKey::from_jwk(self)?.check_point()
    }
}

/// A `Base64urlUInt` in its minimal encoding; unchanged when it is not base64url or is zero.
fn minimal_uint<'a>(member: &'static str, s: &'a str) -> std::borrow::Cow<'a, str> {
    match base64url::decode(member, s) {
        Ok(bytes) if bytes.len() > 1 && bytes[0] == 0 => {
            let stripped = strip_leading_zeros(bytes);
            if stripped.is_empty() { s.into() } else { base64url::encode(stripped).into() }
        }
        _ => s.into(),
    }
}

/// One member of a JWK Set that passed the policy for verification keys.
#[derive(Debug, Clone)]
pub struct JwkSetKey {
    /// `kid` (RFC 7517 section 4.5), which tokens use to pick the key.
    pub kid: Option<String>,
    /// `alg` (section 4.4): when the set pins one, the key is used with that algorithm only.
    pub alg: Option<Algorithm>,
    /// The key.
    pub key: PublicKey,
}

/// Why a member of a JWK Set is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwkSetKeyError {
    /// Not a JWK object we can read.
    #[error("not a JWK we can read: {0}")]
    Unreadable(String),
    /// `use` (section 4.2) is present and not `sig`.
    #[error("its use is not \"sig\"")]
    NotForSignatures,
    /// `alg` is not an algorithm we verify.
    #[error("its alg {0:?} is not an accepted signature algorithm")]
    UnacceptedAlgorithm(String),
    /// `alg` is for another key type.
    #[error("its alg {0} does not fit its key type")]
    AlgorithmMismatch(Algorithm),
    /// The key fails the key policy.
    #[error(transparent)]
    Key(#[from] KeyError),
}

impl JwkSetKey {
    /// Reads one member of a JWK Set and applies the policy: symmetric keys are never used, a
    /// `use` other than `sig` and an `alg` other than an accepted signature algorithm exclude the
    /// key, a pinned `alg` must fit the key type, and the key must pass [`Jwk::validate`].
    pub fn from_value(raw: &Value) -> Result<Self, JwkSetKeyError> {
        let obj = raw.as_object().ok_or_else(|| JwkSetKeyError::Unreadable("it is not a JSON object".into()))?;
        let string = |name: &str| match obj.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(JwkSetKeyError::Unreadable(format!("its {name} is not a string"))),
        };
        match string("kty")? {
            Some("EC" | "RSA" | "OKP") => {}
            Some("oct") => return Err(KeyError::Symmetric.into()),
            Some(other) => return Err(KeyError::UnsupportedKeyType(other.to_owned()).into()),
            None => return Err(JwkSetKeyError::Unreadable("it has no kty".into())),
        }
        let jwk: Jwk = serde_json::from_value(raw.clone()).map_err(|e| JwkSetKeyError::Unreadable(e.to_string()))?;
        let kid = string("kid")?.map(str::to_owned);
        if string("use")?.is_some_and(|u| u != "sig") {
            return Err(JwkSetKeyError::NotForSignatures);
        }
        let alg = match string("alg")? {
            None => None,
            Some(name) => {
                Some(Algorithm::from_name(name).ok_or_else(|| JwkSetKeyError::UnacceptedAlgorithm(name.to_owned()))?)
            }
        };
        let key = PublicKey::from_jwk(&jwk)?;
        key.check_point()?;
        if let Some(a) = alg
            && a.family() != key.key_type().family()
        {
            return Err(JwkSetKeyError::AlgorithmMismatch(a));
        }
        Ok(JwkSetKey { kid, alg, key })
    }

    /// Whether a token with header `alg` may be verified with this key: the algorithm must fit
    /// the key type and the key's pinned `alg`, so that no key is used with another algorithm.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        alg.family() == self.key.key_type().family() && self.alg.is_none_or(|a| a == alg)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::jose::keys::{KeyType, test_modulus};

    #[test]
    fn thumbprint_matches_rfc7638_example() {
        // The RSA key of RFC 7638 section 3.1 and its published thumbprint.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let jwk = Jwk::Rsa { n: n.into(), e: "AQAB".into() };
        assert_eq!(jwk.thumbprint(), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
        // The same key with a leading zero byte in n and e has the same identity.
        let padded = [&[0u8][..], &base64url::decode("n", n).expect("b64")].concat();
        let zeros = Jwk::Rsa { n: base64url::encode(padded), e: "AAEAAQ".into() };
        assert_eq!(zeros.thumbprint(), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
        // A different spelling that is not the same integer stays different.
        assert_ne!(Jwk::Rsa { n: n.into(), e: "AQAA".into() }.thumbprint(), jwk.thumbprint());
    }

    #[test]
    fn families_come_from_kty_and_crv() {
        let ec = |crv: &str| Jwk::Ec { crv: crv.into(), x: String::new(), y: String::new() };
        assert_eq!(ec("P-256").family(), Some(KeyFamily::P256));
        assert_eq!(ec("P-384").family(), Some(KeyFamily::P384));
        assert_eq!(ec("P-521").family(), None);
        assert_eq!(Jwk::Okp { crv: "Ed448".into(), x: String::new() }.family(), None);
        assert_eq!(Jwk::Rsa { n: String::new(), e: String::new() }.family(), Some(KeyFamily::Rsa));
    }

    #[test]
    fn jwk_set_members_follow_the_policy() {
        let rsa =
            json!({"kty": "RSA", "n": test_modulus(2048, 1), "e": "AQAB", "kid": "r", "use": "sig", "alg": "PS256"});
        let k = JwkSetKey::from_value(&rsa).expect("accepted");
        assert_eq!(
            (k.kid.as_deref(), k.alg, k.key.key_type()),
            (Some("r"), Some(Algorithm::PS256), KeyType::Rsa { bits: 2048 })
        );
        assert!(k.accepts(Algorithm::PS256) && !k.accepts(Algorithm::RS256), "the pinned alg only");
        let refused = |v: Value| JwkSetKey::from_value(&v).expect_err("refused").to_string();
        assert_eq!(refused(json!({"kty": "oct", "k": "c2VjcmV0"})), "symmetric (oct) keys are never accepted");
        assert_eq!(
            refused(json!({"kty": "RSA", "n": test_modulus(2048, 0), "e": "AQAB", "use": "enc"})),
            "its use is not \"sig\""
        );
        assert!(
            refused(json!({"kty": "RSA", "n": test_modulus(2048, 0), "e": "AQAB", "alg": "RSA-OAEP"}))
                .contains("not an accepted")
        );
        assert!(
            refused(json!({"kty": "RSA", "n": test_modulus(2048, 0), "e": "AQAB", "alg": "HS256"}))
                .contains("not an accepted")
        );
        assert_eq!(
            refused(json!({"kty": "RSA", "n": test_modulus(2048, 0), "e": "AQAB", "alg": "ES256"})),
            "its alg ES256 does not fit its key type"
        );
        assert!(
            refused(json!({"kty": "RSA", "n": test_modulus(2048, 0), "e": "AQAB", "kid": 7}))
                .contains("kid is not a string")
        );
        assert!(refused(json!({"kty": "EC", "crv": "P-256", "x": "AA"})).starts_with("not a JWK we can read"));
        assert!(refused(json!({"kty": "XYZ"})).contains("unsupported key type"));
        assert!(refused(json!(["kty"])).starts_with("not a JWK we can read"));
        assert_eq!(
            refused(json!({"kty": "RSA", "n": test_modulus(8193, 0), "e": "AQAB"})),
            "RSA keys may have at most 8192 bits, this one has 8193"
        );
    }
}
