//! Emergency rotation records on SQLite.

use super::rows::{self, get};
use super::{SqliteDb, all, exec, insert_audit, one};
use crate::store::emergency::*;
use crate::{AuditEvent, CaError};

impl SqliteDb {
    pub(in crate::store) async fn begin_emergency(
        &self,
        id: &str,
        issuer_id: &str,
        (start, end): (i64, i64),
        enforce: Option<(i64, i64)>,
        now: i64,
        audit: impl Fn(i64) -> AuditEvent + Send + Sync + 'static,
    ) -> Result<i64, CaError> {
        let (id, issuer) = (id.to_owned(), issuer_id.to_owned());
        self.write(move |c| {
            let affected = i64::try_from(exec(c, ASK_RENEWAL, (start, end, &issuer, now))?).unwrap_or(i64::MAX);
            exec(c, INSERT_EMERGENCY, (&id, &issuer, now, affected, enforce.map(|e| e.0), enforce.map(|e| e.1)))?;
            insert_audit(c, &audit(affected))?;
            Ok(affected)
        })
        .await
    }

    pub(in crate::store) async fn replacement_window(
        &self,
        serial: &str,
    ) -> Result<Option<(i64, Option<i64>)>, CaError> {
        let key = serial.to_owned();
        let row = self
            .read(move |c| {
                one(c, REPLACEMENT_WINDOW, [&key], |r| {
                    Ok((get::<Option<i64>>(r, "replace_after")?, get::<Option<i64>>(r, "replace_window_end")?))
                })
            })
            .await?;
        Ok(row.and_then(|(start, end)| start.map(|s| (s, end))))
    }

    pub(in crate::store) async fn emergency_outstanding(&self, issuer_id: &str, now: i64) -> Result<i64, CaError> {
        let id = issuer_id.to_owned();
        self.read(move |c| count(c, OUTSTANDING, (&id, now))).await
    }

    pub(in crate::store) async fn emergencies(&self) -> Result<Vec<Emergency>, CaError> {
        self.read(|c| all(c, EMERGENCIES, [], |r| rows::emergency(r))).await
    }

    pub(in crate::store) async fn complete_emergency(&self, id: &str, at: i64) -> Result<(), CaError> {
        let id = id.to_owned();
        self.write(move |c| exec(c, COMPLETE, (at, &id)).map(|_| ())).await
    }

    pub(in crate::store) async fn valid_certificates_of(&self, issuer_id: &str, now: i64) -> Result<i64, CaError> {
        let id = issuer_id.to_owned();
        self.read(move |c| count(c, VALID_OF_ISSUER, (&id, now))).await
    }
}

/// The `n` of a `SELECT COUNT(*) AS n` query.
fn count(c: &rusqlite::Connection, sql: &str, params: impl rusqlite::Params) -> Result<i64, CaError> {
    Ok(one(c, sql, params, |r| get(r, "n"))?.unwrap_or(0))
}
