//! Automatic intermediate rotation, driven by the issuer journal.
//!
//! ```text
//!   active A ──(half of A's life)──► prepare B ──(1/6 of A's life left)──► activate B, retire A
//!   retired A ──(its last signed certificate expired)──► expired A
//! ```
//!
//! The timing is a pure function of the journal ([`plan`]); executing a step is one transaction
//! that checks the states it moves from ([`crate::Store::activate_issuer`]), so a crash between
//! steps resumes at the next tick and a crash inside a step changes nothing. With several replicas
//! on one database, a lease makes exactly one of them act; the others notice the new active
//! issuer at their next tick ([`crate::Authority::refresh_active`]).

use std::path::PathBuf;
use std::time::Duration;

use time::OffsetDateTime;
use tracing::{info, warn};

use crate::audit::{AuditEvent, Outcome};
use crate::authority::{InitOptions, sign_intermediate};
use crate::issuers::{IssuerKind, IssuerRecord, IssuerState, rfc3339};
use crate::keys::{Passphrase, decrypt_key_pem, encrypt_key_pem, generate_key};
use crate::{CaError, Store};

/// `[rotation]` configuration.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RotationPolicy {
    /// Rotate intermediates automatically (needs the encrypted root key in the data directory).
    pub enabled: bool,
    /// Fraction of the active intermediate's lifetime after which its successor is prepared.
    pub prepare_at: f64,
    /// Fraction of the active intermediate's lifetime after which the successor is activated
    /// (default 5/6: when a sixth of its life remains).
    pub activate_at: f64,
    /// How often the journal is checked.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// After `rotate root`, how long both roots are in the trust bundle before the new root's
    /// intermediate starts signing: time for every relying party to fetch the new bundle (make it
    /// several `[workload] bundle_refresh_hint`s).
    #[serde(with = "humantime_serde")]
    pub root_overlap: Duration,
}

impl Default for RotationPolicy {
    fn default() -> Self {
        RotationPolicy {
            enabled: true,
            prepare_at: 0.5,
            activate_at: 5.0 / 6.0,
            check_interval: Duration::from_secs(30),
            root_overlap: Duration::from_secs(3600),
        }
    }
}

impl RotationPolicy {
    /// Checks the thresholds.
    pub fn validate(&self) -> Result<(), CaError> {
        if !(self.prepare_at > 0.0 && self.prepare_at < self.activate_at && self.activate_at < 1.0) {
            return Err(CaError::Config("[rotation] needs 0 < prepare_at < activate_at < 1".into()));
        }
        if self.check_interval.is_zero() {
            return Err(CaError::Config("[rotation] check_interval must be > 0".into()));
        }
        Ok(())
    }
}

/// One rotation step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create and publish a successor for the active intermediate `active`.
    Prepare {
        /// The active intermediate.
        active: String,
    },
    /// Activate `prepared`, retiring `active`.
    Activate {
        /// The successor.
        prepared: String,
        /// The one it replaces.
        active: String,
    },
    /// Drop `retired` from the journal's trusted set: everything it signed has expired.
    Expire {
        /// The retired intermediate.
        retired: String,
    },
    /// End of a root rotation's overlap: the new root and its intermediate take over.
    ActivateRoot {
        /// The prepared root.
        root: String,
        /// Its prepared intermediate (cross-signed by the old root).
        intermediate: String,
        /// The root it replaces.
        old_root: String,
        /// The intermediate it replaces.
        old_intermediate: String,
    },
    /// A retired root leaves the trust bundle: every intermediate under it has expired.
    ExpireRoot {
        /// The retired root.
        root: String,
    },
}

/// A step and when it is due (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// What.
    pub step: Step,
    /// When.
    pub at: i64,
}

