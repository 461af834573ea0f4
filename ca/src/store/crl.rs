//! Revocation lists: the revoked certificates of one issuer, and each issuer's latest CRL with its
//! number. Storing the CRL itself (not only its number) makes every replica serve one and the same
//! CRL for a given number; replacing it is a conditional UPDATE on the number it replaces, so two
//! replicas racing to regenerate cannot both win and the number never goes backwards.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sqlx::Row;
use time::OffsetDateTime;

use super::{Store, db_err, from_unix, unix};
use crate::CaError;

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
    /// `replaces` (None: there was none). False when another process got there first; the caller
    /// then reads the winner with [`Store::latest_crl`].
    pub async fn replace_crl(&self, issuer_id: &str, replaces: Option<i64>, crl: &StoredCrl) -> Result<bool, CaError> {
        let der = STANDARD.encode(&crl.der);
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
            .execute(&self.pool)
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
            .execute(&self.pool)
            .await
            .map_err(db_err)?,
        };
        Ok(r.rows_affected() == 1)
    }
}
