//! Challenge validation: the only outbound connections Lanyard makes. Targets are resolved through
//! the configured host map (else the system resolver) and must lie in an allowed network; ports are
//! configurable so tests run everything on loopback.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use ipnet::IpNet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde::Deserialize;
use tokio::net::TcpStream;

/// Where and how validation may connect.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidationConfig {
    /// Port for http-01 (80 in production).
    pub http01_port: u16,
    /// Port for tls-alpn-01 (443 in production).
    pub tls_alpn01_port: u16,
    /// Static name -> address map consulted before DNS.
    pub hosts: BTreeMap<String, IpAddr>,
    /// Networks validation may connect to. An internal CA validates internal names, so the
    /// default is the private ranges; anything else must be listed. Loopback is not in the
    /// default: ordering `ip:127.0.0.1` (or a name resolving to it) would make the CA validate
    /// against services on its own host, so only a config that lists it (tests) gets it.
    pub allowed_networks: Vec<IpNet>,
    /// Per-validation timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// DNS server (`ip:port`) queried for dns-01 TXT records. dns-01, and with it wildcard
    /// names, is offered only when this is set.
    pub dns_resolver: Option<SocketAddr>,
    /// Outbound validations (http-01, tls-alpn-01, dns-01) that may run at once on this replica,
    /// so a burst of challenge POSTs cannot turn the CA into a connection cannon.
    pub max_concurrent: usize,
    /// How long a challenge POST waits for a free validation slot before it is answered
    /// `rateLimited` with `Retry-After`; the challenge stays pending and may be posted again.
    #[serde(with = "humantime_serde")]
    pub slot_wait: Duration,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        ValidationConfig {
            http01_port: 80,
            tls_alpn01_port: 443,
            hosts: BTreeMap::new(),
            allowed_networks: DEFAULT_ALLOWED_NETWORKS.iter().filter_map(|n| n.parse().ok()).collect(),
            timeout: Duration::from_secs(10),
            dns_resolver: None,
            max_concurrent: 64,
            slot_wait: Duration::from_secs(5),
        }
    }
}

/// The bounded set of outbound validations that may run at once.
#[derive(Debug)]
pub struct Slots {
    sem: std::sync::Arc<tokio::sync::Semaphore>,
    wait: Duration,
    /// `lanyard_acme_validations_in_flight`.
    in_flight: Gauge,
    /// `lanyard_acme_validations_refused_total`.
    refused: Counter,
}

/// A running validation's slot; released (and the gauge lowered) when dropped.
#[derive(Debug)]
pub struct Slot(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit, Gauge);

impl Drop for Slot {
    fn drop(&mut self) {
        self.1.dec();
    }
}

impl Slots {
    /// Slots as configured (at least one), counted in `metrics`.
    pub fn new(cfg: &ValidationConfig, metrics: &crate::metrics::Metrics) -> Self {
        Slots {
            sem: std::sync::Arc::new(tokio::sync::Semaphore::new(cfg.max_concurrent.max(1))),
            wait: cfg.slot_wait,
            in_flight: metrics.validations_in_flight.clone(),
            refused: metrics.validations_refused.clone(),
        }
    }

    /// A slot, waiting up to the configured time; `None` when none came free.
    pub async fn acquire(&self) -> Option<Slot> {
        match tokio::time::timeout(self.wait, self.sem.clone().acquire_owned()).await {
            Ok(Ok(permit)) => {
                self.in_flight.inc();
                Some(Slot(permit, self.in_flight.clone()))
            }
            _ => {
                self.refused.inc();
                None
            }
        }
    }
}

/// Default of [`ValidationConfig::allowed_networks`]: the private ranges (RFC 1918, RFC 4193),
/// deliberately without loopback.
pub const DEFAULT_ALLOWED_NETWORKS: [&str; 4] = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"];

/// Why validation failed, with the ACME error type it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// ACME error type (`connection`, `unauthorized`, `incorrectResponse`, `dns`, `tls`, `rejectedIdentifier`).
    pub kind: &'static str,
    /// What happened, for the client.
    pub detail: String,
}

fn fail(kind: &'static str, detail: impl Into<String>) -> ValidationError {
    ValidationError { kind, detail: detail.into() }
}

