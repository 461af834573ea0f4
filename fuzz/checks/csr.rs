//! Fuzz check `csr`: `ca::parse_and_verify_csr` on DER and PEM requests, then the policy's name
//! decision on what it returns. Shared by `fuzz/fuzz_targets/csr.rs` and `ca/tests/fuzz_regressions.rs`.
#![allow(dead_code)]

use ring::signature::{Ed25519KeyPair, KeyPair};

/// DER of a SEQUENCE / BIT STRING etc. with `tag` around `content`.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(u8::try_from(n).unwrap_or(0x7f)); // n < 0x80 here
    } else {
        let bytes: Vec<u8> = n.to_be_bytes().iter().copied().skip_while(|b| *b == 0).collect();
        out.push(0x80 | u8::try_from(bytes.len()).unwrap_or(0x7f)); // at most 8 length bytes
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

fn signer() -> &'static Ed25519KeyPair {
    static KEY: std::sync::OnceLock<Ed25519KeyPair> = std::sync::OnceLock::new();
    KEY.get_or_init(|| Ed25519KeyPair::from_seed_unchecked(&[11u8; 32]).expect("fixed Ed25519 seed"))
}

/// A CSR whose CertificationRequestInfo is `info`, signed (Ed25519) by the fixed key.
fn signed_csr(info: &[u8]) -> Vec<u8> {
    let sig = signer().sign(info);
    let alg = tlv(0x30, &tlv(0x06, &[0x2b, 0x65, 0x70]));
    let mut bits = vec![0u8];
    bits.extend_from_slice(sig.as_ref());
    tlv(0x30, &[info.to_vec(), alg, tlv(0x03, &bits)].concat())
}

/// Byte 0 picks the mode: the rest is a CSR (DER or PEM), or a CertificationRequestInfo the
/// harness signs with its fixed key (so the fuzzer gets past the signature).
pub(crate) fn check(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let input = if mode % 2 == 0 { rest.to_vec() } else { signed_csr(rest) };
    let Ok(csr) = ca::parse_and_verify_csr(&input) else { return };
    assert_eq!(csr.key_fingerprint.len(), 64);
    assert!(csr.names.windows(2).all(|w| w[0] < w[1]), "names are sorted and unique");
    // The same request in the other encoding gives the same answer.
    if !input.starts_with(b"-----BEGIN") {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&input);
        let lines: Vec<&str> =
            b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("base64 is ASCII")).collect();
        let pem =
            format!("-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n", lines.join("\n"));
        if pem.len() <= 64 * 1024 {
            let again = ca::parse_and_verify_csr(pem.as_bytes()).expect("the PEM form of an accepted DER CSR");
            assert_eq!(again.key_fingerprint, csr.key_fingerprint);
            assert_eq!(again.names, csr.names);
        }
    }
    let mut policy = ca::Policy::default();
    policy.trust_domain = "example.org".into();
    for profile in [ca::Profile::Workload, ca::Profile::TlsServer] {
        let _outcome = policy.names_for(&csr, profile, None); // only that it returns (no panic) matters
    }
}

/// Realistic requests from rcgen: each key type, DNS/IP/SPIFFE names, PEM and DER, and the
/// harness-signed form.
pub(crate) fn seeds() -> Vec<Vec<u8>> {
    use ca::rcgen::{CertificateParams, DnType, KeyPair as RcKey, SanType};
    let mut out = Vec::new();
    for alg in [&ca::rcgen::PKCS_ECDSA_P256_SHA256, &ca::rcgen::PKCS_ECDSA_P384_SHA384, &ca::rcgen::PKCS_ED25519] {
        let key = RcKey::generate_for(alg).expect("key");
        let mut p = CertificateParams::new(vec!["a.example.org".to_owned(), "10.1.2.3".to_owned()]).expect("params");
        p.distinguished_name.push(DnType::CommonName, "a.example.org");
        let csr = p.serialize_request(&key).expect("csr");
        out.push([vec![0], csr.der().to_vec()].concat());
        out.push([vec![0], csr.pem().expect("pem").into_bytes()].concat());
    }
    let key = RcKey::generate_for(&ca::rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![SanType::URI("spiffe://example.org/ns/a/sa/b".try_into().expect("uri"))];
    out.push([vec![0], p.serialize_request(&key).expect("csr").der().to_vec()].concat());
    // The info of a request for the fixed key, for the harness-signed mode.
    let fixed = signer();
    let pkcs8 = [
        &[0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20][..],
        &[11u8; 32][..],
    ]
    .concat();
    let rc = RcKey::try_from(pkcs8.as_slice()).expect("fixed key as rcgen key");
    assert_eq!(rc.public_key_raw(), fixed.public_key().as_ref());
    let mut p = CertificateParams::new(vec!["b.example.org".to_owned()]).expect("params");
    p.subject_alt_names.push(SanType::URI("spiffe://example.org/x".try_into().expect("uri")));
    let der = p.serialize_request(&rc).expect("csr").der().to_vec();
    // CertificationRequestInfo is the first element of the outer SEQUENCE.
    let info = first_element(&der);
    out.push([vec![1], info.to_vec()].concat());
    out
}

fn first_element(der: &[u8]) -> &[u8] {
    let header = |b: &[u8]| -> (usize, usize) {
        if b[1] < 0x80 {
            (2, usize::from(b[1]))
        } else {
            let n = usize::from(b[1] & 0x7f);
            (2 + n, b[2..2 + n].iter().fold(0usize, |a, x| (a << 8) | usize::from(*x)))
        }
    };
    let (h, _) = header(der);
    let inner = &der[h..];
    let (h2, len2) = header(inner);
    &inner[..h2 + len2]
}
