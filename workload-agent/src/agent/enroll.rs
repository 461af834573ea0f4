//! First enrollment through the CA's ACME API (RFC 8555) with an attestation challenge.
//!
//! The agent orders an identifier of type `spiffe` and answers `join-token-01` (payload
//! `{"token"}`) or `jwt-01` (payload `{"jwt"}`) instead of a domain-validation challenge. Each
//! enrollment uses a fresh ES256 account key; nothing about the account needs to outlive it,
//! because renewals authenticate with the certificate itself.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hyper::{Method, StatusCode};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

use super::http::{self, HttpResponse};

/// What the workload presents.
#[derive(Debug, Clone)]
pub enum Proof {
    /// A one-time join token.
    JoinToken(String),
    /// A JWT.
    Jwt(String),
}

/// Why enrollment failed; `Refused` means the CA rejected the attestation (retrying with the same
/// proof will not help).
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The CA refused the attestation or the order.
    #[error("enrollment refused: {0}")]
    Refused(String),
    /// Transport or server trouble.
    #[error("{0:#}")]
    Transient(anyhow::Error),
}

struct Session {
    tls: Arc<rustls::ClientConfig>,
    key: EcdsaKeyPair,
    rng: SystemRandom,
    nonce: Option<String>,
    kid: Option<String>,
    timeout: Duration,
    new_nonce: String,
}

