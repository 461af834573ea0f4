//! The agent core: bootstrap trust, obtain an identity, keep it renewed, and hand every new
//! credential to the one seam ([`crate::tls::CredentialSeam`]); files, the Workload API and rustls
//! configs all follow the seam.
//!
//! Failure policy: a failed renewal never discards the current certificate; the agent retries with
//! capped exponential backoff plus jitter, never waiting so long that the certificate could lapse
//! while the CA answers again, and exports how close expiry is.

pub mod ca_client;
pub mod cert;
pub mod enroll;
pub mod files;
pub mod http;
pub mod metrics;
pub mod notices;
pub mod report;
pub mod schedule;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tracing::{info, warn};

use self::ca_client::{CaClient, RenewError};
use self::enroll::{EnrollError, Proof};
use self::metrics::Metrics;
use crate::config::AgentConfig;
use crate::credentials::{Svid, TrustBundle};
use crate::tls::CredentialSeam;

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A uniform random number in [0, 1).
fn unit() -> f64 {
    let mut b = [0u8; 8];
    // A failed fill leaves zeros: no jitter, which is still a correct schedule.
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).ok();
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// The workload agent.
#[derive(Debug, Clone)]
pub struct Agent {
    cfg: AgentConfig,
    client: CaClient,
    seam: CredentialSeam,
    metrics: Arc<Metrics>,
    /// The registry `metrics` is registered in, which the metrics listener renders.
    registry: Arc<metrics::Registry>,
}

/// The current identity and when to renew it.
struct Current {
    svid: Svid,
    planned: i64,
    ari: Option<i64>,
}

impl Agent {
    /// Builds an agent from a validated configuration.
    pub fn new(cfg: AgentConfig) -> anyhow::Result<Agent> {
        cfg.validate()?;
        let seam = CredentialSeam::new(&cfg.spiffe_id).map_err(|e| anyhow!("spiffe_id: {e}"))?;
        let mut client = CaClient::new(&cfg.ca_url, &cfg.pin(), seam.trust_domain(), cfg.renewal.request_timeout);
        if cfg.renewal.trust_reports {
            client = client.with_reporter(Arc::new(report::TrustReporter::new(seam.clone())));
        }
        let (mut registry, metrics) = metrics::registry();
        metrics::register_handshakes(&mut registry, seam.clone());
        metrics.started.store(now(), Ordering::Relaxed);
        Ok(Agent { cfg, client, seam, metrics, registry: Arc::new(registry) })
    }

    /// The seam in-process consumers build their rustls configs from.
    pub fn seam(&self) -> &CredentialSeam {
        &self.seam
    }

    /// The agent's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The registry the agent's metrics are in (what `/metrics` serves).
    pub fn registry(&self) -> Arc<metrics::Registry> {
        self.registry.clone()
    }

    /// The exposition text of the agent's registry.
    pub fn render_metrics(&self) -> String {
        metrics::render(&self.registry)
    }

    fn backoff(&self, attempt: u32, until_expiry: Duration) -> Duration {
        let r = &self.cfg.renewal;
        schedule::backoff(attempt, r.retry_initial, r.retry_max, until_expiry, unit())
    }

    fn proof(&self) -> anyhow::Result<Option<Proof>> {
        let a = &self.cfg.attestation;
        if let Some(t) = &a.join_token {
            return Ok(Some(Proof::JoinToken(t.trim().to_owned())));
        }
        if let Some(f) = &a.join_token_file {
            let t = std::fs::read_to_string(f).with_context(|| format!("reading join token {}", f.display()))?;
            return Ok(Some(Proof::JoinToken(t.trim().to_owned())));
        }
        if let Some(f) = &a.jwt_file {
            // Re-read every time: projected service-account tokens are rotated in place.
            let t = std::fs::read_to_string(f).with_context(|| format!("reading JWT {}", f.display()))?;
            return Ok(Some(Proof::Jwt(t.trim().to_owned())));
        }
        Ok(None)
    }

    fn make_svid(&self, chain: Vec<CertificateDer<'static>>, key: Vec<u8>) -> anyhow::Result<Svid> {
        let leaf = chain.first().ok_or_else(|| anyhow!("empty chain"))?;
        let info = cert::leaf_info(leaf.as_ref())?;
        Ok(Svid {
            spiffe_id: info.spiffe_id,
            chain,
            key: PrivateKeyDer::Pkcs8(key.into()),
            not_after: info.not_after,
            not_before: info.not_before,
        })
    }

