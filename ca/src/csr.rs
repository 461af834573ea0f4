//! PKCS#10 certificate signing requests (RFC 2986): parse, check the algorithm and key, verify the
//! self-signature, and pull out the requested names. Nothing in the CSR is trusted beyond the key
//! and the names; profiles decide every other field.

use std::collections::BTreeSet;
use std::net::IpAddr;

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION, OID_PKCS1_SHA256WITHRSA,
    OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA, OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384,
    OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use crate::CaError;
use crate::names::{Name, SpiffeId, check_dns_name};

/// The kind of subject key in a CSR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA P-256.
    P256,
    /// ECDSA P-384.
    P384,
    /// Ed25519.
    Ed25519,
    /// RSA with the modulus size in bits (>= 2048).
    Rsa(usize),
}

impl KeyKind {
    /// Whether keyEncipherment is a valid key usage for this key (RSA only; RFC 5480, RFC 8410).
    pub fn allows_key_encipherment(self) -> bool {
        matches!(self, KeyKind::Rsa(_))
    }
}

/// A CSR whose signature verified, reduced to what issuance uses.
#[derive(Debug, Clone)]
pub struct VerifiedCsr {
    /// DER SubjectPublicKeyInfo of the requested key.
    pub spki_der: Vec<u8>,
    /// Key type and size.
    pub key: KeyKind,
    /// SHA-256 of the SubjectPublicKeyInfo, hex: the key fingerprint that goes into records.
    pub key_fingerprint: String,
    /// Requested names from the subjectAltName extension request, de-duplicated and sorted.
    pub names: Vec<Name>,
    /// The subject common name, if any.
    pub common_name: Option<String>,
}

const MAX_CSR_LEN: usize = 64 * 1024;

/// Parses a DER (or PEM) CSR, checks its algorithm and key, verifies its signature and extracts
/// the requested names.
pub fn parse_and_verify_csr(input: &[u8]) -> Result<VerifiedCsr, CaError> {
    if input.len() > MAX_CSR_LEN {
        return Err(CaError::MalformedCsr(format!("larger than {MAX_CSR_LEN} bytes")));
    }
    let pem_der;
    let der = if input.starts_with(b"-----BEGIN") {
        let (label, der) =
            pkcs8::der::pem::decode_vec(input).map_err(|e| CaError::MalformedCsr(format!("bad PEM: {e}")))?;
        if label != "CERTIFICATE REQUEST" && label != "NEW CERTIFICATE REQUEST" {
            return Err(CaError::MalformedCsr(format!("PEM label is {label}, expected CERTIFICATE REQUEST")));
        }
        pem_der = der;
        pem_der.as_slice()
    } else {
        input
    };
    let (rest, csr) = X509CertificationRequest::from_der(der)
        .map_err(|e| CaError::MalformedCsr(format!("not a PKCS#10 request: {e}")))?;
    if !rest.is_empty() {
        return Err(CaError::MalformedCsr(format!("{} trailing bytes after the request", rest.len())));
    }

    let sig_oid = &csr.signature_algorithm.algorithm;
    let accepted = [
        OID_SIG_ECDSA_WITH_SHA256,
        OID_SIG_ECDSA_WITH_SHA384,
        OID_SIG_ED25519,
        OID_PKCS1_SHA256WITHRSA,
        OID_PKCS1_SHA384WITHRSA,
        OID_PKCS1_SHA512WITHRSA,
    ];
    if !accepted.contains(sig_oid) {
        return Err(CaError::UnsupportedSignatureAlgorithm(sig_oid.to_id_string()));
    }

    let info = &csr.certification_request_info;
    let spki = &info.subject_pki;
    let key = key_kind(spki)?;
    csr.verify_signature().map_err(|_| CaError::BadCsrSignature)?;

    let mut names = BTreeSet::new();
    if let Some(exts) = csr.requested_extensions() {
        for ext in exts {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for gn in &san.general_names {
                    names.insert(general_name(gn)?);
                }
            }
        }
    }
    let mut common_name = None;
    for cn in info.subject.iter_common_name() {
        let value = cn.as_str().map_err(|_| CaError::MalformedCsr("the subject common name is not a string".into()))?;
        if common_name.replace(value.to_owned()).is_some() {
            return Err(CaError::MalformedCsr("more than one common name in the subject".into()));
        }
    }

    Ok(VerifiedCsr {
        spki_der: spki.raw.to_vec(),
        key,
        key_fingerprint: hex::encode(ring::digest::digest(&ring::digest::SHA256, spki.raw)),
        names: names.into_iter().collect(),
        common_name,
    })
}

fn key_kind(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<KeyKind, CaError> {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_SIG_ED25519 {
        if spki.subject_public_key.data.len() != 32 {
            return Err(CaError::UnsupportedKey("Ed25519 key is not 32 bytes".into()));
        }
        return Ok(KeyKind::Ed25519);
    }
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or_else(|| CaError::UnsupportedKey("EC key without a named curve".into()))?;
        return if curve == OID_EC_P256 {
            Ok(KeyKind::P256)
        } else if curve == OID_NIST_EC_P384 {
            Ok(KeyKind::P384)
        } else {
            Err(CaError::UnsupportedKey(format!("EC curve {} (accepted: P-256, P-384)", curve.to_id_string())))
        };
    }
    if *alg == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
            _ => return Err(CaError::UnsupportedKey("malformed RSA key".into())),
        };
        if !(2048..=8192).contains(&bits) {
            return Err(CaError::UnsupportedKey(format!("RSA-{bits} (accepted: 2048 to 8192 bits)")));
        }
        return Ok(KeyKind::Rsa(bits));
    }
    Err(CaError::UnsupportedKey(format!(
        "key algorithm {} (accepted: P-256, P-384, Ed25519, RSA >= 2048)",
        alg.to_id_string()
    )))
}

fn general_name(gn: &GeneralName<'_>) -> Result<Name, CaError> {
    match gn {
        GeneralName::DNSName(d) => Ok(Name::Dns(check_dns_name(d)?)),
        GeneralName::IPAddress(b) => match b.len() {
            4 => Ok(Name::Ip(IpAddr::from(<[u8; 4]>::try_from(*b).map_err(|_| bad_ip())?))),
            16 => Ok(Name::Ip(IpAddr::from(<[u8; 16]>::try_from(*b).map_err(|_| bad_ip())?))),
            _ => Err(bad_ip()),
        },
        GeneralName::URI(u) => {
            if u.starts_with("spiffe://") {
                Ok(Name::Spiffe(SpiffeId::parse(u)?))
            } else {
                Err(CaError::BadName { name: (*u).to_owned(), reason: "only spiffe:// URIs are issued".into() })
            }
        }
        other => Err(CaError::BadName {
            name: format!("{other}"),
            reason: "only DNS, IP and SPIFFE URI names are issued".into(),
        }),
    }
}

fn bad_ip() -> CaError {
    CaError::MalformedCsr("IP address SAN is neither 4 nor 16 bytes".into())
}

/// The SAN names of an issued certificate (renewal keeps exactly these).
pub(crate) fn names_in_certificate(cert: &x509_parser::certificate::X509Certificate<'_>) -> Result<Vec<Name>, CaError> {
    let Some(san) = cert.subject_alternative_name().map_err(|e| CaError::InvalidCertificate(e.to_string()))? else {
        return Ok(Vec::new());
    };
    san.value.general_names.iter().map(general_name).collect()
}
