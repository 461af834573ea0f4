//! The key policy: which public keys and algorithms may verify a signature, for ACME account keys
//! and for JWT issuers' keys alike (RFC 7518 sections 3 and 6, RFC 8037 for Ed25519).
//!
//! There is exactly one rule per key type, applied wherever a JWK becomes a [`PublicKey`]:
//!
//! - **RSA**: the modulus `n` and exponent `e` are read as unsigned big-endian integers; leading
//!   zero bytes are stripped first (RFC 7518 section 2 forbids them, but some libraries emit a
//!   257-byte modulus for a 2048-bit key and RFC 7518 section 6.3.1.1 warns about exactly that).
//!   The modulus must then be **2048 to 8192 bits** long, counted exactly (the position of its
//!   highest set bit, not its byte length times 8) and odd. The exponent must be **odd, at least 3
//!   and below 2^33**. These bounds are ring's (`RSA_PKCS1_2048_8192_*`, public exponents
//!   `3..2^33`), so a key we admit is one ring can verify with; before this layer, ACME counted
//!   whole bytes (a 2041-bit modulus passed the size check and then failed every signature) and
//!   did not look at `e`, while the JWT path stopped at 4096 bits (the `rsa` crate's default).
//! - **EC**: P-256 with ES256 and P-384 with ES384 only; coordinates are exactly 32 or 48 bytes
//!   (RFC 7518 section 6.2.1.2) and [`PublicKey::check_point`] tests the point is on the curve.
//! - **OKP**: Ed25519 with EdDSA only (RFC 8037), a 32-byte public key.
//! - **Symmetric keys** (`oct`) and MAC algorithms do not exist here: [`Algorithm`] has no `HS*`
//!   and no `none`, so no header can turn a public key into a MAC secret (the classic
//!   algorithm-confusion attack) or switch verification off.
//!
//! An algorithm is only ever used with a key of its own family ([`Algorithm::family`]).

use std::fmt;

use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};

use super::base64url::{self, Base64Error};
use super::jwk::Jwk;

/// Smallest accepted RSA modulus, in bits: smaller ones are factorable with serious effort.
pub const RSA_MIN_BITS: usize = 2048;
/// Largest accepted RSA modulus, in bits: ring's limit, and a bound on verification cost.
pub const RSA_MAX_BITS: usize = 8192;
/// Smallest accepted RSA public exponent (`e = 1` makes "signatures" trivial to forge).
pub const RSA_MIN_EXPONENT: u64 = 3;
/// Largest accepted RSA public exponent (ring's bound; real keys use 65537).
pub const RSA_MAX_EXPONENT: u64 = (1 << 33) - 1;

/// A JWS signature algorithm we verify (RFC 7518 section 3.1 names). Asymmetric only: see the
/// module documentation for why `none` and `HS*` have no variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (RFC 7518 section 3.3).
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256 and MGF1 with SHA-256, salt as long as the hash (section 3.5).
    PS256,
    /// ECDSA with P-256 and SHA-256 (section 3.4).
    ES256,
    /// ECDSA with P-384 and SHA-384.
    ES384,
    /// EdDSA with Ed25519 (RFC 8037 section 3.1).
    EdDSA,
}

