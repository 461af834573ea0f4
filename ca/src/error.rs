//! The one error type of the CA core. Variants carry enough context to explain themselves; the web
//! edge maps [`CaError::kind`] to protocol errors and never shows internal detail to clients.

use std::path::PathBuf;

/// Coarse classification used by callers to decide how to answer (e.g. which ACME error type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request itself is malformed (bad DER, bad signature, unsupported key).
    BadRequest,
    /// The request is well formed but policy does not allow it.
    Rejected,
    /// The CA cannot issue right now (store down, no active issuer); retrying later may work.
    Unavailable,
    /// Configuration or operator input is wrong.
    Config,
    /// Something inside the CA failed; details go to logs, not to clients.
    Internal,
    /// The requester's credential (e.g. the certificate presented for renewal) is not acceptable.
    Unauthenticated,
}

impl ErrorKind {
    /// The request was refused for what it asked (malformed, or not allowed), not failed by the
    /// CA: audited as `refused`, and no fault of the issuer that would have signed it.
    pub fn is_refusal(self) -> bool {
        matches!(self, ErrorKind::BadRequest | ErrorKind::Rejected)
    }
}

/// Errors from the CA core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// The CSR is not valid DER / PEM or not a PKCS#10 request.
    #[error("malformed CSR: {0}")]
    MalformedCsr(String),
    /// The CSR's self-signature does not verify with the key it carries.
    #[error("CSR signature does not verify")]
    BadCsrSignature,
    /// The CSR is signed with an algorithm we do not accept (e.g. SHA-1).
    #[error("unsupported CSR signature algorithm {0}")]
    UnsupportedSignatureAlgorithm(String),
    /// The subject key type or size is not acceptable.
    #[error("unsupported public key: {0}")]
    UnsupportedKey(String),
    /// A requested name is malformed or of a type the profile does not allow.
    #[error("bad name {name:?}: {reason}")]
    BadName {
        /// The name as requested.
        name: String,
        /// Why it is refused.
        reason: String,
    },
    /// A requested name is well formed but policy forbids it for this requester.
    #[error("name {name:?} not allowed: {reason}")]
    NameNotAllowed {
        /// The name as requested.
        name: String,
        /// Which rule refused it.
        reason: String,
    },
    /// The request does not have the identity shape the profile needs.
    #[error("bad identity request: {0}")]
    BadIdentity(String),
    /// The requested lifetime exceeds what the profile allows.
    #[error("requested lifetime {requested_secs}s exceeds the maximum {max_secs}s of profile {profile}")]
    LifetimeTooLong {
        /// Profile name.
        profile: &'static str,
        /// Requested lifetime in seconds.
        requested_secs: i64,
        /// Maximum in seconds.
        max_secs: i64,
    },
    /// No issuer is active, so nothing can be signed.
    #[error("no active issuer")]
    NoActiveIssuer,
    /// The active issuer has too little life left to sign anything useful.
    #[error("the active issuer expires at {not_after} and cannot sign further certificates")]
    IssuerExpiring {
        /// When the issuer expires (RFC 3339).
        not_after: String,
    },
    /// The durable store could not be reached or refused the write; nothing was issued.
    #[error("certificate store unavailable, nothing was issued: {0}")]
    StoreUnavailable(String),
    /// A store read or write failed for a reason other than availability.
    #[error("certificate store error: {0}")]
    Store(String),
    /// The passphrase does not decrypt the key.
    #[error("wrong passphrase, or the encrypted key {0} is corrupted")]
    WrongPassphrase(String),
    /// No passphrase was supplied where one is required.
    #[error("no CA passphrase: set {env} or pass a passphrase file")]
    MissingPassphrase {
        /// The environment variable that was consulted.
        env: String,
    },
    /// A key could not be generated, parsed or used.
    #[error("key error: {0}")]
    Key(String),
    /// A certificate given to us (e.g. for import) is unusable.
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
    /// Signing failed inside the crypto library.
    #[error("signing failed: {0}")]
    Signing(String),
    /// Bad configuration or operator input.
    #[error("configuration error: {0}")]
    Config(String),
    /// A credential presented to the CA (a certificate for renewal) is not one it accepts.
    #[error("not authenticated: {0}")]
    Unauthenticated(String),
    /// A workload certificate presented for renewal was already renewed (its successor is the
    /// one to renew from), and this is not a retry the lost-response rule accepts. Refusing it
    /// keeps one live successor per certificate: a stolen certificate cannot fork the identity.
    #[error("certificate {serial} was already renewed: {detail}")]
    Superseded {
        /// The certificate presented.
        serial: String,
        /// Why a repeated renewal is refused (successor, when, the retry window).
        detail: String,
    },
    /// An ACME order left `ready` while it was being finalized (another finalize won, or it was
    /// invalidated or expired): the certificate signed for it was not recorded and is never
    /// returned.
    #[error("order {order} is no longer ready; it was finalized or invalidated concurrently")]
    OrderNotReady {
        /// The order.
        order: String,
    },
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What we were doing.
        action: &'static str,
        /// Which file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl CaError {
    /// Coarse classification for callers that map errors to protocol answers.
    pub fn kind(&self) -> ErrorKind {
        use CaError::*;
        match self {
            MalformedCsr(_)
            | BadCsrSignature
            | UnsupportedSignatureAlgorithm(_)
            | UnsupportedKey(_)
            | BadName { .. }
            | BadIdentity(_) => ErrorKind::BadRequest,
            NameNotAllowed { .. } | LifetimeTooLong { .. } | Superseded { .. } | OrderNotReady { .. } => {
                ErrorKind::Rejected
            }
            NoActiveIssuer | IssuerExpiring { .. } | StoreUnavailable(_) => ErrorKind::Unavailable,
            WrongPassphrase(_) | MissingPassphrase { .. } | InvalidCertificate(_) | Config(_) => ErrorKind::Config,
            Store(_) | Key(_) | Signing(_) | Io { .. } => ErrorKind::Internal,
            Unauthenticated(_) => ErrorKind::Unauthenticated,
        }
    }

    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| CaError::Io { action, path, source }
    }
}
