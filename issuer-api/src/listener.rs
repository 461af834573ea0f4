//! Bounded TCP listeners: the accept loop and per-connection limits shared by the HTTPS server and
//! the metrics endpoint.
//!
//! Without these, a peer that opens connections and sends nothing holds a task and a file
//! descriptor forever, and once the process runs out of descriptors `accept` fails instantly in a
//! loop (measured before this module: 1,100 idle connections against a soft limit of 1,024 drove
//! `lanyard-ca` to 173 % CPU and 1.68 GB of logs in 27 s). Here every connection holds a slot of a
//! semaphore (`max_connections`); when none is free, the oldest connections still in their TLS
//! handshake are evicted for the new one, and when every slot is past its handshake the new
//! connection is accepted and closed at once, which keeps the kernel backlog drained so a
//! legitimate client never queues behind junk. Slots come back because every phase of a
//! connection has a deadline: the TLS handshake, each HTTP/1 request head (which also bounds
//! keep-alive idleness), and an idle limit for connections with no request in flight and no bytes
//! moving (HTTP/2 included, which hyper does not bound itself). Accept errors back off
//! exponentially and are logged at most once per [`LOG_EVERY`].

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::Instant;
use tracing::{debug, warn};

/// Accept errors and refusals are logged at most this often (with a count of what was skipped).
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// First pause after an accept error; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(10);
/// Longest pause after repeated accept errors.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long a new connection waits for the slot of the handshake it evicted.
const EVICT_WAIT: Duration = Duration::from_millis(100);
/// How long a connection past its idle limit may take to finish a graceful close. Short: nothing
/// is in flight by then, and an HTTP/2 connection still waiting for the client's preface does not
/// finish a graceful shutdown on its own.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Upper bound for every configured timeout: longer ones are almost certainly a unit mistake.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Upper bound for `max_connections` (far above any descriptor limit a CA is run with).
const MAX_CONNECTIONS: usize = 1 << 20;

/// `[listener]` configuration: limits of the HTTPS listener. The metrics listener uses the same
/// timeouts with its own small connection limit ([`METRICS_MAX_CONNECTIONS`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerConfig {
    /// Connections open at once (TLS handshakes included). Past it, new connections are accepted
    /// and closed immediately and counted in `lanyard_listener_connections_refused_total`. Keep it
    /// below the process's open-file limit (`ulimit -n`) minus what the database needs.
    pub max_connections: usize,
    /// Time a client has to complete the TLS handshake after connecting.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Time a client has to send a complete HTTP/1 request head, counted from when the server
    /// starts waiting for it; so it also closes keep-alive connections idle for this long.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and no bytes read or written for this long is
    /// closed (gracefully: HTTP/2 gets a GOAWAY). Long-polls are requests in flight and are kept.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

/// Connection limit of the plain-HTTP metrics listener: scrapers are few.
pub const METRICS_MAX_CONNECTIONS: usize = 64;

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            max_connections: 4096,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Why a `[listener]` section is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListenerConfigError {
    /// `max_connections` is zero or absurdly large.
    #[error("max_connections must be between 1 and {max}, not {value}")]
    MaxConnections {
        /// The configured value.
        value: usize,
        /// The largest accepted value.
        max: usize,
    },
    /// A timeout is zero or longer than an hour.
    #[error("{name} must be more than 0s and at most 1h, not {value:?}")]
    Timeout {
        /// The setting.
        name: &'static str,
        /// The configured value.
        value: Duration,
    },
}

impl ListenerConfig {
    /// Checks the limits; zero would refuse or cut off every client.
    pub fn validate(&self) -> Result<(), ListenerConfigError> {
        if self.max_connections == 0 || self.max_connections > MAX_CONNECTIONS {
            return Err(ListenerConfigError::MaxConnections { value: self.max_connections, max: MAX_CONNECTIONS });
        }
        for (name, value) in [
            ("handshake_timeout", self.handshake_timeout),
            ("header_read_timeout", self.header_read_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if value.is_zero() || value > MAX_TIMEOUT {
                return Err(ListenerConfigError::Timeout { name, value });
            }
        }
        Ok(())
    }

    /// The same timeouts with another connection limit (the metrics listener's).
    pub fn with_max_connections(&self, max_connections: usize) -> ListenerConfig {
        ListenerConfig { max_connections, ..self.clone() }
    }
}

/// The metric handles of one listener (cheap clones of the series registered by
/// [`crate::metrics::Metrics::register`]; a default one counts into series no registry exposes,
/// which is what tests of the listener alone want).
#[derive(Debug, Clone, Default)]
pub struct ListenerStats {
    /// Connections holding a slot right now.
    pub open: Gauge,
    /// Connections closed at accept because every slot was taken.
    pub refused: Counter,
    /// `accept` failures (e.g. EMFILE: out of file descriptors).
    pub accept_errors: Counter,
    /// Connections closed because the TLS handshake took longer than `handshake_timeout`.
    pub handshake_timeouts: Counter,
    /// Connections closed after `idle_timeout` without activity.
    pub idle_closed: Counter,
    /// Connections closed mid-handshake to make room for a new one while every slot was taken.
    pub handshakes_evicted: Counter,
}

/// A connection's claim on the listener: returns the slot and lowers the open gauge on drop.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    stats: ListenerStats,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.stats.open.dec();
    }
}

