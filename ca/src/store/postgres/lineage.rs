//! Revocation along the renewal lineage on PostgreSQL. Under read committed isolation the walk
//! is repeated until it finds nothing new: a renewal committed after one pass's snapshot is found
//! by the next, and one not committed yet waits for this transaction's row locks and then fails
//! its guard.

use time::OffsetDateTime;

use super::rows::get;
use super::{PgDb, db_err, insert_audit};
use crate::CaError;
use crate::store::lineage::{MAX_PASSES, REVOKE_ONE, REVOKE_SUCCESSORS, Revocation, revocation_events};
use crate::store::unix;

impl PgDb {
    pub(in crate::store) async fn revoke(
        &self,
        serial: &str,
        reason: i32,
        at: OffsetDateTime,
        actor: &str,
    ) -> Result<Revocation, CaError> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let revoked = sqlx::query(REVOKE_ONE)
            .bind(unix(at))
            .bind(reason)
            .bind(serial)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected()
            == 1;
        let mut successors = Vec::new();
        for pass in 0.. {
            if pass == MAX_PASSES {
                return Err(CaError::Store(format!(
                    "the renewal lineage of {serial} kept growing during its revocation; nothing was revoked"
                )));
            }
            let rows = sqlx::query(REVOKE_SUCCESSORS)
                .bind(unix(at))
                .bind(reason)
                .bind(serial)
                .fetch_all(&mut *tx)
                .await
                .map_err(db_err)?;
            if rows.is_empty() {
                break;
            }
            for r in rows {
                successors.push(get::<String>(&r, "serial")?);
            }
        }
        let revocation = Revocation { revoked, successors };
        for ev in &revocation_events(serial, reason, at, actor, &revocation) {
            insert_audit(&mut tx, ev).await?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(revocation)
    }
}
