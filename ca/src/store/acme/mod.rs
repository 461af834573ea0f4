//! ACME state (RFC 8555): accounts, orders, authorizations, challenges, used nonces. The web edge
//! decides; this module only remembers, with every multi-row change in one transaction.
//!
//! On SQLite the hot path (everything a complete flow touches) runs on the store's own
//! connections ([`sqlite`]); everything else, and all of PostgreSQL, goes through sqlx's pool.

mod sqlite;

use crate::store::workload::SPEND_JOIN_TOKEN;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::writer::{insert_audit, insert_audit_sqlite};
use super::{Store, db_err};
use crate::ra::OrderStatus;
use crate::{AuditEvent, CaError};

/// An ACME account (RFC 8555 section 7.1.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeAccount {
    /// Opaque id (the last segment of the account URL).
    pub id: String,
    /// RFC 7638 thumbprint of the account key.
    pub thumbprint: String,
    /// The account key as JWK JSON.
    pub jwk: String,
    /// `valid`, `deactivated` or `revoked`.
    pub status: String,
    /// Contact URLs.
    pub contact: Vec<String>,
    /// The external account binding key id used at creation.
    pub eab_kid: Option<String>,
    /// Creation time (Unix seconds).
    pub created_at: i64,
    /// DNS suffixes this account may order (from its EAB key); empty: the CA policy alone.
    pub allowed_suffixes: Vec<String>,
}

/// An external account binding key (RFC 8555 section 7.3.4).
#[derive(Clone, PartialEq, Eq)]
pub struct EabKey {
    /// Key id given to the client.
    pub kid: String,
    /// The HMAC key, base64url.
    pub hmac_key: String,
    /// DNS suffixes accounts bound with this key may order; empty: any the CA allows.
    pub allowed_suffixes: Vec<String>,
    /// The account it was used for, if any (each key binds one account).
    pub account_id: Option<String>,
}

impl std::fmt::Debug for EabKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EabKey")
            .field("kid", &self.kid)
            .field("allowed_suffixes", &self.allowed_suffixes)
            .finish_non_exhaustive()
    }
}

/// An ACME order (RFC 8555 section 7.1.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeOrder {
    /// Opaque id.
    pub id: String,
    /// Owning account.
    pub account_id: String,
    /// `pending`, `ready`, `processing`, `valid`, `invalid`.
    pub status: String,
    /// Identifiers as JSON (`[{"type":"dns","value":"..."}]`).
    pub identifiers: String,
    /// Expiry (Unix seconds).
    pub expires_at: i64,
    /// Problem document JSON when invalid.
    pub error: Option<String>,
    /// Serial of the issued certificate.
    pub cert_serial: Option<String>,
    /// Creation time.
    pub created_at: i64,
    /// RFC 9773 certID of the certificate this order replaces.
    pub replaces: Option<String>,
}

/// An authorization (RFC 8555 section 7.1.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeAuthz {
    /// Opaque id.
    pub id: String,
    /// The order it belongs to.
    pub order_id: String,
    /// Owning account.
    pub account_id: String,
    /// `dns` or `ip`.
    pub id_type: String,
    /// The identifier (without `*.` for wildcards).
    pub id_value: String,
    /// Whether the order asked for `*.<id_value>`.
    pub wildcard: bool,
    /// `pending`, `valid`, `invalid`, ...
    pub status: String,
    /// Expiry.
    pub expires_at: i64,
}

/// A challenge (RFC 8555 section 7.1.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeChallenge {
    /// Opaque id.
    pub id: String,
    /// The authorization it proves.
    pub authz_id: String,
    /// `http-01`, `tls-alpn-01`, `dns-01`.
    pub kind: String,
    /// Token (base64url, 128 bits or more).
    pub token: String,
    /// `pending`, `processing`, `valid`, `invalid`.
    pub status: String,
    /// When it was validated.
    pub validated_at: Option<i64>,
    /// Problem document JSON when invalid.
    pub error: Option<String>,
}

fn s(r: &AnyRow, c: &str) -> Result<String, CaError> {
    r.try_get(c).map_err(db_err)
}

fn account_from(r: &AnyRow) -> Result<AcmeAccount, CaError> {
    Ok(AcmeAccount {
        id: s(r, "id")?,
        thumbprint: s(r, "thumbprint")?,
        jwk: s(r, "jwk")?,
        status: s(r, "status")?,
        contact: serde_json::from_str(&s(r, "contact")?).map_err(|e| CaError::Store(e.to_string()))?,
        eab_kid: r.try_get("eab_kid").map_err(db_err)?,
        created_at: r.try_get("created_at").map_err(db_err)?,
        allowed_suffixes: serde_json::from_str(&s(r, "allowed_suffixes")?)
            .map_err(|e| CaError::Store(e.to_string()))?,
    })
}

