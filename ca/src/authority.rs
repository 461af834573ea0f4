//! Creating and importing the CA hierarchy: a root and an intermediate signed by it.
//!
//! The server needs only the intermediate's key. A root created here has its key returned
//! encrypted so the operator can keep it offline; an imported root may come without a key at all.

use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::issuers::check_key_matches;
use crate::keys::{KeyAlgorithm, Passphrase, encrypt_key_pem, generate_key, parse_key_pem};
use crate::pem::decode_certificate;
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

impl InitOptions {
    /// Checks the lifetimes: positive, the intermediate's not above the root's, and both within
    /// [`crate::MAX_CONFIG_DURATION`] so that `now + lifetime` cannot overflow.
    pub fn validate(&self) -> Result<(), CaError> {
        crate::check_duration("root_lifetime", self.root_lifetime)?;
        crate::check_duration("intermediate_lifetime", self.intermediate_lifetime)?;
        if self.intermediate_lifetime.is_zero() || self.intermediate_lifetime > self.root_lifetime {
            return Err(CaError::Config(
                "intermediate_lifetime must be positive and may not exceed root_lifetime".into(),
            ));
        }
        Ok(())
    }
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
    // The suffix comes from the serial's random tail: its head is a constant prefix and the time
    // in seconds, which would give every generation made on one day the same name.
    let hex = serial.to_hex();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, org);
    dn.push(DnType::CommonName, format!("{org} {role} {} {}", now.date(), &hex[hex.len() - 8..]));
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

/// Signs a new intermediate key with the root, under a name of its own generation; returns the
/// intermediate DER.
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

/// A new root with its first intermediate, and the two roots certified by each other.
///
/// Cross-signing is done between the *roots*, not the intermediates: a chain then stays linear
/// (`leaf, intermediate, this root as certified by the other root`) and every verifier finds the
/// path without backtracking. OpenSSL (curl, `openssl s_client`) takes the first matching issuer
/// in the untrusted list and never tries a second one, so two copies of one intermediate (signed
/// by two roots) in a chain leave one of the two root populations without a path.
pub(crate) struct RootSuccessor {
    pub(crate) root_der: Vec<u8>,
    pub(crate) root_key: KeyPair,
    pub(crate) intermediate_der: Vec<u8>,
    pub(crate) intermediate_key: KeyPair,
    /// The new root's name and key, certified by the current root (serves clients that know only
    /// the current root once the new one signs).
    pub(crate) new_root_cross_der: Vec<u8>,
    /// The current root's name and key, certified by the new root (serves clients that already
    /// know only the new root while the current one still signs).
    pub(crate) current_root_cross_der: Vec<u8>,
}

/// Creates a successor root, an intermediate under it, and the cross certificates between the
/// successor and the current root.
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
            if cert.subject().as_raw() == subject_raw(current_root_der)?.as_slice() {
                return Err(CaError::InvalidCertificate(
                    "the new root has the same subject name as the current root; every root generation needs its \
                     own name"
                        .into(),
                ));
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
    let intermediate_der = sign_intermediate(opts, &root_der, copy_key(&root_key)?, &intermediate_key, now)?;
    let new_root_cross_der = cross_certify(&root_der, &root_key, current_root_der, copy_key(&current_root_key)?, now)?;
    let current_root_cross_der =
        cross_certify(current_root_der, &current_root_key, &root_der, copy_key(&root_key)?, now)?;
    Ok(RootSuccessor {
        root_der,
        root_key,
        intermediate_der,
        intermediate_key,
        new_root_cross_der,
        current_root_cross_der,
    })
}

fn copy_key(key: &KeyPair) -> Result<KeyPair, CaError> {
    KeyPair::try_from(key.serialize_der().as_slice()).map_err(|e| CaError::Key(format!("copy key: {e}")))
}

fn subject_raw(der: &[u8]) -> Result<Vec<u8>, CaError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| CaError::InvalidCertificate(e.to_string()))?;
    Ok(cert.subject().as_raw().to_vec())
}

