//! The PostgreSQL backend (several replicas on one database): every statement goes through
//! sqlx's pool; the hot-path writes through the group-commit [`writer`] task on that pool.
//!
//! Each method here is the PostgreSQL half of the [`Store`](super::Store) method of the same name,
//! which documents what it does; this side documents only what is particular to PostgreSQL
//! (isolation, row locks, races between replicas).

mod acme;
mod canary;
mod certificates;
mod crl;
mod emergency;
mod fleet_share;
mod issuers;
mod lineage;
mod rows;
mod workload;
mod writer;

use std::str::FromStr;
use std::time::Duration;

use sqlx::AnyPool;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use tokio::sync::mpsc;

use super::batch::{Job, Write};
use crate::CaError;

pub(super) use writer::insert_audit;

/// Handle to the PostgreSQL store. Cheap to clone.
#[derive(Debug, Clone)]
pub(super) struct PgDb {
    pool: AnyPool,
    /// The group-commit writer task.
    writer: mpsc::Sender<Job>,
}

/// Maps sqlx errors: anything that means "could not talk to the database" is `StoreUnavailable`.
pub(super) fn db_err(e: sqlx::Error) -> CaError {
    match e {
        sqlx::Error::PoolClosed
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => CaError::StoreUnavailable(e.to_string()),
        sqlx::Error::Database(ref d) => {
            // Class 08 (connection), 53 (resources), 57P (shutdown).
            let code = d.code().map(|c| c.into_owned()).unwrap_or_default();
            let unavailable = code.starts_with("08") || code.starts_with("53") || code.starts_with("57P");
            if unavailable { CaError::StoreUnavailable(e.to_string()) } else { CaError::Store(e.to_string()) }
        }
        other => CaError::Store(other.to_string()),
    }
}

impl PgDb {
    /// Connects to `url` (`postgres://user@host:port/db`), runs the migrations and starts the
    /// writer task on the current runtime.
    pub(super) async fn open(url: &str) -> Result<PgDb, CaError> {
        sqlx::any::install_default_drivers();
        let opts = AnyConnectOptions::from_str(url).map_err(|e| CaError::Config(format!("database URL: {e}")))?;
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await
            .map_err(|e| match db_err(e) {
                CaError::Store(m) => CaError::StoreUnavailable(m),
                other => other,
            })?;
        sqlx::migrate!("./migrations").run(&pool).await.map_err(|e| CaError::Store(format!("migrations: {e}")))?;
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(writer::run(pool.clone(), rx));
        Ok(PgDb { pool, writer: tx })
    }

    /// Queues a write for the group-commit writer and waits until its batch has committed;
    /// returns the rows it affected.
    pub(super) async fn submit(&self, write: Write) -> Result<u64, CaError> {
        super::batch::submit(&self.writer, write).await
    }

    /// Closes the writer (after committing what it was given) and the pool.
    pub(super) async fn close(&self) {
        if let Err(e) = self.submit(Write::Close).await {
            tracing::debug!(error = %e, "the writer was closed already");
        }
        self.pool.close().await;
    }

    /// Checks that the writer runs and the pool answers.
    pub(super) async fn ping(&self) -> Result<(), CaError> {
        if self.writer.is_closed() {
            return Err(CaError::StoreUnavailable("the store writer has stopped".into()));
        }
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(db_err)?;
        Ok(())
    }
}