fn unix(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

/// The intermediate steps ahead, earliest first. `last_signed` gives, for a retired issuer, the
/// NotAfter of the last certificate it signed (None: it signed nothing).
pub fn plan(journal: &[IssuerRecord], last_signed: &dyn Fn(&str) -> Option<i64>, p: &RotationPolicy) -> Vec<Planned> {
    let ints = journal.iter().filter(|r| r.kind == IssuerKind::Intermediate);
    let active = ints.clone().find(|r| r.state == IssuerState::Active);
    let prepared = ints.clone().find(|r| r.state == IssuerState::Prepared);
    let mut out = Vec::new();
    let roots = journal.iter().filter(|r| r.kind == IssuerKind::Root);
    let prepared_root = roots.clone().find(|r| r.state == IssuerState::Prepared);
    if let (Some(pr), Some(a), Some(old_root)) =
        (prepared_root, active, roots.clone().find(|r| r.state == IssuerState::Active))
        && let Some(pi) = prepared.filter(|p| p.parent_id.as_ref() == Some(&pr.id))
    {
        // A root rotation in progress replaces the intermediate steps until it completes.
        out.push(Planned {
            step: Step::ActivateRoot {
                root: pr.id.clone(),
                intermediate: pi.id.clone(),
                old_root: old_root.id.clone(),
                old_intermediate: a.id.clone(),
            },
            // After the overlap, or earlier if the current intermediate is due to be replaced.
            at: (unix(pr.created_at) + p.root_overlap.as_secs() as i64)
                .min(unix(a.not_before) + ((unix(a.not_after) - unix(a.not_before)) as f64 * p.activate_at) as i64),
        });
    } else if let Some(a) = active {
        let nb = unix(a.not_before);
        let life = (unix(a.not_after) - nb).max(0) as f64;
        match prepared {
            None => out
                .push(Planned { step: Step::Prepare { active: a.id.clone() }, at: nb + (life * p.prepare_at) as i64 }),
            Some(s) => out.push(Planned {
                step: Step::Activate { prepared: s.id.clone(), active: a.id.clone() },
                // Never before the successor itself is valid.
                at: (nb + (life * p.activate_at) as i64).max(unix(s.not_before)),
            }),
        }
    }
    for r in ints.filter(|r| r.state == IssuerState::Retired) {
        let at = last_signed(&r.id).unwrap_or(unix(r.state_changed_at)).min(unix(r.not_after));
        out.push(Planned { step: Step::Expire { retired: r.id.clone() }, at });
    }
    for r in roots.filter(|r| r.state == IssuerState::Retired) {
        let children_live =
            journal.iter().any(|c| c.parent_id.as_ref() == Some(&r.id) && c.state != IssuerState::Expired);
        if !children_live {
            out.push(Planned { step: Step::ExpireRoot { root: r.id.clone() }, at: unix(r.state_changed_at) });
        }
    }
    out.sort_by_key(|p| p.at);
    out
}

/// Human-readable plan for `lanyard-ca status`.
pub fn describe(planned: &[Planned], journal: &[IssuerRecord]) -> Vec<String> {
    let subject = |id: &str| journal.iter().find(|r| r.id == id).map(|r| r.subject.clone()).unwrap_or_default();
    let when = |at: i64| OffsetDateTime::from_unix_timestamp(at).map(rfc3339).unwrap_or_else(|_| at.to_string());
    planned
        .iter()
        .map(|p| match &p.step {
            Step::Prepare { active } => {
                format!("{}: prepare a successor for intermediate {active} ({})", when(p.at), subject(active))
            }
            Step::Activate { prepared, active } => {
                format!("{}: activate {prepared}, retire {active}", when(p.at))
            }
            Step::ActivateRoot { root, intermediate, old_root, .. } => format!(
                "{}: root rotation: activate root {root} with intermediate {intermediate}, retire root {old_root}",
                when(p.at)
            ),
            Step::ExpireRoot { root } => format!("{}: retired root {root} leaves the trust bundle", when(p.at)),
            Step::Expire { retired } => {
                format!("{}: expire retired {retired} (its last certificate expires)", when(p.at))
            }
        })
        .collect()
}

/// A fresh id naming one rotation in logs and audit events.
pub fn rotation_id() -> String {
    let mut b = [0u8; 6];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    hex::encode(b)
}

/// What rotation needs beyond the store: the passphrase (to open the root key and to encrypt the
/// new intermediate key), the root key file, and how intermediates are made.
#[derive(Debug, Clone)]
pub struct RotationKeys {
    /// The CA passphrase.
    pub pass: Passphrase,
    /// The encrypted root key (`root.key.pem`).
    pub root_key_path: PathBuf,
    /// Lifetime, algorithm and organization of new intermediates.
    pub init: InitOptions,
}

/// Where the key of root `id` is: `root-<id>.key.pem` (roots made by `rotate root`), else the
/// `root.key.pem` written at init.
pub fn root_key_path(keys: &RotationKeys, id: &str) -> PathBuf {
    let dir = keys.root_key_path.parent().map(PathBuf::from).unwrap_or_default();
    let rotated = dir.join(format!("root-{id}.key.pem"));
    if rotated.exists() { rotated } else { keys.root_key_path.clone() }
}

fn load_root_key(keys: &RotationKeys, id: &str) -> Result<rcgen::KeyPair, CaError> {
    let path = root_key_path(keys, id);
    let pem = std::fs::read_to_string(&path).map_err(|e| {
        CaError::Config(format!("the key of root {id} ({}) is needed to sign an intermediate: {e}", path.display()))
    })?;
    decrypt_key_pem(&pem, &keys.pass, &format!("root {id}"))
}

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
            crate::issuers::pem_to_der(cert_pem)?,
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
    root.cross_cert_pem = Some(crate::issuers::der_to_pem(&succ.new_root_cross_der));
    let old_root_cross = crate::issuers::der_to_pem(&succ.current_root_cross_der);
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
pub async fn run_due(
    store: &Store,
    keys: &RotationKeys,
    p: &RotationPolicy,
    now: i64,
    rotation: &str,
) -> Result<Vec<Step>, CaError> {
    let mut taken = Vec::new();
    // Bounded: each step changes the journal, and there are only so many issuers.
    for _ in 0..8 {
        let journal = store.issuers().await?;
        let mut last = std::collections::HashMap::new();
        for r in journal.iter().filter(|r| r.state == IssuerState::Retired) {
            last.insert(r.id.clone(), store.last_signed_not_after(&r.id).await?);
        }
        let planned = plan(&journal, &|id| last.get(id).copied().flatten(), p);
        let Some(next) = planned.into_iter().find(|s| s.at <= now) else { break };
        let done = execute(store, keys, &next.step, rotation).await?;
        if !done {
            break;
        }
        taken.push(next.step);
    }
    Ok(taken)
}

/// Executes one step; false when the journal was no longer in the expected state.
pub async fn execute(store: &Store, keys: &RotationKeys, step: &Step, rotation: &str) -> Result<bool, CaError> {
    let now = OffsetDateTime::now_utc();
    match step {
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
                format!("rotation {rotation}: root {root} and intermediate {intermediate} active; {old_root} retired"),
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
                format!("rotation {rotation}: every intermediate under it has expired; leaves the trust bundle"),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, state: IssuerState, nb: i64, na: i64) -> IssuerRecord {
        let t = |s| OffsetDateTime::from_unix_timestamp(s).expect("time");
        IssuerRecord {
            id: id.into(),
            kind: IssuerKind::Intermediate,
            state,
            parent_id: None,
            subject: id.into(),
            cert_pem: String::new(),
            key_pem_enc: None,
            ski: String::new(),
            fingerprint: id.into(),
            not_before: t(nb),
            not_after: t(na),
            created_at: t(nb),
            state_changed_at: t(nb),
            cross_cert_pem: None,
        }
    }

    #[test]
    fn prepares_at_half_and_activates_with_a_sixth_left() {
        let p = RotationPolicy::default();
        let none = |_: &str| None;
        let j = vec![rec("a", IssuerState::Active, 0, 600)];
        assert_eq!(plan(&j, &none, &p), vec![Planned { step: Step::Prepare { active: "a".into() }, at: 300 }]);
        let j = vec![rec("a", IssuerState::Active, 0, 600), rec("b", IssuerState::Prepared, 300, 900)];
        assert_eq!(
            plan(&j, &none, &p),
            vec![Planned { step: Step::Activate { prepared: "b".into(), active: "a".into() }, at: 500 }]
        );
    }

    #[test]
    fn activation_waits_for_the_successor_to_be_valid() {
        let p = RotationPolicy::default();
        let j = vec![rec("a", IssuerState::Active, 0, 600), rec("b", IssuerState::Prepared, 550, 900)];
        assert_eq!(plan(&j, &|_| None, &p)[0].at, 550);
    }

    #[test]
    fn retired_issuers_expire_after_their_last_certificate() {
        let p = RotationPolicy::default();
        let j = vec![rec("b", IssuerState::Active, 300, 900), rec("a", IssuerState::Retired, 0, 600)];
        let last = |id: &str| (id == "a").then_some(560);
        let planned = plan(&j, &last, &p);
        assert!(planned.contains(&Planned { step: Step::Expire { retired: "a".into() }, at: 560 }));
        // Never later than the issuer's own expiry.
        let last = |_: &str| Some(700);
        assert!(plan(&j, &last, &p).contains(&Planned { step: Step::Expire { retired: "a".into() }, at: 600 }));
        // Nothing signed: expire as soon as it is retired.
        let planned = plan(&j, &|_| None, &p);
        assert!(planned.contains(&Planned { step: Step::Expire { retired: "a".into() }, at: 0 }));
    }

    #[test]
    fn thresholds_are_validated() {
        let mut p = RotationPolicy::default();
        assert!(p.validate().is_ok());
        p.prepare_at = 0.9;
        assert!(p.validate().is_err());
    }
}

/// What an emergency rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmergencyReport {
    /// Rotation id (in logs and audit events).
    pub rotation: String,
    /// The new active intermediate.
    pub active: String,
    /// The suspect intermediate, now retired and revoked.
    pub revoked: String,
    /// Unexpired certificates it had signed, all asked to renew.
    pub affected: i64,
    /// Renewal window handed out (Unix seconds).
    pub window: (i64, i64),
    /// When relying parties that check revocation (our agents' verifiers, `openssl -crl_check_all`)
    /// start refusing everything under the suspect intermediate (Unix seconds).
    pub enforce_at: i64,
}

