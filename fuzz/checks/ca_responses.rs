//! Fuzz check `ca_responses`: what the agent does with the CA's answers
//! (`workload-agent/src/agent/ca_client.rs`, `cert.rs`, `tls/trust.rs`): the SPIFFE bundle, the
//! CRL PEM (then `CredentialSeam::publish_crls`, which parses each CRL for webpki and
//! x509-parser), push notices, renewalInfo, certificate chains, leaf facts, keys and error
//! documents. Shared by `fuzz/fuzz_targets/ca_responses.rs` and
//! `workload-agent/tests/fuzz_regressions.rs`.
#![allow(dead_code)]

use std::sync::OnceLock;

use hyper::StatusCode;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::CertificateDer;
use workload_agent::TrustBundle;
use workload_agent::agent::ca_client::{self, NoticeError};
use workload_agent::agent::http::HttpResponse;
use workload_agent::agent::{cert, schedule};
use workload_agent::tls::CredentialSeam;

const TRUST_DOMAIN: &str = "example.org";
const STATUSES: [u16; 8] = [200, 200, 200, 200, 204, 404, 403, 500];

/// A fixed root (Ed25519 key from a fixed seed, fixed serial and validity), so that CRLs in
/// seeds written by one process verify in another.
struct Root {
    key: KeyPair,
    params: CertificateParams,
    der: Vec<u8>,
}

fn root() -> &'static Root {
    static ROOT: OnceLock<Root> = OnceLock::new();
    ROOT.get_or_init(|| {
        let pkcs8 = [
            &[0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20][..],
            &[9u8; 32][..],
        ]
        .concat();
        let key = KeyPair::try_from(pkcs8.as_slice()).expect("fixed Ed25519 key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(rcgen::SerialNumber::from(vec![1, 2, 3]));
        params.not_before = time::macros::datetime!(2020-01-01 0:00 UTC);
        params.not_after = time::macros::datetime!(2090-01-01 0:00 UTC);
        params.distinguished_name.push(rcgen::DnType::CommonName, "Fuzz Root CA");
        let der = params.self_signed(&key).expect("root").der().to_vec();
        Root { key, params, der }
    })
}

fn bundle() -> TrustBundle {
    TrustBundle {
        trust_domain: TRUST_DOMAIN.into(),
        roots: vec![CertificateDer::from(root().der.clone())],
        sequence: 1,
    }
}

fn response(status: u16, body: &[u8]) -> HttpResponse {
    HttpResponse {
        status: StatusCode::from_u16(status).expect("status"),
        headers: hyper::HeaderMap::new(),
        body: hyper::body::Bytes::copy_from_slice(body),
    }
}

fn check_window(start: i64, end: i64) {
    for unit in [0.0, 0.5, 0.999] {
        let at = schedule::pick_in_window(start, end, unit);
        assert!(at >= start && at <= end.max(start), "picked {at} outside [{start}, {end}]");
    }
}

/// Byte 0: which answer (low 3 bits) and its HTTP status (next 3 bits); the rest is the body.
pub(crate) fn check(data: &[u8]) {
    let Some((&sel, body)) = data.split_first() else { return };
    let resp = response(STATUSES[usize::from(sel >> 3) & 7], body);
    let _ = resp.error_detail();
    match sel & 7 {
        0 => {
            if let Ok(f) = ca_client::parse_bundle(TRUST_DOMAIN, &resp) {
                assert!(!f.bundle.roots.is_empty());
                let seam = CredentialSeam::new("spiffe://example.org/agent").expect("seam");
                let _outcome = seam.publish_bundle(f.bundle); // only that it returns (no panic) matters
            }
        }
        1 => {
            if let Ok(crls) = ca_client::parse_crls(&resp) {
                for c in &crls {
                    let _ = cert::crl_next_update(c.as_ref());
                }
                let seam = CredentialSeam::new("spiffe://example.org/agent").expect("seam");
                seam.publish_bundle(bundle()).expect("the fixed root is a valid bundle");
                let _outcome = seam.publish_crls(crls); // only that it returns (no panic) matters
            }
        }
        2 => match ca_client::parse_notice(&resp) {
            Ok(Some((s, e))) => check_window(s, e),
            Ok(None) => assert_eq!(resp.status, StatusCode::NO_CONTENT),
            Err(NoticeError::NotSupported) => assert_eq!(resp.status, StatusCode::NOT_FOUND),
            Err(NoticeError::Failed(_)) => {}
        },
        3 => {
            if let Ok((s, e)) = ca_client::parse_renewal_info(&resp) {
                check_window(s, e);
            }
        }
        4 => {
            if let Ok(chain) = cert::chain_from_pem(body) {
                assert!(!chain.is_empty());
                for c in &chain {
                    if let Ok(info) = cert::leaf_info(c.as_ref()) {
                        assert!(info.spiffe_id.starts_with("spiffe://"));
                    }
                }
            }
        }
        5 => {
            if let Ok(info) = cert::leaf_info(body) {
                assert!(info.spiffe_id.starts_with("spiffe://"));
                assert!(!info.serial.is_empty() || info.ari_id.is_none());
            }
        }
        6 => {
            let _outcome = cert::key_from_pem(body); // only that it returns (no panic) matters
        }
        _ => {
            let _ = cert::crl_next_update(body);
        }
    }
}

