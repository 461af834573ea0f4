//! The group-commit writer: one task owns issuance writes and commits them in batches.

use sqlx::{Any, AnyPool, Transaction};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use super::records::CertificateIntent;
use super::{Backend, db_err, unix};
use crate::CaError;
use crate::audit::AuditEvent;

/// Largest batch committed in one transaction.
const MAX_BATCH: usize = 4096;

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

pub(super) async fn run(backend: Backend, pool: AnyPool, mut rx: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        match commit(backend, &pool, &batch).await {
            Ok(affected) => {
                for (job, n) in batch.drain(..).zip(affected) {
                    let _ = job.reply.send(Ok(n));
                }
            }
            Err(e) if batch.len() > 1 && !matches!(e, CaError::StoreUnavailable(_)) => {
                // One bad write (e.g. a serial collision) must not fail its neighbours: retry each
                // on its own so every caller gets its own answer.
                for job in batch.drain(..) {
                    let r = commit(backend, &pool, std::slice::from_ref(&job)).await;
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

/// Commits a batch; returns the rows each job affected, in job order.
async fn commit(backend: Backend, pool: &AnyPool, jobs: &[Job]) -> Result<Vec<u64>, CaError> {
    let mut intents = Vec::new();
    let mut issued = Vec::new();
    let mut audits = Vec::new();
    let mut affected = vec![1u64; jobs.len()];
    let mut tx = pool.begin().await.map_err(db_err)?;
    for (k, job) in jobs.iter().enumerate() {
        match &job.write {
            Write::Intent(i) => intents.push(i),
            Write::Issued { serial, cert_pem, issued_at } => issued.push((serial, cert_pem, *issued_at)),
            Write::Audit(ev) => audits.push(ev),
            Write::Nonce { nonce, expires_at } => {
                affected[k] = sqlx::query(
                    "INSERT INTO acme_used_nonces (nonce, expires_at) VALUES ($1, $2) ON CONFLICT (nonce) DO NOTHING",
                )
                .bind(nonce)
                .bind(*expires_at)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?
                .rows_affected();
            }
        }
    }
    // One multi-row statement per kind and chunk: statement overhead, not row count, dominates.
    let now = unix(OffsetDateTime::now_utc());
    for chunk in pow2_chunks(&intents) {
        let sql = multi_row_insert(
            backend,
            "INSERT INTO certificates (serial, status, issuer_id, profile, requester, subject, sans, \
             key_fingerprint, not_before, not_after, created_at) VALUES ",
            10,
            chunk.len(),
            Some("'intent'"),
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for i in chunk {
            q = q
                .bind(&i.serial)
                .bind(&i.issuer_id)
                .bind(&i.profile)
                .bind(&i.requester)
                .bind(&i.subject)
                .bind(&i.sans)
                .bind(&i.key_fingerprint)
                .bind(unix(i.not_before))
                .bind(unix(i.not_after))
                .bind(now);
        }
        q.execute(&mut *tx).await.map_err(db_err)?;
    }
    // The foreign key to `certificates` makes a record without a prior intent impossible.
    for chunk in pow2_chunks(&issued) {
        let sql = multi_row_insert(
            backend,
            "INSERT INTO issued_certificates (serial, cert_pem, issued_at) VALUES ",
            3,
            chunk.len(),
            None,
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (serial, pem, at) in chunk {
            q = q.bind(*serial).bind(*pem).bind(*at);
        }
        q.execute(&mut *tx).await.map_err(db_err)?;
    }
    for chunk in pow2_chunks(&audits) {
        insert_audits(backend, &mut tx, chunk).await.map_err(db_err)?;
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

/// Inserts audit events. Ids are the event time in nanoseconds followed by random bits, so they
/// sort by time and never collide across replicas.
async fn insert_audits(
    backend: Backend,
    tx: &mut Transaction<'static, Any>,
    events: &[&AuditEvent],
) -> Result<(), sqlx::Error> {
    use ring::rand::SecureRandom;
    let rng = ring::rand::SystemRandom::new();
    let sql = multi_row_insert(
        backend,
        "INSERT INTO audit_events (id, at, actor, action, target, outcome, detail) VALUES ",
        7,
        events.len(),
        None,
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for ev in events {
        let mut rnd = [0u8; 8];
        let _ = rng.fill(&mut rnd);
        q = q
            .bind(format!("{:020}-{}", ev.at.unix_timestamp_nanos(), hex::encode(rnd)))
            .bind(unix(ev.at))
            .bind(&ev.actor)
            .bind(&ev.action)
            .bind(&ev.target)
            .bind(ev.outcome.as_str())
            .bind(&ev.detail);
    }
    q.execute(&mut **tx).await.map(|_| ())
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
