//! ACME state on PostgreSQL: every change one transaction; guarded statements re-check their
//! guards on the committed row (read committed), so replicas racing on one order or challenge
//! cannot both win.

use super::rows::{self, get};
use super::{PgDb, db_err, insert_audit};
use crate::store::acme::*;
use crate::store::workload::SPEND_JOIN_TOKEN;
use crate::{AuditEvent, CaError};
use sqlx::Row;

impl PgDb {
    pub(in crate::store) async fn acme_secret(&self, name: &str, fresh: String) -> Result<String, CaError> {
        sqlx::query(INSERT_SECRET).bind(name).bind(fresh).execute(&self.pool).await.map_err(db_err)?;
        let row = sqlx::query(SECRET).bind(name).fetch_one(&self.pool).await.map_err(db_err)?;
        get(&row, "value")
    }

    pub(in crate::store) async fn acme_create_account(
        &self,
        a: &AcmeAccount,
        audit: &AuditEvent,
    ) -> Result<(AcmeAccount, bool), CaError> {
        let contact = serde_json::to_string(&a.contact).map_err(|e| CaError::Store(e.to_string()))?;
        let suffixes = serde_json::to_string(&a.allowed_suffixes).map_err(|e| CaError::Store(e.to_string()))?;
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let r = sqlx::query(INSERT_ACCOUNT)
            .bind(&a.id)
            .bind(&a.thumbprint)
            .bind(&a.jwk)
            .bind(&a.status)
            .bind(contact)
            .bind(a.eab_kid.clone())
            .bind(a.created_at)
            .bind(suffixes)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        // An EAB key binds exactly one account: claim it in the same transaction.
        if let (Some(kid), 1) = (&a.eab_kid, r.rows_affected()) {
            let claimed = sqlx::query(CLAIM_EAB_KEY).bind(&a.id).bind(kid).execute(&mut *tx).await.map_err(db_err)?;
            claim_eab_key(claimed.rows_affected(), kid)?;
        }
        if r.rows_affected() == 1 {
            insert_audit(&mut tx, audit).await?;
        }
        tx.commit().await.map_err(db_err)?;
        let existing = self
            .acme_account_by_thumbprint(&a.thumbprint)
            .await?
            .ok_or_else(|| CaError::Store("account vanished".into()))?;
        Ok((existing, r.rows_affected() == 1))
    }

    pub(in crate::store) async fn acme_account(&self, id: &str) -> Result<Option<AcmeAccount>, CaError> {
        let row = sqlx::query(ACCOUNT_BY_ID).bind(id).fetch_optional(&self.pool).await.map_err(db_err)?;
        row.as_ref().map(rows::account).transpose()
    }

    pub(in crate::store) async fn acme_account_by_thumbprint(
        &self,
        thumbprint: &str,
    ) -> Result<Option<AcmeAccount>, CaError> {
        let row =
            sqlx::query(ACCOUNT_BY_THUMBPRINT).bind(thumbprint).fetch_optional(&self.pool).await.map_err(db_err)?;
        row.as_ref().map(rows::account).transpose()
    }

