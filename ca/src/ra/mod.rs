//! The registration authority (issue 14; what Boulder calls the RA): the ACME decisions that
//! change durable state, taken inside the CA core rather than in the web edge.
//!
//! The edge (`issuer-api`) authenticates a request, decodes it and renders the answer; what an
//! order may become, and which writes must commit together for that, is decided here, next to
//! the issuance path it depends on. Finalize is the case that needs it: the certificate's record
//! and the order's move to `valid` must be one transaction, or a crash leaves a certificate that
//! no order points at, or an order stuck half-way ([`Registration::finalize`]).
//!
//! Nothing here speaks ACME's error vocabulary: RFC 7807 problem documents, which the store keeps
//! on failed orders, are rendered by the edge and handed in.

mod account;
mod certificate;
mod finalize;
mod nonce;
mod order;
mod status;
mod workload;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

pub use account::{KeyChangeOutcome, NewAccountError};
pub use certificate::{Download, DownloadError, ReplacesError, RevokeError, Revoker};
pub use finalize::{FinalizeError, FinalizeRequest, Finalized, RenderProblem};
pub use nonce::NonceLedger;
pub use status::{AccountStatus, AuthzStatus, ChallengeStatus, OrderStatus, UnknownStatus};
pub use workload::{JoinToken, JoinTokenError, Workload, join_token_digest};

/// The rows the registration authority hands the edge (accounts, orders, authorizations,
/// challenges, EAB keys), re-exported so that the edge need not name the store.
pub use crate::store::acme::{AcmeAccount, AcmeAuthz, AcmeChallenge, AcmeOrder, AcmePurged, EabKey, TokenSpend};
pub use crate::store::lineage::Revocation;
pub use crate::store::{CertificateRecord, CertificateStatus};

use crate::{Authority, CaError, Name};

/// The ACME identifier type of a workload enrollment order (a SPIFFE ID).
pub const SPIFFE_IDENTIFIER: &str = "spiffe";

/// The registration authority over one [`Authority`]: it owns the ACME state changes that must
/// be consistent with issuance.
pub struct Registration {
    authority: Arc<Authority>,
    /// Orders this process is finalizing now (see [`Claims`]).
    claims: Claims,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration").field("authority", &self.authority).finish_non_exhaustive()
    }
}

impl Registration {
    /// The RA over `authority`. Orders an older version left in `processing` (it stored that
    /// status, and a crash left it there for good) are released to `ready`, so their clients can
    /// finalize them again; this version never stores `processing`.
    pub async fn open(authority: Arc<Authority>) -> Result<Self, CaError> {
        let released = authority.store().acme_release_processing_orders().await?;
        if released > 0 {
            tracing::warn!(released, "ACME orders left in processing by an earlier crash were released to ready");
        }
        Ok(Registration { authority, claims: Claims::default() })
    }

    /// The authority it issues through.
    pub fn authority(&self) -> &Arc<Authority> {
        &self.authority
    }
}

/// The account's own name policy (from its EAB key): least privilege on top of the CA policy.
/// `Err` explains the refusal.
pub fn account_allows(acct: &AcmeAccount, name: &Name) -> Result<(), String> {
    if acct.allowed_suffixes.is_empty() {
        return Ok(());
    }
    let ok = match name {
        Name::Dns(d) => acct.allowed_suffixes.iter().any(|s| crate::suffix_matches(d, s)),
        _ => false,
    };
    if ok { Ok(()) } else { Err(format!("{name} is outside what this account may order")) }
}

/// The names an order's authorizations prove (a wildcard authorization proves `*.<value>`).
/// An identifier the store holds but cannot parse is a store error: it was checked on the way in.
pub fn authorized_names(authzs: &[AcmeAuthz]) -> Result<Vec<Name>, CaError> {
    authzs
        .iter()
        .map(|a| match a.id_type.as_str() {
            "ip" => a
                .id_value
                .parse()
                .map(Name::Ip)
                .map_err(|_| CaError::Store(format!("authorization {}: stored IP identifier unparseable", a.id))),
            SPIFFE_IDENTIFIER => crate::SpiffeId::parse(&a.id_value)
                .map(Name::Spiffe)
                .map_err(|_| CaError::Store(format!("authorization {}: stored SPIFFE identifier unparseable", a.id))),
            _ if a.wildcard => Ok(Name::Dns(format!("*.{}", a.id_value))),
            _ => Ok(Name::Dns(a.id_value.clone())),
        })
        .collect()
}

