//! The group-commit writer: one task owns issuance writes and commits them in batches.
//!
//! With SQLite the writer runs on a thread of its own (a single-threaded runtime) with a connection
//! of its own through sqlx's native SQLite driver:
//!
//! - On the callers' runtime, each of the writer's round trips to the SQLite connection's thread
//!   queued it behind every runnable issuance task: right after a large batch is answered that is
//!   thousands of signings, so a batch of a few hundred rows waited tens of milliseconds per
//!   statement while the issuances it held up waited for it, and cores went idle.
//! - The `Any` driver converts every bound argument into its own representation and back.
//! - Without those stalls batches are small, and every commit has a fixed cost (an fsync, WAL
//!   frames for each B-tree it touches, thread hand-offs) paid from the cores that also sign. So
//!   while the callers' runtime has runnable tasks queued (its cores are saturated), a batch waits
//!   a little for more jobs; see [`linger`].
//!
//! PostgreSQL goes through `Any`, on the callers' runtime.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Any, AnyPool, Database, Encode, Executor, IntoArguments, Pool, SqlitePool, Transaction, Type};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use super::records::CertificateIntent;
use super::{Backend, db_err, unix};
use crate::CaError;
use crate::audit::AuditEvent;

/// Largest batch committed in one transaction.
const MAX_BATCH: usize = 4096;

/// Longest a batch waits for more jobs while the callers' cores are saturated.
const MAX_LINGER: Duration = Duration::from_millis(2);

/// How often a waiting batch takes in newly queued jobs.
const LINGER_STEP: Duration = Duration::from_micros(100);

pub(super) enum Write {
    Intent(CertificateIntent),
    Issued {
        serial: String,
        cert_pem: String,
        issued_at: i64,
    },
    Audit(AuditEvent),
    /// Marks an ACME nonce used; affects 0 rows when it already was (a replay).
    Nonce {
        nonce: String,
        expires_at: i64,
    },
}

pub(super) struct Job {
    pub(super) write: Write,
    /// Rows the write affected (1, or 0 for a replayed nonce).
    pub(super) reply: oneshot::Sender<Result<u64, CaError>>,
}

/// The database the writer commits to.
pub(super) enum Sink {
    /// Through the `Any` pool (PostgreSQL).
    Any(Backend, AnyPool),
    /// A dedicated native SQLite pool of one connection, opened with the same pragmas as the `Any`
    /// pool (WAL, synchronous=FULL: a commit is on disk when it returns).
    Sqlite(SqlitePool),
}

/// Starts the SQLite writer on its own thread and connection; returns that connection's pool, which
/// [`super::Store::close`] closes.
pub(super) async fn start_sqlite(url: &str, rx: mpsc::Receiver<Job>) -> Result<SqlitePool, CaError> {
    let url = url.to_owned();
    // The runtime the store is opened on is taken to be the one that issues.
    let callers = tokio::runtime::Handle::try_current().ok();
    let (ready, started) = oneshot::channel();
    std::thread::Builder::new()
        .name("lanyard-store-writer".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready.send(Err(CaError::StoreUnavailable(format!("store writer runtime: {e}"))));
                    return;
                }
            };
            rt.block_on(async move {
                match sqlite_pool(&url).await {
                    Ok(pool) => {
                        let _ = ready.send(Ok(pool.clone()));
                        run(Sink::Sqlite(pool), rx, callers).await;
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                    }
                }
            });
        })
        .map_err(|e| CaError::StoreUnavailable(format!("store writer thread: {e}")))?;
    started.await.map_err(|_| CaError::StoreUnavailable("the store writer has stopped".into()))?
}

/// The writer's SQLite connection, with the pragmas of the `Any` pool: WAL, and synchronous=FULL
/// so that a commit is on disk when it returns.
async fn sqlite_pool(url: &str) -> Result<SqlitePool, CaError> {
    use std::str::FromStr;

    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
    let opts = SqliteConnectOptions::from_str(url)
        .map_err(|e| CaError::Config(format!("database URL: {e}")))?
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true)
        .pragma("cache_size", "-65536")
        .pragma("mmap_size", "268435456")
        .pragma("temp_store", "MEMORY");
    SqlitePoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        // One connection, used back to back: no ping before every batch.
        .test_before_acquire(false)
        .connect_with(opts)
        .await
        .map_err(|e| match db_err(e) {
            CaError::Store(m) => CaError::StoreUnavailable(m),
            other => other,
        })
}