    pub(in crate::store) async fn acme_update_account(
        &self,
        id: &str,
        contact: &[String],
        status: &str,
        audit: &AuditEvent,
    ) -> Result<bool, CaError> {
        let contact = serde_json::to_string(contact).map_err(|e| CaError::Store(e.to_string()))?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let r = sqlx::query(UPDATE_ACCOUNT)
            .bind(contact)
            .bind(status)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        if r.rows_affected() != 1 {
            return Ok(false);
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }

    pub(in crate::store) async fn acme_create_order(
        &self,
        order: &AcmeOrder,
        authzs: &[AcmeAuthz],
        challenges: &[AcmeChallenge],
    ) -> Result<(), CaError> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        sqlx::query(INSERT_ORDER)
            .bind(&order.id)
            .bind(&order.account_id)
            .bind(&order.status)
            .bind(&order.identifiers)
            .bind(order.expires_at)
            .bind(order.created_at)
            .bind(order.replaces.clone())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        for a in authzs {
            sqlx::query(INSERT_AUTHZ)
                .bind(&a.id)
                .bind(&a.order_id)
                .bind(&a.account_id)
                .bind(&a.id_type)
                .bind(&a.id_value)
                .bind(i32::from(a.wildcard))
                .bind(&a.status)
                .bind(a.expires_at)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        for c in challenges {
            sqlx::query(INSERT_CHALLENGE)
                .bind(&c.id)
                .bind(&c.authz_id)
                .bind(&c.kind)
                .bind(&c.token)
                .bind(&c.status)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }

    pub(in crate::store) async fn acme_order(&self, id: &str) -> Result<Option<AcmeOrder>, CaError> {
        let row = sqlx::query(ORDER_BY_ID).bind(id).fetch_optional(&self.pool).await.map_err(db_err)?;
        row.as_ref().map(rows::order).transpose()
    }

    pub(in crate::store) async fn acme_order_with_authzs(
        &self,
        id: &str,
    ) -> Result<Option<(AcmeOrder, Vec<AcmeAuthz>)>, CaError> {
        let Some(o) = self.acme_order(id).await? else { return Ok(None) };
        let authzs = self.acme_authzs_for_order(&o.id).await?;
        Ok(Some((o, authzs)))
    }

    pub(in crate::store) async fn acme_order_ids(&self, account_id: &str) -> Result<Vec<String>, CaError> {
        let rows = sqlx::query(ORDER_IDS).bind(account_id).fetch_all(&self.pool).await.map_err(db_err)?;
        rows.iter().map(|r| get(r, "id")).collect()
    }

    pub(in crate::store) async fn acme_order_for_cert(&self, serial: &str) -> Result<Option<AcmeOrder>, CaError> {
        let row = sqlx::query(ORDER_BY_CERT).bind(serial).fetch_optional(&self.pool).await.map_err(db_err)?;
        row.as_ref().map(rows::order).transpose()
    }

    pub(in crate::store) async fn acme_authzs_for_order(&self, order_id: &str) -> Result<Vec<AcmeAuthz>, CaError> {
        let rows = sqlx::query(AUTHZS_OF_ORDER).bind(order_id).fetch_all(&self.pool).await.map_err(db_err)?;
        rows.iter().map(rows::authz).collect()
    }

    pub(in crate::store) async fn acme_authz(
        &self,
        id: &str,
    ) -> Result<Option<(AcmeAuthz, Vec<AcmeChallenge>)>, CaError> {
        let Some(row) = sqlx::query(AUTHZ_BY_ID).bind(id).fetch_optional(&self.pool).await.map_err(db_err)? else {
            return Ok(None);
        };
        let authz = rows::authz(&row)?;
        let rows = sqlx::query(CHALLENGES_OF_AUTHZ).bind(id).fetch_all(&self.pool).await.map_err(db_err)?;
        Ok(Some((authz, rows.iter().map(rows::challenge).collect::<Result<_, _>>()?)))
    }

    pub(in crate::store) async fn acme_challenge(
        &self,
        id: &str,
    ) -> Result<Option<(AcmeChallenge, AcmeAuthz)>, CaError> {
        let Some(row) = sqlx::query(CHALLENGE_BY_ID).bind(id).fetch_optional(&self.pool).await.map_err(db_err)? else {
            return Ok(None);
        };
        let ch = rows::challenge(&row)?;
        let (authz, _) =
            self.acme_authz(&ch.authz_id).await?.ok_or_else(|| CaError::Store("orphan challenge".into()))?;
        Ok(Some((ch, authz)))
    }

    pub(in crate::store) async fn acme_challenge_cas(&self, sql: &'static str, id: &str) -> Result<bool, CaError> {
        let r = sqlx::query(sql).bind(id).execute(&self.pool).await.map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }

    pub(in crate::store) async fn acme_finish_challenge(
        &self,
        challenge_id: &str,
        authz_id: &str,
        order_id: &str,
        result: Result<Option<&TokenSpend>, &str>,
        now: i64,
    ) -> Result<bool, CaError> {
        let (valid, error, spend) = match result {
            Ok(spend) => (true, None, spend.cloned()),
            Err(error) => (false, Some(error.to_owned()), None),
        };
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let (mut valid, mut error) = (valid, error);
        if valid && let Some(s) = &spend {
            let spent = sqlx::query(SPEND_JOIN_TOKEN)
                .bind(now)
                .bind(&s.spiffe_id)
                .bind(&s.digest)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            if spent.rows_affected() != 1 {
                (valid, error) = (false, Some(s.error_if_used.clone()));
            }
        }
        let (ch_status, az_status) = if valid { ("valid", "valid") } else { ("invalid", "invalid") };
        let finished = sqlx::query(FINISH_CHALLENGE)
            .bind(ch_status)
            .bind(if valid { Some(now) } else { None })
            .bind(error.clone())
            .bind(challenge_id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        if finished.rows_affected() != 1 {
            // Dropping the transaction rolls the token's spending back.
            return Err(not_in_progress(challenge_id));
        }
        sqlx::query(FINISH_AUTHZ).bind(az_status).bind(authz_id).execute(&mut *tx).await.map_err(db_err)?;
        if valid {
            sqlx::query(ORDER_READY).bind(order_id).execute(&mut *tx).await.map_err(db_err)?;
        } else {
            sqlx::query(ORDER_INVALID).bind(error).bind(order_id).execute(&mut *tx).await.map_err(db_err)?;
        }
        // The spend's event goes last: the audit chain's head is locked after every row this
        // transaction changes, as in every other audited transaction, so two of them never wait
        // for each other's locks in opposite orders.
        if valid && let Some(s) = &spend {
            insert_audit(&mut tx, &s.audit).await?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(valid)
    }

    pub(in crate::store) async fn acme_transition_order(
        &self,
        id: &str,
        from: &str,
        to: &str,
        cert_serial: Option<&str>,
        error: Option<&str>,
    ) -> Result<bool, CaError> {
        let r = sqlx::query(TRANSITION_ORDER)
            .bind(to)
            .bind(cert_serial.map(str::to_owned))
            .bind(error.map(str::to_owned))
            .bind(id)
            .bind(from)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }

    /// None: the new key belongs to another account (a unique violation: a concurrent registration
    /// took it after the caller's check).
    pub(in crate::store) async fn acme_change_key(
        &self,
        id: &str,
        old_thumbprint: &str,
        new_thumbprint: &str,
        new_jwk: &str,
        audit: &AuditEvent,
    ) -> Result<Option<bool>, CaError> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let r = sqlx::query(CHANGE_KEY)
            .bind(new_thumbprint)
            .bind(new_jwk)
            .bind(id)
            .bind(old_thumbprint)
            .execute(&mut *tx)
            .await;
        match r {
            Ok(r) if r.rows_affected() == 1 => {
                insert_audit(&mut tx, audit).await?;
                tx.commit().await.map_err(db_err)?;
                Ok(Some(true))
            }
            Ok(_) => Ok(Some(false)),
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => Ok(None),
            Err(e) => Err(db_err(e)),
        }
    }

    pub(in crate::store) async fn acme_release_processing_orders(&self) -> Result<u64, CaError> {
        let r = sqlx::query(RELEASE_PROCESSING_ORDERS).execute(&self.pool).await.map_err(db_err)?;
        Ok(r.rows_affected())
    }

    pub(in crate::store) async fn acme_create_eab_key(
        &self,
        key: &EabKey,
        now: i64,
        audit: &AuditEvent,
    ) -> Result<(), CaError> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        sqlx::query(INSERT_EAB_KEY)
            .bind(&key.kid)
            .bind(&key.hmac_key)
            .bind(serde_json::to_string(&key.allowed_suffixes).map_err(|e| CaError::Store(e.to_string()))?)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(db_err)
    }

    pub(in crate::store) async fn acme_eab_key(&self, kid: &str) -> Result<Option<EabKey>, CaError> {
        let Some(r) = sqlx::query(EAB_KEY).bind(kid).fetch_optional(&self.pool).await.map_err(db_err)? else {
            return Ok(None);
        };
        rows::eab_key(&r).map(Some)
    }

    pub(in crate::store) async fn request_replacement(&self, serial: &str, at: i64) -> Result<bool, CaError> {
        let r = sqlx::query(REQUEST_REPLACEMENT).bind(at).bind(serial).execute(&self.pool).await.map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }

    pub(in crate::store) async fn replacement_requested(&self, serial: &str) -> Result<Option<i64>, CaError> {
        let r = sqlx::query(REPLACEMENT_REQUESTED).bind(serial).fetch_optional(&self.pool).await.map_err(db_err)?;
        match r {
            Some(r) => r.try_get::<Option<i64>, _>("replace_after").map_err(db_err),
            None => Ok(None),
        }
    }

    pub(in crate::store) async fn acme_replaced(&self, cert_id: &str) -> Result<bool, CaError> {
        let r = sqlx::query(REPLACED).bind(cert_id).fetch_optional(&self.pool).await.map_err(db_err)?;
        Ok(r.is_some())
    }

    pub(in crate::store) async fn acme_cleanup(&self, now: i64, expired_problem: &str) -> Result<(u64, u64), CaError> {
        let n = sqlx::query(DELETE_EXPIRED_NONCES).bind(now).execute(&self.pool).await.map_err(db_err)?.rows_affected();
        let o = sqlx::query(sqlx::AssertSqlSafe(expire_orders_sql()))
            .bind(expired_problem)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(db_err)?
            .rows_affected();
        sqlx::query(EXPIRE_AUTHZS).bind(now).execute(&self.pool).await.map_err(db_err)?;
        Ok((n, o))
    }

    pub(in crate::store) async fn acme_purge(&self, cutoff: i64) -> Result<AcmePurged, CaError> {
        let mut purged = AcmePurged::default();
        loop {
            let ids: Vec<String> = sqlx::query_scalar(PURGE_VICTIMS)
                .bind(cutoff)
                .bind(PURGE_BATCH)
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
            if ids.is_empty() {
                break;
            }
            let mut tx = self.pool.begin().await.map_err(db_err)?;
            let mut counts = [0u64; 3];
            for (sql, count) in purge_sql(ids.len()).iter().zip(counts.iter_mut()) {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
                for id in &ids {
                    q = q.bind(id);
                }
                *count = q.execute(&mut *tx).await.map_err(db_err)?.rows_affected();
            }
            tx.commit().await.map_err(db_err)?;
            purged.challenges += counts[0];
            purged.authorizations += counts[1];
            purged.orders += counts[2];
            if i64::try_from(ids.len()).unwrap_or(i64::MAX) < PURGE_BATCH {
                break;
            }
        }
        purged.accounts =
            sqlx::query(ERASE_CONTACTS).bind(cutoff).execute(&self.pool).await.map_err(db_err)?.rows_affected();
        Ok(purged)
    }
}
