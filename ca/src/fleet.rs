//! What the fleet trusts: the latest trust-state report of each workload, as its agent sent it
//! with a renewal or a notices poll.
//!
//! A rotation that waits for the fleet needs to know, per workload, which trust bundle it has
//! installed, which issuer signed the certificate it serves, and whether its handshakes started
//! failing. Agents report exactly that; this module keeps the newest report per workload and
//! answers "how much of the live fleet has confirmed bundle N". A workload not heard from within
//! [`FleetPolicy::horizon`] counts as *gone*, not as unconfirmed: a decommissioned service must
//! not hold a rotation forever.
//!
//! Reports are kept in memory by the replica that received them, bounded by
//! [`FleetPolicy::max_workloads`]; workloads are authenticated (reports only arrive over mTLS with
//! a certificate this CA issued), so the keys are identities, never arbitrary client input. A
//! workload beyond the bound is not tracked and is counted in [`FleetTotals::untracked_reports`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use time::OffsetDateTime;

/// Why a peer's handshake was refused by an agent's seam verifier. Unknown reasons an agent sends
/// are kept as [`RefusalReason::Other`], so a newer agent never breaks an older CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RefusalReason {
    /// The peer's chain does not lead to a root of the installed bundle.
    UnknownIssuer,
    /// A certificate of the chain is expired or not yet valid.
    Expired,
    /// A certificate of the chain is on an installed CRL.
    Revoked,
    /// The peer's SPIFFE ID is of another trust domain or not authorized.
    Identity,
    /// No bundle installed yet.
    NoBundle,
    /// Anything else (bad signature, malformed certificate, unknown reason name).
    Other,
}

impl RefusalReason {
    /// Every reason, in label order.
    pub const ALL: [RefusalReason; 6] = [
        RefusalReason::UnknownIssuer,
        RefusalReason::Expired,
        RefusalReason::Revoked,
        RefusalReason::Identity,
        RefusalReason::NoBundle,
        RefusalReason::Other,
    ];

    /// The wire and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::UnknownIssuer => "unknown_issuer",
            RefusalReason::Expired => "expired",
            RefusalReason::Revoked => "revoked",
            RefusalReason::Identity => "identity",
            RefusalReason::NoBundle => "no_bundle",
            RefusalReason::Other => "other",
        }
    }

    /// The reason a label names; unknown labels are [`RefusalReason::Other`].
    pub fn from_label(label: &str) -> Self {
        Self::ALL.into_iter().find(|r| r.as_str() == label).unwrap_or(RefusalReason::Other)
    }
}

/// One agent's trust state, as it reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustReport {
    /// `spiffe_sequence` of the trust bundle the agent has installed (0: none yet).
    pub bundle_sequence: u64,
    /// SHA-256 (hex) of the CA certificate that signed the certificate the agent serves.
    pub serving_issuer: Option<String>,
    /// Handshakes its seam verifiers accepted since its previous report.
    pub accepted: u64,
    /// Handshakes its seam verifiers refused since its previous report, by reason.
    pub refused: BTreeMap<RefusalReason, u64>,
    /// How long its last certificate fetch (renewal or enrollment) took, as the agent saw it.
    pub fetch_latency: Option<Duration>,
}

/// Bounds of the fleet view.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetPolicy {
    /// A workload not heard from (renewal or notices poll) for this long counts as gone.
    /// Agents long-poll notices every 55 s by default, so a live agent is heard from far more
    /// often than this.
    #[serde(with = "humantime_serde")]
    pub horizon: Duration,
    /// Most workloads tracked at once; reports of further workloads are counted and dropped.
    pub max_workloads: usize,
    /// After a start, how long the view collects reports before a rotation gate trusts it: an
    /// empty view right after a restart must not read as "the whole (empty) fleet confirmed".
    /// Make it longer than the agents' `notices_wait` (55 s by default).
    #[serde(with = "humantime_serde")]
    pub warmup: Duration,
}

impl Default for FleetPolicy {
    fn default() -> Self {
        FleetPolicy {
            horizon: Duration::from_secs(10 * 60),
            max_workloads: 200_000,
            warmup: Duration::from_secs(2 * 60),
        }
    }
}

/// A rotation step waiting for the fleet ([`crate::rotation`]'s gate), as the metrics and the
/// status page show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateStatus {
    /// The step: `activate_root` or `expire_root`.
    pub step: &'static str,
    /// The issuer the step is about (the new root, or the root leaving the bundle).
    pub issuer: String,
    /// Why it waits, in words.
    pub reason: String,
    /// Live workloads.
    pub live: usize,
    /// Live workloads that confirmed (installed the bundle, or no longer serve a chain of the root).
    pub confirmed: usize,
    /// How many must confirm.
    pub required: usize,
    /// When the step became due on the clock (Unix seconds).
    pub due_at: i64,
    /// Past `[rotation] fleet_deadline`: the rotation waits and alerts.
    pub overdue: bool,
    /// The overdue alert was audited already.
    pub alerted: bool,
}

