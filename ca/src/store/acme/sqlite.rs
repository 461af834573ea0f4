//! The ACME state on SQLite's own connections ([`crate::store::native`]): reads run on the
//! reader thread, changes on the writer thread inside a group-committed batch. Every ACME request
//! reads its account, most read an order or an authorization, and a complete flow changes state
//! five times; through sqlx's pool each change was a transaction with an fsync of its own, taken
//! one at a time under SQLite's single write lock, and each statement a hand-off to a worker thread.
//!
//! The statements are the ones the `Any` pool runs on PostgreSQL ([`super`]); SQLite reads the
//! `$1`-style placeholders too, numbered in order of first appearance.

use rusqlite::{Connection, Params, Row};

use super::{AcmeAccount, AcmeAuthz, AcmeChallenge, AcmeOrder};
use crate::CaError;
use crate::store::native::sqlite_err;

/// The first row `sql` yields, mapped; `None` when there is none.
pub(super) fn one<T>(
    c: &Connection,
    sql: &str,
    params: impl Params,
    map: impl FnOnce(&Row<'_>) -> Result<T, CaError>,
) -> Result<Option<T>, CaError> {
    let mut st = c.prepare_cached(sql).map_err(sqlite_err)?;
    let mut rows = st.query(params).map_err(sqlite_err)?;
    match rows.next().map_err(sqlite_err)? {
        Some(r) => map(r).map(Some),
        None => Ok(None),
    }
}

/// Every row `sql` yields, mapped.
pub(super) fn all<T>(
    c: &Connection,
    sql: &str,
    params: impl Params,
    mut map: impl FnMut(&Row<'_>) -> Result<T, CaError>,
) -> Result<Vec<T>, CaError> {
    let mut st = c.prepare_cached(sql).map_err(sqlite_err)?;
    let mut rows = st.query(params).map_err(sqlite_err)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(sqlite_err)? {
        out.push(map(r)?);
    }
    Ok(out)
}

/// Runs a change; returns the rows it affected.
pub(super) fn exec(c: &Connection, sql: &str, params: impl Params) -> Result<u64, CaError> {
    c.prepare_cached(sql).and_then(|mut st| st.execute(params)).map(|n| n as u64).map_err(sqlite_err)
}

fn get<T: rusqlite::types::FromSql>(r: &Row<'_>, col: &str) -> Result<T, CaError> {
    r.get(col).map_err(sqlite_err)
}

fn json<T: serde::de::DeserializeOwned>(r: &Row<'_>, col: &str) -> Result<T, CaError> {
    serde_json::from_str(&get::<String>(r, col)?).map_err(|e| CaError::Store(format!("{col}: {e}")))
}

pub(super) fn account(r: &Row<'_>) -> Result<AcmeAccount, CaError> {
    Ok(AcmeAccount {
        id: get(r, "id")?,
        thumbprint: get(r, "thumbprint")?,
        jwk: get(r, "jwk")?,
        status: get(r, "status")?,
        contact: json(r, "contact")?,
        eab_kid: get(r, "eab_kid")?,
        created_at: get(r, "created_at")?,
        allowed_suffixes: json(r, "allowed_suffixes")?,
    })
}

pub(super) fn order(r: &Row<'_>) -> Result<AcmeOrder, CaError> {
    Ok(AcmeOrder {
        id: get(r, "id")?,
        account_id: get(r, "account_id")?,
        status: get(r, "status")?,
        identifiers: get(r, "identifiers")?,
        expires_at: get(r, "expires_at")?,
        error: get(r, "error")?,
        cert_serial: get(r, "cert_serial")?,
        created_at: get(r, "created_at")?,
        replaces: get(r, "replaces")?,
    })
}

pub(super) fn authz(r: &Row<'_>) -> Result<AcmeAuthz, CaError> {
    Ok(AcmeAuthz {
        id: get(r, "id")?,
        order_id: get(r, "order_id")?,
        account_id: get(r, "account_id")?,
        id_type: get(r, "id_type")?,
        id_value: get(r, "id_value")?,
        wildcard: get::<i64>(r, "wildcard")? != 0,
        status: get(r, "status")?,
        expires_at: get(r, "expires_at")?,
    })
}

pub(super) fn challenge(r: &Row<'_>) -> Result<AcmeChallenge, CaError> {
    Ok(AcmeChallenge {
        id: get(r, "id")?,
        authz_id: get(r, "authz_id")?,
        kind: get(r, "type")?,
        token: get(r, "token")?,
        status: get(r, "status")?,
        validated_at: get(r, "validated_at")?,
        error: get(r, "error")?,
    })
}
