//! Revocation lists: the revoked certificates of one issuer, and each issuer's latest CRL with its
//! number. Storing the CRL itself (not only its number) makes every replica serve one and the same
//! CRL for a given number; replacing it is a conditional UPDATE on the number it replaces, so two
//! replicas racing to regenerate cannot both win and the number never goes backwards.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sqlx::Row;
use time::OffsetDateTime;

use super::writer::insert_audit;
use super::{Store, db_err, from_unix, unix};
use crate::{AuditEvent, CaError};

/// A revoked certificate, as a CRL lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedCertificate {
    /// Serial, hex.
    pub serial: String,
    /// When the CA processed the revocation.
    pub revoked_at: OffsetDateTime,
    /// RFC 5280 CRLReason code, if one was recorded.
    pub reason: Option<i32>,
    /// The certificate's NotAfter.
    pub not_after: OffsetDateTime,
}

/// The latest CRL of one issuer.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredCrl {
    /// CRL number (RFC 5280 section 5.2.3).
    pub number: i64,
    /// Digest of the revoked entries it lists (see `crate::crl::entries_digest`).
    pub digest: String,
    /// thisUpdate.
    pub this_update: OffsetDateTime,
    /// nextUpdate.
    pub next_update: OffsetDateTime,
    /// The signed CRL, DER.
    pub der: Vec<u8>,
}

impl std::fmt::Debug for StoredCrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCrl")
            .field("number", &self.number)
            .field("digest", &self.digest)
            .field("this_update", &self.this_update)
            .field("next_update", &self.next_update)
            .field("der_len", &self.der.len())
            .finish()
    }
}

impl Store {
    /// Certificates signed by `issuer_id` that are revoked and whose NotAfter is later than
    /// `not_after_above`, ordered by serial.
    pub async fn revoked_certificates(
        &self,
        issuer_id: &str,
        not_after_above: OffsetDateTime,
    ) -> Result<Vec<RevokedCertificate>, CaError> {
        let rows = sqlx::query(
            "SELECT serial, revoked_at, CAST(revocation_reason AS BIGINT) AS reason, not_after FROM certificates \
             WHERE issuer_id = $1 AND revoked_at IS NOT NULL AND not_after > $2 ORDER BY serial",
        )
        .bind(issuer_id)
        .bind(unix(not_after_above))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok(RevokedCertificate {
                    serial: r.try_get("serial").map_err(db_err)?,
                    revoked_at: from_unix(r.try_get("revoked_at").map_err(db_err)?)?,
                    reason: r.try_get::<Option<i64>, _>("reason").map_err(db_err)?.and_then(|n| i32::try_from(n).ok()),
                    not_after: from_unix(r.try_get("not_after").map_err(db_err)?)?,
                })
            })
            .collect()
    }

    /// The latest CRL of `issuer_id`, if one was ever made.
    pub async fn latest_crl(&self, issuer_id: &str) -> Result<Option<StoredCrl>, CaError> {
        let row =
            sqlx::query("SELECT number, digest, this_update, next_update, der FROM crl_state WHERE issuer_id = $1")
                .bind(issuer_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err)?;
        row.map(|r| {
            let der: String = r.try_get("der").map_err(db_err)?;
            Ok(StoredCrl {
                number: r.try_get("number").map_err(db_err)?,
                digest: r.try_get("digest").map_err(db_err)?,
                this_update: from_unix(r.try_get("this_update").map_err(db_err)?)?,
                next_update: from_unix(r.try_get("next_update").map_err(db_err)?)?,
                der: STANDARD.decode(der).map_err(|e| CaError::Store(format!("stored CRL of {issuer_id}: {e}")))?,
            })
        })
        .transpose()
    }

    /// Records `crl` as the latest CRL of `issuer_id` if the latest one is still number
    /// `replaces` (None: there was none), with its `audit` event in the same transaction. False
    /// (and nothing recorded) when another process got there first; the caller then reads the
    /// winner with [`Store::latest_crl`].
    pub async fn replace_crl(
        &self,
        issuer_id: &str,
        replaces: Option<i64>,
        crl: &StoredCrl,
        audit: &AuditEvent,
    ) -> Result<bool, CaError> {
        let der = STANDARD.encode(&crl.der);
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let r = match replaces {
            None => sqlx::query(
                "INSERT INTO crl_state (issuer_id, number, digest, this_update, next_update, der) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (issuer_id) DO NOTHING",
            )
            .bind(issuer_id)
            .bind(crl.number)
            .bind(&crl.digest)
            .bind(unix(crl.this_update))
            .bind(unix(crl.next_update))
            .bind(der)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?,
            Some(previous) => sqlx::query(
                "UPDATE crl_state SET number = $1, digest = $2, this_update = $3, next_update = $4, der = $5 \
                 WHERE issuer_id = $6 AND number = $7 AND $1 > number",
            )
            .bind(crl.number)
            .bind(&crl.digest)
            .bind(unix(crl.this_update))
            .bind(unix(crl.next_update))
            .bind(der)
            .bind(issuer_id)
            .bind(previous)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?,
        };
        if r.rows_affected() != 1 {
            return Ok(false);
        }
        insert_audit(self.backend, &mut tx, audit).await.map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }
}

