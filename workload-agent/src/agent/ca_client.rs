//! The agent's view of `lanyard-ca`: bootstrap trust from a pinned root fingerprint, fetch the
//! SPIFFE trust bundle, renew over mTLS, and read renewalInfo (RFC 9773).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use hyper::{Method, StatusCode};
use rustls::pki_types::CertificateDer;

use super::http::{self, AcceptAnyServer, HttpResponse};
use crate::credentials::{Svid, TrustBundle};

/// The SPIFFE bundle as fetched, with its refresh hint.
#[derive(Debug, Clone)]
pub struct FetchedBundle {
    /// The roots and sequence.
    pub bundle: TrustBundle,
    /// `spiffe_refresh_hint`.
    pub refresh_hint: Option<Duration>,
}

/// Why a renewal failed: the CA refused this certificate (re-enrollment may help) or it could not
/// be reached / answered with a transient error (retry with backoff).
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// 401/403: the CA does not accept the presented certificate.
    #[error("the CA refused the renewal: {0}")]
    Refused(String),
    /// Anything else.
    #[error("{0:#}")]
    Transient(anyhow::Error),
}

/// Why a notices long poll failed.
#[derive(Debug, thiserror::Error)]
pub enum NoticeError {
    /// 404: the CA predates the push channel; renewalInfo polling still works.
    #[error("the CA does not offer notices")]
    NotSupported,
    /// Anything else (the CA unreachable, the certificate refused...): try again later.
    #[error("{0:#}")]
    Failed(anyhow::Error),
}

/// A client of one CA.
#[derive(Debug, Clone)]
pub struct CaClient {
    base: String,
    pin: String,
    trust_domain: String,
    timeout: Duration,
    /// Sends a trust report with every renewal and notices poll when set.
    reporter: Option<std::sync::Arc<super::report::TrustReporter>>,
}

fn sha256_hex(der: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, der))
}

impl CaClient {
    /// A client for `base` (`https://host:port`), trusting the root whose SHA-256 is `pin`.
    pub fn new(base: &str, pin: &str, trust_domain: &str, timeout: Duration) -> Self {
        CaClient {
            base: base.trim_end_matches('/').to_owned(),
            pin: pin.to_owned(),
            trust_domain: trust_domain.to_owned(),
            timeout,
            reporter: None,
        }
    }

    /// Sends `reporter`'s trust report with every renewal and notices poll.
    pub fn with_reporter(mut self, reporter: std::sync::Arc<super::report::TrustReporter>) -> Self {
        self.reporter = Some(reporter);
        self
    }

    /// Sends one request to the CA over mTLS with `current`, trusting `bundle`, with the trust
    /// report if there is a reporter; `body` is (content type, bytes). The report is given back
    /// when the CA did not take it (no answer, or 400/401/403 before reading it).
    async fn send_reporting(
        &self,
        current: &Svid,
        bundle: &TrustBundle,
        method: Method,
        url: &str,
        body: Option<(&str, Vec<u8>)>,
        timeout: Duration,
    ) -> anyhow::Result<HttpResponse> {
        let tls = http::tls_config(&bundle.roots, Some((current.chain.clone(), current.key.clone_key())))?;
        let report = self.reporter.as_ref().map(|r| r.take(current, bundle));
        let mut headers = Vec::new();
        let body = match body {
            Some((ct, bytes)) => {
                headers.push(("content-type", ct.to_owned()));
                bytes
            }
            None => Vec::new(),
        };
        if let Some(r) = &report {
            headers.push((super::report::HEADER, r.value.clone()));
        }
        let resp = http::request_with(tls, method, url, &headers, body, timeout).await;
        if let (Some(reporter), Some(report)) = (&self.reporter, report) {
            let taken = resp.as_ref().is_ok_and(|r| {
                !matches!(r.status, StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
            });
            if !taken {
                reporter.lost(report);
            }
        }
        resp
    }

    /// The CA's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn parse_bundle(&self, resp: &HttpResponse) -> anyhow::Result<FetchedBundle> {
        parse_bundle(&self.trust_domain, resp)
    }

