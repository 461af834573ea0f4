//! Fuzz check `acme_payloads`: the ACME request payloads of `issuer-api/src/acme/wire.rs`
//! (newAccount, newOrder, finalize, revokeCert, keyChange, challenge attestation), deserialized and
//! checked by the handlers' own functions (`issuer_api::acme::check_payload`). Shared by
//! `fuzz/fuzz_targets/acme_payloads.rs` and `issuer-api/tests/fuzz_regressions.rs`.
#![allow(dead_code)]

use issuer_api::acme::PayloadKind;
use issuer_api::acme::jws::Jwk;

const KINDS: [PayloadKind; 6] = [
    PayloadKind::Account,
    PayloadKind::NewOrder,
    PayloadKind::Finalize,
    PayloadKind::Revoke,
    PayloadKind::KeyChange,
    PayloadKind::Challenge,
];

fn policy() -> ca::Policy {
    let mut p = ca::Policy::default();
    p.trust_domain = "example.org".into();
    p.dns.allow_suffixes = vec!["example.org".into(), "internal".into()];
    p
}

fn account_key() -> Jwk {
    Jwk::Ec {
        crv: "P-256".into(),
        x: "f83OJ3D2xF4oRqvOJvZJkBD_AtGAB-tntYfnUB6PjEY".into(),
        y: "x3JgG0nxhCl_QgOCVa7GAv4xHlug2ubvPrbKlOEBbEE".into(),
    }
}

/// Byte 0: payload kind (low bits) and whether dns-01 is offered (bit 7); the rest is the payload.
pub(crate) fn check(data: &[u8]) {
    let Some((&sel, payload)) = data.split_first() else { return };
    let kind = KINDS[usize::from(sel & 0x7f) % KINDS.len()];
    let dns01 = sel & 0x80 != 0;
    match issuer_api::acme::check_payload(kind, payload, &policy(), dns01, &account_key()) {
        Ok(()) => {}
        Err(p) => {
            assert!((400..500).contains(&p.status), "a payload refusal is a client error: {} {}", p.status, p.kind);
            assert!(p.kind.starts_with("urn:ietf:params:acme:error:"), "{}", p.kind);
        }
    }
}

/// Realistic payloads of each kind.
pub(crate) fn seeds() -> Vec<Vec<u8>> {
    let csr = {
        let key = ca::rcgen::KeyPair::generate_for(&ca::rcgen::PKCS_ED25519).expect("key");
        let params = ca::rcgen::CertificateParams::new(vec!["a.example.org".to_owned()]).expect("params");
        params.serialize_request(&key).expect("csr").der().to_vec()
    };
    let b64 = |b: &[u8]| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    };
    let cert = {
        let key = ca::rcgen::KeyPair::generate_for(&ca::rcgen::PKCS_ED25519).expect("key");
        let params = ca::rcgen::CertificateParams::new(vec!["a.example.org".to_owned()]).expect("params");
        params.self_signed(&key).expect("cert").der().to_vec()
    };
    let s = |kind: u8, json: String| [vec![kind], json.into_bytes()].concat();
    vec![
        s(0, r#"{"termsOfServiceAgreed":true,"contact":["mailto:ops@example.org"]}"#.into()),
        s(0, r#"{"onlyReturnExisting":true}"#.into()),
        s(0, r#"{"status":"deactivated","contact":[]}"#.into()),
        s(1, r#"{"identifiers":[{"type":"dns","value":"a.example.org"},{"type":"ip","value":"10.0.0.1"}]}"#.into()),
        s(0x81, r#"{"identifiers":[{"type":"dns","value":"*.example.org"}],"replaces":"aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"}"#.into()),
        s(1, r#"{"identifiers":[{"type":"spiffe","value":"spiffe://example.org/ns/a/sa/b"}]}"#.into()),
        s(1, r#"{"identifiers":[{"type":"dns","value":"a.example.org"}],"notAfter":"2030-01-01T00:00:00Z"}"#.into()),
        s(2, format!(r#"{{"csr":"{}"}}"#, b64(&csr))),
        s(3, format!(r#"{{"certificate":"{}","reason":4}}"#, b64(&cert))),
        s(4, r#"{"account":"https://ca/acme/account/1","oldKey":{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF4oRqvOJvZJkBD_AtGAB-tntYfnUB6PjEY","y":"x3JgG0nxhCl_QgOCVa7GAv4xHlug2ubvPrbKlOEBbEE"}}"#.into()),
        s(5, r#"{"token":"abc"}"#.into()),
        s(5, r#"{"jwt":"a.b.c"}"#.into()),
    ]
}
