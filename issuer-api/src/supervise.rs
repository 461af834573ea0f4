//! Supervision of `lanyard-ca`'s background tasks (rotation loop, server certificate renewal, CRL
//! refresh, ACME upkeep, metrics listener). Each runs forever; one that ends (an error, a panic,
//! a return) while the server is not shutting down is logged as an error, exported as
//! `lanyard_task_up{task=...} 0`, and turns `GET /health` red (503), so a replica that silently
//! stopped rotating or refreshing CRLs is taken out of rotation instead of looking healthy.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The supervised tasks of one server.
#[derive(Debug, Default, Clone)]
pub struct Tasks {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Task name -> `None` while it runs, `Some(why)` once it died.
    states: Mutex<BTreeMap<&'static str, Option<String>>>,
    shutting_down: AtomicBool,
}

impl Tasks {
    fn states(&self) -> MutexGuard<'_, BTreeMap<&'static str, Option<String>>> {
        self.inner.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `task` under `name` and records how it ends.
    pub fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.states().insert(name, None);
        let inner = tokio::spawn(task);
        let tasks = self.clone();
        tokio::spawn(async move {
            let why = match inner.await {
                Ok(Ok(())) => "it returned".to_owned(),
                Ok(Err(e)) => format!("{e:#}"),
                Err(e) if e.is_panic() => format!("it panicked: {e}"),
                Err(e) => format!("it was cancelled: {e}"),
            };
            if tasks.inner.shutting_down.load(Ordering::SeqCst) {
                tasks.states().remove(name);
                return;
            }
            tracing::error!(task = name, why = %why, "a background task ended; /health reports it");
            tasks.states().insert(name, Some(why));
        });
    }

    /// From now on, tasks that end are stopping with the server, not dying.
    pub fn shutting_down(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Every task and whether it still runs.
    pub fn snapshot(&self) -> Vec<(&'static str, bool)> {
        self.states().iter().map(|(n, s)| (*n, s.is_none())).collect()
    }

    /// The tasks that died and why, for `/health`.
    pub fn dead(&self) -> Vec<(&'static str, String)> {
        self.states().iter().filter_map(|(n, s)| s.clone().map(|why| (*n, why))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn an_ended_task_is_dead_unless_the_server_is_shutting_down() {
        let tasks = Tasks::default();
        tasks.spawn("rotation", async { Err(anyhow::anyhow!("lease table gone")) });
        tasks.spawn("crl_refresh", async { panic!("boom") });
        tasks.spawn("metrics", std::future::pending());
        for _ in 0..200 {
            if tasks.dead().len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let dead = tasks.dead();
        assert_eq!(dead.len(), 2, "{dead:?}");
        assert!(dead.iter().any(|(n, why)| *n == "rotation" && why.contains("lease table gone")));
        assert!(dead.iter().any(|(n, why)| *n == "crl_refresh" && why.contains("panicked")));
        assert!(tasks.snapshot().contains(&("metrics", true)));

        let quiet = Tasks::default();
        quiet.shutting_down();
        quiet.spawn("rotation", async { Ok(()) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(quiet.dead().is_empty());
    }
}
