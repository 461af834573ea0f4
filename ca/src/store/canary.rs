//! Canary records (`canaries`, migration 0015) and the one transaction that starts or decides a
//! canary: its row, the issuer journal's moves, the renewal windows it hands out and its audit
//! events commit together or not at all ([`JournalChange`]).

use super::Store;
use crate::issuers::IssuerState;
use crate::{AuditEvent, CaError};

/// Every canary, newest first.
pub(super) const CANARIES: &str = "SELECT rotation, successor, previous, prefix, fraction_ppm, started_at, soak_until, \
     state, decided_at, reason FROM canaries ORDER BY started_at DESC, rotation DESC";
/// Records a canary (binds: rotation, successor, previous, prefix, fraction_ppm, started, soak_until,
/// state, decided_at, reason).
pub(super) const INSERT_CANARY: &str = "INSERT INTO canaries (rotation, successor, previous, prefix, fraction_ppm, \
     started_at, soak_until, state, decided_at, reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
/// A soaking canary, if any: at most one soaks at a time.
pub(super) const SOAKING: &str = "SELECT COUNT(*) AS n FROM canaries WHERE state = 'soaking'";
/// Ends a soaking canary (binds: state, decided_at, reason, rotation).
pub(super) const DECIDE_CANARY: &str =
    "UPDATE canaries SET state = $1, decided_at = $2, reason = $3 WHERE rotation = $4 AND state = 'soaking'";
/// Holds an issuer to a state without changing it (binds: id, state): 1 row when it is in it.
pub(super) const GUARD_ISSUER: &str = "UPDATE issuers SET state = state WHERE id = $1 AND state = $2";
/// Asks the holder of one live certificate to renew (binds: start, end, serial).
pub(super) const ASK_ONE: &str = "UPDATE certificates SET replace_after = $1, replace_window_end = $2 \
     WHERE serial = $3 AND revoked_at IS NULL";
/// Live, never-renewed workload certificates of an issuer: (serial, sans) (binds: issuer, now).
pub(super) const LIVE_WORKLOADS: &str = "SELECT serial, sans FROM certificates WHERE issuer_id = $1 \
     AND not_after > $2 AND revoked_at IS NULL AND status = 'intent' AND profile = 'workload' \
     AND superseded_by IS NULL";

/// Where a canary stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanaryState {
    /// The successor signs for the canaries only, and the fleet's reports are watched.
    Soaking,
    /// The soak passed: the successor is the active intermediate.
    Completed,
    /// Refused handshakes or failed renewals (or an operator): the successor is retired and its
    /// certificates were asked to renew under the previous intermediate.
    RolledBack,
}

impl CanaryState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            CanaryState::Soaking => "soaking",
            CanaryState::Completed => "completed",
            CanaryState::RolledBack => "rolled_back",
        }
    }

    pub(super) fn parse(s: &str) -> Result<Self, CaError> {
        Ok(match s {
            "soaking" => CanaryState::Soaking,
            "completed" => CanaryState::Completed,
            "rolled_back" => CanaryState::RolledBack,
            other => return Err(CaError::Store(format!("unknown canary state {other:?}"))),
        })
    }
}

/// One canary activation of a successor intermediate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canary {
    /// The rotation id (in logs and audit events).
    pub rotation: String,
    /// The successor intermediate on trial (journal id).
    pub successor: String,
    /// The intermediate it would replace (journal id), which keeps signing for everyone else.
    pub previous: String,
    /// Canaries by SPIFFE-ID prefix.
    pub prefix: Option<String>,
    /// Canaries by share, in parts per million of workloads (stable per SPIFFE ID).
    pub fraction_ppm: i64,
    /// When it started (Unix seconds).
    pub started_at: i64,
    /// When the soak ends (Unix seconds): the successor is activated then unless rolled back.
    pub soak_until: i64,
    /// Where it stands.
    pub state: CanaryState,
    /// When it was decided (Unix seconds).
    pub decided_at: Option<i64>,
    /// Why it was decided so.
    pub reason: Option<String>,
}

impl Canary {
    /// Whether the workload `spiffe_id` is a canary: under the prefix, or in the share (the first
    /// four bytes of the SHA-256 of the ID, so every replica picks the same workloads).
    pub fn selects(&self, spiffe_id: &str) -> bool {
        if self.prefix.as_deref().is_some_and(|p| spiffe_id.starts_with(p)) {
            return true;
        }
        if self.fraction_ppm <= 0 {
            return false;
        }
        let d = ring::digest::digest(&ring::digest::SHA256, spiffe_id.as_bytes());
        let mut b = [0u8; 4];
        b.copy_from_slice(&d.as_ref()[..4]);
        u64::from(u32::from_be_bytes(b)) % 1_000_000 < u64::try_from(self.fraction_ppm).unwrap_or(0)
    }
}

/// One change of the issuer journal around a canary, committed as one transaction. Nothing
/// changes unless every guard holds, every move finds its issuer in `from` and the canary to
/// decide is still soaking.
#[derive(Debug, Clone, Default)]
pub struct JournalChange {
    /// A canary to record: a soaking one is refused while another one soaks; a decided one (an
    /// operator's rollback outside a canary) is history.
    pub start: Option<Canary>,
    /// A soaking canary to end: (rotation, new state, reason).
    pub decide: Option<(String, CanaryState, String)>,
    /// Issuers that must be in a state (and stay in it).
    pub guards: Vec<(String, IssuerState)>,
    /// Issuer moves (id, from, to).
    pub moves: Vec<(String, IssuerState, IssuerState)>,
    /// Certificates whose holders are asked to renew in `window`.
    pub ask_serials: Vec<String>,
    /// An issuer whose live certificates are all asked to renew in `window`.
    pub ask_issuer: Option<String>,
    /// The renewal window handed out (Unix seconds; RFC 9773 renewalInfo).
    pub window: (i64, i64),
    /// The time of the change (Unix seconds).
    pub at: i64,
    /// Its audit events.
    pub audit: Vec<AuditEvent>,
}

impl Store {
    /// Every canary, newest first.
    pub async fn canaries(&self) -> Result<Vec<Canary>, CaError> {
        on_backend!(self, canaries())
    }

    /// Live workload certificates of `issuer_id` that were never renewed: (serial, SANs).
    pub async fn live_workloads_of(&self, issuer_id: &str, now: i64) -> Result<Vec<(String, String)>, CaError> {
        on_backend!(self, live_workloads_of(issuer_id, now))
    }

    /// Commits `change` as one transaction. Returns None when a guard failed (nothing changed),
    /// else the number of certificates asked to renew.
    pub async fn change_journal(&self, change: JournalChange) -> Result<Option<i64>, CaError> {
        on_backend!(self, change_journal(change))
    }
}