fn order_from(r: &AnyRow) -> Result<AcmeOrder, CaError> {
    Ok(AcmeOrder {
        id: s(r, "id")?,
        account_id: s(r, "account_id")?,
        status: s(r, "status")?,
        identifiers: s(r, "identifiers")?,
        expires_at: r.try_get("expires_at").map_err(db_err)?,
        error: r.try_get("error").map_err(db_err)?,
        cert_serial: r.try_get("cert_serial").map_err(db_err)?,
        created_at: r.try_get("created_at").map_err(db_err)?,
        replaces: r.try_get("replaces").map_err(db_err)?,
    })
}

fn authz_from(r: &AnyRow) -> Result<AcmeAuthz, CaError> {
    Ok(AcmeAuthz {
        id: s(r, "id")?,
        order_id: s(r, "order_id")?,
        account_id: s(r, "account_id")?,
        id_type: s(r, "id_type")?,
        id_value: s(r, "id_value")?,
        wildcard: r.try_get::<i32, _>("wildcard").map_err(db_err)? != 0,
        status: s(r, "status")?,
        expires_at: r.try_get("expires_at").map_err(db_err)?,
    })
}

fn challenge_from(r: &AnyRow) -> Result<AcmeChallenge, CaError> {
    Ok(AcmeChallenge {
        id: s(r, "id")?,
        authz_id: s(r, "authz_id")?,
        kind: s(r, "type")?,
        token: s(r, "token")?,
        status: s(r, "status")?,
        validated_at: r.try_get("validated_at").map_err(db_err)?,
        error: r.try_get("error").map_err(db_err)?,
    })
}

macro_rules! account_cols {
    () => {
        "id, thumbprint, jwk, status, contact, eab_kid, created_at, allowed_suffixes"
    };
}
macro_rules! order_cols {
    () => {
        "id, account_id, status, identifiers, expires_at, error, cert_serial, created_at, replaces"
    };
}
macro_rules! authz_cols {
    () => {
        "id, order_id, account_id, id_type, id_value, wildcard, status, expires_at"
    };
}
const ACCOUNT_BY_ID: &str = concat!("SELECT ", account_cols!(), " FROM acme_accounts WHERE id = $1");
const ACCOUNT_BY_THUMBPRINT: &str = concat!("SELECT ", account_cols!(), " FROM acme_accounts WHERE thumbprint = $1");
const INSERT_ACCOUNT: &str = "INSERT INTO acme_accounts (id, thumbprint, jwk, status, contact, eab_kid, created_at, \
     allowed_suffixes) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (thumbprint) DO NOTHING";
const CLAIM_EAB_KEY: &str = "UPDATE acme_eab_keys SET account_id = $1 WHERE kid = $2 AND account_id IS NULL";
/// Orders the purge takes, per transaction.
pub const PURGE_BATCH: i64 = 500;
/// Orders past retention (see [`Store::acme_purge`]), oldest first.
const PURGE_VICTIMS: &str = "SELECT o.id FROM acme_orders o WHERE \
    (o.status <> 'valid' AND o.expires_at < $1) \
    OR (o.status = 'valid' AND EXISTS (SELECT 1 FROM certificates c WHERE c.serial = o.cert_serial AND c.not_after < $1)) \
    OR EXISTS (SELECT 1 FROM acme_accounts a WHERE a.id = o.account_id AND a.status = 'deactivated' AND a.deactivated_at < $1) \
    ORDER BY o.expires_at LIMIT $2";

/// What [`Store::acme_purge`] deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AcmePurged {
    /// Orders deleted.
    pub orders: u64,
    /// Authorizations deleted.
    pub authorizations: u64,
    /// Challenges deleted.
    pub challenges: u64,
    /// Deactivated accounts whose contacts were erased.
    pub accounts: u64,
}

const UPDATE_ACCOUNT: &str = "UPDATE acme_accounts SET contact = $1, status = $2, deactivated_at = CASE WHEN $2 = \
    'deactivated' THEN $3 ELSE deactivated_at END WHERE id = $4 AND status = 'valid'";
const INSERT_ORDER: &str = "INSERT INTO acme_orders (id, account_id, status, identifiers, expires_at, error, \
     cert_serial, created_at, replaces) VALUES ($1, $2, $3, $4, $5, NULL, NULL, $6, $7)";
