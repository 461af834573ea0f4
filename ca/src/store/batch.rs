//! The group-commit protocol both writers follow: one task owns the writes of the hot paths
//! (issuance, renewal, finalize, nonces, and on SQLite every other change too) and commits them
//! in batches, so the cost of a commit and its fsync is shared instead of paid per write.
//!
//! What a job is ([`Write`]), how a batch is sorted into multi-row statements ([`Sorted`],
//! [`Statements`]), how its answers are delivered (a batch that fails because of one bad write
//! is retried job by job, [`deliver`]), and how it waits for more work while the callers' cores
//! are saturated ([`linger`]) are the same for both backends; committing is each backend's own
//! (`sqlite::writer`: a thread of its own driven through rusqlite; `postgres::writer`: a task on
//! sqlx's pool).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::Backend;
use super::records::CertificateIntent;
use crate::CaError;
use crate::audit::AuditEvent;

/// Largest batch committed in one transaction.
pub(super) const MAX_BATCH: usize = 4096;

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
    /// SQLite only: a change of any other shape (`SqliteDb::write`), run on the writer's
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
    pub(super) fn lost(&self) -> CaError {
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
    pub(super) fn lost(&self) -> CaError {
        CaError::OrderNotReady { order: self.order_id.clone() }
    }
}

/// See [`Write::Sqlite`]. `Fn`, not `FnOnce`: a batch that fails as a whole is retried job by job.
pub(super) type SqliteWrite = Arc<dyn Fn(&rusqlite::Connection) -> Result<u64, CaError> + Send + Sync>;

/// Each job's own answer, in job order, for a batch that committed.
pub(super) type Answers = Vec<Result<u64, CaError>>;

pub(super) struct Job {
    pub(super) write: Write,
    /// Rows the write affected (1, or 0 for a replayed nonce).
    pub(super) reply: oneshot::Sender<Result<u64, CaError>>,
}

/// Queues `write` for the group-commit writer behind `writer` and waits until its batch has
/// committed; returns the rows it affected.
pub(super) async fn submit(writer: &mpsc::Sender<Job>, write: Write) -> Result<u64, CaError> {
    let stopped = || CaError::StoreUnavailable("the store writer has stopped".into());
    let (reply, rx) = oneshot::channel();
    writer.send(Job { write, reply }).await.map_err(|_| stopped())?;
    rx.await.map_err(|_| stopped())?
}

pub(super) fn closed() -> CaError {
    CaError::StoreUnavailable("the store is closed".into())
}

/// Takes a batch apart at its first [`Write::Close`]: the jobs before it are committed, the close
/// is acknowledged once they are, and the jobs after it are refused.
pub(super) fn split_at_close(batch: &mut Vec<Job>) -> Option<(Job, Vec<Job>)> {
    let at = batch.iter().position(|j| matches!(j.write, Write::Close))?;
    let mut rest = batch.split_off(at);
    let close = rest.remove(0);
    Some((close, rest))
}

/// Answers a committed batch. A batch that failed as a whole because of one bad write (e.g. a
/// serial collision) must not fail its neighbours: those jobs are handed back, to be retried one
/// by one so that every caller gets its own answer.
pub(super) fn deliver(batch: &mut Vec<Job>, result: Result<Answers, CaError>) -> Vec<Job> {
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

/// The answer of a batch of one job.
pub(super) fn only_answer(result: Result<Answers, CaError>) -> Result<u64, CaError> {
    result.and_then(|mut answers| answers.pop().unwrap_or(Ok(0)))
}

/// While the callers' runtime has runnable tasks waiting in its queue, its cores are saturated:
/// committing now would spend their time on one more commit's fixed cost, and holding the batch
/// leaves no core idle. So the batch takes in new jobs until that queue is empty (cores would soon
/// idle: commit, so that the answers give them work), [`MAX_LINGER`] has passed or it is full. An
/// idle runtime (a lone issuance, light load) never waits. Blocks the thread: the writer's own.
pub(super) fn linger(rx: &mut mpsc::Receiver<Job>, batch: &mut Vec<Job>, callers: &tokio::runtime::Handle) {
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
pub(super) enum Kind {
    Intent,
    Issued,
    Audit,
}

impl Kind {
    /// Statement prefix, columns per row and the literal placed second in each row.
    pub(super) fn shape(self) -> (&'static str, usize, Option<&'static str>) {
        match self {
            Kind::Intent => (
                "INSERT INTO certificates (serial, status, issuer_id, profile, requester, subject, sans, \
                 key_fingerprint, not_before, not_after, created_at, renewed_from) VALUES ",
                11,
                Some("'intent'"),
            ),
            Kind::Issued => ("INSERT INTO issued_certificates (serial, cert_pem, issued_at) VALUES ", 3, None),
            Kind::Audit => (
                "INSERT INTO audit_events (id, at, actor, action, target, outcome, detail, seq, prev_digest, digest) \
                 VALUES ",
                10,
                None,
            ),
        }
    }
}

/// Statement text by kind and row count, built once (the row counts are powers of two).
#[derive(Default)]
pub(super) struct Statements(HashMap<(Kind, usize), Arc<str>>);

impl Statements {
    pub(super) fn get(&mut self, backend: Backend, kind: Kind, rows: usize) -> Arc<str> {
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
pub(super) struct Sorted<'a> {
    pub(super) intents: Vec<&'a CertificateIntent>,
    pub(super) issued: Vec<(&'a str, &'a str, i64)>,
    pub(super) audits: Vec<&'a AuditEvent>,
    /// (index of the job, renewal): their records join `issued` once their guards held.
    pub(super) renewals: Vec<(usize, &'a RenewalRecord)>,
    /// (index of the job, order record): their records join `issued` once their guards held.
    pub(super) orders: Vec<(usize, &'a OrderRecord)>,
    /// (index of the job, nonce, expiry).
    pub(super) nonces: Vec<(usize, &'a str, i64)>,
    /// (index of the job, write).
    pub(super) sqlite: Vec<(usize, &'a SqliteWrite)>,
}

impl<'a> Sorted<'a> {
    pub(super) fn of(jobs: &'a [Job]) -> Self {
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
pub(super) fn audit_id(ev: &AuditEvent) -> String {
    use ring::rand::SecureRandom;
    let mut rnd = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut rnd).is_err() {
        // Never seen on Linux (getrandom); the nanosecond timestamp still orders the event.
        tracing::error!("the system random generator failed; an audit id has no random part");
    }
    format!("{:020}-{}", ev.at.unix_timestamp_nanos(), hex::encode(rnd))
}

/// Rows per multi-row statement (10 columns x 256 rows stays far below every bind-parameter limit).
const ROWS_PER_STATEMENT: usize = 256;

/// Splits `items` into chunks whose lengths are powers of two (at most [`ROWS_PER_STATEMENT`]), so
/// a batch of any size uses one of a handful of statement shapes, all of them prepared once and
/// then served from sqlx's statement cache instead of being re-prepared for every new batch size.
pub(super) fn pow2_chunks<T>(mut items: &[T]) -> impl Iterator<Item = &[T]> {
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
pub(super) fn multi_row_insert(
    backend: Backend,
    prefix: &str,
    cols: usize,
    rows: usize,
    extra: Option<&str>,
) -> String {
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
