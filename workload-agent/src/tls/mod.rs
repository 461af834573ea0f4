//! The rustls seam: where validated workload credentials meet TLS.
//!
//! Getting a certificate and using it are kept apart. The agent core renews credentials and hands
//! them to a [`CredentialSeam`], which checks them (identity, validity, key, chain, bundle sequence)
//! *before* anything sees them. Accepted material goes to rustls through a resolver and verifiers that
//! read it per handshake, and to every other consumer through `tokio::sync::watch` channels. A
//! `ServerConfig`/`ClientConfig` is therefore built once: new handshakes use the newest SVID and
//! bundle, established connections are untouched, and a refused update changes nothing.
//!
//! Peers are identified the SPIFFE way, by the single `spiffe://` URI SAN of their leaf, never by
//! DNS name; an [`Authorizer`] decides which SPIFFE IDs are welcome. Unlike proxies that read trust
//! roots once at start, the bundle is live too, so a root rotation needs no restart.
//!
//! ```no_run
//! # fn demo(svid: workload_agent::Svid, bundle: workload_agent::TrustBundle) -> Result<(), workload_agent::tls::SeamError> {
//! use workload_agent::tls::{Authorizer, CredentialSeam};
//! let seam = CredentialSeam::new("spiffe://example.org/svc-a")?;
//! seam.publish(svid, bundle)?;
//! let server = seam.server_config(Authorizer::exact(["spiffe://example.org/svc-b"])?)?;
//! # let _ = server; Ok(()) }
//! ```

mod authorizer;
mod error;
mod handshakes;
mod resolver;
mod seam;
mod spiffe_id;
mod trust;
mod verifier;
mod x509;

pub use authorizer::Authorizer;
pub use error::SeamError;
pub use handshakes::{HandshakeCounts, Refusal};
pub use resolver::SvidResolver;
pub use seam::CredentialSeam;
pub use verifier::{SpiffeClientCertVerifier, SpiffeServerCertVerifier};
