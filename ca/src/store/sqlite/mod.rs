//! The SQLite backend (the embedded default): WAL, `synchronous=FULL` so that a commit is on
//! disk when it returns, and two connections of its own driven synchronously through rusqlite,
//! each on a thread of its own:
//!
//! - the [`writer`]: every change, group-committed. Each batch is one transaction holding
//!   SQLite's single write lock from begin to commit; a change of any shape runs inside it under a
//!   savepoint of its own ([`SqliteDb::write`]), so small state changes share the batch's fsync
//!   instead of each paying for a transaction.
//! - the [`reader`]: every query, answered from read transactions that start at the latest
//!   commit, so a read sees every write that returned before it was asked.
//!
//! sqlx, which runs each SQLite connection on a worker thread and hands every statement to it,
//! is used only to run the migrations when the store opens. rusqlite and sqlx link the same
//! `libsqlite3-sys`, so there is one SQLite library in the process.
//!
//! Each method here is the SQLite half of the [`Store`](super::Store) method of the same name,
//! which documents what it does.

mod acme;
mod canary;
mod certificates;
mod conn;
mod crl;
mod emergency;
mod fleet_share;
mod issuers;
mod lineage;
mod reader;
mod rows;
mod workload;
mod writer;

use std::sync::{Arc, Mutex};

use rusqlite::{Connection, Params, Row};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use tokio::sync::mpsc;

use super::audit_log;
use super::batch::{self, Job, Write};
use crate::CaError;
use crate::audit::AuditEvent;
use conn::sqlite_err;

/// Handle to the SQLite store. Cheap to clone.
#[derive(Debug, Clone)]
pub(super) struct SqliteDb {
    /// The group-commit writer thread.
    writer: mpsc::Sender<Job>,
    /// The reader thread.
    reader: reader::Reader,
}

impl SqliteDb {
    /// Opens (creating it 0600 if needed) the database file of `url` (`sqlite:///abs/path.db`),
    /// runs the migrations and starts the writer and reader threads. The runtime this is called
    /// on is taken to be the one that issues (see [`batch::linger`]).
    pub(super) async fn open(url: &str) -> Result<SqliteDb, CaError> {
        let path = conn::path_of(url)?;
        conn::secure_files(&path)?;
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(10));
        // A pool of one, for the migrator only (its futures are `Send` through a pool, not
        // through a bare connection), closed before the store's own connections open.
        let migrator = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(|e| CaError::StoreUnavailable(format!("{path}: {e}")))?;
        let migrated = sqlx::migrate!("./migrations").run(&migrator).await;
        migrator.close().await;
        migrated.map_err(|e| CaError::Store(format!("migrations: {e}")))?;
        // Again now that WAL mode has created -wal and -shm.
        conn::secure_files(&path)?;
        let (tx, rx) = mpsc::channel(4096);
        writer::start(&path, rx)?;
        let reader = reader::Reader::start(&path)?;
        Ok(SqliteDb { writer: tx, reader })
    }

    /// Queues a write for the group-commit writer and waits until its batch has committed;
    /// returns the rows it affected.
    pub(super) async fn submit(&self, write: Write) -> Result<u64, CaError> {
        batch::submit(&self.writer, write).await
    }

    /// Closes the writer (after committing what it was given) and the reader.
    pub(super) async fn close(&self) {
        if let Err(e) = self.submit(Write::Close).await {
            tracing::debug!(error = %e, "the writer was closed already");
        }
        self.reader.close().await;
    }

    /// Checks both threads: a write job that changes nothing and a read.
    pub(super) async fn ping(&self) -> Result<(), CaError> {
        if self.writer.is_closed() {
            return Err(CaError::StoreUnavailable("the store writer has stopped".into()));
        }
        self.write(|_| Ok(())).await?;
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(sqlite_err)).await
    }

    /// Runs `change` on the writer thread inside the next group-committed batch, isolated from
    /// the rest of the batch by a savepoint (its error undoes its own changes only), and answers
    /// once the batch is on disk. `Fn`, not `FnOnce`: a batch that fails as a whole is retried job
    /// by job, and the answer is that of the run that committed.
    pub(super) async fn write<T: Send + 'static>(
        &self,
        change: impl Fn(&Connection) -> Result<T, CaError> + Send + Sync + 'static,
    ) -> Result<T, CaError> {
        let out = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&out);
        let job = move |c: &Connection| {
            let value = change(c)?;
            *slot.lock().map_err(|_| CaError::Store("a store write panicked".into()))? = Some(value);
            Ok(0)
        };
        self.submit(Write::Sqlite(Arc::new(job))).await?;
        let value = out.lock().map_err(|_| CaError::Store("a store write panicked".into()))?.take();
        value.ok_or_else(|| CaError::Store("a committed store write left no answer".into()))
    }

    /// Runs `query` on the reader thread, in a read transaction that starts at the latest commit.
    pub(super) async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Connection) -> Result<T, CaError> + Send + 'static,
    ) -> Result<T, CaError> {
        self.reader.query(query).await
    }
}