/// A CRL of the fixed root (PEM), listing `serials`.
pub(crate) fn root_crl_pem(serials: &[u8]) -> String {
    let r = root();
    let issuer = rcgen::Issuer::from_params(&r.params, &r.key);
    let now = time::macros::datetime!(2026-01-01 0:00 UTC);
    let crl = rcgen::CertificateRevocationListParams {
        this_update: now,
        next_update: now + time::Duration::days(7),
        crl_number: rcgen::SerialNumber::from(vec![1]),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|s| rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from(vec![*s]),
                revocation_time: now,
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .expect("crl");
    crl.pem().expect("crl pem")
}

/// A leaf for `spiffe://example.org/web` issued by the fixed root, PEM.
pub(crate) fn leaf_pem() -> String {
    let r = root();
    let issuer = rcgen::Issuer::from_params(&r.params, &r.key);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![rcgen::SanType::URI("spiffe://example.org/web".try_into().expect("uri"))];
    p.use_authority_key_identifier_extension = true;
    p.signed_by(&key, &issuer).expect("leaf").pem()
}

pub(crate) fn seeds() -> Vec<Vec<u8>> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&root().der);
    let bundle = serde_json::json!({
        "keys": [{"use": "x509-svid", "kty": "OKP", "crv": "Ed25519", "x5c": [b64]}],
        "spiffe_sequence": 3, "spiffe_refresh_hint": 300
    })
    .to_string();
    let leaf = leaf_pem();
    let leaf_der = rustls::pki_types::pem::PemObject::from_pem_slice(leaf.as_bytes())
        .map(|c: CertificateDer<'static>| c.to_vec())
        .expect("leaf der");
    let crl = root_crl_pem(&[5, 6]);
    let crl_der: Vec<u8> = rustls::pki_types::pem::PemObject::from_pem_slice(crl.as_bytes())
        .map(|c: rustls::pki_types::CertificateRevocationListDer<'static>| c.to_vec())
        .expect("crl der");
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key").serialize_pem();
    let m = |sel: u8, b: &[u8]| [&[sel][..], b].concat();
    vec![
        m(0, bundle.as_bytes()),
        m(1, crl.as_bytes()),
        m(1, format!("{crl}{}", root_crl_pem(&[])).as_bytes()),
        m(2, br#"{"renew":{"start":"2026-01-01T00:00:00Z","end":"2026-01-01T01:00:00Z"}}"#),
        m(2 | (4 << 3), b""),
        m(3, br#"{"suggestedWindow":{"start":"2026-01-01T00:00:00Z","end":"2026-01-02T00:00:00Z"},"explanationURL":"x"}"#),
        m(3 | (7 << 3), br#"{"type":"urn:ietf:params:acme:error:serverInternal","detail":"boom"}"#),
        m(4, format!("{leaf}{}", leaf).as_bytes()),
        m(5, &leaf_der),
        m(6, key.as_bytes()),
        m(7, &crl_der),
    ]
}
