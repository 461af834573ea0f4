//! Finalizing an ACME order (RFC 8555 section 7.4) as one call: check the CSR against the order
//! once, issue through the durable issuance path, and commit the certificate's record together
//! with the order's move from `ready` to `valid`.
//!
//! Crash semantics: `processing` is never stored (a concurrent finalize in this process is held
//! off by an in-memory claim; one on another replica by the record's guard on `ready`), so a
//! process killed at any point leaves the order `ready` with no certificate recorded for it (an
//! intent row without a certificate at most, which issuance's recovery marks abandoned), or
//! `valid` pointing at its recorded certificate. Never a recorded certificate no order points at,
//! never an order stuck in `processing`.

use time::OffsetDateTime;

use super::{OrderStatus, Registration, account_allows, authorized_names};
use crate::csr::VerifiedCsr;
use crate::error::ErrorKind;
use crate::issuance::IssuanceStep;
use crate::store::acme::{AcmeAccount, AcmeAuthz, AcmeOrder};
use crate::{AuthorizedNames, CaError, IssuedCertificate, Name, Profile};

/// Renders the problem document (RFC 7807 JSON) stored on an order that a failed issuance made
/// invalid. The edge owns the error vocabulary (the ACME error type URNs of RFC 8555 section 6.7), so
/// it passes its renderer in.
pub type RenderProblem<'a> = &'a (dyn Fn(&CaError) -> String + Send + Sync);

/// One finalize request, already authenticated and decoded by the edge.
pub struct FinalizeRequest<'a> {
    /// The order to finalize.
    pub order_id: &'a str,
    /// The account that signed the request; another account's order does not exist for it.
    pub account: &'a AcmeAccount,
    /// The CSR, parsed and its signature verified once by the edge ([`crate::parse_and_verify_csr`],
    /// where it also checked the key is not the account key); it is not parsed again.
    pub csr: VerifiedCsr,
    /// How to render the problem stored on the order when issuance fails for good.
    pub render_problem: RenderProblem<'a>,
}

impl std::fmt::Debug for FinalizeRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FinalizeRequest")
            .field("order_id", &self.order_id)
            .field("account", &self.account.id)
            .field("csr", &self.csr)
            .finish_non_exhaustive()
    }
}

/// A finalized order: `valid`, pointing at its certificate.
#[derive(Debug)]
pub struct Finalized {
    /// The order as it now is.
    pub order: AcmeOrder,
    /// Its authorizations.
    pub authzs: Vec<AcmeAuthz>,
    /// The certificate, recorded together with the order's new status.
    pub certificate: IssuedCertificate,
}

/// Why a finalize did not issue, and what became of the order.
#[derive(Debug, thiserror::Error)]
pub enum FinalizeError {
    /// No such order, or another account's: the order is not changed.
    #[error("no such order")]
    NotFound,
    /// The order is not `ready` (its status, expiry, or a concurrent finalize): not changed.
    #[error("{0}")]
    NotReady(String),
    /// The CSR does not request exactly the order's names (or policy refuses them): the order
    /// stays `ready`, so the client may send a correct CSR.
    #[error("the CSR does not match the order: {0}")]
    BadCsr(CaError),
    /// The account may not order one of the names (its EAB key's suffixes): not changed.
    #[error("{0}")]
    NotAllowed(String),
    /// The CA cannot issue now (store down, no usable issuer): the order stays `ready`.
    #[error("{0}")]
    Unavailable(CaError),
    /// Issuance failed for good: the order is `invalid` with the rendered problem stored (unless
    /// recording that failed too; then it stays `ready`, and the failure is logged).
    #[error("{0}")]
    Failed(CaError),
    /// The order could not be read.
    #[error("{0}")]
    Database(CaError),
}

impl Registration {
    /// Finalizes an order: the one way an ACME order gets a certificate. See the module docs for
    /// what a crash at any point leaves behind.
    pub async fn finalize(&self, req: FinalizeRequest<'_>) -> Result<Finalized, FinalizeError> {
        // Claimed before it is read, so that what is read is not already being changed here.
        let Some(_claim) = self.claims.take(req.order_id) else {
            return Err(FinalizeError::NotReady("the order is being finalized already".into()));
        };
        let store = self.authority.store();
        let (order, authzs) = store
            .acme_order_with_authzs(req.order_id)
            .await
            .map_err(FinalizeError::Database)?
            .ok_or(FinalizeError::NotFound)?;
        if order.account_id != req.account.id {
            return Err(FinalizeError::NotFound);
        }
        let status = order.order_status().map_err(|e| FinalizeError::Database(e.into()))?;
        if status != OrderStatus::Ready {
            return Err(FinalizeError::NotReady(format!("the order is {status}, not ready")));
        }
        if order.expires_at < OffsetDateTime::now_utc().unix_timestamp() {
            return Err(FinalizeError::NotReady("the order has expired".into()));
        }
        let names = authorized_names(&authzs).map_err(FinalizeError::Database)?;
        for n in &names {
            account_allows(req.account, n).map_err(FinalizeError::NotAllowed)?;
        }
        let profile =
            if names.iter().any(|n| matches!(n, Name::Spiffe(_))) { Profile::Workload } else { Profile::TlsServer };
        // RFC 8555 section 7.4: a CSR that does not name exactly the order's identifiers is
        // refused before anything is written, so a bad CSR changes nothing.
        let authorized = AuthorizedNames { names, exact: true };
        let names =
            self.authority.policy().names_for(&req.csr, profile, Some(&authorized)).map_err(FinalizeError::BadCsr)?;
        let requester = format!("acme:{}", req.account.id);
        match self.authority.issue_for_order(req.csr, names, profile, &requester, &order.id).await {
            Ok(certificate) => {
                self.authority.step(IssuanceStep::Finalized);
                let order = AcmeOrder {
                    status: OrderStatus::Valid.as_str().into(),
                    cert_serial: Some(certificate.serial.to_hex()),
                    ..order
                };
                Ok(Finalized { order, authzs, certificate })
            }
            // Another replica's finalize won (or the order was invalidated): it is not ours to
            // change; the certificate signed here was not recorded and is not returned.
            Err(CaError::OrderNotReady { .. }) => {
                Err(FinalizeError::NotReady("the order was finalized or invalidated concurrently".into()))
            }
            Err(e) if e.kind() == ErrorKind::Unavailable => Err(FinalizeError::Unavailable(e)),
            Err(e) => {
                let problem = (req.render_problem)(&e);
                let invalid = store
                    .acme_transition_order(&order.id, OrderStatus::Ready, OrderStatus::Invalid, None, Some(&problem))
                    .await;
                match invalid {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::info!(order = %order.id, "the order left ready before it could be invalidated")
                    }
                    Err(store_err) => tracing::warn!(
                        order = %order.id, error = %e, store_error = %store_err,
                        "issuance for an order failed and the order could not be marked invalid; it stays ready"
                    ),
                }
                Err(FinalizeError::Failed(e))
            }
        }
    }
}
