//! Emergency rotation records: which certificates must be replaced, in which renewal window, and
//! how far the fleet has got.

use sqlx::Row;

use super::writer::insert_audit;
use super::{Store, db_err};
use crate::{AuditEvent, CaError};

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
        audit: impl FnOnce(i64) -> AuditEvent,
    ) -> Result<i64, CaError> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let r = sqlx::query(
            "UPDATE certificates SET replace_after = $1, replace_window_end = $2 \
             WHERE issuer_id = $3 AND not_after > $4 AND revoked_at IS NULL AND status = 'intent'",
        )
        .bind(start)
        .bind(end)
        .bind(issuer_id)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        let affected = i64::try_from(r.rows_affected()).unwrap_or(i64::MAX);
        sqlx::query(
            "INSERT INTO emergencies (id, issuer_id, started_at, affected, enforce_at, settle_secs) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(issuer_id)
        .bind(now)
        .bind(affected)
        .bind(enforce.map(|e| e.0))
        .bind(enforce.map(|e| e.1))
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        insert_audit(self.backend, &mut tx, &audit(affected)).await.map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(affected)
    }

    /// The renewal window the CA asked for, if any: (start, end).
    pub async fn replacement_window(&self, serial: &str) -> Result<Option<(i64, Option<i64>)>, CaError> {
        let r = sqlx::query("SELECT replace_after, replace_window_end FROM certificates WHERE serial = $1")
            .bind(serial)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        let Some(r) = r else { return Ok(None) };
        let start: Option<i64> = r.try_get("replace_after").map_err(db_err)?;
        let end: Option<i64> = r.try_get("replace_window_end").map_err(db_err)?;
        Ok(start.map(|s| (s, end)))
    }

    /// Workload certificates of `issuer_id` that the CA asked to replace, still valid, and not yet
    /// renewed (a renewal records `renewal:<serial>` as its requester). ACME clients follow
    /// renewalInfo on their own schedule and are not counted.
    pub async fn emergency_outstanding(&self, issuer_id: &str, now: i64) -> Result<i64, CaError> {
        let r = sqlx::query(
            "SELECT COUNT(*) AS n FROM certificates c WHERE c.issuer_id = $1 AND c.replace_after IS NOT NULL \
             AND c.not_after > $2 AND c.revoked_at IS NULL AND c.profile = 'workload' \
             AND NOT EXISTS (SELECT 1 FROM certificates n WHERE n.requester = 'renewal:' || c.serial)",
        )
        .bind(issuer_id)
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(db_err)?;
        r.try_get::<i64, _>("n").map_err(db_err)
    }

    /// Every emergency rotation, newest first.
    pub async fn emergencies(&self) -> Result<Vec<Emergency>, CaError> {
        let rows = sqlx::query(
            "SELECT id, issuer_id, started_at, affected, completed_at, enforce_at, settle_secs FROM emergencies \
             ORDER BY started_at DESC",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok(Emergency {
                    id: r.try_get("id").map_err(db_err)?,
                    issuer_id: r.try_get("issuer_id").map_err(db_err)?,
                    started_at: r.try_get("started_at").map_err(db_err)?,
                    affected: r.try_get("affected").map_err(db_err)?,
                    completed_at: r.try_get("completed_at").map_err(db_err)?,
                    enforce_at: r.try_get("enforce_at").map_err(db_err)?,
                    settle_secs: r.try_get("settle_secs").map_err(db_err)?,
                })
            })
            .collect()
    }

    /// Marks an emergency complete at `at` (once).
    pub async fn complete_emergency(&self, id: &str, at: i64) -> Result<(), CaError> {
        sqlx::query("UPDATE emergencies SET completed_at = $1 WHERE id = $2 AND completed_at IS NULL")
            .bind(at)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }
}

impl Store {
    /// Unexpired, unrevoked certificates signed by `issuer_id`.
    pub async fn valid_certificates_of(&self, issuer_id: &str, now: i64) -> Result<i64, CaError> {
        let r = sqlx::query(
            "SELECT COUNT(*) AS n FROM certificates WHERE issuer_id = $1 AND not_after > $2 AND revoked_at IS NULL \
             AND status = 'intent'",
        )
        .bind(issuer_id)
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(db_err)?;
        r.try_get::<i64, _>("n").map_err(db_err)
    }
}
