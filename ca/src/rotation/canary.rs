//! Canary activation of a successor intermediate, and rollback.
//!
//! ```text
//!   prepared B ──begin──► B signs for the canaries only (soaking; A signs for everyone else)
//!       │                   canaries' certificates under A are asked to renew, so they move to B
//!       ├──soak passed, reports clean──► B active, A retired (one transaction)
//!       └──refusals above threshold, failed canary renewals, or `rotate rollback`──►
//!             B retired (signs nothing more), B's certificates asked to renew: back under A
//! ```
//!
//! Canaries are picked by SPIFFE ID (a prefix, or a stable share of the ID space), so every replica
//! picks the same workloads without coordination. What a canary is judged on comes from the
//! fleet's trust reports ([`crate::fleet`]): handshakes refused for a trust reason (anything but
//! `identity`) by any workload since the canary started — the canaries' peers refuse the new chain,
//! or the canaries refuse their peers — and canary renewals that failed at the CA. Every decision
//! is an audit event that names the rotation, committed with the journal change it makes.

use std::time::Duration;

use time::OffsetDateTime;
use tracing::{info, warn};

use crate::audit::{AuditEvent, Outcome};
use crate::fleet::{CanaryTally, Fleet};
use crate::issuers::{IssuerKind, IssuerRecord, IssuerState};
use crate::store::canary::{Canary, CanaryState, JournalChange};
use crate::{CaError, Store};

/// `[rotation.canary]`: how scheduled rotations canary their successor. Off unless a `prefix` or
/// a `fraction` is set.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CanaryPolicy {
    /// Canaries by SPIFFE-ID prefix (`spiffe://example.org/canary/`).
    pub prefix: Option<String>,
    /// Canaries by share of the workloads, 0 to 1 (stable per SPIFFE ID).
    pub fraction: f64,
    /// How long the canaries run on the successor before it is activated for everyone.
    #[serde(with = "humantime_serde")]
    pub soak: Duration,
    /// Roll back when more than this share of the handshakes reported since the canary started
    /// were refused for a trust reason...
    pub max_refused_ratio: f64,
    /// ...and at least this many were (so one stray refusal in a quiet fleet does not decide).
    pub min_refused: u64,
    /// Roll back when more canary renewals than this failed at the CA.
    pub max_failed_renewals: u64,
    /// Renewal window handed to the canaries (moving to the successor) and, on rollback, to the
    /// holders of the successor's certificates (moving back): jitter against a thundering herd.
    #[serde(with = "humantime_serde")]
    pub renew_spread: Duration,
    /// After a canary passes, the rest of the fleet is asked to renew onto the successor over
    /// this window (jittered), so the rotation converges and the previous intermediate can
    /// expire early; "0s": workloads move at their own next renewal.
    #[serde(with = "humantime_serde")]
    pub rollout: Duration,
    /// After a rollback, scheduled rotation waits this long before it prepares or canaries a
    /// new successor, so an operator can look before the next attempt.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
}

impl Default for CanaryPolicy {
    fn default() -> Self {
        CanaryPolicy {
            prefix: None,
            fraction: 0.0,
            soak: Duration::from_secs(15 * 60),
            max_refused_ratio: 0.01,
            min_refused: 3,
            max_failed_renewals: 0,
            renew_spread: Duration::from_secs(30),
            rollout: Duration::from_secs(10 * 60),
            retry_after: Duration::from_secs(3600),
        }
    }
}

impl CanaryPolicy {
    /// Whether scheduled rotations canary their successor.
    pub fn enabled(&self) -> bool {
        self.prefix.is_some() || self.fraction > 0.0
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<(), CaError> {
        if !(0.0..=1.0).contains(&self.fraction) {
            return Err(CaError::Config("[rotation.canary] fraction must be in [0, 1]".into()));
        }
        if let Some(p) = &self.prefix
            && !p.starts_with("spiffe://")
        {
            return Err(CaError::Config(format!("[rotation.canary] prefix {p:?} must start with spiffe://")));
        }
        if !(0.0..=1.0).contains(&self.max_refused_ratio) {
            return Err(CaError::Config("[rotation.canary] max_refused_ratio must be in [0, 1]".into()));
        }
        if self.soak.is_zero() {
            return Err(CaError::Config("[rotation.canary] soak must be > 0".into()));
        }
        Ok(())
    }

    /// What a scheduled canary picks.
    pub fn spec(&self) -> CanarySpec {
        CanarySpec { prefix: self.prefix.clone(), fraction: self.fraction, soak: self.soak }
    }
}

/// Which workloads a canary picks, and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct CanarySpec {
    /// SPIFFE-ID prefix.
    pub prefix: Option<String>,
    /// Share of the workloads, 0 to 1.
    pub fraction: f64,
    /// Soak period.
    pub soak: Duration,
}

