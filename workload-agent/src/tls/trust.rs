//! The webpki state for one trust bundle and one set of CRLs, built once when either is accepted
//! and shared by every handshake until the next one replaces it. Handshakes never parse roots or
//! CRLs.
//!
//! Revocation policy (the same for both TLS roles):
//! - the **whole chain** is checked: the leaf against its intermediate's CRL, the intermediate
//!   against its root's CRL, so an intermediate revoked by an emergency rotation takes every leaf
//!   under it with it;
//! - a certificate whose issuer has **no CRL** in the set is accepted (unknown status allowed):
//!   roots publish a CRL only after an emergency rotation, and a freshly activated intermediate's
//!   CRL arrives at the next refresh. Refusing those would fail closed for the honest fleet; the
//!   cost is that a revocation is seen only once its CRL is fetched (the refresh hint);
//! - a CRL past its **nextUpdate** is still used (webpki's `ExpirationPolicy::Ignore`): what it
//!   lists stays revoked, and enforcing expiry would turn a CA outage longer than the CRL
//!   validity into a fleet-wide outage. Staleness is exported as a metric instead;
//! - a CRL's signature is checked by webpki at every use against the chain's issuer (itself
//!   verified up to the bundle); a CRL that does not verify makes paths through that issuer fail.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, TrustAnchor, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{CertRevocationListError, CertificateError, RootCertStore};
use webpki::{
    EndEntityCert, ExpirationPolicy, KeyUsage, OwnedCertRevocationList, RevocationCheckDepth, RevocationOptionsBuilder,
    UnknownStatusPolicy,
};

use super::SeamError;
use crate::credentials::TrustBundle;

/// A set of CRLs accepted by the seam, parsed once.
#[derive(Debug, Default)]
pub(crate) struct RevocationSet {
    /// The CRLs as fetched (DER), in order.
    pub(crate) der: Vec<CertificateRevocationListDer<'static>>,
    parsed: Vec<webpki::CertRevocationList<'static>>,
}

impl RevocationSet {
    /// Parses every CRL; one that does not parse refuses the whole set.
    pub(crate) fn parse(der: Vec<CertificateRevocationListDer<'static>>) -> Result<Self, SeamError> {
        let parsed = der
            .iter()
            .enumerate()
            .map(|(index, crl)| {
                OwnedCertRevocationList::from_der(crl.as_ref())
                    .map(webpki::CertRevocationList::from)
                    .map_err(|source| SeamError::InvalidCrl { index, reason: source.to_string() })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RevocationSet { der, parsed })
    }

    /// Number of CRLs.
    pub(crate) fn len(&self) -> usize {
        self.der.len()
    }
}

/// Roots of one bundle, and the CRLs in force, in the two forms webpki checks against: trust
/// anchors for server certificates (serverAuth) and a ready client verifier (clientAuth).
#[derive(Debug)]
pub(crate) struct TrustAnchors {
    pub(crate) bundle: Arc<TrustBundle>,
    pub(crate) crls: Arc<RevocationSet>,
    roots: Arc<RootCertStore>,
    client: Arc<dyn ClientCertVerifier>,
    provider: Arc<CryptoProvider>,
}

impl TrustAnchors {
    pub(crate) fn build(
        bundle: Arc<TrustBundle>,
        crls: Arc<RevocationSet>,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, SeamError> {
        if bundle.roots.is_empty() {
            return Err(SeamError::EmptyBundle {
                trust_domain: bundle.trust_domain.clone(),
                sequence: bundle.sequence,
            });
        }
        let mut roots = RootCertStore::empty();
        for (index, root) in bundle.roots.iter().enumerate() {
            roots.add(root.clone()).map_err(|source| SeamError::InvalidRoot { index, source })?;
        }
        let roots = Arc::new(roots);
        let client = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .with_crls(crls.der.iter().cloned())
            .allow_unknown_revocation_status()
            .build()
            .map_err(|e| SeamError::ClientVerifier(e.to_string()))?;
        Ok(TrustAnchors { bundle, crls, roots, client, provider: provider.clone() })
    }

    pub(crate) fn sequence(&self) -> u64 {
        self.bundle.sequence
    }

    /// The same roots with another set of CRLs.
    pub(crate) fn with_crls(&self, crls: Arc<RevocationSet>) -> Result<Self, SeamError> {
        Self::build(self.bundle.clone(), crls, &self.provider)
    }

    /// Chain and revocation check for a certificate presented by a TLS server (EKU serverAuth).
    /// No name check: SPIFFE identifies peers by URI SAN, which the caller checks.
    pub(crate) fn verify_server(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let cert = EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        let algs = self.provider.signature_verification_algorithms.all;
        let refs: Vec<&webpki::CertRevocationList<'_>> = self.crls.parsed.iter().collect();
        let revocation = match RevocationOptionsBuilder::new(&refs) {
            Ok(b) => Some(
                b.with_depth(RevocationCheckDepth::Chain)
                    .with_status_policy(UnknownStatusPolicy::Allow)
                    .with_expiration_policy(ExpirationPolicy::Ignore)
                    .build(),
            ),
            // No CRLs known: nothing to check against.
            Err(_) => None,
        };
        let anchors: &[TrustAnchor<'static>] = &self.roots.roots;
        cert.verify_for_usage(algs, anchors, intermediates, now, KeyUsage::server_auth(), revocation, None)
            .map(|_| ())
            .map_err(pki_error)
    }

    /// Chain and revocation check for a certificate presented by a TLS client (EKU clientAuth).
    pub(crate) fn verify_client(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        self.client.verify_client_cert(end_entity, intermediates, now).map(|_| ())
    }

    /// Our own SVID is used both to serve and to connect, so it must pass both checks.
    pub(crate) fn verify_own_chain(&self, chain: &[CertificateDer<'static>], now: UnixTime) -> Result<(), SeamError> {
        let (leaf, intermediates) = chain.split_first().ok_or(SeamError::EmptyChain)?;
        self.verify_server(leaf, intermediates, now)
            .and_then(|()| self.verify_client(leaf, intermediates, now))
            .map_err(|source| SeamError::UntrustedChain { sequence: self.sequence(), source })
    }
}

/// webpki's verdict as the rustls error a peer would get from rustls' own verifiers (rustls keeps
/// its mapping private), so alerts stay meaningful: a revoked peer gets `certificate_revoked`.
fn pki_error(error: webpki::Error) -> rustls::Error {
    use webpki::Error as E;
    match error {
        E::BadDer | E::BadDerTime | E::TrailingData(_) => CertificateError::BadEncoding.into(),
        E::CertNotValidYet { time, not_before } => CertificateError::NotValidYetContext { time, not_before }.into(),
        E::CertExpired { time, not_after } => CertificateError::ExpiredContext { time, not_after }.into(),
        E::InvalidCertValidity => CertificateError::Expired.into(),
        E::UnknownIssuer => CertificateError::UnknownIssuer.into(),
        E::CertRevoked => CertificateError::Revoked.into(),
        E::UnknownRevocationStatus => CertificateError::UnknownRevocationStatus.into(),
        E::CrlExpired { time, next_update } => {
            CertificateError::ExpiredRevocationListContext { time, next_update }.into()
        }
        E::IssuerNotCrlSigner => CertRevocationListError::IssuerInvalidForCrl.into(),
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature.into(),
        E::InvalidCrlSignatureForPublicKey => CertRevocationListError::BadSignature.into(),
        E::RequiredEkuNotFoundContext(_) => CertificateError::InvalidPurpose.into(),
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))).into(),
    }
}