    async fn get(&self, tls: Arc<rustls::ClientConfig>, path: &str) -> anyhow::Result<HttpResponse> {
        http::request(tls, Method::GET, &format!("{}{path}", self.base), None, Vec::new(), self.timeout).await
    }

    /// First contact: fetch the bundle without verification, require the pinned root in it, then
    /// fetch it again over a connection verified with that root alone and return that copy.
    pub async fn bootstrap(&self) -> anyhow::Result<FetchedBundle> {
        let first = self.parse_bundle(&self.get(AcceptAnyServer::config()?, "/bundle.spiffe").await?)?;
        let pinned =
            first.bundle.roots.iter().find(|r| sha256_hex(r.as_ref()) == self.pin).cloned().ok_or_else(|| {
                anyhow!("no root in the CA's trust bundle matches the pinned fingerprint {}", self.pin)
            })?;
        let verified = self.fetch_bundle(std::slice::from_ref(&pinned)).await?;
        if !verified.bundle.roots.iter().any(|r| r == &pinned) {
            bail!("the CA's trust bundle changed during bootstrap and lost the pinned root");
        }
        Ok(verified)
    }

    /// Fetches the bundle over a connection verified with `roots`.
    pub async fn fetch_bundle(&self, roots: &[CertificateDer<'static>]) -> anyhow::Result<FetchedBundle> {
        self.parse_bundle(&self.get(http::tls_config(roots, None)?, "/bundle.spiffe").await?)
    }

    /// Fetches every current CRL of the CA (`GET /crls.pem`, PEM `X509 CRL` blocks) over a
    /// connection verified with `roots`. Any failure, including a body that does not parse, is an
    /// error: the caller then keeps the CRLs it has.
    pub async fn fetch_crls(
        &self,
        roots: &[CertificateDer<'static>],
    ) -> anyhow::Result<Vec<rustls::pki_types::CertificateRevocationListDer<'static>>> {
        parse_crls(&self.get(http::tls_config(roots, None)?, "/crls.pem").await?)
    }

    /// Renews `current` over mTLS with a CSR for a new key; returns the new chain.
    pub async fn renew(
        &self,
        bundle: &TrustBundle,
        current: &Svid,
        csr_der: Vec<u8>,
    ) -> Result<Vec<CertificateDer<'static>>, RenewError> {
        let started = std::time::Instant::now();
        let resp = self
            .send_reporting(
                current,
                bundle,
                Method::POST,
                &format!("{}/workload/v1/renew", self.base),
                Some(("application/pkcs10", csr_der)),
                self.timeout,
            )
            .await
            .map_err(RenewError::Transient)?;
        if let (Some(r), StatusCode::OK) = (&self.reporter, resp.status) {
            r.fetched(started.elapsed());
        }
        match resp.status {
            StatusCode::OK => super::cert::chain_from_pem(&resp.body).map_err(RenewError::Transient),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(RenewError::Refused(resp.error_detail())),
            s => Err(RenewError::Transient(anyhow!("HTTP {s}: {}", resp.error_detail()))),
        }
    }

    /// Long-polls `GET /workload/v1/notices` over mTLS with `current`, for up to `wait`: the CA's
    /// renewal window for it (Unix seconds) once the CA wants it replaced, or None at the timeout.
    pub async fn notices(
        &self,
        bundle: &TrustBundle,
        current: &Svid,
        wait: Duration,
    ) -> Result<Option<(i64, i64)>, NoticeError> {
        let url = format!("{}/workload/v1/notices?wait={}", self.base, wait.as_secs());
        let resp = self
            .send_reporting(current, bundle, Method::GET, &url, None, wait + self.timeout)
            .await
            .map_err(NoticeError::Failed)?;
        parse_notice(&resp)
    }

    /// The CA's suggested renewal window for a certificate (RFC 9773), Unix seconds.
    pub async fn renewal_info(&self, bundle: &TrustBundle, ari_id: &str) -> anyhow::Result<(i64, i64)> {
        parse_renewal_info(
            &self.get(http::tls_config(&bundle.roots, None)?, &format!("/acme/renewal-info/{ari_id}")).await?,
        )
    }
}

