//! Bounds on the Workload API socket, which every process that can reach it may connect to: a cap
//! on open connections, a deadline for the HTTP/2 preface (a connection that sends nothing holds
//! a descriptor and a task forever otherwise), and a back-off after accept errors. When every slot
//! is taken, a newcomer evicts the oldest connections that have not sent their preface yet (a real
//! client sends it at once), so junk that never speaks cannot lock workloads out for the length of
//! the preface deadline; only if every slot holds a live HTTP/2 connection is the newcomer closed. tonic ends its server on the first error from the incoming
//! stream, so an EMFILE under a flood would take the Workload API down for good; here accept
//! errors never reach tonic: they are logged (at most once a second) and retried after a pause
//! that grows to one second.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::{Instant, Sleep};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use super::authority::AuthorityFilter;

/// Length of the HTTP/2 client connection preface (RFC 9113 section 3.4).
const PREFACE_LEN: usize = 24;

/// Limits of the Workload API socket.
#[derive(Debug, Clone, Copy)]
pub struct SocketLimits {
    /// Connections open at once; further ones are closed on accept.
    pub max_connections: usize,
    /// Time a new connection has to send the HTTP/2 preface.
    pub preface_timeout: Duration,
}

impl Default for SocketLimits {
    fn default() -> Self {
        // Well under the 1,024 descriptors a service commonly gets, so this socket alone cannot
        // exhaust them; a node runs far fewer workloads than that per agent.
        SocketLimits { max_connections: 512, preface_timeout: Duration::from_secs(10) }
    }
}

/// What the socket's accept loop counted since start.
#[derive(Debug, Default)]
pub struct SocketStats {
    /// Connections accepted and served.
    pub accepted: AtomicU64,
    /// Connections closed on accept because `max_connections` were open.
    pub refused: AtomicU64,
    /// Connections closed because no preface came in time.
    pub preface_timeouts: AtomicU64,
    /// Connections without a preface closed to make room for a newcomer.
    pub evicted: AtomicU64,
    /// Failed accepts (EMFILE and the like), each followed by a pause.
    pub accept_errors: AtomicU64,
}

/// The process's Workload API socket counters (for the agent's metrics).
pub static STATS: SocketStats = SocketStats {
    accepted: AtomicU64::new(0),
    refused: AtomicU64::new(0),
    preface_timeouts: AtomicU64::new(0),
    evicted: AtomicU64::new(0),
    accept_errors: AtomicU64::new(0),
};

/// An accepted connection holding its slot until it closes.
#[derive(Debug)]
pub struct Limited<S> {
    inner: S,
    _slot: OwnedSemaphorePermit,
    /// Running until the preface has arrived.
    deadline: Option<Pin<Box<Sleep>>>,
    read: usize,
    /// Fires when the accept loop evicts this connection (only before its preface).
    evict: oneshot::Receiver<()>,
    /// Set once the preface has arrived: the accept loop no longer considers it for eviction.
    spoke: Arc<AtomicBool>,
}

