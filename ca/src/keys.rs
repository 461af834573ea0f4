//! Where CA signing keys come from and how they rest on disk.
//!
//! Keys at rest are PKCS#8 `ENCRYPTED PRIVATE KEY` documents (PBES2: scrypt + AES-256-CBC), so
//! they are never plaintext and standard tools (`openssl pkey`) can read them with the passphrase.

use std::fmt;
use std::path::Path;

use pkcs8::der::pem::LineEnding;
use pkcs8::{EncryptedPrivateKeyInfoRef, PrivateKeyInfoRef};
use rcgen::KeyPair;
use zeroize::Zeroizing;

use crate::CaError;

/// The environment variable consulted for the CA passphrase.
pub const PASSPHRASE_ENV: &str = "LANYARD_CA_PASSPHRASE";

/// Key algorithms Lanyard creates CA keys with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAlgorithm {
    /// ECDSA on NIST P-256 with SHA-256 (the default: fast, universally supported).
    #[default]
    #[serde(alias = "p256", alias = "ecdsa-p256")]
    P256,
    /// ECDSA on NIST P-384 with SHA-384.
    #[serde(alias = "p384", alias = "ecdsa-p384")]
    P384,
    /// Ed25519 (RFC 8410).
    Ed25519,
}

impl KeyAlgorithm {
    pub(crate) fn rcgen(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyAlgorithm::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }
}

impl std::str::FromStr for KeyAlgorithm {
    type Err = CaError;
    fn from_str(s: &str) -> Result<Self, CaError> {
        match s.to_ascii_lowercase().as_str() {
            "p256" | "p-256" | "ecdsa-p256" => Ok(KeyAlgorithm::P256),
            "p384" | "p-384" | "ecdsa-p384" => Ok(KeyAlgorithm::P384),
            "ed25519" => Ok(KeyAlgorithm::Ed25519),
            other => Err(CaError::Config(format!("unknown key algorithm {other:?}: expected p256, p384 or ed25519"))),
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyAlgorithm::P256 => "p256",
            KeyAlgorithm::P384 => "p384",
            KeyAlgorithm::Ed25519 => "ed25519",
        })
    }
}

/// Generates a fresh key pair with the system CSPRNG.
pub fn generate_key(alg: KeyAlgorithm) -> Result<KeyPair, CaError> {
    KeyPair::generate_for(alg.rcgen()).map_err(|e| CaError::Key(format!("generate {alg} key: {e}")))
}

/// The operator's passphrase. Never printed: `Debug` is redacted and the memory is zeroed on drop.
#[derive(Clone)]
pub struct Passphrase(Zeroizing<String>);

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

impl Passphrase {
    /// Minimum length; short passphrases make scrypt's work factor pointless.
    pub const MIN_LEN: usize = 12;

    /// Wraps a passphrase, refusing ones that are too short to protect a CA key.
    pub fn new(s: impl Into<String>) -> Result<Self, CaError> {
        let s = Zeroizing::new(s.into());
        if s.chars().count() < Self::MIN_LEN {
            return Err(CaError::Config(format!("the CA passphrase must be at least {} characters", Self::MIN_LEN)));
        }
        Ok(Passphrase(s))
    }

    /// Reads the passphrase from a file (trailing newline removed).
    pub fn from_file(path: &Path) -> Result<Self, CaError> {
        let raw = Zeroizing::new(std::fs::read_to_string(path).map_err(CaError::io("read passphrase file", path))?);
        Self::new(raw.trim_end_matches(['\r', '\n']).to_owned())
    }

    /// Reads the passphrase from [`PASSPHRASE_ENV`], if set.
    pub fn from_env() -> Result<Option<Self>, CaError> {
        match std::env::var(PASSPHRASE_ENV) {
            Ok(v) => Self::new(v).map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(CaError::Config(format!("{PASSPHRASE_ENV} is not valid UTF-8")))
            }
        }
    }

    /// A random passphrase for throwaway development CAs.
    pub fn random() -> Result<Self, CaError> {
        use ring::rand::{SecureRandom, SystemRandom};
        let mut b = [0u8; 24];
        SystemRandom::new().fill(&mut b).map_err(|_| CaError::Key("system RNG failed".into()))?;
        Self::new(hex::encode(b))
    }

    /// The passphrase text (for writing a dev passphrase file).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Encrypts a key pair into a PKCS#8 `ENCRYPTED PRIVATE KEY` PEM document.
