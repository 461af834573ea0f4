//! The group-commit writer: one task owns issuance writes and commits them in batches.
//!
//! With SQLite the writer is a thread of its own holding a connection of its own, driven
//! synchronously through rusqlite (see [`sqlite`]): a batch is begin, a few multi-row INSERTs and
//! a commit with one fsync, with no hand-off to another thread per statement. Each such hand-off
//! (sqlx runs every SQLite connection on a worker thread of its own) was a futex wake-up that, on
//! cores busy signing, waited for a time slice; a batch of a dozen renewals took 2.6 ms, most of it
//! waiting, and every issuance waits for two batches (intent, then record).
//!
//! While the callers' runtime has runnable tasks queued (its cores are saturated), a batch waits a
//! little for more jobs; see [`linger`].
//!
//! PostgreSQL goes through sqlx's `Any` pool, on the callers' runtime.

mod sqlite;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) use sqlite::start as start_sqlite;
use sqlx::{Any, AnyPool, Transaction};
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
    /// Step 3 of a renewal: the successor's record and the predecessor's superseded mark, which
    /// commit together or not at all ([`RenewalRecord`]).
    Renewed(RenewalRecord),
    /// Step 3 of an ACME finalize: the certificate's record and its order's move from `ready` to
    /// `valid`, which commit together or not at all ([`OrderRecord`]).
    OrderIssued(OrderRecord),
    /// Marks an ACME nonce used; affects 0 rows when it already was (a replay).
    Nonce {
        nonce: String,
        expires_at: i64,
    },
    /// SQLite only: a write of any other shape (the ACME state changes), run on the writer's
    /// connection inside the batch's transaction, under a savepoint of its own so that its failure
    /// undoes only its own changes. Returns what it reports as rows affected.
    Sqlite(SqliteWrite),
    /// Not a write: the writer commits what came before, closes its connection and from then on
    /// answers every job with `StoreUnavailable` ([`super::Store::close`]).
    Close,
}

/// The record of a renewed certificate. Besides inserting the successor's record like
/// [`Write::Issued`], it moves the predecessor's `superseded_by` from `replaces` to `serial`,
/// guarded by `replaces` (the value the renewal saw before signing) and by the predecessor being
/// unrevoked, so two renewals of one certificate racing (in one batch, on two replicas) cannot
/// both be recorded. When `replaces` is a previous successor (the lost-response retry), that
/// successor is revoked (superseded) in the same step, guarded by it being unrevoked and not
/// renewed itself, and only while the predecessor's first renewal is later than `window_start`.
/// A guard that fails refuses this job alone ([`CaError::Superseded`]); its neighbours commit.
#[derive(Debug)]
pub(crate) struct RenewalRecord {
    pub(crate) serial: String,
    pub(crate) cert_pem: String,
    pub(crate) issued_at: i64,
    pub(crate) predecessor: String,
    pub(crate) replaces: Option<String>,
    pub(crate) window_start: i64,
    /// The audit event of the revocation of `replaces`.
    pub(crate) audit: Option<AuditEvent>,
}

impl RenewalRecord {
    /// The refusal when a guard fails: someone else renewed or revoked the lineage since the
    /// renewal looked at it.
    fn lost(&self) -> CaError {
        CaError::Superseded {
            serial: self.predecessor.clone(),
            detail: match &self.replaces {
                None => "it was renewed or revoked while this renewal was being signed".into(),
                Some(prev) => format!(
                    "its successor {prev} was renewed or revoked, or the retry window closed, while this renewal \
                     was being signed"
                ),
            },
        }
    }
}

/// The record of a certificate issued for an ACME order. Besides inserting the record like
/// [`Write::Issued`], it moves the order to `valid` with `cert_serial` set, guarded by the order
/// still being `ready`: so a crash leaves either a ready order and no certificate record, or a
/// valid order with its certificate, and of two finalizes of one order racing (in one batch, on
/// two replicas) only one is recorded. A failed guard refuses this job alone
/// ([`CaError::OrderNotReady`]); its neighbours commit.
#[derive(Debug)]
pub(crate) struct OrderRecord {
    pub(crate) serial: String,
    pub(crate) cert_pem: String,
    pub(crate) issued_at: i64,
    pub(crate) order_id: String,
}

