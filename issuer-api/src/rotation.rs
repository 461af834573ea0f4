//! The rotation loop of `lanyard-ca serve`: every `check_interval`, the replica holding the
//! rotation lease runs the due journal steps (`ca::rotation`), and every replica picks up a new
//! active intermediate.

use std::sync::Arc;

use ca::rotation::{RotationKeys, RotationPolicy};
use ca::{Authority, Passphrase};

use ca::rotation::Step;
use tracing::{info, warn};

/// How often every replica re-reads the active intermediate.
pub const REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// Lease name in the `leases` table.
const LEASE: &str = "rotation";

/// Spawns the loop. `keys` is None when the root key is not available (kept offline): the loop
/// then only follows rotations made elsewhere (`lanyard-ca rotate intermediate`). A new emergency
/// is posted on `notices`, which wakes the agents long-polling this replica.
pub fn spawn(
    tasks: &crate::supervise::Tasks,
    authority: Arc<Authority>,
    policy: RotationPolicy,
    keys: Option<RotationKeys>,
    pass: Passphrase,
    notices: crate::notices::NoticeBoard,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let holder = ca::rotation::rotation_id();
    tasks.spawn("rotation", async move {
        // The journal is read every second (a cheap query), so a rotation made by another replica
        // or by `lanyard-ca rotate` (an emergency above all) stops the old issuer within a second;
        // rotation steps themselves are considered every `check_interval`.
        let mut tick = tokio::time::interval(REFRESH.min(policy.check_interval));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut warned_offline = false;
        // The active intermediate last seen: a change made elsewhere opens a convergence window.
        let mut last_active = authority.active_issuer().ok().map(|a| a.record.id.clone());
        let mut next_step = tokio::time::Instant::now();
        loop {
            tick.tick().await;
            let driver = authority.rotation_driver();
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let step_due = tokio::time::Instant::now() >= next_step;
            if step_due {
                next_step = tokio::time::Instant::now() + policy.check_interval;
            }
            if step_due {
                let lease_for = ca::units::secs(policy.check_interval).saturating_mul(3).max(10);
                match driver.acquire_lease(LEASE, &holder, now, now + lease_for).await {
                    Ok(true) => {
                        // A canary is judged wherever the lease is, with or without the root key.
                        judge_canary(&driver, &policy, now, &metrics).await;
                        match &keys {
                            Some(keys) if policy.enabled => {
                                run_steps(&driver, keys, &policy, now, &metrics).await;
                            }
                            None if policy.enabled && !warned_offline => {
                                warned_offline = true;
                                warn!(
                                    "automatic intermediate rotation is on but the root key is not in the data \
                                     directory; rotate with `lanyard-ca rotate intermediate` where the root key is"
                                );
                            }
                            _ => {}
                        }
                    }
                    Ok(false) => {}
                    Err(e) => warn!(error = %e, "cannot take the rotation lease"),
                }
            }
            match authority.refresh_active(&pass).await {
                Ok(true) => {
                    metrics.issuer_changes.inc();
                    // A change made elsewhere (another replica, `lanyard-ca rotate`): watch the
                    // fleet move to it too, unless a step of ours already does.
                    if let Ok(a) = authority.active_issuer()
                        && last_active.as_deref() != Some(a.record.id.as_str())
                    {
                        last_active = Some(a.record.id.clone());
                        let target = ca::fleet::Target::Serving(a.record.fingerprint.clone());
                        let fleet = driver.fleet();
                        if !fleet.windows().iter().any(|w| w.target == target) {
                            let started = time::OffsetDateTime::now_utc();
                            fleet.open_window(ca::fleet::Window {
                                rotation: format!("issuer-{}", a.record.id),
                                kind: "intermediate",
                                target,
                                started,
                                deadline: started + policy.converge_deadline,
                            });
                        }
                    }
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "cannot load the active intermediate"),
            }
            track_emergencies(&driver, now, &notices, &policy).await;
            track_canaries(&driver, &notices, &metrics).await;
            for closed in driver.fleet().close_windows(time::OffsetDateTime::now_utc()) {
                metrics.rotation_finished(&closed);
                let (w, took_s) = (&closed.window, closed.took.as_secs());
                if closed.converged {
                    info!(rotation = %w.rotation, kind = w.kind, took_s, "the live fleet converged on the rotation");
                } else {
                    warn!(rotation = %w.rotation, kind = w.kind, took_s, unconverged = closed.unconverged, "rotation window closed with live workloads not on it (partial)");
                }
            }
        }
    });
}

/// On PostgreSQL (`[policy.fleet] share`), exchanges this replica's fleet view with the other
/// replicas' every `share_interval`, so the rotation lease holder's gates and canary verdicts
/// count every replica's reports. An exchange that fails keeps what it would have written for the
/// next one and is retried after the interval.
pub fn spawn_fleet_share(tasks: &crate::supervise::Tasks, authority: Arc<Authority>) {
    let driver = authority.rotation_driver();
    if !driver.shares_fleet() {
        return;
    }
    driver.fleet().enable_sharing();
    let every = driver.fleet().policy().share_interval;
    tasks.spawn("fleet-share", async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut since = 0;
        let mut failing = false;
        loop {
            tick.tick().await;
            match driver.exchange_fleet(since).await {
                Ok(v) => {
                    if failing {
                        info!("fleet view exchange with the other replicas works again");
                    }
                    (since, failing) = (v, false);
                }
                Err(e) if !failing => {
                    failing = true;
                    warn!(error = %e, "cannot exchange the fleet view with the other replicas; will retry");
                }
                Err(e) => tracing::debug!(error = %e, "fleet view exchange still failing"),
            }
        }
    });
}

