//! The durable side of ACME replay nonces (RFC 8555 section 6.5): the secret shared by every
//! replica, and the ledger of nonces already used. Minting and checking a nonce's MAC is the
//! edge's; only a nonce's first use is recorded, here.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

use crate::{CaError, Store};

/// The nonce secret and the used-nonce ledger, shared by every replica through the database.
#[derive(Debug, Clone)]
pub struct NonceLedger {
    store: Store,
}

/// Name of the nonce HMAC secret in the store.
const NONCE_SECRET: &str = "nonce-hmac";

impl NonceLedger {
    pub(crate) fn new(store: Store) -> Self {
        NonceLedger { store }
    }

    /// The shared nonce secret; `fresh` becomes it if there is none yet, so that the first
    /// replica to start picks it and every other one reads the same.
    pub async fn secret(&self, fresh: &[u8]) -> Result<Vec<u8>, CaError> {
        let stored = self.store.acme_secret(NONCE_SECRET, B64.encode(fresh)).await?;
        B64.decode(stored).map_err(|_| CaError::Store("corrupt nonce secret".into()))
    }

    /// Records the use of `nonce`, kept until `expires_at` (Unix seconds): `true` on its first
    /// use, `false` for a replay.
    pub async fn redeem(&self, nonce: &str, expires_at: i64) -> Result<bool, CaError> {
        self.store.acme_use_nonce(nonce, expires_at).await
    }
}

impl super::Registration {
    /// The nonce ledger over the registration authority's database.
    pub fn nonce_ledger(&self) -> NonceLedger {
        NonceLedger::new(self.authority.store().clone())
    }
}