/// The guarded move of [`OrderRecord`]. The literal statuses are [`OrderStatus::Ready`] and
/// [`OrderStatus::Valid`], a transition [`OrderStatus::can_become`] allows (checked in the tests).
///
/// [`OrderStatus::Ready`]: crate::ra::OrderStatus::Ready
/// [`OrderStatus::Valid`]: crate::ra::OrderStatus::Valid
/// [`OrderStatus::can_become`]: crate::ra::OrderStatus::can_become
pub(super) const ORDER_VALID: &str =
    "UPDATE acme_orders SET status = 'valid', cert_serial = $1 WHERE id = $2 AND status = 'ready'";

impl OrderRecord {
    /// The refusal when the guard fails: the order was finalized, invalidated or expired since
    /// the finalize looked at it.
    fn lost(&self) -> CaError {
        CaError::OrderNotReady { order: self.order_id.clone() }
    }
}

/// See [`Write::Sqlite`]. `Fn`, not `FnOnce`: a batch that fails as a whole is retried job by job.
pub(super) type SqliteWrite = Arc<dyn Fn(&rusqlite::Connection) -> Result<u64, CaError> + Send + Sync>;

/// Each job's own answer, in job order, for a batch that committed.
type Answers = Vec<Result<u64, CaError>>;

pub(super) struct Job {
    pub(super) write: Write,
    /// Rows the write affected (1, or 0 for a replayed nonce).
    pub(super) reply: oneshot::Sender<Result<u64, CaError>>,
}

fn closed() -> CaError {
    CaError::StoreUnavailable("the store is closed".into())
}

/// Takes a batch apart at its first [`Write::Close`]: the jobs before it are committed, the close
/// is acknowledged once they are, and the jobs after it are refused.
fn split_at_close(batch: &mut Vec<Job>) -> Option<(Job, Vec<Job>)> {
    let at = batch.iter().position(|j| matches!(j.write, Write::Close))?;
    let mut rest = batch.split_off(at);
    let close = rest.remove(0);
    Some((close, rest))
}

/// Answers a committed batch. A batch that failed as a whole because of one bad write (e.g. a
/// serial collision) must not fail its neighbours: those jobs are handed back, to be retried one
/// by one so that every caller gets its own answer.
fn deliver(batch: &mut Vec<Job>, result: Result<Answers, CaError>) -> Vec<Job> {
    match result {
        Ok(answers) => {
            for (job, answer) in batch.drain(..).zip(answers) {
                job.reply.send(answer).ok(); // a caller that stopped waiting needs no answer
            }
            Vec::new()
        }
        Err(e) if batch.len() > 1 && !matches!(e, CaError::StoreUnavailable(_)) => std::mem::take(batch),
        Err(e) => {
            let msg = e.to_string();
            let unavailable = matches!(e, CaError::StoreUnavailable(_));
            for job in batch.drain(..) {
                let err =
                    if unavailable { CaError::StoreUnavailable(msg.clone()) } else { CaError::Store(msg.clone()) };
                job.reply.send(Err(err)).ok(); // a caller that stopped waiting needs no answer
            }
            Vec::new()
        }
    }
}

/// The PostgreSQL writer: commits batches through the `Any` pool until every sender is gone.
pub(super) async fn run_any(backend: Backend, pool: AnyPool, mut rx: mpsc::Receiver<Job>) {
    let mut sql = Statements::default();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut open = true;
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let close = split_at_close(&mut batch);
        if open {
            let r = commit_any(&pool, backend, &batch, &mut sql).await;
            for job in deliver(&mut batch, r) {
                let r = commit_any(&pool, backend, std::slice::from_ref(&job), &mut sql).await;
                job.reply.send(only_answer(r)).ok(); // a caller that stopped waiting needs no answer
            }
        }
        for job in batch.drain(..) {
            job.reply.send(Err(closed())).ok(); // a caller that stopped waiting needs no answer
        }
        if let Some((close, rest)) = close {
            open = false;
            close.reply.send(Ok(0)).ok(); // a caller that stopped waiting needs no answer
            for job in rest {
                job.reply.send(Err(closed())).ok(); // a caller that stopped waiting needs no answer
            }
        }
    }
}

/// The answer of a batch of one job.
fn only_answer(result: Result<Answers, CaError>) -> Result<u64, CaError> {
    result.and_then(|mut answers| answers.pop().unwrap_or(Ok(0)))
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
                 key_fingerprint, not_before, not_after, created_at, renewed_from) VALUES ",
                11,
                Some("'intent'"),
            ),
            Kind::Issued => ("INSERT INTO issued_certificates (serial, cert_pem, issued_at) VALUES ", 3, None),
            Kind::Audit => {
                ("INSERT INTO audit_events (id, at, actor, action, target, outcome, detail) VALUES ", 7, None)
            }
        }
    }
}

