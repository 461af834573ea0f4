//! ACME state on SQLite. Every ACME request reads its account, most read an order or an
//! authorization, and a complete flow changes state five times: reads run on the reader thread,
//! changes on the writer thread inside a group-committed batch, so they share its fsync instead of
//! each paying for a transaction of its own under SQLite's single write lock.

use rusqlite::Connection;

use super::rows::{self, get};
use super::{SqliteDb, all, exec, insert_audit, one};
use crate::store::acme::*;
use crate::store::workload::SPEND_JOIN_TOKEN;
use crate::{AuditEvent, CaError};

/// An authorization and its challenges.
fn authz_with_challenges(c: &Connection, id: &str) -> Result<Option<(AcmeAuthz, Vec<AcmeChallenge>)>, CaError> {
    let Some(a) = one(c, AUTHZ_BY_ID, [id], |r| rows::authz(r))? else { return Ok(None) };
    let challenges = all(c, CHALLENGES_OF_AUTHZ, [id], |r| rows::challenge(r))?;
    Ok(Some((a, challenges)))
}

fn to_json<T: serde::Serialize + ?Sized>(v: &T) -> Result<String, CaError> {
    serde_json::to_string(v).map_err(|e| CaError::Store(e.to_string()))
}

impl SqliteDb {
    pub(in crate::store) async fn acme_secret(&self, name: &str, fresh: String) -> Result<String, CaError> {
        let name = name.to_owned();
        self.write(move |c| {
            exec(c, INSERT_SECRET, (&name, &fresh))?;
            one(c, SECRET, [&name], |r| get::<String>(r, "value"))?
                .ok_or_else(|| CaError::Store(format!("secret {name} vanished")))
        })
        .await
    }

    pub(in crate::store) async fn acme_create_account(
        &self,
        a: &AcmeAccount,
        audit: &AuditEvent,
    ) -> Result<(AcmeAccount, bool), CaError> {
        let contact = to_json(&a.contact)?;
        let suffixes = to_json(&a.allowed_suffixes)?;
        let (a, ev) = (a.clone(), audit.clone());
        self.write(move |c| {
            let n = exec(
                c,
                INSERT_ACCOUNT,
                (&a.id, &a.thumbprint, &a.jwk, &a.status, &contact, &a.eab_kid, a.created_at, &suffixes),
            )?;
            // An EAB key binds exactly one account: claim it in the same transaction.
            if let (Some(kid), 1) = (&a.eab_kid, n) {
                claim_eab_key(exec(c, CLAIM_EAB_KEY, (&a.id, kid))?, kid)?;
            }
            if n == 1 {
                insert_audit(c, &ev)?;
            }
            let existing = one(c, ACCOUNT_BY_THUMBPRINT, [&a.thumbprint], |r| rows::account(r))?
                .ok_or_else(|| CaError::Store("account vanished".into()))?;
            Ok((existing, n == 1))
        })
        .await
    }

    pub(in crate::store) async fn acme_account(&self, id: &str) -> Result<Option<AcmeAccount>, CaError> {
        let key = id.to_owned();
        self.read(move |c| one(c, ACCOUNT_BY_ID, [&key], |r| rows::account(r))).await
    }

    pub(in crate::store) async fn acme_account_by_thumbprint(
        &self,
        thumbprint: &str,
    ) -> Result<Option<AcmeAccount>, CaError> {
        let key = thumbprint.to_owned();
        self.read(move |c| one(c, ACCOUNT_BY_THUMBPRINT, [&key], |r| rows::account(r))).await
    }

    pub(in crate::store) async fn acme_update_account(
        &self,
        id: &str,
        contact: &[String],
        status: &str,
        audit: &AuditEvent,
    ) -> Result<bool, CaError> {
        let contact = to_json(contact)?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let (status, id, ev) = (status.to_owned(), id.to_owned(), audit.clone());
        self.write(move |c| {
            if exec(c, UPDATE_ACCOUNT, (&contact, &status, now, &id))? != 1 {
                return Ok(false);
            }
            insert_audit(c, &ev)?;
            Ok(true)
        })
        .await
    }

    pub(in crate::store) async fn acme_create_order(
        &self,
        order: &AcmeOrder,
        authzs: &[AcmeAuthz],
        challenges: &[AcmeChallenge],
    ) -> Result<(), CaError> {
        let (o, authzs, challenges) = (order.clone(), authzs.to_vec(), challenges.to_vec());
        self.write(move |c| {
            exec(
                c,
                INSERT_ORDER,
                (&o.id, &o.account_id, &o.status, &o.identifiers, o.expires_at, o.created_at, &o.replaces),
            )?;
            for a in &authzs {
                exec(
                    c,
                    INSERT_AUTHZ,
                    (
                        &a.id,
                        &a.order_id,
                        &a.account_id,
                        &a.id_type,
                        &a.id_value,
                        i64::from(a.wildcard),
                        &a.status,
                        a.expires_at,
                    ),
                )?;
            }
            for ch in &challenges {
                exec(c, INSERT_CHALLENGE, (&ch.id, &ch.authz_id, &ch.kind, &ch.token, &ch.status))?;
            }
            Ok(())
        })
        .await
    }

