//! Durable records: the issuer journal, every certificate from serial reservation on, the ACME
//! and enrollment state, and the audit trail. One interface, [`Store`], over two backends, each
//! in a module of its own with its statements written once:
//!
//! - [`sqlite`]: the embedded default (WAL, fsync on commit), driven synchronously through
//!   rusqlite on two threads of its own: a group-commit writer that runs every change, and a
//!   reader that answers every query. No statement crosses a thread per row.
//! - [`postgres`]: several replicas on one database, through sqlx's pool.
//!
//! Both run the same migrations (`ca/migrations`, through sqlx's migrator) and both commit the
//! hot-path writes (issuance, renewal, finalize, nonces) through the group-commit protocol in
//! [`batch`]: concurrent writes queue, one transaction commits a whole batch, so the cost of an
//! fsync is shared instead of paid per certificate. A caller is answered only after its batch has
//! committed. Every state change that an operator or a client causes commits with its audit
//! event in the same transaction.

/// Runs the backend's method of the same name: `on_backend!(self, method(args))`.
macro_rules! on_backend {
    ($store:expr, $method:ident ( $($arg:expr),* )) => {
        match &$store.db {
            $crate::store::Db::Sqlite(db) => db.$method($($arg),*).await,
            $crate::store::Db::Postgres(db) => db.$method($($arg),*).await,
        }
    };
}

pub mod acme;
pub mod audit_log;
mod batch;
pub mod canary;
pub mod crl;
pub mod emergency;
pub mod fleet_share;
pub mod lineage;
mod postgres;
mod records;
mod rows;
mod sqlite;
pub mod workload;

use std::time::Duration;

use time::OffsetDateTime;

use batch::Write;
pub(crate) use batch::{OrderRecord, RenewalRecord};
pub use records::{CertificateIntent, CertificateRecord, CertificateStatus};

use crate::CaError;
use crate::audit::AuditEvent;
use crate::issuers::{IssuerKind, IssuerRecord, IssuerState};

/// Which database is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// Handle to the durable store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
}

/// The backend behind a [`Store`].
#[derive(Debug, Clone)]
enum Db {
    Sqlite(sqlite::SqliteDb),
    Postgres(postgres::PgDb),
}

/// The most recent audit events (binds: limit), newest first: the audit table plus one
/// `certificate.issue` event per recorded certificate.
const AUDIT_EVENTS: &str = "SELECT at, actor, action, target, outcome, detail FROM ( \
       SELECT id AS k, at, actor, action, target, outcome, detail FROM audit_events \
       UNION ALL \
       SELECT c.serial AS k, i.issued_at AS at, c.requester AS actor, 'certificate.issue' AS action, \
              c.serial AS target, 'success' AS outcome, \
              'profile=' || c.profile || ' names=' || c.sans || ' key=' || c.key_fingerprint \
                || ' signed_by=' || c.issuer_id AS detail \
       FROM issued_certificates i JOIN certificates c ON c.serial = i.serial \
     ) AS events ORDER BY at DESC, k DESC LIMIT $1";

/// Takes or renews a lease (binds: name, holder, until, now) unless another holder has an
/// unexpired one; one row when `holder` holds it.
const ACQUIRE_LEASE: &str = "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
     WHERE leases.holder = excluded.holder OR leases.expires_at < $4";

/// Adds an issuer to the journal.
const INSERT_ISSUER: &str = "INSERT INTO issuers (id, kind, state, parent_id, subject, cert_pem, key_pem_enc, ski, \
     fingerprint, not_before, not_after, created_at, state_changed_at, cross_cert_pem) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";
/// Appends a cross certificate (binds: PEM, issuer id).
const APPEND_CROSS_CERT: &str = "UPDATE issuers SET cross_cert_pem = COALESCE(cross_cert_pem, '') || $1 WHERE id = $2";
/// The whole issuer journal, oldest first.
const ISSUERS: &str = "SELECT id, kind, state, parent_id, subject, cert_pem, key_pem_enc, ski, fingerprint, \
     not_before, not_after, created_at, state_changed_at, cross_cert_pem FROM issuers ORDER BY created_at, id";
