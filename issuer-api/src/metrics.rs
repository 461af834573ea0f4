//! Prometheus metrics of the CA (text format 0.0.4) on a separate plain-HTTP listener
//! (`metrics_listen`, loopback by default when set), so scraping never needs the CA's TLS and the
//! numbers are not published on the public port.
//!
//! One [`Registry`] is built at startup ([`registry`]) and the [`Metrics`] handles registered in
//! it are passed to the request, rotation and listener paths that bump them; nothing is a process
//! global. What is read rather than counted is read at scrape time by collectors: the journal,
//! the fleet and emergencies come from the CA's read-only views ([`Journal`], read once per scrape, so every
//! replica reports the same truth), issuance statistics from the authority, task liveness from
//! the supervisor.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use ca::{Authority, IssuerState, TrustBundle};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::listener::{self, BoundedListener, ListenerConfig, ListenerStats, Protocol};

/// `reason` of `lanyard_authentication_failures_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

/// `step` and `result` of `lanyard_rotation_steps_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepResult {
    step: String,
    result: &'static str,
}

/// `kind` of `lanyard_acme_purged_rows_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PurgedKind {
    kind: &'static str,
}

/// `kind` of the rotation convergence families (intermediate, root, emergency).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RotationKind {
    kind: &'static str,
}

/// Buckets of `lanyard_rotation_converge_seconds`: seconds to a day.
const CONVERGE_BUCKETS: [f64; 13] =
    [1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0];

/// `listener` of the `lanyard_listener_*` families.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerName {
    listener: &'static str,
}

/// The metric handles the code paths bump, registered in the process's [`Registry`].
#[derive(Debug)]
pub struct Metrics {
    auth_failures: Family<Reason, Counter>,
    rotation_steps: Family<StepResult, Counter>,
    /// Active intermediate changes this process loaded.
    pub issuer_changes: Counter,
    /// Duration of the last rotation step run, seconds.
    pub last_rotation_seconds: Gauge<f64, AtomicU64>,
    /// Agents waiting on `GET /workload/v1/notices` right now.
    pub notice_waiters: Gauge,
    acme_purged: Family<PurgedKind, Counter>,
    rate_limits: Arc<RateLimits>,
    /// Outbound ACME validations running now.
    pub validations_in_flight: Gauge,
    /// Challenge POSTs refused because every validation slot was busy.
    pub validations_refused: Counter,
    /// M2: from a rotation's trigger to the live fleet converged on it, by kind.
    rotation_converge: Family<RotationKind, prometheus_client::metrics::histogram::Histogram>,
    /// M1/M3: watched rotations that ended, by kind and result (converged, partial).
    rotations_finished: Family<StepResult, Counter>,
    /// Canaries decided by this replica, by result (completed, rolled_back).
    canaries: Family<StepResult, Counter>,
    /// 1 while a canary soaks (as this replica's rotation loop last saw it).
    pub canary_soaking: Gauge,
    /// Counters of the HTTPS listener.
    pub https_listener: ListenerStats,
    /// Counters of the metrics listener.
    pub metrics_listener: ListenerStats,
}

