//! Durable records: the issuer journal, every certificate from serial reservation on, and the
//! audit trail. SQLite (embedded default, WAL, fsync on commit) or PostgreSQL (several replicas),
//! with one schema and one set of migrations, through sqlx's `Any` driver.
//!
//! Writes on the issuance path go through a single group-commit writer: concurrent issuances
//! queue their writes and one transaction commits a whole batch, so the cost of an fsync is shared
//! instead of paid per certificate. A caller is answered only after its batch has committed.

pub mod acme;
pub mod crl;
pub mod emergency;
pub mod lineage;
mod native;
mod reader;
mod records;
pub mod workload;
mod writer;

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

pub use records::{CertificateIntent, CertificateRecord, CertificateStatus};
pub(crate) use writer::OrderRecord;
pub(crate) use writer::RenewalRecord;
use writer::{Job, Write};

use crate::CaError;
use crate::audit::{AuditEvent, Outcome};
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
    pool: AnyPool,
    backend: Backend,
    /// The group-commit writer (SQLite: a thread with its own connection; PostgreSQL: a task on
    /// the pool).
    writer: mpsc::Sender<Job>,
    /// SQLite only: the thread that answers certificate lookups (the renewal hot path).
    reader: Option<reader::Reader>,
}

/// Maps sqlx errors: anything that means "could not talk to the database" is `StoreUnavailable`.
pub(crate) fn db_err(e: sqlx::Error) -> CaError {
    match e {
        sqlx::Error::PoolClosed
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => CaError::StoreUnavailable(e.to_string()),
        sqlx::Error::Database(ref d) => {
            // SQLite: busy/locked/readonly/full/ioerr/cantopen; PostgreSQL: class 08 (connection),
            // 53 (resources), 57P (shutdown).
            let code = d.code().map(|c| c.into_owned()).unwrap_or_default();
            // SQLite reports extended codes (SQLITE_BUSY_SNAPSHOT is 517): the primary code is
            // the low byte.
            let sqlite = d.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some();
            let sqlite_primary = code.parse::<i32>().ok().filter(|_| sqlite).map(|c| c & 0xff);
            let unavailable = matches!(sqlite_primary, Some(5 | 6 | 8 | 10 | 13 | 14))
                || code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P");
            if unavailable { CaError::StoreUnavailable(e.to_string()) } else { CaError::Store(e.to_string()) }
        }
        other => CaError::Store(other.to_string()),
    }
}

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
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(CaError::Config(format!(
                "unsupported database URL (expected sqlite:// or postgres://): {}",
                redact_url(url)
            )));
        };
        let url =
            if backend == Backend::Sqlite && !url.contains('?') { format!("{url}?mode=rwc") } else { url.to_owned() };
        let opts = AnyConnectOptions::from_str(&url).map_err(|e| CaError::Config(format!("database URL: {e}")))?;
        let sqlite_path = if backend == Backend::Sqlite { Some(native::path_of(&url)?) } else { None };
        if let Some(p) = &sqlite_path {
            native::secure_files(p)?;
        }
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 8 })
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL for concurrent readers; synchronous=FULL so a commit is on disk when
                        // it returns, which is what "durably recorded before it is returned" needs.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                        // A larger page cache and memory-mapped reads: index lookups on a growing
                        // certificate table otherwise re-read pages through read(2).
                        conn.execute("PRAGMA cache_size = -65536").await?;
                        conn.execute("PRAGMA mmap_size = 268435456").await?;
                        conn.execute("PRAGMA temp_store = MEMORY").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(opts)
            .await
            .map_err(|e| match db_err(e) {
                CaError::Store(m) => CaError::StoreUnavailable(m),
                other => other,
            })?;
        sqlx::migrate!("./migrations").run(&pool).await.map_err(|e| CaError::Store(format!("migrations: {e}")))?;
        if let Some(p) = &sqlite_path {
            // Again now that WAL mode has created -wal and -shm.
            native::secure_files(p)?;
        }
        let (tx, rx) = mpsc::channel(4096);
        let reader = match backend {
            Backend::Sqlite => {
                writer::start_sqlite(&url, rx)?;
                Some(reader::Reader::start(&url)?)
            }
            Backend::Postgres => {
                tokio::spawn(writer::run_any(backend, pool.clone(), rx));
                None
            }
        };
        Ok(Store { pool, backend, writer: tx, reader })
    }

    /// The database kind.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes the writer (after committing what it was given), the reader and the pool; later
    /// calls fail with `StoreUnavailable`.
    pub async fn close(&self) {
        if let Err(e) = self.submit(Write::Close).await {
            tracing::debug!(error = %e, "the writer was closed already");
        }
        if let Some(r) = &self.reader {
            r.close().await;
        }
        self.pool.close().await;
    }

    /// Checks that every path to the database answers: the pool, and with SQLite the writer and
    /// reader threads (a write job that changes nothing and a read). Cheap, unlike any count over
    /// the certificate table, so health checks can call it as often as they like.
    pub async fn ping(&self) -> Result<(), CaError> {
        if self.writer.is_closed() {
            return Err(CaError::StoreUnavailable("the store writer has stopped".into()));
        }
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(db_err)?;
        if let Some(w) = self.sqlite_write(|_| Ok(0)) {
            w.await?;
        }
        if let Some(r) = self.sqlite_read(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(native::sqlite_err)) {
            r.await?;
        }
        Ok(())
    }

    async fn submit(&self, write: Write) -> Result<(), CaError> {
        self.submit_counted(write).await.map(|_| ())
    }

    /// Queues a write for the group-commit writer and waits until its batch has committed;
    /// returns the rows it affected.
    async fn submit_counted(&self, write: Write) -> Result<u64, CaError> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(Job { write, reply })
            .await
            .map_err(|_| CaError::StoreUnavailable("the store writer has stopped".into()))?;
        rx.await.map_err(|_| CaError::StoreUnavailable("the store writer has stopped".into()))?
    }

    /// SQLite only (`None` on PostgreSQL): runs `write` on the writer thread inside the next
    /// group-committed batch, isolated from the rest of the batch by a savepoint, and answers once
    /// the batch is on disk. Small state changes then share the batch's one fsync instead of each
    /// paying for a transaction of its own.
    fn sqlite_write(
        &self,
        write: impl Fn(&rusqlite::Connection) -> Result<u64, CaError> + Send + Sync + 'static,
    ) -> Option<impl Future<Output = Result<u64, CaError>> + '_> {
        self.reader.as_ref()?;
        Some(self.submit_counted(Write::Sqlite(std::sync::Arc::new(write))))
    }

    /// SQLite only (`None` on PostgreSQL): runs `read` on the reader thread, in a read transaction
    /// that starts at the latest commit.
    fn sqlite_read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&rusqlite::Connection) -> Result<T, CaError> + Send + 'static,
    ) -> Option<impl Future<Output = Result<T, CaError>> + '_> {
        Some(self.reader.as_ref()?.query(read))
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
    pub(crate) async fn record_renewed(&self, record: writer::RenewalRecord) -> Result<(), CaError> {
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
        let cutoff = unix(OffsetDateTime::now_utc()).saturating_sub(crate::units::secs(older_than));
        let r = sqlx::query(
            "UPDATE certificates SET status = 'abandoned' WHERE status = 'intent' AND created_at <= $1 \
             AND NOT EXISTS (SELECT 1 FROM issued_certificates i WHERE i.serial = certificates.serial)",
        )
        .bind(cutoff)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(r.rows_affected())
    }

    /// One certificate by serial (hex). With SQLite, answered by the reader thread ([`reader`]).
    pub async fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>, CaError> {
        if let Some(r) = &self.reader {
            return r.certificate(serial).await;
        }
        let row = sqlx::query(concat!("SELECT ", records::cert_columns!(), " WHERE c.serial = $1"))
            .bind(serial)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.map(|r| CertificateRecord::from_row(&r)).transpose()
    }

    /// All certificate records, newest first, at most `limit`.
    pub async fn certificates(&self, limit: i64) -> Result<Vec<CertificateRecord>, CaError> {
        let rows =
            sqlx::query(concat!("SELECT ", records::cert_columns!(), " ORDER BY c.created_at DESC, c.serial LIMIT $1"))
                .bind(limit)
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
        rows.iter().map(CertificateRecord::from_row).collect()
    }

    /// Number of certificate rows in each status: (intent, issued, abandoned).
    pub async fn certificate_counts(&self) -> Result<(i64, i64, i64), CaError> {
        let rows = sqlx::query(
            "SELECT CASE WHEN i.serial IS NULL THEN c.status ELSE 'issued' END AS st, COUNT(*) AS n \
             FROM certificates c LEFT JOIN issued_certificates i ON i.serial = c.serial GROUP BY 1",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        let mut c = (0, 0, 0);
        for r in rows {
            let status: String = r.try_get("st").map_err(db_err)?;
            let n: i64 = r.try_get("n").map_err(db_err)?;
            match status.as_str() {
                "intent" => c.0 = n,
                "issued" => c.1 = n,
                _ => c.2 = n,
            }
        }
        Ok(c)
    }

    /// The most recent audit events, newest first: the audit table plus one `certificate.issue`
    /// event per recorded certificate.
    pub async fn audit_events(&self, limit: i64) -> Result<Vec<AuditEvent>, CaError> {
        let rows = sqlx::query(
            "SELECT at, actor, action, target, outcome, detail FROM ( \
               SELECT id AS k, at, actor, action, target, outcome, detail FROM audit_events \
               UNION ALL \
               SELECT c.serial AS k, i.issued_at AS at, c.requester AS actor, 'certificate.issue' AS action, \
                      c.serial AS target, 'success' AS outcome, \
                      'profile=' || c.profile || ' names=' || c.sans || ' key=' || c.key_fingerprint \
                        || ' signed_by=' || c.issuer_id AS detail \
               FROM issued_certificates i JOIN certificates c ON c.serial = i.serial \
             ) AS events ORDER BY at DESC, k DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok(AuditEvent {
                    at: from_unix(r.try_get("at").map_err(db_err)?)?,
                    actor: r.try_get("actor").map_err(db_err)?,
                    action: r.try_get("action").map_err(db_err)?,
                    target: r.try_get("target").map_err(db_err)?,
                    outcome: Outcome::parse(&r.try_get::<String, _>("outcome").map_err(db_err)?),
                    detail: r.try_get("detail").map_err(db_err)?,
                })
            })
            .collect()
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
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        for r in issuers {
            sqlx::query(
                "INSERT INTO issuers (id, kind, state, parent_id, subject, cert_pem, key_pem_enc, ski, fingerprint, \
                 not_before, not_after, created_at, state_changed_at, cross_cert_pem) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            )
            .bind(&r.id)
            .bind(r.kind.as_str())
            .bind(r.state.as_str())
            .bind(r.parent_id.clone())
            .bind(&r.subject)
            .bind(&r.cert_pem)
            .bind(r.key_pem_enc.clone())
            .bind(&r.ski)
            .bind(&r.fingerprint)
            .bind(unix(r.not_before))
            .bind(unix(r.not_after))
            .bind(unix(r.created_at))
            .bind(unix(r.state_changed_at))
            .bind(r.cross_cert_pem.clone())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        for (id, pem) in cross {
            let r = sqlx::query("UPDATE issuers SET cross_cert_pem = COALESCE(cross_cert_pem, '') || $1 WHERE id = $2")
                .bind(*pem)
                .bind(*id)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            if r.rows_affected() != 1 {
                return Err(CaError::Config(format!("issuer {id} is not in the journal")));
            }
        }
        for ev in audit {
            writer::insert_audit(self.backend, &mut tx, ev).await.map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }

    /// The whole issuer journal, oldest first.
    pub async fn issuers(&self) -> Result<Vec<IssuerRecord>, CaError> {
        const SQL: &str = "SELECT id, kind, state, parent_id, subject, cert_pem, key_pem_enc, ski, fingerprint, \
             not_before, not_after, created_at, state_changed_at, cross_cert_pem FROM issuers ORDER BY created_at, id";
        // Every certificate download reads the journal (to pick the chain).
        if let Some(r) = self.sqlite_read(|c| {
            let mut st = c.prepare_cached(SQL).map_err(native::sqlite_err)?;
            let mut rows = st.query([]).map_err(native::sqlite_err)?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(native::sqlite_err)? {
                out.push(issuer_from_native_row(r)?);
            }
            Ok(out)
        }) {
            return r.await;
        }
        let rows = sqlx::query(SQL).fetch_all(&self.pool).await.map_err(db_err)?;
        rows.iter().map(issuer_from_row).collect()
    }

    /// The active issuer of a kind, if any.
    pub async fn active_issuer(&self, kind: IssuerKind) -> Result<Option<IssuerRecord>, CaError> {
        Ok(self.issuers().await?.into_iter().find(|r| r.kind == kind && r.state == IssuerState::Active))
    }
}

fn issuer_from_row(r: &AnyRow) -> Result<IssuerRecord, CaError> {
    Ok(IssuerRecord {
        id: r.try_get("id").map_err(db_err)?,
        kind: IssuerKind::parse(&r.try_get::<String, _>("kind").map_err(db_err)?)?,
        state: IssuerState::parse(&r.try_get::<String, _>("state").map_err(db_err)?)?,
        parent_id: r.try_get("parent_id").map_err(db_err)?,
        subject: r.try_get("subject").map_err(db_err)?,
        cert_pem: r.try_get("cert_pem").map_err(db_err)?,
        key_pem_enc: r.try_get("key_pem_enc").map_err(db_err)?,
        ski: r.try_get("ski").map_err(db_err)?,
        fingerprint: r.try_get("fingerprint").map_err(db_err)?,
        not_before: from_unix(r.try_get("not_before").map_err(db_err)?)?,
        not_after: from_unix(r.try_get("not_after").map_err(db_err)?)?,
        created_at: from_unix(r.try_get("created_at").map_err(db_err)?)?,
        state_changed_at: from_unix(r.try_get("state_changed_at").map_err(db_err)?)?,
        cross_cert_pem: r.try_get("cross_cert_pem").map_err(db_err)?,
    })
}

fn issuer_from_native_row(r: &rusqlite::Row<'_>) -> Result<IssuerRecord, CaError> {
    fn get<T: rusqlite::types::FromSql>(r: &rusqlite::Row<'_>, col: &str) -> Result<T, CaError> {
        r.get(col).map_err(native::sqlite_err)
    }
    Ok(IssuerRecord {
        id: get(r, "id")?,
        kind: IssuerKind::parse(&get::<String>(r, "kind")?)?,
        state: IssuerState::parse(&get::<String>(r, "state")?)?,
        parent_id: get(r, "parent_id")?,
        subject: get(r, "subject")?,
        cert_pem: get(r, "cert_pem")?,
        key_pem_enc: get(r, "key_pem_enc")?,
        ski: get(r, "ski")?,
        fingerprint: get(r, "fingerprint")?,
        not_before: from_unix(get(r, "not_before")?)?,
        not_after: from_unix(get(r, "not_after")?)?,
        created_at: from_unix(get(r, "created_at")?)?,
        state_changed_at: from_unix(get(r, "state_changed_at")?)?,
        cross_cert_pem: get(r, "cross_cert_pem")?,
    })
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

/// Issuer journal transitions and the rotation lease. Each transition is one transaction that
/// checks the states it moves from, so a crash or a concurrent replica can never leave two active
/// issuers or an issuer half-moved.
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
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        for (id, from, to) in moves {
            let r = sqlx::query("UPDATE issuers SET state = $1, state_changed_at = $2 WHERE id = $3 AND state = $4")
                .bind(to.as_str())
                .bind(unix(at))
                .bind(*id)
                .bind(from.as_str())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            if r.rows_affected() != 1 {
                // Dropping the transaction rolls back the moves made so far.
                return Ok(false);
            }
        }
        writer::insert_audit(self.backend, &mut tx, audit).await.map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }

    /// NotAfter (Unix seconds) of the last-expiring certificate `issuer_id` signed, if any.
    pub async fn last_signed_not_after(&self, issuer_id: &str) -> Result<Option<i64>, CaError> {
        let r = sqlx::query("SELECT MAX(not_after) AS m FROM certificates WHERE issuer_id = $1")
            .bind(issuer_id)
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
        r.try_get::<Option<i64>, _>("m").map_err(db_err)
    }

    /// Takes (or renews) the lease `name` for `holder` until `until`, unless another holder has
    /// an unexpired one. True when `holder` holds it.
    pub async fn acquire_lease(&self, name: &str, holder: &str, now: i64, until: i64) -> Result<bool, CaError> {
        let r = sqlx::query(
            "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE leases.holder = excluded.holder OR leases.expires_at < $4",
        )
        .bind(name)
        .bind(holder)
        .bind(until)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }
}

#[cfg(test)]
mod tests {
    /// A SQLite error that means the database cannot be written (here SQLITE_READONLY, as a full
    /// or failing disk would give) is `StoreUnavailable`; a constraint violation is not.
    #[tokio::test]
    async fn sqlite_errors_are_classified_through_the_any_driver() {
        use sqlx::Executor;
        sqlx::any::install_default_drivers();
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect("sqlite::memory:").await.expect("connect");
        conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)").await.expect("create");
        conn.execute("INSERT INTO t (k) VALUES (1)").await.expect("insert");
        let dup = conn.execute("INSERT INTO t (k) VALUES (1)").await.expect_err("duplicate");
        assert!(matches!(super::db_err(dup), crate::CaError::Store(_)));
        conn.execute("PRAGMA query_only = 1").await.expect("pragma");
        let ro = conn.execute("INSERT INTO t (k) VALUES (2)").await.expect_err("read-only");
        let e = super::db_err(ro);
        assert!(matches!(e, crate::CaError::StoreUnavailable(_)), "{e:?}");
    }

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