    pub(in crate::store) async fn acme_order(&self, id: &str) -> Result<Option<AcmeOrder>, CaError> {
        let key = id.to_owned();
        self.read(move |c| one(c, ORDER_BY_ID, [&key], |r| rows::order(r))).await
    }

    /// One read transaction for both.
    pub(in crate::store) async fn acme_order_with_authzs(
        &self,
        id: &str,
    ) -> Result<Option<(AcmeOrder, Vec<AcmeAuthz>)>, CaError> {
        let key = id.to_owned();
        self.read(move |c| {
            let Some(o) = one(c, ORDER_BY_ID, [&key], |r| rows::order(r))? else { return Ok(None) };
            let authzs = all(c, AUTHZS_OF_ORDER, [&key], |r| rows::authz(r))?;
            Ok(Some((o, authzs)))
        })
        .await
    }

    pub(in crate::store) async fn acme_order_ids(&self, account_id: &str) -> Result<Vec<String>, CaError> {
        let key = account_id.to_owned();
        self.read(move |c| all(c, ORDER_IDS, [&key], |r| get(r, "id"))).await
    }

    pub(in crate::store) async fn acme_order_for_cert(&self, serial: &str) -> Result<Option<AcmeOrder>, CaError> {
        let key = serial.to_owned();
        self.read(move |c| one(c, ORDER_BY_CERT, [&key], |r| rows::order(r))).await
    }

    pub(in crate::store) async fn acme_authzs_for_order(&self, order_id: &str) -> Result<Vec<AcmeAuthz>, CaError> {
        let key = order_id.to_owned();
        self.read(move |c| all(c, AUTHZS_OF_ORDER, [&key], |r| rows::authz(r))).await
    }

    pub(in crate::store) async fn acme_authz(
        &self,
        id: &str,
    ) -> Result<Option<(AcmeAuthz, Vec<AcmeChallenge>)>, CaError> {
        let key = id.to_owned();
        self.read(move |c| authz_with_challenges(c, &key)).await
    }

    pub(in crate::store) async fn acme_challenge(
        &self,
        id: &str,
    ) -> Result<Option<(AcmeChallenge, AcmeAuthz)>, CaError> {
        let key = id.to_owned();
        self.read(move |c| {
            let Some(ch) = one(c, CHALLENGE_BY_ID, [&key], |r| rows::challenge(r))? else { return Ok(None) };
            let (authz, _) =
                authz_with_challenges(c, &ch.authz_id)?.ok_or_else(|| CaError::Store("orphan challenge".into()))?;
            Ok(Some((ch, authz)))
        })
        .await
    }

    pub(in crate::store) async fn acme_challenge_cas(&self, sql: &'static str, id: &str) -> Result<bool, CaError> {
        let key = id.to_owned();
        Ok(self.write(move |c| exec(c, sql, [&key])).await? == 1)
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
        let (ch, az, o) = (challenge_id.to_owned(), authz_id.to_owned(), order_id.to_owned());
        self.write(move |c| {
            let (mut valid, mut error) = (valid, error.clone());
            if valid && let Some(s) = &spend {
                if exec(c, SPEND_JOIN_TOKEN, (now, &s.spiffe_id, &s.digest))? == 1 {
                    insert_audit(c, &s.audit)?;
                } else {
                    (valid, error) = (false, Some(s.error_if_used.clone()));
                }
            }
            let (ch_status, az_status) = if valid { ("valid", "valid") } else { ("invalid", "invalid") };
            // An error undoes the token's spending (the write's savepoint).
            if exec(c, FINISH_CHALLENGE, (ch_status, valid.then_some(now), &error, &ch))? != 1 {
                return Err(not_in_progress(&ch));
            }
            exec(c, FINISH_AUTHZ, (az_status, &az))?;
            if valid {
                exec(c, ORDER_READY, [&o])?;
            } else {
                exec(c, ORDER_INVALID, (&error, &o))?;
            }
            Ok(valid)
        })
        .await
    }

    pub(in crate::store) async fn acme_transition_order(
        &self,
        id: &str,
        from: &str,
        to: &str,
        cert_serial: Option<&str>,
        error: Option<&str>,
    ) -> Result<bool, CaError> {
        let row =
            (to.to_owned(), cert_serial.map(str::to_owned), error.map(str::to_owned), id.to_owned(), from.to_owned());
        Ok(self.write(move |c| exec(c, TRANSITION_ORDER, (&row.0, &row.1, &row.2, &row.3, &row.4))).await? == 1)
    }

