//! The scheduled driver: prepares a successor, activates it and retires the one it replaces,
//! expires what has nothing live left, and the root rotation's steps. Each step is one
//! transaction that checks the states it moves from.

use std::path::PathBuf;

use time::OffsetDateTime;
use tracing::{info, warn};

use super::gate::{self, Verdict};
use super::{RotationKeys, RotationPolicy, Step, load_root_key, plan, rotation_id};
use crate::audit::{AuditEvent, Outcome};
use crate::authority::sign_intermediate;
use crate::fleet::{Fleet, GateStatus};
use crate::issuers::{IssuerKind, IssuerRecord, IssuerState, rfc3339};
use crate::keys::{encrypt_key_pem, generate_key};
use crate::store::canary::CanaryState;
use crate::{CaError, Store};

/// `lanyard-ca rotate root`: a new root and an intermediate under it, both prepared, and the new
/// and the current root cross-certified by each other. The trust bundle carries both roots from now on; after
/// [`RotationPolicy::root_overlap`] the new pair becomes active, and the old root leaves the
/// bundle once every intermediate under it has expired. Returns (new root, new intermediate).
///
/// `import` brings an existing root instead (certificate PEM, key PEM — plain or encrypted with the
/// CA passphrase), e.g. one made offline by another team.
pub async fn prepare_root(
    store: &Store,
    keys: &RotationKeys,
    import: Option<(&str, &str)>,
) -> Result<(IssuerRecord, IssuerRecord), CaError> {
    let rotation = rotation_id();
    let journal = store.issuers().await?;
    if journal.iter().any(|r| r.kind == IssuerKind::Root && r.state == IssuerState::Prepared) {
        return Err(CaError::Config("a root rotation is already in progress (a prepared root exists)".into()));
    }
    let old_root = journal
        .iter()
        .find(|r| r.kind == IssuerKind::Root && r.state == IssuerState::Active)
        .ok_or_else(|| CaError::Config("no active root in the journal".into()))?;
    let old_key = load_root_key(keys, &old_root.id)?;
    let imported = match import {
        Some((cert_pem, key_pem)) => Some((
            crate::pem::decode_certificate(cert_pem)?,
            crate::keys::parse_key_pem(key_pem, &keys.pass, "imported root")?,
        )),
        None => None,
    };
    let succ = crate::authority::new_root_successor(&keys.init, &old_root.cert_der()?, old_key, imported)?;
    let mut root = IssuerRecord::from_cert(&succ.root_der, IssuerKind::Root, IssuerState::Prepared, None, None)?;
    // The key file first: a crash before the journal insert leaves only an unused file.
    let dir = keys.root_key_path.parent().map(PathBuf::from).unwrap_or_default();
    crate::fsutil::write_atomic(
        &dir.join(format!("root-{}.key.pem", root.id)),
        encrypt_key_pem(&succ.root_key, &keys.pass)?.as_bytes(),
        0o600,
    )?;
    crate::fsutil::write_atomic(&dir.join(format!("root-{}.pem", root.id)), root.cert_pem.as_bytes(), 0o644)?;
    let intermediate = IssuerRecord::from_cert(
        &succ.intermediate_der,
        IssuerKind::Intermediate,
        IssuerState::Prepared,
        Some(root.id.clone()),
        Some(encrypt_key_pem(&succ.intermediate_key, &keys.pass)?),
    )?;
    // Each root certified by the other: `leaf, intermediate, cross` then leads to either root.
    root.cross_cert_pem = Some(crate::pem::certificate(&succ.new_root_cross_der));
    let old_root_cross = crate::pem::certificate(&succ.current_root_cross_der);
    // A successor prepared under the old root is superseded.
    if let Some(p) = journal.iter().find(|r| r.kind == IssuerKind::Intermediate && r.state == IssuerState::Prepared) {
        let ev = AuditEvent::now(
            "ca",
            "issuer.discard",
            &p.id,
            Outcome::Success,
            format!("rotation {rotation}: superseded by the root rotation"),
        );
        store
            .transition_issuer(&p.id, IssuerState::Prepared, IssuerState::Expired, OffsetDateTime::now_utc(), &ev)
            .await?;
    }
    let audit = [
        AuditEvent::now(
            "operator",
            "root.prepare",
            &root.id,
            Outcome::Success,
            format!("rotation {rotation}: new root"),
        ),
        AuditEvent::now(
            "ca",
            "key.sign",
            &old_root.id,
            Outcome::Success,
            format!("rotation {rotation}: cross-certified the new root {}", root.id),
        ),
        AuditEvent::now(
            "ca",
            "key.sign",
            &root.id,
            Outcome::Success,
            format!("rotation {rotation}: cross-certified the current root {}", old_root.id),
        ),
        AuditEvent::now(
            "ca",
            "issuer.prepare",
            &intermediate.id,
            Outcome::Success,
            format!("rotation {rotation}: intermediate under root {}", root.id),
        ),
    ];
    store.insert_issuers_with_cross(&[&root, &intermediate], &[(&old_root.id, &old_root_cross)], &audit).await?;
    info!(rotation, root = %root.id, intermediate = %intermediate.id, "root rotation prepared");
    Ok((root, intermediate))
}

