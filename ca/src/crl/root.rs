//! Root CRLs: signed where the root key is (the rotation loop, an emergency rotation), listing
//! the intermediates under the root whose emergency revocation is in force.

use std::time::Duration;

use time::OffsetDateTime;
use tracing::info;

use crate::audit::{AuditEvent, Outcome};
use crate::issuers::{IssuerKind, IssuerState};
use crate::rotation::{RotationKeys, load_root_key};
use crate::{CaError, Store};

/// How long a root CRL is valid; re-signed by the rotation loop (which holds the root key) after
/// half of it, and at every emergency.
pub const ROOT_CRL_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// How [`sign_root_crl_as`] signs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RootCrl<'a> {
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

pub(crate) async fn sign_root_crl_as(
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
    // The CRL and its `crl.sign` event commit together.
    let event = |what: String| AuditEvent::now("ca", "crl.sign", root_id, Outcome::Success, what);
    match mode {
        RootCrl::Stage { publish_at, rotation } => {
            let ev = event(format!(
                "root CRL number {number}, {} revoked intermediates, staged until {publish_at}",
                entries.len()
            ));
            store.stage_crl(root_id, &stored, publish_at, rotation, &ev).await?;
        }
        RootCrl::Refresh | RootCrl::Now => {
            let ev = event(format!("root CRL number {number}, {} revoked intermediates", entries.len()));
            if !store.replace_crl(root_id, latest.map(|l| l.number), &stored, &ev).await? {
                return Err(CaError::Store(format!("the CRL of root {root_id} changed concurrently")));
            }
        }
    }
    info!(
        root = root_id,
        number,
        revoked = entries.len(),
        staged = matches!(mode, RootCrl::Stage { .. }),
        "root CRL signed"
    );
    Ok(Some(number))
}