pub fn encrypt_key_pem(key: &KeyPair, pass: &Passphrase) -> Result<String, CaError> {
    let der = Zeroizing::new(key.serialize_der());
    let info = PrivateKeyInfoRef::try_from(der.as_slice()).map_err(|e| CaError::Key(format!("re-read PKCS#8: {e}")))?;
    let enc = info.encrypt(pass.0.as_bytes()).map_err(|e| CaError::Key(format!("encrypt key: {e}")))?;
    let pem =
        enc.to_pem("ENCRYPTED PRIVATE KEY", LineEnding::LF).map_err(|e| CaError::Key(format!("encode key: {e}")))?;
    Ok(pem.to_string())
}

/// Decrypts an `ENCRYPTED PRIVATE KEY` PEM document. `what` names the key in errors.
pub fn decrypt_key_pem(pem: &str, pass: &Passphrase, what: &str) -> Result<KeyPair, CaError> {
    let (label, der) = pkcs8::der::pem::decode_vec(pem.as_bytes())
        .map_err(|e| CaError::Key(format!("{what}: not a PEM document: {e}")))?;
    if label != "ENCRYPTED PRIVATE KEY" {
        return Err(CaError::Key(format!("{what}: expected an ENCRYPTED PRIVATE KEY, found {label}")));
    }
    let enc = EncryptedPrivateKeyInfoRef::try_from(der.as_slice())
        .map_err(|e| CaError::Key(format!("{what}: malformed encrypted key: {e}")))?;
    check_kdf_cost(&enc.encryption_algorithm, what)?;
    // With CBC there is no MAC: a wrong passphrase shows up as bad padding or as garbage that does
    // not parse as PKCS#8. Both mean the same thing to the operator.
    let plain = enc.decrypt(pass.0.as_bytes()).map_err(|_| CaError::WrongPassphrase(what.to_owned()))?;
    KeyPair::try_from(plain.as_bytes()).map_err(|_| CaError::WrongPassphrase(what.to_owned()))
}

/// Largest scrypt memory (128 * r * N bytes) an encrypted key may ask for: 4x what
/// [`encrypt_key_pem`] uses (16 MiB), so keys from other tools with stronger settings still open.
pub const MAX_SCRYPT_MEMORY: u64 = 64 << 20;
/// Largest scrypt work (N * r * p) an encrypted key may ask for: 8x ours (2^14 * 8 * 1).
pub const MAX_SCRYPT_WORK: u64 = 1 << 20;
/// Most PBKDF2 iterations an encrypted key may ask for (OpenSSL writes 2048, OWASP suggests 600,000).
pub const MAX_PBKDF2_ITERATIONS: u32 = 2_000_000;

/// The key derivation parameters of an encrypted key are chosen by whoever wrote the file; without
/// a bound, a crafted key file (scrypt N = 2^40, or 10^8 PBKDF2 rounds) would make an import or a
/// start take minutes and gigabytes before the passphrase is even checked.
fn check_kdf_cost(scheme: &pkcs8::pkcs5::EncryptionScheme, what: &str) -> Result<(), CaError> {
    use pkcs8::pkcs5::pbes2::Kdf;
    let refuse = |detail: String| Err(CaError::Key(format!("{what}: {detail}")));
    let Some(pbes2) = scheme.pbes2() else {
        return refuse(
            "PBES1 encryption is not accepted; re-encrypt the key with PBES2 (openssl pkcs8 -topk8 -v2 aes-256-cbc)"
                .into(),
        );
    };
    match &pbes2.kdf {
        Kdf::Scrypt(p) => {
            let (n, r, par) = (p.cost_parameter, u64::from(p.block_size), u64::from(p.parallelization));
            // RFC 7914: N a power of two above 1, r and p positive. pkcs5 itself computes log2(N)
            // with a subtraction that panics for N = 0 (found by the pem_der fuzz target).
            if n < 2 || !n.is_power_of_two() || r == 0 || par == 0 {
                return refuse(format!("invalid scrypt parameters N={n} r={r} p={par}"));
            }
            let memory = n.checked_mul(r).and_then(|x| x.checked_mul(128));
            let work = n.checked_mul(r).and_then(|x| x.checked_mul(par));
            if memory.is_none_or(|m| m > MAX_SCRYPT_MEMORY) || work.is_none_or(|w| w > MAX_SCRYPT_WORK) {
                return refuse(format!(
                    "scrypt parameters N={n} r={r} p={par} exceed the accepted cost (at most {} MiB and N*r*p <= {MAX_SCRYPT_WORK})",
                    MAX_SCRYPT_MEMORY >> 20
                ));
            }
        }
        Kdf::Pbkdf2(p) => {
            if p.iteration_count == 0 {
                return refuse("invalid PBKDF2 iteration count 0".into());
            }
            if p.iteration_count > MAX_PBKDF2_ITERATIONS {
                return refuse(format!(
                    "PBKDF2 with {} iterations exceeds the accepted {MAX_PBKDF2_ITERATIONS}",
                    p.iteration_count
                ));
            }
        }
        _ => return refuse("unsupported PBES2 key derivation function (only scrypt and PBKDF2)".into()),
    }
    Ok(())
}

