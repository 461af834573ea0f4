//! The shared fleet view on PostgreSQL: replicas exchange their reports through the database.

use super::rows::get;
use super::{PgDb, db_err};
use crate::CaError;
use crate::fleet::SharedReport;
use crate::store::fleet_share::*;

impl PgDb {
    pub(in crate::store) async fn exchange_fleet(&self, ex: Exchange) -> Result<Exchanged, CaError> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        if !ex.reports.is_empty() {
            // The counter's row lock is held to the commit: a reader that sees version v has seen
            // every version below it committed.
            let v: i64 = get(&sqlx::query(NEXT_VERSION).fetch_one(&mut *tx).await.map_err(db_err)?, "version")?;
            for r in &ex.reports {
                sqlx::query(UPSERT_REPORT)
                    .bind(&r.workload)
                    .bind(&r.serial)
                    .bind(r.seen_ms)
                    .bind(r.bundle_sequence)
                    .bind(&r.serving_issuer)
                    .bind(v)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
            }
        }
        for (rotation, t) in &ex.tallies {
            let [a, r, sg, f] = tally_columns(t);
            sqlx::query(ADD_TALLY)
                .bind(rotation)
                .bind(a)
                .bind(r)
                .bind(sg)
                .bind(f)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        sqlx::query(PRUNE).bind(ex.prune_before).execute(&mut *tx).await.map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        // Read after the commit, outside the counter's lock. The version is read first: rows of a
        // version above it committed after it and are read next time.
        let version: i64 = get(&sqlx::query(LAST_VERSION).fetch_one(&self.pool).await.map_err(db_err)?, "version")?;
        let rows =
            sqlx::query(REPORTS_SINCE).bind(ex.since).bind(ex.cutoff_ms).fetch_all(&self.pool).await.map_err(db_err)?;
        let mut reports = Vec::with_capacity(rows.len());
        for r in &rows {
            let v: i64 = get(r, "version")?;
            if v > version {
                continue;
            }
            reports.push(SharedReport {
                workload: get(r, "workload")?,
                serial: get(r, "serial")?,
                seen_ms: get(r, "seen_ms")?,
                bundle_sequence: get(r, "bundle_sequence")?,
                serving_issuer: get(r, "serving_issuer")?,
            });
        }
        let rows = sqlx::query(TALLIES).fetch_all(&self.pool).await.map_err(db_err)?;
        let tallies = rows
            .iter()
            .map(|r| {
                let counts = [get(r, "accepted")?, get(r, "refused")?, get(r, "signed")?, get(r, "failed")?];
                Ok((get(r, "rotation")?, tally_from_columns(counts)))
            })
            .collect::<Result<_, CaError>>()?;
        Ok(Exchanged { reports, version, tallies })
    }
}