impl ValidationConfig {
    async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, ValidationError> {
        let ip = if let Ok(ip) = host.parse::<IpAddr>() {
            ip
        } else if let Some(ip) = self.hosts.get(host) {
            *ip
        } else {
            let mut addrs = tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| fail("dns", format!("cannot resolve {host}: {e}")))?;
            addrs.next().ok_or_else(|| fail("dns", format!("{host} has no address")))?.ip()
        };
        if !self.allowed_networks.iter().any(|n| n.contains(&ip)) {
            let why = if ip.is_loopback() {
                "a loopback address, which this CA does not validate against unless configured to"
            } else {
                "outside the networks this CA validates"
            };
            return Err(fail("rejectedIdentifier", format!("{host} resolves to {ip}, {why}")));
        }
        Ok(SocketAddr::new(ip, port))
    }

    async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, ValidationError> {
        let addr = self.resolve(host, port).await?;
        tokio::time::timeout(self.timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| fail("connection", format!("timeout connecting to {addr}")))?
            .map_err(|e| fail("connection", format!("cannot connect to {host} at {addr}: {e}")))
    }

    /// http-01 (RFC 8555 section 8.3): the key authorization at the well-known URL.
    pub async fn http01(&self, host: &str, token: &str, key_authorization: &str) -> Result<(), ValidationError> {
        let run = async {
            let tcp = self.connect(host, self.http01_port).await?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .map_err(|e| fail("connection", format!("HTTP handshake with {host}: {e}")))?;
            tokio::spawn(conn);
            let host_header = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
            let req = hyper::Request::get(format!("/.well-known/acme-challenge/{token}"))
                .header("host", host_header)
                .header("user-agent", "lanyard-acme-validator")
                .body(Empty::<Bytes>::new())
                .map_err(|e| fail("connection", e.to_string()))?;
            let resp = sender.send_request(req).await.map_err(|e| fail("connection", format!("{host}: {e}")))?;
            if resp.status() != hyper::StatusCode::OK {
                return Err(fail(
                    "unauthorized",
                    format!("http://{host}/.well-known/acme-challenge/{token} answered {}", resp.status()),
                ));
            }
            let body = Limited::new(resp.into_body(), 8192)
                .collect()
                .await
                .map_err(|_| fail("unauthorized", "challenge response too large or broken"))?
                .to_bytes();
            // The body is never echoed: whatever answered may be an internal service, and the
            // problem document goes to whoever placed the order. Its length is enough to debug.
            if body.trim_ascii_end() != key_authorization.as_bytes() {
                return Err(fail(
                    "unauthorized",
                    format!("the response at {host} is not the key authorization (status 200, {} bytes)", body.len()),
                ));
            }
            Ok(())
        };
        tokio::time::timeout(self.timeout, run)
            .await
            .map_err(|_| fail("connection", format!("timeout validating {host}")))?
    }

    /// tls-alpn-01 (RFC 8737): a self-signed certificate for the name with the acmeIdentifier
    /// extension over SHA-256 of the key authorization, negotiated with ALPN `acme-tls/1`.
    pub async fn tls_alpn01(&self, host: &str, key_authorization: &str) -> Result<(), ValidationError> {
        let run = async {
            let tcp = self.connect(host, self.tls_alpn01_port).await?;
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            // TLS 1.3 only: the handshake signature is checked against the certificate's raw key
            // (webpki refuses to parse a certificate with the critical acmeIdentifier extension),
            // and rustls offers that check for TLS 1.3.
            let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(|e| fail("tls", e.to_string()))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
                .with_no_client_auth();
            cfg.alpn_protocols = vec![b"acme-tls/1".to_vec()];
            let name = ServerName::try_from(host.to_owned()).map_err(|_| fail("malformed", "bad server name"))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
                .connect(name, tcp)
                .await
                .map_err(|e| fail("tls", format!("TLS with {host}: {e}")))?;
            let (_, conn) = tls.get_ref();
            if conn.alpn_protocol() != Some(b"acme-tls/1") {
                return Err(fail("tls", format!("{host} did not negotiate acme-tls/1")));
            }
            let cert = conn.peer_certificates().and_then(|c| c.first()).ok_or_else(|| fail("tls", "no certificate"))?;
            check_alpn_cert(cert, host, key_authorization)
        };
        tokio::time::timeout(self.timeout, run)
            .await
            .map_err(|_| fail("connection", format!("timeout validating {host}")))?
    }
}

impl ValidationConfig {
    /// dns-01 (RFC 8555 section 8.4): a TXT record at `_acme-challenge.<name>` holding
    /// base64url(SHA-256(key authorization)), asked of the configured resolver.
    pub async fn dns01(&self, name: &str, key_authorization: &str) -> Result<(), ValidationError> {
        use base64::Engine;
        use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ProtocolConfig, ResolverConfig};
        let server = self.dns_resolver.ok_or_else(|| fail("malformed", "dns-01 is not offered by this CA"))?;
        let mut udp = ConnectionConfig::udp();
        udp.port = server.port();
        let mut tcp = ConnectionConfig::tcp();
        tcp.port = server.port();
        tcp.protocol = ProtocolConfig::Tcp;
        let mut ns = NameServerConfig::udp_and_tcp(server.ip());
        ns.connections = vec![udp, tcp];
        let resolver = hickory_resolver::Resolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![ns]),
            hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
        )
        .build()
        .map_err(|e| fail("dns", format!("resolver: {e}")))?;
        let want = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(ring::digest::digest(&ring::digest::SHA256, key_authorization.as_bytes()));
        let fqdn = format!("_acme-challenge.{name}.");
        let lookup = tokio::time::timeout(self.timeout, resolver.txt_lookup(fqdn.as_str()))
            .await
            .map_err(|_| fail("dns", format!("timeout looking up TXT {fqdn}")))?
            .map_err(|e| fail("unauthorized", format!("no TXT record at {fqdn}: {e}")))?;
        let found: Vec<String> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                // A TXT record's character-strings form one value (RFC 7208 section 3.3 style).
                hickory_resolver::proto::rr::RData::TXT(t) => {
                    Some(t.txt_data.iter().map(|b| String::from_utf8_lossy(b)).collect::<String>())
                }
                _ => None,
            })
            .collect();
        if found.iter().any(|v| v == &want) {
            Ok(())
        } else {
            Err(fail(
                "unauthorized",
                format!("the TXT records at {fqdn} do not hold the key authorization digest (found {})", found.len()),
            ))
        }
    }
}