/// Creates a prepared successor intermediate signed by the active root. Returns its record.
pub async fn prepare_intermediate(store: &Store, keys: &RotationKeys, rotation: &str) -> Result<IssuerRecord, CaError> {
    let journal = store.issuers().await?;
    let root = journal
        .iter()
        .find(|r| r.kind == IssuerKind::Root && r.state == IssuerState::Active)
        .ok_or_else(|| CaError::Config("no active root in the journal".into()))?;
    let root_key = load_root_key(keys, &root.id)?;
    let now = OffsetDateTime::now_utc();
    let key = generate_key(keys.init.key_algorithm)?;
    let der = sign_intermediate(&keys.init, &root.cert_der()?, root_key, &key, now)?;
    let record = IssuerRecord::from_cert(
        &der,
        IssuerKind::Intermediate,
        IssuerState::Prepared,
        Some(root.id.clone()),
        Some(encrypt_key_pem(&key, &keys.pass)?),
    )?;
    let audit = [
        AuditEvent::now(
            "ca",
            "key.sign",
            &root.id,
            Outcome::Success,
            format!("rotation {rotation}: signed {}", record.id),
        ),
        AuditEvent::now(
            "ca",
            "issuer.prepare",
            &record.id,
            Outcome::Success,
            format!("rotation {rotation}: successor prepared, valid until {}", rfc3339(record.not_after)),
        ),
    ];
    store.insert_issuers(&[&record], &audit).await?;
    Ok(record)
}

/// Runs every due step. Returns the steps taken. A step another replica took first is skipped.
///
/// With `fleet` (and `[rotation] fleet_gate`), root steps wait for the fleet ([`super::gate`]):
/// a step the gate holds is skipped this time (later due steps still run) and published as the
/// fleet's gate status; once past `fleet_deadline` it is audited once as overdue.
pub async fn run_due(
    store: &Store,
    keys: &RotationKeys,
    p: &RotationPolicy,
    now: i64,
    rotation: &str,
    fleet: Option<&Fleet>,
) -> Result<Vec<Step>, CaError> {
    let fleet = fleet.filter(|_| p.fleet_gate);
    let mut taken = Vec::new();
    let mut waiting = None;
    // Bounded: each step changes the journal, and there are only so many issuers.
    'passes: for _ in 0..8 {
        let journal = store.issuers().await?;
        let canaries = store.canaries().await?;
        let hold = super::canary::holding_after_rollback(&canaries, &p.canary, now);
        let mut last = std::collections::HashMap::new();
        for r in journal.iter().filter(|r| r.state == IssuerState::Retired) {
            last.insert(r.id.clone(), store.last_signed_not_after(&r.id).await?);
        }
        let planned = plan(&journal, &|id| last.get(id).copied().flatten(), p);
        for mut next in planned.into_iter().filter(|s| s.at <= now) {
            match &next.step {
                // A canary decides when its successor is activated, not the clock.
                Step::Activate { prepared, .. }
                    if canaries.iter().any(|c| &c.successor == prepared && c.state == CanaryState::Soaking) =>
                {
                    continue;
                }
                Step::Prepare { .. } | Step::Activate { .. } if hold.is_some() => continue,
                Step::Activate { prepared, active } if p.canary.enabled() => {
                    next.step = Step::BeginCanary { prepared: prepared.clone(), active: active.clone() };
                }
                _ => {}
            }
            let note = match fleet {
                Some(f) => {
                    let at = OffsetDateTime::from_unix_timestamp(now).map_err(|e| CaError::Config(e.to_string()))?;
                    match gate::check(store, f, p, &journal, &next.step, next.at, at).await? {
                        Verdict::Proceed(note) => note,
                        Verdict::Wait(status) => {
                            waiting = Some(status);
                            continue;
                        }
                    }
                }
                None => String::new(),
            };
            if !execute_noted(store, keys, &next.step, rotation, &note, &p.canary).await? {
                break 'passes;
            }
            taken.push(next.step);
            // The journal changed: plan again.
            continue 'passes;
        }
        break;
    }
    if let Some(f) = fleet {
        publish_gate(store, f, waiting, rotation).await?;
    }
    Ok(taken)
}

