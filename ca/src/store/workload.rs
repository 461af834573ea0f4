//! Workload enrollment state: one-time join tokens and the trust bundle's sequence number.
//!
//! A join token is a bearer secret, so only its SHA-256 digest is stored; redeeming one is a single
//! conditional UPDATE ([`SPEND_JOIN_TOKEN`]), so two replicas racing on the same token cannot both
//! win. ACME enrollment checks the token first and spends it in the transaction that records the
//! valid authorization (`Store::acme_finish_challenge`), so a result that cannot be recorded leaves
//! the token unspent for the agent's retry.

use super::Store;
use crate::{AuditEvent, CaError, SpiffeId};

/// Spends a join token (binds: now, the SPIFFE ID it was used for, its digest): one row when it
/// was still unused and unexpired, none when another redemption got there first.
pub(crate) const SPEND_JOIN_TOKEN: &str =
    "UPDATE join_tokens SET used_at = $1, used_for = $2 WHERE digest = $3 AND used_at IS NULL AND expires_at > $1";

/// Digest under which a join token is stored and looked up.
pub fn join_token_digest(token: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()))
}

/// A join token as created by `lanyard-ca token create` (without the secret itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The SPIFFE ID the token is bound to.
    pub spiffe_id: SpiffeId,
    /// When true the token admits any ID below `spiffe_id`'s path.
    pub is_prefix: bool,
    /// Expiry (Unix seconds).
    pub expires_at: i64,
}

/// Why a join token was refused. The messages are shown to the workload, so they name the
/// problem but never the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinTokenError {
    /// No such token.
    #[error("unknown join token")]
    Unknown,
    /// Past its expiry.
    #[error("the join token expired")]
    Expired,
    /// Already redeemed once.
    #[error("the join token was already used")]
    Used,
    /// Bound to another identity.
    #[error("the join token is bound to {bound}, not {requested}")]
    WrongIdentity {
        /// What the token admits.
        bound: String,
        /// What was asked for.
        requested: String,
    },
}

impl JoinToken {
    /// Whether the token admits `id`.
    pub fn admits(&self, id: &SpiffeId) -> bool {
        if self.is_prefix {
            let base = self.spiffe_id.to_string();
            let asked = id.to_string();
            asked == base || asked.strip_prefix(&base).is_some_and(|rest| rest.starts_with('/'))
        } else {
            &self.spiffe_id == id
        }
    }
}

/// A join token's row, as the check reads it.
#[derive(Debug)]
pub(super) struct StoredJoinToken {
    pub(super) token: JoinToken,
    /// The SPIFFE ID it is bound to, as stored.
    pub(super) bound: String,
    /// Whether it was spent.
    pub(super) used: bool,
}

/// Stores a join token (binds: digest, SPIFFE ID, is_prefix, expiry, now).
pub(super) const INSERT_JOIN_TOKEN: &str =
    "INSERT INTO join_tokens (digest, spiffe_id, is_prefix, expires_at, created_at) VALUES ($1, $2, $3, $4, $5)";
/// A join token's row by digest.
pub(super) const JOIN_TOKEN_BY_DIGEST: &str =
    "SELECT spiffe_id, is_prefix, expires_at, used_at FROM join_tokens WHERE digest = $1";

impl Store {
    /// Stores a new join token under its digest, with its `audit` event in the same transaction.
    pub async fn create_join_token(
        &self,
        digest: &str,
        token: &JoinToken,
        now: i64,
        audit: &AuditEvent,
    ) -> Result<(), CaError> {
        on_backend!(self, create_join_token(digest, token, now, audit))
    }

    /// Redeems a join token for `id`: [`Store::check_join_token`], then spends it with its `audit`
    /// event in one transaction. The outer error is the store's; the inner one is the refusal to
    /// show the workload.
    pub async fn redeem_join_token(
        &self,
        digest: &str,
        id: &SpiffeId,
        now: i64,
        audit: &AuditEvent,
    ) -> Result<Result<(), JoinTokenError>, CaError> {
        if let Err(refused) = self.check_join_token(digest, id, now).await? {
            return Ok(Err(refused));
        }
        // False: lost a race with another redemption of the same token.
        if on_backend!(self, spend_join_token(digest, &id.to_string(), now, audit))? {
            Ok(Ok(()))
        } else {
            Ok(Err(JoinTokenError::Used))
        }
    }

    /// Checks, without spending it, that a join token exists, is unexpired and unused, and admits
    /// `id`. The outer error is the store's; the inner one is the refusal to show the workload.
    pub async fn check_join_token(
        &self,
        digest: &str,
        id: &SpiffeId,
        now: i64,
    ) -> Result<Result<(), JoinTokenError>, CaError> {
        let Some(StoredJoinToken { token, bound, used }) = on_backend!(self, join_token(digest))? else {
            return Ok(Err(JoinTokenError::Unknown));
        };
        if used {
            return Ok(Err(JoinTokenError::Used));
        }
        if token.expires_at <= now {
            return Ok(Err(JoinTokenError::Expired));
        }
        if !token.admits(id) {
            let bound = if token.is_prefix { format!("{bound}/*") } else { bound };
            return Ok(Err(JoinTokenError::WrongIdentity { bound, requested: id.to_string() }));
        }
        Ok(Ok(()))
    }

    /// The trust bundle's sequence for the bundle whose content digest is `digest`: unchanged
    /// while the digest is, incremented (durably, once, even with several replicas) when it
    /// changes. SPIFFE relying parties use the sequence to notice new bundles.
    pub async fn bundle_sequence(&self, digest: &str) -> Result<u64, CaError> {
        on_backend!(self, bundle_sequence(digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_tokens_admit_only_paths_below_them() {
        let t =
            |id: &str, p| JoinToken { spiffe_id: SpiffeId::parse(id).expect("valid id"), is_prefix: p, expires_at: 0 };
        let id = |s: &str| SpiffeId::parse(s).expect("valid id");
        assert!(t("spiffe://td/ns/a", true).admits(&id("spiffe://td/ns/a/x")));
        assert!(t("spiffe://td/ns/a", true).admits(&id("spiffe://td/ns/a")));
        assert!(!t("spiffe://td/ns/a", true).admits(&id("spiffe://td/ns/ab")));
        assert!(!t("spiffe://td/ns/a", false).admits(&id("spiffe://td/ns/a/x")));
        assert!(t("spiffe://td/ns/a", false).admits(&id("spiffe://td/ns/a")));
    }
}
