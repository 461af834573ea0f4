//! The PostgreSQL writer: a task on the callers' runtime that commits each batch of the
//! group-commit protocol ([`crate::store::batch`]) in one transaction through sqlx's pool.
//! Several replicas may write at once: every guarded statement re-checks its guard on the
//! committed row under read committed isolation.

use sqlx::{Any, AnyPool, Transaction};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use super::db_err;
use crate::CaError;
use crate::audit::AuditEvent;
use crate::store::batch::{
    Answers, Job, Kind, MAX_BATCH, ORDER_VALID, RenewalRecord, Sorted, Statements, audit_id, closed, deliver,
    multi_row_insert, only_answer, pow2_chunks, split_at_close,
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
    for chunk in pow2_chunks(&rows.audits) {
        let q = sqlx::query(sqlx::AssertSqlSafe(sql.get(Backend::Postgres, Kind::Audit, chunk.len())));
        bind_audits(q, chunk).execute(&mut *tx).await.map_err(db_err)?;
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

/// Inserts an audit event inside `tx`, so a state change and its event commit together.
pub(in crate::store) async fn insert_audit(tx: &mut Transaction<'static, Any>, ev: &AuditEvent) -> Result<(), CaError> {
    insert_audits(tx, &[ev]).await.map_err(db_err)
}

/// Inserts audit events inside `tx` with one multi-row statement.
async fn insert_audits(tx: &mut Transaction<'static, Any>, events: &[&AuditEvent]) -> Result<(), sqlx::Error> {
    let (prefix, cols, extra) = Kind::Audit.shape();
    let q = sqlx::query(sqlx::AssertSqlSafe(multi_row_insert(Backend::Postgres, prefix, cols, events.len(), extra)));
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
