//! Trust bundles: the roots a relying party should trust, with a fingerprint an operator or agent
//! can pin to bootstrap trust.

use crate::issuers::{IssuerKind, IssuerRecord, IssuerState};

/// SHA-256 of a DER blob, lower-case hex.
pub fn sha256_fingerprint(der: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, der))
}

/// The roots relying parties should trust now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustBundle {
    /// Roots in bundle order: the active root first, then prepared and retired ones still trusted.
    pub roots: Vec<IssuerRecord>,
}

impl TrustBundle {
    /// Builds the bundle from the issuer journal: every root that is not expired.
    pub fn from_journal(journal: &[IssuerRecord]) -> Self {
        let mut roots: Vec<IssuerRecord> =
            journal.iter().filter(|r| r.kind == IssuerKind::Root && r.state != IssuerState::Expired).cloned().collect();
        roots.sort_by_key(|r| (r.state != IssuerState::Active, r.not_before));
        TrustBundle { roots }
    }

    /// All roots as concatenated PEM.
    pub fn pem(&self) -> String {
        self.roots.iter().map(|r| r.cert_pem.as_str()).collect()
    }

    /// SHA-256 fingerprint (hex) of the first (active) root, the value agents pin.
    pub fn primary_fingerprint(&self) -> Option<&str> {
        self.roots.first().map(|r| r.fingerprint.as_str())
    }
}

impl TrustBundle {
    /// DER of every root, in bundle order.
    pub fn roots_der(&self) -> Vec<Vec<u8>> {
        self.roots.iter().filter_map(|r| crate::pem::decode_certificate(&r.cert_pem).ok()).collect()
    }

    /// A digest of the bundle's content, so a change of roots can be detected (and numbered).
    pub fn digest(&self) -> String {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for der in self.roots_der() {
            ctx.update(&(der.len() as u64).to_be_bytes());
            ctx.update(&der);
        }
        hex::encode(ctx.finish())
    }

    /// The SPIFFE trust bundle document (SPIFFE Trust Domain and Bundle specification, section 4):
    /// a JWK set whose keys have `use: x509-svid` and carry the root certificate in `x5c`.
    pub fn spiffe_document(&self, sequence: u64, refresh_hint_secs: u64) -> serde_json::Value {
        let keys: Vec<serde_json::Value> = self.roots_der().iter().filter_map(|der| x509_svid_jwk(der)).collect();
        serde_json::json!({
            "keys": keys,
            "spiffe_sequence": sequence,
            "spiffe_refresh_hint": refresh_hint_secs,
        })
    }
}

/// The JWK of one root for the SPIFFE bundle: the public key's parameters plus the certificate.
fn x509_svid_jwk(der: &[u8]) -> Option<serde_json::Value> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
    use x509_parser::public_key::PublicKey;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let spki = cert.public_key();
    let mut jwk = match spki.parsed().ok()? {
        PublicKey::EC(point) => {
            let data = point.data();
            let (crv, n) = match data.len() {
                65 => ("P-256", 32),
                97 => ("P-384", 48),
                _ => return None,
            };
            serde_json::json!({ "kty": "EC", "crv": crv, "x": B64.encode(&data[1..1 + n]), "y": B64.encode(&data[1 + n..]) })
        }
        PublicKey::RSA(rsa) => {
            let strip = |b: &[u8]| b.iter().skip_while(|x| **x == 0).copied().collect::<Vec<u8>>();
            serde_json::json!({ "kty": "RSA", "n": B64.encode(strip(rsa.modulus)), "e": B64.encode(strip(rsa.exponent)) })
        }
        _ if spki.algorithm.algorithm.to_id_string() == "1.3.101.112" => {
            serde_json::json!({ "kty": "OKP", "crv": "Ed25519", "x": B64.encode(spki.subject_public_key.data.as_ref()) })
        }
        _ => return None,
    };
    jwk["use"] = "x509-svid".into();
    jwk["x5c"] = serde_json::json!([STANDARD.encode(der)]);
    Some(jwk)
}