/// Moves one issuer (binds: to, at, id, from), guarded by its `from` state.
const MOVE_ISSUER: &str = "UPDATE issuers SET state = $1, state_changed_at = $2 WHERE id = $3 AND state = $4";

pub(crate) fn unix(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

pub(crate) fn from_unix(s: i64) -> Result<OffsetDateTime, CaError> {
    OffsetDateTime::from_unix_timestamp(s).map_err(|e| CaError::Store(format!("bad timestamp {s}: {e}")))
}

impl Store {
    /// Opens (creating if needed) the database at `url` and runs migrations.
    ///
    /// `sqlite:///abs/path/lanyard.db` or `postgres://user@host:port/db`.
    pub async fn open(url: &str) -> Result<Store, CaError> {
        let db = if url.starts_with("sqlite:") {
            Db::Sqlite(sqlite::SqliteDb::open(url).await?)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Db::Postgres(postgres::PgDb::open(url).await?)
        } else {
            return Err(CaError::Config(format!(
                "unsupported database URL (expected sqlite:// or postgres://): {}",
                redact_url(url)
            )));
        };
        Ok(Store { db })
    }

    /// The database kind.
    pub fn backend(&self) -> Backend {
        match self.db {
            Db::Sqlite(_) => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    /// Closes the writer (after committing what it was given) and every connection; later calls
    /// fail with `StoreUnavailable`.
    pub async fn close(&self) {
        on_backend!(self, close())
    }

    /// Checks that every path to the database answers (with SQLite the writer and reader
    /// threads; with PostgreSQL the writer task and the pool). Cheap, unlike any count over the
    /// certificate table, so health checks can call it as often as they like.
    pub async fn ping(&self) -> Result<(), CaError> {
        on_backend!(self, ping())
    }

    async fn submit(&self, write: Write) -> Result<(), CaError> {
        self.submit_counted(write).await.map(|_| ())
    }

    /// Queues a write for the group-commit writer and waits until its batch has committed;
    /// returns the rows it affected.
    async fn submit_counted(&self, write: Write) -> Result<u64, CaError> {
        on_backend!(self, submit(write))
    }

    /// Step 1 of issuance: reserve the serial (primary key) and record what is about to be signed.
    /// Fails if the serial was ever used before.
    pub async fn record_intent(&self, intent: CertificateIntent) -> Result<(), CaError> {
        self.submit(Write::Intent(intent)).await
    }

    /// Step 3 of issuance: record the signed certificate.
    ///
    /// The record is also the issuance's audit event: who (requester), what (profile, names,
    /// serial, signing issuer), when and outcome are all in it, and [`Store::audit_events`] lists it
    /// with the others. Writing the same facts a second time would cost a row per certificate.
    pub async fn record_issued(&self, serial: &str, cert_pem: String) -> Result<(), CaError> {
        self.submit(Write::Issued { serial: serial.to_owned(), cert_pem, issued_at: unix(OffsetDateTime::now_utc()) })
            .await
    }

    /// Step 3 of a renewal: the successor's record together with the predecessor's superseded
    /// mark (and, for a lost-response retry, the revocation of the previous successor), in one
    /// group-committed transaction; [`CaError::Superseded`] when the lineage changed since the
    /// renewal looked at it (nothing is recorded then, so the certificate is never returned).
    pub(crate) async fn record_renewed(&self, record: RenewalRecord) -> Result<(), CaError> {
        self.submit(Write::Renewed(record)).await
    }

    /// Step 3 of an ACME finalize: the certificate's record together with its order's move from
    /// `ready` to `valid`, in one group-committed transaction; [`CaError::OrderNotReady`] when the
    /// order is no longer ready (nothing is recorded then, so the certificate is never returned).
    pub(crate) async fn record_order_issued(&self, record: OrderRecord) -> Result<(), CaError> {
        self.submit(Write::OrderIssued(record)).await
    }

    /// Appends an audit event (group-committed).
    pub async fn append_audit(&self, event: AuditEvent) -> Result<(), CaError> {
        self.submit(Write::Audit(event)).await
    }

    /// Marks intents older than `older_than` as abandoned: their process died before recording the
    /// certificate, so it was never returned. The serial stays reserved. Returns how many.
    pub async fn abandon_stale_intents(&self, older_than: Duration) -> Result<u64, CaError> {
        on_backend!(self, abandon_stale_intents(older_than))
    }

    /// One certificate by serial (hex). With SQLite, answered by the reader thread.
    pub async fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>, CaError> {
        on_backend!(self, certificate(serial))
    }

    /// All certificate records, newest first, at most `limit`.
    pub async fn certificates(&self, limit: i64) -> Result<Vec<CertificateRecord>, CaError> {
        on_backend!(self, certificates(limit))
    }

    /// Number of certificate rows in each status: (intent, issued, abandoned).
    pub async fn certificate_counts(&self) -> Result<(i64, i64, i64), CaError> {
        on_backend!(self, certificate_counts())
    }

    /// The most recent audit events, newest first: the audit table plus one `certificate.issue`
    /// event per recorded certificate.
    pub async fn audit_events(&self, limit: i64) -> Result<Vec<AuditEvent>, CaError> {
        on_backend!(self, audit_events(limit))
    }

    /// Audit table events matching `filter`, oldest first (the newest `filter.limit`), with their
    /// place in the hash chain ([`audit_log`]). Issuance records are not among them.
    pub async fn audit_query(&self, filter: &audit_log::AuditFilter) -> Result<Vec<audit_log::AuditRecord>, CaError> {
        on_backend!(self, audit_query(filter))
    }

    /// (events in the audit chain, events outside it): the M8 audit-coverage gauges.
    pub async fn audit_counts(&self) -> Result<(i64, i64), CaError> {
        on_backend!(self, audit_counts())
    }

    /// Walks the audit chain from its first event to its head in one snapshot, recomputing every
    /// digest and checking every link, that positions have no gap and that the head names the
    /// last event; reports the first break ([`audit_log`] says what it can and cannot detect).
    pub async fn audit_verify(&self) -> Result<audit_log::VerifyReport, CaError> {
        on_backend!(self, audit_verify())
    }

    /// Adds issuers to the journal with their audit events, all or nothing.
    pub async fn insert_issuers(&self, issuers: &[&IssuerRecord], audit: &[AuditEvent]) -> Result<(), CaError> {
        self.insert_issuers_with_cross(issuers, &[], audit).await
    }

    /// Adds issuers to the journal and appends cross certificates (`(id, PEM)`: that issuer's name
    /// and key certified by another root) to existing issuers, with the audit events, all or
    /// nothing. A root rotation needs this: the new root arrives together with the current root's
    /// certificate from it.
    pub async fn insert_issuers_with_cross(
        &self,
        issuers: &[&IssuerRecord],
        cross: &[(&str, &str)],
        audit: &[AuditEvent],
    ) -> Result<(), CaError> {
        on_backend!(self, insert_issuers_with_cross(issuers, cross, audit))
    }

    /// The whole issuer journal, oldest first.
    pub async fn issuers(&self) -> Result<Vec<IssuerRecord>, CaError> {
        on_backend!(self, issuers())
    }

    /// The active issuer of a kind, if any.
    pub async fn active_issuer(&self, kind: IssuerKind) -> Result<Option<IssuerRecord>, CaError> {
        Ok(self.issuers().await?.into_iter().find(|r| r.kind == kind && r.state == IssuerState::Active))
    }
}

/// Hides a password in a database URL for messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Issuer journal transitions. Each transition is one transaction that checks the states it
/// moves from, so a crash or a concurrent replica can never leave two active issuers or an
/// issuer half-moved.
impl Store {
    /// Moves `id` from `from` to `to`, with an audit event; false if it was not in `from`.
    pub async fn transition_issuer(
        &self,
        id: &str,
        from: IssuerState,
        to: IssuerState,
        at: OffsetDateTime,
        audit: &AuditEvent,
    ) -> Result<bool, CaError> {
        self.move_issuers(&[(id, from, to)], at, audit).await
    }

    /// Activates the prepared issuer `prepared` and retires the active `active`, atomically.
    pub async fn activate_issuer(
        &self,
        prepared: &str,
        active: &str,
        at: OffsetDateTime,
        audit: &AuditEvent,
    ) -> Result<bool, CaError> {
        use IssuerState::{Active, Prepared, Retired};
        self.move_issuers(&[(active, Active, Retired), (prepared, Prepared, Active)], at, audit).await
    }

    /// Completes a root rotation in one transaction: the prepared root and its prepared
    /// intermediate become active, the current ones retired. False if any was not in the expected
    /// state (nothing changes then).
    pub async fn activate_root(
        &self,
        new_root: &str,
        new_intermediate: &str,
        old_root: &str,
        old_intermediate: &str,
        at: OffsetDateTime,
        audit: &AuditEvent,
    ) -> Result<bool, CaError> {
        use IssuerState::{Active, Prepared, Retired};
        let moves = [
            (old_root, Active, Retired),
            (old_intermediate, Active, Retired),
            (new_root, Prepared, Active),
            (new_intermediate, Prepared, Active),
        ];
        self.move_issuers(&moves, at, audit).await
    }

    /// The one way the journal changes state: each `(id, from, to)` in order (retire before
    /// activate, so the one-active index never sees two), each guarded by its `from` state, plus
    /// the audit event, in one transaction. False, and nothing changed, if any issuer was not in
    /// its `from` state (another replica or an earlier run got there first).
    async fn move_issuers(
        &self,
        moves: &[(&str, IssuerState, IssuerState)],
        at: OffsetDateTime,
        audit: &AuditEvent,
    ) -> Result<bool, CaError> {
        on_backend!(self, move_issuers(moves, at, audit))
    }

    /// NotAfter (Unix seconds) of the last-expiring certificate `issuer_id` signed, if any.
    pub async fn last_signed_not_after(&self, issuer_id: &str) -> Result<Option<i64>, CaError> {
        on_backend!(self, last_signed_not_after(issuer_id))
    }

    /// Takes (or renews) the lease `name` for `holder` until `until`, unless another holder has
    /// an unexpired one. True when `holder` holds it.
    pub async fn acquire_lease(&self, name: &str, holder: &str, now: i64, until: i64) -> Result<bool, CaError> {
        on_backend!(self, acquire_lease(name, holder, now, until))
    }
}

#[cfg(test)]
mod tests {
    /// The database and its WAL files hold every issued certificate and the audit log: 0600 on a
    /// fresh open, and a wider mode left from before is tightened on the next open.
    #[tokio::test]
    async fn sqlite_files_are_private_to_the_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("l.db");
        let url = format!("sqlite://{}", db.display());
        let mode = |suffix: &str| {
            let p = format!("{}{suffix}", db.display());
            std::fs::metadata(&p).map(|m| m.permissions().mode() & 0o777).unwrap_or_else(|e| panic!("{p}: {e}"))
        };
        let store = super::Store::open(&url).await.expect("open");
        for suffix in ["", "-wal", "-shm"] {
            assert_eq!(mode(suffix), 0o600, "{suffix}");
        }
        store.close().await;
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let store = super::Store::open(&url).await.expect("reopen");
        assert_eq!(mode(""), 0o600);
        store.close().await;
    }
}
