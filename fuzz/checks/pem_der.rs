//! Fuzz check `pem_der`: the CA's PEM/DER imports: `parse_key_pem` (encrypted PKCS#8, plaintext
//! PKCS#8 and SEC1), `decrypt_key_pem`, and `import_ca` (root/intermediate certificates and keys).
//! Shared by `fuzz/fuzz_targets/pem_der.rs` and `ca/tests/fuzz_regressions.rs`.
#![allow(dead_code)]

const PASS: &str = "correct horse battery staple";

fn pass() -> ca::Passphrase {
    ca::Passphrase::new(PASS).expect("passphrase")
}

/// The parts of `data` separated by 0xff bytes (which never occur in PEM text).
fn parts(data: &[u8]) -> Vec<String> {
    data.split(|b| *b == 0xff).map(|p| String::from_utf8_lossy(p).into_owned()).collect()
}

/// Byte 0 picks the mode: a key file for `parse_key_pem` or `decrypt_key_pem`, or the PEM texts
/// of an import (root cert, root key, intermediate cert, intermediate key, separated by 0xff).
pub(crate) fn check(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 3 {
        0 => {
            if let Ok(k) = ca::parse_key_pem(&String::from_utf8_lossy(rest), &pass(), "key") {
                // What was accepted is a usable key: its PKCS#8 form reads back as the same key.
                let again = ca::rcgen::KeyPair::try_from(k.serialize_der().as_slice()).expect("PKCS#8 round trip");
                assert_eq!(again.public_key_raw(), k.public_key_raw());
            }
        }
        1 => {
            let _outcome = ca::decrypt_key_pem(&String::from_utf8_lossy(rest), &pass(), "key"); // only that it returns (no panic) matters
        }
        _ => {
            let p = parts(rest);
            let get = |i: usize| p.get(i).filter(|s| !s.is_empty()).cloned();
            let imp = ca::ImportedCa {
                root_cert_pem: p.first().cloned().unwrap_or_default(),
                root_key_pem: get(1),
                intermediate_cert_pem: get(2),
                intermediate_key_pem: get(3),
            };
            if let Ok(m) = ca::import_ca(&imp, &ca::InitOptions::default(), &pass()) {
                assert!(m.intermediate.cert_der().is_ok() && m.root.cert_der().is_ok());
            }
        }
    }
}

/// An `ENCRYPTED PRIVATE KEY` with cheap KDF settings (so that mutations of it run fast).
pub(crate) fn cheap_encrypted(key: &ca::rcgen::KeyPair, scrypt: bool) -> String {
    use pkcs8::pkcs5::pbes2;
    let der = key.serialize_der();
    let info = pkcs8::PrivateKeyInfoRef::try_from(der.as_slice()).expect("pkcs8");
    let params = if scrypt {
        let p = pkcs8::pkcs5::scrypt::Params::new(2, 1, 1).expect("scrypt params");
        pbes2::Parameters::generate_scrypt_aes256cbc(p, &[1u8; 16], [2u8; 16]).expect("pbes2")
    } else {
        pbes2::Parameters::generate_pbkdf2_sha256_aes256cbc(2, &[1u8; 16], [2u8; 16]).expect("pbes2")
    };
    let doc = info.encrypt_with_params(params, PASS).expect("encrypt");
    doc.to_pem("ENCRYPTED PRIVATE KEY", pkcs8::LineEnding::LF).expect("pem").to_string()
}

/// A SEC1 `EC PRIVATE KEY` PEM of a P-256 key, with the `EC PARAMETERS` block, as
/// `openssl ecparam -name prime256v1 -genkey` writes it (a throwaway key made for this check).
pub(crate) fn sec1_pem() -> String {
    "-----BEGIN EC PARAMETERS-----\n\
BggqhkjOPQMBBw==\n\
-----END EC PARAMETERS-----\n\
-----BEGIN EC PRIVATE KEY-----\n\
MHcCAQEEIGiRtA4qcofRL7GjnHM14oPN5eCs6kdFcvmCyPajCIaloAoGCCqGSM49\n\
AwEHoUQDQgAEqoALPADgUGhEJ1c8/1qHFAbw8MZngzprvtnU4kkPprWp0C3oflNG\n\
V+N8NGIMTrtN+oqEKJj95/lkJxWKPiuyCQ==\n\
-----END EC PRIVATE KEY-----\n"
        .into()
}

pub(crate) fn seeds() -> Vec<Vec<u8>> {
    use ca::rcgen::{CertificateParams, KeyPair};
    let mut out = Vec::new();
    let m = |mode: u8, s: &str| [&[mode][..], s.as_bytes()].concat();
    for alg in [&ca::rcgen::PKCS_ECDSA_P256_SHA256, &ca::rcgen::PKCS_ECDSA_P384_SHA384, &ca::rcgen::PKCS_ED25519] {
        let k = KeyPair::generate_for(alg).expect("key");
        out.push(m(0, &k.serialize_pem()));
        out.push(m(0, &cheap_encrypted(&k, true)));
        out.push(m(1, &cheap_encrypted(&k, false)));
    }
    out.push(m(0, &sec1_pem()));
    let root_key = KeyPair::generate_for(&ca::rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = ca::rcgen::IsCa::Ca(ca::rcgen::BasicConstraints::Unconstrained);
    let root = p.self_signed(&root_key).expect("root");
    out.push(m(2, &root.pem()));
    let other = KeyPair::generate_for(&ca::rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut sep = root.pem().into_bytes();
    sep.push(0xff);
    sep.extend(other.serialize_pem().into_bytes());
    out.push([vec![2], sep].concat());
    out
}
