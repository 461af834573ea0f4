//! Certificates as ACME sees them: download by the ordering account (RFC 8555 section 7.4.2),
//! revocation by that account or the certificate's key (section 7.6), and the checks of an ARI
//! `replaces` (RFC 9773 section 5) and of a certID.

use time::OffsetDateTime;

use super::Registration;
use crate::store::CertificateRecord;
use crate::store::lineage::Revocation;
use crate::{CaError, IssuerRecord};

/// A certificate to serve: its PEM, its issuer and the issuer journal (for the chains).
#[derive(Debug, Clone)]
pub struct Download {
    /// The leaf, PEM.
    pub leaf_pem: String,
    /// The intermediate that signed it.
    pub issuer: IssuerRecord,
    /// Every issuer, for cross certificates during a root rotation.
    pub journal: Vec<IssuerRecord>,
}

/// Why a certificate cannot be downloaded.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// No such certificate, not from an ACME order, another account's, or not issued yet.
    #[error("no such certificate")]
    NotFound,
    /// The certificate's issuer is not in the journal: the store is inconsistent.
    #[error("issuer of a certificate missing")]
    IssuerMissing,
    /// The store failed.
    #[error(transparent)]
    Database(#[from] CaError),
}

/// Who asks for a revocation, as the edge authenticated it.
#[derive(Debug, Clone, Copy)]
pub enum Revoker<'a> {
    /// An account (JWS signed with `kid`): allowed if it ordered the certificate.
    Account(&'a str),
    /// The certificate's own key (JWS signed with `jwk`); `key_matches` is whether that JWK is the
    /// certificate's public key, which the edge checked.
    CertificateKey {
        /// The signing JWK is the certificate's key.
        key_matches: bool,
    },
}

/// Why a revocation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// No such certificate, or the DER sent is not the one issued under that serial.
    #[error("no such certificate")]
    NotFound,
    /// Neither the ordering account nor the certificate's key asked.
    #[error("neither the ordering account nor the certificate key signed this request")]
    NotAuthorized,
    /// The certificate was revoked already: nothing changed.
    #[error("the certificate is already revoked")]
    AlreadyRevoked,
    /// The store failed; nothing was revoked.
    #[error(transparent)]
    Database(#[from] CaError),
}

/// Why an order may not say it `replaces` a certificate.
#[derive(Debug, thiserror::Error)]
pub enum ReplacesError {
    /// The certID names no certificate of this CA.
    #[error("no such certificate")]
    NotFound,
    /// The account did not order the certificate.
    #[error("replaces names a certificate this account did not order")]
    NotOwned,
    /// Another order already replaces it.
    #[error("that certificate was already replaced")]
    AlreadyReplaced,
    /// The store failed.
    #[error(transparent)]
    Database(#[from] CaError),
}

impl Registration {
    /// The certificate `serial` for `account_id`, which must have ordered it.
    pub async fn download(&self, serial: &str, account_id: &str) -> Result<Download, DownloadError> {
        let store = self.authority.store();
        let order = store.acme_order_for_cert(serial).await?.ok_or(DownloadError::NotFound)?;
        if order.account_id != account_id {
            // Another account's certificate does not exist for this one.
            return Err(DownloadError::NotFound);
        }
        let rec = store.certificate(serial).await?.ok_or(DownloadError::NotFound)?;
        let leaf_pem = rec.cert_pem.ok_or(DownloadError::NotFound)?;
        let journal = store.issuers().await?;
        let issuer = journal.iter().find(|i| i.id == rec.issuer_id).cloned().ok_or(DownloadError::IssuerMissing)?;
        Ok(Download { leaf_pem, issuer, journal })
    }

    /// Revokes the certificate `serial`, whose DER the requester sent as `der`, and everything
    /// renewed from it, with the audit events, in one transaction.
    pub async fn revoke(
        &self,
        serial: &str,
        der: &[u8],
        by: Revoker<'_>,
        reason: i32,
    ) -> Result<Revocation, RevokeError> {
        let store = self.authority.store();
        let rec = store.certificate(serial).await?.ok_or(RevokeError::NotFound)?;
        let ours =
            rec.cert_pem.as_deref().and_then(|p| crate::pem::decode_certificate(p).ok()).is_some_and(|d| d == der);
        if !ours {
            return Err(RevokeError::NotFound);
        }
        let (allowed, actor) = match by {
            Revoker::Account(id) => {
                (store.acme_order_for_cert(serial).await?.is_some_and(|o| o.account_id == id), format!("acme:{id}"))
            }
            Revoker::CertificateKey { key_matches } => (key_matches, "certificate-key".to_owned()),
        };
        if !allowed {
            return Err(RevokeError::NotAuthorized);
        }
        let done = store.revoke(serial, reason, OffsetDateTime::now_utc(), &actor).await?;
        if !done.revoked {
            return Err(RevokeError::AlreadyRevoked);
        }
        Ok(done)
    }

    /// The certificate an RFC 9773 certID names (`aki_hex`, `serial_hex`, decoded by the edge),
    /// if it is ours and the AKI is its issuer's key id.
    pub async fn certificate_by_id(
        &self,
        aki_hex: &str,
        serial_hex: &str,
    ) -> Result<Option<CertificateRecord>, CaError> {
        let store = self.authority.store();
        let Some(rec) = store.certificate(serial_hex).await? else { return Ok(None) };
        let issuers = store.issuers().await?;
        Ok(issuers.iter().any(|i| i.id == rec.issuer_id && i.ski == aki_hex).then_some(rec))
    }

    /// Checks that an order of `account_id` may say it replaces the certificate `cert_id` names
    /// (`aki_hex`, `serial_hex`): it is ours, the account ordered it, and nothing replaced it yet.
    pub async fn check_replaces(
        &self,
        cert_id: &str,
        aki_hex: &str,
        serial_hex: &str,
        account_id: &str,
    ) -> Result<(), ReplacesError> {
        let rec = self.certificate_by_id(aki_hex, serial_hex).await?.ok_or(ReplacesError::NotFound)?;
        let store = self.authority.store();
        let owned = store.acme_order_for_cert(&rec.serial).await?.is_some_and(|o| o.account_id == account_id);
        if !owned {
            return Err(ReplacesError::NotOwned);
        }
        if store.acme_replaced(cert_id).await? {
            return Err(ReplacesError::AlreadyReplaced);
        }
        Ok(())
    }

    /// The renewal window the CA asks of certificate `serial` (start, optional end; Unix
    /// seconds), if an emergency rotation or an operator asked for its replacement.
    pub async fn replacement_window(&self, serial: &str) -> Result<Option<(i64, Option<i64>)>, CaError> {
        self.authority.store().replacement_window(serial).await
    }
}
