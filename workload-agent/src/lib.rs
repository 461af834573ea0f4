//! Lanyard's workload agent: obtains a workload identity, renews it before expiry, and hands it to
//! services through files, the SPIFFE Workload API and rustls resolvers that reload in place.
//!
//! Trust boundaries: the agent core ([`agent`]: enrollment, renewal, files) produces credentials;
//! exactly one seam, [`tls::CredentialSeam`], validates them and publishes them to every consumer
//! (rustls configs, the Workload API, files).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod agent;
pub mod config;
pub mod credentials;
pub mod supervise;
pub mod tls;
pub mod workload_api;

pub use agent::Agent;
pub use config::AgentConfig;
pub use credentials::{Svid, TrustBundle};
