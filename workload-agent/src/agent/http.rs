//! One HTTPS request over a fresh connection with a given rustls configuration.
//!
//! The agent talks to the CA rarely (enrollment, renewal, a bundle check every few minutes) and
//! with different TLS identities (none, pinned bootstrap, its current certificate), so a
//! connection per request keeps each exchange's trust explicit instead of pooling across them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;

/// Largest response body read (certificate chains and bundles are a few KiB).
const MAX_BODY: usize = 1 << 20;

/// A response.
#[derive(Debug)]
pub struct HttpResponse {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: hyper::HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl HttpResponse {
    /// A header value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The problem document's detail (RFC 7807), or the body as text.
    pub fn error_detail(&self) -> String {
        match serde_json::from_slice::<serde_json::Value>(&self.body) {
            Ok(v) if v.get("detail").is_some() => {
                let kind = v["type"].as_str().unwrap_or_default();
                format!("{} ({kind})", v["detail"].as_str().unwrap_or_default())
            }
            _ => String::from_utf8_lossy(&self.body).chars().take(300).collect(),
        }
    }
}

/// Sends one request; `timeout` bounds the whole exchange.
pub async fn request(
    tls: Arc<rustls::ClientConfig>,
    method: Method,
    url: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
    timeout: Duration,
) -> anyhow::Result<HttpResponse> {
    let headers: Vec<(&str, String)> = content_type.map(|ct| ("content-type", ct.to_owned())).into_iter().collect();
    request_with(tls, method, url, &headers, body, timeout).await
}

/// Sends one request with extra `headers`; `timeout` bounds the whole exchange.
pub async fn request_with(
    tls: Arc<rustls::ClientConfig>,
    method: Method,
    url: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
    timeout: Duration,
) -> anyhow::Result<HttpResponse> {
    tokio::time::timeout(timeout, request_inner(tls, method, url, headers, body))
        .await
        .map_err(|_| anyhow!("{url}: no answer within {}s", timeout.as_secs_f32()))?
}

async fn request_inner(
    tls: Arc<rustls::ClientConfig>,
    method: Method,
    url: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> anyhow::Result<HttpResponse> {
    let uri: Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
    if uri.scheme_str() != Some("https") {
        bail!("{url}: only https URLs are used");
    }
    let host = uri.host().ok_or_else(|| anyhow!("{url}: no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let tcp =
        tokio::net::TcpStream::connect((host.as_str(), port)).await.with_context(|| format!("connecting to {url}"))?;
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY not set");
    }
    let name = ServerName::try_from(host.clone()).map_err(|_| anyhow!("{url}: bad server name"))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .with_context(|| format!("TLS handshake with {url}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "a connection to the CA ended with an error");
        }
    });
    let authority = uri.authority().map(|a| a.as_str().to_owned()).unwrap_or(host);
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", authority)
        .header("user-agent", concat!("lanyard-agent/", env!("CARGO_PKG_VERSION")));
    for (name, value) in headers {
        req = req.header(*name, value.as_str());
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::from(body)))?)
        .await
        .with_context(|| format!("request to {url}"))?;
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| anyhow!("reading the answer of {url}: {e}"))?
        .to_bytes();
    Ok(HttpResponse { status: parts.status, headers: parts.headers, body })
}

/// A TLS client configuration that trusts `roots` (standard server verification by host name),
/// optionally presenting a client certificate.
pub fn tls_config(
    roots: &[rustls::pki_types::CertificateDer<'static>],
    client: Option<(Vec<rustls::pki_types::CertificateDer<'static>>, rustls::pki_types::PrivateKeyDer<'static>)>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).context("a trust bundle root is not a usable trust anchor")?;
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(store);
    let cfg = match client {
        Some((chain, key)) => b.with_client_auth_cert(chain, key).context("client certificate")?,
        None => b.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

/// Accepts any server certificate. Used for exactly one request: fetching the trust bundle before
/// any trust exists, whose content is then checked against the pinned root fingerprint and fetched
/// again over a connection verified with that root.
#[derive(Debug)]
pub struct AcceptAnyServer(rustls::crypto::WebPkiSupportedAlgorithms);

impl AcceptAnyServer {
    /// A bootstrap-only configuration.
    pub fn config() -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let algs = provider.signature_verification_algorithms;
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(algs)))
            .with_no_client_auth();
        Ok(Arc::new(cfg))
    }
}

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_schemes()
    }
}
