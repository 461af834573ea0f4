//! [`CredentialSeam`]: the one gate new credentials pass through. Everything is validated before
//! anything is published, and a refusal leaves the previous material in place, so a bad renewal or a
//! truncated bundle download can never take a working workload offline.
//!
//! Publishing updates two kinds of readers at once:
//! - rustls, through [`SvidResolver`] and the SPIFFE verifiers, which read `ArcSwap`s on every
//!   handshake (new handshakes see new material; established connections keep what they negotiated);
//! - everyone else (Workload API server, file writer), through `tokio::sync::watch` channels.
//!
//! Revocation lists are published the same way ([`CredentialSeam::publish_crls`]): the verifiers
//! check every new handshake against the newest accepted set (see `trust.rs` for the policy).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateRevocationListDer, UnixTime};
use rustls::server::NoServerSessionStorage;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, InconsistentKeys, ServerConfig};
use tokio::sync::watch;

use super::spiffe_id::SpiffeId;
use super::trust::{RevocationSet, TrustAnchors};
use super::x509::{SvidLeaf, inspect_leaf};
use super::{Authorizer, SeamError, SpiffeClientCertVerifier, SpiffeServerCertVerifier, SvidResolver};
use crate::credentials::{Svid, TrustBundle};

/// What handshakes read: the prepared key and the prepared trust anchors (roots and CRLs).
#[derive(Debug, Default)]
pub(crate) struct Live {
    pub(crate) certified: ArcSwapOption<CertifiedKey>,
    pub(crate) trust: ArcSwapOption<TrustAnchors>,
    /// What the verifiers decided, for the agent's trust reports.
    pub(crate) handshakes: super::handshakes::HandshakeTally,
}

/// Validates and publishes the SVID and trust bundle of one workload identity. Cheap to clone; all
/// clones share the same published material.
#[derive(Debug, Clone)]
pub struct CredentialSeam {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    expected: SpiffeId,
    provider: Arc<CryptoProvider>,
    live: Arc<Live>,
    /// Serializes publishers so that "check against current, then replace" is atomic.
    publishing: Mutex<()>,
    svid_tx: watch::Sender<Option<Arc<Svid>>>,
    bundle_tx: watch::Sender<Option<Arc<TrustBundle>>>,
    crl_tx: watch::Sender<Vec<CertificateRevocationListDer<'static>>>,
}

impl CredentialSeam {
    /// A seam that will only ever publish SVIDs for `expected_spiffe_id` (`spiffe://td/path`) and
    /// bundles of its trust domain.
    pub fn new(expected_spiffe_id: &str) -> Result<Self, SeamError> {
        let expected = SpiffeId::parse(expected_spiffe_id)?;
        Ok(CredentialSeam {
            inner: Arc::new(Inner {
                expected,
                provider: Arc::new(rustls::crypto::ring::default_provider()),
                live: Arc::default(),
                publishing: Mutex::new(()),
                svid_tx: watch::Sender::new(None),
                bundle_tx: watch::Sender::new(None),
                crl_tx: watch::Sender::new(Vec::new()),
            }),
        })
    }

    /// The SPIFFE ID this seam serves.
    pub fn spiffe_id(&self) -> &str {
        self.inner.expected.as_str()
    }

    /// Handshakes this seam's verifiers accepted and refused since it was made (totals).
    pub fn handshake_counts(&self) -> super::HandshakeCounts {
        self.inner.live.handshakes.snapshot()
    }

    /// The running handshake totals, for tests that count without a handshake.
    #[cfg(test)]
    pub(crate) fn tally(&self) -> &super::handshakes::HandshakeTally {
        &self.inner.live.handshakes
    }

    /// The trust domain of [`Self::spiffe_id`].
    pub fn trust_domain(&self) -> &str {
        self.inner.expected.trust_domain()
    }

