//! The push channel: a background long poll of the CA's `GET /workload/v1/notices`, over mTLS with
//! the current certificate (re-issued with each new one), so that an emergency rotation reaches
//! the agent at once instead of at its next renewalInfo check. A CA that answers 404 (an older
//! version, or a proxy route missing during an upgrade) is asked again after a long, jittered
//! pause ([`crate::config::Renewal::notices_unsupported_retry`]); renewalInfo polling covers the
//! meantime, and push resumes by itself once the endpoint is there.

use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::ca_client::{CaClient, NoticeError};
use crate::credentials::{Svid, TrustBundle};

/// Backoff after failed polls.
const RETRY_INITIAL: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The CA wants the certificate `leaf` replaced within [`start`, `end`] (Unix seconds).
#[derive(Debug, Clone)]
pub struct Notice {
    /// The certificate the notice is about.
    pub leaf: CertificateDer<'static>,
    /// Window start.
    pub start: i64,
    /// Window end.
    pub end: i64,
}

type Identity = Option<(Svid, TrustBundle)>;

/// The running long poll (stopped when dropped), fed the current identity by the main loop.
#[derive(Debug)]
pub(super) struct Notices {
    identity: watch::Sender<Identity>,
    rx: Option<mpsc::Receiver<Notice>>,
    task: Option<JoinHandle<()>>,
}

impl Notices {
    /// Starts polling (when `enabled`) as soon as [`Notices::update`] gives an identity.
    pub(super) fn start(client: CaClient, enabled: bool, unsupported_retry: Duration, wait: Duration) -> Self {
        let (identity, ident_rx) = watch::channel(None);
        if !enabled {
            return Notices { identity, rx: None, task: None };
        }
        let (tx, rx) = mpsc::channel(4);
        let poll = move |svid: Svid, bundle: TrustBundle| {
            let client = client.clone();
            async move { client.notices(&bundle, &svid, wait).await }
        };
        let task = tokio::spawn(poll_loop(poll, unsupported_retry, ident_rx, tx));
        Notices { identity, rx: Some(rx), task: Some(task) }
    }

    /// The certificate and bundle to poll with; an in-flight poll with an older certificate is
    /// abandoned.
    pub(super) fn update(&self, svid: &Svid, bundle: &TrustBundle) {
        self.identity.send_if_modified(|cur| {
            if cur.as_ref().is_some_and(|(s, b)| s.chain.first() == svid.chain.first() && b == bundle) {
                return false;
            }
            *cur = Some((svid.clone(), bundle.clone()));
            true
        });
    }

    /// The next notice; pending forever when disabled or unsupported by the CA. Cancel safe.
    pub(super) async fn next(&mut self) -> Notice {
        loop {
            match self.rx.as_mut() {
                Some(rx) => match rx.recv().await {
                    Some(n) => return n,
                    None => self.rx = None,
                },
                None => return std::future::pending().await,
            }
        }
    }
}

