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
//!
//! Several replicas on one PostgreSQL database share their views ([`Fleet::enable_sharing`]):
//! every couple of seconds each replica writes the reports it received since the last exchange
//! and its canary handshake tallies, and reads what the others wrote
//! ([`crate::store::fleet_share`]), so the replica that holds the rotation lease gates and judges
//! on the whole fleet's reports, whichever replica an agent talks to.

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
    /// On PostgreSQL, share the view with the other replicas through the database, so the
    /// replica holding the rotation lease gates and judges on every replica's reports.
    pub share: bool,
    /// How often a replica exchanges its view with the others (bounds how stale the lease
    /// holder's view of reports received elsewhere can be).
    #[serde(with = "humantime_serde")]
    pub share_interval: Duration,
}

impl Default for FleetPolicy {
    fn default() -> Self {
        FleetPolicy {
            horizon: Duration::from_secs(10 * 60),
            max_workloads: 200_000,
            warmup: Duration::from_secs(2 * 60),
            share: true,
            share_interval: Duration::from_secs(2),
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
    sharing: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    latest: HashMap<String, Latest>,
    totals: FleetTotals,
    /// Rotations whose fleet convergence is being watched (the "rotation windows").
    windows: Vec<Window>,
    /// Refused handshakes reported during each recent rotation's window, by rotation id (M5),
    /// newest last; at most [`MAX_WINDOW_TOTALS`].
    refused_in_window: Vec<(String, u64)>,
    /// The latest closed windows, newest last; at most [`MAX_WINDOW_TOTALS`].
    closed: Vec<Closed>,
    /// Handshakes reported since each canary started, newest last; at most [`MAX_WINDOW_TOTALS`].
    tallies: Vec<Tally>,
    /// Workloads whose report changed since the last exchange with the other replicas (only
    /// while sharing; bounded by the view itself).
    dirty: std::collections::HashSet<String>,
}

/// What a canary is judged on, counted since it started: handshakes reported accepted and
/// refused for a trust reason (every reason but `identity`), and certificates its successor
/// signed and failed to sign.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CanaryTally {
    /// Handshakes reported accepted.
    pub accepted: u64,
    /// Handshakes reported refused for a trust reason.
    pub refused: u64,
    /// Certificates signed under the canary's successor.
    pub signed: u64,
    /// Canary issuances that failed at the CA (signing, recording, or loading the key).
    pub failed: u64,
}

impl CanaryTally {
    fn plus(self, o: CanaryTally) -> CanaryTally {
        CanaryTally {
            accepted: self.accepted.saturating_add(o.accepted),
            refused: self.refused.saturating_add(o.refused),
            signed: self.signed.saturating_add(o.signed),
            failed: self.failed.saturating_add(o.failed),
        }
    }
}

/// One canary's tally on this replica.
#[derive(Debug, Default)]
struct Tally {
    rotation: String,
    /// Counted by this replica.
    counted: CanaryTally,
    /// Counted here but not yet written for the other replicas.
    pending: CanaryTally,
    /// The whole fleet's totals as last read from the database (sharing only).
    shared: Option<CanaryTally>,
    /// Still soaking: reports count. A decided canary keeps its totals and counts no more.
    open: bool,
}

impl Tally {
    fn add(&mut self, d: CanaryTally) {
        self.counted = self.counted.plus(d);
        self.pending = self.pending.plus(d);
    }
}

/// One workload's newest report as replicas exchange it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedReport {
    /// The workload's SPIFFE ID.
    pub workload: String,
    /// Serial of the certificate it authenticated with.
    pub serial: String,
    /// When the report arrived (Unix milliseconds).
    pub seen_ms: i64,
    /// The bundle sequence it installed.
    pub bundle_sequence: i64,
    /// The issuer (SHA-256 hex) of the certificate it serves.
    pub serving_issuer: Option<String>,
}

/// What a replica has not yet written for the others ([`Fleet::take_unshared`]).
#[derive(Debug, Default)]
pub struct Unshared {
    /// Reports changed since the last exchange.
    pub reports: Vec<SharedReport>,
    /// Canary tallies counted since the last exchange.
    pub tallies: Vec<(String, CanaryTally)>,
}

/// Rotation ids whose refused-handshake totals are kept (bounds the metric's label set).
pub const MAX_WINDOW_TOTALS: usize = 20;

/// What a rotation waits for the live fleet to reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every live workload installed this bundle sequence or a newer one (a new root).
    Bundle(u64),
    /// Every live workload serves a certificate of this issuer (SHA-256 hex of its certificate):
    /// an intermediate rotation, scheduled or emergency.
    Serving(String),
}