/// When an emergency rotation's revocation of the suspect intermediate reaches relying parties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforcement {
    /// The root CRL listing it is published at once. Peers that fetch it refuse every leaf under
    /// the suspect intermediate at once, honest ones too until their holders have renewed.
    Now,
    /// Fleet-gated (the default): the root CRL is signed now but published `settle` after the
    /// renewal window ends, or `settle` after the last affected workload renewed if that comes
    /// first, so honest workloads are all on the new intermediate before any peer refuses the
    /// old one. `settle` covers installing the renewed certificate and handshakes in flight.
    AfterRenewal {
        /// Margin after the last renewal (or the window's end).
        settle: Duration,
    },
}

/// Default settle margin of [`Enforcement::AfterRenewal`].
pub const EMERGENCY_SETTLE: Duration = Duration::from_secs(3);

/// `lanyard-ca rotate intermediate --emergency`: a new intermediate becomes active at once, the
/// suspect one is retired (it signs nothing more) and recorded as compromised, and every
/// unexpired certificate it signed gets a renewalInfo window starting after `delay` (time for
/// every replica to load the new issuer) and spread over `spread`, so the fleet re-issues with
/// jitter instead of all at once. The root CRL revoking the suspect intermediate is signed here
/// (where the root key is) and published as `enforcement` says.
pub async fn emergency_rotate(
    store: &Store,
    keys: &RotationKeys,
    delay: Duration,
    spread: Duration,
    enforcement: Enforcement,
) -> Result<EmergencyReport, CaError> {
    let rotation = rotation_id();
    let journal = store.issuers().await?;
    let suspect = journal
        .iter()
        .find(|r| r.kind == IssuerKind::Intermediate && r.state == IssuerState::Active)
        .ok_or(CaError::NoActiveIssuer)?
        .clone();
    // Check the root key before changing anything: without it the revocation could not be signed.
    if let Some(root) = &suspect.parent_id {
        load_root_key(keys, root)?;
    }
    // A successor prepared earlier was made by the same (possibly compromised) process; make a
    // fresh one, and drop the old candidate so it can never be activated.
    if let Some(p) = journal.iter().find(|r| r.kind == IssuerKind::Intermediate && r.state == IssuerState::Prepared) {
        let ev = AuditEvent::now(
            "operator",
            "issuer.discard",
            &p.id,
            Outcome::Success,
            format!("rotation {rotation}: prepared successor discarded by an emergency rotation"),
        );
        store
            .transition_issuer(&p.id, IssuerState::Prepared, IssuerState::Expired, OffsetDateTime::now_utc(), &ev)
            .await?;
    }
    let fresh = prepare_intermediate(store, keys, &rotation).await?;
    let ev = AuditEvent::now(
        "operator",
        "issuer.activate",
        &fresh.id,
        Outcome::Success,
        format!("rotation {rotation}: emergency activation, revoking {}", suspect.id),
    );
    if !store.activate_issuer(&fresh.id, &suspect.id, OffsetDateTime::now_utc(), &ev).await? {
        return Err(CaError::Store("the issuer journal changed concurrently; run the rotation again".into()));
    }
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let start = now + delay.as_secs() as i64;
    let end = start + spread.as_secs().max(1) as i64;
    let enforce = match enforcement {
        Enforcement::Now => None,
        Enforcement::AfterRenewal { settle } => {
            let settle = settle.as_secs().max(1) as i64;
            Some((end.saturating_add(settle), settle))
        }
    };
    let enforce_at = enforce.map(|e| e.0);
    let affected = store.begin_emergency(&rotation, &suspect.id, (start, end), enforce, now).await?;
    store
        .append_audit(AuditEvent::now(
            "operator",
            "issuer.revoke",
            &suspect.id,
            Outcome::Success,
            format!(
                "rotation {rotation}: emergency; {affected} certificates asked to renew in [{start}, {end}]; \
                 revocation enforced from {}",
                enforce_at.unwrap_or(now)
            ),
        ))
        .await?;
    if let Some(root) = &suspect.parent_id {
        let mode = match enforce_at {
            None => RootCrl::Now,
            Some(at) => RootCrl::Stage { publish_at: at, rotation: &rotation },
        };
        sign_root_crl_as(store, keys, root, mode).await?;
    }
    warn!(rotation, revoked = %suspect.id, active = %fresh.id, affected, enforce_at = enforce_at.unwrap_or(now), "emergency intermediate rotation");
    Ok(EmergencyReport {
        rotation,
        active: fresh.id,
        revoked: suspect.id,
        affected,
        window: (start, end),
        enforce_at: enforce_at.unwrap_or(now),
    })
}

