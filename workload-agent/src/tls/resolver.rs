//! The certificate side of the seam. rustls asks a resolver for a certificate on every handshake, so a
//! config built once picks up each newly published SVID on its next handshake; connections already
//! established keep the key they negotiated with. The `CertifiedKey` is prepared at publish time, so
//! a handshake only loads an `Arc`.

use std::sync::Arc;

use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::seam::Live;

/// Hands out the currently published SVID, as a TLS server certificate and as a client certificate.
/// Returns nothing until the first SVID is published.
#[derive(Debug)]
pub struct SvidResolver {
    live: Arc<Live>,
}

impl SvidResolver {
    pub(crate) fn new(live: Arc<Live>) -> Self {
        SvidResolver { live }
    }

    /// The certificate chain and key a handshake starting now would use.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.live.certified.load_full()
    }
}

impl ResolvesServerCert for SvidResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for SvidResolver {
    /// Root hints are ignored: a SPIFFE workload has exactly one identity to offer.
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    /// Always true: the config may be built before the first SVID arrives, and rustls reads this
    /// when a handshake starts, not when the config is built.
    fn has_certs(&self) -> bool {
        true
    }
}
