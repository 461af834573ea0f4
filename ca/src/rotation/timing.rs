//! When each rotation step is due: a pure function of the issuer journal and the policy.

use crate::units::{fraction_of, secs};
use std::time::Duration;

use time::OffsetDateTime;

use crate::CaError;
use crate::issuers::{IssuerKind, IssuerRecord, IssuerState, rfc3339};

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
    /// Gate root steps on the fleet's trust reports (`ca::fleet`): the new root's activation waits
    /// until the live fleet has installed the bundle that carries it, and an old root leaves the
    /// bundle only once no live workload serves a chain under it.
    pub fleet_gate: bool,
    /// Share of the live workloads that must confirm (0 < quorum <= 1; 1: every one).
    pub fleet_quorum: f64,
    /// How long past its time on the clock a gated step may wait before the rotation alerts
    /// (warning log, audit event, `lanyard_rotation_gate_overdue`). It keeps waiting after that.
    #[serde(with = "humantime_serde")]
    pub fleet_deadline: Duration,
    /// A rotation whose live fleet has not converged on it this long after its trigger (for a
    /// root rotation: after its overlap) counts as a partial failure
    /// (`lanyard_rotations_finished_total{result="partial"}`, M3).
    #[serde(with = "humantime_serde")]
    pub converge_deadline: Duration,
    /// `[rotation.canary]`: scheduled activations first run the successor on canaries.
    pub canary: super::canary::CanaryPolicy,
}

impl Default for RotationPolicy {
    fn default() -> Self {
        RotationPolicy {
            enabled: true,
            prepare_at: 0.5,
            activate_at: 5.0 / 6.0,
            check_interval: Duration::from_secs(30),
            root_overlap: Duration::from_secs(3600),
            fleet_gate: true,
            fleet_quorum: 1.0,
            fleet_deadline: Duration::from_secs(24 * 3600),
            converge_deadline: Duration::from_secs(24 * 3600),
            canary: super::canary::CanaryPolicy::default(),
        }
    }
}

impl RotationPolicy {
    /// Checks the thresholds.
    pub fn validate(&self) -> Result<(), CaError> {
        if !(self.prepare_at > 0.0 && self.prepare_at < self.activate_at && self.activate_at < 1.0) {
            return Err(CaError::Config("[rotation] needs 0 < prepare_at < activate_at < 1".into()));
        }
        if !(self.fleet_quorum > 0.0 && self.fleet_quorum <= 1.0) {
            return Err(CaError::Config("[rotation] fleet_quorum must be in (0, 1]".into()));
        }
        if self.check_interval.is_zero() {
            return Err(CaError::Config("[rotation] check_interval must be > 0".into()));
        }
        self.canary.validate()?;
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
    /// Instead of [`Step::Activate`] when `[rotation.canary]` is on: `prepared` signs for the
    /// canaries only, for the soak ([`super::canary`]).
    BeginCanary {
        /// The successor.
        prepared: String,
        /// The one it would replace.
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
            at: (unix(pr.created_at).saturating_add(secs(p.root_overlap)))
                .min(unix(a.not_before) + fraction_of(unix(a.not_after) - unix(a.not_before), p.activate_at)),
        });
    } else if let Some(a) = active {
        let nb = unix(a.not_before);
        let life = (unix(a.not_after) - nb).max(0);
        match prepared {
            None => out.push(Planned {
                step: Step::Prepare { active: a.id.clone() },
                at: nb + fraction_of(life, p.prepare_at),
            }),
            Some(s) => out.push(Planned {
                step: Step::Activate { prepared: s.id.clone(), active: a.id.clone() },
                // Never before the successor itself is valid.
                at: (nb + fraction_of(life, p.activate_at)).max(unix(s.not_before)),
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
            Step::BeginCanary { prepared, active } => {
                format!("{}: canary of {prepared} (successor of {active}) starts", when(p.at))
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