impl Session {
    fn jwk(&self) -> Value {
        let p = self.key.public_key().as_ref();
        json!({ "crv": "P-256", "kty": "EC", "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..65]) })
    }

    async fn fresh_nonce(&mut self) -> anyhow::Result<String> {
        if let Some(n) = self.nonce.take() {
            return Ok(n);
        }
        let r = http::request(self.tls.clone(), Method::HEAD, &self.new_nonce, None, Vec::new(), self.timeout).await?;
        r.header("replay-nonce").map(str::to_owned).ok_or_else(|| anyhow!("newNonce gave no Replay-Nonce"))
    }

    /// POSTs a JWS (`payload` None: POST-as-GET). Retries once on badNonce.
    async fn post(&mut self, url: &str, payload: Option<&Value>) -> anyhow::Result<HttpResponse> {
        for attempt in 0..2 {
            let nonce = self.fresh_nonce().await?;
            let mut protected = json!({ "alg": "ES256", "nonce": nonce, "url": url });
            match &self.kid {
                Some(k) => protected["kid"] = json!(k),
                None => protected["jwk"] = self.jwk(),
            }
            let p64 = B64.encode(serde_json::to_vec(&protected)?);
            let b64 = match payload {
                Some(v) => B64.encode(serde_json::to_vec(v)?),
                None => String::new(),
            };
            let sig = self
                .key
                .sign(&self.rng, format!("{p64}.{b64}").as_bytes())
                .map_err(|_| anyhow!("signing the JWS failed"))?;
            let body = serde_json::to_vec(&json!({ "protected": p64, "payload": b64, "signature": B64.encode(sig) }))?;
            let r =
                http::request(self.tls.clone(), Method::POST, url, Some("application/jose+json"), body, self.timeout)
                    .await?;
            self.nonce = r.header("replay-nonce").map(str::to_owned);
            let bad_nonce = r.status == StatusCode::BAD_REQUEST && r.error_detail().contains("badNonce");
            if bad_nonce && attempt == 0 {
                continue;
            }
            return Ok(r);
        }
        bail!("the CA rejected two fresh nonces in a row")
    }
}

fn json_of(r: &HttpResponse) -> anyhow::Result<Value> {
    serde_json::from_slice(&r.body).context("the CA answered something that is not JSON")
}

/// A refusal when the CA said 4xx, else a transient error.
fn check(r: &HttpResponse, what: &str) -> Result<(), EnrollError> {
    if r.status.is_success() {
        return Ok(());
    }
    let msg = format!("{what}: HTTP {}: {}", r.status.as_u16(), r.error_detail());
    if r.status.is_client_error() && r.status != StatusCode::TOO_MANY_REQUESTS {
        Err(EnrollError::Refused(msg))
    } else {
        Err(EnrollError::Transient(anyhow!(msg)))
    }
}

/// Runs a complete enrollment; returns the PEM chain.
pub async fn enroll(
    tls: Arc<rustls::ClientConfig>,
    base: &str,
    spiffe_id: &str,
    proof: &Proof,
    csr_der: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, EnrollError> {
    let t = EnrollError::Transient;
    let dir = http::request(tls.clone(), Method::GET, &format!("{base}/acme/directory"), None, Vec::new(), timeout)
        .await
        .map_err(t)?;
    check(&dir, "directory")?;
    let dir = json_of(&dir).map_err(t)?;
    let url = |k: &str| dir[k].as_str().map(str::to_owned).ok_or_else(|| anyhow!("the directory has no {k}"));
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| t(anyhow!("generating the account key failed")))?;
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|_| t(anyhow!("loading the account key failed")))?;
    let mut s = Session { tls, key, rng, nonce: None, kid: None, timeout, new_nonce: url("newNonce").map_err(t)? };

    let acct =
        s.post(&url("newAccount").map_err(t)?, Some(&json!({ "termsOfServiceAgreed": true }))).await.map_err(t)?;
    check(&acct, "newAccount")?;
    s.kid = Some(acct.header("location").ok_or_else(|| t(anyhow!("newAccount gave no Location")))?.to_owned());

    let order_req = json!({ "identifiers": [{ "type": "spiffe", "value": spiffe_id }] });
    let order = s.post(&url("newOrder").map_err(t)?, Some(&order_req)).await.map_err(t)?;
    check(&order, "newOrder")?;
    let order_url = order.header("location").ok_or_else(|| t(anyhow!("newOrder gave no Location")))?.to_owned();
    let order = json_of(&order).map_err(t)?;

    let (kind, payload) = match proof {
        Proof::JoinToken(tok) => ("join-token-01", json!({ "token": tok })),
        Proof::Jwt(jwt) => ("jwt-01", json!({ "jwt": jwt })),
    };
    for authz_url in order["authorizations"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let authz_url = authz_url.as_str().ok_or_else(|| t(anyhow!("bad authorization URL")))?;
        let authz = s.post(authz_url, None).await.map_err(t)?;
        check(&authz, "authorization")?;
        let authz = json_of(&authz).map_err(t)?;
        if authz["status"] == "valid" {
            continue;
        }
        let ch = authz["challenges"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
            .ok_or_else(|| EnrollError::Refused(format!("the CA does not offer {kind} for {spiffe_id}")))?;
        let ch_url = ch["url"].as_str().ok_or_else(|| t(anyhow!("challenge without url")))?.to_owned();
        let done = s.post(&ch_url, Some(&payload)).await.map_err(t)?;
        check(&done, "challenge")?;
        let done = json_of(&done).map_err(t)?;
        if done["status"] != "valid" {
            let err = &done["error"];
            return Err(EnrollError::Refused(format!(
                "attestation {kind} failed: {} ({})",
                err["detail"].as_str().unwrap_or("no detail"),
                err["type"].as_str().unwrap_or_default()
            )));
        }
    }

    let finalize = order["finalize"].as_str().ok_or_else(|| t(anyhow!("order without finalize")))?.to_owned();
    finish(&mut s, &order_url, &finalize, csr_der).await
}

/// How long an enrollment whose attestation succeeded keeps resuming its order through transport
/// or server trouble. The proof is spent by then (a join token is single use), so starting over
/// with a new order would only be refused; the order itself lives far longer (a day by default).
pub const RESUME_FOR: Duration = Duration::from_secs(600);

/// Finalizes the order and downloads the certificate, resuming the same order after a transient
/// failure at any step: it re-reads the order and continues from what the CA says it is (ready:
/// finalize again; processing: wait; valid: download; invalid: refused). A finalize whose answer
/// was lost thus ends in a download, not in a second order.
async fn finish(s: &mut Session, order_url: &str, finalize: &str, csr_der: &[u8]) -> Result<Vec<u8>, EnrollError> {
    let t = EnrollError::Transient;
    let started = tokio::time::Instant::now();
    let mut failures: u32 = 0;
    // Right after the last authorization became valid the order is ready (same transaction).
    let mut order = json!({ "status": "ready" });
    loop {
        let step: Result<Option<Vec<u8>>, EnrollError> = async {
            match order["status"].as_str().unwrap_or_default() {
                "ready" => {
                    let fin = s.post(finalize, Some(&json!({ "csr": B64.encode(csr_der) }))).await.map_err(t)?;
                    check(&fin, "finalize")?;
                    order = json_of(&fin).map_err(t)?;
                    Ok(None)
                }
                "valid" => {
                    let url =
                        order["certificate"].as_str().ok_or_else(|| t(anyhow!("valid order without certificate")))?;
                    let cert = s.post(url, None).await.map_err(t)?;
                    check(&cert, "certificate download")?;
                    if cert.body.is_empty() {
                        return Err(t(anyhow!("empty certificate")));
                    }
                    Ok(Some(cert.body.to_vec()))
                }
                "invalid" => Err(EnrollError::Refused(format!("the order became invalid: {}", order["error"]))),
                other => {
                    if other == "processing" {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    let r = s.post(order_url, None).await.map_err(t)?;
                    check(&r, "order")?;
                    order = json_of(&r).map_err(t)?;
                    Ok(None)
                }
            }
        }
        .await;
        match step {
            Ok(Some(cert)) => return Ok(cert),
            Ok(None) => {
                if started.elapsed() > RESUME_FOR {
                    return Err(t(anyhow!("the order is still {} after {RESUME_FOR:?}", order["status"])));
                }
            }
            Err(EnrollError::Transient(e)) if started.elapsed() < RESUME_FOR => {
                let wait = Duration::from_millis(500u64 << failures.min(6));
                tracing::warn!(
                    error = %format!("{e:#}"),
                    order = order_url,
                    retry_in_ms = crate::agent::schedule::millis(wait),
                    "enrollment interrupted after attestation; resuming the same order"
                );
                failures += 1;
                tokio::time::sleep(wait).await;
                // Whatever happened, the CA's view of the order decides the next step.
                order = json!({ "status": "unknown" });
            }
            Err(e) => return Err(e),
        }
    }
}

/// A new P-256 key and a CSR for `spiffe_id` signed with it: (PKCS#8 DER, CSR DER).
pub fn new_key_and_csr(spiffe_id: &str) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        rcgen::string::Ia5String::try_from(spiffe_id).map_err(|e| anyhow!("SPIFFE ID: {e}"))?,
    )];
    let csr = params.serialize_request(&key)?;
    if csr.der().is_empty() {
        bail!("empty CSR");
    }
    Ok((key.serialize_der(), csr.der().to_vec()))
}