/// Statement text by kind and row count, built once (the row counts are powers of two).
#[derive(Default)]
struct Statements(HashMap<(Kind, usize), Arc<str>>);

impl Statements {
    fn get(&mut self, backend: Backend, kind: Kind, rows: usize) -> Arc<str> {
        self.0
            .entry((kind, rows))
            .or_insert_with(|| {
                let (prefix, cols, extra) = kind.shape();
                multi_row_insert(backend, prefix, cols, rows, extra).into()
            })
            .clone()
    }
}

/// A batch sorted by kind, in the order the rows are inserted: intents before the records that
/// reference them (the foreign key makes a record without a prior intent impossible).
#[derive(Default)]
struct Sorted<'a> {
    intents: Vec<&'a CertificateIntent>,
    issued: Vec<(&'a str, &'a str, i64)>,
    audits: Vec<&'a AuditEvent>,
    /// (index of the job, renewal): their records join `issued` once their guards held.
    renewals: Vec<(usize, &'a RenewalRecord)>,
    /// (index of the job, order record): their records join `issued` once their guards held.
    orders: Vec<(usize, &'a OrderRecord)>,
    /// (index of the job, nonce, expiry).
    nonces: Vec<(usize, &'a str, i64)>,
    /// (index of the job, write).
    sqlite: Vec<(usize, &'a SqliteWrite)>,
}

impl<'a> Sorted<'a> {
    fn of(jobs: &'a [Job]) -> Self {
        let mut s = Sorted::default();
        for (k, job) in jobs.iter().enumerate() {
            match &job.write {
                Write::Intent(i) => s.intents.push(i),
                Write::Issued { serial, cert_pem, issued_at } => s.issued.push((serial, cert_pem, *issued_at)),
                Write::Audit(ev) => s.audits.push(ev),
                Write::Renewed(r) => s.renewals.push((k, r)),
                Write::OrderIssued(o) => s.orders.push((k, o)),
                Write::Nonce { nonce, expires_at } => s.nonces.push((k, nonce, *expires_at)),
                Write::Sqlite(w) => s.sqlite.push((k, w)),
                Write::Close => {}
            }
        }
        s
    }
}

/// Audit event ids: the event time in nanoseconds followed by random bits, so they sort by time
/// and never collide across replicas.
fn audit_id(ev: &AuditEvent) -> String {
    use ring::rand::SecureRandom;
    let mut rnd = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut rnd).is_err() {
        // Never seen on Linux (getrandom); the nanosecond timestamp still orders the event.
        tracing::error!("the system random generator failed; an audit id has no random part");
    }
    format!("{:020}-{}", ev.at.unix_timestamp_nanos(), hex::encode(rnd))
}

/// Commits a batch through the `Any` pool; returns the rows each job affected, in job order.
async fn commit_any(pool: &AnyPool, backend: Backend, jobs: &[Job], sql: &mut Statements) -> Result<Answers, CaError> {
    let mut rows = Sorted::of(jobs);
    let mut affected: Answers = jobs.iter().map(|_| Ok(1)).collect();
    for (k, _) in &rows.sqlite {
        affected[*k] = Err(CaError::Store("a SQLite write reached the PostgreSQL writer".into()));
    }
    let mut tx = pool.begin().await.map_err(db_err)?;
    let nonce_sql = match backend {
        Backend::Sqlite => {
            "INSERT INTO acme_used_nonces (nonce, expires_at) VALUES (?, ?) ON CONFLICT (nonce) DO NOTHING"
        }
        Backend::Postgres => {
            "INSERT INTO acme_used_nonces (nonce, expires_at) VALUES ($1, $2) ON CONFLICT (nonce) DO NOTHING"
        }
    };
    for (k, nonce, expires_at) in rows.nonces {
        affected[k] = Ok(sqlx::query(nonce_sql)
            .bind(nonce)
            .bind(expires_at)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected());
    }
    for (k, r) in std::mem::take(&mut rows.renewals) {
        if supersede_any(&mut tx, r).await.map_err(db_err)? {
            rows.issued.push((&r.serial, &r.cert_pem, r.issued_at));
            rows.audits.extend(r.audit.as_ref());
        } else {
            affected[k] = Err(r.lost());
        }
    }
    for (k, o) in std::mem::take(&mut rows.orders) {
        // Read committed: a concurrent finalize holding the row is waited for, then the guard is
        // re-checked on the committed row.
        let n = sqlx::query(ORDER_VALID)
            .bind(&o.serial)
            .bind(&o.order_id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
        if n == 1 {
            rows.issued.push((&o.serial, &o.cert_pem, o.issued_at));
        } else {
            affected[k] = Err(o.lost());
        }
    }
    // One multi-row statement per kind and chunk: statement overhead, not row count, dominates.
    let now = unix(OffsetDateTime::now_utc());
    for chunk in pow2_chunks(&rows.intents) {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.get(backend, Kind::Intent, chunk.len())));
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
                .bind(now)
                .bind(i.renewed_from.as_deref());
        }
        q.execute(&mut *tx).await.map_err(db_err)?;
    }
    for chunk in pow2_chunks(&rows.issued) {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.get(backend, Kind::Issued, chunk.len())));
        for (serial, pem, at) in chunk {
            q = q.bind(*serial).bind(*pem).bind(*at);
        }
        q.execute(&mut *tx).await.map_err(db_err)?;
    }
    for chunk in pow2_chunks(&rows.audits) {
        let q = sqlx::query(sqlx::AssertSqlSafe(sql.get(backend, Kind::Audit, chunk.len())));
        bind_audits(q, chunk).execute(&mut *tx).await.map_err(db_err)?;
    }
    tx.commit().await.map_err(db_err)?;
    Ok(affected)
}

