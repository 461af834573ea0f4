//! The one way into issuance: CSR -> policy -> reserve serial and record intent -> sign -> record
//! certificate -> return. A crash between any two steps leaves either nothing, or an intent whose
//! serial is never reused, and never a returned certificate without a record.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use ring::rand::SystemRandom;
use time::OffsetDateTime;
use tracing::{info, warn};

use crate::audit::{AuditEvent, Outcome};
use crate::csr::parse_and_verify_csr;
use crate::issuers::{ActiveIssuer, IssuerKind};
use crate::keys::{Passphrase, decrypt_key_pem};
use crate::names::{AuthorizedNames, Name};
use crate::pem;
use crate::profile::{LeafSpec, Profile, leaf_params};
use crate::serial::Serial;
use crate::store::{CertificateIntent, Store};
use crate::{CaError, Policy};

/// Steps of issuance, reported to a [`StepHook`] (crash tests kill the process at each one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssuanceStep {
    /// The serial is reserved and the intent committed; nothing is signed yet.
    IntentRecorded,
    /// The certificate is signed but not yet recorded.
    Signed,
    /// The certificate is recorded (for an ACME order, together with the order's move to
    /// `valid`); it is about to be returned.
    Recorded,
    /// ACME finalize only: the order is valid and points at its certificate, and the registration
    /// authority is about to answer ([`crate::ra::Registration::finalize`]).
    Finalized,
}

/// Observer called after each issuance step.
pub type StepHook = Arc<dyn Fn(IssuanceStep) + Send + Sync>;

/// A request to issue one certificate.
#[derive(Debug, Clone, Copy)]
pub struct IssueRequest<'a> {
    /// PKCS#10 CSR, DER or PEM.
    pub csr: &'a [u8],
    /// Which profile to issue under.
    pub profile: Profile,
    /// Who asks, for records and audit (`acme:<account>`, `workload:<id>`, `operator`).
    pub requester: &'a str,
    /// Requested lifetime; the profile default when None.
    pub lifetime: Option<Duration>,
    /// Names the requester proved control of; None means "policy alone decides" (operator use).
    pub authorized: Option<&'a AuthorizedNames>,
}

/// A signed, recorded certificate.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    /// Its serial.
    pub serial: Serial,
    /// Leaf DER.
    pub der: Vec<u8>,
    /// Issuer chain DER (intermediate first), without the root.
    pub chain_der: Vec<Vec<u8>>,
    /// Names in the certificate.
    pub names: Vec<Name>,
    /// Validity.
    pub not_before: OffsetDateTime,
    /// Validity.
    pub not_after: OffsetDateTime,
    /// Journal id of the issuer that signed it.
    pub issuer_id: String,
}

impl IssuedCertificate {
    /// Leaf followed by the chain, PEM (`application/pem-certificate-chain`, RFC 8555 section 9.1).
    pub fn pem_chain(&self) -> String {
        std::iter::once(&self.der).chain(&self.chain_der).map(|d| pem::certificate(d)).collect()
    }
}

/// What a renewal adds to an issuance: the key that must change, and the lineage to record with
/// the certificate (see [`crate::store::RenewalRecord`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Renewal<'a> {
    /// DER SubjectPublicKeyInfo of the certificate being renewed: the CSR must use another key.
    pub(crate) old_key: &'a [u8],
    /// Serial of the certificate being renewed.
    pub(crate) predecessor: &'a str,
    /// Its current successor, when this is a lost-response retry that replaces it.
    pub(crate) replaces: Option<&'a str>,
    /// The retry is recorded only if the predecessor's first renewal is later than this (Unix s).
    pub(crate) window_start: i64,
}

