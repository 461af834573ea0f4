//! Revocation lists on SQLite. A replacement is one write job holding SQLite's write lock, so its
//! guard (the number it replaces) sees every CRL recorded before, by any process.

use time::OffsetDateTime;

use super::rows::{self, get};
use super::{SqliteDb, all, exec, insert_audit, one};
use crate::store::crl::*;
use crate::store::unix;
use crate::{AuditEvent, CaError};

impl SqliteDb {
    pub(in crate::store) async fn revoked_certificates(
        &self,
        issuer_id: &str,
        not_after_above: OffsetDateTime,
    ) -> Result<Vec<RevokedCertificate>, CaError> {
        let (id, floor) = (issuer_id.to_owned(), unix(not_after_above));
        self.read(move |c| all(c, REVOKED_OF_ISSUER, (&id, floor), |r| rows::revoked(r))).await
    }

    pub(in crate::store) async fn latest_crl(&self, issuer_id: &str) -> Result<Option<StoredCrl>, CaError> {
        let id = issuer_id.to_owned();
        self.read(move |c| one(c, LATEST_CRL, [&id], |r| rows::crl(r, &id))).await
    }

    pub(in crate::store) async fn replace_crl(
        &self,
        issuer_id: &str,
        replaces: Option<i64>,
        crl: &StoredCrl,
        audit: &AuditEvent,
    ) -> Result<bool, CaError> {
        let id = issuer_id.to_owned();
        let (number, digest, this_update, next_update, der) =
            (crl.number, crl.digest.clone(), unix(crl.this_update), unix(crl.next_update), der_text(&crl.der));
        let ev = audit.clone();
        self.write(move |c| {
            let n = match replaces {
                None => exec(c, INSERT_CRL, (&id, number, &digest, this_update, next_update, &der))?,
                Some(previous) => {
                    exec(c, REPLACE_CRL, (number, &digest, this_update, next_update, &der, &id, previous))?
                }
            };
            if n != 1 {
                return Ok(false);
            }
            insert_audit(c, &ev)?;
            Ok(true)
        })
        .await
    }

    pub(in crate::store) async fn stage_crl(
        &self,
        issuer_id: &str,
        crl: &StoredCrl,
        publish_at: i64,
        rotation: &str,
        audit: &AuditEvent,
    ) -> Result<(), CaError> {
        let row = (
            issuer_id.to_owned(),
            crl.number,
            crl.digest.clone(),
            unix(crl.this_update),
            unix(crl.next_update),
            der_text(&crl.der),
            publish_at,
            rotation.to_owned(),
        );
        let ev = audit.clone();
        self.write(move |c| {
            exec(c, STAGE_CRL, (&row.0, row.1, &row.2, row.3, row.4, &row.5, row.6, &row.7))?;
            insert_audit(c, &ev)
        })
        .await
    }

    pub(in crate::store) async fn staged_crl_number(&self, issuer_id: &str) -> Result<Option<i64>, CaError> {
        let id = issuer_id.to_owned();
        self.read(move |c| one(c, STAGED_CRL_NUMBER, [&id], |r| get::<Option<i64>>(r, "n")).map(Option::flatten)).await
    }

    /// One write job: SQLite's write lock makes the whole publication one step for every process.
    pub(in crate::store) async fn publish_due_crls(&self, now: i64) -> Result<Vec<PublishedCrl>, CaError> {
        self.write(move |c| {
            let due = all(c, DUE_CRLS, [now], |r| {
                Ok((
                    get::<String>(r, "issuer_id")?,
                    get::<i64>(r, "number")?,
                    get::<String>(r, "digest")?,
                    get::<i64>(r, "this_update")?,
                    get::<i64>(r, "next_update")?,
                    get::<String>(r, "der")?,
                    get::<String>(r, "rotation")?,
                ))
            })?;
            let mut published = Vec::new();
            let mut done = std::collections::BTreeSet::new();
            for (issuer, number, digest, this_update, next_update, der, rotation) in due {
                if !done.insert(issuer.clone()) {
                    continue;
                }
                let latest: Option<i64> = one(c, LATEST_CRL_NUMBER, [&issuer], |r| get(r, "number"))?;
                let replaced = match latest {
                    Some(l) if l >= number => 0,
                    Some(l) => exec(c, REPLACE_CRL, (number, &digest, this_update, next_update, &der, &issuer, l))?,
                    None => exec(c, INSERT_CRL, (&issuer, number, &digest, this_update, next_update, &der))?,
                };
                if replaced == 1 {
                    insert_audit(c, &publish_event(&issuer, number, &rotation))?;
                }
                exec(c, DROP_STAGED, (&issuer, number))?;
                if replaced == 1 {
                    published.push(PublishedCrl { issuer_id: issuer, number, rotation });
                }
            }
            Ok(published)
        })
        .await
    }

    pub(in crate::store) async fn expedite_enforcement(&self, rotation: &str, at: i64) -> Result<bool, CaError> {
        let rotation = rotation.to_owned();
        self.write(move |c| {
            let staged = exec(c, EXPEDITE_STAGED, (at, &rotation))?;
            let recorded = exec(c, EXPEDITE_EMERGENCY, (at, &rotation))?;
            Ok(staged + recorded > 0)
        })
        .await
    }
}