impl Metrics {
    /// Registers every family in `registry`; the collectors read `authority` and `tasks` when
    /// scraped.
    pub fn register(registry: &mut Registry, authority: Arc<Authority>, tasks: crate::supervise::Tasks) -> Arc<Self> {
        let auth_failures = Family::default();
        registry.register(
            "lanyard_authentication_failures",
            "Refused authentications by reason",
            auth_failures.clone(),
        );
        let rotation_steps = Family::default();
        registry.register(
            "lanyard_rotation_steps",
            "Rotation steps taken by this replica, by step and result",
            rotation_steps.clone(),
        );
        let last_rotation_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "lanyard_rotation_last_duration_seconds",
            "Time the last rotation run took",
            last_rotation_seconds.clone(),
        );
        let issuer_changes = Counter::default();
        registry.register(
            "lanyard_active_issuer_changes",
            "Active intermediate changes this process loaded",
            issuer_changes.clone(),
        );
        let notice_waiters = Gauge::default();
        registry.register(
            "lanyard_notice_waiters",
            "Agents waiting for a push notice on this replica",
            notice_waiters.clone(),
        );
        let rate_limits = Arc::new(RateLimits::default());
        registry.register_collector(Box::new(rate_limits.clone()));
        let acme_purged = Family::default();
        registry.register(
            "lanyard_acme_purged_rows",
            "ACME rows deleted after their retention period",
            acme_purged.clone(),
        );
        let validations_in_flight = Gauge::default();
        registry.register(
            "lanyard_acme_validations_in_flight",
            "Outbound challenge validations running now",
            validations_in_flight.clone(),
        );
        let validations_refused = Counter::default();
        registry.register(
            "lanyard_acme_validations_refused",
            "Challenge POSTs answered rateLimited because every validation slot was busy",
            validations_refused.clone(),
        );
        let rotation_converge =
            Family::<RotationKind, prometheus_client::metrics::histogram::Histogram>::new_with_constructor(|| {
                prometheus_client::metrics::histogram::Histogram::new(CONVERGE_BUCKETS)
            });
        registry.register(
            "lanyard_rotation_converge_seconds",
            "M2: from a rotation's trigger to every live workload on it (its bundle installed, or serving the new \
             intermediate), by kind",
            rotation_converge.clone(),
        );
        let rotations_finished = Family::default();
        registry.register(
            "lanyard_rotations_finished",
            "M1/M3: watched rotations that ended, by kind (step) and result: converged, or partial (fleet_deadline \
             passed with live workloads not on it)",
            rotations_finished.clone(),
        );
        let canaries = Family::default();
        registry.register(
            "lanyard_rotation_canaries",
            "Canary activations decided by this replica's rotation loop, by result: completed (the successor \
             became active) or rolled_back (refused handshakes, failed canary renewals, or an operator)",
            canaries.clone(),
        );
        for result in ["completed", "rolled_back"] {
            drop(canaries.get_or_create(&StepResult { step: "canary".to_owned(), result }));
        }
        let canary_soaking = Gauge::default();
        registry.register(
            "lanyard_rotation_canary_soaking",
            "1 while a successor intermediate signs for canaries only ([rotation.canary], rotate --canary-*)",
            canary_soaking.clone(),
        );
        // Every known series starts at 0, so dashboards and alerts see them before the first
        // rotation (a missing series reads as "no data", not as "none").
        for kind in ["intermediate", "root", "emergency"] {
            drop(rotation_converge.get_or_create(&RotationKind { kind }));
            for result in ["converged", "partial"] {
                drop(rotations_finished.get_or_create(&StepResult { step: kind.to_owned(), result }));
            }
        }
        for step in ["prepare", "activate", "begin_canary", "expire", "activate_root", "expire_root"] {
            for result in ["success", "failure"] {
                drop(rotation_steps.get_or_create(&StepResult { step: step.to_owned(), result }));
            }
        }
        registry.register_collector(Box::new(Issuance(authority)));
        let (https_listener, metrics_listener) = register_listeners(registry);
        registry.register_collector(Box::new(TaskUp(tasks)));
        Arc::new(Metrics {
            auth_failures,
            rotation_steps,
            issuer_changes,
            last_rotation_seconds,
            notice_waiters,
            acme_purged,
            rate_limits,
            validations_in_flight,
            validations_refused,
            rotation_converge,
            rotations_finished,
            canaries,
            canary_soaking,
            https_listener,
            metrics_listener,
        })
    }

    /// Counts an authentication failure.
    pub fn auth_failure(&self, reason: &str) {
        self.auth_failures.get_or_create(&Reason { reason: reason.to_owned() }).inc();
    }

    /// Counts a rotation step.
    pub fn rotation_step(&self, step: &str, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.rotation_steps.get_or_create(&StepResult { step: step.to_owned(), result }).inc();
    }

    /// Counts a canary decided by this replica.
    pub fn canary_decided(&self, result: &'static str) {
        self.canaries.get_or_create(&StepResult { step: "canary".to_owned(), result }).inc();
    }

    /// Records a watched rotation that ended (M1, M2, M3).
    pub fn rotation_finished(&self, closed: &ca::fleet::Closed) {
        let kind = closed.window.kind;
        if closed.converged {
            self.rotation_converge.get_or_create(&RotationKind { kind }).observe(closed.took.as_secs_f64());
        }
        let result = if closed.converged { "converged" } else { "partial" };
        self.rotations_finished.get_or_create(&StepResult { step: kind.to_owned(), result }).inc();
    }

    /// Counts ACME rows purged after their retention.
    pub fn acme_purged(&self, kind: &'static str, rows: u64) {
        self.acme_purged.get_or_create(&PurgedKind { kind }).inc_by(rows);
    }

    /// Records what the rate-limit sweep found: (name, client keys tracked, requests refused).
    pub fn rate_limits(&self, limits: Vec<(&'static str, usize, u64)>) {
        *self.rate_limits.0.lock().unwrap_or_else(|p| p.into_inner()) = limits;
    }
}

/// The registry `lanyard-ca serve` exposes, and the handles registered in it.
pub fn registry(authority: Arc<Authority>, tasks: crate::supervise::Tasks) -> (Registry, Arc<Metrics>) {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry, authority, tasks);
    (registry, metrics)
}

