//! Emergency rotation: a fresh intermediate takes over at once and the suspect one is revoked.

use std::time::Duration;

use time::OffsetDateTime;
use tracing::warn;

use super::{RotationKeys, load_root_key, prepare_intermediate, rotation_id};
use crate::audit::{AuditEvent, Outcome};
use crate::crl::root::{RootCrl, sign_root_crl_as};
use crate::issuers::{IssuerKind, IssuerState};
use crate::{CaError, Store};

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
    let start = now.saturating_add(crate::units::secs(delay));
    let end = start.saturating_add(crate::units::secs(spread).max(1));
    let enforce = match enforcement {
        Enforcement::Now => None,
        Enforcement::AfterRenewal { settle } => {
            let settle = crate::units::secs(settle).max(1);
            Some((end.saturating_add(settle), settle))
        }
    };
    let enforce_at = enforce.map(|e| e.0);
    // The renewal windows, the emergency record and its `issuer.revoke` event commit together.
    let (suspect_id, rotation_id) = (suspect.id.clone(), rotation.clone());
    let event = move |affected: i64| {
        AuditEvent::now(
            "operator",
            "issuer.revoke",
            &suspect_id,
            Outcome::Success,
            format!(
                "rotation {rotation_id}: emergency; {affected} certificates asked to renew in [{start}, {end}]; \
                 revocation enforced from {}",
                enforce_at.unwrap_or(now)
            ),
        )
    };
    let affected = store.begin_emergency(&rotation, &suspect.id, (start, end), enforce, now, event).await?;
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
