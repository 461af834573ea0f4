//! The shared fleet view on SQLite (one process per database file, so this is the same exchange
//! with nobody else; it keeps both backends behind one interface and under the same tests).

use super::rows::get;
use super::{SqliteDb, all, exec, one};
use crate::CaError;
use crate::fleet::SharedReport;
use crate::store::fleet_share::*;

impl SqliteDb {
    pub(in crate::store) async fn exchange_fleet(&self, ex: Exchange) -> Result<Exchanged, CaError> {
        self.write(move |c| {
            if !ex.reports.is_empty() {
                let v: i64 = one(c, NEXT_VERSION, [], |r| get(r, "version"))?
                    .ok_or_else(|| CaError::Store("fleet_sync has no row".into()))?;
                for r in &ex.reports {
                    exec(
                        c,
                        UPSERT_REPORT,
                        rusqlite::params![r.workload, r.serial, r.seen_ms, r.bundle_sequence, r.serving_issuer, v],
                    )?;
                }
            }
            for (rotation, t) in &ex.tallies {
                let [a, r, sg, f] = tally_columns(t);
                exec(c, ADD_TALLY, rusqlite::params![rotation, a, r, sg, f])?;
            }
            exec(c, PRUNE, [ex.prune_before])?;
            let reports = all(c, REPORTS_SINCE, (ex.since, ex.cutoff_ms), |r| {
                Ok(SharedReport {
                    workload: get(r, "workload")?,
                    serial: get(r, "serial")?,
                    seen_ms: get(r, "seen_ms")?,
                    bundle_sequence: get(r, "bundle_sequence")?,
                    serving_issuer: get(r, "serving_issuer")?,
                })
            })?;
            let version: i64 = one(c, LAST_VERSION, [], |r| get(r, "version"))?.unwrap_or(0);
            let tallies = all(c, TALLIES, [], |r| {
                let counts = [get(r, "accepted")?, get(r, "refused")?, get(r, "signed")?, get(r, "failed")?];
                Ok((get(r, "rotation")?, tally_from_columns(counts)))
            })?;
            Ok(Exchanged { reports, version, tallies })
        })
        .await
    }
}