/// How long a root CRL is valid; re-signed by the rotation loop (which holds the root key) after
/// half of it, and at every emergency.
pub const ROOT_CRL_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// How [`sign_root_crl_as`] signs.
#[derive(Debug, Clone, Copy)]
enum RootCrl<'a> {
    /// The periodic re-sign: only when the list changed or half the validity passed, listing the
    /// emergencies already enforced; nothing while a staged CRL waits (it is the next one).
    Refresh,
    /// At once, listing every emergency of the root (a pending one is enforced early too).
    Now,
    /// Signed now, listing every emergency of the root, published at `publish_at`.
    Stage { publish_at: i64, rotation: &'a str },
}

/// Re-signs the CRL of root `root_id` if its list changed or half its validity passed, listing
/// the intermediates under it whose emergency revocation is in force (reason keyCompromise), and
/// stores it as that root's latest CRL (`force`: sign even if nothing changed, listing pending
/// emergencies too). Relying parties that check the whole chain (`openssl verify
/// -crl_check_all`, our agents) then reject everything under a revoked intermediate. Returns the
/// CRL number, or None when nothing is to be listed and no root CRL exists yet.
pub async fn sign_root_crl(
    store: &Store,
    keys: &RotationKeys,
    root_id: &str,
    force: bool,
) -> Result<Option<i64>, CaError> {
    sign_root_crl_as(store, keys, root_id, if force { RootCrl::Now } else { RootCrl::Refresh }).await
}