/// What step 3 of issuance records besides the certificate, in the same transaction.
#[derive(Debug, Clone, Copy)]
enum RecordWith<'a> {
    /// Nothing: a plain issuance.
    Nothing,
    /// A renewal's lineage ([`Renewal`]).
    Renewal(Renewal<'a>),
    /// The ACME order this certificate finalizes: it moves from `ready` to `valid` and points at
    /// the certificate, or, when it is no longer `ready`, nothing is recorded
    /// ([`crate::store::OrderRecord`]).
    Order(&'a str),
}

/// A request that passed every check, ready to be recorded and signed.
struct Prepared {
    csr: crate::csr::VerifiedCsr,
    names: Vec<Name>,
    issuer: Arc<ActiveIssuer>,
    /// The canary rotation whose successor signs this one, if it does.
    canary: Option<String>,
    serial: Serial,
    params: rcgen::CertificateParams,
    spki: rcgen::SubjectPublicKeyInfo,
    subject: String,
}

/// The CA: policy, the active issuer and the store, behind [`Authority::issue`].
pub struct Authority {
    store: Store,
    policy: Policy,
    active: RwLock<Option<Arc<ActiveIssuer>>>,
    rng: SystemRandom,
    hook: Option<StepHook>,
    pub(crate) crl: crate::crl::CrlCache,
    stats: crate::stats::IssuanceStats,
    fleet: Arc<crate::fleet::Fleet>,
    /// The successor on trial while a canary soaks ([`crate::rotation::canary`]).
    canary: RwLock<Option<Arc<CanaryIssuer>>>,
}

/// A canary's successor, loaded for signing the canaries' certificates.
#[derive(Debug)]
struct CanaryIssuer {
    canary: crate::store::canary::Canary,
    issuer: Arc<ActiveIssuer>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").field("policy", &self.policy).finish_non_exhaustive()
    }
}

impl Authority {
    /// Loads the active intermediate from the journal and decrypts its key.
    pub async fn load(store: Store, policy: Policy, pass: &Passphrase) -> Result<Self, CaError> {
        policy.validate()?;
        let record = store.active_issuer(IssuerKind::Intermediate).await?.ok_or(CaError::NoActiveIssuer)?;
        let key_pem = record
            .key_pem_enc
            .as_deref()
            .ok_or_else(|| CaError::Config(format!("the active intermediate {} has no key in the store", record.id)))?;
        let key = decrypt_key_pem(key_pem, pass, &format!("intermediate {}", record.id))?;
        let id = record.id.clone();
        let active = ActiveIssuer::new(record, key)?.with_cross_chain(&store.issuers().await?)?;
        store
            .append_audit(AuditEvent::now(
                "ca",
                "key.load",
                &id,
                Outcome::Success,
                "intermediate key decrypted for signing",
            ))
            .await?;
        let abandoned = store.abandon_stale_intents(Duration::from_secs(300)).await?;
        if abandoned > 0 {
            warn!(
                abandoned,
                "issuance intents left by a crashed process were marked abandoned; their serials stay reserved"
            );
        }
        info!(issuer = %id, not_after = %crate::issuers::rfc3339(active.record.not_after), "active issuer loaded");
        let fleet = Arc::new(crate::fleet::Fleet::new(policy.fleet.clone()));
        Ok(Authority {
            store,
            policy,
            active: RwLock::new(Some(Arc::new(active))),
            rng: SystemRandom::new(),
            hook: None,
            crl: Default::default(),
            stats: crate::stats::IssuanceStats::default(),
            fleet,
            canary: RwLock::new(None),
        })
    }

    /// Picks up a change of the active intermediate in the journal (a rotation by this or another
    /// replica, or by `lanyard-ca rotate`). Issuances already under way finish with the issuer
    /// they started with, which stays trusted as "retired". True when the issuer changed.
    pub async fn refresh_active(&self, pass: &Passphrase) -> Result<bool, CaError> {
        let journal = self.store.issuers().await?;
        self.refresh_canary(&journal, pass).await?;
        let record = journal
            .iter()
            .find(|r| r.kind == IssuerKind::Intermediate && r.state == crate::IssuerState::Active)
            .cloned()
            .ok_or(CaError::NoActiveIssuer)?;
        // The chain changes too: cross certificates join it when a root rotation starts and leave
        // it when the previous root leaves the trust bundle.
        let want_cross =
            record.cross_chain(&journal).iter().map(|p| pem::decode_certificate(p)).collect::<Result<Vec<_>, _>>()?;
        if self.active_issuer().is_ok_and(|a| a.record.id == record.id && a.chain_der[1..] == want_cross[..]) {
            return Ok(false);
        }
        let key_pem = record
            .key_pem_enc
            .as_deref()
            .ok_or_else(|| CaError::Config(format!("the active intermediate {} has no key in the store", record.id)))?;
        let key = decrypt_key_pem(key_pem, pass, &format!("intermediate {}", record.id))?;
        let id = record.id.clone();
        let active = Arc::new(ActiveIssuer::new(record, key)?.with_cross_chain(&journal)?);
        self.store
            .append_audit(AuditEvent::now("ca", "key.load", &id, Outcome::Success, "new active intermediate loaded"))
            .await?;
        info!(issuer = %id, not_after = %crate::issuers::rfc3339(active.record.not_after), "active issuer changed");
        *self.active.write().map_err(|_| CaError::NoActiveIssuer)? = Some(active);
        Ok(true)
    }

