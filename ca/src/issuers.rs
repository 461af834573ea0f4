//! The issuer journal: every root and intermediate the CA has known, each in one state.
//!
//! ```text
//!   prepared ──► active ──► retired ──► expired
//! ```
//! A prepared issuer is published in chains and bundles before it signs anything; exactly one
//! intermediate is active and signs; a retired one signs nothing but stays trusted until the last
//! certificate it signed has expired. The database enforces "at most one active issuer per kind".

use std::fmt;

use rcgen::KeyPair;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use x509_parser::prelude::{FromDer, ParsedExtension, X509Certificate};

use crate::{CaError, pem, sha256_fingerprint};

/// Root or intermediate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IssuerKind {
    /// A trust anchor. Its key may live offline.
    Root,
    /// The CA that signs leaves; its key is held (encrypted) by the server.
    Intermediate,
}

/// Where an issuer is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IssuerState {
    /// Published in bundles and chains, not yet signing.
    Prepared,
    /// Signing.
    Active,
    /// No longer signing, still trusted.
    Retired,
    /// Past its NotAfter (or revoked); dropped from bundles.
    Expired,
}

macro_rules! str_enum {
    ($t:ty { $($v:ident => $s:literal),* $(,)? }) => {
        impl $t {
            /// The name stored in the journal.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),* }
            }
            pub(crate) fn parse(s: &str) -> Result<Self, CaError> {
                match s {
                    $($s => Ok(Self::$v),)*
                    other => Err(CaError::Store(format!("unknown {} {other:?}", stringify!($t)))),
                }
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
    };
}
str_enum!(IssuerKind { Root => "root", Intermediate => "intermediate" });
str_enum!(IssuerState { Prepared => "prepared", Active => "active", Retired => "retired", Expired => "expired" });

/// One entry of the issuer journal.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuerRecord {
    /// Stable id: the first 16 hex digits of the certificate's SHA-256 fingerprint.
    pub id: String,
    /// Root or intermediate.
    pub kind: IssuerKind,
    /// Journal state.
    pub state: IssuerState,
    /// The issuer that signed this one (None for roots).
    pub parent_id: Option<String>,
    /// Subject DN, for display.
    pub subject: String,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 encrypted PEM; None when the key is offline (typical for roots).
    pub key_pem_enc: Option<String>,
    /// Subject key identifier, hex.
    pub ski: String,
    /// SHA-256 of the certificate DER, hex.
    pub fingerprint: String,
    /// Certificate NotBefore.
    pub not_before: OffsetDateTime,
    /// Certificate NotAfter.
    pub not_after: OffsetDateTime,
    /// When the record entered the journal.
    pub created_at: OffsetDateTime,
    /// When the state last changed.
    pub state_changed_at: OffsetDateTime,
    /// For a root: its name and key certified by the other root of a root rotation (PEM, one
    /// block per rotation it took part in), so chains through it also lead to that root. Records
    /// written before roots were cross-certified may hold such a copy of an intermediate; it is
    /// published in `/intermediates.pem` but not put in chains.
    pub cross_cert_pem: Option<String>,
}

impl fmt::Debug for IssuerRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuerRecord")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("state", &self.state)
            .field("subject", &self.subject)
            .field("not_after", &rfc3339(self.not_after))
            .field("has_key", &self.key_pem_enc.is_some())
            .finish()
    }
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.unix_timestamp().to_string())
}

impl IssuerRecord {
    /// What follows this intermediate in a chain so that a relying party holding any trusted root
    /// finds a path: the cross certificates that lead from its own root to every other root still
    /// in the trust bundle (PEM, nearest first). Empty outside a root rotation.
    ///
    /// The chain stays linear (`leaf, intermediate, root as certified by the other root`), which
    /// path builders without backtracking (OpenSSL) follow from either root: one trusting the
    /// intermediate's own root stops early, one trusting the other root goes one step further.
    pub fn cross_chain(&self, journal: &[IssuerRecord]) -> Vec<String> {
        let trusted: Vec<&IssuerRecord> =
            journal.iter().filter(|r| r.kind == IssuerKind::Root && r.state != IssuerState::Expired).collect();
        let Some(parent) = trusted.iter().find(|r| Some(&r.id) == self.parent_id.as_ref()) else {
            return Vec::new();
        };
        let mut reached = vec![parent.ski.as_str()];
        let mut out = Vec::new();
        // A walk over "root X is certified by root Y" links; each step reaches one more root.
        while let Some((pem, signer)) =
            trusted.iter().filter(|r| reached.contains(&r.ski.as_str())).flat_map(|r| r.cross_certificates()).find_map(
                |(pem, signer_ski)| {
                    let signer = trusted.iter().find(|t| t.ski == signer_ski && !reached.contains(&t.ski.as_str()))?;
                    Some((pem, signer))
                },
            )
        {
            reached.push(signer.ski.as_str());
            out.push(pem);
        }
        out
    }

