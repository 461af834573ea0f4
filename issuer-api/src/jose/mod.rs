//! JOSE for the whole crate: one JWK model, one key policy, one base64url rule and one JWS
//! decoder/verifier (RFC 7515, 7517, 7518, 7638, 8037), on top of ring.
//!
//! Two protocols sign things for us with JOSE: ACME clients sign every request with their
//! account key (RFC 8555 section 6.2, flattened JSON serialization; [`crate::acme::jws`] adds
//! the ACME rules), and workload platforms sign the JWTs that `jwt-01` attestation checks
//! (RFC 7519, compact serialization; [`crate::enroll::jwt`] adds the claims rules). They used to
//! carry their own JWK code and disagreed about RSA key sizes; now both go through here, so a
//! key is accepted or refused for the same reason whichever door it comes through.
//!
//! - [`base64url`]: the one decoder (no padding, canonical bits).
//! - [`keys`]: [`Algorithm`] (asymmetric only: no `none`, no HMAC), the key policy
//!   ([`PublicKey::from_jwk`]: RSA 2048 to 8192 bits counted without leading zeros, exponent odd
//!   in `3..2^33`; P-256, P-384, Ed25519) and verification.
//! - [`jwk`]: [`Jwk`], RFC 7638 thumbprints, and the policy for JWK Set members.
//! - [`jws`]: flattened and compact JWS decoding, `crit` refusal, and [`jws::verify`].
//!
//! HMAC appears only in ACME external account binding, whose MAC key comes from our own EAB
//! key store and never from a JWK (see [`crate::acme::jws::verify_eab`]).

pub mod base64url;
pub mod jwk;
pub mod jws;
pub mod keys;

pub use jwk::{Jwk, JwkSetKey, JwkSetKeyError};
pub use jws::{CompactError, CompactJws, FlattenedJws, FormatError};
pub use keys::{Algorithm, KeyError, KeyFamily, KeyType, PublicKey, VerifyError};

#[cfg(test)]
mod policy_tests;
