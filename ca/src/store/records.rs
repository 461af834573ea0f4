//! Row types of the `certificates` table.

use time::OffsetDateTime;

use crate::CaError;

/// What is about to be signed, recorded before signing (step 1 of issuance).
#[derive(Debug, Clone)]
pub struct CertificateIntent {
    /// Serial, hex.
    pub serial: String,
    /// Issuer journal id.
    pub issuer_id: String,
    /// Profile name.
    pub profile: String,
    /// Who asked.
    pub requester: String,
    /// Subject DN (may be empty).
    pub subject: String,
    /// SANs, comma-separated (`dns:a.example,ip:10.0.0.1,spiffe://td/x`; no name can hold a comma).
    pub sans: String,
    /// SHA-256 of the subject public key info, hex.
    pub key_fingerprint: String,
    /// Validity.
    pub not_before: OffsetDateTime,
    /// Validity.
    pub not_after: OffsetDateTime,
    /// The certificate this one renews (serial, hex), for a renewal; recorded with the intent so
    /// that the lineage exists before anything is signed.
    pub renewed_from: Option<String>,
}

/// Status of a certificate row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateStatus {
    /// Serial reserved and intent recorded; not (yet) signed and recorded.
    Intent,
    /// Signed and recorded.
    Issued,
    /// The process died between intent and record; never returned.
    Abandoned,
}

/// A row of the `certificates` table.
#[derive(Debug, Clone)]
pub struct CertificateRecord {
    /// Serial, hex.
    pub serial: String,
    /// Row status.
    pub status: CertificateStatus,
    /// Issuer journal id.
    pub issuer_id: String,
    /// Profile name.
    pub profile: String,
    /// Who asked.
    pub requester: String,
    /// Subject DN.
    pub subject: String,
    /// SANs, comma-separated as in [`CertificateIntent::sans`].
    pub sans: String,
    /// Key fingerprint, hex.
    pub key_fingerprint: String,
    /// Validity.
    pub not_before: OffsetDateTime,
    /// Validity.
    pub not_after: OffsetDateTime,
    /// The certificate, once issued.
    pub cert_pem: Option<String>,
    /// Revocation time, if revoked.
    pub revoked_at: Option<OffsetDateTime>,
    /// The certificate this one renews, if it is a renewal.
    pub renewed_from: Option<String>,
    /// Its one live successor, once it was renewed: renewing it again is refused (outside the
    /// retry window, see `Policy::renewal_retry_window`).
    pub superseded_by: Option<String>,
    /// When it was first renewed; the retry window runs from here and never moves.
    pub superseded_at: Option<OffsetDateTime>,
}

/// The columns a certificate record is read from and the join they come from (a macro so
/// queries stay `&'static str`).
macro_rules! cert_columns {
    () => {
        "c.serial, CASE WHEN i.serial IS NULL THEN c.status ELSE 'issued' END AS status, c.issuer_id, c.profile, \
         c.requester, c.subject, c.sans, c.key_fingerprint, c.not_before, c.not_after, i.cert_pem, c.revoked_at, \
         c.renewed_from, c.superseded_by, c.superseded_at \
         FROM certificates c LEFT JOIN issued_certificates i ON i.serial = c.serial"
    };
}
pub(super) use cert_columns;

impl CertificateStatus {
    pub(super) fn parse(s: &str) -> Result<Self, CaError> {
        match s {
            "intent" => Ok(CertificateStatus::Intent),
            "issued" => Ok(CertificateStatus::Issued),
            "abandoned" => Ok(CertificateStatus::Abandoned),
            other => Err(CaError::Store(format!("unknown certificate status {other:?}"))),
        }
    }
}
