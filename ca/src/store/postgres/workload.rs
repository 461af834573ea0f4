//! Workload enrollment state on PostgreSQL.

use super::rows::{self, get};
use super::{PgDb, db_err, insert_audit};
use crate::store::workload::{INSERT_JOIN_TOKEN, JOIN_TOKEN_BY_DIGEST, JoinToken, SPEND_JOIN_TOKEN, StoredJoinToken};
use crate::{AuditEvent, CaError};

impl PgDb {
    pub(in crate::store) async fn create_join_token(
        &self,
        digest: &str,
        token: &JoinToken,
        now: i64,
        audit: &AuditEvent,
    ) -> Result<(), CaError> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        sqlx::query(INSERT_JOIN_TOKEN)
            .bind(digest)
            .bind(token.spiffe_id.to_string())
            .bind(i64::from(token.is_prefix))
            .bind(token.expires_at)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(db_err)
    }

    pub(in crate::store) async fn spend_join_token(
        &self,
        digest: &str,
        spiffe_id: &str,
        now: i64,
        audit: &AuditEvent,
    ) -> Result<bool, CaError> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let done = sqlx::query(SPEND_JOIN_TOKEN)
            .bind(now)
            .bind(spiffe_id)
            .bind(digest)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }

    pub(in crate::store) async fn join_token(&self, digest: &str) -> Result<Option<StoredJoinToken>, CaError> {
        let Some(r) =
            sqlx::query(JOIN_TOKEN_BY_DIGEST).bind(digest).fetch_optional(&self.pool).await.map_err(db_err)?
        else {
            return Ok(None);
        };
        rows::join_token(&r).map(Some)
    }

    pub(in crate::store) async fn bundle_sequence(&self, digest: &str) -> Result<u64, CaError> {
        for _ in 0..3 {
            let row = sqlx::query("SELECT sequence, digest FROM bundle_state WHERE id = 1")
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err)?;
            match row {
                None => {
                    let r = sqlx::query(
                        "INSERT INTO bundle_state (id, sequence, digest) VALUES (1, 1, $1) ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(digest)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                    if r.rows_affected() == 1 {
                        return Ok(1);
                    }
                }
                Some(r) => {
                    let seq: i64 = get(&r, "sequence")?;
                    let current: String = get(&r, "digest")?;
                    if current == digest {
                        return Ok(u64::try_from(seq).unwrap_or(0));
                    }
                    let up = sqlx::query(
                        "UPDATE bundle_state SET sequence = sequence + 1, digest = $1 WHERE id = 1 AND sequence = $2",
                    )
                    .bind(digest)
                    .bind(seq)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                    if up.rows_affected() == 1 {
                        return Ok(u64::try_from(seq + 1).unwrap_or(0));
                    }
                }
            }
        }
        Err(CaError::Store("the bundle sequence kept changing under us".into()))
    }
}