/// Logs a recurring condition at most once per [`LOG_EVERY`], with how many were not logged.
#[derive(Debug, Default)]
struct RateLimitedLog {
    last: Option<Instant>,
    skipped: u64,
}

impl RateLimitedLog {
    /// Counts one occurrence; `Some(skipped since the last line)` when a line is due.
    fn due(&mut self) -> Option<u64> {
        self.due_at(Instant::now())
    }

    fn due_at(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            self.skipped += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.skipped))
    }
}

/// A TCP listener that hands out connections only while a slot is free.
#[derive(Debug)]
pub struct BoundedListener {
    tcp: TcpListener,
    name: &'static str,
    slots: Arc<Semaphore>,
    stats: ListenerStats,
    /// Connections still in their handshake, oldest first: the ones to evict when full. Entries
    /// whose connection finished its handshake (or ended) are closed senders, skipped and pruned.
    handshaking: VecDeque<oneshot::Sender<()>>,
    capacity: usize,
    backoff: Duration,
    error_log: RateLimitedLog,
    refused_log: RateLimitedLog,
}

/// A connection handed out by [`BoundedListener::accept`].
#[derive(Debug)]
pub struct Accepted {
    /// The connection.
    pub tcp: TcpStream,
    /// The client's address.
    pub peer: SocketAddr,
    /// Its slot; drop it when the connection ends.
    pub slot: Slot,
    /// Fires when the listener needs this connection's slot while it is still handshaking.
    pub handshake: Handshake,
}

/// A connection's handshake phase, during which a newer connection may evict it (see
/// [`Handshake::run`]).
#[derive(Debug)]
pub struct Handshake {
    evict: oneshot::Receiver<()>,
}

