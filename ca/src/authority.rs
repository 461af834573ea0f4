//! Creating and importing the CA hierarchy: a root and an intermediate signed by it.
//!
//! The server needs only the intermediate's key. A root created here has its key returned
//! encrypted so the operator can keep it offline; an imported root may come without a key at all.

use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::issuers::{check_key_matches, pem_to_der};
use crate::keys::{KeyAlgorithm, Passphrase, encrypt_key_pem, generate_key, parse_key_pem};
use crate::serial::Serial;
use crate::{CaError, IssuerKind, IssuerRecord, IssuerState};

/// How to create a CA.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InitOptions {
    /// Key algorithm for the root and intermediate.
    pub key_algorithm: KeyAlgorithm,
    /// Root lifetime.
    #[serde(with = "humantime_serde")]
    pub root_lifetime: Duration,
    /// Intermediate lifetime (capped by the root's).
    #[serde(with = "humantime_serde")]
    pub intermediate_lifetime: Duration,
    /// Organization name in the CA subjects.
    pub organization: String,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            key_algorithm: KeyAlgorithm::P256,
            root_lifetime: Duration::from_secs(10 * 365 * 24 * 3600),
            intermediate_lifetime: Duration::from_secs(365 * 24 * 3600),
            organization: "Lanyard".into(),
        }
    }
}

/// The result of creating or importing a CA.
#[derive(Debug)]
pub struct CaMaterial {
    /// The root, active, without its key in the record.
    pub root: IssuerRecord,
    /// The root key, encrypted, if we have it (to be written to an offline file, never the DB).
    pub root_key_pem_enc: Option<String>,
    /// The intermediate, active, with its encrypted key.
    pub intermediate: IssuerRecord,
}

/// An existing hierarchy to import (PEM texts).
#[derive(Debug, Clone, Default)]
pub struct ImportedCa {
    /// Root certificate (required).
    pub root_cert_pem: String,
    /// Root key; needed only when no intermediate is imported.
    pub root_key_pem: Option<String>,
    /// Intermediate certificate, signed by the root.
    pub intermediate_cert_pem: Option<String>,
    /// Intermediate key (required with the intermediate).
    pub intermediate_key_pem: Option<String>,
}

fn ca_name(org: &str, role: &str, now: OffsetDateTime, serial: &Serial) -> DistinguishedName {
    // Distinct, meaningful names per generation: cert-manager's preferredChain and humans both
    // pick chains by the issuer's CN, which matters once roots are rotated and cross-signed.
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, org);
    dn.push(DnType::CommonName, format!("{org} {role} {} {}", now.date(), &serial.to_hex()[..8]));
    dn
}

fn ca_params(
    dn: DistinguishedName,
    serial: Serial,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    bc: BasicConstraints,
) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn;
    p.serial_number = Some(serial.to_rcgen());
    p.not_before = not_before;
    p.not_after = not_after;
    p.is_ca = IsCa::Ca(bc);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.use_authority_key_identifier_extension = true;
    p
}

/// Creates a self-signed root and returns its DER.
fn new_root(opts: &InitOptions, key: &KeyPair, now: OffsetDateTime) -> Result<Vec<u8>, CaError> {
    let rng = ring::rand::SystemRandom::new();
    let serial = Serial::random(&rng)?;
    let mut p = ca_params(
        ca_name(&opts.organization, "Root CA", now, &serial),
        serial,
        now - time::Duration::minutes(5),
        now + opts.root_lifetime,
        BasicConstraints::Unconstrained,
    );
    // A self-signed root's AKI would only repeat its SKI.
    p.use_authority_key_identifier_extension = false;
    let cert = p.self_signed(key).map_err(|e| CaError::Signing(format!("root: {e}")))?;
    Ok(cert.der().to_vec())
}

/// Signs a new intermediate key with the root; returns the intermediate DER.
pub(crate) fn sign_intermediate(
    opts: &InitOptions,
    root_der: &[u8],
    root_key: KeyPair,
    intermediate_key: &KeyPair,
    now: OffsetDateTime,
) -> Result<Vec<u8>, CaError> {
    let rng = ring::rand::SystemRandom::new();
    let serial = Serial::random(&rng)?;
    let dn = ca_name(&opts.organization, "Intermediate CA", now, &serial);
    sign_intermediate_named(opts, dn, serial, root_der, root_key, intermediate_key, now)
}