/// Commits batches until every sender is gone. `callers`: the issuing runtime, for [`linger`]; only
/// given when the writer has a thread of its own, since lingering blocks it.
pub(super) async fn run(sink: Sink, mut rx: mpsc::Receiver<Job>, callers: Option<tokio::runtime::Handle>) {
    let mut w = Writer { sink, sql: HashMap::new() };
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if let Some(callers) = &callers {
            linger(&mut rx, &mut batch, callers);
        }
        match w.commit(&batch).await {
            Ok(affected) => {
                for (job, n) in batch.drain(..).zip(affected) {
                    let _ = job.reply.send(Ok(n));
                }
            }
            Err(e) if batch.len() > 1 && !matches!(e, CaError::StoreUnavailable(_)) => {
                // One bad write (e.g. a serial collision) must not fail its neighbours: retry each
                // on its own so every caller gets its own answer.
                for job in batch.drain(..) {
                    let r = w.commit(std::slice::from_ref(&job)).await;
                    let _ = job.reply.send(r.map(|v| v.first().copied().unwrap_or(0)));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                let unavailable = matches!(e, CaError::StoreUnavailable(_));
                for job in batch.drain(..) {
                    let err =
                        if unavailable { CaError::StoreUnavailable(msg.clone()) } else { CaError::Store(msg.clone()) };
                    let _ = job.reply.send(Err(err));
                }
            }
        }
    }
}

/// While the callers' runtime has runnable tasks waiting in its queue, its cores are saturated:
/// committing now would spend their time on one more commit's fixed cost, and holding the batch
/// leaves no core idle. So the batch takes in new jobs until that queue is empty (cores would soon
/// idle: commit, so that the answers give them work), [`MAX_LINGER`] has passed or it is full. An
/// idle runtime (a lone issuance, light load) never waits. Blocks the thread: the writer's own.
fn linger(rx: &mut mpsc::Receiver<Job>, batch: &mut Vec<Job>, callers: &tokio::runtime::Handle) {
    let metrics = callers.metrics();
    let start = Instant::now();
    while batch.len() < MAX_BATCH && metrics.global_queue_depth() > 0 && start.elapsed() < MAX_LINGER {
        std::thread::sleep(LINGER_STEP);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
    }
}

/// The kinds of multi-row statements the writer issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Intent,
    Issued,
    Audit,
}

impl Kind {
    /// Statement prefix, columns per row and the literal placed second in each row.
    fn shape(self) -> (&'static str, usize, Option<&'static str>) {
        match self {
            Kind::Intent => (
                "INSERT INTO certificates (serial, status, issuer_id, profile, requester, subject, sans, \
                 key_fingerprint, not_before, not_after, created_at) VALUES ",
                10,
                Some("'intent'"),
            ),
            Kind::Issued => ("INSERT INTO issued_certificates (serial, cert_pem, issued_at) VALUES ", 3, None),
            Kind::Audit => {
                ("INSERT INTO audit_events (id, at, actor, action, target, outcome, detail) VALUES ", 7, None)
            }
        }
    }
}

struct Writer {
    sink: Sink,
    /// Statement text by kind and row count, built once (the row counts are powers of two).
    sql: HashMap<(Kind, usize), Arc<str>>,
}

impl Writer {
    fn sql(&mut self, backend: Backend, kind: Kind, rows: usize) -> Arc<str> {
        self.sql
            .entry((kind, rows))
            .or_insert_with(|| {
                let (prefix, cols, extra) = kind.shape();
                multi_row_insert(backend, prefix, cols, rows, extra).into()
            })
            .clone()
    }

    /// Commits a batch; returns the rows each job affected, in job order.
    async fn commit(&mut self, jobs: &[Job]) -> Result<Vec<u64>, CaError> {
        match &self.sink {
            Sink::Any(backend, pool) => {
                let (backend, pool) = (*backend, pool.clone());
                commit(&pool, backend, jobs, |k, n| self.sql(backend, k, n)).await
            }
            Sink::Sqlite(pool) => {
                let pool = pool.clone();
                commit(&pool, Backend::Sqlite, jobs, |k, n| self.sql(Backend::Sqlite, k, n)).await
            }
        }
    }
}