    /// Loads the successor of a canary that started (or drops the one whose canary ended). A
    /// successor that cannot be loaded counts as a failed canary renewal, which rolls it back.
    async fn refresh_canary(&self, journal: &[crate::IssuerRecord], pass: &Passphrase) -> Result<(), CaError> {
        let soaking = crate::rotation::canary::soaking(&self.store).await?;
        let loaded =
            self.canary.read().map_err(|_| CaError::NoActiveIssuer)?.as_ref().map(|c| c.canary.rotation.clone());
        let Some(c) = soaking else {
            if loaded.is_some() {
                info!("canary ended: its successor signs nothing more on this replica");
                *self.canary.write().map_err(|_| CaError::NoActiveIssuer)? = None;
            }
            return Ok(());
        };
        if loaded.as_deref() == Some(c.rotation.as_str()) {
            return Ok(());
        }
        let load = || -> Result<ActiveIssuer, CaError> {
            let record = journal
                .iter()
                .find(|r| r.id == c.successor && r.state == crate::IssuerState::Prepared)
                .ok_or_else(|| CaError::Config(format!("canary successor {} is not prepared", c.successor)))?;
            let key_pem = record.key_pem_enc.as_deref().ok_or_else(|| {
                CaError::Config(format!("the canary successor {} has no key in the store", record.id))
            })?;
            let key = decrypt_key_pem(key_pem, pass, &format!("intermediate {}", record.id))?;
            ActiveIssuer::new(record.clone(), key)?.with_cross_chain(journal)
        };
        match load() {
            Ok(issuer) => {
                self.store
                    .append_audit(AuditEvent::now(
                        "ca",
                        "key.load",
                        &c.successor,
                        Outcome::Success,
                        format!("rotation {}: canary successor loaded", c.rotation),
                    ))
                    .await?;
                info!(rotation = %c.rotation, successor = %c.successor, "canary successor loaded: it signs for the canaries");
                *self.canary.write().map_err(|_| CaError::NoActiveIssuer)? =
                    Some(Arc::new(CanaryIssuer { canary: c, issuer: Arc::new(issuer) }));
            }
            Err(e) => {
                warn!(rotation = %c.rotation, successor = %c.successor, error = %e, "cannot load the canary successor");
                self.fleet.count_canary_signing(&c.rotation, false);
            }
        }
        Ok(())
    }

    /// The issuer for a certificate with `names`: the canary's successor when a canary soaks and
    /// picks the SPIFFE ID, else the active intermediate.
    fn issuer_for(&self, names: &[Name]) -> Result<(Arc<ActiveIssuer>, Option<String>), CaError> {
        if let Some(c) = self.canary.read().map_err(|_| CaError::NoActiveIssuer)?.as_ref()
            && names.iter().any(|n| matches!(n, Name::Spiffe(_)) && c.canary.selects(&n.to_string()))
        {
            return Ok((c.issuer.clone(), Some(c.canary.rotation.clone())));
        }
        Ok((self.active_issuer()?, None))
    }

    /// The newest trust-state report of each workload ([`crate::fleet`]).
    pub fn fleet(&self) -> &Arc<crate::fleet::Fleet> {
        &self.fleet
    }

    /// Issuance counters and latency.
    pub fn stats(&self) -> &crate::stats::IssuanceStats {
        &self.stats
    }

