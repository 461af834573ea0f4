//! What a certificate looks like. Every extension is decided here from the profile and the key
//! type; nothing is copied from the CSR except the key and the names policy accepted.

use std::fmt;

use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
    SanType,
};
use time::OffsetDateTime;

use crate::csr::KeyKind;
use crate::names::Name;
use crate::serial::Serial;
use crate::{CaError, Policy};

/// Certificate profiles for leaf certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// X509-SVID: one SPIFFE ID, optional DNS names, client and server authentication.
    Workload,
    /// A TLS server certificate for DNS names and IP addresses (what ACME clients get).
    TlsServer,
}

impl Profile {
    /// The profile's name as used in configuration and records.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Workload => "workload",
            Profile::TlsServer => "tls-server",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Profile {
    type Err = CaError;
    fn from_str(s: &str) -> Result<Self, CaError> {
        match s {
            "workload" => Ok(Profile::Workload),
            "tls-server" => Ok(Profile::TlsServer),
            other => Err(CaError::Config(format!("unknown profile {other:?}: expected workload or tls-server"))),
        }
    }
}

/// Inputs to [`leaf_params`] that policy has already approved.
pub(crate) struct LeafSpec<'a> {
    pub profile: Profile,
    pub key: KeyKind,
    pub names: &'a [Name],
    pub common_name: Option<&'a str>,
    pub serial: &'a Serial,
    /// Journal id of the intermediate that signs it (names its CRL).
    pub issuer_id: &'a str,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

/// Builds the rcgen parameters for a leaf certificate.
pub(crate) fn leaf_params(spec: &LeafSpec<'_>, policy: &Policy) -> Result<CertificateParams, CaError> {
    let mut p = CertificateParams::default();
    p.serial_number = Some(spec.serial.to_rcgen());
    p.not_before = spec.not_before;
    p.not_after = spec.not_after;
    // An empty subject makes rcgen mark the SAN extension critical, as RFC 5280 and X509-SVID require.
    p.distinguished_name = DistinguishedName::new();
    if let Some(cn) = spec.common_name {
        p.distinguished_name.push(DnType::CommonName, cn);
    }
    p.subject_alt_names = spec
        .names
        .iter()
        .map(|n| {
            Ok(match n {
                Name::Dns(d) => SanType::DnsName(
                    d.clone().try_into().map_err(|_| CaError::BadName { name: d.clone(), reason: "not IA5".into() })?,
                ),
                Name::Ip(ip) => SanType::IpAddress(*ip),
                Name::Spiffe(s) => SanType::URI(
                    s.to_string()
                        .try_into()
                        .map_err(|_| CaError::BadName { name: s.to_string(), reason: "not IA5".into() })?,
                ),
            })
        })
        .collect::<Result<_, CaError>>()?;
    p.is_ca = IsCa::ExplicitNoCa;
    p.use_authority_key_identifier_extension = true;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // keyEncipherment is meaningful for RSA key transport only (RFC 5480 / RFC 8410 forbid it for EC
    // and Ed25519 keys), and only a TLS 1.2 RSA key-exchange server could use it.
    if spec.profile == Profile::TlsServer && spec.key.allows_key_encipherment() {
        p.key_usages.push(KeyUsagePurpose::KeyEncipherment);
    }
    p.extended_key_usages = match spec.profile {
        Profile::Workload => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        Profile::TlsServer => vec![ExtendedKeyUsagePurpose::ServerAuth],
    };
    if let Some(base) = &policy.crl_url {
        p.crl_distribution_points = vec![rcgen::CrlDistributionPoint { uris: vec![crl_url(base, spec.issuer_id)] }];
    }
    if let Some(url) = &policy.ca_issuers_url {
        p.custom_extensions.push(aia_ca_issuers(url));
    }
    Ok(p)
}

/// Where the CRL of issuer `issuer_id` is served, below the base URL `[policy] crl_url`.
pub(crate) fn crl_url(base: &str, issuer_id: &str) -> String {
    format!("{}/{issuer_id}.crl", base.trim_end_matches('/'))
}

/// Authority Information Access with one caIssuers URI (RFC 5280 section 4.2.2.1).
fn aia_ca_issuers(url: &str) -> CustomExtension {
    const AIA: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 1, 1];
    const CA_ISSUERS: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 48, 2];
    let content = yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_sequence(|w| {
                w.next().write_oid(&yasna::models::ObjectIdentifier::from_slice(CA_ISSUERS));
                // GeneralName uniformResourceIdentifier: [6] IMPLICIT IA5String
                w.next().write_tagged_implicit(yasna::Tag::context(6), |w| {
                    w.write_bytes(url.as_bytes());
                });
            });
        });
    });
    CustomExtension::from_oid_content(AIA, content)
}