/// Applies the guards of a renewal through the `Any` pool (PostgreSQL); false, and nothing
/// changed, when one of them failed. Under PostgreSQL's read committed isolation each guarded
/// UPDATE waits for a concurrent transaction holding the row and then re-checks its guard on the
/// committed row, so a concurrent renewal or revocation of the same certificate makes it fail.
async fn supersede_any(tx: &mut Transaction<'static, Any>, r: &RenewalRecord) -> Result<bool, sqlx::Error> {
    let Some(prev) = &r.replaces else {
        let n = sqlx::query(
            "UPDATE certificates SET superseded_by = $1, superseded_at = $2 \
             WHERE serial = $3 AND revoked_at IS NULL AND superseded_by IS NULL",
        )
        .bind(&r.serial)
        .bind(r.issued_at)
        .bind(&r.predecessor)
        .execute(&mut **tx)
        .await?;
        return Ok(n.rows_affected() == 1);
    };
    sqlx::query("SAVEPOINT renewal").execute(&mut **tx).await?;
    let moved = sqlx::query(
        "UPDATE certificates SET superseded_by = $1 \
         WHERE serial = $2 AND revoked_at IS NULL AND superseded_by = $3 AND superseded_at > $4",
    )
    .bind(&r.serial)
    .bind(&r.predecessor)
    .bind(prev)
    .bind(r.window_start)
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1;
    let replaced = moved
        && sqlx::query(
            "UPDATE certificates SET revoked_at = $1, revocation_reason = 4 \
             WHERE serial = $2 AND revoked_at IS NULL AND superseded_by IS NULL",
        )
        .bind(r.issued_at)
        .bind(prev)
        .execute(&mut **tx)
        .await?
        .rows_affected()
            == 1;
    if !replaced {
        sqlx::query("ROLLBACK TO SAVEPOINT renewal").execute(&mut **tx).await?;
    }
    sqlx::query("RELEASE SAVEPOINT renewal").execute(&mut **tx).await?;
    Ok(replaced)
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
                    write!(sql, "${n}").ok(); // writing to a String cannot fail
                }
            }
            if c == 0
                && let Some(e) = extra
            {
                write!(sql, ", {e}").ok();
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

/// Inserts an audit event on the SQLite writer's connection from inside a [`Write::Sqlite`] job,
/// so the job's state change and its event share the job's savepoint: both commit, or neither.
pub(super) fn insert_audit_sqlite(c: &rusqlite::Connection, ev: &AuditEvent) -> Result<(), CaError> {
    c.prepare_cached(
        "INSERT INTO audit_events (id, at, actor, action, target, outcome, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut s| {
        s.execute((audit_id(ev), unix(ev.at), &ev.actor, &ev.action, &ev.target, ev.outcome.as_str(), &ev.detail))
    })
    .map(|_| ())
    .map_err(super::native::sqlite_err)
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

/// Binds audit events to a multi-row insert.
fn bind_audits<'q>(
    mut q: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>,
    events: &[&AuditEvent],
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments> {
    for ev in events {
        q = q
            .bind(audit_id(ev))
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