    /// Installs an observer of issuance steps.
    pub fn set_step_hook(&mut self, hook: StepHook) {
        self.hook = Some(hook);
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The issuer that signs now.
    pub fn active_issuer(&self) -> Result<Arc<ActiveIssuer>, CaError> {
        self.active.read().map_err(|_| CaError::NoActiveIssuer)?.clone().ok_or(CaError::NoActiveIssuer)
    }

    pub(crate) fn step(&self, s: IssuanceStep) {
        if let Some(h) = &self.hook {
            h(s);
        }
    }

    /// Issues a certificate. Refusals are audited and change nothing else.
    pub async fn issue(&self, req: IssueRequest<'_>) -> Result<IssuedCertificate, CaError> {
        self.issue_with(req, None).await
    }

    /// [`Authority::issue`], for a renewal when `renewal` is given: the CSR's key must differ from
    /// the old one (the check rides on the one CSR verification issuance does anyway), and the
    /// lineage is recorded with the certificate.
    pub(crate) async fn issue_with(
        &self,
        req: IssueRequest<'_>,
        renewal: Option<Renewal<'_>>,
    ) -> Result<IssuedCertificate, CaError> {
        let work = async {
            let p = self.prepare(&req, renewal.map(|r| r.old_key))?;
            let with = renewal.map_or(RecordWith::Nothing, RecordWith::Renewal);
            self.sign_and_record(p, req.profile, req.requester, with).await
        };
        self.observed(req.requester, req.profile, work).await
    }

    /// Issues for an ACME order whose names the registration authority has already checked
    /// against the CSR (`names`, from [`Policy::names_for`]): the CSR is not parsed or checked
    /// again, and the certificate's record commits together with the order's move from `ready`
    /// to `valid` ([`RecordWith::Order`]). [`CaError::OrderNotReady`] when the order left
    /// `ready` meanwhile: then nothing but the intent was recorded.
    pub(crate) async fn issue_for_order(
        &self,
        csr: crate::csr::VerifiedCsr,
        names: Vec<Name>,
        profile: Profile,
        requester: &str,
        order_id: &str,
    ) -> Result<IssuedCertificate, CaError> {
        let work = async {
            let p = self.plan(csr, names, profile, None)?;
            self.sign_and_record(p, profile, requester, RecordWith::Order(order_id)).await
        };
        self.observed(requester, profile, work).await
    }

    /// Runs an issuance, counting it and auditing its failure.
    async fn observed(
        &self,
        requester: &str,
        profile: Profile,
        work: impl Future<Output = Result<IssuedCertificate, CaError>>,
    ) -> Result<IssuedCertificate, CaError> {
        let started = std::time::Instant::now();
        match work.await {
            Ok(c) => {
                self.stats.observe(started.elapsed());
                self.stats.issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(c)
            }
            Err(e) => {
                let outcome = if e.kind().is_refusal() { Outcome::Refused } else { Outcome::Failed };
                let counter = if outcome == Outcome::Refused { &self.stats.refused } else { &self.stats.failed };
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let ev = AuditEvent::now(requester, "certificate.issue", profile.as_str(), outcome, e.to_string());
                if let Err(audit_err) = self.store.append_audit(ev).await {
                    warn!(error = %audit_err, "could not audit a failed issuance");
                }
                Err(e)
            }
        }
    }

    /// For benchmarks: all the CPU work of [`Authority::issue`] (CSR parsing and verification,
    /// policy, building and signing the certificate) with nothing recorded and nothing returned but
    /// the certificate's size. It measures the ceiling that durable issuance is compared with.
    pub fn measure_ceiling(&self, req: &IssueRequest<'_>) -> Result<usize, CaError> {
        let p = self.prepare(req, None)?;
        let cert = p.params.signed_by(&p.spki, &p.issuer.issuer).map_err(|e| CaError::Signing(e.to_string()))?;
        Ok(cert.der().len())
    }

    /// Everything before the first write: verify the CSR, apply policy, pick the issuer, build the
    /// certificate parameters.
    fn prepare(&self, req: &IssueRequest<'_>, not_key: Option<&[u8]>) -> Result<Prepared, CaError> {
        let csr = parse_and_verify_csr(req.csr)?;
        if not_key.is_some_and(|k| k == csr.spki_der.as_slice()) {
            return Err(CaError::BadIdentity("a renewal must use a new key".into()));
        }
        let names = self.policy.names_for(&csr, req.profile, req.authorized)?;
        self.plan(csr, names, req.profile, req.lifetime)
    }

    /// The rest of [`Authority::prepare`] once the CSR is verified and its names decided: pick the
    /// issuer, the validity and the serial, build the certificate parameters.
    fn plan(
        &self,
        csr: crate::csr::VerifiedCsr,
        names: Vec<Name>,
        profile: Profile,
        lifetime: Option<Duration>,
    ) -> Result<Prepared, CaError> {
        let (issuer, canary) = self.issuer_for(&names)?;
        let now = OffsetDateTime::now_utc();
        let (not_before, not_after) = self.policy.validity(profile, lifetime, now, issuer.record.not_after)?;
        let serial = Serial::random(&self.rng)?;
        let common_name = csr.common_name.as_deref();
        let spec = LeafSpec {
            profile,
            key: csr.key,
            names: &names,
            common_name,
            serial: &serial,
            issuer_id: &issuer.record.id,
            not_before,
            not_after,
        };
        let params = leaf_params(&spec, &self.policy)?;
        let spki = rcgen::SubjectPublicKeyInfo::from_der(&csr.spki_der)
            .map_err(|e| CaError::UnsupportedKey(format!("cannot encode the subject key: {e}")))?;
        let subject = common_name.map(|cn| format!("CN={cn}")).unwrap_or_default();
        Ok(Prepared { csr, names, issuer, canary, serial, params, spki, subject })
    }

    /// Steps 1 to 3 of issuance for a prepared request; `with` rides on the record of step 3. A
    /// canary's signings and failures are counted for its verdict.
    async fn sign_and_record(
        &self,
        prepared: Prepared,
        profile: Profile,
        requester: &str,
        with: RecordWith<'_>,
    ) -> Result<IssuedCertificate, CaError> {
        let canary = prepared.canary.clone();
        let r = self.sign_and_record_with(prepared, profile, requester, with).await;
        if let Some(rotation) = canary {
            match &r {
                Ok(_) => self.fleet.count_canary_signing(&rotation, true),
                // A lost race on an order or a lineage is the client's, not the successor's.
                Err(e) if e.kind().is_refusal() => {}
                Err(_) => self.fleet.count_canary_signing(&rotation, false),
            }
        }
        r
    }

    async fn sign_and_record_with(
        &self,
        prepared: Prepared,
        profile: Profile,
        requester: &str,
        with: RecordWith<'_>,
    ) -> Result<IssuedCertificate, CaError> {
        let Prepared { csr, names, issuer, canary: _, serial, params, spki, subject } = prepared;
        let (not_before, not_after) = (params.not_before, params.not_after);
        let renewal = match with {
            RecordWith::Renewal(r) => Some(r),
            RecordWith::Nothing | RecordWith::Order(_) => None,
        };

        // 1. Reserve the serial and record the intent.
        self.store
            .record_intent(CertificateIntent {
                serial: serial.to_hex(),
                issuer_id: issuer.record.id.clone(),
                profile: profile.as_str().to_owned(),
                requester: requester.to_owned(),
                subject,
                sans: names.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(","),
                key_fingerprint: csr.key_fingerprint.clone(),
                not_before,
                not_after,
                renewed_from: renewal.map(|r| r.predecessor.to_owned()),
            })
            .await?;
        self.step(IssuanceStep::IntentRecorded);

        // 2. Sign.
        let cert = params.signed_by(&spki, &issuer.issuer).map_err(|e| CaError::Signing(e.to_string()))?;
        let der = cert.der().to_vec();
        self.step(IssuanceStep::Signed);

        // 3. Record the certificate (the record is the issuance's audit event, see `record_issued`);
        // a renewal's record commits together with its predecessor's superseded mark, an ACME
        // order's with the order's move to `valid`.
        match with {
            RecordWith::Nothing => self.store.record_issued(&serial.to_hex(), pem::certificate(&der)).await?,
            RecordWith::Order(order_id) => {
                self.store
                    .record_order_issued(crate::store::OrderRecord {
                        serial: serial.to_hex(),
                        cert_pem: pem::certificate(&der),
                        issued_at: OffsetDateTime::now_utc().unix_timestamp(),
                        order_id: order_id.to_owned(),
                    })
                    .await?
            }
            RecordWith::Renewal(r) => {
                let audit = r.replaces.map(|prev| {
                    AuditEvent::now(
                        requester,
                        "certificate.revoke",
                        prev,
                        Outcome::Success,
                        format!(
                            "reason=4 (superseded): {} was renewed again within the retry window; {} replaces it",
                            r.predecessor,
                            serial.to_hex()
                        ),
                    )
                });
                self.store
                    .record_renewed(crate::store::RenewalRecord {
                        serial: serial.to_hex(),
                        cert_pem: pem::certificate(&der),
                        issued_at: OffsetDateTime::now_utc().unix_timestamp(),
                        predecessor: r.predecessor.to_owned(),
                        replaces: r.replaces.map(str::to_owned),
                        window_start: r.window_start,
                        audit,
                    })
                    .await?
            }
        }
        self.step(IssuanceStep::Recorded);

        Ok(IssuedCertificate {
            serial,
            der,
            chain_der: issuer.chain_der.clone(),
            names,
            not_before,
            not_after,
            issuer_id: issuer.record.id.clone(),
        })
    }
}
