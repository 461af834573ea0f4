//! Certificate records, the audit trail and the rotation lease on PostgreSQL.

use std::time::Duration;

use time::OffsetDateTime;

use super::rows::{self, get};
use super::{PgDb, db_err};
use crate::CaError;
use crate::audit::AuditEvent;
use crate::store::records::{CertificateRecord, cert_columns};
use crate::store::unix;

impl PgDb {
    pub(in crate::store) async fn abandon_stale_intents(&self, older_than: Duration) -> Result<u64, CaError> {
        let cutoff = unix(OffsetDateTime::now_utc()).saturating_sub(crate::units::secs(older_than));
        let r = sqlx::query(
            "UPDATE certificates SET status = 'abandoned' WHERE status = 'intent' AND created_at <= $1 \
             AND NOT EXISTS (SELECT 1 FROM issued_certificates i WHERE i.serial = certificates.serial)",
        )
        .bind(cutoff)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(r.rows_affected())
    }

    pub(in crate::store) async fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>, CaError> {
        let row = sqlx::query(concat!("SELECT ", cert_columns!(), " WHERE c.serial = $1"))
            .bind(serial)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.as_ref().map(rows::certificate).transpose()
    }

    pub(in crate::store) async fn certificates(&self, limit: i64) -> Result<Vec<CertificateRecord>, CaError> {
        let rows = sqlx::query(concat!("SELECT ", cert_columns!(), " ORDER BY c.created_at DESC, c.serial LIMIT $1"))
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(rows::certificate).collect()
    }

    pub(in crate::store) async fn certificate_counts(&self) -> Result<(i64, i64, i64), CaError> {
        let rows = sqlx::query(
            "SELECT CASE WHEN i.serial IS NULL THEN c.status ELSE 'issued' END AS st, COUNT(*) AS n \
             FROM certificates c LEFT JOIN issued_certificates i ON i.serial = c.serial GROUP BY 1",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        let mut c = (0, 0, 0);
        for r in rows {
            let status: String = get(&r, "st")?;
            let n: i64 = get(&r, "n")?;
            match status.as_str() {
                "intent" => c.0 = n,
                "issued" => c.1 = n,
                _ => c.2 = n,
            }
        }
        Ok(c)
    }

    pub(in crate::store) async fn audit_events(&self, limit: i64) -> Result<Vec<AuditEvent>, CaError> {
        let rows = sqlx::query(crate::store::AUDIT_EVENTS).bind(limit).fetch_all(&self.pool).await.map_err(db_err)?;
        rows.iter().map(rows::audit_event).collect()
    }

    pub(in crate::store) async fn last_signed_not_after(&self, issuer_id: &str) -> Result<Option<i64>, CaError> {
        let r = sqlx::query("SELECT MAX(not_after) AS m FROM certificates WHERE issuer_id = $1")
            .bind(issuer_id)
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
        get::<Option<i64>>(&r, "m")
    }

    pub(in crate::store) async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, CaError> {
        let r = sqlx::query(crate::store::ACQUIRE_LEASE)
            .bind(name)
            .bind(holder)
            .bind(until)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }
}
