//! What the agent needs to know about a certificate: its SPIFFE ID, validity and RFC 9773 id.

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use rustls::pki_types::CertificateDer;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

/// Facts about a leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafInfo {
    /// The single `spiffe://` URI SAN.
    pub spiffe_id: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// RFC 9773 certificate identifier: base64url(AKI keyIdentifier) "." base64url(serial).
    pub ari_id: Option<String>,
    /// Serial, hex.
    pub serial: String,
}

/// Parses a leaf.
pub fn leaf_info(der: &[u8]) -> anyhow::Result<LeafInfo> {
    let (_, cert) =
        x509_parser::certificate::X509Certificate::from_der(der).map_err(|e| anyhow!("bad certificate: {e}"))?;
    let mut ids = Vec::new();
    let mut aki = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for n in &san.general_names {
                    if let GeneralName::URI(u) = n
                        && u.starts_with("spiffe://")
                    {
                        ids.push((*u).to_owned());
                    }
                }
            }
            ParsedExtension::AuthorityKeyIdentifier(a) => aki = a.key_identifier.as_ref().map(|k| k.0.to_vec()),
            _ => {}
        }
    }
    let [spiffe_id] = ids.as_slice() else { bail!("the certificate carries {} SPIFFE IDs, not one", ids.len()) };
    let serial = cert.raw_serial();
    Ok(LeafInfo {
        spiffe_id: spiffe_id.clone(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        ari_id: aki.map(|k| format!("{}.{}", B64.encode(k), B64.encode(serial))),
        serial: hex::encode(serial),
    })
}

/// Parses a PEM chain (`application/pem-certificate-chain`).
pub fn chain_from_pem(pem: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let mut out = Vec::new();
    for p in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let p = p.context("bad PEM")?;
        if p.label == "CERTIFICATE" {
            out.push(CertificateDer::from(p.contents));
        }
    }
    if out.is_empty() {
        bail!("no certificate in the PEM");
    }
    Ok(out)
}

/// Parses the one private key of a PEM file (PKCS#8).
pub fn key_from_pem(pem: &[u8]) -> anyhow::Result<rustls::pki_types::PrivateKeyDer<'static>> {
    for p in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let p = p.context("bad PEM")?;
        if p.label == "PRIVATE KEY" {
            return Ok(rustls::pki_types::PrivateKeyDer::Pkcs8(p.contents.into()));
        }
    }
    bail!("no PKCS#8 private key in the PEM")
}

/// A CRL's nextUpdate (Unix seconds), if it parses and has one.
pub fn crl_next_update(der: &[u8]) -> Option<i64> {
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(der).ok()?;
    crl.next_update().map(|t| t.timestamp())
}