/// What the rotation loop decided about the soaking canary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CanaryDecision {
    /// Keep soaking.
    Soak,
    /// The successor is active now.
    Completed {
        /// The rotation.
        rotation: String,
        /// The new active intermediate.
        successor: String,
    },
    /// The successor is retired; `affected` of its certificates were asked to renew.
    RolledBack {
        /// The rotation.
        rotation: String,
        /// The discarded successor.
        successor: String,
        /// The intermediate that signs again for everyone.
        previous: String,
        /// Why.
        reason: String,
        /// Certificates asked to renew.
        affected: i64,
    },
}

/// The verdict on a soaking canary at `now`: roll back (with why), complete, or keep soaking.
pub fn judge(c: &Canary, p: &CanaryPolicy, s: &CanaryTally, now: i64) -> Result<Option<String>, String> {
    if s.failed > p.max_failed_renewals {
        return Err(format!(
            "{} canary renewals failed at the CA (at most {} allowed)",
            s.failed, p.max_failed_renewals
        ));
    }
    let total = s.accepted.saturating_add(s.refused);
    #[allow(clippy::cast_precision_loss)] // handshake counts far below 2^52
    let ratio = if total == 0 { 0.0 } else { s.refused as f64 / total as f64 };
    if s.refused >= p.min_refused.max(1) && ratio > p.max_refused_ratio {
        return Err(format!(
            "{} of {} handshakes reported since the canary started were refused for a trust reason ({:.1} %, \
             at most {:.1} % allowed)",
            s.refused,
            total,
            ratio * 100.0,
            p.max_refused_ratio * 100.0
        ));
    }
    if now >= c.soak_until {
        return Ok(Some(format!("soak passed: {} handshakes accepted, {} refused", s.accepted, s.refused)));
    }
    Ok(None)
}

/// The renewal window handed out at `now` (Unix seconds): it opens after two seconds, by when
/// every replica (each re-reads the journal every second) signs with the new choice of issuer,
/// and spans `spread` (at least a second).
fn renewal_window(now: i64, spread: Duration) -> (i64, i64) {
    let start = now.saturating_add(2);
    (start, start.saturating_add(crate::units::secs(spread).max(1)))
}

fn intermediate(journal: &[IssuerRecord], state: IssuerState) -> Option<&IssuerRecord> {
    journal.iter().find(|r| r.kind == IssuerKind::Intermediate && r.state == state)
}

