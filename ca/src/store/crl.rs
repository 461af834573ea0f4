//! Revocation lists: the revoked certificates of one issuer, and each issuer's latest CRL with its
//! number. Storing the CRL itself (not only its number) makes every replica serve one and the same
//! CRL for a given number; replacing it is a conditional UPDATE on the number it replaces, so two
//! replicas racing to regenerate cannot both win and the number never goes backwards.

use time::OffsetDateTime;

use super::Store;
use crate::{AuditEvent, CaError};

/// Revoked certificates of an issuer still unexpired (binds: issuer, NotAfter floor).
pub(super) const REVOKED_OF_ISSUER: &str = "SELECT serial, revoked_at, CAST(revocation_reason AS BIGINT) AS reason, \
     not_after FROM certificates WHERE issuer_id = $1 AND revoked_at IS NOT NULL AND not_after > $2 ORDER BY serial";
/// An issuer's latest CRL.
pub(super) const LATEST_CRL: &str =
    "SELECT number, digest, this_update, next_update, der FROM crl_state WHERE issuer_id = $1";
/// An issuer's latest CRL number.
pub(super) const LATEST_CRL_NUMBER: &str = "SELECT number FROM crl_state WHERE issuer_id = $1";
/// An issuer's first CRL (binds: issuer, number, digest, thisUpdate, nextUpdate, DER base64).
pub(super) const INSERT_CRL: &str = "INSERT INTO crl_state (issuer_id, number, digest, this_update, next_update, der) \
     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (issuer_id) DO NOTHING";
/// Replaces an issuer's CRL if it is still number `$7` and the new one is higher (binds: number,
/// digest, thisUpdate, nextUpdate, DER base64, issuer, replaced number).
pub(super) const REPLACE_CRL: &str = "UPDATE crl_state SET number = $1, digest = $2, this_update = $3, \
     next_update = $4, der = $5 WHERE issuer_id = $6 AND number = $7 AND $1 > number";
/// Parks a future CRL (binds: issuer, number, digest, thisUpdate, nextUpdate, DER base64,
/// publish_at, rotation).
pub(super) const STAGE_CRL: &str = "INSERT INTO staged_crls (issuer_id, number, digest, this_update, next_update, \
     der, publish_at, rotation) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
/// The highest staged CRL number of an issuer.
pub(super) const STAGED_CRL_NUMBER: &str = "SELECT MAX(number) AS n FROM staged_crls WHERE issuer_id = $1";
/// Staged CRLs whose time has come (binds: now), newest first per issuer.
pub(super) const DUE_CRLS: &str = "SELECT issuer_id, number, digest, this_update, next_update, der, rotation \
     FROM staged_crls WHERE publish_at <= $1 ORDER BY issuer_id, number DESC";
/// Drops an issuer's staged CRLs up to a number.
pub(super) const DROP_STAGED: &str = "DELETE FROM staged_crls WHERE issuer_id = $1 AND number <= $2";
/// Brings a rotation's staged CRL forward (binds: at, rotation).
pub(super) const EXPEDITE_STAGED: &str =
    "UPDATE staged_crls SET publish_at = $1 WHERE rotation = $2 AND publish_at > $1";
/// Brings a rotation's recorded enforcement forward (binds: at, rotation).
pub(super) const EXPEDITE_EMERGENCY: &str = "UPDATE emergencies SET enforce_at = $1 WHERE id = $2 AND enforce_at > $1";

/// A CRL's DER as stored (base64 text, which both backends keep alike).
pub(super) fn der_text(der: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(der)
}

/// A stored CRL's DER.
pub(super) fn der_of(text: &str, issuer_id: &str) -> Result<Vec<u8>, CaError> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| CaError::Store(format!("stored CRL of {issuer_id}: {e}")))
}

/// The `crl.publish` event of a staged CRL made the latest.
pub(super) fn publish_event(issuer: &str, number: i64, rotation: &str) -> AuditEvent {
    AuditEvent::now(
        "ca",
        "crl.publish",
        issuer,
        crate::Outcome::Success,
        format!("root CRL number {number} published: emergency rotation {rotation} enforced"),
    )
}

