//! Emergency rotation records: which certificates must be replaced, in which renewal window, and
//! how far the fleet has got.

use super::Store;
use crate::{AuditEvent, CaError};

/// Asks for renewal of an issuer's live certificates (binds: window start, end, issuer, now).
pub(super) const ASK_RENEWAL: &str = "UPDATE certificates SET replace_after = $1, replace_window_end = $2 \
     WHERE issuer_id = $3 AND not_after > $4 AND revoked_at IS NULL AND status = 'intent'";
/// Records an emergency (binds: id, issuer, started, affected, enforce_at, settle_secs).
pub(super) const INSERT_EMERGENCY: &str = "INSERT INTO emergencies (id, issuer_id, started_at, affected, \
     enforce_at, settle_secs) VALUES ($1, $2, $3, $4, $5, $6)";
/// The renewal window asked of a certificate.
pub(super) const REPLACEMENT_WINDOW: &str =
    "SELECT replace_after, replace_window_end FROM certificates WHERE serial = $1";
/// Workload certificates of an issuer asked to renew, still valid, not yet renewed (binds: issuer,
/// now).
pub(super) const OUTSTANDING: &str = "SELECT COUNT(*) AS n FROM certificates c WHERE c.issuer_id = $1 \
     AND c.replace_after IS NOT NULL AND c.not_after > $2 AND c.revoked_at IS NULL AND c.profile = 'workload' \
     AND NOT EXISTS (SELECT 1 FROM certificates n WHERE n.requester = 'renewal:' || c.serial)";
/// Every emergency, newest first.
pub(super) const EMERGENCIES: &str = "SELECT id, issuer_id, started_at, affected, completed_at, enforce_at, \
     settle_secs FROM emergencies ORDER BY started_at DESC";
/// Marks an emergency complete (binds: at, id), once.
pub(super) const COMPLETE: &str = "UPDATE emergencies SET completed_at = $1 WHERE id = $2 AND completed_at IS NULL";
/// Unexpired, unrevoked certificates of an issuer (binds: issuer, now).
pub(super) const VALID_OF_ISSUER: &str = "SELECT COUNT(*) AS n FROM certificates WHERE issuer_id = $1 \
     AND not_after > $2 AND revoked_at IS NULL AND status = 'intent'";

/// One emergency rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emergency {
    /// Rotation id.
    pub id: String,
    /// The revoked intermediate.
    pub issuer_id: String,
    /// When the command ran (Unix seconds).
    pub started_at: i64,
    /// Unexpired certificates it had signed.
    pub affected: i64,
    /// When the last of them was renewed (or had expired), if that happened yet.
    pub completed_at: Option<i64>,
    /// When the intermediate's revocation takes effect for relying parties (the root CRL listing
    /// it is published); None for one revoked at once.
    pub enforce_at: Option<i64>,
    /// Seconds after the last affected renewal at which the revocation may take effect, earlier
    /// than `enforce_at` (fleet-gated enforcement).
    pub settle_secs: Option<i64>,
}

impl Emergency {
    /// Whether relying parties are told of the revocation by `now`.
    pub fn enforced(&self, now: i64) -> bool {
        self.enforce_at.is_none_or(|t| t <= now)
    }
}

impl Store {
    /// Asks every holder of an unexpired, unrevoked certificate signed by `issuer_id` to renew
    /// within [`start`, `end`] (RFC 9773 renewalInfo) and records the emergency, whose revocation
    /// takes effect at `enforce` = (time, settle seconds after the last renewal if earlier); None:
    /// at once. `audit` makes the event (given the number of affected certificates), which
    /// commits with the rest. Returns how many certificates are affected.
    pub async fn begin_emergency(
        &self,
        id: &str,
        issuer_id: &str,
        (start, end): (i64, i64),
        enforce: Option<(i64, i64)>,
        now: i64,
        audit: impl Fn(i64) -> AuditEvent + Send + Sync + 'static,
    ) -> Result<i64, CaError> {
        on_backend!(self, begin_emergency(id, issuer_id, (start, end), enforce, now, audit))
    }

    /// The renewal window the CA asked for, if any: (start, end).
    pub async fn replacement_window(&self, serial: &str) -> Result<Option<(i64, Option<i64>)>, CaError> {
        on_backend!(self, replacement_window(serial))
    }

    /// Workload certificates of `issuer_id` that the CA asked to replace, still valid, and not yet
    /// renewed (a renewal records `renewal:<serial>` as its requester). ACME clients follow
    /// renewalInfo on their own schedule and are not counted.
    pub async fn emergency_outstanding(&self, issuer_id: &str, now: i64) -> Result<i64, CaError> {
        on_backend!(self, emergency_outstanding(issuer_id, now))
    }

    /// Every emergency rotation, newest first.
    pub async fn emergencies(&self) -> Result<Vec<Emergency>, CaError> {
        on_backend!(self, emergencies())
    }

    /// Marks an emergency complete at `at` (once).
    pub async fn complete_emergency(&self, id: &str, at: i64) -> Result<(), CaError> {
        on_backend!(self, complete_emergency(id, at))
    }

    /// Unexpired, unrevoked certificates signed by `issuer_id`.
    pub async fn valid_certificates_of(&self, issuer_id: &str, now: i64) -> Result<i64, CaError> {
        on_backend!(self, valid_certificates_of(issuer_id, now))
    }
}