/// The newest report of one workload.
#[derive(Debug, Clone)]
struct Latest {
    serial: String,
    seen: OffsetDateTime,
    bundle_sequence: u64,
    serving_issuer: Option<String>,
}

/// Totals over every report received since the CA started (counters).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetTotals {
    /// Reports received.
    pub reports: u64,
    /// Reports of workloads beyond [`FleetPolicy::max_workloads`], not tracked.
    pub untracked_reports: u64,
    /// Handshakes agents reported as accepted.
    pub accepted: u64,
    /// Handshakes agents reported as refused, by reason.
    pub refused: BTreeMap<RefusalReason, u64>,
    /// Sum and count of reported fetch latencies (for a mean), seconds.
    pub fetch_latency_sum: f64,
    /// Number of reported fetch latencies.
    pub fetch_latency_count: u64,
}

/// How far the live fleet has come towards a bundle sequence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Convergence {
    /// The sequence asked about.
    pub sequence: u64,
    /// Workloads heard from within the horizon.
    pub live: usize,
    /// Live workloads whose installed bundle is at least `sequence`.
    pub confirmed: usize,
    /// Tracked workloads not heard from within the horizon.
    pub gone: usize,
    /// Up to [`Convergence::SAMPLE`] live workloads still behind, with the sequence they have.
    pub behind: Vec<(String, u64)>,
}

impl Convergence {
    /// How many lagging workloads [`Convergence::behind`] names at most.
    pub const SAMPLE: usize = 20;

    /// Whether every live workload has confirmed (vacuously true for an empty fleet).
    pub fn complete(&self) -> bool {
        self.confirmed == self.live
    }
}

/// The newest trust-state report of each workload, bounded. See the module documentation.
#[derive(Debug)]
pub struct Fleet {
    policy: FleetPolicy,
    started: OffsetDateTime,
    state: Mutex<State>,
    gate: Mutex<Option<GateStatus>>,
}

#[derive(Debug, Default)]
struct State {
    latest: HashMap<String, Latest>,
    totals: FleetTotals,
}

impl Fleet {
    /// An empty fleet view.
    pub fn new(policy: FleetPolicy) -> Self {
        Self::started_at(policy, OffsetDateTime::now_utc())
    }

    /// An empty fleet view that started collecting at `started`.
    pub fn started_at(policy: FleetPolicy, started: OffsetDateTime) -> Self {
        Fleet { policy, started, state: Mutex::new(State::default()), gate: Mutex::new(None) }
    }

    /// Whether the view has collected reports for at least [`FleetPolicy::warmup`].
    pub fn warm(&self, now: OffsetDateTime) -> bool {
        now - self.started >= self.policy.warmup
    }