    /// Validates `svid` against `bundle` and publishes both.
    ///
    /// Checks, in order: the bundle is for our trust domain, has usable roots and does not go back in
    /// sequence (an equal sequence must carry identical roots); the leaf is an X509-SVID for our SPIFFE
    /// ID and agrees with the `Svid` fields; it is within its validity window now; the key matches the
    /// leaf; the chain verifies to the bundle for both serverAuth and clientAuth. On error nothing
    /// changes.
    pub fn publish(&self, svid: Svid, bundle: TrustBundle) -> Result<(), SeamError> {
        let _publishing = self.lock();
        let (anchors, bundle_changed) = self.accept_bundle(bundle)?;
        let certified = self.validate_svid(&svid, &anchors)?;
        if bundle_changed {
            self.commit_bundle(anchors);
        }
        tracing::info!(spiffe_id = %svid.spiffe_id, not_after = svid.not_after, "published SVID");
        self.inner.live.certified.store(Some(certified));
        self.inner.svid_tx.send_replace(Some(Arc::new(svid)));
        Ok(())
    }

    /// Publishes a new bundle on its own (a root rotation). The published SVID, if any, must still
    /// chain to it, so a bundle that drops our own root is refused. That check is made at a moment
    /// inside the SVID's validity: an expired SVID is the renewal loop's problem and must not also
    /// block the bundle we need to verify peers.
    pub fn publish_bundle(&self, bundle: TrustBundle) -> Result<(), SeamError> {
        let _publishing = self.lock();
        let (anchors, bundle_changed) = self.accept_bundle(bundle)?;
        if !bundle_changed {
            return Ok(());
        }
        if let Some(svid) = self.inner.svid_tx.borrow().clone() {
            let at = now_unix().clamp(svid.not_before, svid.not_after);
            match anchors.verify_own_chain(&svid.chain, unix_time(at)) {
                // Our own SVID being revoked is the renewal loop's problem; the bundle is still
                // needed to verify peers.
                Err(e) if is_revoked(&e) => tracing::warn!("our own SVID is revoked; it needs replacing"),
                other => other?,
            }
        }
        self.commit_bundle(anchors);
        Ok(())
    }

    /// Publishes a new set of CRLs (every current CRL of the trust domain, as the CA lists them):
    /// from the next handshake on, the verifiers refuse peers whose leaf or intermediate is on
    /// one. Returns whether the set changed (an identical set is a no-op).
    ///
    /// Every CRL must parse, and a CRL issued by a root of the bundle must carry a valid signature
    /// of that root; otherwise the whole set is refused and the previous one stays in force (a
    /// refresh can never drop revocations by accident). CRLs of intermediates are verified by
    /// webpki against the chain's intermediate at every use. Our own SVID showing up as revoked
    /// is logged, not refused: peers will refuse it whatever we do, and we must refuse others.
    pub fn publish_crls(&self, crls: Vec<CertificateRevocationListDer<'static>>) -> Result<bool, SeamError> {
        let _publishing = self.lock();
        let current = self.inner.live.trust.load_full().ok_or(SeamError::NoBundle)?;
        if current.crls.der == crls {
            return Ok(false);
        }
        for (index, crl) in crls.iter().enumerate() {
            check_root_signed_crl(index, crl.as_ref(), &current.bundle.roots)?;
        }
        let set = Arc::new(RevocationSet::parse(crls)?);
        let anchors = Arc::new(current.with_crls(set.clone())?);
        if let Some(svid) = self.inner.svid_tx.borrow().clone() {
            let at = now_unix().clamp(svid.not_before, svid.not_after);
            if let Err(e) = anchors.verify_own_chain(&svid.chain, unix_time(at)) {
                tracing::warn!(error = %e, "our own SVID does not verify under the new CRLs; it needs replacing");
            }
        }
        tracing::info!(crls = set.len(), sequence = anchors.sequence(), "published revocation lists");
        self.inner.live.trust.store(Some(anchors));
        self.inner.crl_tx.send_replace(set.der.clone());
        Ok(true)
    }

    /// Whether the published SVID is revoked under the CRLs in force (its holder should renew at
    /// once: peers that know the CRLs refuse it).
    pub fn svid_revoked(&self) -> bool {
        let (Some(anchors), Some(svid)) = (self.inner.live.trust.load_full(), self.inner.svid_tx.borrow().clone())
        else {
            return false;
        };
        let at = now_unix().clamp(svid.not_before, svid.not_after);
        anchors.verify_own_chain(&svid.chain, unix_time(at)).is_err_and(|e| is_revoked(&e))
    }

