//! Supervision of the agent's background tasks (the metrics listener, the Workload API, the file
//! writer): a task that ends while the agent is not shutting down is logged as an error, shows as
//! `lanyard_agent_task_up{task=...} 0` and turns `/health` red, instead of vanishing silently and
//! leaving a process that looks alive but no longer serves.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::task::{AbortHandle, JoinHandle};

/// How a supervised task stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Running,
    /// Ended on its own while the agent was running: why (its error, a panic, or a plain return).
    Dead(String),
    /// Ended because the agent asked it to ([`Supervised::stop`] or [`Tasks::shutting_down`]).
    Stopped,
}

/// The registry of supervised tasks, shared by the metrics listener (which reports it).
#[derive(Debug, Default, Clone)]
pub struct Tasks {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    states: Mutex<BTreeMap<&'static str, State>>,
    shutting_down: AtomicBool,
}

/// A dead task's name and why it ended, for `/health`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadTask {
    /// The task's name, as passed to [`Tasks::spawn`].
    pub name: &'static str,
    /// Its error, its panic message, or that it returned.
    pub why: String,
}

impl Tasks {
    fn states(&self) -> MutexGuard<'_, BTreeMap<&'static str, State>> {
        self.inner.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `task` on the runtime under `name`. Its end is recorded: an error, a panic or a return
    /// while the agent is running marks it dead; an end asked for marks it stopped.
    pub fn spawn<F>(&self, name: &'static str, task: F) -> Supervised
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.states().insert(name, State::Running);
        let inner = tokio::spawn(task);
        let abort = inner.abort_handle();
        let tasks = self.clone();
        let watcher = tokio::spawn(async move {
            // Dropping the watcher (runtime shutdown, abort) takes the task down with it.
            let _guard = AbortOnDrop(inner.abort_handle());
            let ended = match inner.await {
                Ok(Ok(())) => "it returned".to_owned(),
                Ok(Err(e)) => format!("{e:#}"),
                Err(e) if e.is_cancelled() => "it was cancelled".to_owned(),
                Err(e) => format!("it panicked: {e}"),
            };
            tasks.ended(name, ended);
        });
        Supervised { name, tasks: self.clone(), abort, watcher }
    }

    fn ended(&self, name: &'static str, why: String) {
        let mut states = self.states();
        let asked = self.inner.shutting_down.load(Ordering::SeqCst) || states.get(name) == Some(&State::Stopped);
        if asked {
            states.insert(name, State::Stopped);
            tracing::debug!(task = name, "background task stopped");
        } else {
            tracing::error!(task = name, why = %why, "a background task ended; /health reports it");
            states.insert(name, State::Dead(why));
        }
    }

    /// From now on, tasks that end are stopping with the agent, not dying.
    pub fn shutting_down(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Every task and whether it still runs (stopped tasks count as up: they were meant to end).
    pub fn snapshot(&self) -> Vec<(&'static str, bool)> {
        self.states().iter().map(|(n, s)| (*n, !matches!(s, State::Dead(_)))).collect()
    }

    /// The tasks that died, for `/health`.
    pub fn dead(&self) -> Vec<DeadTask> {
        self.states()
            .iter()
            .filter_map(|(n, s)| match s {
                State::Dead(why) => Some(DeadTask { name: n, why: why.clone() }),
                _ => None,
            })
            .collect()
    }
}

/// A supervised task.
#[derive(Debug)]
pub struct Supervised {
    name: &'static str,
    tasks: Tasks,
    abort: AbortHandle,
    watcher: JoinHandle<()>,
}

impl Supervised {
    /// Ends the task on purpose and waits until it is gone; it is recorded as stopped, not dead.
    pub async fn stop(self) {
        self.tasks.states().insert(self.name, State::Stopped);
        self.abort.abort();
        if let Err(e) = self.watcher.await
            && e.is_panic()
        {
            tracing::error!(task = self.name, "the supervisor of a background task panicked");
        }
    }

    /// Waits until the task ended by itself (for tasks told to stop through a channel of their own).
    pub async fn join(self) {
        if let Err(e) = self.watcher.await
            && e.is_panic()
        {
            tracing::error!(task = self.name, "the supervisor of a background task panicked");
        }
    }
}

struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn settle(tasks: &Tasks, name: &str, up: bool) {
        for _ in 0..200 {
            if tasks.snapshot().iter().any(|(n, u)| *n == name && *u == up) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("task {name} never became up={up}: {:?}", tasks.snapshot());
    }

    #[tokio::test]
    async fn a_task_that_fails_panics_or_returns_is_reported_dead() {
        let tasks = Tasks::default();
        let _failing = tasks.spawn("failing", async { Err(anyhow::anyhow!("socket gone")) });
        let _panicking = tasks.spawn("panicking", async { panic!("boom") });
        let _returning = tasks.spawn("returning", async { Ok(()) });
        let _running = tasks.spawn("running", std::future::pending());
        for name in ["failing", "panicking", "returning"] {
            settle(&tasks, name, false).await;
        }
        let dead = tasks.dead();
        assert_eq!(dead.len(), 3, "{dead:?}");
        assert!(dead.iter().any(|d| d.name == "failing" && d.why.contains("socket gone")), "{dead:?}");
        assert!(dead.iter().any(|d| d.name == "panicking" && d.why.contains("panicked")), "{dead:?}");
        assert!(tasks.snapshot().contains(&("running", true)));
    }

    #[tokio::test]
    async fn tasks_stopped_on_purpose_or_at_shutdown_are_not_dead() {
        let tasks = Tasks::default();
        let forever = tasks.spawn("forever", std::future::pending());
        forever.stop().await;
        assert!(tasks.dead().is_empty(), "{:?}", tasks.dead());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let told = tasks.spawn("told", async move {
            rx.await.ok();
            Ok(())
        });
        tasks.shutting_down();
        tx.send(()).ok();
        told.join().await;
        assert!(tasks.dead().is_empty(), "{:?}", tasks.dead());
        assert_eq!(tasks.snapshot(), vec![("forever", true), ("told", true)]);
    }
}
