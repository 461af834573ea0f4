//! Push notices to workload agents: the rotation loop, which re-reads the journal every second on
//! every replica, publishes here when it sees an emergency rotation it had not seen, and the
//! long-poll handler (`GET /workload/v1/notices`) wakes on it and re-reads its certificate's
//! renewal window. Nothing here touches the database; waiters hold no connection while waiting.

use std::collections::BTreeSet;

use ca::views::Emergency;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

/// What waiting handlers look at when woken.
#[derive(Debug, Default)]
pub struct Notices {
    /// Bumped whenever a new emergency (or another renewal request) is seen.
    pub generation: u64,
    /// Intermediates with an emergency rotation: only holders of their certificates re-check.
    pub issuers: BTreeSet<String>,
    /// Emergency ids already seen.
    seen: BTreeSet<String>,
}

/// The notices generation, shared by the rotation loop (writer) and the long-poll handlers, and
/// the `lanyard_notice_waiters` gauge of the handlers waiting on it.
#[derive(Debug, Clone)]
pub struct NoticeBoard(watch::Sender<Notices>, Gauge);

impl Default for NoticeBoard {
    fn default() -> Self {
        NoticeBoard(watch::Sender::new(Notices::default()), Gauge::default())
    }
}

impl NoticeBoard {
    /// A board with nothing on it; its waiters are counted in a gauge no registry exposes.
    pub fn new() -> Self {
        Self::default()
    }

    /// A board with nothing on it whose waiters are counted in `waiters`.
    pub fn counting(waiters: Gauge) -> Self {
        NoticeBoard(watch::Sender::new(Notices::default()), waiters)
    }

    /// A receiver for a waiting handler.
    pub fn subscribe(&self) -> watch::Receiver<Notices> {
        self.0.subscribe()
    }

    /// Handlers waiting right now.
    pub fn waiters(&self) -> i64 {
        self.1.get()
    }

    /// Records the emergencies in the journal; wakes the waiters if one of them is new. Returns
    /// whether it did.
    pub fn observe(&self, emergencies: &[Emergency]) -> bool {
        self.observe_asks(emergencies.iter().map(|e| (e.id.clone(), e.issuer_id.clone())))
    }

    /// Records renewal requests (request id, issuer whose certificate holders were asked): an
    /// emergency, a canary's start (its canaries hold certificates of the previous intermediate)
    /// or a rollback (holders of the discarded successor's). Wakes the waiters if one is new.
    pub fn observe_asks(&self, asks: impl IntoIterator<Item = (String, String)>) -> bool {
        self.0.send_if_modified(|n| {
            let mut new = false;
            for (id, issuer) in asks {
                if n.seen.insert(id) {
                    n.issuers.insert(issuer);
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
pub struct Waiter(Gauge);

impl Waiter {
    /// Starts counting on `board`'s gauge.
    pub fn enter(board: &NoticeBoard) -> Self {
        board.1.inc();
        Waiter(board.1.clone())
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.0.dec();
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
