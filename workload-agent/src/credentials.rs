//! The credential types every consumer shares: an X509-SVID with its key, and a trust bundle.
//!
//! These are plain data. Validation happens once, at the seam ([`crate::tls::CredentialSeam`]),
//! before anything is published to TLS, files or the Workload API.

use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// An X509-SVID: the leaf certificate (first) and the intermediates that chain it to a root in the
/// trust bundle, plus the leaf's private key (PKCS#8).
#[derive(Debug)]
pub struct Svid {
    /// The SPIFFE ID in the leaf's URI SAN (`spiffe://td/path`).
    pub spiffe_id: String,
    /// Leaf first, then intermediates; never the root.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key, PKCS#8 DER.
    pub key: PrivateKeyDer<'static>,
    /// The leaf's notAfter, Unix seconds.
    pub not_after: i64,
    /// The leaf's notBefore, Unix seconds.
    pub not_before: i64,
}

impl Clone for Svid {
    fn clone(&self) -> Self {
        Svid {
            spiffe_id: self.spiffe_id.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            not_after: self.not_after,
            not_before: self.not_before,
        }
    }
}

/// The X.509 roots of one trust domain, as served by the CA's SPIFFE bundle endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustBundle {
    /// Trust domain name, without `spiffe://`.
    pub trust_domain: String,
    /// Root certificates (DER). During a root rotation there are several.
    pub roots: Vec<CertificateDer<'static>>,
    /// `spiffe_sequence` of the bundle; increases on every change.
    pub sequence: u64,
}
