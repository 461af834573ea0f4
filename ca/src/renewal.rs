//! Renewal by possession of a current certificate (the workload fast path).
//!
//! The TLS layer proves the client holds the private key of the certificate it presented; this
//! module decides whether that certificate is one this CA issued and may still be renewed. The
//! check is by exact bytes against the durable record, so a look-alike certificate with a copied
//! serial fails, and revocation is read from the same record.
//!
//! Lineage: a renewed certificate is superseded by its successor, and renewing it again is
//! refused, so a stolen certificate and key cannot fork the identity (the thief renewing in
//! parallel with the holder). One exception, the lost-response rule: within
//! [`crate::Policy::renewal_retry_window`] of the first renewal, the same old certificate may be
//! renewed again (an agent whose answer was lost retries with what it has); the new certificate
//! then replaces the previous successor, which is revoked as superseded in the same transaction.
//! A successor that was renewed or revoked itself is never replaced. So there is at most one live
//! successor per certificate at any time, and revoking a certificate revokes its successors
//! ([`crate::store::Store::revoke`]).

use x509_parser::prelude::FromDer;

use crate::CaError;
use crate::fleet::TrustReport;
use crate::issuance::{Authority, IssueRequest, IssuedCertificate, Renewal};
use crate::names::{AuthorizedNames, Name};
use crate::profile::Profile;
use crate::store::{CertificateRecord, CertificateStatus};

fn denied(why: impl Into<String>) -> CaError {
    CaError::Unauthenticated(why.into())
}

impl Authority {
    /// Authenticates a workload by its current certificate (leaf DER, possession already proven by
    /// the TLS handshake): it must be byte for byte a certificate this CA recorded as issued, and
    /// still unexpired, unrevoked and of the workload profile. Returns its record.
    pub async fn authenticate_workload(&self, presented: &[u8]) -> Result<CertificateRecord, CaError> {
        self.check_presented(presented).await.map(|(_, record)| record)
    }