    /// Publishes through the seam (which validates); if the chain does not verify, the bundle may
    /// be stale (a root rotation): refresh it once and try again.
    async fn publish(&self, svid: Svid, bundle: &mut TrustBundle) -> anyhow::Result<()> {
        match self.seam.publish(svid.clone(), bundle.clone()) {
            Ok(()) => Ok(()),
            Err(first) => {
                let fresh = self.client.fetch_bundle(&bundle.roots).await.context("refreshing the trust bundle")?;
                self.seam.publish(svid, fresh.bundle.clone()).map_err(|e| anyhow!("{e} (before refresh: {first})"))?;
                *bundle = fresh.bundle;
                Ok(())
            }
        }
    }

    /// Reads a previous identity from the output files, if it is still usable: restarts must not
    /// burn a one-time join token.
    fn load_from_files(&self) -> Option<Svid> {
        let (Some(k), Some(c)) = (&self.cfg.output.key_file, &self.cfg.output.cert_file) else { return None };
        let chain = cert::chain_from_pem(&std::fs::read(c).ok()?).ok()?;
        let key = cert::key_from_pem(&std::fs::read(k).ok()?).ok()?;
        let svid = self.make_svid(chain, key.secret_der().to_vec()).ok()?;
        (svid.spiffe_id == self.cfg.spiffe_id && svid.not_after > now() + 5).then_some(svid)
    }

    async fn enroll(&self, bundle: &TrustBundle) -> Result<Svid, EnrollError> {
        let proof = self
            .proof()
            .map_err(EnrollError::Transient)?
            .ok_or_else(|| EnrollError::Refused("no [attestation] configured and no usable certificate".into()))?;
        let (key, csr) = enroll::new_key_and_csr(&self.cfg.spiffe_id).map_err(EnrollError::Transient)?;
        let tls = http::tls_config(&bundle.roots, None).map_err(EnrollError::Transient)?;
        let pem = enroll::enroll(
            tls,
            self.client.base(),
            &self.cfg.spiffe_id,
            &proof,
            &csr,
            self.cfg.renewal.request_timeout,
        )
        .await?;
        let chain = cert::chain_from_pem(&pem).map_err(EnrollError::Transient)?;
        self.metrics.enrollments.inc();
        self.make_svid(chain, key).map_err(EnrollError::Transient)
    }

    /// One renewal: mTLS with the current certificate; when the CA refuses it (expired, revoked)
    /// and an attestation is available, enroll again.
    async fn renew_once(&self, current: &Svid, bundle: &TrustBundle) -> anyhow::Result<Svid> {
        if current.not_after > now() {
            let (key, csr) = enroll::new_key_and_csr(&self.cfg.spiffe_id)?;
            match self.client.renew(bundle, current, csr).await {
                Ok(chain) => return self.make_svid(chain, key),
                Err(RenewError::Transient(e)) => return Err(e),
                Err(RenewError::Refused(why)) => {
                    warn!(reason = %why, "the CA refused to renew the current certificate; enrolling again");
                }
            }
        }
        self.enroll(bundle).await.map_err(|e| anyhow!("{e}"))
    }

    fn plan(&self, svid: Svid) -> Current {
        let r = &self.cfg.renewal;
        let planned = schedule::renewal_time(svid.not_before, svid.not_after, r.fraction, r.jitter, unit());
        self.metrics.expiry.set(svid.not_after);
        info!(not_after = svid.not_after, renew_in_s = planned - now(), "certificate in place; renewal planned");
        Current { svid, planned, ari: None }
    }