/// Starts a canary of the prepared successor: it signs for the workloads `spec` picks, whose
/// live certificates under the active intermediate are asked to renew within `spread`. Returns
/// the canary and how many certificates were asked to renew.
pub async fn begin(
    store: &Store,
    spec: &CanarySpec,
    spread: Duration,
    rotation: &str,
    actor: &str,
) -> Result<(Canary, i64), CaError> {
    if spec.prefix.is_none() && spec.fraction <= 0.0 {
        return Err(CaError::Config("a canary needs a SPIFFE-ID prefix or a fraction above 0".into()));
    }
    if !(0.0..=1.0).contains(&spec.fraction) {
        return Err(CaError::Config("a canary fraction must be in [0, 1]".into()));
    }
    let journal = store.issuers().await?;
    let previous = intermediate(&journal, IssuerState::Active).ok_or(CaError::NoActiveIssuer)?.clone();
    let successor = intermediate(&journal, IssuerState::Prepared)
        .ok_or_else(|| CaError::Config("no prepared intermediate to canary".into()))?
        .clone();
    if successor.parent_id != previous.parent_id {
        return Err(CaError::Config(format!(
            "the prepared intermediate {} is under another root than the active one: a root rotation activates \
             it, not a canary",
            successor.id
        )));
    }
    let now = OffsetDateTime::now_utc().unix_timestamp();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // fraction checked in [0, 1]
    let fraction_ppm = (spec.fraction * 1_000_000.0).round() as i64;
    let canary = Canary {
        rotation: rotation.to_owned(),
        successor: successor.id.clone(),
        previous: previous.id.clone(),
        prefix: spec.prefix.clone(),
        fraction_ppm,
        started_at: now,
        soak_until: now.saturating_add(crate::units::secs(spec.soak).max(1)),
        state: CanaryState::Soaking,
        decided_at: None,
        reason: None,
    };
    let picked: Vec<String> = store
        .live_workloads_of(&previous.id, now)
        .await?
        .into_iter()
        .filter(|(_, sans)| sans.split(',').any(|s| s.starts_with("spiffe://") && canary.selects(s)))
        .map(|(serial, _)| serial)
        .collect();
    let window = renewal_window(now, spread);
    let who = match (&spec.prefix, fraction_ppm) {
        (Some(p), 0) => format!("SPIFFE IDs under {p}"),
        (Some(p), n) => format!("SPIFFE IDs under {p} and {:.2} % of the others", n as f64 / 10_000.0),
        (None, n) => format!("{:.2} % of the workloads", n as f64 / 10_000.0),
    };
    let ev = AuditEvent::now(
        actor,
        "rotation.canary_start",
        &successor.id,
        Outcome::Success,
        format!(
            "rotation {rotation}: {} signs for canaries ({who}) until {}, {} signs for the rest; {} live canary \
             certificates asked to renew",
            successor.id,
            OffsetDateTime::from_unix_timestamp(canary.soak_until).map(crate::issuers::rfc3339).unwrap_or_default(),
            previous.id,
            picked.len()
        ),
    );
    let change = JournalChange {
        start: Some(canary.clone()),
        guards: vec![(successor.id.clone(), IssuerState::Prepared), (previous.id.clone(), IssuerState::Active)],
        ask_serials: picked,
        window,
        at: now,
        audit: vec![ev],
        ..JournalChange::default()
    };
    match store.change_journal(change).await? {
        Some(asked) => {
            info!(rotation, successor = %successor.id, previous = %previous.id, asked, soak_until = canary.soak_until, "canary started");
            Ok((canary, asked))
        }
        None => Err(CaError::Config(
            "a canary is already soaking, or the issuer journal changed; see `lanyard-ca status`".into(),
        )),
    }
}

/// The soaking canary, if any.
pub async fn soaking(store: &Store) -> Result<Option<Canary>, CaError> {
    Ok(store.canaries().await?.into_iter().find(|c| c.state == CanaryState::Soaking))
}

/// Judges the soaking canary (the replica holding the rotation lease, every check interval) and
/// carries out the verdict. The fleet view counts the handshakes reported from the first time
/// this replica looks at the canary.
pub async fn tick(store: &Store, fleet: &Fleet, p: &CanaryPolicy, now: i64) -> Result<CanaryDecision, CaError> {
    let Some(c) = soaking(store).await? else { return Ok(CanaryDecision::Soak) };
    let journal = store.issuers().await?;
    let in_state = |id: &str, s: IssuerState| journal.iter().any(|r| r.id == id && r.state == s);
    if !in_state(&c.successor, IssuerState::Prepared) || !in_state(&c.previous, IssuerState::Active) {
        // An emergency or a root rotation replaced the intermediates on trial: nothing to decide.
        return abandon(store, &c, p.renew_spread).await;
    }
    fleet.start_tally(&c.rotation);
    let signals = fleet.tally(&c.rotation).unwrap_or_default();
    match judge(&c, p, &signals, now) {
        Ok(None) => Ok(CanaryDecision::Soak),
        Ok(Some(note)) => complete(store, &c, &note, p.rollout).await,
        Err(reason) => roll_back(store, &c, &reason, "ca", p.renew_spread).await,
    }
}

