//! Replay nonces (RFC 8555 section 6.5) that work across replicas without a write per nonce:
//! a nonce is `time || random || HMAC(secret, time || random)`, the secret is shared through the
//! database, and only *used* nonces are written (group-committed) until they would expire anyway.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use ca::CaError;
use ca::ra::NonceLedger;

/// How long a nonce is accepted.
pub const NONCE_LIFETIME_SECS: i64 = 3600;

/// How long a used nonce's row outlives the nonce. Replicas judge expiry and delete rows by their
/// own clocks: without a margin, a replica whose clock runs ahead would delete a row that a replica
/// with a slower clock still needs to refuse a replay. With this margin, replicas whose clocks
/// differ by up to five minutes in all never open a replay window.
pub const NONCE_ROW_MARGIN_SECS: i64 = 300;

/// How far in the future a nonce's timestamp may lie (the issuing replica's clock ahead of ours).
const FUTURE_TOLERANCE_SECS: i64 = 60;

/// Issues and redeems nonces.
#[derive(Debug)]
pub struct Nonces {
    key: hmac::Key,
    rng: SystemRandom,
    ledger: NonceLedger,
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Nonces {
    /// Loads (or creates) the shared nonce secret.
    pub async fn new(ledger: NonceLedger) -> Result<Self, CaError> {
        let rng = SystemRandom::new();
        let mut fresh = [0u8; 32];
        rng.fill(&mut fresh).map_err(|_| CaError::Key("system RNG failed".into()))?;
        let secret = ledger.secret(&fresh).await?;
        Ok(Nonces { key: hmac::Key::new(hmac::HMAC_SHA256, &secret), rng, ledger })
    }

    /// A fresh nonce, or an error if the system RNG failed (then no nonce is better than a
    /// guessable one).
    pub fn issue(&self) -> Result<String, CaError> {
        let mut raw = [0u8; 56];
        raw[..8].copy_from_slice(&now().to_be_bytes());
        self.rng.fill(&mut raw[8..24]).map_err(|_| CaError::Key("system RNG failed".into()))?;
        let tag = hmac::sign(&self.key, &raw[..24]);
        raw[24..].copy_from_slice(tag.as_ref());
        Ok(B64.encode(raw))
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
        if issued > t + FUTURE_TOLERANCE_SECS || t - issued > NONCE_LIFETIME_SECS {
            return Ok(false);
        }
        self.ledger.redeem(nonce, issued + NONCE_LIFETIME_SECS + NONCE_ROW_MARGIN_SECS).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What expired orders get as their error; these tests are about nonces.
    const EXPIRED: &str = r#"{"detail":"order expired"}"#;

    async fn nonces() -> (tempfile::TempDir, Nonces, ca::Admin) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("n.db").display());
        let admin = ca::Admin::open(&url).await.expect("database");
        let n = Nonces::new(admin.nonce_ledger()).await.expect("nonces");
        (dir, n, admin)
    }

    #[tokio::test]
    async fn a_replica_whose_clock_runs_ahead_does_not_reopen_a_replay() {
        let (_dir, n, admin) = nonces().await;
        let nonce = n.issue().expect("nonce");
        assert!(n.redeem(&nonce).await.expect("redeem"), "first use");
        // A replica whose clock is four minutes ahead runs the cleanup just after the nonce's
        // lifetime ended by its clock; on ours the nonce is still acceptable.
        let ahead = now() + NONCE_LIFETIME_SECS + 240;
        let (deleted, _) = admin.acme_cleanup(ahead, EXPIRED).await.expect("cleanup");
        assert_eq!(deleted, 0, "the row outlives the nonce by the margin");
        assert!(!n.redeem(&nonce).await.expect("redeem"), "the replay must still be refused");
        // Past lifetime plus margin (by that replica's clock) the row goes.
        let (deleted, _) = admin
            .acme_cleanup(now() + NONCE_LIFETIME_SECS + NONCE_ROW_MARGIN_SECS + 5, EXPIRED)
            .await
            .expect("cleanup");
        assert_eq!(deleted, 1);
    }

    #[tokio::test]
    async fn forged_and_malformed_nonces_are_refused() {
        let (_dir, n, _admin) = nonces().await;
        let good = n.issue().expect("nonce");
        let mut raw = B64.decode(&good).expect("b64");
        raw[10] ^= 1;
        assert!(!n.redeem(&B64.encode(&raw)).await.expect("redeem"), "tampered");
        assert!(!n.redeem("not base64!").await.expect("redeem"));
        assert!(!n.redeem(&B64.encode([0u8; 10])).await.expect("redeem"), "short");
        assert!(n.redeem(&good).await.expect("redeem"));
    }
}