impl Algorithm {
    /// Every algorithm this layer can verify.
    pub const ALL: [Algorithm; 7] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    /// The algorithm a JOSE `alg` value names, if we verify it. `none`, `HS256` and anything
    /// unknown give `None`. Names are case-sensitive (RFC 7515 section 4.1.1).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The JOSE `alg` value.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    /// The only key family this algorithm may be used with.
    pub fn family(self) -> KeyFamily {
        match self {
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256 => KeyFamily::Rsa,
            Algorithm::ES256 => KeyFamily::P256,
            Algorithm::ES384 => KeyFamily::P384,
            Algorithm::EdDSA => KeyFamily::Ed25519,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A key type as far as algorithm matching goes: RSA of any accepted size, or one curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyFamily {
    /// `kty: RSA`.
    Rsa,
    /// `kty: EC`, `crv: P-256`.
    P256,
    /// `kty: EC`, `crv: P-384`.
    P384,
    /// `kty: OKP`, `crv: Ed25519`.
    Ed25519,
}

/// The type of an accepted key, with the RSA size (for error details and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// RSA with a modulus of `bits` significant bits.
    Rsa {
        /// The modulus length in bits, leading zero bits not counted.
        bits: usize,
    },
    /// EC P-256.
    P256,
    /// EC P-384.
    P384,
    /// Ed25519.
    Ed25519,
}

impl KeyType {
    /// The family, for algorithm matching.
    pub fn family(self) -> KeyFamily {
        match self {
            KeyType::Rsa { .. } => KeyFamily::Rsa,
            KeyType::P256 => KeyFamily::P256,
            KeyType::P384 => KeyFamily::P384,
            KeyType::Ed25519 => KeyFamily::Ed25519,
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyType::Rsa { bits } => write!(f, "RSA {bits}-bit"),
            KeyType::P256 => f.write_str("EC P-256"),
            KeyType::P384 => f.write_str("EC P-384"),
            KeyType::Ed25519 => f.write_str("Ed25519"),
        }
    }
}

/// Why a JWK is not an acceptable public key. The texts end up in ACME problem documents and in
/// the log lines of skipped JWKS keys, so they say what is wrong and what would be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A member is not base64url (ACME reports this as `malformed`, not `badPublicKey`).
    #[error(transparent)]
    Encoding(#[from] Base64Error),
    /// `kty: oct`: a shared secret, never a verification key here.
    #[error("symmetric (oct) keys are never accepted")]
    Symmetric,
    /// A `kty` we do not know.
    #[error("unsupported key type {0:?}")]
    UnsupportedKeyType(String),
    /// An EC curve other than P-256 and P-384.
    #[error("EC curve {0:?} is not supported (only P-256 and P-384)")]
    UnsupportedEcCurve(String),
    /// An OKP curve other than Ed25519.
    #[error("OKP curve {0:?} is not supported (only Ed25519)")]
    UnsupportedOkpCurve(String),
    /// EC coordinates of the wrong length for the curve.
    #[error("EC coordinates must be {0} bytes")]
    EcCoordinateLength(usize),
    /// The EC point is not on its curve.
    #[error("the EC point is not on the curve")]
    NotOnCurve,
    /// An Ed25519 key that is not 32 bytes.
    #[error("an Ed25519 public key is 32 bytes")]
    Ed25519Length,
    /// RSA modulus below [`RSA_MIN_BITS`].
    #[error("RSA keys need at least 2048 bits, this one has {0}")]
    RsaTooSmall(usize),
    /// RSA modulus above [`RSA_MAX_BITS`].
    #[error("RSA keys may have at most 8192 bits, this one has {0}")]
    RsaTooLarge(usize),
    /// An even modulus is not a product of two odd primes.
    #[error("the RSA modulus is even, so it is not an RSA key")]
    RsaEvenModulus,
    /// An exponent outside the rule of the module documentation.
    #[error("the RSA exponent must be odd, at least 3 and below 2^33")]
    RsaExponent,
}

/// Why a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The header's `alg` is not one the caller accepts (or not one we know at all).
    #[error("unsupported JWS algorithm {0:?}")]
    Algorithm(String),
    /// The key's type does not fit the algorithm.
    #[error("the key does not match the algorithm {0}")]
    KeyMismatch(Algorithm),
    /// The key is not acceptable.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The signature does not verify with the key.
    #[error("the signature does not verify")]
    Signature,
}

/// A public key that passed the key policy, ready to verify signatures with ring.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(Material);

#[derive(Clone, PartialEq, Eq)]
enum Material {
    /// Minimal big-endian `n` and `e`: ring refuses leading zero bytes.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
        bits: usize,
    },
    /// Uncompressed SEC1 point `04 || x || y`.
    Ec {
        family: KeyFamily,
        point: Vec<u8>,
    },
    Ed25519(Vec<u8>),
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PublicKey").field(&self.key_type()).finish()
    }
}

