//! The fleet view shared between replicas ([`crate::fleet`]): one exchange writes what this
//! replica heard since the last one and reads what the others wrote, in one transaction.

use super::Store;
use crate::CaError;
use crate::fleet::SharedReport;

/// Takes the next version (under the counter's row lock: writers take turns, in commit order).
pub(super) const NEXT_VERSION: &str = "UPDATE fleet_sync SET version = version + 1 WHERE id = 1 RETURNING version";
/// Writes one report unless a newer one is there (binds: workload, serial, seen_ms, sequence,
/// serving issuer, version).
pub(super) const UPSERT_REPORT: &str = "INSERT INTO fleet_reports (workload, serial, seen_ms, bundle_sequence, \
     serving_issuer, version) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (workload) DO UPDATE SET \
     serial = excluded.serial, seen_ms = excluded.seen_ms, bundle_sequence = excluded.bundle_sequence, \
     serving_issuer = excluded.serving_issuer, version = excluded.version WHERE fleet_reports.seen_ms <= excluded.seen_ms";
/// Adds to a canary tally (binds: rotation, accepted, refused, failed).
pub(super) const ADD_TALLY: &str = "INSERT INTO fleet_tallies (rotation, accepted, refused, failed) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (rotation) DO UPDATE SET accepted = fleet_tallies.accepted + \
     excluded.accepted, refused = fleet_tallies.refused + excluded.refused, failed = fleet_tallies.failed + excluded.failed";
/// Reports written after a version, still within the horizon (binds: version, cutoff ms).
pub(super) const REPORTS_SINCE: &str = "SELECT workload, serial, seen_ms, bundle_sequence, serving_issuer, version \
     FROM fleet_reports WHERE version > $1 AND seen_ms > $2";
/// The newest version written.
pub(super) const LAST_VERSION: &str = "SELECT version FROM fleet_sync WHERE id = 1";
/// Every canary tally.
pub(super) const TALLIES: &str = "SELECT rotation, accepted, refused, failed FROM fleet_tallies";
/// Forgets reports older than a cutoff (binds: cutoff ms).
pub(super) const PRUNE: &str = "DELETE FROM fleet_reports WHERE seen_ms < $1";

/// One exchange: what to write, and from which version to read.
#[derive(Debug, Default)]
pub struct Exchange {
    /// Reports this replica received since the last exchange.
    pub reports: Vec<SharedReport>,
    /// Canary tally increments: (rotation, accepted, refused, failed).
    pub tallies: Vec<(String, i64, i64, i64)>,
    /// The version read up to last time.
    pub since: i64,
    /// Reports older than this are not read (Unix ms), and older than `prune_before` deleted.
    pub cutoff_ms: i64,
    /// Delete reports older than this (Unix ms).
    pub prune_before: i64,
}

/// What the exchange read back.
#[derive(Debug, Default)]
pub struct Exchanged {
    /// Reports written (by any replica) after `since`.
    pub reports: Vec<SharedReport>,
    /// The version now read up to.
    pub version: i64,
    /// Fleet-wide canary tallies: (rotation, accepted, refused, failed).
    pub tallies: Vec<(String, i64, i64, i64)>,
}

impl Store {
    /// Writes this replica's part of the fleet view and reads the others' ([`Exchange`]).
    pub async fn exchange_fleet(&self, ex: Exchange) -> Result<Exchanged, CaError> {
        on_backend!(self, exchange_fleet(ex))
    }
}