/// A rotation being watched until the fleet converges on its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// The rotation id.
    pub rotation: String,
    /// `intermediate`, `root` or `emergency`.
    pub kind: &'static str,
    /// What converged means.
    pub target: Target,
    /// When the rotation was triggered.
    pub started: OffsetDateTime,
    /// Not converged by then: the rotation counts as a partial failure (M3).
    pub deadline: OffsetDateTime,
}

/// A watched rotation that ended: converged, or given up at its deadline (a partial failure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// The rotation.
    pub window: Window,
    /// From trigger to converged (or to the deadline).
    pub took: Duration,
    /// Whether every live workload reached the target.
    pub converged: bool,
    /// Live workloads not at the target when it closed.
    pub unconverged: usize,
}

impl Fleet {
    /// An empty fleet view.
    pub fn new(policy: FleetPolicy) -> Self {
        Self::started_at(policy, OffsetDateTime::now_utc())
    }

    /// An empty fleet view that started collecting at `started`.
    pub fn started_at(policy: FleetPolicy, started: OffsetDateTime) -> Self {
        Fleet {
            policy,
            started,
            state: Mutex::new(State::default()),
            gate: Mutex::new(None),
            sharing: std::sync::atomic::AtomicBool::new(false),
        }
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
        let refused: u64 = report.refused.values().sum();
        let trust_refused: u64 =
            report.refused.iter().filter(|(r, _)| **r != RefusalReason::Identity).map(|(_, n)| *n).sum();
        for t in st.tallies.iter_mut().filter(|t| t.open) {
            t.add(CanaryTally { accepted: report.accepted, refused: trust_refused, ..CanaryTally::default() });
        }
        if refused > 0 {
            // M5: a soaking canary is a rotation window too, under its rotation id.
            let open =
                st.windows.iter().map(|w| &w.rotation).chain(st.tallies.iter().filter(|t| t.open).map(|t| &t.rotation));
            let ids: Vec<String> = open.cloned().collect();
            for id in ids {
                if let Some((_, n)) = st.refused_in_window.iter_mut().find(|(r, _)| *r == id) {
                    *n = n.saturating_add(refused);
                }
            }
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
        if self.sharing.load(std::sync::atomic::Ordering::Relaxed) && !st.dirty.contains(workload) {
            st.dirty.insert(workload.to_owned());
        }
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
                st.dirty.remove(workload);
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

    /// Starts watching `window`'s rotation until the live fleet converges on its target.
    pub fn open_window(&self, window: Window) {
        let mut st = self.state();
        st.refused_in_window.retain(|(id, _)| *id != window.rotation);
        st.refused_in_window.push((window.rotation.clone(), 0));
        if st.refused_in_window.len() > MAX_WINDOW_TOTALS {
            st.refused_in_window.remove(0);
        }
        // A newer rotation of the same kind, or one with the same target (an emergency seen first
        // as a change of the active intermediate), supersedes the one still watched.
        st.windows.retain(|w| w.kind != window.kind && w.target != window.target);
        st.windows.push(window);
    }

    /// Starts counting the handshakes reported for canary `rotation` ([`Fleet::tally`]).
    pub fn start_tally(&self, rotation: &str) {
        Self::tally_mut(&mut self.state(), rotation);
    }

    /// The tally of canary `rotation`, started (with its M5 window total) if new.
    fn tally_mut<'a>(st: &'a mut State, rotation: &str) -> &'a mut Tally {
        let i = match st.tallies.iter().position(|t| t.rotation == rotation) {
            Some(i) => i,
            None => {
                if !st.refused_in_window.iter().any(|(id, _)| id == rotation) {
                    st.refused_in_window.push((rotation.to_owned(), 0));
                    if st.refused_in_window.len() > MAX_WINDOW_TOTALS {
                        st.refused_in_window.remove(0);
                    }
                }
                if st.tallies.len() >= MAX_WINDOW_TOTALS {
                    st.tallies.remove(0);
                }
                st.tallies.push(Tally { rotation: rotation.to_owned(), open: true, ..Tally::default() });
                st.tallies.len() - 1
            }
        };
        &mut st.tallies[i]
    }

    /// Counts one certificate signed (`signed`) or failed under canary `rotation`'s successor.
    pub fn count_canary_signing(&self, rotation: &str, signed: bool) {
        let d = if signed {
            CanaryTally { signed: 1, ..CanaryTally::default() }
        } else {
            CanaryTally { failed: 1, ..CanaryTally::default() }
        };
        Self::tally_mut(&mut self.state(), rotation).add(d);
    }

    /// Stops counting for canary `rotation` (decided); its totals stay readable.
    pub fn end_tally(&self, rotation: &str) {
        if let Some(t) = self.state().tallies.iter_mut().find(|t| t.rotation == rotation) {
            t.open = false;
        }
    }