/// RFC 8737 section 3: exactly one dNSName equal to the identifier, and a critical acmeIdentifier
/// extension holding SHA-256 of the key authorization.
fn check_alpn_cert(der: &CertificateDer<'_>, host: &str, key_authorization: &str) -> Result<(), ValidationError> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| fail("tls", "unparseable certificate"))?;
    let sans: Vec<_> =
        cert.subject_alternative_name().ok().flatten().map(|s| s.value.general_names.clone()).unwrap_or_default();
    if sans.len() != 1 || !matches!(sans[0], GeneralName::DNSName(d) if d.eq_ignore_ascii_case(host)) {
        return Err(fail("unauthorized", format!("the acme-tls/1 certificate must name exactly {host}")));
    }
    let want = ring::digest::digest(&ring::digest::SHA256, key_authorization.as_bytes());
    let oid = x509_parser::der_parser::oid!(1.3.6.1.5.5.7.1.31);
    let ext = cert
        .extensions()
        .iter()
        .find(|e| e.oid == oid)
        .ok_or_else(|| fail("unauthorized", "no acmeIdentifier extension"))?;
    if !ext.critical {
        return Err(fail("unauthorized", "the acmeIdentifier extension is not critical"));
    }
    // extnValue is an OCTET STRING (DER) holding the 32-byte digest: 04 20 <digest>.
    let v = ext.value;
    if v.len() != 34 || v[0] != 0x04 || v[1] != 0x20 || v[2..] != *want.as_ref() {
        return Err(fail("unauthorized", "the acmeIdentifier does not match the key authorization"));
    }
    Ok(())
}

/// Accepts any certificate (tls-alpn-01 certificates are self-signed by design) but still checks
/// handshake signatures, so the peer holds the key.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("tls-alpn-01 validation uses TLS 1.3".into()))
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let (_, cert) = x509_parser::parse_x509_certificate(c)
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
        let spki = rustls::pki_types::SubjectPublicKeyInfoDer::from(cert.public_key().raw);
        rustls::crypto::verify_tls13_signature_with_raw_key(m, &spki, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback_opt_in() -> ValidationConfig {
        ValidationConfig {
            allowed_networks: vec!["127.0.0.0/8".parse().expect("net"), "::1/128".parse().expect("net")],
            ..ValidationConfig::default()
        }
    }

    #[tokio::test]
    async fn loopback_is_refused_by_default_and_allowed_when_listed() {
        let mut cfg = ValidationConfig::default();
        cfg.hosts.insert("self.example.test".into(), "127.0.0.1".parse().expect("ip"));
        for host in ["127.0.0.1", "::1", "127.1.2.3", "self.example.test"] {
            let err = cfg.resolve(host, 80).await.expect_err(host);
            assert_eq!(err.kind, "rejectedIdentifier", "{host}");
            assert!(err.detail.contains("loopback"), "{host}: {}", err.detail);
        }
        // The private ranges stay allowed; a public address is refused with the general reason.
        assert!(cfg.resolve("10.1.2.3", 80).await.is_ok());
        let err = cfg.resolve("192.0.2.1", 80).await.expect_err("public");
        assert!(err.detail.contains("outside the networks"), "{}", err.detail);

        let opt_in = loopback_opt_in();
        assert_eq!(opt_in.resolve("127.0.0.1", 80).await.expect("listed"), "127.0.0.1:80".parse().expect("addr"));
        assert_eq!(opt_in.resolve("::1", 443).await.expect("listed"), "[::1]:443".parse().expect("addr"));
    }

    #[tokio::test]
    async fn http01_failures_do_not_echo_the_response_body() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let secret = "internal-secret-token-do-not-leak";
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 2048];
                let _request: usize = s.read(&mut buf).await.expect("request");
                let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{secret}", secret.len());
                s.write_all(resp.as_bytes()).await.expect("response");
            }
        });
        let cfg = ValidationConfig { http01_port: port, ..loopback_opt_in() };
        let err = cfg.http01("127.0.0.1", "tok", "tok.thumb").await.expect_err("wrong body");
        assert_eq!(err.kind, "unauthorized");
        assert!(!err.detail.contains(secret), "{}", err.detail);
        assert!(err.detail.contains(&format!("{} bytes", secret.len())), "{}", err.detail);
    }
}