/// A listener metric family: name, help, and where its handle goes in [`ListenerStats`].
type ListenerCounter = (&'static str, &'static str, fn(&mut ListenerStats) -> &mut Counter);

/// Registers the `lanyard_listener_*` families with a series for both listeners (so both show 0
/// before any traffic) and returns the handles of the `https` and the `metrics` listener.
fn register_listeners(registry: &mut Registry) -> (ListenerStats, ListenerStats) {
    let names = [ListenerName { listener: "https" }, ListenerName { listener: "metrics" }];
    let mut stats = [ListenerStats::default(), ListenerStats::default()];
    let open = Family::<ListenerName, Gauge>::default();
    registry.register(
        "lanyard_listener_open_connections",
        "Connections holding a slot (TLS handshakes included)",
        open.clone(),
    );
    for (s, n) in stats.iter_mut().zip(&names) {
        s.open = open.get_or_create_owned(n);
    }
    let counters: [ListenerCounter; 5] = [
        (
            "lanyard_listener_connections_refused",
            "Connections closed at accept because max_connections were open",
            |s| &mut s.refused,
        ),
        (
            "lanyard_listener_accept_errors",
            "Failed accepts (e.g. out of file descriptors), each followed by a back-off",
            |s| &mut s.accept_errors,
        ),
        (
            "lanyard_listener_handshake_timeouts",
            "Connections closed because the TLS handshake exceeded handshake_timeout",
            |s| &mut s.handshake_timeouts,
        ),
        (
            "lanyard_listener_handshakes_evicted",
            "Connections closed mid-handshake to make room for a new one while every slot was taken",
            |s| &mut s.handshakes_evicted,
        ),
        ("lanyard_listener_idle_closed", "Connections closed after idle_timeout without a request or a byte", |s| {
            &mut s.idle_closed
        }),
    ];
    for (name, help, field) in counters {
        let family = Family::<ListenerName, Counter>::default();
        registry.register(name, help, family.clone());
        for (s, n) in stats.iter_mut().zip(&names) {
            *field(s) = family.get_or_create_owned(n);
        }
    }
    let [https, metrics] = stats;
    (https, metrics)
}

/// Writes one sample of a family with labels.
fn sample<S: EncodeLabelSet>(
    family: &mut prometheus_client::encoding::MetricEncoder<'_>,
    labels: &S,
    value: i64,
) -> Result<(), std::fmt::Error> {
    family.encode_family(labels)?.encode_gauge(&value)
}

/// Writes one counter sample of a family with labels.
fn count<S: EncodeLabelSet>(
    family: &mut prometheus_client::encoding::MetricEncoder<'_>,
    labels: &S,
    value: u64,
) -> Result<(), std::fmt::Error> {
    family.encode_family(labels)?.encode_counter::<NoLabelSet, _, u64>(&value, None)
}

/// The rate-limit sweep's last findings. Copied by the sweep rather than read from the limiters
/// at scrape time: the number of keys tracked is defined as "after the last sweep" (before it,
/// refilled buckets not yet forgotten would count).
#[derive(Debug, Default)]
struct RateLimits(Mutex<Vec<(&'static str, usize, u64)>>);

impl Collector for RateLimits {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let limits = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut f = encoder.encode_descriptor(
            "lanyard_acme_rate_limited",
            "ACME requests refused by each rate limit.",
            None,
            MetricType::Counter,
        )?;
        for (name, _, refused) in &limits {
            count(&mut f, &[("limit", *name)], *refused)?;
        }
        let mut f = encoder.encode_descriptor(
            "lanyard_acme_rate_limit_keys",
            "Client keys each ACME rate limit tracks (bounded).",
            None,
            MetricType::Gauge,
        )?;
        for (name, tracked, _) in &limits {
            sample(&mut f, &[("limit", *name)], i64::try_from(*tracked).unwrap_or(i64::MAX))?;
        }
        Ok(())
    }
}

/// `lanyard_issuance_*`, read from the authority's statistics when scraped.
#[derive(Debug)]
struct Issuance(Arc<Authority>);

impl Collector for Issuance {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering;
        let stats = self.0.stats();
        let mut f =
            encoder.encode_descriptor("lanyard_issuance", "Issuance requests by result.", None, MetricType::Counter)?;
        for (result, v) in [("issued", &stats.issued), ("refused", &stats.refused), ("failed", &stats.failed)] {
            count(&mut f, &[("result", result)], v.load(Ordering::Relaxed))?;
        }
        // The authority keeps cumulative counts (`le` semantics); the encoder wants each bucket's own.
        let cumulative = stats.buckets();
        let mut below = 0;
        let buckets: Vec<(f64, u64)> = ca::stats::LATENCY_BUCKETS
            .iter()
            .zip(cumulative)
            .map(|(b, n)| {
                let own = n.saturating_sub(below);
                below = n.max(below);
                (*b, own)
            })
            .collect();
        let mut f = encoder.encode_descriptor(
            "lanyard_issuance_duration_seconds",
            "Durable issuance latency (record, sign, record).",
            None,
            MetricType::Histogram,
        )?;
        f.encode_histogram::<NoLabelSet>(stats.sum_seconds(), stats.issued.load(Ordering::Relaxed), &buckets, None)
    }
}