/// Signs `intermediate_key` under the name `dn` with a root; the same name and key signed by two
/// roots make a cross-signed pair.
pub(crate) fn sign_intermediate_named(
    opts: &InitOptions,
    dn: DistinguishedName,
    serial: Serial,
    root_der: &[u8],
    root_key: KeyPair,
    intermediate_key: &KeyPair,
    now: OffsetDateTime,
) -> Result<Vec<u8>, CaError> {
    let (_, root) = X509Certificate::from_der(root_der).map_err(|e| CaError::InvalidCertificate(e.to_string()))?;
    let root_not_after = root.validity().not_after.to_datetime();
    // Backdated for clock skew, but by no more than a twentieth of its life, so that rotation
    // timing (fractions of the lifetime) stays meaningful for short-lived intermediates.
    let backdate = std::time::Duration::from_secs(300).min(opts.intermediate_lifetime / 20);
    let p = ca_params(
        dn,
        serial,
        now - backdate,
        (now + opts.intermediate_lifetime).min(root_not_after),
        BasicConstraints::Constrained(0),
    );
    let issuer = rcgen::Issuer::from_ca_cert_der(&root_der.into(), root_key)
        .map_err(|e| CaError::InvalidCertificate(format!("root: {e}")))?;
    let cert = p.signed_by(intermediate_key, &issuer).map_err(|e| CaError::Signing(format!("intermediate: {e}")))?;
    Ok(cert.der().to_vec())
}

/// A new root with its first intermediate, the intermediate also cross-signed by the current root.
pub(crate) struct RootSuccessor {
    pub(crate) root_der: Vec<u8>,
    pub(crate) root_key: KeyPair,
    pub(crate) intermediate_der: Vec<u8>,
    pub(crate) cross_der: Vec<u8>,
    pub(crate) intermediate_key: KeyPair,
}

/// Creates a successor root and an intermediate certified by both it and the current root.
pub(crate) fn new_root_successor(
    opts: &InitOptions,
    current_root_der: &[u8],
    current_root_key: KeyPair,
    imported: Option<(Vec<u8>, KeyPair)>,
) -> Result<RootSuccessor, CaError> {
    let now = OffsetDateTime::now_utc();
    let (root_der, root_key) = match imported {
        Some((der, key)) => {
            let (_, cert) =
                X509Certificate::from_der(&der).map_err(|e| CaError::InvalidCertificate(format!("new root: {e}")))?;
            if !cert.is_ca() || cert.subject() != cert.issuer() || cert.verify_signature(None).is_err() {
                return Err(CaError::InvalidCertificate("the new root is not a self-signed CA certificate".into()));
            }
            check_key_matches(&der, &key, "new root")?;
            (der, key)
        }
        None => {
            let key = generate_key(opts.key_algorithm)?;
            (new_root(opts, &key, now)?, key)
        }
    };
    let intermediate_key = generate_key(opts.key_algorithm)?;
    let rng = ring::rand::SystemRandom::new();
    let serial = Serial::random(&rng)?;
    let dn = ca_name(&opts.organization, "Intermediate CA", now, &serial);
    let new_root_key_copy = KeyPair::try_from(root_key.serialize_der().as_slice())
        .map_err(|e| CaError::Key(format!("copy root key: {e}")))?;
    let intermediate_der =
        sign_intermediate_named(opts, dn.clone(), serial, &root_der, new_root_key_copy, &intermediate_key, now)?;
    let cross_der = sign_intermediate_named(
        opts,
        dn,
        Serial::random(&rng)?,
        current_root_der,
        current_root_key,
        &intermediate_key,
        now,
    )?;
    Ok(RootSuccessor { root_der, root_key, intermediate_der, cross_der, intermediate_key })
}

