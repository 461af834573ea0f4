//! ACME orders, authorizations and challenges (RFC 8555 sections 7.4 to 7.5.1) as the edge reads
//! and advances them, and the periodic upkeep of that state. Finalize is in `finalize.rs`.

use super::Registration;
use crate::CaError;
use crate::store::acme::{AcmeAuthz, AcmeChallenge, AcmeOrder, AcmePurged, TokenSpend};

impl Registration {
    /// Records a new order with its authorizations and challenges, all or nothing.
    pub async fn new_order(
        &self,
        order: &AcmeOrder,
        authzs: &[AcmeAuthz],
        challenges: &[AcmeChallenge],
    ) -> Result<(), CaError> {
        self.authority.store().acme_create_order(order, authzs, challenges).await
    }

    /// An order with its authorizations.
    pub async fn order_with_authzs(&self, id: &str) -> Result<Option<(AcmeOrder, Vec<AcmeAuthz>)>, CaError> {
        self.authority.store().acme_order_with_authzs(id).await
    }

    /// The ids of an account's orders (RFC 8555 section 7.1.2.1).
    pub async fn order_ids(&self, account_id: &str) -> Result<Vec<String>, CaError> {
        self.authority.store().acme_order_ids(account_id).await
    }

    /// An authorization with its challenges.
    pub async fn authz(&self, id: &str) -> Result<Option<(AcmeAuthz, Vec<AcmeChallenge>)>, CaError> {
        self.authority.store().acme_authz(id).await
    }

    /// A challenge with its authorization.
    pub async fn challenge(&self, id: &str) -> Result<Option<(AcmeChallenge, AcmeAuthz)>, CaError> {
        self.authority.store().acme_challenge(id).await
    }

    /// Moves a pending challenge to processing: `true` for exactly one of concurrent callers,
    /// which then validates it.
    pub async fn claim_challenge(&self, id: &str) -> Result<bool, CaError> {
        self.authority.store().acme_claim_challenge(id).await
    }

    /// Records a claimed challenge's result and what it does to its authorization and order. With
    /// a `spend`, a valid result spends the join token with its audit event in the same
    /// transaction. Returns whether the result recorded is valid.
    pub async fn finish_challenge(
        &self,
        challenge_id: &str,
        authz_id: &str,
        order_id: &str,
        result: Result<Option<&TokenSpend>, &str>,
        now: i64,
    ) -> Result<bool, CaError> {
        self.authority.store().acme_finish_challenge(challenge_id, authz_id, order_id, result, now).await
    }

    /// Hands a claimed challenge whose result could not be recorded back to pending.
    pub async fn release_challenge(&self, id: &str) -> Result<bool, CaError> {
        self.authority.store().acme_release_challenge(id).await
    }

    /// Deletes used nonces past their row lifetime and expires stale orders, which get
    /// `expired_problem` (a problem document rendered by the edge) as their error. Returns
    /// (nonces deleted, orders expired).
    pub async fn cleanup(&self, now: i64, expired_problem: &str) -> Result<(u64, u64), CaError> {
        self.authority.store().acme_cleanup(now, expired_problem).await
    }

    /// Purges the ACME rows past retention (`cutoff`, Unix seconds); certificate records stay.
    pub async fn purge(&self, cutoff: i64) -> Result<AcmePurged, CaError> {
        self.authority.store().acme_purge(cutoff).await
    }
}