    /// None: the new key belongs to another account (a unique violation: a registration took it
    /// after the caller's check).
    pub(in crate::store) async fn acme_change_key(
        &self,
        id: &str,
        old_thumbprint: &str,
        new_thumbprint: &str,
        new_jwk: &str,
        audit: &AuditEvent,
    ) -> Result<Option<bool>, CaError> {
        let row = (new_thumbprint.to_owned(), new_jwk.to_owned(), id.to_owned(), old_thumbprint.to_owned());
        let ev = audit.clone();
        self.write(move |c| {
            let changed = match c
                .prepare_cached(CHANGE_KEY)
                .and_then(|mut st| st.execute((&row.0, &row.1, &row.2, &row.3)))
            {
                Ok(n) => n == 1,
                Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) => return Ok(None),
                Err(e) => return Err(super::sqlite_err(e)),
            };
            if changed {
                insert_audit(c, &ev)?;
            }
            Ok(Some(changed))
        })
        .await
    }

    pub(in crate::store) async fn acme_release_processing_orders(&self) -> Result<u64, CaError> {
        self.write(|c| exec(c, RELEASE_PROCESSING_ORDERS, [])).await
    }

    pub(in crate::store) async fn acme_create_eab_key(
        &self,
        key: &EabKey,
        now: i64,
        audit: &AuditEvent,
    ) -> Result<(), CaError> {
        let row = (key.kid.clone(), key.hmac_key.clone(), to_json(&key.allowed_suffixes)?, now);
        let ev = audit.clone();
        self.write(move |c| {
            exec(c, INSERT_EAB_KEY, (&row.0, &row.1, &row.2, row.3))?;
            insert_audit(c, &ev)
        })
        .await
    }

    pub(in crate::store) async fn acme_eab_key(&self, kid: &str) -> Result<Option<EabKey>, CaError> {
        let key = kid.to_owned();
        self.read(move |c| one(c, EAB_KEY, [&key], |r| rows::eab_key(r))).await
    }

    pub(in crate::store) async fn request_replacement(&self, serial: &str, at: i64) -> Result<bool, CaError> {
        let key = serial.to_owned();
        Ok(self.write(move |c| exec(c, REQUEST_REPLACEMENT, (at, &key))).await? == 1)
    }

    pub(in crate::store) async fn replacement_requested(&self, serial: &str) -> Result<Option<i64>, CaError> {
        let key = serial.to_owned();
        self.read(move |c| one(c, REPLACEMENT_REQUESTED, [&key], |r| get::<Option<i64>>(r, "replace_after")))
            .await
            .map(Option::flatten)
    }

    pub(in crate::store) async fn acme_replaced(&self, cert_id: &str) -> Result<bool, CaError> {
        let key = cert_id.to_owned();
        self.read(move |c| one(c, REPLACED, [&key], |_| Ok(()))).await.map(|r| r.is_some())
    }

    pub(in crate::store) async fn acme_cleanup(&self, now: i64, expired_problem: &str) -> Result<(u64, u64), CaError> {
        let (problem, expire) = (expired_problem.to_owned(), expire_orders_sql());
        self.write(move |c| {
            let n = exec(c, DELETE_EXPIRED_NONCES, [now])?;
            let o = exec(c, &expire, (&problem, now))?;
            exec(c, EXPIRE_AUTHZS, [now])?;
            Ok((n, o))
        })
        .await
    }

    /// Each batch of [`PURGE_BATCH`] orders is one write job.
    pub(in crate::store) async fn acme_purge(&self, cutoff: i64) -> Result<AcmePurged, CaError> {
        let mut purged = AcmePurged::default();
        loop {
            let (taken, counts) = self
                .write(move |c| {
                    let ids: Vec<String> = all(c, PURGE_VICTIMS, (cutoff, PURGE_BATCH), |r| get(r, "id"))?;
                    let mut counts = [0u64; 3];
                    if !ids.is_empty() {
                        for (sql, count) in purge_sql(ids.len()).iter().zip(counts.iter_mut()) {
                            *count = exec(c, sql, rusqlite::params_from_iter(&ids))?;
                        }
                    }
                    Ok((ids.len(), counts))
                })
                .await?;
            purged.challenges += counts[0];
            purged.authorizations += counts[1];
            purged.orders += counts[2];
            if i64::try_from(taken).unwrap_or(i64::MAX) < PURGE_BATCH {
                break;
            }
        }
        purged.accounts = self.write(move |c| exec(c, ERASE_CONTACTS, [cutoff])).await?;
        Ok(purged)
    }
}