/// The first row `sql` yields, mapped; `None` when there is none.
pub(super) fn one<T>(
    c: &Connection,
    sql: &str,
    params: impl Params,
    map: impl FnOnce(&Row<'_>) -> Result<T, CaError>,
) -> Result<Option<T>, CaError> {
    let mut st = c.prepare_cached(sql).map_err(sqlite_err)?;
    let mut rows = st.query(params).map_err(sqlite_err)?;
    match rows.next().map_err(sqlite_err)? {
        Some(r) => map(r).map(Some),
        None => Ok(None),
    }
}

/// Every row `sql` yields, mapped.
pub(super) fn all<T>(
    c: &Connection,
    sql: &str,
    params: impl Params,
    mut map: impl FnMut(&Row<'_>) -> Result<T, CaError>,
) -> Result<Vec<T>, CaError> {
    let mut st = c.prepare_cached(sql).map_err(sqlite_err)?;
    let mut rows = st.query(params).map_err(sqlite_err)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(sqlite_err)? {
        out.push(map(r)?);
    }
    Ok(out)
}

/// Runs a change; returns the rows it affected.
pub(super) fn exec(c: &Connection, sql: &str, params: impl Params) -> Result<u64, CaError> {
    c.prepare_cached(sql).and_then(|mut st| st.execute(params)).map(|n| n as u64).map_err(sqlite_err)
}

/// Runs `change` inside a write under a savepoint of its own and undoes what it did when it
/// answers false (a guard failed part-way: nothing of it may commit), keeping the rest of the
/// write.
pub(super) fn guarded(
    c: &Connection,
    change: impl FnOnce(&Connection) -> Result<bool, CaError>,
) -> Result<bool, CaError> {
    c.execute_batch("SAVEPOINT guarded").map_err(sqlite_err)?;
    let r = change(c);
    if !matches!(r, Ok(true)) {
        c.execute_batch("ROLLBACK TO guarded").map_err(sqlite_err)?;
    }
    c.execute_batch("RELEASE guarded").map_err(sqlite_err)?;
    r
}

/// Inserts an audit event from inside a [`SqliteDb::write`], so the change and its event share
/// the write's savepoint: both commit, or neither (the head's move included, so a change that
/// rolls back leaves no gap in the chain).
pub(super) fn insert_audit(c: &Connection, ev: &AuditEvent) -> Result<(), CaError> {
    insert_chained(c, &[ev])
}

/// Continues the audit chain with `events`: reads the head (the writer holds SQLite's write lock
/// for the whole batch, so no other writer, in this process or another, moves it meanwhile),
/// inserts the events at the next positions with their digests and moves the head, all inside
/// the caller's transaction or savepoint.
pub(super) fn insert_chained(c: &Connection, events: &[&AuditEvent]) -> Result<(), CaError> {
    if events.is_empty() {
        return Ok(());
    }
    let head = one(c, audit_log::CHAIN_HEAD, [], |r| {
        Ok(audit_log::Head { seq: rows::get(r, "seq")?, digest: rows::get(r, "digest")? })
    })?;
    let mut head = audit_log::head_or_err(head)?;
    for ch in audit_log::chain(&mut head, events) {
        exec(
            c,
            "INSERT INTO audit_events (id, at, actor, action, target, outcome, detail, seq, prev_digest, digest) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            rusqlite::params![
                ch.id,
                ch.at,
                ch.ev.actor,
                ch.ev.action,
                ch.ev.target,
                ch.ev.outcome.as_str(),
                ch.ev.detail,
                ch.seq,
                ch.prev_digest,
                ch.digest
            ],
        )?;
    }
    exec(c, audit_log::SET_CHAIN_HEAD, (head.seq, &head.digest)).map(|_| ())
}
