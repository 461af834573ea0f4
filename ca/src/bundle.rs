//! Trust bundles: the roots a relying party should trust, with a fingerprint an operator or agent
//! can pin to bootstrap trust.

use crate::issuers::{IssuerKind, IssuerRecord, IssuerState};

/// SHA-256 of a DER blob, lower-case hex.
pub fn sha256_fingerprint(der: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, der))
}

/// The roots relying parties should trust now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustBundle {
    /// Roots in bundle order: the active root first, then prepared and retired ones still trusted.
    pub roots: Vec<IssuerRecord>,
}

impl TrustBundle {
    /// Builds the bundle from the issuer journal: every root that is not expired.
    pub fn from_journal(journal: &[IssuerRecord]) -> Self {
        let mut roots: Vec<IssuerRecord> =
            journal.iter().filter(|r| r.kind == IssuerKind::Root && r.state != IssuerState::Expired).cloned().collect();
        roots.sort_by_key(|r| (r.state != IssuerState::Active, r.not_before));
        TrustBundle { roots }
    }

    /// All roots as concatenated PEM.
    pub fn pem(&self) -> String {
        self.roots.iter().map(|r| r.cert_pem.as_str()).collect()
    }

    /// SHA-256 fingerprint (hex) of the first (active) root, the value agents pin.
    pub fn primary_fingerprint(&self) -> Option<&str> {
        self.roots.first().map(|r| r.fingerprint.as_str())
    }
}
