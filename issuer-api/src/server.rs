//! The HTTPS server: rustls in front of the axum router, with graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::Service;
use tracing::{debug, info, warn};

use crate::identity::ServerIdentity;

/// The client's address, put into every request's extensions (rate limits, logs).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Binds `addr` and serves `app` over TLS until `shutdown` resolves.
pub async fn serve_tls(
    listener: TcpListener,
    identity: Arc<ServerIdentity>,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS versions")?
        .with_no_client_auth()
        .with_cert_resolver(identity);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let local: SocketAddr = listener.local_addr()?;
    info!(address = %local, "listening (HTTPS)");
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => { warn!(error = %e, "accept failed"); continue; }
            },
            () = &mut shutdown => { info!("shutting down"); return Ok(()); }
        };
        // Small ACME/JSON responses must not wait for Nagle's algorithm and delayed ACKs.
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(PeerAddr(peer));
                app.clone().call(req)
            });
            if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), svc)
                .await
            {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}