impl Drop for Notices {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// The poll loop around one long poll `poll` (the CA client's, or a test's).
async fn poll_loop<P, F>(
    poll: P,
    unsupported_retry: Duration,
    mut identity: watch::Receiver<Identity>,
    tx: mpsc::Sender<Notice>,
) where
    P: Fn(Svid, TrustBundle) -> F,
    F: std::future::Future<Output = Result<Option<(i64, i64)>, NoticeError>>,
{
    let mut failures: u32 = 0;
    let mut unsupported_logged = false;
    loop {
        let current = identity.borrow_and_update().clone();
        let Some((svid, bundle)) = current else {
            if identity.changed().await.is_err() {
                return;
            }
            continue;
        };
        let started = tokio::time::Instant::now();
        let r = tokio::select! {
            r = poll(svid.clone(), bundle.clone()) => r,
            c = identity.changed() => {
                if c.is_err() {
                    return;
                }
                continue; // a new certificate: poll with it
            }
        };
        let pause = match r {
            Ok(Some((start, end))) => {
                failures = 0;
                unsupported_logged = false;
                let Some(leaf) = svid.chain.first().cloned() else { continue };
                debug!(start, end, "the CA asks for a renewal (notice)");
                if tx.send(Notice { leaf, start, end }).await.is_err() {
                    return;
                }
                // Nothing more to learn about this certificate: wait for the next one.
                if identity.changed().await.is_err() {
                    return;
                }
                continue;
            }
            // The CA answers after the wait; far sooner only when the certificate is about to
            // expire, which must not turn into a busy loop.
            Ok(None) => {
                failures = 0;
                unsupported_logged = false;
                (started.elapsed() < Duration::from_secs(1)).then_some(Duration::from_secs(1))
            }
            Err(NoticeError::NotSupported) => {
                failures = 0;
                let wait = unsupported_retry.mul_f64(0.8 + 0.4 * super::unit());
                if !unsupported_logged {
                    info!(
                        retry_in_s = wait.as_secs(),
                        "the CA offers no push notices (404); relying on renewalInfo checks and asking again later"
                    );
                    unsupported_logged = true;
                }
                Some(wait)
            }
            Err(NoticeError::Failed(e)) => {
                let wait = super::schedule::backoff(
                    failures,
                    RETRY_INITIAL,
                    RETRY_MAX,
                    Duration::from_secs(3600),
                    super::unit(),
                );
                if failures == 0 {
                    warn!(error = %format!("{e:#}"), retry_in_ms = crate::agent::schedule::millis(wait), "notices poll failed");
                } else {
                    debug!(error = %format!("{e:#}"), retry_in_ms = crate::agent::schedule::millis(wait), "notices poll failed");
                }
                failures = failures.saturating_add(1);
                Some(wait)
            }
        };
        if let Some(p) = pause {
            tokio::select! {
                () = tokio::time::sleep(p) => {}
                c = identity.changed() => {
                    if c.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use rustls::pki_types::PrivateKeyDer;

    use super::*;

    fn identity() -> (Svid, TrustBundle) {
        let svid = Svid {
            spiffe_id: "spiffe://example.test/a".into(),
            chain: vec![CertificateDer::from(vec![1u8, 2, 3])],
            key: PrivateKeyDer::Pkcs8(vec![4u8, 5, 6].into()),
            not_after: 2,
            not_before: 1,
        };
        (svid, TrustBundle { trust_domain: "example.test".into(), roots: vec![], sequence: 1 })
    }

    /// A CA that answers 404 twice (say, during an upgrade) and then offers notices: the loop
    /// keeps asking, after pauses of about `unsupported_retry` each, and delivers the notice.
    #[tokio::test(start_paused = true)]
    async fn a_404_is_retried_after_a_long_pause_and_push_resumes() {
        let calls: Arc<Mutex<Vec<tokio::time::Instant>>> = Arc::default();
        let seen = calls.clone();
        let poll = move |_: Svid, _: TrustBundle| {
            let seen = seen.clone();
            async move {
                let n = {
                    let mut c = seen.lock().expect("calls");
                    c.push(tokio::time::Instant::now());
                    c.len()
                };
                if n <= 2 { Err(NoticeError::NotSupported) } else { Ok(Some((10, 20))) }
            }
        };
        let (id_tx, id_rx) = watch::channel(Some(identity()));
        let (tx, mut rx) = mpsc::channel(4);
        let task = tokio::spawn(poll_loop(poll, Duration::from_secs(300), id_rx, tx));
        let notice = tokio::time::timeout(Duration::from_secs(3600), rx.recv()).await.expect("a notice").expect("open");
        assert_eq!((notice.start, notice.end), (10, 20));
        let calls = calls.lock().expect("calls").clone();
        assert_eq!(calls.len(), 3, "two 404s, then the notice");
        for pair in calls.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(gap >= Duration::from_secs(240) && gap <= Duration::from_secs(360), "pause after a 404: {gap:?}");
        }
        drop(id_tx);
        task.abort();
    }
}
