//! ACME accounts (RFC 8555 sections 7.3 to 7.3.6): creation with its EAB binding, lookup by key
//! or account URL, contact and status changes, and keyChange. Each change commits its audit event
//! in the same transaction as the change itself (the store does both in one statement batch).

use super::{AccountStatus, Registration};
use crate::store::acme::{AcmeAccount, EabKey};
use crate::{AuditEvent, CaError};

/// Why a new account was not created.
#[derive(Debug, thiserror::Error)]
pub enum NewAccountError {
    /// The external account binding key already binds another account (a concurrent newAccount
    /// with the same key won).
    #[error("this external account binding key is already used")]
    EabKeyUsed,
    /// The store failed; nothing was recorded.
    #[error(transparent)]
    Database(CaError),
}

/// What a keyChange (RFC 8555 section 7.3.5) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyChangeOutcome {
    /// The account now has the new key; the audit event is recorded with it.
    Changed,
    /// The account's key changed concurrently (it no longer has the old key): nothing changed.
    Raced,
    /// The new key already belongs to this account id: nothing changed.
    KeyInUse(String),
}

impl Registration {
    /// The account with this id (the last path segment of its URL, the JWS `kid`).
    pub async fn account(&self, id: &str) -> Result<Option<AcmeAccount>, CaError> {
        self.authority.store().acme_account(id).await
    }

    /// The account whose key has this JWK thumbprint (RFC 7638).
    pub async fn account_by_thumbprint(&self, thumbprint: &str) -> Result<Option<AcmeAccount>, CaError> {
        self.authority.store().acme_account_by_thumbprint(thumbprint).await
    }

    /// The external account binding key `kid`, bound or not.
    pub async fn eab_key(&self, kid: &str) -> Result<Option<EabKey>, CaError> {
        self.authority.store().acme_eab_key(kid).await
    }

    /// Creates `account`, or returns the one that already exists for the same key (`false`). A new
    /// account, its EAB key's binding and `audit` commit together.
    pub async fn new_account(
        &self,
        account: &AcmeAccount,
        audit: &AuditEvent,
    ) -> Result<(AcmeAccount, bool), NewAccountError> {
        self.authority.store().acme_create_account(account, audit).await.map_err(|e| match e {
            // The store's refusal to bind an EAB key a second time.
            CaError::NameNotAllowed { .. } => NewAccountError::EabKeyUsed,
            other => NewAccountError::Database(other),
        })
    }

    /// Sets a valid account's contacts and status, with `audit` in the same transaction; `false`
    /// (nothing recorded) when the account is no longer valid.
    pub async fn update_account(
        &self,
        id: &str,
        contact: &[String],
        status: AccountStatus,
        audit: &AuditEvent,
    ) -> Result<bool, CaError> {
        self.authority.store().acme_update_account(id, contact, status.as_str(), audit).await
    }

    /// Replaces `account`'s key with `new_jwk` (thumbprint `new_thumbprint`) if it still has its
    /// current key, with `audit` in the same transaction.
    pub async fn change_key(
        &self,
        account: &AcmeAccount,
        new_thumbprint: &str,
        new_jwk: &str,
        audit: &AuditEvent,
    ) -> Result<KeyChangeOutcome, CaError> {
        Ok(
            match self
                .authority
                .store()
                .acme_change_key(&account.id, &account.thumbprint, new_thumbprint, new_jwk, audit)
                .await?
            {
                Ok(true) => KeyChangeOutcome::Changed,
                Ok(false) => KeyChangeOutcome::Raced,
                Err(other) => KeyChangeOutcome::KeyInUse(other),
            },
        )
    }
}
