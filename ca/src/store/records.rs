//! Row types of the `certificates` table.

use sqlx::Row;
use sqlx::any::AnyRow;
use time::OffsetDateTime;

use super::{db_err, from_unix};
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

/// The columns [`CertificateRecord::from_row`] reads and the join they come from (a macro so
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
    fn parse(s: &str) -> Result<Self, CaError> {
        match s {
            "intent" => Ok(CertificateStatus::Intent),
            "issued" => Ok(CertificateStatus::Issued),
            "abandoned" => Ok(CertificateStatus::Abandoned),
            other => Err(CaError::Store(format!("unknown certificate status {other:?}"))),
        }
    }
}

impl CertificateRecord {
    pub(super) fn from_row(r: &AnyRow) -> Result<Self, CaError> {
        let status: String = r.try_get("status").map_err(db_err)?;
        Ok(CertificateRecord {
            serial: r.try_get("serial").map_err(db_err)?,
            status: CertificateStatus::parse(&status)?,
            issuer_id: r.try_get("issuer_id").map_err(db_err)?,
            profile: r.try_get("profile").map_err(db_err)?,
            requester: r.try_get("requester").map_err(db_err)?,
            subject: r.try_get("subject").map_err(db_err)?,
            sans: r.try_get("sans").map_err(db_err)?,
            key_fingerprint: r.try_get("key_fingerprint").map_err(db_err)?,
            not_before: from_unix(r.try_get("not_before").map_err(db_err)?)?,
            not_after: from_unix(r.try_get("not_after").map_err(db_err)?)?,
            cert_pem: r.try_get("cert_pem").map_err(db_err)?,
            revoked_at: r.try_get::<Option<i64>, _>("revoked_at").map_err(db_err)?.map(from_unix).transpose()?,
            renewed_from: r.try_get("renewed_from").map_err(db_err)?,
            superseded_by: r.try_get("superseded_by").map_err(db_err)?,
            superseded_at: r.try_get::<Option<i64>, _>("superseded_at").map_err(db_err)?.map(from_unix).transpose()?,
        })
    }

    /// The same, from a row of the native SQLite reader (columns in [`cert_columns`] order).
    pub(super) fn from_native_row(r: &rusqlite::Row<'_>) -> Result<Self, CaError> {
        let get = |i| r.get_ref(i).map_err(super::native::sqlite_err);
        let text = |i| -> Result<String, CaError> {
            get(i)?.as_str().map(str::to_owned).map_err(|e| CaError::Store(format!("column {i}: {e}")))
        };
        let int = |i| -> Result<Option<i64>, CaError> {
            get(i)?.as_i64_or_null().map_err(|e| CaError::Store(format!("column {i}: {e}")))
        };
        let opt_text = |i| -> Result<Option<String>, CaError> {
            Ok(get(i)?.as_str_or_null().map_err(|e| CaError::Store(format!("column {i}: {e}")))?.map(str::to_owned))
        };
        let required = |i| int(i)?.ok_or_else(|| CaError::Store(format!("column {i} is NULL")));
        Ok(CertificateRecord {
            serial: text(0)?,
            status: CertificateStatus::parse(&text(1)?)?,
            issuer_id: text(2)?,
            profile: text(3)?,
            requester: text(4)?,
            subject: text(5)?,
            sans: text(6)?,
            key_fingerprint: text(7)?,
            not_before: from_unix(required(8)?)?,
            not_after: from_unix(required(9)?)?,
            cert_pem: opt_text(10)?,
            revoked_at: int(11)?.map(from_unix).transpose()?,
            renewed_from: opt_text(12)?,
            superseded_by: opt_text(13)?,
            superseded_at: int(14)?.map(from_unix).transpose()?,
        })
    }
}
