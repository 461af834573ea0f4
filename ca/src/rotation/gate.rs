//! The fleet gate: root steps wait for the fleet's trust reports ([`crate::fleet`]) instead of
//! running on the clock alone.
//!
//! - **Activating a new root** (the end of a root rotation's overlap) waits until the live fleet
//!   has installed the trust bundle that carries it: at least `fleet_quorum` of the live workloads
//!   report that bundle's sequence or a newer one. A workload that never refreshed would otherwise
//!   refuse every peer holding a certificate under the new root.
//! - **An old root leaving the bundle** waits until no live workload serves a certificate of an
//!   intermediate under it (reported `serving_issuer`).
//!
//! A fleet view that has not collected reports for `[policy.fleet] warmup` yet (a restart) is not
//! trusted: the step waits. Past `fleet_deadline` the step still waits, and the rotation alerts.
//! Other steps are not gated.

use time::OffsetDateTime;

use super::{RotationPolicy, Step};
use crate::fleet::{Fleet, GateStatus};
use crate::issuers::{IssuerKind, IssuerRecord};
use crate::{CaError, Store, TrustBundle};

/// What the gate says of one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Run it; the note (empty for ungated steps) goes into its audit event.
    Proceed(String),
    /// Wait.
    Wait(GateStatus),
}

/// Share `quorum` of `live`, rounded up (at least one when anyone is live).
fn required(live: usize, quorum: f64) -> usize {
    // live and the product are small non-negative numbers; ceil keeps "every one" exact at 1.0.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let n = (live as f64 * quorum).ceil() as usize;
    n.min(live)
}

/// The gate's verdict on `step`, due on the clock at `due_at`.
pub async fn check(
    store: &Store,
    fleet: &Fleet,
    p: &RotationPolicy,
    journal: &[IssuerRecord],
    step: &Step,
    due_at: i64,
    now: OffsetDateTime,
) -> Result<Verdict, CaError> {
    let overdue = now.unix_timestamp() > due_at.saturating_add(crate::units::secs(p.fleet_deadline));
    let wait = |step: &'static str, issuer: &str, reason: String, live, confirmed, required| {
        Verdict::Wait(GateStatus {
            step,
            issuer: issuer.to_owned(),
            reason,
            live,
            confirmed,
            required,
            due_at,
            overdue,
            alerted: false,
        })
    };
    match step {
        Step::ActivateRoot { root, .. } => {
            let sequence = store.bundle_sequence(&TrustBundle::from_journal(journal).digest()).await?;
            let c = fleet.convergence(sequence, now);
            let need = required(c.live, p.fleet_quorum);
            if !fleet.warm(now) {
                let why = "the fleet view is still warming up after a start".to_owned();
                return Ok(wait("activate_root", root, why, c.live, c.confirmed, need));
            }
            if c.confirmed < need {
                let behind: Vec<String> = c.behind.iter().map(|(id, seq)| format!("{id} (bundle {seq})")).collect();
                let why = format!(
                    "{} of {} live workloads installed bundle {sequence}, {need} needed; behind: {}",
                    c.confirmed,
                    c.live,
                    behind.join(", ")
                );
                return Ok(wait("activate_root", root, why, c.live, c.confirmed, need));
            }
            Ok(Verdict::Proceed(format!(
                "; fleet confirmed bundle {sequence}: {} of {} live workloads (quorum {})",
                c.confirmed, c.live, p.fleet_quorum
            )))
        }
        Step::ExpireRoot { root } => {
            let under: Vec<&str> = journal
                .iter()
                .filter(|r| r.kind == IssuerKind::Intermediate && r.parent_id.as_deref() == Some(root.as_str()))
                .map(|r| r.fingerprint.as_str())
                .collect();
            let serving = fleet.serving_issuers(now);
            let live: usize = serving.values().sum();
            let still: usize = serving.iter().filter(|(fp, _)| under.contains(&fp.as_str())).map(|(_, n)| n).sum();
            if !fleet.warm(now) {
                let why = "the fleet view is still warming up after a start".to_owned();
                return Ok(wait("expire_root", root, why, live, live - still, live));
            }
            if still > 0 {
                let why = format!("{still} live workloads still serve a certificate under root {root}");
                return Ok(wait("expire_root", root, why, live, live - still, live));
            }
            Ok(Verdict::Proceed(format!("; no live workload of {live} serves a chain under it")))
        }
        _ => Ok(Verdict::Proceed(String::new())),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn quorum_rounds_up_and_never_exceeds_the_fleet() {
        assert_eq!(super::required(3, 1.0), 3);
        assert_eq!(super::required(3, 0.5), 2);
        assert_eq!(super::required(10, 0.9), 9);
        assert_eq!(super::required(0, 1.0), 0);
        assert_eq!(super::required(1, 0.01), 1);
    }
}