/// Publishes the gate's status; logs and audits (once) a step past its deadline.
async fn publish_gate(
    store: &Store,
    fleet: &Fleet,
    waiting: Option<GateStatus>,
    rotation: &str,
) -> Result<(), CaError> {
    let previous = fleet.gate();
    let Some(mut status) = waiting else {
        fleet.set_gate(None);
        return Ok(());
    };
    let same = previous.as_ref().filter(|p| p.step == status.step && p.issuer == status.issuer);
    status.alerted = same.is_some_and(|p| p.alerted);
    if status.overdue {
        warn!(rotation, step = status.step, issuer = %status.issuer, reason = %status.reason, "rotation step overdue: still waiting for the fleet");
        if !status.alerted {
            let ev = AuditEvent::now(
                "ca",
                "rotation.gate_overdue",
                &status.issuer,
                Outcome::Failed,
                format!("rotation {rotation}: {} past its fleet deadline; {}", status.step, status.reason),
            );
            store.append_audit(ev).await?;
            status.alerted = true;
        }
    } else if same.is_none() {
        info!(rotation, step = status.step, issuer = %status.issuer, reason = %status.reason, "rotation step waits for the fleet");
    }
    fleet.set_gate(Some(status));
    Ok(())
}

/// Executes one step; false when the journal was no longer in the expected state.
pub async fn execute(store: &Store, keys: &RotationKeys, step: &Step, rotation: &str) -> Result<bool, CaError> {
    execute_noted(store, keys, step, rotation, "", &super::canary::CanaryPolicy::default()).await
}

/// [`execute`], with `note` (what the fleet gate saw) appended to the step's audit event.
async fn execute_noted(
    store: &Store,
    keys: &RotationKeys,
    step: &Step,
    rotation: &str,
    note: &str,
    canary: &super::canary::CanaryPolicy,
) -> Result<bool, CaError> {
    let now = OffsetDateTime::now_utc();
    match step {
        Step::BeginCanary { .. } => {
            super::canary::begin(store, &canary.spec(), canary.renew_spread, rotation, "ca").await?;
            Ok(true)
        }
        Step::Prepare { active } => {
            let r = prepare_intermediate(store, keys, rotation).await?;
            info!(rotation, successor = %r.id, replaces = %active, not_after = %rfc3339(r.not_after), "intermediate prepared");
            Ok(true)
        }
        Step::Activate { prepared, active } => {
            let ev = AuditEvent::now(
                "ca",
                "issuer.activate",
                prepared,
                Outcome::Success,
                format!("rotation {rotation}: activated, retiring {active}"),
            );
            let ok = store.activate_issuer(prepared, active, now, &ev).await?;
            if ok {
                info!(rotation, active = %prepared, retired = %active, "intermediate activated");
            }
            Ok(ok)
        }
        Step::ActivateRoot { root, intermediate, old_root, old_intermediate } => {
            let ev = AuditEvent::now(
                "ca",
                "root.activate",
                root,
                Outcome::Success,
                format!(
                    "rotation {rotation}: root {root} and intermediate {intermediate} active; {old_root} retired{note}"
                ),
            );
            let ok = store.activate_root(root, intermediate, old_root, old_intermediate, now, &ev).await?;
            if ok {
                info!(rotation, root = %root, intermediate = %intermediate, retired_root = %old_root, "root rotation: new root active");
            }
            Ok(ok)
        }
        Step::ExpireRoot { root } => {
            let ev = AuditEvent::now(
                "ca",
                "root.expire",
                root,
                Outcome::Success,
                format!("rotation {rotation}: every intermediate under it has expired; leaves the trust bundle{note}"),
            );
            let ok = store.transition_issuer(root, IssuerState::Retired, IssuerState::Expired, now, &ev).await?;
            if ok {
                info!(rotation, root = %root, "retired root left the trust bundle");
            }
            Ok(ok)
        }
        Step::Expire { retired } => {
            let ev = AuditEvent::now(
                "ca",
                "issuer.expire",
                retired,
                Outcome::Success,
                format!("rotation {rotation}: every certificate it signed has expired"),
            );
            let ok = store.transition_issuer(retired, IssuerState::Retired, IssuerState::Expired, now, &ev).await?;
            if ok {
                info!(rotation, expired = %retired, "retired intermediate expired");
            }
            Ok(ok)
        }
    }
}

/// `lanyard-ca rotate intermediate`: prepare a successor if there is none, then activate it now.
/// Returns (new active id, retired id).
pub async fn rotate_intermediate_now(store: &Store, keys: &RotationKeys) -> Result<(String, String), CaError> {
    let rotation = rotation_id();
    let journal = store.issuers().await?;
    let active = journal
        .iter()
        .find(|r| r.kind == IssuerKind::Intermediate && r.state == IssuerState::Active)
        .ok_or(CaError::NoActiveIssuer)?
        .clone();
    let prepared = match journal.iter().find(|r| r.kind == IssuerKind::Intermediate && r.state == IssuerState::Prepared)
    {
        Some(p) => p.clone(),
        None => prepare_intermediate(store, keys, &rotation).await?,
    };
    let step = Step::Activate { prepared: prepared.id.clone(), active: active.id.clone() };
    if !execute(store, keys, &step, &rotation).await? {
        warn!(rotation, "the journal changed during a manual rotation; nothing activated");
        return Err(CaError::Store("the issuer journal changed concurrently; run the rotation again".into()));
    }
    Ok((prepared.id, active.id))
}
