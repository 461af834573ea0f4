//! Read-only views of the CA's durable state for the web edge's routes and metrics, and the
//! driver of the rotation steps the serving process runs in the background. The edge reaches the
//! database only through these and the registration authority ([`crate::ra`]), never through the
//! [`Store`] itself.

use crate::rotation::{RotationKeys, RotationPolicy, Step};
use crate::{Authority, CaError, IssuerRecord, Store};

pub use crate::store::crl::PublishedCrl;
pub use crate::store::emergency::Emergency;

/// What the edge may read: the issuer journal, emergencies, counts. Nothing here changes state.
#[derive(Debug, Clone)]
pub struct Views {
    store: Store,
}

impl Views {
    /// The issuer journal, every root and intermediate with its state.
    pub async fn issuers(&self) -> Result<Vec<IssuerRecord>, CaError> {
        self.store.issuers().await
    }

    /// Reaches the database: a health check that does not would report "ok" while issuance fails.
    pub async fn ping(&self) -> Result<(), CaError> {
        self.store.ping().await
    }

    /// The SPIFFE bundle sequence number of the bundle with this digest.
    pub async fn bundle_sequence(&self, digest: &str) -> Result<u64, CaError> {
        self.store.bundle_sequence(digest).await
    }

    /// The newest `limit` audit events, oldest first.
    pub async fn recent_audit(&self, limit: i64) -> Result<Vec<crate::store::audit_log::AuditRecord>, CaError> {
        let filter = crate::store::audit_log::AuditFilter { limit: Some(limit), ..Default::default() };
        self.store.audit_query(&filter).await
    }

    /// (events in the audit chain, events outside it).
    pub async fn audit_counts(&self) -> Result<(i64, i64), CaError> {
        self.store.audit_counts().await
    }

    /// Every canary, newest first.
    pub async fn canaries(&self) -> Result<Vec<crate::store::canary::Canary>, CaError> {
        self.store.canaries().await
    }

    /// How many unexpired, unrevoked certificates `issuer_id` signed.
    pub async fn valid_certificates_of(&self, issuer_id: &str, now: i64) -> Result<i64, CaError> {
        self.store.valid_certificates_of(issuer_id, now).await
    }

    /// Every emergency rotation.
    pub async fn emergencies(&self) -> Result<Vec<Emergency>, CaError> {
        self.store.emergencies().await
    }

    /// Certificates of `issuer_id` an emergency still waits to see renewed.
    pub async fn emergency_outstanding(&self, issuer_id: &str, now: i64) -> Result<i64, CaError> {
        self.store.emergency_outstanding(issuer_id, now).await
    }

    /// The renewal window the CA asks of certificate `serial` (start, optional end; Unix seconds).
    pub async fn replacement_window(&self, serial: &str) -> Result<Option<(i64, Option<i64>)>, CaError> {
        self.store.replacement_window(serial).await
    }
}

/// The rotation steps of a serving replica: the lease that makes one replica run them, the due
/// journal steps, root CRL upkeep, and emergency tracking.
#[derive(Debug, Clone)]
pub struct RotationDriver {
    store: Store,
    fleet: std::sync::Arc<crate::fleet::Fleet>,
}

impl RotationDriver {
    /// Takes (or renews) the lease `name` for `holder` until `until`; `false` if another holds it.
    pub async fn acquire_lease(&self, name: &str, holder: &str, now: i64, until: i64) -> Result<bool, CaError> {
        self.store.acquire_lease(name, holder, now, until).await
    }

    /// Runs the rotation steps due at `now` ([`crate::rotation::run_due`]).
    pub async fn run_due(
        &self,
        keys: &RotationKeys,
        policy: &RotationPolicy,
        now: i64,
        rotation: &str,
    ) -> Result<Vec<Step>, CaError> {
        crate::rotation::run_due(&self.store, keys, policy, now, rotation, Some(&self.fleet)).await
    }

    /// The issuer journal.
    pub async fn issuers(&self) -> Result<Vec<IssuerRecord>, CaError> {
        self.store.issuers().await
    }

    /// Judges the soaking canary and carries out the verdict ([`crate::rotation::canary::tick`]).
    pub async fn canary_tick(
        &self,
        policy: &RotationPolicy,
        now: i64,
    ) -> Result<crate::rotation::canary::CanaryDecision, CaError> {
        crate::rotation::canary::tick(&self.store, &self.fleet, &policy.canary, now).await
    }

    /// Every canary, newest first.
    pub async fn canaries(&self) -> Result<Vec<crate::store::canary::Canary>, CaError> {
        self.store.canaries().await
    }

    /// Whether this replica shares its fleet view through the database (`[policy.fleet] share`
    /// on PostgreSQL, where several replicas can run).
    pub fn shares_fleet(&self) -> bool {
        self.fleet.policy().share && self.store.backend() == crate::store::Backend::Postgres
    }

    /// One exchange of the fleet view with the other replicas ([`crate::fleet::exchange`]).
    pub async fn exchange_fleet(&self, since: i64) -> Result<i64, CaError> {
        crate::fleet::exchange(&self.store, &self.fleet, since, time::OffsetDateTime::now_utc()).await
    }

    /// The sequence of the trust bundle the journal makes now.
    pub async fn bundle_sequence_now(&self) -> Result<u64, CaError> {
        let journal = self.store.issuers().await?;
        self.store.bundle_sequence(&crate::TrustBundle::from_journal(&journal).digest()).await
    }

    /// The fleet view rotation steps are gated on and watched with.
    pub fn fleet(&self) -> &std::sync::Arc<crate::fleet::Fleet> {
        &self.fleet
    }

    /// Re-signs root `root_id`'s CRL when due, or now with `force` ([`crate::rotation::sign_root_crl`]).
    pub async fn sign_root_crl(&self, keys: &RotationKeys, root_id: &str, force: bool) -> Result<Option<i64>, CaError> {
        crate::rotation::sign_root_crl(&self.store, keys, root_id, force).await
    }

    /// Every emergency rotation.
    pub async fn emergencies(&self) -> Result<Vec<Emergency>, CaError> {
        self.store.emergencies().await
    }

    /// Certificates of `issuer_id` an emergency still waits to see renewed.
    pub async fn emergency_outstanding(&self, issuer_id: &str, now: i64) -> Result<i64, CaError> {
        self.store.emergency_outstanding(issuer_id, now).await
    }

    /// Marks emergency `id` complete at `at`.
    pub async fn complete_emergency(&self, id: &str, at: i64) -> Result<(), CaError> {
        self.store.complete_emergency(id, at).await
    }

    /// Brings an emergency's revocation forward to `at`; `false` if it was not later.
    pub async fn expedite_enforcement(&self, rotation: &str, at: i64) -> Result<bool, CaError> {
        self.store.expedite_enforcement(rotation, at).await
    }

    /// Publishes the staged root CRLs whose time has come (each once across replicas).
    pub async fn publish_due_crls(&self, now: i64) -> Result<Vec<PublishedCrl>, CaError> {
        self.store.publish_due_crls(now).await
    }
}

impl Authority {
    /// The read-only views of this CA's state.
    pub fn views(&self) -> Views {
        Views { store: self.store().clone() }
    }

    /// The driver of this CA's background rotation steps.
    pub fn rotation_driver(&self) -> RotationDriver {
        RotationDriver { store: self.store().clone(), fleet: self.fleet().clone() }
    }
}