impl PublicKey {
    /// Applies the key policy to `jwk`, except the EC on-curve test ([`PublicKey::check_point`]):
    /// ring checks the point on every ECDSA verification anyway, so the request path need not pay
    /// for it twice; places that *admit* a key (a new ACME account key, a JWKS load) use
    /// [`Jwk::validate`], which does both.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, KeyError> {
        Ok(PublicKey(match jwk {
            Jwk::Ec { crv, x, y } => {
                let (family, len) = match crv.as_str() {
                    "P-256" => (KeyFamily::P256, 32),
                    "P-384" => (KeyFamily::P384, 48),
                    other => return Err(KeyError::UnsupportedEcCurve(other.to_owned())),
                };
                let x = base64url::decode("x", x)?;
                let y = base64url::decode("y", y)?;
                if x.len() != len || y.len() != len {
                    return Err(KeyError::EcCoordinateLength(len));
                }
                let mut point = Vec::with_capacity(1 + 2 * len);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                Material::Ec { family, point }
            }
            Jwk::Rsa { n, e } => rsa(n, e)?,
            Jwk::Okp { crv, x } => {
                if crv != "Ed25519" {
                    return Err(KeyError::UnsupportedOkpCurve(crv.clone()));
                }
                let x = base64url::decode("x", x)?;
                if x.len() != 32 {
                    return Err(KeyError::Ed25519Length);
                }
                Material::Ed25519(x)
            }
        }))
    }

    /// For EC keys, checks that the point is on the curve (NIST SP 800-56A section 5.6.2.3.4
    /// partial validation, done by ring's ECDH, the one ring API that validates a public point
    /// without a signature). Other key types have nothing to check here.
    pub fn check_point(&self) -> Result<(), KeyError> {
        let Material::Ec { family, point } = &self.0 else { return Ok(()) };
        let alg = match family {
            KeyFamily::P384 => &ring::agreement::ECDH_P384,
            _ => &ring::agreement::ECDH_P256,
        };
        let Ok(mine) = ring::agreement::EphemeralPrivateKey::generate(alg, &ring::rand::SystemRandom::new()) else {
            // No randomness, no early check; every verification still validates the point.
            return Ok(());
        };
        ring::agreement::agree_ephemeral(mine, &ring::agreement::UnparsedPublicKey::new(alg, point), |_| ())
            .map_err(|_| KeyError::NotOnCurve)
    }

    /// The key's type.
    pub fn key_type(&self) -> KeyType {
        match &self.0 {
            Material::Rsa { bits, .. } => KeyType::Rsa { bits: *bits },
            Material::Ec { family: KeyFamily::P384, .. } => KeyType::P384,
            Material::Ec { .. } => KeyType::P256,
            Material::Ed25519(_) => KeyType::Ed25519,
        }
    }

    /// Verifies `signature` over `message` (the JWS signing input) with `alg`, which must be of
    /// this key's family.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> Result<(), VerifyError> {
        if alg.family() != self.key_type().family() {
            return Err(VerifyError::KeyMismatch(alg));
        }
        let verified = match &self.0 {
            Material::Rsa { n, e, .. } => {
                let params = match alg {
                    Algorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    Algorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
                    _ => &signature::RSA_PKCS1_2048_8192_SHA256,
                };
                RsaPublicKeyComponents { n: n.as_slice(), e: e.as_slice() }.verify(params, message, signature)
            }
            Material::Ec { family: KeyFamily::P384, point } => {
                UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point).verify(message, signature)
            }
            Material::Ec { point, .. } => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point).verify(message, signature)
            }
            Material::Ed25519(x) => UnparsedPublicKey::new(&signature::ED25519, x).verify(message, signature),
        };
        verified.map_err(|_| VerifyError::Signature)
    }
}

