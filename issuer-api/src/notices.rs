//! Push notices to workload agents: the rotation loop, which re-reads the journal every second on
//! every replica, publishes here when it sees an emergency rotation it had not seen, and the
//! long-poll handler (`GET /workload/v1/notices`) wakes on it and re-reads its certificate's
//! renewal window. Nothing here touches the database; waiters hold no connection while waiting.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use ca::views::Emergency;
use tokio::sync::watch;

/// What waiting handlers look at when woken.
#[derive(Debug, Default)]
pub struct Notices {
    /// Bumped whenever a new emergency is seen.
    pub generation: u64,
    /// Intermediates with an emergency rotation: only holders of their certificates re-check.
    pub issuers: BTreeSet<String>,
    /// Emergency ids already seen.
    seen: BTreeSet<String>,
}

/// The notices generation, shared by the rotation loop (writer) and the long-poll handlers.
#[derive(Debug, Clone)]
pub struct NoticeBoard(watch::Sender<Notices>);

impl Default for NoticeBoard {
    fn default() -> Self {
        NoticeBoard(watch::Sender::new(Notices::default()))
    }
}

impl NoticeBoard {
    /// A board with nothing on it.
    pub fn new() -> Self {
        Self::default()
    }

    /// A receiver for a waiting handler.
    pub fn subscribe(&self) -> watch::Receiver<Notices> {
        self.0.subscribe()
    }

    /// Records the emergencies in the journal; wakes the waiters if one of them is new. Returns
    /// whether it did.
    pub fn observe(&self, emergencies: &[Emergency]) -> bool {
        self.0.send_if_modified(|n| {
            let mut new = false;
            for e in emergencies {
                if n.seen.insert(e.id.clone()) {
                    n.issuers.insert(e.issuer_id.clone());
                    new = true;
                }
            }
            if new {
                n.generation += 1;
            }
            new
        })
    }
}

/// Counts one waiting agent in `lanyard_notice_waiters` while alive.
#[derive(Debug)]
pub struct Waiter(());

impl Waiter {
    /// Starts counting.
    pub fn enter() -> Self {
        crate::metrics::COUNTERS.notice_waiters.fetch_add(1, Ordering::Relaxed);
        Waiter(())
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        crate::metrics::COUNTERS.notice_waiters.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emergency(id: &str, issuer: &str) -> Emergency {
        Emergency {
            id: id.into(),
            issuer_id: issuer.into(),
            started_at: 0,
            affected: 1,
            completed_at: None,
            enforce_at: None,
            settle_secs: None,
        }
    }

    #[test]
    fn only_new_emergencies_bump_the_generation() {
        let board = NoticeBoard::new();
        let mut rx = board.subscribe();
        assert!(!board.observe(&[]));
        assert!(board.observe(&[emergency("r1", "i1")]));
        assert!(rx.has_changed().unwrap_or(false));
        assert_eq!(rx.borrow_and_update().generation, 1);
        assert!(!board.observe(&[emergency("r1", "i1")]));
        assert!(!rx.has_changed().unwrap_or(true));
        assert!(board.observe(&[emergency("r2", "i2"), emergency("r1", "i1")]));
        let n = rx.borrow_and_update();
        assert_eq!(n.generation, 2);
        assert!(n.issuers.contains("i1") && n.issuers.contains("i2"));
    }
}