/// Ends a canary whose successor or previous intermediate was moved by something else (an
/// emergency rotation or a root rotation discards the prepared successor): recorded as rolled
/// back, and the holders of the successor's certificates are asked to renew under whatever is
/// active now.
async fn abandon(store: &Store, c: &Canary, spread: Duration) -> Result<CanaryDecision, CaError> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let reason = "the journal moved on: the successor is no longer prepared or the previous intermediate no \
                  longer active (an emergency or a root rotation)";
    let change = JournalChange {
        decide: Some((c.rotation.clone(), CanaryState::RolledBack, reason.to_owned())),
        ask_issuer: Some(c.successor.clone()),
        window: renewal_window(now, spread),
        at: now,
        audit: vec![AuditEvent::now(
            "ca",
            "rotation.rollback",
            &c.successor,
            Outcome::Success,
            format!("rotation {}: canary abandoned: {reason}", c.rotation),
        )],
        ..JournalChange::default()
    };
    commit_rollback(store, c, reason, change).await
}

/// Commits a rollback's journal change; [`CanaryDecision::Soak`] when the journal had moved.
async fn commit_rollback(
    store: &Store,
    c: &Canary,
    reason: &str,
    change: JournalChange,
) -> Result<CanaryDecision, CaError> {
    match store.change_journal(change).await? {
        Some(affected) => {
            warn!(rotation = %c.rotation, successor = %c.successor, previous = %c.previous, affected, reason, "canary rolled back");
            Ok(CanaryDecision::RolledBack {
                rotation: c.rotation.clone(),
                successor: c.successor.clone(),
                previous: c.previous.clone(),
                reason: reason.to_owned(),
                affected,
            })
        }
        None => Ok(CanaryDecision::Soak),
    }
}

/// Activates the canary's successor for everyone and retires the previous intermediate.
async fn complete(store: &Store, c: &Canary, note: &str, rollout: Duration) -> Result<CanaryDecision, CaError> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let ask = (!rollout.is_zero()).then(|| c.previous.clone());
    let audit = vec![
        AuditEvent::now(
            "ca",
            "rotation.canary_complete",
            &c.successor,
            Outcome::Success,
            format!("rotation {}: {note}", c.rotation),
        ),
        AuditEvent::now(
            "ca",
            "issuer.activate",
            &c.successor,
            Outcome::Success,
            format!("rotation {}: activated after its canary, retiring {}", c.rotation, c.previous),
        ),
    ];
    let change = JournalChange {
        decide: Some((c.rotation.clone(), CanaryState::Completed, note.to_owned())),
        moves: vec![
            (c.previous.clone(), IssuerState::Active, IssuerState::Retired),
            (c.successor.clone(), IssuerState::Prepared, IssuerState::Active),
        ],
        ask_issuer: ask,
        // The rest of the fleet renews onto the successor across the rollout window.
        window: renewal_window(now, rollout),
        at: now,
        audit,
        ..JournalChange::default()
    };
    match store.change_journal(change).await? {
        Some(asked) => {
            info!(rotation = %c.rotation, active = %c.successor, retired = %c.previous, asked, rollout_s = rollout.as_secs(), note, "canary passed: successor active, the fleet renews onto it");
            Ok(CanaryDecision::Completed { rotation: c.rotation.clone(), successor: c.successor.clone() })
        }
        None => Ok(CanaryDecision::Soak),
    }
}

/// Ends the canary the other way: the successor is retired and signs nothing more, and every
/// live certificate it signed is asked to renew (under the previous intermediate, active still).
async fn roll_back(
    store: &Store,
    c: &Canary,
    reason: &str,
    actor: &str,
    spread: Duration,
) -> Result<CanaryDecision, CaError> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let audit = vec![
        AuditEvent::now(
            actor,
            "rotation.rollback",
            &c.successor,
            Outcome::Success,
            format!("rotation {}: canary rolled back: {reason}; {} signs for everyone", c.rotation, c.previous),
        ),
        AuditEvent::now(
            actor,
            "issuer.discard",
            &c.successor,
            Outcome::Success,
            format!("rotation {}: retired after its canary was rolled back; its certificates renew", c.rotation),
        ),
    ];
    let change = JournalChange {
        decide: Some((c.rotation.clone(), CanaryState::RolledBack, reason.to_owned())),
        guards: vec![(c.previous.clone(), IssuerState::Active)],
        moves: vec![(c.successor.clone(), IssuerState::Prepared, IssuerState::Retired)],
        ask_issuer: Some(c.successor.clone()),
        window: renewal_window(now, spread),
        at: now,
        audit,
        ..JournalChange::default()
    };
    commit_rollback(store, c, reason, change).await
}