/// The due journal steps, with the root CRLs re-signed (the lease holder, with the root key).
async fn run_steps(
    driver: &ca::views::RotationDriver,
    keys: &RotationKeys,
    policy: &RotationPolicy,
    now: i64,
    metrics: &crate::metrics::Metrics,
) {
    let rotation = ca::rotation::rotation_id();
    let started = std::time::Instant::now();
    match driver.run_due(keys, policy, now, &rotation).await {
        Ok(steps) if !steps.is_empty() => {
            for s in &steps {
                metrics.rotation_step(step_name(s), true);
            }
            watch_steps(driver, &steps, &rotation, policy).await;
            let took = started.elapsed();
            metrics.last_rotation_seconds.set(took.as_secs_f64());
            let ms = took.as_millis();
            info!(rotation, ?steps, took_ms = ms, "rotation steps taken");
        }
        Ok(_) => {}
        Err(e) => {
            metrics.rotation_step("any", false);
            warn!(rotation, error = %e, "rotation step failed; will retry");
        }
    }
    watch_root_rotation(driver, policy).await;
    // Root CRLs (listing intermediates revoked in an emergency) are re-signed here, where the
    // root key is, before half their validity.
    if let Ok(journal) = driver.issuers().await {
        for r in journal.iter().filter(|r| r.kind == ca::IssuerKind::Root && r.state != ca::IssuerState::Expired) {
            if let Err(e) = driver.sign_root_crl(keys, &r.id, false).await {
                warn!(root = %r.id, error = %e, "cannot re-sign the root CRL");
            }
        }
    }
}

/// Judges the soaking canary, if any; a completed one is watched until the fleet serves its
/// successor.
async fn judge_canary(
    driver: &ca::views::RotationDriver,
    policy: &RotationPolicy,
    now: i64,
    metrics: &crate::metrics::Metrics,
) {
    use ca::rotation::canary::CanaryDecision;
    match driver.canary_tick(policy, now).await {
        Ok(CanaryDecision::Soak) => {}
        Ok(CanaryDecision::Completed { rotation, successor }) => {
            metrics.canary_decided("completed");
            metrics.rotation_step("activate", true);
            let Ok(journal) = driver.issuers().await else { return };
            if let Some(r) = journal.iter().find(|r| r.id == successor) {
                let started = time::OffsetDateTime::now_utc();
                driver.fleet().open_window(ca::fleet::Window {
                    rotation,
                    kind: "intermediate",
                    target: ca::fleet::Target::Serving(r.fingerprint.clone()),
                    started,
                    deadline: started + policy.converge_deadline,
                });
            }
        }
        Ok(CanaryDecision::RolledBack { .. }) => metrics.canary_decided("rolled_back"),
        Err(e) => warn!(error = %e, "cannot judge the canary; will retry"),
    }
}

/// Wakes the agents whose certificates a canary's start (the canaries, under the previous
/// intermediate), its completion (everyone still under the previous one, across the rollout) or
/// a rollback (the discarded successor's holders) asked to renew.
async fn track_canaries(
    driver: &ca::views::RotationDriver,
    notices: &crate::notices::NoticeBoard,
    metrics: &crate::metrics::Metrics,
) {
    use ca::store::canary::CanaryState;
    let Ok(list) = driver.canaries().await else { return };
    metrics.canary_soaking.set(i64::from(list.iter().any(|c| c.state == CanaryState::Soaking)));
    // Every replica counts the handshakes reported to it while a canary soaks (shared with the
    // lease holder through the database on PostgreSQL).
    for c in list.iter().take(ca::fleet::MAX_WINDOW_TOTALS) {
        if c.state == CanaryState::Soaking {
            driver.fleet().start_tally(&c.rotation);
        } else {
            driver.fleet().end_tally(&c.rotation);
        }
    }
    let asks = list.iter().map(|c| match c.state {
        CanaryState::Soaking => (format!("canary-{}", c.rotation), c.previous.clone()),
        CanaryState::RolledBack => (format!("rollback-{}", c.rotation), c.successor.clone()),
        CanaryState::Completed => (format!("complete-{}", c.rotation), c.previous.clone()),
    });
    if notices.observe_asks(asks) {
        info!(waiters = notices.waiters(), "canary start or rollback seen: waking the agents waiting for notices");
    }
}

