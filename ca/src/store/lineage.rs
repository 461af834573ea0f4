//! Revocation along the renewal lineage. A certificate renewed over mTLS names its predecessor
//! (`renewed_from`), so whoever held a certificate may also hold everything renewed from it:
//! revoking a certificate revokes every successor, transitively (A -> B -> C: revoking A revokes B
//! and C), with the same reason, in one transaction with the audit events. Every revocation through
//! the store ([`Store::revoke`]: `lanyard-ca revoke`, ACME revokeCert) goes this way.

use time::OffsetDateTime;

use super::Store;
use crate::CaError;
use crate::audit::{AuditEvent, Outcome};

/// What a revocation changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The certificate asked for was revoked now (false: it already was).
    pub revoked: bool,
    /// Certificates renewed from it (directly or transitively) revoked now, serials in the order
    /// found. Successors that were already revoked are not listed.
    pub successors: Vec<String>,
}

/// Revokes the unrevoked successors of `$3` (transitively) and returns their serials. A recursive
/// common table expression, which SQLite and PostgreSQL both run.
pub(super) const REVOKE_SUCCESSORS: &str = "UPDATE certificates SET revoked_at = $1, revocation_reason = $2 \
     WHERE revoked_at IS NULL AND serial IN ( \
       WITH RECURSIVE lineage (serial) AS ( \
         SELECT serial FROM certificates WHERE renewed_from = $3 \
         UNION SELECT c.serial FROM certificates c JOIN lineage l ON c.renewed_from = l.serial) \
       SELECT serial FROM lineage) \
     RETURNING serial";

/// Longest lineage walk repeated before giving up (see [`Store::revoke`]); each pass that finds
/// nothing new ends it, and only a renewal recorded concurrently, between two passes, makes
/// another pass find something.
pub(super) const MAX_PASSES: usize = 16;

/// Revokes one certificate unless it already is (binds: at, reason, serial).
pub(super) const REVOKE_ONE: &str =
    "UPDATE certificates SET revoked_at = $1, revocation_reason = $2 WHERE serial = $3 AND revoked_at IS NULL";

/// The `certificate.revoke` events of a revocation: one for `serial` (refused when it already
/// was revoked) and one for each successor revoked with it.
pub(super) fn revocation_events(
    serial: &str,
    reason: i32,
    at: OffsetDateTime,
    actor: &str,
    r: &Revocation,
) -> Vec<AuditEvent> {
    let mut events = vec![AuditEvent {
        at,
        actor: actor.to_owned(),
        action: "certificate.revoke".into(),
        target: serial.to_owned(),
        outcome: if r.revoked { Outcome::Success } else { Outcome::Refused },
        detail: if r.revoked {
            format!("reason={reason}; {} successors revoked with it", r.successors.len())
        } else {
            format!("already revoked; {} successors revoked now", r.successors.len())
        },
    }];
    events.extend(r.successors.iter().map(|s| AuditEvent {
        at,
        actor: actor.to_owned(),
        action: "certificate.revoke".into(),
        target: s.clone(),
        outcome: Outcome::Success,
        detail: format!("reason={reason}; renewed (directly or transitively) from {serial}"),
    }));
    events
}

impl Store {
    /// Revokes `serial` with an RFC 5280 reason code and every certificate renewed from it,
    /// transitively, with one `certificate.revoke` audit event per certificate (actor `actor`), in
    /// one transaction. A successor is revoked even when `serial` already was (its lineage then
    /// predates this rule, or a revocation raced a renewal).
    ///
    /// Concurrent renewals cannot slip a successor past it: recording a renewal is guarded by its
    /// predecessor being unrevoked. With PostgreSQL (read committed) the walk is repeated until it
    /// finds nothing new: a renewal committed after one pass's snapshot is found by the next, and
    /// one not committed yet waits for this transaction's row locks and then fails its guard. With
    /// SQLite the transaction holds the write lock throughout.
    pub async fn revoke(
        &self,
        serial: &str,
        reason: i32,
        at: OffsetDateTime,
        actor: &str,
    ) -> Result<Revocation, CaError> {
        on_backend!(self, revoke(serial, reason, at, actor))
    }

    /// [`Store::revoke`] by the CA itself (actor `ca`); true if `serial` was revoked now.
    pub async fn revoke_certificate(&self, serial: &str, reason: i32, at: OffsetDateTime) -> Result<bool, CaError> {
        Ok(self.revoke(serial, reason, at, "ca").await?.revoked)
    }
}