/// The RSA rule of the module documentation.
fn rsa(n: &str, e: &str) -> Result<Material, KeyError> {
    let n = strip_leading_zeros(base64url::decode("n", n)?);
    let bits = bit_length(&n);
    if bits < RSA_MIN_BITS {
        return Err(KeyError::RsaTooSmall(bits));
    }
    if bits > RSA_MAX_BITS {
        return Err(KeyError::RsaTooLarge(bits));
    }
    if n.last().is_none_or(|b| b & 1 == 0) {
        return Err(KeyError::RsaEvenModulus);
    }
    let e = strip_leading_zeros(base64url::decode("e", e)?);
    // At most 5 bytes are below 2^40; longer exponents are refused before the fold can overflow.
    let value = (e.len() <= 5).then(|| e.iter().fold(0u64, |v, b| (v << 8) | u64::from(*b)));
    if !value.is_some_and(|v| (RSA_MIN_EXPONENT..=RSA_MAX_EXPONENT).contains(&v) && v & 1 == 1) {
        return Err(KeyError::RsaExponent);
    }
    Ok(Material::Rsa { n, e, bits })
}

/// The unsigned integer without leading zero bytes (empty for zero).
pub(crate) fn strip_leading_zeros(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    bytes.drain(..zeros);
    bytes
}

/// Significant bits of a big-endian unsigned integer without leading zero bytes.
fn bit_length(n: &[u8]) -> usize {
    match n.first() {
        Some(first) => n.len() * 8 - first.leading_zeros() as usize,
        None => 0,
    }
}