/// `lanyard_task_up`: whether each supervised background task still runs.
#[derive(Debug)]
struct TaskUp(crate::supervise::Tasks);

impl Collector for TaskUp {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut f = encoder.encode_descriptor(
            "lanyard_task_up",
            "1 while a supervised background task runs, 0 once it ended (see /health).",
            None,
            MetricType::Gauge,
        )?;
        for (name, up) in self.0.snapshot() {
            sample(&mut f, &[("task", name)], i64::from(up))?;
        }
        Ok(())
    }
}

/// An emergency rotation as the gauges report it.
#[derive(Debug)]
struct EmergencyGauges {
    id: String,
    affected: i64,
    outstanding: i64,
    duration: i64,
    pending: i64,
}

/// What the journal and the emergencies say, read from the CA's views once per scrape and encoded as
/// a collector of a per-scrape registry.
#[derive(Debug)]
struct Journal {
    /// (id, kind, state, notAfter) of each issuer.
    issuers: Vec<(String, String, String, i64)>,
    /// Unexpired certificates of each retired issuer.
    retired_valid: Vec<(String, i64)>,
    bundle_sequence: u64,
    emergencies: Vec<EmergencyGauges>,
    /// Completed rotations by kind.
    rotations: [(&'static str, u64); 3],
    /// How far the live fleet has installed the current bundle (agents' trust reports).
    convergence: ca::fleet::Convergence,
    /// Live workloads by the issuer of the certificate they serve.
    serving: std::collections::BTreeMap<String, usize>,
    /// Report totals since start.
    fleet: ca::fleet::FleetTotals,
    /// The rotation step waiting for the fleet, if any.
    gate: Option<ca::fleet::GateStatus>,
    /// (events in the audit chain, events outside it): M8.
    audit: (i64, i64),
    /// Rotations being watched.
    windows: Vec<ca::fleet::Window>,
    /// Refused handshakes per recent rotation window.
    refused_in_windows: Vec<(String, u64)>,
}

impl Journal {
    async fn read(authority: &Authority) -> Result<Self, ca::CaError> {
        let views = authority.views();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let journal = views.issuers().await?;
        let issuers = journal
            .iter()
            .map(|r| (r.id.clone(), r.kind.to_string(), r.state.to_string(), r.not_after.unix_timestamp()))
            .collect();
        let mut retired_valid = Vec::new();
        for r in journal.iter().filter(|r| r.state == IssuerState::Retired) {
            retired_valid.push((r.id.clone(), views.valid_certificates_of(&r.id, now).await?));
        }
        let bundle_sequence = views.bundle_sequence(&TrustBundle::from_journal(&journal).digest()).await?;
        let list = views.emergencies().await?;
        let mut emergencies = Vec::with_capacity(list.len());
        for e in &list {
            let outstanding =
                if e.completed_at.is_some() { 0 } else { views.emergency_outstanding(&e.issuer_id, now).await? };
            emergencies.push(EmergencyGauges {
                id: e.id.clone(),
                affected: e.affected,
                outstanding,
                duration: e.completed_at.unwrap_or(now) - e.started_at,
                pending: e.enforce_at.map_or(0, |t| (t - now).max(0)),
            });
        }
        let completed = |kind: ca::IssuerKind| {
            let n = journal.iter().filter(|r| r.kind == kind && r.state != IssuerState::Prepared).count();
            u64::try_from(n.saturating_sub(1)).unwrap_or(u64::MAX)
        };
        let rotations = [
            ("intermediate", completed(ca::IssuerKind::Intermediate)),
            ("root", completed(ca::IssuerKind::Root)),
            ("emergency", u64::try_from(list.len()).unwrap_or(u64::MAX)),
        ];
        let at = time::OffsetDateTime::now_utc();
        let fleet = authority.fleet();
        Ok(Journal {
            issuers,
            retired_valid,
            bundle_sequence,
            emergencies,
            rotations,
            convergence: fleet.convergence(bundle_sequence, at),
            serving: fleet.serving_issuers(at),
            fleet: fleet.totals(),
            gate: fleet.gate(),
            audit: views.audit_counts().await?,
            windows: fleet.windows(),
            refused_in_windows: fleet.refused_in_windows(),
        })
    }
}

impl Collector for Journal {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauge = MetricType::Gauge;
        let mut f = encoder.encode_descriptor(
            "lanyard_issuer_not_after_timestamp_seconds",
            "Expiry of each issuer in the journal.",
            None,
            gauge,
        )?;
        for (id, kind, state, not_after) in &self.issuers {
            sample(&mut f, &[("id", id.as_str()), ("kind", kind.as_str()), ("state", state.as_str())], *not_after)?;
        }
        let mut by_state = std::collections::BTreeMap::<(&str, &str), i64>::new();
        for (_, kind, state, _) in &self.issuers {
            *by_state.entry((kind.as_str(), state.as_str())).or_default() += 1;
        }
        let mut f = encoder.encode_descriptor("lanyard_issuers", "Issuers by kind and state.", None, gauge)?;
        for ((kind, state), n) in &by_state {
            sample(&mut f, &[("kind", *kind), ("state", *state)], *n)?;
        }
        let mut f = encoder.encode_descriptor(
            "lanyard_certificates_valid_under_retired_issuer",
            "Unexpired certificates signed by an issuer that no longer signs (retired or revoked).",
            None,
            gauge,
        )?;
        for (issuer, n) in &self.retired_valid {
            sample(&mut f, &[("issuer", issuer.as_str())], *n)?;
        }
        encoder
            .encode_descriptor("lanyard_bundle_sequence", "spiffe_sequence of the trust bundle.", None, gauge)?
            .encode_gauge(&self.bundle_sequence)?;
        type Field = fn(&EmergencyGauges) -> i64;
        let per_rotation: [(&str, &str, Field); 4] = [
            (
                "lanyard_emergency_rotation_affected_certificates",
                "Certificates an emergency rotation asked to renew.",
                |e| e.affected,
            ),
            (
                "lanyard_emergency_rotation_outstanding_certificates",
                "Certificates of a revoked intermediate still valid and not yet renewed.",
                |e| e.outstanding,
            ),
            (
                "lanyard_emergency_rotation_duration_seconds",
                "From the emergency rotation command to the last affected workload renewed (so far, while running).",
                |e| e.duration,
            ),
            (
                "lanyard_emergency_revocation_pending_seconds",
                "Seconds until relying parties are told of an emergency rotation's revocation (0: in force).",
                |e| e.pending,
            ),
        ];
        for (name, help, value) in per_rotation {
            let mut f = encoder.encode_descriptor(name, help, None, gauge)?;
            for e in &self.emergencies {
                sample(&mut f, &[("rotation", e.id.as_str())], value(e))?;
            }
        }
        let mut f = encoder.encode_descriptor(
            "lanyard_rotations",
            "Completed rotations by kind, from the journal (the same on every replica).",
            None,
            MetricType::Counter,
        )?;
        for (kind, n) in self.rotations {
            count(&mut f, &[("kind", kind)], n)?;
        }
        self.encode_fleet(&mut encoder)
    }
}

impl Journal {
    /// The fleet's trust state, from agents' reports (`ca::fleet`).
    fn encode_fleet(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (gauge, counter) = (MetricType::Gauge, MetricType::Counter);
        let c = &self.convergence;
        let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let mut f = encoder.encode_descriptor(
            "lanyard_fleet_workloads",
            "Workloads whose agent reported its trust state: live (heard from within the fleet horizon) or gone.",
            None,
            gauge,
        )?;
        sample(&mut f, &[("state", "live")], as_i64(c.live))?;
        sample(&mut f, &[("state", "gone")], as_i64(c.gone))?;
        let mut f = encoder.encode_descriptor(
            "lanyard_fleet_bundle_confirmed_workloads",
            "Live workloads that have installed the current trust bundle (lanyard_bundle_sequence) or a newer one.",
            None,
            gauge,
        )?;
        sample(&mut f, &[("sequence", c.sequence.to_string().as_str())], as_i64(c.confirmed))?;
        let mut f = encoder.encode_descriptor(
            "lanyard_fleet_serving_workloads",
            "Live workloads by the issuer (SHA-256 of its certificate) of the certificate they serve.",
            None,
            gauge,
        )?;
        for (issuer, n) in &self.serving {
            sample(&mut f, &[("issuer", issuer.as_str())], as_i64(*n))?;
        }
        let t = &self.fleet;
        let mut f = encoder.encode_descriptor(
            "lanyard_fleet_reports",
            "Trust-state reports received with renewals and notices polls (untracked: the fleet view was full).",
            None,
            counter,
        )?;
        count(&mut f, &[("tracked", "true")], t.reports.saturating_sub(t.untracked_reports))?;
        count(&mut f, &[("tracked", "false")], t.untracked_reports)?;
        let mut f = encoder.encode_descriptor(
            "lanyard_fleet_handshakes",
            "Handshakes the agents' seam verifiers accepted or refused, as the agents reported them, refusals by reason.",
            None,
            counter,
        )?;
        count(&mut f, &[("outcome", "accepted"), ("reason", "")], t.accepted)?;
        for reason in ca::fleet::RefusalReason::ALL {
            let n = t.refused.get(&reason).copied().unwrap_or(0);
            count(&mut f, &[("outcome", "refused"), ("reason", reason.as_str())], n)?;
        }
        type GateField = fn(&ca::fleet::GateStatus) -> i64;
        let mut f = encoder.encode_descriptor(
            "lanyard_audit_events",
            "M8: audit events in the hash chain (every audited state change) and outside it (should be 0; \
             `lanyard-ca audit verify` checks the chain).",
            None,
            gauge,
        )?;
        sample(&mut f, &[("chain", "in")], self.audit.0)?;
        sample(&mut f, &[("chain", "outside")], self.audit.1)?;
        let mut f = encoder.encode_descriptor(
            "lanyard_rotation_window_open",
            "Rotations whose fleet convergence is being watched (1 each), by rotation id and kind.",
            None,
            gauge,
        )?;
        for w in &self.windows {
            sample(&mut f, &[("rotation", w.rotation.as_str()), ("kind", w.kind)], 1)?;
        }
        let mut f = encoder.encode_descriptor(
            "lanyard_rotation_refused_handshakes",
            "M5: handshakes agents reported refused while a rotation's window was open or its canary soaked, by rotation id (the 20 latest).",
            None,
            counter,
        )?;
        for (rotation, n) in &self.refused_in_windows {
            count(&mut f, &[("rotation", rotation.as_str())], *n)?;
        }
        let gates: [(&str, &str, GateField); 4] = [
            (
                "lanyard_rotation_gate_waiting",
                "1 while a root rotation step waits for the fleet's confirmation (see lanyard_rotation_gate_*).",
                |_| 1,
            ),
            (
                "lanyard_rotation_gate_overdue",
                "1 when the waiting step is past [rotation] fleet_deadline: it keeps waiting, someone should look.",
                |g| i64::from(g.overdue),
            ),
            (
                "lanyard_rotation_gate_confirmed_workloads",
                "Live workloads that confirmed what the waiting step needs.",
                |g| i64::try_from(g.confirmed).unwrap_or(i64::MAX),
            ),
            (
                "lanyard_rotation_gate_required_workloads",
                "Confirmations the waiting step needs ([rotation] fleet_quorum of the live workloads).",
                |g| i64::try_from(g.required).unwrap_or(i64::MAX),
            ),
        ];
        for (name, help, value) in gates {
            let mut f = encoder.encode_descriptor(name, help, None, gauge)?;
            if let Some(g) = &self.gate {
                sample(&mut f, &[("step", g.step), ("issuer", g.issuer.as_str())], value(g))?;
            }
        }
        // Agent-observed fetch latency (M4): mean = rate(seconds) / rate(fetches).
        encoder
            .encode_descriptor(
                "lanyard_fleet_reported_fetches",
                "Certificate fetches (renewal or enrollment) whose latency agents reported.",
                None,
                counter,
            )?
            .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&t.fetch_latency_count, None)?;
        encoder
            .encode_descriptor(
                "lanyard_fleet_reported_fetch_seconds",
                "Sum of the certificate fetch latencies agents reported, as they observed them.",
                None,
                counter,
            )?
            .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&t.fetch_latency_sum, None)?;
        Ok(())
    }
}

