//! The SPIFFE Workload API, served on a Unix domain socket.
//!
//! This is the X509-SVID profile of the SPIFFE Workload API
//! (<https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE_Workload_API.md> and
//! <https://github.com/spiffe/spiffe/blob/main/standards/X509-SVID.md>), generated from the
//! standard `proto/workload.proto`. Any SPIFFE client library (go-spiffe, java-spiffe, the `spiffe`
//! crate, Envoy's SDS via spiffe-helper, ...) can point `SPIFFE_ENDPOINT_SOCKET` at the agent's
//! socket and receive the workload's X509-SVID and trust bundle, and every rotation after it.
//!
//! What is served, and why:
//! - `FetchX509SVID` and `FetchX509Bundles` stream the credentials the agent publishes through its
//!   two watch channels (filled by [`crate::tls::CredentialSeam`], which validated them first). The
//!   server does no validation of its own: there is exactly one place that decides what is good.
//! - The JWT-SVID RPCs answer `UNIMPLEMENTED`: Lanyard issues no JWT-SVIDs, and a clear error is
//!   better than an empty answer a client could mistake for "no identity".
//! - Every RPC must carry the `workload.spiffe.io: true` metadata header, as the spec requires, so a
//!   browser or another HTTP client tricked into talking to the socket (SSRF) cannot fetch keys.
//!   The check runs in an interceptor, before any method, and answers `INVALID_ARGUMENT` with the
//!   same message SPIRE uses.
//!
//! grpc C-core clients (Python's `grpcio`, so py-spiffe) send the socket path as `:authority`,
//! which the HTTP/2 server refuses on its own; every accepted connection therefore goes through
//! [`AuthorityFilter`] first (see its module for why and how).
//!
//! The socket is the access control: whoever can `connect(2)` to it gets the workload's private
//! key. This agent serves one identity and does not attest callers, so the socket's permissions
//! ([`DEFAULT_SOCKET_MODE`]) and its directory decide who the workload is.

mod authority;
pub mod limits;
mod service;

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use tokio::net::UnixListener;
use tokio::sync::watch;

use crate::credentials::{Svid, TrustBundle};

pub use authority::AuthorityFilter;
pub use limits::SocketLimits;
pub use service::{SECURITY_HEADER, SecurityHeader, WorkloadApi, WorkloadApiService};

/// Code generated from `proto/workload.proto` (which has no `package`, so the gRPC service is
/// `/SpiffeWorkloadAPI/...`, exactly the path every SPIFFE client calls).
#[allow(
    unreachable_pub,
    missing_debug_implementations,
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    clippy::unwrap_used
)]
pub mod pb {
    tonic::include_proto!("_");

    /// The well-known types the proto imports (`google.protobuf.Struct` for JWT claims), generated
    /// locally rather than taken from `prost-types`.
    pub mod google {
        /// `google.protobuf`.
        pub mod protobuf {
            tonic::include_proto!("google.protobuf");
        }
    }
}

/// Default permissions of the Workload API socket: owner and group may connect, others may not.
///
/// Connecting to the socket is enough to obtain the private key, so the default is not
/// world-connectable. Run the workloads that should hold this identity in the agent's group (or
/// hand the socket to them through a directory only they can traverse). Choose `0o666` with
/// [`serve_with_mode`] only when the directory around the socket already restricts who can reach it,
/// e.g. a volume mounted into exactly one pod.
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;

/// Serves the Workload API on `socket` with [`DEFAULT_SOCKET_MODE`] until `shutdown` completes.
///
/// See [`serve_with_mode`].
///
/// # Errors
///
/// Fails if the socket cannot be prepared or bound, or the gRPC server fails.
pub async fn serve(
    socket: &Path,
    svids: watch::Receiver<Option<Arc<Svid>>>,
    bundles: watch::Receiver<Option<Arc<TrustBundle>>>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    serve_with_mode(socket, DEFAULT_SOCKET_MODE, svids, bundles, shutdown).await
}

/// Serves the Workload API on the Unix socket `socket`, with file permissions `mode`, until
/// `shutdown` completes.
///
/// The parent directory is created if missing (its permissions are left to the operator). A stale
/// socket left by a crashed agent is removed, but a socket some live process still accepts on is
/// not stolen, and a path that is not a socket is never deleted. The socket is removed again when
/// serving ends, for whatever reason, so clients see "no agent" rather than a dead endpoint.
///
/// On shutdown, open `Fetch*` streams are ended first (cleanly, status OK, so clients simply
/// reconnect later); otherwise tonic's graceful shutdown would wait forever for streams that
/// by design never end on their own.
///
/// Each connection is wrapped in an [`AuthorityFilter`], so that clients that send the socket path
/// as the HTTP/2 `:authority` (grpc C-core: `grpcio`, py-spiffe) are served like any other.
///
/// # Errors
///
/// Fails if the socket cannot be prepared or bound, or the gRPC server fails.
pub async fn serve_with_mode(
    socket: &Path,
    mode: u32,
    svids: watch::Receiver<Option<Arc<Svid>>>,
    bundles: watch::Receiver<Option<Arc<TrustBundle>>>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    serve_with_limits(socket, mode, SocketLimits::default(), svids, bundles, shutdown).await
}

