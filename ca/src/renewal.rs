//! Renewal by possession of a current certificate (the workload fast path).
//!
//! The TLS layer proves the client holds the private key of the certificate it presented; this
//! module decides whether that certificate is one this CA issued and may still be renewed. The
//! check is by exact bytes against the durable record, so a look-alike certificate with a copied
//! serial fails, and revocation is read from the same record.

use x509_parser::prelude::FromDer;

use crate::CaError;
use crate::issuance::{Authority, IssueRequest, IssuedCertificate};
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
        let recorded_der = record
            .cert_pem
            .as_deref()
            .and_then(|p| x509_parser::pem::parse_x509_pem(p.as_bytes()).ok())
            .map(|(_, p)| p.contents);
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

    /// Issues a new workload certificate for the identity of `presented` (leaf DER, already
    /// proven by the TLS handshake), from a CSR with a new key naming the same SPIFFE ID.
    pub async fn renew(&self, presented: &[u8], csr: &[u8]) -> Result<IssuedCertificate, CaError> {
        let (leaf, record) = self.check_presented(presented).await?;
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
            Some(leaf.public_key().raw),
        )
        .await
    }
}