    /// The cross certificates stored with this root, each with the key identifier (hex) of the
    /// root that signed it. Blocks that do not parse are skipped (they were checked when made).
    fn cross_certificates(&self) -> Vec<(String, String)> {
        let Some(pems) = self.cross_cert_pem.as_deref() else { return Vec::new() };
        x509_parser::pem::Pem::iter_from_buffer(pems.as_bytes())
            .filter_map(Result::ok)
            .filter_map(|p| {
                let (_, cert) = X509Certificate::from_der(&p.contents).ok()?;
                let aki = cert.extensions().iter().find_map(|e| match e.parsed_extension() {
                    ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.as_ref().map(|k| hex::encode(k.0)),
                    _ => None,
                })?;
                Some((pem::certificate(&p.contents), aki))
            })
            .collect()
    }

    /// Builds a journal record from a CA certificate, checking that it is one.
    pub fn from_cert(
        der: &[u8],
        kind: IssuerKind,
        state: IssuerState,
        parent_id: Option<String>,
        key_pem_enc: Option<String>,
    ) -> Result<Self, CaError> {
        let (rest, cert) = X509Certificate::from_der(der)
            .map_err(|e| CaError::InvalidCertificate(format!("not an X.509 certificate: {e}")))?;
        if !rest.is_empty() {
            return Err(CaError::InvalidCertificate("trailing bytes after the certificate".into()));
        }
        if !cert.is_ca() {
            return Err(CaError::InvalidCertificate(format!("{} is not a CA certificate (cA=false)", cert.subject())));
        }
        let ski = cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(k) => Some(hex::encode(k.0)),
                _ => None,
            })
            .ok_or_else(|| CaError::InvalidCertificate(format!("{} has no subject key identifier", cert.subject())))?;
        let fingerprint = sha256_fingerprint(der);
        let now = OffsetDateTime::now_utc();
        Ok(IssuerRecord {
            id: fingerprint[..16].to_owned(),
            kind,
            state,
            parent_id,
            subject: cert.subject().to_string(),
            cert_pem: pem::certificate(der),
            key_pem_enc,
            ski,
            fingerprint,
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            created_at: now,
            state_changed_at: now,
            cross_cert_pem: None,
        })
    }

    /// The certificate DER.
    pub fn cert_der(&self) -> Result<Vec<u8>, CaError> {
        pem::decode_certificate(&self.cert_pem)
    }
}

/// The issuer that signs now: its record, its decrypted key (held in memory only) and the chain
/// that goes with every certificate it signs.
pub struct ActiveIssuer {
    /// Journal entry.
    pub record: IssuerRecord,
    /// DER chain returned after a leaf: this intermediate first, then any further
    /// non-root parents. The root itself is distributed separately.
    pub chain_der: Vec<Vec<u8>>,
    pub(crate) issuer: rcgen::Issuer<'static, KeyPair>,
}

impl fmt::Debug for ActiveIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActiveIssuer").field("record", &self.record).finish_non_exhaustive()
    }
}

impl ActiveIssuer {
    /// Pairs a journal record with its decrypted key, checking that they belong together.
    pub fn new(record: IssuerRecord, key: KeyPair) -> Result<Self, CaError> {
        let der = record.cert_der()?;
        check_key_matches(&der, &key, &record.subject)?;
        let issuer = rcgen::Issuer::from_ca_cert_der(&der.as_slice().into(), key)
            .map_err(|e| CaError::InvalidCertificate(format!("{}: {e}", record.subject)))?;
        Ok(ActiveIssuer { record, chain_der: vec![der], issuer })
    }

    /// During a root rotation: also present the cross certificates from this intermediate's root
    /// to every other trusted root ([`IssuerRecord::cross_chain`]), so that relying parties that
    /// know only the old root or only the new one both find a path.
    pub fn with_cross_chain(mut self, journal: &[IssuerRecord]) -> Result<Self, CaError> {
        for cross in self.record.cross_chain(journal) {
            self.chain_der.push(pem::decode_certificate(&cross)?);
        }
        Ok(self)
    }

    /// The chain as PEM (intermediate first).
    pub fn chain_pem(&self) -> String {
        self.chain_der.iter().map(|d| pem::certificate(d)).collect()
    }
}

/// Fails unless `key` is the private key for the certificate `cert_der`.
pub(crate) fn check_key_matches(cert_der: &[u8], key: &KeyPair, what: &str) -> Result<(), CaError> {
    use rcgen::PublicKeyData;
    let (_, cert) =
        X509Certificate::from_der(cert_der).map_err(|e| CaError::InvalidCertificate(format!("{what}: {e}")))?;
    if cert.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(CaError::Key(format!("the key does not belong to the certificate {what}")));
    }
    Ok(())
}