impl BoundedListener {
    /// Wraps `tcp`; `name` labels log lines; `stats` is where its counters go.
    pub fn new(tcp: TcpListener, name: &'static str, max_connections: usize, stats: ListenerStats) -> Self {
        let capacity = max_connections.clamp(1, MAX_CONNECTIONS);
        BoundedListener {
            tcp,
            name,
            slots: Arc::new(Semaphore::new(capacity)),
            stats,
            handshaking: VecDeque::new(),
            capacity,
            backoff: MIN_BACKOFF,
            error_log: RateLimitedLog::default(),
            refused_log: RateLimitedLog::default(),
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// The next connection that fits under the limit.
    ///
    /// When every slot is taken, the oldest connections still in their handshake are evicted and
    /// the new one takes a freed slot: a flood of connections that never finish a handshake then only
    /// shortens every handshake's window (to about `max_connections` / flood rate) instead of
    /// locking legitimate clients out until `handshake_timeout`. When no connection is
    /// handshaking (all slots serve requests), the new connection is closed at once and counted.
    /// After an accept error (typically EMFILE) it sleeps 10 ms, doubling to 1 s while errors
    /// continue, so a full descriptor table cannot spin the CPU. Cancelling it (at shutdown) may
    /// close a connection that was accepted but not yet handed out.
    pub async fn accept(&mut self) -> Accepted {
        loop {
            match self.tcp.accept().await {
                Ok((tcp, peer)) => {
                    self.backoff = MIN_BACKOFF;
                    let permit = match self.slots.clone().try_acquire_owned() {
                        Ok(p) => Some(p),
                        Err(_) => self.evict_oldest_handshake().await,
                    };
                    let Some(permit) = permit else {
                        self.stats.refused.inc();
                        if let Some(skipped) = self.refused_log.due() {
                            warn!(listener = self.name, %peer, refused_since_last_log = skipped,
                                "connection limit reached; refusing connections");
                        }
                        // Dropping closes it: no bytes are read, no task is spawned.
                        drop(tcp);
                        continue;
                    };
                    self.stats.open.inc();
                    let (tx, evict) = oneshot::channel();
                    // Pruned only when twice the slots: amortized O(1) per accept.
                    if self.handshaking.len() >= 2 * self.capacity {
                        self.handshaking.retain(|t| !t.is_closed());
                    }
                    self.handshaking.push_back(tx);
                    return Accepted {
                        tcp,
                        peer,
                        slot: Slot { _permit: permit, stats: self.stats.clone() },
                        handshake: Handshake { evict },
                    };
                }
                Err(e) => {
                    self.stats.accept_errors.inc();
                    if let Some(skipped) = self.error_log.due() {
                        warn!(listener = self.name, error = %e, failures_since_last_log = skipped,
                            "accept failed; backing off");
                    }
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Tells the oldest still-handshaking connections to give up, and waits (briefly) for a slot
    /// they free. `None` when no connection is handshaking. It evicts a small batch (1/16 of the
    /// slots, at most 16) rather than one: waiting for an evicted task to run costs a round trip
    /// through the scheduler, and paying it for every newcomer of a flood on a busy machine would
    /// make the accept loop the bottleneck; the next newcomers take the other freed slots directly.
    async fn evict_oldest_handshake(&mut self) -> Option<OwnedSemaphorePermit> {
        let batch = (self.capacity / 16).clamp(1, 16) as u64;
        let mut evicted: u64 = 0;
        while evicted < batch {
            let Some(tx) = self.handshaking.pop_front() else { break };
            if tx.send(()).is_ok() {
                evicted += 1;
            }
        }
        if evicted == 0 {
            return None;
        }
        self.stats.handshakes_evicted.inc_by(evicted);
        // The evicted tasks drop their slots as soon as they are polled.
        tokio::time::timeout(EVICT_WAIT, self.slots.clone().acquire_owned()).await.ok()?.ok()
    }
}

/// Warns when `max_connections` exceeds the process's soft open-file limit (from
/// `/proc/self/limits`; silent where that is unreadable): the limit would then never be reached and
/// a flood would end in EMFILE, which is survivable (see [`BoundedListener::accept`]) but also
/// starves the database of descriptors.
pub fn warn_if_above_fd_limit(listener: &str, max_connections: usize) {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else { return };
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(soft) = soft.filter(|s| max_connections >= *s) {
        warn!(
            listener,
            max_connections,
            open_file_limit = soft,
            "max_connections is not below the open-file limit (ulimit -n); raise the limit or lower max_connections"
        );
    }
}

impl Handshake {
    /// Runs `handshake` until it completes, `handshake_timeout` passes, or the listener evicts
    /// it; `None` (and a count) in the last two cases.
    pub async fn run<F: Future>(self, cfg: &ListenerConfig, stats: &ListenerStats, handshake: F) -> Option<F::Output> {
        tokio::select! {
            r = tokio::time::timeout(cfg.handshake_timeout, handshake) => match r {
                Ok(r) => Some(r),
                Err(_) => {
                    stats.handshake_timeouts.inc();
                    None
                }
            },
            Ok(()) = self.evict => None,
        }
    }
}

/// What the idle watchdog looks at: when bytes last moved, and how many requests are running.
#[derive(Debug)]
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once the connection has been idle for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let deadline = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + limit;
            let now = Instant::now();
            if now >= deadline {
                if self.in_flight.load(Ordering::Relaxed) == 0 {
                    return;
                }
                // A request is running (e.g. a long-poll): look again later.
                tokio::time::sleep(limit).await;
            } else {
                tokio::time::sleep_until(deadline).await;
            }
        }
    }
}

/// An I/O stream that records activity whenever bytes move.
struct ActiveIo<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for ActiveIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ActiveIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Counts a request as in flight until its response head is ready.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Idleness counts from the end of the request, not from its last byte in.
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A service that marks its requests as in flight.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, R> hyper::service::Service<R> for Tracked<S>
where
    S: hyper::service::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn call(&self, req: R) -> Self::Future {
        let guard = InFlight::new(self.activity.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            drop(guard);
            r
        })
    }
}

/// The HTTP protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 (no ALPN, or `http/1.1`).
    Http1,
    /// HTTP/2, chosen by ALPN `h2` (RFC 9113 section 3.2: over TLS, h2 is negotiated by ALPN).
    Http2,
}

