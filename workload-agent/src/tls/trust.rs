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
//!   verified up to the bundle); a CRL that does not verify makes paths through that issuer fail;
//! - webpki picks a certificate's CRL by issuer *name* alone, so two issuers with one name (two
//!   intermediate generations named alike, an imported hierarchy) would have one's CRL tried
//!   against the other's key and fail closed. Each handshake therefore hands webpki only the CRLs
//!   whose issuer name **and** authority key identifier match a certificate the peer presented.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, TrustAnchor, UnixTime};

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
    /// Per CRL: the issuer name (DER) and authority key identifier it was signed under.
    keys: Vec<(Vec<u8>, Option<Vec<u8>>)>,
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
        let keys = der
            .iter()
            .enumerate()
            .map(|(index, crl)| {
                use x509_parser::prelude::FromDer;
                let (_, c) = x509_parser::revocation_list::CertificateRevocationList::from_der(crl.as_ref())
                    .map_err(|e| SeamError::InvalidCrl { index, reason: e.to_string() })?;
                Ok((c.issuer().as_raw().to_vec(), authority_key_id(c.extensions()).map(<[u8]>::to_vec)))
            })
            .collect::<Result<Vec<_>, SeamError>>()?;
        Ok(RevocationSet { der, parsed, keys })
    }

    /// The CRLs that can speak for the certificates of a presented chain: same issuer name, and
    /// the same authority key identifier when both carry one.
    fn for_chain(&self, chain: &[&[u8]]) -> Vec<&webpki::CertRevocationList<'static>> {
        let mut picked = vec![false; self.parsed.len()];
        for der in chain {
            let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else { continue };
            let aki = authority_key_id(cert.extensions());
            for (i, (issuer, crl_aki)) in self.keys.iter().enumerate() {
                let same_key = match (aki, crl_aki) {
                    (Some(a), Some(b)) => a == b.as_slice(),
                    _ => true,
                };
                if issuer.as_slice() == cert.issuer().as_raw() && same_key {
                    picked[i] = true;
                }
            }
        }
        self.parsed.iter().zip(picked).filter_map(|(crl, p)| p.then_some(crl)).collect()
    }

    /// Number of CRLs.
    pub(crate) fn len(&self) -> usize {
        self.der.len()
    }
}

/// The key identifier of an AuthorityKeyIdentifier extension (RFC 5280 4.2.1.1), of a
/// certificate or a CRL alike.
fn authority_key_id<'a>(extensions: &'a [x509_parser::extensions::X509Extension<'a>]) -> Option<&'a [u8]> {
    extensions.iter().find_map(|e| match e.parsed_extension() {
        x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.as_ref().map(|k| k.0),
        _ => None,
    })
}

/// Roots of one bundle as webpki trust anchors, and the CRLs in force.
#[derive(Debug)]
pub(crate) struct TrustAnchors {
    pub(crate) bundle: Arc<TrustBundle>,
    pub(crate) crls: Arc<RevocationSet>,
    roots: Arc<RootCertStore>,
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
        Ok(TrustAnchors { bundle, crls, roots, provider: provider.clone() })
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
        self.verify(end_entity, intermediates, now, KeyUsage::server_auth())
    }

    /// webpki path building to the bundle's roots for `usage`, with the revocation policy above.
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: KeyUsage,
    ) -> Result<(), rustls::Error> {
        let cert = EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        let algs = self.provider.signature_verification_algorithms.all;
        let presented: Vec<&[u8]> =
            std::iter::once(end_entity.as_ref()).chain(intermediates.iter().map(|c| c.as_ref())).collect();
        let refs: Vec<&webpki::CertRevocationList<'_>> =
            self.crls.for_chain(&presented).into_iter().map(|c| c as &webpki::CertRevocationList<'_>).collect();
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
        cert.verify_for_usage(algs, anchors, intermediates, now, usage, revocation, None).map(|_| ()).map_err(pki_error)
    }

    /// Chain and revocation check for a certificate presented by a TLS client (EKU clientAuth).
    pub(crate) fn verify_client(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        self.verify(end_entity, intermediates, now, KeyUsage::client_auth())
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
