//! Lanyard's workload agent: obtains a workload identity, renews it before expiry, and hands it to
//! services through files, the SPIFFE Workload API and rustls resolvers that reload in place.
//!
//! Not built yet: this crate holds the place of the workload-identity work in the workspace layout,
//! and contains no functionality today.
#![forbid(unsafe_code)]
