//! Certificate serial numbers: positive, 16 octets (RFC 5280 section 4.1.2.2 allows up to 20).
//!
//! Layout: one prefix octet `0x4c`, five octets of Unix time in seconds, ten octets (80 bits) of
//! CSPRNG output (CA/B Forum asks for at least 64). The time prefix makes serials sort by issuance
//! time, so the database's serial indexes grow at their right edge instead of rewriting pages all
//! over the tree on every commit; the issuance time it reveals is in NotBefore anyway.

use std::fmt;

use ring::rand::{SecureRandom, SystemRandom};

use crate::CaError;

/// A certificate serial number.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial([u8; 16]);

impl Serial {
    /// Draws a fresh serial. The prefix octet keeps the DER INTEGER positive and exactly 16 octets,
    /// so its hex form is canonical.
    pub fn random(rng: &SystemRandom) -> Result<Self, CaError> {
        let mut b = [0u8; 16];
        b[0] = 0x4c;
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| CaError::Key("system clock before 1970".into()))?
            .as_secs();
        b[1..6].copy_from_slice(&secs.to_be_bytes()[3..8]);
        rng.fill(&mut b[6..]).map_err(|_| CaError::Key("system RNG failed".into()))?;
        Ok(Serial(b))
    }

    /// Lower-case hex, the form used in records and URLs.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses the hex form.
    pub fn from_hex(s: &str) -> Option<Self> {
        let v = hex::decode(s).ok()?;
        Some(Serial(v.try_into().ok()?))
    }

    /// The DER INTEGER content octets.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub(crate) fn to_rcgen(&self) -> rcgen::SerialNumber {
        rcgen::SerialNumber::from_slice(&self.0)
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({})", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_positive_distinct_and_round_trip() {
        let rng = SystemRandom::new();
        let a = Serial::random(&rng).expect("rng");
        let b = Serial::random(&rng).expect("rng");
        assert_ne!(a, b);
        assert!(a.as_bytes()[0] & 0x80 == 0 && a.as_bytes()[0] != 0);
        // Time-ordered prefix: a later serial never sorts before an earlier one's second.
        assert!(a.as_bytes()[..6] <= b.as_bytes()[..6]);
        assert_ne!(a.as_bytes()[6..], b.as_bytes()[6..]);
        assert_eq!(Serial::from_hex(&a.to_hex()), Some(a));
        assert_eq!(Serial::from_hex("zz"), None);
    }
}
