//! Certificate records, the audit trail and the rotation lease on PostgreSQL.

use std::time::Duration;

use time::OffsetDateTime;

use super::rows::{self, get};
use super::{PgDb, db_err};
use crate::CaError;
use crate::audit::AuditEvent;
use crate::store::audit_log::{self, AuditFilter, AuditRecord, QueryBinds, Verifier, VerifyReport};
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

impl PgDb {
    pub(in crate::store) async fn audit_query(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, CaError> {
        let b = QueryBinds::of(filter);
        let [p1, p2, p3] = &b.patterns;
        let rows = sqlx::query(audit_log::AUDIT_QUERY)
            .bind(b.since)
            .bind(b.until)
            .bind(b.actor.as_str())
            .bind(b.action.as_str())
            .bind(b.rotation.as_str())
            .bind(p1.as_str())
            .bind(p2.as_str())
            .bind(p3.as_str())
            .bind(b.after_seq)
            .bind(b.limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        let mut out = rows.iter().map(rows::audit_record).collect::<Result<Vec<_>, _>>()?;
        out.reverse();
        Ok(out)
    }

    /// (chained events, events outside the chain).
    pub(in crate::store) async fn audit_counts(&self) -> Result<(i64, i64), CaError> {
        let row = sqlx::query(audit_log::COUNTS).fetch_one(&self.pool).await.map_err(db_err)?;
        Ok((get(&row, "chained")?, get(&row, "unchained")?))
    }

    /// One repeatable-read transaction: the head and every page of rows from one snapshot, while
    /// the replicas go on writing.
    pub(in crate::store) async fn audit_verify(&self) -> Result<VerifyReport, CaError> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let n: i64 = get(&sqlx::query(audit_log::UNCHAINED).fetch_one(&mut *tx).await.map_err(db_err)?, "n")?;
        let unchained = u64::try_from(n).unwrap_or(0);
        let Some(h) = sqlx::query(audit_log::CHAIN_HEAD).fetch_optional(&mut *tx).await.map_err(db_err)? else {
            return Ok(audit_log::headless(unchained));
        };
        let mut v = Verifier::new(audit_log::Head { seq: get(&h, "seq")?, digest: get(&h, "digest")? });
        while v.wants_more() && v.last_seq() < v.head_seq() {
            let page = sqlx::query(audit_log::CHAIN_PAGE)
                .bind(v.last_seq())
                .bind(v.head_seq())
                .bind(audit_log::PAGE)
                .fetch_all(&mut *tx)
                .await
                .map_err(db_err)?;
            if page.is_empty() {
                break;
            }
            for r in &page {
                v.row(&rows::audit_record(r)?);
            }
        }
        let r = sqlx::query(audit_log::BEYOND_HEAD).bind(v.head_seq()).fetch_one(&mut *tx).await.map_err(db_err)?;
        let beyond: Option<i64> = get(&r, "s")?;
        let slipped = match sqlx::query(audit_log::SLIPPED_IN).fetch_optional(&mut *tx).await.map_err(db_err)? {
            Some(r) => Some(get::<String>(&r, "id")?),
            None => None,
        };
        tx.rollback().await.map_err(db_err)?;
        Ok(v.finish(unchained, beyond, slipped))
    }
}