const INSERT_AUTHZ: &str = "INSERT INTO acme_authorizations (id, order_id, account_id, id_type, id_value, wildcard, \
     status, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
const INSERT_CHALLENGE: &str = "INSERT INTO acme_challenges (id, authz_id, type, token, status, validated_at, error) \
     VALUES ($1, $2, $3, $4, $5, NULL, NULL)";
const ORDER_BY_ID: &str = concat!("SELECT ", order_cols!(), " FROM acme_orders WHERE id = $1");
const ORDER_BY_CERT: &str = concat!("SELECT ", order_cols!(), " FROM acme_orders WHERE cert_serial = $1");
const AUTHZS_OF_ORDER: &str =
    concat!("SELECT ", authz_cols!(), " FROM acme_authorizations WHERE order_id = $1 ORDER BY id");
const AUTHZ_BY_ID: &str = concat!("SELECT ", authz_cols!(), " FROM acme_authorizations WHERE id = $1");
const CHALLENGES_OF_AUTHZ: &str = "SELECT id, authz_id, type, token, status, validated_at, error \
     FROM acme_challenges WHERE authz_id = $1 ORDER BY type";
const CHALLENGE_BY_ID: &str =
    "SELECT id, authz_id, type, token, status, validated_at, error FROM acme_challenges WHERE id = $1";
// A final state is never overwritten: only a pending or processing challenge is finished.
const FINISH_CHALLENGE: &str = "UPDATE acme_challenges SET status = $1, validated_at = $2, error = $3 WHERE id = $4 \
    AND status IN ('pending', 'processing')";
const CLAIM_CHALLENGE: &str = "UPDATE acme_challenges SET status = 'processing' WHERE id = $1 AND status = 'pending'";
const RELEASE_CHALLENGE: &str = "UPDATE acme_challenges SET status = 'pending' WHERE id = $1 AND status = 'processing'";
const FINISH_AUTHZ: &str = "UPDATE acme_authorizations SET status = $1 WHERE id = $2 AND status = 'pending'";
const ORDER_READY: &str = "UPDATE acme_orders SET status = 'ready' WHERE id = $1 AND status = 'pending' AND NOT EXISTS \
     (SELECT 1 FROM acme_authorizations a WHERE a.order_id = $1 AND a.status <> 'valid')";
const ORDER_INVALID: &str =
    "UPDATE acme_orders SET status = 'invalid', error = $1 WHERE id = $2 AND status = 'pending'";
/// `processing -> ready` ([`OrderStatus::can_become`] allows it for this recovery only).
const RELEASE_PROCESSING_ORDERS: &str =
    "UPDATE acme_orders SET status = 'ready' WHERE status = 'processing' AND cert_serial IS NULL";
const TRANSITION_ORDER: &str = "UPDATE acme_orders SET status = $1, cert_serial = COALESCE($2, cert_serial), \
     error = COALESCE($3, error) WHERE id = $4 AND status = $5";

/// An EAB key binds exactly one account: the claim must have taken the key.
fn claim_eab_key(claimed: u64, kid: &str) -> Result<(), CaError> {
    if claimed == 1 {
        Ok(())
    } else {
        Err(CaError::NameNotAllowed {
            name: kid.to_owned(),
            reason: "this EAB key is already bound to an account".into(),
        })
    }
}

/// An authorization and its challenges, on a SQLite connection.
fn authz_with_challenges(
    c: &rusqlite::Connection,
    id: &str,
) -> Result<Option<(AcmeAuthz, Vec<AcmeChallenge>)>, CaError> {
    let Some(a) = sqlite::one(c, AUTHZ_BY_ID, [id], sqlite::authz)? else { return Ok(None) };
    let challenges = sqlite::all(c, CHALLENGES_OF_AUTHZ, [id], sqlite::challenge)?;
    Ok(Some((a, challenges)))
}

impl Store {
    /// A named secret shared by every replica, created by whichever asks first.
    pub async fn acme_secret(&self, name: &str, fresh: String) -> Result<String, CaError> {
        sqlx::query("INSERT INTO acme_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(fresh)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        let row = sqlx::query("SELECT value FROM acme_secrets WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
        s(&row, "value")
    }

    /// Marks a nonce used; false if it already was (a replay). Group-committed.
    pub async fn acme_use_nonce(&self, nonce: &str, expires_at: i64) -> Result<bool, CaError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.writer
            .send(super::writer::Job {
                write: super::writer::Write::Nonce { nonce: nonce.to_owned(), expires_at },
                reply,
            })
            .await
            .map_err(|_| CaError::StoreUnavailable("the store writer has stopped".into()))?;
        let affected = rx.await.map_err(|_| CaError::StoreUnavailable("the store writer has stopped".into()))??;
        Ok(affected == 1)
    }