/// `lanyard-ca rotate rollback`: rolls back the soaking canary; without one, puts the
/// intermediate the active one replaced back in charge (it must be unexpired, unrevoked and under
/// the same root) and retires the active one, whose certificates are asked to renew.
pub async fn rollback(store: &Store, spread: Duration, reason: &str) -> Result<CanaryDecision, CaError> {
    let canaries = store.canaries().await?;
    if let Some(c) = canaries.iter().find(|c| c.state == CanaryState::Soaking) {
        let reason = format!("by the operator: {reason}");
        return match roll_back(store, c, &reason, "operator", spread).await? {
            CanaryDecision::Soak => Err(CaError::Store("the canary was decided concurrently; see status".into())),
            d => Ok(d),
        };
    }
    let journal = store.issuers().await?;
    let current = intermediate(&journal, IssuerState::Active).ok_or(CaError::NoActiveIssuer)?.clone();
    let now = OffsetDateTime::now_utc();
    let revoked: Vec<String> = store.emergencies().await?.into_iter().map(|e| e.issuer_id).collect();
    let previous = journal
        .iter()
        .filter(|r| r.kind == IssuerKind::Intermediate && r.state == IssuerState::Retired && r.id != current.id)
        .filter(|r| r.parent_id == current.parent_id)
        .max_by_key(|r| r.state_changed_at)
        .ok_or_else(|| {
            CaError::Config("nothing to roll back to: no retired intermediate under the active root".into())
        })?
        .clone();
    if let Some(k) = canaries.iter().find(|k| k.successor == previous.id && k.state == CanaryState::RolledBack) {
        return Err(CaError::Config(format!(
            "cannot roll back to {}: rotation {} discarded it ({})",
            previous.id,
            k.rotation,
            k.reason.as_deref().unwrap_or_default()
        )));
    }
    if revoked.contains(&previous.id) {
        return Err(CaError::Config(format!(
            "cannot roll back to {}: it was revoked by an emergency rotation",
            previous.id
        )));
    }
    // It must outlive the certificates it would sign (and the agents' renewal lead) by a margin.
    if previous.not_after <= now + time::Duration::hours(1) {
        return Err(CaError::Config(format!(
            "cannot roll back to {}: it expires at {}",
            previous.id,
            crate::issuers::rfc3339(previous.not_after)
        )));
    }
    let rotation = super::rotation_id();
    let at = now.unix_timestamp();
    let reason = format!("by the operator: {reason}");
    // Recorded as a canary decided at once, so the rollback shows in the canary history and holds
    // the next scheduled attempt for `retry_after`.
    let record = Canary {
        rotation: rotation.clone(),
        successor: current.id.clone(),
        previous: previous.id.clone(),
        prefix: None,
        fraction_ppm: 1_000_000,
        started_at: at,
        soak_until: at,
        state: CanaryState::RolledBack,
        decided_at: Some(at),
        reason: Some(reason.clone()),
    };
    let audit = vec![AuditEvent::now(
        "operator",
        "rotation.rollback",
        &current.id,
        Outcome::Success,
        format!("rotation {rotation}: {} active again, {} retired: {reason}", previous.id, current.id),
    )];
    let change = JournalChange {
        start: Some(record),
        moves: vec![
            (current.id.clone(), IssuerState::Active, IssuerState::Retired),
            (previous.id.clone(), IssuerState::Retired, IssuerState::Active),
        ],
        ask_issuer: Some(current.id.clone()),
        window: renewal_window(at, spread),
        at,
        audit,
        ..JournalChange::default()
    };
    match store.change_journal(change).await? {
        Some(affected) => {
            warn!(rotation, active = %previous.id, retired = %current.id, affected, "rotation rolled back by the operator");
            Ok(CanaryDecision::RolledBack { rotation, successor: current.id, previous: previous.id, reason, affected })
        }
        None => Err(CaError::Store("the issuer journal changed concurrently; run the rollback again".into())),
    }
}

/// Whether scheduled rotation holds off after a recent rollback (see [`CanaryPolicy::retry_after`]).
pub fn holding_after_rollback<'a>(canaries: &'a [Canary], p: &CanaryPolicy, now: i64) -> Option<&'a Canary> {
    canaries.iter().find(|c| {
        c.state == CanaryState::RolledBack
            && c.decided_at.is_some_and(|d| d.saturating_add(crate::units::secs(p.retry_after)) > now)
    })
}
