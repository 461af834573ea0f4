//! The operator's interface to the CA (`lanyard-ca init`, `eab create`, `join-token create`,
//! `revoke`, `rotate`, `status`): opened from a database URL, without loading any issuer key, so
//! that commands that do not sign need no passphrase. Every change it makes commits its audit
//! event in the same transaction.

use std::time::Duration;

use time::OffsetDateTime;

use crate::rotation::{EmergencyReport, Enforcement, RotationKeys};
use crate::store::CertificateRecord;
use crate::store::acme::EabKey;
use crate::store::audit_log::{AuditFilter, AuditRecord, VerifyReport};
use crate::store::emergency::Emergency;
use crate::store::lineage::Revocation;
use crate::store::workload::JoinToken;
use crate::{AuditEvent, Authority, CaError, IssuerRecord, Passphrase, Policy, Store};

/// Operator access to one CA's database.
#[derive(Debug, Clone)]
pub struct Admin {
    store: Store,
}

impl Admin {
    /// Opens (creating if needed) the database at `url` (`sqlite://...` or `postgres://...`).
    pub async fn open(url: &str) -> Result<Admin, CaError> {
        Ok(Admin { store: Store::open(url).await? })
    }

    /// Loads the serving authority over this database (decrypting the active issuer's key).
    pub async fn load_authority(self, policy: Policy, pass: &Passphrase) -> Result<Authority, CaError> {
        Authority::load(self.store, policy, pass).await
    }

    /// The issuer journal; empty for a CA not initialized yet.
    pub async fn issuers(&self) -> Result<Vec<IssuerRecord>, CaError> {
        self.store.issuers().await
    }

    /// Records a new CA's issuers with their audit events, in one transaction.
    pub async fn insert_issuers(&self, issuers: &[&IssuerRecord], audit: &[AuditEvent]) -> Result<(), CaError> {
        self.store.insert_issuers(issuers, audit).await
    }

    /// Certificates (in flight, issued, abandoned).
    pub async fn certificate_counts(&self) -> Result<(i64, i64, i64), CaError> {
        self.store.certificate_counts().await
    }

    /// The latest notAfter `issuer_id` signed, if any.
    pub async fn last_signed_not_after(&self, issuer_id: &str) -> Result<Option<i64>, CaError> {
        self.store.last_signed_not_after(issuer_id).await
    }

    /// Every emergency rotation.
    pub async fn emergencies(&self) -> Result<Vec<Emergency>, CaError> {
        self.store.emergencies().await
    }

    /// Certificates of `issuer_id` an emergency still waits to see renewed.
    pub async fn emergency_outstanding(&self, issuer_id: &str, now: i64) -> Result<i64, CaError> {
        self.store.emergency_outstanding(issuer_id, now).await
    }

    /// Stores an ACME external account binding key with its `audit` event, in one transaction.
    pub async fn create_eab_key(&self, key: &EabKey, now: i64, audit: &AuditEvent) -> Result<(), CaError> {
        self.store.acme_create_eab_key(key, now, audit).await
    }

    /// Stores a join token under its digest with its `audit` event, in one transaction.
    pub async fn create_join_token(
        &self,
        digest: &str,
        token: &JoinToken,
        now: i64,
        audit: &AuditEvent,
    ) -> Result<(), CaError> {
        self.store.create_join_token(digest, token, now, audit).await
    }

    /// The record of certificate `serial`.
    pub async fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>, CaError> {
        self.store.certificate(serial).await
    }

    /// Revokes `serial` and everything renewed from it, with the audit events, in one transaction.
    pub async fn revoke(
        &self,
        serial: &str,
        reason: i32,
        at: OffsetDateTime,
        actor: &str,
    ) -> Result<Revocation, CaError> {
        self.store.revoke(serial, reason, at, actor).await
    }

    /// An emergency rotation of the active intermediate ([`crate::rotation::emergency_rotate`]).
    pub async fn emergency_rotate(
        &self,
        keys: &RotationKeys,
        delay: Duration,
        spread: Duration,
        enforcement: Enforcement,
    ) -> Result<EmergencyReport, CaError> {
        crate::rotation::emergency_rotate(&self.store, keys, delay, spread, enforcement).await
    }

    /// Prepares a new root ([`crate::rotation::prepare_root`]).
    pub async fn prepare_root(
        &self,
        keys: &RotationKeys,
        import: Option<(&str, &str)>,
    ) -> Result<(IssuerRecord, IssuerRecord), CaError> {
        crate::rotation::prepare_root(&self.store, keys, import).await
    }

    /// Rotates the intermediate now ([`crate::rotation::rotate_intermediate_now`]); returns
    /// (new active, retired).
    pub async fn rotate_intermediate_now(&self, keys: &RotationKeys) -> Result<(String, String), CaError> {
        crate::rotation::rotate_intermediate_now(&self.store, keys).await
    }

    /// `rotate intermediate --canary-*`: prepares a successor if there is none and starts its
    /// canary ([`crate::rotation::canary::begin`]); the servers' rotation loop judges it. Returns
    /// the canary and how many live certificates were asked to move to the successor.
    pub async fn start_canary(
        &self,
        keys: &RotationKeys,
        spec: &crate::rotation::canary::CanarySpec,
        spread: Duration,
    ) -> Result<(crate::store::canary::Canary, i64), CaError> {
        let rotation = crate::rotation::rotation_id();
        if crate::rotation::canary::soaking(&self.store).await?.is_some() {
            return Err(CaError::Config("a canary is already soaking; roll it back or let it finish".into()));
        }
        let journal = self.store.issuers().await?;
        if !journal.iter().any(|r| r.kind == crate::IssuerKind::Intermediate && r.state == crate::IssuerState::Prepared)
        {
            crate::rotation::prepare_intermediate(&self.store, keys, &rotation).await?;
        }
        crate::rotation::canary::begin(&self.store, spec, spread, &rotation, "operator").await
    }

    /// `rotate rollback` ([`crate::rotation::canary::rollback`]).
    pub async fn rollback(
        &self,
        spread: Duration,
        reason: &str,
    ) -> Result<crate::rotation::canary::CanaryDecision, CaError> {
        crate::rotation::canary::rollback(&self.store, spread, reason).await
    }

    /// Every canary, newest first.
    pub async fn canaries(&self) -> Result<Vec<crate::store::canary::Canary>, CaError> {
        self.store.canaries().await
    }

    /// Audit events matching `filter`, oldest first, with their place in the hash chain.
    pub async fn audit_events(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, CaError> {
        self.store.audit_query(filter).await
    }

    /// Verifies the audit hash chain; reports the first break.
    pub async fn audit_verify(&self) -> Result<VerifyReport, CaError> {
        self.store.audit_verify().await
    }

    /// The ACME nonce ledger over this database.
    pub fn nonce_ledger(&self) -> crate::ra::NonceLedger {
        crate::ra::NonceLedger::new(self.store.clone())
    }

    /// Deletes used nonces past their row lifetime and expires stale ACME orders (with
    /// `expired_problem` as their error); (nonces deleted, orders expired).
    pub async fn acme_cleanup(&self, now: i64, expired_problem: &str) -> Result<(u64, u64), CaError> {
        self.store.acme_cleanup(now, expired_problem).await
    }
}