/// A revoked certificate, as a CRL lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedCertificate {
    /// Serial, hex.
    pub serial: String,
    /// When the CA processed the revocation.
    pub revoked_at: OffsetDateTime,
    /// RFC 5280 CRLReason code, if one was recorded.
    pub reason: Option<i32>,
    /// The certificate's NotAfter.
    pub not_after: OffsetDateTime,
}

/// The latest CRL of one issuer.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredCrl {
    /// CRL number (RFC 5280 section 5.2.3).
    pub number: i64,
    /// Digest of the revoked entries it lists (see `crate::crl::entries_digest`).
    pub digest: String,
    /// thisUpdate.
    pub this_update: OffsetDateTime,
    /// nextUpdate.
    pub next_update: OffsetDateTime,
    /// The signed CRL, DER.
    pub der: Vec<u8>,
}

impl std::fmt::Debug for StoredCrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCrl")
            .field("number", &self.number)
            .field("digest", &self.digest)
            .field("this_update", &self.this_update)
            .field("next_update", &self.next_update)
            .field("der_len", &self.der.len())
            .finish()
    }
}

impl Store {
    /// Certificates signed by `issuer_id` that are revoked and whose NotAfter is later than
    /// `not_after_above`, ordered by serial.
    pub async fn revoked_certificates(
        &self,
        issuer_id: &str,
        not_after_above: OffsetDateTime,
    ) -> Result<Vec<RevokedCertificate>, CaError> {
        on_backend!(self, revoked_certificates(issuer_id, not_after_above))
    }

    /// The latest CRL of `issuer_id`, if one was ever made.
    pub async fn latest_crl(&self, issuer_id: &str) -> Result<Option<StoredCrl>, CaError> {
        on_backend!(self, latest_crl(issuer_id))
    }

    /// Records `crl` as the latest CRL of `issuer_id` if the latest one is still number
    /// `replaces` (None: there was none), with its `audit` event in the same transaction. False
    /// (and nothing recorded) when another process got there first; the caller then reads the
    /// winner with [`Store::latest_crl`].
    pub async fn replace_crl(
        &self,
        issuer_id: &str,
        replaces: Option<i64>,
        crl: &StoredCrl,
        audit: &AuditEvent,
    ) -> Result<bool, CaError> {
        on_backend!(self, replace_crl(issuer_id, replaces, crl, audit))
    }

    /// Parks `crl`, signed now, as a future CRL of `issuer_id` that [`Store::publish_due_crls`]
    /// makes the latest at `publish_at`; it enforces emergency `rotation`. Its `audit` event (the
    /// signing) commits with it.
    pub async fn stage_crl(
        &self,
        issuer_id: &str,
        crl: &StoredCrl,
        publish_at: i64,
        rotation: &str,
        audit: &AuditEvent,
    ) -> Result<(), CaError> {
        on_backend!(self, stage_crl(issuer_id, crl, publish_at, rotation, audit))
    }

    /// The highest CRL number staged for `issuer_id` and not yet published, if any.
    pub async fn staged_crl_number(&self, issuer_id: &str) -> Result<Option<i64>, CaError> {
        on_backend!(self, staged_crl_number(issuer_id))
    }

    /// Makes every staged CRL whose time has come the latest CRL of its issuer (the newest due
    /// one per issuer, if it is newer than the latest), with a `crl.publish` audit event in the
    /// same transaction, and drops staged CRLs it supersedes. Any replica may call it at any
    /// time: two racing replicas publish once (the conditional replace), and a staged CRL older
    /// than the latest is dropped rather than published.
    pub async fn publish_due_crls(&self, now: i64) -> Result<Vec<PublishedCrl>, CaError> {
        on_backend!(self, publish_due_crls(now))
    }

    /// Brings the enforcement of emergency `rotation` forward to `at` (never later than planned):
    /// its staged CRL and its recorded enforcement time. Returns whether anything moved.
    pub async fn expedite_enforcement(&self, rotation: &str, at: i64) -> Result<bool, CaError> {
        on_backend!(self, expedite_enforcement(rotation, at))
    }
}

/// A root CRL that a staged (fleet-gated) emergency revocation published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedCrl {
    /// The root whose CRL it is.
    pub issuer_id: String,
    /// Its CRL number.
    pub number: i64,
    /// The emergency rotation it enforces.
    pub rotation: String,
}