/// The subject name of a certificate as rcgen writes it. rcgen re-encodes an issuer's name this
/// way in everything that issuer signs, so a cross certificate built from it carries exactly the
/// bytes that the certificates below it name as their issuer (webpki compares names byte for byte).
fn subject_name(cert: &X509Certificate<'_>) -> Result<DistinguishedName, CaError> {
    use x509_parser::der_parser::asn1_rs::Tag;
    let bad = |what: &str| CaError::InvalidCertificate(format!("{}: {what}", cert.subject()));
    let mut dn = DistinguishedName::new();
    for rdn in cert.subject().iter() {
        let mut attrs = rdn.iter();
        let (Some(attr), None) = (attrs.next(), attrs.next()) else {
            return Err(bad("a subject with multi-valued or empty RDNs cannot be cross-certified"));
        };
        let oid: Vec<u64> = attr.attr_type().iter().ok_or_else(|| bad("subject attribute OID too large"))?.collect();
        let data = attr.attr_value().data;
        let text = || std::str::from_utf8(data).map_err(|_| bad("subject attribute is not valid text"));
        let value = match attr.attr_value().header.tag() {
            Tag::Utf8String => rcgen::DnValue::Utf8String(text()?.to_owned()),
            Tag::PrintableString => rcgen::DnValue::PrintableString(
                text()?.try_into().map_err(|_| bad("invalid PrintableString in the subject"))?,
            ),
            Tag::Ia5String => {
                rcgen::DnValue::Ia5String(text()?.try_into().map_err(|_| bad("invalid IA5String in the subject"))?)
            }
            Tag::T61String => rcgen::DnValue::TeletexString(
                text()?.try_into().map_err(|_| bad("invalid TeletexString in the subject"))?,
            ),
            Tag::BmpString => rcgen::DnValue::BmpString(
                rcgen::string::BmpString::from_utf16be(data.to_vec())
                    .map_err(|_| bad("invalid BMPString in the subject"))?,
            ),
            Tag::UniversalString => rcgen::DnValue::UniversalString(
                rcgen::string::UniversalString::from_utf32be(data.to_vec())
                    .map_err(|_| bad("invalid UniversalString in the subject"))?,
            ),
            _ => return Err(bad("unsupported string type in the subject")),
        };
        dn.push(DnType::from_oid(&oid), value);
    }
    Ok(dn)
}

/// Certifies the CA `subject_der` (its name, key and key identifier kept, so it is the same CA to
/// every verifier) under another root. Valid while both are.
pub(crate) fn cross_certify(
    subject_der: &[u8],
    subject_key: &KeyPair,
    signer_der: &[u8],
    signer_key: KeyPair,
    now: OffsetDateTime,
) -> Result<Vec<u8>, CaError> {
    let (_, subject) =
        X509Certificate::from_der(subject_der).map_err(|e| CaError::InvalidCertificate(format!("cross: {e}")))?;
    let (_, signer) =
        X509Certificate::from_der(signer_der).map_err(|e| CaError::InvalidCertificate(format!("cross: {e}")))?;
    check_key_matches(subject_der, subject_key, "cross-certified CA")?;
    let ski = subject
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
        .ok_or_else(|| CaError::InvalidCertificate(format!("{} has no subject key identifier", subject.subject())))?;
    let rng = ring::rand::SystemRandom::new();
    let not_after = subject.validity().not_after.to_datetime().min(signer.validity().not_after.to_datetime());
    let mut p = ca_params(
        subject_name(&subject)?,
        Serial::random(&rng)?,
        now - time::Duration::minutes(5),
        not_after,
        BasicConstraints::Unconstrained,
    );
    p.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(ski);
    let issuer = rcgen::Issuer::from_ca_cert_der(&signer_der.into(), signer_key)
        .map_err(|e| CaError::InvalidCertificate(format!("cross signer: {e}")))?;
    let cert = p.signed_by(subject_key, &issuer).map_err(|e| CaError::Signing(format!("cross certificate: {e}")))?;
    Ok(cert.der().to_vec())
}

