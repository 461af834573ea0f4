//! The SQLite writer: a thread of its own with a connection of its own ([`super::conn`]), so a
//! batch (begin, one multi-row INSERT per kind, commit) runs start to finish on one thread. Each
//! hand-off to another thread per statement (sqlx runs every SQLite connection on a worker thread
//! of its own) was a futex wake-up that, on cores busy signing, waited for a time slice; a batch of
//! a dozen renewals took 2.6 ms, most of it waiting, and every issuance waits for two batches.

use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{Connection, Transaction, TransactionBehavior, params_from_iter};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use super::{conn, exec, one};
use crate::CaError;
use crate::store::audit_log;
use crate::store::batch::{
    Answers, Job, Kind, MAX_BATCH, ORDER_VALID, RenewalRecord, Sorted, SqliteWrite, Statements, closed, deliver,
    linger, only_answer, pow2_chunks, split_at_close,
};
use crate::store::{Backend, unix};

/// Opens the writer's connection to the database file at `path` and starts the writer thread.
/// The runtime this is called on is taken to be the one that issues (see [`linger`]).
pub(super) fn start(path: &str, rx: mpsc::Receiver<Job>) -> Result<(), CaError> {
    let conn = conn::open(path, conn::Access::ReadWrite)?;
    let callers = tokio::runtime::Handle::try_current().ok();
    std::thread::Builder::new()
        .name("lanyard-store-writer".into())
        .spawn(move || run(conn, rx, callers))
        .map(|_| ())
        .map_err(|e| CaError::StoreUnavailable(format!("store writer thread: {e}")))
}

/// Commits batches until every sender is gone or the store is closed.
fn run(conn: Connection, mut rx: mpsc::Receiver<Job>, callers: Option<tokio::runtime::Handle>) {
    let mut conn = Some(conn);
    let mut sql = Statements::default();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.blocking_recv_many(&mut batch, MAX_BATCH) > 0 {
        if let Some(callers) = &callers {
            linger(&mut rx, &mut batch, callers);
        }
        let close = split_at_close(&mut batch);
        if let Some(c) = conn.as_mut() {
            let r = commit(c, &batch, &mut sql);
            for job in deliver(&mut batch, r) {
                let r = commit(c, std::slice::from_ref(&job), &mut sql);
                job.reply.send(only_answer(r)).ok(); // a caller that stopped waiting needs no answer
            }
        }
        for job in batch.drain(..) {
            job.reply.send(Err(closed())).ok(); // a caller that stopped waiting needs no answer
        }
        if let Some((close, rest)) = close {
            let result = match conn.take().map(Connection::close) {
                Some(Err((_, e))) => Err(conn::sqlite_err(e)),
                _ => Ok(0),
            };
            close.reply.send(result).ok(); // a caller that stopped waiting needs no answer
            for job in rest {
                job.reply.send(Err(closed())).ok(); // a caller that stopped waiting needs no answer
            }
        }
    }
}

fn text(s: &str) -> ToSqlOutput<'_> {
    ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes()))
}

fn int(n: i64) -> ToSqlOutput<'static> {
    ToSqlOutput::Owned(Value::Integer(n))
}

/// Commits a batch in one transaction; returns each job's answer (rows affected), in job order.
fn commit(conn: &mut Connection, jobs: &[Job], sql: &mut Statements) -> Result<Answers, CaError> {
    let mut rows = Sorted::of(jobs);
    let mut affected: Answers = jobs.iter().map(|_| Ok(1)).collect();
    // IMMEDIATE: the write lock from the start, so the audit chain's head read below cannot be
    // overtaken by another process's writer (a deferred transaction would fail to upgrade).
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(conn::sqlite_err)?;
    for (k, write) in std::mem::take(&mut rows.sqlite) {
        affected[k] = run_isolated(&tx, write)?;
    }
    for (k, r) in std::mem::take(&mut rows.renewals) {
        if supersede(&tx, r)? {
            rows.issued.push((&r.serial, &r.cert_pem, r.issued_at));
            rows.audits.extend(r.audit.as_ref());
        } else {
            affected[k] = Err(r.lost());
        }
    }
    for (k, o) in std::mem::take(&mut rows.orders) {
        // The batch holds SQLite's write lock: the guard sees every finalize committed before,
        // and one earlier in this batch.
        let n = tx
            .prepare_cached(ORDER_VALID)
            .and_then(|mut s| s.execute((&o.serial, &o.order_id)))
            .map_err(conn::sqlite_err)?;
        if n == 1 {
            rows.issued.push((&o.serial, &o.cert_pem, o.issued_at));
        } else {
            affected[k] = Err(o.lost());
        }
    }
    for (k, nonce, expires_at) in rows.nonces {
        let n = tx
            .prepare_cached(
                "INSERT INTO acme_used_nonces (nonce, expires_at) VALUES (?1, ?2) ON CONFLICT (nonce) DO NOTHING",
            )
            .and_then(|mut s| s.execute((nonce, expires_at)))
            .map_err(conn::sqlite_err)?;
        affected[k] = Ok(n as u64);
    }
    let now = unix(OffsetDateTime::now_utc());
    for chunk in pow2_chunks(&rows.intents) {
        let values = chunk.iter().flat_map(|i| {
            [
                text(&i.serial),
                text(&i.issuer_id),
                text(&i.profile),
                text(&i.requester),
                text(&i.subject),
                text(&i.sans),
                text(&i.key_fingerprint),
                int(unix(i.not_before)),
                int(unix(i.not_after)),
                int(now),
                i.renewed_from.as_deref().map_or(ToSqlOutput::Owned(Value::Null), text),
            ]
        });
        insert(&tx, sql, Kind::Intent, chunk.len(), values)?;
    }
    for chunk in pow2_chunks(&rows.issued) {
        let values = chunk.iter().flat_map(|(serial, pem, at)| [text(serial), text(pem), int(*at)]);
        insert(&tx, sql, Kind::Issued, chunk.len(), values)?;
    }
    if !rows.audits.is_empty() {
        // After every job's savepoint: the head as the jobs that committed left it.
        let head = one(&tx, audit_log::CHAIN_HEAD, [], |r| {
            Ok(audit_log::Head { seq: super::rows::get(r, "seq")?, digest: super::rows::get(r, "digest")? })
        })?;
        let mut head = audit_log::head_or_err(head)?;
        let chained = audit_log::chain(&mut head, &rows.audits);
        for chunk in pow2_chunks(&chained) {
            let values = chunk.iter().flat_map(|ch| {
                [
                    text(&ch.id),
                    int(ch.at),
                    text(&ch.ev.actor),
                    text(&ch.ev.action),
                    text(&ch.ev.target),
                    text(ch.ev.outcome.as_str()),
                    text(&ch.ev.detail),
                    int(ch.seq),
                    text(&ch.prev_digest),
                    text(&ch.digest),
                ]
            });
            insert(&tx, sql, Kind::Audit, chunk.len(), values)?;
        }
        exec(&tx, audit_log::SET_CHAIN_HEAD, (head.seq, &head.digest))?;
    }
    tx.commit().map_err(conn::sqlite_err)?;
    Ok(affected)
}

