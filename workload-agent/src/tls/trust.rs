//! The webpki state for one trust bundle, built once when a bundle is accepted and shared by every
//! handshake until the next bundle replaces it. Handshakes never parse roots.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};

use super::SeamError;
use crate::credentials::TrustBundle;

/// Roots of one bundle in the two forms webpki checks against: a root store for server
/// certificates (serverAuth) and a ready client verifier (clientAuth).
#[derive(Debug)]
pub(crate) struct TrustAnchors {
    pub(crate) bundle: Arc<TrustBundle>,
    roots: Arc<RootCertStore>,
    client: Arc<dyn ClientCertVerifier>,
    provider: Arc<CryptoProvider>,
}

impl TrustAnchors {
    pub(crate) fn build(bundle: Arc<TrustBundle>, provider: &Arc<CryptoProvider>) -> Result<Self, SeamError> {
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
            .build()
            // The only error possible without CRLs is "no roots", which was ruled out above.
            .map_err(|_| SeamError::EmptyBundle {
                trust_domain: bundle.trust_domain.clone(),
                sequence: bundle.sequence,
            })?;
        Ok(TrustAnchors { bundle, roots, client, provider: provider.clone() })
    }

    pub(crate) fn sequence(&self) -> u64 {
        self.bundle.sequence
    }

    /// Chain check for a certificate presented by a TLS server (EKU serverAuth). No name check:
    /// SPIFFE identifies peers by URI SAN, which the caller checks.
    pub(crate) fn verify_server(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        let algs = self.provider.signature_verification_algorithms.all;
        verify_server_cert_signed_by_trust_anchor(&parsed, &self.roots, intermediates, now, algs)
    }

    /// Chain check for a certificate presented by a TLS client (EKU clientAuth).
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