/// `rows_affected` of either driver's query result.
trait RowsAffected {
    fn rows(&self) -> u64;
}

impl RowsAffected for sqlx::any::AnyQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

/// Commits a batch through either driver; returns the rows each job affected, in job order.
async fn commit<DB>(
    pool: &Pool<DB>,
    backend: Backend,
    jobs: &[Job],
    mut sql: impl FnMut(Kind, usize) -> Arc<str>,
) -> Result<Vec<u64>, CaError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    DB::QueryResult: RowsAffected,
{
    let mut intents = Vec::new();
    let mut issued = Vec::new();
    let mut audits = Vec::new();
    let mut affected = vec![1u64; jobs.len()];
    let mut tx = pool.begin().await.map_err(db_err)?;
    let nonce_sql = match backend {
        Backend::Sqlite => {
            "INSERT INTO acme_used_nonces (nonce, expires_at) VALUES (?, ?) ON CONFLICT (nonce) DO NOTHING"
        }
        Backend::Postgres => {
            "INSERT INTO acme_used_nonces (nonce, expires_at) VALUES ($1, $2) ON CONFLICT (nonce) DO NOTHING"
        }
    };
    for (k, job) in jobs.iter().enumerate() {
        match &job.write {
            Write::Intent(i) => intents.push(i),
            Write::Issued { serial, cert_pem, issued_at } => issued.push((serial, cert_pem, *issued_at)),
            Write::Audit(ev) => audits.push(ev),
            Write::Nonce { nonce, expires_at } => {
                affected[k] = sqlx::query::<DB>(nonce_sql)
                    .bind(nonce.as_str())
                    .bind(*expires_at)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?
                    .rows();
            }
        }
    }
    // One multi-row statement per kind and chunk: statement overhead, not row count, dominates.
    let now = unix(OffsetDateTime::now_utc());
    for chunk in pow2_chunks(&intents) {
        let mut q = sqlx::query::<DB>(sqlx::AssertSqlSafe(sql(Kind::Intent, chunk.len())));
        for i in chunk {
            q = q
                .bind(i.serial.as_str())
                .bind(i.issuer_id.as_str())
                .bind(i.profile.as_str())
                .bind(i.requester.as_str())
                .bind(i.subject.as_str())
                .bind(i.sans.as_str())
                .bind(i.key_fingerprint.as_str())
                .bind(unix(i.not_before))
                .bind(unix(i.not_after))
                .bind(now);
        }
        q.execute(&mut *tx).await.map_err(db_err)?;
    }
    // The foreign key to `certificates` makes a record without a prior intent impossible.
    for chunk in pow2_chunks(&issued) {
        let mut q = sqlx::query::<DB>(sqlx::AssertSqlSafe(sql(Kind::Issued, chunk.len())));
        for (serial, pem, at) in chunk {
            q = q.bind(serial.as_str()).bind(pem.as_str()).bind(*at);
        }
        q.execute(&mut *tx).await.map_err(db_err)?;
    }
    for chunk in pow2_chunks(&audits) {
        let q = sqlx::query::<DB>(sqlx::AssertSqlSafe(sql(Kind::Audit, chunk.len())));
        bind_audits(q, chunk).execute(&mut *tx).await.map_err(db_err)?;
    }
    tx.commit().await.map_err(db_err)?;
    Ok(affected)
}

/// Rows per multi-row statement (10 columns x 256 rows stays far below every bind-parameter limit).
const ROWS_PER_STATEMENT: usize = 256;

/// Splits `items` into chunks whose lengths are powers of two (at most [`ROWS_PER_STATEMENT`]), so
/// a batch of any size uses one of a handful of statement shapes, all of them prepared once and
/// then served from sqlx's statement cache instead of being re-prepared for every new batch size.
fn pow2_chunks<T>(mut items: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        if items.is_empty() {
            return None;
        }
        let n = items.len().min(ROWS_PER_STATEMENT);
        let take = 1usize << (usize::BITS - 1 - n.leading_zeros());
        let (head, tail) = items.split_at(take);
        items = tail;
        Some(head)
    })
}