    /// Every published CRL set (DER, as the CA listed them), starting with the current one
    /// (empty before the first).
    pub fn crl_updates(&self) -> watch::Receiver<Vec<CertificateRevocationListDer<'static>>> {
        self.inner.crl_tx.subscribe()
    }

    /// Every published SVID, starting with the current one (`None` before the first publish).
    pub fn svid_updates(&self) -> watch::Receiver<Option<Arc<Svid>>> {
        self.inner.svid_tx.subscribe()
    }

    /// Every published trust bundle, starting with the current one (`None` before the first publish).
    pub fn bundle_updates(&self) -> watch::Receiver<Option<Arc<TrustBundle>>> {
        self.inner.bundle_tx.subscribe()
    }

    /// Certificate resolver for both rustls server and client configs; follows every publish.
    pub fn resolver(&self) -> Arc<SvidResolver> {
        Arc::new(SvidResolver::new(self.inner.live.clone()))
    }

    /// Verifier for a rustls **client** config: checks the server against the current bundle and
    /// `authorizer`, ignoring the DNS name dialed.
    pub fn server_verifier(&self, authorizer: Authorizer) -> Arc<SpiffeServerCertVerifier> {
        Arc::new(SpiffeServerCertVerifier::new(
            self.inner.live.clone(),
            self.trust_domain(),
            authorizer,
            self.inner.provider.clone(),
        ))
    }

    /// Verifier for a rustls **server** config: mandatory client certificate, checked against the
    /// current bundle and `authorizer`.
    pub fn client_verifier(&self, authorizer: Authorizer) -> Arc<SpiffeClientCertVerifier> {
        Arc::new(SpiffeClientCertVerifier::new(
            self.inner.live.clone(),
            self.trust_domain(),
            authorizer,
            self.inner.provider.clone(),
        ))
    }

    /// A TLS 1.3 server config (ring) that presents the current SVID and requires clients with an SVID
    /// `authorizer` admits. Build it once; it follows every publish.
    ///
    /// Session resumption is off: a resumed session skips certificate verification, so it would
    /// outlive a root removed from the bundle and keep showing a peer the SVID we rotated away from.
    pub fn server_config(&self, authorizer: Authorizer) -> Result<ServerConfig, SeamError> {
        let mut config = ServerConfig::builder_with_provider(self.inner.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(SeamError::Config)?
            .with_client_cert_verifier(self.client_verifier(authorizer))
            .with_cert_resolver(self.resolver());
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(config)
    }

    /// A TLS 1.3 client config (ring) that presents the current SVID and accepts servers with an SVID
    /// `authorizer` admits. The server name given to the connector is not checked (any valid name or
    /// IP will do). Build it once; it follows every publish. Resumption is off, as for the server.
    pub fn client_config(&self, authorizer: Authorizer) -> Result<ClientConfig, SeamError> {
        let mut config = ClientConfig::builder_with_provider(self.inner.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(SeamError::Config)?
            .dangerous()
            .with_custom_certificate_verifier(self.server_verifier(authorizer))
            .with_client_cert_resolver(self.resolver());
        config.resumption = Resumption::disabled();
        Ok(config)
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // The guarded value is `()`, so a panic while holding the lock cannot leave it inconsistent.
        self.inner.publishing.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Checks `bundle` against the published one and prepares its webpki state. Returns the anchors to
    /// use and whether they differ from the published ones (an identical bundle reuses them).
    fn accept_bundle(&self, bundle: TrustBundle) -> Result<(Arc<TrustAnchors>, bool), SeamError> {
        let expected = self.trust_domain();
        if bundle.trust_domain != expected {
            return Err(SeamError::WrongTrustDomain { got: bundle.trust_domain, expected: expected.to_owned() });
        }
        let current = self.inner.live.trust.load_full();
        let crls = current.as_ref().map(|c| c.crls.clone()).unwrap_or_default();
        if let Some(current) = current {
            let current_sequence = current.sequence();
            if bundle.sequence < current_sequence {
                return Err(SeamError::SequenceWentBackwards { current: current_sequence, offered: bundle.sequence });
            }
            if bundle.sequence == current_sequence {
                return if bundle == *current.bundle {
                    Ok((current, false))
                } else {
                    Err(SeamError::SequenceReused { sequence: bundle.sequence })
                };
            }
        }
        let anchors = TrustAnchors::build(Arc::new(bundle), crls, &self.inner.provider)?;
        Ok((Arc::new(anchors), true))
    }

    fn commit_bundle(&self, anchors: Arc<TrustAnchors>) {
        let bundle = anchors.bundle.clone();
        tracing::info!(trust_domain = %bundle.trust_domain, sequence = bundle.sequence, roots = bundle.roots.len(), "published trust bundle");
        // Anchors first: by the time a subscriber hears of the bundle, handshakes already use it.
        self.inner.live.trust.store(Some(anchors));
        self.inner.bundle_tx.send_replace(Some(bundle));
    }

    /// All SVID checks; returns the `CertifiedKey` rustls will serve.
    fn validate_svid(&self, svid: &Svid, anchors: &TrustAnchors) -> Result<Arc<CertifiedKey>, SeamError> {
        let leaf_der = svid.chain.first().ok_or(SeamError::EmptyChain)?;
        let leaf = inspect_leaf(leaf_der)?;
        if leaf.spiffe_id != self.inner.expected {
            return Err(SeamError::WrongSpiffeId {
                got: leaf.spiffe_id.as_str().to_owned(),
                expected: self.spiffe_id().to_owned(),
            });
        }
        check_fields(svid, &leaf)?;
        let now = now_unix();
        if now < leaf.not_before {
            return Err(SeamError::NotYetValid { not_before: leaf.not_before, now });
        }
        if now > leaf.not_after {
            return Err(SeamError::Expired { not_after: leaf.not_after, now });
        }

        let key =
            self.inner.provider.key_provider.load_private_key(svid.key.clone_key()).map_err(SeamError::UnusableKey)?;
        let certified = CertifiedKey::new(svid.chain.clone(), key);
        match certified.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => return Err(SeamError::KeyMismatch),
            // Includes `InconsistentKeys::Unknown`: a key we cannot compare is a key we do not serve.
            Err(other) => return Err(SeamError::UnusableKey(other)),
        }

        anchors.verify_own_chain(&svid.chain, unix_time(now))?;
        Ok(Arc::new(certified))
    }
}

/// The `Svid` fields are what file and Workload API consumers read; they must describe the leaf.
fn check_fields(svid: &Svid, leaf: &SvidLeaf) -> Result<(), SeamError> {
    let mismatch = |field, stated: &dyn ToString, actual: &dyn ToString| SeamError::SvidFieldMismatch {
        field,
        stated: stated.to_string(),
        actual: actual.to_string(),
    };
    if svid.spiffe_id != leaf.spiffe_id.as_str() {
        return Err(mismatch("spiffe_id", &svid.spiffe_id, &leaf.spiffe_id.as_str()));
    }
    if svid.not_before != leaf.not_before {
        return Err(mismatch("not_before", &svid.not_before, &leaf.not_before));
    }
    if svid.not_after != leaf.not_after {
        return Err(mismatch("not_after", &svid.not_after, &leaf.not_after));
    }
    Ok(())
}

fn is_revoked(e: &SeamError) -> bool {
    matches!(
        e,
        SeamError::UntrustedChain { source: rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked), .. }
    )
}

/// A CRL whose issuer is a root of the bundle must be signed by that root.
fn check_root_signed_crl(
    index: usize,
    der: &[u8],
    roots: &[rustls::pki_types::CertificateDer<'_>],
) -> Result<(), SeamError> {
    use x509_parser::prelude::FromDer;
    let invalid = |reason: String| SeamError::InvalidCrl { index, reason };
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(der)
        .map_err(|e| invalid(format!("does not parse: {e}")))?;
    for root in roots {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(root.as_ref()) else { continue };
        if cert.subject().as_raw() == crl.issuer().as_raw() {
            return crl
                .verify_signature(cert.public_key())
                .map_err(|e| invalid(format!("not signed by the bundle root that it names: {e}")));
        }
    }
    Ok(())
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX))
}

fn unix_time(secs: i64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}
