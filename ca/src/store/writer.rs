//! The group-commit writer: one task owns issuance writes and commits them in batches.

use sqlx::{Any, AnyPool, Transaction};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use super::records::CertificateIntent;
use super::{db_err, unix};
use crate::CaError;
use crate::audit::AuditEvent;

/// Largest batch committed in one transaction.
const MAX_BATCH: usize = 512;

pub(super) enum Write {
    Intent(CertificateIntent),
    Issued { serial: String, cert_pem: String, issued_at: i64, audit: AuditEvent },
    Audit(AuditEvent),
}

pub(super) struct Job {
    pub(super) write: Write,
    pub(super) reply: oneshot::Sender<Result<(), CaError>>,
}

pub(super) async fn run(pool: AnyPool, mut rx: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        match commit(&pool, &batch).await {
            Ok(()) => {
                for job in batch.drain(..) {
                    let _ = job.reply.send(Ok(()));
                }
            }
            Err(e) if batch.len() > 1 && !matches!(e, CaError::StoreUnavailable(_)) => {
                // One bad write (e.g. a serial collision) must not fail its neighbours: retry each
                // on its own so every caller gets its own answer.
                for job in batch.drain(..) {
                    let r = commit(&pool, std::slice::from_ref(&job)).await;
                    let _ = job.reply.send(r);
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

async fn commit(pool: &AnyPool, jobs: &[Job]) -> Result<(), CaError> {
    let mut tx = pool.begin().await.map_err(db_err)?;
    for job in jobs {
        apply(&mut tx, &job.write).await?;
    }
    tx.commit().await.map_err(db_err)
}

async fn apply(tx: &mut Transaction<'static, Any>, write: &Write) -> Result<(), CaError> {
    match write {
        Write::Intent(i) => {
            sqlx::query(
                "INSERT INTO certificates (serial, status, issuer_id, profile, requester, subject, sans, \
                 key_fingerprint, not_before, not_after, created_at) \
                 VALUES ($1, 'intent', $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(&i.serial)
            .bind(&i.issuer_id)
            .bind(&i.profile)
            .bind(&i.requester)
            .bind(&i.subject)
            .bind(&i.sans)
            .bind(&i.key_fingerprint)
            .bind(unix(i.not_before))
            .bind(unix(i.not_after))
            .bind(unix(OffsetDateTime::now_utc()))
            .execute(&mut **tx)
            .await
            .map_err(db_err)?;
        }
        Write::Issued { serial, cert_pem, issued_at, audit } => {
            let r = sqlx::query(
                "UPDATE certificates SET status = 'issued', cert_pem = $1, issued_at = $2 \
                 WHERE serial = $3 AND status = 'intent'",
            )
            .bind(cert_pem)
            .bind(*issued_at)
            .bind(serial)
            .execute(&mut **tx)
            .await
            .map_err(db_err)?;
            if r.rows_affected() != 1 {
                return Err(CaError::Store(format!("no pending intent for serial {serial}")));
            }
            insert_audit(tx, audit).await.map_err(db_err)?;
        }
        Write::Audit(ev) => insert_audit(tx, ev).await.map_err(db_err)?,
    }
    Ok(())
}

/// Inserts one audit event. Ids are the event time in nanoseconds followed by random bits, so they
/// sort by time and never collide across replicas.
pub(super) async fn insert_audit(tx: &mut Transaction<'static, Any>, ev: &AuditEvent) -> Result<(), sqlx::Error> {
    use ring::rand::SecureRandom;
    let mut rnd = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut rnd);
    let id = format!("{:020}-{}", ev.at.unix_timestamp_nanos(), hex::encode(rnd));
    sqlx::query(
        "INSERT INTO audit_events (id, at, actor, action, target, outcome, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(unix(ev.at))
    .bind(&ev.actor)
    .bind(&ev.action)
    .bind(&ev.target)
    .bind(ev.outcome.as_str())
    .bind(&ev.detail)
    .execute(&mut **tx)
    .await
    .map(|_| ())
}