/// [`serve_with_mode`] with explicit connection limits.
///
/// # Errors
///
/// Fails if the socket cannot be prepared or bound, or the gRPC server fails.
pub async fn serve_with_limits(
    socket: &Path,
    mode: u32,
    limits: SocketLimits,
    svids: watch::Receiver<Option<Arc<Svid>>>,
    bundles: watch::Receiver<Option<Arc<TrustBundle>>>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (listener, _socket_guard) = bind(socket, mode).await?;
    let api = WorkloadApi::new(svids, bundles);
    let streams = api.clone();
    let signal = async move {
        shutdown.await;
        streams.close_streams();
    };
    tracing::info!(socket = %socket.display(), mode = format_args!("{mode:o}"), "serving the SPIFFE Workload API");
    tonic::transport::Server::builder()
        // Pings find clients that vanished without closing; idle live ones count against the cap.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .add_service(api.into_service())
        .serve_with_incoming_shutdown(limits::incoming(listener, limits), signal)
        .await
        .with_context(|| format!("serving the SPIFFE Workload API on {}", socket.display()))
}

/// The Workload API as a tonic service (security-header check included), for callers that run
/// their own server or router, such as tests.
///
/// Streams opened on it end when a watch sender is dropped or the client goes away; to end them
/// on shutdown as well, build a [`WorkloadApi`], keep a clone, and call
/// [`WorkloadApi::close_streams`]. Wrap accepted connections in an [`AuthorityFilter`] to serve
/// grpc C-core clients too, as [`serve_with_mode`] does.
pub fn service(
    svids: watch::Receiver<Option<Arc<Svid>>>,
    bundles: watch::Receiver<Option<Arc<TrustBundle>>>,
) -> WorkloadApiService {
    WorkloadApi::new(svids, bundles).into_service()
}

/// Prepares the socket path and binds it; the guard removes the socket when dropped.
async fn bind(socket: &Path, mode: u32) -> anyhow::Result<(UnixListener, SocketGuard)> {
    if let Some(parent) = socket.parent().filter(|p| !p.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(parent)
            .await
            .with_context(|| format!("creating the Workload API socket directory {}", parent.display()))?;
    }
    match tokio::fs::symlink_metadata(socket).await {
        Ok(meta) if meta.file_type().is_socket() => {
            if tokio::net::UnixStream::connect(socket).await.is_ok() {
                bail!("{} is in use: another process is serving on it", socket.display());
            }
            tokio::fs::remove_file(socket)
                .await
                .with_context(|| format!("removing the stale socket {}", socket.display()))?;
        }
        Ok(_) => bail!("{} exists and is not a socket; refusing to replace it", socket.display()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("inspecting {}", socket.display())),
    }
    // Bind under a private name, set the mode, then rename into place: a client can never reach
    // the socket while it still carries the umask's (often world-connectable) mode.
    let staging = staging_path(socket);
    remove_staging(&staging);
    let listener = UnixListener::bind(&staging).with_context(|| format!("binding {}", staging.display()))?;
    let placed = async {
        tokio::fs::set_permissions(&staging, std::fs::Permissions::from_mode(mode))
            .await
            .with_context(|| format!("setting mode {mode:o} on {}", staging.display()))?;
        tokio::fs::rename(&staging, socket)
            .await
            .with_context(|| format!("moving the socket into place at {}", socket.display()))
    }
    .await;
    if let Err(err) = placed {
        remove_staging(&staging);
        return Err(err);
    }
    Ok((listener, SocketGuard(socket.to_path_buf())))
}

/// Removes a staging socket left by an earlier run or a failed bind; only its absence is fine.
fn remove_staging(staging: &Path) {
    if let Err(e) = std::fs::remove_file(staging)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %staging.display(), error = %e, "could not remove the staging socket");
    }
}

/// A sibling of `socket` used only by this bind, kept short because socket paths are limited to
/// about 100 bytes.
fn staging_path(socket: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    socket.with_file_name(format!(".lanyard-{}-{n}.sock", std::process::id()))
}

/// Removes the socket file when serving ends, including on errors and panics.
#[derive(Debug)]
struct SocketGuard(PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.0) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => tracing::warn!(socket = %self.0.display(), %err, "could not remove the Workload API socket"),
        }
    }
}