/// Applies the guards of a renewal ([`RenewalRecord`]); false, and nothing changed, when one of
/// them failed. The writer is the only writer of this connection and SQLite's write lock is held
/// for the whole batch, so the guards see every renewal and revocation committed before.
fn supersede(tx: &Transaction<'_>, r: &RenewalRecord) -> Result<bool, CaError> {
    let exec = |sql: &str, params: &[&dyn rusqlite::ToSql]| {
        tx.prepare_cached(sql).and_then(|mut s| s.execute(params)).map_err(conn::sqlite_err)
    };
    let Some(prev) = &r.replaces else {
        // The common case: one guarded UPDATE; when it fails nothing was written.
        let n = exec(
            "UPDATE certificates SET superseded_by = ?1, superseded_at = ?2 \
             WHERE serial = ?3 AND revoked_at IS NULL AND superseded_by IS NULL",
            &[&r.serial, &r.issued_at, &r.predecessor],
        )?;
        return Ok(n == 1);
    };
    tx.execute_batch("SAVEPOINT renewal").map_err(conn::sqlite_err)?;
    let moved = exec(
        "UPDATE certificates SET superseded_by = ?1 \
         WHERE serial = ?2 AND revoked_at IS NULL AND superseded_by = ?3 AND superseded_at > ?4",
        &[&r.serial, &r.predecessor, prev, &r.window_start],
    )? == 1;
    let replaced = moved
        && exec(
            "UPDATE certificates SET revoked_at = ?1, revocation_reason = 4 \
             WHERE serial = ?2 AND revoked_at IS NULL AND superseded_by IS NULL",
            &[&r.issued_at, prev],
        )? == 1;
    if !replaced {
        tx.execute_batch("ROLLBACK TO renewal").map_err(conn::sqlite_err)?;
    }
    tx.execute_batch("RELEASE renewal").map_err(conn::sqlite_err)?;
    Ok(replaced)
}

/// Runs one [`crate::store::batch::Write::Sqlite`] under a savepoint: its own failure rolls back its own changes
/// and becomes its answer; a failure to set up or release the savepoint fails the batch.
fn run_isolated(tx: &Transaction<'_>, write: &SqliteWrite) -> Result<Result<u64, CaError>, CaError> {
    tx.execute_batch("SAVEPOINT job").map_err(conn::sqlite_err)?;
    let r = write(tx);
    if r.is_err() {
        tx.execute_batch("ROLLBACK TO job").map_err(conn::sqlite_err)?;
    }
    tx.execute_batch("RELEASE job").map_err(conn::sqlite_err)?;
    match r {
        // The database itself failed (full, I/O): the batch cannot commit either.
        Err(e @ CaError::StoreUnavailable(_)) => Err(e),
        r => Ok(r),
    }
}

/// Runs one multi-row INSERT of `rows` rows.
fn insert<'v>(
    tx: &Transaction<'_>,
    sql: &mut Statements,
    kind: Kind,
    rows: usize,
    values: impl Iterator<Item = ToSqlOutput<'v>>,
) -> Result<(), CaError> {
    let text = sql.get(Backend::Sqlite, kind, rows);
    tx.prepare_cached(&text).and_then(|mut s| s.execute(params_from_iter(values))).map(|_| ()).map_err(conn::sqlite_err)
}
