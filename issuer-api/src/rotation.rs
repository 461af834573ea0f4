//! The rotation loop of `lanyard-ca serve`: every `check_interval`, the replica holding the
//! rotation lease runs the due journal steps (`ca::rotation`), and every replica picks up a new
//! active intermediate.

use std::sync::Arc;

use ca::rotation::{RotationKeys, RotationPolicy};
use ca::{Authority, Passphrase};
use tracing::{info, warn};

/// Lease name in the `leases` table.
const LEASE: &str = "rotation";

/// Spawns the loop. `keys` is None when the root key is not available (kept offline): the loop
/// then only follows rotations made elsewhere (`lanyard-ca rotate intermediate`).
pub fn spawn(authority: Arc<Authority>, policy: RotationPolicy, keys: Option<RotationKeys>, pass: Passphrase) {
    let holder = ca::rotation::rotation_id();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(policy.check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut warned_offline = false;
        loop {
            tick.tick().await;
            let store = authority.store();
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            match (&keys, policy.enabled) {
                (Some(keys), true) => {
                    let lease_for = (policy.check_interval.as_secs() as i64 * 3).max(10);
                    match store.acquire_lease(LEASE, &holder, now, now + lease_for).await {
                        Ok(true) => {
                            let rotation = ca::rotation::rotation_id();
                            match ca::rotation::run_due(store, keys, &policy, now, &rotation).await {
                                Ok(steps) if !steps.is_empty() => info!(rotation, ?steps, "rotation steps taken"),
                                Ok(_) => {}
                                Err(e) => warn!(rotation, error = %e, "rotation step failed; will retry"),
                            }
                        }
                        Ok(false) => {}
                        Err(e) => warn!(error = %e, "cannot take the rotation lease"),
                    }
                }
                (None, true) if !warned_offline => {
                    warned_offline = true;
                    warn!(
                        "automatic intermediate rotation is on but the root key is not in the data directory; \
                         rotate with `lanyard-ca rotate intermediate` where the root key is"
                    );
                }
                _ => {}
            }
            if let Err(e) = authority.refresh_active(&pass).await {
                warn!(error = %e, "cannot load the active intermediate");
            }
        }
    });
}
