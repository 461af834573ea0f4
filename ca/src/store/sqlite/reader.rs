//! The SQLite certificate reader: renewal looks up the presented certificate's record on every
//! request, so that lookup has a read-only connection and a thread of its own ([`super::conn`]).
//! Every other query of the SQLite store runs here too ([`Reader::query`]).
//!
//! Lookups that arrive together share one read transaction. Starting a read transaction after
//! the writer has committed (which, under load, is every time) makes SQLite drop the connection's
//! page cache, and through sqlx's pool that cost, plus a thread hand-off per statement, was paid
//! per lookup: about a third of the CPU of a renewal, and a millisecond or more of its latency.
//!
//! A lookup sees every commit that finished before it was asked (a new read transaction starts
//! at the latest commit), so a certificate is visible as soon as its issuance returned, and a
//! revocation as soon as it was recorded, whichever process recorded it.

use rusqlite::{Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use super::conn::{self, Access};
use super::rows;
use crate::CaError;
use crate::store::records::{CertificateRecord, cert_columns};

/// Largest number of lookups answered in one read transaction.
const MAX_BATCH: usize = 256;

/// Where a lookup's answer goes.
type Answer = oneshot::Sender<Result<Option<CertificateRecord>, CaError>>;

/// A read of any shape: runs on the reader thread inside the shared read transaction and sends
/// its own answer. Dropped unrun (its caller then sees the store closed) once the store is closed.
type Query = Box<dyn FnOnce(&Connection) + Send>;

pub(super) enum Read {
    /// The record of one certificate, by serial (hex).
    Certificate { serial: String, reply: Answer },
    /// Any other read (the ACME hot path: accounts, orders, authorizations).
    Query(Query),
    /// Closes the connection; later lookups are refused ([`super::SqliteDb::close`]).
    Close { reply: oneshot::Sender<()> },
}

/// Handle to the reader thread. Cheap to clone.
#[derive(Debug, Clone)]
pub(super) struct Reader {
    tx: mpsc::Sender<Read>,
}

fn closed() -> CaError {
    CaError::StoreUnavailable("the store is closed".into())
}

impl Reader {
    /// Opens a read-only connection to the database file at `path` and starts the reader thread.
    pub(super) fn start(path: &str) -> Result<Reader, CaError> {
        let conn = conn::open(path, Access::ReadOnly)?;
        let (tx, rx) = mpsc::channel(4096);
        std::thread::Builder::new()
            .name("lanyard-store-reader".into())
            .spawn(move || run(conn, rx))
            .map_err(|e| CaError::StoreUnavailable(format!("store reader thread: {e}")))?;
        Ok(Reader { tx })
    }

    /// The record of the certificate with this serial, if any.
    pub(super) async fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>, CaError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Read::Certificate { serial: serial.to_owned(), reply }).await.map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    /// Runs `f` on the reader thread, in a read transaction that starts at the latest commit.
    pub(super) async fn query<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, CaError> + Send + 'static,
    ) -> Result<T, CaError> {
        let (reply, rx) = oneshot::channel();
        let job: Query = Box::new(move |c| {
            reply.send(f(c)).ok(); // a caller that stopped waiting needs no answer
        });
        self.tx.send(Read::Query(job)).await.map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    /// Closes the reader's connection.
    pub(super) async fn close(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Read::Close { reply }).await.is_ok() {
            // An error means the reader thread is gone already: closed either way.
            rx.await.ok();
        }
    }
}

/// Answers lookups until every sender is gone or the store is closed.
fn run(conn: Connection, mut rx: mpsc::Receiver<Read>) {
    let mut conn = Some(conn);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.blocking_recv_many(&mut batch, MAX_BATCH) > 0 {
        let mut lookups = Vec::with_capacity(batch.len());
        let mut queries = Vec::new();
        let mut close = None;
        for read in batch.drain(..) {
            match read {
                Read::Certificate { serial, reply } if close.is_none() && conn.is_some() => {
                    lookups.push((serial, reply))
                }
                Read::Certificate { reply, .. } => {
                    reply.send(Err(closed())).ok(); // a caller that stopped waiting needs no answer
                }
                Read::Query(q) if close.is_none() && conn.is_some() => queries.push(q),
                // Dropped: its caller sees the reply channel closed.
                Read::Query(_) => {}
                Read::Close { reply } => close = close.or(Some(reply)),
            }
        }
        if let Some(c) = conn.as_ref() {
            answer(c, lookups, queries);
        }
        if let Some(reply) = close {
            drop(conn.take());
            reply.send(()).ok(); // a caller that stopped waiting needs no answer
        }
    }
}

/// Answers lookups and queries from one read transaction; if the transaction cannot start, each
/// lookup is told why (and each query runs outside one, to meet the same error itself).
fn answer(conn: &Connection, lookups: Vec<(String, Answer)>, queries: Vec<Query>) {
    // Unchecked only in that it takes `&Connection`: nothing else runs on this thread's connection.
    let tx = match conn.unchecked_transaction() {
        Ok(tx) => tx,
        Err(e) => {
            let e = conn::sqlite_err(e);
            for (_, reply) in lookups {
                reply.send(Err(clone_err(&e))).ok(); // a caller that stopped waiting needs no answer
            }
            for q in queries {
                q(conn);
            }
            return;
        }
    };
    for q in queries {
        q(&tx);
    }
    for (serial, reply) in lookups {
        let r = tx
            .prepare_cached(concat!("SELECT ", cert_columns!(), " WHERE c.serial = ?1"))
            .and_then(|mut s| s.query_row([serial.as_str()], |row| Ok(rows::certificate(row))).optional())
            .map_err(conn::sqlite_err)
            .and_then(|r| r.transpose());
        reply.send(r).ok(); // a caller that stopped waiting needs no answer
    }
    // A read transaction: nothing to keep, and ending it releases the snapshot.
    if let Err(e) = tx.rollback() {
        tracing::debug!(error = %e, "ending a read transaction failed");
    }
}

fn clone_err(e: &CaError) -> CaError {
    match e {
        CaError::StoreUnavailable(m) => CaError::StoreUnavailable(m.clone()),
        other => CaError::Store(other.to_string()),
    }
}