    /// The rotation step waiting for the fleet, if any.
    pub fn gate(&self) -> Option<GateStatus> {
        self.gate.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Sets (or clears) the waiting step; returns the previous one.
    pub fn set_gate(&self, status: Option<GateStatus>) -> Option<GateStatus> {
        std::mem::replace(&mut *self.gate.lock().unwrap_or_else(std::sync::PoisonError::into_inner), status)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records `report` from `workload` (its SPIFFE ID), authenticated with certificate `serial`.
    /// Returns false when the workload is not tracked (the bound is reached).
    pub fn record(&self, workload: &str, serial: &str, report: &TrustReport, now: OffsetDateTime) -> bool {
        let mut st = self.state();
        let st = &mut *st;
        st.totals.reports += 1;
        st.totals.accepted = st.totals.accepted.saturating_add(report.accepted);
        for (reason, n) in &report.refused {
            let t = st.totals.refused.entry(*reason).or_default();
            *t = t.saturating_add(*n);
        }
        if let Some(l) = report.fetch_latency {
            st.totals.fetch_latency_sum += l.as_secs_f64();
            st.totals.fetch_latency_count += 1;
        }
        let entry = Latest {
            serial: serial.to_owned(),
            seen: now,
            bundle_sequence: report.bundle_sequence,
            serving_issuer: report.serving_issuer.clone(),
        };
        if let Some(e) = st.latest.get_mut(workload) {
            *e = entry;
            return true;
        }
        if st.latest.len() >= self.policy.max_workloads {
            // Make room from workloads that are gone before refusing a live one.
            let cutoff = now - self.policy.horizon;
            st.latest.retain(|_, e| e.seen >= cutoff);
            if st.latest.len() >= self.policy.max_workloads {
                st.totals.untracked_reports += 1;
                return false;
            }
        }
        st.latest.insert(workload.to_owned(), entry);
        true
    }

    /// How much of the live fleet has installed bundle `sequence` or newer.
    pub fn convergence(&self, sequence: u64, now: OffsetDateTime) -> Convergence {
        let st = self.state();
        let cutoff = now - self.policy.horizon;
        let mut c = Convergence { sequence, ..Convergence::default() };
        for (id, e) in &st.latest {
            if e.seen < cutoff {
                c.gone += 1;
                continue;
            }
            c.live += 1;
            if e.bundle_sequence >= sequence {
                c.confirmed += 1;
            } else if c.behind.len() < Convergence::SAMPLE {
                c.behind.push((id.clone(), e.bundle_sequence));
            }
        }
        c.behind.sort();
        c
    }

    /// Live workloads by the issuer (SHA-256 hex) of the certificate they serve.
    pub fn serving_issuers(&self, now: OffsetDateTime) -> BTreeMap<String, usize> {
        let st = self.state();
        let cutoff = now - self.policy.horizon;
        let mut by = BTreeMap::new();
        for e in st.latest.values().filter(|e| e.seen >= cutoff) {
            *by.entry(e.serving_issuer.clone().unwrap_or_else(|| "unknown".into())).or_default() += 1;
        }
        by
    }

    /// The newest report of one workload: (certificate serial, when, bundle sequence).
    pub fn latest(&self, workload: &str) -> Option<(String, OffsetDateTime, u64)> {
        self.state().latest.get(workload).map(|e| (e.serial.clone(), e.seen, e.bundle_sequence))
    }

    /// Totals since start.
    pub fn totals(&self) -> FleetTotals {
        self.state().totals.clone()
    }

    /// The bounds in force.
    pub fn policy(&self) -> &FleetPolicy {
        &self.policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(seq: u64) -> TrustReport {
        TrustReport { bundle_sequence: seq, ..TrustReport::default() }
    }

    #[test]
    fn convergence_counts_live_workloads_and_ignores_gone_ones() {
        let fleet =
            Fleet::new(FleetPolicy { horizon: Duration::from_secs(60), max_workloads: 10, ..Default::default() });
        let t0 = OffsetDateTime::from_unix_timestamp(1_000_000).expect("time");
        assert!(fleet.record("spiffe://td/a", "01", &report(3), t0));
        assert!(fleet.record("spiffe://td/b", "02", &report(2), t0));
        assert!(fleet.record("spiffe://td/c", "03", &report(2), t0 - Duration::from_secs(120)));
        let c = fleet.convergence(3, t0);
        assert_eq!((c.live, c.confirmed, c.gone), (2, 1, 1));
        assert_eq!(c.behind, vec![("spiffe://td/b".to_owned(), 2)]);
        assert!(!c.complete());
        // b catches up: complete, and the gone workload does not hold it back.
        fleet.record("spiffe://td/b", "04", &report(3), t0);
        let c = fleet.convergence(3, t0);
        assert!(c.complete(), "{c:?}");
        assert_eq!(fleet.latest("spiffe://td/b").map(|l| l.0), Some("04".to_owned()));
    }

    #[test]
    fn the_bound_evicts_gone_workloads_first_then_refuses() {
        let fleet =
            Fleet::new(FleetPolicy { horizon: Duration::from_secs(60), max_workloads: 2, ..Default::default() });
        let t0 = OffsetDateTime::from_unix_timestamp(1_000_000).expect("time");
        assert!(fleet.record("spiffe://td/old", "01", &report(1), t0 - Duration::from_secs(600)));
        assert!(fleet.record("spiffe://td/a", "02", &report(1), t0));
        assert!(fleet.record("spiffe://td/b", "03", &report(1), t0), "the gone workload makes room");
        assert!(!fleet.record("spiffe://td/c", "04", &report(1), t0), "no room among live workloads");
        assert!(fleet.record("spiffe://td/a", "05", &report(2), t0), "known workloads still update");
        assert_eq!(fleet.totals().untracked_reports, 1);
        assert_eq!(fleet.convergence(1, t0).live, 2);
    }

    #[test]
    fn totals_add_up_refusals_by_reason() {
        let fleet = Fleet::new(FleetPolicy::default());
        let now = OffsetDateTime::now_utc();
        let mut r = report(1);
        r.accepted = 5;
        r.refused.insert(RefusalReason::UnknownIssuer, 2);
        fleet.record("spiffe://td/a", "01", &r, now);
        fleet.record("spiffe://td/a", "02", &r, now);
        let t = fleet.totals();
        assert_eq!((t.reports, t.accepted), (2, 10));
        assert_eq!(t.refused.get(&RefusalReason::UnknownIssuer), Some(&4));
        assert_eq!(RefusalReason::from_label("bogus"), RefusalReason::Other);
        assert_eq!(RefusalReason::from_label("revoked"), RefusalReason::Revoked);
    }
}
