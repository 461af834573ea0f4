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
    // With CBC there is no MAC: a wrong passphrase shows up as bad padding or as garbage that does
    // not parse as PKCS#8. Both mean the same thing to the operator.
    let plain = enc.decrypt(pass.0.as_bytes()).map_err(|_| CaError::WrongPassphrase(what.to_owned()))?;
    KeyPair::try_from(plain.as_bytes()).map_err(|_| CaError::WrongPassphrase(what.to_owned()))
}

/// Parses a key for import: an `ENCRYPTED PRIVATE KEY` (decrypted with `pass`) or a plaintext
/// PKCS#8 / SEC1 key, which is accepted once so it can be re-encrypted.
pub fn parse_key_pem(pem: &str, pass: &Passphrase, what: &str) -> Result<KeyPair, CaError> {
    if pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return decrypt_key_pem(pem, pass, what);
    }
    KeyPair::from_pem(pem).map_err(|e| CaError::Key(format!("{what}: {e}")))
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

    #[test]
    fn plaintext_key_is_refused_by_decrypt() {
        let k = generate_key(KeyAlgorithm::P256).expect("generate");
        let err = decrypt_key_pem(&k.serialize_pem(), &pass("correct horse battery"), "k").expect_err("plain");
        assert!(matches!(err, CaError::Key(_)), "{err}");
    }
}
