//! The issuer journal on PostgreSQL. Each transition is one transaction whose guarded UPDATEs
//! take the rows' locks, so two replicas moving the journal at once cannot both succeed.

use time::OffsetDateTime;

use super::{PgDb, db_err, insert_audit, rows};
use crate::CaError;
use crate::audit::AuditEvent;
use crate::issuers::{IssuerRecord, IssuerState};
use crate::store::{APPEND_CROSS_CERT, INSERT_ISSUER, ISSUERS, MOVE_ISSUER, unix};

impl PgDb {
    pub(in crate::store) async fn insert_issuers_with_cross(
        &self,
        issuers: &[&IssuerRecord],
        cross: &[(&str, &str)],
        audit: &[AuditEvent],
    ) -> Result<(), CaError> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        for r in issuers {
            sqlx::query(INSERT_ISSUER)
                .bind(&r.id)
                .bind(r.kind.as_str())
                .bind(r.state.as_str())
                .bind(r.parent_id.clone())
                .bind(&r.subject)
                .bind(&r.cert_pem)
                .bind(r.key_pem_enc.clone())
                .bind(&r.ski)
                .bind(&r.fingerprint)
                .bind(unix(r.not_before))
                .bind(unix(r.not_after))
                .bind(unix(r.created_at))
                .bind(unix(r.state_changed_at))
                .bind(r.cross_cert_pem.clone())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        for (id, pem) in cross {
            let r = sqlx::query(APPEND_CROSS_CERT).bind(*pem).bind(*id).execute(&mut *tx).await.map_err(db_err)?;
            if r.rows_affected() != 1 {
                return Err(CaError::Config(format!("issuer {id} is not in the journal")));
            }
        }
        for ev in audit {
            insert_audit(&mut tx, ev).await?;
        }
        tx.commit().await.map_err(db_err)
    }

    pub(in crate::store) async fn issuers(&self) -> Result<Vec<IssuerRecord>, CaError> {
        let rows = sqlx::query(ISSUERS).fetch_all(&self.pool).await.map_err(db_err)?;
        rows.iter().map(rows::issuer).collect()
    }

    pub(in crate::store) async fn move_issuers(
        &self,
        moves: &[(&str, IssuerState, IssuerState)],
        at: OffsetDateTime,
        audit: &AuditEvent,
    ) -> Result<bool, CaError> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        for (id, from, to) in moves {
            let r = sqlx::query(MOVE_ISSUER)
                .bind(to.as_str())
                .bind(unix(at))
                .bind(*id)
                .bind(from.as_str())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            if r.rows_affected() != 1 {
                // Dropping the transaction rolls back the moves made so far.
                return Ok(false);
            }
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }
}