impl AcmeOrder {
    /// The order's status, typed.
    pub fn order_status(&self) -> Result<OrderStatus, UnknownStatus> {
        OrderStatus::parse(&self.status)
    }
}

impl AcmeAuthz {
    /// The authorization's status, typed.
    pub fn authz_status(&self) -> Result<AuthzStatus, UnknownStatus> {
        AuthzStatus::parse(&self.status)
    }
}

impl AcmeChallenge {
    /// The challenge's status, typed.
    pub fn challenge_status(&self) -> Result<ChallengeStatus, UnknownStatus> {
        ChallengeStatus::parse(&self.status)
    }
}

impl AcmeAccount {
    /// The account's status, typed.
    pub fn account_status(&self) -> Result<AccountStatus, UnknownStatus> {
        AccountStatus::parse(&self.status)
    }
}

/// The orders this process is finalizing. A second finalize of an order already under way here
/// is refused at once instead of signing a certificate that the order's guard would then refuse
/// to record; across processes the guard alone decides ([`crate::store::OrderRecord`]). Held in
/// memory only, so a crash releases every claim with the process: nothing is left to recover.
#[derive(Debug, Default)]
struct Claims(Mutex<HashSet<String>>);

/// One order claimed; dropping it releases the claim (also when the finalize future is dropped).
struct Claim<'a> {
    claims: &'a Claims,
    order_id: String,
}

impl Claims {
    /// Claims `order_id`; `None` when this process is finalizing it already.
    fn take(&self, order_id: &str) -> Option<Claim<'_>> {
        // A panic while holding the lock cannot leave the set inconsistent: each operation is one
        // insert or remove.
        let mut set = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        set.insert(order_id.to_owned()).then(|| Claim { claims: self, order_id: order_id.to_owned() })
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut set = self.claims.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        set.remove(&self.order_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_excludes_a_second_one_until_dropped() {
        let claims = Claims::default();
        let first = claims.take("o1").expect("first claim");
        assert!(claims.take("o1").is_none(), "a second finalize of o1 must wait");
        assert!(claims.take("o2").is_some(), "other orders are independent");
        drop(first);
        assert!(claims.take("o1").is_some(), "released with the first finalize");
    }

    #[test]
    fn stored_identifiers_become_names() {
        let authz = |t: &str, v: &str, wildcard| AcmeAuthz {
            id: "a".into(),
            order_id: "o".into(),
            account_id: "acct".into(),
            id_type: t.into(),
            id_value: v.into(),
            wildcard,
            status: "valid".into(),
            expires_at: 0,
        };
        let names = authorized_names(&[
            authz("dns", "a.example.test", false),
            authz("dns", "example.test", true),
            authz("ip", "192.0.2.1", false),
        ])
        .expect("names");
        assert_eq!(
            names.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["dns:a.example.test", "dns:*.example.test", "ip:192.0.2.1"]
        );
        assert!(matches!(authorized_names(&[authz("ip", "not-an-ip", false)]), Err(CaError::Store(_))));
    }

    #[test]
    fn an_account_with_suffixes_orders_only_under_them() {
        let acct = AcmeAccount {
            id: "a".into(),
            thumbprint: "t".into(),
            jwk: "{}".into(),
            status: "valid".into(),
            contact: vec![],
            eab_kid: None,
            created_at: 0,
            allowed_suffixes: vec!["team.example.test".into()],
        };
        assert!(account_allows(&acct, &Name::Dns("web.team.example.test".into())).is_ok());
        assert!(account_allows(&acct, &Name::Dns("web.other.example.test".into())).is_err());
        assert!(account_allows(&acct, &Name::Ip("192.0.2.1".parse().expect("ip"))).is_err());
        assert!(account_allows(&AcmeAccount { allowed_suffixes: vec![], ..acct }, &Name::Dns("x.test".into())).is_ok());
    }
}
