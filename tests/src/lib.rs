//! Helpers for Lanyard's end-to-end tests: run the real binaries, talk real TLS to them.
#![forbid(unsafe_code)]

pub mod acme;
pub mod process;
pub mod workload;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

// Also compiled into ca/tests/common (one copy of the audit fault for both test suites).
mod audit_fault;
pub use audit_fault::{break_audit, restore_audit, tamper};

/// Path of a workspace binary, built by cargo for the tests.
pub fn bin(name: &str) -> PathBuf {
    // Integration tests live in target/<profile>/deps; binaries one level up.
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(p.exists(), "{} is not built (cargo build --workspace --bins)", p.display());
    p
}

/// A `lanyard-ca serve` child process, killed on drop.
#[derive(Debug)]
pub struct CaProcess {
    /// The child.
    pub child: Child,
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// Everything it printed on stdout before it listened.
    pub banner: String,
}

impl Drop for CaProcess {
    fn drop(&mut self) {
        // Best effort in Drop: the child may have exited already.
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// Starts `lanyard-ca serve` on a free loopback port and waits until it listens.
pub fn start_ca(args: &[&str], envs: &[(&str, &str)]) -> anyhow::Result<CaProcess> {
    start_ca_at(args, envs, "127.0.0.1:0")
}

/// Starts `lanyard-ca serve` on `listen` (a fixed address, e.g. to restart a CA where its
/// clients expect it) and waits until it listens.
pub fn start_ca_at(args: &[&str], envs: &[(&str, &str)], listen: &str) -> anyhow::Result<CaProcess> {
    let mut cmd = Command::new(bin("lanyard-ca"));
    cmd.args(args).arg("serve").arg("--listen").arg(listen);
    cmd.env_remove("LANYARD_CA_PASSPHRASE").env("LANYARD_LOG", "warn");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().context("spawn lanyard-ca")?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut banner = String::new();
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let Some(line) = lines.next() else {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                std::io::Read::read_to_string(&mut e, &mut err)?;
            }
            bail!("lanyard-ca exited before listening: {banner}{err}");
        };
        let line = line?;
        banner.push_str(&line);
        banner.push('\n');
        if let Some(addr) = line.strip_prefix("lanyard-ca: listening on https://") {
            let addr = addr.parse()?;
            return Ok(CaProcess { child, addr, banner });
        }
    }
}

/// Runs `lanyard-ca` to completion; returns (success, stdout, stderr).
pub fn run_ca(args: &[&str], envs: &[(&str, &str)]) -> anyhow::Result<(bool, String, String)> {
    let mut cmd = Command::new(bin("lanyard-ca"));
    cmd.args(args).env_remove("LANYARD_CA_PASSPHRASE").env("LANYARD_LOG", "warn");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A response: status, content type, body.
#[derive(Debug)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Content-Type header.
    pub content_type: String,
    /// Body.
    pub body: Vec<u8>,
    /// The server's certificate chain as presented in the handshake.
    pub peer_chain: Vec<CertificateDer<'static>>,
    /// All response headers, names lower-case.
    pub headers: Vec<(String, String)>,
}

impl Response {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Accepts any server certificate: used only to fetch the root before comparing its fingerprint
/// with a pinned one, the bootstrap step every agent performs.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// HTTPS GET over a fresh connection. With `root_pem`, the server must chain to it for `host`;
/// without, any certificate is accepted (bootstrap only).
pub async fn https_get(
    addr: std::net::SocketAddr,
    host: &str,
    path: &str,
    root_pem: Option<&str>,
) -> anyhow::Result<Response> {
    https_request(addr, host, "GET", path, None, root_pem).await
}

/// HTTPS request with an optional body `(content type, bytes)`; see [`https_get`] for `root_pem`.
pub async fn https_request(
    addr: std::net::SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    body: Option<(&str, Vec<u8>)>,
    root_pem: Option<&str>,
) -> anyhow::Result<Response> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        rustls::ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let config = match root_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in <CertificateDer<'static> as rustls_pki_types::pem::PemObject>::pem_slice_iter(pem.as_bytes()) {
                roots.add(c?)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAny(provider))).with_no_client_auth()
        }
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let tls =
        tokio::time::timeout(Duration::from_secs(10), connector.connect(ServerName::try_from(host.to_owned())?, tcp))
            .await
            .context("TLS handshake timed out")??;
    let peer_chain = tls.get_ref().1.peer_certificates().map(|c| c.to_vec()).unwrap_or_default();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder().method(method).uri(path).header("host", host);
    let payload = match body {
        Some((ct, bytes)) => {
            req = req.header("content-type", ct);
            Full::new(Bytes::from(bytes))
        }
        None => Full::new(Bytes::new()),
    };
    let resp = sender.send_request(req.body(payload)?).await?;
    let status = resp.status().as_u16();
    let content_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    let body = resp.into_body().collect().await?.to_bytes().to_vec();
    Ok(Response { status, content_type, body, peer_chain, headers })
}

/// SHA-256 of the first certificate in a PEM text, hex.
pub fn pem_fingerprint(pem: &str) -> anyhow::Result<String> {
    let der = <CertificateDer<'static> as rustls_pki_types::pem::PemObject>::pem_slice_iter(pem.as_bytes())
        .next()
        .context("no certificate in PEM")??;
    Ok(ca::sha256_fingerprint(&der))
}

/// A fresh, empty database named `<prefix>_<pid>` on the test PostgreSQL server
/// (`LANYARD_TEST_POSTGRES_URL`), or `None` when there is none. The README's test command always
/// provides one and sets `LANYARD_REQUIRE_POSTGRES=1`, so then a missing server fails the test
/// instead of skipping it.
pub async fn throwaway_postgres(prefix: &str) -> Option<String> {
    use sqlx::Connection;
    let Ok(admin) = std::env::var("LANYARD_TEST_POSTGRES_URL") else {
        assert!(std::env::var("LANYARD_REQUIRE_POSTGRES").is_err(), "PostgreSQL required but not provided");
        return None;
    };
    let mut conn = sqlx::PgConnection::connect(&admin).await.expect("connect to the test PostgreSQL");
    let name = format!("{prefix}_{}", std::process::id());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}")))
        .execute(&mut conn)
        .await
        .expect("drop");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.expect("create");
    Some(format!("{}/{name}", admin.rsplit_once('/').expect("URL has a database").0))
}