/// Starts watching the fleet's convergence on what the steps just taken changed: the newly active
/// intermediate (its certificates served by every live workload). A root rotation is watched from
/// its trigger instead ([`watch_root_rotation`]).
async fn watch_steps(driver: &ca::views::RotationDriver, steps: &[Step], rotation: &str, policy: &RotationPolicy) {
    let started = time::OffsetDateTime::now_utc();
    for step in steps {
        let Step::Activate { prepared, .. } = step else { continue };
        let Ok(journal) = driver.issuers().await else { continue };
        let Some(r) = journal.iter().find(|r| &r.id == prepared) else { continue };
        driver.fleet().open_window(ca::fleet::Window {
            rotation: rotation.to_owned(),
            kind: "intermediate",
            target: ca::fleet::Target::Serving(r.fingerprint.clone()),
            started,
            deadline: started + policy.converge_deadline,
        });
    }
}

/// Watches a root rotation from its trigger (`lanyard-ca rotate root`): converged once every live
/// workload serves a certificate of the new root's intermediate.
async fn watch_root_rotation(driver: &ca::views::RotationDriver, policy: &RotationPolicy) {
    let Ok(journal) = driver.issuers().await else { return };
    let Some(root) = journal.iter().find(|r| r.kind == ca::IssuerKind::Root && r.state == ca::IssuerState::Prepared)
    else {
        return;
    };
    let Some(int) = journal.iter().find(|r| r.parent_id.as_deref() == Some(root.id.as_str())) else { return };
    let target = ca::fleet::Target::Serving(int.fingerprint.clone());
    if driver.fleet().windows().iter().any(|w| w.target == target) {
        return;
    }
    driver.fleet().open_window(ca::fleet::Window {
        rotation: format!("root-{}", root.id),
        kind: "root",
        target,
        started: root.created_at,
        deadline: root.created_at + policy.root_overlap + policy.converge_deadline,
    });
}

fn step_name(s: &Step) -> &'static str {
    match s {
        Step::Prepare { .. } => "prepare",
        Step::Activate { .. } => "activate",
        Step::BeginCanary { .. } => "begin_canary",
        Step::Expire { .. } => "expire",
        Step::ActivateRoot { .. } => "activate_root",
        Step::ExpireRoot { .. } => "expire_root",
    }
}

/// Posts new emergency rotations on `notices`, marks them complete once every affected
/// certificate was renewed (or expired), which fixes their measured duration, and publishes the
/// root CRLs that enforce them when their time has come: at the planned time, or `settle_secs`
/// after the fleet has renewed if that is earlier (fleet-gated enforcement, `ca::rotation`).
/// Every replica runs this; the database makes each publication happen once.
async fn track_emergencies(
    driver: &ca::views::RotationDriver,
    now: i64,
    notices: &crate::notices::NoticeBoard,
    policy: &RotationPolicy,
) {
    let Ok(list) = driver.emergencies().await else { return };
    if notices.observe(&list) {
        let waiters = notices.waiters();
        info!(waiters, "emergency rotation seen: waking the agents waiting for notices");
        // Watch the fleet move to the intermediate active now (the emergency's successor).
        if let (Some(e), Ok(journal)) =
            (list.iter().filter(|e| e.completed_at.is_none()).max_by_key(|e| e.started_at), driver.issuers().await)
            && let Some(active) =
                journal.iter().find(|r| r.kind == ca::IssuerKind::Intermediate && r.state == ca::IssuerState::Active)
        {
            let started = time::OffsetDateTime::from_unix_timestamp(e.started_at)
                .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
            driver.fleet().open_window(ca::fleet::Window {
                rotation: e.id.clone(),
                kind: "emergency",
                target: ca::fleet::Target::Serving(active.fingerprint.clone()),
                started,
                deadline: started + policy.converge_deadline,
            });
        }
    }
    for e in list.iter().filter(|e| e.completed_at.is_none() || !e.enforced(now)) {
        match driver.emergency_outstanding(&e.issuer_id, now).await {
            Ok(0) => {
                if e.completed_at.is_none() && driver.complete_emergency(&e.id, now).await.is_ok() {
                    info!(rotation = %e.id, affected = e.affected, took_s = now - e.started_at, "emergency rotation complete: every affected workload renewed");
                }
                if let Some(settle) = e.settle_secs
                    && !e.enforced(now)
                {
                    let at = e.completed_at.unwrap_or(now).saturating_add(settle);
                    match driver.expedite_enforcement(&e.id, at).await {
                        Ok(true) => {
                            info!(rotation = %e.id, enforce_at = at, "the fleet has renewed: revocation brought forward")
                        }
                        Ok(false) => {}
                        Err(err) => warn!(rotation = %e.id, error = %err, "cannot bring the revocation forward"),
                    }
                }
            }
            Ok(n) => tracing::debug!(rotation = %e.id, outstanding = n, "emergency rotation in progress"),
            Err(err) => warn!(error = %err, "cannot measure an emergency rotation"),
        }
    }
    match driver.publish_due_crls(now).await {
        Ok(published) => {
            for p in published {
                warn!(root = %p.issuer_id, number = p.number, rotation = %p.rotation, "emergency revocation published: the suspect intermediate is refused from now on");
            }
        }
        Err(err) => warn!(error = %err, "cannot publish a staged root CRL; will retry"),
    }
}