/// Reads a `GET /bundle.spiffe` answer (SPIFFE bundle, JWKS form) as the bundle of `trust_domain`.
pub fn parse_bundle(trust_domain: &str, resp: &HttpResponse) -> anyhow::Result<FetchedBundle> {
    if resp.status != StatusCode::OK {
        bail!("trust bundle: HTTP {}: {}", resp.status, resp.error_detail());
    }
    let doc: serde_json::Value = serde_json::from_slice(&resp.body).context("trust bundle is not JSON")?;
    let mut roots = Vec::new();
    for key in doc["keys"].as_array().map(Vec::as_slice).unwrap_or_default() {
        if key["use"] != "x509-svid" {
            continue;
        }
        let Some(x5c) = key["x5c"].as_array().and_then(|a| a.first()).and_then(|v| v.as_str()) else {
            bail!("trust bundle: an x509-svid key without x5c");
        };
        let der = base64::engine::general_purpose::STANDARD.decode(x5c).context("trust bundle: bad x5c")?;
        roots.push(CertificateDer::from(der));
    }
    if roots.is_empty() {
        bail!("trust bundle has no X.509 roots");
    }
    let sequence = doc["spiffe_sequence"].as_u64().unwrap_or(0);
    let refresh_hint = doc["spiffe_refresh_hint"].as_u64().map(Duration::from_secs);
    Ok(FetchedBundle { bundle: TrustBundle { trust_domain: trust_domain.to_owned(), roots, sequence }, refresh_hint })
}

/// Reads a `GET /crls.pem` answer: every `X509 CRL` block, or an error for any bad block.
pub fn parse_crls(
    resp: &HttpResponse,
) -> anyhow::Result<Vec<rustls::pki_types::CertificateRevocationListDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    if resp.status != StatusCode::OK {
        bail!("CRLs: HTTP {}: {}", resp.status, resp.error_detail());
    }
    rustls::pki_types::CertificateRevocationListDer::pem_slice_iter(&resp.body)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("CRLs: bad PEM: {e:?}"))
}

/// Reads a `GET /workload/v1/notices` answer: the renewal window (Unix seconds), none (204), or why not.
pub fn parse_notice(resp: &HttpResponse) -> Result<Option<(i64, i64)>, NoticeError> {
    match resp.status {
        StatusCode::NO_CONTENT => Ok(None),
        StatusCode::NOT_FOUND => Err(NoticeError::NotSupported),
        StatusCode::OK => {
            let v: serde_json::Value = serde_json::from_slice(&resp.body)
                .map_err(|e| NoticeError::Failed(anyhow!("notice is not JSON: {e}")))?;
            let w = &v["renew"];
            Ok(Some((
                rfc3339(&w["start"]).map_err(NoticeError::Failed)?,
                rfc3339(&w["end"]).map_err(NoticeError::Failed)?,
            )))
        }
        s => Err(NoticeError::Failed(anyhow!("notices: HTTP {s}: {}", resp.error_detail()))),
    }
}

/// Reads a renewalInfo answer (RFC 9773): the suggested window, Unix seconds.
pub fn parse_renewal_info(resp: &HttpResponse) -> anyhow::Result<(i64, i64)> {
    if resp.status != StatusCode::OK {
        bail!("renewalInfo: HTTP {}: {}", resp.status, resp.error_detail());
    }
    let v: serde_json::Value = serde_json::from_slice(&resp.body).context("renewalInfo is not JSON")?;
    let w = &v["suggestedWindow"];
    Ok((rfc3339(&w["start"]).context("renewalInfo")?, rfc3339(&w["end"]).context("renewalInfo")?))
}

/// An RFC 3339 time in a JSON document, as Unix seconds.
fn rfc3339(v: &serde_json::Value) -> anyhow::Result<i64> {
    let s = v.as_str().ok_or_else(|| anyhow!("a time is missing"))?;
    Ok(time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)?.unix_timestamp())
}