    /// What canary `rotation` is judged on, since it started; the whole fleet's when sharing,
    /// else this replica's. None when this view never started counting for it.
    pub fn tally(&self, rotation: &str) -> Option<CanaryTally> {
        self.state().tallies.iter().find(|t| t.rotation == rotation).map(|t| match t.shared {
            // What this replica counted after the last exchange is not in the shared totals yet.
            Some(s) => s.plus(t.pending),
            None => t.counted,
        })
    }

    /// Starts sharing this view with the other replicas: reports from now on are remembered
    /// until [`Fleet::take_unshared`] hands them out.
    pub fn enable_sharing(&self) {
        self.sharing.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The reports and tallies received since the last exchange, handed out once (give them back
    /// with [`Fleet::unshared_failed`] if they could not be written).
    pub fn take_unshared(&self) -> Unshared {
        let mut st = self.state();
        let st = &mut *st;
        let reports = std::mem::take(&mut st.dirty)
            .into_iter()
            .filter_map(|w| {
                let e = st.latest.get(&w)?;
                Some(SharedReport {
                    serial: e.serial.clone(),
                    seen_ms: unix_ms(e.seen),
                    bundle_sequence: i64::try_from(e.bundle_sequence).unwrap_or(i64::MAX),
                    serving_issuer: e.serving_issuer.clone(),
                    workload: w,
                })
            })
            .collect();
        let tallies = st
            .tallies
            .iter_mut()
            .filter(|t| t.pending != CanaryTally::default())
            .map(|t| (t.rotation.clone(), std::mem::take(&mut t.pending)))
            .collect();
        Unshared { reports, tallies }
    }

    /// Gives back what [`Fleet::take_unshared`] handed out when writing it failed.
    pub fn unshared_failed(&self, u: Unshared) {
        let mut st = self.state();
        for r in u.reports {
            st.dirty.insert(r.workload);
        }
        for (rotation, d) in u.tallies {
            if let Some(t) = st.tallies.iter_mut().find(|t| t.rotation == rotation) {
                t.pending = t.pending.plus(d);
            }
        }
    }

    /// Takes in what the other replicas wrote: newer reports replace older ones (within the
    /// bound), and the fleet-wide canary tallies replace this replica's own.
    pub fn merge_shared(&self, reports: Vec<SharedReport>, tallies: &[(String, CanaryTally)], now: OffsetDateTime) {
        let mut st = self.state();
        let cutoff = now - self.policy.horizon;
        for r in reports {
            let Ok(seen) = OffsetDateTime::from_unix_timestamp_nanos(i128::from(r.seen_ms) * 1_000_000) else {
                continue;
            };
            let entry = Latest {
                serial: r.serial,
                seen,
                bundle_sequence: u64::try_from(r.bundle_sequence).unwrap_or(0),
                serving_issuer: r.serving_issuer,
            };
            match st.latest.get_mut(&r.workload) {
                Some(e) if e.seen >= seen => {}
                Some(e) => *e = entry,
                None => {
                    if st.latest.len() >= self.policy.max_workloads {
                        st.latest.retain(|_, e| e.seen >= cutoff);
                    }
                    if st.latest.len() < self.policy.max_workloads {
                        st.latest.insert(r.workload, entry);
                    }
                }
            }
        }
        for (rotation, total) in tallies {
            if let Some(t) = st.tallies.iter_mut().find(|t| &t.rotation == rotation) {
                t.shared = Some(*total);
            }
        }
    }

    /// The rotations being watched.
    pub fn windows(&self) -> Vec<Window> {
        self.state().windows.clone()
    }

    /// Refused handshakes reported during each recent rotation's window (rotation id, count).
    pub fn refused_in_windows(&self) -> Vec<(String, u64)> {
        self.state().refused_in_window.clone()
    }

    /// Closes the windows whose fleet converged, and those past their deadline (partial). A
    /// window only converges once the view is warm.
    pub fn close_windows(&self, now: OffsetDateTime) -> Vec<Closed> {
        let warm = self.warm(now);
        let mut st = self.state();
        let cutoff = now - self.policy.horizon;
        let mut closed = Vec::new();
        let mut open = Vec::new();
        let windows = std::mem::take(&mut st.windows);
        let live: Vec<&Latest> = st.latest.values().filter(|e| e.seen >= cutoff).collect();
        for w in windows {
            let behind = live
                .iter()
                .filter(|e| match &w.target {
                    Target::Bundle(seq) => e.bundle_sequence < *seq,
                    Target::Serving(fp) => e.serving_issuer.as_deref() != Some(fp.as_str()),
                })
                .count();
            let took = Duration::try_from(now - w.started).unwrap_or_default();
            if warm && behind == 0 {
                closed.push(Closed { window: w, took, converged: true, unconverged: 0 });
            } else if now >= w.deadline {
                closed.push(Closed { window: w, took, converged: false, unconverged: behind });
            } else {
                open.push(w);
            }
        }
        st.windows = open;
        st.closed.extend(closed.iter().cloned());
        let excess = st.closed.len().saturating_sub(MAX_WINDOW_TOTALS);
        st.closed.drain(..excess);
        closed
    }

    /// The latest rotations whose windows closed (converged or partial), newest last.
    pub fn recent_closed(&self) -> Vec<Closed> {
        self.state().closed.clone()
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

/// One exchange of this replica's fleet view with the other replicas' through the store
/// (`[policy.fleet] share`, on PostgreSQL): writes the reports and canary tallies received since
/// the last exchange, reads what was written since version `since`, and returns the version read
/// up to. Nothing is lost when the database is unreachable: what was taken is given back for the
/// next exchange.
pub async fn exchange(
    store: &crate::Store,
    fleet: &Fleet,
    since: i64,
    now: OffsetDateTime,
) -> Result<i64, crate::CaError> {
    let unshared = fleet.take_unshared();
    let horizon_ms = i64::try_from(fleet.policy.horizon.as_millis()).unwrap_or(i64::MAX);
    let now_ms = unix_ms(now);
    let ex = crate::store::fleet_share::Exchange {
        reports: unshared.reports.clone(),
        tallies: unshared.tallies.clone(),
        since,
        cutoff_ms: now_ms.saturating_sub(horizon_ms),
        prune_before: now_ms.saturating_sub(horizon_ms.saturating_mul(6)),
    };
    match store.exchange_fleet(ex).await {
        Ok(x) => {
            fleet.merge_shared(x.reports, &x.tallies, now);
            Ok(x.version)
        }
        Err(e) => {
            fleet.unshared_failed(unshared);
            Err(e)
        }
    }
}

fn unix_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
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
    fn windows_close_when_the_fleet_converges_or_at_the_deadline() {
        let t0 = OffsetDateTime::from_unix_timestamp(1_000_000).expect("time");
        let policy = FleetPolicy { warmup: Duration::ZERO, ..FleetPolicy::default() };
        let fleet = Fleet::started_at(policy, t0);
        let serving = |issuer: &str, seq: u64| TrustReport {
            bundle_sequence: seq,
            serving_issuer: Some(issuer.to_owned()),
            ..TrustReport::default()
        };
        fleet.record("spiffe://td/a", "01", &serving("old", 1), t0);
        fleet.record("spiffe://td/b", "02", &serving("old", 1), t0);
        let deadline = t0 + Duration::from_secs(60);
        fleet.open_window(Window {
            rotation: "r1".into(),
            kind: "intermediate",
            target: Target::Serving("new".into()),
            started: t0,
            deadline,
        });
        fleet.open_window(Window {
            rotation: "r2".into(),
            kind: "root",
            target: Target::Bundle(2),
            started: t0,
            deadline,
        });
        let t1 = t0 + Duration::from_secs(5);
        assert!(fleet.close_windows(t1).is_empty());
        // A refusal reported while both are open counts for both.
        let mut r = serving("new", 2);
        r.refused.insert(RefusalReason::UnknownIssuer, 2);
        fleet.record("spiffe://td/a", "03", &r, t1);
        assert_eq!(fleet.refused_in_windows(), vec![("r1".into(), 2), ("r2".into(), 2)]);
        // A canary counts as a window (M5) while it soaks, and its tally stops when decided.
        fleet.start_tally("c1");
        fleet.record("spiffe://td/a", "03", &r, t1);
        assert_eq!(fleet.refused_in_windows(), vec![("r1".into(), 4), ("r2".into(), 4), ("c1".into(), 2)]);
        assert_eq!(fleet.tally("c1").map(|t| (t.accepted, t.refused)), Some((0, 2)));
        fleet.end_tally("c1");
        fleet.record("spiffe://td/a", "03", &r, t1);
        assert_eq!(fleet.tally("c1").map(|t| (t.accepted, t.refused)), Some((0, 2)));
        assert_eq!(fleet.refused_in_windows()[2], ("c1".into(), 2));
        // b installs bundle 2 but still serves the old issuer: the root window closes, converged.
        fleet.record("spiffe://td/b", "04", &serving("old", 2), t1);
        let closed = fleet.close_windows(t1 + Duration::from_secs(1));
        assert_eq!(closed.len(), 1);
        assert_eq!((closed[0].window.rotation.as_str(), closed[0].converged), ("r2", true));
        assert_eq!(closed[0].took, Duration::from_secs(6));
        // The intermediate window reaches its deadline with b unconverged: a partial failure.
        fleet.record("spiffe://td/b", "05", &serving("old", 2), t0 + Duration::from_secs(61));
        let closed = fleet.close_windows(t0 + Duration::from_secs(61));
        assert_eq!((closed[0].converged, closed[0].unconverged), (false, 1));
        assert!(fleet.windows().is_empty());
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