    /// Creates an account, or returns the existing one for the same key (false = existed). A new
    /// account, its EAB key's binding and its `audit` event commit together; an existing one
    /// changes nothing and records nothing.
    pub async fn acme_create_account(
        &self,
        a: &AcmeAccount,
        audit: &AuditEvent,
    ) -> Result<(AcmeAccount, bool), CaError> {
        let contact = serde_json::to_string(&a.contact).map_err(|e| CaError::Store(e.to_string()))?;
        let suffixes = serde_json::to_string(&a.allowed_suffixes).map_err(|e| CaError::Store(e.to_string()))?;
        let row = (a.clone(), audit.clone());
        let (c, sfx) = (contact.clone(), suffixes.clone());
        if let Some(w) = self.sqlite_write(move |conn| {
            let (a, ev) = &row;
            let n = sqlite::exec(
                conn,
                INSERT_ACCOUNT,
                (&a.id, &a.thumbprint, &a.jwk, &a.status, &c, &a.eab_kid, a.created_at, &sfx),
            )?;
            if let (Some(kid), 1) = (&a.eab_kid, n) {
                claim_eab_key(sqlite::exec(conn, CLAIM_EAB_KEY, (&a.id, kid))?, kid)?;
            }
            if n == 1 {
                insert_audit_sqlite(conn, ev)?;
            }
            Ok(n)
        }) {
            let inserted = w.await?;
            let existing = self
                .acme_account_by_thumbprint(&a.thumbprint)
                .await?
                .ok_or_else(|| CaError::Store("account vanished".into()))?;
            return Ok((existing, inserted == 1));
        }
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
            insert_audit(self.backend, &mut tx, audit).await.map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        let existing = self
            .acme_account_by_thumbprint(&a.thumbprint)
            .await?
            .ok_or_else(|| CaError::Store("account vanished".into()))?;
        Ok((existing, r.rows_affected() == 1))
    }

    /// An account by id.
    pub async fn acme_account(&self, id: &str) -> Result<Option<AcmeAccount>, CaError> {
        let key = id.to_owned();
        if let Some(r) = self.sqlite_read(move |c| sqlite::one(c, ACCOUNT_BY_ID, [&key], sqlite::account)) {
            return r.await;
        }
        let row = sqlx::query(ACCOUNT_BY_ID).bind(id).fetch_optional(&self.pool).await.map_err(db_err)?;
        row.as_ref().map(account_from).transpose()
    }

    /// An account by key thumbprint.
    pub async fn acme_account_by_thumbprint(&self, thumbprint: &str) -> Result<Option<AcmeAccount>, CaError> {
        let key = thumbprint.to_owned();
        if let Some(r) = self.sqlite_read(move |c| sqlite::one(c, ACCOUNT_BY_THUMBPRINT, [&key], sqlite::account)) {
            return r.await;
        }
        let row =
            sqlx::query(ACCOUNT_BY_THUMBPRINT).bind(thumbprint).fetch_optional(&self.pool).await.map_err(db_err)?;
        row.as_ref().map(account_from).transpose()
    }

    /// Updates contacts and status of a valid account, with its `audit` event in the same
    /// transaction; false (and nothing recorded) if it is no longer valid.
    pub async fn acme_update_account(
        &self,
        id: &str,
        contact: &[String],
        status: &str,
        audit: &AuditEvent,
    ) -> Result<bool, CaError> {
        let contact = serde_json::to_string(contact).map_err(|e| CaError::Store(e.to_string()))?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let row = (contact.clone(), status.to_owned(), id.to_owned(), audit.clone());
        if let Some(w) = self.sqlite_write(move |c| {
            let n = sqlite::exec(c, UPDATE_ACCOUNT, (&row.0, &row.1, now, &row.2))?;
            if n == 1 {
                insert_audit_sqlite(c, &row.3)?;
            }
            Ok(n)
        }) {
            return Ok(w.await? == 1);
        }
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
        insert_audit(self.backend, &mut tx, audit).await.map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }

    /// Creates an order with its authorizations and challenges, all or nothing.
    pub async fn acme_create_order(
        &self,
        order: &AcmeOrder,
        authzs: &[AcmeAuthz],
        challenges: &[AcmeChallenge],
    ) -> Result<(), CaError> {
        let rows = (order.clone(), authzs.to_vec(), challenges.to_vec());
        if let Some(w) = self.sqlite_write(move |c| {
            let (o, authzs, challenges) = &rows;
            sqlite::exec(
                c,
                INSERT_ORDER,
                (&o.id, &o.account_id, &o.status, &o.identifiers, o.expires_at, o.created_at, &o.replaces),
            )?;
            for a in authzs {
                sqlite::exec(
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
            for ch in challenges {
                sqlite::exec(c, INSERT_CHALLENGE, (&ch.id, &ch.authz_id, &ch.kind, &ch.token, &ch.status))?;
            }
            Ok(1)
        }) {
            return w.await.map(|_| ());
        }
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

    /// An order by id.
    pub async fn acme_order(&self, id: &str) -> Result<Option<AcmeOrder>, CaError> {
        let key = id.to_owned();
        if let Some(r) = self.sqlite_read(move |c| sqlite::one(c, ORDER_BY_ID, [&key], sqlite::order)) {
            return r.await;
        }
        let row = sqlx::query(ORDER_BY_ID).bind(id).fetch_optional(&self.pool).await.map_err(db_err)?;
        row.as_ref().map(order_from).transpose()
    }

    /// An order and its authorizations, read together (one read transaction on SQLite).
    pub async fn acme_order_with_authzs(&self, id: &str) -> Result<Option<(AcmeOrder, Vec<AcmeAuthz>)>, CaError> {
        let key = id.to_owned();
        if let Some(r) = self.sqlite_read(move |c| {
            let Some(o) = sqlite::one(c, ORDER_BY_ID, [&key], sqlite::order)? else { return Ok(None) };
            let authzs = sqlite::all(c, AUTHZS_OF_ORDER, [&key], sqlite::authz)?;
            Ok(Some((o, authzs)))
        }) {
            return r.await;
        }
        let Some(o) = self.acme_order(id).await? else { return Ok(None) };
        let authzs = self.acme_authzs_for_order(&o.id).await?;
        Ok(Some((o, authzs)))
    }

    /// The ids of an account's orders, newest first.
    pub async fn acme_order_ids(&self, account_id: &str) -> Result<Vec<String>, CaError> {
        let rows =
            sqlx::query("SELECT id FROM acme_orders WHERE account_id = $1 ORDER BY created_at DESC, id LIMIT 1000")
                .bind(account_id)
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
        rows.iter().map(|r| s(r, "id")).collect()
    }

    /// The order that produced a certificate.
    pub async fn acme_order_for_cert(&self, serial: &str) -> Result<Option<AcmeOrder>, CaError> {
        let key = serial.to_owned();
        if let Some(r) = self.sqlite_read(move |c| sqlite::one(c, ORDER_BY_CERT, [&key], sqlite::order)) {
            return r.await;
        }
        let row = sqlx::query(ORDER_BY_CERT).bind(serial).fetch_optional(&self.pool).await.map_err(db_err)?;
        row.as_ref().map(order_from).transpose()
    }

    /// The authorizations of an order.
    pub async fn acme_authzs_for_order(&self, order_id: &str) -> Result<Vec<AcmeAuthz>, CaError> {
        let key = order_id.to_owned();
        if let Some(r) = self.sqlite_read(move |c| sqlite::all(c, AUTHZS_OF_ORDER, [&key], sqlite::authz)) {
            return r.await;
        }
        let rows = sqlx::query(AUTHZS_OF_ORDER).bind(order_id).fetch_all(&self.pool).await.map_err(db_err)?;
        rows.iter().map(authz_from).collect()
    }

    /// An authorization and its challenges.
    pub async fn acme_authz(&self, id: &str) -> Result<Option<(AcmeAuthz, Vec<AcmeChallenge>)>, CaError> {
        let key = id.to_owned();
        if let Some(r) = self.sqlite_read(move |c| authz_with_challenges(c, &key)) {
            return r.await;
        }
        let Some(row) = sqlx::query(AUTHZ_BY_ID).bind(id).fetch_optional(&self.pool).await.map_err(db_err)? else {
            return Ok(None);
        };
        let authz = authz_from(&row)?;
        let rows = sqlx::query(CHALLENGES_OF_AUTHZ).bind(id).fetch_all(&self.pool).await.map_err(db_err)?;
        Ok(Some((authz, rows.iter().map(challenge_from).collect::<Result<_, _>>()?)))
    }

    /// A challenge and the authorization it belongs to.
    pub async fn acme_challenge(&self, id: &str) -> Result<Option<(AcmeChallenge, AcmeAuthz)>, CaError> {
        let key = id.to_owned();
        if let Some(r) = self.sqlite_read(move |c| {
            let Some(ch) = sqlite::one(c, CHALLENGE_BY_ID, [&key], sqlite::challenge)? else { return Ok(None) };
            let (authz, _) =
                authz_with_challenges(c, &ch.authz_id)?.ok_or_else(|| CaError::Store("orphan challenge".into()))?;
            Ok(Some((ch, authz)))
        }) {
            return r.await;
        }
        let Some(row) = sqlx::query(CHALLENGE_BY_ID).bind(id).fetch_optional(&self.pool).await.map_err(db_err)? else {
            return Ok(None);
        };
        let ch = challenge_from(&row)?;
        let (authz, _) =
            self.acme_authz(&ch.authz_id).await?.ok_or_else(|| CaError::Store("orphan challenge".into()))?;
        Ok(Some((ch, authz)))
    }

    /// Moves a challenge from `pending` to `processing` (compare-and-set, RFC 8555 section 7.1.6):
    /// of concurrent POSTs of one challenge exactly one gets true and validates; the others see the
    /// challenge as it is. This is what keeps a second POST from redeeming a join token again.
    pub async fn acme_claim_challenge(&self, id: &str) -> Result<bool, CaError> {
        self.acme_challenge_cas(CLAIM_CHALLENGE, id).await
    }

    /// Moves a challenge back from `processing` to `pending`, when its validation could not be
    /// recorded, so the client may post it again; false if it was not processing.
    pub async fn acme_release_challenge(&self, id: &str) -> Result<bool, CaError> {
        self.acme_challenge_cas(RELEASE_CHALLENGE, id).await
    }

    async fn acme_challenge_cas(&self, sql: &'static str, id: &str) -> Result<bool, CaError> {
        let key = id.to_owned();
        if let Some(w) = self.sqlite_write(move |c| sqlite::exec(c, sql, [&key])) {
            return Ok(w.await? == 1);
        }
        let r = sqlx::query(sql).bind(id).execute(&self.pool).await.map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }

    /// Records a validation result in one transaction: the challenge, its authorization and, when
    /// this was the order's last pending authorization, the order (`ready`, or `invalid` on failure)
    /// change together, so a client never sees valid authorizations under a pending order.
    ///
    /// With `spend`, a valid result also spends that join token, with its audit event, in the same
    /// transaction; if another enrollment spent it first, the result is recorded as invalid with
    /// the spend's error instead. Either way the token is spent exactly when a valid authorization is recorded, so a
    /// result that cannot be recorded leaves it for the agent's retry. A challenge that is not
    /// pending or processing (already final) gets nothing recorded: an error, and no token spent.
    /// Returns whether the result recorded is valid.
    pub async fn acme_finish_challenge(
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
        let ids = (challenge_id.to_owned(), authz_id.to_owned(), order_id.to_owned(), error.clone(), spend.clone());
        if let Some(w) = self.sqlite_write(move |c| {
            let (ch, az, o, error, spend) = &ids;
            let (mut valid, mut error) = (valid, error.clone());
            if valid && let Some(s) = spend {
                if sqlite::exec(c, SPEND_JOIN_TOKEN, (now, &s.spiffe_id, &s.digest))? == 1 {
                    insert_audit_sqlite(c, &s.audit)?;
                } else {
                    (valid, error) = (false, Some(s.error_if_used.clone()));
                }
            }
            finish_sqlite(c, (ch, az, o), valid, error.as_deref(), now)?;
            Ok(u64::from(valid))
        }) {
            return Ok(w.await? == 1);
        }
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
            if spent.rows_affected() == 1 {
                insert_audit(self.backend, &mut tx, &s.audit).await.map_err(db_err)?;
            } else {
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
        tx.commit().await.map_err(db_err)?;
        Ok(valid)
    }

    /// Moves an order from one status to another (compare-and-set); false if it was not in `from`.
    /// A transition the order state machine does not allow ([`OrderStatus::can_become`]) is an
    /// error and changes nothing.
    pub async fn acme_transition_order(
        &self,
        id: &str,
        from: OrderStatus,
        to: OrderStatus,
        cert_serial: Option<&str>,
        error: Option<&str>,
    ) -> Result<bool, CaError> {
        if !from.can_become(to) {
            return Err(CaError::Store(format!("order {id}: {from} -> {to} is not a legal transition")));
        }
        let (from, to) = (from.as_str(), to.as_str());
        let row =
            (to.to_owned(), cert_serial.map(str::to_owned), error.map(str::to_owned), id.to_owned(), from.to_owned());
        if let Some(w) = self.sqlite_write(move |c| {
            let (to, serial, error, id, from) = &row;
            sqlite::exec(c, TRANSITION_ORDER, (to, serial, error, id, from))
        }) {
            return Ok(w.await? == 1);
        }
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

    /// Moves every order an older version left in `processing` without a certificate back to
    /// `ready` (see [`crate::ra::Registration::open`]); returns how many.
    pub async fn acme_release_processing_orders(&self) -> Result<u64, CaError> {
        let r = sqlx::query(RELEASE_PROCESSING_ORDERS).execute(&self.pool).await.map_err(db_err)?;
        Ok(r.rows_affected())
    }

    /// Replaces an account's key (RFC 8555 section 7.3.5) if it still has `old_thumbprint`, with
    /// its `audit` event in the same transaction (nothing is recorded when no key changed).
    /// `Ok(Err(id))`: the new key already belongs to account `id`.
    pub async fn acme_change_key(
        &self,
        id: &str,
        old_thumbprint: &str,
        new_thumbprint: &str,
        new_jwk: &str,
        audit: &AuditEvent,
    ) -> Result<Result<bool, String>, CaError> {
        if let Some(other) = self.acme_account_by_thumbprint(new_thumbprint).await? {
            return Ok(Err(other.id));
        }
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let r = sqlx::query("UPDATE acme_accounts SET thumbprint = $1, jwk = $2 WHERE id = $3 AND thumbprint = $4")
            .bind(new_thumbprint)
            .bind(new_jwk)
            .bind(id)
            .bind(old_thumbprint)
            .execute(&mut *tx)
            .await;
        match r {
            Ok(r) if r.rows_affected() == 1 => {
                insert_audit(self.backend, &mut tx, audit).await.map_err(db_err)?;
                tx.commit().await.map_err(db_err)?;
                Ok(Ok(true))
            }
            Ok(_) => Ok(Ok(false)),
            // A concurrent registration took the key between the check and the update.
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
                drop(tx);
                let other = self.acme_account_by_thumbprint(new_thumbprint).await?.map(|a| a.id).unwrap_or_default();
                Ok(Err(other))
            }
            Err(e) => Err(db_err(e)),
        }
    }

    /// Creates an external account binding key, with its `audit` event in the same transaction.
    pub async fn acme_create_eab_key(&self, key: &EabKey, now: i64, audit: &AuditEvent) -> Result<(), CaError> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        sqlx::query("INSERT INTO acme_eab_keys (kid, hmac_key, allowed_suffixes, account_id, created_at) VALUES ($1, $2, $3, NULL, $4)")
            .bind(&key.kid)
            .bind(&key.hmac_key)
            .bind(serde_json::to_string(&key.allowed_suffixes).map_err(|e| CaError::Store(e.to_string()))?)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        insert_audit(self.backend, &mut tx, audit).await.map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    /// An external account binding key by id.
    pub async fn acme_eab_key(&self, kid: &str) -> Result<Option<EabKey>, CaError> {
        let Some(r) =
            sqlx::query("SELECT kid, hmac_key, allowed_suffixes, account_id FROM acme_eab_keys WHERE kid = $1")
                .bind(kid)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err)?
        else {
            return Ok(None);
        };
        Ok(Some(EabKey {
            kid: s(&r, "kid")?,
            hmac_key: s(&r, "hmac_key")?,
            allowed_suffixes: serde_json::from_str(&s(&r, "allowed_suffixes")?)
                .map_err(|e| CaError::Store(e.to_string()))?,
            account_id: r.try_get("account_id").map_err(db_err)?,
        }))
    }

    /// Asks every holder of a certificate to replace it now (renewalInfo answers with a window in
    /// the past from `at` on).
    pub async fn request_replacement(&self, serial: &str, at: i64) -> Result<bool, CaError> {
        let r = sqlx::query("UPDATE certificates SET replace_after = $1 WHERE serial = $2")
            .bind(at)
            .bind(serial)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }

    /// When the CA asked for a certificate to be replaced, if it did.
    pub async fn replacement_requested(&self, serial: &str) -> Result<Option<i64>, CaError> {
        let r = sqlx::query("SELECT replace_after FROM certificates WHERE serial = $1")
            .bind(serial)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        match r {
            Some(r) => r.try_get::<Option<i64>, _>("replace_after").map_err(db_err),
            None => Ok(None),
        }
    }

    /// Whether a valid order already replaced the certificate with this RFC 9773 certID.
    pub async fn acme_replaced(&self, cert_id: &str) -> Result<bool, CaError> {
        let r = sqlx::query("SELECT 1 AS one FROM acme_orders WHERE replaces = $1 AND status = 'valid'")
            .bind(cert_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(r.is_some())
    }

    /// Deletes used nonces that have expired anyway, and expires stale orders (storing
    /// `expired_problem`, a problem document the edge rendered, as their error) and authorizations.
    pub async fn acme_cleanup(&self, now: i64, expired_problem: &str) -> Result<(u64, u64), CaError> {
        let n = sqlx::query("DELETE FROM acme_used_nonces WHERE expires_at < $1")
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(db_err)?
            .rows_affected();
        // Every status an order can still leave expires (`OrderStatus::live`), to `invalid`.
        let live = OrderStatus::live().map(|st| format!("'{st}'")).collect::<Vec<_>>().join(", ");
        // Only the fixed status spellings are formatted in; the values are bound.
        let expire = format!(
            "UPDATE acme_orders SET status = 'invalid', error = $1 WHERE expires_at < $2 AND status IN ({live})"
        );
        let o = sqlx::query(sqlx::AssertSqlSafe(expire))
            .bind(expired_problem)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(db_err)?
            .rows_affected();
        sqlx::query("UPDATE acme_authorizations SET status = 'expired' WHERE expires_at < $1 AND status = 'pending'")
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok((n, o))
    }

    /// Deletes, in batches of [`PURGE_BATCH`] orders with one transaction each, what ACME no longer
    /// needs once `cutoff` (now minus the retention period) has passed: orders that expired
    /// without a certificate, orders whose certificate expired, every order of an account
    /// deactivated before it, and the authorizations and challenges of all of those. Deactivated
    /// accounts also lose their contact addresses; their rows (and keys' thumbprints) stay, so the
    /// keys stay refused. Issued certificates and their records are never touched.
    pub async fn acme_purge(&self, cutoff: i64) -> Result<AcmePurged, CaError> {
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
            let list = (1..=ids.len()).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
            let mut tx = self.pool.begin().await.map_err(db_err)?;
            let statements = [
                format!(
                    "DELETE FROM acme_challenges WHERE authz_id IN \
                     (SELECT id FROM acme_authorizations WHERE order_id IN ({list}))"
                ),
                format!("DELETE FROM acme_authorizations WHERE order_id IN ({list})"),
                format!("DELETE FROM acme_orders WHERE id IN ({list})"),
            ];
            let mut counts = [0u64; 3];
            for (sql, count) in statements.iter().zip(counts.iter_mut()) {
                // Only `$n` placeholders are formatted in; every value is bound.
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
        purged.accounts = sqlx::query(
            "UPDATE acme_accounts SET contact = '[]' \
             WHERE status = 'deactivated' AND deactivated_at < $1 AND contact <> '[]'",
        )
        .bind(cutoff)
        .execute(&self.pool)
        .await
        .map_err(db_err)?
        .rows_affected();
        Ok(purged)
    }
}

/// A challenge that is no longer pending or processing gets no result (and spends no token).
fn not_in_progress(id: &str) -> CaError {
    CaError::Store(format!("challenge {id} is not being validated; its result was not recorded"))
}

/// The SQLite half of [`Store::acme_finish_challenge`] once the outcome is known.
fn finish_sqlite(
    c: &rusqlite::Connection,
    (ch, az, o): (&String, &String, &String),
    valid: bool,
    error: Option<&str>,
    now: i64,
) -> Result<u64, CaError> {
    let (ch_status, az_status) = if valid { ("valid", "valid") } else { ("invalid", "invalid") };
    if sqlite::exec(c, FINISH_CHALLENGE, (ch_status, valid.then_some(now), error, ch))? != 1 {
        return Err(not_in_progress(ch));
    }
    sqlite::exec(c, FINISH_AUTHZ, (az_status, az))?;
    if valid { sqlite::exec(c, ORDER_READY, [o]) } else { sqlite::exec(c, ORDER_INVALID, (error, o)) }
}

/// A join token that a valid attestation spends when its result is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSpend {
    /// The token's digest ([`crate::store::workload::join_token_digest`]).
    pub digest: String,
    /// The SPIFFE ID it is spent for.
    pub spiffe_id: String,
    /// The challenge error (problem document JSON) recorded if another enrollment spent it first.
    pub error_if_used: String,
    /// The `join_token.spend` event, recorded with the spending (and only then).
    pub audit: AuditEvent,
}
