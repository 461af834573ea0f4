//! The PostgreSQL writer: a task on the callers' runtime that commits each batch of the
//! group-commit protocol ([`crate::store::batch`]) in one transaction through sqlx's pool.
//! Several replicas may write at once: every guarded statement re-checks its guard on the
//! committed row under read committed isolation.

use sqlx::{Any, AnyPool, Transaction};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use super::db_err;
use super::rows::get;
use crate::CaError;
use crate::audit::AuditEvent;
use crate::store::audit_log;
use crate::store::batch::{
    Answers, Job, Kind, MAX_BATCH, ORDER_VALID, RenewalRecord, Sorted, Statements, closed, deliver, multi_row_insert,
    only_answer, pow2_chunks, split_at_close,
};
use crate::store::{Backend, unix};

/// Commits batches through the pool until every sender is gone.
pub(super) async fn run(pool: AnyPool, mut rx: mpsc::Receiver<Job>) {
    let mut sql = Statements::default();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut open = true;
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let close = split_at_close(&mut batch);
        if open {
            let r = commit(&pool, &batch, &mut sql).await;
            for job in deliver(&mut batch, r) {
                let r = commit(&pool, std::slice::from_ref(&job), &mut sql).await;
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

/// Commits a batch in one transaction; returns the rows each job affected, in job order.
async fn commit(pool: &AnyPool, jobs: &[Job], sql: &mut Statements) -> Result<Answers, CaError> {
    let mut rows = Sorted::of(jobs);
    let mut affected: Answers = jobs.iter().map(|_| Ok(1)).collect();
    for (k, _) in &rows.sqlite {
        affected[*k] = Err(CaError::Store("a SQLite write reached the PostgreSQL writer".into()));
    }
    let mut tx = pool.begin().await.map_err(db_err)?;
    let nonce_sql = "INSERT INTO acme_used_nonces (nonce, expires_at) VALUES ($1, $2) ON CONFLICT (nonce) DO NOTHING";
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
        if supersede(&mut tx, r).await.map_err(db_err)? {
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
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.get(Backend::Postgres, Kind::Intent, chunk.len())));
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
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.get(Backend::Postgres, Kind::Issued, chunk.len())));
        for (serial, pem, at) in chunk {
            q = q.bind(*serial).bind(*pem).bind(*at);
        }
        q.execute(&mut *tx).await.map_err(db_err)?;
    }
    if !rows.audits.is_empty() {
        let mut head = lock_head(&mut tx).await?;
        let chained = audit_log::chain(&mut head, &rows.audits);
        for chunk in pow2_chunks(&chained) {
            let q = sqlx::query(sqlx::AssertSqlSafe(sql.get(Backend::Postgres, Kind::Audit, chunk.len())));
            bind_audits(q, chunk).execute(&mut *tx).await.map_err(db_err)?;
        }
        set_head(&mut tx, &head).await?;
    }
    tx.commit().await.map_err(db_err)?;
    Ok(affected)
}

/// Applies the guards of a renewal; false, and nothing
/// changed, when one of them failed. Under PostgreSQL's read committed isolation each guarded
/// UPDATE waits for a concurrent transaction holding the row and then re-checks its guard on the
/// committed row, so a concurrent renewal or revocation of the same certificate makes it fail.
async fn supersede(tx: &mut Transaction<'static, Any>, r: &RenewalRecord) -> Result<bool, sqlx::Error> {
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

/// Inserts an audit event inside `tx`, so a state change and its event commit together, and
/// continues the audit chain with it ([`lock_head`]).
pub(in crate::store) async fn insert_audit(tx: &mut Transaction<'static, Any>, ev: &AuditEvent) -> Result<(), CaError> {
    let mut head = lock_head(tx).await?;
    let chained = audit_log::chain(&mut head, &[ev]);
    let (prefix, cols, extra) = Kind::Audit.shape();
    let q = sqlx::query(sqlx::AssertSqlSafe(multi_row_insert(Backend::Postgres, prefix, cols, 1, extra)));
    bind_audits(q, &chained).execute(&mut **tx).await.map_err(db_err)?;
    set_head(tx, &head).await
}

/// Reads the audit chain's head and locks its row until `tx` ends: every transaction that
/// writes audit events, on every replica, takes its turn here, so positions are assigned
/// without gaps or forks, and a transaction that rolls back releases its positions unused.
async fn lock_head(tx: &mut Transaction<'static, Any>) -> Result<audit_log::Head, CaError> {
    let row = sqlx::query(LOCK_CHAIN_HEAD).fetch_optional(&mut **tx).await.map_err(db_err)?;
    let head = match row {
        Some(r) => Some(audit_log::Head { seq: get(&r, "seq")?, digest: get(&r, "digest")? }),
        None => None,
    };
    audit_log::head_or_err(head)
}

/// Moves the head past the events just inserted.
async fn set_head(tx: &mut Transaction<'static, Any>, head: &audit_log::Head) -> Result<(), CaError> {
    sqlx::query(audit_log::SET_CHAIN_HEAD)
        .bind(head.seq)
        .bind(head.digest.as_str())
        .execute(&mut **tx)
        .await
        .map(|_| ())
        .map_err(db_err)
}

/// The chain's head, locked for the rest of the transaction.
const LOCK_CHAIN_HEAD: &str = "SELECT seq, digest FROM audit_chain_head WHERE id = 1 FOR UPDATE";

/// Binds chained audit events to a multi-row insert.
fn bind_audits<'q>(
    mut q: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>,
    events: &[audit_log::Chained<'_>],
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments> {
    for ch in events {
        q = q
            .bind(ch.id.clone())
            .bind(ch.at)
            .bind(ch.ev.actor.clone())
            .bind(ch.ev.action.clone())
            .bind(ch.ev.target.clone())
            .bind(ch.ev.outcome.as_str())
            .bind(ch.ev.detail.clone())
            .bind(ch.seq)
            .bind(ch.prev_digest.clone())
            .bind(ch.digest.clone());
    }
    q
}