/// `prefix` followed by `rows` tuples of placeholders; `extra` is a literal placed second in every
/// tuple (the intent status). Only placeholders are generated, never values.
///
/// PostgreSQL needs `$n`. SQLite gets anonymous `?`: for named parameters sqlx asks SQLite for each
/// parameter's name, a linear scan per parameter, which made large statements quadratic.
fn multi_row_insert(backend: Backend, prefix: &str, cols: usize, rows: usize, extra: Option<&str>) -> String {
    use std::fmt::Write as _;
    let mut sql = String::with_capacity(prefix.len() + rows * cols * 6);
    sql.push_str(prefix);
    let mut n = 0;
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..cols {
            n += 1;
            if c > 0 {
                sql.push_str(", ");
            }
            match backend {
                Backend::Sqlite => sql.push('?'),
                Backend::Postgres => {
                    let _ = write!(sql, "${n}");
                }
            }
            if c == 0
                && let Some(e) = extra
            {
                let _ = write!(sql, ", {e}");
            }
        }
        sql.push(')');
    }
    sql
}

pub(super) async fn insert_audit(
    backend: Backend,
    tx: &mut Transaction<'static, Any>,
    ev: &AuditEvent,
) -> Result<(), sqlx::Error> {
    insert_audits(backend, tx, &[ev]).await
}

/// Inserts audit events through the `Any` pool.
async fn insert_audits(
    backend: Backend,
    tx: &mut Transaction<'static, Any>,
    events: &[&AuditEvent],
) -> Result<(), sqlx::Error> {
    let (prefix, cols, extra) = Kind::Audit.shape();
    let q = sqlx::query(sqlx::AssertSqlSafe(multi_row_insert(backend, prefix, cols, events.len(), extra)));
    bind_audits(q, events).execute(&mut **tx).await.map(|_| ())
}

/// Binds audit events to a multi-row insert. Ids are the event time in nanoseconds followed by
/// random bits, so they sort by time and never collide across replicas.
fn bind_audits<'q, DB>(
    mut q: sqlx::query::Query<'q, DB, DB::Arguments>,
    events: &[&AuditEvent],
) -> sqlx::query::Query<'q, DB, DB::Arguments>
where
    DB: Database,
    for<'a> String: Encode<'a, DB> + Type<DB>,
    for<'a> &'a str: Encode<'a, DB> + Type<DB>,
    for<'a> i64: Encode<'a, DB> + Type<DB>,
{
    use ring::rand::SecureRandom;
    let rng = ring::rand::SystemRandom::new();
    for ev in events {
        let mut rnd = [0u8; 8];
        let _ = rng.fill(&mut rnd);
        q = q
            .bind(format!("{:020}-{}", ev.at.unix_timestamp_nanos(), hex::encode(rnd)))
            .bind(unix(ev.at))
            .bind(ev.actor.as_str())
            .bind(ev.action.as_str())
            .bind(ev.target.as_str())
            .bind(ev.outcome.as_str())
            .bind(ev.detail.as_str());
    }
    q
}

#[cfg(test)]
mod tests {
    #[test]
    fn chunks_are_powers_of_two() {
        let v: Vec<u32> = (0..700).collect();
        let sizes: Vec<usize> = super::pow2_chunks(&v).map(<[u32]>::len).collect();
        assert_eq!(sizes, vec![256, 256, 128, 32, 16, 8, 4]);
        assert_eq!(super::pow2_chunks(&v[..0]).count(), 0);
        assert_eq!(super::pow2_chunks(&v[..1]).map(<[u32]>::len).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn multi_row_placeholders() {
        use super::{Backend, multi_row_insert};
        assert_eq!(multi_row_insert(Backend::Postgres, "X ", 2, 2, None), "X ($1, $2), ($3, $4)");
        assert_eq!(multi_row_insert(Backend::Postgres, "X ", 2, 1, Some("'i'")), "X ($1, 'i', $2)");
        assert_eq!(multi_row_insert(Backend::Sqlite, "X ", 2, 2, Some("'i'")), "X (?, 'i', ?), (?, 'i', ?)");
    }
}