/// A root CRL that a staged (fleet-gated) emergency revocation published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedCrl {
    /// The root whose CRL it is.
    pub issuer_id: String,
    /// Its CRL number.
    pub number: i64,
    /// The emergency rotation it enforces.
    pub rotation: String,
}

impl Store {
    /// Parks `crl`, signed now, as a future CRL of `issuer_id` that [`Store::publish_due_crls`]
    /// makes the latest at `publish_at`; it enforces emergency `rotation`. Its `audit` event (the
    /// signing) commits with it.
    pub async fn stage_crl(
        &self,
        issuer_id: &str,
        crl: &StoredCrl,
        publish_at: i64,
        rotation: &str,
        audit: &AuditEvent,
    ) -> Result<(), CaError> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        sqlx::query(
            "INSERT INTO staged_crls (issuer_id, number, digest, this_update, next_update, der, publish_at, rotation) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(issuer_id)
        .bind(crl.number)
        .bind(&crl.digest)
        .bind(unix(crl.this_update))
        .bind(unix(crl.next_update))
        .bind(STANDARD.encode(&crl.der))
        .bind(publish_at)
        .bind(rotation)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        insert_audit(self.backend, &mut tx, audit).await.map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    /// The highest CRL number staged for `issuer_id` and not yet published, if any.
    pub async fn staged_crl_number(&self, issuer_id: &str) -> Result<Option<i64>, CaError> {
        let r = sqlx::query("SELECT MAX(number) AS n FROM staged_crls WHERE issuer_id = $1")
            .bind(issuer_id)
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
        r.try_get::<Option<i64>, _>("n").map_err(db_err)
    }

    /// Makes every staged CRL whose time has come the latest CRL of its issuer (the newest due
    /// one per issuer, if it is newer than the latest), with a `crl.publish` audit event in the
    /// same transaction, and drops staged CRLs it supersedes. Any replica may call it at any
    /// time: two racing replicas publish once (the conditional replace), and a staged CRL older
    /// than the latest is dropped rather than published.
    pub async fn publish_due_crls(&self, now: i64) -> Result<Vec<PublishedCrl>, CaError> {
        let due = sqlx::query(
            "SELECT issuer_id, number, digest, this_update, next_update, der, rotation FROM staged_crls \
             WHERE publish_at <= $1 ORDER BY issuer_id, number DESC",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        let mut published = Vec::new();
        let mut done = std::collections::BTreeSet::new();
        for r in &due {
            let issuer: String = r.try_get("issuer_id").map_err(db_err)?;
            if !done.insert(issuer.clone()) {
                continue;
            }
            let number: i64 = r.try_get("number").map_err(db_err)?;
            let rotation: String = r.try_get("rotation").map_err(db_err)?;
            let mut tx = self.pool.begin().await.map_err(db_err)?;
            let latest: Option<i64> = sqlx::query("SELECT number FROM crl_state WHERE issuer_id = $1")
                .bind(&issuer)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?
                .map(|l| l.try_get("number"))
                .transpose()
                .map_err(db_err)?;
            let (digest, this_update, next_update, der): (String, i64, i64, String) = (
                r.try_get("digest").map_err(db_err)?,
                r.try_get("this_update").map_err(db_err)?,
                r.try_get("next_update").map_err(db_err)?,
                r.try_get("der").map_err(db_err)?,
            );
            let replaced = match latest {
                Some(l) if l >= number => 0,
                Some(l) => sqlx::query(
                    "UPDATE crl_state SET number = $1, digest = $2, this_update = $3, next_update = $4, der = $5 \
                     WHERE issuer_id = $6 AND number = $7",
                )
                .bind(number)
                .bind(&digest)
                .bind(this_update)
                .bind(next_update)
                .bind(&der)
                .bind(&issuer)
                .bind(l)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?
                .rows_affected(),
                None => sqlx::query(
                    "INSERT INTO crl_state (issuer_id, number, digest, this_update, next_update, der) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (issuer_id) DO NOTHING",
                )
                .bind(&issuer)
                .bind(number)
                .bind(&digest)
                .bind(this_update)
                .bind(next_update)
                .bind(&der)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?
                .rows_affected(),
            };
            if replaced == 1 {
                let ev = crate::AuditEvent::now(
                    "ca",
                    "crl.publish",
                    &issuer,
                    crate::Outcome::Success,
                    format!("root CRL number {number} published: emergency rotation {rotation} enforced"),
                );
                insert_audit(self.backend, &mut tx, &ev).await.map_err(db_err)?;
            }
            sqlx::query("DELETE FROM staged_crls WHERE issuer_id = $1 AND number <= $2")
                .bind(&issuer)
                .bind(number)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
            if replaced == 1 {
                published.push(PublishedCrl { issuer_id: issuer, number, rotation });
            }
        }
        Ok(published)
    }

    /// Brings the enforcement of emergency `rotation` forward to `at` (never later than planned):
    /// its staged CRL and its recorded enforcement time. Returns whether anything moved.
    pub async fn expedite_enforcement(&self, rotation: &str, at: i64) -> Result<bool, CaError> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let staged = sqlx::query("UPDATE staged_crls SET publish_at = $1 WHERE rotation = $2 AND publish_at > $1")
            .bind(at)
            .bind(rotation)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
        let recorded = sqlx::query("UPDATE emergencies SET enforce_at = $1 WHERE id = $2 AND enforce_at > $1")
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
