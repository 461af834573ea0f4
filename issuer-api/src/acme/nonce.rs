//! Replay nonces (RFC 8555 section 6.5) that work across replicas without a write per nonce:
//! a nonce is `time || random || HMAC(secret, time || random)`, the secret is shared through the
//! database, and only *used* nonces are written (group-committed) until they would expire anyway.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use ca::{CaError, Store};

/// How long a nonce is accepted.
pub const NONCE_LIFETIME_SECS: i64 = 3600;

/// Issues and redeems nonces.
#[derive(Debug)]
pub struct Nonces {
    key: hmac::Key,
    rng: SystemRandom,
    store: Store,
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Nonces {
    /// Loads (or creates) the shared nonce secret.
    pub async fn new(store: Store) -> Result<Self, CaError> {
        let rng = SystemRandom::new();
        let mut fresh = [0u8; 32];
        rng.fill(&mut fresh).map_err(|_| CaError::Key("system RNG failed".into()))?;
        let secret = store.acme_secret("nonce-hmac", B64.encode(fresh)).await?;
        let secret = B64.decode(secret).map_err(|_| CaError::Store("corrupt nonce secret".into()))?;
        Ok(Nonces { key: hmac::Key::new(hmac::HMAC_SHA256, &secret), rng, store })
    }

    /// A fresh nonce.
    pub fn issue(&self) -> String {
        let mut raw = [0u8; 56];
        raw[..8].copy_from_slice(&now().to_be_bytes());
        let _ = self.rng.fill(&mut raw[8..24]);
        let tag = hmac::sign(&self.key, &raw[..24]);
        raw[24..].copy_from_slice(tag.as_ref());
        B64.encode(raw)
    }

    /// Redeems a nonce: true only for an authentic, unexpired nonce never redeemed before.
    pub async fn redeem(&self, nonce: &str) -> Result<bool, CaError> {
        let Ok(raw) = B64.decode(nonce) else { return Ok(false) };
        if raw.len() != 56 {
            return Ok(false);
        }
        // ring's verify compares the tag in constant time.
        if hmac::verify(&self.key, &raw[..24], &raw[24..]).is_err() {
            return Ok(false);
        }
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&raw[..8]);
        let issued = i64::from_be_bytes(ts);
        let t = now();
        if issued > t + 60 || t - issued > NONCE_LIFETIME_SECS {
            return Ok(false);
        }
        self.store.acme_use_nonce(nonce, issued + NONCE_LIFETIME_SECS).await
    }
}