/// Creates a new root and intermediate.
pub fn create_ca(opts: &InitOptions, pass: &Passphrase) -> Result<CaMaterial, CaError> {
    let now = OffsetDateTime::now_utc();
    let root_key = generate_key(opts.key_algorithm)?;
    let root_der = new_root(opts, &root_key, now)?;
    let root_key_pem_enc = encrypt_key_pem(&root_key, pass)?;
    let int_key = generate_key(opts.key_algorithm)?;
    let int_der = sign_intermediate(opts, &root_der, root_key, &int_key, now)?;
    let root = IssuerRecord::from_cert(&root_der, IssuerKind::Root, IssuerState::Active, None, None)?;
    let intermediate = IssuerRecord::from_cert(
        &int_der,
        IssuerKind::Intermediate,
        IssuerState::Active,
        Some(root.id.clone()),
        Some(encrypt_key_pem(&int_key, pass)?),
    )?;
    Ok(CaMaterial { root, root_key_pem_enc: Some(root_key_pem_enc), intermediate })
}

/// Imports an existing root (and intermediate), checking that keys match certificates, that the
/// root is a self-signed CA and that the intermediate is a CA signed by it. Without an imported
/// intermediate, a new one is created with the root key.
pub fn import_ca(imp: &ImportedCa, opts: &InitOptions, pass: &Passphrase) -> Result<CaMaterial, CaError> {
    let now = OffsetDateTime::now_utc();
    let root_der = pem_to_der(&imp.root_cert_pem)?;
    let (_, root_cert) =
        X509Certificate::from_der(&root_der).map_err(|e| CaError::InvalidCertificate(format!("root: {e}")))?;
    if root_cert.subject() != root_cert.issuer() || root_cert.verify_signature(None).is_err() {
        return Err(CaError::InvalidCertificate("the root certificate is not self-signed".into()));
    }
    if !root_cert.validity().is_valid_at(x509_parser::time::ASN1Time::from(now)) {
        return Err(CaError::InvalidCertificate("the root certificate is not valid now".into()));
    }
    let root = IssuerRecord::from_cert(&root_der, IssuerKind::Root, IssuerState::Active, None, None)?;
    let root_key = match &imp.root_key_pem {
        Some(pem) => {
            let k = parse_key_pem(pem, pass, "root key")?;
            check_key_matches(&root_der, &k, "root")?;
            Some(k)
        }
        None => None,
    };
    let root_key_pem_enc = root_key.as_ref().map(|k| encrypt_key_pem(k, pass)).transpose()?;

    let intermediate = match (&imp.intermediate_cert_pem, &imp.intermediate_key_pem) {
        (Some(cert_pem), Some(key_pem)) => {
            let der = pem_to_der(cert_pem)?;
            let (_, cert) = X509Certificate::from_der(&der)
                .map_err(|e| CaError::InvalidCertificate(format!("intermediate: {e}")))?;
            if cert.verify_signature(Some(root_cert.public_key())).is_err() {
                return Err(CaError::InvalidCertificate("the intermediate is not signed by the root".into()));
            }
            if !cert.validity().is_valid_at(x509_parser::time::ASN1Time::from(now)) {
                return Err(CaError::InvalidCertificate("the intermediate certificate is not valid now".into()));
            }
            let key = parse_key_pem(key_pem, pass, "intermediate key")?;
            check_key_matches(&der, &key, "intermediate")?;
            IssuerRecord::from_cert(
                &der,
                IssuerKind::Intermediate,
                IssuerState::Active,
                Some(root.id.clone()),
                Some(encrypt_key_pem(&key, pass)?),
            )?
        }
        (Some(_), None) => {
            return Err(CaError::Config("an imported intermediate needs its key".into()));
        }
        (None, Some(_)) => {
            return Err(CaError::Config("an intermediate key was given without its certificate".into()));
        }
        (None, None) => {
            let root_key = root_key
                .ok_or_else(|| CaError::Config("import a root key, or an intermediate certificate and key".into()))?;
            let int_key = generate_key(opts.key_algorithm)?;
            let der = sign_intermediate(opts, &root_der, root_key, &int_key, now)?;
            IssuerRecord::from_cert(
                &der,
                IssuerKind::Intermediate,
                IssuerState::Active,
                Some(root.id.clone()),
                Some(encrypt_key_pem(&int_key, pass)?),
            )?
        }
    };
    Ok(CaMaterial { root, root_key_pem_enc, intermediate })
}
