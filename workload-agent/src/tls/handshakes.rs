//! Counts of the handshakes the seam's verifiers decided, by outcome and reason: what the agent
//! reports to the CA so that a rotation can see refusals in the fleet (and roll back) before
//! anyone files a ticket.

use std::sync::atomic::{AtomicU64, Ordering};

use rustls::CertificateError;

/// Why a verifier refused a peer. The labels are the wire names the CA knows (`ca::fleet`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The chain does not lead to a root of the installed bundle.
    UnknownIssuer,
    /// A certificate is expired or not yet valid.
    Expired,
    /// A certificate is on an installed CRL.
    Revoked,
    /// The peer's SPIFFE ID is of another trust domain, not authorized, or not an X509-SVID.
    Identity,
    /// No bundle is installed yet.
    NoBundle,
    /// Anything else (bad signature, malformed chain).
    Other,
}

impl Refusal {
    /// Every reason, in the order of [`HandshakeCounts::refused`].
    pub const ALL: [Refusal; 6] = [
        Refusal::UnknownIssuer,
        Refusal::Expired,
        Refusal::Revoked,
        Refusal::Identity,
        Refusal::NoBundle,
        Refusal::Other,
    ];

    /// The wire and metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::UnknownIssuer => "unknown_issuer",
            Refusal::Expired => "expired",
            Refusal::Revoked => "revoked",
            Refusal::Identity => "identity",
            Refusal::NoBundle => "no_bundle",
            Refusal::Other => "other",
        }
    }

    /// The reason a chain verification error stands for.
    pub(crate) fn of_chain_error(e: &rustls::Error) -> Refusal {
        match e {
            rustls::Error::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer => Refusal::UnknownIssuer,
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => Refusal::Expired,
                CertificateError::Revoked => Refusal::Revoked,
                _ => Refusal::Other,
            },
            _ => Refusal::Other,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Running totals since the seam was made (monotonic).
#[derive(Debug, Default)]
pub(crate) struct HandshakeTally {
    accepted: AtomicU64,
    refused: [AtomicU64; 6],
}

impl HandshakeTally {
    pub(crate) fn accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn refused(&self, why: Refusal) {
        self.refused[why.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> HandshakeCounts {
        HandshakeCounts {
            accepted: self.accepted.load(Ordering::Relaxed),
            refused: std::array::from_fn(|i| self.refused[i].load(Ordering::Relaxed)),
        }
    }
}

/// Handshake counts: totals from [`crate::tls::CredentialSeam::handshake_counts`], or the
/// difference of two totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandshakeCounts {
    /// Peers accepted.
    pub accepted: u64,
    /// Peers refused, indexed like [`Refusal::ALL`].
    pub refused: [u64; 6],
}

impl HandshakeCounts {
    /// `self - earlier`, per counter (saturating: totals never go down).
    pub fn since(&self, earlier: &HandshakeCounts) -> HandshakeCounts {
        HandshakeCounts {
            accepted: self.accepted.saturating_sub(earlier.accepted),
            refused: std::array::from_fn(|i| self.refused[i].saturating_sub(earlier.refused[i])),
        }
    }

    /// `self + other`, per counter.
    pub fn plus(&self, other: &HandshakeCounts) -> HandshakeCounts {
        HandshakeCounts {
            accepted: self.accepted.saturating_add(other.accepted),
            refused: std::array::from_fn(|i| self.refused[i].saturating_add(other.refused[i])),
        }
    }

    /// Refused count of one reason.
    pub fn refused_for(&self, why: Refusal) -> u64 {
        self.refused[why.index()]
    }

    /// All refusals.
    pub fn refused_total(&self) -> u64 {
        self.refused.iter().sum()
    }
}
