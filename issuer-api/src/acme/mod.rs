//! RFC 8555 ACME. Built piece by piece: today the JWS layer (request authentication).
pub mod jws;
