//! Base64url as JOSE uses it (RFC 7515 section 2 and appendix C; RFC 7518 section 2 for
//! `Base64urlUInt`): the URL-safe alphabet, no `=` padding, and canonical trailing bits.
//!
//! Every JOSE member this crate reads goes through [`decode`]: JWS parts (ACME's flattened
//! serialization and compact JWTs alike), JWK members sent by ACME clients and JWK members
//! published in an issuer's JWKS. One decoder means one answer to "is this the same key?", which
//! matters because thumbprints and key comparisons are made over these strings. The strict
//! rule is also what both earlier copies ended up enforcing: ACME decoded strictly, and the JWT
//! path's lenient padding-trimming was undone by `jsonwebtoken`, which decoded strictly after it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A JOSE member that is not base64url without padding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{member} is not base64url without padding")]
pub struct Base64Error {
    /// The member (`protected`, `payload`, `signature`, `n`, `x`, ...), for error details.
    pub member: &'static str,
}

/// Decodes `s`, the value of `member`. Padding, the standard alphabet (`+`, `/`), whitespace and
/// non-zero trailing bits are refused: each would give one value several spellings.
pub fn decode(member: &'static str, s: &str) -> Result<Vec<u8>, Base64Error> {
    URL_SAFE_NO_PAD.decode(s).map_err(|_| Base64Error { member })
}

/// Encodes `bytes` without padding (the only form [`decode`] accepts).
pub fn encode(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_canonical_unpadded_url_safe_form_decodes() {
        assert_eq!(decode("x", "AQAB").expect("plain"), [1, 0, 1]);
        assert_eq!(decode("x", "").expect("empty"), Vec::<u8>::new());
        assert_eq!(decode("x", "-_8").expect("url-safe alphabet"), [0xfb, 0xff]);
        for bad in ["AQ==", "AQ=", "+/8", "AQ B", "AR", "A", "!!"] {
            assert_eq!(decode("n", bad), Err(Base64Error { member: "n" }), "{bad:?}");
        }
        assert_eq!(Base64Error { member: "n" }.to_string(), "n is not base64url without padding");
        assert_eq!(encode([0xfb, 0xff]), "-_8");
    }
}
