//! Revocation lists on PostgreSQL. A replacement is a conditional UPDATE on the number it
//! replaces, so two replicas racing to regenerate cannot both win; publishing staged CRLs takes
//! one transaction per issuer.

use sqlx::Row;
use time::OffsetDateTime;

use super::rows::{self, get};
use super::{PgDb, db_err, insert_audit};
use crate::store::crl::*;
use crate::store::unix;
use crate::{AuditEvent, CaError};

impl PgDb {
    pub(in crate::store) async fn revoked_certificates(
        &self,
        issuer_id: &str,
        not_after_above: OffsetDateTime,
    ) -> Result<Vec<RevokedCertificate>, CaError> {
        let rows = sqlx::query(REVOKED_OF_ISSUER)
            .bind(issuer_id)
            .bind(unix(not_after_above))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(rows::revoked).collect()
    }

    pub(in crate::store) async fn latest_crl(&self, issuer_id: &str) -> Result<Option<StoredCrl>, CaError> {
        let row = sqlx::query(LATEST_CRL).bind(issuer_id).fetch_optional(&self.pool).await.map_err(db_err)?;
        row.map(|r| rows::crl(&r, issuer_id)).transpose()
    }

    pub(in crate::store) async fn replace_crl(
        &self,
        issuer_id: &str,
        replaces: Option<i64>,
        crl: &StoredCrl,
        audit: &AuditEvent,
    ) -> Result<bool, CaError> {
        let der = der_text(&crl.der);
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let q = match replaces {
            None => sqlx::query(INSERT_CRL)
                .bind(issuer_id)
                .bind(crl.number)
                .bind(&crl.digest)
                .bind(unix(crl.this_update))
                .bind(unix(crl.next_update))
                .bind(der),
            Some(previous) => sqlx::query(REPLACE_CRL)
                .bind(crl.number)
                .bind(&crl.digest)
                .bind(unix(crl.this_update))
                .bind(unix(crl.next_update))
                .bind(der)
                .bind(issuer_id)
                .bind(previous),
        };
        if q.execute(&mut *tx).await.map_err(db_err)?.rows_affected() != 1 {
            return Ok(false);
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }

    pub(in crate::store) async fn stage_crl(
        &self,
        issuer_id: &str,
        crl: &StoredCrl,
        publish_at: i64,
        rotation: &str,
        audit: &AuditEvent,
    ) -> Result<(), CaError> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        sqlx::query(STAGE_CRL)
            .bind(issuer_id)
            .bind(crl.number)
            .bind(&crl.digest)
            .bind(unix(crl.this_update))
            .bind(unix(crl.next_update))
            .bind(der_text(&crl.der))
            .bind(publish_at)
            .bind(rotation)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(db_err)
    }

    pub(in crate::store) async fn staged_crl_number(&self, issuer_id: &str) -> Result<Option<i64>, CaError> {
        let r = sqlx::query(STAGED_CRL_NUMBER).bind(issuer_id).fetch_one(&self.pool).await.map_err(db_err)?;
        get(&r, "n")
    }

    pub(in crate::store) async fn publish_due_crls(&self, now: i64) -> Result<Vec<PublishedCrl>, CaError> {
        let due = sqlx::query(DUE_CRLS).bind(now).fetch_all(&self.pool).await.map_err(db_err)?;
        let mut published = Vec::new();
        let mut done = std::collections::BTreeSet::new();
        for r in &due {
            let issuer: String = get(r, "issuer_id")?;
            if !done.insert(issuer.clone()) {
                continue;
            }
            let number: i64 = get(r, "number")?;
            let rotation: String = get(r, "rotation")?;
            let (digest, this_update, next_update, der): (String, i64, i64, String) =
                (get(r, "digest")?, get(r, "this_update")?, get(r, "next_update")?, get(r, "der")?);
            let mut tx = self.pool.begin().await.map_err(db_err)?;
            let latest: Option<i64> = sqlx::query(LATEST_CRL_NUMBER)
                .bind(&issuer)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?
                .map(|l| l.try_get("number"))
                .transpose()
                .map_err(db_err)?;
            let q = match latest {
                Some(l) if l >= number => None,
                Some(l) => Some(
                    sqlx::query(REPLACE_CRL)
                        .bind(number)
                        .bind(&digest)
                        .bind(this_update)
                        .bind(next_update)
                        .bind(&der)
                        .bind(&issuer)
                        .bind(l),
                ),
                None => Some(
                    sqlx::query(INSERT_CRL)
                        .bind(&issuer)
                        .bind(number)
                        .bind(&digest)
                        .bind(this_update)
                        .bind(next_update)
                        .bind(&der),
                ),
            };
            let replaced = match q {
                Some(q) => q.execute(&mut *tx).await.map_err(db_err)?.rows_affected() == 1,
                None => false,
            };
            sqlx::query(DROP_STAGED).bind(&issuer).bind(number).execute(&mut *tx).await.map_err(db_err)?;
            // Last, after every row it changes: see `acme_finish_challenge`.
            if replaced {
                insert_audit(&mut tx, &publish_event(&issuer, number, &rotation)).await?;
            }
            tx.commit().await.map_err(db_err)?;
            if replaced {
                published.push(PublishedCrl { issuer_id: issuer, number, rotation });
            }
        }
        Ok(published)
    }

    pub(in crate::store) async fn expedite_enforcement(&self, rotation: &str, at: i64) -> Result<bool, CaError> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let staged = sqlx::query(EXPEDITE_STAGED)
            .bind(at)
            .bind(rotation)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
        let recorded = sqlx::query(EXPEDITE_EMERGENCY)
            .bind(at)
            .bind(rotation)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
        tx.commit().await.map_err(db_err)?;
        Ok(staged + recorded > 0)
    }
}
