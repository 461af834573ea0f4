//! The trust side of the seam: rustls verifiers that check a peer against the *current* trust bundle
//! and then ask an [`Authorizer`] about the peer's SPIFFE ID.
//!
//! DNS names play no part: SPIFFE identifies a workload by the single `spiffe://` URI SAN of its
//! leaf, so the server name a client dials is ignored. The bundle's webpki state is built once per
//! bundle by the seam (see `trust.rs`) and only loaded here, so a config built once follows root
//! rotations without rebuilding. Failures become `rustls::Error`s (never panics): chain failures keep
//! webpki's `CertificateError` (so the peer gets the matching alert), identity failures are
//! `CertificateError::Other` whose message is the [`SeamError`] text naming the refused ID.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme};

use super::handshakes::Refusal;
use super::seam::Live;
use super::trust::TrustAnchors;
use super::x509::inspect_leaf;
use super::{Authorizer, SeamError};

/// What both verifiers share: where the current bundle lives, whom to admit, which algorithms.
#[derive(Debug)]
struct PeerPolicy {
    live: Arc<Live>,
    trust_domain: String,
    authorizer: Authorizer,
    provider: Arc<CryptoProvider>,
}

impl PeerPolicy {
    fn anchors(&self) -> Result<Arc<TrustAnchors>, rustls::Error> {
        self.live
            .trust
            .load_full()
            .ok_or_else(|| rustls::Error::General("no trust bundle has been published to this seam yet".into()))
    }

    /// Runs after the chain verified: the leaf must be an X509-SVID of our trust domain whose ID the
    /// authorizer admits.
    fn authorize(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let leaf = inspect_leaf(end_entity).map_err(refuse)?;
        let id = leaf.spiffe_id;
        if id.trust_domain() != self.trust_domain {
            return Err(refuse(SeamError::PeerWrongTrustDomain {
                spiffe_id: id.as_str().to_owned(),
                expected: self.trust_domain.clone(),
            }));
        }
        if !self.authorizer.is_authorized(id.as_str()) {
            return Err(refuse(SeamError::PeerNotAuthorized { spiffe_id: id.as_str().to_owned() }));
        }
        tracing::trace!(peer = id.as_str(), "peer SVID accepted");
        Ok(())
    }

    /// Verifies a peer's chain with `chain` against the installed anchors, then its identity, and
    /// counts the outcome.
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        chain: impl FnOnce(&TrustAnchors) -> Result<(), rustls::Error>,
    ) -> Result<(), rustls::Error> {
        let tally = &self.live.handshakes;
        let anchors = self.anchors().inspect_err(|_| tally.refused(Refusal::NoBundle))?;
        chain(&anchors).inspect_err(|e| tally.refused(Refusal::of_chain_error(e)))?;
        self.authorize(end_entity).inspect_err(|_| tally.refused(Refusal::Identity))?;
        tally.accepted();
        Ok(())
    }

    fn verify_tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

fn refuse(error: SeamError) -> rustls::Error {
    tracing::debug!(%error, "peer refused");
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Refused(error)))))
}

/// rustls prints `CertificateError::Other` with `{:?}`; this wrapper makes that print the message
/// ("peer SPIFFE ID ... is not authorized") rather than a struct dump.
struct Refused(SeamError);

impl fmt::Debug for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Refused {}

/// For a rustls **client** config: verifies the server we connect to by SPIFFE ID.
#[derive(Debug)]
pub struct SpiffeServerCertVerifier {
    policy: PeerPolicy,
}

/// For a rustls **server** config: requires a client certificate and verifies it by SPIFFE ID.
#[derive(Debug)]
pub struct SpiffeClientCertVerifier {
    policy: PeerPolicy,
}

impl SpiffeServerCertVerifier {
    pub(crate) fn new(
        live: Arc<Live>,
        trust_domain: &str,
        authorizer: Authorizer,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        SpiffeServerCertVerifier {
            policy: PeerPolicy { live, trust_domain: trust_domain.to_owned(), authorizer, provider },
        }
    }
}

impl SpiffeClientCertVerifier {
    pub(crate) fn new(
        live: Arc<Live>,
        trust_domain: &str,
        authorizer: Authorizer,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        SpiffeClientCertVerifier {
            policy: PeerPolicy { live, trust_domain: trust_domain.to_owned(), authorizer, provider },
        }
    }
}

impl ServerCertVerifier for SpiffeServerCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.policy.check(end_entity, |a| a.verify_server(end_entity, intermediates, now))?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.policy.verify_tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.policy.verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.policy.schemes()
    }
}

impl ClientCertVerifier for SpiffeClientCertVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No CA hints: the roots change under a config built once, and a SPIFFE client has only one
    /// certificate to offer anyway.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.policy.check(end_entity, |a| a.verify_client(end_entity, intermediates, now))?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.policy.verify_tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.policy.verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.policy.schemes()
    }
}