/// Creates a new root and intermediate.
pub fn create_ca(opts: &InitOptions, pass: &Passphrase) -> Result<CaMaterial, CaError> {
    opts.validate()?;
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
    let root_der = decode_certificate(&imp.root_cert_pem)?;
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
            let der = decode_certificate(cert_pem)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Generations made on the same day in the same second still get names of their own, and
    /// cross certificates are their twin's name and key under the other root.
    #[test]
    fn generations_have_their_own_names_and_cross_certificates_keep_their_twins() {
        let opts = InitOptions::default();
        let pass = Passphrase::new("a test passphrase").expect("pass");
        let a = create_ca(&opts, &pass).expect("ca");
        let b = create_ca(&opts, &pass).expect("ca");
        assert_ne!(a.root.subject, b.root.subject);
        assert_ne!(a.intermediate.subject, b.intermediate.subject);
        assert_ne!(a.root.subject, a.intermediate.subject);

        let current_key = generate_key(opts.key_algorithm).expect("key");
        let current = new_root(&opts, &current_key, OffsetDateTime::now_utc()).expect("root");
        let succ = new_root_successor(&opts, &current, copy_key(&current_key).expect("key"), None).expect("succ");
        let parse = |d: &[u8]| X509Certificate::from_der(d).expect("cert").1.subject().as_raw().to_vec();
        assert_ne!(parse(&succ.root_der), parse(&current));
        for (cross, twin, signer) in [
            (&succ.new_root_cross_der, &succ.root_der, &current),
            (&succ.current_root_cross_der, &current, &succ.root_der),
        ] {
            let (_, c) = X509Certificate::from_der(cross).expect("cross");
            let (_, t) = X509Certificate::from_der(twin).expect("twin");
            let (_, s) = X509Certificate::from_der(signer).expect("signer");
            assert_eq!(c.subject().as_raw(), t.subject().as_raw());
            assert_eq!(c.issuer().as_raw(), s.subject().as_raw());
            assert_eq!(c.public_key().raw, t.public_key().raw);
            assert!(c.verify_signature(Some(s.public_key())).is_ok());
            assert!(c.is_ca());
            assert!(c.validity().not_after <= s.validity().not_after);
        }
        // The new intermediate names the new root as its issuer with exactly the bytes of the
        // cross certificate's subject, so a path through the cross certificate is found.
        let (_, int) = X509Certificate::from_der(&succ.intermediate_der).expect("int");
        let (_, c) = X509Certificate::from_der(&succ.new_root_cross_der).expect("cross");
        assert_eq!(int.issuer().as_raw(), c.subject().as_raw());
    }

    /// An imported successor root with the current root's name is refused.
    #[test]
    fn an_imported_root_with_the_current_name_is_refused() {
        let opts = InitOptions::default();
        let now = OffsetDateTime::now_utc();
        let key = generate_key(opts.key_algorithm).expect("key");
        let current = new_root(&opts, &key, now).expect("root");
        // Same name, new key: what `openssl req -subj` with the old subject would make.
        let (_, cur) = X509Certificate::from_der(&current).expect("cert");
        let mut p = ca_params(
            subject_name(&cur).expect("dn"),
            Serial::random(&ring::rand::SystemRandom::new()).expect("serial"),
            now,
            now + Duration::from_secs(3600),
            BasicConstraints::Unconstrained,
        );
        p.use_authority_key_identifier_extension = false;
        let other = generate_key(opts.key_algorithm).expect("key");
        let look_alike = p.self_signed(&other).expect("cert").der().to_vec();
        let err = new_root_successor(&opts, &current, key, Some((look_alike, other))).err().expect("refused");
        assert!(err.to_string().contains("same subject name"), "{err}");
    }
}