/// Parses a key for import: an `ENCRYPTED PRIVATE KEY` (decrypted with `pass`) or a plaintext
/// PKCS#8 (`PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`, as `openssl ecparam -genkey` writes it, with
/// or without its `EC PARAMETERS` block) key, which is accepted once so it can be re-encrypted.
pub fn parse_key_pem(pem: &str, pass: &Passphrase, what: &str) -> Result<KeyPair, CaError> {
    if pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return decrypt_key_pem(pem, pass, what);
    }
    let mut key = None;
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| CaError::Key(format!("{what}: not a PEM document: {e}")))?;
        match block.label.as_str() {
            "EC PARAMETERS" => continue,
            "PRIVATE KEY" | "EC PRIVATE KEY" if key.is_none() => key = Some(block),
            "PRIVATE KEY" | "EC PRIVATE KEY" => {
                return Err(CaError::Key(format!("{what}: more than one private key in the file")));
            }
            "RSA PRIVATE KEY" => {
                return Err(CaError::Key(format!(
                    "{what}: RSA keys are not supported for a CA (use p256, p384 or ed25519)"
                )));
            }
            other => return Err(CaError::Key(format!("{what}: expected a private key, found a PEM {other}"))),
        }
    }
    let block = key.ok_or_else(|| CaError::Key(format!("{what}: no PEM private key found")))?;
    let pkcs8 = match block.label.as_str() {
        "EC PRIVATE KEY" => {
            Zeroizing::new(sec1_to_pkcs8(&block.contents).map_err(|e| CaError::Key(format!("{what}: {e}")))?)
        }
        _ => Zeroizing::new(block.contents),
    };
    KeyPair::try_from(pkcs8.as_slice()).map_err(|e| CaError::Key(format!("{what}: {e}")))
}