    async fn check_presented<'a>(
        &self,
        presented: &'a [u8],
    ) -> Result<(x509_parser::certificate::X509Certificate<'a>, CertificateRecord), CaError> {
        let (_, leaf) = x509_parser::certificate::X509Certificate::from_der(presented)
            .map_err(|_| denied("the client certificate is not valid DER"))?;
        let serial = hex::encode(leaf.raw_serial().iter().skip_while(|b| **b == 0).copied().collect::<Vec<u8>>());
        let record = self
            .store()
            .certificate(&serial)
            .await?
            .ok_or_else(|| denied("the client certificate was not issued by this CA"))?;
        let recorded_der = record.cert_pem.as_deref().and_then(|p| crate::pem::decode_certificate(p).ok());
        if record.status != CertificateStatus::Issued || recorded_der.as_deref() != Some(presented) {
            return Err(denied("the client certificate was not issued by this CA"));
        }
        if record.revoked_at.is_some() {
            return Err(denied(format!("certificate {serial} is revoked")));
        }
        let now = time::OffsetDateTime::now_utc();
        if record.not_after <= now {
            return Err(denied(format!("certificate {serial} expired at {}", record.not_after)));
        }
        if record.profile != Profile::Workload.as_str() {
            return Err(denied(format!(
                "certificate {serial} is a {} certificate, not a workload one",
                record.profile
            )));
        }
        Ok((leaf, record))
    }

    /// Whether `record` (authenticated, unrevoked) may be renewed now: Ok(None) if it was never
    /// renewed, Ok(Some(successor)) for a retry the lost-response rule accepts (the successor it
    /// replaces), else [`CaError::Superseded`]. The store re-checks all of it when it records the
    /// renewal, so a change between this look and the record refuses the renewal then.
    async fn lineage_check(
        &self,
        record: &CertificateRecord,
        now: time::OffsetDateTime,
    ) -> Result<Option<String>, CaError> {
        let (Some(next), Some(at)) = (&record.superseded_by, record.superseded_at) else { return Ok(None) };
        let window = self.policy().renewal_retry_window;
        let refuse = |detail: String| CaError::Superseded { serial: record.serial.clone(), detail };
        if now >= at + window {
            return Err(refuse(format!(
                "{next} replaced it at {at}; renew from {next}, a repeat with this certificate is accepted only \
                 within {} of its first renewal",
                humantime_serde::re::humantime::format_duration(window)
            )));
        }
        let successor = self.store().certificate(next).await?;
        match successor {
            Some(s) if s.revoked_at.is_none() && s.superseded_by.is_none() => Ok(Some(next.clone())),
            Some(s) if s.revoked_at.is_some() => Err(refuse(format!("its successor {next} is revoked"))),
            _ => Err(refuse(format!("its successor {next} was renewed itself, so the first answer arrived"))),
        }
    }

    /// Issues a new workload certificate for the identity of `presented` (leaf DER, already
    /// proven by the TLS handshake), from a CSR with a new key naming the same SPIFFE ID. Refused
    /// ([`CaError::Superseded`]) when `presented` was already renewed, except for a retry within
    /// the retry window (see the module documentation).
    pub async fn renew(&self, presented: &[u8], csr: &[u8]) -> Result<IssuedCertificate, CaError> {
        self.renew_reporting(presented, csr, None).await
    }

    /// Records a workload's trust-state report ([`crate::fleet`]) under the SPIFFE ID of its
    /// authenticated certificate `record`.
    pub fn record_trust_report(&self, record: &CertificateRecord, report: &TrustReport) {
        let id = record.sans.split(',').find(|s| s.starts_with("spiffe://")).unwrap_or(&record.sans);
        if !self.fleet().record(id, &record.serial, report, time::OffsetDateTime::now_utc()) {
            tracing::debug!(workload = id, "trust report not tracked: the fleet view is full");
        }
    }

    /// [`Authority::renew`], recording the agent's trust-state `report` once the presented
    /// certificate is authenticated (whether or not the renewal then succeeds: the report is
    /// about what the agent has installed, which a refused renewal does not change).
    pub async fn renew_reporting(
        &self,
        presented: &[u8],
        csr: &[u8],
        report: Option<&TrustReport>,
    ) -> Result<IssuedCertificate, CaError> {
        let (leaf, record) = self.check_presented(presented).await?;
        if let Some(r) = report {
            self.record_trust_report(&record, r);
        }
        let now = time::OffsetDateTime::now_utc();
        let replaces = match self.lineage_check(&record, now).await {
            Ok(r) => r,
            Err(e) => {
                // A superseded certificate presented again is how a stolen one shows: audit it.
                if let CaError::Superseded { .. } = e {
                    let ev = crate::AuditEvent::now(
                        format!("renewal:{}", record.serial),
                        "certificate.renew",
                        &record.serial,
                        crate::Outcome::Refused,
                        e.to_string(),
                    );
                    if let Err(audit_err) = self.store().append_audit(ev).await {
                        tracing::warn!(error = %audit_err, "could not audit a refused renewal");
                    }
                }
                return Err(e);
            }
        };
        // The same identity: exactly the names of the certificate being renewed.
        let names: Vec<Name> = crate::csr::names_in_certificate(&leaf)?;
        let authorized = AuthorizedNames { names, exact: true };
        let requester = format!("renewal:{}", record.serial);
        self.issue_with(
            IssueRequest {
                csr,
                profile: Profile::Workload,
                requester: &requester,
                lifetime: None,
                authorized: Some(&authorized),
            },
            Some(Renewal {
                old_key: leaf.public_key().raw,
                predecessor: &record.serial,
                replaces: replaces.as_deref(),
                window_start: (now - self.policy().renewal_retry_window).unix_timestamp(),
            }),
        )
        .await
    }
}
