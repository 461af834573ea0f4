//! The push channel: a background long poll of the CA's `GET /workload/v1/notices`, over mTLS with
//! the current certificate (re-issued with each new one), so that an emergency rotation reaches
//! the agent at once instead of at its next renewalInfo check. A CA without the endpoint (404)
//! ends the loop; renewalInfo polling still covers that case.

use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::ca_client::{CaClient, NoticeError};
use crate::credentials::{Svid, TrustBundle};

/// How long one poll asks the CA to hold the request (the CA's default, under the 60 s idle
/// timeout common in proxies).
const WAIT: Duration = Duration::from_secs(55);
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
    pub(super) fn start(client: CaClient, enabled: bool) -> Self {
        let (identity, ident_rx) = watch::channel(None);
        if !enabled {
            return Notices { identity, rx: None, task: None };
        }
        let (tx, rx) = mpsc::channel(4);
        let task = tokio::spawn(poll_loop(client, ident_rx, tx));
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

async fn poll_loop(client: CaClient, mut identity: watch::Receiver<Identity>, tx: mpsc::Sender<Notice>) {
    let mut failures: u32 = 0;
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
            r = client.notices(&bundle, &svid, WAIT) => r,
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
                (started.elapsed() < Duration::from_secs(1)).then_some(Duration::from_secs(1))
            }
            Err(NoticeError::NotSupported) => {
                info!("the CA offers no push notices; relying on renewalInfo checks");
                return;
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
                    warn!(error = %format!("{e:#}"), retry_in_ms = wait.as_millis() as u64, "notices poll failed");
                } else {
                    debug!(error = %format!("{e:#}"), retry_in_ms = wait.as_millis() as u64, "notices poll failed");
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
