//! Emergency rotation records on PostgreSQL.

use super::rows::{self, get};
use super::{PgDb, db_err, insert_audit};
use crate::store::emergency::*;
use crate::{AuditEvent, CaError};

impl PgDb {
    pub(in crate::store) async fn begin_emergency(
        &self,
        id: &str,
        issuer_id: &str,
        (start, end): (i64, i64),
        enforce: Option<(i64, i64)>,
        now: i64,
        audit: impl Fn(i64) -> AuditEvent + Send + Sync + 'static,
    ) -> Result<i64, CaError> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let r = sqlx::query(ASK_RENEWAL)
            .bind(start)
            .bind(end)
            .bind(issuer_id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let affected = i64::try_from(r.rows_affected()).unwrap_or(i64::MAX);
        sqlx::query(INSERT_EMERGENCY)
            .bind(id)
            .bind(issuer_id)
            .bind(now)
            .bind(affected)
            .bind(enforce.map(|e| e.0))
            .bind(enforce.map(|e| e.1))
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        insert_audit(&mut tx, &audit(affected)).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(affected)
    }

    pub(in crate::store) async fn replacement_window(
        &self,
        serial: &str,
    ) -> Result<Option<(i64, Option<i64>)>, CaError> {
        let r = sqlx::query(REPLACEMENT_WINDOW).bind(serial).fetch_optional(&self.pool).await.map_err(db_err)?;
        let Some(r) = r else { return Ok(None) };
        let start: Option<i64> = get(&r, "replace_after")?;
        let end: Option<i64> = get(&r, "replace_window_end")?;
        Ok(start.map(|s| (s, end)))
    }

    pub(in crate::store) async fn emergency_outstanding(&self, issuer_id: &str, now: i64) -> Result<i64, CaError> {
        let r = sqlx::query(OUTSTANDING).bind(issuer_id).bind(now).fetch_one(&self.pool).await.map_err(db_err)?;
        get(&r, "n")
    }

    pub(in crate::store) async fn emergencies(&self) -> Result<Vec<Emergency>, CaError> {
        let rows = sqlx::query(EMERGENCIES).fetch_all(&self.pool).await.map_err(db_err)?;
        rows.iter().map(rows::emergency).collect()
    }

    pub(in crate::store) async fn complete_emergency(&self, id: &str, at: i64) -> Result<(), CaError> {
        sqlx::query(COMPLETE).bind(at).bind(id).execute(&self.pool).await.map_err(db_err)?;
        Ok(())
    }

    pub(in crate::store) async fn valid_certificates_of(&self, issuer_id: &str, now: i64) -> Result<i64, CaError> {
        let r = sqlx::query(VALID_OF_ISSUER).bind(issuer_id).bind(now).fetch_one(&self.pool).await.map_err(db_err)?;
        get(&r, "n")
    }
}