/// Why a scrape has no answer.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The CA's views could not be read.
    #[error(transparent)]
    Ca(#[from] ca::CaError),
    /// A collector failed to encode (writing into a `String` does not fail; kept typed anyway).
    #[error("encoding the exposition: {0}")]
    Encode(#[from] std::fmt::Error),
}

/// Renders every metric: the CA's views read now, then everything in `registry`.
pub async fn render(registry: &Registry, authority: &Authority) -> Result<String, RenderError> {
    let mut scrape = Registry::default();
    scrape.register_collector(Box::new(Journal::read(authority).await?));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &scrape)?;
    prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?;
    Ok(out)
}

/// Serves `/metrics` on `listener` (plain HTTP/1.1) until the task is dropped, with the timeouts of
/// `limits` and its connection limit (see [`crate::listener`]); its own counters go to `stats`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    authority: Arc<Authority>,
    limits: ListenerConfig,
    stats: ListenerStats,
    page: bool,
) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    let mut incoming = BoundedListener::new(listener, "metrics", limits.max_connections, stats.clone());
    let limits = Arc::new(limits);
    loop {
        // No handshake to evict on plain HTTP: the header deadline bounds a silent scraper.
        let listener::Accepted { tcp, slot, .. } = incoming.accept().await;
        let (authority, registry, limits, stats) = (authority.clone(), registry.clone(), limits.clone(), stats.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let (authority, registry) = (authority.clone(), registry.clone());
                async move {
                    if req.uri().path().starts_with("/ops") {
                        // Off by default: then the page's paths do not exist.
                        let path = if page { req.uri().path() } else { "" };
                        return operator_page_response(path, &authority).await;
                    }
                    let (status, body) = match render(&registry, &authority).await {
                        Ok(b) => (200, b),
                        Err(e) => {
                            tracing::warn!(error = %e, "metrics unavailable");
                            (503, "metrics unavailable\n".to_owned())
                        }
                    };
                    hyper::Response::builder()
                        .status(status)
                        .header("content-type", prometheus_client::encoding::prometheus_text::CONTENT_TYPE)
                        .body(Full::new(Bytes::from(body)))
                }
            });
            if let Err(e) = listener::serve_http(tcp, Protocol::Http1, &limits, &stats, svc).await {
                tracing::debug!(error = %e, "a metrics connection ended with an error");
            }
        });
    }
}