/// Serves HTTP on an accepted (and, for HTTPS, handshaken) stream with the configured limits.
///
/// The protocol is fixed up front instead of sniffed: hyper-util's version detection reads the
/// first bytes with no deadline, which would let a client that sends half a request line stall
/// there forever, before the HTTP/1 header read timeout applies.
pub async fn serve_http<T, S, B>(
    io: T,
    protocol: Protocol,
    cfg: &ListenerConfig,
    stats: &ListenerStats,
    service: S,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<hyper::Request<hyper::body::Incoming>, Response = hyper::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let activity =
        Arc::new(Activity { start: Instant::now(), last_ms: AtomicU64::new(0), in_flight: AtomicUsize::new(0) });
    let io = TokioIo::new(ActiveIo { inner: io, activity: activity.clone() });
    let service = Tracked { inner: service, activity: activity.clone() };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .keep_alive(true)
        .http2()
        .timer(TokioTimer::new())
        // Pings find peers that vanished without a FIN; idle but live peers are the watchdog's.
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .max_concurrent_streams(100);
    let builder = match protocol {
        Protocol::Http1 => builder.http1_only(),
        Protocol::Http2 => builder.http2_only(),
    };
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => return r,
        () = activity.idle_for(cfg.idle_timeout) => {}
    }
    stats.idle_closed.inc();
    debug!("closing an idle connection");
    conn.as_mut().graceful_shutdown();
    match tokio::time::timeout(CLOSE_GRACE, conn).await {
        Ok(r) => r,
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_zero_is_refused() {
        let cfg = ListenerConfig::default();
        cfg.validate().expect("defaults");
        let zero = ListenerConfig { max_connections: 0, ..cfg.clone() };
        assert_eq!(zero.validate(), Err(ListenerConfigError::MaxConnections { value: 0, max: MAX_CONNECTIONS }));
        let no_handshake = ListenerConfig { handshake_timeout: Duration::ZERO, ..cfg.clone() };
        assert!(matches!(no_handshake.validate(), Err(ListenerConfigError::Timeout { name: "handshake_timeout", .. })));
        let forever = ListenerConfig { idle_timeout: Duration::from_secs(7200), ..cfg };
        assert!(matches!(forever.validate(), Err(ListenerConfigError::Timeout { name: "idle_timeout", .. })));
    }

    #[test]
    fn config_parses_human_durations_and_refuses_unknown_keys() {
        let cfg: ListenerConfig =
            toml::from_str("max_connections = 64\nhandshake_timeout = \"2s\"\nheader_read_timeout = \"500ms\"\n")
                .expect("parses");
        assert_eq!(cfg.max_connections, 64);
        assert_eq!(cfg.handshake_timeout, Duration::from_secs(2));
        assert_eq!(cfg.header_read_timeout, Duration::from_millis(500));
        assert_eq!(cfg.idle_timeout, ListenerConfig::default().idle_timeout);
        assert!(toml::from_str::<ListenerConfig>("max_conections = 3\n").is_err());
    }

    #[test]
    fn the_log_is_rate_limited() {
        let t0 = Instant::now();
        let mut log = RateLimitedLog::default();
        assert_eq!(log.due_at(t0), Some(0));
        for _ in 0..1000 {
            assert_eq!(log.due_at(t0 + Duration::from_secs(1)), None);
        }
        assert_eq!(log.due_at(t0 + LOG_EVERY), Some(1000));
        assert_eq!(log.due_at(t0 + LOG_EVERY), None);
    }

    #[tokio::test]
    async fn over_the_limit_connections_are_closed_and_counted() {
        let stats = ListenerStats::default();
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("addr");
        let mut listener = BoundedListener::new(tcp, "test", 1, stats.clone());
        let cfg = ListenerConfig::default();
        let _c1 = TcpStream::connect(addr).await.expect("connect");
        let first = listener.accept().await;
        assert_eq!(stats.open.get(), 1);
        // The only slot is held by a connection still in its handshake: a new one evicts it.
        let task_stats = stats.clone();
        let first_task = tokio::spawn(async move {
            let r = first.handshake.run(&cfg, &task_stats, std::future::pending::<()>()).await;
            drop(first.slot);
            r
        });
        let _c2 = TcpStream::connect(addr).await.expect("connect");
        let second = tokio::time::timeout(Duration::from_secs(5), listener.accept()).await.expect("evicts");
        assert_eq!(first_task.await.expect("task"), None, "the oldest handshake gave up its slot");
        assert_eq!(stats.handshakes_evicted.get(), 1);
        assert_eq!(stats.open.get(), 1);
        // Once the holder is past its handshake, newcomers are accepted and closed, and counted.
        drop(second.handshake);
        let mut clients = Vec::new();
        for _ in 0..2 {
            clients.push(TcpStream::connect(addr).await.expect("connect"));
        }
        assert!(tokio::time::timeout(Duration::from_millis(500), listener.accept()).await.is_err());
        assert_eq!(stats.refused.get(), 2);
        for c in &mut clients {
            let mut buf = [0u8; 1];
            let n = tokio::io::AsyncReadExt::read(c, &mut buf).await.unwrap_or(0);
            assert_eq!(n, 0, "a refused connection is closed");
        }
        drop(second.slot);
        assert_eq!(stats.open.get(), 0);
        let _late = TcpStream::connect(addr).await.expect("connect");
        let third = tokio::time::timeout(Duration::from_secs(5), listener.accept()).await.expect("a free slot");
        assert_eq!(stats.open.get(), 1);
        drop(third);
        assert_eq!(stats.accept_errors.get(), 0);
    }
}