async fn sign_root_crl_as(
    store: &Store,
    keys: &RotationKeys,
    root_id: &str,
    mode: RootCrl<'_>,
) -> Result<Option<i64>, CaError> {
    let journal = store.issuers().await?;
    let root = journal
        .iter()
        .find(|r| r.id == root_id && r.kind == IssuerKind::Root && r.state != IssuerState::Expired)
        .ok_or_else(|| CaError::Config(format!("no trusted root {root_id}")))?;
    let staged = store.staged_crl_number(root_id).await?;
    let latest = store.latest_crl(root_id).await?;
    if matches!(mode, RootCrl::Refresh)
        && let Some(n) = staged
    {
        // A staged CRL carries the next number; re-signing now would make it stale.
        return Ok(latest.map(|l| l.number).or(Some(n)));
    }
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap_or(OffsetDateTime::now_utc());
    let emergencies = store.emergencies().await?;
    let mut entries = Vec::new();
    for e in &emergencies {
        if matches!(mode, RootCrl::Refresh) && !e.enforced(now.unix_timestamp()) {
            continue;
        }
        let Some(int) = journal.iter().find(|r| r.id == e.issuer_id && r.parent_id.as_deref() == Some(root_id)) else {
            continue;
        };
        let der = int.cert_der()?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| CaError::InvalidCertificate(format!("intermediate {}: {e}", int.id)))?;
        entries.push(crate::store::crl::RevokedCertificate {
            serial: hex::encode(cert.raw_serial()),
            revoked_at: OffsetDateTime::from_unix_timestamp(e.started_at).unwrap_or(OffsetDateTime::UNIX_EPOCH),
            reason: Some(1),
            not_after: int.not_after,
        });
    }
    entries.sort_by(|a, b| a.serial.cmp(&b.serial));
    if entries.is_empty() && latest.is_none() {
        return Ok(None);
    }
    let digest = crate::crl::entries_digest(&entries);
    if matches!(mode, RootCrl::Refresh)
        && let Some(l) = &latest
        && l.digest == digest
        && now < l.this_update + ROOT_CRL_VALIDITY / 2
    {
        return Ok(Some(l.number));
    }
    let signer = crate::issuers::ActiveIssuer::new(root.clone(), load_root_key(keys, root_id)?)?;
    let number = latest.as_ref().map(|l| l.number).max(staged).map_or(1, |n| n.saturating_add(1));
    let next_update = now + ROOT_CRL_VALIDITY;
    let der = crate::crl::build_crl(&signer, u64::try_from(number).unwrap_or(0), now, next_update, &entries)?;
    let stored = crate::store::crl::StoredCrl { number, digest, this_update: now, next_update, der };
    let what = match mode {
        RootCrl::Stage { publish_at, rotation } => {
            store.stage_crl(root_id, &stored, publish_at, rotation).await?;
            format!("root CRL number {number}, {} revoked intermediates, staged until {publish_at}", entries.len())
        }
        RootCrl::Refresh | RootCrl::Now => {
            if !store.replace_crl(root_id, latest.map(|l| l.number), &stored).await? {
                return Err(CaError::Store(format!("the CRL of root {root_id} changed concurrently")));
            }
            format!("root CRL number {number}, {} revoked intermediates", entries.len())
        }
    };
    store.append_audit(AuditEvent::now("ca", "crl.sign", root_id, Outcome::Success, what)).await?;
    info!(
        root = root_id,
        number,
        revoked = entries.len(),
        staged = matches!(mode, RootCrl::Stage { .. }),
        "root CRL signed"
    );
    Ok(Some(number))
}