/// Wraps a SEC1 `ECPrivateKey` (RFC 5915) in a PKCS#8 `PrivateKeyInfo` (RFC 5208), which is all
/// rcgen (with ring) reads. The curve comes from the key's own `parameters`, which must name
/// P-256 or P-384.
fn sec1_to_pkcs8(sec1: &[u8]) -> Result<Vec<u8>, String> {
    const P256: &[u64] = &[1, 2, 840, 10045, 3, 1, 7];
    const P384: &[u64] = &[1, 3, 132, 0, 34];
    let curve = yasna::parse_der(sec1, |r| {
        r.read_sequence(|r| {
            let version = r.next().read_u8()?;
            if version != 1 {
                return Err(yasna::ASN1Error::new(yasna::ASN1ErrorKind::Invalid));
            }
            let _private = r.next().read_bytes()?;
            let curve = r.read_optional(|r| r.read_tagged(yasna::Tag::context(0), |r| r.read_oid()))?;
            let _public = r.read_optional(|r| r.read_tagged(yasna::Tag::context(1), |r| r.read_bitvec_bytes()))?;
            Ok(curve)
        })
    })
    .map_err(|e| format!("not a SEC1 EC private key: {e}"))?;
    let curve = curve.ok_or("the SEC1 key does not name its curve")?;
    if curve.components().as_slice() != P256 && curve.components().as_slice() != P384 {
        return Err(format!("the SEC1 key's curve {curve} is not P-256 or P-384"));
    }
    Ok(yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_u8(0);
            w.next().write_sequence(|w| {
                w.next().write_oid(&yasna::models::ObjectIdentifier::from_slice(&[1, 2, 840, 10045, 2, 1]));
                w.next().write_oid(&curve);
            });
            w.next().write_bytes(sec1);
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(s: &str) -> Passphrase {
        Passphrase::new(s).expect("passphrase")
    }

    #[test]
    fn round_trip_every_algorithm() {
        for alg in [KeyAlgorithm::P256, KeyAlgorithm::P384, KeyAlgorithm::Ed25519] {
            let k = generate_key(alg).expect("generate");
            let pem = encrypt_key_pem(&k, &pass("correct horse battery")).expect("encrypt");
            assert!(pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
            let back = decrypt_key_pem(&pem, &pass("correct horse battery"), "test").expect("decrypt");
            assert_eq!(back.public_key_raw(), k.public_key_raw(), "{alg}");
        }
    }

    #[test]
    fn wrong_passphrase_is_a_clear_error() {
        let k = generate_key(KeyAlgorithm::P256).expect("generate");
        let pem = encrypt_key_pem(&k, &pass("correct horse battery")).expect("encrypt");
        let err = decrypt_key_pem(&pem, &pass("incorrect horse battery"), "root key").expect_err("must fail");
        assert!(matches!(err, CaError::WrongPassphrase(ref w) if w == "root key"), "{err}");
        assert!(err.to_string().contains("wrong passphrase"));
    }

    #[test]
    fn short_passphrase_refused_and_debug_redacted() {
        assert!(Passphrase::new("short").is_err());
        let p = pass("a very secret passphrase");
        assert!(!format!("{p:?}").contains("secret"));
    }

    /// A regression input of the `pem_der` fuzz target, without its mode byte.
    fn regression(bytes: &'static [u8]) -> &'static str {
        std::str::from_utf8(&bytes[1..]).expect("PEM text")
    }

    #[test]
    fn plaintext_pkcs8_and_sec1_keys_are_imported() {
        for alg in [KeyAlgorithm::P256, KeyAlgorithm::P384, KeyAlgorithm::Ed25519] {
            let k = generate_key(alg).expect("generate");
            let back = parse_key_pem(&k.serialize_pem(), &pass("correct horse battery"), "k").expect("PKCS#8");
            assert_eq!(back.public_key_raw(), k.public_key_raw());
        }
        // As `openssl ecparam -name prime256v1 -genkey` writes it: EC PARAMETERS, then SEC1.
        let sec1 = regression(include_bytes!("../../fuzz/regressions/pem_der/sec1-with-ec-parameters.bin"));
        let k = parse_key_pem(sec1, &pass("correct horse battery"), "k").expect("SEC1 key");
        assert_eq!(k.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
        let without_params = &sec1[sec1.find("-----BEGIN EC PRIVATE KEY").expect("block")..];
        let k2 = parse_key_pem(without_params, &pass("correct horse battery"), "k").expect("SEC1 key alone");
        assert_eq!(k2.public_key_raw(), k.public_key_raw());
        let two = format!("{}{}", k.serialize_pem(), k.serialize_pem());
        assert!(parse_key_pem(&two, &pass("correct horse battery"), "k").is_err(), "two keys");
    }

    #[test]
    fn costly_key_derivation_parameters_are_refused_at_once() {
        for (input, needle) in [
            (&include_bytes!("../../fuzz/regressions/pem_der/scrypt-n-2-40.pem.bin")[..], "scrypt parameters"),
            (include_bytes!("../../fuzz/regressions/pem_der/scrypt-1gib.pem.bin"), "scrypt parameters"),
            (include_bytes!("../../fuzz/regressions/pem_der/scrypt-p-65535.pem.bin"), "scrypt parameters"),
            (include_bytes!("../../fuzz/regressions/pem_der/pbkdf2-1e8-iterations.pem.bin"), "PBKDF2"),
            (include_bytes!("../../fuzz/regressions/pem_der/pbes1-des.pem.bin"), "PBES1"),
            (
                include_bytes!("../../fuzz/regressions/pem_der/crash-scrypt-cost-zero-panics-in-pkcs5.bin"),
                "invalid scrypt",
            ),
        ] {
            let started = std::time::Instant::now();
            let err =
                parse_key_pem(regression(input), &pass("correct horse battery"), "root key").expect_err("refused");
            assert!(matches!(&err, CaError::Key(m) if m.contains(needle) && m.starts_with("root key")), "{err}");
            assert!(started.elapsed() < std::time::Duration::from_secs(1), "refused before deriving: {err}");
        }
        // Our own settings are well inside the bounds.
        let k = generate_key(KeyAlgorithm::P256).expect("generate");
        let pem = encrypt_key_pem(&k, &pass("correct horse battery")).expect("encrypt");
        parse_key_pem(&pem, &pass("correct horse battery"), "k").expect("our own key opens");
    }

    #[test]
    fn plaintext_key_is_refused_by_decrypt() {
        let k = generate_key(KeyAlgorithm::P256).expect("generate");
        let err = decrypt_key_pem(&k.serialize_pem(), &pass("correct horse battery"), "k").expect_err("plain");
        assert!(matches!(err, CaError::Key(_)), "{err}");
    }
}
