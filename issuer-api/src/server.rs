//! The HTTPS server: rustls in front of the axum router, with graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::Service;
use tracing::{debug, info};

use crate::identity::ServerIdentity;
use crate::listener::{self, BoundedListener, ListenerConfig, ListenerStats, Protocol};

/// The client's address, put into every request's extensions (rate limits, logs).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// The client's TLS certificate chain (leaf first), when it presented one. Only possession of the
/// leaf's key is proven by the handshake; whether the CA accepts the certificate is decided by the
/// CA core (see `ca::Authority::renew`), which answers with a clear error instead of a TLS alert.
#[derive(Debug, Clone)]
pub struct PeerCertificates(pub Arc<Vec<rustls::pki_types::CertificateDer<'static>>>);

/// Requests a client certificate without requiring one, and checks only the handshake signature
/// (proof of possession). ACME clients and browsers send none; workload agents renewing over mTLS
/// send their current certificate.
#[derive(Debug)]
struct OptionalClientCert {
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::server::danger::ClientCertVerifier for OptionalClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Serves `app` over TLS on `listener` until `shutdown` resolves, within the limits of `limits`
/// (see [`crate::listener`]); its counters go to `stats`.
pub async fn serve_tls(
    listener: TcpListener,
    identity: Arc<ServerIdentity>,
    app: axum::Router,
    limits: ListenerConfig,
    stats: ListenerStats,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client_auth = Arc::new(OptionalClientCert { algorithms: provider.signature_verification_algorithms });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS versions")?
        .with_client_cert_verifier(client_auth)
        .with_cert_resolver(identity);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let mut incoming = BoundedListener::new(listener, "https", limits.max_connections, stats.clone());
    let local: SocketAddr = incoming.local_addr()?;
    info!(address = %local, max_connections = limits.max_connections, "listening (HTTPS)");
    listener::warn_if_above_fd_limit("https", limits.max_connections);
    let limits = Arc::new(limits);
    tokio::pin!(shutdown);
    loop {
        let listener::Accepted { tcp, peer, slot, handshake } = tokio::select! {
            c = incoming.accept() => c,
            () = &mut shutdown => { info!("shutting down"); return Ok(()); }
        };
        // Small ACME/JSON responses must not wait for Nagle's algorithm and delayed ACKs.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let acceptor = acceptor.clone();
        let app = app.clone();
        let limits = limits.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let _slot = slot; // held until the connection ends
            let tls = match handshake.run(&limits, &stats, acceptor.accept(tcp)).await {
                Some(Ok(t)) => t,
                Some(Err(e)) => {
                    debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                None => {
                    debug!(%peer, "TLS handshake timed out or evicted");
                    return;
                }
            };
            let session = tls.get_ref().1;
            let protocol = if session.alpn_protocol() == Some(b"h2") { Protocol::Http2 } else { Protocol::Http1 };
            let peer_certs = session
                .peer_certificates()
                .filter(|c| !c.is_empty())
                .map(|c| PeerCertificates(Arc::new(c.iter().map(|d| d.clone().into_owned()).collect())));
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(PeerAddr(peer));
                if let Some(c) = &peer_certs {
                    req.extensions_mut().insert(c.clone());
                }
                app.clone().call(req)
            });
            if let Err(e) = listener::serve_http(tls, protocol, &limits, &stats, svc).await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}
