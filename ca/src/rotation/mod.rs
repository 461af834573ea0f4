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
//!
//! - [`timing`]: when each step is due, a pure function of the journal ([`plan`]).
//! - [`manager`]: the scheduled driver that prepares, activates and retires ([`run_due`]).
//! - [`gate`]: root steps wait for the fleet's trust reports.
//! - [`canary`]: a successor first signs for canaries only; it is activated after a clean soak,
//!   or rolled back by itself (or by `lanyard-ca rotate rollback`).
//! - [`emergency`]: the emergency rotation that revokes a suspect intermediate.
//! - The root CRL that such a revocation needs is signed in `crate::crl::root`.

use std::path::PathBuf;

use crate::CaError;
use crate::authority::InitOptions;
use crate::keys::{Passphrase, decrypt_key_pem};

pub mod canary;
mod emergency;
pub mod gate;
mod manager;
mod timing;

pub use crate::crl::root::{ROOT_CRL_VALIDITY, sign_root_crl};
pub use emergency::{EMERGENCY_SETTLE, EmergencyReport, Enforcement, emergency_rotate};
pub use manager::{execute, prepare_intermediate, prepare_root, rotate_intermediate_now, run_due};
pub use timing::{Planned, RotationPolicy, Step, describe, plan};

/// A fresh id naming one rotation in logs and audit events.
pub fn rotation_id() -> String {
    let mut b = [0u8; 6];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
        tracing::error!("the system random generator failed; this rotation id is not unique");
    }
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

pub(crate) fn load_root_key(keys: &RotationKeys, id: &str) -> Result<rcgen::KeyPair, CaError> {
    let path = root_key_path(keys, id);
    let pem = std::fs::read_to_string(&path).map_err(|e| {
        CaError::Config(format!("the key of root {id} ({}) is needed to sign an intermediate: {e}", path.display()))
    })?;
    decrypt_key_pem(&pem, &keys.pass, &format!("root {id}"))
}