/// `/ops` (the page), `/ops/app.js` and `/ops/state.json` ([`crate::operator_page`]).
async fn operator_page_response(
    path: &str,
    authority: &Authority,
) -> Result<hyper::Response<http_body_util::Full<hyper::body::Bytes>>, hyper::http::Error> {
    use http_body_util::Full;
    use hyper::body::Bytes;
    let (status, content_type, body) = match path {
        "/ops" | "/ops/" => {
            (200, "text/html; charset=utf-8", Bytes::from_static(crate::operator_page::PAGE.as_bytes()))
        }
        "/ops/app.js" => {
            (200, "text/javascript; charset=utf-8", Bytes::from_static(crate::operator_page::SCRIPT.as_bytes()))
        }
        "/ops/state.json" => match crate::operator_page::state(authority).await {
            Ok(v) => (200, "application/json", Bytes::from(v.to_string())),
            Err(e) => {
                tracing::warn!(error = %e, "operator page state unavailable");
                let problem = serde_json::to_vec(&crate::problem::Problem::from(e)).unwrap_or_default();
                (503, "application/problem+json", Bytes::from(problem))
            }
        },
        _ => (404, "text/plain; charset=utf-8", Bytes::from_static(b"not found\n")),
    };
    hyper::Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-security-policy", crate::operator_page::CSP)
        .header("x-content-type-options", "nosniff")
        .header("cache-control", "no-store")
        .body(Full::new(body))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Every family README.md documents for `lanyard-ca` (Metrics, ACME limits), with its type.
    const DOCUMENTED: [(&str, &str); 44] = [
        ("lanyard_issuer_not_after_timestamp_seconds", "gauge"),
        ("lanyard_issuers", "gauge"),
        ("lanyard_certificates_valid_under_retired_issuer", "gauge"),
        ("lanyard_bundle_sequence", "gauge"),
        ("lanyard_rotations_total", "counter"),
        ("lanyard_rotation_steps_total", "counter"),
        ("lanyard_rotation_last_duration_seconds", "gauge"),
        ("lanyard_active_issuer_changes_total", "counter"),
        ("lanyard_emergency_rotation_affected_certificates", "gauge"),
        ("lanyard_emergency_rotation_outstanding_certificates", "gauge"),
        ("lanyard_emergency_rotation_duration_seconds", "gauge"),
        ("lanyard_emergency_revocation_pending_seconds", "gauge"),
        ("lanyard_issuance_total", "counter"),
        ("lanyard_issuance_duration_seconds", "histogram"),
        ("lanyard_authentication_failures_total", "counter"),
        ("lanyard_notice_waiters", "gauge"),
        ("lanyard_listener_open_connections", "gauge"),
        ("lanyard_listener_connections_refused_total", "counter"),
        ("lanyard_listener_accept_errors_total", "counter"),
        ("lanyard_listener_handshake_timeouts_total", "counter"),
        ("lanyard_listener_handshakes_evicted_total", "counter"),
        ("lanyard_listener_idle_closed_total", "counter"),
        ("lanyard_task_up", "gauge"),
        ("lanyard_acme_rate_limited_total", "counter"),
        ("lanyard_acme_rate_limit_keys", "gauge"),
        ("lanyard_acme_validations_in_flight", "gauge"),
        ("lanyard_acme_validations_refused_total", "counter"),
        ("lanyard_acme_purged_rows_total", "counter"),
        ("lanyard_fleet_workloads", "gauge"),
        ("lanyard_fleet_bundle_confirmed_workloads", "gauge"),
        ("lanyard_fleet_serving_workloads", "gauge"),
        ("lanyard_fleet_reports_total", "counter"),
        ("lanyard_fleet_handshakes_total", "counter"),
        ("lanyard_fleet_reported_fetches_total", "counter"),
        ("lanyard_fleet_reported_fetch_seconds_total", "counter"),
        ("lanyard_audit_events", "gauge"),
        ("lanyard_rotation_window_open", "gauge"),
        ("lanyard_rotation_refused_handshakes_total", "counter"),
        ("lanyard_rotation_gate_waiting", "gauge"),
        ("lanyard_rotation_gate_overdue", "gauge"),
        ("lanyard_rotation_gate_confirmed_workloads", "gauge"),
        ("lanyard_rotation_gate_required_workloads", "gauge"),
        ("lanyard_rotation_converge_seconds", "histogram"),
        ("lanyard_rotations_finished_total", "counter"),
    ];

    /// Parses a text exposition (format 0.0.4) into family -> type, checking that every family
    /// has one HELP and one TYPE line and every sample belongs to a declared family and has a
    /// numeric value.
    fn families(text: &str) -> BTreeMap<String, String> {
        let mut types = BTreeMap::new();
        let mut helps = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(types.insert(name.to_owned(), kind.to_owned()).is_none(), "two TYPE lines for {name}");
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP name text");
                assert!(!help.is_empty(), "empty HELP for {name}");
                assert!(helps.insert(name.to_owned(), help.to_owned()).is_none(), "two HELP lines for {name}");
            } else if !line.is_empty() {
                let name = line.split(['{', ' ']).next().expect("sample name");
                let value = line.rsplit(' ').next().expect("sample value");
                assert!(value.parse::<f64>().is_ok(), "not a number: {line}");
                let family = [name, name.trim_end_matches("_bucket"), name.trim_end_matches("_sum")]
                    .into_iter()
                    .chain([name.trim_end_matches("_count")])
                    .find(|f| types.contains_key(*f));
                assert!(family.is_some(), "sample of an undeclared family: {line}");
            }
        }
        assert_eq!(types.keys().collect::<Vec<_>>(), helps.keys().collect::<Vec<_>>(), "HELP and TYPE agree");
        types
    }

    #[tokio::test]
    async fn the_metrics_endpoint_serves_every_documented_family_with_its_type() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = crate::config::Config { data_dir: dir.path().join("data"), ..Default::default() };
        let admin = crate::ops::open_admin(&cfg).await.expect("store");
        let pass = ca::Passphrase::random().expect("passphrase");
        crate::ops::init(&cfg, &admin, &pass, None).await.expect("init");
        let authority = Arc::new(admin.load_authority(cfg.policy.clone(), &pass).await.expect("authority"));
        let (registry, metrics) = registry(authority.clone(), crate::supervise::Tasks::default());
        metrics.auth_failure("badNonce");
        metrics.rotation_step("activate", true);
        metrics.acme_purged("orders", 2);
        metrics.rate_limits(vec![("new_order", 3, 1)]);

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stats = metrics.metrics_listener.clone();
        let server =
            tokio::spawn(serve(listener, Arc::new(registry), authority, ListenerConfig::default(), stats, false));
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.expect("write");
        let mut page = String::new();
        tcp.read_to_string(&mut page).await.expect("read");
        server.abort();

        let (head, body) = page.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("text/plain; version=0.0.4"), "{head}");
        let types = families(body);
        for (name, kind) in DOCUMENTED {
            assert_eq!(types.get(name).map(String::as_str), Some(kind), "{name} in\n{body}");
        }
        for sample in [
            "lanyard_authentication_failures_total{reason=\"badNonce\"} 1\n",
            "lanyard_rotation_steps_total{step=\"activate\",result=\"success\"} 1\n",
            "lanyard_acme_purged_rows_total{kind=\"orders\"} 2\n",
            "lanyard_acme_rate_limited_total{limit=\"new_order\"} 1\n",
            "lanyard_acme_rate_limit_keys{limit=\"new_order\"} 3\n",
            "lanyard_rotations_total{kind=\"intermediate\"} 0\n",
            "lanyard_listener_open_connections{listener=\"https\"} 0\n",
            // The scrape itself holds a slot of the metrics listener.
            "lanyard_listener_open_connections{listener=\"metrics\"} 1\n",
            "lanyard_issuance_duration_seconds_bucket{le=\"+Inf\"} ",
            "lanyard_issuance_total{result=\"issued\"} ",
        ] {
            assert!(body.contains(sample), "{sample} in\n{body}");
        }
    }
}