impl<S: Connected> Connected for Limited<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Limited<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Some(deadline) = this.deadline.as_mut() {
            if let Poll::Ready(Ok(())) = &r {
                this.read += buf.filled().len() - before;
                if this.read >= PREFACE_LEN {
                    this.deadline = None;
                    this.spoke.store(true, Ordering::Relaxed);
                }
            } else if r.is_pending() {
                if deadline.as_mut().poll(cx).is_ready() {
                    STATS.preface_timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("closing a Workload API connection that sent no preface in time");
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "no HTTP/2 preface in time")));
                }
                if let Poll::Ready(Ok(())) = Pin::new(&mut this.evict).poll(cx) {
                    tracing::debug!("closing a Workload API connection without a preface to make room");
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "evicted before its preface")));
                }
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Limited<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The connections tonic serves: accepted by a task of their own under `limits`, each wrapped in
/// an [`AuthorityFilter`]. The stream never yields an error; it ends when tonic drops it.
pub fn incoming(
    listener: UnixListener,
    limits: SocketLimits,
) -> ReceiverStream<io::Result<Limited<AuthorityFilter<UnixStream>>>> {
    let (tx, rx) = mpsc::channel(16);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    tokio::spawn(async move {
        let mut silent = Silent::default();
        let mut pause = Duration::from_millis(10);
        let mut last_log: Option<Instant> = None;
        let mut log = |what: &str, e: &dyn std::fmt::Display| {
            if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                tracing::warn!(error = %e, "{what}");
                last_log = Some(Instant::now());
            }
        };
        loop {
            tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        pause = Duration::from_millis(10);
                        let slot = match slots.clone().try_acquire_owned() {
                            Ok(slot) => slot,
                            Err(_) if silent.evict(EVICT_BATCH) > 0 => {
                                // The evicted connections' tasks release their slots as soon as
                                // they are polled; wait a moment for one.
                                match tokio::time::timeout(EVICT_WAIT, slots.clone().acquire_owned()).await {
                                    Ok(Ok(slot)) => slot,
                                    _ => {
                                        STATS.refused.fetch_add(1, Ordering::Relaxed);
                                        continue;
                                    }
                                }
                            }
                            Err(_) => {
                                STATS.refused.fetch_add(1, Ordering::Relaxed);
                                log("Workload API connection refused: connection limit reached", &limits.max_connections);
                                continue; // dropping `stream` closes it
                            }
                        };
                        STATS.accepted.fetch_add(1, Ordering::Relaxed);
                        let (evict_tx, evict) = oneshot::channel();
                        let spoke = Arc::new(AtomicBool::new(false));
                        silent.push(evict_tx, spoke.clone(), limits.max_connections);
                        let conn = Limited {
                            inner: AuthorityFilter::new(stream),
                            _slot: slot,
                            deadline: Some(Box::pin(tokio::time::sleep(limits.preface_timeout))),
                            read: 0,
                            evict,
                            spoke,
                        };
                        if tx.send(Ok(conn)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        STATS.accept_errors.fetch_add(1, Ordering::Relaxed);
                        log("Workload API accept failed; pausing", &e);
                        // Out of descriptors (EMFILE) with silent connections holding them: free
                        // some, so the next accept can succeed before their preface deadline.
                        silent.evict(EVICT_BATCH);
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(1));
                    }
                },
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Connections evicted at once when the socket is full.
const EVICT_BATCH: usize = 8;
/// How long a newcomer waits for an evicted connection's slot.
const EVICT_WAIT: Duration = Duration::from_millis(250);

/// Accepted connections that had not sent their preface when last looked at, oldest first: the
/// eviction candidates. Entries of connections that spoke or closed are dropped lazily, and the
/// queue is compacted when it outgrows the connection cap, so it stays bounded by it.
#[derive(Debug, Default)]
struct Silent(VecDeque<(oneshot::Sender<()>, Arc<AtomicBool>)>);

impl Silent {
    fn push(&mut self, evict: oneshot::Sender<()>, spoke: Arc<AtomicBool>, cap: usize) {
        if self.0.len() >= cap.max(1) * 2 {
            self.0.retain(|(tx, spoke)| !tx.is_closed() && !spoke.load(Ordering::Relaxed));
        }
        self.0.push_back((evict, spoke));
    }

    /// Evicts up to `n` of the oldest connections still without a preface; how many it did.
    fn evict(&mut self, n: usize) -> usize {
        let mut done = 0;
        while done < n {
            let Some((tx, spoke)) = self.0.pop_front() else { break };
            if spoke.load(Ordering::Relaxed) || tx.send(()).is_err() {
                continue; // it spoke, or it is gone already
            }
            STATS.evicted.fetch_add(1, Ordering::Relaxed);
            done += 1;
        }
        done
    }
}
