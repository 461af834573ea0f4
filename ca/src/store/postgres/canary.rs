//! Canary records on PostgreSQL.

use super::rows::{self, get};
use super::{PgDb, db_err, insert_audit};
use crate::CaError;
use crate::store::MOVE_ISSUER;
use crate::store::canary::*;
use crate::store::emergency::ASK_RENEWAL;

impl PgDb {
    pub(in crate::store) async fn canaries(&self) -> Result<Vec<Canary>, CaError> {
        let rows = sqlx::query(CANARIES).fetch_all(&self.pool).await.map_err(db_err)?;
        rows.iter().map(rows::canary).collect()
    }

    pub(in crate::store) async fn live_workloads_of(
        &self,
        issuer_id: &str,
        now: i64,
    ) -> Result<Vec<(String, String)>, CaError> {
        let rows = sqlx::query(LIVE_WORKLOADS).bind(issuer_id).bind(now).fetch_all(&self.pool).await.map_err(db_err)?;
        rows.iter().map(|r| Ok((get(r, "serial")?, get(r, "sans")?))).collect()
    }

    pub(in crate::store) async fn change_journal(&self, ch: JournalChange) -> Result<Option<i64>, CaError> {
        // Dropping the transaction on a failed guard rolls back whatever ran before it.
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        if let Some(k) = &ch.start {
            // Replicas starting canaries at once take turns on the journal's rows.
            sqlx::query("LOCK TABLE canaries IN EXCLUSIVE MODE").execute(&mut *tx).await.map_err(db_err)?;
            let n: i64 = get(&sqlx::query(SOAKING).fetch_one(&mut *tx).await.map_err(db_err)?, "n")?;
            if n > 0 && k.state == CanaryState::Soaking {
                return Ok(None);
            }
            sqlx::query(INSERT_CANARY)
                .bind(&k.rotation)
                .bind(&k.successor)
                .bind(&k.previous)
                .bind(&k.prefix)
                .bind(k.fraction_ppm)
                .bind(k.started_at)
                .bind(k.soak_until)
                .bind(k.state.as_str())
                .bind(k.decided_at)
                .bind(&k.reason)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        if let Some((rotation, state, reason)) = &ch.decide {
            let r = sqlx::query(DECIDE_CANARY)
                .bind(state.as_str())
                .bind(ch.at)
                .bind(reason)
                .bind(rotation)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            if r.rows_affected() != 1 {
                return Ok(None);
            }
        }
        for (id, state) in &ch.guards {
            let r = sqlx::query(GUARD_ISSUER).bind(id).bind(state.as_str()).execute(&mut *tx).await.map_err(db_err)?;
            if r.rows_affected() != 1 {
                return Ok(None);
            }
        }
        for (id, from, to) in &ch.moves {
            let r = sqlx::query(MOVE_ISSUER)
                .bind(to.as_str())
                .bind(ch.at)
                .bind(id)
                .bind(from.as_str())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            if r.rows_affected() != 1 {
                return Ok(None);
            }
        }
        let mut affected = 0i64;
        for serial in &ch.ask_serials {
            let r = sqlx::query(ASK_ONE)
                .bind(ch.window.0)
                .bind(ch.window.1)
                .bind(serial)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            affected += i64::try_from(r.rows_affected()).unwrap_or(0);
        }
        if let Some(issuer) = &ch.ask_issuer {
            let r = sqlx::query(ASK_RENEWAL)
                .bind(ch.window.0)
                .bind(ch.window.1)
                .bind(issuer)
                .bind(ch.at)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            affected += i64::try_from(r.rows_affected()).unwrap_or(i64::MAX);
        }
        for ev in &ch.audit {
            insert_audit(&mut tx, ev).await?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(Some(affected))
    }
}