    /// Runs until `shutdown` resolves. Returns an error only for conditions retrying cannot fix
    /// (for example an attestation the CA refuses when there is no certificate to fall back on).
    ///
    /// Three phases: [`Agent::bootstrap`] trust from the pinned root, [`Agent::obtain`] a first
    /// identity, [`Agent::keep_fresh`] until shutdown. Files follow the seam meanwhile, as a
    /// supervised task of their own ([`files::follow_seam`]).
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        let o = &self.cfg.output;
        let writes_files =
            o.key_file.is_some() || o.cert_file.is_some() || o.bundle_file.is_some() || o.crl_file.is_some();
        let files = writes_files.then(|| {
            let (seam, output, reload, metrics) =
                (self.seam.clone(), self.cfg.output.clone(), self.cfg.reload.clone(), self.metrics.clone());
            self.metrics.tasks.spawn("files", async move {
                files::follow_seam(seam, output, reload, metrics).await;
                Err(anyhow!("the credential seam closed"))
            })
        });
        let result = self.drive(&mut shutdown).await;
        if let Some(files) = files {
            // Let the writer take what was published last before it is stopped.
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
            files.stop().await;
        }
        result
    }

    async fn drive<F: Future<Output = ()>>(&self, shutdown: &mut Pin<&mut F>) -> anyhow::Result<()> {
        let Some((mut bundle, hint)) = self.bootstrap(shutdown).await else { return Ok(()) };
        let Some(svid) = self.obtain(&mut bundle, shutdown).await? else { return Ok(()) };
        self.keep_fresh(svid, bundle, hint, shutdown).await
    }

    /// Phase 1: the trust bundle, from the CA whose root matches the pinned fingerprint; retried
    /// with backoff until it works or shutdown (`None`).
    async fn bootstrap<F: Future<Output = ()>>(
        &self,
        shutdown: &mut Pin<&mut F>,
    ) -> Option<(TrustBundle, Option<Duration>)> {
        let mut attempt = 0;
        let (bundle, hint) = loop {
            match self.client.bootstrap().await {
                Ok(b) => break (b.bundle, b.refresh_hint),
                Err(e) => {
                    let wait = self.backoff(attempt, Duration::from_secs(3600));
                    warn!(error = %format!("{e:#}"), retry_in_ms = crate::agent::schedule::millis(wait), "trust bootstrap failed");
                    attempt += 1;
                    tokio::select! { () = tokio::time::sleep(wait) => {}, () = shutdown.as_mut() => return None }
                }
            }
        };
        self.metrics.bundle_sequence.set(bundle.sequence);
        info!(sequence = bundle.sequence, roots = bundle.roots.len(), "trust bootstrapped from the pinned root");
        Some((bundle, hint))
    }

    /// Phase 2: an identity, from disk if still good, else by enrollment, published through the
    /// seam (`None`: shutdown came first).
    async fn obtain<F: Future<Output = ()>>(
        &self,
        bundle: &mut TrustBundle,
        shutdown: &mut Pin<&mut F>,
    ) -> anyhow::Result<Option<Svid>> {
        let mut from_disk = self.load_from_files();
        let mut attempt = 0;
        loop {
            if let Some(s) = from_disk.take() {
                match self.publish(s.clone(), bundle).await {
                    Ok(()) => {
                        info!("reusing the certificate on disk");
                        return Ok(Some(s));
                    }
                    Err(e) => warn!(error = %format!("{e:#}"), "the certificate on disk is not usable; enrolling"),
                }
            }
            match self.enroll(bundle).await {
                Ok(s) => match self.publish(s.clone(), bundle).await {
                    Ok(()) => {
                        self.metrics.renewals_ok.inc();
                        self.metrics.last_success.set(now());
                        return Ok(Some(s));
                    }
                    Err(e) => warn!(error = %format!("{e:#}"), "the CA's certificate did not validate"),
                },
                Err(EnrollError::Refused(why)) => bail!("enrollment refused: {why}"),
                Err(EnrollError::Transient(e)) => warn!(error = %format!("{e:#}"), "enrollment failed; retrying"),
            }
            self.metrics.renewals_failed.inc();
            let wait = self.backoff(attempt, Duration::from_secs(3600));
            attempt += 1;
            tokio::select! { () = tokio::time::sleep(wait) => {}, () = shutdown.as_mut() => return Ok(None) }
        }
    }

    /// Phase 3: keep the identity fresh until shutdown: on schedule, on the CA's renewalInfo, or
    /// at once on a push notice; refresh the bundle and CRLs on the CA's hint.
    async fn keep_fresh<F: Future<Output = ()>>(
        &self,
        svid: Svid,
        mut bundle: TrustBundle,
        mut hint: Option<Duration>,
        shutdown: &mut Pin<&mut F>,
    ) -> anyhow::Result<()> {
        let mut cur = self.plan(svid);
        let mut notices = notices::Notices::start(
            self.client.clone(),
            self.cfg.renewal.notices,
            self.cfg.renewal.notices_unsupported_retry,
            self.cfg.renewal.notices_wait,
        );
        let mut failures: u32 = 0;
        let mut retry_at: Option<i64> = None;
        let mut next_refresh = tokio::time::Instant::now();
        loop {
            notices.update(&cur.svid, &bundle);
            let due = retry_at.unwrap_or_else(|| cur.ari.map_or(cur.planned, |a| a.min(cur.planned)));
            let until_due = Duration::from_secs(u64::try_from(due - now()).unwrap_or(0));
            tokio::select! {
                () = tokio::time::sleep(until_due) => {}
                () = tokio::time::sleep_until(next_refresh) => {
                    let refresh = hint.unwrap_or(self.cfg.renewal.max_refresh).min(self.cfg.renewal.max_refresh);
                    next_refresh = tokio::time::Instant::now() + refresh.max(Duration::from_secs(1));
                    self.refresh(&mut bundle, &mut hint, &mut cur).await;
                    continue;
                }
                n = notices.next() => {
                    if cur.svid.chain.first() == Some(&n.leaf) {
                        cur.suggest(n.start, n.end, "the CA asks for an early renewal (push notice)");
                    }
                    continue;
                }
                () = shutdown.as_mut() => return Ok(()),
            }
            match self.renew_once(&cur.svid, &bundle).await {
                Ok(s) => match self.publish(s.clone(), &mut bundle).await {
                    Ok(()) => {
                        failures = 0;
                        retry_at = None;
                        self.metrics.renewals_ok.inc();
                        self.metrics.last_success.set(now());
                        cur = self.plan(s);
                        continue;
                    }
                    Err(e) => {
                        warn!(error = %format!("{e:#}"), "the renewed certificate did not validate; keeping the current one")
                    }
                },
                Err(e) => warn!(error = %format!("{e:#}"), "renewal failed; keeping the current certificate"),
            }
            self.metrics.renewals_failed.inc();
            let left = Duration::from_secs(u64::try_from(cur.svid.not_after - now()).unwrap_or(0));
            let wait = self.backoff(failures, left);
            failures = failures.saturating_add(1);
            retry_at = Some(now().saturating_add(i64::try_from(wait.as_secs()).unwrap_or(i64::MAX)));
            if wait < Duration::from_secs(1) {
                tokio::select! { () = tokio::time::sleep(wait) => {}, () = shutdown.as_mut() => return Ok(()) }
                retry_at = Some(now());
            }
            warn!(retry_in_ms = crate::agent::schedule::millis(wait), expires_in_s = left.as_secs(), "will retry");
        }
    }

    /// Refreshes the CRLs the verifiers check peers against (`/crls.pem`, over a connection verified
    /// with the bundle). On any failure the last known CRLs stay in force, never fewer: the
    /// failure is counted and logged with the age of the state in force, which the metrics export.
    async fn refresh_crls(&self, bundle: &TrustBundle) {
        let result = match self.client.fetch_crls(&bundle.roots).await {
            Ok(crls) => self.seam.publish_crls(crls.clone()).map(|changed| (crls, changed)).map_err(|e| anyhow!("{e}")),
            Err(e) => Err(e),
        };
        match result {
            Ok((crls, changed)) => {
                let m = &self.metrics;
                m.revocation_last_success.store(now(), Ordering::Relaxed);
                m.revocation_crls.set(u64::try_from(crls.len()).unwrap_or(u64::MAX));
                m.set_crl_next_updates(crls.iter().filter_map(|c| cert::crl_next_update(c.as_ref())).collect());
                if changed {
                    info!(crls = crls.len(), "new revocation lists in force");
                }
            }
            Err(e) => {
                self.metrics.revocation_refresh_failed.inc();
                warn!(
                    error = %format!("{e:#}"),
                    state_age_s = self.metrics.revocation_age(now()),
                    crls_in_force = self.metrics.revocation_crls.get(),
                    "CRL refresh failed; the last known revocation lists stay in force"
                );
            }
        }
    }

    /// Refreshes the trust bundle and the CA's renewal suggestion for the current certificate.
    async fn refresh(&self, bundle: &mut TrustBundle, hint: &mut Option<Duration>, cur: &mut Current) {
        match self.client.fetch_bundle(&bundle.roots).await {
            Ok(fresh) => {
                *hint = fresh.refresh_hint;
                if fresh.bundle != *bundle {
                    match self.seam.publish_bundle(fresh.bundle.clone()) {
                        Ok(()) => {
                            info!(
                                sequence = fresh.bundle.sequence,
                                roots = fresh.bundle.roots.len(),
                                "new trust bundle"
                            );
                            *bundle = fresh.bundle;
                            self.metrics.bundle_sequence.set(bundle.sequence);
                        }
                        Err(e) => warn!(error = %e, "refusing the CA's new trust bundle"),
                    }
                }
            }
            Err(e) => {
                self.metrics.bundle_refresh_failed.inc();
                warn!(error = %format!("{e:#}"), "trust bundle refresh failed");
            }
        }
        self.refresh_crls(bundle).await;
        if self.seam.svid_revoked() {
            let t = now();
            cur.suggest(t, t, "our certificate is revoked (CRL): renewing at once");
        }
        let Some(ari_id) = cert::leaf_info(cur.svid.chain[0].as_ref()).ok().and_then(|i| i.ari_id) else { return };
        match self.client.renewal_info(bundle, &ari_id).await {
            Ok((start, end)) => cur.suggest(start, end, "the CA suggests renewing earlier (renewalInfo)"),
            Err(e) => tracing::debug!(error = %format!("{e:#}"), "renewalInfo unavailable"),
        }
    }
}

impl Current {
    /// The CA's renewal window (renewalInfo or a push notice): if the renewal is due only after
    /// it ends, renew at a uniformly random moment inside it instead (RFC 9773 section 4.2), so a
    /// fleet told at once does not arrive at once. A plan already at or before the window's end
    /// stands.
    fn suggest(&mut self, start: i64, end: i64, why: &str) {
        if self.ari.map_or(self.planned, |a| a.min(self.planned)) <= end {
            return;
        }
        let at = schedule::pick_in_window(start, end, unit());
        info!(renew_in_s = at - now(), "{why}");
        self.ari = Some(at);
    }
}
