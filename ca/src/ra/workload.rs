//! What workload enrollment (join-token-01 attestation) needs from the CA: checking a join token
//! without spending it. Spending happens with the valid challenge result
//! ([`super::Registration::finish_challenge`]); creating one is an operator action
//! ([`crate::Admin::create_join_token`]).

use crate::{Authority, CaError, SpiffeId, Store};

pub use crate::store::workload::{JoinToken, JoinTokenError, join_token_digest};

/// Join-token checks for enrollment.
#[derive(Debug, Clone)]
pub struct Workload {
    store: Store,
}

impl Workload {
    /// The enrollment interface over `authority`'s database.
    pub fn new(authority: &Authority) -> Self {
        Workload { store: authority.store().clone() }
    }

    /// Checks, without spending it, that the join token with this digest exists, is unexpired and
    /// unused, and admits `id`. The outer error is the store's; the inner one is the refusal to
    /// show the workload.
    pub async fn check_join_token(
        &self,
        digest: &str,
        id: &SpiffeId,
        now: i64,
    ) -> Result<Result<(), JoinTokenError>, CaError> {
        self.store.check_join_token(digest, id, now).await
    }
}