/// An odd RSA modulus of exactly `bits` significant bits with `zeros` leading zero bytes, as
/// base64url. Not a product of primes: the policy cannot tell, and signatures are tested with
/// real keys elsewhere.
#[cfg(test)]
pub(crate) fn test_modulus(bits: usize, zeros: usize) -> String {
    let len = bits.div_ceil(8);
    let mut n = vec![0u8; zeros + len];
    n[zeros] = 1 << ((bits - 1) % 8);
    n[zeros + len - 1] |= 1;
    base64url::encode(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_modulus as modulus;

    fn rsa_key(n: String, e: &str) -> Jwk {
        Jwk::Rsa { n, e: e.into() }
    }

    #[test]
    fn rsa_size_is_counted_in_significant_bits() {
        let check = |bits, zeros| PublicKey::from_jwk(&rsa_key(modulus(bits, zeros), "AQAB")).map(|k| k.key_type());
        assert_eq!(check(2047, 0), Err(KeyError::RsaTooSmall(2047)), "256 bytes but 2047 bits");
        assert_eq!(check(2048, 0), Ok(KeyType::Rsa { bits: 2048 }));
        assert_eq!(check(2048, 1), Ok(KeyType::Rsa { bits: 2048 }), "a leading zero byte is not counted");
        assert_eq!(check(2048, 3), Ok(KeyType::Rsa { bits: 2048 }));
        assert_eq!(check(2047, 1), Err(KeyError::RsaTooSmall(2047)), "nor does it make a key larger");
        assert_eq!(check(8192, 0), Ok(KeyType::Rsa { bits: 8192 }));
        assert_eq!(check(8193, 0), Err(KeyError::RsaTooLarge(8193)));
        assert_eq!(check(1024, 0), Err(KeyError::RsaTooSmall(1024)));
        let zero = rsa_key(base64url::encode([0u8; 300]), "AQAB");
        assert_eq!(PublicKey::from_jwk(&zero), Err(KeyError::RsaTooSmall(0)));
        let mut even = base64url::decode("n", &modulus(2048, 0)).expect("b64");
        *even.last_mut().expect("non-empty") &= 0xfe;
        assert_eq!(PublicKey::from_jwk(&rsa_key(base64url::encode(even), "AQAB")), Err(KeyError::RsaEvenModulus));
        assert_eq!(KeyError::RsaTooSmall(1024).to_string(), "RSA keys need at least 2048 bits, this one has 1024");
    }

    #[test]
    fn rsa_exponent_rule() {
        let n = modulus(2048, 0);
        let check = |e: &[u8]| PublicKey::from_jwk(&rsa_key(n.clone(), &base64url::encode(e))).map(|_| ());
        for ok in [&[3u8][..], &[1, 0, 1], &[0, 1, 0, 1], &[1, 0xff, 0xff, 0xff, 0xff], &[0, 0, 0, 0, 0, 0, 0, 0, 3]] {
            assert_eq!(check(ok), Ok(()), "{ok:?}");
        }
        for bad in [&[][..], &[0], &[1], &[2], &[4], &[1, 0, 0], &[2, 0, 0, 0, 1], &[1, 0, 0, 0, 0, 0, 1]] {
            assert_eq!(check(bad), Err(KeyError::RsaExponent), "{bad:?}");
        }
        assert_eq!(
            PublicKey::from_jwk(&rsa_key(n, "AQAB=")),
            Err(KeyError::Encoding(Base64Error { member: "e" })),
            "padding"
        );
    }

    #[test]
    fn ec_and_okp_keys() {
        let (x, y) = ("axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY", "T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU");
        let ec = |crv: &str, x: &str, y: &str| Jwk::Ec { crv: crv.into(), x: x.into(), y: y.into() };
        let good = PublicKey::from_jwk(&ec("P-256", x, y)).expect("the P-256 base point");
        assert_eq!(good.key_type(), KeyType::P256);
        good.check_point().expect("on the curve");
        let off = PublicKey::from_jwk(&ec("P-256", x, x)).expect("lengths are right");
        assert_eq!(off.check_point(), Err(KeyError::NotOnCurve));
        assert_eq!(PublicKey::from_jwk(&ec("P-384", x, y)), Err(KeyError::EcCoordinateLength(48)));
        assert_eq!(PublicKey::from_jwk(&ec("P-521", x, y)), Err(KeyError::UnsupportedEcCurve("P-521".into())));
        assert_eq!(PublicKey::from_jwk(&ec("P-256", "!", y)), Err(KeyError::Encoding(Base64Error { member: "x" })));
        let okp = |crv: &str, x: &[u8]| Jwk::Okp { crv: crv.into(), x: base64url::encode(x) };
        assert_eq!(PublicKey::from_jwk(&okp("Ed25519", &[9; 32])).map(|k| k.key_type()), Ok(KeyType::Ed25519));
        assert_eq!(PublicKey::from_jwk(&okp("Ed25519", &[9; 31])), Err(KeyError::Ed25519Length));
        assert_eq!(PublicKey::from_jwk(&okp("X25519", &[9; 32])), Err(KeyError::UnsupportedOkpCurve("X25519".into())));
    }

    #[test]
    fn algorithms_are_asymmetric_and_bound_to_a_family() {
        for name in ["none", "None", "HS256", "HS384", "HS512", "rs256", "ES512", "PS384", "RSA-OAEP", ""] {
            assert_eq!(Algorithm::from_name(name), None, "{name}");
        }
        for a in Algorithm::ALL {
            assert_eq!(Algorithm::from_name(a.name()), Some(a));
        }
        let key = PublicKey::from_jwk(&Jwk::Okp { crv: "Ed25519".into(), x: base64url::encode([9; 32]) }).expect("key");
        for a in [Algorithm::RS256, Algorithm::PS256, Algorithm::ES256, Algorithm::ES384] {
            assert_eq!(key.verify(a, b"m", &[0; 64]), Err(VerifyError::KeyMismatch(a)));
        }
        assert_eq!(key.verify(Algorithm::EdDSA, b"m", &[0; 64]), Err(VerifyError::Signature));
    }
}
