//! Lanyard's CA core.
//!
//! Everything that touches a CA private key or the durable record of issuance lives here, and nothing
//! here speaks HTTP. The web edge (`issuer-api`) hands this crate a CSR, a profile, who is asking and
//! which names they proved control of; it gets back a signed chain or a typed [`CaError`].
//!
//! The one narrow way into issuance is [`Authority::issue`]. It runs in the order of a crash-safe CA
//! (reserve the serial and record the intent, sign, record the certificate) so that no certificate is
//! ever returned without a durable record and no serial is ever used twice. An ACME order gets its
//! certificate through the registration authority ([`ra::Registration::finalize`]), which runs the
//! same steps and records the certificate together with the order's new status.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod admin;
mod audit;
mod authority;
mod bundle;
mod crl;
mod csr;
mod error;
pub mod fleet;
mod fsutil;
mod issuance;
mod issuers;
mod keys;
mod names;
mod pem;
mod policy;
mod profile;
pub mod ra;
mod renewal;
pub mod rotation;
mod serial;
pub mod stats;
pub mod store;
pub mod units;
pub mod views;

pub use admin::Admin;
pub use audit::{AuditEvent, Outcome};
pub use authority::{CaMaterial, ImportedCa, InitOptions, create_ca, import_ca};
pub use bundle::{TrustBundle, sha256_fingerprint};
pub use crl::Crl;
pub use csr::{KeyKind, VerifiedCsr, parse_and_verify_csr};
pub use error::{CaError, ErrorKind};
pub use fsutil::write_atomic;
pub use issuance::{Authority, IssuanceStep, IssueRequest, IssuedCertificate, StepHook};
pub use issuers::{ActiveIssuer, IssuerKind, IssuerRecord, IssuerState};
pub use keys::{
    KeyAlgorithm, MAX_PBKDF2_ITERATIONS, MAX_SCRYPT_MEMORY, MAX_SCRYPT_WORK, PASSPHRASE_ENV, Passphrase,
    decrypt_key_pem, encrypt_key_pem, generate_key, parse_key_pem,
};
pub use names::{AuthorizedNames, Name, SpiffeId, check_dns_name};
pub use policy::{
    DEFAULT_RENEWAL_RETRY_WINDOW, DnsPolicy, LifetimePolicy, MAX_CONFIG_DURATION, Policy, check_duration,
    normalize_suffix, suffix_matches,
};
pub use profile::Profile;
pub use serial::Serial;
pub use store::Store;

/// `tracing` filter directives that quiet this crate's database driver (which logs every slow
/// statement at info), for a binary's default filter; the driver is this crate's business.
pub const QUIET_LOG_DIRECTIVES: &str = "sqlx=warn";

/// Re-exported so callers can build keys and parameters without a direct rcgen dependency.
pub use rcgen;
