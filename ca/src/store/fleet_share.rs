//! The fleet view shared between replicas ([`crate::fleet`]): one exchange writes what this
//! replica heard since the last one and reads what the others wrote, in one transaction.

use super::Store;
use crate::CaError;
use crate::fleet::{CanaryTally, SharedReport};

/// Takes the next version (under the counter's row lock: writers take turns, in commit order).
pub(super) const NEXT_VERSION: &str = "UPDATE fleet_sync SET version = version + 1 WHERE id = 1 RETURNING version";
/// Writes one report unless a newer one is there (binds: workload, serial, seen_ms, sequence,
/// serving issuer, version).
pub(super) const UPSERT_REPORT: &str = "INSERT INTO fleet_reports (workload, serial, seen_ms, bundle_sequence, \
     serving_issuer, version) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (workload) DO UPDATE SET \
     serial = excluded.serial, seen_ms = excluded.seen_ms, bundle_sequence = excluded.bundle_sequence, \
     serving_issuer = excluded.serving_issuer, version = excluded.version WHERE fleet_reports.seen_ms <= excluded.seen_ms";
/// Adds to a canary tally (binds: rotation, accepted, refused, signed, failed).
pub(super) const ADD_TALLY: &str = "INSERT INTO fleet_tallies (rotation, accepted, refused, signed, failed) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (rotation) DO UPDATE SET accepted = fleet_tallies.accepted + \
     excluded.accepted, refused = fleet_tallies.refused + excluded.refused, signed = fleet_tallies.signed + \
     excluded.signed, failed = fleet_tallies.failed + excluded.failed";
/// Reports written after a version, still within the horizon (binds: version, cutoff ms).
pub(super) const REPORTS_SINCE: &str = "SELECT workload, serial, seen_ms, bundle_sequence, serving_issuer, version \
     FROM fleet_reports WHERE version > $1 AND seen_ms > $2";
/// The newest version written.
pub(super) const LAST_VERSION: &str = "SELECT version FROM fleet_sync WHERE id = 1";
/// Every canary tally.
pub(super) const TALLIES: &str = "SELECT rotation, accepted, refused, signed, failed FROM fleet_tallies";
/// Forgets reports older than a cutoff (binds: cutoff ms).
pub(super) const PRUNE: &str = "DELETE FROM fleet_reports WHERE seen_ms < $1";

/// One exchange: what to write, and from which version to read.
#[derive(Debug, Default)]
pub struct Exchange {
    /// Reports this replica received since the last exchange.
    pub reports: Vec<SharedReport>,
    /// Canary tally increments.
    pub tallies: Vec<(String, CanaryTally)>,
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
    /// Fleet-wide canary tallies.
    pub tallies: Vec<(String, CanaryTally)>,
}

/// A tally's counts as the BIGINT columns bind them: accepted, refused, signed, failed.
pub(super) fn tally_columns(t: &CanaryTally) -> [i64; 4] {
    [t.accepted, t.refused, t.signed, t.failed].map(|n| i64::try_from(n).unwrap_or(i64::MAX))
}

/// A `fleet_tallies` row's counts (negative values, which no writer makes, read as 0).
pub(super) fn tally_from_columns([accepted, refused, signed, failed]: [i64; 4]) -> CanaryTally {
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    CanaryTally { accepted: n(accepted), refused: n(refused), signed: n(signed), failed: n(failed) }
}

impl Store {
    /// Writes this replica's part of the fleet view and reads the others' ([`Exchange`]).
    pub async fn exchange_fleet(&self, ex: Exchange) -> Result<Exchanged, CaError> {
        on_backend!(self, exchange_fleet(ex))
    }
}
