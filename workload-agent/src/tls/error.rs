//! One error type for the seam. Publishing errors say exactly which check failed and leave the
//! published material untouched. When a handshake refuses a peer for its identity, the `rustls::Error`
//! carries the message of the matching `Peer*` variant.

/// Why the seam refused new material, or why a peer was refused during a handshake.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SeamError {
    /// A string that should be a SPIFFE ID (`spiffe://trust-domain/path`) is not one.
    #[error("invalid SPIFFE ID {id:?}: {reason}")]
    InvalidSpiffeId {
        /// The offending string.
        id: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// An exact-set authorizer was built from no IDs; it would refuse every peer.
    #[error("an exact-set authorizer needs at least one SPIFFE ID")]
    EmptyAuthorizer,
    /// The SVID has no certificates.
    #[error("SVID chain is empty")]
    EmptyChain,
    /// The leaf does not parse or breaks an X509-SVID rule.
    #[error("leaf certificate is not a valid X509-SVID: {reason}")]
    NotAnSvid {
        /// Which rule it breaks.
        reason: String,
    },
    /// The leaf carries another identity than the one this seam serves.
    #[error("SVID is for {got} but this seam serves {expected}")]
    WrongSpiffeId {
        /// The SPIFFE ID in the leaf's URI SAN.
        got: String,
        /// The SPIFFE ID the seam was created for.
        expected: String,
    },
    /// A field of [`crate::Svid`] disagrees with the leaf it describes.
    #[error("Svid.{field} is {stated} but the leaf certificate says {actual}")]
    SvidFieldMismatch {
        /// `spiffe_id`, `not_before` or `not_after`.
        field: &'static str,
        /// The value in the `Svid` struct.
        stated: String,
        /// The value in the certificate.
        actual: String,
    },
    /// The leaf's notBefore is in the future.
    #[error("SVID is not valid yet: notBefore is {not_before}, now is {now} (Unix seconds)")]
    NotYetValid {
        /// The leaf's notBefore, Unix seconds.
        not_before: i64,
        /// The seam's clock, Unix seconds.
        now: i64,
    },
    /// The leaf's notAfter has passed.
    #[error("SVID has expired: notAfter was {not_after}, now is {now} (Unix seconds)")]
    Expired {
        /// The leaf's notAfter, Unix seconds.
        not_after: i64,
        /// The seam's clock, Unix seconds.
        now: i64,
    },
    /// The private key cannot be used by the ring provider.
    #[error("SVID private key cannot be loaded: {0}")]
    UnusableKey(#[source] rustls::Error),
    /// The private key belongs to another certificate.
    #[error("SVID private key does not match the leaf certificate's public key")]
    KeyMismatch,
    /// The bundle is for another trust domain than the seam's SPIFFE ID.
    #[error("trust bundle is for trust domain {got:?} but this seam serves trust domain {expected:?}")]
    WrongTrustDomain {
        /// The bundle's trust domain.
        got: String,
        /// The trust domain of the seam's SPIFFE ID.
        expected: String,
    },
    /// The bundle has no roots; nothing could be verified against it.
    #[error("trust bundle for {trust_domain:?} (sequence {sequence}) has no roots")]
    EmptyBundle {
        /// The bundle's trust domain.
        trust_domain: String,
        /// The bundle's sequence.
        sequence: u64,
    },
    /// A root in the bundle is not a usable trust anchor.
    #[error("trust bundle root #{index} is not a usable trust anchor: {source}")]
    InvalidRoot {
        /// Position of the root in [`crate::TrustBundle::roots`].
        index: usize,
        /// What webpki said.
        #[source]
        source: rustls::Error,
    },
    /// The SVID chain does not verify to any root of the bundle (or not for both TLS roles).
    #[error("SVID chain does not verify to trust bundle sequence {sequence}: {source}")]
    UntrustedChain {
        /// The sequence of the bundle the chain was checked against.
        sequence: u64,
        /// What webpki said.
        #[source]
        source: rustls::Error,
    },
    /// The bundle is older than the one already published.
    #[error("trust bundle sequence {offered} is older than the published sequence {current}")]
    SequenceWentBackwards {
        /// The published bundle's sequence.
        current: u64,
        /// The offered bundle's sequence.
        offered: u64,
    },
    /// The bundle reuses the published sequence number with different roots.
    #[error("trust bundle sequence {sequence} is already published with different roots")]
    SequenceReused {
        /// The reused sequence.
        sequence: u64,
    },
    /// A peer presented an SVID from another trust domain.
    #[error("peer SPIFFE ID {spiffe_id} is not in trust domain {expected:?}")]
    PeerWrongTrustDomain {
        /// The peer's SPIFFE ID.
        spiffe_id: String,
        /// The trust domain this seam verifies.
        expected: String,
    },
    /// A peer presented a valid SVID whose SPIFFE ID the authorizer refused.
    #[error("peer SPIFFE ID {spiffe_id} is not authorized")]
    PeerNotAuthorized {
        /// The peer's SPIFFE ID.
        spiffe_id: String,
    },
    /// A CRL does not parse or is not signed by the root it names; the whole set is refused.
    #[error("CRL #{index} is refused: {reason}")]
    InvalidCrl {
        /// Position of the CRL in the offered set.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// CRLs were offered before any trust bundle: they could not be checked.
    #[error("no trust bundle has been published yet, so CRLs cannot be checked")]
    NoBundle,
    /// rustls refused to build a configuration.
    #[error("building the rustls configuration failed: {0}")]
    Config(#[source] rustls::Error),
}
